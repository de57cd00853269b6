//! Settings from `SWAPSTREAM_*` environment variables, or the flags of the
//! same names.
//!
//! One declarative definition: every setting is a clap argument with its
//! variable (`env`), long flag, default, range and meaning, in groups
//! ([`SettingsArgs`]) that every role flattens, so `swapstream <role>
//! --help` lists them all. [`Settings::from_args`] then checks what one
//! value alone cannot say (the ping timeout against the ping interval, a
//! TLS certificate without its key...) and builds each component's own
//! small settings struct. A test keeps the definition and the README's
//! table in step.
//!
//! This module imports nothing of the crate: what needs the domain's or a
//! component's types (the log filter, the producer's tokens and encoding)
//! is kept as plain text here and built where it is used.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, ArgMatches, Args, Command, FromArgMatches};

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

/// One documented variable, read from the definition: name, long flag,
/// default as text (`(...)` when computed or absent), meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub flag: String,
    pub default: String,
    pub help: String,
}

/// Every setting, in groups. Each role's command flattens it.
#[derive(clap::Args, Clone)]
pub struct SettingsArgs {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub postgres: PostgresArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub consumer: ConsumerArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub ws: WsArgs,
    #[command(flatten)]
    pub producer: ProducerArgs,
}

/// Logging and the instance's name.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Logging and identity")]
pub struct LogArgs {
    #[arg(
        long = "log-level",
        env = "SWAPSTREAM_LOG_LEVEL",
        default_value = "info",
        help = "Log level, or levels by module like `RUST_LOG`: `LEVEL[,MODULE=LEVEL...]`, e.g. `info,swapstream::actors::kafka_reader=debug` (the longest matching module path wins). Levels: `trace` (not in release builds), `debug`, `info`, `warning` (or `warn`), `error`, `critical`, `off`."
    )]
    pub log_level: String,
    #[arg(long = "log-format", env = "SWAPSTREAM_LOG_FORMAT", default_value = "auto", value_parser = PossibleValuesParser::new(["auto", "json", "text"]), help = "`json` (one JSON object a line), `text` (human-readable) or `auto` (text when stderr is a terminal, JSON otherwise).")]
    pub log_format: String,
    #[arg(
        long = "instance-id",
        env = "SWAPSTREAM_INSTANCE_ID",
        help = "Name of this instance in logs, metrics and Redis. [default: (host name)]"
    )]
    pub instance_id: Option<String>,
}

/// Kafka: brokers, topics, the consumer group.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Kafka")]
pub struct KafkaArgs {
    #[arg(long = "kafka-brokers", env = "SWAPSTREAM_KAFKA_BROKERS", value_parser = brokers, help = "Bootstrap brokers, `host:port[,host:port...]`. Required by `producer` and `consumer`; when empty, `all` runs an embedded in-memory broker. [default: (empty)]")]
    pub kafka_brokers: Option<String>,
    #[arg(long = "kafka-topic-mode", env = "SWAPSTREAM_KAFKA_TOPIC_MODE", default_value = "per_token", value_parser = PossibleValuesParser::new(["per_token", "single"]), help = "`per_token`: one topic per token sold, `<prefix><TOKEN>`, consumed by pattern; `single`: one topic for every swap.")]
    pub kafka_topic_mode: String,
    #[arg(long = "kafka-topic-prefix", env = "SWAPSTREAM_KAFKA_TOPIC_PREFIX", default_value = "swaps.", value_parser = topic_prefix, help = "Topic name prefix in `per_token` mode.")]
    pub kafka_topic_prefix: String,
    #[arg(long = "kafka-topic", env = "SWAPSTREAM_KAFKA_TOPIC", default_value = "swaps", value_parser = topic_name, help = "Topic name in `single` mode.")]
    pub kafka_topic: String,
    #[arg(long = "kafka-partitions", env = "SWAPSTREAM_KAFKA_PARTITIONS", default_value = "4", value_parser = int(1, 10_000), help = "Partitions of topics the service creates (1 to 10000).")]
    pub kafka_partitions: u64,
    #[arg(long = "kafka-replication", env = "SWAPSTREAM_KAFKA_REPLICATION", default_value = "1", value_parser = int(1, 32), help = "Replication factor of topics the service creates (1 to 32).")]
    pub kafka_replication: u64,
    #[arg(long = "kafka-group-id", env = "SWAPSTREAM_KAFKA_GROUP_ID", default_value = "swapstream", value_parser = group_id, help = "Consumer group of the `consumer` role.")]
    pub kafka_group_id: String,
    #[arg(long = "kafka-static-membership", env = "SWAPSTREAM_KAFKA_STATIC_MEMBERSHIP", default_value = "auto", value_parser = PossibleValuesParser::new(["auto", "true", "false"]), help = "Static group membership (KIP-345, `group.instance.id` = `SWAPSTREAM_INSTANCE_ID`): a restarted instance gets its partitions back at once, with no rebalance of the others; an instance that is gone for good gives them up after `SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS`, even on a graceful stop. `auto`: on when `SWAPSTREAM_INSTANCE_ID` is set (each live instance must have its own), `true`, or `false`.")]
    pub kafka_static_membership: String,
    #[arg(long = "kafka-session-timeout-ms", env = "SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", default_value = "10000", value_parser = int(1000, 3_600_000), help = "How long the group waits for a consumer that stopped heartbeating (killed, paused, cut off) before its partitions go to the others; the broker's `group.min.session.timeout.ms`/`group.max.session.timeout.ms` bound it (6000 to 1800000 by default) (1000 to 3600000).")]
    pub kafka_session_timeout_ms: u64,
    #[arg(long = "kafka-dlq-topic", env = "SWAPSTREAM_KAFKA_DLQ_TOPIC", default_value = "swapstream.dlq", value_parser = topic_name, help = "Dead-letter topic for bad input.")]
    pub kafka_dlq_topic: String,
    #[arg(
        long = "kafka-options",
        env = "SWAPSTREAM_KAFKA_OPTIONS",
        hide_env_values = true,
        help = "Extra librdkafka properties, `key=value[,key=value...]` (e.g. `security.protocol=ssl`). Treated as secret. [default: (empty)]"
    )]
    pub kafka_options: Option<String>,
}

/// PostgreSQL: where checkpoints and history live.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "PostgreSQL")]
pub struct PostgresArgs {
    #[arg(
        long = "postgres-url",
        env = "SWAPSTREAM_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true,
        help = "PostgreSQL connection URL. A password in it is redacted in logs."
    )]
    pub postgres_url: String,
    #[arg(
        long = "postgres-password",
        env = "SWAPSTREAM_POSTGRES_PASSWORD",
        hide_env_values = true,
        help = "PostgreSQL password, if not in the URL. Secret. [default: (empty)]"
    )]
    pub postgres_password: Option<String>,
    #[arg(long = "postgres-schema", env = "SWAPSTREAM_POSTGRES_SCHEMA", default_value = "swapstream", value_parser = sql_identifier, help = "Schema holding the service's tables (created when missing).")]
    pub postgres_schema: String,
    #[arg(long = "postgres-pool-size", env = "SWAPSTREAM_POSTGRES_POOL_SIZE", default_value = "16", value_parser = int(1, 1000), help = "Maximum PostgreSQL connections per process (1 to 1000).")]
    pub postgres_pool_size: u64,
}

/// Redis: live values, pub/sub, presence.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Redis")]
pub struct RedisArgs {
    #[arg(
        long = "redis-url",
        env = "SWAPSTREAM_REDIS_URL",
        default_value = "redis://127.0.0.1:6379",
        hide_env_values = true,
        help = "Redis URL; in `cluster` mode a comma-separated list of node URLs."
    )]
    pub redis_url: String,
    #[arg(long = "redis-mode", env = "SWAPSTREAM_REDIS_MODE", default_value = "single", value_parser = PossibleValuesParser::new(["single", "cluster"]), help = "`single` (one Redis server) or `cluster` (Redis Cluster).")]
    pub redis_mode: String,
    #[arg(
        long = "redis-password",
        env = "SWAPSTREAM_REDIS_PASSWORD",
        hide_env_values = true,
        help = "Redis password, if not in the URL. Secret. [default: (empty)]"
    )]
    pub redis_password: Option<String>,
    #[arg(long = "redis-key-prefix", env = "SWAPSTREAM_REDIS_KEY_PREFIX", default_value = "swapstream", value_parser = key_prefix, help = "Prefix of every Redis key and channel, so deployments can share a Redis.")]
    pub redis_key_prefix: String,
}

/// The stream processor: batches, checkpoints, lateness.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Consumer")]
pub struct ConsumerArgs {
    #[arg(long = "batch-max-events", env = "SWAPSTREAM_BATCH_MAX_EVENTS", default_value = "5000", value_parser = int(1, 1_000_000), help = "Largest batch of events per checkpoint (1 to 1000000).")]
    pub batch_max_events: u64,
    #[arg(long = "batch-max-ms", env = "SWAPSTREAM_BATCH_MAX_MS", default_value = "200", value_parser = int(1, 60_000), help = "Longest time a batch collects events while the reader is busy with the previous one; with the reader idle, what has arrived goes out at once (1 to 60000).")]
    pub batch_max_ms: u64,
    #[arg(long = "checkpoint-interval-ms", env = "SWAPSTREAM_CHECKPOINT_INTERVAL_MS", default_value = "100", value_parser = int(0, 60_000), help = "Shortest time between two checkpoints (one PostgreSQL transaction each) while less than a full batch waits; what arrives meanwhile joins the next. Swap frames do not wait for it; stats and REST from Redis follow it (0 to 60000).")]
    pub checkpoint_interval_ms: u64,
    #[arg(long = "lateness-secs", env = "SWAPSTREAM_LATENESS_SECS", default_value = "3600", value_parser = int(0, 30 * 86_400), help = "How far behind a partition's newest event time an event may be and still count; older ones go to the dead-letter topic as `too_late`.")]
    pub lateness_secs: u64,
    #[arg(long = "max-future-secs", env = "SWAPSTREAM_MAX_FUTURE_SECS", default_value = "300", value_parser = int(0, 86_400), help = "How far ahead of the clock an event time may be; later ones go to the dead-letter topic as `future_timestamp`.")]
    pub max_future_secs: u64,
    #[arg(long = "shutdown-timeout-secs", env = "SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", default_value = "20", value_parser = int(1, 3_600), help = "Longest graceful shutdown: finish and checkpoint the batch in flight, commit, leave the group.")]
    pub shutdown_timeout_secs: u64,
    #[arg(long = "recent-swaps", env = "SWAPSTREAM_RECENT_SWAPS", default_value = "100", value_parser = int(1, 1_000), help = "Recent confirmed swaps kept per token and pair (1 to 1000).")]
    pub recent_swaps: u64,
    #[arg(long = "aggregator-threads", env = "SWAPSTREAM_AGGREGATOR_THREADS", value_parser = int(0, u64::MAX), help = "Threads the aggregator actors run on. [default: (cores)]")]
    pub aggregator_threads: Option<u64>,
}

/// The HTTP server: addresses, TLS, API keys, origins, rate limits.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "HTTP")]
pub struct HttpArgs {
    #[arg(long = "http-addr", env = "SWAPSTREAM_HTTP_ADDR", default_value = "0.0.0.0:8080", value_parser = address, help = "Address the HTTP server listens on: REST, WebSocket, health and metrics; the `producer` serves only `/healthz`, `/readyz` and `/metrics` there.")]
    pub http_addr: SocketAddr,
    #[arg(long = "http-workers", env = "SWAPSTREAM_HTTP_WORKERS", value_parser = int(0, u64::MAX), help = "HTTP worker threads. [default: (cores)]")]
    pub http_workers: Option<u64>,
    #[arg(long = "http-health-addr", env = "SWAPSTREAM_HTTP_HEALTH_ADDR", value_parser = address, help = "A second, plain-HTTP address serving only `/healthz`, `/readyz` and `/metrics` (for probes when the main address speaks TLS); empty: none. [default: (empty)]")]
    pub http_health_addr: Option<SocketAddr>,
    #[arg(
        long = "http-tls-cert",
        env = "SWAPSTREAM_HTTP_TLS_CERT",
        help = "PEM certificate chain; with `SWAPSTREAM_HTTP_TLS_KEY` the main address speaks HTTPS only (rustls, TLS 1.2 and 1.3). [default: (empty)]"
    )]
    pub http_tls_cert: Option<PathBuf>,
    #[arg(
        long = "http-tls-key",
        env = "SWAPSTREAM_HTTP_TLS_KEY",
        help = "PEM private key (PKCS#8, PKCS#1 or SEC1) of `SWAPSTREAM_HTTP_TLS_CERT`. [default: (empty)]"
    )]
    pub http_tls_key: Option<PathBuf>,
    #[arg(long = "http-max-body-bytes", env = "SWAPSTREAM_HTTP_MAX_BODY_BYTES", default_value = "16384", value_parser = int(0, 64 << 20), help = "Largest request body accepted; larger ones get 413 (the API reads no bodies).")]
    pub http_max_body_bytes: u64,
    #[arg(long = "http-compression", env = "SWAPSTREAM_HTTP_COMPRESSION", default_value = "true", value_parser = flag, action = ArgAction::Set, help = "Compress responses (gzip, br, zstd) when the client accepts it.")]
    pub http_compression: bool,
    #[arg(long = "http-access-log", env = "SWAPSTREAM_HTTP_ACCESS_LOG", default_value = "true", value_parser = flag, action = ArgAction::Set, help = "One log line per request: method, path, status, duration, request id.")]
    pub http_access_log: bool,
    #[arg(long = "http-cache-ms", env = "SWAPSTREAM_HTTP_CACHE_MS", default_value = "250", value_parser = int(0, 60_000), help = "How long a computed stats answer is reused for the same token or pair (0 to 60000; 0 computes every request).")]
    pub http_cache_ms: u64,
    #[arg(
        long = "api-keys",
        env = "SWAPSTREAM_API_KEYS",
        hide_env_values = true,
        help = "API keys, comma-separated. When this or `SWAPSTREAM_API_KEYS_FILE` gives any key, `/v1` needs `Authorization: Bearer <key>` or `X-API-Key: <key>` (WebSocket also `?api_key=`); health and metrics stay open. Secret. [default: (empty)]"
    )]
    pub api_keys: Option<String>,
    #[arg(
        long = "api-keys-file",
        env = "SWAPSTREAM_API_KEYS_FILE",
        help = "File of API keys, one a line, `#` starts a comment; read at start. [default: (empty)]"
    )]
    pub api_keys_file: Option<PathBuf>,
    #[arg(long = "cors-origins", env = "SWAPSTREAM_CORS_ORIGINS", value_parser = cors_origins, help = "Origins allowed to call the API from a browser, comma-separated (`https://app.example.com`), or `*` (refused while API keys are set). A request with any other `Origin` than these or its own gets 403. [default: (empty)]")]
    pub cors_origins: Option<CorsOrigins>,
    #[arg(long = "rate-limit-per-sec", env = "SWAPSTREAM_RATE_LIMIT_PER_SEC", default_value = "100", value_parser = int(0, 1_000_000), help = "Requests per second per API key (per client IP when anonymous) on `/v1`; 0 turns rate limiting off.")]
    pub rate_limit_per_sec: u64,
    #[arg(long = "rate-limit-burst", env = "SWAPSTREAM_RATE_LIMIT_BURST", default_value = "200", value_parser = int(1, 1_000_000), help = "Requests a client may make at once before the rate applies (1 to 1000000).")]
    pub rate_limit_burst: u64,
    #[arg(long = "trusted-proxies", env = "SWAPSTREAM_TRUSTED_PROXIES", value_parser = networks, help = "Networks of the proxies in front of the service (ingress, load balancer), comma-separated CIDR or addresses (`10.0.0.0/8,fd00::/8`). From a peer in them, the client's address is read from `Forwarded` or `X-Forwarded-For` (the nearest hop that is not a trusted proxy); from any other peer those headers are ignored. Per-IP limits (rate limit, WebSocket connections) and logs use that address. [default: (empty)]")]
    pub trusted_proxies: Option<std::vec::Vec<ipnet::IpNet>>,
    #[arg(long = "rate-limit-store", env = "SWAPSTREAM_RATE_LIMIT_STORE", default_value = "local", value_parser = PossibleValuesParser::new(["local", "redis"]), help = "`local`: each process keeps its own buckets; `redis`: buckets live in Redis, so every replica shares one limit per client.")]
    pub rate_limit_store: String,
}

/// The WebSocket fan-out.
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "WebSocket")]
pub struct WsArgs {
    #[arg(long = "ws-queue-messages", env = "SWAPSTREAM_WS_QUEUE_MESSAGES", default_value = "64", value_parser = int(1, 100_000), help = "Mailbox of one WebSocket session actor, in messages from the session registry: only close requests go through it, channel frames wait in the connection's outbound queue (see `SWAPSTREAM_WS_QUEUE_BYTES`) (1 to 100000).")]
    pub ws_queue_messages: u64,
    #[arg(long = "ws-queue-bytes", env = "SWAPSTREAM_WS_QUEUE_BYTES", default_value = "1048576", value_parser = int(4096, 1 << 30), help = "Channel frames one WebSocket connection may have waiting in its outbound queue, in bytes; past this the queued frames of its busiest channels, largest first until at most half waits, are replaced by one `skipped` frame each (seq range, swap count, newest stats): a client that reads, but slowly, loses detail, not its connection (4096 to 1073741824).")]
    pub ws_queue_bytes: u64,
    #[arg(long = "ws-queue-total-bytes", env = "SWAPSTREAM_WS_QUEUE_TOTAL_BYTES", default_value = "268435456", value_parser = int(65_536, 1 << 40), help = "Bytes waiting for all WebSocket clients of a process: the queued frames, each counted once however many clients it waits for, and what each connection handed to the HTTP layer that it has not taken yet; past this the clients with the most waiting are disconnected as slow consumers until the rest fits, so clients that lag together cannot take the process' memory (65536 to 1099511627776).")]
    pub ws_queue_total_bytes: u64,
    #[arg(long = "ws-write-deadline-ms", env = "SWAPSTREAM_WS_WRITE_DEADLINE_MS", default_value = "3000", value_parser = int(100, 60_000), help = "Longest time bytes may wait for a WebSocket client without any of them being written before the client is disconnected as a slow consumer (100 to 60000).")]
    pub ws_write_deadline_ms: u64,
    #[arg(long = "ws-send-buffer-bytes", env = "SWAPSTREAM_WS_SEND_BUFFER_BYTES", default_value = "65536", value_parser = int(0, 1 << 30), help = "Kernel send buffer of each accepted HTTP connection (`SO_SNDBUF`), so a client that stops reading is noticed after this much rather than the kernel's autotuned megabytes; 0 keeps the kernel's default.")]
    pub ws_send_buffer_bytes: u64,
    #[arg(long = "ws-stats-interval-ms", env = "SWAPSTREAM_WS_STATS_INTERVAL_MS", default_value = "1000", value_parser = int(50, 600_000), help = "Shortest interval between two `stats` frames of one channel (50 to 600000).")]
    pub ws_stats_interval_ms: u64,
    #[arg(long = "ws-handoffs-per-sec", env = "SWAPSTREAM_WS_HANDOFFS_PER_SEC", default_value = "150000", value_parser = int(1, 100_000_000), help = "Handoffs of new frames to sessions (a wake-up and a socket write each) per second the fan-out spends before frames gather: below it every update goes out at once; past it a channel's new frames wait until the budget covers their handoffs, at most `SWAPSTREAM_WS_COALESCE_MAX_MS`, so that each handoff carries more frames (1 to 100000000).")]
    pub ws_handoffs_per_sec: u64,
    #[arg(long = "ws-coalesce-max-ms", env = "SWAPSTREAM_WS_COALESCE_MAX_MS", default_value = "25", value_parser = int(0, 1_000), help = "Longest time new frames gather while the handoff budget is spent; 0 sends every update at once (0 to 1000).")]
    pub ws_coalesce_max_ms: u64,
    #[arg(long = "ws-ping-interval-ms", env = "SWAPSTREAM_WS_PING_INTERVAL_MS", default_value = "10000", value_parser = int(100, 600_000), help = "Interval of the server's WebSocket pings (100 to 600000).")]
    pub ws_ping_interval_ms: u64,
    #[arg(long = "ws-ping-timeout-ms", env = "SWAPSTREAM_WS_PING_TIMEOUT_MS", default_value = "30000", value_parser = int(200, 3_600_000), help = "A WebSocket peer that sends nothing (no pong, no message) for this long is disconnected; more than the ping interval (200 to 3600000).")]
    pub ws_ping_timeout_ms: u64,
    #[arg(long = "ws-max-channels", env = "SWAPSTREAM_WS_MAX_CHANNELS", default_value = "50", value_parser = int(1, 10_000), help = "Most channels one WebSocket connection may subscribe to (1 to 10000).")]
    pub ws_max_channels: u64,
    #[arg(long = "ws-max-frame-bytes", env = "SWAPSTREAM_WS_MAX_FRAME_BYTES", default_value = "16384", value_parser = int(128, 16 << 20), help = "Largest inbound WebSocket message; larger ones are answered with an error frame, and ones over 4 times this close the connection with 1009 (128 to 16777216).")]
    pub ws_max_frame_bytes: u64,
    #[arg(long = "ws-max-conns-per-ip", env = "SWAPSTREAM_WS_MAX_CONNS_PER_IP", default_value = "100", value_parser = int(1, 1_000_000), help = "Most WebSocket connections from one IP address; more are refused with 429 (1 to 1000000).")]
    pub ws_max_conns_per_ip: u64,
    #[arg(long = "ws-max-bad-frames", env = "SWAPSTREAM_WS_MAX_BAD_FRAMES", default_value = "10", value_parser = int(1, 1_000_000), help = "Bad frames (unknown op, bad channel, invalid JSON, binary, too large, too many channels) a connection may send before it is closed with 1008 (1 to 1000000).")]
    pub ws_max_bad_frames: u64,
    #[arg(long = "ws-dedup-window", env = "SWAPSTREAM_WS_DEDUP_WINDOW", default_value = "4096", value_parser = int(16, 1_000_000), help = "Swap states (id and status) remembered per channel so that no client gets one twice (16 to 1000000).")]
    pub ws_dedup_window: u64,
    #[arg(long = "ws-presence-heartbeat-secs", env = "SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", default_value = "5", value_parser = int(1, 3_600), help = "Interval at which an instance writes its WebSocket session and subscriber counts to Redis (1 to 3600).")]
    pub ws_presence_heartbeat_secs: u64,
    #[arg(long = "ws-presence-ttl-secs", env = "SWAPSTREAM_WS_PRESENCE_TTL_SECS", default_value = "15", value_parser = int(2, 86_400), help = "Lifetime of those counts in Redis without a heartbeat, after which a dead instance's counts vanish; more than the heartbeat (2 to 86400).")]
    pub ws_presence_ttl_secs: u64,
}

/// The synthetic producer (`producer`, `all`).
#[derive(clap::Args, Clone)]
#[command(next_help_heading = "Producer")]
pub struct ProducerArgs {
    #[arg(long = "rate", env = "SWAPSTREAM_PRODUCER_RATE", default_value = "1000", value_parser = rate, help = "Events per minute the producer sends, or `max` for as fast as the broker takes them.")]
    pub rate: Rate,
    #[arg(
        long = "tokens",
        env = "SWAPSTREAM_PRODUCER_TOKENS",
        default_value = "ETH,BTC,SOL,USDC,USDT,TON",
        help = "Token universe of the producer, at least two symbols."
    )]
    pub tokens: String,
    #[arg(long = "encoding", env = "SWAPSTREAM_PRODUCER_ENCODING", default_value = "protobuf", value_parser = PossibleValuesParser::new(["protobuf", "json"]), help = "`protobuf` or `json`.")]
    pub encoding: String,
    #[arg(long = "confirm-delay-ms", env = "SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", default_value = "3000", value_parser = int(0, 3_600_000), help = "Time from a swap's `pending` event to its `confirmed`/`failed` event.")]
    pub confirm_delay_ms: u64,
    #[arg(long = "failed-share", env = "SWAPSTREAM_PRODUCER_FAILED_SHARE", default_value = "0.05", value_parser = share, help = "Share of swaps that end `failed` (0 to 1).")]
    pub failed_share: f64,
    #[arg(long = "duplicate-share", env = "SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", default_value = "0", value_parser = share, help = "Share of events sent twice, exactly (0 to 1).")]
    pub duplicate_share: f64,
    #[arg(long = "reorder-share", env = "SWAPSTREAM_PRODUCER_REORDER_SHARE", default_value = "0", value_parser = share, help = "Share of events held back and sent later than their event time (0 to 1).")]
    pub reorder_share: f64,
    #[arg(long = "reorder-max-ms", env = "SWAPSTREAM_PRODUCER_REORDER_MAX_MS", default_value = "10000", value_parser = int(0, 3_600_000), help = "Longest hold-back of a reordered event.")]
    pub reorder_max_ms: u64,
    #[arg(long = "seed", env = "SWAPSTREAM_PRODUCER_SEED", value_parser = int(0, u64::MAX), help = "Seed of the random generator, for reproducible streams. [default: (random)]")]
    pub seed: Option<u64>,
    #[arg(long = "count", env = "SWAPSTREAM_PRODUCER_COUNT", default_value = "0", value_parser = int(0, u64::MAX), help = "Stop after this many swaps (each one's every event sent); 0 runs until stopped.")]
    pub count: u64,
    #[arg(
        long = "ground-truth",
        env = "SWAPSTREAM_PRODUCER_GROUND_TRUTH",
        help = "Write what was sent and the aggregates a correct consumer must reach to this JSON file at the end. [default: (empty)]"
    )]
    pub ground_truth: Option<PathBuf>,
    #[arg(long = "progress-secs", env = "SWAPSTREAM_PRODUCER_PROGRESS_SECS", default_value = "10", value_parser = int(1, 86_400), help = "Interval of the producer's progress line.")]
    pub progress_secs: u64,
    #[arg(
        long,
        help = "Encode events as JSON, whatever SWAPSTREAM_PRODUCER_ENCODING says (the same as --encoding json)."
    )]
    pub json: bool,
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
    pub fn topic_for(&self, token: impl AsRef<str>) -> String {
        match self {
            TopicLayout::PerToken { prefix } => format!("{prefix}{}", token.as_ref()),
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

/// How the process logs, as text: `telemetry` parses the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logging {
    /// `SWAPSTREAM_LOG_LEVEL`: `LEVEL[,MODULE=LEVEL...]`.
    pub level: String,
    /// `SWAPSTREAM_LOG_FORMAT`: `auto`, `json` or `text`.
    pub format: String,
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
    pub addr: SocketAddr,
    pub workers: usize,
    pub health_addr: Option<SocketAddr>,
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
    pub cert: PathBuf,
    pub key: PathBuf,
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

/// The producer's settings. The token symbols and the encoding stay text
/// here; the producer reads them as the domain's and the codec's types.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub rate: Rate,
    /// Symbols as given (trimmed), in order.
    pub tokens: Vec<String>,
    /// `protobuf` or `json`.
    pub encoding: String,
    pub confirm_delay: Duration,
    pub failed_share: f64,
    pub duplicate_share: f64,
    pub reorder_share: f64,
    pub reorder_max: Duration,
    pub seed: Option<u64>,
    pub count: Option<u64>,
    pub ground_truth: Option<PathBuf>,
    pub progress_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub log: Logging,
    pub instance_id: String,
    pub kafka: KafkaSettings,
    pub postgres: PostgresSettings,
    pub redis: RedisSettings,
    pub consumer: ConsumerSettings,
    pub http: HttpSettings,
    pub ws: WsSettings,
    pub producer: ProducerSettings,
    /// Every variable's effective value as text, secrets redacted.
    pub effective: BTreeMap<String, String>,
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

/// The definition as a command of its own (what `from_vars` parses and the
/// documentation is read from).
pub fn command() -> Command {
    SettingsArgs::augment_args(Command::new("swapstream"))
}

/// Every variable of the definition, in its order.
pub fn variables() -> Vec<Variable> {
    let command = command();
    command
        .get_arguments()
        .filter_map(|arg| {
            let name = arg.get_env()?.to_str()?.to_owned();
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = arg.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
            let (help, default) = match (default, help.strip_suffix(']').and_then(|h| h.rsplit_once(" [default: "))) {
                (Some(default), _) => (help, default),
                (None, Some((help, placeholder))) => (help.to_owned(), placeholder.to_owned()),
                (None, None) => (help, "(empty)".to_owned()),
            };
            Some(Variable { name, flag: arg.get_long()?.to_owned(), default, help })
        })
        .collect()
}

/// The command with every argument whose variable is set but blank read as
/// if the variable were unset (the documented default applies), as before
/// flags existed: `SWAPSTREAM_HTTP_HEALTH_ADDR=` means none.
pub fn blank_variables_unset(command: Command) -> Command {
    let blank = |arg: &clap::Arg| {
        arg.get_env().and_then(std::env::var_os).is_some_and(|v| v.to_string_lossy().trim().is_empty())
    };
    let subcommands: Vec<String> = command.get_subcommands().map(|c| c.get_name().to_owned()).collect();
    let command = command.mut_args(|arg| if blank(&arg) { arg.env(None) } else { arg });
    subcommands.iter().fold(command, |command, name| {
        command.mut_subcommand(name, |sub| sub.mut_args(|arg| if blank(&arg) { arg.env(None) } else { arg }))
    })
}

/// `SWAPSTREAM_*` names among `names` that the definition does not know
/// (most likely typos), as problems.
pub fn unknown_variables<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let known: Vec<String> = variables().into_iter().map(|v| v.name).collect();
    names
        .into_iter()
        .filter(|name| name.starts_with("SWAPSTREAM_") && !known.iter().any(|k| k == name))
        .map(|name| format!("{name}: unknown variable (see the configuration table in README.md)"))
        .collect()
}

/// A parse error as one line naming the variable, what was expected and
/// what was given; other clap errors (usage, help) as clap renders them.
pub fn explain(error: &clap::Error) -> Option<String> {
    if !matches!(error.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) {
        return None;
    }
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else { return None };
    let flag = arg.trim_start_matches('-').split([' ', '=', '<']).next().unwrap_or_default();
    let variable = variables().into_iter().find(|v| v.flag == flag)?;
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => value.clone(),
        _ => String::new(),
    };
    let expected = match (error.get(ContextKind::ValidValue), std::error::Error::source(error)) {
        (Some(ContextValue::Strings(valid)), _) => format!("expected one of {}", valid.join(", ")),
        (_, Some(why)) => why.to_string(),
        _ => "expected a valid value".to_owned(),
    };
    Some(format!("{}: {expected}, got {value:?}", variable.name))
}

impl Settings {
    /// Reads the given variables, as the process would from its
    /// environment (for tests and tools: nothing is read from this
    /// process' own environment). Unrelated variables are ignored, unknown
    /// `SWAPSTREAM_*` ones are problems (most likely typos), blank ones
    /// are unset.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("SWAPSTREAM_")).collect();
        let flags: HashMap<String, String> = variables().into_iter().map(|v| (v.name, v.flag)).collect();
        let mut problems = unknown_variables(vars.keys().map(String::as_str));
        let mut argv = vec!["swapstream".to_owned()];
        for (name, value) in &vars {
            if let (Some(flag), value) = (flags.get(name), value.trim()) {
                if !value.is_empty() {
                    argv.push(format!("--{flag}={value}"));
                }
            }
        }
        let parsed = command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(argv)
            .and_then(|matches| Ok((SettingsArgs::from_arg_matches(&matches)?, matches)));
        let settings = match parsed {
            Ok((args, matches)) => Settings::from_args(args, &matches),
            Err(e) => Err(ConfigError(vec![explain(&e).unwrap_or_else(|| e.to_string().trim().to_owned())])),
        };
        match settings {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(ConfigError(problems)),
            Err(ConfigError(more)) => {
                problems.extend(more);
                problems.sort();
                Err(ConfigError(problems))
            }
        }
    }

    /// Builds each component's settings from the parsed arguments and
    /// checks what no value alone can say; `matches` (the same parse) gives
    /// the effective values as text. Every problem is reported, one line each.
    pub fn from_args(args: SettingsArgs, matches: &ArgMatches) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let SettingsArgs { log, kafka, postgres, redis, consumer, http, ws, producer } = args;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

        let explicit_instance_id = log.instance_id.filter(|id| !id.trim().is_empty());
        let instance_id = explicit_instance_id.clone().unwrap_or_else(default_instance_id);
        let static_membership = match kafka.kafka_static_membership.as_str() {
            "auto" => explicit_instance_id.is_some(),
            other => other == "true",
        };
        let topics = if kafka.kafka_topic_mode == "single" {
            TopicLayout::Single { topic: kafka.kafka_topic }
        } else {
            TopicLayout::PerToken { prefix: kafka.kafka_topic_prefix }
        };
        let options = kafka
            .kafka_options
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map_or_else(|| Some(Vec::new()), parse_options);
        if options.is_none() {
            // The value may hold a secret: name the problem, not the value.
            problems.push("SWAPSTREAM_KAFKA_OPTIONS: expected key=value[,key=value...]".to_owned());
        }
        let kafka = KafkaSettings {
            brokers: kafka.kafka_brokers.filter(|b| !b.trim().is_empty()),
            topics,
            partitions: kafka.kafka_partitions as i32,
            replication: kafka.kafka_replication as i32,
            group_id: kafka.kafka_group_id,
            group_instance_id: static_membership.then(|| instance_id.clone()),
            session_timeout: Duration::from_millis(kafka.kafka_session_timeout_ms),
            dlq_topic: kafka.kafka_dlq_topic,
            options: Secret(options.unwrap_or_default()),
        };
        let dlq_is_input = match &kafka.topics {
            TopicLayout::PerToken { prefix } => kafka.dlq_topic.starts_with(prefix.as_str()),
            TopicLayout::Single { topic } => kafka.dlq_topic == *topic,
        };
        if dlq_is_input {
            problems.push(format!(
                "SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics ({:?}), or dead letters would be read back as input",
                kafka.dlq_topic
            ));
        }

        if let Err(e) = postgres.postgres_url.parse::<tokio_postgres::Config>() {
            problems.push(format!(
                "SWAPSTREAM_POSTGRES_URL: expected a PostgreSQL URL ({e}), got {:?}",
                redact_url(&postgres.postgres_url)
            ));
        }
        let postgres = PostgresSettings {
            url: Secret(postgres.postgres_url),
            password: secret(postgres.postgres_password),
            schema: postgres.postgres_schema,
            pool_size: postgres.postgres_pool_size as usize,
        };

        let mode = if redis.redis_mode == "cluster" { RedisMode::Cluster } else { RedisMode::Single };
        let urls: Vec<String> = redis.redis_url.split(',').map(|u| u.trim().to_owned()).collect();
        if let Some(bad) = urls.iter().find(|u| redis::parse_redis_url(u).is_none()) {
            problems
                .push(format!("SWAPSTREAM_REDIS_URL: expected redis://host:port URL(s), got {:?}", redact_url(bad)));
        } else if mode == RedisMode::Single && urls.len() > 1 {
            problems.push(format!("SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"{}\"", urls.len()));
        }
        let redis = RedisSettings {
            urls: Secret(urls),
            mode,
            password: secret(redis.redis_password),
            key_prefix: redis.redis_key_prefix,
        };

        let consumer = ConsumerSettings {
            batch_max_events: consumer.batch_max_events as usize,
            batch_max_time: Duration::from_millis(consumer.batch_max_ms),
            checkpoint_interval: Duration::from_millis(consumer.checkpoint_interval_ms),
            lateness: Duration::from_secs(consumer.lateness_secs),
            max_future: Duration::from_secs(consumer.max_future_secs),
            shutdown_timeout: Duration::from_secs(consumer.shutdown_timeout_secs),
            recent_swaps: consumer.recent_swaps as usize,
            aggregator_threads: consumer.aggregator_threads.filter(|&n| n > 0).map_or(cores, |n| n as usize),
        };

        let http = http_settings(http, cores, &mut problems);

        let ws = WsSettings {
            queue_messages: ws.ws_queue_messages as usize,
            queue_bytes: ws.ws_queue_bytes as usize,
            queue_total_bytes: ws.ws_queue_total_bytes,
            write_deadline: Duration::from_millis(ws.ws_write_deadline_ms),
            send_buffer_bytes: ws.ws_send_buffer_bytes as usize,
            stats_interval: Duration::from_millis(ws.ws_stats_interval_ms),
            handoffs_per_sec: ws.ws_handoffs_per_sec,
            coalesce_max: Duration::from_millis(ws.ws_coalesce_max_ms),
            ping_interval: Duration::from_millis(ws.ws_ping_interval_ms),
            ping_timeout: Duration::from_millis(ws.ws_ping_timeout_ms),
            max_channels: ws.ws_max_channels as usize,
            max_frame_bytes: ws.ws_max_frame_bytes as usize,
            max_conns_per_ip: ws.ws_max_conns_per_ip as usize,
            max_bad_frames: ws.ws_max_bad_frames as u32,
            dedup_window: ws.ws_dedup_window as usize,
            presence_heartbeat: Duration::from_secs(ws.ws_presence_heartbeat_secs),
            presence_ttl: Duration::from_secs(ws.ws_presence_ttl_secs),
        };
        if ws.ping_timeout <= ws.ping_interval {
            problems.push("SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS".into());
        }
        if ws.presence_ttl <= ws.presence_heartbeat {
            problems.push(
                "SWAPSTREAM_WS_PRESENCE_TTL_SECS: must be more than SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS".into(),
            );
        }

        let producer = ProducerSettings {
            rate: producer.rate,
            tokens: producer.tokens.split(',').map(|t| t.trim().to_owned()).collect(),
            encoding: if producer.json { "json".to_owned() } else { producer.encoding },
            confirm_delay: Duration::from_millis(producer.confirm_delay_ms),
            failed_share: producer.failed_share,
            duplicate_share: producer.duplicate_share,
            reorder_share: producer.reorder_share,
            reorder_max: Duration::from_millis(producer.reorder_max_ms),
            seed: producer.seed,
            count: Some(producer.count).filter(|&n| n > 0),
            ground_truth: producer.ground_truth.filter(|p| !p.as_os_str().is_empty()),
            progress_interval: Duration::from_secs(producer.progress_secs),
        };

        if !problems.is_empty() {
            problems.sort();
            return Err(ConfigError(problems));
        }
        let log = Logging { level: log.log_level, format: log.log_format };
        let mut effective = effective(matches);
        effective.insert("SWAPSTREAM_INSTANCE_ID".into(), instance_id.clone());
        effective.insert("SWAPSTREAM_AGGREGATOR_THREADS".into(), consumer.aggregator_threads.to_string());
        effective.insert("SWAPSTREAM_HTTP_WORKERS".into(), http.workers.to_string());
        effective.insert("SWAPSTREAM_PRODUCER_ENCODING".into(), producer.encoding.clone());
        Ok(Settings { log, instance_id, kafka, postgres, redis, consumer, http, ws, producer, effective })
    }

    /// The effective configuration, one `NAME=value` line per variable,
    /// secrets redacted.
    pub fn describe(&self) -> String {
        self.effective.iter().map(|(name, value)| format!("{name}={value}\n")).collect()
    }
}

/// Every variable that has a value (given or default) as text: secrets
/// (their values hidden from `--help` too) redacted, URLs without password.
fn effective(matches: &ArgMatches) -> BTreeMap<String, String> {
    let command = command();
    let mut effective = BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env().and_then(|n| n.to_str()) else { continue };
        let Some(raw) = matches.try_get_raw(arg.get_id().as_str()).ok().flatten().and_then(|mut values| values.next())
        else {
            continue;
        };
        let text = raw.to_string_lossy().trim().to_owned();
        if text.is_empty() {
            continue;
        }
        let shown = if name.ends_with("_URL") {
            text.split(',').map(|u| redact_url(u.trim())).collect::<Vec<_>>().join(",")
        } else if arg.is_hide_env_values_set() {
            "<redacted>".to_owned()
        } else {
            text
        };
        effective.insert(name.to_owned(), shown);
    }
    effective
}

fn http_settings(http: HttpArgs, cores: usize, problems: &mut Vec<String>) -> HttpSettings {
    let tls = match (http.http_tls_cert, http.http_tls_key) {
        (Some(cert), Some(key)) => {
            for (name, path) in [("SWAPSTREAM_HTTP_TLS_CERT", &cert), ("SWAPSTREAM_HTTP_TLS_KEY", &key)] {
                if !path.is_file() {
                    problems
                        .push(format!("{name}: expected a readable PEM file, got {:?}", path.display().to_string()));
                }
            }
            Some(TlsFiles { cert, key })
        }
        (None, None) => None,
        (cert, _) => {
            let (missing, given) = if cert.is_some() {
                ("SWAPSTREAM_HTTP_TLS_KEY", "SWAPSTREAM_HTTP_TLS_CERT")
            } else {
                ("SWAPSTREAM_HTTP_TLS_CERT", "SWAPSTREAM_HTTP_TLS_KEY")
            };
            problems.push(format!("{missing}: required when {given} is set"));
            None
        }
    };

    let mut keys: Vec<String> = http
        .api_keys
        .map(|keys| keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(path) = &http.api_keys_file {
        match std::fs::read_to_string(path) {
            Ok(text) => keys.extend(
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or_default().trim())
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            ),
            Err(e) => {
                problems.push(format!("SWAPSTREAM_API_KEYS_FILE: cannot read {:?}: {e}", path.display().to_string()))
            }
        }
    }
    if keys.iter().any(|k| k.len() < 16) {
        problems.push("SWAPSTREAM_API_KEYS: every key needs at least 16 characters".into());
    }
    let cors = http.cors_origins.unwrap_or(CorsOrigins::List(Vec::new()));
    if cors == CorsOrigins::Any && !keys.is_empty() {
        problems.push("SWAPSTREAM_CORS_ORIGINS: `*` is refused while API keys are set; list the origins".into());
    }
    let rate_limit = (http.rate_limit_per_sec > 0).then_some(RateLimit {
        per_second: http.rate_limit_per_sec as u32,
        burst: http.rate_limit_burst as u32,
        shared: http.rate_limit_store == "redis",
    });

    HttpSettings {
        addr: http.http_addr,
        workers: http.http_workers.filter(|&n| n > 0).map_or(cores, |n| n as usize),
        health_addr: http.http_health_addr,
        tls,
        max_body_bytes: http.http_max_body_bytes as usize,
        compression: http.http_compression,
        access_log: http.http_access_log,
        cache: Duration::from_millis(http.http_cache_ms),
        api_keys: Secret(keys),
        cors,
        rate_limit,
        trusted_proxies: http.trusted_proxies.unwrap_or_default(),
    }
}

fn secret(value: Option<String>) -> Option<Secret<String>> {
    value.filter(|v| !v.trim().is_empty()).map(Secret)
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("swapstream-{}", std::process::id()))
}

// The value parsers: each says what it expected; `explain` adds the
// variable's name and the value given.

/// An integer from `min` to `max`.
fn int(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| {
        let expected = if max == u64::MAX {
            "expected a non-negative integer".to_owned()
        } else {
            format!("expected an integer from {min} to {max}")
        };
        text.trim().parse::<u64>().ok().filter(|n| (min..=max).contains(n)).ok_or(expected)
    }
}

fn flag(text: &str) -> Result<bool, String> {
    match text.trim() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn share(text: &str) -> Result<f64, String> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or_else(|| "expected a share from 0 to 1".into())
}

fn rate(text: &str) -> Result<Rate, String> {
    let text = text.trim();
    if text == "max" {
        return Ok(Rate::Max);
    }
    text.parse::<f64>()
        .ok()
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(Rate::PerMinute)
        .ok_or_else(|| "expected a positive number of events per minute, or \"max\"".into())
}

fn address(text: &str) -> Result<SocketAddr, String> {
    text.trim().parse().map_err(|_| "expected an address like 0.0.0.0:8080".into())
}

fn brokers(text: &str) -> Result<String, String> {
    let valid = text.split(',').all(|b| is_host_port(b.trim()));
    (valid || text.trim().is_empty())
        .then(|| text.trim().to_owned())
        .ok_or_else(|| "expected host:port[,host:port...]".into())
}

fn topic_prefix(text: &str) -> Result<String, String> {
    valid_topic(text).then(|| text.to_owned()).ok_or_else(|| "expected a topic name prefix of [A-Za-z0-9._-]".into())
}

fn topic_name(text: &str) -> Result<String, String> {
    valid_topic(text)
        .then(|| text.to_owned())
        .ok_or_else(|| "expected a topic name of 1 to 249 characters [A-Za-z0-9._-]".into())
}

fn group_id(text: &str) -> Result<String, String> {
    (!text.trim().is_empty()).then(|| text.to_owned()).ok_or_else(|| "expected a non-empty group id".into())
}

fn sql_identifier(text: &str) -> Result<String, String> {
    valid_identifier(text)
        .then(|| text.to_owned())
        .ok_or_else(|| "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)".into())
}

fn key_prefix(text: &str) -> Result<String, String> {
    (!text.is_empty() && text.len() <= 64 && !text.contains([' ', '{', '}', ':']))
        .then(|| text.to_owned())
        .ok_or_else(|| "expected 1 to 64 characters without spaces, braces or ':'".into())
}

fn cors_origins(text: &str) -> Result<CorsOrigins, String> {
    let text = text.trim();
    if text == "*" {
        return Ok(CorsOrigins::Any);
    }
    let origins: Vec<String> =
        text.split(',').map(|o| o.trim().trim_end_matches('/').to_owned()).filter(|o| !o.is_empty()).collect();
    let valid = |o: &String| {
        o.split_once("://")
            .is_some_and(|(scheme, host)| matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/'))
    };
    origins
        .iter()
        .all(valid)
        .then_some(CorsOrigins::List(origins))
        .ok_or_else(|| "expected `*` or origins like https://app.example.com".into())
}

fn networks(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<ipnet::IpNet>().or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from)).ok())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "expected networks like 10.0.0.0/8 or addresses, comma-separated".into())
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
        assert_eq!(s.producer.tokens, ["ETH", "BTC", "SOL", "USDC", "USDT", "TON"]);
        assert_eq!(s.producer.encoding, "protobuf");
        assert_eq!(s.producer.count, None);
        assert_eq!(s.postgres.schema, "swapstream");
        assert_eq!(s.redis.mode, RedisMode::Single);
        assert_eq!(s.log, Logging { level: "info".into(), format: "auto".into() });
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
    fn every_bad_value_is_named_with_what_was_expected() {
        for (name, value, expected) in [
            ("SWAPSTREAM_HTTP_ADDR", "everywhere", "expected an address like 0.0.0.0:8080"),
            ("SWAPSTREAM_KAFKA_BROKERS", "localhost", "expected host:port[,host:port...]"),
            ("SWAPSTREAM_KAFKA_PARTITIONS", "0", "expected an integer from 1 to 10000"),
            ("SWAPSTREAM_KAFKA_TOPIC_MODE", "many", "expected one of per_token, single"),
            ("SWAPSTREAM_LOG_FORMAT", "xml", "expected one of auto, json, text"),
            (
                "SWAPSTREAM_POSTGRES_SCHEMA",
                "Robert'); DROP TABLE",
                "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)",
            ),
            ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "1.5", "expected a share from 0 to 1"),
            ("SWAPSTREAM_HTTP_COMPRESSION", "maybe", "expected true or false"),
            (
                "SWAPSTREAM_TRUSTED_PROXIES",
                "10.0.0.0/33",
                "expected networks like 10.0.0.0/8 or addresses, comma-separated",
            ),
            ("SWAPSTREAM_CORS_ORIGINS", "app.example.com", "expected `*` or origins like https://app.example.com"),
        ] {
            assert_eq!(problems(&[(name, value)]), [format!("{name}: {expected}, got {value:?}")]);
        }
    }

    #[test]
    fn problems_between_settings_are_reported_at_once() {
        let found = problems(&[
            ("SWAPSTREAM_WS_PING_INTERVAL_MS", "5000"),
            ("SWAPSTREAM_WS_PING_TIMEOUT_MS", "5000"),
            ("SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "20"),
            ("SWAPSTREAM_HTTP_TLS_CERT", "/nonexistent/cert.pem"),
            ("SWAPSTREAM_API_KEYS", "0123456789abcdef"),
            ("SWAPSTREAM_CORS_ORIGINS", "*"),
            ("SWAPSTREAM_KAFKA_DLQ_TOPIC", "swaps.dead"),
            ("SWAPSTREAM_REDIS_URL", "redis://a:1,redis://b:2"),
            ("SWAPSTREAM_PRODUCER_RAET", "5"),
        ]);
        assert_eq!(
            found,
            [
                "SWAPSTREAM_CORS_ORIGINS: `*` is refused while API keys are set; list the origins",
                "SWAPSTREAM_HTTP_TLS_KEY: required when SWAPSTREAM_HTTP_TLS_CERT is set",
                "SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics (\"swaps.dead\"), or dead letters would be read back as input",
                "SWAPSTREAM_PRODUCER_RAET: unknown variable (see the configuration table in README.md)",
                "SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"2\"",
                "SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS",
                "SWAPSTREAM_WS_PRESENCE_TTL_SECS: must be more than SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS",
            ]
        );
        assert_eq!(
            problems(&[("SWAPSTREAM_API_KEYS", "short")]),
            ["SWAPSTREAM_API_KEYS: every key needs at least 16 characters"]
        );
    }

    #[test]
    fn unknown_swapstream_variables_are_refused_and_others_ignored() {
        let found = problems(&[("SWAPSTREAM_PRODUCER_RAET", "5"), ("PATH", "/bin")]);
        assert_eq!(found, ["SWAPSTREAM_PRODUCER_RAET: unknown variable (see the configuration table in README.md)"]);
        let found = problems(&[("SWAPSTREAM_PRODUCER_RAET", "5"), ("SWAPSTREAM_KAFKA_PARTITIONS", "0")]);
        assert_eq!(found.len(), 2, "{found:?}");
    }

    #[test]
    fn blank_variables_are_unset() {
        let s = settings(&[("SWAPSTREAM_HTTP_HEALTH_ADDR", " "), ("SWAPSTREAM_KAFKA_PARTITIONS", "")]).unwrap();
        assert_eq!(s.http.health_addr, None);
        assert_eq!(s.kafka.partitions, 4);
    }

    #[test]
    fn the_producer_flags_are_arguments_of_their_variables() {
        let flags: HashMap<String, String> = variables().into_iter().map(|v| (v.flag, v.name)).collect();
        for (flag, name) in [
            ("count", "SWAPSTREAM_PRODUCER_COUNT"),
            ("rate", "SWAPSTREAM_PRODUCER_RATE"),
            ("ground-truth", "SWAPSTREAM_PRODUCER_GROUND_TRUTH"),
            ("encoding", "SWAPSTREAM_PRODUCER_ENCODING"),
        ] {
            assert_eq!(flags.get(flag).map(String::as_str), Some(name), "--{flag}");
        }
        let matches = command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(["swapstream", "--count", "7", "--json", "--rate", "max", "--ground-truth", "t.json"])
            .unwrap();
        let args = SettingsArgs::from_arg_matches(&matches).unwrap();
        let s = Settings::from_args(args, &matches).unwrap();
        assert_eq!((s.producer.count, s.producer.rate, s.producer.encoding.as_str()), (Some(7), Rate::Max, "json"));
        assert_eq!(s.producer.ground_truth, Some(PathBuf::from("t.json")));
        assert_eq!(s.effective["SWAPSTREAM_PRODUCER_COUNT"], "7");
        assert_eq!(s.effective["SWAPSTREAM_PRODUCER_ENCODING"], "json");
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
    fn secret_values_are_hidden_from_help() {
        for name in [
            "SWAPSTREAM_KAFKA_OPTIONS",
            "SWAPSTREAM_POSTGRES_PASSWORD",
            "SWAPSTREAM_REDIS_PASSWORD",
            "SWAPSTREAM_API_KEYS",
        ] {
            let command = command();
            let arg = command.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name)).unwrap();
            assert!(arg.is_hide_env_values_set(), "{name}");
        }
    }

    #[test]
    fn bad_secret_values_are_not_echoed() {
        let found = problems(&[("SWAPSTREAM_KAFKA_OPTIONS", "hunter5")]);
        assert_eq!(found, ["SWAPSTREAM_KAFKA_OPTIONS: expected key=value[,key=value...]"]);
        let found = problems(&[("SWAPSTREAM_POSTGRES_URL", "postgres://app:hunter6@db:notaport/x")]);
        assert!(found.len() == 1 && !found[0].contains("hunter6"), "{found:?}");
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
        assert_eq!(s.kafka.topics.topic_for("ETH"), "all-swaps");
        assert_eq!(settings(&[]).unwrap().kafka.topics.topic_for("ETH"), "swaps.ETH");
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
    fn every_variable_has_a_flag_and_help_and_is_described_with_its_default() {
        let s = settings(&[]).unwrap();
        let variables = variables();
        assert_eq!(variables.len(), 75, "every SWAPSTREAM_* variable is an argument");
        for variable in &variables {
            assert!(variable.name.starts_with("SWAPSTREAM_"), "{variable:?}");
            assert!(!variable.help.is_empty() && !variable.flag.is_empty(), "{variable:?}");
            let optional = variable.default.starts_with('(');
            assert!(
                optional || s.effective.get(&variable.name) == Some(&variable.default),
                "{} missing",
                variable.name
            );
        }
    }

    #[test]
    fn the_readme_documents_exactly_the_variables_of_the_definition() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let variables = variables();
        for variable in &variables {
            let row = format!("| `{}` | `{}` | {} |", variable.name, variable.default, variable.help);
            assert!(readme.lines().any(|line| line == row), "README.md lacks the row for {}: {row}", variable.name);
        }
        let rows: Vec<&str> = readme.lines().filter(|line| line.starts_with("| `SWAPSTREAM_")).collect();
        let in_table = rows.iter().filter(|row| row.matches(" | ").count() == 2 && row.contains("` | `"));
        for row in in_table {
            let name = row.trim_start_matches("| `").split('`').next().unwrap_or_default();
            assert!(variables.iter().any(|v| v.name == name), "README.md documents {name}, which the definition lacks");
        }
    }
}
