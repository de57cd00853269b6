//! Partial aggregates: what one Kafka partition contributes to one token or
//! pair, and the merge of partials into the answers the service serves.
//!
//! Every merge is associative and order-independent: sums add, high/low are
//! max/min, open/close/last price are first/last by event order. So any
//! partitioning of the input, and any arrival order within the lateness
//! bound, gives the same merged answer as the [`Reference`] model.
//!
//! [`Reference`]: super::aggregate::Reference

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::aggregate::{Candle, Contribution, Interval, Totals};
use super::makers::{self, Makers};
use super::swap::EventOrder;
use super::{Amount, PairKey, Price, SwapEvent, TokenSymbol};

/// What is aggregated: a token or a pair. Its text form is also the
/// WebSocket channel name: `token:ETH`, `pair:ETH-USDC`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AggKey {
    Token(TokenSymbol),
    Pair(PairKey),
}

impl AggKey {
    pub fn parse(text: &str) -> Option<AggKey> {
        let (kind, name) = text.split_once(':')?;
        match kind {
            "token" => TokenSymbol::parse(name).ok().map(AggKey::Token),
            "pair" => PairKey::parse(name).ok().map(AggKey::Pair),
            _ => None,
        }
    }

    /// The key of `name` in the list of tokens (`tokens`) or of pairs.
    pub fn named(tokens: bool, name: &str) -> Option<AggKey> {
        if tokens {
            TokenSymbol::parse(name).ok().map(AggKey::Token)
        } else {
            PairKey::parse(name).ok().map(AggKey::Pair)
        }
    }

    pub fn is_token(&self) -> bool {
        matches!(self, AggKey::Token(_))
    }

    /// Its name in its list: a token's symbol, or a pair's name (its
    /// symbols in alphabetical order).
    pub fn name(&self) -> String {
        match self {
            AggKey::Token(token) => token.to_string(),
            AggKey::Pair(pair) => pair.to_string(),
        }
    }

    /// The keys a swap counts for: both tokens and their pair.
    pub fn of_swap(swap: &SwapEvent) -> [AggKey; 3] {
        [AggKey::Token(swap.token_from.clone()), AggKey::Token(swap.token_to.clone()), AggKey::Pair(swap.pair())]
    }

    pub fn contribution(&self, swap: &SwapEvent) -> Option<Contribution> {
        match self {
            AggKey::Token(token) => Contribution::for_token(swap, token),
            AggKey::Pair(pair) => Contribution::for_pair(swap, pair),
        }
    }
}

impl fmt::Display for AggKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AggKey::Token(token) => write!(f, "token:{token}"),
            AggKey::Pair(pair) => write!(f, "pair:{pair}"),
        }
    }
}

/// A price and the event-order position it was seen at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricePoint {
    pub price: Price,
    pub at: EventOrder,
}

impl PricePoint {
    pub(super) fn earlier(self, other: PricePoint) -> PricePoint {
        if other.at < self.at {
            other
        } else {
            self
        }
    }

    pub(super) fn later(self, other: PricePoint) -> PricePoint {
        if other.at > self.at {
            other
        } else {
            self
        }
    }
}

/// One candle's share from one partition. Keeps the event-order positions of
/// open and close so partials merge exactly, and the buy count and makers
/// for windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandlePartial {
    pub t: i64,
    pub open: PricePoint,
    pub close: PricePoint,
    pub high: Price,
    pub low: Price,
    pub volume_usd: Amount,
    /// The part of `volume_usd` that buys moved.
    pub buy_volume_usd: Amount,
    pub swaps: u64,
    pub buys: u64,
    /// The distinct makers of its swaps.
    pub makers: Makers,
}

impl CandlePartial {
    fn new(t: i64, point: PricePoint, c: &Contribution) -> CandlePartial {
        CandlePartial {
            t,
            open: point,
            close: point,
            high: point.price,
            low: point.price,
            volume_usd: c.volume_usd,
            buy_volume_usd: c.buy_volume_usd(),
            swaps: 1,
            buys: u64::from(c.buy),
            makers: Makers::default(),
        }
    }

    pub fn merge(&mut self, other: &CandlePartial) {
        debug_assert_eq!(self.t, other.t);
        self.open = self.open.earlier(other.open);
        self.close = self.close.later(other.close);
        self.high = self.high.max(other.high);
        self.low = self.low.min(other.low);
        self.volume_usd += other.volume_usd;
        self.buy_volume_usd += other.buy_volume_usd;
        self.swaps += other.swaps;
        self.buys += other.buys;
        self.makers.merge(&other.makers);
    }

    pub fn to_candle(&self) -> Candle {
        Candle {
            t: self.t,
            open: self.open.price,
            high: self.high,
            low: self.low,
            close: self.close.price,
            volume_usd: self.volume_usd,
            swaps: self.swaps,
        }
    }
}

/// All-time totals' share from one partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TotalsPartial {
    pub volume_usd: Amount,
    /// The part of `volume_usd` that buys moved.
    pub buy_volume_usd: Amount,
    pub swaps: u64,
    pub buys: u64,
    pub first_seen: Option<DateTime<Utc>>,
    /// The latest swap's price; its time is `last_seen`.
    pub last: Option<PricePoint>,
}

impl TotalsPartial {
    fn add(&mut self, point: PricePoint, c: &Contribution) {
        self.volume_usd += c.volume_usd;
        self.buy_volume_usd += c.buy_volume_usd();
        self.swaps += 1;
        self.buys += u64::from(c.buy);
        let time = point.at.0;
        self.first_seen = Some(self.first_seen.map_or(time, |t| t.min(time)));
        self.last = Some(self.last.map_or(point, |last| last.later(point)));
    }

    pub fn merge(&mut self, other: &TotalsPartial) {
        self.volume_usd += other.volume_usd;
        self.buy_volume_usd += other.buy_volume_usd;
        self.swaps += other.swaps;
        self.buys += other.buys;
        self.first_seen = match (self.first_seen, other.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last = match (self.last, other.last) {
            (Some(a), Some(b)) => Some(a.later(b)),
            (a, b) => a.or(b),
        };
    }

    pub fn to_totals(&self) -> Totals {
        Totals {
            volume_usd: self.volume_usd,
            buy_volume_usd: self.buy_volume_usd,
            sell_volume_usd: self.volume_usd - self.buy_volume_usd,
            swaps: self.swaps,
            buys: self.buys,
            sells: self.swaps - self.buys,
            first_seen: self.first_seen,
            last_seen: self.last.map(|p| p.at.0),
        }
    }
}

/// How long candles stay in memory, per interval; older ones live in
/// PostgreSQL only (seconds not even there: they are deleted). The 1m
/// retention covers the 24h window plus the lateness bound; seconds are
/// needed at the windows' starts only, the latest 24 hours ago.
pub const fn memory_retention_secs(interval: Interval) -> i64 {
    match interval {
        Interval::S1 => 25 * 3_600,
        Interval::M1 => 26 * 3_600,
        Interval::M5 => 3 * 86_400,
        Interval::M15 => 7 * 86_400,
        Interval::H1 => 30 * 86_400,
        Interval::H4 => 120 * 86_400,
        Interval::D1 => 3_650 * 86_400,
    }
}

/// One (key, partition) share: totals, pending gauge, candles, recent swaps.
/// Tracks what changed since the last checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Partial {
    pub totals: TotalsPartial,
    pub pending: i64,
    pub candles: BTreeMap<Interval, BTreeMap<i64, CandlePartial>>,
    /// Most recent confirmed swaps, newest first, at most `recent_cap`.
    pub recent: Vec<Arc<SwapEvent>>,
    dirty: Dirty,
}

#[derive(Debug, Clone, Default)]
struct Dirty {
    totals: bool,
    candles: BTreeSet<(Interval, i64)>,
    recent: Vec<Arc<SwapEvent>>,
}

/// What changed in a partial since the last checkpoint, as absolute values.
#[derive(Debug, Clone)]
pub struct PartialDelta {
    pub totals: TotalsPartial,
    pub pending: i64,
    pub candles: Vec<(Interval, CandlePartial)>,
    /// Swaps that entered the recent list since the last checkpoint.
    pub new_recent: Vec<Arc<SwapEvent>>,
    /// Where a swap history is kept: every swap counted since the last
    /// checkpoint (a superset of `new_recent`); otherwise empty.
    pub history: Vec<Arc<SwapEvent>>,
}

impl PartialDelta {
    /// Folds the next delta of the same partial into this one, as if both
    /// had been taken at once: the later absolute values win, candles by
    /// their bucket, and the recent swaps of both are kept.
    pub fn absorb(&mut self, later: PartialDelta) {
        self.totals = later.totals;
        self.pending = later.pending;
        for (interval, candle) in later.candles {
            match self.candles.iter_mut().find(|(i, c)| *i == interval && c.t == candle.t) {
                Some(slot) => slot.1 = candle,
                None => self.candles.push((interval, candle)),
            }
        }
        self.new_recent.extend(later.new_recent);
        self.history.extend(later.history);
    }
}

impl Partial {
    /// Counts a confirmed swap for `key`; `recent_cap` bounds the recent
    /// list. False when the swap does not count for `key`.
    pub fn apply(&mut self, key: &AggKey, swap: &Arc<SwapEvent>, recent_cap: usize) -> bool {
        let Some(c) = key.contribution(swap) else { return false };
        let point = PricePoint { price: c.price, at: swap.order_key() };
        let maker = swap.maker.as_ref().map(makers::hash);
        self.totals.add(point, &c);
        self.dirty.totals = true;
        for interval in Interval::KEPT {
            let t = interval.bucket_start(swap.timestamp);
            let candle = self
                .candles
                .entry(interval)
                .or_default()
                .entry(t)
                .and_modify(|candle| candle.merge(&CandlePartial::new(t, point, &c)))
                .or_insert_with(|| CandlePartial::new(t, point, &c));
            if let Some(maker) = maker {
                candle.makers.insert(maker);
            }
            self.dirty.candles.insert((interval, t));
        }
        let position = self.recent.partition_point(|r| r.order_key() > point.at);
        if position < recent_cap {
            self.recent.insert(position, swap.clone());
            self.recent.truncate(recent_cap);
            self.dirty.recent.push(swap.clone());
        }
        true
    }

    pub fn add_pending(&mut self, delta: i64) {
        if delta != 0 {
            self.pending += delta;
            self.dirty.totals = true;
        }
    }

    pub fn is_dirty(&self) -> bool {
        self.dirty.totals || !self.dirty.candles.is_empty()
    }

    /// The changes since the last call, as absolute values.
    pub fn take_delta(&mut self) -> Option<PartialDelta> {
        if !self.is_dirty() {
            return None;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let candles = dirty
            .candles
            .into_iter()
            .filter_map(|(interval, t)| Some((interval, self.candles.get(&interval)?.get(&t)?.clone())))
            .collect();
        // Those pushed out again within the same batch need not be stored.
        let new_recent =
            dirty.recent.into_iter().filter(|added| self.recent.iter().any(|r| Arc::ptr_eq(r, added))).collect();
        Some(PartialDelta {
            totals: self.totals.clone(),
            pending: self.pending,
            candles,
            new_recent,
            history: Vec::new(),
        })
    }

    /// The whole partial as a change (for a full write after an assign or a
    /// rebuild); what is dirty stays so.
    pub fn full_delta(&self) -> PartialDelta {
        PartialDelta {
            totals: self.totals.clone(),
            pending: self.pending,
            candles: self.candles.iter().flat_map(|(i, c)| c.values().map(move |c| (*i, c.clone()))).collect(),
            new_recent: self.recent.clone(),
            history: Vec::new(),
        }
    }

    /// Drops candles older than their memory retention, relative to `now`.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        for (interval, candles) in self.candles.iter_mut() {
            let oldest = now.timestamp() - memory_retention_secs(*interval);
            *candles = candles.split_off(&oldest);
        }
    }

    /// Restores a partial from its checkpointed parts; nothing is dirty.
    pub fn restore(
        totals: TotalsPartial,
        pending: i64,
        candles: impl IntoIterator<Item = (Interval, CandlePartial)>,
        recent: Vec<Arc<SwapEvent>>,
    ) -> Partial {
        let mut partial = Partial { totals, pending, recent, ..Partial::default() };
        for (interval, candle) in candles {
            partial.candles.entry(interval).or_default().insert(candle.t, candle);
        }
        partial
    }
}

/// The candles a merge takes from each partial.
#[derive(Debug, Clone)]
pub enum Select {
    /// Those of some intervals from a time (unix seconds) on.
    Since(Vec<Interval>, i64),
    /// These buckets only (the rolling windows' tiles, [`super::window::At::needed`]).
    Only(Arc<BTreeSet<(Interval, i64)>>),
}

impl Select {
    /// No candles: the totals only.
    pub fn none() -> Select {
        Select::Since(Vec::new(), i64::MAX)
    }
}

/// The merged view of every partial of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    pub totals: TotalsPartial,
    pub pending: i64,
    pub candles: BTreeMap<Interval, BTreeMap<i64, CandlePartial>>,
}

impl Merged {
    pub fn of<'a>(partials: impl IntoIterator<Item = &'a Partial>) -> Merged {
        let mut merged = Merged::default();
        for partial in partials {
            merged.add(partial, &Interval::KEPT, i64::MIN);
        }
        merged
    }

    /// Merges in one partial: its totals, and its candles of `intervals`
    /// from `since` (unix seconds) on.
    pub fn add(&mut self, partial: &Partial, intervals: &[Interval], since: i64) {
        self.totals.merge(&partial.totals);
        self.pending += partial.pending;
        for interval in intervals {
            let Some(candles) = partial.candles.get(interval) else { continue };
            let into = self.candles.entry(*interval).or_default();
            for (t, candle) in candles.range(since..) {
                into.entry(*t).and_modify(|c| c.merge(candle)).or_insert_with(|| candle.clone());
            }
        }
    }

    /// Merges in one partial: its totals, and the candles `select` names.
    pub fn add_selected(&mut self, partial: &Partial, select: &Select) {
        match select {
            Select::Since(intervals, since) => self.add(partial, intervals, *since),
            Select::Only(buckets) => {
                self.add(partial, &[], i64::MAX);
                for &(interval, t) in buckets.iter() {
                    let Some(candle) = partial.candles.get(&interval).and_then(|c| c.get(&t)) else { continue };
                    let into = self.candles.entry(interval).or_default();
                    into.entry(t).and_modify(|c| c.merge(candle)).or_insert_with(|| candle.clone());
                }
            }
        }
    }

    pub fn price_usd(&self) -> Option<Price> {
        self.totals.last.map(|p| p.price)
    }

    /// Candles of `interval` with `from <= t <= to`, oldest first, at most
    /// `limit` of the newest such.
    pub fn candles(&self, interval: Interval, from: i64, to: i64, limit: usize) -> Vec<Candle> {
        let Some(candles) = self.candles.get(&interval).filter(|_| from <= to) else { return Vec::new() };
        let selected: Vec<Candle> = candles.range(from..=to).rev().take(limit).map(|(_, c)| c.to_candle()).collect();
        selected.into_iter().rev().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::Reference;
    use crate::domain::window::{self, windows_at, At, Window, WINDOWS};
    use crate::domain::{RawSwap, RawTime, Status};
    use proptest::prelude::*;

    fn swap(seed: u32, seconds: i64, from: &str, to: &str, amount_from: u64, amount_to: u64, usd: u64) -> SwapEvent {
        let time = DateTime::from_timestamp(1_764_057_600 + seconds, 0).unwrap();
        RawSwap {
            tx_hash: Some(format!("0x{:064x}", seed)),
            log_index: Some(u64::from(seed % 3)),
            timestamp: Some(RawTime::Rfc3339(crate::domain::swap::format_time(time))),
            token_from: Some(from.into()),
            token_to: Some(to.into()),
            amount_from: Some(format!("{amount_from}.5")),
            amount_to: Some(format!("{amount_to}.25")),
            usd_value: Some(format!("{usd}.01")),
            ..RawSwap::default()
        }
        .validate()
        .unwrap()
    }

    const TOKENS: [&str; 3] = ["ETH", "USDC", "SOL"];

    prop_compose! {
        fn swaps()(raw in proptest::collection::vec(
            // Most within two hours, some over 30 (longer than 1m candles are kept).
            (prop_oneof![4 => 0i64..7_200, 1 => 0i64..108_000], 0usize..3, 1usize..3, 1u64..1000, 1u64..1000,
                0u64..100_000, any::<bool>(), 0u32..40), 1..120)
        ) -> Vec<SwapEvent> {
            raw.into_iter().enumerate().map(|(i, (s, from, step, af, at, usd, confirmed, maker))| {
                let mut event = swap(i as u32, s, TOKENS[from], TOKENS[(from + step) % 3], af, at, usd);
                if !confirmed { event.status = Status::Failed; }
                // Few makers, each making several swaps; 0: none given.
                event.maker = (maker > 0).then(|| maker_address(maker));
                event
            }).collect()
        }
    }

    fn maker_address(n: u32) -> crate::domain::swap::Address {
        let mut bytes = [0u8; 20];
        bytes[..4].copy_from_slice(&n.to_be_bytes());
        crate::domain::swap::Address(bytes)
    }

    /// Spreads confirmed swaps over `partitions` partials per key, in the
    /// order given, and merges them.
    fn merged_by_partials(events: &[SwapEvent], assign: &[usize], partitions: usize) -> BTreeMap<AggKey, Merged> {
        let mut partials: BTreeMap<AggKey, Vec<Partial>> = BTreeMap::new();
        for (event, &p) in events.iter().zip(assign.iter().cycle()) {
            if event.status != Status::Confirmed {
                continue;
            }
            let event = Arc::new(event.clone());
            for key in AggKey::of_swap(&event) {
                let list = partials.entry(key.clone()).or_insert_with(|| vec![Partial::default(); partitions]);
                list[p % partitions].apply(&key, &event, 10);
            }
        }
        partials.into_iter().map(|(k, list)| (k, Merged::of(&list))).collect()
    }

    proptest! {
        #[test]
        fn merged_partials_equal_the_reference_in_any_partitioning_and_order(
            mut events in swaps(),
            assign in proptest::collection::vec(0usize..4, 1..50),
            partitions in 1usize..4,
            shuffle_seed in any::<u64>(),
        ) {
            let reference = Reference::compute(&events);
            use rand::{seq::SliceRandom, SeedableRng};
            events.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(shuffle_seed));
            let merged = merged_by_partials(&events, &assign, partitions);
            for (token, expected) in &reference.tokens {
                let got = &merged[&AggKey::Token(token.clone())];
                prop_assert_eq!(&got.totals.to_totals(), &expected.totals);
                prop_assert_eq!(got.price_usd(), expected.price_usd);
                for interval in Interval::ALL {
                    prop_assert_eq!(&got.candles(interval, i64::MIN, i64::MAX, usize::MAX), &expected.candles[&interval]);
                }
            }
            for (pair, expected) in &reference.pairs {
                let got = &merged[&AggKey::Pair(pair.clone())];
                prop_assert_eq!(&got.totals.to_totals(), &expected.totals);
                prop_assert_eq!(&got.candles(Interval::M5, i64::MIN, i64::MAX, usize::MAX), &expected.candles[&Interval::M5]);
            }
            prop_assert_eq!(merged.len(), reference.tokens.len() + reference.pairs.len());
        }
    }

    /// The swaps the service takes at `now`: none further ahead of it than
    /// any setting allows.
    fn taken_at(events: Vec<SwapEvent>, now: DateTime<Utc>) -> Vec<SwapEvent> {
        let reach = now + chrono::Duration::seconds(window::MAX_FUTURE_SECS);
        events.into_iter().filter(|e| e.timestamp <= reach).collect()
    }

    /// The reference's window `label` of `key` (empty where it saw no swap).
    fn reference_window(plain: &BTreeMap<String, BTreeMap<&'static str, Window>>, key: &AggKey, label: &str) -> Window {
        plain.get(&key.to_string()).and_then(|w| w.get(label)).cloned().unwrap_or_default()
    }

    proptest! {
        #[test]
        fn windows_from_merged_candles_equal_windows_from_the_swaps(
            events in swaps(),
            assign in proptest::collection::vec(0usize..4, 1..50),
            now_offset in prop_oneof![0i64..9_000, 0i64..115_000],
        ) {
            let now = DateTime::from_timestamp(1_764_057_600 + now_offset, 0).unwrap();
            let events = taken_at(events, now);
            let plain = windows_at(&events, now);
            let merged = merged_by_partials(&events, &assign, 3);
            for (key, merged) in &merged {
                for (label, length) in WINDOWS {
                    let got = window::of(&merged.candles, At::with_any_future(now), length);
                    let expected = reference_window(&plain, key, label);
                    prop_assert_eq!(got, expected, "{} {}", key, label);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Enough makers in one window that the sketch turns to registers:
        /// still the reference's count, however the swaps were partitioned.
        #[test]
        fn windows_count_makers_as_the_reference_across_the_exact_limit(
            makers in proptest::collection::vec(1u32..2_000, 100..700),
            seconds in proptest::collection::vec(0i64..7_000, 1..50),
            assign in proptest::collection::vec(0usize..4, 1..50),
        ) {
            let now = DateTime::from_timestamp(1_764_057_600 + 7_000, 0).unwrap();
            let events: Vec<SwapEvent> = makers.iter().zip(seconds.iter().cycle()).enumerate().map(|(i, (&m, &s))| {
                let mut event = swap(i as u32, s, TOKENS[i % 3], TOKENS[(i + 1) % 3], 2, 3, 100);
                event.maker = Some(maker_address(m));
                event
            }).collect();
            let plain = windows_at(&events, now);
            let merged = merged_by_partials(&events, &assign, 4);
            for (key, merged) in &merged {
                for (label, length) in WINDOWS {
                    let got = window::of(&merged.candles, At::with_any_future(now), length);
                    let expected = reference_window(&plain, key, label);
                    prop_assert_eq!(got, expected, "{} {}", key, label);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// A stats body is kept until [`window::until`]: the windows must
        /// not change before then, and must be the reference's there.
        #[test]
        fn windows_hold_until_a_traded_second_leaves_one(
            events in swaps(),
            now_offset in prop_oneof![0i64..9_000, 0i64..115_000],
        ) {
            let now = DateTime::from_timestamp(1_764_057_600 + now_offset, 0).unwrap();
            let events = taken_at(events, now);
            let merged = merged_by_partials(&events, &[0], 1);
            for (key, merged) in &merged {
                let until = window::until(&merged.candles, At::with_any_future(now));
                prop_assert!(until > now.timestamp() && until <= Interval::M1.bucket_start(now) + 60);
                let last = DateTime::from_timestamp(until - 1, 0).unwrap();
                let plain = windows_at(&events, last);
                for (label, length) in WINDOWS {
                    let at_now = window::of(&merged.candles, At::with_any_future(now), length);
                    let at_last = window::of(&merged.candles, At::with_any_future(last), length);
                    prop_assert_eq!(&at_now, &at_last, "{} {}", key, label);
                    let expected = reference_window(&plain, key, label);
                    prop_assert_eq!(at_last, expected, "{} {}", key, label);
                }
            }
        }
    }

    #[test]
    fn windows_start_to_the_second_and_hold_until_a_traded_second_leaves() {
        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let mut partial = Partial::default();
        // ETH sold at 08:04:05, 08:04:06 and 08:08:20, each dearer.
        let swaps = [
            swap(1, 245, "ETH", "USDC", 1, 4000, 4000),
            swap(2, 246, "ETH", "USDC", 1, 4100, 4100),
            swap(3, 500, "ETH", "USDC", 1, 4200, 4200),
        ];
        let price = |i: usize| eth.contribution(&swaps[i]).unwrap().price;
        for e in &swaps {
            partial.apply(&eth, &Arc::new(e.clone()), 10);
        }
        let merged = Merged::of([&partial]);
        let at = |seconds: i64| At::with_any_future(DateTime::from_timestamp(1_764_057_600 + seconds, 0).unwrap());
        // At 08:09:05 the 5m window starts at 08:04:06: the last two swaps,
        // measured from the first.
        let five = window::of(&merged.candles, at(545), 300);
        assert_eq!((five.swaps, five.low), (2, Some(price(1))));
        assert_eq!(five.price_change_pct, price(2).change_pct(price(0)));
        // A second later it starts at 08:04:07: the last swap, from the second.
        let five = window::of(&merged.candles, at(546), 300);
        assert_eq!((five.swaps, five.low), (1, Some(price(2))));
        assert_eq!(five.price_change_pct, price(2).change_pct(price(1)));
        // At 08:09:03 the figures hold until 08:09:05, when 08:04:05 leaves.
        assert_eq!(window::until(&merged.candles, at(543)), 1_764_057_600 + 545);
        assert_eq!(window::of(&merged.candles, at(543), 300), window::of(&merged.candles, at(544), 300));
        assert_ne!(window::of(&merged.candles, at(544), 300), window::of(&merged.candles, at(545), 300));
        // With no traded second at the windows' starts: to the minute's end.
        assert_eq!(window::until(&merged.candles, at(430)), 1_764_057_600 + 480);
    }

    #[test]
    fn windows_cover_the_seconds_ending_now() {
        let events = [
            swap(1, 0, "ETH", "USDC", 1, 4000, 4000),     // 08:00:00
            swap(2, 250, "USDC", "ETH", 4100, 1, 4100),   // 08:04:10
            swap(3, 3_590, "ETH", "USDC", 2, 8000, 8000), // 08:59:50
        ];
        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let mut partial = Partial::default();
        for e in &events {
            partial.apply(&eth, &Arc::new(e.clone()), 10);
        }
        let merged = Merged::of([&partial]);
        let now = DateTime::from_timestamp(1_764_057_600 + 3_599, 0).unwrap(); // 08:59:59
        let five = window::of(&merged.candles, At::with_any_future(now), 300);
        assert_eq!((five.swaps, five.buys, five.sells), (1, 0, 1));
        let hour = window::of(&merged.candles, At::with_any_future(now), 3_600);
        assert_eq!((hour.swaps, hour.buys, hour.sells), (3, 1, 2));
        assert_eq!(hour.volume_usd, Amount::parse("16100.03").unwrap());
        assert!(hour.high >= hour.low);
        assert_eq!(hour.price_usd, merged.price_usd());
        // An hour later the 5m window is empty and its prices absent.
        let later = window::of(&merged.candles, At::with_any_future(now + chrono::Duration::hours(1)), 300);
        assert_eq!(later, Window::default());
    }

    #[test]
    fn a_window_s_price_change_is_from_the_last_price_before_it() {
        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let mut partial = Partial::default();
        // 4000 at 08:00, then one swap at 4400 at 08:58 (ETH sold for USDC).
        for e in [swap(1, 0, "ETH", "USDC", 1, 4000, 4000), swap(2, 3_480, "ETH", "USDC", 1, 4400, 4400)] {
            partial.apply(&eth, &Arc::new(e), 10);
        }
        let merged = Merged::of([&partial]);
        let now = DateTime::from_timestamp(1_764_057_600 + 3_599, 0).unwrap(); // 08:59:59
        let five = window::of(&merged.candles, At::with_any_future(now), 300);
        assert_eq!(five.swaps, 1);
        // One swap in the window: about +10 % against 08:00, not 0 % against itself.
        let about_ten = |change: Option<Price>| {
            change.is_some_and(|c| c > Price::parse("9.99").unwrap() && c < Price::parse("10.01").unwrap())
        };
        assert!(about_ten(five.price_change_pct), "{:?}", five.price_change_pct);
        // Nothing kept before the window: from the first price inside it.
        let hour = window::of(&merged.candles, At::with_any_future(now), 3_600);
        assert!(about_ten(hour.price_change_pct), "{:?}", hour.price_change_pct);
        let day_later = window::of(&merged.candles, At::with_any_future(now + chrono::Duration::hours(27)), 300);
        assert_eq!(day_later.price_change_pct, None, "no swap in the window: no change");
    }

    #[test]
    fn recent_swaps_are_newest_first_and_capped() {
        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let mut partial = Partial::default();
        for (i, seconds) in [5, 1, 9, 3].into_iter().enumerate() {
            partial.apply(&eth, &Arc::new(swap(i as u32, seconds, "ETH", "USDC", 1, 1, 1)), 3);
        }
        let times: Vec<i64> = partial.recent.iter().map(|s| s.timestamp.timestamp() - 1_764_057_600).collect();
        assert_eq!(times, [9, 5, 3]);
    }

    proptest! {
        #[test]
        fn deltas_absorbed_one_after_another_equal_one_delta_of_all(
            events in swaps(),
            cuts in proptest::collection::vec(any::<bool>(), 1..120),
        ) {
            let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
            let (mut stepwise, mut at_once) = (Partial::default(), Partial::default());
            let mut absorbed: Option<PartialDelta> = None;
            for (event, cut) in events.iter().filter(|e| e.status == Status::Confirmed).zip(cuts.iter().cycle()) {
                let event = Arc::new(event.clone());
                stepwise.apply(&eth, &event, 3);
                at_once.apply(&eth, &event, 3);
                if *cut {
                    if let Some(delta) = stepwise.take_delta() {
                        match &mut absorbed {
                            Some(earlier) => earlier.absorb(delta),
                            None => absorbed = Some(delta),
                        }
                    }
                }
            }
            if let Some(delta) = stepwise.take_delta() {
                match &mut absorbed {
                    Some(earlier) => earlier.absorb(delta),
                    None => absorbed = Some(delta),
                }
            }
            let whole = at_once.take_delta();
            prop_assert_eq!(absorbed.is_some(), whole.is_some());
            let (Some(absorbed), Some(whole)) = (absorbed, whole) else { return Ok(()) };
            prop_assert_eq!(&absorbed.totals, &whole.totals);
            prop_assert_eq!(absorbed.pending, whole.pending);
            let buckets = |d: &PartialDelta| d.candles.iter().map(|(i, c)| ((*i, c.t), c.clone())).collect::<BTreeMap<_, _>>();
            prop_assert_eq!(buckets(&absorbed), buckets(&whole));
            prop_assert_eq!(absorbed.candles.len(), buckets(&absorbed).len(), "one entry per bucket");
            // Every swap still recent at the end is among those to store.
            for swap in &whole.new_recent {
                prop_assert!(absorbed.new_recent.iter().any(|s| Arc::ptr_eq(s, swap)));
            }
        }
    }

    #[test]
    fn deltas_hold_only_what_changed_since_the_last_checkpoint() {
        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let mut partial = Partial::default();
        assert!(partial.take_delta().is_none());
        partial.apply(&eth, &Arc::new(swap(1, 0, "ETH", "USDC", 1, 1, 1)), 3);
        let delta = partial.take_delta().unwrap();
        assert_eq!(delta.candles.len(), Interval::KEPT.len());
        assert_eq!(delta.totals.swaps, 1);
        assert!(partial.take_delta().is_none());
        partial.add_pending(2);
        assert_eq!(partial.take_delta().unwrap().candles.len(), 0);
    }

    #[test]
    fn agg_keys_read_and_print_as_channel_names() {
        assert_eq!(AggKey::parse("token:eth").unwrap().to_string(), "token:ETH");
        assert_eq!(AggKey::parse("pair:usdc-eth").unwrap().to_string(), "pair:ETH-USDC");
        assert_eq!(AggKey::parse("coin:ETH"), None);
    }
}
