//! Shutdown under load and lost updates: clients are told (close 1001, a
//! skipped `seq`), nothing is lost.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{Client, Got};
use super::{consumer_vars, start_consumer, stream_vars};
use crate::helpers::{self, delivered, eventually, require_broker, wait_checkpointed, Child, Names};
use crate::support::http;

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_closes_clients_with_1001_and_loses_nothing() {
    let brokers = require_broker();
    let names = Names::new("it-ws-sigterm");
    let vars = consumer_vars(&names, &brokers, "a");
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut clients = Vec::new();
    for channel in ["token:ETH", "token:BTC", "pair:ETH-USDC"] {
        let mut client = Client::connect(port).await;
        client.subscribe(&[channel]).await;
        clients.push(client.drain());
    }
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 2000, &stream_vars("60000")).await }
    });
    let pg = helpers::pg().await;
    eventually("the consumer makes progress", Duration::from_secs(60), || {
        let (pg, names) = (&pg, &names);
        async move { helpers::checkpointed(pg, names).await > 200 }
    })
    .await;

    let started = Instant::now();
    let status = consumer.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "SIGTERM must end in exit 0, got {status}; log: {}", consumer.log_text());
    println!("consumer exited {:?} after SIGTERM", started.elapsed());
    for client in &mut clients {
        assert_eq!(client.close_code().await, Some(1001), "clients get 1001 going away");
    }
    let log = consumer.log_text();
    let closing = log.find("closing WebSocket sessions").expect("sessions closed");
    assert!(log.find("leaving the consumer group").is_some_and(|at| at < closing), "checkpoint and leave first");
    // The exit's own record, written after everything else of the stop:
    // the log is flushed before the process ends.
    assert!(log.rfind(r#""msg":"stopped""#).is_some_and(|at| at > closing), "no 'stopped' record after the stop");

    // Restarted, it finishes the stream: nothing lost, nothing twice.
    let truth = producing.await.unwrap();
    let (mut consumer, _) = start_consumer(&names, &vars, "b").await;
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let (stored, pending) = helpers::from_postgres(&names).await;
    assert_eq!(stored, truth.expected, "PostgreSQL differs from the ground truth");
    assert_eq!(pending, 0);
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn lost_updates_show_a_seq_gap_on_the_channels_they_hit() {
    let names = Names::new("it-ws-gap");
    let redis = helpers::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let vars = helpers::api_vars(&names, &[("SWAPSTREAM_REDIS_URL", &url)]);
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = helpers::logged_port(&api).await;
    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["token:ETH", "token:SOL"]).await;
    // Each channel answers when its snapshot is read: in either order.
    let mut channels: Vec<&Value> = subscribed.iter().map(|s| &s["channel"]).collect();
    channels.sort_by_key(|c| c.to_string());
    assert_eq!(channels, [&json!("token:ETH"), &json!("token:SOL")]);

    let channel = format!("{}:updates:{{token:ETH}}", names.redis_prefix);
    let swap = |status: &str, n: u8| {
        json!({"tx_hash": format!("0x{}", format!("{n:02x}").repeat(32)), "log_index": 0, "status": status,
            "timestamp": "2026-11-25T08:00:00Z", "token_from": "ETH", "token_to": "USDC",
            "amount_from": "1", "amount_to": "4000", "usd_value": "4000"})
    };
    let publisher = redis::Client::open(url.as_str()).unwrap();
    let mut conn = publisher.get_multiplexed_async_connection().await.unwrap();
    // History entries as the swap feed publishes them. Published again
    // until the registry hears: it hands each entry on once.
    let first = json!({"key": "token:ETH", "epoch": "1", "id": "1-0", "swaps": [swap("pending", 1)]}).to_string();
    let got = loop {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&first).query_async(&mut conn).await.unwrap();
        if let Got::Frame(frame) = client.read(Duration::from_millis(500)).await {
            break frame;
        }
    };
    assert_eq!((&got["type"], &got["seq"]), (&json!("swap"), &json!(1)));

    // Every pub/sub connection of this Redis is cut; the registry reconnects.
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    eventually("the pub/sub connection is back", Duration::from_secs(15), || async move {
        let (_, metrics) = http::get(port, "/metrics").await;
        metrics.lines().any(|l| l.starts_with("swapstream_ws_pubsub_resumed_total ") && !l.ends_with(" 0"))
    })
    .await;
    let second = json!({"key": "token:ETH", "epoch": "1", "id": "2-0", "swaps": [swap("confirmed", 1)]}).to_string();
    let got = loop {
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&second).query_async(&mut conn).await.unwrap();
        if let Got::Frame(frame) = client.read(Duration::from_millis(500)).await {
            break frame;
        }
    };
    assert_eq!((&got["type"], &got["seq"]), (&json!("swap"), &json!(3)), "seq 2 is skipped: a visible gap");
    assert_eq!(got["swap"]["status"], "confirmed");

    // The swap feed lost states of token:ETH: its next update says so, and
    // only that channel skips a seq.
    let lost =
        json!({"key": "token:ETH", "epoch": "1", "id": "3-0", "gap": true, "swaps": [swap("pending", 2)]}).to_string();
    let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(&lost).query_async(&mut conn).await.unwrap();
    let got = client.frame(Duration::from_secs(10)).await;
    assert_eq!((&got["channel"], &got["seq"]), (&json!("token:ETH"), &json!(5)), "seq 4 is skipped: {got}");
    let sol = json!({"key": "token:SOL", "epoch": "1", "id": "1-0", "swaps": [swap("pending", 3)]}).to_string();
    let sol_channel = format!("{}:updates:{{token:SOL}}", names.redis_prefix);
    let _: i64 = redis::cmd("PUBLISH").arg(&sol_channel).arg(&sol).query_async(&mut conn).await.unwrap();
    let got = client.frame(Duration::from_secs(10)).await;
    // token:SOL had one frame number skipped by the lost connection only.
    assert_eq!((&got["channel"], &got["seq"]), (&json!("token:SOL"), &json!(2)), "{got}");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
