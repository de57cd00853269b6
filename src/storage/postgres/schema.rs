//! The schema: versioned migrations, applied once each under a lock, and
//! the daily candle partitions created ahead of time.

use anyhow::Context as _;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use slog::{info, warn, Logger};

use super::PgStore;

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "initial", include_str!("migrations/0001_initial.sql")),
    (2, "candles", include_str!("migrations/0002_candles.sql")),
    (3, "dedup_expiry", include_str!("migrations/0003_dedup_expiry.sql")),
    (4, "buy_volume", include_str!("migrations/0004_buy_volume.sql")),
    (5, "makers", include_str!("migrations/0005_makers.sql")),
    (6, "seconds", include_str!("migrations/0006_seconds.sql")),
];

impl PgStore {
    /// Applies pending migrations under an advisory lock, so instances
    /// starting together do not race.
    pub(super) async fn migrate(&self, log: &Logger) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let lock_key = format!("swapstream:{}", self.schema);
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key]).await?;
        tx.batch_execute(&self.sql(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
                 version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());",
        ))
        .await?;
        let applied: Vec<i32> = tx
            .query(&self.sql("SELECT version FROM {schema}.schema_migrations"), &[])
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let timescale =
            tx.query_opt("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'", &[]).await?.is_some();
        for (version, name, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            let partitioning = if timescale { "" } else { "PARTITION BY RANGE (t)" };
            tx.batch_execute(&self.sql(sql).replace("{candles_partitioning}", partitioning))
                .await
                .with_context(|| format!("migration {version} ({name})"))?;
            if *version == 2 && timescale {
                tx.batch_execute("CREATE EXTENSION IF NOT EXISTS timescaledb").await?;
                tx.execute(
                    "SELECT create_hypertable($1::text::regclass, 't', chunk_time_interval => 604800::bigint, if_not_exists => true)",
                    &[&format!("{}.candles", self.schema)],
                )
                .await?;
            }
            tx.execute(
                &self.sql("INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2)"),
                &[version, name],
            )
            .await?;
            info!(log, "migration applied"; "version" => version, "name" => name, "timescaledb" => timescale);
        }
        tx.commit().await?;
        self.ensure_candle_partitions(Utc::now(), log).await
    }

    /// Creates monthly partitions of the candle table around `now` (when it
    /// is range-partitioned rather than a hypertable), and a default one.
    pub async fn ensure_candle_partitions(&self, now: DateTime<Utc>, log: &Logger) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        // DDL under the same lock as migrations: instances starting together
        // would otherwise race on "IF NOT EXISTS".
        let mut client = client.transaction().await?;
        let lock_key = format!("swapstream:{}", self.schema);
        client.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key]).await?;
        let partitioned = client
            .query_opt(
                "SELECT 1 FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = 'candles'",
                &[&self.schema],
            )
            .await?
            .is_some();
        if !partitioned {
            return Ok(());
        }
        let first = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).context("month start")?;
        for offset in -1i32..=3 {
            let start = if offset < 0 {
                first.checked_sub_months(chrono::Months::new(offset.unsigned_abs()))
            } else {
                first.checked_add_months(chrono::Months::new(offset as u32))
            };
            let Some(start) = start else { continue };
            let end = start.checked_add_months(chrono::Months::new(1)).context("month end")?;
            let seconds = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp()).unwrap_or_default();
            let name = format!("candles_y{}m{:02}", start.year(), start.month());
            let sql = format!(
                "CREATE TABLE IF NOT EXISTS {schema}.{name} PARTITION OF {schema}.candles FOR VALUES FROM ({from}) TO ({to})",
                schema = self.schema,
                from = seconds(start),
                to = seconds(end),
            );
            // A savepoint, so that one refused partition (rows for its range
            // already in the default partition) does not abort the others.
            let savepoint = client.savepoint(format!("p_{name}")).await?;
            match savepoint.batch_execute(&sql).await {
                Ok(()) => savepoint.commit().await?,
                Err(e) => {
                    warn!(log, "cannot create candle partition"; "partition" => &name, "error" => format!("{e:#}"));
                    savepoint.rollback().await?;
                }
            }
        }
        client
            .batch_execute(
                &self.sql("CREATE TABLE IF NOT EXISTS {schema}.candles_default PARTITION OF {schema}.candles DEFAULT"),
            )
            .await?;
        client.commit().await?;
        Ok(())
    }
}
