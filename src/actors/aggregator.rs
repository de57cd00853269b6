//! One aggregator actor per token and per pair. It holds that key's partials,
//! one per Kafka partition this instance owns, applies batches to them, and
//! answers queries by merging them.
//!
//! Supervised: a panic while applying a batch stops the actor, its
//! supervisor restarts it empty, and the reader rewinds every partition to
//! the last checkpoint (reloading all partials), so no half-applied batch
//! survives. The other aggregators carry on.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, RwLock};

use actix::prelude::*;
use chrono::{DateTime, Utc};

use crate::domain::partial::{AggKey, Merged, Partial, Select};
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::read::{LocalAnswer, LocalState};
use crate::stream::{PartialChange, Tp};

pub struct Aggregator {
    key: AggKey,
    partials: HashMap<Tp, Partial>,
    recent_cap: usize,
    /// Whether every counted swap is stored (a swap history), not only the
    /// recent ones.
    keep_history: bool,
    /// Fault injection for tests: panic on the next batch.
    poisoned: bool,
}

impl Aggregator {
    pub fn new(key: AggKey, recent_cap: usize) -> Aggregator {
        Aggregator { key, partials: HashMap::new(), recent_cap, keep_history: false, poisoned: false }
    }

    /// Hands every counted swap on for storing ([`PartialDelta::history`]).
    ///
    /// [`PartialDelta::history`]: crate::domain::partial::PartialDelta::history
    pub fn keeping_history(mut self, keep: bool) -> Aggregator {
        self.keep_history = keep;
        self
    }
}

impl Aggregator {
    /// Whether `swap` is among the `recent_cap` newest of all this key's
    /// partials: fewer than `recent_cap` of them are newer. Each partial's
    /// list is sorted newest first, so that is a binary search per partial,
    /// and a single comparison for the usual case of a swap newer than all
    /// a partial holds (a key traded over many topics has many partials).
    fn among_newest(&self, swap: &SwapEvent) -> bool {
        let order = swap.order_key();
        let mut newer = 0;
        for partial in self.partials.values() {
            if partial.recent.first().is_none_or(|newest| newest.order_key() <= order) {
                continue;
            }
            newer += partial.recent.partition_point(|r| r.order_key() > order);
            if newer >= self.recent_cap {
                return false;
            }
        }
        true
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;
}

impl Supervised for Aggregator {
    fn restarting(&mut self, _: &mut Self::Context) {
        METRICS.aggregator_restarts.inc();
        self.partials.clear();
        self.poisoned = false;
    }
}

/// One partition's share of a batch for one key.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub tp: Tp,
    /// Newly confirmed swaps.
    pub swaps: Vec<Arc<SwapEvent>>,
    /// Change of the pending gauge.
    pub pending_delta: i64,
}

/// The aggregator panicked and was restarted empty.
#[derive(Debug, thiserror::Error)]
#[error("aggregator {0} failed and was restarted")]
pub struct AggregatorFailed(pub String);

/// Applies a batch; answers with the changed partials as absolute values.
#[derive(Message)]
#[rtype(result = "Result<Vec<PartialChange>, AggregatorFailed>")]
pub struct ApplyBatch(pub Vec<BatchItem>);

impl Handler<ApplyBatch> for Aggregator {
    type Result = Result<Vec<PartialChange>, AggregatorFailed>;

    fn handle(&mut self, batch: ApplyBatch, ctx: &mut Self::Context) -> Self::Result {
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| {
            assert!(!self.poisoned, "fault injected into aggregator {}", self.key);
            let mut changes = Vec::new();
            for item in batch.0 {
                let partial = self.partials.entry(item.tp.clone()).or_default();
                let mut history = Vec::new();
                for swap in &item.swaps {
                    if partial.apply(&self.key, swap, self.recent_cap) && self.keep_history {
                        history.push(swap.clone());
                    }
                }
                partial.add_pending(item.pending_delta);
                if let Some(mut delta) = partial.take_delta() {
                    delta.history = history;
                    changes.push(PartialChange { key: self.key.clone(), tp: item.tp, delta });
                }
            }
            // Only swaps among the newest `recent_cap` of all this key's
            // partials need storing: newer swaps only ever push others out.
            for change in &mut changes {
                change.delta.new_recent.retain(|s| self.among_newest(s));
            }
            changes
        }));
        applied.map_err(|_| {
            ctx.stop();
            AggregatorFailed(self.key.to_string())
        })
    }
}

/// Replaces a partition's partial with its checkpointed state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restore {
    pub tp: Tp,
    pub partial: Partial,
}

impl Handler<Restore> for Aggregator {
    type Result = ();
    fn handle(&mut self, msg: Restore, _: &mut Self::Context) {
        self.partials.insert(msg.tp, msg.partial);
    }
}

/// Drops the partials of partitions this instance no longer owns.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Forget(pub Vec<Tp>);

impl Handler<Forget> for Aggregator {
    type Result = ();
    fn handle(&mut self, msg: Forget, _: &mut Self::Context) {
        for tp in msg.0 {
            self.partials.remove(&tp);
        }
    }
}

/// Prunes candles past their memory retention.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Prune(pub DateTime<Utc>);

impl Handler<Prune> for Aggregator {
    type Result = ();
    fn handle(&mut self, msg: Prune, _: &mut Self::Context) {
        for partial in self.partials.values_mut() {
            partial.prune(msg.0);
        }
    }
}

/// Every partial in full, for rebuilding Redis.
#[derive(Message)]
#[rtype(result = "Vec<(Tp, Partial)>")]
pub struct Snapshot;

impl Handler<Snapshot> for Aggregator {
    type Result = MessageResult<Snapshot>;
    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.partials.iter().map(|(tp, p)| (tp.clone(), p.clone())).collect())
    }
}

/// The merged view of this key's partials, with the candles `select`
/// names, and up to `recent` recent swaps.
#[derive(Message)]
#[rtype(result = "(Merged, Vec<Arc<SwapEvent>>)")]
pub struct Query {
    pub select: Select,
    pub recent: usize,
}

impl Handler<Query> for Aggregator {
    type Result = MessageResult<Query>;
    fn handle(&mut self, query: Query, _: &mut Self::Context) -> Self::Result {
        let mut merged = Merged::default();
        let mut recent: Vec<Arc<SwapEvent>> = Vec::new();
        for partial in self.partials.values() {
            merged.add_selected(partial, &query.select);
            recent.extend(partial.recent.iter().take(query.recent).cloned());
        }
        recent.sort_by_key(|s| std::cmp::Reverse(s.order_key()));
        recent.truncate(query.recent);
        MessageResult((merged, recent))
    }
}

/// Fault injection for tests: the next batch panics.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poison;

impl Handler<Poison> for Aggregator {
    type Result = ();
    fn handle(&mut self, _: Poison, _: &mut Self::Context) {
        self.poisoned = true;
    }
}

/// The aggregators of this process, started on first sight, spread over a
/// few arbiters. Shared by the reader (which routes to them) and the HTTP
/// handlers (which query them).
#[derive(Clone)]
pub struct Aggregators {
    inner: Arc<RwLock<BTreeMap<AggKey, Addr<Aggregator>>>>,
    arbiters: Arc<Vec<ArbiterHandle>>,
    recent_cap: usize,
    keep_history: bool,
    owned: Arc<RwLock<Owned>>,
}

/// The partitions whose partials the actors hold, and a generation that
/// changes with every change of that set.
#[derive(Debug, Default)]
struct Owned {
    generation: u64,
    partitions: BTreeSet<Tp>,
}

impl Aggregators {
    pub fn new(arbiters: Vec<ArbiterHandle>, recent_cap: usize) -> Aggregators {
        Aggregators {
            inner: Arc::default(),
            arbiters: Arc::new(arbiters),
            recent_cap,
            keep_history: false,
            owned: Arc::default(),
        }
    }

    /// Every aggregator started from now on hands every counted swap on for
    /// storing (see [`Aggregator::keeping_history`]).
    pub fn keeping_history(mut self, keep: bool) -> Aggregators {
        self.keep_history = keep;
        self
    }

    /// Records that the actors now hold these partitions' partials.
    pub fn set_owned(&self, partitions: impl IntoIterator<Item = Tp>) {
        let mut owned = self.owned.write().expect("owned lock");
        owned.partitions = partitions.into_iter().collect();
        owned.generation += 1;
    }

    /// Records that these partitions' partials are gone.
    pub fn remove_owned(&self, partitions: &[Tp]) {
        let mut owned = self.owned.write().expect("owned lock");
        for tp in partitions {
            owned.partitions.remove(tp);
        }
        owned.generation += 1;
    }

    /// The generation of the set of partitions held.
    pub fn owned_generation(&self) -> u64 {
        self.owned.read().expect("owned lock").generation
    }

    /// At the current generation: whether the actors hold partials for
    /// every one of `partitions` (never true while they hold none).
    pub fn holds_all(&self, partitions: &BTreeSet<Tp>) -> (u64, bool) {
        let owned = self.owned.read().expect("owned lock");
        (owned.generation, !owned.partitions.is_empty() && partitions.is_subset(&owned.partitions))
    }

    pub fn get(&self, key: &AggKey) -> Option<Addr<Aggregator>> {
        self.inner.read().expect("aggregators lock").get(key).cloned()
    }

    /// The aggregator of `key`, started if new.
    pub fn get_or_start(&self, key: &AggKey) -> Addr<Aggregator> {
        if let Some(addr) = self.get(key) {
            return addr;
        }
        let mut map = self.inner.write().expect("aggregators lock");
        let index = map.len() % self.arbiters.len().max(1);
        let (recent_cap, keep_history) = (self.recent_cap, self.keep_history);
        map.entry(key.clone())
            .or_insert_with(|| {
                let key = key.clone();
                let make =
                    move |_: &mut Context<Aggregator>| Aggregator::new(key, recent_cap).keeping_history(keep_history);
                match self.arbiters.get(index) {
                    Some(arbiter) => Supervisor::start_in_arbiter(arbiter, make),
                    None => Supervisor::start(make),
                }
            })
            .clone()
    }

    pub fn all(&self) -> Vec<(AggKey, Addr<Aggregator>)> {
        self.inner.read().expect("aggregators lock").iter().map(|(k, a)| (k.clone(), a.clone())).collect()
    }
}

/// The read model's view of this process' aggregators.
impl LocalState for Aggregators {
    fn owned_generation(&self) -> u64 {
        Aggregators::owned_generation(self)
    }

    fn holds_all(&self, claimed: &BTreeSet<Tp>) -> (u64, bool) {
        Aggregators::holds_all(self, claimed)
    }

    fn keys(&self) -> Vec<AggKey> {
        self.all().into_iter().map(|(key, _)| key).collect()
    }

    fn query(&self, key: &AggKey, select: Select, recent: usize) -> Option<LocalAnswer> {
        let addr = self.get(key)?;
        let query = Query { select, recent };
        Some(Box::pin(async move { addr.send(query).await.map_err(|e| e.to_string()) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::swap::tests::minimal_raw;
    use crate::domain::{RawSwap, RawTime};

    fn swap(seed: u32, seconds: i64) -> Arc<SwapEvent> {
        let raw = RawSwap {
            tx_hash: Some(format!("0x{seed:064x}")),
            timestamp: Some(RawTime::Unix { seconds: 1_764_057_600 + seconds, nanos: 0 }),
            ..minimal_raw()
        };
        Arc::new(raw.validate().unwrap())
    }

    #[test]
    fn a_swap_is_among_the_newest_when_fewer_than_the_cap_are_newer_over_all_partials() {
        let key = AggKey::Token(crate::domain::TokenSymbol::parse("ETH").unwrap());
        let mut aggregator = Aggregator::new(key.clone(), 4);
        // Event times 0..12 s spread over three partitions.
        let swaps: Vec<Arc<SwapEvent>> = (0..12).map(|i| swap(i, i64::from(i * 7 % 12))).collect();
        for (i, s) in swaps.iter().enumerate() {
            let tp = Tp::new("swaps.ETH", (i % 3) as i32);
            aggregator.partials.entry(tp).or_default().apply(&key, s, 4);
        }
        // The four newest over all partitions are at 8..11 s.
        for s in &swaps {
            let seconds = s.timestamp.timestamp() - 1_764_057_600;
            assert_eq!(aggregator.among_newest(s), seconds >= 8, "swap at {seconds} s");
        }
        // With fewer swaps than the cap, every one is.
        let mut few = Aggregator::new(key.clone(), 100);
        few.partials.entry(Tp::new("swaps.ETH", 0)).or_default().apply(&key, &swaps[0], 100);
        assert!(few.among_newest(&swaps[0]));
    }
}
