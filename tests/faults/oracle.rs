//! The ground truth against what a stack's stores hold: every swap counted
//! once, none lost, to the cent, in PostgreSQL and in Redis.

use std::time::{Duration, Instant};

use swapstream::producer::ground_truth::GroundTruthFile;

use crate::helpers::{self, Names};
use crate::stack::Stack;

/// Sum of the checkpointed next offsets of the test's partitions.
pub async fn checkpointed(stack: &Stack, names: &Names) -> i64 {
    let client = stack.pg().await;
    helpers::checkpointed(&client, names).await
}

/// Waits until the checkpoint covers `total` messages, and not more.
pub async fn wait_checkpointed(stack: &Stack, names: &Names, total: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = checkpointed(stack, names).await;
        if done >= total {
            assert_eq!(done, total, "checkpoint went past the messages produced");
            return;
        }
        assert!(Instant::now() < deadline, "checkpoint at {done} of {total} after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Confirmed swaps counted per token in `value` (a reference's JSON form).
fn swaps_counted(value: &serde_json::Value) -> i64 {
    value["tokens"].as_object().map_or(0, |tokens| tokens.values().filter_map(|t| t["totals"]["swaps"].as_i64()).sum())
}

/// What went wrong, in swaps: (lost, counted twice) against the truth.
pub fn lost_and_doubled(stored: &serde_json::Value, truth: &GroundTruthFile) -> (i64, i64) {
    let (stored, expected) = (swaps_counted(stored), swaps_counted(&truth.expected));
    ((expected - stored).max(0), (stored - expected).max(0))
}

pub async fn from_postgres(stack: &Stack, names: &Names) -> (serde_json::Value, i64) {
    helpers::postgres_state(&stack.settings(names)).await
}

pub async fn from_redis(stack: &Stack, names: &Names) -> serde_json::Value {
    helpers::redis_state(&stack.settings(names)).await
}

/// PostgreSQL and (eventually) Redis equal the ground truth; returns what
/// PostgreSQL held as (lost, doubled), which the assertions make (0, 0).
pub async fn assert_exact(stack: &Stack, names: &Names, truth: &GroundTruthFile) -> (i64, i64) {
    let (stored, pending) = from_postgres(stack, names).await;
    let counts = lost_and_doubled(&stored, truth);
    assert_eq!(counts, (0, 0), "PostgreSQL lost or doubled swaps");
    assert_eq!(stored, truth.expected, "PostgreSQL differs from the ground truth");
    assert_eq!(pending, 0, "every swap reached a terminal status: nothing may stay pending");
    let expected = truth.expected.clone();
    helpers::eventually("Redis holds the ground truth", Duration::from_secs(30), || {
        let expected = expected.clone();
        async move { from_redis(stack, names).await == expected }
    })
    .await;
    counts
}

/// One row of docs/RELIABILITY.md, printed for `--nocapture` runs.
pub fn report(scenario: &str, took: Duration, truth: &GroundTruthFile, counts: (i64, i64), recovery: &str) {
    println!(
        "RELIABILITY | {scenario} | {:.0} s | {} events | {} lost | {} doubled | {recovery} |",
        took.as_secs_f64(),
        truth.events.len(),
        counts.0,
        counts.1
    );
}
