//! The Kafka reader actor: turns batches of Kafka messages into aggregate
//! changes with exactly-once effect.
//!
//! Per batch: decide what each event means (per-partition dedup, lifecycle,
//! lateness), hand the new swap states to the swap feed (WebSocket `swap`
//! frames, see `feed`), route confirmed swaps and pending-gauge changes to
//! the aggregator actors (one message per key per batch, awaited: bounded
//! in-flight), make the dead letters durable, then queue partials, dedup
//! ids and offsets for one PostgreSQL transaction (see `committer`). Only
//! after it commits: live state to Redis, changed keys announced, Kafka's
//! committed offset moved (for lag monitoring). A crash anywhere before the
//! commit replays the batch from the checkpoint, decided the same way again;
//! after it, nothing is replayed.

mod committer;
mod dlq;
mod feed;
mod live;
mod plan;

pub mod poll;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures::future::join_all;
use rdkafka::consumer::BaseConsumer;
use slog::{error, info, warn, Logger};
use tokio::sync::oneshot;

pub use dlq::{DeadLetter, Dlq};
pub use poll::{Control, Input, ReaderContext};

use live::LiveFailure;
use plan::{Plan, Skipped, Slot};

use crate::actors::aggregator::{Aggregator, Aggregators, ApplyBatch, Forget, Prune, Restore, Snapshot};
use crate::config::ConsumerSettings;
use crate::domain::partial::{AggKey, Partial};
use crate::metrics::METRICS;
use crate::storage::postgres::{Checkpoint, PgStore, Progress};
use crate::storage::redis::{Position, RedisStore};
use crate::stream::{PartialChange, PartitionState, Tp};

/// Everything the reader needs while a batch is in flight (moved into the
/// batch's future and back).
pub struct Core {
    log: Logger,
    settings: ConsumerSettings,
    dlq: Dlq,
    pg: PgStore,
    redis: RedisStore,
    aggregators: Aggregators,
    control: std_mpsc::Sender<Control>,
    committer: committer::Committer,
    feed: feed::SwapFeed,
    generation: u64,
    rewinding: bool,
    slots: BTreeMap<Tp, Slot>,
    /// The Redis live-state generation this instance last rebuilt for.
    redis_generation: Option<String>,
    redis_checked: Option<Instant>,
    last_prune: Instant,
    /// The PostgreSQL prune of recent swaps, while it runs.
    pruning: Option<tokio::task::JoinHandle<()>>,
}

pub struct CoreParts {
    pub log: Logger,
    pub settings: ConsumerSettings,
    pub consumer: Arc<BaseConsumer<ReaderContext>>,
    pub dlq: Dlq,
    pub pg: PgStore,
    pub redis: RedisStore,
    /// The swap feed's: a connection of its own, so that swap frames do
    /// not wait behind the live writer's pipelines.
    pub feed_redis: RedisStore,
    pub aggregators: Aggregators,
    pub control: std_mpsc::Sender<Control>,
}

pub struct KafkaReader {
    core: Option<Core>,
    input: Option<tokio::sync::mpsc::Receiver<Input>>,
    stopped: Option<oneshot::Sender<()>>,
}

impl KafkaReader {
    pub fn new(parts: CoreParts, input: tokio::sync::mpsc::Receiver<Input>, stopped: oneshot::Sender<()>) -> Self {
        let committer = committer::Committer::start(committer::CommitterParts {
            pg: parts.pg.clone(),
            consumer: parts.consumer.clone(),
            live: live::LiveWriter::start(parts.redis.clone(), parts.log.clone()),
            log: parts.log.clone(),
            // As many as two full batches, one stored and one waiting.
            max_queued: parts.settings.batch_max_events.saturating_mul(2),
            interval: parts.settings.checkpoint_interval,
            full_batch: parts.settings.batch_max_events,
        });
        let feed = feed::SwapFeed::start(parts.feed_redis, parts.log.clone());
        let core = Core {
            log: parts.log,
            settings: parts.settings,
            dlq: parts.dlq,
            pg: parts.pg,
            redis: parts.redis,
            aggregators: parts.aggregators,
            control: parts.control,
            committer,
            feed,
            generation: 0,
            rewinding: false,
            slots: BTreeMap::new(),
            redis_generation: None,
            redis_checked: None,
            last_prune: Instant::now(),
            pruning: None,
        };
        KafkaReader { core: Some(core), input: Some(input), stopped: Some(stopped) }
    }
}

impl Actor for KafkaReader {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let input = self.input.take().expect("started once");
        ctx.add_stream(tokio_stream_from(input));
        ctx.run_interval(Duration::from_secs(2), |_, ctx| ctx.notify(Tick));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.send(());
        }
    }
}

fn tokio_stream_from(mut rx: tokio::sync::mpsc::Receiver<Input>) -> impl futures::Stream<Item = Input> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

impl StreamHandler<Input> for KafkaReader {
    fn handle(&mut self, input: Input, ctx: &mut Self::Context) {
        let stop_after = matches!(input, Input::Stopped);
        self.run_exclusive(ctx, move |mut core| async move {
            core.handle(input).await;
            core
        });
        if stop_after {
            ctx.stop();
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl KafkaReader {
    /// Runs `work` on the core with the actor's mailbox and stream paused,
    /// so inputs are handled one at a time, in order.
    fn run_exclusive<F, Fut>(&mut self, ctx: &mut Context<Self>, work: F)
    where
        F: FnOnce(Core) -> Fut + 'static,
        Fut: std::future::Future<Output = Core> + 'static,
    {
        let Some(core) = self.core.take() else { return };
        ctx.wait(work(core).into_actor(self).map(|core, act, _| act.core = Some(core)));
    }
}

/// How often expired candles leave the actors and recent swaps beyond the
/// kept count leave PostgreSQL: often enough that each prune is small.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Periodic housekeeping: Redis readiness, candle pruning, lag.
#[derive(Message)]
#[rtype(result = "()")]
struct Tick;

impl Handler<Tick> for KafkaReader {
    type Result = ();
    fn handle(&mut self, _: Tick, ctx: &mut Self::Context) {
        self.run_exclusive(ctx, |mut core| async move {
            core.housekeeping().await;
            core
        });
    }
}

impl Core {
    async fn handle(&mut self, input: Input) {
        match input {
            Input::Assigned { generation, claimed } => {
                self.committer.barrier().await;
                self.generation = generation;
                self.rewinding = false;
                let all: Vec<Tp> = self.slots.keys().cloned().collect();
                self.forget(all).await;
                let mut restores = Vec::new();
                let mut writes: Vec<(AggKey, Tp, Partial)> = Vec::new();
                let partitions: Vec<Tp> = claimed.iter().map(|c| c.tp.clone()).collect();
                for c in claimed {
                    let mut state = PartitionState::new(self.settings.lateness, self.settings.max_future);
                    state.restore(c.watermark, c.seen);
                    self.slots.insert(c.tp.clone(), Slot { state, epoch: c.epoch, next_offset: c.next_offset });
                    for (key, partial) in c.partials {
                        writes.push((key.clone(), c.tp.clone(), partial.clone()));
                        let addr = self.aggregators.get_or_start(&key);
                        restores.push(addr.send(Restore { tp: c.tp.clone(), partial }));
                    }
                }
                for result in join_all(restores).await {
                    if let Err(e) = result {
                        error!(self.log, "cannot restore an aggregator"; "error" => %e);
                    }
                }
                self.aggregators.set_owned(partitions);
                self.write_full(&writes).await;
            }
            Input::Batch { generation, records, ticket } => {
                if generation != self.generation || self.rewinding {
                    return;
                }
                self.process(records, ticket).await;
            }
            Input::Revoked { tps, done } => {
                // What was read from these partitions is stored before they go.
                self.committer.barrier().await;
                self.forget(tps).await;
                let _ = done.send(());
            }
            Input::Stopped => {
                self.committer.barrier().await;
                info!(self.log, "reader stopped");
                self.dlq.flush(Duration::from_secs(5));
            }
        }
    }

    async fn forget(&mut self, tps: Vec<Tp>) {
        if tps.is_empty() {
            return;
        }
        for tp in &tps {
            self.slots.remove(tp);
        }
        self.aggregators.remove_owned(&tps);
        let sends = self.aggregators.all().into_iter().map(|(_, addr)| addr.send(Forget(tps.clone())));
        join_all(sends).await;
        self.committer.forget(tps);
    }

    fn rewind(&mut self, why: &str) {
        warn!(self.log, "rewinding every partition to its checkpoint"; "why" => why);
        self.rewinding = true;
        // Until the partials are reloaded the actors' answers are incomplete.
        let all: Vec<Tp> = self.slots.keys().cloned().collect();
        self.aggregators.remove_owned(&all);
        let _ = self.control.send(Control::Rewind);
    }

    async fn process(&mut self, records: Vec<poll::Record>, ticket: poll::BatchTicket) {
        let started = Instant::now();
        let count = records.len();
        let Plan { items, changes, letters, touched, skipped, outcomes } =
            plan::plan(records, &mut self.slots, Utc::now());
        for Skipped { tp, offset, checkpoint } in skipped {
            // Already counted before the checkpoint, or the topic was
            // recreated below it: never count twice, but say so.
            METRICS.offset_regressions.inc();
            warn!(self.log, "message below the checkpointed offset skipped"; "topic" => &*tp.topic,
                "partition" => tp.partition, "offset" => offset, "checkpoint" => checkpoint);
        }
        for (label, n) in outcomes {
            METRICS.outcomes.with_label_values(&[label]).inc_by(n);
        }
        let deliveries: Vec<_> = letters
            .iter()
            .map(|letter| (letter.tp.clone(), letter.offset, self.dlq.send(letter.as_dead_letter(), &self.log)))
            .collect();
        if touched.is_empty() {
            return;
        }

        // The swap states go out now, ahead of their checkpoint.
        self.feed.announce(changes.into_iter().collect());
        let routed = started.elapsed();
        // Aggregate: one message per key, all awaited.
        let keys: Vec<AggKey> = items.keys().cloned().collect();
        let sends = items.into_iter().map(|(key, per_tp)| {
            let addr = self.aggregators.get_or_start(&key);
            addr.send(ApplyBatch(per_tp.into_values().collect()))
        });
        let mut partials: Vec<PartialChange> = Vec::new();
        for (key, result) in keys.into_iter().zip(join_all(sends).await) {
            match result {
                Ok(Ok(changes)) => partials.extend(changes),
                Ok(Err(failed)) => return self.rewind(&failed.to_string()),
                Err(mailbox) => return self.rewind(&format!("aggregator {key} unreachable: {mailbox}")),
            }
        }

        // Dead letters must be durable before the offsets move past them.
        for (tp, offset, delivery) in deliveries {
            let failure = match delivery {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(_) => Some("the producer dropped the message".to_owned()),
                },
                Err(e) => Some(e),
            };
            if let Some(e) = failure {
                warn!(self.log, "dead letter not delivered"; "topic" => &*tp.topic, "partition" => tp.partition,
                    "offset" => offset, "error" => e);
                return self.rewind("a dead letter could not be delivered");
            }
        }

        let progress = touched
            .iter()
            .map(|tp| {
                let slot = self.slots.get_mut(tp).expect("touched partitions are owned");
                Progress {
                    tp: tp.clone(),
                    next_offset: slot.next_offset.unwrap_or(0),
                    watermark: slot.state.watermark(),
                    epoch: slot.epoch,
                    seen: slot.state.take_changes(),
                    horizon: slot.state.horizon(),
                }
            })
            .collect();
        let aggregated = started.elapsed();
        self.committer.submit(Checkpoint { progress, partials }, count).await;
        // The reader is free for the next batch: the polling thread may send it at once.
        drop(ticket);
        slog::debug!(self.log, "batch"; "events" => count, "route_ms" => routed.as_millis(),
            "aggregate_ms" => (aggregated - routed).as_millis(),
            "wait_for_checkpoint_room_ms" => (started.elapsed() - aggregated).as_millis());
    }

    /// Writes the `keys` this instance holds in full, every partition of
    /// each: their last writes failed while Redis kept the rest.
    async fn rewrite(&mut self, keys: BTreeSet<AggKey>) {
        let held: Vec<(AggKey, Addr<Aggregator>)> =
            keys.into_iter().filter_map(|key| self.aggregators.get(&key).map(|a| (key, a))).collect();
        info!(self.log, "writing keys whose live writes failed again"; "keys" => held.len());
        METRICS.redis_rewritten_keys.inc_by(held.len() as u64);
        self.write_in_full(held).await;
    }

    /// Writes every partition's partial of these aggregators' keys in full,
    /// as the aggregators hold them now.
    async fn write_in_full(&mut self, aggregators: Vec<(AggKey, Addr<Aggregator>)>) {
        let snapshots =
            join_all(aggregators.into_iter().map(|(key, a)| async move { (key, a.send(Snapshot).await) })).await;
        let partials: Vec<(AggKey, Tp, Partial)> = snapshots
            .into_iter()
            .flat_map(|(key, snapshot)| {
                snapshot.unwrap_or_default().into_iter().map(move |(tp, partial)| (key.clone(), tp, partial))
            })
            .collect();
        self.write_full(&partials).await;
    }

    /// Writes partials in full (after assign or for a rebuild).
    async fn write_full(&mut self, partials: &[(AggKey, Tp, Partial)]) {
        let changes = partials
            .iter()
            .map(|(key, tp, partial)| PartialChange { key: key.clone(), tp: tp.clone(), delta: partial.full_delta() })
            .collect();
        let positions = self
            .slots
            .iter()
            .map(|(tp, slot)| (tp.clone(), Position { epoch: slot.epoch, offset: slot.next_offset.unwrap_or(0) }))
            .collect();
        self.committer.write_live(changes, positions);
    }

    async fn housekeeping(&mut self) {
        if self.last_prune.elapsed() > PRUNE_EVERY {
            self.last_prune = Instant::now();
            let now = Utc::now();
            join_all(self.aggregators.all().into_iter().map(|(_, a)| a.send(Prune(now)))).await;
            // On a task of its own: batches go on while PostgreSQL deletes.
            // Each instance prunes the partitions it owns, so together they
            // prune every partition once without a lock.
            if self.pruning.as_ref().is_none_or(|p| p.is_finished()) && !self.slots.is_empty() {
                let (pg, log) = (self.pg.clone(), self.log.clone());
                let owned: Vec<Tp> = self.slots.keys().cloned().collect();
                self.pruning = Some(actix::spawn(async move {
                    if let Err(e) = pg.prune_recent(&owned, now).await {
                        warn!(log, "cannot prune recent swaps"; "error" => format!("{e:#}"));
                    }
                    if let Err(e) = pg.prune_seconds(&owned, now).await {
                        warn!(log, "cannot prune 1s candles"; "error" => format!("{e:#}"));
                    }
                }));
            }
            // Months roll over while the service runs: keep partitions ahead.
            if let Err(e) = self.pg.ensure_candle_partitions(now, &self.log).await {
                warn!(self.log, "cannot create candle partitions"; "error" => format!("{e:#}"));
            }
        }
        if self.redis_checked.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            return;
        }
        self.redis_checked = Some(Instant::now());
        let failure = self.committer.take_live_failure();
        if failure == LiveFailure::All {
            self.redis_generation = None;
        }
        let generation = match self.redis.ready_generation().await {
            Ok(generation) => generation,
            Err(e) => {
                // Unreachable: whatever failed, everything is written again.
                METRICS.redis_errors.inc();
                warn!(self.log, "Redis unreachable"; "error" => %e);
                self.redis_generation = None;
                return;
            }
        };
        if self.redis_generation.as_deref() == Some(generation.as_str()) {
            // The same Redis state: only the keys whose writes failed.
            if let LiveFailure::Keys(keys) = failure {
                self.rewrite(keys).await;
            }
            return;
        }
        info!(self.log, "rebuilding the live state in Redis"; "generation" => &generation);
        METRICS.redis_rebuilds.inc();
        let aggregators = self.aggregators.all();
        let keys: Vec<AggKey> = aggregators.iter().map(|(key, _)| key.clone()).collect();
        self.redis_generation = Some(generation);
        self.write_in_full(aggregators).await;
        if let Err(e) = self.redis.drop_layout2(&keys).await {
            warn!(self.log, "cannot delete the recent swap lists of the old layout"; "error" => format!("{e:#}"));
        }
    }
}
