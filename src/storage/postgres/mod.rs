//! PostgreSQL: the source of truth. Offsets, partials, candles and dedup ids
//! are written together, one transaction per checkpoint, so a partition's
//! state and its resume offset never disagree.
//!
//! By job: `schema` (migrations, candle partitions), `claims` (taking
//! partitions over, fencing the previous owner), `checkpoint` (writing
//! under the owner's epoch, upkeep), `history` (reads for REST), `rows`
//! (rows to domain values). This file holds the pool.

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use slog::Logger;
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use crate::config::PostgresSettings;

mod checkpoint;
mod claims;
mod history;
mod rows;
mod schema;

pub use checkpoint::{Checkpoint, Progress};
pub use claims::Claimed;
pub use history::{CANDLES as CANDLES_SQL, SWAPS_BEFORE as SWAPS_BEFORE_SQL};

/// Longest a transaction of ours may sit idle before the server ends it.
const IDLE_IN_TRANSACTION: std::time::Duration = std::time::Duration::from_secs(10);

/// Another instance took the partition over: this checkpoint must not land.
#[derive(Debug, thiserror::Error)]
#[error("partition ownership moved to another instance (fenced): {0}")]
pub struct Fenced(pub String);

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    schema: String,
    /// Recent swaps kept per (key, partition).
    recent_cap: usize,
    /// How long every stored swap is kept beyond the recent ones, by event
    /// time; zero: none.
    swap_history: std::time::Duration,
}

impl PgStore {
    /// Opens the pool and applies pending migrations.
    pub async fn connect(settings: &PostgresSettings, recent_cap: usize, log: &Logger) -> anyhow::Result<PgStore> {
        let store = PgStore::open(settings, recent_cap)?;
        store.migrate(log).await?;
        Ok(store)
    }

    /// Opens the pool only (connections are made on first use), for a
    /// second client of a schema already migrated.
    pub fn open(settings: &PostgresSettings, recent_cap: usize) -> anyhow::Result<PgStore> {
        let mut config: tokio_postgres::Config =
            settings.url.expose().parse().context("parsing SWAPSTREAM_POSTGRES_URL")?;
        if let Some(password) = &settings.password {
            config.password(password.expose());
        }
        config.application_name("swapstream").connect_timeout(std::time::Duration::from_secs(5));
        // A process paused (SIGSTOP, a VM freeze) inside a checkpoint holds
        // its partitions' row locks; the new owner's claim would wait for
        // them for ever. The server ends such a transaction instead.
        let guard = format!("-c idle_in_transaction_session_timeout={}", IDLE_IN_TRANSACTION.as_millis());
        let options = config.get_options().map_or_else(|| guard.clone(), |own| format!("{own} {guard}"));
        config.options(&options);
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(10)))
            .build()
            .context("building the PostgreSQL pool")?;
        Ok(PgStore { pool, schema: settings.schema.clone(), recent_cap, swap_history: std::time::Duration::ZERO })
    }

    /// Keeps the stored swaps of each key for `history` by event time, not
    /// only the newest `recent_cap` (what the consumer stores must match:
    /// every counted swap, see `PartialDelta::history`).
    pub fn with_swap_history(mut self, history: std::time::Duration) -> PgStore {
        self.swap_history = history;
        self
    }

    fn sql(&self, template: &str) -> String {
        template.replace("{schema}", &self.schema)
    }

    async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        self.pool.get().await.context("connecting to PostgreSQL")
    }

    /// Answers whether PostgreSQL is reachable, for readiness.
    pub async fn ping(&self) -> anyhow::Result<()> {
        self.client().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Drops this store's schema and everything in it (tests only).
    pub async fn drop_schema(&self) -> anyhow::Result<()> {
        self.client().await?.batch_execute(&self.sql("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
        Ok(())
    }
}

/// One statement of a checkpoint, prepared once per connection. Awaited
/// together, the statements of a transaction are pipelined by the client:
/// one round trip for all of them.
async fn pipelined(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    what: &'static str,
) -> anyhow::Result<u64> {
    let statement = tx.prepare_cached(sql).await.context(what)?;
    tx.execute(&statement, params).await.context(what)
}
