//! Live writes: each partial change fenced at its partition's position,
//! the changed keys announced after their writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use anyhow::Context as _;
use redis::Pipeline;

use super::{failures, period_secs, CandleRecord, PartialRecord, RedisStore, RECENT};
use crate::domain::partial::{memory_retention_secs, AggKey};
use crate::domain::SwapEvent;
use crate::storage::encoding::{encode_order, to_hex};
use crate::stream::{PartialChange, Tp};

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

/// A live write that failed: the first error, and the keys whose writes may
/// be missing (`None`: any key's, the failure was not one key's).
#[derive(Debug)]
pub struct WriteFailed {
    pub keys: Option<BTreeSet<AggKey>>,
    pub error: anyhow::Error,
}

impl fmt::Display for WriteFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.keys {
            Some(keys) => write!(f, "{} key(s) not written: {:#}", keys.len(), self.error),
            None => write!(f, "{:#}", self.error),
        }
    }
}

impl std::error::Error for WriteFailed {}

/// Swaps in the wire form (JSON), each serialized once however many keys
/// or lists it goes to (by the address of its `Arc`).
#[derive(Default)]
pub struct WireJson(std::collections::HashMap<usize, Arc<str>>);

impl WireJson {
    pub fn of(&mut self, swap: &Arc<SwapEvent>) -> Arc<str> {
        self.0.entry(Arc::as_ptr(swap) as usize).or_insert_with(|| swap.wire_json().into()).clone()
    }
}

impl RedisStore {
    /// Writes partials and announces the `changed` keys: one pipeline per
    /// token or pair (one slot each), its `PUBLISH` after its writes, so a
    /// subscriber that reads on the announcement sees the written state. The
    /// pipelines share the multiplexed connection, a bounded number at a
    /// time (see `in_flight`). Each change is fenced at its partition's
    /// position in `positions` (unfenced when absent).
    pub async fn write(
        &self,
        changes: &[PartialChange],
        positions: &HashMap<Tp, Position>,
        changed: &[AggKey],
    ) -> Result<(), WriteFailed> {
        let mut pipes: BTreeMap<&AggKey, Pipeline> = BTreeMap::new();
        let mut by_key: BTreeMap<&AggKey, Vec<&PartialChange>> = BTreeMap::new();
        for change in changes {
            by_key.entry(&change.key).or_default().push(change);
        }
        let mut json = WireJson::default();
        for (key, writes) in &by_key {
            let pipe = pipes.entry(key).or_insert_with(redis::pipe);
            self.add_writes(pipe, key, writes, positions, &mut json)
                .map_err(|error| WriteFailed { keys: None, error })?;
            // After the writes: a stats body rendered before them is stale.
            pipe.incr(self.key(key, "version"), 1).ignore();
        }
        for key in changed {
            let pipe = pipes.entry(key).or_insert_with(redis::pipe);
            pipe.cmd("PUBLISH").arg(self.updates_channel(key)).arg(format!(r#"{{"key":"{key}","swaps":[]}}"#)).ignore();
        }
        // Each write names the keys it is for, so a failure names the keys
        // to write again.
        type Sent<'a> = futures::future::BoxFuture<'a, Result<(), (Vec<&'a AggKey>, anyhow::Error)>>;
        let mut sent: Vec<Sent> = Vec::with_capacity(pipes.len() + 2);
        for tokens in [true, false] {
            let names: Vec<&AggKey> = by_key.keys().copied().filter(|k| k.is_token() == tokens).collect();
            if names.is_empty() {
                continue; // A ZADD with no member is an error.
            }
            let mut add = redis::cmd("ZADD");
            add.arg(self.names_key(tokens));
            for key in &names {
                add.arg(0).arg(key.name());
            }
            let mut conn = self.conn.clone();
            sent.push(Box::pin(async move {
                add.query_async::<()>(&mut conn).await.context("writing the name index").map_err(|e| (names, e))
            }));
        }
        for (key, pipe) in pipes {
            let mut conn = self.conn.clone();
            sent.push(Box::pin(async move {
                // One result per partial written: 1 written, 0 fenced.
                let written: Vec<i64> = pipe
                    .query_async(&mut conn)
                    .await
                    .with_context(|| format!("writing {key} to Redis"))
                    .map_err(|e| (vec![key], e))?;
                let fenced = written.iter().filter(|&&w| w == 0).count();
                crate::metrics::METRICS.live_writes_fenced.inc_by(fenced as u64);
                Ok(())
            }));
        }
        let mut failed: Option<WriteFailed> = None;
        for (keys, error) in failures(sent).await {
            let failed = failed.get_or_insert_with(|| WriteFailed { keys: Some(BTreeSet::new()), error });
            failed.keys.get_or_insert_with(BTreeSet::new).extend(keys.into_iter().cloned());
        }
        failed.map_or(Ok(()), Err)
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
        let recent_key = self.key(key, RECENT);
        let mut any_recent = false;
        for change in changes {
            let (w, tp) = (&change.delta, &change.tp);
            let position = positions.get(tp).copied().unwrap_or(Position::UNFENCED);
            let mut fenced = redis::cmd("EVAL");
            let mut candles: Vec<(String, String, String, i64)> = Vec::with_capacity(w.candles.len());
            let record = PartialRecord {
                volume_usd: w.totals.volume_usd,
                buy_volume_usd: w.totals.buy_volume_usd,
                swaps: w.totals.swaps,
                buys: w.totals.buys,
                first_seen_ns: w.totals.first_seen.and_then(|t| t.timestamp_nanos_opt()),
                last_price: w.totals.last.map(|p| p.price),
                last_at: w.totals.last.map(|p| to_hex(&encode_order(&p.at))),
                pending: w.pending,
            };
            let totals = serde_json::to_string(&record)?;
            for (interval, c) in &w.candles {
                let period = period_secs(*interval);
                let period_start = c.t.div_euclid(period) * period;
                let hash = self.key(key, &format!("c:{interval}:{period_start}"));
                let record = CandleRecord {
                    open: c.open.price,
                    open_at: to_hex(&encode_order(&c.open.at)),
                    close: c.close.price,
                    close_at: to_hex(&encode_order(&c.close.at)),
                    high: c.high,
                    low: c.low,
                    volume_usd: c.volume_usd,
                    buy_volume_usd: c.buy_volume_usd,
                    swaps: c.swaps,
                    buys: c.buys,
                    makers: to_hex(&c.makers.to_bytes()),
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
                let mut member = encode_order(&swap.order_key());
                member.extend_from_slice(json.of(swap).as_bytes());
                pipe.zadd(&recent_key, member, swap.timestamp.timestamp_millis()).ignore();
                any_recent = true;
            }
        }
        if any_recent {
            pipe.zremrangebyrank(&recent_key, 0, -(self.recent_cap as isize) - 1).ignore();
        }
        Ok(())
    }
}
