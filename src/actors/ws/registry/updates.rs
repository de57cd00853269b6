//! Updates in: what the registry's pub/sub connection delivers, each
//! channel's history entries numbered into swap frames once, held per
//! channel until the handoff budget lets them go to the sessions; and after
//! a pub/sub loss, the missed entries read back from the history.

use std::time::Instant;

use actix::prelude::*;
use futures::StreamExt as _;
use serde_json::value::RawValue;
use slog::warn;

use super::SessionRegistry;
use crate::actors::ws::fanout::Update;
use crate::actors::ws::protocol::{ChannelKey, FrameBody};
use crate::actors::ws::pubsub::{Incoming, Published};
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::storage::redis::Replay;

/// Channels whose history one registry reads back at once after a pub/sub loss.
const RECOVERY_READS: usize = 16;

impl SessionRegistry {
    /// New swap frames go to their channels' buffers, each swap state once;
    /// then to the sessions, at once or at the next handoff (see
    /// [`Self::schedule_flush`]).
    fn on_published(&mut self, payloads: Vec<(Vec<u8>, Instant)>, ctx: &mut Context<Self>) {
        for (payload, arrived) in payloads {
            let update: Update = match serde_json::from_slice(&payload) {
                Ok(update) => update,
                Err(e) => {
                    warn!(self.log, "unreadable update message"; "error" => %e);
                    continue;
                }
            };
            let Some(key) = AggKey::parse(&update.key) else { continue };
            let Some(feed) = self.feeds.get_mut(&key) else { continue };
            if feed.recovering.is_some() {
                // Its history is being read: this update waits for it.
                drop(update);
                feed.recovering.get_or_insert_default().push((payload, arrived));
                continue;
            }
            self.take_update(&key, &update, arrived);
        }
        self.schedule_flush(ctx);
    }

    /// Buffers the new frames of `update` for the live channel of `agg`,
    /// after telling its subscribers of states lost before them; its other
    /// channels read their state again at the next interval.
    fn take_update(&mut self, agg: &AggKey, update: &Update, arrived: Instant) {
        let Some(feed) = self.feeds.get_mut(agg) else { return };
        let mut frames = Vec::new();
        let lost = feed.cursor.advance(update, &mut frames);
        self.take_frames(agg, lost, frames, Some(arrived));
    }

    /// Buffers `frames` of the live channel of `agg` (after a gap when
    /// states were `lost` before them) and marks its channels changed;
    /// `arrived`: when their update came over pub/sub (not for frames read
    /// back from the history).
    fn take_frames(&mut self, agg: &AggKey, lost: bool, frames: Vec<FrameBody>, arrived: Option<Instant>) {
        let Some(feed) = self.feeds.get(agg) else { return };
        for key in &feed.channels {
            if let Some(channel) = self.channels.get_mut(key) {
                channel.dirty = true;
            }
        }
        let key = ChannelKey::Live(agg.clone());
        if lost {
            // The gap comes after the frames before it.
            self.flush_channel(&key);
            self.tell_gap(&key);
        }
        let Some(channel) = self.channels.get_mut(&key) else { return };
        let was_empty = channel.buffered.is_empty();
        if !frames.is_empty() {
            channel.buffered_since = channel.buffered_since.or(arrived);
        }
        channel.buffered.extend(frames);
        if was_empty && !channel.buffered.is_empty() {
            self.to_flush.push(key);
        }
    }

    /// The pub/sub connection is back after a loss: each channel reads back
    /// from its history what was published meanwhile, holding the updates
    /// that come in the meantime. A channel whose history cannot tell
    /// (nothing handed on yet, or the history lost) skips a `seq`.
    fn recover(&mut self, ctx: &mut Context<Self>) {
        let mut reads = Vec::new();
        let mut unknown = Vec::new();
        for (key, feed) in &mut self.feeds {
            match feed.cursor.position() {
                Some((epoch, at)) => {
                    feed.recovering.get_or_insert_default();
                    reads.push((key.clone(), epoch.to_owned(), at));
                }
                None => unknown.push(ChannelKey::Live(key.clone())),
            }
        }
        for key in unknown {
            self.tell_gap(&key);
        }
        // Candle and stats frames read the state again.
        for channel in self.channels.values_mut() {
            channel.dirty = true;
        }
        let redis = self.redis.clone();
        let fetch = futures::stream::iter(reads)
            .map(move |(key, epoch, at)| {
                let redis = redis.clone();
                async move {
                    let replay = redis.history(&key, Some((&epoch, at))).await;
                    (key, replay)
                }
            })
            .buffer_unordered(RECOVERY_READS)
            .collect::<Vec<_>>();
        ctx.spawn(fetch.into_actor(self).map(|replays, act, ctx| {
            for (key, replay) in replays {
                act.recovered(key, replay);
            }
            act.schedule_flush(ctx);
        }));
    }

    /// `key`'s history since the pub/sub loss is read: its entries go out
    /// as they would have, then the updates held meanwhile.
    fn recovered(&mut self, key: AggKey, replay: anyhow::Result<Replay>) {
        let Some(feed) = self.feeds.get_mut(&key) else { return };
        let held = feed.recovering.take().unwrap_or_default();
        let live = ChannelKey::Live(key.clone());
        match replay {
            Ok(Replay { epoch, missed: Ok(entries), .. }) => {
                for entry in &entries {
                    let Ok(swaps) = serde_json::from_str::<Vec<&RawValue>>(&entry.swaps) else { continue };
                    let Some(feed) = self.feeds.get_mut(&key) else { return };
                    let mut frames = Vec::new();
                    let lost = feed.cursor.advance_to(&epoch, entry.at, entry.gap, &swaps, &mut frames);
                    self.take_frames(&key, lost, frames, None);
                }
                METRICS.ws_pubsub_recovered.inc_by(entries.len() as u64);
            }
            Ok(Replay { missed: Err(lost), .. }) => {
                warn!(self.log, "updates lost with the pub/sub connection"; "channel" => %key, "why" => lost.reason());
                self.flush_channel(&live);
                self.tell_gap(&live);
            }
            Err(e) => {
                warn!(self.log, "cannot read back updates lost with the pub/sub connection";
                    "channel" => %key, "error" => format!("{e:#}"));
                self.flush_channel(&live);
                self.tell_gap(&live);
            }
        }
        for (payload, arrived) in held {
            let Ok(update) = serde_json::from_slice::<Update>(&payload) else { continue };
            self.take_update(&key, &update, arrived);
        }
    }

    /// Hands the buffered frames on now if the handoff budget allows it,
    /// else once it does, and at the latest `coalesce_max` after they came.
    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if self.to_flush.is_empty() || self.flush_scheduled {
            return;
        }
        let handoffs = self.to_flush.iter().filter_map(|key| self.channels.get(key)).map(|c| c.subscribers.len()).sum();
        let wait = self.budget.wait(handoffs, Instant::now()).min(self.settings.coalesce_max);
        if wait.is_zero() {
            self.flush();
        } else {
            self.flush_scheduled = true;
            ctx.run_later(wait, |act, _| {
                act.flush_scheduled = false;
                act.flush();
            });
        }
    }

    /// Hands every channel's buffered frames to its subscribers.
    fn flush(&mut self) {
        for key in std::mem::take(&mut self.to_flush) {
            self.flush_channel(&key);
        }
    }

    fn flush_channel(&mut self, key: &ChannelKey) {
        let Some(channel) = self.channels.get_mut(key) else { return };
        let frames = std::mem::take(&mut channel.buffered);
        let arrived = channel.buffered_since.take();
        if !frames.is_empty() {
            self.deliver(key, frames, arrived);
        }
    }

    /// States of `key` were lost: each of its subscribers skips a `seq`.
    fn tell_gap(&self, key: &ChannelKey) {
        METRICS.ws_gaps.inc();
        let Some(channel) = self.channels.get(key) else { return };
        for id in &channel.subscribers {
            if let Some(session) = self.sessions.get(id) {
                session.conn.gap(Some(key));
            }
        }
    }
}

impl Handler<Published> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: Published, ctx: &mut Context<Self>) {
        let incoming = self.inbox.take();
        let mut updates = Vec::new();
        for item in incoming {
            match item {
                Incoming::Update(payload, arrived) => updates.push((payload, arrived)),
                Incoming::Resumed => {
                    self.on_published(std::mem::take(&mut updates), ctx);
                    METRICS.ws_pubsub_resumed.inc();
                    self.recover(ctx);
                }
            }
        }
        self.on_published(updates, ctx);
    }
}
