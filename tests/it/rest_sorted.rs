//! Lists sorted by a window's figure, from `api` as a separate process over
//! 10,000 tokens written through the store's own path: every token once,
//! in the order of the figures each page serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use swapstream::domain::partial::{AggKey, Partial};
use swapstream::domain::{RawSwap, RawTime};
use swapstream::storage::redis::RedisStore;
use swapstream::stream::{PartialChange, Tp};

use crate::helpers::{api_vars, eventually, Names};
use crate::rest::{get, start_api};

/// Token `i`'s swaps: 1 to 5 of them, by 1 to 3 makers, of varied USD value
/// (so volumes rarely tie and swap counts often do).
fn swaps_of(i: usize, symbol: &str) -> Vec<RawSwap> {
    let now = chrono::Utc::now();
    (0..1 + i % 5)
        .map(|n| RawSwap {
            tx_hash: Some(format!("0x{:060x}{n:04x}", i)),
            timestamp: Some(RawTime::Rfc3339(swapstream::domain::swap::format_time(now))),
            maker: Some(format!("0x{:040x}", 1 + (i * 7 + n) % (1 + i % 3))),
            token_from: Some(symbol.to_owned()),
            token_to: Some("USDC".to_owned()),
            amount_from: Some("1".to_owned()),
            amount_to: Some("1".to_owned()),
            usd_value: Some(format!("{}.5", (i * 7919 + n * 13) % 10_007 + 1)),
            ..RawSwap::default()
        })
        .collect()
}

/// Every page of `/v1/tokens?<query>` after the one before: each token's
/// name and figure.
async fn walk(port: u16, query: &str, figure: impl Fn(&Value) -> Option<f64>) -> Vec<(String, Option<f64>)> {
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let answer = get(port, &format!("/v1/tokens?{query}&limit=999{after}")).await;
        assert_eq!(answer.status, 200, "{query}: {answer:?}");
        let page = answer.json();
        let tokens = page["tokens"].as_array().unwrap();
        seen.extend(tokens.iter().map(|t| (t["token"].as_str().unwrap().to_owned(), figure(t))));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return seen,
        }
        assert!(seen.len() <= 20_000, "{query}: paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sorted_pages_rank_ten_thousand_tokens_by_a_window_figure_without_skip_or_repeat() {
    let names = Names::new("it-rest-sorted");
    let store = RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let tp = Tp::new(&format!("{}swaps", names.topic_prefix), 0);
    let symbols: Vec<String> = (0..10_000).map(|i| format!("T{i:05}")).collect();
    for (c, chunk) in symbols.chunks(1000).enumerate() {
        let mut changes = Vec::new();
        for (j, symbol) in chunk.iter().enumerate() {
            let key = AggKey::named(true, symbol).unwrap();
            let mut partial = Partial::default();
            for raw in swaps_of(c * 1000 + j, symbol) {
                assert!(partial.apply(&key, &Arc::new(raw.validate().unwrap()), 10));
            }
            changes.push(PartialChange { key, tp: tp.clone(), delta: partial.take_delta().unwrap() });
        }
        store.write(&changes, &HashMap::new(), &[]).await.unwrap();
    }
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &api_vars(&names, &[])).await;
    // The first ranking is built in the background: until it is, a 503.
    eventually("the first ranking", Duration::from_secs(120), || async {
        let answer = get(port, "/v1/tokens?sort=volume_24h&limit=1").await;
        assert!(matches!(answer.status, 200 | 503), "{answer:?}");
        answer.status == 200
    })
    .await;

    let number = |v: &Value| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_f64());
    let volume = |t: &Value| number(&t["windows"]["24h"]["volume_usd"]);
    let swaps = |t: &Value| number(&t["windows"]["5m"]["swaps"]);
    for (query, figure, descending) in [
        ("sort=volume_24h", &volume as &dyn Fn(&Value) -> Option<f64>, true),
        ("sort=swaps_5m&order=asc", &swaps, false),
    ] {
        let seen = walk(port, query, figure).await;
        let mut names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.len(), symbols.len(), "{query}: every token once");
        let in_order = seen.windows(2).all(|w| {
            let (a, b) = (w[0].1.unwrap(), w[1].1.unwrap());
            if a == b {
                w[0].0 < w[1].0
            } else {
                (a > b) == descending
            }
        });
        assert!(in_order, "{query}: by the figure, ties by name");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), symbols.len(), "{query}: none twice");
    }
    // Makers are figures too; a prefix narrows the ranking; bad values are named.
    let top = get(port, "/v1/tokens?sort=makers_1h&limit=5&prefix=t00").await.json();
    let makers: Vec<u64> =
        top["tokens"].as_array().unwrap().iter().map(|t| t["windows"]["1h"]["makers"].as_u64().unwrap()).collect();
    assert_eq!(makers, [3, 3, 3, 3, 3], "tokens with three makers first");
    assert!(top["tokens"].as_array().unwrap().iter().all(|t| t["token"].as_str().unwrap().starts_with("T00")));
    for (query, param) in
        [("sort=volume_2h", "sort"), ("sort=volume_24h&order=up", "order"), ("order=sideways", "order")]
    {
        let answer = get(port, &format!("/v1/tokens?{query}")).await;
        let message = answer.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
        assert_eq!(answer.status, 400, "{query}");
        assert!(message.starts_with(&format!("{param}:")), "{query}: {message}");
    }
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
