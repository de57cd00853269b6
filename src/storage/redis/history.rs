//! Each channel's recent swap frames, kept so that a WebSocket client that
//! reconnects resumes where it left off.
//!
//! The swap feed writes every update of a channel (its new swap states of
//! a batch) through one script that appends it to the channel's stream and
//! publishes it, so what subscribers get live and what a resuming client
//! reads back are the same entries in the same order. Keys, in the channel's
//! hash slot (Redis Cluster keeps working):
//! - `<prefix>:{k}:history`: stream, an update's swaps in entries of at
//!   most 1000 (`s`: the swaps as a JSON array, `g`: present when states
//!   were lost before it),
//!   with `history-index`, a list of its entries' ids and swap counts;
//!   trimmed to `SWAPSTREAM_WS_HISTORY_SIZE` swaps and
//!   `SWAPSTREAM_WS_HISTORY_SECS` of age but for the newest entry, gone
//!   after that long idle;
//! - `<prefix>:{k}:history-meta`: hash with the channel's `epoch` (new
//!   whenever the history starts over: first write, or Redis lost it), the
//!   newest entry and its swap count (`last_id`, `last_n`), entries ever
//!   added (`added`), swaps in the stream (`swaps`), and per partition the newest Kafka offset written
//!   (`<topic>/<partition>`). It outlives the stream (a day at least), so an
//!   idle channel keeps its epoch.
//!
//! The per-partition offsets make each swap state appear once however often
//! its batch is decided: a batch replayed after a restart, or published late
//! by an instance that lost its partitions, is below them and dropped, on
//! every instance alike.
//!
//! A swap's [`Offset`] is its entry and how many of the entry's swaps come
//! up to and including it.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use anyhow::Context as _;
use redis::Value;

use super::{in_flight, RedisStore};
use crate::config::WsHistory;
use crate::domain::partial::AggKey;

/// Where a client is in a channel's history: after the first `count` swaps
/// of entry `ms-seq`. Written `ms-seq-count`; `0-0-0` is before everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset {
    pub ms: u64,
    pub seq: u64,
    pub count: u32,
}

impl Offset {
    pub const ZERO: Offset = Offset { ms: 0, seq: 0, count: 0 };

    /// The entry's stream id, `ms-seq`.
    fn entry(&self) -> String {
        format!("{}-{}", self.ms, self.seq)
    }

    /// After the first `count` swaps of the entry `id` (`ms-seq`).
    pub fn of_entry(id: &str, count: u32) -> Option<Offset> {
        let (ms, seq) = id.split_once('-')?;
        Some(Offset { ms: ms.parse().ok()?, seq: seq.parse().ok()?, count })
    }

    /// The length of its text.
    pub fn text_len(&self) -> usize {
        let digits = |n: u64| n.checked_ilog10().map_or(1, |log| log as usize + 1);
        digits(self.ms) + digits(self.seq) + digits(u64::from(self.count)) + 2
    }

    fn same_entry(&self, other: &Offset) -> bool {
        (self.ms, self.seq) == (other.ms, other.seq)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.ms, self.seq, self.count)
    }
}

impl FromStr for Offset {
    type Err = ();

    fn from_str(text: &str) -> Result<Offset, ()> {
        let (id, count) = text.rsplit_once('-').ok_or(())?;
        Offset::of_entry(id, count.parse().map_err(|_| ())?).ok_or(())
    }
}

/// One swap state of an update, with the Kafka record it came from.
#[derive(Debug, Clone)]
pub struct FeedSwap {
    /// The wire form (JSON).
    pub json: Arc<str>,
    /// `<topic>/<partition>` and offset of its record.
    pub source: Arc<str>,
    pub offset: i64,
}

/// One channel's new swap states from the feed; `gap` when some of its
/// states were lost before them.
#[derive(Debug)]
pub struct SwapUpdate {
    pub key: AggKey,
    pub swaps: Vec<FeedSwap>,
    pub gap: bool,
}

/// One entry of a channel's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The offset of its first swap has `count` 1; `count` 0 is before it.
    pub at: Offset,
    pub gap: bool,
    /// The swaps, a JSON array.
    pub swaps: String,
}

/// Why a client's position could not be resumed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// The history started over (Redis lost it) since the position.
    EpochChanged,
    /// Entries after the position were trimmed (size, age, idle).
    HistoryExpired,
    /// No entry ever had this position.
    UnknownOffset,
}

impl Lost {
    pub fn reason(self) -> &'static str {
        match self {
            Lost::EpochChanged => "epoch_changed",
            Lost::HistoryExpired => "history_expired",
            Lost::UnknownOffset => "unknown_offset",
        }
    }
}

/// A channel's history as one subscriber reads it.
#[derive(Debug)]
pub struct Replay {
    pub epoch: String,
    /// The newest position: after every entry.
    pub head: Offset,
    /// The entries after the asked position (none without one), or why
    /// they cannot be had.
    pub missed: Result<Vec<Entry>, Lost>,
}

/// `script` with `epoch_of(meta)`: the channel's epoch, and whether it is
/// new (from Redis' clock): the history starts over.
fn with_epoch(script: &str) -> redis::Script {
    let epoch_of = r"
local function epoch_of(meta)
  local epoch = redis.call('HGET', meta, 'epoch')
  if epoch then return epoch, false end
  local t = redis.call('TIME')
  epoch = t[1] .. string.format('%06d', tonumber(t[2]))
  redis.call('HSET', meta, 'epoch', epoch)
  return epoch, true
end
";
    redis::Script::new(&format!("{epoch_of}{script}"))
}

/// Appends an update to its channel's history and publishes it, keeping
/// at most `size` swaps (the newest entry always) and none older than
/// `max age` (but the newest entry).
/// KEYS: stream, meta, index. ARGV: pub/sub channel, key name, gap (0/1),
/// size, max age (s), meta lifetime (s), then either
/// - `all`, the swaps as a JSON array, their count, and per source its
///   `source, lowest offset, highest offset`: every swap is new unless a
///   source's recorded offset reaches its lowest one; then nothing is
///   written and `filter` is returned, for the caller to send
/// - `each`, then per swap `source, offset, JSON`: only the swaps past
///   their source's recorded offset are kept.
///
/// Publishes `{"key":..,"epoch":..,"id":..,["gap":true,]"swaps":[..]}`,
/// nothing when every swap was a repeat and there is no gap.
static APPEND: LazyLock<redis::Script> = LazyLock::new(|| {
    with_epoch(
        r#"
local stream, meta, index = KEYS[1], KEYS[2], KEYS[3]
local size, max_age, meta_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local gap = ARGV[3] == '1'
local function mark_of(source)
  return tonumber(redis.call('HGET', meta, source) or '-1')
end
local swaps, count
if ARGV[7] == 'all' then
  for i = 10, #ARGV, 3 do
    if mark_of(ARGV[i]) >= tonumber(ARGV[i + 1]) then return 'filter' end
  end
  for i = 10, #ARGV, 3 do
    redis.call('HSET', meta, ARGV[i], ARGV[i + 2])
  end
  swaps, count = ARGV[8], tonumber(ARGV[9])
else
  local kept, marks = {}, {}
  for i = 8, #ARGV, 3 do
    local source, offset = ARGV[i], tonumber(ARGV[i + 1])
    local mark = marks[source] or mark_of(source)
    if offset > mark then
      kept[#kept + 1] = ARGV[i + 2]
      mark = offset
    end
    marks[source] = mark
  end
  for source, mark in pairs(marks) do
    redis.call('HSET', meta, source, string.format('%d', mark))
  end
  swaps, count = '[' .. table.concat(kept, ',') .. ']', #kept
end
local epoch = epoch_of(meta)
redis.call('EXPIRE', meta, meta_ttl)
if count == 0 and not gap then return false end
if redis.call('EXISTS', stream) == 0 then
  redis.call('DEL', index)
  redis.call('HSET', meta, 'swaps', 0)
end
local id
if gap then
  id = redis.call('XADD', stream, '*', 's', swaps, 'g', '1')
else
  id = redis.call('XADD', stream, '*', 's', swaps)
end
redis.call('RPUSH', index, id .. ' ' .. count)
-- Trim from the oldest while over the size or the age, keeping the newest
-- (by the index: the entries themselves may be megabytes).
local total = redis.call('HINCRBY', meta, 'swaps', count)
local t = redis.call('TIME')
local oldest_kept_ms = (tonumber(t[1]) - max_age) * 1000
while redis.call('LLEN', index) > 1 do
  local oldest = redis.call('LINDEX', index, 0)
  local ms, seq, n = string.match(oldest, '^(%d+)-(%d+) (%d+)$')
  if total <= size and tonumber(ms) >= oldest_kept_ms then break end
  redis.call('XDEL', stream, ms .. '-' .. seq)
  redis.call('LPOP', index)
  total = redis.call('HINCRBY', meta, 'swaps', -tonumber(n))
end
redis.call('EXPIRE', stream, max_age)
redis.call('EXPIRE', index, max_age)
redis.call('HSET', meta, 'last_id', id, 'last_n', count)
redis.call('HINCRBY', meta, 'added', 1)
local payload = '{"key":"' .. ARGV[2] .. '","epoch":"' .. epoch .. '","id":"' .. id .. '"'
if gap then payload = payload .. ',"gap":true' end
redis.call('PUBLISH', ARGV[1], payload .. ',"swaps":' .. swaps .. '}')
return id
"#,
    )
});

/// Reads a channel's epoch and newest position and, given a position, the
/// entries after it (its own entry included: the caller skips what the
/// client has). KEYS: stream, meta. ARGV: meta lifetime (s), then
/// optionally the client's epoch, entry id and count.
/// Returns {epoch, last_id, last_n, status, entries}, status one of
/// `fresh`, `caught_up`, `replay`, `epoch_changed`, `history_expired`.
static READ: LazyLock<redis::Script> = LazyLock::new(|| {
    with_epoch(
        r#"
local stream, meta = KEYS[1], KEYS[2]
local epoch, created = epoch_of(meta)
if created then redis.call('EXPIRE', meta, ARGV[1]) end
local last_id = redis.call('HGET', meta, 'last_id') or '0-0'
local last_n = redis.call('HGET', meta, 'last_n') or '0'
if #ARGV < 4 then return {epoch, last_id, last_n, 'fresh', {}} end
if ARGV[2] ~= epoch then return {epoch, last_id, last_n, 'epoch_changed', {}} end
if ARGV[3] == last_id and ARGV[4] == last_n then return {epoch, last_id, last_n, 'caught_up', {}} end
local entries = redis.call('XRANGE', stream, ARGV[3], '+')
if #entries > 0 and entries[1][1] == ARGV[3] then
  return {epoch, last_id, last_n, 'replay', entries}
end
if ARGV[3] == '0-0' and tonumber(redis.call('HGET', meta, 'added') or '0') == redis.call('XLEN', stream) then
  return {epoch, last_id, last_n, 'replay', entries}
end
return {epoch, last_id, last_n, 'history_expired', {}}
"#,
    )
});

/// Swaps in one history entry at most: a catch-up's batch is written as
/// several, each a short hold of Redis (about 300 KB).
const ENTRY_SWAPS: usize = 1000;

/// How long a channel's meta hash outlives its last write.
fn meta_ttl(history: &WsHistory) -> u64 {
    history.max_age.max(Duration::from_secs(86_400)).as_secs()
}

impl RedisStore {
    fn history_keys(&self, key: &AggKey) -> (String, String) {
        (self.key(key, "history"), self.key(key, "history-meta"))
    }

    /// The list of a channel's entries with their swap counts, oldest
    /// first: `<id> <count>`.
    fn history_index(&self, key: &AggKey) -> String {
        self.key(key, "history-index")
    }

    /// Appends each update to its channel's history and publishes it: one
    /// script per channel, a bounded number of channels at a time (see
    /// `in_flight`).
    pub async fn publish_swaps(&self, updates: &[SwapUpdate]) -> anyhow::Result<()> {
        let sent: Vec<futures::future::BoxFuture<'_, anyhow::Result<()>>> =
            updates.iter().map(|update| Box::pin(self.append_update(update)) as _).collect();
        in_flight(sent).await
    }

    /// One update appended, in entries of at most [`ENTRY_SWAPS`].
    /// One after the other, so that a catch-up's batch does not hold Redis
    /// for long at a time.
    async fn append_update(&self, update: &SwapUpdate) -> anyhow::Result<()> {
        let chunks: Vec<&[FeedSwap]> =
            if update.swaps.is_empty() { vec![&[]] } else { update.swaps.chunks(ENTRY_SWAPS).collect() };
        for (i, swaps) in chunks.into_iter().enumerate() {
            let gap = update.gap && i == 0;
            // Every swap new (the rule): one array, checked per partition.
            // A batch decided again (a restart's replay) is checked per swap.
            let all = self.append(&update.key, gap, swaps, false).invoke_async::<Value>(&mut self.conn.clone()).await;
            let filter = matches!(&all, Ok(Value::SimpleString(s)) if s == "filter")
                || matches!(&all, Ok(Value::BulkString(s)) if s == b"filter");
            let result = if filter {
                self.append(&update.key, gap, swaps, true).invoke_async::<Value>(&mut self.conn.clone()).await
            } else {
                all
            };
            result.with_context(|| format!("publishing swaps of {}", update.key))?;
        }
        Ok(())
    }

    /// The [`APPEND`] call for `swaps` of `key`: one by one (`each`), or as
    /// one array with the offset range of each partition.
    fn append(&self, key: &AggKey, gap: bool, swaps: &[FeedSwap], each: bool) -> redis::ScriptInvocation<'static> {
        let history = self.history;
        let (stream, meta) = self.history_keys(key);
        let mut invocation = APPEND.prepare_invoke();
        invocation
            .key(stream)
            .key(meta)
            .key(self.history_index(key))
            .arg(self.updates_channel(key))
            .arg(key.to_string())
            .arg(u8::from(gap))
            .arg(history.size)
            .arg(history.max_age.as_secs().max(1))
            .arg(meta_ttl(&history));
        if each {
            invocation.arg("each");
            for swap in swaps {
                invocation.arg(&*swap.source).arg(swap.offset).arg(&*swap.json);
            }
            return invocation;
        }
        let mut array = String::with_capacity(2 + swaps.iter().map(|s| s.json.len() + 1).sum::<usize>());
        let mut ranges: Vec<(&str, i64, i64)> = Vec::new();
        array.push('[');
        for (i, swap) in swaps.iter().enumerate() {
            if i > 0 {
                array.push(',');
            }
            array.push_str(&swap.json);
            match ranges.iter_mut().find(|(source, ..)| *source == &*swap.source) {
                Some((_, low, high)) => (*low, *high) = ((*low).min(swap.offset), (*high).max(swap.offset)),
                None => ranges.push((&swap.source, swap.offset, swap.offset)),
            }
        }
        array.push(']');
        invocation.arg("all").arg(array).arg(swaps.len());
        for (source, low, high) in ranges {
            invocation.arg(source).arg(low).arg(high);
        }
        invocation
    }

    /// `key`'s epoch and newest position and, after `since` (an epoch and
    /// position the client had), the entries it missed.
    pub async fn history(&self, key: &AggKey, since: Option<(&str, Offset)>) -> anyhow::Result<Replay> {
        let (stream, meta) = self.history_keys(key);
        let mut invocation = READ.prepare_invoke();
        invocation.key(stream).key(meta).arg(meta_ttl(&self.history));
        if let Some((epoch, at)) = since {
            invocation.arg(epoch).arg(at.entry()).arg(at.count);
        }
        let mut conn = self.conn.clone();
        let (epoch, last_id, last_n, status, entries): (String, String, u32, String, Value) =
            invocation.invoke_async(&mut conn).await.with_context(|| format!("reading the history of {key}"))?;
        let head = Offset::of_entry(&last_id, last_n).context("a malformed history position")?;
        let missed = match status.as_str() {
            "fresh" | "caught_up" => Ok(Vec::new()),
            "epoch_changed" => Err(Lost::EpochChanged),
            "history_expired" if since.is_some_and(|(_, at)| at > head) => Err(Lost::UnknownOffset),
            "history_expired" => Err(Lost::HistoryExpired),
            _ => Ok(after(parse_entries(entries)?, since.map_or(Offset::ZERO, |(_, at)| at))),
        };
        Ok(Replay { epoch, head, missed })
    }
}

/// The stream entries as XRANGE returns them: `[[id, [field, value, ..]], ..]`.
fn parse_entries(value: Value) -> anyhow::Result<Vec<Entry>> {
    let raw: Vec<(String, Vec<(String, String)>)> =
        redis::from_redis_value(value).context("a malformed history entry")?;
    raw.into_iter()
        .map(|(id, fields)| {
            let mut entry = Entry {
                at: Offset::of_entry(&id, 0).context("a malformed history id")?,
                gap: false,
                swaps: String::new(),
            };
            for (field, value) in fields {
                match field.as_str() {
                    "s" => entry.swaps = value,
                    "g" => entry.gap = true,
                    _ => {}
                }
            }
            Ok(entry)
        })
        .collect()
}

/// What comes after `at`: the entries after its own, and of its own entry
/// the swaps after its count (without the gap, which came before them).
fn after(entries: Vec<Entry>, at: Offset) -> Vec<Entry> {
    entries
        .into_iter()
        .filter_map(|mut entry| {
            if !entry.at.same_entry(&at) {
                return (entry.at > at).then_some(entry);
            }
            let swaps: Vec<&serde_json::value::RawValue> = serde_json::from_str(&entry.swaps).ok()?;
            let rest = swaps.get(at.count as usize..).filter(|rest| !rest.is_empty())?;
            entry.swaps = format!("[{}]", rest.iter().map(|s| s.get()).collect::<Vec<_>>().join(","));
            entry.at.count = at.count;
            entry.gap = false;
            Some(entry)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_is_written_as_entry_and_count_and_ordered_so() {
        let at: Offset = "1733312345123-4-2".parse().expect("an offset");
        assert_eq!(at, Offset { ms: 1_733_312_345_123, seq: 4, count: 2 });
        assert_eq!(at.to_string(), "1733312345123-4-2");
        assert_eq!(at.text_len(), at.to_string().len());
        assert_eq!(Offset::ZERO.text_len(), 5);
        assert_eq!("0-0-0".parse(), Ok(Offset::ZERO));
        for bad in ["", "1-2", "1-2-x", "-1-2-3", "1--2", "a-b-c", "1-2-3-4"] {
            assert_eq!(bad.parse::<Offset>(), Err(()), "{bad:?}");
        }
        let newer: Offset = "1733312345123-5-0".parse().unwrap();
        assert!(at < newer && Offset::ZERO < at);
    }

    #[test]
    fn a_replay_starts_after_the_swaps_the_client_had() {
        let entry = |ms, gap, swaps: &str| Entry { at: Offset { ms, seq: 0, count: 0 }, gap, swaps: swaps.into() };
        let entries = vec![entry(10, true, "[1,2,3]"), entry(20, true, "[4]"), entry(30, false, "[5,6]")];
        let at = |ms, count| Offset { ms, seq: 0, count };
        // After the first two swaps of entry 10: its third, without its gap.
        let rest = after(entries.clone(), at(10, 2));
        assert_eq!(rest[0], Entry { at: at(10, 2), gap: false, swaps: "[3]".into() });
        assert_eq!(rest[1..], entries[1..]);
        // Entry 10 all seen: the next ones, gap included.
        assert_eq!(after(entries.clone(), at(10, 3)), entries[1..]);
        assert_eq!(after(entries.clone(), Offset::ZERO), entries);
    }
}
