//! Rolling windows: the 5m, 1h, 6h and 24h figures of a token or pair, from
//! its merged candles.
//!
//! A window is exact to the second: the `length` seconds ending with the
//! current one, plus any time after it (a swap's time may be ahead of the
//! clock, `SWAPSTREAM_MAX_FUTURE_SECS`). It is read from the fewest whole
//! candles that tile that time: 1s candles in the minute where it starts,
//! then 1m, 5m and 15m candles, and 1h candles in between ([`tiles`]). A
//! 24-hour window takes at most about 100 candles instead of 86,400, and a
//! read of the shared state fetches only those ([`At::needed`]). Each
//! coarser candle is the merge of the 1s candles inside it (one swap updates
//! every interval at once), so the figures are those of the swaps' seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::aggregate::Interval;
use super::makers::{self, Makers};
use super::partial::{memory_retention_secs, AggKey, CandlePartial, PricePoint};
use super::swap::Address;
use super::{Amount, Price, Status, SwapEvent};

/// A rolling window's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Window {
    pub volume_usd: Amount,
    pub buy_volume_usd: Amount,
    pub sell_volume_usd: Amount,
    pub swaps: u64,
    pub buys: u64,
    pub sells: u64,
    pub price_usd: Option<Price>,
    pub price_change_pct: Option<Price>,
    pub high: Option<Price>,
    pub low: Option<Price>,
    /// Distinct makers of its swaps: exact up to 128, estimated beyond
    /// ([`super::makers`]).
    pub makers: u64,
}

/// The rolling windows served, by label and length in seconds.
pub const WINDOWS: [(&str, i64); 4] = [("5m", 300), ("1h", 3_600), ("6h", 21_600), ("24h", 86_400)];

/// The most `SWAPSTREAM_MAX_FUTURE_SECS` may be: how far ahead of the clock
/// a swap's time may be.
pub const MAX_FUTURE_SECS: i64 = 86_400;

/// The intervals windows are tiled with, finest first; each divides the next.
pub const TILES: [Interval; 5] = [Interval::S1, Interval::M1, Interval::M5, Interval::M15, Interval::H1];

/// The candles that tile `range` (unix seconds), in time order: at each
/// point the coarsest of [`TILES`] that starts there and ends within it.
pub fn tiles(range: Range<i64>) -> impl DoubleEndedIterator<Item = (Interval, i64)> {
    let mut out = Vec::new();
    let mut t = range.start;
    while t < range.end {
        let fits = |i: &&Interval| t % i.seconds() == 0 && t + i.seconds() <= range.end;
        let interval = *TILES.iter().rev().find(fits).unwrap_or(&Interval::S1);
        out.push((interval, t));
        t += interval.seconds();
    }
    out.into_iter()
}

/// The first minute of the 26 hours of whole minutes before the end of the
/// current one: the 1m candles kept, among which a window's price change
/// finds the last price before it. Moves by whole minutes, so that it
/// changes no figure within a minute ([`until`]).
fn kept_since(now: DateTime<Utc>) -> i64 {
    Interval::M1.bucket_start(now) + 60 - memory_retention_secs(Interval::M1)
}

/// When the windows are read: the time, and how far ahead of it a swap's
/// time may be (`SWAPSTREAM_MAX_FUTURE_SECS`), which is how far past the
/// current second they reach (in whole minutes).
#[derive(Debug, Clone, Copy)]
pub struct At {
    pub now: DateTime<Utc>,
    pub future_secs: i64,
}

impl At {
    /// At `now`, for swaps as far ahead as any setting lets them be.
    pub fn with_any_future(now: DateTime<Utc>) -> At {
        At { now, future_secs: MAX_FUTURE_SECS }
    }

    /// The end of the current second: windows end here, but for swaps
    /// ahead of the clock.
    fn end(self) -> i64 {
        self.now.timestamp() + 1
    }

    /// The end of the current minute.
    fn minute_end(self) -> i64 {
        Interval::M1.bucket_start(self.now) + 60
    }

    /// Where the windows split time, in order: [`kept_since`], each
    /// window's start (the longest first), and the end of the last minute a
    /// swap's time may be in. Each window and each time before one is a run
    /// of the segments between these, so one tiling of them serves all.
    fn segments(self) -> Vec<Range<i64>> {
        let minutes_up = |seconds: i64| (seconds + 59).div_euclid(60) * 60;
        let end = self.end();
        let mut points = vec![kept_since(self.now)];
        points.extend(WINDOWS.iter().rev().map(|(_, length)| end - length));
        points.push(self.minute_end() + minutes_up(self.future_secs.clamp(0, MAX_FUTURE_SECS)));
        points.windows(2).map(|pair| pair[0]..pair[1].max(pair[0])).collect()
    }

    /// Every candle the windows of [`WINDOWS`] are read from.
    pub fn needed(self) -> BTreeSet<(Interval, i64)> {
        self.segments().into_iter().flat_map(tiles).collect()
    }
}

/// The end (unix seconds, exclusive) of the time from `at` on in which the
/// windows of [`WINDOWS`] read from `candles` (holding at least
/// [`At::needed`]) keep their figures, unless a swap comes: until a second
/// that had a swap leaves one of them, at most to the end of the minute.
pub fn until(candles: &BTreeMap<Interval, BTreeMap<i64, CandlePartial>>, at: At) -> i64 {
    let end = at.end();
    let seconds = candles.get(&Interval::S1);
    let leaves = |start: i64| {
        let traded = seconds.and_then(|s| s.range(start..).next()).map_or(i64::MAX, |(t, _)| *t);
        end.saturating_add(traded.saturating_sub(start))
    };
    WINDOWS.iter().map(|(_, length)| leaves(end - length)).fold(at.minute_end(), i64::min)
}

/// The window of `length` seconds (one of [`WINDOWS`]) at `at` from merged
/// candles that hold at least [`At::needed`]. Its price change is measured
/// from the last price before the window (the close of the latest candle
/// before it, as far back as 1m candles are kept) or, when nothing was
/// traded in that time, from the first price inside it.
pub fn of(candles: &BTreeMap<Interval, BTreeMap<i64, CandlePartial>>, at: At, length: i64) -> Window {
    let start = at.end() - length;
    let segments = at.segments();
    let candle = |(interval, t): (Interval, i64)| candles.get(&interval)?.get(&t);
    // Tiles are disjoint and in time order: the latest one traded in holds the last price.
    let before = segments.iter().filter(|s| s.end <= start).flat_map(|s| tiles(s.clone())).rev().find_map(candle);
    let inside = segments.iter().filter(|s| s.start >= start).flat_map(|s| tiles(s.clone())).filter_map(candle);
    let before = before.map(|c| c.close);
    let mut window = Window::default();
    let mut first: Option<PricePoint> = None;
    let mut last: Option<PricePoint> = None;
    let mut makers = Makers::default();
    for candle in inside {
        window.volume_usd += candle.volume_usd;
        window.buy_volume_usd += candle.buy_volume_usd;
        window.swaps += candle.swaps;
        window.buys += candle.buys;
        window.high = Some(window.high.map_or(candle.high, |h| h.max(candle.high)));
        window.low = Some(window.low.map_or(candle.low, |l| l.min(candle.low)));
        first = Some(first.map_or(candle.open, |f| f.earlier(candle.open)));
        last = Some(last.map_or(candle.close, |l| l.later(candle.close)));
        makers.merge(&candle.makers);
    }
    window.makers = makers.count();
    window.sells = window.swaps - window.buys;
    window.sell_volume_usd = window.volume_usd - window.buy_volume_usd;
    window.price_usd = last.map(|p| p.price);
    if let (Some(from), Some(last)) = (before.or(first), last) {
        window.price_change_pct = last.price.change_pct(from.price);
    }
    window
}

/// The rolling windows of every token and pair at `now`, computed the plain
/// way from the confirmed swaps themselves (the reference the service's
/// [`of`] is tested against). Makers are collected as a set, then counted
/// as the sketch of that set counts ([`makers::reference_count`]).
pub fn windows_at<'a>(
    confirmed: impl IntoIterator<Item = &'a SwapEvent>,
    now: DateTime<Utc>,
) -> BTreeMap<String, BTreeMap<&'static str, Window>> {
    let mut swaps: Vec<&SwapEvent> = confirmed.into_iter().filter(|s| s.status == Status::Confirmed).collect();
    swaps.sort_by_key(|s| s.order_key());
    let mut result: BTreeMap<String, BTreeMap<&'static str, Window>> = BTreeMap::new();
    let kept_since = kept_since(now);
    for (label, length) in WINDOWS {
        let start = now.timestamp() + 1 - length;
        // The price each change is measured from: the last one before the
        // window, among the minutes the service keeps; else the first inside.
        let mut first: BTreeMap<String, Price> = BTreeMap::new();
        let before =
            |s: &&&SwapEvent| Interval::M1.bucket_start(s.timestamp) >= kept_since && s.timestamp.timestamp() < start;
        for swap in swaps.iter().filter(before) {
            for key in AggKey::of_swap(swap) {
                if let Some(c) = key.contribution(swap) {
                    first.insert(key.to_string(), c.price);
                }
            }
        }
        let mut makers: BTreeMap<String, BTreeSet<Address>> = BTreeMap::new();
        for swap in swaps.iter().filter(|s| s.timestamp.timestamp() >= start) {
            for key in AggKey::of_swap(swap) {
                let Some(c) = key.contribution(swap) else { continue };
                let name = key.to_string();
                makers.entry(name.clone()).or_default().extend(swap.maker);
                let first_price = *first.entry(name.clone()).or_insert(c.price);
                let window = result.entry(name).or_default().entry(label).or_default();
                window.volume_usd += c.volume_usd;
                window.swaps += 1;
                if c.buy {
                    window.buys += 1;
                    window.buy_volume_usd += c.volume_usd;
                } else {
                    window.sells += 1;
                    window.sell_volume_usd += c.volume_usd;
                }
                window.high = Some(window.high.map_or(c.price, |h| h.max(c.price)));
                window.low = Some(window.low.map_or(c.price, |l| l.min(c.price)));
                window.price_usd = Some(c.price);
                window.price_change_pct = c.price.change_pct(first_price);
            }
        }
        for (name, seen) in makers {
            result.entry(name).or_default().entry(label).or_default().makers = makers::reference_count(&seen);
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_the_coarsest_aligned_candles_and_cover_the_range_once() {
        let day = 1_764_028_800; // a midnight
        let range = day + 7 * 60..day + 86_400 + 7 * 60;
        let tiled: Vec<(Interval, i64)> = tiles(range.clone()).collect();
        let mut t = range.start;
        for &(interval, start) in &tiled {
            assert_eq!(start, t, "contiguous");
            assert_eq!(start % interval.seconds(), 0, "aligned");
            t += interval.seconds();
        }
        assert_eq!(t, range.end);
        let count = |i: Interval| tiled.iter().filter(|(interval, _)| *interval == i).count();
        // 00:07 to 00:10 in minutes, 00:10 in 5m, 00:15 to 01:00 in 15m,
        // hours to midnight, then 00:00 in 5m and 00:05, 00:06 in minutes.
        assert_eq!(
            (count(Interval::M1), count(Interval::M5), count(Interval::M15), count(Interval::H1)),
            (5, 2, 3, 23)
        );
        assert_eq!(tiles(day..day).count(), 0);
    }

    #[test]
    fn the_windows_need_about_a_hundred_candles_not_every_minute() {
        let now = DateTime::from_timestamp(1_764_057_600 + 3_599, 0).unwrap();
        let needed = At { now, future_secs: 300 }.needed();
        assert!(needed.len() < 120, "{}", needed.len());
        assert!(needed.iter().any(|(interval, _)| *interval == Interval::H1));
    }
}
