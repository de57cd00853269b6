//! State frames: every stats interval, the `stats` frame of each live
//! channel and the changed buckets of each candle channel that changed,
//! read as REST reads them.

use std::sync::Arc;

use actix::prelude::*;

use super::SessionRegistry;
use crate::actors::ws::protocol::{ChannelKey, FrameBody};
use crate::read::ReadError;

/// What a `stats` or candle channel is now.
enum State {
    Stats(Arc<str>),
    /// Bucket start and candle JSON, oldest first.
    Candles(Vec<(i64, Arc<str>)>),
}

impl SessionRegistry {
    /// `stats` frames for the channels changed since the last ones; at most
    /// one fetch at a time, so at most one frame per channel per interval.
    pub(super) fn send_stats(&mut self, ctx: &mut Context<Self>) {
        if self.stats_in_flight {
            return;
        }
        let now = chrono::Utc::now().timestamp();
        for channel in self.channels.values_mut() {
            if channel.closes_at.is_some_and(|at| at <= now) {
                channel.dirty = true;
            }
        }
        let keys: Vec<ChannelKey> =
            self.channels.iter_mut().filter_map(|(key, c)| std::mem::take(&mut c.dirty).then(|| key.clone())).collect();
        if keys.is_empty() {
            return;
        }
        self.stats_in_flight = true;
        let (live, lateness) = (self.live.clone(), self.settings.lateness);
        let fetch = async move {
            let mut states = Vec::with_capacity(keys.len());
            for key in keys {
                let state = match &key {
                    ChannelKey::Live(agg) => live.shared_stats(agg).await.map(|v| State::Stats(v.to_string().into())),
                    ChannelKey::Candles(agg, interval) => {
                        live.shared_candles(agg, *interval, lateness).await.map(State::Candles)
                    }
                };
                match state {
                    Ok(state) => states.push((key, Some(state))),
                    // Nothing to tell yet (no swap seen).
                    Err(ReadError::NotFound(_)) => {}
                    // Read again at the next interval.
                    Err(_) => states.push((key, None)),
                }
            }
            states
        };
        ctx.spawn(fetch.into_actor(self).map(|states, act, _| {
            act.stats_in_flight = false;
            for (key, state) in states {
                match state {
                    Some(State::Stats(json)) => act.deliver(&key, vec![FrameBody::stats(json)], None),
                    Some(State::Candles(candles)) => act.deliver_candles(&key, candles),
                    None => {
                        if let Some(channel) = act.channels.get_mut(&key) {
                            channel.dirty = true;
                        }
                    }
                }
            }
        }));
    }

    /// A candle channel's buckets as just read: the changed ones to every
    /// subscriber that had the earlier ones, all of them to new subscribers.
    fn deliver_candles(&mut self, key: &ChannelKey, candles: Vec<(i64, Arc<str>)>) {
        let (Some(channel), ChannelKey::Candles(_, interval)) = (self.channels.get_mut(key), key) else { return };
        channel.closes_at = candles
            .iter()
            .filter(|(_, json)| json.contains(r#""closed":false"#))
            .map(|(t, _)| t + interval.seconds())
            .min();
        let changed: Vec<FrameBody> = candles
            .iter()
            .filter(|(t, json)| channel.candles.get(t) != Some(json))
            .map(|(_, json)| FrameBody::candle(json.clone()))
            .collect();
        let fresh: Vec<u64> = channel.fresh.drain().collect();
        let others: Vec<u64> = channel.subscribers.iter().filter(|id| !fresh.contains(id)).copied().collect();
        let all: Vec<FrameBody> = candles.iter().map(|(_, json)| FrameBody::candle(json.clone())).collect();
        channel.candles = candles.into_iter().collect();
        self.deliver_to(key, changed, &others, None);
        self.deliver_to(key, all, &fresh, None);
    }
}
