//! Writes the live state to Redis behind the reader, in checkpoint order,
//! on a thread of its own, so the next batch neither waits for Redis nor
//! shares a core with JSON serialization. Bounded: when Redis is slower
//! than the stream, the reader waits here rather than queueing without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    failed: Arc<AtomicBool>,
    _arbiter: Arbiter,
}

impl LiveWriter {
    pub fn start(redis: RedisStore, log: Logger) -> LiveWriter {
        let (tx, mut rx) = mpsc::channel::<Work>(QUEUE);
        let failed = Arc::new(AtomicBool::new(false));
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

    /// Set when a write fails (the state must then be rebuilt).
    pub fn failure_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }
}

async fn write(redis: &RedisStore, work: Work, failed: &AtomicBool, log: &Logger) {
    let started = std::time::Instant::now();
    if let Err(e) = redis.write(&work.changes, &work.positions, &work.changed).await {
        METRICS.redis_errors.inc();
        failed.store(true, Ordering::SeqCst);
        warn!(log, "cannot write live state to Redis; it will be rebuilt"; "error" => format!("{e:#}"));
    }
    METRICS.live_write_seconds.observe(started.elapsed().as_secs_f64());
}
