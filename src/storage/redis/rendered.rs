//! Stats bodies rendered by one reader and served by every other: kept
//! per key for the seconds their windows hold ([`crate::domain::window::until`],
//! at most to the end of the minute they were rendered in), and only while
//! the key's version, which every live write of the key increments after
//! its writes, is still the one read before the state they were rendered
//! from.

use std::ops::Range;

use super::reads::Partials;
use super::RedisStore;
use crate::domain::partial::AggKey;

/// What [`RedisStore::rendered_stats`] found.
pub enum Kept {
    Body(Vec<u8>),
    /// No body for this second and version.
    Stale {
        version: String,
        partials: Partials,
    },
}

/// How long a kept body outlives its minute (it is never served after its
/// time).
const KEPT_SECS: u64 = 120;

impl RedisStore {
    /// The body of `key` kept for second `now` (unix seconds) at the key's
    /// current version if there is one; else that version, under which a
    /// body rendered now is to be kept, and the key's partials to render it
    /// from (read at once, to save a round trip on a miss).
    pub async fn rendered_stats(&self, key: &AggKey, now: i64) -> anyhow::Result<Kept> {
        type Stamped = (Option<Vec<u8>>, Option<String>);
        let mut pipe = redis::pipe();
        pipe.cmd("MGET").arg(self.key(key, "stats")).arg(self.key(key, "version"));
        pipe.cmd("HGETALL").arg(self.key(key, "partials"));
        let ((kept, version), partials): (Stamped, Vec<(String, String)>) = self.read_pipe(&pipe).await?;
        let version = version.unwrap_or_default();
        Ok(match current(kept, now, &version) {
            Some(body) => Kept::Body(body),
            None => Kept::Stale { version, partials: Partials(partials) },
        })
    }

    /// The bodies of `keys` kept for second `now` at their current versions,
    /// in one `MGET` (`None` where there is none); in cluster mode, where
    /// the keys are in many slots, `None` for every key.
    pub async fn rendered_bodies(&self, keys: &[AggKey], now: i64) -> anyhow::Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() || self.conn.is_cluster() {
            return Ok(vec![None; keys.len()]);
        }
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(self.key(key, "stats")).arg(self.key(key, "version"));
        }
        let values: Vec<Option<Vec<u8>>> = self.read_cmd(&mget).await?;
        let mut values = values.into_iter();
        Ok(keys
            .iter()
            .map(|_| {
                let (kept, version) = (values.next().flatten(), values.next().flatten());
                current(kept, now, &String::from_utf8_lossy(&version.unwrap_or_default()))
            })
            .collect())
    }

    /// Keeps `body` of `key`, rendered from state read at `version` and
    /// valid for the seconds `valid` (unix seconds).
    pub async fn keep_stats(&self, key: &AggKey, valid: Range<i64>, version: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut value = format!("{} {} {version}", valid.start, valid.end).into_bytes();
        value.push(b'\n');
        value.extend_from_slice(body);
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(key, "stats"))
            .arg(value)
            .arg("EX")
            .arg(KEPT_SECS)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

/// The body of `kept` if it is stamped valid at second `now` and for
/// `version`.
fn current(kept: Option<Vec<u8>>, now: i64, version: &str) -> Option<Vec<u8>> {
    let mut kept = kept?;
    let newline = kept.iter().position(|&b| b == b'\n')?;
    let stamp = std::str::from_utf8(&kept[..newline]).ok()?;
    let mut parts = stamp.splitn(3, ' ');
    let from: i64 = parts.next()?.parse().ok()?;
    let until: i64 = parts.next()?.parse().ok()?;
    let valid = (from..until).contains(&now) && parts.next()? == version;
    valid.then(|| kept.split_off(newline + 1))
}
