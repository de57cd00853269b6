//! Prometheus metrics of the process, served as text at `/metrics`.
//!
//! Two registries are gathered together: ours, whose names all start with
//! `swapstream_`, and one holding only the standard process collector
//! (`process_open_fds`, `process_resident_memory_bytes`, ...), whose names
//! must stay unprefixed because dashboards and alerts everywhere expect them
//! so. [`catalog`] lists every metric either registry can export; a test keeps
//! the README's metric table equal to it.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

/// Prefix of every metric of our own registry.
const PREFIX: &str = "swapstream";

/// One metric as documented: full name, Prometheus type, label names, help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricInfo {
    pub name: String,
    pub kind: &'static str,
    pub labels: Vec<String>,
    pub help: String,
}

/// The Prometheus type of a metric handle.
trait Kind {
    const KIND: &'static str;
}

macro_rules! kind {
    ($($ty:ty => $kind:literal),* $(,)?) => { $(impl Kind for $ty { const KIND: &'static str = $kind; })* };
}

kind!(
    IntCounter => "counter", IntCounterVec => "counter", IntGauge => "gauge", IntGaugeVec => "gauge",
    Histogram => "histogram", HistogramVec => "histogram",
);

/// Records what is registered, so the list of metrics comes from the
/// registrations themselves and not from a second, hand-kept list.
#[derive(Default)]
struct Catalog(Vec<MetricInfo>);

impl Catalog {
    fn add<C: Collector + Kind>(&mut self, registered: prometheus::Result<C>) -> C {
        let metric = registered.expect("metric");
        for desc in metric.desc() {
            self.0.push(MetricInfo {
                name: format!("{PREFIX}_{}", desc.fq_name),
                kind: C::KIND,
                labels: desc.variable_labels.clone(),
                help: desc.help.clone(),
            });
        }
        metric
    }
}

pub struct Metrics {
    pub registry: Registry,
    /// The process collector alone, unprefixed (standard `process_*` names).
    pub process: Registry,
    catalog: Vec<MetricInfo>,
    pub build_info: IntGaugeVec,
    pub ready: IntGauge,
    pub events_consumed: IntCounterVec,
    pub events_decoded: IntCounter,
    pub outcomes: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub pending: IntGaugeVec,
    pub checkpoint_seconds: Histogram,
    pub read_delay: Histogram,
    pub live_write_seconds: Histogram,
    pub ws_fanout_seconds: Histogram,
    pub checkpoint_events: Histogram,
    pub checkpoint_failures: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub aggregator_restarts: IntCounter,
    pub offset_regressions: IntCounter,
    pub redis_errors: IntCounter,
    pub redis_rebuilds: IntCounter,
    pub redis_rewritten_keys: IntCounter,
    pub redis_replica_fallbacks: IntCounter,
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    pub http_rejected: IntCounterVec,
    pub rate_limit_fallbacks: IntCounter,
    pub rest_reads: IntCounterVec,
    pub ws_sessions: IntGauge,
    pub ws_frames_sent: IntCounterVec,
    pub ws_evictions: IntCounterVec,
    pub ws_bad_frames: IntCounterVec,
    pub ws_refused: IntCounterVec,
    pub ws_pubsub_resumed: IntCounter,
    pub ws_resumes: IntCounterVec,
    pub ws_pubsub_recovered: IntCounter,
    pub swap_feed_dropped: IntCounter,
    pub ws_gaps: IntCounter,
    pub ws_handoffs: IntCounter,
    pub ws_conflations: IntCounter,
    pub ws_conflated_frames: IntCounter,
    pub producer_recreated: IntCounter,
    pub live_writes_fenced: IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some(PREFIX.into()), None).expect("metric registry");
    let r = &registry;
    let mut c = Catalog::default();
    let metrics = Metrics {
        build_info: c.add(register_int_gauge_vec_with_registry!(
            "build_info",
            "Always 1; the labels tell the version and git commit the binary was built from",
            &["version", "commit"],
            r
        )),
        ready: c.add(register_int_gauge_with_registry!(
            "ready",
            "1 while the last readiness check (every 15 s and on each `/readyz`) found every dependency reachable, else 0",
            r
        )),
        events_consumed: c.add(register_int_counter_vec_with_registry!(
            "events_consumed_total",
            "Kafka messages read, by topic",
            &["topic"],
            r
        )),
        events_decoded: c.add(register_int_counter_with_registry!(
            "events_decoded_total",
            "Messages decoded into valid swap events",
            r
        )),
        outcomes: c.add(register_int_counter_vec_with_registry!(
            "events_outcome_total",
            "Valid events by what they meant: pending, confirmed, failed, duplicate, stale_pending, conflict",
            &["outcome"],
            r
        )),
        dead_lettered: c.add(register_int_counter_vec_with_registry!(
            "events_dead_lettered_total",
            "Messages sent to the dead-letter topic, by reason",
            &["reason"],
            r
        )),
        pending: c.add(register_int_gauge_vec_with_registry!(
            "pending_swaps",
            "Swaps seen pending and not yet confirmed or failed, in this instance's partitions, by token or pair",
            &["key"],
            r
        )),
        checkpoint_seconds: c.add(register_histogram_with_registry!(
            "checkpoint_duration_seconds",
            "Time of one checkpoint transaction",
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            r
        )),
        checkpoint_events: c.add(register_histogram_with_registry!(
            "checkpoint_batch_events",
            "Messages covered by one checkpoint",
            vec![1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0],
            r
        )),
        checkpoint_failures: c.add(register_int_counter_with_registry!(
            "checkpoint_failures_total",
            "Checkpoints that failed and were retried",
            r
        )),
        consumer_lag: c.add(register_int_gauge_vec_with_registry!(
            "consumer_lag",
            "Messages between the checkpoint and the partition's high watermark",
            &["topic", "partition"],
            r
        )),
        aggregator_restarts: c.add(register_int_counter_with_registry!(
            "aggregator_restarts_total",
            "Aggregator actors restarted by their supervisor",
            r
        )),
        offset_regressions: c.add(register_int_counter_with_registry!(
            "offset_regressions_total",
            "Messages skipped because their offset is below the partition's checkpoint (e.g. a recreated topic)",
            r
        )),
        redis_errors: c.add(register_int_counter_with_registry!("redis_errors_total", "Failed Redis writes", r)),
        redis_rebuilds: c.add(register_int_counter_with_registry!(
            "redis_rebuilds_total",
            "Rebuilds of the live state in Redis from this instance's partitions",
            r
        )),
        redis_rewritten_keys: c.add(register_int_counter_with_registry!(
            "redis_rewritten_keys_total",
            "Tokens and pairs written to Redis again in full because a live write of theirs failed",
            r
        )),
        redis_replica_fallbacks: c.add(register_int_counter_with_registry!(
            "redis_replica_fallbacks_total",
            "Reads a Redis read replica failed and the primary answered (or failed) instead",
            r
        )),
        http_requests: c.add(register_int_counter_vec_with_registry!(
            "http_requests_total",
            "HTTP requests by route and status",
            &["route", "status"],
            r
        )),
        http_seconds: c.add(register_histogram_vec_with_registry!(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            &["route"],
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            r
        )),
        http_rejected: c.add(register_int_counter_vec_with_registry!(
            "http_rejected_total",
            "Requests refused before a handler ran, by reason: unauthorized, forbidden, origin_not_allowed, rate_limited, too_large",
            &["reason"],
            r
        )),
        rate_limit_fallbacks: c.add(register_int_counter_with_registry!(
            "rate_limit_fallbacks_total",
            "Rate-limit checks decided by local buckets because Redis did not answer",
            r
        )),
        rest_reads: c.add(register_int_counter_vec_with_registry!(
            "rest_reads_total",
            "Reads behind REST answers, by source: actors, redis, postgres, rendered (a stats body another reader rendered)",
            &["source"],
            r
        )),
        ws_sessions: c.add(register_int_gauge_with_registry!("ws_sessions", "Open WebSocket sessions of this instance", r)),
        ws_frames_sent: c.add(register_int_counter_vec_with_registry!(
            "ws_frames_sent_total",
            "WebSocket channel frames written, by type (subscribed, swap, stats, skipped)",
            &["type"],
            r
        )),
        ws_evictions: c.add(register_int_counter_vec_with_registry!(
            "ws_evictions_total",
            "WebSocket clients disconnected by the server, by reason (total_bytes, write_deadline, ping_timeout)",
            &["reason"],
            r
        )),
        ws_bad_frames: c.add(register_int_counter_vec_with_registry!(
            "ws_bad_frames_total",
            "Bad WebSocket frames from clients, by error code",
            &["code"],
            r
        )),
        ws_refused: c.add(register_int_counter_vec_with_registry!(
            "ws_connections_refused_total",
            "WebSocket upgrades refused, by reason",
            &["reason"],
            r
        )),
        ws_pubsub_resumed: c.add(register_int_counter_with_registry!(
            "ws_pubsub_resumed_total",
            "Redis pub/sub connections re-established after a loss (each channel reads back its history; a gap only where it cannot)",
            r
        )),
        ws_resumes: c.add(register_int_counter_vec_with_registry!(
            "ws_resumes_total",
            "WebSocket subscriptions that asked to resume from a position, by outcome (recovered, or why not)",
            &["outcome"],
            r
        )),
        ws_pubsub_recovered: c.add(register_int_counter_with_registry!(
            "ws_pubsub_recovered_total",
            "History entries read back after a Redis pub/sub loss instead of showing clients a gap",
            r
        )),
        swap_feed_dropped: c.add(register_int_counter_with_registry!(
            "swap_feed_dropped_total",
            "Batches of swap states not published because Redis could not keep up (clients miss those swap frames)",
            r
        )),
        ws_gaps: c.add(register_int_counter_with_registry!(
            "ws_gaps_total",
            "Updates that told of lost swap states (each subscribed client of the channel skips a seq)",
            r
        )),
        ws_handoffs: c.add(register_int_counter_with_registry!(
            "ws_handoffs_total",
            "Handoffs of new frames from the session registry to a session (each carries one or more frames)",
            r
        )),
        live_writes_fenced: c.add(register_int_counter_with_registry!(
            "live_writes_fenced_total",
            "Partials not written to Redis because a later position of their partition was there (a paused instance's late write)",
            r
        )),
        ws_conflations: c.add(register_int_counter_with_registry!(
            "ws_conflations_total",
            "Times a WebSocket client's queued frames of one channel were replaced by one skipped frame, its queue being past SWAPSTREAM_WS_QUEUE_BYTES",
            r
        )),
        ws_conflated_frames: c.add(register_int_counter_with_registry!(
            "ws_conflated_frames_total",
            "Swap frames dropped from WebSocket clients' queues by conflation (counted in their skipped frames)",
            r
        )),
        producer_recreated: c.add(register_int_counter_with_registry!(
            "producer_recreated_total",
            "Kafka producer clients replaced by a new one after a fatal error",
            r
        )),
        read_delay: c.add(register_histogram_with_registry!(
            "read_delay_seconds",
            "Time from a message's Kafka timestamp (set by its producer) to its read by the consumer",
            vec![0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0],
            r
        )),
        live_write_seconds: c.add(register_histogram_with_registry!(
            "live_write_seconds",
            "Time to write one checkpoint's live state to Redis and publish its updates",
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            r
        )),
        ws_fanout_seconds: c.add(register_histogram_with_registry!(
            "ws_fanout_seconds",
            "Time from a swap update's arrival over Redis pub/sub to its frames' hand-over to a client's socket, per client and handoff",
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0],
            r
        )),
        registry,
        process: process_registry(),
        catalog: c.0,
    };
    metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("BUILD_INFO_COMMIT")]).set(1);
    // Label values known in advance start at 0, so that a scrape shows the
    // series before their first event and `rate()` sees that first event.
    for (vec, values) in [
        (&metrics.outcomes, OUTCOMES),
        (&metrics.dead_lettered, DEAD_LETTER_REASONS),
        (&metrics.ws_evictions, EVICTION_REASONS),
        (&metrics.ws_frames_sent, FRAME_TYPES),
        (&metrics.http_rejected, REJECT_REASONS),
        (&metrics.ws_resumes, RESUME_OUTCOMES),
    ] {
        for value in values {
            vec.with_label_values(&[value]);
        }
    }
    metrics
});

/// Values of `swapstream_ws_resumes_total{outcome}`.
const RESUME_OUTCOMES: &[&str] = &["recovered", "epoch_changed", "history_expired", "unknown_offset"];
/// Values of `swapstream_events_outcome_total{outcome}`.
const OUTCOMES: &[&str] =
    &["pending", "confirmed", "failed", "duplicate", "stale_pending", "conflict", "dead_lettered"];
/// Values of `swapstream_events_dead_lettered_total{reason}`: the decode
/// errors of `codec::DecodeError::reason` and the two event-time ones.
const DEAD_LETTER_REASONS: &[&str] = &[
    "empty",
    "too_large",
    "unsupported_content_type",
    "malformed_protobuf",
    "malformed_json",
    "invalid_field",
    "too_late",
    "future_timestamp",
];
/// Values of `swapstream_ws_evictions_total{reason}`.
const EVICTION_REASONS: &[&str] = &["total_bytes", "write_deadline", "ping_timeout"];
/// Values of `swapstream_http_rejected_total{reason}`.
const REJECT_REASONS: &[&str] = &["unauthorized", "forbidden", "origin_not_allowed", "rate_limited", "too_large"];
/// Values of `swapstream_ws_frames_sent_total{type}`.
const FRAME_TYPES: &[&str] = &["subscribed", "swap", "stats", "candle", "skipped"];

fn process_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process metrics");
    registry
}

/// Every metric this process can export, sorted by name: ours from their
/// registrations, the process collector's from a scrape of it.
pub fn catalog() -> Vec<MetricInfo> {
    let mut all = METRICS.catalog.clone();
    for family in METRICS.process.gather() {
        all.push(MetricInfo {
            name: family.name().to_owned(),
            kind: match family.get_field_type() {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::HISTOGRAM => "histogram",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
            },
            labels: Vec::new(),
            help: family.help().to_owned(),
        });
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let mut families = METRICS.registry.gather();
    families.extend(METRICS.process.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&families, &mut buffer).expect("text encoding");
    String::from_utf8(buffer).expect("metrics are UTF-8")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `(name, type, labels)` of each row of the README's metric table:
    /// `| \`name\` | type | \`label\`, ... or - | meaning |`.
    fn readme_rows() -> BTreeSet<(String, String, String)> {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        readme
            .lines()
            .filter(|line| line.starts_with("| `swapstream_") || line.starts_with("| `process_"))
            .map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                (cells[1].trim_matches('`').to_owned(), cells[2].to_owned(), cells[3].to_owned())
            })
            .collect()
    }

    fn labels(info: &MetricInfo) -> String {
        if info.labels.is_empty() {
            "-".to_owned()
        } else {
            info.labels.iter().map(|l| format!("`{l}`")).collect::<Vec<_>>().join(", ")
        }
    }

    #[test]
    fn the_readme_lists_every_metric_with_its_type_and_labels() {
        let catalog = catalog();
        let exported: BTreeSet<(String, String, String)> =
            catalog.iter().map(|m| (m.name.clone(), m.kind.to_owned(), labels(m))).collect();
        let documented = readme_rows();
        // Rows to paste, with the help text as a first draft of the meaning.
        let missing: String = catalog
            .iter()
            .filter(|m| !documented.contains(&(m.name.clone(), m.kind.to_owned(), labels(m))))
            .map(|m| format!("| `{}` | {} | {} | {}. |\n", m.name, m.kind, labels(m), m.help.trim_end_matches('.')))
            .collect();
        let stale: Vec<_> = documented.difference(&exported).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "README.md metric table out of step with the registry\nmissing rows:\n{missing}stale rows: {stale:?}"
        );
    }

    #[test]
    fn process_metrics_keep_their_standard_names() {
        let text = render();
        for name in
            ["process_open_fds", "process_max_fds", "process_resident_memory_bytes", "process_cpu_seconds_total"]
        {
            assert!(text.lines().any(|line| line.starts_with(&format!("{name} "))), "{name} missing:\n{text}");
        }
        assert!(!text.contains("swapstream_process_"), "{text}");
    }

    #[test]
    fn build_info_names_the_version_and_commit() {
        let text = render();
        let line = text.lines().find(|l| l.starts_with("swapstream_build_info{")).expect("build_info exported");
        assert!(line.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{line}");
        assert!(line.contains("commit=\""), "{line}");
        assert!(line.ends_with("} 1"), "{line}");
    }

    #[test]
    fn names_follow_the_prometheus_conventions() {
        for metric in catalog() {
            let name = &metric.name;
            assert!(name.starts_with("swapstream_") || name.starts_with("process_"), "{name}: unprefixed");
            assert_eq!(
                metric.kind == "counter",
                name.ends_with("_total"),
                "{name}: counters and only counters end _total"
            );
            for unit in ["duration", "delay", "latency", "time"] {
                if name.contains(unit) && !name.ends_with("start_time_seconds") {
                    assert!(name.ends_with("_seconds"), "{name}: a time in seconds ends _seconds");
                }
            }
            assert!(!name.ends_with("_milliseconds") && !name.ends_with("_ms"), "{name}: base units (seconds)");
            assert!(!metric.help.is_empty(), "{name}: no help");
        }
    }
}
