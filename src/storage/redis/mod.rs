//! Redis: live state derived from PostgreSQL, and pub/sub for cross-instance
//! fan-out. Every write is an absolute value (or an idempotent set insert),
//! so replaying a checkpoint, or rebuilding after a flush, gives the same
//! contents.
//!
//! Keys, with `{k}` the token or pair (`token:ETH`) as the Redis Cluster hash
//! tag, so that one key's writes stay in one slot:
//! - `<prefix>:{k}:partials`: hash, field `<topic>/<partition>` -> totals JSON;
//! - `<prefix>:{k}:positions`: hash, field `<topic>/<partition>` ->
//!   `<epoch>:<offset>` of the last write of that partial (see [`Position`]);
//! - `<prefix>:{k}:c:<interval>:<period>`: hash, field `<t>/<topic>/<partition>`
//!   -> candle JSON; one key per period, expiring after the memory retention;
//! - `<prefix>:{k}:swaps`: sorted set of recent confirmed swaps, each member
//!   its 52-byte event order then its wire JSON, scored by its time in ms, so
//!   swaps of one millisecond are in the event order too and the trim to the
//!   configured count keeps exactly the newest (layout 2 kept them as
//!   `recent`, wire JSON only, and could trim a newer swap of the edge
//!   millisecond; consumers remove those lists as they rebuild);
//! - `<prefix>:{k}:version`: incremented after each live write of the key;
//! - `<prefix>:{k}:stats`: the key's stats body as a reader rendered it, with
//!   the minute and version it holds for (see `rendered`);
//! - `<prefix>:names:token` and `names:pair`: every token and pair seen, by
//!   name (`ETH`, `ETH-USDC`), as sorted sets of equal scores, read by range
//!   for the lists;
//! - `<prefix>:ready:<layout>`: present once the live state is complete; its
//!   absence (after a flush, or a new layout) makes consumers rebuild what
//!   they own;
//! - `<prefix>:{k}:history`, `history-index` and `history-meta`: the channel's recent swap
//!   frames for resuming WebSocket clients (see `history`);
//! - channel `<prefix>:updates:{k}`: the swap feed's new swap states of a
//!   batch, before its checkpoint, as appended to the history
//!   (`{"key": "token:ETH", "epoch": .., "id": .., "swaps": [...]}`, each
//!   swap in the wire form, `"gap": true` when states of the key were lost
//!   before it); and after each checkpoint `{"key": "token:ETH", "swaps": []}`
//!   for every changed key.

mod conn;
mod history;
mod live;
mod reads;
mod rendered;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use redis::{Cmd, IntoConnectionInfo, Pipeline};
use serde::{Deserialize, Serialize};

use crate::config::{RedisMode, RedisSettings, Secret, WsHistory};
use crate::domain::aggregate::Interval;
use crate::domain::partial::AggKey;
use crate::domain::{Amount, Price};
use crate::metrics::METRICS;

use conn::managed;
pub use conn::RedisConn;
pub use history::{Entry as HistoryEntry, FeedSwap, Lost, Offset, Replay, SwapUpdate};
pub use live::{Position, WireJson, WriteFailed};
pub use reads::Partials;
pub use rendered::Kept;

/// Totals of one partial as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartialRecord {
    volume_usd: Amount,
    /// Absent in records written before buy volumes were kept: zero.
    #[serde(default)]
    buy_volume_usd: Amount,
    swaps: u64,
    buys: u64,
    first_seen_ns: Option<i64>,
    last_price: Option<Price>,
    last_at: Option<String>,
    pending: i64,
}

/// One candle partial as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CandleRecord {
    open: Price,
    open_at: String,
    close: Price,
    close_at: String,
    high: Price,
    low: Price,
    volume_usd: Amount,
    #[serde(default)]
    buy_volume_usd: Amount,
    swaps: u64,
    buys: u64,
    /// The makers sketch's stored form in hex; absent when no maker was
    /// seen (and in records written before makers were counted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    makers: String,
}

/// Writes (pipelines, scripts) one call has in flight on the shared
/// connection at most. The rest wait here rather than in Redis' queue, where
/// the last of thousands (a batch over many tokens and pairs, a rebuild)
/// would outlast the client's response timeout and fail the whole write.
const WRITES_IN_FLIGHT: usize = 64;

/// Runs `writes`, [`WRITES_IN_FLIGHT`] at a time; the first error once all
/// have ended.
async fn in_flight<F>(writes: impl IntoIterator<Item = F>) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    failures(writes).await.into_iter().next().map_or(Ok(()), Err)
}

/// Runs `writes`, [`WRITES_IN_FLIGHT`] at a time; every error once all have
/// ended.
async fn failures<F, E>(writes: impl IntoIterator<Item = F>) -> Vec<E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    use futures::StreamExt as _;
    let results: Vec<Result<(), E>> = futures::stream::iter(writes).buffer_unordered(WRITES_IN_FLIGHT).collect().await;
    results.into_iter().filter_map(Result::err).collect()
}

/// The suffix of a key's recent swaps.
const RECENT: &str = "swaps";

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    /// Read replicas for the REST reads, taken in turn.
    replicas: Replicas,
    /// For WebSocket client tracking (presence): the main connection unless
    /// a Redis of its own is configured.
    tracking: RedisConn,
    prefix: String,
    recent_cap: usize,
    /// What each WebSocket channel keeps for resuming clients.
    history: WsHistory,
    /// For pub/sub subscriptions (single mode: this client; cluster: the first node).
    pubsub_client: redis::Client,
}

/// Connections to read replicas, handed out in turn.
#[derive(Clone, Default)]
struct Replicas {
    conns: Arc<[RedisConn]>,
    next: Arc<AtomicUsize>,
}

impl Replicas {
    fn next(&self) -> Option<RedisConn> {
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        self.conns.get(at.checked_rem(self.conns.len())?).cloned()
    }
}

/// The connection info of `url` (from `variable`), with `password` unless
/// the URL has one.
fn connection_info(
    url: &str,
    password: Option<&Secret<String>>,
    variable: &str,
) -> anyhow::Result<redis::ConnectionInfo> {
    let mut info = url.into_connection_info().with_context(|| format!("parsing {variable}"))?;
    if let Some(password) = password.filter(|_| info.redis_settings().password().is_none()) {
        let redis = info.redis_settings().clone().set_password(password.expose());
        info = info.set_redis_settings(redis);
    }
    Ok(info)
}

/// The main connection (to the server, or to the cluster) and the client
/// for pub/sub subscriptions.
async fn main_connection(settings: &RedisSettings) -> anyhow::Result<(RedisConn, redis::Client)> {
    let password = settings.password.as_ref();
    let infos = (settings.urls.expose().iter())
        .map(|url| connection_info(url, password, "SWAPSTREAM_REDIS_URL"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let pubsub_client = redis::Client::open(infos[0].clone()).context("creating the Redis client")?;
    let conn = match settings.mode {
        RedisMode::Single => managed(&pubsub_client, settings.timeout, "Redis").await?,
        RedisMode::Cluster => {
            let client = redis::cluster::ClusterClient::builder(infos)
                .response_timeout(settings.timeout)
                .build()
                .context("creating the Redis Cluster client")?;
            let cluster = client.get_async_connection().await.context("connecting to the Redis Cluster")?;
            RedisConn::cluster(cluster, settings.timeout)
        }
    };
    Ok((conn, pubsub_client))
}

impl RedisStore {
    pub async fn connect(settings: &RedisSettings, recent_cap: usize) -> anyhow::Result<RedisStore> {
        let password = settings.password.as_ref();
        let (conn, pubsub_client) = main_connection(settings).await?;
        let mut replicas = Vec::new();
        for url in settings.read_urls.expose() {
            let info = connection_info(url, password, "SWAPSTREAM_REDIS_READ_URLS")?;
            let client = redis::Client::open(info).context("creating a Redis read replica client")?;
            replicas.push(managed(&client, settings.timeout, "a Redis read replica").await?);
        }
        let tracking = match &settings.ws_url {
            None => conn.clone(),
            Some(url) => {
                let info = connection_info(url.expose(), password, "SWAPSTREAM_REDIS_WS_URL")?;
                let client = redis::Client::open(info).context("creating the WebSocket tracking Redis client")?;
                managed(&client, settings.timeout, "the WebSocket tracking Redis").await?
            }
        };
        Ok(RedisStore {
            conn,
            replicas: Replicas { conns: replicas.into(), next: Arc::default() },
            tracking,
            prefix: settings.key_prefix.clone(),
            recent_cap,
            history: WsHistory { size: 10_000, max_age: Duration::from_secs(600) },
            pubsub_client,
        })
    }

    /// The same store over a main connection of its own: its commands do
    /// not queue behind the other handles' in one stream (a multiplexed
    /// connection answers in order, so a small write waits for every large
    /// pipeline sent before it). Replicas and tracking stay shared.
    pub async fn with_own_connection(&self, settings: &RedisSettings) -> anyhow::Result<RedisStore> {
        let (conn, _) = main_connection(settings).await?;
        Ok(RedisStore { conn, ..self.clone() })
    }

    /// Keeps `history` per channel for resuming WebSocket clients.
    pub fn with_history(mut self, history: WsHistory) -> RedisStore {
        self.history = history;
        self
    }

    /// Recent swaps kept per token and pair.
    pub fn recent_cap(&self) -> usize {
        self.recent_cap
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn pubsub_client(&self) -> &redis::Client {
        &self.pubsub_client
    }

    /// A handle on the shared connection, for other stores over the same Redis.
    pub fn connection(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The connection for WebSocket client tracking.
    pub fn tracking_connection(&self) -> RedisConn {
        self.tracking.clone()
    }

    /// Runs the read `query` on the next read replica, again on the
    /// primary if that fails; on the primary when there are none.
    async fn read<T, F, Fut>(&self, query: F) -> anyhow::Result<T>
    where
        F: Fn(RedisConn) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        match self.replicas.next() {
            None => query(self.conn.clone()).await,
            Some(replica) => match query(replica).await {
                Ok(answer) => Ok(answer),
                Err(_) => {
                    METRICS.redis_replica_fallbacks.inc();
                    query(self.conn.clone()).await
                }
            },
        }
    }

    /// One read command, as [`RedisStore::read`].
    async fn read_cmd<T: redis::FromRedisValue>(&self, cmd: &Cmd) -> anyhow::Result<T> {
        self.read(|mut conn| async move { Ok(cmd.query_async(&mut conn).await?) }).await
    }

    /// A pipeline of reads, as [`RedisStore::read`].
    async fn read_pipe<T: redis::FromRedisValue>(&self, pipe: &Pipeline) -> anyhow::Result<T> {
        self.read(|mut conn| async move { Ok(pipe.query_async(&mut conn).await?) }).await
    }

    fn key(&self, key: &AggKey, suffix: &str) -> String {
        format!("{}:{{{key}}}:{suffix}", self.prefix)
    }

    pub fn updates_channel(&self, key: &AggKey) -> String {
        format!("{}:updates:{{{key}}}", self.prefix)
    }

    /// Versioned with the layout of the live state: a new layout is a new
    /// generation, which every consumer rebuilds once.
    fn ready_key(&self) -> String {
        format!("{}:ready:3", self.prefix)
    }

    fn names_key(&self, tokens: bool) -> String {
        format!("{}:names:{}", self.prefix, if tokens { "token" } else { "pair" })
    }

    /// The generation of the live state: set when absent (first start, or
    /// after a flush), so every consumer sees a new value and rebuilds what
    /// it owns exactly once per generation.
    pub async fn ready_generation(&self) -> anyhow::Result<String> {
        let mut conn = self.conn.clone();
        let fresh = format!("{}-{:016x}", Utc::now().timestamp_millis(), rand::random::<u64>());
        redis::cmd("SET").arg(self.ready_key()).arg(&fresh).arg("NX").query_async::<()>(&mut conn).await?;
        let current: Option<String> = redis::cmd("GET").arg(self.ready_key()).query_async(&mut conn).await?;
        Ok(current.unwrap_or(fresh))
    }

    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("PING").query_async::<String>(&mut conn).await?;
        Ok(())
    }

    /// Whether `key` has live state.
    pub async fn has_key(&self, key: &AggKey) -> anyhow::Result<bool> {
        let mut score = redis::cmd("ZSCORE");
        score.arg(self.names_key(key.is_token())).arg(key.name());
        let score: Option<f64> = self.read_cmd(&score).await?;
        Ok(score.is_some())
    }

    /// Every token and pair with live state, tokens first, each in name order.
    pub async fn keys(&self) -> anyhow::Result<Vec<AggKey>> {
        let mut keys = Vec::new();
        for tokens in [true, false] {
            let mut conn = self.conn.clone();
            let names: Vec<String> =
                redis::cmd("ZRANGE").arg(self.names_key(tokens)).arg(0).arg(-1).query_async(&mut conn).await?;
            keys.extend(names.iter().filter_map(|n| AggKey::named(tokens, n)));
        }
        Ok(keys)
    }

    /// Up to `count` names of tokens (else pairs) with live state that
    /// start with `prefix`, after `after`, in name order.
    pub async fn names(
        &self,
        tokens: bool,
        prefix: &str,
        after: Option<&str>,
        count: usize,
    ) -> anyhow::Result<Vec<String>> {
        let from = match after {
            Some(after) if after >= prefix => format!("({after}"),
            _ => format!("[{prefix}"),
        };
        // Names are ASCII: every one that starts with `prefix` sorts before this.
        let to = if prefix.is_empty() { "+".to_owned() } else { format!("[{prefix}\u{ff}") };
        let mut range = redis::cmd("ZRANGE");
        range.arg(self.names_key(tokens)).arg(from).arg(to).arg("BYLEX").arg("LIMIT").arg(0).arg(count);
        self.read_cmd(&range).await
    }

    /// Takes one token from `client`'s bucket (GCRA: one token per
    /// `interval`, at most `burst` at once), shared by every process using
    /// this Redis. `Ok` with how long until the bucket is full again when
    /// taken, else `Err` with how long until one is free. The script reads
    /// Redis' own clock, so replicas' clocks do not matter.
    pub async fn take_token(
        &self,
        client: &str,
        interval: Duration,
        burst: u32,
    ) -> anyhow::Result<Result<Duration, Duration>> {
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
            redis::Script::new(
                r"local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
                  local interval = tonumber(ARGV[1])
                  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
                  if tat < now then tat = now end
                  local next_tat = tat + interval
                  local wait = next_tat - tonumber(ARGV[2]) * interval - now
                  if wait > 0 then return {wait, 0} end
                  redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
                  return {0, next_tat - now}",
            )
        });
        let mut conn = self.conn.clone();
        let (wait_us, full_in_us): (i64, i64) = SCRIPT
            .key(format!("{}:ratelimit:{{{client}}}", self.prefix))
            .arg(interval.as_micros().max(1) as i64)
            .arg(burst)
            .invoke_async(&mut conn)
            .await?;
        let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
        Ok(if wait_us > 0 { Err(micros(wait_us)) } else { Ok(micros(full_in_us)) })
    }

    /// Deletes what layout 2 kept of `keys` and layout 3 keeps elsewhere
    /// (their `recent` lists), as their owner rebuilds them.
    pub async fn drop_layout2(&self, keys: &[AggKey]) -> anyhow::Result<()> {
        in_flight(keys.iter().map(|key| {
            let mut conn = self.conn.clone();
            let old = self.key(key, "recent");
            async move { redis::cmd("UNLINK").arg(old).query_async::<()>(&mut conn).await.context("deleting old lists") }
        }))
        .await
    }

    /// Deletes every key under this store's prefix (tests and benches);
    /// returns how many there were. A single server is scanned a batch at a
    /// time, so that millions of keys (a large bench's) do not hold it up;
    /// a cluster is asked with `KEYS`, which redis-rs sends to every node,
    /// and each key unlinked alone, as the keys are in many slots.
    pub async fn delete_all(&self) -> anyhow::Result<u64> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}:*", self.prefix);
        if self.conn.is_cluster() {
            let keys: Vec<String> = redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await?;
            let count = keys.len() as u64;
            let deletes = keys.into_iter().map(|key| {
                let mut conn = self.conn.clone();
                async move { redis::cmd("UNLINK").arg(key).query_async::<()>(&mut conn).await.context("deleting keys") }
            });
            in_flight(deletes).await?;
            return Ok(count);
        }
        let (mut cursor, mut removed) = (0u64, 0u64);
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(10_000)
                .query_async(&mut conn)
                .await
                .context("listing keys")?;
            if !keys.is_empty() {
                removed +=
                    redis::cmd("UNLINK").arg(&keys).query_async::<u64>(&mut conn).await.context("deleting keys")?;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }
}

/// Length of the period one candle hash of `interval` covers.
fn period_secs(interval: Interval) -> i64 {
    match interval {
        Interval::S1 => 3_600,
        Interval::M1 | Interval::M5 | Interval::M15 => 86_400,
        Interval::H1 | Interval::H4 => 30 * 86_400,
        Interval::D1 => 365 * 86_400,
    }
}
