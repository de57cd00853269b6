//! Stores checkpoints on a thread of its own, in order, one at a time, while
//! the reader already routes and aggregates the next batch. Offsets still
//! move only after their checkpoint commits: the checkpoint holds them.
//! After each commit it moves Kafka's committed offsets (lag monitoring) and
//! hands the live values to the Redis writer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use slog::{debug, error, warn, Logger};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::live::{LivePartial, LiveWriter};
use super::poll::{BatchTicket, ReaderContext};
use super::KeyUpdate;
use crate::domain::partial::AggKey;
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::storage::postgres::{Checkpoint, Fenced, PgStore};

enum Job {
    Checkpoint {
        checkpoint: Checkpoint,
        changes: HashMap<AggKey, Vec<Arc<SwapEvent>>>,
        events: usize,
        /// Released once the checkpoint is stored and its updates handed on.
        ticket: BatchTicket,
    },
    /// Live values to write in full (after an assign or a Redis flush).
    Live(Vec<LivePartial>),
    /// Answered once everything queued before it is done.
    Barrier(oneshot::Sender<()>),
}

pub struct Committer {
    tx: mpsc::Sender<Job>,
    live_failed: Arc<std::sync::atomic::AtomicBool>,
    _arbiter: Arbiter,
}

pub struct CommitterParts {
    pub pg: PgStore,
    pub consumer: Arc<BaseConsumer<ReaderContext>>,
    pub live: LiveWriter,
    pub updates: broadcast::Sender<Arc<KeyUpdate>>,
    pub log: Logger,
}

impl Committer {
    pub fn start(parts: CommitterParts) -> Committer {
        // One checkpoint waits here while the next batch is aggregated.
        let (tx, mut rx) = mpsc::channel::<Job>(1);
        let live_failed = parts.live.failure_flag();
        let arbiter = Arbiter::new();
        arbiter.spawn(async move {
            while let Some(job) = rx.recv().await {
                match job {
                    Job::Checkpoint { checkpoint, changes, events, ticket } => {
                        let started = Instant::now();
                        if store(&parts.pg, &checkpoint, &parts.log).await {
                            let stored = started.elapsed();
                            METRICS.checkpoint_seconds.observe(stored.as_secs_f64());
                            METRICS.checkpoint_events.observe(events as f64);
                            commit_offsets(&parts.consumer, &checkpoint, &parts.log);
                            publish(&parts.live, &parts.updates, checkpoint, changes).await;
                            debug!(parts.log, "checkpoint"; "events" => events, "store_ms" => stored.as_millis(),
                                "publish_ms" => (started.elapsed() - stored).as_millis());
                        }
                        drop(ticket);
                    }
                    Job::Live(partials) => parts.live.send(partials, Vec::new()).await,
                    Job::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Committer { tx, live_failed, _arbiter: arbiter }
    }

    /// Queues a checkpoint; waits while the previous one is still queued.
    pub async fn submit(
        &self,
        checkpoint: Checkpoint,
        changes: HashMap<AggKey, Vec<Arc<SwapEvent>>>,
        events: usize,
        ticket: BatchTicket,
    ) {
        let _ = self.tx.send(Job::Checkpoint { checkpoint, changes, events, ticket }).await;
    }

    pub async fn write_live(&self, partials: Vec<LivePartial>) {
        let _ = self.tx.send(Job::Live(partials)).await;
    }

    /// Waits until every checkpoint queued so far is stored (or fenced).
    pub async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Barrier(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Whether a Redis write failed since the last call.
    pub fn take_live_failure(&self) -> bool {
        self.live_failed.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Stores the checkpoint, retrying while PostgreSQL fails; false when the
/// partitions were taken over meanwhile (fenced: their revoke follows).
async fn store(pg: &PgStore, checkpoint: &Checkpoint, log: &Logger) -> bool {
    let mut delay = Duration::from_millis(100);
    loop {
        match pg.checkpoint(checkpoint).await {
            Ok(()) => return true,
            Err(e) if e.is::<Fenced>() => {
                METRICS.checkpoint_failures.inc();
                warn!(log, "checkpoint fenced: partitions moved to another instance"; "error" => %e);
                return false;
            }
            Err(e) => {
                METRICS.checkpoint_failures.inc();
                error!(log, "checkpoint failed; retrying"; "error" => format!("{e:#}"), "retry_in_ms" => delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Moves Kafka's committed offsets to the checkpoint (for lag monitoring
/// only; the resume point is PostgreSQL's).
fn commit_offsets(consumer: &BaseConsumer<ReaderContext>, checkpoint: &Checkpoint, log: &Logger) {
    let mut tpl = TopicPartitionList::new();
    for p in &checkpoint.progress {
        let _ = tpl.add_partition_offset(&p.tp.topic, p.tp.partition, Offset::Offset(p.next_offset));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(log, "cannot commit offsets to Kafka"; "error" => %e);
    }
}

/// After the commit: live state to Redis, updates to local subscribers.
async fn publish(
    live: &LiveWriter,
    updates: &broadcast::Sender<Arc<KeyUpdate>>,
    checkpoint: Checkpoint,
    changes: HashMap<AggKey, Vec<Arc<SwapEvent>>>,
) {
    let partials: Vec<LivePartial> = checkpoint
        .partials
        .into_iter()
        .map(|(key, tp, delta)| {
            METRICS.pending.with_label_values(&[&key.to_string()]).set(delta.pending);
            LivePartial {
                key,
                tp,
                totals: delta.totals,
                pending: delta.pending,
                candles: delta.candles,
                new_recent: delta.new_recent,
            }
        })
        .collect();
    let messages: Vec<(AggKey, Vec<Arc<SwapEvent>>)> =
        changes.iter().map(|(key, swaps)| (key.clone(), swaps.clone())).collect();
    live.send(partials, messages).await;
    for (key, swaps) in changes {
        let _ = updates.send(Arc::new(KeyUpdate { key, swaps }));
    }
}
