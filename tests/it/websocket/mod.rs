//! The WebSocket fan-out against real consumer processes, the real broker,
//! PostgreSQL and Redis: what a client receives is checked against the
//! producer's ground truth.
//!
//! Files by capability: `candles`, `fanout`, `slow_clients`, `hostile`,
//! `lifecycle`, `protocol`, `resume`, `contract` (every frame type against
//! the AsyncAPI document); the test client (`client`), the model of what a client must
//! receive (`model`) and the raw sockets of the hostile and stalled clients
//! (`raw`) are shared with `ws_conflation`.

mod candles;
mod client;
mod contract;
mod fanout;
mod hostile;
mod lifecycle;
mod model;
mod protocol;
mod raw;
mod resume;
mod slow_clients;

use std::time::Duration;

use crate::helpers::{self, Child, Names};
use crate::support::http;

pub(crate) use client::Client;
pub(crate) use model::{expected_states, Received};
pub(crate) use raw::{reads_to_its_end, stalled_client};

pub(super) const TOKENS: &str = "ETH,BTC,USDC,SOL";

/// How often a channel may get a `stats` frame in these tests.
pub(super) const STATS_INTERVAL: Duration = Duration::from_millis(200);

/// A channel without a frame for this long has delivered what it had.
pub(super) const QUIET: Duration = Duration::from_secs(2);

pub(crate) fn stream_vars(rate: &str) -> Vec<(&'static str, String)> {
    helpers::stream_vars(TOKENS, rate, 1000)
}

pub(crate) fn consumer_vars(names: &Names, brokers: &str, instance: &str) -> Vec<(&'static str, String)> {
    let mut vars = names.vars(brokers);
    vars.extend([
        ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()),
        ("SWAPSTREAM_BATCH_MAX_MS", "50".into()),
        ("SWAPSTREAM_INSTANCE_ID", format!("{}-{instance}", names.schema)),
        ("SWAPSTREAM_KAFKA_OPTIONS", "session.timeout.ms=6000".into()),
        ("SWAPSTREAM_WS_STATS_INTERVAL_MS", STATS_INTERVAL.as_millis().to_string()),
        ("SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "1".into()),
        ("SWAPSTREAM_WS_PRESENCE_TTL_SECS", "3".into()),
    ]);
    vars
}

pub(crate) async fn start_consumer(names: &Names, vars: &[(&'static str, String)], name: &str) -> (Child, u16) {
    let child = Child::spawn(&format!("{}-{name}", names.schema), &["consumer"], vars);
    let port = helpers::logged_port(&child).await;
    (child, port)
}

async fn create_topics(names: &Names, brokers: &str) {
    let settings = names.settings(&[
        ("SWAPSTREAM_KAFKA_TOPIC_PREFIX", &names.topic_prefix),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "4"),
        ("SWAPSTREAM_KAFKA_DLQ_TOPIC", &names.dlq),
    ]);
    let topics: Vec<String> = TOKENS.split(',').map(|t| format!("{}{t}", names.topic_prefix)).collect();
    swapstream::kafka::create_topics(&settings.kafka, brokers, &topics, &swapstream::telemetry::discard())
        .await
        .expect("creating topics");
}

pub(crate) async fn metric(port: u16, line_start: &str) -> f64 {
    let (_, text) = http::get(port, "/metrics").await;
    text.lines().find_map(|l| l.strip_prefix(line_start).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

/// Resident memory of a process, in KiB.
pub(super) fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
