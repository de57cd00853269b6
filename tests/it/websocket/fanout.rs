//! Fan-out: a channel gets exactly its swaps, in order, from any instance
//! and over Redis Cluster; swap frames do not wait for PostgreSQL; many
//! subscriptions share handoffs and lose nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{Client, Got};
use super::model::{expected_states, Received};
use super::{consumer_vars, create_topics, metric, start_consumer, stream_vars, QUIET, STATS_INTERVAL};
use crate::helpers::{self, delivered, eventually, require_broker, wait_checkpointed, Names};
use crate::support::http;

#[tokio::test(flavor = "multi_thread")]
async fn a_token_channel_gets_exactly_its_swaps_in_order_and_unsubscribe_stops_them() {
    let brokers = require_broker();
    let names = Names::new("it-ws-truth");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;

    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["TOKEN:eth"]).await;
    assert_eq!(subscribed[0]["channel"], "token:ETH", "channel names are canonical");
    assert_eq!(subscribed[0]["snapshot"]["token"], "ETH");
    assert_eq!(subscribed[0]["snapshot"]["totals"]["swaps"], 0, "nothing produced yet");
    // Counts from here, so that frames waiting in the socket are inside its time.
    let mut received = Received::new();
    let mut pair_client = Client::connect(port).await;
    let subscribed = pair_client.subscribe(&["pair:usdc-eth"]).await;
    assert_eq!(subscribed[0]["channel"], "pair:ETH-USDC");
    let mut leaver = Client::connect(port).await;
    leaver.subscribe(&["token:ETH"]).await;

    eventually("/v1/ws/stats counts the clients", Duration::from_secs(10), || async move {
        let (status, body) = http::get(port, "/v1/ws/stats").await;
        let stats: Value = serde_json::from_str(&body).unwrap_or_default();
        status == 200 && stats["sessions"] == 3 && stats["channels"]["token:ETH"] == 2
    })
    .await;

    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 300, &stream_vars("6000")).await }
    });

    // The leaver takes a few swaps, unsubscribes, and must get none after.
    let mut left = Received::new();
    while left.states.len() < 3 {
        let frame = leaver.frame(Duration::from_secs(60)).await;
        left.take(&frame, "token:ETH", "ETH");
    }
    leaver.send(json!({"op": "unsubscribe", "channels": ["token:eth"]})).await;
    loop {
        let frame = leaver.frame(Duration::from_secs(10)).await;
        if frame["type"] == "unsubscribed" {
            assert_eq!(frame["channel"], "token:ETH");
            break;
        }
        left.take(&frame, "token:ETH", "ETH");
    }

    let truth = producing.await.unwrap();
    received.until_final(&mut client, &truth, "token:ETH", "ETH").await;
    let expected = expected_states(&truth, "ETH");
    assert!(expected.iter().any(|s| s.2 == "pending") && expected.iter().any(|s| s.2 == "confirmed"));
    assert_eq!(received.states, expected, "the ETH swap states differ from the ground truth");
    // Hundreds of updates changed the channel, a few frames per second told it.
    assert!(expected.len() > 100);
    received.assert_stats_coalesced(STATS_INTERVAL);

    let mut pair = Received::new();
    let pair_totals = &truth.expected["pairs"]["ETH-USDC"]["totals"];
    while pair.last_stats.as_ref().map(|s| &s["totals"]) != Some(pair_totals) {
        let frame = pair_client.frame(Duration::from_secs(60)).await;
        assert_eq!(frame["channel"], "pair:ETH-USDC");
        assert_eq!(frame["seq"], pair.next_seq);
        pair.next_seq += 1;
        if frame["type"] == "stats" {
            pair.last_stats = Some(frame["stats"].clone());
        } else {
            let swap = &frame["swap"];
            let tokens = BTreeSet::from([swap["token_from"].as_str().unwrap(), swap["token_to"].as_str().unwrap()]);
            assert_eq!(tokens, BTreeSet::from(["ETH", "USDC"]), "{frame}");
        }
    }

    // Nothing reached the leaver after its `unsubscribed`: the next frame
    // it gets is the answer to a ping.
    leaver.send(json!({"op": "ping"})).await;
    assert_eq!(leaver.frame(Duration::from_secs(10)).await, json!({"type": "pong"}));
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_two_instances_each_get_every_swap_of_their_channel() {
    let brokers = require_broker();
    let names = Names::new("it-ws-two");
    create_topics(&names, &brokers).await;
    let (mut a, port_a) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let (mut b, port_b) = start_consumer(&names, &consumer_vars(&names, &brokers, "b"), "b").await;
    let client = helpers::pg().await;
    let owners = format!("SELECT count(DISTINCT owner)::bigint FROM {}.offsets", names.schema);
    eventually("both instances own partitions", Duration::from_secs(60), || {
        let (client, owners) = (&client, &owners);
        async move { client.query_one(owners.as_str(), &[]).await.map(|r| r.get::<_, i64>(0) == 2).unwrap_or(false) }
    })
    .await;

    let mut on_a = Client::connect(port_a).await;
    on_a.subscribe(&["token:ETH"]).await;
    let mut on_b = Client::connect(port_b).await;
    on_b.subscribe(&["token:ETH"]).await;
    eventually("/v1/ws/stats sums both instances", Duration::from_secs(10), || async move {
        let (_, body) = http::get(port_a, "/v1/ws/stats").await;
        let stats: Value = serde_json::from_str(&body).unwrap_or_default();
        stats["sessions"] == 2 && stats["instances"].as_array().map(Vec::len) == Some(2)
    })
    .await;

    let truth = helpers::produce(&brokers, &names, 300, &stream_vars("max")).await;
    let expected = expected_states(&truth, "ETH");
    let mut got_a = Received::new();
    let mut got_b = Received::new();
    tokio::join!(
        got_a.until_final(&mut on_a, &truth, "token:ETH", "ETH"),
        got_b.until_final(&mut on_b, &truth, "token:ETH", "ETH"),
    );
    assert_eq!(got_a.states, expected, "client on instance a");
    assert_eq!(got_b.states, expected, "client on instance b");
    a.kill9().await;
    b.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_gets_every_swap_of_its_channel_over_redis_cluster() {
    let nodes = helpers::require_redis_cluster();
    let brokers = require_broker();
    let names = Names::new("it-ws-cluster");
    let mut vars = consumer_vars(&names, &brokers, "a");
    vars.push(("SWAPSTREAM_REDIS_MODE", "cluster".into()));
    vars.push(("SWAPSTREAM_REDIS_URL", nodes.into()));
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut client = Client::connect(port).await;
    let epoch = client.subscribe(&["token:SOL"]).await.remove(0)["epoch"].clone();

    let truth = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let mut received = Received::new();
    // The tenth swap's position, and the states after it.
    let mut position = None;
    while position.is_none() {
        let frame = client.frame(Duration::from_secs(60)).await;
        received.take(&frame, "token:SOL", "SOL");
        if received.states.len() == 10 && frame["type"] == "swap" {
            position = Some(frame["offset"].clone());
        }
    }
    let first_ten = received.states.clone();
    received.until_final(&mut client, &truth, "token:SOL", "SOL").await;
    assert_eq!(received.states, expected_states(&truth, "SOL"), "SOL swap states over Redis Cluster");

    // The channel's history is in the cluster too: a client resumes from the tenth swap.
    let mut resumed = Client::connect(port).await;
    let since = json!({"token:SOL": {"epoch": epoch, "offset": position}});
    resumed.send(json!({"op": "subscribe", "channels": ["token:SOL"], "since": since})).await;
    let subscribed = resumed.frame(Duration::from_secs(10)).await;
    assert_eq!(subscribed["recovered"], true, "{subscribed}");
    let rest: BTreeSet<_> = received.states.difference(&first_ten).cloned().collect();
    assert_eq!(subscribed["missed"], rest.len(), "{subscribed}");
    let mut replayed = Received::new();
    while replayed.states.len() < rest.len() {
        replayed.take(&resumed.frame(Duration::from_secs(10)).await, "token:SOL", "SOL");
    }
    assert_eq!(replayed.states, rest, "the replay is every state after the position");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_frames_do_not_wait_for_postgres_and_stats_follow_the_commit() {
    let brokers = require_broker();
    let names = Names::new("it-ws-early");
    let (mut consumer, port) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let first = helpers::produce(&brokers, &names, 30, &stream_vars("max")).await;
    wait_checkpointed(&names, delivered(&first), Duration::from_secs(90)).await;
    let mut client = Client::connect(port).await;
    let snapshot = client.subscribe(&["token:ETH"]).await.remove(0);
    let before = json!(first.expected["tokens"]["ETH"]["totals"]["swaps"].as_u64().unwrap());
    // Redis is written just after the commit: the stats may still follow.
    let mut received = Received::new();
    let mut shown = snapshot["snapshot"]["totals"]["swaps"].clone();
    while shown != before {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
        shown = received.last_stats.as_ref().map_or(json!(null), |s| s["totals"]["swaps"].clone());
    }
    assert!(received.states.is_empty(), "the first swaps' frames went out before their commit");

    // Another session holds the offsets table: no checkpoint can commit.
    let mut holder = helpers::pg().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {}.offsets IN EXCLUSIVE MODE", names.schema)).await.unwrap();
    let second = helpers::produce(&brokers, &names, 100, &stream_vars("max")).await;

    // Act: every new ETH swap state arrives meanwhile; the stats do not move.
    let expected = expected_states(&second, "ETH");
    while received.states.len() < expected.len() {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
        if let Some(stats) = &received.last_stats {
            assert_eq!(stats["totals"]["swaps"], before, "stats before the commit: {stats}");
        }
    }
    assert_eq!(received.states, expected);
    let watcher = helpers::pg().await;
    let waiting =
        "SELECT count(*)::bigint FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%offsets%'";
    let blocked: i64 = watcher.query_one(waiting, &[]).await.unwrap().get(0);
    assert!(blocked > 0, "the frames came while a checkpoint waited for the lock");
    assert!(helpers::checkpointed(&watcher, &names).await < delivered(&first) + delivered(&second));

    // Assert: once PostgreSQL lets go, the stats show every swap, once.
    lock.rollback().await.unwrap();
    let after = before.as_u64().unwrap() + second.expected["tokens"]["ETH"]["totals"]["swaps"].as_u64().unwrap();
    while received.last_stats.as_ref().map(|s| &s["totals"]["swaps"]) != Some(&json!(after)) {
        let frame = client.frame(Duration::from_secs(30)).await;
        received.take(&frame, "token:ETH", "ETH");
    }
    wait_checkpointed(&names, delivered(&first) + delivered(&second), Duration::from_secs(30)).await;
    while let Got::Frame(frame) = client.read(QUIET).await {
        received.take(&frame, "token:ETH", "ETH");
    }
    assert_eq!(received.states, expected, "no swap state twice, none after the commit");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn with_many_subscriptions_frames_gather_into_fewer_handoffs_and_none_is_lost() {
    let brokers = require_broker();
    let names = Names::new("it-ws-coalesce");
    // Ten subscriptions at 10 handoffs/s: frames gather for a second.
    // Stats frames, handed on apart from swaps, come every 5 s at most.
    let mut vars: Vec<_> = consumer_vars(&names, &brokers, "a")
        .into_iter()
        .filter(|(name, _)| *name != "SWAPSTREAM_WS_STATS_INTERVAL_MS")
        .collect();
    vars.extend([
        ("SWAPSTREAM_WS_HANDOFFS_PER_SEC", "10".into()),
        ("SWAPSTREAM_WS_COALESCE_MAX_MS", "1000".into()),
        ("SWAPSTREAM_WS_STATS_INTERVAL_MS", "5000".into()),
    ]);
    let (mut consumer, port) = start_consumer(&names, &vars, "a").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut client = Client::connect(port).await;
        client.subscribe(&["token:ETH"]).await;
        clients.push(client.drain());
    }
    let started = Instant::now();

    // Act
    let truth = helpers::produce(&brokers, &names, 300, &stream_vars("3000")).await;
    // The last frames are under way for at most a handoff and a checkpoint.
    let elapsed = started.elapsed() + Duration::from_secs(1);
    let totals = &truth.expected["tokens"]["ETH"]["totals"];
    let mut received = Vec::new();
    for client in &mut clients {
        let mut got = Received::new();
        while got.last_stats.as_ref().map(|s| &s["totals"]) != Some(totals) {
            let frame = tokio::time::timeout(Duration::from_secs(30), client.frame()).await.expect("final stats");
            got.take(&frame, "token:ETH", "ETH");
        }
        while let Ok(Some(Got::Frame(frame))) = tokio::time::timeout(QUIET, client.0.recv()).await {
            got.take(&frame, "token:ETH", "ETH");
        }
        received.push(got);
    }

    // Assert: every client got every state, in far fewer handoffs than frames.
    let expected = expected_states(&truth, "ETH");
    for got in &received {
        assert_eq!(got.states, expected);
    }
    let handoffs = metric(port, "swapstream_ws_handoffs_total ").await;
    let frames: f64 = received.iter().map(|r| (r.next_seq - 1) as f64).sum();
    let gathered = elapsed.as_secs_f64().ceil() + 1.0;
    // Stats frames go out on their own, and the final ones after production.
    let stats = (elapsed.as_secs_f64() / 5.0).ceil() + 3.0;
    assert!(
        handoffs <= 10.0 * (gathered + stats),
        "{handoffs} handoffs in {elapsed:?} for 10 clients: at most one a second and one per stats frame"
    );
    assert!(frames > 2.0 * handoffs, "{frames} frames in {handoffs} handoffs");
    // The fan-out's own latency was measured for the swap frames handed on.
    let timed = metric(port, "swapstream_ws_fanout_seconds_count ").await;
    assert!(timed >= 10.0 && timed <= frames, "{timed} fan-out timings for {frames} frames");
    consumer.kill9().await;
}
