//! Checkpoints: a partition's position, dedup changes and partials, written
//! in one transaction under the owner's epoch (a fenced owner's checkpoint
//! does not land), and the upkeep that keeps their tables small.

use std::collections::HashMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use tokio_postgres::types::{ToSql, Type};

use super::{pipelined, Fenced, PgStore};
use crate::codec::{self, Encoding};
use crate::domain::aggregate::Interval;
use crate::domain::partial::{memory_retention_secs, AggKey, CandlePartial};
use crate::storage::encoding::encode_order;
use crate::stream::partition::encode_changes;
use crate::stream::{PartialChange, SeenChange, Tp};

/// Most dedup rows one checkpoint deletes per partition.
const EXPIRE_AT_ONCE: usize = 1_000;

/// A partition's progress in one checkpoint.
#[derive(Debug, Clone)]
pub struct Progress {
    pub tp: Tp,
    pub next_offset: i64,
    pub watermark: Option<DateTime<Utc>>,
    pub epoch: i64,
    pub seen: Vec<SeenChange>,
    /// Dedup rows wholly older than this are no longer needed.
    pub horizon: Option<DateTime<Utc>>,
}

/// Everything one checkpoint stores.
#[derive(Debug, Default)]
pub struct Checkpoint {
    pub progress: Vec<Progress>,
    pub partials: Vec<PartialChange>,
}

impl Checkpoint {
    /// Folds the next checkpoint into this one, so that storing the result
    /// stores what storing both, in order, would: per partition the later
    /// position and the dedup changes of both; per partial the later values.
    pub fn absorb(&mut self, later: Checkpoint) {
        for next in later.progress {
            match self.progress.iter_mut().find(|p| p.tp == next.tp) {
                Some(progress) => {
                    let mut seen = std::mem::take(&mut progress.seen);
                    seen.extend(next.seen);
                    *progress = Progress { seen, ..next };
                }
                None => self.progress.push(next),
            }
        }
        let mut index: HashMap<(AggKey, Tp), usize> =
            self.partials.iter().enumerate().map(|(i, c)| ((c.key.clone(), c.tp.clone()), i)).collect();
        for change in later.partials {
            match index.get(&(change.key.clone(), change.tp.clone())) {
                Some(&i) => self.partials[i].delta.absorb(change.delta),
                None => {
                    index.insert((change.key.clone(), change.tp.clone()), self.partials.len());
                    self.partials.push(change);
                }
            }
        }
    }
}

#[derive(Default)]
struct CandleColumns<'a> {
    keys: Vec<&'a str>,
    intervals: Vec<&'static str>,
    t: Vec<i64>,
    topics: Vec<&'a str>,
    partitions: Vec<i32>,
    open: Vec<String>,
    open_at: Vec<Vec<u8>>,
    close: Vec<String>,
    close_at: Vec<Vec<u8>>,
    high: Vec<String>,
    low: Vec<String>,
    volume: Vec<String>,
    buy_volume: Vec<String>,
    swaps: Vec<i64>,
    buys: Vec<i64>,
    makers: Vec<Vec<u8>>,
}

impl<'a> CandleColumns<'a> {
    fn push(&mut self, key: &'a str, tp: &'a Tp, interval: Interval, c: &CandlePartial) {
        self.keys.push(key);
        self.intervals.push(interval.as_str());
        self.t.push(c.t);
        self.topics.push(&tp.topic);
        self.partitions.push(tp.partition);
        self.open.push(c.open.price.to_string());
        self.open_at.push(encode_order(&c.open.at));
        self.close.push(c.close.price.to_string());
        self.close_at.push(encode_order(&c.close.at));
        self.high.push(c.high.to_string());
        self.low.push(c.low.to_string());
        self.volume.push(c.volume_usd.to_string());
        self.buy_volume.push(c.buy_volume_usd.to_string());
        self.swaps.push(c.swaps as i64);
        self.buys.push(c.buys as i64);
        self.makers.push(c.makers.to_bytes());
    }
}

impl PgStore {
    /// Stores one checkpoint in one transaction. Fails with [`Fenced`] when
    /// a partition has been claimed by another owner since.
    pub async fn checkpoint(&self, checkpoint: &Checkpoint) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;

        let (mut topics, mut partitions, mut offsets, mut watermarks, mut epochs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for p in &checkpoint.progress {
            topics.push(&*p.tp.topic);
            partitions.push(p.tp.partition);
            offsets.push(p.next_offset);
            watermarks.push(p.watermark.and_then(|w| w.timestamp_nanos_opt()));
            epochs.push(p.epoch);
        }
        let offsets_sql = self.sql(
            "UPDATE {schema}.offsets o SET next_offset = u.o, watermark_ns = u.w, updated_at = now()
             FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[]) AS u(t, p, o, w, e)
             WHERE o.topic = u.t AND o.partition = u.p AND o.owner_epoch = u.e",
        );
        let params: [&(dyn ToSql + Sync); 5] = [&topics, &partitions, &offsets, &watermarks, &epochs];
        let store_offsets = pipelined(&tx, &offsets_sql, &params, "storing offsets");

        let mut dedup = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut expire = (Vec::new(), Vec::new(), Vec::new());
        for p in &checkpoint.progress {
            if !p.seen.is_empty() {
                let max_event = p.seen.iter().map(|c| c.event_time).max().and_then(|t| t.timestamp_nanos_opt());
                dedup.0.push(&*p.tp.topic);
                dedup.1.push(p.tp.partition);
                dedup.2.push(p.next_offset);
                dedup.3.push(max_event.unwrap_or(i64::MAX));
                dedup.4.push(encode_changes(&p.seen));
            }
            if let Some(horizon) = p.horizon.and_then(|h| h.timestamp_nanos_opt()) {
                expire.0.push(&*p.tp.topic);
                expire.1.push(p.tp.partition);
                expire.2.push(horizon);
            }
        }
        let dedup_sql = self.sql(
            "INSERT INTO {schema}.dedup (topic, partition, seq, max_event_ns, changes)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::bytea[])
             ON CONFLICT (topic, partition, seq) DO UPDATE SET changes = EXCLUDED.changes,
                max_event_ns = EXCLUDED.max_event_ns",
        );
        let store_dedup = async {
            if dedup.0.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 5] = [&dedup.0, &dedup.1, &dedup.2, &dedup.3, &dedup.4];
            pipelined(&tx, &dedup_sql, &params, "storing dedup ids").await
        };
        let expire_sql = self.expire_dedup_sql();
        let expire_dedup = async {
            if expire.0.is_empty() {
                return Ok(0);
            }
            let params: [(&(dyn ToSql + Sync), Type); 3] =
                [(&expire.0, Type::TEXT_ARRAY), (&expire.1, Type::INT4_ARRAY), (&expire.2, Type::INT8_ARRAY)];
            tx.execute_typed(&expire_sql, &params).await.context("expiring dedup ids")
        };

        // One round trip for all of them; a fenced checkpoint is rolled back.
        let (updated, ..) = futures::try_join!(
            store_offsets,
            store_dedup,
            expire_dedup,
            self.store_partials(&tx, &checkpoint.partials)
        )?;
        if updated as usize != checkpoint.progress.len() {
            let names: Vec<String> = checkpoint.progress.iter().map(|p| p.tp.to_string()).collect();
            return Err(Fenced(names.join(", ")).into());
        }
        tx.commit().await.context("committing the checkpoint")?;
        Ok(())
    }

    /// Deletes a partition's dedup rows older than its horizon. Found
    /// through the `dedup_expiry` index and deleted by row address. At most
    /// `EXPIRE_AT_ONCE` rows per partition: a checkpoint adds one row per
    /// partition, so a backlog (a horizon that jumped) drains over the next
    /// checkpoints while each stays short.
    ///
    /// Unlike the other checkpoint statements it is not prepared but planned
    /// on every execution (about 0.15 ms), with its parameters and the
    /// table's current size. The table grows from nothing to an hour of
    /// checkpoints; a prepared statement keeps the generic plan it got
    /// after five executions, and one made while the table was nearly
    /// empty (a table scan, cheapest then) read the whole table on every
    /// checkpoint as it grew, until autovacuum analyzed it.
    fn expire_dedup_sql(&self) -> String {
        self.sql(&format!(
            "DELETE FROM {{schema}}.dedup WHERE ctid = ANY(ARRAY(
                SELECT x.ctid FROM unnest($1::text[], $2::int[], $3::bigint[]) AS u(t, p, h)
                CROSS JOIN LATERAL (SELECT ctid FROM {{schema}}.dedup x
                                    WHERE x.topic = u.t AND x.partition = u.p AND x.max_event_ns < u.h
                                    ORDER BY x.max_event_ns LIMIT {EXPIRE_AT_ONCE}) x))",
        ))
    }

    async fn store_partials(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        partials: &[PartialChange],
    ) -> anyhow::Result<()> {
        if partials.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = partials.iter().map(|c| c.key.to_string()).collect();
        let topics: Vec<&str> = partials.iter().map(|c| &*c.tp.topic).collect();
        let partitions: Vec<i32> = partials.iter().map(|c| c.tp.partition).collect();
        let volumes: Vec<String> = partials.iter().map(|c| c.delta.totals.volume_usd.to_string()).collect();
        let buy_volumes: Vec<String> = partials.iter().map(|c| c.delta.totals.buy_volume_usd.to_string()).collect();
        let swaps: Vec<i64> = partials.iter().map(|c| c.delta.totals.swaps as i64).collect();
        let buys: Vec<i64> = partials.iter().map(|c| c.delta.totals.buys as i64).collect();
        let first: Vec<Option<i64>> =
            partials.iter().map(|c| c.delta.totals.first_seen.and_then(|t| t.timestamp_nanos_opt())).collect();
        let last_price: Vec<Option<String>> =
            partials.iter().map(|c| c.delta.totals.last.map(|p| p.price.to_string())).collect();
        let last_at: Vec<Option<Vec<u8>>> =
            partials.iter().map(|c| c.delta.totals.last.map(|p| encode_order(&p.at))).collect();
        let pending: Vec<i64> = partials.iter().map(|c| c.delta.pending).collect();
        let partials_sql = self.sql(
            "INSERT INTO {schema}.partials AS x (agg_key, topic, partition, volume_usd, swaps, buys, first_seen_ns,
                                                  last_price, last_at, pending, buy_volume_usd, updated_at)
                 SELECT k, t, p, v::numeric, s, b, f, lp::numeric, la, pe, bv::numeric, now()
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[],
                             $8::text[], $9::bytea[], $10::bigint[], $11::text[]) AS u(k, t, p, v, s, b, f, lp, la, pe, bv)
                 ON CONFLICT (agg_key, topic, partition) DO UPDATE SET
                    volume_usd = EXCLUDED.volume_usd, buy_volume_usd = EXCLUDED.buy_volume_usd,
                    swaps = EXCLUDED.swaps, buys = EXCLUDED.buys,
                    first_seen_ns = EXCLUDED.first_seen_ns, last_price = EXCLUDED.last_price,
                    last_at = EXCLUDED.last_at, pending = EXCLUDED.pending, updated_at = now()",
        );
        let params: [&(dyn ToSql + Sync); 11] = [
            &keys,
            &topics,
            &partitions,
            &volumes,
            &swaps,
            &buys,
            &first,
            &last_price,
            &last_at,
            &pending,
            &buy_volumes,
        ];
        let store_totals = pipelined(tx, &partials_sql, &params, "storing partials");

        let (mut r_keys, mut r_topics, mut r_partitions, mut r_at, mut r_swap) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (PartialChange { tp, delta, .. }, key_text) in partials.iter().zip(&keys) {
            // With a history kept, every counted swap (the recent ones among them).
            let stored = if delta.history.is_empty() { &delta.new_recent } else { &delta.history };
            for swap in stored {
                r_keys.push(key_text.as_str());
                r_topics.push(&*tp.topic);
                r_partitions.push(tp.partition);
                r_at.push(encode_order(&swap.order_key()));
                r_swap.push(codec::encode(swap, Encoding::Protobuf));
            }
        }
        let recent_sql = self.sql(
            "INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bytea[])
             ON CONFLICT DO NOTHING",
        );
        let store_recent = async {
            if r_keys.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 5] = [&r_keys, &r_topics, &r_partitions, &r_at, &r_swap];
            pipelined(tx, &recent_sql, &params, "storing recent swaps").await
        };

        let mut c = CandleColumns::default();
        for (PartialChange { tp, delta, .. }, key_text) in partials.iter().zip(&keys) {
            for (interval, candle) in &delta.candles {
                c.push(key_text, tp, *interval, candle);
            }
        }
        let candles_sql = self.sql(
                "INSERT INTO {schema}.candles AS x (agg_key, interval, t, topic, partition, open, open_at, close, close_at,
                                                 high, low, volume_usd, swaps, buys, buy_volume_usd, makers)
                 SELECT k, i, t, tp, p, o::numeric, oa, c::numeric, ca, h::numeric, l::numeric, v::numeric, s, b,
                        bv::numeric, m
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::text[], $7::bytea[],
                             $8::text[], $9::bytea[], $10::text[], $11::text[], $12::text[], $13::bigint[], $14::bigint[],
                             $15::text[], $16::bytea[])
                      AS u(k, i, t, tp, p, o, oa, c, ca, h, l, v, s, b, bv, m)
                 ON CONFLICT (agg_key, interval, t, topic, partition) DO UPDATE SET
                    open = EXCLUDED.open, open_at = EXCLUDED.open_at, close = EXCLUDED.close,
                    close_at = EXCLUDED.close_at, high = EXCLUDED.high, low = EXCLUDED.low,
                    volume_usd = EXCLUDED.volume_usd, swaps = EXCLUDED.swaps, buys = EXCLUDED.buys,
                    buy_volume_usd = EXCLUDED.buy_volume_usd, makers = EXCLUDED.makers",
        );
        let store_candles = async {
            if c.keys.is_empty() {
                return Ok(0);
            }
            let params: [&(dyn ToSql + Sync); 16] = [
                &c.keys,
                &c.intervals,
                &c.t,
                &c.topics,
                &c.partitions,
                &c.open,
                &c.open_at,
                &c.close,
                &c.close_at,
                &c.high,
                &c.low,
                &c.volume,
                &c.swaps,
                &c.buys,
                &c.buy_volume,
                &c.makers,
            ];
            pipelined(tx, &candles_sql, &params, "storing candles").await
        };
        futures::try_join!(store_totals, store_recent, store_candles)?;
        Ok(())
    }

    /// Deletes stored swaps of the partitions `tps` beyond the configured
    /// count per key and partition and, with a swap history kept, older than
    /// it (by event time, relative to `now`). Each (key, partition) has a
    /// row in `partials`; its cut-off is found by walking the newest entries
    /// of the primary key, so a run reads what it keeps and what it deletes,
    /// never a sort of the table.
    pub async fn prune_recent(&self, tps: &[Tp], now: DateTime<Utc>) -> anyhow::Result<u64> {
        let topics: Vec<&str> = tps.iter().map(|tp| &*tp.topic).collect();
        let partitions: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
        // The first 8 bytes of an encoded event order are its time, so a
        // stored order below these bytes is an older swap.
        let older_than = if self.swap_history.is_zero() {
            i64::MAX
        } else {
            let history = chrono::Duration::from_std(self.swap_history).unwrap_or(chrono::TimeDelta::MAX);
            now.checked_sub_signed(history).and_then(|cut| cut.timestamp_nanos_opt()).unwrap_or(i64::MIN)
        };
        let older_than = older_than.to_be_bytes().to_vec();
        let client = self.client().await?;
        let deleted = client
            .execute(
                &self.sql(
                    "DELETE FROM {schema}.recent_swaps r USING (
                        SELECT k.agg_key, k.topic, k.partition, cut.at
                        FROM {schema}.partials k
                        JOIN unnest($2::text[], $3::int[]) AS u(t, p) ON k.topic = u.t AND k.partition = u.p
                        CROSS JOIN LATERAL (
                            SELECT x.at FROM {schema}.recent_swaps x
                            WHERE x.agg_key = k.agg_key AND x.topic = k.topic AND x.partition = k.partition
                            ORDER BY x.at DESC OFFSET $1 LIMIT 1) cut) old
                     WHERE r.agg_key = old.agg_key AND r.topic = old.topic
                       AND r.partition = old.partition AND r.at <= old.at AND r.at < $4",
                ),
                &[&(self.recent_cap as i64), &topics, &partitions, &older_than],
            )
            .await?;
        Ok(deleted)
    }

    /// Deletes the 1s candles of the partitions `tps` older than their
    /// memory retention, relative to `now`: they serve the rolling windows'
    /// edges only, and no read goes further back.
    pub async fn prune_seconds(&self, tps: &[Tp], now: DateTime<Utc>) -> anyhow::Result<u64> {
        let topics: Vec<&str> = tps.iter().map(|tp| &*tp.topic).collect();
        let partitions: Vec<i32> = tps.iter().map(|tp| tp.partition).collect();
        let oldest = now.timestamp() - memory_retention_secs(Interval::S1);
        let client = self.client().await?;
        let deleted = client
            .execute(
                &self.sql(
                    "DELETE FROM {schema}.candles
                     WHERE interval = '1s' AND t < $3
                       AND (topic, partition) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                ),
                &[&topics, &partitions, &oldest],
            )
            .await?;
        Ok(deleted)
    }
}

/// Against the PostgreSQL of `scripts/services up`, each test in a schema
/// of its own: the plans and deletes of the two statements whose cost grows
/// with the stored state.
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use super::*;
    use crate::config::Settings;
    use crate::domain::partial::Partial;
    use crate::domain::swap::{Status, SwapId};
    use crate::domain::token::TokenSymbol;
    use crate::domain::TxHash;
    use crate::storage::postgres::Claimed;

    async fn store(recent_cap: usize) -> (PgStore, String) {
        let schema = format!("unit_{:08x}", rand::random::<u32>());
        let settings = Settings::from_vars([("SWAPSTREAM_POSTGRES_SCHEMA".to_string(), schema.clone())]).unwrap();
        let store = PgStore::connect(&settings.postgres, recent_cap, &crate::telemetry::discard()).await.unwrap();
        (store, schema)
    }

    fn event_ns(seq: i64) -> i64 {
        (1_764_547_200_000 + seq) * 1_000_000
    }

    /// Table and index scans of `dedup` so far. The pool has one
    /// connection, so this also flushes the checkpoints' statistics.
    async fn dedup_scans(store: &PgStore, schema: &str) -> (i64, i64) {
        let client = store.client().await.unwrap();
        client.batch_execute("SELECT pg_stat_force_next_flush()").await.unwrap();
        let row = client
            .query_one(
                "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables
                 WHERE schemaname = $1 AND relname = 'dedup'",
                &[&schema],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    }

    #[tokio::test]
    async fn the_dedup_expiry_reads_through_the_index_however_the_table_grew() {
        let (migrated, schema) = store(100).await;
        // One connection: the checkpoints and the statistics share a backend.
        let vars = [("SWAPSTREAM_POSTGRES_SCHEMA", schema.as_str()), ("SWAPSTREAM_POSTGRES_POOL_SIZE", "1")];
        let settings = Settings::from_vars(vars.map(|(k, v)| (k.to_string(), v.to_string()))).unwrap();
        let store = PgStore::open(&settings.postgres, 100).unwrap();
        let tp = Tp::new("swaps.ETH", 0);
        let epoch = store.claim(std::slice::from_ref(&tp), "unit", Utc::now()).await.unwrap()[0].epoch;
        let insert = |from: i64, to: i64| {
            let store = &store;
            let sql = format!(
                "INSERT INTO {schema}.dedup (topic, partition, seq, max_event_ns, changes)
                 SELECT 'swaps.ETH', 0, s, (1764547200000 + s) * 1000000, '\\x00'::bytea FROM generate_series({from}, {to}) s"
            );
            async move { store.client().await.unwrap().batch_execute(&sql).await.unwrap() }
        };
        let checkpoint = |offset: i64, horizon: i64| {
            let change = SeenChange {
                id: SwapId { tx_hash: TxHash([7; 32]), log_index: offset as u32 },
                status: Status::Confirmed,
                event_time: DateTime::from_timestamp_nanos(event_ns(offset)),
                token_from: TokenSymbol::parse("ETH").unwrap(),
                token_to: TokenSymbol::parse("USDC").unwrap(),
            };
            let progress = Progress {
                tp: tp.clone(),
                next_offset: offset,
                watermark: Some(change.event_time),
                epoch,
                seen: vec![change],
                horizon: Some(DateTime::from_timestamp_nanos(event_ns(horizon))),
            };
            Checkpoint { progress: vec![progress], partials: Vec::new() }
        };

        // A nearly empty table, and enough checkpoints for a prepared
        // statement to settle on a plan: a table scan is cheapest now.
        insert(1, 5).await;
        for offset in 6..16 {
            store.checkpoint(&checkpoint(offset, 0)).await.unwrap();
        }
        // Then the table grows, with no statistics (autovacuum has not come
        // by), and later with them: no checkpoint reads the whole table.
        insert(16, 20_000).await;
        for (analyzed, offset, horizon) in [(false, 20_001, 11), (true, 20_002, 21)] {
            if analyzed {
                store.client().await.unwrap().batch_execute(&format!("ANALYZE {schema}.dedup")).await.unwrap();
            }
            let before = dedup_scans(&store, &schema).await;
            store.checkpoint(&checkpoint(offset, horizon)).await.unwrap();
            let after = dedup_scans(&store, &schema).await;
            assert!(after.1 > before.1, "analyzed: {analyzed}; the expiry did not use an index: {before:?} {after:?}");
            assert_eq!(after.0, before.0, "analyzed: {analyzed}; the expiry read the whole table");
        }

        // The checkpoints deleted exactly the rows behind the horizon.
        let client = store.client().await.unwrap();
        let count = |range: &'static str| {
            let (client, schema) = (&client, &schema);
            async move {
                let row =
                    client.query_one(&format!("SELECT count(*) FROM {schema}.dedup WHERE {range}"), &[]).await.unwrap();
                row.get::<_, i64>(0)
            }
        };
        assert_eq!(count("seq <= 20").await, 0, "rows behind the horizon stay");
        assert_eq!(count("seq BETWEEN 21 AND 20002").await, 19_982, "rows within the horizon were deleted");
        drop(client);
        migrated.drop_schema().await.unwrap();
    }

    /// Checkpoints of 24 swaps (ETH/USDC and ETH/SOL over two partitions),
    /// one after every `per` swaps, as the reader would build them.
    fn checkpoints(epoch: i64, per: usize) -> Vec<Checkpoint> {
        let tps = [Tp::new("swaps.ETH", 0), Tp::new("swaps.ETH", 1)];
        let mut partials: BTreeMap<(AggKey, Tp), Partial> = BTreeMap::new();
        let mut out = Vec::new();
        let mut progress: BTreeMap<Tp, Progress> = BTreeMap::new();
        for i in 0..24u32 {
            let time = DateTime::from_timestamp(1_764_547_200 + i64::from(i) * 37, 0).unwrap();
            let swap = crate::domain::RawSwap {
                tx_hash: Some(format!("0x{i:064x}")),
                timestamp: Some(crate::domain::RawTime::Unix { seconds: time.timestamp(), nanos: 0 }),
                token_from: Some("ETH".into()),
                token_to: Some(if i % 3 == 0 { "SOL" } else { "USDC" }.into()),
                amount_from: Some(format!("1.{i}")),
                amount_to: Some(format!("{}.25", 4000 + i)),
                usd_value: Some(format!("{}.5", 4000 + i)),
                ..Default::default()
            }
            .validate()
            .unwrap();
            let swap = Arc::new(swap);
            let tp = tps[i as usize % 2].clone();
            for key in AggKey::of_swap(&swap) {
                partials.entry((key.clone(), tp.clone())).or_default().apply(&key, &swap, 5);
            }
            let change = SeenChange {
                id: swap.id,
                status: Status::Confirmed,
                event_time: swap.timestamp,
                token_from: swap.token_from.clone(),
                token_to: swap.token_to.clone(),
            };
            let entry = progress.entry(tp.clone()).or_insert_with(|| Progress {
                tp: tp.clone(),
                next_offset: 0,
                watermark: None,
                epoch,
                seen: Vec::new(),
                horizon: None,
            });
            entry.next_offset = i64::from(i) / 2 + 1;
            entry.watermark = Some(swap.timestamp);
            entry.seen.push(change);
            if (i as usize + 1) % per == 0 || i == 23 {
                let partials = partials
                    .iter_mut()
                    .filter_map(|((key, tp), partial)| {
                        Some(PartialChange { key: key.clone(), tp: tp.clone(), delta: partial.take_delta()? })
                    })
                    .collect();
                out.push(Checkpoint { progress: std::mem::take(&mut progress).into_values().collect(), partials });
            }
        }
        out
    }

    #[tokio::test]
    async fn a_checkpoint_that_absorbed_the_next_ones_stores_what_they_store_in_turn() {
        let tps = [Tp::new("swaps.ETH", 0), Tp::new("swaps.ETH", 1)];
        let (in_turn, _) = store(5).await;
        let (absorbed, _) = store(5).await;
        let epoch = in_turn.claim(&tps, "unit", Utc::now()).await.unwrap()[0].epoch;
        assert_eq!(absorbed.claim(&tps, "unit", Utc::now()).await.unwrap()[0].epoch, epoch);

        for checkpoint in checkpoints(epoch, 5) {
            in_turn.checkpoint(&checkpoint).await.unwrap();
        }
        let mut all = checkpoints(epoch, 5).into_iter();
        let mut merged = all.next().unwrap();
        for later in all {
            merged.absorb(later);
        }
        assert_eq!(merged.progress.len(), 2, "one position per partition");
        absorbed.checkpoint(&merged).await.unwrap();

        // Claimed again: the same offsets, watermarks, dedup ids and partials.
        let describe = |claimed: Vec<Claimed>| {
            claimed
                .into_iter()
                .map(|c| {
                    let partials: BTreeMap<String, String> =
                        c.partials.iter().map(|(k, p)| (k.to_string(), format!("{p:?}"))).collect();
                    let mut seen: Vec<String> = c.seen.iter().map(|s| format!("{s:?}")).collect();
                    seen.sort();
                    (c.tp, c.next_offset, c.watermark, seen, partials)
                })
                .collect::<Vec<_>>()
        };
        let expected = describe(in_turn.claim(&tps, "unit", Utc::now()).await.unwrap());
        let got = describe(absorbed.claim(&tps, "unit", Utc::now()).await.unwrap());
        assert_eq!(expected[0].1, Some(12));
        assert_eq!(expected[0].3.len(), 12, "every swap's dedup id");
        assert_eq!(expected[0].4.len(), 5, "three tokens and two pairs: {:?}", expected[0].4.keys());
        assert_eq!(got, expected);
        in_turn.drop_schema().await.unwrap();
        absorbed.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn seconds_older_than_their_retention_are_deleted_in_the_partitions_asked_for() {
        let tps = [Tp::new("swaps.ETH", 0), Tp::new("swaps.ETH", 1)];
        let (store, schema) = store(5).await;
        let epoch = store.claim(&tps, "unit", Utc::now()).await.unwrap()[0].epoch;
        for checkpoint in checkpoints(epoch, 5) {
            store.checkpoint(&checkpoint).await.unwrap();
        }
        let client = store.client().await.unwrap();
        let count = |interval: &'static str| {
            let (client, schema) = (&client, &schema);
            async move {
                let sql = format!("SELECT count(*) FROM {schema}.candles WHERE interval = $1");
                client.query_one(&sql, &[&interval]).await.unwrap().get::<_, i64>(0)
            }
        };
        // 24 swaps 37 s apart, each of 3 keys: a second each.
        assert_eq!(count("1s").await, 72);
        let minutes = count("1m").await;
        // Retention ends 370 s after the first swap: swaps 0 to 9 are older.
        let now = DateTime::from_timestamp(1_764_547_200 + 370 + memory_retention_secs(Interval::S1), 0).unwrap();
        assert_eq!(store.prune_seconds(&tps[..1], now).await.unwrap(), 15, "swaps 0, 2, 4, 6, 8");
        assert_eq!(store.prune_seconds(&tps, now).await.unwrap(), 15, "swaps 1, 3, 5, 7, 9");
        assert_eq!(store.prune_seconds(&tps, now).await.unwrap(), 0);
        assert_eq!(count("1s").await, 42);
        assert_eq!(count("1m").await, minutes, "only seconds are deleted");
        store.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn pruning_keeps_the_newest_recent_swaps_of_each_key_and_partition() {
        let (store, schema) = store(100).await;
        let client = store.client().await.unwrap();
        // token:A has 150 swaps in partitions 0 and 1, token:B 40 in partition 0.
        client
            .batch_execute(&format!(
                "INSERT INTO {schema}.partials (agg_key, topic, partition, volume_usd, swaps, buys, pending)
                 VALUES ('token:A', 'swaps.A', 0, 0, 0, 0, 0), ('token:A', 'swaps.A', 1, 0, 0, 0, 0),
                        ('token:B', 'swaps.B', 0, 0, 0, 0, 0);
                 INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
                 SELECT 'token:A', 'swaps.A', p, int8send(s), '\\x00'::bytea
                 FROM generate_series(0, 1) p, generate_series(1, 150) s;
                 INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
                 SELECT 'token:B', 'swaps.B', 0, int8send(s), '\\x00'::bytea FROM generate_series(1, 40) s;"
            ))
            .await
            .unwrap();

        let a1 = [Tp::new("swaps.A", 1)];
        assert_eq!(store.prune_recent(&a1, Utc::now()).await.unwrap(), 50, "only the partitions asked for");
        let all = [Tp::new("swaps.A", 0), Tp::new("swaps.A", 1), Tp::new("swaps.B", 0)];
        assert_eq!(store.prune_recent(&all, Utc::now()).await.unwrap(), 50);
        let rows = client
            .query(
                &format!(
                    "SELECT agg_key, partition, count(*), (array_agg(at ORDER BY at))[1] FROM {schema}.recent_swaps
                     GROUP BY agg_key, partition ORDER BY agg_key, partition"
                ),
                &[],
            )
            .await
            .unwrap();
        let kept: Vec<(String, i32, i64, Vec<u8>)> =
            rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
        assert_eq!(
            kept,
            vec![
                ("token:A".to_string(), 0, 100, 51i64.to_be_bytes().to_vec()),
                ("token:A".to_string(), 1, 100, 51i64.to_be_bytes().to_vec()),
                ("token:B".to_string(), 0, 40, 1i64.to_be_bytes().to_vec()),
            ]
        );
        assert_eq!(store.prune_recent(&all, Utc::now()).await.unwrap(), 0, "a second prune finds nothing");
        store.drop_schema().await.unwrap();
    }

    #[tokio::test]
    async fn with_a_swap_history_pruning_keeps_the_swaps_younger_than_it_and_the_newest_beyond() {
        let (store, schema) = store(100).await;
        let store = store.with_swap_history(std::time::Duration::from_secs(1205));
        let client = store.client().await.unwrap();
        let now = Utc::now();
        // token:A has a swap every 10 s over the last 1500 s; token:B 40,
        // every 100 s, all but the newest 12 older than the history.
        client
            .execute(
                &format!(
                    "WITH p AS (INSERT INTO {schema}.partials (agg_key, topic, partition, volume_usd, swaps, buys, pending)
                                VALUES ('token:A', 'swaps.A', 0, 0, 0, 0, 0), ('token:B', 'swaps.B', 0, 0, 0, 0, 0))
                     INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
                     SELECT 'token:A', 'swaps.A', 0, int8send($1 - s * 10000000000), '\\x00'::bytea
                     FROM generate_series(1, 150) s
                     UNION ALL
                     SELECT 'token:B', 'swaps.B', 0, int8send($1 - s * 100000000000), '\\x00'::bytea
                     FROM generate_series(1, 40) s"
                ),
                &[&now.timestamp_nanos_opt().unwrap()],
            )
            .await
            .unwrap();

        let all = [Tp::new("swaps.A", 0), Tp::new("swaps.B", 0)];
        assert_eq!(store.prune_recent(&all, now).await.unwrap(), 30, "token:A's swaps older than 1205 s");
        let rows = client
            .query(&format!("SELECT agg_key, count(*) FROM {schema}.recent_swaps GROUP BY 1 ORDER BY 1"), &[])
            .await
            .unwrap();
        let kept: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(kept, [("token:A".to_string(), 120), ("token:B".to_string(), 40)], "token:B is under the count");
        store.drop_schema().await.unwrap();
    }
}
