//! What one batch means, decided before anything is sent anywhere: for each
//! record, in order per partition, whether it counts (the partition's dedup
//! and lifecycle state, see `stream::partition`), which keys it changes and
//! how, what goes to the dead-letter topic, and which partitions move on.
//! Plain data in and out: no actor, no client, no I/O, so a replayed batch
//! is decided the same way again and the rules are tested on their own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::dlq::DeadLetter;
use super::poll::Record;
use crate::actors::aggregator::BatchItem;
use crate::codec;
use crate::domain::partial::AggKey;
use crate::domain::{PairKey, SwapEvent};
use crate::stream::{Outcome, PartitionState, Tp};

/// What the reader keeps of a partition it owns.
pub struct Slot {
    pub state: PartitionState,
    /// The ownership epoch of this instance's claim (fencing).
    pub epoch: i64,
    /// The next offset to count; lower ones were counted before.
    pub next_offset: Option<i64>,
}

/// A message for the dead-letter topic: where it came from, why, its bytes.
#[derive(Debug)]
pub struct Letter {
    pub tp: Tp,
    pub offset: i64,
    pub reason: &'static str,
    pub error: String,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
}

impl Letter {
    pub fn as_dead_letter(&self) -> DeadLetter<'_> {
        DeadLetter {
            source: &self.tp,
            offset: self.offset,
            reason: self.reason,
            error: self.error.clone(),
            key: self.key.as_deref(),
            payload: &self.payload,
            content_type: self.content_type.as_deref(),
        }
    }
}

/// A swap state as decided, with the record it came from.
#[derive(Debug, Clone)]
pub struct Decided {
    pub swap: Arc<SwapEvent>,
    pub tp: Tp,
    pub offset: i64,
}

/// A record below its partition's checkpointed offset: never counted twice.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    pub tp: Tp,
    pub offset: i64,
    pub checkpoint: Option<i64>,
}

/// The decisions of one batch.
#[derive(Default)]
pub struct Plan {
    /// Per key, per partition: the newly confirmed swaps and the change of
    /// the pending gauge, for the key's aggregator.
    pub items: HashMap<AggKey, BTreeMap<Tp, BatchItem>>,
    /// Per key: the new swap states (pending, confirmed), for the swap feed.
    pub changes: HashMap<AggKey, Vec<Decided>>,
    pub letters: Vec<Letter>,
    /// Partitions whose offset moved (a checkpoint follows for each).
    pub touched: BTreeSet<Tp>,
    pub skipped: Vec<Skipped>,
    /// Records per outcome, by the label of `swapstream_events_total`.
    pub outcomes: BTreeMap<&'static str, u64>,
}

/// Decides `records` against the partitions' state in `slots`, advancing
/// it (offsets, dedup, watermark); records of partitions not in `slots`
/// (revoked meanwhile) are left alone. Swaps pending for longer than the
/// lateness bound in a touched partition expire from its pending gauge.
pub fn plan(records: Vec<Record>, slots: &mut BTreeMap<Tp, Slot>, now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    for record in records {
        let Some(slot) = slots.get_mut(&record.tp) else { continue };
        if slot.next_offset.is_some_and(|next| record.offset < next) {
            plan.skipped.push(Skipped { tp: record.tp, offset: record.offset, checkpoint: slot.next_offset });
            continue;
        }
        slot.next_offset = Some(record.offset + 1);
        plan.touched.insert(record.tp.clone());
        let event = match record.body {
            Ok(event) => event,
            Err(rejected) => {
                plan.letters.push(Letter {
                    reason: rejected.error.reason(),
                    error: rejected.error.to_string(),
                    tp: record.tp,
                    offset: record.offset,
                    key: rejected.key,
                    payload: rejected.payload,
                    content_type: rejected.content_type,
                });
                continue;
            }
        };
        let outcome = slot.state.observe(&event, now);
        *plan.outcomes.entry(label(outcome)).or_default() += 1;
        plan.apply(outcome, Arc::new(event), record.tp, record.offset);
    }
    for tp in &plan.touched {
        let slot = slots.get_mut(tp).expect("touched partitions are owned");
        for (from, to) in slot.state.expire() {
            let pair = PairKey::new(from.clone(), to.clone()).ok();
            let keys = [Some(AggKey::Token(from)), Some(AggKey::Token(to)), pair.map(AggKey::Pair)];
            for key in keys.into_iter().flatten() {
                item(&mut plan.items, key, tp).pending_delta -= 1;
            }
        }
    }
    plan
}

impl Plan {
    fn apply(&mut self, outcome: Outcome, event: Arc<SwapEvent>, tp: Tp, offset: i64) {
        match outcome {
            Outcome::Pending => {
                for key in AggKey::of_swap(&event) {
                    item(&mut self.items, key.clone(), &tp).pending_delta += 1;
                    self.changes.entry(key).or_default().push(decided(&event, &tp, offset));
                }
            }
            Outcome::Confirmed { was_pending } => {
                for key in AggKey::of_swap(&event) {
                    let item = item(&mut self.items, key.clone(), &tp);
                    item.swaps.push(event.clone());
                    item.pending_delta -= i64::from(was_pending);
                    self.changes.entry(key).or_default().push(decided(&event, &tp, offset));
                }
            }
            Outcome::Failed { was_pending: true } => {
                for key in AggKey::of_swap(&event) {
                    item(&mut self.items, key, &tp).pending_delta -= 1;
                }
            }
            Outcome::TooLate | Outcome::FromFuture => {
                let (reason, error) = if outcome == Outcome::TooLate {
                    ("too_late", format!("event time {} is behind the lateness bound", event.timestamp))
                } else {
                    ("future_timestamp", format!("event time {} is ahead of the clock", event.timestamp))
                };
                self.letters.push(Letter {
                    tp,
                    offset,
                    reason,
                    error,
                    key: Some(event.id.tx_hash.to_string().into_bytes()),
                    payload: codec::encode(&event, codec::Encoding::Json),
                    content_type: Some(codec::CONTENT_TYPE_JSON.to_owned()),
                });
            }
            Outcome::Failed { was_pending: false } | Outcome::Duplicate | Outcome::StalePending | Outcome::Conflict => {
            }
        }
    }
}

fn decided(swap: &Arc<SwapEvent>, tp: &Tp, offset: i64) -> Decided {
    Decided { swap: swap.clone(), tp: tp.clone(), offset }
}

fn label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pending => "pending",
        Outcome::Confirmed { .. } => "confirmed",
        Outcome::Failed { .. } => "failed",
        Outcome::Duplicate => "duplicate",
        Outcome::StalePending => "stale_pending",
        Outcome::Conflict => "conflict",
        Outcome::TooLate | Outcome::FromFuture => "dead_lettered",
    }
}

/// The batch item of `key` in partition `tp`, created empty if new.
fn item<'a>(items: &'a mut HashMap<AggKey, BTreeMap<Tp, BatchItem>>, key: AggKey, tp: &Tp) -> &'a mut BatchItem {
    items.entry(key).or_default().entry(tp.clone()).or_insert_with(|| BatchItem {
        tp: tp.clone(),
        swaps: Vec::new(),
        pending_delta: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::actors::kafka_reader::poll::Rejected;
    use crate::codec::DecodeError;
    use crate::domain::Status;
    use crate::stream::partition::tests::{event, T0};

    fn record(tp: &Tp, offset: i64, event: SwapEvent) -> Record {
        Record { tp: tp.clone(), offset, body: Ok(event) }
    }

    fn malformed(tp: &Tp, offset: i64) -> Record {
        let rejected =
            Rejected { error: DecodeError::Empty, key: Some(b"k".to_vec()), payload: Vec::new(), content_type: None };
        Record { tp: tp.clone(), offset, body: Err(rejected) }
    }

    fn slots(tps: &[&Tp], next_offset: Option<i64>) -> BTreeMap<Tp, Slot> {
        let state = || PartitionState::new(Duration::from_secs(3600), Duration::from_secs(300));
        tps.iter().map(|tp| ((*tp).clone(), Slot { state: state(), epoch: 1, next_offset })).collect()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(T0 + 60, 0).unwrap()
    }

    fn eth() -> AggKey {
        AggKey::parse("token:ETH").unwrap()
    }

    #[test]
    fn a_swap_pending_then_confirmed_counts_once_for_each_of_its_keys() {
        let tp = Tp::new("swaps.ETH", 0);
        let mut slots = slots(&[&tp], None);
        let records = vec![
            record(&tp, 0, event(1, 0, Status::Pending)),
            record(&tp, 1, event(1, 0, Status::Pending)),
            record(&tp, 2, event(1, 3, Status::Confirmed)),
            record(&tp, 3, event(1, 3, Status::Confirmed)),
        ];
        let plan = plan(records, &mut slots, now());
        assert_eq!(plan.outcomes, BTreeMap::from([("pending", 1), ("duplicate", 2), ("confirmed", 1)]));
        let keys: BTreeSet<String> = plan.items.keys().map(AggKey::to_string).collect();
        assert_eq!(keys, BTreeSet::from(["token:ETH".into(), "token:USDC".into(), "pair:ETH-USDC".into()]));
        for per_tp in plan.items.values() {
            let item = &per_tp[&tp];
            assert_eq!((item.swaps.len(), item.pending_delta), (1, 0), "confirmed once, the pending gauge back to 0");
            assert_eq!(item.swaps[0].status, Status::Confirmed);
        }
        let states: Vec<Status> = plan.changes[&eth()].iter().map(|s| s.swap.status).collect();
        assert_eq!(states, [Status::Pending, Status::Confirmed], "each new state once, in order");
        assert_eq!(plan.touched, BTreeSet::from([tp.clone()]));
        assert_eq!(slots[&tp].next_offset, Some(4));
        assert!(plan.letters.is_empty() && plan.skipped.is_empty());
    }

    #[test]
    fn bad_input_is_dead_lettered_and_its_offset_moves_on() {
        let tp = Tp::new("swaps.ETH", 0);
        let mut slots = slots(&[&tp], None);
        // Two hours behind the first event: past the one-hour lateness bound.
        let records = vec![
            malformed(&tp, 0),
            record(&tp, 1, event(2, 7200, Status::Confirmed)),
            record(&tp, 2, event(3, 0, Status::Confirmed)),
        ];
        let plan = plan(records, &mut slots, DateTime::from_timestamp(T0 + 7200, 0).unwrap());
        let letters: Vec<(i64, &str)> = plan.letters.iter().map(|l| (l.offset, l.reason)).collect();
        assert_eq!(letters, [(0, "empty"), (2, "too_late")]);
        let late = &plan.letters[1];
        assert_eq!(late.content_type.as_deref(), Some(codec::CONTENT_TYPE_JSON));
        let decoded = codec::decode(&late.payload, late.content_type.as_deref()).unwrap();
        assert_eq!(decoded.id, event(3, 0, Status::Confirmed).id, "the late event itself, as JSON");
        assert_eq!(plan.items[&eth()][&tp].swaps.len(), 1, "only the valid, timely swap counts");
        assert_eq!(slots[&tp].next_offset, Some(3));
    }

    #[test]
    fn records_below_the_checkpoint_or_of_revoked_partitions_are_not_counted() {
        let (owned, revoked) = (Tp::new("swaps.ETH", 0), Tp::new("swaps.ETH", 1));
        let mut slots = slots(&[&owned], Some(10));
        let records = vec![
            record(&owned, 9, event(1, 0, Status::Confirmed)),
            record(&revoked, 10, event(2, 0, Status::Confirmed)),
        ];
        let plan = plan(records, &mut slots, now());
        assert_eq!(plan.skipped, [Skipped { tp: owned.clone(), offset: 9, checkpoint: Some(10) }]);
        assert!(plan.items.is_empty() && plan.changes.is_empty() && plan.touched.is_empty());
        assert!(plan.outcomes.is_empty());
        assert_eq!(slots[&owned].next_offset, Some(10), "the checkpoint does not move back");
        assert!(!slots.contains_key(&revoked));
    }

    #[test]
    fn each_partition_keeps_its_own_order_and_dedup_state() {
        let (a, b) = (Tp::new("swaps.ETH", 0), Tp::new("swaps.ETH", 1));
        let mut slots = slots(&[&a, &b], None);
        // The same swap in two partitions is two facts (dedup is per
        // partition); within a partition, swaps keep their record order.
        let records = vec![
            record(&a, 0, event(5, 2, Status::Confirmed)),
            record(&b, 0, event(5, 2, Status::Confirmed)),
            record(&a, 1, event(4, 1, Status::Confirmed)),
        ];
        let plan = plan(records, &mut slots, now());
        assert_eq!(plan.items[&eth()][&a].swaps.len(), 2);
        assert_eq!(plan.items[&eth()][&a].swaps[0].id, event(5, 2, Status::Confirmed).id);
        assert_eq!(plan.items[&eth()][&a].swaps[1].id, event(4, 1, Status::Confirmed).id);
        assert_eq!(plan.items[&eth()][&b].swaps.len(), 1);
        assert_eq!(plan.touched.len(), 2);
    }

    #[test]
    fn a_pending_swap_past_the_lateness_bound_leaves_the_gauge() {
        let tp = Tp::new("swaps.ETH", 0);
        let mut slots = slots(&[&tp], None);
        let first = plan(vec![record(&tp, 0, event(1, 0, Status::Pending))], &mut slots, now());
        assert_eq!(first.items[&eth()][&tp].pending_delta, 1);
        // An event two hours later moves the watermark past the pending one.
        let at = DateTime::from_timestamp(T0 + 7300, 0).unwrap();
        let later = plan(vec![record(&tp, 1, event(2, 7300, Status::Confirmed))], &mut slots, at);
        let eth_item = &later.items[&eth()][&tp];
        assert_eq!((eth_item.swaps.len(), eth_item.pending_delta), (1, -1));
    }
}
