//! Stores checkpoints on a thread of its own, in order, one at a time, while
//! the reader goes on with the next batches. Offsets still move only after
//! their checkpoint commits: the checkpoint holds them.
//!
//! Checkpoints that queue while one is being stored, or within the
//! checkpoint interval of the last store, are merged into one
//! ([`Checkpoint::absorb`]), so PostgreSQL sees at most one transaction per
//! interval (or per full batch) however small the reader's batches are, and
//! the reader never waits for PostgreSQL while fewer than `max_queued`
//! events wait here. After each commit it hands the live values to the
//! Redis writer, and moves Kafka's committed offsets (lag monitoring) at
//! most once a second.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Arbiter;
use backon::Retryable as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use slog::{debug, error, warn, Logger};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::live::{Failures, LiveFailure, LiveWriter};
use super::poll::ReaderContext;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::retry;
use crate::storage::postgres::{Checkpoint, Fenced, PgStore};
use crate::storage::redis::Position;
use crate::stream::{PartialChange, Tp};

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
    /// Live values to write in full (after an assign or a Redis flush), at
    /// their partitions' positions.
    Live(Vec<PartialChange>, HashMap<Tp, Position>),
    /// These partitions left this instance.
    Forget(Vec<Tp>),
    /// Answered once everything queued before it is done.
    Barrier(oneshot::Sender<()>),
}

pub struct Committer {
    tx: mpsc::UnboundedSender<Job>,
    /// Events queued and not yet stored, at most `max_queued`.
    room: Arc<Semaphore>,
    max_queued: usize,
    live_failed: Failures,
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
        let live_failed = parts.live.failures();
        let max_queued = parts.max_queued.max(1);
        let arbiter = Arbiter::new();
        arbiter.spawn(async move {
            let mut next: Option<Job> = None;
            let mut last_store = Instant::now();
            let mut pending_gauge = PendingGauge::default();
            let consumer = parts.consumer.clone();
            let mut offsets =
                KafkaOffsets::new(Box::new(move |tpl| consumer.commit(tpl, CommitMode::Async)), parts.log.clone());
            loop {
                let job = match next.take() {
                    Some(job) => job,
                    None => tokio::select! {
                        job = rx.recv() => match job {
                            Some(job) => job,
                            None => break,
                        },
                        _ = offsets.due() => {
                            offsets.commit();
                            continue;
                        }
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
                        checkpoint(&parts, pending, &mut pending_gauge, &mut offsets).await;
                    }
                    Job::Live(changes, positions) => {
                        for c in &changes {
                            pending_gauge.record(&c.key, &c.tp, c.delta.pending);
                        }
                        parts.live.send(changes, positions, Vec::new()).await
                    }
                    Job::Forget(tps) => pending_gauge.forget(&tps),
                    Job::Barrier(done) => {
                        offsets.commit();
                        let _ = done.send(());
                    }
                }
            }
            offsets.commit();
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

    pub fn write_live(&self, changes: Vec<PartialChange>, positions: HashMap<Tp, Position>) {
        let _ = self.tx.send(Job::Live(changes, positions));
    }

    /// After the checkpoints queued so far: `tps` are no longer this
    /// instance's.
    pub fn forget(&self, tps: Vec<Tp>) {
        let _ = self.tx.send(Job::Forget(tps));
    }

    /// Waits until every checkpoint queued so far is stored (or fenced).
    pub async fn barrier(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Barrier(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// What did not reach Redis since the last call.
    pub fn take_live_failure(&self) -> LiveFailure {
        std::mem::take(&mut *self.live_failed.lock().expect("failures lock"))
    }
}

/// Stores one (merged) checkpoint; then Kafka's offsets and the live state.
async fn checkpoint(parts: &CommitterParts, pending: Pending, gauge: &mut PendingGauge, offsets: &mut KafkaOffsets) {
    let started = Instant::now();
    if !store(&parts.pg, &pending.checkpoint, &parts.log).await {
        return;
    }
    let stored = started.elapsed();
    METRICS.checkpoint_seconds.observe(stored.as_secs_f64());
    METRICS.checkpoint_events.observe(pending.events as f64);
    offsets.record(&pending.checkpoint);
    publish(&parts.live, pending.checkpoint, gauge).await;
    debug!(parts.log, "checkpoint"; "events" => pending.events, "batches" => pending.batches,
        "store_ms" => stored.as_millis(), "publish_ms" => (started.elapsed() - stored).as_millis());
}

/// Longest wait between two tries of a checkpoint while PostgreSQL fails.
const STORE_MAX_WAIT: Duration = Duration::from_secs(5);

/// Stores the checkpoint, retrying while PostgreSQL fails; false when the
/// partitions were taken over meanwhile (fenced: their revoke follows).
async fn store(pg: &PgStore, checkpoint: &Checkpoint, log: &Logger) -> bool {
    let stored = (|| pg.checkpoint(checkpoint))
        .retry(retry::policy(STORE_MAX_WAIT))
        .when(|e| !e.is::<Fenced>())
        .notify(|e, wait| {
            METRICS.checkpoint_failures.inc();
            error!(log, "checkpoint failed; retrying"; "error" => format!("{e:#}"), "retry_in_ms" => wait.as_millis());
        })
        .await;
    match stored {
        Ok(()) => true,
        Err(e) => {
            METRICS.checkpoint_failures.inc();
            warn!(log, "checkpoint fenced: partitions moved to another instance"; "error" => %e);
            false
        }
    }
}

/// Shortest time between two moves of Kafka's committed offsets. They only
/// show lag (the resume point is PostgreSQL's), and each move is a write to
/// the broker's offsets log: one a second instead of one per checkpoint
/// (ten a second at the design's rate) is most of an idle broker's work
/// for this consumer.
const OFFSETS_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// The consumer's asynchronous commit of offsets.
type CommitFn = Box<dyn Fn(&TopicPartitionList) -> KafkaResult<()> + Send + Sync>;

/// Kafka's committed offsets, following the stored checkpoints: never past
/// one, at most one interval behind it, and up to date at a barrier (the
/// reader waits for one at every assignment, revoke and stop, before its
/// partitions leave) and when the committer ends.
struct KafkaOffsets {
    commit: CommitFn,
    log: Logger,
    /// Stored and not yet committed to Kafka: each partition's next offset.
    waiting: HashMap<Tp, i64>,
    last_commit: Option<tokio::time::Instant>,
}

impl KafkaOffsets {
    fn new(commit: CommitFn, log: Logger) -> KafkaOffsets {
        KafkaOffsets { commit, log, waiting: HashMap::new(), last_commit: None }
    }

    fn next_due(&self) -> Option<tokio::time::Instant> {
        self.last_commit.map(|last| last + OFFSETS_COMMIT_INTERVAL)
    }

    /// A stored checkpoint's offsets: committed now if the last commit is
    /// an interval old, else at [`KafkaOffsets::due`].
    fn record(&mut self, checkpoint: &Checkpoint) {
        for p in &checkpoint.progress {
            self.waiting.insert(p.tp.clone(), p.next_offset);
        }
        if self.next_due().is_none_or(|due| due <= tokio::time::Instant::now()) {
            self.commit();
        }
    }

    /// Resolves when offsets wait and their interval has passed; never
    /// while none wait.
    async fn due(&self) {
        if self.waiting.is_empty() {
            return std::future::pending().await;
        }
        if let Some(due) = self.next_due() {
            tokio::time::sleep_until(due).await;
        }
    }

    /// Commits what waits, if anything (asynchronously: a failure is only
    /// logged, and the partition's next commit moves it on).
    fn commit(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for (tp, next) in self.waiting.drain() {
            let _ = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(next));
        }
        self.last_commit = Some(tokio::time::Instant::now());
        if let Err(e) = (self.commit)(&tpl) {
            warn!(self.log, "cannot commit offsets to Kafka"; "error" => %e);
        }
    }
}

/// After the commit: live state to Redis, and every changed key announced
/// (its swaps went out before the checkpoint, see `feed`).
async fn publish(live: &LiveWriter, checkpoint: Checkpoint, gauge: &mut PendingGauge) {
    let mut changed: BTreeSet<AggKey> = BTreeSet::new();
    let positions: HashMap<Tp, Position> = checkpoint
        .progress
        .iter()
        .map(|p| (p.tp.clone(), Position { epoch: p.epoch, offset: p.next_offset }))
        .collect();
    for change in &checkpoint.partials {
        gauge.record(&change.key, &change.tp, change.delta.pending);
        changed.insert(change.key.clone());
    }
    // Every partial of a checkpoint comes from one of its partitions.
    live.send(checkpoint.partials, positions, changed.into_iter().collect()).await;
}

/// `swapstream_pending_swaps` per key: the sum over this instance's
/// partitions, each of which holds its own pending count of the key (a
/// pair's swaps come from both tokens' topics, a token's from every
/// partition of its topic).
#[derive(Default)]
struct PendingGauge {
    by_key: HashMap<AggKey, HashMap<Tp, i64>>,
}

impl PendingGauge {
    fn record(&mut self, key: &AggKey, tp: &Tp, pending: i64) {
        let parts = self.by_key.entry(key.clone()).or_default();
        parts.insert(tp.clone(), pending);
        Self::show(key, parts);
    }

    fn forget(&mut self, tps: &[Tp]) {
        self.by_key.retain(|key, parts| {
            let before = parts.len();
            parts.retain(|tp, _| !tps.contains(tp));
            if parts.len() != before {
                Self::show(key, parts);
            }
            !parts.is_empty()
        });
    }

    fn show(key: &AggKey, parts: &HashMap<Tp, i64>) {
        METRICS.pending.with_label_values(&[&key.to_string()]).set(parts.values().sum());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(partition: i32) -> Tp {
        Tp { topic: "swaps.ETH".into(), partition }
    }

    /// Offsets that `commit` committed: one map per commit.
    type Commits = Arc<std::sync::Mutex<Vec<Vec<(String, i32, i64)>>>>;

    fn recording() -> (KafkaOffsets, Commits) {
        let commits = Commits::default();
        let seen = commits.clone();
        let commit = Box::new(move |tpl: &TopicPartitionList| {
            let mut offsets: Vec<_> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition(), e.offset().to_raw().unwrap_or(-1)))
                .collect();
            offsets.sort();
            seen.lock().unwrap().push(offsets);
            Ok(())
        });
        (KafkaOffsets::new(commit, slog::Logger::root(slog::Discard, slog::o!())), commits)
    }

    fn stored(offsets: &[(i32, i64)]) -> Checkpoint {
        let mut checkpoint = Checkpoint::default();
        for &(partition, next_offset) in offsets {
            checkpoint.progress.push(crate::storage::postgres::Progress {
                tp: tp(partition),
                next_offset,
                watermark: None,
                epoch: 1,
                seen: Vec::new(),
                horizon: None,
            });
        }
        checkpoint
    }

    #[tokio::test(start_paused = true)]
    async fn kafka_offsets_move_at_most_once_an_interval_and_the_last_ones_are_never_left_behind() {
        let (mut offsets, commits) = recording();
        let topic = || "swaps.ETH".to_owned();
        // The first checkpoint's offsets go at once.
        offsets.record(&stored(&[(0, 10)]));
        assert_eq!(*commits.lock().unwrap(), vec![vec![(topic(), 0, 10)]]);
        // Within the interval they wait, the latest offset of each partition.
        offsets.record(&stored(&[(0, 12), (1, 5)]));
        offsets.record(&stored(&[(0, 15)]));
        assert_eq!(commits.lock().unwrap().len(), 1);
        let started = tokio::time::Instant::now();
        offsets.due().await;
        assert_eq!(started.elapsed(), OFFSETS_COMMIT_INTERVAL);
        offsets.commit();
        assert_eq!(commits.lock().unwrap()[1], vec![(topic(), 0, 15), (topic(), 1, 5)]);
        // Nothing waits: never due, and a commit commits nothing.
        offsets.commit();
        assert_eq!(commits.lock().unwrap().len(), 2);
        let never = tokio::time::timeout(OFFSETS_COMMIT_INTERVAL * 10, offsets.due()).await;
        assert!(never.is_err(), "due with nothing waiting");
        // An interval after the last commit, a checkpoint's offsets go at once.
        offsets.record(&stored(&[(2, 7)]));
        assert_eq!(commits.lock().unwrap()[2], vec![(topic(), 2, 7)]);
    }

    #[test]
    fn the_pending_gauge_sums_partitions_and_drops_the_ones_that_leave() {
        let mut gauge = PendingGauge::default();
        let key = AggKey::parse("token:GAUGETEST").unwrap();
        let shown = || METRICS.pending.with_label_values(&[&key.to_string()]).get();
        gauge.record(&key, &tp(0), 3);
        gauge.record(&key, &tp(1), 4);
        assert_eq!(shown(), 7);
        gauge.record(&key, &tp(0), 1);
        assert_eq!(shown(), 5);
        gauge.forget(&[tp(1)]);
        assert_eq!(shown(), 1);
        gauge.forget(&[tp(0)]);
        assert_eq!(shown(), 0);
        assert!(gauge.by_key.is_empty());
    }
}
