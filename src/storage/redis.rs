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
//! - `<prefix>:{k}:recent`: sorted set of recent confirmed swaps (wire JSON)
//!   scored by event time, trimmed to the configured count;
//! - `<prefix>:keys`: set of every token and pair seen;
//! - `<prefix>:ready`: present once the live state is complete; its absence
//!   (after a flush) makes consumers rebuild what they own;
//! - channel `<prefix>:updates:{k}`: `{"key": "token:ETH", "swaps": [...]}`
//!   with each swap in the wire form: the swap feed's new swap states of a
//!   batch, before its checkpoint, and after each checkpoint one without
//!   swaps for every changed key; `"gap": true` when states of the key were
//!   lost before it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};
use serde::{Deserialize, Serialize};

use crate::config::{RedisMode, RedisSettings};
use crate::domain::aggregate::Interval;
use crate::domain::partial::{
    memory_retention_secs, AggKey, CandlePartial, Merged, Partial, PricePoint, TotalsPartial,
};
use crate::domain::{Amount, Price, SwapEvent};
use crate::storage::encoding::{decode_order, encode_order};
use crate::stream::{PartialChange, Tp};

/// A single node or a cluster, behind one connection type.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

/// Totals of one partial as stored in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PartialRecord {
    volume_usd: Amount,
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
    swaps: u64,
    buys: u64,
}

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    prefix: String,
    recent_cap: usize,
    /// For pub/sub subscriptions (single mode: this client; cluster: the first node).
    pubsub_client: redis::Client,
}

/// Where in its partition a partial's values are: the ownership epoch of
/// the instance that wrote them and the offset checkpointed with them.
/// Redis keeps a partial's values only if no write of a later position is
/// there, so an instance that lost its partitions while paused (a zombie)
/// cannot put older values over the new owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub epoch: i64,
    pub offset: i64,
}

impl Position {
    /// Written without the check (and without recording a position).
    pub const UNFENCED: Position = Position { epoch: -1, offset: -1 };
}

/// Writes one partial (totals and candle fields) unless its partition's
/// recorded position is later; records the new position. Returns 1 when
/// written, 0 when fenced.
/// KEYS: positions hash, partials hash, then one candle hash per candle.
/// ARGV: partition, epoch, offset, totals JSON, then per candle: field,
/// JSON, expire-at.
static FENCED_WRITE: &str = r"
local epoch, offset = tonumber(ARGV[2]), tonumber(ARGV[3])
if epoch >= 0 then
  local stored = redis.call('HGET', KEYS[1], ARGV[1])
  if stored then
    local sep = string.find(stored, ':', 1, true)
    local stored_epoch = tonumber(string.sub(stored, 1, sep - 1))
    local stored_offset = tonumber(string.sub(stored, sep + 1))
    if stored_epoch > epoch or (stored_epoch == epoch and stored_offset > offset) then
      return 0
    end
  end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[4])
for i = 3, #KEYS do
  local at = 5 + (i - 3) * 3
  redis.call('HSET', KEYS[i], ARGV[at], ARGV[at + 1])
  redis.call('EXPIREAT', KEYS[i], ARGV[at + 2])
end
return 1
";

/// One update message: a key's new swap states (wire JSON), and whether
/// some of its states were lost before it (subscribers skip a `seq`).
#[derive(Debug)]
pub struct Update {
    pub key: AggKey,
    pub swaps: Vec<Arc<str>>,
    pub gap: bool,
}

/// Swaps in the wire form (JSON), each serialized once however many keys
/// or lists it goes to (by the address of its `Arc`).
#[derive(Default)]
pub struct WireJson(std::collections::HashMap<usize, Arc<str>>);

impl WireJson {
    pub fn of(&mut self, swap: &Arc<SwapEvent>) -> Arc<str> {
        self.0
            .entry(Arc::as_ptr(swap) as usize)
            .or_insert_with(|| serde_json::to_string(&swap.to_wire()).unwrap_or_default().into())
            .clone()
    }
}

impl RedisStore {
    pub async fn connect(settings: &RedisSettings, recent_cap: usize) -> anyhow::Result<RedisStore> {
        let infos = settings
            .urls
            .expose()
            .iter()
            .map(|url| {
                let mut info = url.as_str().into_connection_info().context("parsing SWAPSTREAM_REDIS_URL")?;
                if let Some(password) = &settings.password {
                    let redis = info.redis_settings().clone().set_password(password.expose());
                    info = info.set_redis_settings(redis);
                }
                Ok(info)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pubsub_client = redis::Client::open(infos[0].clone()).context("creating the Redis client")?;
        let conn = match settings.mode {
            RedisMode::Single => RedisConn::Single(
                tokio::time::timeout(std::time::Duration::from_secs(10), pubsub_client.get_connection_manager())
                    .await
                    .context("connecting to Redis: timed out")?
                    .context("connecting to Redis")?,
            ),
            RedisMode::Cluster => {
                let client = redis::cluster::ClusterClient::new(infos).context("creating the Redis Cluster client")?;
                RedisConn::Cluster(client.get_async_connection().await.context("connecting to the Redis Cluster")?)
            }
        };
        Ok(RedisStore { conn, prefix: settings.key_prefix.clone(), recent_cap, pubsub_client })
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

    fn key(&self, key: &AggKey, suffix: &str) -> String {
        format!("{}:{{{key}}}:{suffix}", self.prefix)
    }

    pub fn updates_channel(&self, key: &AggKey) -> String {
        format!("{}:updates:{{{key}}}", self.prefix)
    }

    fn ready_key(&self) -> String {
        format!("{}:ready", self.prefix)
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

    /// Writes partials and publishes updates: one pipeline per token or
    /// pair (one slot each), its `PUBLISH` after its writes, so a subscriber
    /// that reads on an update sees the written state. The pipelines go out
    /// together on the multiplexed connection: one round trip, not one per
    /// key. Each change is fenced at its partition's position in
    /// `positions` (unfenced when absent); `updates` holds each key's swaps,
    /// already serialized.
    pub async fn write(
        &self,
        changes: &[PartialChange],
        positions: &HashMap<Tp, Position>,
        updates: &[Update],
    ) -> anyhow::Result<()> {
        let mut pipes: BTreeMap<&AggKey, Pipeline> = BTreeMap::new();
        let mut by_key: BTreeMap<&AggKey, Vec<&PartialChange>> = BTreeMap::new();
        for change in changes {
            by_key.entry(&change.key).or_default().push(change);
        }
        let mut json = WireJson::default();
        let mut key_set = redis::cmd("SADD");
        key_set.arg(format!("{}:keys", self.prefix));
        for (key, writes) in &by_key {
            key_set.arg(key.to_string());
            let pipe = pipes.entry(key).or_insert_with(redis::pipe);
            self.add_writes(pipe, key, writes, positions, &mut json)?;
        }
        for update in updates {
            let pipe = pipes.entry(&update.key).or_insert_with(redis::pipe);
            pipe.cmd("PUBLISH").arg(self.updates_channel(&update.key)).arg(update_payload(update)).ignore();
        }
        let mut sent = Vec::with_capacity(pipes.len() + 1);
        if !by_key.is_empty() {
            let mut conn = self.conn.clone();
            sent.push(
                Box::pin(async move { key_set.query_async::<()>(&mut conn).await.context("writing the key set") })
                    as futures::future::BoxFuture<'_, anyhow::Result<()>>,
            );
        }
        for (key, pipe) in pipes {
            let mut conn = self.conn.clone();
            sent.push(Box::pin(async move {
                // One result per partial written: 1 written, 0 fenced.
                let written: Vec<i64> =
                    pipe.query_async(&mut conn).await.with_context(|| format!("writing {key} to Redis"))?;
                let fenced = written.iter().filter(|&&w| w == 0).count();
                crate::metrics::METRICS.live_writes_fenced.inc_by(fenced as u64);
                Ok(())
            }));
        }
        futures::future::join_all(sent).await.into_iter().collect()
    }

    /// Publishes update messages only (the swap feed).
    pub async fn publish(&self, updates: &[Update]) -> anyhow::Result<()> {
        self.write(&[], &HashMap::new(), updates).await
    }

    fn add_writes(
        &self,
        pipe: &mut Pipeline,
        key: &AggKey,
        changes: &[&PartialChange],
        positions: &HashMap<Tp, Position>,
        json: &mut WireJson,
    ) -> anyhow::Result<()> {
        let positions_key = self.key(key, "positions");
        let partials_key = self.key(key, "partials");
        let recent_key = self.key(key, "recent");
        let mut any_recent = false;
        for change in changes {
            let (w, tp) = (&change.delta, &change.tp);
            let position = positions.get(tp).copied().unwrap_or(Position::UNFENCED);
            let mut fenced = redis::cmd("EVAL");
            let mut candles: Vec<(String, String, String, i64)> = Vec::with_capacity(w.candles.len());
            let record = PartialRecord {
                volume_usd: w.totals.volume_usd,
                swaps: w.totals.swaps,
                buys: w.totals.buys,
                first_seen_ns: w.totals.first_seen.and_then(|t| t.timestamp_nanos_opt()),
                last_price: w.totals.last.map(|p| p.price),
                last_at: w.totals.last.map(|p| hex::encode(encode_order(&p.at))),
                pending: w.pending,
            };
            let totals = serde_json::to_string(&record)?;
            for (interval, c) in &w.candles {
                let period = period_secs(*interval);
                let period_start = c.t.div_euclid(period) * period;
                let hash = self.key(key, &format!("c:{interval}:{period_start}"));
                let record = CandleRecord {
                    open: c.open.price,
                    open_at: hex::encode(encode_order(&c.open.at)),
                    close: c.close.price,
                    close_at: hex::encode(encode_order(&c.close.at)),
                    high: c.high,
                    low: c.low,
                    volume_usd: c.volume_usd,
                    swaps: c.swaps,
                    buys: c.buys,
                };
                let expire_at = period_start + period + memory_retention_secs(*interval);
                candles.push((hash, format!("{}/{}", c.t, tp), serde_json::to_string(&record)?, expire_at));
            }
            let tp = tp.to_string();
            fenced.arg(FENCED_WRITE).arg(2 + candles.len()).arg(&positions_key).arg(&partials_key);
            for (hash, ..) in &candles {
                fenced.arg(hash);
            }
            fenced.arg(&tp).arg(position.epoch).arg(position.offset).arg(totals);
            for (_, field, json, expire_at) in &candles {
                fenced.arg(field).arg(json).arg(expire_at);
            }
            pipe.add_command(fenced);
            for swap in &w.new_recent {
                pipe.zadd(&recent_key, &*json.of(swap), swap.timestamp.timestamp_millis()).ignore();
                any_recent = true;
            }
        }
        if any_recent {
            pipe.zremrangebyrank(&recent_key, 0, -(self.recent_cap as isize) - 1).ignore();
        }
        Ok(())
    }

    /// Whether `key` has live state.
    pub async fn has_key(&self, key: &AggKey) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let member: i64 = redis::cmd("SISMEMBER")
            .arg(format!("{}:keys", self.prefix))
            .arg(key.to_string())
            .query_async(&mut conn)
            .await?;
        Ok(member == 1)
    }

    /// Every token and pair with live state.
    pub async fn keys(&self) -> anyhow::Result<Vec<AggKey>> {
        let mut conn = self.conn.clone();
        let names: Vec<String> =
            redis::cmd("SMEMBERS").arg(format!("{}:keys", self.prefix)).query_async(&mut conn).await?;
        Ok(names.iter().filter_map(|n| AggKey::parse(n)).collect())
    }

    /// The merged live state of one key (all partitions), with candles of
    /// `intervals` back to `since` (unix seconds).
    pub async fn merged(&self, key: &AggKey, intervals: &[Interval], since: i64) -> anyhow::Result<Merged> {
        let mut conn = self.conn.clone();
        let records: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg(self.key(key, "partials")).query_async(&mut conn).await?;
        let mut partials: BTreeMap<String, Partial> = BTreeMap::new();
        for (tp, json) in records {
            let r: PartialRecord = serde_json::from_str(&json).context("bad partial in Redis")?;
            let last = match (r.last_price, r.last_at) {
                (Some(price), Some(at)) => Some(PricePoint { price, at: decode_order(&hex::decode(at)?)? }),
                _ => None,
            };
            let totals = TotalsPartial {
                volume_usd: r.volume_usd,
                swaps: r.swaps,
                buys: r.buys,
                first_seen: r.first_seen_ns.map(DateTime::from_timestamp_nanos),
                last,
            };
            partials.insert(tp, Partial::restore(totals, r.pending, [], Vec::new()));
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
                    let r: CandleRecord = serde_json::from_str(&json).context("bad candle in Redis")?;
                    let candle = CandlePartial {
                        t: t.parse()?,
                        open: PricePoint { price: r.open, at: decode_order(&hex::decode(r.open_at)?)? },
                        close: PricePoint { price: r.close, at: decode_order(&hex::decode(r.close_at)?)? },
                        high: r.high,
                        low: r.low,
                        volume_usd: r.volume_usd,
                        swaps: r.swaps,
                        buys: r.buys,
                    };
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

    /// The most recent confirmed swaps of `key`, newest first (wire JSON),
    /// in the full event order (time, block, log index, hash). Scores are
    /// milliseconds, so swaps tied with the last one taken are fetched too
    /// and the order decided here.
    pub async fn recent(&self, key: &AggKey, limit: usize) -> anyhow::Result<Vec<serde_json::Value>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let zset = self.key(key, "recent");
        let mut members: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(&zset)
            .arg(0)
            .arg(limit as i64 - 1)
            .arg("REV")
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        if let Some(&(_, edge)) = members.last().filter(|_| members.len() == limit) {
            let ties: Vec<String> =
                redis::cmd("ZRANGE").arg(&zset).arg(edge).arg(edge).arg("BYSCORE").query_async(&mut conn).await?;
            members.extend(ties.into_iter().map(|m| (m, edge)));
        }
        let mut swaps: Vec<serde_json::Value> = members
            .into_iter()
            .map(|(m, _)| m)
            .collect::<std::collections::BTreeSet<String>>()
            .iter()
            .map(|m| serde_json::from_str(m).context("bad swap in Redis"))
            .collect::<anyhow::Result<_>>()?;
        swaps.sort_by_cached_key(|s| std::cmp::Reverse(wire_order(s)));
        swaps.truncate(limit);
        Ok(swaps)
    }

    /// Takes one token from `client`'s bucket (GCRA: one token per
    /// `interval`, at most `burst` at once), shared by every process using
    /// this Redis. `None` when taken, else how long until one is free. The
    /// script reads Redis' own clock, so replicas' clocks do not matter.
    pub async fn take_token(&self, client: &str, interval: Duration, burst: u32) -> anyhow::Result<Option<Duration>> {
        static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
            redis::Script::new(
                r"local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
                  local interval = tonumber(ARGV[1])
                  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
                  if tat < now then tat = now end
                  local next_tat = tat + interval
                  local wait = next_tat - tonumber(ARGV[2]) * interval - now
                  if wait > 0 then return wait end
                  redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
                  return 0",
            )
        });
        let mut conn = self.conn.clone();
        let wait_us: i64 = SCRIPT
            .key(format!("{}:ratelimit:{{{client}}}", self.prefix))
            .arg(interval.as_micros().max(1) as i64)
            .arg(burst)
            .invoke_async(&mut conn)
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    /// Deletes every key under this store's prefix (tests only).
    pub async fn delete_all(&self) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}:*", self.prefix)).query_async(&mut conn).await?;
        for key in keys {
            redis::cmd("DEL").arg(key).query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }
}

/// Length of the period one candle hash of `interval` covers.
/// A wire swap's place in the event order, as `SwapEvent::order_key`.
fn wire_order(swap: &serde_json::Value) -> (i64, u64, u64, String) {
    let text = |name: &str| swap.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    let number = |name: &str| swap.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
    let time =
        DateTime::parse_from_rfc3339(&text("timestamp")).ok().and_then(|t| t.timestamp_nanos_opt()).unwrap_or(i64::MIN);
    (time, number("block_number"), number("log_index"), text("tx_hash"))
}

/// `{"key": "token:ETH", "swaps": [wire swaps with status]}`, from swaps
/// already serialized (each once per checkpoint, whatever the number of
/// keys it counts for).
fn update_payload(update: &Update) -> String {
    let mut payload = String::with_capacity(48 + update.swaps.iter().map(|s| s.len() + 1).sum::<usize>());
    payload.push_str("{\"key\":\"");
    payload.push_str(&update.key.to_string());
    if update.gap {
        payload.push_str("\",\"gap\":true");
    } else {
        payload.push('"');
    }
    payload.push_str(",\"swaps\":[");
    for (i, swap) in update.swaps.iter().enumerate() {
        if i > 0 {
            payload.push(',');
        }
        payload.push_str(swap);
    }
    payload.push_str("]}");
    payload
}

fn period_secs(interval: Interval) -> i64 {
    match interval {
        Interval::M1 | Interval::M5 | Interval::M15 => 86_400,
        Interval::H1 | Interval::H4 => 30 * 86_400,
        Interval::D1 => 365 * 86_400,
    }
}
