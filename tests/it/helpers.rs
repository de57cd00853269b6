//! Shared test plumbing: where the services are, unique names, the binary,
//! child processes, and reading the stored state back.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use swapstream::config::Settings;
use swapstream::domain::aggregate::{Expected, Interval, Reference};
use swapstream::domain::partial::{AggKey, Merged};
use swapstream::producer::ground_truth::GroundTruthFile;
use swapstream::storage::postgres::PgStore;
use swapstream::storage::redis::RedisStore;

pub use crate::support::process::{artifacts, run_binary, Child};

/// The separate broker process started by `scripts/services up`.
pub fn brokers() -> String {
    std::env::var("SWAPSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Fails fast, with the fix, when the broker is not running.
pub fn require_broker() -> String {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    if std::net::TcpStream::connect_timeout(&first.parse().expect("broker address"), Duration::from_secs(2)).is_err() {
        panic!("no Kafka-protocol broker at {first}: run `scripts/services up` (or `scripts/test`) first");
    }
    brokers
}

/// The nodes of the Redis Cluster started by `scripts/redis-cluster up`;
/// fails fast, with the fix, when it is not running.
pub fn require_redis_cluster() -> &'static str {
    if std::net::TcpStream::connect("127.0.0.1:7001").is_err() {
        panic!("no Redis Cluster on 127.0.0.1:7001-7003: run `scripts/redis-cluster up` (scripts/test does)");
    }
    "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003"
}

/// The servers `scripts/redis-replica up` runs: a primary, its read
/// replica and a separate server (URLs); fails fast, with the fix, when
/// they are not running.
pub fn require_redis_replica() -> [&'static str; 3] {
    if std::net::TcpStream::connect("127.0.0.1:7102").is_err() {
        panic!("no Redis replica on 127.0.0.1:7101-7103: run `scripts/redis-replica up` (scripts/test does)");
    }
    ["redis://127.0.0.1:7101", "redis://127.0.0.1:7102", "redis://127.0.0.1:7103"]
}

/// A name no other test run uses: `<base>-<random hex>`.
pub fn unique(base: &str) -> String {
    format!("{base}-{:08x}", rand::thread_rng().gen::<u32>())
}

/// Names that keep one test's state apart from every other's.
#[derive(Clone)]
pub struct Names {
    pub topic_prefix: String,
    pub schema: String,
    pub redis_prefix: String,
    pub group: String,
    pub dlq: String,
}

impl Names {
    /// Where a producer of these names writes its ground truth.
    pub fn truth_path(&self) -> std::path::PathBuf {
        artifacts().join(format!("{}truth.json", self.topic_prefix))
    }

    pub fn new(base: &str) -> Names {
        let id = unique(base).replace('-', "_");
        Names {
            topic_prefix: format!("{id}."),
            schema: id.clone(),
            redis_prefix: id.clone(),
            group: format!("{id}-group"),
            dlq: format!("{id}-dlq"),
        }
    }

    /// The variables a producer or consumer of this test needs.
    pub fn vars(&self, brokers: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SWAPSTREAM_KAFKA_BROKERS", brokers.to_owned()),
            ("SWAPSTREAM_KAFKA_TOPIC_PREFIX", self.topic_prefix.clone()),
            ("SWAPSTREAM_KAFKA_GROUP_ID", self.group.clone()),
            ("SWAPSTREAM_KAFKA_DLQ_TOPIC", self.dlq.clone()),
            ("SWAPSTREAM_POSTGRES_SCHEMA", self.schema.clone()),
            ("SWAPSTREAM_REDIS_KEY_PREFIX", self.redis_prefix.clone()),
            ("SWAPSTREAM_LOG_FORMAT", "json".to_owned()),
            // Every role serves HTTP (the producer its health and metrics).
            ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ]
    }

    pub fn settings(&self, extra: &[(&str, &str)]) -> Settings {
        let mut vars: Vec<(String, String)> = vec![
            ("SWAPSTREAM_POSTGRES_SCHEMA".into(), self.schema.clone()),
            ("SWAPSTREAM_REDIS_KEY_PREFIX".into(), self.redis_prefix.clone()),
        ];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::from_vars(vars).expect("test settings")
    }
}

/// Runs the producer binary to completion and returns its ground truth.
pub async fn produce(brokers: &str, names: &Names, count: u32, extra: &[(&str, String)]) -> GroundTruthFile {
    let truth_path = names.truth_path();
    let mut vars = names.vars(brokers);
    vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    let truth_arg = truth_path.display().to_string();
    let output = run_binary(
        &["producer", "--count", &count.to_string(), "--ground-truth", &truth_arg],
        &vars,
        stream_time(count, &vars) + Duration::from_secs(300),
    )
    .await;
    assert!(output.status.success(), "producer failed: {}", String::from_utf8_lossy(&output.stderr));
    GroundTruthFile::read(&truth_path).unwrap()
}

/// How long the producer needs for `swaps` swaps at the rate in `vars`
/// (events a minute; each swap is at most three events: pending, outcome
/// and a duplicate), so a long stream is not cut off by a fixed deadline.
fn stream_time(swaps: u32, vars: &[(&str, String)]) -> Duration {
    let per_minute = vars
        .iter()
        .rev()
        .find(|(name, _)| *name == "SWAPSTREAM_PRODUCER_RATE")
        .and_then(|(_, rate)| rate.parse::<f64>().ok())
        .filter(|rate| *rate > 0.0);
    per_minute.map_or(Duration::ZERO, |rate| Duration::from_secs_f64(f64::from(swaps) * 3.0 * 60.0 / rate))
}

/// A plain PostgreSQL client.
pub async fn pg() -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (run scripts/services up)");
    tokio::spawn(connection);
    client
}

/// Sum of the checkpointed next offsets of the test's partitions.
pub async fn checkpointed(client: &tokio_postgres::Client, names: &Names) -> i64 {
    let sql = format!("SELECT coalesce(sum(next_offset), 0)::bigint FROM {}.offsets", names.schema);
    client.query_one(&sql, &[]).await.map(|row| row.get(0)).unwrap_or(0)
}

/// Waits until the checkpoint covers `total` messages.
pub async fn wait_checkpointed(names: &Names, total: i64, timeout: Duration) {
    let client = pg().await;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let done = checkpointed(&client, names).await;
        if done >= total {
            assert_eq!(done, total, "checkpoint went past the messages produced");
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "checkpoint at {done} of {total} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The delivered messages of a ground truth.
pub fn delivered(truth: &GroundTruthFile) -> i64 {
    truth.events.iter().filter(|e| e.result == "ok").count() as i64
}

/// The reference shape of a set of merged aggregates.
pub fn as_reference(merged: BTreeMap<AggKey, Merged>) -> serde_json::Value {
    let mut reference = Reference::default();
    for (key, merged) in merged {
        let expected = Expected {
            price_usd: merged.price_usd(),
            totals: merged.totals.to_totals(),
            candles: Interval::ALL.iter().map(|&i| (i, merged.candles(i, i64::MIN, i64::MAX, usize::MAX))).collect(),
        };
        match key {
            AggKey::Token(token) => reference.tokens.insert(token, expected),
            AggKey::Pair(pair) => reference.pairs.insert(pair, expected),
        };
    }
    serde_json::to_value(reference).unwrap()
}

/// What PostgreSQL holds, merged over partitions, plus the pending gauges.
pub async fn from_postgres(names: &Names) -> (serde_json::Value, i64) {
    postgres_state(&names.settings(&[])).await
}

/// What the PostgreSQL of `settings` holds, merged over partitions, plus the pending gauges.
pub async fn postgres_state(settings: &Settings) -> (serde_json::Value, i64) {
    let store = PgStore::connect(&settings.postgres, 100, &swapstream::telemetry::discard()).await.unwrap();
    let all = store.load_all(Utc::now()).await.unwrap();
    let pending = all.values().flat_map(|p| p.values()).map(|p| p.pending).sum();
    let merged = all.into_iter().map(|(k, partials)| (k, Merged::of(partials.values()))).collect();
    (as_reference(merged), pending)
}

/// What Redis holds, merged over partitions.
pub async fn from_redis(names: &Names, extra: &[(&str, &str)]) -> serde_json::Value {
    redis_state(&names.settings(extra)).await
}

/// What the Redis of `settings` holds, merged over partitions.
pub async fn redis_state(settings: &Settings) -> serde_json::Value {
    let store = RedisStore::connect(&settings.redis, 100).await.unwrap();
    let mut merged = BTreeMap::new();
    for key in store.keys().await.unwrap() {
        merged.insert(key.clone(), store.merged(&key, &Interval::ALL, 0).await.unwrap());
    }
    as_reference(merged)
}

/// Polls `check` until it returns true, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The HTTP port a child logged in its "started" line.
pub async fn logged_port(child: &Child) -> u16 {
    logged_number(child, "http_port").await
}

/// A port number the child logged under `field` (e.g. `"health_port"`).
pub async fn logged_number(child: &Child, field: &str) -> u16 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = child.log_text();
        if let Some(number) = crate::support::process::logged_number(&text, field) {
            return number;
        }
        assert!(tokio::time::Instant::now() < deadline, "no {field} logged: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Redis server of one test's own, to stop or disturb under a running process.
pub struct OwnRedis {
    pub child: tokio::process::Child,
    pub port: u16,
}

impl OwnRedis {
    pub async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        eventually("own redis up", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        OwnRedis { child, port }
    }
}

/// A producer stream with everything a consumer must cope with: failures,
/// duplicates, and events held back up to `reorder_max_ms`.
pub fn stream_vars(tokens: &str, rate: &str, reorder_max_ms: u32) -> Vec<(&'static str, String)> {
    vec![
        ("SWAPSTREAM_PRODUCER_TOKENS", tokens.into()),
        ("SWAPSTREAM_PRODUCER_RATE", rate.into()),
        ("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "200".into()),
        ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "0.1".into()),
        ("SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", "0.2".into()),
        ("SWAPSTREAM_PRODUCER_REORDER_SHARE", "0.2".into()),
        ("SWAPSTREAM_PRODUCER_REORDER_MAX_MS", reorder_max_ms.to_string()),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "4".into()),
    ]
}

/// Variables of an `api` process on a random port over `names`' state.
pub fn api_vars(names: &Names, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut vars = vec![
        ("SWAPSTREAM_POSTGRES_SCHEMA", names.schema.clone()),
        ("SWAPSTREAM_REDIS_KEY_PREFIX", names.redis_prefix.clone()),
        ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("SWAPSTREAM_HTTP_CACHE_MS", "0".to_owned()),
        ("SWAPSTREAM_LOG_FORMAT", "json".to_owned()),
        ("SWAPSTREAM_RECENT_SWAPS", "1000".to_owned()),
        ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0".to_owned()),
    ];
    for (name, value) in extra {
        vars.retain(|(n, _)| n != name);
        vars.push((name, (*value).to_owned()));
    }
    vars
}

/// A self-signed certificate for `localhost`, written as PEM files, and a
/// client configuration that trusts it and nothing else.
pub struct SelfSigned {
    pub cert_path: String,
    pub key_path: String,
    pub client: std::sync::Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

impl SelfSigned {
    pub fn localhost() -> SelfSigned {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.key_pair.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        SelfSigned {
            cert_path: cert_path.display().to_string(),
            key_path: key_path.display().to_string(),
            client: std::sync::Arc::new(client),
            _dir: dir,
        }
    }

    /// The server's variables: TLS on the API port, probes and metrics on
    /// a plain port of their own (logged as `health_port`).
    pub fn server_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("SWAPSTREAM_HTTP_TLS_CERT", self.cert_path.clone()),
            ("SWAPSTREAM_HTTP_TLS_KEY", self.key_path.clone()),
            ("SWAPSTREAM_HTTP_HEALTH_ADDR", "127.0.0.1:0".into()),
        ]
    }
}

/// A swap event as JSON: `0x` and `hash` 32 times as its hash, its
/// timestamp `seconds_from_now`, `token_from` to USDC.
pub fn swap_json(hash: u8, seconds_from_now: i64, status: &str, amount_from: &str, token_from: &str) -> Vec<u8> {
    let time = Utc::now() + chrono::Duration::seconds(seconds_from_now);
    serde_json::json!({
        "tx_hash": format!("0x{}", format!("{hash:02x}").repeat(32)),
        "timestamp": swapstream::domain::swap::format_time(time),
        "status": status,
        "token_from": token_from, "token_to": "USDC",
        "amount_from": amount_from, "amount_to": "4000.5", "usd_value": "4000.5",
    })
    .to_string()
    .into_bytes()
}
