//! Live reads: one key's partials merged over its partitions, and its
//! most recent swaps in the event order.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::{period_secs, CandleRecord, PartialRecord, RedisConn, RedisStore, RECENT};
use crate::domain::aggregate::Interval;
use crate::domain::makers::Makers;
use crate::domain::partial::{
    memory_retention_secs, AggKey, CandlePartial, Merged, Partial, PricePoint, TotalsPartial,
};
use crate::domain::swap::EventOrder;
use crate::storage::encoding::{decode_order, ORDER_BYTES};

/// A key's partials hash as read: (partition, record) pairs.
pub struct Partials(pub(super) Vec<(String, String)>);

impl RedisStore {
    /// The merged live state of one key (all partitions), with candles of
    /// `intervals` back to `since` (unix seconds).
    pub async fn merged(&self, key: &AggKey, intervals: &[Interval], since: i64) -> anyhow::Result<Merged> {
        self.read(|conn| self.merged_on(conn, key, intervals, since)).await
    }

    async fn merged_on(
        &self,
        mut conn: RedisConn,
        key: &AggKey,
        intervals: &[Interval],
        since: i64,
    ) -> anyhow::Result<Merged> {
        let records: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(self.key(key, "partials")).query_async(&mut conn).await?;
        let mut partials: BTreeMap<String, Partial> = BTreeMap::new();
        for (tp, json) in records {
            partials.insert(tp, partial_of(&json)?);
        }
        let now = Utc::now().timestamp();
        for &interval in intervals {
            let period = period_secs(interval);
            let mut start = since.max(now - memory_retention_secs(interval)).div_euclid(period) * period;
            while start <= now {
                let fields: BTreeMap<String, String> = redis::cmd("HGETALL")
                    .arg(self.key(key, &format!("c:{interval}:{start}")))
                    .query_async(&mut conn)
                    .await?;
                for (field, json) in fields {
                    let (t, tp) = field.split_once('/').context("bad candle field in Redis")?;
                    let candle = candle_of(t.parse()?, &json)?;
                    if candle.t >= since {
                        let partial = partials.entry(tp.to_owned()).or_default();
                        partial.candles.entry(interval).or_default().insert(candle.t, candle);
                    }
                }
                start += period;
            }
        }
        Ok(Merged::of(partials.values()))
    }

    /// The merged totals of one key from its `partials` (as read with its
    /// kept stats, [`RedisStore::rendered_stats`]) and its `candles`
    /// (interval, bucket) merged over the partitions the partials name, in
    /// one round trip; `None` when Redis has no live state of `key` (never
    /// seen, or not yet rebuilt after a flush).
    pub async fn merged_candles(
        &self,
        key: &AggKey,
        Partials(partials): Partials,
        candles: &BTreeSet<(Interval, i64)>,
    ) -> anyhow::Result<Option<Merged>> {
        if partials.is_empty() {
            return Ok(None);
        }
        let mut merged = Merged::default();
        for (_, json) in &partials {
            merged.add(&partial_of(json)?, &[], i64::MAX);
        }
        let mut by_hash: BTreeMap<(Interval, i64), Vec<i64>> = BTreeMap::new();
        for &(interval, t) in candles {
            let period = period_secs(interval);
            by_hash.entry((interval, t.div_euclid(period) * period)).or_default().push(t);
        }
        let mut pipe = redis::pipe();
        for ((interval, period_start), buckets) in &by_hash {
            let fields = pipe.cmd("HMGET").arg(self.key(key, &format!("c:{interval}:{period_start}")));
            for t in buckets {
                for (tp, _) in &partials {
                    fields.arg(format!("{t}/{tp}"));
                }
            }
        }
        let replies: Vec<Vec<Option<String>>> = self.read_pipe(&pipe).await?;
        for (((interval, _), buckets), values) in by_hash.iter().zip(replies) {
            let into = merged.candles.entry(*interval).or_default();
            for (&t, values) in buckets.iter().zip(values.chunks(partials.len())) {
                for json in values.iter().flatten() {
                    let candle = candle_of(t, json)?;
                    into.entry(t).and_modify(|c| c.merge(&candle)).or_insert(candle);
                }
            }
        }
        Ok(Some(merged))
    }

    /// The most recent confirmed swaps of `key`, newest first (wire JSON),
    /// each with its place in the event order (time, block, log index,
    /// hash): the order of the sorted set, whose members start with it.
    pub async fn recent(&self, key: &AggKey, limit: usize) -> anyhow::Result<Vec<(EventOrder, serde_json::Value)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.key(key, RECENT)).arg(0).arg(limit as i64 - 1).arg("REV");
        let members: Vec<Vec<u8>> = self.read_cmd(&range).await?;
        members
            .iter()
            .map(|member| {
                let (order, json) =
                    member.split_at_checked(ORDER_BYTES).context("bad swap in Redis: shorter than its order")?;
                Ok((decode_order(order)?, serde_json::from_slice(json).context("bad swap in Redis")?))
            })
            .collect()
    }
}

/// A partial's totals from their record.
fn partial_of(json: &str) -> anyhow::Result<Partial> {
    let r: PartialRecord = serde_json::from_str(json).context("bad partial in Redis")?;
    let last = match (r.last_price, r.last_at) {
        (Some(price), Some(at)) => Some(PricePoint { price, at: decode_order(&hex::decode(at)?)? }),
        _ => None,
    };
    let totals = TotalsPartial {
        volume_usd: r.volume_usd,
        buy_volume_usd: r.buy_volume_usd,
        swaps: r.swaps,
        buys: r.buys,
        first_seen: r.first_seen_ns.map(DateTime::from_timestamp_nanos),
        last,
    };
    Ok(Partial::restore(totals, r.pending, [], Vec::new()))
}

/// The candle of bucket `t` from its record.
fn candle_of(t: i64, json: &str) -> anyhow::Result<CandlePartial> {
    let r: CandleRecord = serde_json::from_str(json).context("bad candle in Redis")?;
    Ok(CandlePartial {
        t,
        open: PricePoint { price: r.open, at: decode_order(&hex::decode(r.open_at)?)? },
        close: PricePoint { price: r.close, at: decode_order(&hex::decode(r.close_at)?)? },
        high: r.high,
        low: r.low,
        volume_usd: r.volume_usd,
        buy_volume_usd: r.buy_volume_usd,
        swaps: r.swaps,
        buys: r.buys,
        makers: Makers::from_bytes(&hex::decode(r.makers)?)?,
    })
}
