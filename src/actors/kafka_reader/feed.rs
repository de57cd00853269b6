//! The swap feed: publishes each batch's new swap states (pending and
//! confirmed, each once per partition) to the keys' update channels as soon
//! as the reader has decided them, before their checkpoint. The WebSocket
//! `swap` frames come from here, so their latency is the read and the
//! decision, not PostgreSQL.
//!
//! What a frame says is a fact of the input, decided exactly as the
//! checkpoint will store it: a batch that is replayed after a crash or a
//! fenced checkpoint is decided the same way again, and the channels'
//! histories drop the repeated states (by their Kafka offsets, see
//! `storage::redis::history`), which also keep them for clients that
//! resume. Aggregates (the `stats` frames, the
//! REST answers from Redis) still change only after the commit; the
//! committer then publishes an update without swaps for every changed key,
//! so that registries fetch fresh stats.
//!
//! Publishing never holds up the reader: batches queue here (bounded), the
//! ones queued while a publish was on its way go out together, and when
//! Redis cannot keep up or is down, batches are dropped and counted. A
//! dropped or failed batch's keys carry `"gap": true` on their next update,
//! so every subscribed client sees its channel skip a `seq` and re-reads
//! REST.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use actix::Arbiter;
use slog::{info, warn, Logger};
use tokio::sync::mpsc;

use super::plan::Decided;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::storage::redis::{FeedSwap, RedisStore, SwapUpdate, WireJson};
use crate::stream::Tp;

/// Batches waiting for Redis at most.
const QUEUE: usize = 1024;

/// One batch's new swap states, per key, in the batch's order.
pub type Changes = Vec<(AggKey, Vec<Decided>)>;

/// Keys whose swap states were lost since their last update.
type Lost = Arc<Mutex<BTreeSet<AggKey>>>;

pub struct SwapFeed {
    tx: mpsc::Sender<Changes>,
    lost: Lost,
    _arbiter: Arbiter,
}

impl SwapFeed {
    pub fn start(redis: RedisStore, log: Logger) -> SwapFeed {
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Lost::default();
        let arbiter = Arbiter::new();
        arbiter.spawn(run(redis, rx, lost.clone(), log));
        SwapFeed { tx, lost, _arbiter: arbiter }
    }

    /// Queues a batch's swap states; never waits.
    pub fn announce(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(changes)) = self.tx.try_send(changes) {
            METRICS.swap_feed_dropped.inc();
            lose(&self.lost, changes.into_iter().map(|(key, _)| key));
        }
    }
}

fn lose(lost: &Lost, keys: impl IntoIterator<Item = AggKey>) {
    lost.lock().unwrap_or_else(|e| e.into_inner()).extend(keys);
}

/// What goes out in one publish: every key's swaps in batch order, and
/// the lost keys marked.
#[derive(Default)]
struct Outgoing {
    keys: Vec<AggKey>,
    swaps: HashMap<AggKey, Vec<Decided>>,
}

impl Outgoing {
    fn add(&mut self, changes: Changes) {
        for (key, states) in changes {
            let Outgoing { keys, swaps } = self;
            swaps
                .entry(key)
                .or_insert_with_key(|key| {
                    keys.push(key.clone());
                    Vec::new()
                })
                .extend(states);
        }
    }

    /// The update messages, each swap serialized once; a lost key gets one
    /// even without new swaps.
    fn updates(mut self, lost: BTreeSet<AggKey>) -> Vec<SwapUpdate> {
        for key in &lost {
            if !self.swaps.contains_key(key) {
                self.keys.push(key.clone());
            }
        }
        let mut json = WireJson::default();
        let mut sources: HashMap<Tp, Arc<str>> = HashMap::new();
        self.keys
            .into_iter()
            .map(|key| {
                let states = self.swaps.remove(&key).unwrap_or_default();
                let swaps = states
                    .iter()
                    .map(|state| FeedSwap {
                        json: json.of(&state.swap),
                        source: sources.entry(state.tp.clone()).or_insert_with_key(|tp| tp.to_string().into()).clone(),
                        offset: state.offset,
                    })
                    .collect();
                SwapUpdate { gap: lost.contains(&key), key, swaps }
            })
            .collect()
    }
}

async fn run(redis: RedisStore, mut rx: mpsc::Receiver<Changes>, lost: Lost, log: Logger) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        // Whatever queued during the last publish goes out with this one.
        let mut outgoing = Outgoing::default();
        outgoing.add(first);
        while let Ok(more) = rx.try_recv() {
            outgoing.add(more);
        }
        let gaps = std::mem::take(&mut *lost.lock().unwrap_or_else(|e| e.into_inner()));
        let updates = outgoing.updates(gaps);
        match redis.publish_swaps(&updates).await {
            Ok(()) if failing => {
                failing = false;
                info!(log, "swap feed publishes again");
            }
            Ok(()) => {}
            Err(e) => {
                METRICS.redis_errors.inc();
                lose(&lost, updates.into_iter().map(|u| u.key));
                if !failing {
                    failing = true;
                    warn!(log, "cannot publish swap states; dropping them until Redis answers"; "error" => format!("{e:#}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::swap::tests::minimal_raw;
    use crate::domain::RawSwap;

    fn swap(seed: u32, to: &str) -> Decided {
        let raw = RawSwap { tx_hash: Some(format!("0x{seed:064x}")), token_to: Some(to.into()), ..minimal_raw() };
        Decided { swap: Arc::new(raw.validate().unwrap()), tp: Tp::new("swaps", 3), offset: i64::from(seed) }
    }

    fn key(name: &str) -> AggKey {
        AggKey::parse(name).unwrap()
    }

    #[test]
    fn batches_merge_per_key_in_order_and_lost_keys_are_marked() {
        let (a, b, c) = (swap(1, "USDC"), swap(2, "USDC"), swap(3, "SOL"));
        let mut outgoing = Outgoing::default();
        outgoing.add(vec![(key("token:ETH"), vec![a.clone()]), (key("token:USDC"), vec![a.clone()])]);
        outgoing.add(vec![(key("token:ETH"), vec![b.clone(), c.clone()])]);
        let lost = BTreeSet::from([key("token:USDC"), key("token:BTC")]);
        let updates = outgoing.updates(lost);

        let shown: Vec<(String, usize, bool)> =
            updates.iter().map(|u| (u.key.to_string(), u.swaps.len(), u.gap)).collect();
        assert_eq!(
            shown,
            [("token:ETH".into(), 3, false), ("token:USDC".into(), 1, true), ("token:BTC".into(), 0, true)]
        );
        let hashes: Vec<bool> = updates[0]
            .swaps
            .iter()
            .zip([&a, &b, &c])
            .map(|(sent, state)| sent.json.contains(&state.swap.id.tx_hash.to_string()) && sent.offset == state.offset)
            .collect();
        assert_eq!(hashes, [true, true, true], "in batch order: {:?}", updates[0].swaps);
        assert_eq!(&*updates[0].swaps[0].source, "swaps/3");
        assert!(Arc::ptr_eq(&updates[0].swaps[0].json, &updates[1].swaps[0].json), "serialized once");
    }
}
