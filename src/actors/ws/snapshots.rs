//! What a subscription is answered with: the channel's snapshot (its stats,
//! read as REST reads them) and, for a client that resumes, the history it
//! missed as frames. Reads are shared by the sessions that subscribe while
//! one is in flight, and bounded in number and time.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use serde_json::Value;

use super::outbound::Replayed;
use super::protocol::swap_frames;
use super::request::Since;
use crate::domain::partial::AggKey;
use crate::read::{Live, ReadError};
use crate::storage::redis::{HistoryEntry, RedisStore, Replay};

/// The error code of a channel with no swap seen (REST answers 404).
const UNKNOWN_CHANNEL: &str = "unknown_channel";

/// Longest wait for a channel's snapshot before the subscription is refused.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(5);

/// Longest wait for a channel's history (queued behind other reads
/// included) before the subscription is refused.
const HISTORY_DEADLINE: Duration = Duration::from_secs(10);

/// A channel's snapshot and history as they are read, shared by the
/// sessions that subscribe while a read is in flight: a reconnect storm
/// subscribes thousands of clients to the same few channels at once, and a
/// read each (dozens of Redis round trips for a day of candles, hundreds of
/// kilobytes of history) took longer than the deadline for most of them.
/// History reads in flight are also bounded, so that many different
/// positions queue for Redis instead of all timing out together.
#[derive(Clone)]
pub struct Snapshots {
    in_flight: Arc<Mutex<HashMap<AggKey, SharedSnapshot>>>,
    /// Per channel and position: when the read was begun, and the read.
    histories: Arc<Mutex<HashMap<HistoryRead, (Instant, SharedHistory)>>>,
    history_reads: Arc<tokio::sync::Semaphore>,
}

impl Default for Snapshots {
    fn default() -> Snapshots {
        Snapshots {
            in_flight: Arc::default(),
            histories: Arc::default(),
            history_reads: Arc::new(tokio::sync::Semaphore::new(HISTORY_READS)),
        }
    }
}

type SharedSnapshot = futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<Value>, SnapshotError>>>;
type HistoryRead = (AggKey, Option<Since>);
type SharedHistory = futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<Replay>, String>>>;

/// History reads one process has in flight at most.
const HISTORY_READS: usize = 16;

/// Why a channel has no snapshot: its error frame's code and message.
#[derive(Clone, Debug)]
pub struct SnapshotError {
    pub code: &'static str,
    pub message: Arc<str>,
}

impl SnapshotError {
    pub fn unavailable(message: String) -> SnapshotError {
        SnapshotError { code: "unavailable", message: message.into() }
    }

    /// The token or pair has no swap seen.
    pub fn is_unknown(&self) -> bool {
        self.code == UNKNOWN_CHANNEL
    }
}

impl Snapshots {
    /// The read in flight for `key`, or a new one.
    pub fn read(&self, live: &Live, key: &AggKey) -> SharedSnapshot {
        use futures::FutureExt as _;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.retain(|_, read| read.peek().is_none());
        if let Some(read) = in_flight.get(key) {
            return read.clone();
        }
        let (live, owned) = (live.clone(), key.clone());
        let read = async move {
            match tokio::time::timeout(SNAPSHOT_DEADLINE, live.shared_stats(&owned)).await {
                Ok(Ok(value)) => Ok(Arc::new(value)),
                Ok(Err(ReadError::NotFound(e))) => {
                    Err(SnapshotError { code: UNKNOWN_CHANNEL, message: format!("{e}, not subscribed").into() })
                }
                Ok(Err(e)) => Err(SnapshotError::unavailable(format!("no snapshot for {owned}, not subscribed: {e}"))),
                Err(_) => Err(SnapshotError::unavailable(format!(
                    "no snapshot for {owned}, not subscribed: no answer within {SNAPSHOT_DEADLINE:?}"
                ))),
            }
        }
        .boxed()
        .shared();
        in_flight.insert(key.clone(), read.clone());
        read
    }

    /// `key`'s history after `since`, within `HISTORY_DEADLINE`, from a
    /// read in flight that was begun at or after `confirmed`, the moment
    /// this session's live updates began (an earlier read would miss what
    /// came in between), or a new one.
    pub fn history(
        &self,
        redis: &RedisStore,
        key: &AggKey,
        since: Option<Since>,
        confirmed: Instant,
    ) -> impl Future<Output = Result<Arc<Replay>, SnapshotError>> {
        let read = self.shared_history(redis, key, since, confirmed);
        let key = key.clone();
        async move {
            let failed = match tokio::time::timeout(HISTORY_DEADLINE, read).await {
                Ok(Ok(replay)) => return Ok(replay),
                Ok(Err(e)) => e,
                Err(_) => format!("no answer within {HISTORY_DEADLINE:?}"),
            };
            Err(SnapshotError::unavailable(format!("no history for {key}, not subscribed: {failed}")))
        }
    }

    fn shared_history(
        &self,
        redis: &RedisStore,
        key: &AggKey,
        since: Option<Since>,
        confirmed: Instant,
    ) -> SharedHistory {
        use futures::FutureExt as _;
        let mut in_flight = self.histories.lock().unwrap_or_else(|e| e.into_inner());
        in_flight.retain(|_, (_, read)| read.peek().is_none());
        let id = (key.clone(), since);
        if let Some((_, read)) = in_flight.get(&id).filter(|(begun, _)| *begun >= confirmed) {
            return read.clone();
        }
        let (redis, owned, since, permits) = (redis.clone(), key.clone(), id.1.clone(), self.history_reads.clone());
        let read = async move {
            let _permit = permits.acquire_owned().await.map_err(|e| e.to_string())?;
            let since = since.as_ref().map(|s| (s.epoch.as_str(), s.offset));
            redis.history(&owned, since).await.map(Arc::new).map_err(|e| format!("{e:#}"))
        }
        .boxed()
        .shared();
        in_flight.insert(id, (Instant::now(), read.clone()));
        read
    }
}

/// A history's entries as the frames they make, and how many swaps.
pub fn replay_frames(entries: &[HistoryEntry]) -> (Vec<Replayed>, u64) {
    let mut replayed = Vec::with_capacity(entries.len());
    let mut swaps = 0;
    for entry in entries {
        if entry.gap {
            replayed.push(Replayed::Gap);
        }
        let Ok(raw) = serde_json::from_str::<Vec<&RawValue>>(&entry.swaps) else { continue };
        let mut frames = Vec::with_capacity(raw.len());
        swap_frames(entry.at, &raw, &mut frames);
        swaps += frames.len() as u64;
        if !frames.is_empty() {
            replayed.push(Replayed::Swaps(frames));
        }
    }
    (replayed, swaps)
}
