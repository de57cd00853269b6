//! Candle channels: each frame a bucket of a token's or pair's candles,
//! with `closed`; at the end of a stream with late (reordered) events the
//! last frame of every bucket equals what REST answers for it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::client::Client;
use super::{consumer_vars, start_consumer, QUIET, TOKENS};
use crate::helpers::{self, delivered, require_broker, wait_checkpointed, Names};
use crate::support::http;

#[tokio::test(flavor = "multi_thread")]
async fn candle_frames_end_equal_to_the_rest_candles_after_a_stream_with_late_events() {
    let brokers = require_broker();
    let names = Names::new("it-ws-candles");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["candles:eth:1m", "candles:usdc-eth:1m"]).await;
    let mut names_given: Vec<&str> = subscribed.iter().filter_map(|s| s["channel"].as_str()).collect();
    names_given.sort_unstable();
    assert_eq!(names_given, ["candles:ETH-USDC:1m", "candles:ETH:1m"], "canonical names");
    let mut client = client.drain();

    // Events held back up to 3 s: late ones land in buckets that already
    // had frames, and must change them.
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 600, &helpers::stream_vars(TOKENS, "6000", 3000)).await }
    });
    let truth = producing.await.unwrap();
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;

    // The newest frame of every bucket, per channel; seq without a gap.
    let mut buckets: BTreeMap<(String, i64), Value> = BTreeMap::new();
    let mut next_seq: BTreeMap<String, u64> = BTreeMap::new();
    while let Ok(frame) = tokio::time::timeout(QUIET, client.frame()).await {
        let channel = frame["channel"].as_str().unwrap().to_owned();
        assert_eq!(frame["type"], "candle", "{frame}");
        let seq = next_seq.entry(channel.clone()).or_insert(1);
        assert_eq!(frame["seq"], *seq, "gap or repeat: {frame}");
        *seq += 1;
        let mut candle = frame["candle"].clone();
        assert!(candle["closed"].is_boolean(), "{frame}");
        candle.as_object_mut().unwrap().remove("closed");
        buckets.insert((channel, candle["t"].as_i64().unwrap()), candle);
    }
    for (channel, path) in
        [("candles:ETH:1m", "/v1/tokens/ETH/candles"), ("candles:ETH-USDC:1m", "/v1/pairs/ETH-USDC/candles")]
    {
        let sent: BTreeMap<i64, &Value> =
            buckets.iter().filter(|((c, _), _)| c == channel).map(|((_, t), candle)| (*t, candle)).collect();
        let from = *sent.keys().next().unwrap_or_else(|| panic!("no candle frame on {channel}"));
        let (status, body) = http::get(port, &format!("{path}?interval=1m&from={from}")).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let rest: BTreeMap<i64, &Value> =
            answer["candles"].as_array().unwrap().iter().map(|c| (c["t"].as_i64().unwrap(), c)).collect();
        assert_eq!(sent, rest, "{channel}: the last frame of each bucket differs from REST");
        let swaps: u64 = rest.values().map(|c| c["swaps"].as_u64().unwrap()).sum();
        assert!(swaps > 0, "{channel}: {answer}");
    }
    // REST's totals hold every swap of the stream: the buckets above are all of them.
    let (_, stats) = http::get(port, "/v1/tokens/ETH/stats").await;
    let stats: Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["totals"]["swaps"], truth.expected["tokens"]["ETH"]["totals"]["swaps"]);
    consumer.kill9().await;
}
