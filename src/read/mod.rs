//! The read model: where REST answers and WebSocket snapshots come from.
//! Live values: from this process' own live state (its aggregator actors,
//! through [`LocalState`]) while they hold every partition (one instance, or role `all`),
//! otherwise from Redis, merged over all partitions; PostgreSQL for what
//! Redis lacks (a key not yet rebuilt after a flush) and for candles older
//! than the live retention. Both live sources go through the same merge and
//! the same rendering, so they give the same JSON for the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

use crate::domain::aggregate::{Candle, Interval};
use crate::domain::partial::{memory_retention_secs, AggKey, Merged, Select};
use crate::domain::window;
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::storage::postgres::PgStore;
use crate::storage::redis::{Kept, RedisStore};
use crate::stream::Tp;

pub mod list;
pub mod rank;
pub mod schema;
pub mod stats;
pub mod swaps;

/// Why a read gave no answer.
#[derive(Debug, Clone, thiserror::Error)]
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

/// What the read model asks of this process' own live state (the aggregator
/// actors of roles `consumer` and `all`). Implemented where that state
/// lives, so that the read model depends on no actor.
pub trait LocalState: Send + Sync + 'static {
    /// Changes whenever the partitions held here change.
    fn owned_generation(&self) -> u64;
    /// The generation, and whether every partition of `claimed` is held here.
    fn holds_all(&self, claimed: &BTreeSet<Tp>) -> (u64, bool);
    /// Every token and pair with live state here.
    fn keys(&self) -> Vec<AggKey>;
    /// `key` merged over the partitions held here, with the candles
    /// `select` names and its `recent` newest swaps; `None` when `key` has
    /// no live state here.
    fn query(&self, key: &AggKey, select: Select, recent: usize) -> Option<LocalAnswer>;
}

/// A [`LocalState::query`] in flight; the error says why it got no answer.
pub type LocalAnswer = BoxFuture<'static, Result<(Merged, Vec<Arc<SwapEvent>>), String>>;

/// How long the list of every claimed partition is trusted when the
/// actors' ownership has not changed.
const PARTITIONS_TTL: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Live {
    redis: RedisStore,
    pg: PgStore,
    local: Option<Local>,
    cache: Arc<StatsCache>,
    /// How far ahead of the clock a swap's time may be: how far past the
    /// current second the rolling windows reach.
    future_secs: i64,
    /// Renders of a key's stats from the stores running now, by key and
    /// second: a request that finds none kept waits for the one running
    /// instead of starting another (when a minute begins, every kept body
    /// is stale at once).
    rendering: Arc<Mutex<HashMap<(AggKey, i64), Rendering>>>,
    /// Sorted lists' rankings, and how long one is used ([`rank`]).
    rankings: Arc<rank::Rankings>,
    rank_max_age: Duration,
}

type Rendering = futures::future::Shared<BoxFuture<'static, Result<Bytes, ReadError>>>;

/// This process' live state, and what it knows of every partition.
#[derive(Clone)]
struct Local {
    state: Arc<dyn LocalState>,
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
    entries: Mutex<HashMap<AggKey, CachedStats>>,
    /// When expired entries were last dropped.
    swept: Mutex<Option<Instant>>,
}

struct CachedStats {
    rendered_at: Instant,
    body: Bytes,
    /// A render to replace it is running.
    refreshing: bool,
}

/// What the cache holds for a key.
enum Cached {
    /// Younger than the cache time: the answer.
    Fresh(Bytes),
    /// Older, but younger than twice the cache time: the answer while one
    /// request renders its successor (`true` for the request that should).
    Stale(Bytes, bool),
    Missing,
}

impl Live {
    /// Redis and PostgreSQL only (role `api`); `max_future` as the
    /// consumers' `SWAPSTREAM_MAX_FUTURE_SECS`.
    pub fn stores(redis: RedisStore, pg: PgStore, cache_ttl: Duration, max_future: Duration) -> Live {
        let cache = Arc::new(StatsCache { ttl: cache_ttl, entries: Mutex::default(), swept: Mutex::default() });
        let future_secs = max_future.as_secs() as i64;
        let (rankings, rank_max_age) = (Arc::default(), rank::DEFAULT_RANK_MAX_AGE);
        Live { redis, pg, local: None, cache, future_secs, rendering: Arc::default(), rankings, rank_max_age }
    }

    /// Sorted lists ranked again when their ranking is older than `age`.
    pub fn with_rank_max_age(self, age: Duration) -> Live {
        Live { rank_max_age: age, ..self }
    }

    /// The windows' reading at `now`.
    fn at(&self, now: DateTime<Utc>) -> window::At {
        window::At { now, future_secs: self.future_secs }
    }

    /// Also this process' own live state (roles `consumer` and `all`).
    pub fn with_local(self, state: Arc<dyn LocalState>) -> Live {
        Live { local: Some(Local { state, completeness: Arc::default() }), ..self }
    }

    pub fn redis(&self) -> &RedisStore {
        &self.redis
    }

    /// The most recent swaps kept per key: the largest `limit` of a page of [`Live::swaps`].
    pub fn recent_cap(&self) -> usize {
        self.redis.recent_cap()
    }

    /// The local state when it holds every partition any instance has
    /// claimed. Decided once per ownership generation (and at least every
    /// `PARTITIONS_TTL`), so a request normally only compares a number.
    async fn complete_local(&self) -> Option<&dyn LocalState> {
        let local = self.local.as_ref()?;
        let generation = local.state.owned_generation();
        let cached = {
            let guard = local.completeness.lock().expect("completeness lock");
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
                let (generation, complete) = local.state.holds_all(&all);
                *local.completeness.lock().expect("completeness lock") =
                    Some(Completeness { generation, decided_at: Instant::now(), complete });
                complete
            }
        };
        complete.then_some(local.state.as_ref())
    }

    /// The merged live state of `key` with candles of `intervals` from
    /// `since` on; `NotFound` when no swap of it was seen.
    pub async fn merged(&self, key: &AggKey, intervals: &[Interval], since: i64) -> Result<Merged, ReadError> {
        match self.complete_local().await {
            Some(local) => from_actors(local, key, Select::Since(intervals.to_vec(), since)).await,
            None => self.merged_from_stores(key, intervals, since).await,
        }
    }

    /// [`Live::merged`] from Redis, or PostgreSQL while Redis lacks `key`,
    /// never from this process' actors.
    async fn merged_from_stores(&self, key: &AggKey, intervals: &[Interval], since: i64) -> Result<Merged, ReadError> {
        if self.redis.has_key(key).await.map_err(ReadError::redis)? {
            read_from("redis");
            return self.redis.merged(key, intervals, since).await.map_err(ReadError::redis);
        }
        self.merged_from_postgres(key, &Select::Since(intervals.to_vec(), since)).await
    }

    /// [`Live::merged`] from PostgreSQL: for a key Redis lacks (never seen,
    /// or Redis is being rebuilt).
    async fn merged_from_postgres(&self, key: &AggKey, select: &Select) -> Result<Merged, ReadError> {
        read_from("postgres");
        let mut merged = self.pg.merged(key).await.map_err(ReadError::postgres)?.ok_or_else(|| not_found(key))?;
        match select {
            Select::Since(intervals, since) => {
                let now = Utc::now().timestamp();
                for &interval in intervals {
                    let candles =
                        self.pg.candles(key, interval, *since, now, usize::MAX).await.map_err(ReadError::postgres)?;
                    merged.candles.insert(interval, candles);
                }
            }
            Select::Only(buckets) => {
                let mut by_interval: BTreeMap<Interval, Vec<i64>> = BTreeMap::new();
                for &(interval, t) in buckets.iter() {
                    by_interval.entry(interval).or_default().push(t);
                }
                for (interval, starts) in by_interval {
                    let candles = self.pg.candles_at(key, interval, &starts).await.map_err(ReadError::postgres)?;
                    merged.candles.insert(interval, candles);
                }
            }
        }
        Ok(merged)
    }

    /// The stats object of `key`, rendered; reused for the cache time, and
    /// for as long again while one request renders the next. Without that,
    /// every request that came while an expired answer was being rendered
    /// rendered it too: at 5000 requests/s, a burst of renders four times a
    /// second, which made the latency's tail.
    pub async fn stats(&self, key: &AggKey) -> Result<Bytes, ReadError> {
        match self.cache.get(key) {
            Cached::Fresh(body) => Ok(body),
            Cached::Stale(body, refresh) => {
                if refresh {
                    let (live, key) = (self.clone(), key.clone());
                    actix_web::rt::spawn(async move {
                        if live.render_stats(&key).await.is_err() {
                            live.cache.refresh_failed(&key);
                        }
                    });
                }
                Ok(body)
            }
            Cached::Missing => self.render_stats(key).await,
        }
    }

    /// Renders the stats object of `key` and caches it.
    async fn render_stats(&self, key: &AggKey) -> Result<Bytes, ReadError> {
        let now = Utc::now();
        let body = match self.complete_local().await {
            Some(local) => {
                let needed = Select::Only(Arc::new(self.at(now).needed()));
                let merged = from_actors(local, key, needed).await?;
                self.render(key, &merged, now)
            }
            None => self.stored_stats(key, now).await?,
        };
        self.cache.put(key, &body);
        Ok(body)
    }

    fn render(&self, key: &AggKey, merged: &Merged, now: DateTime<Utc>) -> Bytes {
        Bytes::from(serde_json::to_vec(&stats::StatsBody::new(key, merged, self.at(now))).expect("JSON"))
    }

    /// The stats object of `key` from the shared stores: as another reader
    /// rendered it if `key` was not written since and its windows still
    /// hold ([`window::until`]), else rendered now and kept for the others;
    /// one render at a time per key and second in this process.
    async fn stored_stats(&self, key: &AggKey, now: DateTime<Utc>) -> Result<Bytes, ReadError> {
        use futures::FutureExt as _;
        let flight = (key.clone(), now.timestamp());
        let rendering = {
            let mut rendering = self.rendering.lock().expect("rendering lock");
            let running = rendering.get(&flight).cloned();
            running.unwrap_or_else(|| {
                let (live, mine) = (self.clone(), flight.clone());
                // A task of its own: it ends, and leaves the table (after it
                // was entered there: the lock is held until then), even when
                // every request waiting for it has gone.
                let task = actix_web::rt::spawn(async move {
                    let body = live.render_stored(&mine.0, now).await;
                    live.rendering.lock().expect("rendering lock").remove(&mine);
                    body
                });
                let shared = task
                    .map(|ended| {
                        ended.unwrap_or_else(|e| {
                            Err(ReadError::Unavailable { dependency: "redis", detail: format!("stats render: {e}") })
                        })
                    })
                    .boxed()
                    .shared();
                rendering.insert(flight.clone(), shared.clone());
                shared
            })
        };
        rendering.await
    }

    /// [`Live::stored_stats`] without the waiting: the kept body, or one
    /// rendered from Redis (only the candles the windows need), or from
    /// PostgreSQL while Redis lacks `key`.
    async fn render_stored(&self, key: &AggKey, now: DateTime<Utc>) -> Result<Bytes, ReadError> {
        let (version, partials) =
            match self.redis.rendered_stats(key, now.timestamp()).await.map_err(ReadError::redis)? {
                Kept::Body(body) => {
                    read_from("rendered");
                    return Ok(Bytes::from(body));
                }
                Kept::Stale { version, partials } => (version, partials),
            };
        let needed = self.at(now).needed();
        let merged = match self.redis.merged_candles(key, partials, &needed).await.map_err(ReadError::redis)? {
            Some(merged) => {
                read_from("redis");
                merged
            }
            None => self.merged_from_postgres(key, &Select::Only(Arc::new(needed))).await?,
        };
        let body = self.render(key, &merged, now);
        let valid = now.timestamp()..window::until(&merged.candles, self.at(now));
        // Not waited for: only a later reader's saving is lost if it fails.
        let (redis, key, kept) = (self.redis.clone(), key.clone(), body.clone());
        actix_web::rt::spawn(async move {
            if redis.keep_stats(&key, valid, &version, &kept).await.is_err() {
                METRICS.redis_errors.inc();
            }
        });
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
            let wanted = limit - candles.len();
            let older =
                self.pg.candles(key, interval, from, to.min(edge - 1), wanted).await.map_err(ReadError::postgres)?;
            let mut all: Vec<Candle> = older.values().map(|c| c.to_candle()).collect();
            all.append(&mut candles);
            candles = all;
        }
        Ok(candles)
    }
}

impl Live {
    /// The stats object of `key` from the shared stores, `NotFound` as REST
    /// answers 404: a WebSocket channel's snapshot and `stats` frames.
    /// Never from this process' actors, whose state can be ahead of what
    /// the other instances' frames show.
    pub async fn shared_stats(&self, key: &AggKey) -> Result<serde_json::Value, ReadError> {
        let body = self.stored_stats(key, Utc::now()).await?;
        // A kept body was read from Redis: input like any other.
        serde_json::from_slice(&body).map_err(|e| ReadError::redis(anyhow::anyhow!("a kept stats body of {key}: {e}")))
    }
}

impl Live {
    /// The candles of `interval` that may still change (from the bucket
    /// `lateness` ago on), from the shared stores as [`Self::shared_stats`]:
    /// a candle channel's frames. Each is REST's candle object with
    /// `closed` (its time is over; a late swap may still revise it).
    pub async fn shared_candles(
        &self,
        key: &AggKey,
        interval: Interval,
        lateness: std::time::Duration,
    ) -> Result<Vec<(i64, Arc<str>)>, ReadError> {
        let now = Utc::now().timestamp();
        let from = (now - lateness.as_secs() as i64).div_euclid(interval.seconds()) * interval.seconds();
        let merged = self.merged_from_stores(key, &[interval], from).await?;
        Ok(merged
            .candles(interval, from, i64::MAX, usize::MAX)
            .into_iter()
            .map(|candle| {
                let mut json = serde_json::to_value(&candle).expect("JSON");
                json["closed"] = (candle.t + interval.seconds() <= now).into();
                (candle.t, json.to_string().into())
            })
            .collect())
    }
}

/// The stats object of a token or pair with no swap seen: all zeros.
pub fn unseen_stats(key: &AggKey) -> serde_json::Value {
    stats::stats_json(key, &Merged::default(), window::At::with_any_future(Utc::now()))
}

/// `key` merged over this process' actors, with the candles `select` names.
async fn from_actors(local: &dyn LocalState, key: &AggKey, select: Select) -> Result<Merged, ReadError> {
    read_from("actors");
    let answer = local.query(key, select, 0).ok_or_else(|| not_found(key))?;
    let (merged, _) = answer.await.map_err(aggregator_unavailable)?;
    Ok(merged)
}

fn read_from(source: &str) {
    METRICS.rest_reads.with_label_values(&[source]).inc();
}

fn aggregator_unavailable(detail: String) -> ReadError {
    ReadError::Unavailable { dependency: "aggregator", detail }
}

fn not_found(key: &AggKey) -> ReadError {
    ReadError::NotFound(format!("no swaps seen for {key}"))
}

impl StatsCache {
    fn get(&self, key: &AggKey) -> Cached {
        if self.ttl.is_zero() {
            return Cached::Missing;
        }
        let mut entries = self.entries.lock().expect("stats cache lock");
        let Some(entry) = entries.get_mut(key) else { return Cached::Missing };
        let age = entry.rendered_at.elapsed();
        if age < self.ttl {
            Cached::Fresh(entry.body.clone())
        } else if age < 2 * self.ttl {
            Cached::Stale(entry.body.clone(), !std::mem::replace(&mut entry.refreshing, true))
        } else {
            Cached::Missing
        }
    }

    fn put(&self, key: &AggKey, body: &Bytes) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("stats cache lock");
        // Past 10,000 keys, expired entries go at most once per cache time:
        // a sweep on every insert made a pass over many keys (a list, a
        // ranking) quadratic.
        if entries.len() > 10_000 {
            let mut swept = self.swept.lock().expect("stats cache lock");
            if swept.is_none_or(|at| at.elapsed() >= self.ttl) {
                let kept = 2 * self.ttl;
                entries.retain(|_, entry| entry.rendered_at.elapsed() < kept);
                *swept = Some(Instant::now());
            }
        }
        entries.insert(key.clone(), CachedStats { rendered_at: Instant::now(), body: body.clone(), refreshing: false });
    }

    /// The render of a stale answer failed: the next request tries again
    /// (and the stale answer expires as usual).
    fn refresh_failed(&self, key: &AggKey) {
        if let Some(entry) = self.entries.lock().expect("stats cache lock").get_mut(key) {
            entry.refreshing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `key`'s entry as if rendered `ago`.
    fn rendered(cache: &StatsCache, key: &AggKey, ago: Duration) {
        let entry =
            CachedStats { rendered_at: Instant::now() - ago, body: Bytes::from_static(b"{}"), refreshing: false };
        cache.entries.lock().unwrap().insert(key.clone(), entry);
    }

    #[test]
    fn a_stale_answer_is_served_while_exactly_one_request_renders_the_next() {
        let ttl = Duration::from_secs(10);
        let cache = StatsCache { ttl, entries: Mutex::default(), swept: Mutex::default() };
        let key = AggKey::parse("token:ETH").unwrap();
        assert!(matches!(cache.get(&key), Cached::Missing));
        cache.put(&key, &Bytes::from_static(b"{}"));
        assert!(matches!(cache.get(&key), Cached::Fresh(_)));

        rendered(&cache, &key, ttl + ttl / 2);
        assert!(matches!(cache.get(&key), Cached::Stale(_, true)), "the first request after expiry renders");
        assert!(matches!(cache.get(&key), Cached::Stale(_, false)), "the others are answered from the cache");
        cache.refresh_failed(&key);
        assert!(matches!(cache.get(&key), Cached::Stale(_, true)), "after a failed render, the next one tries");
        cache.put(&key, &Bytes::from_static(b"{}"));
        assert!(matches!(cache.get(&key), Cached::Fresh(_)));

        rendered(&cache, &key, 2 * ttl);
        assert!(matches!(cache.get(&key), Cached::Missing), "past twice the cache time nothing is served");
        let off = StatsCache { ttl: Duration::ZERO, entries: Mutex::default(), swept: Mutex::default() };
        off.put(&key, &Bytes::from_static(b"{}"));
        assert!(matches!(off.get(&key), Cached::Missing));
    }
}
