//! Reads for REST: candles over any range, the merged durable state of a
//! key, and the claimed partitions.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;

use super::rows::{candle_from_row, totals_from_row};
use super::PgStore;
use crate::codec;
use crate::domain::aggregate::Interval;
use crate::domain::partial::{AggKey, CandlePartial, Merged};
use crate::domain::swap::EventOrder;
use crate::domain::SwapEvent;
use crate::storage::encoding::encode_order;
use crate::stream::Tp;

/// The newest `$5` candle buckets of key `$1` and interval `$2` with
/// `$3 <= t <= $4`, every partition's row of each (public for the
/// benchmark that explains its plan).
pub const CANDLES: &str = "WITH newest AS (
         SELECT DISTINCT t FROM {schema}.candles
         WHERE agg_key = $1 AND interval = $2 AND t BETWEEN $3 AND $4
         ORDER BY t DESC LIMIT $5)
     SELECT t, open::text, open_at, close::text, close_at, high::text, low::text, volume_usd::text,
            swaps, buys, buy_volume_usd::text, makers
     FROM {schema}.candles
     WHERE agg_key = $1 AND interval = $2 AND t BETWEEN (SELECT min(t) FROM newest) AND $4";

/// The newest `$3` stored swaps of key `$1` ordered before `$2` (an encoded
/// event order), over every partition: each partition's newest before `$2`,
/// walking its primary key backwards, then the newest of those (public for
/// the benchmark that explains its plan).
pub const SWAPS_BEFORE: &str = "SELECT s.swap FROM {schema}.partials k
     CROSS JOIN LATERAL (
        SELECT x.at, x.swap FROM {schema}.recent_swaps x
        WHERE x.agg_key = k.agg_key AND x.topic = k.topic AND x.partition = k.partition AND x.at < $2
        ORDER BY x.at DESC LIMIT $3) s
     WHERE k.agg_key = $1
     ORDER BY s.at DESC LIMIT $3";

impl PgStore {
    /// The newest `limit` stored swaps of `key` ordered before `before`,
    /// newest first: the recent swaps of each partition and, where a swap
    /// history is kept, that history.
    pub async fn swaps_before(
        &self,
        key: &AggKey,
        before: &EventOrder,
        limit: usize,
    ) -> anyhow::Result<Vec<SwapEvent>> {
        let rows = self
            .client()
            .await?
            .query(
                &self.sql(SWAPS_BEFORE),
                &[&key.to_string(), &encode_order(before), &(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .context("reading stored swaps")?;
        rows.iter()
            .map(|row| {
                codec::decode(row.get(0), Some(codec::CONTENT_TYPE_PROTOBUF)).context("bad swap in recent_swaps")
            })
            .collect()
    }

    /// The newest `limit` candles of `key` and `interval` with
    /// `from <= t <= to`, merged over every partition (the history behind
    /// Redis' retention). The newest buckets are found first, walking the
    /// primary key backwards, so a long range costs what the page holds.
    pub async fn candles(
        &self,
        key: &AggKey,
        interval: Interval,
        from: i64,
        to: i64,
        limit: usize,
    ) -> anyhow::Result<BTreeMap<i64, CandlePartial>> {
        let rows = self
            .client()
            .await?
            .query(
                &self.sql(CANDLES),
                &[&key.to_string(), &interval.as_str(), &from, &to, &(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .context("reading candles")?;
        merge_rows(&rows)
    }

    /// The candles of `key` and `interval` that start at `starts`, merged
    /// over every partition: each bucket found through the primary key.
    pub async fn candles_at(
        &self,
        key: &AggKey,
        interval: Interval,
        starts: &[i64],
    ) -> anyhow::Result<BTreeMap<i64, CandlePartial>> {
        let rows = self
            .client()
            .await?
            .query(
                &self.sql(
                    "SELECT t, open::text, open_at, close::text, close_at, high::text, low::text, volume_usd::text,
                            swaps, buys, buy_volume_usd::text, makers
                     FROM {schema}.candles WHERE agg_key = $1 AND interval = $2 AND t = ANY($3)",
                ),
                &[&key.to_string(), &interval.as_str(), &starts],
            )
            .await
            .context("reading candles")?;
        merge_rows(&rows)
    }

    /// The merged totals and pending gauge of `key` over every partition,
    /// or `None` when no partition has seen it.
    pub async fn merged(&self, key: &AggKey) -> anyhow::Result<Option<Merged>> {
        let rows = self
            .client()
            .await?
            .query(
                &self.sql(
                    "SELECT volume_usd::text, swaps, buys, first_seen_ns, last_price::text, last_at, pending,
                            buy_volume_usd::text
                     FROM {schema}.partials WHERE agg_key = $1",
                ),
                &[&key.to_string()],
            )
            .await
            .context("reading partials")?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut merged = Merged::default();
        for row in rows {
            let (totals, pending) = totals_from_row(&row, 0)?;
            merged.totals.merge(&totals);
            merged.pending += pending;
        }
        Ok(Some(merged))
    }

    /// Every partition any instance has claimed.
    pub async fn partitions(&self) -> anyhow::Result<BTreeSet<Tp>> {
        let rows = self
            .client()
            .await?
            .query(&self.sql("SELECT topic, partition FROM {schema}.offsets"), &[])
            .await
            .context("reading partitions")?;
        Ok(rows.iter().map(|row| Tp::new(row.get(0), row.get(1))).collect())
    }
}

/// Candle rows of one key and interval, merged by bucket over partitions.
fn merge_rows(rows: &[tokio_postgres::Row]) -> anyhow::Result<BTreeMap<i64, CandlePartial>> {
    let mut merged: BTreeMap<i64, CandlePartial> = BTreeMap::new();
    for row in rows {
        let candle = candle_from_row(row, 0)?;
        merged.entry(candle.t).and_modify(|c| c.merge(&candle)).or_insert(candle);
    }
    Ok(merged)
}
