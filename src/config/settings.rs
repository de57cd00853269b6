//! What each component is given: one small settings struct per part,
//! built from the definition by `resolve`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

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

pub(super) fn regex_escape(text: &str) -> String {
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
    /// Read replicas for REST reads (single mode); empty: the primary.
    pub read_urls: Secret<Vec<String>>,
    /// The Redis for WebSocket client tracking; `None`: the main one.
    pub ws_url: Option<Secret<String>>,
    /// Longest wait for an answer.
    pub timeout: Duration,
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
    /// How long every confirmed swap is kept in PostgreSQL; zero: only the
    /// recent ones.
    pub swap_history: Duration,
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
    /// How old a sorted list's ranking may be.
    pub rank_max_age: Duration,
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
    pub history: WsHistory,
    /// The consumer's lateness bound: how far back candle channels watch
    /// for late swaps.
    pub lateness: Duration,
    pub presence_heartbeat: Duration,
    pub presence_ttl: Duration,
}

/// What each WebSocket channel keeps in Redis for clients that resume.
#[derive(Debug, Clone, Copy)]
pub struct WsHistory {
    /// Swap frames kept (the newest batch whole, however large).
    pub size: usize,
    /// Kept at most about this long; a channel idle this long loses them.
    pub max_age: Duration,
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
