//! Writes the live state to Redis behind the reader, in checkpoint order,
//! on a thread of its own, so the next batch neither waits for Redis nor
//! shares a core with JSON serialization. Bounded: when Redis is slower
//! than the stream, the reader waits here rather than queueing without end.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use actix::Arbiter;
use slog::{warn, Logger};
use tokio::sync::mpsc;

use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::storage::redis::{Position, RedisStore};
use crate::stream::{PartialChange, Tp};

/// Checkpoints queued for Redis at most.
const QUEUE: usize = 4;

struct Work {
    changes: Vec<PartialChange>,
    /// Where each partition of `changes` is: Redis keeps a write only if no
    /// later one is there (fencing).
    positions: HashMap<Tp, Position>,
    /// Keys whose stats changed: each gets an update without swaps (those
    /// went out before the checkpoint, see `feed`) after its writes.
    changed: Vec<AggKey>,
}

pub struct LiveWriter {
    tx: mpsc::Sender<Work>,
    failed: Failures,
    _arbiter: Arbiter,
}

/// What did not reach Redis since it was last taken.
#[derive(Debug, Default, PartialEq, Eq)]
pub enum LiveFailure {
    #[default]
    None,
    /// These keys' writes: rewrite them.
    Keys(BTreeSet<AggKey>),
    /// Any key's: rebuild everything.
    All,
}

impl LiveFailure {
    fn add(&mut self, keys: Option<BTreeSet<AggKey>>) {
        *self = match (std::mem::take(self), keys) {
            (LiveFailure::All, _) | (_, None) => LiveFailure::All,
            (LiveFailure::None, Some(keys)) => LiveFailure::Keys(keys),
            (LiveFailure::Keys(mut failed), Some(keys)) => {
                failed.extend(keys);
                LiveFailure::Keys(failed)
            }
        };
    }
}

/// The failures the writer records and the reader takes.
pub type Failures = Arc<Mutex<LiveFailure>>;

impl LiveWriter {
    pub fn start(redis: RedisStore, log: Logger) -> LiveWriter {
        let (tx, mut rx) = mpsc::channel::<Work>(QUEUE);
        let failed = Failures::default();
        let flag = failed.clone();
        let arbiter = Arbiter::new();
        arbiter.spawn(async move {
            while let Some(work) = rx.recv().await {
                write(&redis, work, &flag, &log).await;
            }
        });
        LiveWriter { tx, failed, _arbiter: arbiter }
    }

    /// Queues one checkpoint's live values, at the partitions' `positions`,
    /// and the keys to announce as changed.
    pub async fn send(&self, changes: Vec<PartialChange>, positions: HashMap<Tp, Position>, changed: Vec<AggKey>) {
        let _ = self.tx.send(Work { changes, positions, changed }).await;
    }

    /// Where failed writes are recorded (their keys must then be written
    /// again).
    pub fn failures(&self) -> Failures {
        self.failed.clone()
    }
}

async fn write(redis: &RedisStore, work: Work, failed: &Failures, log: &Logger) {
    let started = std::time::Instant::now();
    if let Err(e) = redis.write(&work.changes, &work.positions, &work.changed).await {
        METRICS.redis_errors.inc();
        warn!(log, "cannot write live state to Redis; it will be written again"; "error" => %e);
        failed.lock().expect("failures lock").add(e.keys);
    }
    METRICS.live_write_seconds.observe(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Option<BTreeSet<AggKey>> {
        Some(names.iter().map(|n| AggKey::parse(n).unwrap()).collect())
    }

    #[test]
    fn failed_keys_gather_until_a_failure_that_names_none_makes_it_all() {
        let mut failure = LiveFailure::default();
        failure.add(keys(&["token:ETH"]));
        failure.add(keys(&["token:SOL", "pair:ETH-USDC"]));
        assert_eq!(failure, LiveFailure::Keys(keys(&["token:ETH", "token:SOL", "pair:ETH-USDC"]).unwrap()));
        failure.add(None);
        assert_eq!(failure, LiveFailure::All);
        failure.add(keys(&["token:BTC"]));
        assert_eq!(failure, LiveFailure::All, "all stays all");
    }
}
