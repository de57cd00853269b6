//! The registry's decisions that need no actor: which updates of a channel
//! it has not handed on yet, how many handoffs a second the
//! fan-out may make, and which clients go when the process holds more than
//! its total budget for them.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::protocol::{swap_frames, FrameBody};
use crate::storage::redis::Offset;

/// One message of a key's update channel: a history entry of new swap
/// states (`{"key": "token:ETH", "epoch": .., "id": .., "swaps": [...],
/// "gap": false}`), its swaps left as they came; or, without `id`, the
/// announcement that the key's stats changed.
#[derive(Deserialize)]
pub(super) struct Update<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow)]
    pub swaps: Vec<&'a RawValue>,
    /// States of this key were lost before this update.
    #[serde(default)]
    pub gap: bool,
    #[serde(default, borrow)]
    epoch: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
}

/// Where a channel's history stands for this registry: its epoch and the
/// newest entry handed on.
#[derive(Default)]
pub(super) struct Cursor {
    epoch: Option<String>,
    /// The newest entry handed on, with its count of swaps.
    last: Offset,
}

impl Cursor {
    /// Appends to `frames` the swap frames of `update` if its entry is
    /// newer than the last one handed on. True when states were lost before
    /// them: a gap in the feed, or a history that started over (Redis lost
    /// it), whose offsets begin anew.
    pub(super) fn advance(&mut self, update: &Update, frames: &mut Vec<FrameBody>) -> bool {
        let (Some(epoch), Some(entry)) = (&update.epoch, update.id.as_deref().and_then(|id| Offset::of_entry(id, 0)))
        else {
            return false;
        };
        self.advance_to(epoch, entry, update.gap, &update.swaps, frames)
    }

    /// [`Self::advance`] by a history entry at `entry` (`count` 0) of
    /// history `epoch`, as read back from Redis.
    pub(super) fn advance_to(
        &mut self,
        epoch: &str,
        entry: Offset,
        gap: bool,
        swaps: &[&RawValue],
        frames: &mut Vec<FrameBody>,
    ) -> bool {
        let mut lost = gap;
        if self.epoch.as_deref() != Some(epoch) {
            lost |= self.epoch.is_some();
            self.epoch = Some(epoch.to_string());
        } else if entry <= (Offset { count: 0, ..self.last }) {
            return false;
        }
        self.last = Offset { count: swaps.len() as u32, ..entry };
        swap_frames(entry, swaps, frames);
        lost
    }

    /// The epoch and the position after the newest entry handed on, once
    /// there was one.
    pub(super) fn position(&self) -> Option<(&str, Offset)> {
        Some((self.epoch.as_deref()?, self.last))
    }
}

/// What the fan-out may spend on handoffs (each a wake-up of a session and
/// a socket write): a token bucket refilled at `SWAPSTREAM_WS_HANDOFFS_PER_SEC`
/// and holding at most `SWAPSTREAM_WS_COALESCE_MAX_MS` worth of it. While a
/// flush's handoffs are covered, frames go out at once; past the budget they
/// gather until it covers them (at most `coalesce_max`), so that under load
/// each handoff carries more frames instead of the wake-ups multiplying.
pub(super) struct HandoffBudget {
    per_sec: f64,
    /// Most tokens held, and the deepest debt.
    burst: f64,
    tokens: f64,
    refilled: Instant,
}

impl HandoffBudget {
    pub(super) fn new(per_sec: u64, coalesce_max: Duration, now: Instant) -> HandoffBudget {
        let per_sec = per_sec.max(1) as f64;
        let burst = per_sec * coalesce_max.as_secs_f64();
        HandoffBudget { per_sec, burst, tokens: burst, refilled: now }
    }

    fn refill(&mut self, now: Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.refilled = now;
    }

    /// How long a flush of `handoffs` must wait for the budget to cover it
    /// (a flush larger than the bucket waits for a full one).
    pub(super) fn wait(&mut self, handoffs: usize, now: Instant) -> Duration {
        self.refill(now);
        let needed = (handoffs as f64).min(self.burst);
        Duration::from_secs_f64(((needed - self.tokens) / self.per_sec).max(0.0))
    }

    pub(super) fn spend(&mut self, handoffs: u64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens - handoffs as f64).max(-self.burst);
    }
}

/// The sessions to drop so that `total` fits in `budget`: the ones with the
/// most waiting first, each taken to free at most what waits for it (less,
/// when others wait for the same frames; the next sweep then goes on).
pub(super) fn most_waiting_over(waiting: impl Iterator<Item = (u64, i64)>, mut total: i64, budget: i64) -> Vec<u64> {
    let mut waiting: Vec<(u64, i64)> = waiting.filter(|(_, bytes)| *bytes > 0).collect();
    if total <= budget {
        return Vec::new();
    }
    waiting.sort_unstable_by_key(|(_, bytes)| std::cmp::Reverse(*bytes));
    let mut dropped = Vec::new();
    for (id, bytes) in waiting {
        if total <= budget {
            break;
        }
        total -= bytes;
        dropped.push(id);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handoff_budget_delays_only_what_it_cannot_cover() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // To the microsecond: the bucket counts in floating point.
        let micros = |wait: Duration| wait.as_micros();
        // 1000 handoffs a second, 100 ms of it in the bucket.
        let mut budget = HandoffBudget::new(1000, Duration::from_millis(100), start);
        assert_eq!(micros(budget.wait(100, at(0))), 0, "a full bucket covers a flush of its size");
        budget.spend(100, at(0));
        assert_eq!(micros(budget.wait(1, at(0))), 1000, "empty, one handoff takes a millisecond to earn");
        assert_eq!(micros(budget.wait(50, at(20))), 30_000);
        assert_eq!(micros(budget.wait(500, at(20))), 80_000, "a flush larger than the bucket waits for a full one");
        // Spending past the bucket leaves a debt of at most one bucket.
        budget.spend(1000, at(20));
        assert_eq!(micros(budget.wait(10, at(20))), 110_000);
        // Refilled after a quiet second, but never past the bucket.
        assert_eq!(micros(budget.wait(101, at(2000))), 0);
        budget.spend(100, at(2000));
        assert_eq!(micros(budget.wait(1, at(2000))), 1000);
    }

    #[test]
    fn without_a_coalescing_time_every_flush_goes_at_once() {
        let start = Instant::now();
        let mut budget = HandoffBudget::new(10, Duration::ZERO, start);
        budget.spend(1_000_000, start);
        assert_eq!(budget.wait(1_000_000, start), Duration::ZERO);
    }

    #[test]
    fn over_the_total_budget_the_sessions_with_most_waiting_go_first() {
        let waiting = || [(1, 100), (2, 5000), (3, 0), (4, 3000), (5, -20)].into_iter();
        // Each waits for frames of its own: the total is their sum.
        let sum = 8100;
        assert_eq!(most_waiting_over(waiting(), sum, 10_000), Vec::<u64>::new());
        assert_eq!(most_waiting_over(waiting(), sum, 8100), Vec::<u64>::new());
        assert_eq!(most_waiting_over(waiting(), sum, 8099), vec![2]);
        assert_eq!(most_waiting_over(waiting(), sum, 3100), vec![2]);
        assert_eq!(most_waiting_over(waiting(), sum, 2999), vec![2, 4]);
        assert_eq!(most_waiting_over(waiting(), sum, 0), vec![2, 4, 1]);
        // They share frames: 5000 bytes in all, under a budget that their
        // sum (8100) would pass.
        assert_eq!(most_waiting_over(waiting(), 5000, 6000), Vec::<u64>::new());
        assert_eq!(most_waiting_over(waiting(), 5000, 4000), vec![2]);
    }

    #[test]
    fn a_channel_hands_on_each_history_entry_once_and_says_when_states_were_lost() {
        let update = |epoch: &str, id: &str, gap: bool| {
            format!(r#"{{"key":"token:ETH","epoch":"{epoch}","id":"{id}","gap":{gap},"swaps":[{{"n":1}},{{"n":2}}]}}"#)
        };
        let mut cursor = Cursor::default();
        let mut advance = |text: String| {
            let update: Update = serde_json::from_str(&text).unwrap();
            let mut frames = Vec::new();
            let lost = cursor.advance(&update, &mut frames);
            let offsets: Vec<String> = frames.iter().map(|f| f.offset.unwrap().to_string()).collect();
            (lost, offsets)
        };
        assert_eq!(advance(update("e1", "5-0", false)), (false, vec!["5-0-1".into(), "5-0-2".into()]));
        assert_eq!(advance(update("e1", "5-0", false)), (false, vec![]), "a repeat");
        assert_eq!(advance(update("e1", "4-9", false)), (false, vec![]), "older");
        assert_eq!(
            advance(update("e1", "6-0", true)),
            (true, vec!["6-0-1".into(), "6-0-2".into()]),
            "a gap in the feed"
        );
        assert_eq!(advance(update("e2", "1-0", false)), (true, vec!["1-0-1".into(), "1-0-2".into()]), "a new epoch");
        // A stats announcement has no entry.
        assert_eq!(advance(r#"{"key":"token:ETH","swaps":[]}"#.into()), (false, vec![]));
        assert_eq!(
            cursor.position().map(|(e, at)| (e.to_owned(), at.to_string())),
            Some(("e2".into(), "1-0-2".into()))
        );
    }
}
