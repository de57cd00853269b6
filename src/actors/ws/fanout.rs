//! The registry's decisions that need no actor: which swap states of an
//! update a channel has not sent yet, how many handoffs a second the
//! fan-out may make, and which clients go when the process holds more than
//! its total budget for them.

use std::borrow::Cow;
use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use foldhash::{HashSet, HashSetExt};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::protocol::{FrameBody, FrameKind};

/// One message of a key's update channel (`{"key": "token:ETH", "swaps":
/// [...], "gap": false}`), its swap states left as they came.
#[derive(Deserialize)]
pub(super) struct Update<'a> {
    #[serde(borrow)]
    pub key: Cow<'a, str>,
    #[serde(borrow)]
    pub swaps: Vec<&'a RawValue>,
    /// States of this key were lost before this update.
    #[serde(default)]
    pub gap: bool,
}

/// What identifies a swap state: the swap and its status.
#[derive(Deserialize)]
struct SwapState<'a> {
    #[serde(borrow)]
    tx_hash: Cow<'a, str>,
    #[serde(default)]
    log_index: u32,
    #[serde(borrow)]
    status: Cow<'a, str>,
}

/// The last `cap` swap states (hashes of id and status) of a channel.
pub(super) struct DedupWindow {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
    cap: usize,
}

impl DedupWindow {
    pub(super) fn new(cap: usize) -> DedupWindow {
        DedupWindow { seen: HashSet::new(), order: VecDeque::new(), cap }
    }

    /// Appends to `frames` a `swap` frame for each `pending` or `confirmed`
    /// state among `swaps` not seen within the window (and remembers it).
    pub(super) fn new_frames(&mut self, swaps: &[&RawValue], frames: &mut Vec<FrameBody>) {
        for raw in swaps {
            let Ok(state) = serde_json::from_str::<SwapState>(raw.get()) else { continue };
            if state.status != "pending" && state.status != "confirmed" {
                continue;
            }
            let mut hasher = DefaultHasher::new();
            (&*state.tx_hash, state.log_index, &*state.status).hash(&mut hasher);
            if self.insert(hasher.finish()) {
                frames.push(FrameBody { kind: FrameKind::Swap, json: raw.get().into() });
            }
        }
    }

    /// True when the state is new (and now remembered).
    fn insert(&mut self, state: u64) -> bool {
        if !self.seen.insert(state) {
            return false;
        }
        self.order.push_back(state);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
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
    fn a_channel_sends_each_pending_and_confirmed_state_once_within_its_window() {
        let update = br#"{"key": "token:ETH", "swaps": [
            {"tx_hash": "0xa", "log_index": 0, "status": "pending"},
            {"tx_hash": "0xa", "log_index": 0, "status": "pending"},
            {"tx_hash": "0xa", "log_index": 1, "status": "pending"},
            {"tx_hash": "0xb", "status": "failed"},
            {"tx_hash": "0xa", "log_index": 0, "status": "confirmed"},
            {"not": "a swap"}
        ]}"#;
        let update: Update = serde_json::from_slice(update).unwrap();
        assert_eq!((update.key.as_ref(), update.gap), ("token:ETH", false));
        let mut window = DedupWindow::new(3);
        let mut frames = Vec::new();
        window.new_frames(&update.swaps, &mut frames);
        let sent: Vec<&str> = frames.iter().map(|f| &*f.json).collect();
        assert_eq!(sent, [update.swaps[0].get(), update.swaps[2].get(), update.swaps[4].get()]);
        // Three states remembered: a repeat of any is dropped...
        frames.clear();
        window.new_frames(&update.swaps[..3], &mut frames);
        assert!(frames.is_empty());
        // ...until four newer ones pushed the oldest out of the window.
        let newer: Vec<String> = (0..4).map(|i| format!(r#"{{"tx_hash": "0xc{i}", "status": "pending"}}"#)).collect();
        let newer: Vec<&RawValue> = newer.iter().map(|s| serde_json::from_str(s).unwrap()).collect();
        window.new_frames(&newer, &mut frames);
        assert_eq!(frames.len(), 4);
        frames.clear();
        window.new_frames(&update.swaps[..1], &mut frames);
        assert_eq!(frames.len(), 1);
    }
}
