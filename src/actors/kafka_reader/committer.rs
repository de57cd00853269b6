//! Stores checkpoints on a thread of its own, in order, one at a time, while
//! the reader goes on with the next batches. Offsets still move only after
//! their checkpoint commits: the checkpoint holds them.
//!
//! Checkpoints that queue while one is being stored, or within the
//! checkpoint interval of the last store, are merged into one
//! ([`Checkpoint::absorb`]), so PostgreSQL sees at most one transaction per
//! interval (or per full batch) however small the reader's batches are, and
//! the reader never waits for PostgreSQL while fewer than `max_queued`
//! events wait here. After each commit it moves Kafka's committed offsets
//! (lag monitoring) and hands the live values to the Redis writer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use slog::{debug, error, warn, Logger};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::live::{LivePartial, LiveWriter};
use super::poll::ReaderContext;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::storage::postgres::{Checkpoint, Fenced, PgStore};

/// One or more batches' checkpoint, merged in order.
struct Pending {
    checkpoint: Checkpoint,
    events: usize,
    batches: usize,
    /// The queue room these events take, given back once they are stored.
    _room: Vec<OwnedSemaphorePermit>,
}

impl Pending {
    fn absorb(&mut self, later: Pending) {
        self.checkpoint.absorb(later.checkpoint);
        self.events += later.events;
        self.batches += later.batches;
        self._room.extend(later._room);
    }
}

enum Job {
    Checkpoint(Pending),
    /// Live values to write in full (after an assign or a Redis flush).
    Live(Vec<LivePartial>),
    /// Answered once everything queued before it is done.
    Barrier(oneshot::Sender<()>),
}

pub struct Committer {
    tx: mpsc::UnboundedSender<Job>,
    /// Events queued and not yet stored, at most `max_queued`.
    room: Arc<Semaphore>,
    max_queued: usize,
    live_failed: Arc<std::sync::atomic::AtomicBool>,
    _arbiter: Arbiter,
}

pub struct CommitterParts {
    pub pg: PgStore,
    pub consumer: Arc<BaseConsumer<ReaderContext>>,
    pub live: LiveWriter,
    pub log: Logger,
    /// Events that may wait for their checkpoint before the reader waits.
    pub max_queued: usize,
    /// Shortest time from one store to the next while fewer than
    /// `full_batch` events wait.
    pub interval: Duration,
    pub full_batch: usize,
}

impl Committer {
    pub fn start(parts: CommitterParts) -> Committer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        let live_failed = parts.live.failure_flag();
        let max_queued = parts.max_queued.max(1);
        let arbiter = Arbiter::new();
        arbiter.spawn(async move {
            let mut next: Option<Job> = None;
            let mut last_store = Instant::now();
            loop {
                let job = match next.take() {
                    Some(job) => job,
                    None => match rx.recv().await {
                        Some(job) => job,
                        None => break,
                    },
                };
                match job {
                    Job::Checkpoint(mut pending) => {
                        // Later checkpoints join this one until it is due: the
                        // interval since the last store passed, a full batch
                        // waits, or something else is asked for (a barrier).
                        let due = tokio::time::Instant::from_std(last_store + parts.interval);
                        while pending.events < parts.full_batch && next.is_none() {
                            tokio::select! {
                                _ = tokio::time::sleep_until(due) => break,
                                job = rx.recv() => match job {
                                    Some(Job::Checkpoint(later)) => pending.absorb(later),
                                    Some(other) => next = Some(other),
                                    None => break,
                                },
                            }
                        }
                        // And whatever queued behind it meanwhile.
                        while next.is_none() {
                            match rx.try_recv() {
                                Ok(Job::Checkpoint(later)) => pending.absorb(later),
                                Ok(other) => next = Some(other),
                                Err(_) => break,
                            }
                        }
                        last_store = Instant::now();
                        checkpoint(&parts, pending).await;
                    }
                    Job::Live(partials) => parts.live.send(partials, Vec::new()).await,
                    Job::Barrier(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Committer { tx, room: Arc::new(Semaphore::new(max_queued)), max_queued, live_failed, _arbiter: arbiter }
    }

    /// Queues a batch's checkpoint; waits only while `max_queued` events
    /// already wait for theirs.
    pub async fn submit(&self, checkpoint: Checkpoint, events: usize) {
        let wanted = events.clamp(1, self.max_queued) as u32;
        let Ok(room) = self.room.clone().acquire_many_owned(wanted).await else { return };
        let pending = Pending { checkpoint, events, batches: 1, _room: vec![room] };
        let _ = self.tx.send(Job::Checkpoint(pending));
    }

    pub fn write_live(&self, partials: Vec<LivePartial>) {
        let _ = self.tx.send(Job::Live(partials));
    }

    /// Waits until every checkpoint queued so far is stored (or fenced).
    pub async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Barrier(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Whether a Redis write failed since the last call.
    pub fn take_live_failure(&self) -> bool {
        self.live_failed.swap(false, std::sync::atomic::Ordering::SeqCst)
    }
}

/// Stores one (merged) checkpoint; then Kafka's offsets and the live state.
async fn checkpoint(parts: &CommitterParts, pending: Pending) {
    let started = Instant::now();
    if !store(&parts.pg, &pending.checkpoint, &parts.log).await {
        return;
    }
    let stored = started.elapsed();
    METRICS.checkpoint_seconds.observe(stored.as_secs_f64());
    METRICS.checkpoint_events.observe(pending.events as f64);
    commit_offsets(&parts.consumer, &pending.checkpoint, &parts.log);
    publish(&parts.live, pending.checkpoint).await;
    debug!(parts.log, "checkpoint"; "events" => pending.events, "batches" => pending.batches,
        "store_ms" => stored.as_millis(), "publish_ms" => (started.elapsed() - stored).as_millis());
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

/// After the commit: live state to Redis, and every changed key announced
/// (its swaps went out before the checkpoint, see `feed`).
async fn publish(live: &LiveWriter, checkpoint: Checkpoint) {
    let mut changed: BTreeSet<AggKey> = BTreeSet::new();
    let partials: Vec<LivePartial> = checkpoint
        .partials
        .into_iter()
        .map(|(key, tp, delta)| {
            METRICS.pending.with_label_values(&[&key.to_string()]).set(delta.pending);
            changed.insert(key.clone());
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
    live.send(partials, changed.into_iter().collect()).await;
}
