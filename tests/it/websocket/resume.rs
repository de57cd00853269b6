//! Resume: a client that reconnects, to its instance restarted or to
//! another one, and subscribes with the position it had gets every swap
//! frame it missed, in order, then the live ones, none twice; a position
//! the history no longer holds is told so. An instance that loses its
//! pub/sub connection reads back what it missed the same way.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use swapstream::config::WsHistory;
use swapstream::domain::partial::AggKey;
use swapstream::storage::redis::{FeedSwap, RedisStore, SwapUpdate};

use super::client::{Client, Got};
use super::model::{expected_states, Received};
use super::{consumer_vars, create_topics, start_consumer, stream_vars};
use crate::helpers::{self, delivered, eventually, require_broker, wait_checkpointed, Child, Names};

/// A channel's position as a client keeps it: the epoch of its
/// `subscribed` frame, the offset of the last swap (or of `subscribed`).
#[derive(Debug, Clone)]
struct Position {
    epoch: Value,
    offset: Value,
}

impl Position {
    fn since(&self, channel: &str) -> Value {
        json!({ channel: {"epoch": self.epoch, "offset": self.offset} })
    }
}

/// Takes frames of `channel` into `received` until it holds `states` swap
/// states; returns the position after the last one.
async fn read_states(client: &mut Client, received: &mut Received, mut at: Position, states: usize) -> Position {
    while received.states.len() < states {
        let frame = client.frame(Duration::from_secs(60)).await;
        received.take(&frame, "token:ETH", "ETH");
        if frame["type"] == "swap" {
            at.offset = frame["offset"].clone();
        }
    }
    at
}

/// Subscribes with `since`, checks the answer recovered what was missed,
/// and continues `received` from its frames on.
async fn resume(port: u16, at: &Position, received: &mut Received) -> Client {
    let mut client = Client::connect(port).await;
    client
        .send(json!({"op": "subscribe", "id": "again", "channels": ["token:ETH"], "since": at.since("token:ETH")}))
        .await;
    let subscribed = client.frame(Duration::from_secs(10)).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!((&subscribed["id"], &subscribed["recovered"]), (&json!("again"), &json!(true)), "{subscribed}");
    assert_eq!((&subscribed["epoch"], &subscribed["offset"]), (&at.epoch, &at.offset), "{subscribed}");
    // Away while the producer went on: there is something to replay.
    assert!(subscribed["missed"].as_u64().is_some_and(|missed| missed > 0), "{subscribed}");
    // A new subscription numbers its frames from 1 again.
    received.next_seq = 1;
    client
}

/// Waits until the channel's history holds swaps after `at`, so that the
/// client has something to resume.
async fn moved_on(names: &Names, at: &Position) {
    let store = RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let key = AggKey::parse("token:ETH").unwrap();
    let epoch = at.epoch.as_str().unwrap().to_owned();
    let offset = at.offset.as_str().unwrap().parse().unwrap();
    eventually("the history moves on past the client's position", Duration::from_secs(60), || {
        let (store, key, epoch) = (&store, &key, &epoch);
        async move {
            let replay = store.history(key, Some((epoch, offset))).await.unwrap();
            replay.missed.is_ok_and(|missed| !missed.is_empty())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_resume_after_their_instance_restarts_and_on_another_instance_missing_nothing() {
    let brokers = require_broker();
    let names = Names::new("it-ws-resume");
    create_topics(&names, &brokers).await;
    let (mut a, port_a) = start_consumer(&names, &consumer_vars(&names, &brokers, "a"), "a").await;
    let (mut b, port_b) = start_consumer(&names, &consumer_vars(&names, &brokers, "b"), "b").await;

    let mut on_a = Client::connect(port_a).await;
    let subscribed = on_a.subscribe(&["token:ETH"]).await;
    let start = Position { epoch: subscribed[0]["epoch"].clone(), offset: subscribed[0]["offset"].clone() };
    let mut on_b = Client::connect(port_b).await;
    let subscribed = on_b.subscribe(&["token:ETH"]).await;
    assert_eq!(subscribed[0]["epoch"], start.epoch, "one history, whichever instance");

    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 2000, &stream_vars("12000")).await }
    });
    let (mut first, mut second) = (Received::new(), Received::new());
    let at_first = read_states(&mut on_a, &mut first, start.clone(), 20).await;
    let at_second = read_states(&mut on_b, &mut second, start, 40).await;
    drop((on_a, on_b));

    // The instance of the first client dies (its partitions are replayed
    // from their checkpoint by the other one) and comes back.
    a.kill9().await;
    let (mut a2, port_a2) = start_consumer(&names, &consumer_vars(&names, &brokers, "a2"), "a2").await;
    moved_on(&names, &at_first).await;
    moved_on(&names, &at_second).await;
    let mut first_again = resume(port_a2, &at_first, &mut first).await.drain();
    // The second client was on `b`, which is still up: it resumes on `a2`.
    let mut second_again = resume(port_a2, &at_second, &mut second).await.drain();

    let truth = producing.await.unwrap();
    first.until_final_drained(&mut first_again, &truth, "token:ETH", "ETH").await;
    second.until_final_drained(&mut second_again, &truth, "token:ETH", "ETH").await;
    let expected = expected_states(&truth, "ETH");
    assert!(expected.len() > 200, "{}", expected.len());
    // `take` refuses a state twice: each got every state once.
    assert_eq!(first.states, expected, "the first client's swap states differ from the ground truth");
    assert_eq!(second.states, expected, "the second client's swap states differ from the ground truth");
    assert_eq!(first.skipped + second.skipped, 0, "nothing was conflated");
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(60)).await;
    for consumer in [&mut b, &mut a2] {
        consumer.kill9().await;
    }
}

/// A swap state in the wire form, as the feed publishes it.
fn swap(n: u32) -> Arc<str> {
    json!({"tx_hash": format!("0x{n:064x}"), "log_index": 0, "status": "pending",
        "timestamp": "2026-11-25T08:00:00Z", "token_from": "ETH", "token_to": "USDC",
        "amount_from": "1", "amount_to": "4000", "usd_value": "4000"})
    .to_string()
    .into()
}

/// The update of token:ETH with swaps `numbers`, from records of the same
/// numbers in one partition.
fn update(numbers: &[u32], gap: bool) -> SwapUpdate {
    let swaps = numbers.iter().map(|&n| FeedSwap { json: swap(n), source: "swaps/0".into(), offset: n.into() });
    SwapUpdate { key: AggKey::parse("token:ETH").unwrap(), swaps: swaps.collect(), gap }
}

/// The swap number and the offset of a `swap` frame.
fn numbered(frame: &Value) -> (u32, String) {
    assert_eq!(frame["type"], "swap", "{frame}");
    let hash = frame["swap"]["tx_hash"].as_str().unwrap();
    (u32::from_str_radix(&hash[2..], 16).unwrap(), frame["offset"].as_str().unwrap().to_owned())
}

/// Subscribes to the channel `since` names, from the position it gives.
async fn subscribe_since(port: u16, since: Value) -> (Client, Value) {
    let channels: Vec<&String> = since.as_object().unwrap().keys().collect();
    let mut client = Client::connect(port).await;
    client.send(json!({"op": "subscribe", "channels": channels, "since": since})).await;
    let frame = client.frame(Duration::from_secs(10)).await;
    (client, frame)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_replays_what_was_missed_and_says_when_it_cannot() {
    let names = Names::new("it-ws-history");
    let vars = helpers::api_vars(&names, &[]);
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = helpers::logged_port(&api).await;
    let settings = names.settings(&[]);
    // Entries older than the age are trimmed at the next append and an idle
    // history expires after it: long enough for every step below on a
    // loaded machine, short enough to wait out at the end.
    let history = WsHistory { size: 1000, max_age: Duration::from_secs(5) };
    let feed = RedisStore::connect(&settings.redis, 100).await.unwrap().with_history(history);

    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["token:ETH"]).await;
    let epoch = subscribed[0]["epoch"].clone();
    assert_eq!(subscribed[0]["offset"], "0-0-0", "an empty history: before everything");
    feed.publish_swaps(&[update(&[1, 2], false)]).await.unwrap();
    // Published again (a replay after a restart): not sent again.
    feed.publish_swaps(&[update(&[1, 2], false)]).await.unwrap();
    feed.publish_swaps(&[update(&[2, 3], false)]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(numbered(&client.frame(Duration::from_secs(10)).await));
    }
    assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3], "each state once: {got:?}");
    assert!(got[0].1.ends_with("-1") && got[1].1.ends_with("-2") && got[2].1.ends_with("-1"), "{got:?}");
    assert!(matches!(client.read(Duration::from_millis(300)).await, Got::Timeout), "no repeat");
    drop(client);

    // Away: 4 and 5 come, with a gap in the feed before 6.
    feed.publish_swaps(&[update(&[4, 5], false)]).await.unwrap();
    feed.publish_swaps(&[update(&[6], true)]).await.unwrap();
    let after_3 = json!({"token:ETH": {"epoch": epoch, "offset": got[2].1}});
    let (mut client, subscribed) = subscribe_since(port, after_3.clone()).await;
    assert_eq!((&subscribed["recovered"], &subscribed["missed"]), (&json!(true), &json!(3)), "{subscribed}");
    let mut replayed = Vec::new();
    for _ in 0..3 {
        let frame = client.frame(Duration::from_secs(10)).await;
        replayed.push((frame["seq"].as_u64().unwrap(), numbered(&frame)));
    }
    let shown: Vec<(u64, u32)> = replayed.iter().map(|(seq, (n, _))| (*seq, *n)).collect();
    assert_eq!(shown, [(1, 4), (2, 5), (4, 6)], "the feed's gap skips seq 3");
    // Live frames follow the replay.
    feed.publish_swaps(&[update(&[7], false)]).await.unwrap();
    let live = client.frame(Duration::from_secs(10)).await;
    assert_eq!((live["seq"].as_u64(), numbered(&live).0), (Some(5), 7));
    let head = live["offset"].clone();
    drop(client);

    // From the middle of an entry: after 4, only 5 of its entry.
    let after_4 = json!({"token:ETH": {"epoch": epoch, "offset": replayed[0].1 .1}});
    let (mut client, subscribed) = subscribe_since(port, after_4).await;
    assert_eq!(subscribed["missed"], 3, "5, 6 and 7: {subscribed}");
    assert_eq!(numbered(&client.frame(Duration::from_secs(10)).await).0, 5);
    drop(client);

    // Caught up: nothing missed.
    let (_client, subscribed) = subscribe_since(port, json!({"token:ETH": {"epoch": epoch, "offset": head}})).await;
    assert_eq!((&subscribed["recovered"], &subscribed["missed"]), (&json!(true), &json!(0)), "{subscribed}");

    // Positions the history cannot serve are told, with a snapshot.
    let future = json!({"token:ETH": {"epoch": epoch, "offset": "99999999999999-0-1"}});
    let (_client, subscribed) = subscribe_since(port, future).await;
    assert_eq!((&subscribed["recovered"], &subscribed["reason"]), (&json!(false), &json!("unknown_offset")));
    assert!(subscribed["snapshot"].is_object() && subscribed["offset"] == head, "{subscribed}");
    let bad = json!({"token:ETH": {"epoch": epoch, "offset": "seven"}});
    let (_client, answer) = subscribe_since(port, bad).await;
    assert_eq!((&answer["type"], &answer["code"]), (&json!("error"), &json!("bad_since")), "{answer}");

    // Idle past SWAPSTREAM_WS_HISTORY_SECS the stream is gone, the epoch
    // stays: the newest position still recovers, an older one is told.
    let stream = format!("{}:{{token:ETH}}:history", names.redis_prefix);
    let client = redis::Client::open(settings.redis.urls.expose()[0].as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    eventually("the idle history expires", Duration::from_secs(20), || {
        let (stream, mut redis) = (stream.clone(), redis.clone());
        async move { redis::cmd("EXISTS").arg(&stream).query_async::<i64>(&mut redis).await.unwrap() == 0 }
    })
    .await;
    let (_client, subscribed) = subscribe_since(port, json!({"token:ETH": {"epoch": epoch, "offset": head}})).await;
    assert_eq!((&subscribed["recovered"], &subscribed["missed"]), (&json!(true), &json!(0)), "{subscribed}");
    feed.publish_swaps(&[update(&[8], false)]).await.unwrap();
    let (_client, subscribed) = subscribe_since(port, after_3).await;
    assert_eq!((&subscribed["recovered"], &subscribed["reason"]), (&json!(false), &json!("history_expired")));

    // Kept: at most SWAPSTREAM_WS_HISTORY_SIZE swaps (3 here), oldest out first.
    let small = RedisStore::connect(&settings.redis, 100)
        .await
        .unwrap()
        .with_history(WsHistory { size: 3, max_age: Duration::from_secs(600) });
    let btc = |n: u32| SwapUpdate {
        key: AggKey::parse("token:BTC").unwrap(),
        swaps: vec![FeedSwap { json: swap(n), source: "swaps/1".into(), offset: n.into() }],
        gap: false,
    };
    let mut client = Client::connect(port).await;
    let subscribed = client.subscribe(&["token:BTC"]).await;
    let btc_epoch = subscribed[0]["epoch"].clone();
    let mut offsets = Vec::new();
    for n in 1..=5 {
        small.publish_swaps(&[btc(n)]).await.unwrap();
        offsets.push(numbered(&client.frame(Duration::from_secs(10)).await).1);
    }
    let since = |at: &str| json!({"token:BTC": {"epoch": btc_epoch, "offset": at}});
    let (_client, subscribed) = subscribe_since(port, since(&offsets[1])).await;
    let told = (&subscribed["recovered"], &subscribed["reason"]);
    assert_eq!(told, (&json!(false), &json!("history_expired")), "{subscribed}");
    let (_client, subscribed) = subscribe_since(port, since(&offsets[2])).await;
    assert_eq!((&subscribed["recovered"], &subscribed["missed"]), (&json!(true), &json!(2)), "{subscribed}");
    // One entry of three swaps: the three entries before it go at once,
    // and the history holds that entry alone, counted right.
    let three = SwapUpdate { swaps: [6, 7, 8].into_iter().flat_map(|n| btc(n).swaps).collect(), ..btc(6) };
    small.publish_swaps(&[three]).await.unwrap();
    let mut newest = String::new();
    for _ in 0..3 {
        newest = numbered(&client.frame(Duration::from_secs(10)).await).1;
    }
    for at in &offsets[2..] {
        let (_client, subscribed) = subscribe_since(port, since(at)).await;
        let told = (&subscribed["recovered"], &subscribed["reason"]);
        assert_eq!(told, (&json!(false), &json!("history_expired")), "{at}: {subscribed}");
    }
    let (_client, subscribed) = subscribe_since(port, since(&newest)).await;
    assert_eq!((&subscribed["recovered"], &subscribed["missed"]), (&json!(true), &json!(0)), "{subscribed}");
    let btc_key = |suffix: &str| format!("{}:{{token:BTC}}:{suffix}", names.redis_prefix);
    let counted: (i64, i64, Option<i64>) = redis::pipe()
        .cmd("XLEN")
        .arg(btc_key("history"))
        .cmd("LLEN")
        .arg(btc_key("history-index"))
        .cmd("HGET")
        .arg(btc_key("history-meta"))
        .arg("swaps")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(counted, (1, 1, Some(3)), "entries, index entries and swaps held");

    // Redis lost the channel's history: a new epoch.
    let meta = format!("{}:{{token:ETH}}:history-meta", names.redis_prefix);
    let _: i64 = redis::cmd("DEL").arg(&stream).arg(&meta).query_async(&mut redis).await.unwrap();
    let (_client, subscribed) = subscribe_since(port, json!({"token:ETH": {"epoch": epoch, "offset": head}})).await;
    assert_eq!((&subscribed["recovered"], &subscribed["reason"]), (&json!(false), &json!("epoch_changed")));
    assert_ne!(subscribed["epoch"], epoch);
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn updates_lost_with_the_pubsub_connection_are_read_back_without_a_gap() {
    let names = Names::new("it-ws-pubsub-loss");
    let redis = helpers::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let vars = helpers::api_vars(&names, &[("SWAPSTREAM_REDIS_URL", &url)]);
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = helpers::logged_port(&api).await;
    let settings = names.settings(&[("SWAPSTREAM_REDIS_URL", &url)]);
    let feed = RedisStore::connect(&settings.redis, 100).await.unwrap();
    let mut client = Client::connect(port).await;
    client.subscribe(&["token:ETH"]).await;
    feed.publish_swaps(&[update(&[1], false)]).await.unwrap();
    let first = client.frame(Duration::from_secs(10)).await;
    assert_eq!((first["seq"].as_u64(), numbered(&first).0), (Some(1), 1));

    // Every pub/sub connection is cut; 2 is published before the registry
    // is back (it waits a moment before reconnecting), so only the history
    // has it.
    let mut conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut conn).await.unwrap();
    feed.publish_swaps(&[update(&[2], false)]).await.unwrap();
    eventually("the pub/sub connection is back", Duration::from_secs(15), || async move {
        super::metric(port, "swapstream_ws_pubsub_resumed_total ").await >= 1.0
    })
    .await;
    feed.publish_swaps(&[update(&[3], false)]).await.unwrap();
    for (seq, n) in [(2, 2), (3, 3)] {
        let frame = client.frame(Duration::from_secs(10)).await;
        assert_eq!((frame["seq"].as_u64(), numbered(&frame).0), (Some(seq), n), "no gap, none twice: {frame}");
    }
    assert!(super::metric(port, "swapstream_ws_pubsub_recovered_total ").await >= 1.0, "2 came from the history");
    assert!(matches!(client.read(Duration::from_millis(300)).await, Got::Timeout), "nothing more");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
