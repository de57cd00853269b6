//! The read model: where REST answers and WebSocket snapshots come from. Live values: from this process' aggregator
//! actors while they hold every partition (one instance, or role `all`),
//! otherwise from Redis, merged over all partitions; PostgreSQL for what
//! Redis lacks (a key not yet rebuilt after a flush) and for candles older
//! than the live retention. Both live sources go through the same merge and
//! the same rendering, so they give the same JSON for the same state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::Utc;

use crate::actors::aggregator::{Aggregators, Query};
use crate::domain::aggregate::{Candle, Interval};
use crate::domain::partial::{memory_retention_secs, AggKey, Merged};
use crate::metrics::METRICS;
use crate::storage::postgres::PgStore;
use crate::storage::redis::RedisStore;

pub mod stats;

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{0}")]
    NotFound(String),
    #[error("{dependency} is unavailable: {detail}")]
    Unavailable { dependency: &'static str, detail: String },
}

impl ReadError {
    fn redis(error: anyhow::Error) -> ReadError {
        ReadError::Unavailable { dependency: "redis", detail: format!("{error:#}") }
    }

    fn postgres(error: anyhow::Error) -> ReadError {
        ReadError::Unavailable { dependency: "postgres", detail: format!("{error:#}") }
    }
}

/// How long the list of every claimed partition is trusted when the
/// actors' ownership has not changed.
const PARTITIONS_TTL: Duration = Duration::from_secs(5);

/// Stats need the 1m candles of the longest window and one more minute.
const STATS_SINCE_SECS: i64 = 86_400 + 60;

#[derive(Clone)]
pub struct Live {
    redis: RedisStore,
    pg: PgStore,
    actors: Option<Actors>,
    cache: Arc<StatsCache>,
}

/// This process' aggregators, and what it knows of every partition.
#[derive(Clone)]
struct Actors {
    aggregators: Aggregators,
    completeness: Arc<Mutex<Option<Completeness>>>,
}

/// Whether the actors held every claimed partition, as decided at an
/// ownership generation and time.
struct Completeness {
    generation: u64,
    decided_at: Instant,
    complete: bool,
}

/// Rendered stats bodies reused for a short time.
struct StatsCache {
    ttl: Duration,
    entries: Mutex<HashMap<AggKey, (Instant, Bytes)>>,
}

impl Live {
    /// Redis and PostgreSQL only (role `api`).
    pub fn stores(redis: RedisStore, pg: PgStore, cache_ttl: Duration) -> Live {
        Live { redis, pg, actors: None, cache: Arc::new(StatsCache { ttl: cache_ttl, entries: Mutex::default() }) }
    }

    /// Also this process' aggregator actors (roles `consumer` and `all`).
    pub fn with_actors(self, aggregators: Aggregators) -> Live {
        Live { actors: Some(Actors { aggregators, completeness: Arc::default() }), ..self }
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    /// The actors when they hold every partition any instance has claimed.
    /// Decided once per ownership generation (and at least every
    /// `PARTITIONS_TTL`), so a request normally only compares a number.
    async fn complete_actors(&self) -> Option<&Aggregators> {
        let actors = self.actors.as_ref()?;
        let generation = actors.aggregators.owned_generation();
        let cached = {
            let guard = actors.completeness.lock().expect("completeness lock");
            guard
                .as_ref()
                .filter(|c| c.generation == generation && c.decided_at.elapsed() < PARTITIONS_TTL)
                .map(|c| c.complete)
        };
        let complete = match cached {
            Some(complete) => complete,
            None => {
                // Claims are written before the actors get their partials,
                // so the list read now covers every owner of this generation.
                let all = self.pg.partitions().await.ok()?;
                let (generation, complete) = actors.aggregators.holds_all(&all);
                *actors.completeness.lock().expect("completeness lock") =
                    Some(Completeness { generation, decided_at: Instant::now(), complete });
                complete
            }
        };
        complete.then_some(&actors.aggregators)
    }

    /// Every token and pair seen, in order.
    pub async fn keys(&self) -> Result<Vec<AggKey>, ReadError> {
        if let Some(aggregators) = self.complete_actors().await {
            read_from("actors");
            return Ok(aggregators.all().into_iter().map(|(key, _)| key).collect());
        }
        read_from("redis");
        let mut keys = self.redis.keys().await.map_err(ReadError::redis)?;
        keys.sort();
        Ok(keys)
    }

    /// The merged live state of `key` with candles of `intervals` from
    /// `since` on; `NotFound` when no swap of it was seen.
    pub async fn merged(&self, key: &AggKey, intervals: &[Interval], since: i64) -> Result<Merged, ReadError> {
        if let Some(aggregators) = self.complete_actors().await {
            read_from("actors");
            let addr = aggregators.get(key).ok_or_else(|| not_found(key))?;
            let query = Query { intervals: intervals.to_vec(), since, recent: 0 };
            let (merged, _) = addr
                .send(query)
                .await
                .map_err(|e| ReadError::Unavailable { dependency: "aggregator", detail: e.to_string() })?;
            return Ok(merged);
        }
        if self.redis.has_key(key).await.map_err(ReadError::redis)? {
            read_from("redis");
            return self.redis.merged(key, intervals, since).await.map_err(ReadError::redis);
        }
        // Not in Redis (never seen, or Redis is being rebuilt): PostgreSQL.
        read_from("postgres");
        let mut merged = self.pg.merged(key).await.map_err(ReadError::postgres)?.ok_or_else(|| not_found(key))?;
        let now = Utc::now().timestamp();
        for &interval in intervals {
            let candles = self.pg.candles(key, interval, since, now).await.map_err(ReadError::postgres)?;
            merged.candles.insert(interval, candles);
        }
        Ok(merged)
    }

    /// The stats object of `key`, rendered; reused for the cache time.
    pub async fn stats(&self, key: &AggKey) -> Result<Bytes, ReadError> {
        if let Some(body) = self.cache.get(key) {
            return Ok(body);
        }
        let now = Utc::now();
        let merged = self.merged(key, &[Interval::M1], now.timestamp() - STATS_SINCE_SECS).await?;
        let body = Bytes::from(serde_json::to_vec(&stats::StatsBody::new(key, &merged, now)).expect("JSON"));
        self.cache.put(key, &body);
        Ok(body)
    }

    /// Candles of `interval` with `from <= t <= to`, the newest `limit`,
    /// oldest first: live ones within the live retention, PostgreSQL's before.
    pub async fn candles(
        &self,
        key: &AggKey,
        interval: Interval,
        from: i64,
        to: i64,
        limit: usize,
    ) -> Result<Vec<Candle>, ReadError> {
        let now = Utc::now().timestamp();
        // Buckets from `edge` on are live in every source; older ones only
        // in PostgreSQL.
        let edge = (now - memory_retention_secs(interval)).div_euclid(interval.seconds()) * interval.seconds()
            + interval.seconds();
        let merged = self.merged(key, &[interval], from.max(edge)).await?;
        // Empty when the whole range is older than the edge.
        let mut candles = merged.candles(interval, from.max(edge), to, limit);
        if from < edge && candles.len() < limit {
            let older = self.pg.candles(key, interval, from, to.min(edge - 1)).await.map_err(ReadError::postgres)?;
            let wanted = limit - candles.len();
            let skip = older.len().saturating_sub(wanted);
            let mut all: Vec<Candle> = older.values().skip(skip).map(|c| c.to_candle()).collect();
            all.append(&mut candles);
            candles = all;
        }
        Ok(candles)
    }

    /// The most recent confirmed swaps of `key`, newest first, wire form.
    pub async fn recent(&self, key: &AggKey, limit: usize) -> Result<Vec<serde_json::Value>, ReadError> {
        if let Some(aggregators) = self.complete_actors().await {
            read_from("actors");
            let addr = aggregators.get(key).ok_or_else(|| not_found(key))?;
            let query = Query { intervals: Vec::new(), since: i64::MAX, recent: limit };
            let (_, swaps) = addr
                .send(query)
                .await
                .map_err(|e| ReadError::Unavailable { dependency: "aggregator", detail: e.to_string() })?;
            return Ok(swaps.iter().map(|s| serde_json::to_value(s.to_wire()).expect("JSON")).collect());
        }
        if !self.redis.has_key(key).await.map_err(ReadError::redis)? {
            self.pg.merged(key).await.map_err(ReadError::postgres)?.ok_or_else(|| not_found(key))?;
        }
        read_from("redis");
        self.redis.recent(key, limit).await.map_err(ReadError::redis)
    }
}

/// The stats object of a key, merged over every partition from Redis
/// (WebSocket snapshots: an unknown key reads as all zeros).
pub async fn stats_from_redis(redis: &RedisStore, key: &AggKey) -> anyhow::Result<serde_json::Value> {
    let now = Utc::now();
    let merged = redis.merged(key, &[Interval::M1], now.timestamp() - STATS_SINCE_SECS).await?;
    Ok(stats::stats_json(key, &merged, now))
}

fn read_from(source: &str) {
    METRICS.rest_reads.with_label_values(&[source]).inc();
}

fn not_found(key: &AggKey) -> ReadError {
    ReadError::NotFound(format!("no swaps seen for {key}"))
}

impl StatsCache {
    fn get(&self, key: &AggKey) -> Option<Bytes> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.lock().expect("stats cache lock");
        entries.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, body)| body.clone())
    }

    fn put(&self, key: &AggKey, body: &Bytes) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("stats cache lock");
        if entries.len() > 10_000 {
            let ttl = self.ttl;
            entries.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        entries.insert(key.clone(), (Instant::now(), body.clone()));
    }
}
