//! The fault suite: the whole pipeline (every role a separate process) on a
//! stack of each test's own — Apache Kafka, PostgreSQL and Redis — while
//! processes are killed and services stopped mid-stream. Each scenario ends
//! with the stores checked against the producer's ground truth: no swap
//! lost, none counted twice, to the cent.
//!
//! `cargo test --test faults` runs the fast versions (in CI, through
//! `scripts/test`); `SWAPSTREAM_FAULTS_SWAPS=N` and
//! `SWAPSTREAM_FAULTS_RATE=EVENTS_PER_MINUTE` make the streams longer
//! (docs/RELIABILITY.md has the commands and the figures). Add
//! `-- --nocapture` to see each scenario's `RELIABILITY |` line.

#[allow(dead_code)]
#[path = "../it/helpers.rs"]
mod helpers;
mod oracle;
mod stack;
#[path = "../support/mod.rs"]
mod support;

mod broker_outage;
mod consumer_kills;
mod malformed;
mod postgres_outage;
mod reconnect_storm;
mod redis_outage;
mod scaling;
mod shutdown;
mod zombie;

use std::path::PathBuf;
use std::time::Duration;

use helpers::{Child, Names};
use stack::Stack;
use swapstream::producer::ground_truth::GroundTruthFile;

pub const TOKENS: &str = "ETH,BTC,USDC,SOL";

/// Swaps in a scenario's stream: `default`, or `SWAPSTREAM_FAULTS_SWAPS`.
pub fn swaps(default: u32) -> u32 {
    std::env::var("SWAPSTREAM_FAULTS_SWAPS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A stream with failures, duplicates and events held back up to 2 s, at
/// `per_minute` events a minute, or `SWAPSTREAM_FAULTS_RATE`.
pub fn stream(per_minute: &str) -> Vec<(&'static str, String)> {
    let rate = std::env::var("SWAPSTREAM_FAULTS_RATE").unwrap_or_else(|_| per_minute.to_owned());
    helpers::stream_vars(TOKENS, &rate, 2000)
}

/// A consumer process of `names` on `stack` under the instance id `id`
/// (static membership: a restart under the same id resumes at once).
pub fn consumer(stack: &Stack, names: &Names, id: &str) -> Child {
    let mut vars = stack.vars(names);
    vars.push(("SWAPSTREAM_INSTANCE_ID", format!("{}-{id}", names.schema)));
    vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "6000".into()));
    vars.push(("SWAPSTREAM_BATCH_MAX_MS", "100".into()));
    Child::spawn(&format!("{}-{id}", names.schema), &["consumer"], &vars)
}

/// A producer process streaming `swaps` swaps into `stack`, writing its
/// ground truth; `helpers::produce` waits for it.
pub async fn produce(stack: &Stack, names: &Names, swaps: u32, per_minute: &str) -> GroundTruthFile {
    helpers::produce(&stack.brokers(), names, swaps, &stream(per_minute)).await
}

/// A producer process that streams until it is stopped, recording its
/// ground truth: for a scenario that must outlast a fault however long the
/// fault takes to heal.
pub struct Producer {
    child: Child,
    truth: PathBuf,
}

impl Producer {
    pub fn start(brokers: &str, names: &Names, extra: &[(&str, String)]) -> Producer {
        let truth = names.truth_path();
        let mut vars = names.vars(brokers);
        vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
        let truth_arg = truth.display().to_string();
        let child = Child::spawn(
            &format!("{}producer", names.topic_prefix),
            &["producer", "--ground-truth", &truth_arg],
            &vars,
        );
        Producer { child, truth }
    }

    /// SIGTERM: what it holds goes out and is flushed; its ground truth.
    pub async fn stop(mut self) -> GroundTruthFile {
        // The producer's flush gets SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS (20 s by default).
        let status = self.child.terminate(Duration::from_secs(60)).await;
        assert!(status.success(), "producer failed: {}", self.child.log_text());
        GroundTruthFile::read(&self.truth).unwrap()
    }
}

/// Waits until the checkpoint moves past where it is now.
pub async fn progress(stack: &Stack, names: &Names, timeout: Duration) {
    let before = oracle::checkpointed(stack, names).await;
    helpers::eventually("the consumer makes progress", timeout, || async move {
        oracle::checkpointed(stack, names).await > before
    })
    .await;
}
