//! What one partition has seen: each swap's state (for deduplication and the
//! pending -> terminal lifecycle) and the highest event time (for lateness).
//!
//! Every status of one swap lands in one partition, in order (the producer
//! keys by `tx_hash`), so this state is complete per partition and moves
//! with it on a rebalance.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::domain::{Status, SwapEvent, SwapId, TokenSymbol, TxHash};

/// What to do with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new pending swap: show it, count it in the pending gauge.
    Pending,
    /// A new confirmed swap: count it; `was_pending` leaves the gauge.
    Confirmed { was_pending: bool },
    /// A new failed swap: never counted; `was_pending` leaves the gauge.
    Failed { was_pending: bool },
    /// The same swap with the same status again: nothing to do.
    Duplicate,
    /// A pending event after the swap's terminal one: nothing to do.
    StalePending,
    /// A terminal status after a different terminal one: ignored.
    Conflict,
    /// Older than the lateness bound allows.
    TooLate,
    /// Further ahead of the clock than allowed.
    FromFuture,
}

/// One swap's state as last changed, as checkpointed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenChange {
    pub id: SwapId,
    pub status: Status,
    pub event_time: DateTime<Utc>,
    pub token_from: TokenSymbol,
    pub token_to: TokenSymbol,
}

#[derive(Debug, Clone)]
struct Seen {
    status: Status,
    event_time: DateTime<Utc>,
    token_from: TokenSymbol,
    token_to: TokenSymbol,
}

#[derive(Debug, Clone)]
pub struct PartitionState {
    lateness: chrono::Duration,
    max_future: chrono::Duration,
    /// Highest event time accepted so far.
    watermark: Option<DateTime<Utc>>,
    seen: HashMap<SwapId, Seen>,
    /// Every entry of `seen` by event time, oldest on top, so expiry looks
    /// only at what expires. A swap whose state changed has an older entry
    /// too; it is skipped when its time no longer matches.
    by_time: BinaryHeap<Reverse<(DateTime<Utc>, SwapId)>>,
    /// Changes since the last checkpoint.
    changes: Vec<SeenChange>,
}

impl PartitionState {
    pub fn new(lateness: Duration, max_future: Duration) -> PartitionState {
        PartitionState {
            lateness: chrono::Duration::from_std(lateness).unwrap_or(chrono::Duration::MAX),
            max_future: chrono::Duration::from_std(max_future).unwrap_or(chrono::Duration::MAX),
            watermark: None,
            seen: HashMap::new(),
            by_time: BinaryHeap::new(),
            changes: Vec::new(),
        }
    }

    fn remember(&mut self, change: &SeenChange) {
        self.seen.insert(change.id, Seen::from(change));
        self.by_time.push(Reverse((change.event_time, change.id)));
    }

    /// Restores the state checkpointed with `watermark` from its changes,
    /// oldest first; entries past the lateness bound are dropped silently
    /// (their gauge effect was checkpointed when they expired).
    pub fn restore(&mut self, watermark: Option<DateTime<Utc>>, changes: impl IntoIterator<Item = SeenChange>) {
        self.watermark = watermark;
        for change in changes {
            self.remember(&change);
        }
        self.expire();
    }

    pub fn watermark(&self) -> Option<DateTime<Utc>> {
        self.watermark
    }

    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Decides what `event` means given everything before it; `now` is the
    /// wall clock, for the future bound.
    pub fn observe(&mut self, event: &SwapEvent, now: DateTime<Utc>) -> Outcome {
        if event.timestamp > now + self.max_future {
            return Outcome::FromFuture;
        }
        if let Some(watermark) = self.watermark {
            if event.timestamp < watermark - self.lateness {
                return Outcome::TooLate;
            }
        }
        let previous = self.seen.get(&event.id).map(|s| s.status);
        let outcome = match (previous, event.status) {
            (None, Status::Pending) => Outcome::Pending,
            (None, Status::Confirmed) => Outcome::Confirmed { was_pending: false },
            (None, Status::Failed) => Outcome::Failed { was_pending: false },
            (Some(Status::Pending), Status::Confirmed) => Outcome::Confirmed { was_pending: true },
            (Some(Status::Pending), Status::Failed) => Outcome::Failed { was_pending: true },
            (Some(before), now_status) if before == now_status => Outcome::Duplicate,
            (Some(_), Status::Pending) => Outcome::StalePending,
            (Some(_), _) => Outcome::Conflict,
        };
        if matches!(outcome, Outcome::Pending | Outcome::Confirmed { .. } | Outcome::Failed { .. }) {
            let change = SeenChange {
                id: event.id,
                status: event.status,
                event_time: event.timestamp,
                token_from: event.token_from.clone(),
                token_to: event.token_to.clone(),
            };
            self.remember(&change);
            self.changes.push(change);
            self.watermark = Some(self.watermark.map_or(event.timestamp, |w| w.max(event.timestamp)));
        }
        outcome
    }

    /// Forgets swaps older than the lateness bound: any later event of them
    /// is too late anyway. Returns the pending ones that expired, whose
    /// gauge must go down.
    pub fn expire(&mut self) -> Vec<(TokenSymbol, TokenSymbol)> {
        let Some(watermark) = self.watermark else { return Vec::new() };
        let horizon = watermark - self.lateness;
        let mut expired_pending = Vec::new();
        while let Some(Reverse((event_time, id))) = self.by_time.peek().copied() {
            if event_time >= horizon {
                break;
            }
            self.by_time.pop();
            // Only the entry of the swap's current state removes it.
            if self.seen.get(&id).is_some_and(|seen| seen.event_time == event_time) {
                let seen = self.seen.remove(&id).expect("just found");
                if seen.status == Status::Pending {
                    expired_pending.push((seen.token_from, seen.token_to));
                }
            }
        }
        expired_pending
    }

    /// The changes since the last call, for the checkpoint.
    pub fn take_changes(&mut self) -> Vec<SeenChange> {
        std::mem::take(&mut self.changes)
    }

    /// The event time before which checkpointed changes are no longer needed.
    pub fn horizon(&self) -> Option<DateTime<Utc>> {
        self.watermark.map(|w| w - self.lateness)
    }
}

impl From<&SeenChange> for Seen {
    fn from(change: &SeenChange) -> Seen {
        Seen {
            status: change.status,
            event_time: change.event_time,
            token_from: change.token_from.clone(),
            token_to: change.token_to.clone(),
        }
    }
}

/// Compact binary form of a list of changes, for the checkpoint:
/// per entry `hash[32] log_index[4] status[1] nanos[8] len[1] from len[1] to`.
pub fn encode_changes(changes: &[SeenChange]) -> Vec<u8> {
    let mut out = Vec::with_capacity(changes.len() * 56);
    for c in changes {
        out.extend_from_slice(&c.id.tx_hash.0);
        out.extend_from_slice(&c.id.log_index.to_be_bytes());
        out.push(match c.status {
            Status::Pending => 0,
            Status::Confirmed => 1,
            Status::Failed => 2,
        });
        out.extend_from_slice(&c.event_time.timestamp_nanos_opt().unwrap_or(i64::MAX).to_be_bytes());
        for token in [&c.token_from, &c.token_to] {
            out.push(token.as_str().len() as u8);
            out.extend_from_slice(token.as_str().as_bytes());
        }
    }
    out
}

/// Reads what [`encode_changes`] wrote; `None` if the bytes are damaged.
pub fn decode_changes(mut bytes: &[u8]) -> Option<Vec<SeenChange>> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (head, tail) = bytes.split_at(n);
        *bytes = tail;
        Some(head)
    }
    let mut changes = Vec::new();
    while !bytes.is_empty() {
        let hash: [u8; 32] = take(&mut bytes, 32)?.try_into().ok()?;
        let log_index = u32::from_be_bytes(take(&mut bytes, 4)?.try_into().ok()?);
        let status = match take(&mut bytes, 1)?[0] {
            0 => Status::Pending,
            1 => Status::Confirmed,
            2 => Status::Failed,
            _ => return None,
        };
        let nanos = i64::from_be_bytes(take(&mut bytes, 8)?.try_into().ok()?);
        let mut tokens = Vec::with_capacity(2);
        for _ in 0..2 {
            let len = take(&mut bytes, 1)?[0] as usize;
            let text = std::str::from_utf8(take(&mut bytes, len)?).ok()?;
            tokens.push(TokenSymbol::parse(text).ok()?);
        }
        let token_to = tokens.pop()?;
        let token_from = tokens.pop()?;
        changes.push(SeenChange {
            id: SwapId { tx_hash: TxHash(hash), log_index },
            status,
            event_time: DateTime::from_timestamp_nanos(nanos),
            token_from,
            token_to,
        });
    }
    Some(changes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::{RawSwap, RawTime};

    /// The event times of test swaps count from here (unix seconds).
    pub(crate) const T0: i64 = 1_764_057_600;

    /// A swap of 1 ETH for 4000 USDC, `seconds` after [`T0`], its hash made
    /// of `hash` repeated.
    pub(crate) fn event(hash: u8, seconds: i64, status: Status) -> SwapEvent {
        let time = DateTime::from_timestamp(T0 + seconds, 0).unwrap();
        RawSwap {
            tx_hash: Some(format!("0x{}", format!("{hash:02x}").repeat(32))),
            timestamp: Some(RawTime::Rfc3339(crate::domain::swap::format_time(time))),
            status: Some(status.as_str().into()),
            token_from: Some("ETH".into()),
            token_to: Some("USDC".into()),
            amount_from: Some("1".into()),
            amount_to: Some("4000".into()),
            usd_value: Some("4000".into()),
            ..RawSwap::default()
        }
        .validate()
        .unwrap()
    }

    fn state() -> PartitionState {
        PartitionState::new(Duration::from_secs(3600), Duration::from_secs(300))
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_057_600 + 100_000, 0).unwrap()
    }

    #[test]
    fn lifecycle_pending_then_confirmed() {
        let mut s = state();
        assert_eq!(s.observe(&event(1, 0, Status::Pending), now()), Outcome::Pending);
        assert_eq!(s.observe(&event(1, 0, Status::Pending), now()), Outcome::Duplicate);
        assert_eq!(s.observe(&event(1, 3, Status::Confirmed), now()), Outcome::Confirmed { was_pending: true });
        assert_eq!(s.observe(&event(1, 3, Status::Confirmed), now()), Outcome::Duplicate);
        assert_eq!(s.observe(&event(1, 0, Status::Pending), now()), Outcome::StalePending);
        assert_eq!(s.observe(&event(1, 3, Status::Failed), now()), Outcome::Conflict);
    }

    #[test]
    fn first_terminal_status_wins() {
        let mut s = state();
        assert_eq!(s.observe(&event(2, 0, Status::Failed), now()), Outcome::Failed { was_pending: false });
        assert_eq!(s.observe(&event(2, 0, Status::Confirmed), now()), Outcome::Conflict);
        assert_eq!(s.observe(&event(3, 0, Status::Confirmed), now()), Outcome::Confirmed { was_pending: false });
    }

    #[test]
    fn events_behind_the_lateness_bound_are_too_late() {
        let mut s = state();
        assert_eq!(s.observe(&event(1, 10_000, Status::Confirmed), now()), Outcome::Confirmed { was_pending: false });
        assert_eq!(
            s.observe(&event(2, 10_000 - 3600, Status::Confirmed), now()),
            Outcome::Confirmed { was_pending: false }
        );
        assert_eq!(s.observe(&event(3, 10_000 - 3601, Status::Confirmed), now()), Outcome::TooLate);
        // A rejected event does not move the watermark.
        assert_eq!(s.watermark().unwrap().timestamp(), 1_764_057_600 + 10_000);
    }

    #[test]
    fn events_far_ahead_of_the_clock_are_refused() {
        let mut s = state();
        assert_eq!(s.observe(&event(1, 100_000 + 301, Status::Confirmed), now()), Outcome::FromFuture);
        assert_eq!(
            s.observe(&event(1, 100_000 + 299, Status::Confirmed), now()),
            Outcome::Confirmed { was_pending: false }
        );
    }

    #[test]
    fn expiry_forgets_old_swaps_and_reports_expired_pending_ones() {
        let mut s = state();
        s.observe(&event(1, 0, Status::Pending), now());
        s.observe(&event(2, 0, Status::Confirmed), now());
        s.observe(&event(3, 5_000, Status::Confirmed), now());
        let expired = s.expire();
        assert_eq!(expired.len(), 1);
        assert_eq!(s.tracked(), 1);
    }

    #[test]
    fn a_swap_expires_by_the_time_of_its_current_state() {
        let mut s = state();
        // Pending at 0 s, confirmed at 3,000 s: the state at 3,000 s counts.
        s.observe(&event(1, 0, Status::Pending), now());
        s.observe(&event(1, 3_000, Status::Confirmed), now());
        s.observe(&event(2, 3_700, Status::Confirmed), now());
        assert!(s.expire().is_empty(), "the confirmed swap is not an expired pending one");
        assert_eq!(s.tracked(), 2, "still within the bound by its confirmation");
        assert_eq!(s.observe(&event(1, 3_000, Status::Confirmed), now()), Outcome::Duplicate);
        s.observe(&event(3, 6_601, Status::Confirmed), now());
        assert!(s.expire().is_empty());
        assert_eq!(s.tracked(), 2, "swap 1 expired, 2 and 3 remain");
        assert_eq!(s.by_time.len(), 2, "no stale entries left behind the horizon");
    }

    #[test]
    fn expiry_matches_a_full_scan_whatever_the_order() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut s = state();
        for round in 0..50 {
            for i in 0..40u32 {
                let hash = rng.gen_range(0..=255u8);
                let seconds = round * 200 + rng.gen_range(0..3_000) + i64::from(i);
                let status = [Status::Pending, Status::Confirmed, Status::Failed][rng.gen_range(0..3)];
                s.observe(&event(hash, seconds, status), now());
            }
            let horizon = s.horizon().unwrap();
            let mut expected: Vec<SwapId> =
                s.seen.iter().filter(|(_, seen)| seen.event_time < horizon).map(|(id, _)| *id).collect();
            let pending = s.seen.values().filter(|seen| seen.event_time < horizon && seen.status == Status::Pending);
            let expected_pending = pending.count();
            expected.sort();
            let before: Vec<SwapId> = s.seen.keys().copied().collect();
            assert_eq!(s.expire().len(), expected_pending, "round {round}");
            let mut gone: Vec<SwapId> = before.into_iter().filter(|id| !s.seen.contains_key(id)).collect();
            gone.sort();
            assert_eq!(gone, expected, "round {round}");
        }
    }

    #[test]
    fn restore_rebuilds_the_same_decisions() {
        let mut first = state();
        first.observe(&event(1, 0, Status::Pending), now());
        first.observe(&event(2, 5, Status::Confirmed), now());
        let encoded = encode_changes(&first.take_changes());
        let mut second = state();
        second.restore(first.watermark(), decode_changes(&encoded).unwrap());
        assert_eq!(second.observe(&event(2, 5, Status::Confirmed), now()), Outcome::Duplicate);
        assert_eq!(second.observe(&event(1, 9, Status::Confirmed), now()), Outcome::Confirmed { was_pending: true });
    }

    #[test]
    fn damaged_change_lists_are_refused() {
        let mut s = state();
        s.observe(&event(1, 0, Status::Pending), now());
        let encoded = encode_changes(&s.take_changes());
        assert!(decode_changes(&encoded[..encoded.len() - 1]).is_none());
        assert_eq!(decode_changes(&[]).unwrap(), vec![]);
    }
}
