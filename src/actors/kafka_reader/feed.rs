//! The swap feed: publishes each batch's new swap states (pending and
//! confirmed, each once per partition) to the keys' update channels as soon
//! as the reader has decided them, before their checkpoint. The WebSocket
//! `swap` frames come from here, so their latency is the read and the
//! decision, not PostgreSQL.
//!
//! What a frame says is a fact of the input, decided exactly as the
//! checkpoint will store it: a batch that is replayed after a crash or a
//! fenced checkpoint is decided the same way again, and the session
//! registries drop the repeated states. Aggregates (the `stats` frames, the
//! REST answers from Redis) still change only after the commit; the
//! committer then publishes an update without swaps for every changed key,
//! so that registries fetch fresh stats.
//!
//! Publishing never holds up the reader: batches queue here (bounded), the
//! ones queued while a publish was on its way go out together, and when
//! Redis cannot keep up or is down, batches are dropped and counted. The
//! registries' pub/sub connections drop with such an outage and show every
//! client a `seq` gap when they come back.

use std::collections::HashMap;
use std::sync::Arc;

use actix::Arbiter;
use slog::{info, warn, Logger};
use tokio::sync::mpsc;

use crate::domain::partial::AggKey;
use crate::domain::SwapEvent;
use crate::metrics::METRICS;
use crate::storage::redis::{RedisStore, WireJson};

/// Batches waiting for Redis at most.
const QUEUE: usize = 1024;

/// One batch's new swap states, per key, in the batch's order.
pub type Changes = Vec<(AggKey, Vec<Arc<SwapEvent>>)>;

pub struct SwapFeed {
    tx: mpsc::Sender<Changes>,
    _arbiter: Arbiter,
}

impl SwapFeed {
    pub fn start(redis: RedisStore, log: Logger) -> SwapFeed {
        let (tx, rx) = mpsc::channel(QUEUE);
        let arbiter = Arbiter::new();
        arbiter.spawn(run(redis, rx, log));
        SwapFeed { tx, _arbiter: arbiter }
    }

    /// Queues a batch's swap states; never waits.
    pub fn announce(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(changes) {
            METRICS.swap_feed_dropped.inc();
        }
    }
}

async fn run(redis: RedisStore, mut rx: mpsc::Receiver<Changes>, log: Logger) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        // Whatever queued during the last publish goes out with this one,
        // each key's swaps still in batch order.
        let mut keys: Vec<AggKey> = Vec::new();
        let mut swaps: HashMap<AggKey, Vec<Arc<SwapEvent>>> = HashMap::new();
        let mut add = |changes: Changes| {
            for (key, states) in changes {
                swaps
                    .entry(key)
                    .or_insert_with_key(|key| {
                        keys.push(key.clone());
                        Vec::new()
                    })
                    .extend(states);
            }
        };
        add(first);
        while let Ok(more) = rx.try_recv() {
            add(more);
        }
        let updates = serialize(keys.into_iter().map(|key| {
            let states = swaps.remove(&key).unwrap_or_default();
            (key, states)
        }));
        match redis.write(&[], &updates).await {
            Ok(()) if failing => {
                failing = false;
                info!(log, "swap feed publishes again");
            }
            Ok(()) => {}
            Err(e) => {
                METRICS.redis_errors.inc();
                if !failing {
                    failing = true;
                    warn!(log, "cannot publish swap states; dropping them until Redis answers"; "error" => format!("{e:#}"));
                }
            }
        }
    }
}

/// Each key's swaps in the wire form.
fn serialize(changes: impl Iterator<Item = (AggKey, Vec<Arc<SwapEvent>>)>) -> Vec<(AggKey, Vec<Arc<str>>)> {
    let mut json = WireJson::default();
    changes.map(|(key, states)| (key, states.iter().map(|swap| json.of(swap)).collect())).collect()
}
