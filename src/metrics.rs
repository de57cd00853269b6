//! Prometheus metrics of the process, served as text at `/metrics`.

use std::sync::LazyLock;

use prometheus::{
    register_histogram_vec_with_registry, register_histogram_with_registry, register_int_counter_vec_with_registry,
    register_int_counter_with_registry, register_int_gauge_vec_with_registry, register_int_gauge_with_registry,
    Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_decoded: IntCounter,
    pub outcomes: IntCounterVec,
    pub dead_lettered: IntCounterVec,
    pub pending: IntGaugeVec,
    pub checkpoint_seconds: Histogram,
    pub read_delay: Histogram,
    pub live_write_seconds: Histogram,
    pub checkpoint_events: Histogram,
    pub checkpoint_failures: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub aggregator_restarts: IntCounter,
    pub offset_regressions: IntCounter,
    pub redis_errors: IntCounter,
    pub redis_rebuilds: IntCounter,
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
    pub swap_feed_dropped: IntCounter,
    pub ws_gaps: IntCounter,
    pub ws_handoffs: IntCounter,
    pub ws_conflations: IntCounter,
    pub ws_conflated_frames: IntCounter,
    pub producer_recreated: IntCounter,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new_custom(Some("swapstream".into()), None).expect("metric registry");
    let r = &registry;
    Metrics {
        events_consumed: register_int_counter_vec_with_registry!(
            "events_consumed_total",
            "Kafka messages read, by topic",
            &["topic"],
            r
        )
        .expect("metric"),
        events_decoded: register_int_counter_with_registry!(
            "events_decoded_total",
            "Messages decoded into valid swap events",
            r
        )
        .expect("metric"),
        outcomes: register_int_counter_vec_with_registry!(
            "events_outcome_total",
            "Valid events by what they meant: pending, confirmed, failed, duplicate, stale_pending, conflict",
            &["outcome"],
            r
        )
        .expect("metric"),
        dead_lettered: register_int_counter_vec_with_registry!(
            "events_dead_lettered_total",
            "Messages sent to the dead-letter topic, by reason",
            &["reason"],
            r
        )
        .expect("metric"),
        pending: register_int_gauge_vec_with_registry!(
            "pending_swaps",
            "Swaps seen pending and not yet confirmed or failed, in this instance's partitions, by token or pair",
            &["key"],
            r
        )
        .expect("metric"),
        checkpoint_seconds: register_histogram_with_registry!(
            "checkpoint_duration_seconds",
            "Time of one checkpoint transaction",
            vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
            r
        )
        .expect("metric"),
        checkpoint_events: register_histogram_with_registry!(
            "checkpoint_batch_events",
            "Messages covered by one checkpoint",
            vec![1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0],
            r
        )
        .expect("metric"),
        checkpoint_failures: register_int_counter_with_registry!(
            "checkpoint_failures_total",
            "Checkpoints that failed and were retried",
            r
        )
        .expect("metric"),
        consumer_lag: register_int_gauge_vec_with_registry!(
            "consumer_lag",
            "Messages between the checkpoint and the partition's high watermark",
            &["topic", "partition"],
            r
        )
        .expect("metric"),
        aggregator_restarts: register_int_counter_with_registry!(
            "aggregator_restarts_total",
            "Aggregator actors restarted by their supervisor",
            r
        )
        .expect("metric"),
        offset_regressions: register_int_counter_with_registry!(
            "offset_regressions_total",
            "Messages skipped because their offset is below the partition's checkpoint (e.g. a recreated topic)",
            r
        )
        .expect("metric"),
        redis_errors: register_int_counter_with_registry!("redis_errors_total", "Failed Redis writes", r)
            .expect("metric"),
        redis_rebuilds: register_int_counter_with_registry!(
            "redis_rebuilds_total",
            "Rebuilds of the live state in Redis from this instance's partitions",
            r
        )
        .expect("metric"),
        http_requests: register_int_counter_vec_with_registry!(
            "http_requests_total",
            "HTTP requests by route and status",
            &["route", "status"],
            r
        )
        .expect("metric"),
        http_seconds: register_histogram_vec_with_registry!(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            &["route"],
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            r
        )
        .expect("metric"),
        http_rejected: register_int_counter_vec_with_registry!(
            "http_rejected_total",
            "Requests refused before a handler ran, by reason: unauthorized, forbidden, origin_not_allowed, rate_limited, too_large",
            &["reason"],
            r
        )
        .expect("metric"),
        rate_limit_fallbacks: register_int_counter_with_registry!(
            "rate_limit_fallbacks_total",
            "Rate-limit checks decided by local buckets because Redis did not answer",
            r
        )
        .expect("metric"),
        rest_reads: register_int_counter_vec_with_registry!(
            "rest_reads_total",
            "Reads behind REST answers, by source: actors, redis, postgres",
            &["source"],
            r
        )
        .expect("metric"),
        ws_sessions: register_int_gauge_with_registry!("ws_sessions", "Open WebSocket sessions of this instance", r)
            .expect("metric"),
        ws_frames_sent: register_int_counter_vec_with_registry!(
            "ws_frames_sent_total",
            "WebSocket channel frames written, by type (subscribed, swap, stats, skipped)",
            &["type"],
            r
        )
        .expect("metric"),
        ws_evictions: register_int_counter_vec_with_registry!(
            "ws_evictions_total",
            "WebSocket clients disconnected by the server, by reason (total_bytes, write_deadline, ping_timeout)",
            &["reason"],
            r
        )
        .expect("metric"),
        ws_bad_frames: register_int_counter_vec_with_registry!(
            "ws_bad_frames_total",
            "Bad WebSocket frames from clients, by error code",
            &["code"],
            r
        )
        .expect("metric"),
        ws_refused: register_int_counter_vec_with_registry!(
            "ws_connections_refused_total",
            "WebSocket upgrades refused, by reason",
            &["reason"],
            r
        )
        .expect("metric"),
        ws_pubsub_resumed: register_int_counter_with_registry!(
            "ws_pubsub_resumed_total",
            "Redis pub/sub connections re-established after a loss (clients are shown a seq gap)",
            r
        )
        .expect("metric"),
        swap_feed_dropped: register_int_counter_with_registry!(
            "swap_feed_dropped_total",
            "Batches of swap states not published because Redis could not keep up (clients miss those swap frames)",
            r
        )
        .expect("metric"),
        ws_gaps: register_int_counter_with_registry!(
            "ws_gaps_total",
            "Updates that told of lost swap states (each subscribed client of the channel skips a seq)",
            r
        )
        .expect("metric"),
        ws_handoffs: register_int_counter_with_registry!(
            "ws_handoffs_total",
            "Handoffs of new frames from the session registry to a session (each carries one or more frames)",
            r
        )
        .expect("metric"),
        ws_conflations: register_int_counter_with_registry!(
            "ws_conflations_total",
            "Times a WebSocket client's queued frames of one channel were replaced by one skipped frame, its queue being past SWAPSTREAM_WS_QUEUE_BYTES",
            r
        )
        .expect("metric"),
        ws_conflated_frames: register_int_counter_with_registry!(
            "ws_conflated_frames_total",
            "Swap frames dropped from WebSocket clients' queues by conflation (counted in their skipped frames)",
            r
        )
        .expect("metric"),
        producer_recreated: register_int_counter_with_registry!(
            "producer_recreated_total",
            "Kafka producer clients replaced by a new one after a fatal error",
            r
        )
        .expect("metric"),
        read_delay: register_histogram_with_registry!(
            "read_delay_seconds",
            "Time from a message's Kafka timestamp (set by its producer) to its read by the consumer",
            vec![0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0],
            r
        )
        .expect("metric"),
        live_write_seconds: register_histogram_with_registry!(
            "live_write_seconds",
            "Time to write one checkpoint's live state to Redis and publish its updates",
            vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0],
            r
        )
        .expect("metric"),
        registry,
    }
});

/// The metrics in Prometheus text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    TextEncoder::new().encode(&METRICS.registry.gather(), &mut buffer).expect("text encoding");
    String::from_utf8(buffer).expect("metrics are UTF-8")
}
