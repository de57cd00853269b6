//! The optional Redis roles: REST reads from a read replica (the primary
//! answering when the replica does not), and WebSocket client tracking in a
//! Redis of its own; the `api` role as a separate process against the
//! servers of `scripts/redis-replica up`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use swapstream::domain::partial::{AggKey, PartialDelta, TotalsPartial};
use swapstream::domain::TokenSymbol;
use swapstream::storage::redis::RedisStore;
use swapstream::stream::{PartialChange, Tp};

use crate::helpers::{api_vars, eventually, logged_port, require_redis_replica, Child, Names};
use crate::support::http;

/// Calls of each command Redis at `url` has served (`INFO commandstats`).
async fn command_calls(url: &str) -> HashMap<String, u64> {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut conn).await.unwrap();
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

async fn redis_cmd<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_reads_go_to_the_replica_and_websocket_tracking_to_its_own_redis() {
    let [primary, replica, tracking] = require_redis_replica();
    let names = Names::new("it-redis-roles");
    // Live state written to the primary, and seen by the replica.
    let store = RedisStore::connect(&names.settings(&[("SWAPSTREAM_REDIS_URL", primary)]).redis, 100).await.unwrap();
    let key = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
    let delta = PartialDelta {
        totals: TotalsPartial { swaps: 5, ..TotalsPartial::default() },
        pending: 0,
        candles: Vec::new(),
        new_recent: Vec::new(),
        history: Vec::new(),
    };
    let change = PartialChange { key: key.clone(), tp: Tp::new("swaps.ETH", 0), delta };
    store.write(&[change], &HashMap::new(), &[]).await.unwrap();
    let names_key = format!("{}:names:token", names.redis_prefix);
    eventually("the replica having the writes", Duration::from_secs(10), || async {
        redis_cmd::<i64>(replica, redis::cmd("ZCARD").arg(&names_key)).await == 1
    })
    .await;

    let vars = api_vars(
        &names,
        &[
            ("SWAPSTREAM_REDIS_URL", primary),
            ("SWAPSTREAM_REDIS_READ_URLS", replica),
            ("SWAPSTREAM_REDIS_WS_URL", tracking),
            // Shorter than the replica's pause below.
            ("SWAPSTREAM_REDIS_TIMEOUT_MS", "300"),
        ],
    );
    let mut api = Child::spawn(&format!("{}api", names.topic_prefix), &["api"], &vars);
    let port = logged_port(&api).await;
    let reads = ["hgetall", "zscore", "zrange", "mget", "hmget"];
    let sum = |calls: &HashMap<String, u64>| reads.iter().map(|c| calls.get(*c).copied().unwrap_or(0)).sum::<u64>();
    let (primary_before, replica_before) = (command_calls(primary).await, command_calls(replica).await);
    let stats = http::request(port, "GET", "/v1/tokens/ETH/stats", &[]).await;
    assert_eq!(stats.status, 200);
    assert_eq!(stats.json()["totals"]["swaps"], 5);
    let listed = http::request(port, "GET", "/v1/tokens", &[]).await.json();
    assert_eq!(listed["tokens"][0]["token"], "ETH");
    let (primary_after, replica_after) = (command_calls(primary).await, command_calls(replica).await);
    assert!(sum(&replica_after) >= sum(&replica_before) + 3, "{replica_before:?} -> {replica_after:?}");
    assert_eq!(sum(&primary_after), sum(&primary_before), "no reads on the primary");

    // The replica stops answering for a while (a paused server also
    // refuses to be unpaused): the primary answers, and it is counted.
    let _: () = redis_cmd(replica, redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL")).await;
    let stats = http::request(port, "GET", "/v1/tokens/ETH/stats", &[]).await;
    assert_eq!((stats.status, &stats.json()["totals"]["swaps"]), (200, &Value::from(5)));
    let metrics = String::from_utf8(http::request(port, "GET", "/metrics", &[]).await.body).unwrap();
    assert!(metric(&metrics, "swapstream_redis_replica_fallbacks_total") >= 1.0, "{metrics}");

    // A WebSocket session is tracked in the tracking Redis only.
    let (_socket, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/v1/ws")).await.unwrap();
    eventually("the session counted", Duration::from_secs(15), || async {
        http::request(port, "GET", "/v1/ws/stats", &[]).await.json()["sessions"] == 1
    })
    .await;
    let instances = format!("{}:ws:instances", names.redis_prefix);
    let tracked: i64 = redis_cmd(tracking, redis::cmd("ZCARD").arg(&instances)).await;
    let on_primary: i64 = redis_cmd(primary, redis::cmd("EXISTS").arg(&instances)).await;
    assert_eq!((tracked, on_primary), (1, 0));

    assert!(api.terminate(Duration::from_secs(10)).await.success());
    store.delete_all().await.unwrap();
    let tracking_store =
        RedisStore::connect(&names.settings(&[("SWAPSTREAM_REDIS_URL", tracking)]).redis, 100).await.unwrap();
    tracking_store.delete_all().await.unwrap();
}
