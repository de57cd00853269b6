//! What the service computes per token and per pair, and a reference model
//! that computes it the plain way: from the full set of confirmed, deduplicated
//! swaps, in event order. The producer writes the reference's answer to its
//! ground-truth file; tests hold the stream processor's incremental answer
//! against it.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use super::{Amount, PairKey, Price, Status, SwapEvent, TokenSymbol};

/// Candle intervals, aligned to multiples of their length since the epoch.
/// [`Interval::S1`] is kept for the rolling windows' edges only; candles are
/// served at the others ([`Interval::ALL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Interval {
    S1,
    M1,
    M5,
    M15,
    H1,
    H4,
    D1,
}

impl Interval {
    pub const ALL: [Interval; 6] =
        [Interval::M1, Interval::M5, Interval::M15, Interval::H1, Interval::H4, Interval::D1];

    /// Every interval aggregated and stored: the served ones and
    /// [`Interval::S1`].
    pub const KEPT: [Interval; 7] =
        [Interval::S1, Interval::M1, Interval::M5, Interval::M15, Interval::H1, Interval::H4, Interval::D1];

    pub fn seconds(self) -> i64 {
        match self {
            Interval::S1 => 1,
            Interval::M1 => 60,
            Interval::M5 => 300,
            Interval::M15 => 900,
            Interval::H1 => 3_600,
            Interval::H4 => 14_400,
            Interval::D1 => 86_400,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Interval::S1 => "1s",
            Interval::M1 => "1m",
            Interval::M5 => "5m",
            Interval::M15 => "15m",
            Interval::H1 => "1h",
            Interval::H4 => "4h",
            Interval::D1 => "1d",
        }
    }

    /// A served interval by its name.
    pub fn parse(text: &str) -> Option<Interval> {
        Interval::ALL.into_iter().find(|i| i.as_str() == text)
    }

    /// A kept interval by its stored name.
    pub fn parse_kept(text: &str) -> Option<Interval> {
        Interval::KEPT.into_iter().find(|i| i.as_str() == text)
    }

    /// Start (unix seconds) of the bucket holding `time`.
    pub fn bucket_start(self, time: DateTime<Utc>) -> i64 {
        time.timestamp().div_euclid(self.seconds()) * self.seconds()
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Interval {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// All-time totals of a token or pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub volume_usd: Amount,
    /// What buys (of the token, of the pair's first symbol) moved; with
    /// `sell_volume_usd` it makes `volume_usd`.
    pub buy_volume_usd: Amount,
    pub sell_volume_usd: Amount,
    pub swaps: u64,
    pub buys: u64,
    pub sells: u64,
    /// RFC 3339 UTC.
    #[serde(serialize_with = "serialize_time")]
    pub first_seen: Option<DateTime<Utc>>,
    /// RFC 3339 UTC.
    #[serde(serialize_with = "serialize_time")]
    pub last_seen: Option<DateTime<Utc>>,
}

fn serialize_time<S: Serializer>(time: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.serialize_str(&super::swap::format_time(*time)),
        None => serializer.serialize_none(),
    }
}

/// One OHLCV bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candle {
    /// Bucket start, unix seconds.
    pub t: i64,
    pub open: Price,
    pub high: Price,
    pub low: Price,
    pub close: Price,
    pub volume_usd: Amount,
    pub swaps: u64,
}

impl Candle {
    fn new(t: i64, price: Price, volume_usd: Amount) -> Candle {
        Candle { t, open: price, high: price, low: price, close: price, volume_usd, swaps: 1 }
    }

    /// Adds a swap that comes after every swap already in the candle.
    fn push(&mut self, price: Price, volume_usd: Amount) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume_usd += volume_usd;
        self.swaps += 1;
    }
}

/// How one swap counts for one token or pair.
#[derive(Debug, Clone, Copy)]
pub struct Contribution {
    pub price: Price,
    pub volume_usd: Amount,
    pub buy: bool,
}

impl Contribution {
    /// The volume a buy moves: all of it for a buy, none for a sell.
    pub fn buy_volume_usd(&self) -> Amount {
        if self.buy {
            self.volume_usd
        } else {
            Amount::ZERO
        }
    }

    /// The swap seen from `token`: a buy when `token` is bought, price in USD.
    pub fn for_token(swap: &SwapEvent, token: &TokenSymbol) -> Option<Contribution> {
        let (amount, buy) = if *token == swap.token_to {
            (swap.amount_to, true)
        } else if *token == swap.token_from {
            (swap.amount_from, false)
        } else {
            return None;
        };
        Some(Contribution { price: Price::ratio(swap.usd_value, amount)?, volume_usd: swap.usd_value, buy })
    }

    /// The swap seen from its pair: a buy when the first symbol is bought;
    /// price is the first symbol in units of the second.
    pub fn for_pair(swap: &SwapEvent, pair: &PairKey) -> Option<Contribution> {
        let buy = swap.token_to == *pair.first();
        let (first_amount, second_amount) =
            if buy { (swap.amount_to, swap.amount_from) } else { (swap.amount_from, swap.amount_to) };
        Some(Contribution { price: Price::ratio(second_amount, first_amount)?, volume_usd: swap.usd_value, buy })
    }
}

/// Everything the reference model knows of one token or pair.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Expected {
    pub price_usd: Option<Price>,
    pub totals: Totals,
    pub candles: BTreeMap<Interval, Vec<Candle>>,
}

impl Expected {
    fn push(&mut self, time: DateTime<Utc>, c: Contribution) {
        let totals = &mut self.totals;
        totals.volume_usd += c.volume_usd;
        totals.swaps += 1;
        if c.buy {
            totals.buys += 1;
            totals.buy_volume_usd += c.volume_usd;
        } else {
            totals.sells += 1;
            totals.sell_volume_usd += c.volume_usd;
        }
        totals.first_seen.get_or_insert(time);
        totals.last_seen = Some(time);
        self.price_usd = Some(c.price);
        for interval in Interval::ALL {
            let t = interval.bucket_start(time);
            let candles = self.candles.entry(interval).or_default();
            match candles.last_mut() {
                Some(candle) if candle.t == t => candle.push(c.price, c.volume_usd),
                _ => candles.push(Candle::new(t, c.price, c.volume_usd)),
            }
        }
    }
}

/// The reference answer for a whole stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub tokens: BTreeMap<TokenSymbol, Expected>,
    pub pairs: BTreeMap<PairKey, Expected>,
}

impl Reference {
    /// Computes the aggregates of `confirmed`, which must hold each swap once
    /// and only confirmed ones (anything else is skipped).
    pub fn compute<'a>(confirmed: impl IntoIterator<Item = &'a SwapEvent>) -> Reference {
        let mut swaps: Vec<&SwapEvent> = confirmed.into_iter().filter(|s| s.status == Status::Confirmed).collect();
        swaps.sort_by_key(|s| s.order_key());
        let mut reference = Reference::default();
        for swap in swaps {
            for token in [&swap.token_from, &swap.token_to] {
                if let Some(c) = Contribution::for_token(swap, token) {
                    reference.tokens.entry(token.clone()).or_default().push(swap.timestamp, c);
                }
            }
            let pair = swap.pair();
            if let Some(c) = Contribution::for_pair(swap, &pair) {
                reference.pairs.entry(pair).or_default().push(swap.timestamp, c);
            }
        }
        reference
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{RawSwap, RawTime};

    fn swap(hash: u8, time: &str, from: &str, to: &str, amount_from: &str, amount_to: &str, usd: &str) -> SwapEvent {
        RawSwap {
            tx_hash: Some(format!("0x{}", format!("{hash:02x}").repeat(32))),
            timestamp: Some(RawTime::Rfc3339(time.into())),
            token_from: Some(from.into()),
            token_to: Some(to.into()),
            amount_from: Some(amount_from.into()),
            amount_to: Some(amount_to.into()),
            usd_value: Some(usd.into()),
            ..RawSwap::default()
        }
        .validate()
        .unwrap()
    }

    fn sample() -> Vec<SwapEvent> {
        vec![
            // Sell 1 ETH for 4000 USDC at 08:00:10.
            swap(1, "2026-11-25T08:00:10Z", "ETH", "USDC", "1", "4000", "4000"),
            // Buy 0.5 ETH for 2100 USDC at 08:00:50.
            swap(2, "2026-11-25T08:00:50Z", "USDC", "ETH", "2100", "0.5", "2100"),
            // Sell 2 ETH for 8200 USDC at 08:01:05: next 1m bucket.
            swap(3, "2026-11-25T08:01:05Z", "ETH", "USDC", "2", "8200", "8200"),
        ]
    }

    fn price(text: &str) -> Price {
        Price::parse(text).unwrap()
    }

    #[test]
    fn token_totals_count_buys_sells_and_exact_volume() {
        let reference = Reference::compute(&sample());
        let eth = &reference.tokens[&TokenSymbol::parse("ETH").unwrap()];
        assert_eq!(eth.totals.volume_usd, Amount::parse("14300").unwrap());
        assert_eq!((eth.totals.swaps, eth.totals.buys, eth.totals.sells), (3, 1, 2));
        assert_eq!(
            (eth.totals.buy_volume_usd, eth.totals.sell_volume_usd),
            (Amount::parse("2100").unwrap(), Amount::parse("12200").unwrap())
        );
        assert_eq!(eth.price_usd, Some(price("4100")));
        assert_eq!(super::super::swap::format_time(eth.totals.first_seen.unwrap()), "2026-11-25T08:00:10Z");
    }

    #[test]
    fn candles_are_bucketed_by_event_time() {
        let reference = Reference::compute(&sample());
        let eth = &reference.tokens[&TokenSymbol::parse("ETH").unwrap()];
        let minute = &eth.candles[&Interval::M1];
        assert_eq!(minute.len(), 2);
        assert_eq!(minute[0].t % 60, 0);
        assert_eq!(
            (minute[0].open, minute[0].high, minute[0].low, minute[0].close),
            (price("4000"), price("4200"), price("4000"), price("4200"))
        );
        assert_eq!(minute[0].swaps, 2);
        assert_eq!(minute[1].volume_usd, Amount::parse("8200").unwrap());
        assert_eq!(eth.candles[&Interval::D1].len(), 1);
    }

    #[test]
    fn pairs_price_the_first_symbol_in_the_second() {
        let reference = Reference::compute(&sample());
        let pair = &reference.pairs[&PairKey::parse("USDC-ETH").unwrap()];
        assert_eq!(pair.price_usd, Some(price("4100")));
        // A buy on ETH-USDC is a swap whose token_to is ETH.
        assert_eq!((pair.totals.buys, pair.totals.sells), (1, 2));
        assert_eq!(pair.totals.buy_volume_usd, Amount::parse("2100").unwrap());
    }

    #[test]
    fn arrival_order_does_not_matter() {
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(Reference::compute(&reversed), Reference::compute(&sample()));
    }

    #[test]
    fn only_confirmed_swaps_count() {
        let mut events = sample();
        events[0].status = Status::Pending;
        events[1].status = Status::Failed;
        let reference = Reference::compute(&events);
        assert_eq!(reference.tokens[&TokenSymbol::parse("ETH").unwrap()].totals.swaps, 1);
    }

    #[test]
    fn buckets_align_to_epoch_multiples() {
        let time = DateTime::parse_from_rfc3339("2026-11-25T09:17:42Z").unwrap().with_timezone(&Utc);
        assert_eq!(Interval::H4.bucket_start(time) % 14_400, 0);
        assert_eq!(Interval::M15.bucket_start(time), time.timestamp() - (17 * 60 + 42) + 15 * 60);
        assert_eq!(Interval::parse("4h"), Some(Interval::H4));
        assert_eq!(Interval::parse("2h"), None);
        assert_eq!(Interval::parse("1s"), None, "seconds are not served");
        assert_eq!(Interval::parse_kept("1s"), Some(Interval::S1));
    }
}
