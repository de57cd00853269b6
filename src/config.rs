//! Settings from `SWAPSTREAM_*` environment variables.
//!
//! Every variable is read through `Env`, which records its effective value
//! (secrets redacted) and every problem found, so that invalid configuration
//! is reported as one line per problem and the effective configuration can be
//! printed without a second list of names. [`VARIABLES`] documents them all;
//! a test keeps it, the parser and the README in step.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::codec::Encoding;
use crate::domain::TokenSymbol;
use crate::telemetry::{LogFilter, LogFormat, LogSettings};

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One documented variable: name, default as text, meaning.
pub struct Variable {
    pub name: &'static str,
    pub default: &'static str,
    pub help: &'static str,
}

macro_rules! variables {
    ($($name:literal, $default:literal, $help:literal;)*) => {
        /// Every variable the service reads, with its default and meaning.
        pub const VARIABLES: &[Variable] = &[$(Variable { name: $name, default: $default, help: $help }),*];
    };
}

variables! {
    "SWAPSTREAM_LOG_LEVEL", "info", "Log level, or levels by module like `RUST_LOG`: `LEVEL[,MODULE=LEVEL...]`, e.g. `info,swapstream::actors::kafka_reader=debug` (the longest matching module path wins). Levels: `trace` (not in release builds), `debug`, `info`, `warning` (or `warn`), `error`, `critical`, `off`.";
    "SWAPSTREAM_LOG_FORMAT", "auto", "`json` (one JSON object a line), `text` (human-readable) or `auto` (text when stderr is a terminal, JSON otherwise).";
    "SWAPSTREAM_INSTANCE_ID", "(host name)", "Name of this instance in logs, metrics and Redis.";
    "SWAPSTREAM_KAFKA_BROKERS", "(empty)", "Bootstrap brokers, `host:port[,host:port...]`. Required by `producer` and `consumer`; when empty, `all` runs an embedded in-memory broker.";
    "SWAPSTREAM_KAFKA_TOPIC_MODE", "per_token", "`per_token`: one topic per token sold, `<prefix><TOKEN>`, consumed by pattern; `single`: one topic for every swap.";
    "SWAPSTREAM_KAFKA_TOPIC_PREFIX", "swaps.", "Topic name prefix in `per_token` mode.";
    "SWAPSTREAM_KAFKA_TOPIC", "swaps", "Topic name in `single` mode.";
    "SWAPSTREAM_KAFKA_PARTITIONS", "4", "Partitions of topics the service creates (1 to 10000).";
    "SWAPSTREAM_KAFKA_REPLICATION", "1", "Replication factor of topics the service creates (1 to 32).";
    "SWAPSTREAM_KAFKA_GROUP_ID", "swapstream", "Consumer group of the `consumer` role.";
    "SWAPSTREAM_KAFKA_STATIC_MEMBERSHIP", "auto", "Static group membership (KIP-345, `group.instance.id` = `SWAPSTREAM_INSTANCE_ID`): a restarted instance gets its partitions back at once, with no rebalance of the others; an instance that is gone for good gives them up after `SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS`, even on a graceful stop. `auto`: on when `SWAPSTREAM_INSTANCE_ID` is set (each live instance must have its own), `true`, or `false`.";
    "SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "10000", "How long the group waits for a consumer that stopped heartbeating (killed, paused, cut off) before its partitions go to the others; the broker's `group.min.session.timeout.ms`/`group.max.session.timeout.ms` bound it (6000 to 1800000 by default) (1000 to 3600000).";
    "SWAPSTREAM_KAFKA_DLQ_TOPIC", "swapstream.dlq", "Dead-letter topic for bad input.";
    "SWAPSTREAM_KAFKA_OPTIONS", "(empty)", "Extra librdkafka properties, `key=value[,key=value...]` (e.g. `security.protocol=ssl`). Treated as secret.";
    "SWAPSTREAM_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres", "PostgreSQL connection URL. A password in it is redacted in logs.";
    "SWAPSTREAM_POSTGRES_PASSWORD", "(empty)", "PostgreSQL password, if not in the URL. Secret.";
    "SWAPSTREAM_POSTGRES_SCHEMA", "swapstream", "Schema holding the service's tables (created when missing).";
    "SWAPSTREAM_POSTGRES_POOL_SIZE", "16", "Maximum PostgreSQL connections per process (1 to 1000).";
    "SWAPSTREAM_REDIS_URL", "redis://127.0.0.1:6379", "Redis URL; in `cluster` mode a comma-separated list of node URLs.";
    "SWAPSTREAM_REDIS_MODE", "single", "`single` (one Redis server) or `cluster` (Redis Cluster).";
    "SWAPSTREAM_REDIS_PASSWORD", "(empty)", "Redis password, if not in the URL. Secret.";
    "SWAPSTREAM_REDIS_KEY_PREFIX", "swapstream", "Prefix of every Redis key and channel, so deployments can share a Redis.";
    "SWAPSTREAM_BATCH_MAX_EVENTS", "5000", "Largest batch of events per checkpoint (1 to 1000000).";
    "SWAPSTREAM_BATCH_MAX_MS", "200", "Longest time a batch collects events while the reader is busy with the previous one; with the reader idle, what has arrived goes out at once (1 to 60000).";
    "SWAPSTREAM_CHECKPOINT_INTERVAL_MS", "100", "Shortest time between two checkpoints (one PostgreSQL transaction each) while less than a full batch waits; what arrives meanwhile joins the next. Swap frames do not wait for it; stats and REST from Redis follow it (0 to 60000).";
    "SWAPSTREAM_LATENESS_SECS", "3600", "How far behind a partition's newest event time an event may be and still count; older ones go to the dead-letter topic as `too_late`.";
    "SWAPSTREAM_MAX_FUTURE_SECS", "300", "How far ahead of the clock an event time may be; later ones go to the dead-letter topic as `future_timestamp`.";
    "SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", "20", "Longest graceful shutdown: finish and checkpoint the batch in flight, commit, leave the group.";
    "SWAPSTREAM_RECENT_SWAPS", "100", "Recent confirmed swaps kept per token and pair (1 to 1000).";
    "SWAPSTREAM_AGGREGATOR_THREADS", "(cores)", "Threads the aggregator actors run on.";
    "SWAPSTREAM_HTTP_ADDR", "0.0.0.0:8080", "Address the HTTP server listens on: REST, WebSocket, health and metrics; the `producer` serves only `/healthz`, `/readyz` and `/metrics` there.";
    "SWAPSTREAM_HTTP_WORKERS", "(cores)", "HTTP worker threads.";
    "SWAPSTREAM_HTTP_HEALTH_ADDR", "(empty)", "A second, plain-HTTP address serving only `/healthz`, `/readyz` and `/metrics` (for probes when the main address speaks TLS); empty: none.";
    "SWAPSTREAM_HTTP_TLS_CERT", "(empty)", "PEM certificate chain; with `SWAPSTREAM_HTTP_TLS_KEY` the main address speaks HTTPS only (rustls, TLS 1.2 and 1.3).";
    "SWAPSTREAM_HTTP_TLS_KEY", "(empty)", "PEM private key (PKCS#8, PKCS#1 or SEC1) of `SWAPSTREAM_HTTP_TLS_CERT`.";
    "SWAPSTREAM_HTTP_MAX_BODY_BYTES", "16384", "Largest request body accepted; larger ones get 413 (the API reads no bodies).";
    "SWAPSTREAM_HTTP_COMPRESSION", "true", "Compress responses (gzip, br, zstd) when the client accepts it.";
    "SWAPSTREAM_HTTP_ACCESS_LOG", "true", "One log line per request: method, path, status, duration, request id.";
    "SWAPSTREAM_HTTP_CACHE_MS", "250", "How long a computed stats answer is reused for the same token or pair (0 to 60000; 0 computes every request).";
    "SWAPSTREAM_API_KEYS", "(empty)", "API keys, comma-separated. When this or `SWAPSTREAM_API_KEYS_FILE` gives any key, `/v1` needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (WebSocket also `?api_key=`); health and metrics stay open. Secret.";
    "SWAPSTREAM_API_KEYS_FILE", "(empty)", "File of API keys, one a line, `#` starts a comment; read at start.";
    "SWAPSTREAM_CORS_ORIGINS", "(empty)", "Origins allowed to call the API from a browser, comma-separated (`https://app.example.com`), or `*` (refused while API keys are set). A request with any other `Origin` than these or its own gets 403.";
    "SWAPSTREAM_RATE_LIMIT_PER_SEC", "100", "Requests per second per API key (per client IP when anonymous) on `/v1`; 0 turns rate limiting off.";
    "SWAPSTREAM_RATE_LIMIT_BURST", "200", "Requests a client may make at once before the rate applies (1 to 1000000).";
    "SWAPSTREAM_TRUSTED_PROXIES", "(empty)", "Networks of the proxies in front of the service (ingress, load balancer), comma-separated CIDR or addresses (`10.0.0.0/8,fd00::/8`). From a peer in them, the client's address is read from `Forwarded` or `X-Forwarded-For` (the nearest hop that is not a trusted proxy); from any other peer those headers are ignored. Per-IP limits (rate limit, WebSocket connections) and logs use that address.";
    "SWAPSTREAM_RATE_LIMIT_STORE", "local", "`local`: each process keeps its own buckets; `redis`: buckets live in Redis, so every replica shares one limit per client.";
    "SWAPSTREAM_WS_QUEUE_MESSAGES", "64", "Mailbox of one WebSocket session actor, in messages from the session registry: only close requests go through it, channel frames wait in the connection's outbound queue (see `SWAPSTREAM_WS_QUEUE_BYTES`) (1 to 100000).";
    "SWAPSTREAM_WS_QUEUE_BYTES", "1048576", "Channel frames one WebSocket connection may have waiting in its outbound queue, in bytes; past this the queued frames of its busiest channels, largest first until at most half waits, are replaced by one `skipped` frame each (seq range, swap count, newest stats): a client that reads, but slowly, loses detail, not its connection (4096 to 1073741824).";
    "SWAPSTREAM_WS_QUEUE_TOTAL_BYTES", "268435456", "Bytes waiting for all WebSocket clients of a process: the queued frames, each counted once however many clients it waits for, and what each connection handed to the HTTP layer that it has not taken yet; past this the clients with the most waiting are disconnected as slow consumers until the rest fits, so clients that lag together cannot take the process' memory (65536 to 1099511627776).";
    "SWAPSTREAM_WS_WRITE_DEADLINE_MS", "3000", "Longest time bytes may wait for a WebSocket client without any of them being written before the client is disconnected as a slow consumer (100 to 60000).";
    "SWAPSTREAM_WS_SEND_BUFFER_BYTES", "65536", "Kernel send buffer of each accepted HTTP connection (`SO_SNDBUF`), so a client that stops reading is noticed after this much rather than the kernel's autotuned megabytes; 0 keeps the kernel's default.";
    "SWAPSTREAM_WS_STATS_INTERVAL_MS", "1000", "Shortest interval between two `stats` frames of one channel (50 to 600000).";
    "SWAPSTREAM_WS_HANDOFFS_PER_SEC", "150000", "Handoffs of new frames to sessions (a wake-up and a socket write each) per second the fan-out spends before frames gather: below it every update goes out at once; past it a channel's new frames wait until the budget covers their handoffs, at most `SWAPSTREAM_WS_COALESCE_MAX_MS`, so that each handoff carries more frames (1 to 100000000).";
    "SWAPSTREAM_WS_COALESCE_MAX_MS", "25", "Longest time new frames gather while the handoff budget is spent; 0 sends every update at once (0 to 1000).";
    "SWAPSTREAM_WS_PING_INTERVAL_MS", "10000", "Interval of the server's WebSocket pings (100 to 600000).";
    "SWAPSTREAM_WS_PING_TIMEOUT_MS", "30000", "A WebSocket peer that sends nothing (no pong, no message) for this long is disconnected; more than the ping interval (200 to 3600000).";
    "SWAPSTREAM_WS_MAX_CHANNELS", "50", "Most channels one WebSocket connection may subscribe to (1 to 10000).";
    "SWAPSTREAM_WS_MAX_FRAME_BYTES", "16384", "Largest inbound WebSocket message; larger ones are answered with an error frame, and ones over 4 times this close the connection with 1009 (128 to 16777216).";
    "SWAPSTREAM_WS_MAX_CONNS_PER_IP", "100", "Most WebSocket connections from one IP address; more are refused with 429 (1 to 1000000).";
    "SWAPSTREAM_WS_MAX_BAD_FRAMES", "10", "Bad frames (unknown op, bad channel, invalid JSON, binary, too large, too many channels) a connection may send before it is closed with 1008 (1 to 1000000).";
    "SWAPSTREAM_WS_DEDUP_WINDOW", "4096", "Swap states (id and status) remembered per channel so that no client gets one twice (16 to 1000000).";
    "SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "5", "Interval at which an instance writes its WebSocket session and subscriber counts to Redis (1 to 3600).";
    "SWAPSTREAM_WS_PRESENCE_TTL_SECS", "15", "Lifetime of those counts in Redis without a heartbeat, after which a dead instance's counts vanish; more than the heartbeat (2 to 86400).";
    "SWAPSTREAM_PRODUCER_RATE", "1000", "Events per minute the producer sends, or `max` for as fast as the broker takes them.";
    "SWAPSTREAM_PRODUCER_TOKENS", "ETH,BTC,SOL,USDC,USDT,TON", "Token universe of the producer, at least two symbols.";
    "SWAPSTREAM_PRODUCER_ENCODING", "protobuf", "`protobuf` or `json`.";
    "SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "3000", "Time from a swap's `pending` event to its `confirmed`/`failed` event.";
    "SWAPSTREAM_PRODUCER_FAILED_SHARE", "0.05", "Share of swaps that end `failed` (0 to 1).";
    "SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", "0", "Share of events sent twice, exactly (0 to 1).";
    "SWAPSTREAM_PRODUCER_REORDER_SHARE", "0", "Share of events held back and sent later than their event time (0 to 1).";
    "SWAPSTREAM_PRODUCER_REORDER_MAX_MS", "10000", "Longest hold-back of a reordered event.";
    "SWAPSTREAM_PRODUCER_SEED", "(random)", "Seed of the random generator, for reproducible streams.";
    "SWAPSTREAM_PRODUCER_COUNT", "0", "Stop after this many swaps (each one's every event sent); 0 runs until stopped.";
    "SWAPSTREAM_PRODUCER_GROUND_TRUTH", "(empty)", "Write what was sent and the aggregates a correct consumer must reach to this JSON file at the end.";
    "SWAPSTREAM_PRODUCER_PROGRESS_SECS", "10", "Interval of the producer's progress line.";
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicLayout {
    /// `<prefix><TOKEN>`, one topic per token sold.
    PerToken {
        prefix: String,
    },
    Single {
        topic: String,
    },
}

impl TopicLayout {
    /// The topic a swap selling `token` goes to.
    pub fn topic_for(&self, token: &TokenSymbol) -> String {
        match self {
            TopicLayout::PerToken { prefix } => format!("{prefix}{token}"),
            TopicLayout::Single { topic } => topic.clone(),
        }
    }

    /// What a consumer subscribes to: a `^`-anchored regex or a topic name.
    pub fn subscription(&self) -> String {
        match self {
            TopicLayout::PerToken { prefix } => format!("^{}", regex_escape(prefix)),
            TopicLayout::Single { topic } => topic.clone(),
        }
    }
}

fn regex_escape(text: &str) -> String {
    text.chars().fold(String::new(), |mut out, c| {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `None`: not configured (only `all` can then run, on an embedded broker).
    pub brokers: Option<String>,
    pub topics: TopicLayout,
    pub partitions: i32,
    pub replication: i32,
    pub group_id: String,
    /// `group.instance.id` of the consumer: static membership when set.
    pub group_instance_id: Option<String>,
    pub session_timeout: Duration,
    pub dlq_topic: String,
    pub options: Secret<Vec<(String, String)>>,
}

#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub url: Secret<String>,
    pub password: Option<Secret<String>>,
    pub schema: String,
    pub pool_size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisMode {
    Single,
    Cluster,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub urls: Secret<Vec<String>>,
    pub mode: RedisMode,
    pub password: Option<Secret<String>>,
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    pub batch_max_events: usize,
    pub batch_max_time: Duration,
    pub checkpoint_interval: Duration,
    pub lateness: Duration,
    pub max_future: Duration,
    pub shutdown_timeout: Duration,
    pub recent_swaps: usize,
    pub aggregator_threads: usize,
}

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub addr: std::net::SocketAddr,
    pub workers: usize,
    pub health_addr: Option<std::net::SocketAddr>,
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    pub compression: bool,
    pub access_log: bool,
    pub cache: Duration,
    /// Empty: no authentication.
    pub api_keys: Secret<Vec<String>>,
    pub cors: CorsOrigins,
    pub rate_limit: Option<RateLimit>,
    /// Peers whose `Forwarded`/`X-Forwarded-For` name the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    /// Exact origins (`scheme://host[:port]`); empty allows none but the API's own.
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
    pub shared: bool,
}

/// The WebSocket fan-out (`GET /v1/ws`).
#[derive(Debug, Clone)]
pub struct WsSettings {
    pub queue_messages: usize,
    pub queue_bytes: usize,
    pub queue_total_bytes: u64,
    pub write_deadline: Duration,
    pub send_buffer_bytes: usize,
    pub stats_interval: Duration,
    pub handoffs_per_sec: u64,
    pub coalesce_max: Duration,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub max_channels: usize,
    pub max_frame_bytes: usize,
    pub max_conns_per_ip: usize,
    pub max_bad_frames: u32,
    pub dedup_window: usize,
    pub presence_heartbeat: Duration,
    pub presence_ttl: Duration,
}

/// Events per minute, or as fast as possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    PerMinute(f64),
    Max,
}

#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub rate: Rate,
    pub tokens: Vec<TokenSymbol>,
    pub encoding: Encoding,
    pub confirm_delay: Duration,
    pub failed_share: f64,
    pub duplicate_share: f64,
    pub reorder_share: f64,
    pub reorder_max: Duration,
    pub seed: Option<u64>,
    pub count: Option<u64>,
    pub ground_truth: Option<std::path::PathBuf>,
    pub progress_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub log: LogSettings,
    pub instance_id: String,
    pub kafka: KafkaSettings,
    pub postgres: PostgresSettings,
    pub redis: RedisSettings,
    pub consumer: ConsumerSettings,
    pub http: HttpSettings,
    pub ws: WsSettings,
    pub producer: ProducerSettings,
    /// Every variable's effective value as text, secrets redacted.
    pub effective: BTreeMap<&'static str, String>,
}

/// Invalid configuration: one line per problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Settings, ConfigError> {
        Settings::from_vars(std::env::vars())
    }

    /// Reads the given variables; unrelated ones are ignored, unknown
    /// `SWAPSTREAM_*` ones are problems (most likely typos).
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let vars: HashMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("SWAPSTREAM_")).collect();
        let mut env = Env { vars: &vars, problems: Vec::new(), effective: BTreeMap::new() };

        let log = LogSettings {
            filter: env.parse_explained("SWAPSTREAM_LOG_LEVEL", "LEVEL[,MODULE=LEVEL...]", LogFilter::parse),
            format: env.parse("SWAPSTREAM_LOG_FORMAT", "one of auto, json, text", |v| match v {
                "auto" => Some(LogFormat::Auto),
                "json" => Some(LogFormat::Json),
                "text" => Some(LogFormat::Text),
                _ => None,
            }),
        };
        let explicit_instance_id = env.text("SWAPSTREAM_INSTANCE_ID");
        let instance_id = explicit_instance_id.clone().unwrap_or_else(default_instance_id);
        env.effective.insert("SWAPSTREAM_INSTANCE_ID", instance_id.clone());
        let static_membership =
            env.parse("SWAPSTREAM_KAFKA_STATIC_MEMBERSHIP", "one of auto, true, false", |v| match v {
                "auto" => Some(explicit_instance_id.is_some()),
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            });

        let brokers = env.text("SWAPSTREAM_KAFKA_BROKERS");
        if let Some(list) = &brokers {
            if list.split(',').any(|b| !is_host_port(b.trim())) {
                env.problem("SWAPSTREAM_KAFKA_BROKERS", "host:port[,host:port...]", list);
            }
        }
        let topic_mode = env.parse("SWAPSTREAM_KAFKA_TOPIC_MODE", "one of per_token, single", |v| match v {
            "per_token" | "single" => Some(v.to_owned()),
            _ => None,
        });
        let prefix = env.parse("SWAPSTREAM_KAFKA_TOPIC_PREFIX", "a topic name prefix of [A-Za-z0-9._-]", |v| {
            valid_topic(v).then(|| v.to_owned())
        });
        let single = env.parse("SWAPSTREAM_KAFKA_TOPIC", "a topic name of 1 to 249 characters [A-Za-z0-9._-]", |v| {
            valid_topic(v).then(|| v.to_owned())
        });
        let topics = if topic_mode == "single" {
            TopicLayout::Single { topic: single }
        } else {
            TopicLayout::PerToken { prefix }
        };
        let kafka = KafkaSettings {
            brokers,
            topics,
            partitions: env.number("SWAPSTREAM_KAFKA_PARTITIONS", 1, 10_000),
            replication: env.number("SWAPSTREAM_KAFKA_REPLICATION", 1, 32),
            group_id: env.parse("SWAPSTREAM_KAFKA_GROUP_ID", "a non-empty group id", |v| {
                (!v.trim().is_empty()).then(|| v.to_owned())
            }),
            group_instance_id: static_membership.then(|| instance_id.clone()),
            session_timeout: Duration::from_millis(env.number("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", 1000, 3_600_000)),
            dlq_topic: env.parse("SWAPSTREAM_KAFKA_DLQ_TOPIC", "a topic name of [A-Za-z0-9._-]", |v| {
                valid_topic(v).then(|| v.to_owned())
            }),
            options: Secret(env.secret_parse("SWAPSTREAM_KAFKA_OPTIONS", "key=value[,key=value...]", parse_options)),
        };

        let dlq_is_input = match &kafka.topics {
            TopicLayout::PerToken { prefix } => kafka.dlq_topic.starts_with(prefix.as_str()),
            TopicLayout::Single { topic } => kafka.dlq_topic == *topic,
        };
        if dlq_is_input {
            env.problems.push(format!(
                "SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics ({:?}), or dead letters would be read back as input",
                kafka.dlq_topic
            ));
        }

        let postgres_url = env.text("SWAPSTREAM_POSTGRES_URL").unwrap_or_else(|| default_of("SWAPSTREAM_POSTGRES_URL"));
        match postgres_url.parse::<tokio_postgres::Config>() {
            Ok(_) => {
                env.effective.insert("SWAPSTREAM_POSTGRES_URL", redact_url(&postgres_url));
            }
            Err(e) => {
                env.problem("SWAPSTREAM_POSTGRES_URL", &format!("a PostgreSQL URL ({e})"), &redact_url(&postgres_url))
            }
        }
        let postgres = PostgresSettings {
            url: Secret(postgres_url),
            password: env.secret("SWAPSTREAM_POSTGRES_PASSWORD"),
            schema: env.parse(
                "SWAPSTREAM_POSTGRES_SCHEMA",
                "a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)",
                |v| valid_identifier(v).then(|| v.to_owned()),
            ),
            pool_size: env.number("SWAPSTREAM_POSTGRES_POOL_SIZE", 1, 1000),
        };

        let redis_mode = env.parse("SWAPSTREAM_REDIS_MODE", "one of single, cluster", |v| match v {
            "single" => Some(RedisMode::Single),
            "cluster" => Some(RedisMode::Cluster),
            _ => None,
        });
        let redis_urls: Vec<String> = env
            .text("SWAPSTREAM_REDIS_URL")
            .unwrap_or_else(|| default_of("SWAPSTREAM_REDIS_URL"))
            .split(',')
            .map(|u| u.trim().to_owned())
            .collect();
        let bad_redis = redis_urls.iter().find(|u| redis::parse_redis_url(u).is_none());
        if let Some(bad) = bad_redis {
            env.problem("SWAPSTREAM_REDIS_URL", "redis://host:port URL(s)", &redact_url(bad));
        } else if redis_mode == RedisMode::Single && redis_urls.len() > 1 {
            env.problem("SWAPSTREAM_REDIS_URL", "one URL in single mode", &redis_urls.len().to_string());
        }
        env.effective
            .insert("SWAPSTREAM_REDIS_URL", redis_urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(","));
        let redis = RedisSettings {
            urls: Secret(redis_urls),
            mode: redis_mode,
            password: env.secret("SWAPSTREAM_REDIS_PASSWORD"),
            key_prefix: env.parse(
                "SWAPSTREAM_REDIS_KEY_PREFIX",
                "1 to 64 characters without spaces, braces or ':'",
                |v| (!v.is_empty() && v.len() <= 64 && !v.contains([' ', '{', '}', ':'])).then(|| v.to_owned()),
            ),
        };

        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let consumer = ConsumerSettings {
            batch_max_events: env.number("SWAPSTREAM_BATCH_MAX_EVENTS", 1, 1_000_000),
            batch_max_time: Duration::from_millis(env.number("SWAPSTREAM_BATCH_MAX_MS", 1, 60_000)),
            checkpoint_interval: Duration::from_millis(env.number("SWAPSTREAM_CHECKPOINT_INTERVAL_MS", 0, 60_000)),
            lateness: Duration::from_secs(env.number("SWAPSTREAM_LATENESS_SECS", 0, 30 * 86_400)),
            max_future: Duration::from_secs(env.number("SWAPSTREAM_MAX_FUTURE_SECS", 0, 86_400)),
            shutdown_timeout: Duration::from_secs(env.number("SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", 1, 3_600)),
            recent_swaps: env.number("SWAPSTREAM_RECENT_SWAPS", 1, 1_000),
            aggregator_threads: env
                .optional_number("SWAPSTREAM_AGGREGATOR_THREADS")
                .filter(|&n| n > 0)
                .unwrap_or(cores),
        };
        env.effective.entry("SWAPSTREAM_AGGREGATOR_THREADS").or_insert_with(|| consumer.aggregator_threads.to_string());

        let http = http_settings(&mut env, cores);

        let ws = WsSettings {
            queue_messages: env.number("SWAPSTREAM_WS_QUEUE_MESSAGES", 1, 100_000),
            queue_bytes: env.number("SWAPSTREAM_WS_QUEUE_BYTES", 4096, 1 << 30),
            queue_total_bytes: env.number("SWAPSTREAM_WS_QUEUE_TOTAL_BYTES", 65_536, 1 << 40),
            write_deadline: Duration::from_millis(env.number("SWAPSTREAM_WS_WRITE_DEADLINE_MS", 100, 60_000)),
            send_buffer_bytes: env.number("SWAPSTREAM_WS_SEND_BUFFER_BYTES", 0, 1 << 30),
            stats_interval: Duration::from_millis(env.number("SWAPSTREAM_WS_STATS_INTERVAL_MS", 50, 600_000)),
            handoffs_per_sec: env.number("SWAPSTREAM_WS_HANDOFFS_PER_SEC", 1, 100_000_000),
            coalesce_max: Duration::from_millis(env.number("SWAPSTREAM_WS_COALESCE_MAX_MS", 0, 1_000)),
            ping_interval: Duration::from_millis(env.number("SWAPSTREAM_WS_PING_INTERVAL_MS", 100, 600_000)),
            ping_timeout: Duration::from_millis(env.number("SWAPSTREAM_WS_PING_TIMEOUT_MS", 200, 3_600_000)),
            max_channels: env.number("SWAPSTREAM_WS_MAX_CHANNELS", 1, 10_000),
            max_frame_bytes: env.number("SWAPSTREAM_WS_MAX_FRAME_BYTES", 128, 16 << 20),
            max_conns_per_ip: env.number("SWAPSTREAM_WS_MAX_CONNS_PER_IP", 1, 1_000_000),
            max_bad_frames: env.number("SWAPSTREAM_WS_MAX_BAD_FRAMES", 1, 1_000_000),
            dedup_window: env.number("SWAPSTREAM_WS_DEDUP_WINDOW", 16, 1_000_000),
            presence_heartbeat: Duration::from_secs(env.number("SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", 1, 3_600)),
            presence_ttl: Duration::from_secs(env.number("SWAPSTREAM_WS_PRESENCE_TTL_SECS", 2, 86_400)),
        };
        if ws.ping_timeout <= ws.ping_interval {
            env.problems.push("SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS".into());
        }
        if ws.presence_ttl <= ws.presence_heartbeat {
            env.problems.push(
                "SWAPSTREAM_WS_PRESENCE_TTL_SECS: must be more than SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS".into(),
            );
        }

        let producer = ProducerSettings {
            rate: env.parse("SWAPSTREAM_PRODUCER_RATE", "a positive number of events per minute, or \"max\"", |v| {
                if v == "max" {
                    return Some(Rate::Max);
                }
                v.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0).map(Rate::PerMinute)
            }),
            tokens: env.parse(
                "SWAPSTREAM_PRODUCER_TOKENS",
                "at least two distinct token symbols, comma-separated",
                |v| {
                    let mut tokens: Vec<TokenSymbol> =
                        v.split(',').map(|s| TokenSymbol::parse(s.trim())).collect::<Result<_, _>>().ok()?;
                    let count = tokens.len();
                    tokens.sort();
                    tokens.dedup();
                    (tokens.len() == count && count >= 2).then_some(tokens)
                },
            ),
            encoding: env.parse("SWAPSTREAM_PRODUCER_ENCODING", "one of protobuf, json", |v| match v {
                "protobuf" => Some(Encoding::Protobuf),
                "json" => Some(Encoding::Json),
                _ => None,
            }),
            confirm_delay: Duration::from_millis(env.number("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", 0, 3_600_000)),
            failed_share: env.share("SWAPSTREAM_PRODUCER_FAILED_SHARE"),
            duplicate_share: env.share("SWAPSTREAM_PRODUCER_DUPLICATE_SHARE"),
            reorder_share: env.share("SWAPSTREAM_PRODUCER_REORDER_SHARE"),
            reorder_max: Duration::from_millis(env.number("SWAPSTREAM_PRODUCER_REORDER_MAX_MS", 0, 3_600_000)),
            seed: env.optional_number("SWAPSTREAM_PRODUCER_SEED"),
            count: Some(env.number::<u64>("SWAPSTREAM_PRODUCER_COUNT", 0, u64::MAX)).filter(|&n| n > 0),
            ground_truth: env.text("SWAPSTREAM_PRODUCER_GROUND_TRUTH").map(Into::into),
            progress_interval: Duration::from_secs(env.number("SWAPSTREAM_PRODUCER_PROGRESS_SECS", 1, 86_400)),
        };
        if let Some(path) = &producer.ground_truth {
            env.effective.insert("SWAPSTREAM_PRODUCER_GROUND_TRUTH", path.display().to_string());
        }

        for name in vars.keys() {
            if !VARIABLES.iter().any(|v| v.name == name) {
                env.problems.push(format!("{name}: unknown variable (see the configuration table in README.md)"));
            }
        }
        let Env { mut problems, effective, .. } = env;
        if !problems.is_empty() {
            problems.sort();
            return Err(ConfigError(problems));
        }
        Ok(Settings { log, instance_id, kafka, postgres, redis, consumer, http, ws, producer, effective })
    }

    /// The effective configuration, one `NAME=value` line per variable,
    /// secrets redacted.
    pub fn describe(&self) -> String {
        self.effective.iter().map(|(name, value)| format!("{name}={value}\n")).collect()
    }
}

fn http_settings(env: &mut Env<'_>, cores: usize) -> HttpSettings {
    let address = "an address like 0.0.0.0:8080";
    let addr = env.parse("SWAPSTREAM_HTTP_ADDR", address, |v| v.parse().ok());
    let workers = env.optional_number("SWAPSTREAM_HTTP_WORKERS").filter(|&n| n > 0).unwrap_or(cores);
    env.effective.insert("SWAPSTREAM_HTTP_WORKERS", workers.to_string());
    let health_addr = env.text("SWAPSTREAM_HTTP_HEALTH_ADDR").and_then(|text| {
        let parsed = text.parse().ok();
        if parsed.is_none() {
            env.problem("SWAPSTREAM_HTTP_HEALTH_ADDR", address, &text);
        }
        env.effective.insert("SWAPSTREAM_HTTP_HEALTH_ADDR", text);
        parsed
    });
    let tls = match (env.text("SWAPSTREAM_HTTP_TLS_CERT"), env.text("SWAPSTREAM_HTTP_TLS_KEY")) {
        (Some(cert), Some(key)) => {
            for (name, path) in [("SWAPSTREAM_HTTP_TLS_CERT", &cert), ("SWAPSTREAM_HTTP_TLS_KEY", &key)] {
                if !std::path::Path::new(path).is_file() {
                    env.problem(name, "a readable PEM file", path);
                }
                env.effective.insert(name, path.clone());
            }
            Some(TlsFiles { cert: cert.into(), key: key.into() })
        }
        (None, None) => None,
        (cert, _) => {
            let (missing, given) = if cert.is_some() {
                ("SWAPSTREAM_HTTP_TLS_KEY", "SWAPSTREAM_HTTP_TLS_CERT")
            } else {
                ("SWAPSTREAM_HTTP_TLS_CERT", "SWAPSTREAM_HTTP_TLS_KEY")
            };
            env.problems.push(format!("{missing}: required when {given} is set"));
            None
        }
    };
    let max_body_bytes = env.number("SWAPSTREAM_HTTP_MAX_BODY_BYTES", 0, 64 << 20);
    let compression = env.flag("SWAPSTREAM_HTTP_COMPRESSION");
    let access_log = env.flag("SWAPSTREAM_HTTP_ACCESS_LOG");
    let cache = Duration::from_millis(env.number("SWAPSTREAM_HTTP_CACHE_MS", 0, 60_000));

    let mut keys: Vec<String> = env
        .secret("SWAPSTREAM_API_KEYS")
        .map(|keys| keys.expose().split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(path) = env.text("SWAPSTREAM_API_KEYS_FILE") {
        match std::fs::read_to_string(&path) {
            Ok(text) => keys.extend(
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or_default().trim())
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            ),
            Err(e) => env.problems.push(format!("SWAPSTREAM_API_KEYS_FILE: cannot read {path:?}: {e}")),
        }
        env.effective.insert("SWAPSTREAM_API_KEYS_FILE", path);
    }
    if keys.iter().any(|k| k.len() < 16) {
        env.problems.push("SWAPSTREAM_API_KEYS: every key needs at least 16 characters".into());
    }

    let cors = env.parse("SWAPSTREAM_CORS_ORIGINS", "`*` or origins like https://app.example.com", |v| {
        if v == "*" {
            return Some(CorsOrigins::Any);
        }
        let origins: Vec<String> =
            v.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
        let valid = |o: &String| {
            o.split_once("://").is_some_and(|(scheme, host)| {
                matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
            })
        };
        origins.iter().all(valid).then_some(CorsOrigins::List(origins))
    });
    if cors == CorsOrigins::Any && !keys.is_empty() {
        env.problems.push("SWAPSTREAM_CORS_ORIGINS: `*` is refused while API keys are set; list the origins".into());
    }

    let per_second: u32 = env.number("SWAPSTREAM_RATE_LIMIT_PER_SEC", 0, 1_000_000);
    let burst: u32 = env.number("SWAPSTREAM_RATE_LIMIT_BURST", 1, 1_000_000);
    let shared = env.parse("SWAPSTREAM_RATE_LIMIT_STORE", "one of local, redis", |v| match v {
        "local" => Some(false),
        "redis" => Some(true),
        _ => None,
    });
    let rate_limit = (per_second > 0).then_some(RateLimit { per_second, burst, shared });
    let trusted_proxies =
        env.parse("SWAPSTREAM_TRUSTED_PROXIES", "networks like 10.0.0.0/8 or addresses, comma-separated", |v| {
            v.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse::<ipnet::IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).ok()
                })
                .collect::<Option<Vec<_>>>()
        });

    HttpSettings {
        addr,
        workers,
        health_addr,
        tls,
        max_body_bytes,
        compression,
        access_log,
        cache,
        api_keys: Secret(keys),
        cors,
        rate_limit,
        trusted_proxies,
    }
}

/// Reads variables, records effective values and collects problems.
struct Env<'a> {
    vars: &'a HashMap<String, String>,
    problems: Vec<String>,
    effective: BTreeMap<&'static str, String>,
}

impl Env<'_> {
    /// The variable's value when set and not blank.
    fn text(&self, name: &'static str) -> Option<String> {
        self.vars.get(name).map(|v| v.trim()).filter(|v| !v.is_empty()).map(str::to_owned)
    }

    fn problem(&mut self, name: &str, expected: &str, got: &str) {
        self.problems.push(format!("{name}: expected {expected}, got {got:?}"));
    }

    /// Parses the variable, or its documented default when unset. A bad
    /// value is recorded as a problem and the default used in its place, so
    /// that every problem is found in one pass.
    fn parse<T>(&mut self, name: &'static str, expected: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let default = default_of(name);
        let text = self.text(name).unwrap_or_else(|| default.clone());
        let value = match parse(&text) {
            Some(value) => value,
            None => {
                self.problem(name, expected, &text);
                parse(&default).unwrap_or_else(|| panic!("default of {name} must parse"))
            }
        };
        self.effective.insert(name, text);
        value
    }

    /// [`Env::parse`] for parsers that say what is wrong.
    fn parse_explained<T>(
        &mut self,
        name: &'static str,
        expected: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        let default = default_of(name);
        let text = self.text(name).unwrap_or_else(|| default.clone());
        let value = match parse(&text) {
            Ok(value) => value,
            Err(why) => {
                self.problem(name, &format!("{expected}: {why}"), &text);
                parse(&default).unwrap_or_else(|_| panic!("default of {name} must parse"))
            }
        };
        self.effective.insert(name, text);
        value
    }

    fn number<T>(&mut self, name: &'static str, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let expected = format!("an integer from {min} to {max}");
        self.parse(name, &expected, |v| v.parse::<T>().ok().filter(|n| *n >= min && *n <= max))
    }

    fn optional_number<T: FromStr + fmt::Display>(&mut self, name: &'static str) -> Option<T> {
        let text = self.text(name)?;
        match text.parse() {
            Ok(value) => {
                self.effective.insert(name, text);
                Some(value)
            }
            Err(_) => {
                self.problem(name, "a non-negative integer", &text);
                None
            }
        }
    }

    fn flag(&mut self, name: &'static str) -> bool {
        self.parse(name, "true or false", |v| match v {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        })
    }

    fn share(&mut self, name: &'static str) -> f64 {
        self.parse(name, "a share from 0 to 1", |v| v.parse::<f64>().ok().filter(|s| (0.0..=1.0).contains(s)))
    }

    fn secret(&mut self, name: &'static str) -> Option<Secret<String>> {
        let value = self.text(name)?;
        self.effective.insert(name, "<redacted>".into());
        Some(Secret(value))
    }

    fn secret_parse<T: Default>(&mut self, name: &'static str, expected: &str, parse: impl Fn(&str) -> Option<T>) -> T {
        let Some(text) = self.text(name) else { return T::default() };
        self.effective.insert(name, "<redacted>".into());
        parse(&text).unwrap_or_else(|| {
            // The value may hold a secret: name the problem, not the value.
            self.problems.push(format!("{name}: expected {expected}"));
            T::default()
        })
    }
}

fn default_of(name: &str) -> String {
    let variable = VARIABLES.iter().find(|v| v.name == name).unwrap_or_else(|| panic!("{name} is not documented"));
    if variable.default.starts_with('(') {
        String::new()
    } else {
        variable.default.to_owned()
    }
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("swapstream-{}", std::process::id()))
}

fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn parse_options(text: &str) -> Option<Vec<(String, String)>> {
    text.split(',')
        .map(|pair| {
            let (key, value) = pair.split_once('=')?;
            let key = key.trim();
            (!key.is_empty()).then(|| (key.to_owned(), value.trim().to_owned()))
        })
        .collect()
}

/// The URL with any password replaced, for logs.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    fn problems(vars: &[(&str, &str)]) -> Vec<String> {
        settings(vars).expect_err("should be refused").0
    }

    #[test]
    fn defaults_are_valid() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.kafka.brokers, None);
        assert_eq!(s.kafka.partitions, 4);
        assert_eq!(s.kafka.topics, TopicLayout::PerToken { prefix: "swaps.".into() });
        assert_eq!(s.producer.rate, Rate::PerMinute(1000.0));
        assert_eq!(s.producer.tokens.len(), 6);
        assert_eq!(s.producer.encoding, Encoding::Protobuf);
        assert_eq!(s.producer.count, None);
        assert_eq!(s.postgres.schema, "swapstream");
        assert_eq!(s.redis.mode, RedisMode::Single);
    }

    #[test]
    fn a_bad_rate_is_named_with_what_was_expected() {
        assert_eq!(
            problems(&[("SWAPSTREAM_PRODUCER_RATE", "fast")]),
            ["SWAPSTREAM_PRODUCER_RATE: expected a positive number of events per minute, or \"max\", got \"fast\""]
        );
        assert_eq!(settings(&[("SWAPSTREAM_PRODUCER_RATE", "max")]).unwrap().producer.rate, Rate::Max);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let found = problems(&[
            ("SWAPSTREAM_KAFKA_PARTITIONS", "0"),
            ("SWAPSTREAM_KAFKA_BROKERS", "localhost"),
            ("SWAPSTREAM_LOG_LEVEL", "loud"),
            ("SWAPSTREAM_PRODUCER_TOKENS", "ETH"),
            ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "1.5"),
            ("SWAPSTREAM_HTTP_ADDR", "everywhere"),
            ("SWAPSTREAM_POSTGRES_SCHEMA", "Robert'); DROP TABLE"),
        ]);
        assert_eq!(
            found,
            [
                "SWAPSTREAM_HTTP_ADDR: expected an address like 0.0.0.0:8080, got \"everywhere\"",
                "SWAPSTREAM_KAFKA_BROKERS: expected host:port[,host:port...], got \"localhost\"",
                "SWAPSTREAM_KAFKA_PARTITIONS: expected an integer from 1 to 10000, got \"0\"",
                "SWAPSTREAM_LOG_LEVEL: expected LEVEL[,MODULE=LEVEL...]: unknown level \"loud\" (trace, debug, info, warning, error, critical, off), got \"loud\"",
                "SWAPSTREAM_POSTGRES_SCHEMA: expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63), got \"Robert'); DROP TABLE\"",
                "SWAPSTREAM_PRODUCER_FAILED_SHARE: expected a share from 0 to 1, got \"1.5\"",
                "SWAPSTREAM_PRODUCER_TOKENS: expected at least two distinct token symbols, comma-separated, got \"ETH\"",
            ]
        );
    }

    #[test]
    fn unknown_swapstream_variables_are_refused_and_others_ignored() {
        let found = problems(&[("SWAPSTREAM_PRODUCER_RAET", "5"), ("PATH", "/bin")]);
        assert_eq!(found, ["SWAPSTREAM_PRODUCER_RAET: unknown variable (see the configuration table in README.md)"]);
    }

    #[test]
    fn secrets_never_show_in_the_description_or_debug() {
        let s = settings(&[
            ("SWAPSTREAM_POSTGRES_URL", "postgres://app:hunter2@db:5432/swaps"),
            ("SWAPSTREAM_REDIS_PASSWORD", "hunter3"),
            ("SWAPSTREAM_KAFKA_OPTIONS", "sasl.password=hunter4"),
        ])
        .unwrap();
        let described = s.describe();
        let debugged = format!("{s:?}");
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!described.contains(secret), "{described}");
            assert!(!debugged.contains(secret), "{debugged}");
        }
        assert!(described.contains("SWAPSTREAM_POSTGRES_URL=postgres://app:<redacted>@db:5432/swaps\n"));
        assert!(described.contains("SWAPSTREAM_REDIS_PASSWORD=<redacted>\n"));
        assert_eq!(s.kafka.options.expose(), &[("sasl.password".to_owned(), "hunter4".to_owned())]);
    }

    #[test]
    fn bad_secret_values_are_not_echoed() {
        let found = problems(&[("SWAPSTREAM_KAFKA_OPTIONS", "hunter5")]);
        assert_eq!(found, ["SWAPSTREAM_KAFKA_OPTIONS: expected key=value[,key=value...]"]);
    }

    #[test]
    fn the_dead_letter_topic_must_not_be_an_input_topic() {
        let found = problems(&[("SWAPSTREAM_KAFKA_DLQ_TOPIC", "swaps.dlq")]);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics"), "{found:?}");
    }

    #[test]
    fn single_topic_mode_uses_the_topic_setting() {
        let s =
            settings(&[("SWAPSTREAM_KAFKA_TOPIC_MODE", "single"), ("SWAPSTREAM_KAFKA_TOPIC", "all-swaps")]).unwrap();
        let eth = TokenSymbol::parse("ETH").unwrap();
        assert_eq!(s.kafka.topics.topic_for(&eth), "all-swaps");
        assert_eq!(settings(&[]).unwrap().kafka.topics.topic_for(&eth), "swaps.ETH");
        assert_eq!(settings(&[]).unwrap().kafka.topics.subscription(), "^swaps\\.");
    }

    #[test]
    fn redis_cluster_takes_a_url_list() {
        let s = settings(&[
            ("SWAPSTREAM_REDIS_MODE", "cluster"),
            ("SWAPSTREAM_REDIS_URL", "redis://127.0.0.1:7001,redis://127.0.0.1:7002"),
        ])
        .unwrap();
        assert_eq!(s.redis.urls.expose().len(), 2);
        let found = problems(&[("SWAPSTREAM_REDIS_URL", "redis://a:1,redis://b:2")]);
        assert_eq!(found, ["SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"2\""]);
    }

    #[test]
    fn every_documented_variable_is_described_with_its_default() {
        let s = settings(&[]).unwrap();
        for variable in VARIABLES {
            let optional = variable.default.starts_with('(');
            assert!(optional || s.effective.contains_key(variable.name), "{} missing", variable.name);
        }
    }

    #[test]
    fn the_readme_documents_every_variable() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        for variable in VARIABLES {
            let row = format!("| `{}` | `{}` |", variable.name, variable.default);
            assert!(readme.contains(&row), "README.md lacks the row for {}: {row}", variable.name);
        }
    }
}
