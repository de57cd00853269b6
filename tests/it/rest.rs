//! The REST API as separate processes against the real stack: the `consumer`
//! (answers from its aggregator actors) and the `api` role (answers from
//! Redis and PostgreSQL) give the same JSON, matching the producer's ground
//! truth; every error status; auth, rate limits (also shared by two
//! replicas), CORS, TLS, request ids; the OpenAPI document; random requests.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::helpers::{
    self, api_vars, delivered, eventually, logged_number, logged_port, require_broker, wait_checkpointed, Child, Names,
};
use crate::support::http::{self, Answer};

const TOKENS: &str = "ETH,BTC,USDC";
const KEY_A: &str = "key-aaaaaaaaaaaaaaaa";
const KEY_B: &str = "key-bbbbbbbbbbbbbbbb";

pub(crate) async fn start_api(name: &str, vars: &[(&'static str, String)]) -> (Child, u16) {
    let api = Child::spawn(name, &["api"], vars);
    let port = logged_port(&api).await;
    (api, port)
}

pub(crate) async fn get(port: u16, path: &str) -> Answer {
    http::request(port, "GET", path, &[]).await
}

/// The answer without the `updated_at` times, which name the moment of asking.
fn without_times(mut value: Value) -> Value {
    match &mut value {
        Value::Object(map) => {
            map.remove("updated_at");
            for v in map.values_mut() {
                *v = without_times(v.take());
            }
        }
        Value::Array(items) => {
            for v in items.iter_mut() {
                *v = without_times(v.take());
            }
        }
        _ => {}
    }
    value
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Validates `instance` against the schema `name` of the OpenAPI document.
fn assert_schema(document: &Value, name: &str, instance: &Value) {
    let schema = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    let validator = jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("schema {name}: {e}"));
    let errors: Vec<String> =
        validator.iter_errors(instance).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{name} does not match its OpenAPI schema: {errors:?}\n{instance}");
}

#[tokio::test(flavor = "multi_thread")]
async fn consumer_and_api_give_the_same_json_and_it_matches_the_ground_truth() {
    let brokers = require_broker();
    let names = Names::new("it-rest");
    let stream = [
        ("SWAPSTREAM_PRODUCER_TOKENS", TOKENS.to_owned()),
        ("SWAPSTREAM_PRODUCER_RATE", "max".to_owned()),
        ("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "100".to_owned()),
        ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "0.1".to_owned()),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "2".to_owned()),
    ];
    let truth = helpers::produce(&brokers, &names, 150, &stream).await;
    let mut consumer_vars = names.vars(&brokers);
    consumer_vars.extend(api_vars(&names, &[]));
    let mut consumer = Child::spawn(&format!("{}consumer", names.topic_prefix), &["consumer"], &consumer_vars);
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let consumer_port = logged_port(&consumer).await;
    let (mut api, api_port) = start_api(&format!("{}api", names.topic_prefix), &api_vars(&names, &[])).await;

    // Same JSON from both roles, for every endpoint.
    let paths = [
        "/v1/tokens",
        "/v1/pairs",
        "/v1/tokens/ETH/stats",
        "/v1/tokens/eth/candles?interval=1m&limit=1000",
        "/v1/tokens/ETH/candles?interval=5m&include_empty=true",
        "/v1/tokens/BTC/candles?interval=1d",
        "/v1/tokens/ETH/swaps?limit=1000",
        "/v1/pairs/usdc-eth/stats",
        "/v1/pairs/ETH-USDC/candles?interval=15m",
    ];
    for path in paths {
        let (from_actors, from_stores) = (get(consumer_port, path).await, get(api_port, path).await);
        assert_eq!((from_actors.status, from_stores.status), (200, 200), "{path}");
        assert_eq!(without_times(from_actors.json()), without_times(from_stores.json()), "{path}");
    }
    let consumer_metrics = String::from_utf8(get(consumer_port, "/metrics").await.body).unwrap();
    assert!(metric(&consumer_metrics, "swapstream_rest_reads_total{source=\"actors\"}") >= paths.len() as f64);
    assert_eq!(metric(&consumer_metrics, "swapstream_rest_reads_total{source=\"redis\"}"), 0.0);
    let read = metric(&consumer_metrics, "swapstream_read_delay_seconds_count");
    assert_eq!(read, metric(&consumer_metrics, "swapstream_events_decoded_total"), "every read message is timed");
    assert!(metric(&consumer_metrics, "swapstream_live_write_seconds_count") >= 1.0);
    let api_metrics = String::from_utf8(get(api_port, "/metrics").await.body).unwrap();
    assert!(metric(&api_metrics, "swapstream_rest_reads_total{source=\"redis\"}") >= paths.len() as f64);

    // The values are the ground truth's.
    let expected = &truth.expected;
    let stats = get(api_port, "/v1/tokens/ETH/stats").await.json();
    assert_eq!(stats["token"], "ETH");
    assert_eq!(stats["totals"], expected["tokens"]["ETH"]["totals"]);
    assert_eq!(stats["price_usd"], expected["tokens"]["ETH"]["price_usd"]);
    let candles = get(api_port, "/v1/tokens/ETH/candles?interval=1m&limit=1000").await.json();
    assert_eq!(candles["candles"], expected["tokens"]["ETH"]["candles"]["1m"]);
    let pair = get(api_port, "/v1/pairs/USDC-ETH/stats").await.json();
    assert_eq!((&pair["pair"], &pair["totals"]), (&json!("ETH-USDC"), &expected["pairs"]["ETH-USDC"]["totals"]));
    let tokens = get(api_port, "/v1/tokens").await.json();
    let listed: BTreeSet<&str> =
        tokens["tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(listed, TOKENS.split(',').collect());

    let swaps = get(api_port, "/v1/tokens/ETH/swaps?limit=1000").await.json();
    let served: Vec<&Value> = swaps["swaps"].as_array().unwrap().iter().collect();
    let confirmed_eth: BTreeSet<String> = truth
        .events
        .iter()
        .filter(|e| e.result == "ok" && e.event["status"] == "confirmed")
        .filter(|e| e.event["token_from"] == "ETH" || e.event["token_to"] == "ETH")
        .map(|e| format!("{}:{}", e.event["tx_hash"], e.event["log_index"]))
        .collect();
    let served_ids: BTreeSet<String> = served.iter().map(|s| format!("{}:{}", s["tx_hash"], s["log_index"])).collect();
    assert_eq!(served_ids, confirmed_eth, "recent swaps are every confirmed ETH swap, once");
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = served
        .iter()
        .map(|s| chrono::DateTime::parse_from_rfc3339(s["timestamp"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
    let five = get(api_port, "/v1/tokens/ETH/swaps?limit=5").await.json();
    assert_eq!(five["swaps"].as_array().unwrap()[..], swaps["swaps"].as_array().unwrap()[..5]);

    // Candles older than the live retention come from PostgreSQL, in both roles.
    let old = (chrono::Utc::now().timestamp() - 3 * 86_400).div_euclid(60) * 60;
    let pg = helpers::pg().await;
    let at = chrono::DateTime::from_timestamp(old, 0).unwrap();
    let hash = swapstream::domain::swap::TxHash::parse(&format!("0x{}", "ab".repeat(32))).unwrap();
    let order = swapstream::storage::encoding::encode_order(&(at, 1, 0, hash));
    pg.execute(
        &format!(
            "INSERT INTO {}.candles (agg_key, interval, t, topic, partition, open, open_at, close, close_at, high, low,
                volume_usd, swaps, buys) VALUES ('token:ETH', '1m', $1, 'old', 0, 10, $2, 12, $2, 13, 9, 100.5, 3, 1)",
            names.schema
        ),
        &[&old, &order],
    )
    .await
    .unwrap();
    let path = format!("/v1/tokens/ETH/candles?interval=1m&from={old}&to={}", old + 60);
    for port in [consumer_port, api_port] {
        let history = get(port, &path).await.json();
        assert_eq!(history["candles"].as_array().map(Vec::len), Some(1), "history from port {port}: {history}");
        assert_eq!(
            history["candles"],
            json!([{"t": old, "open": "10", "high": "13", "low": "9", "close": "12", "volume_usd": "100.5", "swaps": 3}]),
            "history from port {port}"
        );
    }

    // What Redis lacks, the api reads from PostgreSQL.
    let redis = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let prefix = &names.redis_prefix;
    let _: () = redis::pipe()
        .del(format!("{prefix}:{{token:BTC}}:partials"))
        .del(format!("{prefix}:{{token:BTC}}:stats"))
        .zrem(format!("{prefix}:names:token"), "BTC")
        .query_async(&mut conn)
        .await
        .unwrap();
    let btc = get(api_port, "/v1/tokens/BTC/stats").await;
    assert_eq!(btc.status, 200);
    assert_eq!(btc.json()["totals"], expected["tokens"]["BTC"]["totals"]);
    let api_metrics = String::from_utf8(get(api_port, "/metrics").await.body).unwrap();
    assert!(metric(&api_metrics, "swapstream_rest_reads_total{source=\"postgres\"}") >= 1.0);

    // The OpenAPI document describes what is served.
    let document = get(api_port, "/v1/openapi.json").await.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    // Every path it documents is served here (the unit test in src/http
    // holds the document to the router the other way round).
    for path in document["paths"].as_object().unwrap().keys() {
        let concrete = path.replace("{token}", "ETH").replace("{pair}", "ETH-USDC");
        let answer = get(api_port, &concrete).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
    }
    assert_schema(&document, "StatsBody", &stats);
    assert_schema(&document, "StatsBody", &pair);
    assert_schema(&document, "CandlesBody", &candles);
    assert_schema(&document, "SwapsBody", &swaps);
    assert_schema(&document, "TokensBody", &tokens);
    assert_schema(&document, "ErrorBody", &get(api_port, "/v1/tokens/ETH/candles?limit=0").await.json());
    let broken = json!({"token": "ETH", "interval": "1m", "candles": [{"t": "yesterday"}]});
    let validator = jsonschema::validator_for(&json!({
        "$ref": "#/components/schemas/CandlesBody", "components": document["components"]
    }))
    .unwrap();
    assert!(!validator.is_valid(&broken), "the schema must be able to fail");

    // Pairs: the list and the candles are the ground truth's too.
    let pairs = get(api_port, "/v1/pairs").await.json();
    for listed in pairs["pairs"].as_array().unwrap() {
        let name = listed["pair"].as_str().unwrap();
        assert_eq!(listed["totals"], expected["pairs"][name]["totals"], "{name}");
    }
    assert_eq!(pairs["pairs"].as_array().unwrap().len(), expected["pairs"].as_object().unwrap().len());
    let pair_candles = get(api_port, "/v1/pairs/ETH-USDC/candles?interval=1m&limit=1000").await.json();
    assert_eq!(pair_candles["candles"], expected["pairs"]["ETH-USDC"]["candles"]["1m"]);

    // `from` after `to`: an empty range, not an error.
    let empty = get(api_port, "/v1/pairs/ETH-USDC/candles?from=2000&to=1000").await;
    assert_eq!((empty.status, &empty.json()["candles"]), (200, &json!([])));

    // Conditional GET: the answer's own tag back is a 304 without a body,
    // on either instance; any other tag gets the answer.
    let path = "/v1/pairs/ETH-USDC/candles?interval=1m&limit=1000";
    let first = get(api_port, path).await;
    let tag = first.header("etag").expect("an ETag").to_owned();
    assert_eq!(first.header("cache-control"), Some("no-cache"));
    for port in [api_port, consumer_port] {
        let again = http::request(port, "GET", path, &[("If-None-Match", &tag)]).await;
        assert_eq!((again.status, again.body.len()), (304, 0), "port {port}");
        assert_eq!(again.header("etag"), Some(tag.as_str()));
    }
    let other = http::request(api_port, "GET", path, &[("If-None-Match", "W/\"0000000000000000\"")]).await;
    assert_eq!((other.status, &other.body), (200, &first.body));
    assert!(get(api_port, "/v1/tokens/NOPE/stats").await.header("etag").is_none(), "errors carry no tag");

    // Random requests against stored data, on both roles.
    fuzz(api_port, 200).await;
    fuzz(consumer_port, 200).await;

    assert!(api.terminate(Duration::from_secs(10)).await.success());
    assert!(consumer.terminate(Duration::from_secs(30)).await.success());
}

/// Every page of the swaps of `resource` (`tokens/ETH`, `pairs/ETH-USDC`),
/// following `next_cursor` from the first: the swaps and each page's size.
async fn swap_pages(port: u16, resource: &str, limit: usize) -> (Vec<Value>, Vec<usize>) {
    let (mut swaps, mut sizes) = (Vec::new(), Vec::new());
    let mut path = format!("/v1/{resource}/swaps?limit={limit}");
    loop {
        let answer = get(port, &path).await;
        assert_eq!(answer.status, 200, "{path}");
        let page = answer.json();
        let served = page["swaps"].as_array().unwrap();
        sizes.push(served.len());
        swaps.extend(served.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/{resource}/swaps?limit={limit}&before={cursor}"),
            None => return (swaps, sizes),
        }
        assert!(sizes.len() < 1000, "paging does not end");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn swap_pages_walk_the_kept_history_newest_first_without_skip_or_repeat_in_both_roles() {
    let brokers = require_broker();
    let names = Names::new("it-swap-pages");
    let stream = [
        ("SWAPSTREAM_PRODUCER_TOKENS", TOKENS.to_owned()),
        ("SWAPSTREAM_PRODUCER_RATE", "max".to_owned()),
        ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "0.1".to_owned()),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "2".to_owned()),
    ];
    let truth = helpers::produce(&brokers, &names, 150, &stream).await;
    // Far fewer recent swaps than the token has: the pages after the first
    // come from the history PostgreSQL keeps.
    let kept = [("SWAPSTREAM_RECENT_SWAPS", "10"), ("SWAPSTREAM_SWAP_HISTORY_SECS", "86400")];
    let mut consumer_vars = names.vars(&brokers);
    consumer_vars.extend(api_vars(&names, &kept));
    let mut consumer = Child::spawn(&format!("{}consumer", names.topic_prefix), &["consumer"], &consumer_vars);
    wait_checkpointed(&names, delivered(&truth), Duration::from_secs(90)).await;
    let consumer_port = logged_port(&consumer).await;
    let (mut api, api_port) = start_api(&format!("{}api", names.topic_prefix), &api_vars(&names, &kept)).await;

    let confirmed = |counts: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        let events = truth.events.iter().filter(|e| e.result == "ok" && e.event["status"] == "confirmed");
        events
            .filter(|e| counts(&e.event))
            .map(|e| format!("{}:{}", e.event["tx_hash"], e.event["log_index"]))
            .collect()
    };
    let trades = |e: &Value, token: &str| e["token_from"] == token || e["token_to"] == token;
    let walks = [
        ("tokens/ETH", confirmed(&|e| trades(e, "ETH"))),
        ("pairs/ETH-USDC", confirmed(&|e| trades(e, "ETH") && trades(e, "USDC"))),
    ];
    for (resource, expected) in &walks {
        assert!(expected.len() > 20, "{resource}: more swaps than a few pages: {}", expected.len());
    }
    // Redis is written after the checkpoint: wait for the api to count them all.
    eventually("the api counting every ETH swap", Duration::from_secs(30), || async {
        get(api_port, "/v1/tokens/ETH/stats").await.json()["totals"]["swaps"] == json!(walks[0].1.len())
    })
    .await;
    for (resource, expected) in &walks {
        let mut pages = Vec::new();
        for port in [api_port, consumer_port] {
            let (swaps, sizes) = swap_pages(port, resource, 7).await;
            let ids: Vec<String> = swaps.iter().map(|s| format!("{}:{}", s["tx_hash"], s["log_index"])).collect();
            let served: BTreeSet<String> = ids.iter().cloned().collect();
            assert_eq!(served.len(), ids.len(), "{resource}: no swap twice");
            assert_eq!(
                &served,
                expected,
                "{resource}: every confirmed swap from port {port} (api {api_port}); missing {:?}, extra {:?}",
                expected.difference(&served).collect::<Vec<_>>(),
                served.difference(expected).collect::<Vec<_>>()
            );
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&n| n == 7),
                "{resource}: only the last page is short: {sizes:?}"
            );
            let times: Vec<chrono::DateTime<chrono::FixedOffset>> = swaps
                .iter()
                .map(|s| chrono::DateTime::parse_from_rfc3339(s["timestamp"].as_str().unwrap()).unwrap())
                .collect();
            assert!(times.windows(2).all(|w| w[0] >= w[1]), "{resource}: newest first across pages");
            pages.push(swaps);
        }
        assert_eq!(pages[0], pages[1], "{resource}: the api (Redis) and the consumer (actors) start the same walk");
    }
    let pair = get(api_port, "/v1/pairs/usdc-eth/swaps?limit=1").await.json();
    assert_eq!((&pair["pair"], pair.get("token")), (&json!("ETH-USDC"), None), "a pair's page names the pair");

    // A cursor is checked; a token never seen is not found on any page.
    let answer = get(api_port, "/v1/tokens/ETH/swaps?before=ABC").await;
    assert_eq!((answer.status, answer.json()["error"]["code"].as_str()), (400, Some("bad_parameter")));
    let anywhere = "f".repeat(104);
    assert_eq!(get(api_port, &format!("/v1/tokens/NOPE/swaps?before={anywhere}")).await.status, 404);
    assert_eq!(get(api_port, &format!("/v1/pairs/ETH-NOPE/swaps?before={anywhere}")).await.status, 404);
    assert_eq!(get(api_port, "/v1/pairs/ETH-ETH/swaps").await.status, 404);
    assert!(api.terminate(Duration::from_secs(10)).await.success());
    assert!(consumer.terminate(Duration::from_secs(30)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_error_has_its_status_and_a_json_body_and_a_lost_store_is_503() {
    let names = Names::new("it-rest-errors");
    let mut redis = helpers::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let vars = api_vars(&names, &[("SWAPSTREAM_REDIS_URL", &url), ("SWAPSTREAM_RECENT_SWAPS", "100")]);
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &vars).await;

    let expect = |answer: Answer, status: u16, code: &str, param: Option<&str>| {
        assert_eq!(answer.status, status, "{answer:?}");
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let body = answer.json();
        assert_eq!(body["error"]["code"], code, "{body}");
        if let Some(param) = param {
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.starts_with(&format!("{param}:")), "{param}: {message}");
        }
    };
    // No authentication configured: open.
    assert_eq!(get(port, "/v1/tokens").await.json(), json!({"tokens": [], "next_cursor": null}));
    expect(get(port, "/v1/tokens/ETH/stats").await, 404, "not_found", None);
    expect(get(port, "/v1/pairs/ETH-USDC/candles").await, 404, "not_found", None);
    expect(get(port, "/v1/nothing/here").await, 404, "not_found", None);
    // Of the document's pair pattern, but no pair: not found, not a bad request.
    expect(get(port, "/v1/pairs/ETH-eth/stats").await, 404, "not_found", None);
    expect(get(port, "/v1/pairs/A-B-C/stats").await, 404, "not_found", None);
    // A served path asked with another method: 405 naming the one it has.
    for (method, path) in [
        ("TRACE", "/v1/tokens"),
        ("POST", "/v1/tokens/ETH/stats"),
        ("DELETE", "/v1/pairs/ETH-USDC/candles"),
        ("PUT", "/v1/openapi.json"),
        ("PATCH", "/healthz"),
    ] {
        let answer = http::request(port, method, path, &[]).await;
        assert_eq!(answer.header("allow"), Some("GET"), "{method} {path}");
        expect(answer, 405, "method_not_allowed", None);
    }
    expect(http::request(port, "POST", "/v1/nothing/here", &[]).await, 404, "not_found", None);
    for (path, param) in [
        ("/v1/tokens/E%20TH/stats", "token"),
        ("/v1/tokens/THIS-IS-FAR-TOO-LONG-A-SYMBOL/swaps", "token"),
        ("/v1/pairs/ETH/candles", "pair"),
        ("/v1/tokens/ETH/candles?interval=2h", "interval"),
        ("/v1/tokens/ETH/candles?limit=0", "limit"),
        ("/v1/tokens/ETH/candles?limit=1001", "limit"),
        ("/v1/tokens/ETH/candles?limit=ten", "limit"),
        ("/v1/tokens/ETH/candles?from=yesterday", "from"),
        ("/v1/tokens/ETH/candles?to=2026-13-01T00:00:00Z", "to"),
        ("/v1/tokens/ETH/candles?to=", "to"),
        ("/v1/tokens/ETH/candles?from=253402300800", "from"),
        ("/v1/tokens/ETH/candles?include_empty=maybe", "include_empty"),
        ("/v1/tokens/ETH/swaps?limit=-1", "limit"),
        ("/v1/tokens/ETH/swaps?limit=101", "limit"),
        ("/v1/tokens/ETH/swaps?before=", "before"),
        ("/v1/tokens/ETH/swaps?before=0123", "before"),
    ] {
        expect(get(port, path).await, 400, "bad_parameter", Some(param));
    }
    // More swaps than are kept is refused with the maximum, which the
    // document states too.
    let over = get(port, "/v1/tokens/ETH/swaps?limit=1000").await.json();
    assert_eq!(over["error"]["message"], "limit: at most 100, got 1000");
    let document = get(port, "/v1/openapi.json").await.json();
    let parameters = document["paths"]["/v1/tokens/{token}/swaps"]["get"]["parameters"].as_array().unwrap();
    assert_eq!(parameters.iter().find(|p| p["name"] == "limit").unwrap()["schema"]["maximum"], 100);
    // A body announced and never sent: refused on its length alone.
    let request = format!(
        "GET /v1/tokens HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n"
    );
    let huge = http::raw(port, request.as_bytes()).await;
    expect(huge, 413, "too_large", None);

    // The store stops answering, then goes away: 503, never a hang or a 500.
    let pid = redis.child.id().unwrap() as i32;
    // SAFETY: signals to our own child process.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let answer = tokio::time::timeout(Duration::from_secs(15), get(port, "/v1/tokens/ETH/stats")).await.unwrap();
    expect(answer, 503, "unavailable", None);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    redis.child.kill().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), get(port, "/v1/tokens/ETH/stats")).await.unwrap();
    expect(answer, 503, "unavailable", None);
    let ready = get(port, "/readyz").await;
    assert_eq!(ready.status, 503);
    assert!(ready.json()["checks"]["redis"].as_str().unwrap().starts_with("unreachable"), "{:?}", ready.json());
    assert_eq!(get(port, "/healthz").await.status, 200);
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_rate_limits_origins_request_ids_and_compression() {
    let names = Names::new("it-rest-guard");
    let keys = format!("{KEY_A},{KEY_B}");
    let vars = api_vars(
        &names,
        &[
            ("SWAPSTREAM_API_KEYS", &keys),
            ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "1"),
            ("SWAPSTREAM_RATE_LIMIT_BURST", "3"),
            ("SWAPSTREAM_CORS_ORIGINS", "https://app.example"),
        ],
    );
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &vars).await;
    let bearer_a = format!("Bearer {KEY_A}");

    // Health stays open; /v1 needs a known key, in either header.
    assert_eq!(get(port, "/healthz").await.status, 200);
    assert_eq!(get(port, "/metrics").await.status, 200);
    let missing = get(port, "/v1/tokens").await;
    assert_eq!((missing.status, missing.header("www-authenticate")), (401, Some("Bearer")));
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    let wrong = http::request(port, "GET", "/v1/tokens", &[("Authorization", "Bearer key-cccccccccccccccc")]).await;
    assert_eq!((wrong.status, &wrong.json()["error"]["code"]), (403, &json!("forbidden")));
    let wrong = http::request(port, "GET", "/v1/tokens", &[("X-API-Key", "key-aaaaaaaaaaaaaaa")]).await;
    assert_eq!(wrong.status, 403, "a prefix of a key is not a key");
    assert_eq!(http::request(port, "GET", "/v1/tokens", &[("Authorization", &bearer_a)]).await.status, 200);

    // Key A's bucket: burst 3, one is spent; each answer says what is left.
    for left in ["1", "0"] {
        let answer = http::request(port, "GET", "/v1/tokens", &[("Authorization", &bearer_a)]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-limit"), Some("3"));
        assert_eq!(answer.header("ratelimit-remaining"), Some(left));
        assert_eq!(answer.header("ratelimit-policy"), Some("3;w=3"));
        let reset: u64 = answer.header("ratelimit-reset").expect("RateLimit-Reset").parse().unwrap();
        assert!((1..=3).contains(&reset), "{reset}");
    }
    let limited = http::request(port, "GET", "/v1/tokens", &[("Authorization", &bearer_a)]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(limited.json()["error"]["code"], "rate_limited");
    let retry: u64 = limited.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("ratelimit-reset"), Some(retry.to_string().as_str()));

    // Key B has its own bucket. CORS: the listed origin and the API's own.
    let with_origin = |origin: String| {
        let key = KEY_B;
        async move { http::request(port, "GET", "/v1/tokens", &[("X-API-Key", key), ("Origin", &origin)]).await }
    };
    let allowed = with_origin("https://app.example".into()).await;
    assert_eq!(allowed.status, 200);
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example"));
    let denied = with_origin("https://evil.example".into()).await;
    assert_eq!((denied.status, &denied.json()["error"]["code"]), (403, &json!("origin_not_allowed")));
    assert_eq!(denied.header("access-control-allow-origin"), None);
    assert_eq!(with_origin(format!("http://127.0.0.1:{port}")).await.status, 200);
    let preflight = http::request(
        port,
        "OPTIONS",
        "/v1/tokens",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-api-key"),
        ],
    )
    .await;
    assert_eq!(preflight.status, 200, "{preflight:?}");
    assert_eq!(preflight.header("access-control-allow-origin"), Some("https://app.example"));

    // Request ids: a caller's is echoed and logged; otherwise one is made.
    let traced = http::request(port, "GET", "/healthz", &[("X-Request-Id", "trace-42")]).await;
    assert_eq!(traced.header("x-request-id"), Some("trace-42"));
    let made = get(port, "/healthz").await;
    let made_id = made.header("x-request-id").expect("a request id");
    assert!(made_id.len() == 16 && made_id.chars().all(|c| c.is_ascii_hexdigit()), "{made_id}");
    let hostile = http::request(port, "GET", "/healthz", &[("X-Request-Id", "no spaces or {braces}")]).await;
    assert_ne!(hostile.header("x-request-id"), Some("no spaces or {braces}"));
    eventually("the access log line with the request id", Duration::from_secs(5), || {
        let log = api.log_text();
        async move { log.lines().any(|l| l.contains("\"request_id\":\"trace-42\"") && l.contains("\"status\":200")) }
    })
    .await;
    assert!(!api.log_text().contains(KEY_A), "keys never reach the log");

    // Compression when asked for.
    let document =
        http::request(port, "GET", "/v1/openapi.json", &[("X-API-Key", KEY_B), ("Accept-Encoding", "gzip")]).await;
    assert_eq!((document.status, document.header("content-encoding")), (200, Some("gzip")));

    let metrics = String::from_utf8(get(port, "/metrics").await.body).unwrap();
    for reason in ["unauthorized", "forbidden", "rate_limited", "origin_not_allowed"] {
        let line = format!("swapstream_http_rejected_total{{reason=\"{reason}\"}}");
        assert!(metric(&metrics, &line) >= 1.0, "{line} missing");
    }
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_rate_limit_through_redis() {
    let names = Names::new("it-rest-shared");
    let shared = [
        ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "1"),
        ("SWAPSTREAM_RATE_LIMIT_BURST", "4"),
        ("SWAPSTREAM_RATE_LIMIT_STORE", "redis"),
    ];
    let (mut one, port_one) = start_api(&format!("{}one", names.topic_prefix), &api_vars(&names, &shared)).await;
    let (mut two, port_two) = start_api(&format!("{}two", names.topic_prefix), &api_vars(&names, &shared)).await;
    let mut allowed = [0, 0];
    let mut limited = [0, 0];
    for i in 0..12 {
        let answer = get([port_one, port_two][i % 2], "/v1/tokens").await;
        assert_eq!(answer.header("ratelimit-limit"), Some("4"));
        match answer.status {
            200 => {
                // One bucket: what is left counts both replicas' requests
                // (give or take a refill of one a second while the test runs).
                let left: u32 = answer.header("ratelimit-remaining").unwrap().parse().unwrap();
                let taken = (allowed[0] + allowed[1] + 1) as u32;
                assert!(left + taken <= 4 + 2, "{left} left after {taken} taken on both");
                allowed[i % 2] += 1;
            }
            429 => {
                limited[i % 2] += 1;
                assert!(answer.header("retry-after").is_some());
                assert_eq!(answer.header("ratelimit-remaining"), Some("0"));
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // One bucket of 4 (plus at most a refill or two while the test runs),
    // not 4 on each replica.
    let total = allowed[0] + allowed[1];
    assert!((4..=6).contains(&total), "allowed {allowed:?}, limited {limited:?}");
    assert!(limited[0] > 0 && limited[1] > 0, "both replicas enforce it: {limited:?}");
    assert!(one.terminate(Duration::from_secs(10)).await.success());
    assert!(two.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_serves_the_api_and_probes_stay_on_plain_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let names = Names::new("it-rest-tls");
    let tls = helpers::SelfSigned::localhost();
    let (cert, key) = (tls.cert_path.as_str(), tls.key_path.as_str());
    let vars = api_vars(
        &names,
        &[
            ("SWAPSTREAM_HTTP_TLS_CERT", cert),
            ("SWAPSTREAM_HTTP_TLS_KEY", key),
            ("SWAPSTREAM_HTTP_HEALTH_ADDR", "127.0.0.1:0"),
        ],
    );
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &vars).await;
    let health_port = logged_number(&api, "health_port").await;

    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake with the generated certificate");
    tls.write_all(b"GET /v1/tokens HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await.unwrap().ok();
    let answer = Answer::parse(&raw);
    assert_eq!((answer.status, answer.json()), (200, json!({"tokens": [], "next_cursor": null})));

    // Plain HTTP on the TLS port gets no HTTP answer; probes use their own port.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        raw
    })
    .await
    .unwrap();
    assert!(!plain.starts_with(b"HTTP/1.1 200"), "plain HTTP must not be served on the TLS port");
    assert_eq!(get(health_port, "/healthz").await.status, 200);
    assert_eq!(get(health_port, "/readyz").await.status, 200);
    assert_eq!(get(health_port, "/v1/tokens").await.status, 404, "only probes on the health port");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn random_paths_queries_and_headers_never_get_a_server_error_or_a_hang() {
    let names = Names::new("it-rest-fuzz");
    let vars = api_vars(&names, &[("SWAPSTREAM_HTTP_ACCESS_LOG", "false")]);
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &vars).await;
    fuzz(port, 400).await;
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

/// Sends `cases` random requests (paths from API words and hostile pieces,
/// queries, headers, methods) and fails on a 5xx, a hang, or a server that
/// stops answering. The seed is printed, so a failure can be replayed.
async fn fuzz(port: u16, cases: usize) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let seed: u64 = rand::thread_rng().gen();
    println!("fuzz seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let long = "A".repeat(300);
    let pieces = [
        "v1",
        "tokens",
        "pairs",
        "ETH",
        "eth-usdc",
        "USDC-ETH",
        "stats",
        "candles",
        "swaps",
        "openapi.json",
        "..",
        "%2e%2e",
        "%00",
        "%ff%fe",
        "é",
        "ETH-ETH",
        "-",
        "",
        "healthz",
        "readyz",
        "metrics",
        "ws",
        &long,
    ];
    let params = ["interval", "from", "to", "limit", "include_empty", "api_key", "x"];
    let now = chrono::Utc::now().timestamp();
    let (recent, old, ahead) = ((now - 600).to_string(), (now - 40 * 86_400).to_string(), (now + 600).to_string());
    let values = [
        recent.as_str(),
        old.as_str(),
        ahead.as_str(),
        "1m",
        "1d",
        "2h",
        "0",
        "-1",
        "1001",
        "99999999999999999999",
        "true",
        "maybe",
        "2026-11-25T08:00:00Z",
        "%",
        "%zz",
        "&&",
        "=",
        "",
        "1e9",
        "NaN",
        "\u{2603}",
    ];
    let methods = ["GET", "GET", "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "BREW"];
    let header_names =
        ["Authorization", "X-API-Key", "Origin", "X-Request-Id", "Accept-Encoding", "Content-Length", "Range"];
    for case in 0..cases {
        let mut path = String::new();
        for _ in 0..rng.gen_range(1..6) {
            path.push('/');
            path.push_str(pieces[rng.gen_range(0..pieces.len())]);
        }
        if rng.gen_bool(0.6) {
            path.push('?');
            for i in 0..rng.gen_range(1..5) {
                if i > 0 {
                    path.push('&');
                }
                path.push_str(&format!(
                    "{}={}",
                    params[rng.gen_range(0..params.len())],
                    values[rng.gen_range(0..values.len())]
                ));
            }
        }
        let method = methods[rng.gen_range(0..methods.len())];
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for _ in 0..rng.gen_range(0..4) {
            let name = header_names[rng.gen_range(0..header_names.len())];
            let value: String = (0..rng.gen_range(0..40)).map(|_| rng.gen_range(0x20u8..0x7f) as char).collect();
            let value = if name == "Content-Length" { rng.gen_range(0..100_000u32).to_string() } else { value };
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let raw = tokio::time::timeout(Duration::from_secs(10), async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            stream.write_all(request.as_bytes()).await.unwrap();
            // Close the write side so a request announcing a body ends here.
            let _ = stream.shutdown().await;
            let mut raw = Vec::new();
            let _ = stream.read_to_end(&mut raw).await;
            raw
        })
        .await
        .unwrap_or_else(|_| panic!("case {case} (seed {seed}) hung: {request:?}"));
        let status: u16 =
            std::str::from_utf8(raw.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!(raw.is_empty() || (100..500).contains(&status), "case {case} (seed {seed}): {status} for {request:?}");
    }
    assert_eq!(get(port, "/healthz").await.status, 200, "still serving");
    let metrics = String::from_utf8(get(port, "/metrics").await.body).unwrap();
    assert!(!metrics.lines().any(|l| l.starts_with("swapstream_http_requests_total") && l.contains("status=\"5")));
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_upgrades_need_a_key_and_an_allowed_origin() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Error;

    let names = Names::new("it-rest-ws-guard");
    let vars = api_vars(&names, &[("SWAPSTREAM_API_KEYS", KEY_A), ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0")]);
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &vars).await;
    let refused = |result: Result<_, Error>| match result {
        Err(Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => 101,
    };
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    assert_eq!(refused(tokio_tungstenite::connect_async(&url).await), 401);
    let wrong = format!("{url}?api_key=key-cccccccccccccccc");
    assert_eq!(refused(tokio_tungstenite::connect_async(&wrong).await), 403);
    let keyed = format!("{url}?api_key={KEY_A}");
    let (mut socket, _) = tokio_tungstenite::connect_async(&keyed).await.expect("upgrade with the key");
    use futures::{SinkExt, StreamExt};
    socket.send(r#"{"op":"ping"}"#.into()).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(10), socket.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(serde_json::from_str::<Value>(pong.to_text().unwrap()).unwrap(), json!({"type": "pong"}));

    let mut foreign = keyed.as_str().into_client_request().unwrap();
    foreign.headers_mut().insert("Origin", "https://evil.example".parse().unwrap());
    assert_eq!(refused(tokio_tungstenite::connect_async(foreign).await), 403);
    let mut own = keyed.as_str().into_client_request().unwrap();
    own.headers_mut().insert("Origin", format!("http://127.0.0.1:{port}").parse().unwrap());
    assert!(tokio_tungstenite::connect_async(own).await.is_ok(), "the API's own origin may connect");
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_tokens_come_in_name_order_pages_without_skip_or_repeat() {
    use std::collections::HashMap;
    use swapstream::domain::partial::{AggKey, PartialDelta, TotalsPartial};
    use swapstream::domain::TokenSymbol;
    use swapstream::storage::redis::RedisStore;
    use swapstream::stream::{PartialChange, Tp};

    // Live state of 10,000 tokens (one swap each), through the store's own writes.
    let names = Names::new("it-rest-pages");
    let store = RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let tp = Tp::new(&format!("{}swaps", names.topic_prefix), 0);
    let symbols: Vec<String> = (0..10_000).map(|i| format!("T{i:05}")).collect();
    for chunk in symbols.chunks(1000) {
        let changes: Vec<PartialChange> = chunk
            .iter()
            .map(|symbol| PartialChange {
                key: AggKey::Token(TokenSymbol::parse(symbol).unwrap()),
                tp: tp.clone(),
                delta: PartialDelta {
                    totals: TotalsPartial { swaps: 1, ..TotalsPartial::default() },
                    pending: 0,
                    candles: Vec::new(),
                    new_recent: Vec::new(),
                    history: Vec::new(),
                },
            })
            .collect();
        store.write(&changes, &HashMap::new(), &[]).await.unwrap();
    }
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &api_vars(&names, &[])).await;

    // Pages of 999 (the last one short), each after the cursor of the one before.
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = get(port, &format!("/v1/tokens?limit=999{after}")).await.json();
        let tokens = page["tokens"].as_array().unwrap();
        assert!(tokens.len() <= 999);
        seen.extend(tokens.iter().map(|t| t["token"].as_str().unwrap().to_owned()));
        assert!(tokens.iter().all(|t| t["totals"]["swaps"] == 1), "each with its own stats");
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, symbols, "every token once, in name order");

    // A prefix, in any case; the default page; a limit over the maximum.
    let found = get(port, "/v1/tokens?prefix=t0999").await.json();
    let found: Vec<&str> = found["tokens"].as_array().unwrap().iter().map(|t| t["token"].as_str().unwrap()).collect();
    assert_eq!(found, symbols[9990..].iter().map(String::as_str).collect::<Vec<_>>());
    let first = get(port, "/v1/tokens").await.json();
    assert_eq!((first["tokens"].as_array().unwrap().len(), &first["next_cursor"]), (100, &json!("T00099")));
    let over = get(port, "/v1/tokens?limit=1001").await;
    assert_eq!((over.status, &over.json()["error"]["message"]), (400, &json!("limit: at most 1000, got 1001")));
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stats_body_one_reader_rendered_is_served_until_its_key_is_written() {
    use std::collections::HashMap;
    use swapstream::domain::partial::{AggKey, PartialDelta, TotalsPartial};
    use swapstream::storage::redis::RedisStore;
    use swapstream::stream::{PartialChange, Tp};

    let names = Names::new("it-rest-rendered");
    let store = RedisStore::connect(&names.settings(&[]).redis, 100).await.unwrap();
    let tp = Tp::new(&format!("{}swaps", names.topic_prefix), 0);
    let write = |swaps: u64| {
        let change = PartialChange {
            key: AggKey::parse("token:ABC").unwrap(),
            tp: tp.clone(),
            delta: PartialDelta {
                totals: TotalsPartial { swaps, ..TotalsPartial::default() },
                pending: 0,
                candles: Vec::new(),
                new_recent: Vec::new(),
                history: Vec::new(),
            },
        };
        let store = store.clone();
        async move { store.write(&[change], &HashMap::new(), &[]).await.unwrap() }
    };
    write(1).await;
    // No cache in the process (`api_vars`): every answer comes from Redis.
    let (mut api, port) = start_api(&format!("{}api", names.topic_prefix), &api_vars(&names, &[])).await;
    let bodies: Vec<Vec<u8>> = {
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let answer = get(port, "/v1/tokens/ABC/stats").await;
            assert_eq!(answer.json()["totals"]["swaps"], 1);
            bodies.push(answer.body);
        }
        bodies
    };
    // Rendered once (twice if a minute began in between), then served as kept:
    // the same `updated_at`.
    assert!(bodies[0] == bodies[1] || bodies[1] == bodies[2], "a kept body is served again");
    let metrics = String::from_utf8(get(port, "/metrics").await.body).unwrap();
    assert!(metric(&metrics, "swapstream_rest_reads_total{source=\"rendered\"}") >= 1.0);

    // A list page serves the kept body too (read with the page's others),
    // and, once the key is written, a fresh one.
    let served = metric(&metrics, "swapstream_rest_reads_total{source=\"rendered\"}");
    // (Twice: a minute may have begun since the body was kept.)
    for _ in 0..2 {
        assert_eq!(get(port, "/v1/tokens").await.json()["tokens"][0]["totals"]["swaps"], 1);
    }
    let metrics = String::from_utf8(get(port, "/metrics").await.body).unwrap();
    assert!(metric(&metrics, "swapstream_rest_reads_total{source=\"rendered\"}") > served);

    write(2).await;
    let after = get(port, "/v1/tokens/ABC/stats").await.json();
    assert_eq!(after["totals"]["swaps"], 2, "a write makes the kept body stale");
    assert_eq!(get(port, "/v1/tokens").await.json()["tokens"][0]["totals"]["swaps"], 2);
    assert!(api.terminate(Duration::from_secs(10)).await.success());
}
