//! The consumer role as a separate process against a real broker, PostgreSQL
//! and Redis: its stored aggregates must equal the producer's ground truth,
//! whatever happens to it.

use std::time::Duration;

use rand::Rng;
use serde_json::json;
use swapstream::domain::aggregate::Interval;
use swapstream::domain::partial::Merged;
use swapstream::domain::window::{self, WINDOWS};

use crate::helpers::{
    self, delivered, eventually, from_postgres, from_redis, logged_port, require_broker, wait_checkpointed, Child,
    Names,
};
use crate::support::http;

const TOKENS: &str = "ETH,BTC,USDC,SOL";

fn stream_vars(rate: &str) -> Vec<(&'static str, String)> {
    helpers::stream_vars(TOKENS, rate, 2000)
}

fn consumer_vars(names: &Names, brokers: &str) -> Vec<(&'static str, String)> {
    let mut vars = names.vars(brokers);
    vars.push(("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()));
    vars.push(("SWAPSTREAM_BATCH_MAX_MS", "100".into()));
    vars
}

/// Checks PostgreSQL (and Redis) against the ground truth, windows included.
async fn assert_matches(names: &Names, truth: &swapstream::producer::ground_truth::GroundTruthFile) {
    let (stored, pending) = from_postgres(names).await;
    assert_eq!(stored, truth.expected, "PostgreSQL differs from the ground truth");
    assert_eq!(pending, 0, "every swap reached a terminal status: nothing may stay pending");

    let settings = names.settings(&[]);
    let store =
        swapstream::storage::postgres::PgStore::connect(&settings.postgres, 100, &swapstream::telemetry::discard())
            .await
            .unwrap();
    let mut most_makers = 0;
    for (key, partials) in store.load_all(chrono::Utc::now()).await.unwrap() {
        let merged = Merged::of(partials.values());
        for (label, length) in WINDOWS {
            let got = serde_json::to_value(window::of(
                &merged.candles,
                window::At::with_any_future(truth.windows_at),
                length,
            ))
            .unwrap();
            let expected = truth.windows.get(key.to_string()).and_then(|w| w.get(label)).cloned();
            let expected = expected
                .unwrap_or_else(|| serde_json::to_value(swapstream::domain::window::Window::default()).unwrap());
            assert_eq!(got, expected, "window {label} of {key}");
            most_makers = most_makers.max(got["makers"].as_u64().unwrap());
        }
    }
    // Every generated swap has its own maker: some window is past the
    // exact count, so the estimate's registers were stored and merged too.
    assert!(most_makers > swapstream::domain::makers::EXACT_MAX as u64, "{most_makers}");
}

#[tokio::test(flavor = "multi_thread")]
async fn stored_aggregates_equal_the_ground_truth_and_sigterm_is_graceful() {
    let brokers = require_broker();
    let names = Names::new("it-truth");
    let truth = helpers::produce(&brokers, &names, 400, &stream_vars("max")).await;
    assert!(truth.counts.sent.duplicates > 0 && truth.counts.sent.reordered > 0 && truth.counts.failed > 0);

    let mut consumer = Child::spawn(&names.schema, &["consumer"], &consumer_vars(&names, &brokers));
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    assert_matches(&names, &truth).await;
    let redis_truth = truth.expected.clone();
    eventually("Redis holds the ground truth", Duration::from_secs(20), || {
        let names = names.clone();
        let expected = redis_truth.clone();
        async move { from_redis(&names, &[]).await == expected }
    })
    .await;

    check_rest(&consumer, &truth).await;

    let status = consumer.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "SIGTERM must end in exit 0, got {status}; log: {}", consumer.log_text());
    assert!(consumer.log_text().contains("leaving the consumer group"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_stuck_in_postgres_does_not_hold_up_sigterm_and_is_read_again() {
    let brokers = require_broker();
    let names = Names::new("it-stuck");
    let first = helpers::produce(&brokers, &names, 100, &stream_vars("max")).await;
    let mut vars = consumer_vars(&names, &brokers);
    vars.push(("SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", "3".into()));
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, delivered(&first), Duration::from_secs(90)).await;

    // Another session holds the offsets table: the next checkpoint waits on it.
    let mut holder = helpers::pg().await;
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute(&format!("LOCK TABLE {}.offsets IN EXCLUSIVE MODE", names.schema)).await.unwrap();
    let second = helpers::produce(&brokers, &names, 100, &stream_vars("max")).await;
    let watcher = helpers::pg().await;
    let waiting =
        "SELECT count(*)::bigint FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%offsets%'";
    eventually("a checkpoint waits for the lock", Duration::from_secs(30), || {
        let watcher = &watcher;
        async move { watcher.query_one(waiting, &[]).await.map(|r| r.get::<_, i64>(0) > 0).unwrap_or(false) }
    })
    .await;

    let asked = std::time::Instant::now();
    consumer.terminate(Duration::from_secs(15)).await;
    assert!(asked.elapsed() < Duration::from_secs(10), "stopped after {:?}", asked.elapsed());
    assert!(consumer.log_text().contains("the reader did not stop in time"), "{}", consumer.log_text());
    lock.rollback().await.unwrap();

    // Nothing of the second run was checkpointed, so it is all read again.
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, delivered(&first) + delivered(&second), Duration::from_secs(90)).await;
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_swaps_are_counted_over_all_of_a_keys_partitions() {
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let brokers = require_broker();
    let names = Names::new("it-pending-gauge");
    let topic = format!("{}ETH", names.topic_prefix);
    let settings = names.settings(&[("SWAPSTREAM_KAFKA_PARTITIONS", "4"), ("SWAPSTREAM_KAFKA_DLQ_TOPIC", &names.dlq)]);
    swapstream::kafka::create_topics(
        &settings.kafka,
        &brokers,
        std::slice::from_ref(&topic),
        &swapstream::telemetry::discard(),
    )
    .await
    .expect("creating the topic");
    let producer: FutureProducer = rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    // Five swaps left pending, over the four partitions of ETH's topic.
    for (hash, partition) in [(1u8, 0), (2, 0), (3, 1), (4, 2), (5, 3)] {
        let payload = helpers::swap_json(hash, -5, "pending", "1", "ETH");
        let record = FutureRecord::to(&topic).partition(partition).key("k").payload(&payload);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }

    let mut consumer = Child::spawn(&names.schema, &["consumer"], &consumer_vars(&names, &brokers));
    wait_checkpointed(&names, 5, Duration::from_secs(60)).await;

    let port = helpers::logged_port(&consumer).await;
    for key in ["token:ETH", "pair:ETH-USDC"] {
        let line = format!("swapstream_pending_swaps{{key=\"{key}\"}} 5");
        eventually(&format!("{line} in the metrics"), Duration::from_secs(10), || {
            let line = line.clone();
            async move { http::get(port, "/metrics").await.1.lines().any(|l| l == line) }
        })
        .await;
    }
    let (status, body) = http::get(port, "/v1/tokens/ETH/stats").await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["pending"], 5, "{body}");
    consumer.kill9().await;
}

/// The `/v1` endpoints answer with the ground truth's values.
async fn check_rest(consumer: &Child, truth: &swapstream::producer::ground_truth::GroundTruthFile) {
    let port = helpers::logged_port(consumer).await;
    let get = |path: &'static str| async move {
        let (status, body) = http::get(port, path).await;
        (
            status,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|_| panic!("{path}: not JSON: {body}")),
        )
    };
    let eth = &truth.expected["tokens"]["ETH"];
    let (status, stats) = get("/v1/tokens/eth/stats").await;
    assert_eq!(status, 200);
    assert_eq!(stats["token"], "ETH");
    assert_eq!(stats["totals"], eth["totals"]);
    assert_eq!(stats["price_usd"], eth["price_usd"]);
    assert_eq!(stats["pending"], 0);
    for window in ["5m", "1h", "6h", "24h"] {
        assert!(stats["windows"][window]["swaps"].is_u64(), "window {window}: {stats}");
    }
    let (status, candles) = get("/v1/tokens/ETH/candles?interval=1m&limit=1000").await;
    assert_eq!(status, 200);
    assert_eq!(candles["candles"], eth["candles"]["1m"]);
    let (status, pair) = get("/v1/pairs/usdc-eth/stats").await;
    assert_eq!((status, &pair["pair"]), (200, &json!("ETH-USDC")));
    assert_eq!(pair["totals"], truth.expected["pairs"]["ETH-USDC"]["totals"]);
    let (status, swaps) = get("/v1/tokens/ETH/swaps?limit=5").await;
    assert_eq!(status, 200);
    assert_eq!(swaps["swaps"].as_array().map(Vec::len), Some(5));
    let (status, tokens) = get("/v1/tokens").await;
    assert_eq!((status, tokens["tokens"].as_array().map(Vec::len)), (200, Some(TOKENS.split(',').count())));

    let (status, missing) = get("/v1/tokens/NOPE/stats").await;
    assert_eq!((status, &missing["error"]["code"]), (404, &json!("not_found")));
    let (status, bad) = get("/v1/tokens/ETH/candles?interval=2h").await;
    assert_eq!((status, &bad["error"]["code"]), (400, &json!("bad_parameter")));
    assert!(bad["error"]["message"].as_str().unwrap().starts_with("interval:"), "{bad}");
    let (status, bad) = get("/v1/tokens/ETH/candles?limit=5000").await;
    assert!(status == 400 && bad["error"]["message"].as_str().unwrap().starts_with("limit:"), "{bad}");
    let (status, bad) = get("/v1/tokens/E%20TH/stats").await;
    assert!(status == 400 && bad["error"]["message"].as_str().unwrap().starts_with("token:"), "{bad}");

    let (_, metrics) = http::get(port, "/metrics").await;
    for line in [
        "swapstream_http_requests_total{route=\"/v1/tokens/{token}/stats\",status=\"200\"} 1",
        "swapstream_http_requests_total{route=\"/v1/tokens/{token}/stats\",status=\"404\"} 1",
        "swapstream_http_request_duration_seconds_count{route=\"/v1/tokens/{token}/candles\"} 3",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn flushed_redis_is_rebuilt_from_postgres() {
    let brokers = require_broker();
    let names = Names::new("it-redis-loss");
    let truth = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &consumer_vars(&names, &brokers));
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let expected = truth.expected.clone();
    let matches = || {
        let (names, expected) = (names.clone(), expected.clone());
        async move { from_redis(&names, &[]).await == expected }
    };
    eventually("Redis holds the ground truth", Duration::from_secs(20), matches).await;

    let settings = names.settings(&[]);
    let redis = swapstream::storage::redis::RedisStore::connect(&settings.redis, 100).await.unwrap();
    redis.delete_all().await.unwrap();
    assert_eq!(from_redis(&names, &[]).await, json!({"tokens": {}, "pairs": {}}), "flushed");

    eventually("Redis is rebuilt with the same values", Duration::from_secs(20), matches).await;
    consumer.kill9().await;
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_whose_live_write_failed_is_written_again_alone_without_a_rebuild() {
    let brokers = require_broker();
    let names = Names::new("it-redis-rewrite");
    let first = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &consumer_vars(&names, &brokers));
    wait_checkpointed(&names, delivered(&first), Duration::from_secs(90)).await;
    let port = logged_port(&consumer).await;
    let redis_is_postgres = || {
        let names = names.clone();
        async move { from_redis(&names, &[]).await == from_postgres(&names).await.0 }
    };
    eventually("Redis holds what PostgreSQL holds", Duration::from_secs(20), redis_is_postgres).await;
    let metrics = || async move { http::get(port, "/metrics").await.1 };
    // The first check of Redis' generation counts as a rebuild.
    eventually("the first build", Duration::from_secs(20), || async {
        metric(&metrics().await, "swapstream_redis_rebuilds_total") >= 1.0
    })
    .await;
    let rebuilds = metric(&metrics().await, "swapstream_redis_rebuilds_total");

    // SOL's partials hash becomes a string: each write of SOL now fails
    // (WRONGTYPE), the other keys' succeed.
    let mut redis =
        redis::Client::open("redis://127.0.0.1:6379").unwrap().get_multiplexed_async_connection().await.unwrap();
    let partials = format!("{}:{{token:SOL}}:partials", names.redis_prefix);
    let _: () = redis::cmd("SET").arg(&partials).arg("not a hash").query_async(&mut redis).await.unwrap();
    let second = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    eventually("SOL written again, and failing again", Duration::from_secs(60), || async {
        let text = metrics().await;
        metric(&text, "swapstream_redis_rewritten_keys_total") >= 2.0
            && metric(&text, "swapstream_redis_errors_total") >= 2.0
    })
    .await;
    wait_checkpointed(&names, delivered(&first) + delivered(&second), Duration::from_secs(90)).await;
    // The other keys were written as usual meanwhile (SOL's cannot be read).
    let store = swapstream::storage::redis::RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let mut others = std::collections::BTreeMap::new();
    for key in store.keys().await.unwrap().into_iter().filter(|k| !k.to_string().contains("SOL")) {
        others.insert(key.clone(), store.merged(&key, &Interval::ALL, 0).await.unwrap());
    }
    let (stored, _) = from_postgres(&names).await;
    let in_redis = helpers::as_reference(others);
    for token in ["ETH", "BTC", "USDC"] {
        assert_eq!(in_redis["tokens"][token], stored["tokens"][token], "{token}: written as usual meanwhile");
    }
    assert_eq!(in_redis["pairs"]["BTC-ETH"], stored["pairs"]["BTC-ETH"]);

    // Once the key can be written, the next rewrite restores SOL in full.
    let _: () = redis::cmd("DEL").arg(&partials).query_async(&mut redis).await.unwrap();
    eventually("Redis holds what PostgreSQL holds again", Duration::from_secs(20), redis_is_postgres).await;
    assert_eq!(metric(&metrics().await, "swapstream_redis_rebuilds_total"), rebuilds, "no rebuild of every key");
    consumer.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_counts_nothing_twice() {
    let brokers = require_broker();
    let names = Names::new("it-crash");
    // Dynamic membership: every restart is a new member, and the killed
    // one's partitions wait for its session to time out.
    let mut vars = consumer_vars(&names, &brokers);
    vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "6000".into()));

    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 1500, &stream_vars("4000")).await }
    });

    let client = helpers::pg().await;
    let mut kills = 0;
    while kills < 5 {
        let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
        // Kill only while it is making progress, so kills land mid-batch and
        // mid-checkpoint rather than while it waits to join the group.
        let before = helpers::checkpointed(&client, &names).await;
        eventually("the consumer makes progress", Duration::from_secs(60), || {
            let (client, names) = (&client, &names);
            async move { helpers::checkpointed(client, names).await > before }
        })
        .await;
        tokio::time::sleep(Duration::from_millis(rand::thread_rng().gen_range(0..1500))).await;
        consumer.kill9().await;
        kills += 1;
    }
    let truth = producing.await.unwrap();
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(120)).await;
    assert_matches(&names, &truth).await;
    // The last kill may have come after everything was stored: wait for the
    // new process to be up before asking it to stop.
    helpers::logged_port(&consumer).await;
    let status = consumer.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "{}", consumer.log_text());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_survivor_takes_over_a_killed_members_partitions() {
    let brokers = require_broker();
    let names = Names::new("it-rebalance");
    let producing = tokio::spawn({
        let (brokers, names) = (brokers.clone(), names.clone());
        async move { helpers::produce(&brokers, &names, 800, &stream_vars("3000")).await }
    });
    let member = |id: &str| {
        let mut vars = consumer_vars(&names, &brokers);
        vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "6000".into()));
        vars.push(("SWAPSTREAM_INSTANCE_ID", format!("{}-{id}", names.schema)));
        Child::spawn(&format!("{}-{id}", names.schema), &["consumer"], &vars)
    };
    let mut a = member("a");
    let mut b = member("b");
    let client = helpers::pg().await;
    let owners = format!("SELECT count(DISTINCT owner)::bigint FROM {}.offsets", names.schema);
    eventually("both members own partitions", Duration::from_secs(60), || {
        let (client, owners) = (&client, &owners);
        async move { client.query_one(owners.as_str(), &[]).await.map(|r| r.get::<_, i64>(0) == 2).unwrap_or(false) }
    })
    .await;
    a.kill9().await;

    let truth = producing.await.unwrap();
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(120)).await;
    let only_b = format!("SELECT count(*)::bigint FROM {}.offsets WHERE owner <> $1", names.schema);
    let b_id = format!("{}-b", names.schema);
    let others: i64 = client.query_one(only_b.as_str(), &[&b_id]).await.unwrap().get(0);
    assert_eq!(others, 0, "the survivor owns every partition");
    assert_matches(&names, &truth).await;
    b.kill9().await;
}

/// The partitions a consumer's metrics report lag for, as `topic/partition`.
async fn lag_series(port: u16) -> std::collections::BTreeSet<String> {
    let (_, text) = http::get(port, "/metrics").await;
    text.lines()
        .filter_map(|l| l.strip_prefix("swapstream_consumer_lag{"))
        .filter_map(|labels| {
            let value = |name: &str| labels.split(&format!("{name}=\"")).nth(1)?.split('"').next().map(str::to_owned);
            Some(format!("{}/{}", value("topic")?, value("partition")?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_reports_lag_only_for_the_partitions_it_holds() {
    let brokers = require_broker();
    let names = Names::new("it-lag");
    helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let member = |id: &str| {
        let mut vars = consumer_vars(&names, &brokers);
        vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "6000".into()));
        vars.push(("SWAPSTREAM_INSTANCE_ID", format!("{}-{id}", names.schema)));
        Child::spawn(&format!("{}-{id}", names.schema), &["consumer"], &vars)
    };
    let client = helpers::pg().await;
    let owned_by = |id: String| {
        let sql = format!("SELECT topic || '/' || partition FROM {}.offsets WHERE owner = $1", names.schema);
        let client = &client;
        async move {
            let rows = client.query(sql.as_str(), &[&id]).await.unwrap_or_default();
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<std::collections::BTreeSet<String>>()
        }
    };
    let a_id = format!("{}-a", names.schema);
    let mut a = member("a");
    let port = helpers::logged_port(&a).await;
    eventually("the only member reports lag for every partition it holds", Duration::from_secs(60), || {
        let (owned_by, a_id) = (&owned_by, a_id.clone());
        async move {
            let (series, owned) = (lag_series(port).await, owned_by(a_id).await);
            !series.is_empty() && series == owned
        }
    })
    .await;
    let alone = lag_series(port).await.len();

    // A second member takes some partitions: the first stops reporting them.
    let mut b = member("b");
    eventually("the first member reports only the partitions it kept", Duration::from_secs(60), || {
        let owned_by = &owned_by;
        let a_id = a_id.clone();
        async move {
            let (series, owned) = (lag_series(port).await, owned_by(a_id).await);
            series.len() < alone && series.is_subset(&owned)
        }
    })
    .await;
    a.kill9().await;
    b.kill9().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cluster_holds_the_live_state() {
    let nodes = helpers::require_redis_cluster();
    let brokers = require_broker();
    let names = Names::new("it-cluster");
    let truth = helpers::produce(&brokers, &names, 200, &stream_vars("max")).await;
    let mut vars = consumer_vars(&names, &brokers);
    vars.push(("SWAPSTREAM_REDIS_MODE", "cluster".into()));
    vars.push(("SWAPSTREAM_REDIS_URL", nodes.into()));
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let expected = truth.expected.clone();
    eventually("the Redis Cluster holds the ground truth", Duration::from_secs(20), || {
        let (names, expected) = (names.clone(), expected.clone());
        async move {
            from_redis(&names, &[("SWAPSTREAM_REDIS_MODE", "cluster"), ("SWAPSTREAM_REDIS_URL", nodes)]).await
                == expected
        }
    })
    .await;
    consumer.kill9().await;
    let _ = Interval::ALL;
}
