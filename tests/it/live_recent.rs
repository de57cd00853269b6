//! Redis keeps exactly a key's newest swaps in the event order, also when
//! many share one millisecond (the scores' resolution): a burst, or the
//! swaps of one block, which share its timestamp.

use std::collections::HashMap;
use std::sync::Arc;

use swapstream::domain::partial::{AggKey, PartialDelta, TotalsPartial};
use swapstream::domain::{RawSwap, RawTime, TokenSymbol};
use swapstream::storage::redis::RedisStore;
use swapstream::stream::{PartialChange, Tp};

use crate::helpers::Names;

#[tokio::test(flavor = "multi_thread")]
async fn the_recent_list_keeps_the_newest_swaps_of_a_shared_millisecond_in_event_order() {
    let names = Names::new("it-live-recent");
    let store = RedisStore::connect(&names.settings(&[]).redis, 10).await.unwrap();
    let key = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
    // 40 swaps in one millisecond: 20 nanosecond times, two log indexes
    // each, their hashes in no relation to their order.
    let swaps: Vec<_> = (0..40u64)
        .map(|i| {
            let swap = RawSwap {
                tx_hash: Some(format!("0x{:064x}", (i * 7_919) % 40)),
                log_index: Some(i % 2),
                timestamp: Some(RawTime::Rfc3339(format!("2026-12-04T10:00:00.000{:06}Z", i / 2 * 1000))),
                token_from: Some("ETH".into()),
                token_to: Some("USDC".into()),
                amount_from: Some("1".into()),
                amount_to: Some("3000".into()),
                usd_value: Some("3000".into()),
                ..RawSwap::default()
            };
            Arc::new(swap.validate().unwrap())
        })
        .collect();
    // Written in two batches, the newer first.
    for half in [&swaps[20..], &swaps[..20]] {
        let delta = PartialDelta {
            totals: TotalsPartial::default(),
            pending: 0,
            candles: Vec::new(),
            new_recent: half.to_vec(),
            history: Vec::new(),
        };
        let change = PartialChange { key: key.clone(), tp: Tp::new("swaps.ETH", 0), delta };
        store.write(&[change], &HashMap::new(), &[]).await.unwrap();
    }

    let mut newest = swaps.clone();
    newest.sort_by_key(|s| std::cmp::Reverse(s.order_key()));
    let expected: Vec<serde_json::Value> =
        newest[..10].iter().map(|s| serde_json::to_value(s.to_wire()).unwrap()).collect();
    let (store, key) = (&store, &key);
    let recent = |limit| async move {
        store.recent(key, limit).await.unwrap().into_iter().map(|(_, swap)| swap).collect::<Vec<_>>()
    };
    assert_eq!(recent(10).await, expected);
    assert_eq!(recent(3).await, expected[..3]);
    store.delete_all().await.unwrap();
}
