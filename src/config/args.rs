//! The definition: every setting as a clap argument with its variable,
//! long flag, default, range and meaning, in the groups each role flattens.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::ArgAction;

use super::settings::{CorsOrigins, Rate};
use super::values::*;

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
    #[arg(
        long = "redis-read-urls",
        env = "SWAPSTREAM_REDIS_READ_URLS",
        hide_env_values = true,
        help = "Read replicas of the Redis in `single` mode, comma-separated URLs: REST and WebSocket snapshot reads go to them in turn (to the primary when one fails), writes and pub/sub to the primary. Reads lag by the replication delay. [default: (empty)]"
    )]
    pub redis_read_urls: Option<String>,
    #[arg(
        long = "redis-ws-url",
        env = "SWAPSTREAM_REDIS_WS_URL",
        hide_env_values = true,
        help = "A separate Redis (one server) for WebSocket client tracking: each instance's session and subscriber counts and the lock of their clean-up job; empty: the Redis of `SWAPSTREAM_REDIS_URL`. [default: (empty)]"
    )]
    pub redis_ws_url: Option<String>,
    #[arg(long = "redis-timeout-ms", env = "SWAPSTREAM_REDIS_TIMEOUT_MS", default_value = "2000", value_parser = int(100, 60_000), help = "Longest wait for a Redis answer, a reconnection included; then the command counts as failed: a live write is redone, a REST read answers 503 (or goes to the primary, from a replica). Writes of a batch over many keys queue behind each other on one connection, so this bounds the queue too (100 to 60000).")]
    pub redis_timeout_ms: u64,
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
    // At most a day: rolling windows reach that far ahead (`domain::window::MAX_FUTURE_SECS`).
    #[arg(long = "max-future-secs", env = "SWAPSTREAM_MAX_FUTURE_SECS", default_value = "300", value_parser = int(0, 86_400), help = "How far ahead of the clock an event time may be; later ones go to the dead-letter topic as `future_timestamp`.")]
    pub max_future_secs: u64,
    #[arg(long = "shutdown-timeout-secs", env = "SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", default_value = "20", value_parser = int(1, 3_600), help = "Longest graceful shutdown: finish and checkpoint the batch in flight, commit, leave the group.")]
    pub shutdown_timeout_secs: u64,
    #[arg(long = "recent-swaps", env = "SWAPSTREAM_RECENT_SWAPS", default_value = "100", value_parser = int(1, 1_000), help = "Recent confirmed swaps kept per token and pair (1 to 1000).")]
    pub recent_swaps: u64,
    #[arg(long = "swap-history-secs", env = "SWAPSTREAM_SWAP_HISTORY_SECS", default_value = "0", value_parser = int(0, 90 * 86_400), help = "How long PostgreSQL keeps every confirmed swap of each token and pair, by event time, for `/v1/tokens/{token}/swaps?before=` pages; 0 keeps only the recent ones (`SWAPSTREAM_RECENT_SWAPS`). Each swap is a row per token and pair it counts for, written at checkpoint (0 to 7776000).")]
    pub swap_history_secs: u64,
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
    #[arg(long = "http-cache-ms", env = "SWAPSTREAM_HTTP_CACHE_MS", default_value = "250", value_parser = int(0, 60_000), help = "How long a computed stats answer is reused for the same token or pair, and for as long again while one request computes its successor (0 to 60000; 0 computes every request).")]
    pub http_cache_ms: u64,
    #[arg(long = "rank-max-age-ms", env = "SWAPSTREAM_RANK_MAX_AGE_MS", default_value = "5000", value_parser = int(100, 3_600_000), help = "How old the ranking of a sorted list (`/v1/tokens?sort=`) may be before it is built again in the background from every token's (pair's) stats, or five times as long as its build took if that is longer; requests meanwhile use the old one (100 to 3600000).")]
    pub rank_max_age_ms: u64,
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
    #[arg(long = "ws-history-size", env = "SWAPSTREAM_WS_HISTORY_SIZE", default_value = "10000", value_parser = int(1, 10_000_000), help = "Swap frames kept per channel in Redis for clients that resume after a reconnect; the newest batch is kept whole even when larger (1 to 10000000).")]
    pub ws_history_size: u64,
    #[arg(long = "ws-history-secs", env = "SWAPSTREAM_WS_HISTORY_SECS", default_value = "600", value_parser = int(1, 86_400), help = "Age up to which a channel's swap frames are kept for resuming clients; a channel idle this long loses its history (1 to 86400).")]
    pub ws_history_secs: u64,
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
        help = "Token universe of the producer, at least two symbols, comma-separated; `T1..T100000` stands for T1, T2, ... T100000 (at most 1000000)."
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
