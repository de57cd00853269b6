//! Taking partitions over: a claim fences the previous owner (its epoch
//! moves on) and loads the partition's checkpointed position, dedup state
//! and partials, so the new owner resumes exactly where the checkpoint is.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::rows::{candle_from_row, totals_from_row};
use super::PgStore;
use crate::codec::{self};
use crate::domain::aggregate::Interval;
use crate::domain::partial::{memory_retention_secs, AggKey, CandlePartial, Partial, TotalsPartial};
use crate::domain::SwapEvent;
use crate::stream::partition::decode_changes;
use crate::stream::{SeenChange, Tp};

/// A partition's checkpointed position and state, as claimed on assign.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub tp: Tp,
    /// Next offset to read; `None` when never checkpointed.
    pub next_offset: Option<i64>,
    pub watermark: Option<DateTime<Utc>>,
    pub epoch: i64,
    pub seen: Vec<SeenChange>,
    pub partials: Vec<(AggKey, Partial)>,
}

impl PgStore {
    /// Takes ownership of partitions: bumps their epoch (fencing out any
    /// previous owner) and loads their checkpointed state.
    pub async fn claim(&self, tps: &[Tp], owner: &str, now: DateTime<Utc>) -> anyhow::Result<Vec<Claimed>> {
        if tps.is_empty() {
            return Ok(Vec::new());
        }
        let topics: Vec<&str> = tps.iter().map(|tp| &*tp.topic).collect();
        let partitions: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let rows = tx
            .query(
                &self.sql(
                    "INSERT INTO {schema}.offsets AS o (topic, partition, owner_epoch, owner)
                     SELECT t, p, 1, $3 FROM unnest($1::text[], $2::int[]) AS u(t, p)
                     ON CONFLICT (topic, partition) DO UPDATE
                        SET owner_epoch = o.owner_epoch + 1, owner = EXCLUDED.owner, updated_at = now()
                     RETURNING topic, partition, next_offset, watermark_ns, owner_epoch",
                ),
                &[&topics, &partitions, &owner],
            )
            .await
            .context("claiming partitions")?;
        let mut claimed: BTreeMap<Tp, Claimed> = rows
            .iter()
            .map(|row| {
                let tp = Tp::new(row.get(0), row.get(1));
                let watermark: Option<i64> = row.get(3);
                let claimed = Claimed {
                    tp: tp.clone(),
                    next_offset: row.get(2),
                    watermark: watermark.map(DateTime::from_timestamp_nanos),
                    epoch: row.get(4),
                    seen: Vec::new(),
                    partials: Vec::new(),
                };
                (tp, claimed)
            })
            .collect();

        for row in tx
            .query(
                &self.sql(
                    "SELECT d.topic, d.partition, d.changes FROM {schema}.dedup d
                     JOIN unnest($1::text[], $2::int[]) AS u(t, p) ON d.topic = u.t AND d.partition = u.p
                     ORDER BY d.topic, d.partition, d.seq",
                ),
                &[&topics, &partitions],
            )
            .await
            .context("loading dedup ids")?
        {
            let tp = Tp::new(row.get(0), row.get(1));
            let changes = decode_changes(row.get(2)).with_context(|| format!("damaged dedup row of {tp}"))?;
            if let Some(c) = claimed.get_mut(&tp) {
                c.seen.extend(changes);
            }
        }
        let partials = self.load_partials(&tx, Some((&topics, &partitions)), now).await?;
        tx.commit().await?;
        for ((key, tp), partial) in partials {
            if let Some(c) = claimed.get_mut(&tp) {
                c.partials.push((key, partial));
            }
        }
        Ok(claimed.into_values().collect())
    }

    /// Every partial (all partitions), for merged reads and tests.
    pub async fn load_all(&self, now: DateTime<Utc>) -> anyhow::Result<BTreeMap<AggKey, BTreeMap<Tp, Partial>>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let partials = self.load_partials(&tx, None, now).await?;
        tx.commit().await?;
        let mut all: BTreeMap<AggKey, BTreeMap<Tp, Partial>> = BTreeMap::new();
        for ((key, tp), partial) in partials {
            all.entry(key).or_default().insert(tp, partial);
        }
        Ok(all)
    }

    async fn load_partials(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        only: Option<(&Vec<&str>, &Vec<i32>)>,
        now: DateTime<Utc>,
    ) -> anyhow::Result<BTreeMap<(AggKey, Tp), Partial>> {
        let (filter, no_topics, no_partitions) = (only.is_some(), Vec::<&str>::new(), Vec::<i32>::new());
        let (topics, partitions) = only.unwrap_or((&no_topics, &no_partitions));
        let rows = tx
            .query(
                &self.sql(
                    "SELECT agg_key, topic, partition, volume_usd::text, swaps, buys, first_seen_ns,
                            last_price::text, last_at, pending, buy_volume_usd::text
                     FROM {schema}.partials
                     WHERE NOT $3 OR (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                ),
                &[topics, partitions, &filter],
            )
            .await
            .context("loading partials")?;
        // Per (key, partition): totals, pending gauge, recent swaps.
        type Row = (TotalsPartial, i64, Vec<Arc<SwapEvent>>);
        let mut totals: BTreeMap<(AggKey, Tp), Row> = BTreeMap::new();
        for row in rows {
            let key_text: &str = row.get(0);
            let key = AggKey::parse(key_text).with_context(|| format!("bad key {key_text:?} in partials"))?;
            let tp = Tp::new(row.get(1), row.get(2));
            let (partial, pending) = totals_from_row(&row, 3)?;
            totals.insert((key, tp), (partial, pending, Vec::new()));
        }
        let rows = tx
            .query(
                &self.sql(
                    // The newest of each (key, partition), walking its primary
                    // key backwards: a kept swap history is not read.
                    "SELECT k.agg_key, k.topic, k.partition, r.swap
                     FROM {schema}.partials k
                     CROSS JOIN LATERAL (
                        SELECT x.at, x.swap FROM {schema}.recent_swaps x
                        WHERE x.agg_key = k.agg_key AND x.topic = k.topic AND x.partition = k.partition
                        ORDER BY x.at DESC LIMIT $4) r
                     WHERE NOT $3 OR (k.topic, k.partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))
                     ORDER BY k.agg_key, k.topic, k.partition, r.at DESC",
                ),
                &[topics, partitions, &filter, &(self.recent_cap as i64)],
            )
            .await
            .context("loading recent swaps")?;
        for row in rows {
            let key = AggKey::parse(row.get(0)).context("bad key in recent_swaps")?;
            let tp = Tp::new(row.get(1), row.get(2));
            let swap =
                codec::decode(row.get(3), Some(codec::CONTENT_TYPE_PROTOBUF)).context("bad swap in recent_swaps")?;
            if let Some((_, _, recent)) = totals.get_mut(&(key, tp)) {
                recent.push(Arc::new(swap));
            }
        }
        let (intervals, cutoffs): (Vec<&str>, Vec<i64>) =
            Interval::KEPT.iter().map(|i| (i.as_str(), now.timestamp() - memory_retention_secs(*i))).unzip();
        let rows = tx
            .query(
                &self.sql(
                    "SELECT agg_key, topic, partition, interval, t, open::text, open_at, close::text, close_at,
                            high::text, low::text, volume_usd::text, swaps, buys, buy_volume_usd::text, makers
                     FROM {schema}.candles c
                     JOIN unnest($4::text[], $5::bigint[]) AS r(i, cutoff) ON c.interval = r.i AND c.t >= r.cutoff
                     WHERE NOT $3 OR (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                ),
                &[topics, partitions, &filter, &intervals, &cutoffs],
            )
            .await
            .context("loading candles")?;
        let mut candles: HashMap<(AggKey, Tp), Vec<(Interval, CandlePartial)>> = HashMap::new();
        for row in rows {
            let key = AggKey::parse(row.get(0)).context("bad key in candles")?;
            let tp = Tp::new(row.get(1), row.get(2));
            let interval = Interval::parse_kept(row.get(3)).context("bad interval in candles")?;
            candles.entry((key, tp)).or_default().push((interval, candle_from_row(&row, 4)?));
        }
        Ok(totals
            .into_iter()
            .map(|(k, (totals, pending, recent))| {
                let c = candles.remove(&k).unwrap_or_default();
                (k, Partial::restore(totals, pending, c, recent))
            })
            .collect())
    }
}
