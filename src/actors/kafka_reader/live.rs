//! Writes the live state to Redis behind the reader, in checkpoint order,
//! on a thread of its own, so the next batch neither waits for Redis nor
//! shares a core with JSON serialization. Bounded: when Redis is slower
//! than the stream, the reader waits here rather than queueing without end.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::Arbiter;
use slog::{warn, Logger};
use tokio::sync::mpsc;

use crate::domain::aggregate::Interval;
use crate::domain::partial::{AggKey, CandlePartial, TotalsPartial};
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::storage::redis::{PartialWrite, Position, RedisStore, Update, WireJson};
use crate::stream::Tp;

/// Checkpoints queued for Redis at most.
const QUEUE: usize = 4;

/// One partial's live values to write.
pub struct LivePartial {
    pub key: AggKey,
    pub tp: Tp,
    pub totals: TotalsPartial,
    pub pending: i64,
    pub candles: Vec<(Interval, CandlePartial)>,
    pub new_recent: Vec<Arc<SwapEvent>>,
    /// The partition's ownership epoch and checkpointed offset these values
    /// are at: Redis keeps a write only if no later one is there (fencing).
    pub position: Position,
}

struct Work {
    partials: Vec<LivePartial>,
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

    /// Queues one checkpoint's live values and the keys to announce as changed.
    pub async fn send(&self, partials: Vec<LivePartial>, changed: Vec<AggKey>) {
        let _ = self.tx.send(Work { partials, changed }).await;
    }

    /// Set when a write fails (the state must then be rebuilt).
    pub fn failure_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }
}

async fn write(redis: &RedisStore, work: Work, failed: &AtomicBool, log: &Logger) {
    let mut json = WireJson::default();
    let writes: Vec<PartialWrite> = work
        .partials
        .into_iter()
        .map(|p| PartialWrite {
            new_recent: p.new_recent.iter().map(|s| (s.timestamp.timestamp_millis(), json.of(s))).collect(),
            key: p.key,
            tp: p.tp,
            totals: p.totals,
            pending: p.pending,
            candles: p.candles,
            position: p.position,
        })
        .collect();
    let updates: Vec<Update> =
        work.changed.into_iter().map(|key| Update { key, swaps: Vec::new(), gap: false }).collect();
    let started = std::time::Instant::now();
    if let Err(e) = redis.write(&writes, &updates).await {
        METRICS.redis_errors.inc();
        failed.store(true, Ordering::SeqCst);
        warn!(log, "cannot write live state to Redis; it will be rebuilt"; "error" => format!("{e:#}"));
    }
    METRICS.live_write_seconds.observe(started.elapsed().as_secs_f64());
}
