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

use crate::domain::aggregate::Interval;
use crate::domain::partial::{AggKey, CandlePartial, TotalsPartial};
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::storage::redis::{PartialWrite, RedisStore};
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
}

struct Work {
    partials: Vec<LivePartial>,
    /// Per key, the swaps that became pending or confirmed.
    messages: Vec<(AggKey, Vec<Arc<SwapEvent>>)>,
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

    /// Queues one checkpoint's live values and update messages.
    pub async fn send(&self, partials: Vec<LivePartial>, messages: Vec<(AggKey, Vec<Arc<SwapEvent>>)>) {
        let _ = self.tx.send(Work { partials, messages }).await;
    }

    /// Set when a write fails (the state must then be rebuilt).
    pub fn failure_flag(&self) -> Arc<AtomicBool> {
        self.failed.clone()
    }
}

async fn write(redis: &RedisStore, work: Work, failed: &AtomicBool, log: &Logger) {
    // Each swap is serialized once, however many keys it counts for.
    let mut json: HashMap<usize, Arc<str>> = HashMap::new();
    let mut serialized = |swap: &Arc<SwapEvent>| -> Arc<str> {
        json.entry(Arc::as_ptr(swap) as usize)
            .or_insert_with(|| serde_json::to_string(&swap.to_wire()).unwrap_or_default().into())
            .clone()
    };
    let writes: Vec<PartialWrite> = work
        .partials
        .into_iter()
        .map(|p| PartialWrite {
            new_recent: p.new_recent.iter().map(|s| (s.timestamp.timestamp_millis(), serialized(s))).collect(),
            key: p.key,
            tp: p.tp,
            totals: p.totals,
            pending: p.pending,
            candles: p.candles,
        })
        .collect();
    let updates: Vec<(AggKey, Vec<Arc<str>>)> =
        work.messages.iter().map(|(key, swaps)| (key.clone(), swaps.iter().map(&mut serialized).collect())).collect();
    let started = std::time::Instant::now();
    if let Err(e) = redis.write(&writes, &updates).await {
        METRICS.redis_errors.inc();
        failed.store(true, Ordering::SeqCst);
        warn!(log, "cannot write live state to Redis; it will be rebuilt"; "error" => format!("{e:#}"));
    }
    METRICS.live_write_seconds.observe(started.elapsed().as_secs_f64());
}
