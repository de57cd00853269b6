//! One WebSocket connection (`GET /v1/ws`): parses the client's requests,
//! numbers the frames of each channel, answers subscriptions with a
//! snapshot, pings, and applies the per-connection limits.
//!
//! Channel frames do not pass through this actor: the registry pushes them
//! into the connection's outbound queue ([`super::outbound::OutQueue`], in [`ConnShared`]),
//! which the connection's writer (its response body, `http::ws`) drains
//! as fast as the socket takes them; this actor opens a channel there,
//! starts it once its `subscribed` frame went out, and removes it. Its
//! mailbox carries only the registry's close requests ([`Outbound`]). A
//! session runs only while actix polls its response body, so it is frozen
//! while its client does not read: nothing here decides that the client is
//! slow. The registry does, from [`ConnShared`]: the bytes queued, handed to
//! the HTTP layer and pulled by it, and it closes the socket itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use litemap::LiteMap;
use serde_json::{json, Value};

use super::connection::{now_ms, ConnShared};
use super::limits::IpSlot;
use super::protocol::{frame_len, parse_channel, ChannelKey, Outbound};
use super::registry::{Connect, Disconnect, SessionRegistry, Subscribe, Unsubscribe};
use super::request::{answer, Request, Since};
use super::snapshots::{replay_frames, SnapshotError, Snapshots};
use crate::config::WsSettings;
use crate::metrics::METRICS;
use crate::read::Live;
use crate::storage::redis::{Offset, Replay};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A subscription; its frames wait in the connection's queue until the
/// snapshot went out as seq 0, answering the request `id` that asked.
enum ChannelState {
    Waiting { generation: u64, id: Option<Value>, known_only: bool, since: Option<Since> },
    Live,
}

/// What every session of a process shares (one allocation, not one per
/// connection).
pub struct SessionCommon {
    pub registry: Addr<SessionRegistry>,
    /// Where snapshots are read, as REST reads them.
    pub live: Live,
    pub settings: WsSettings,
    pub snapshots: Snapshots,
}

pub struct WsSession {
    id: u64,
    common: Arc<SessionCommon>,
    conn: Arc<ConnShared>,
    /// Sorted, like the outbound queue's: small for the usual one or two.
    channels: LiteMap<ChannelKey, ChannelState>,
    generation: u64,
    bad_frames: u32,
    /// Whether the frame being handled was answered with an error; a frame
    /// counts once towards the limit, however many errors it earned.
    frame_was_bad: bool,
    _slot: IpSlot,
}

impl WsSession {
    pub fn new(common: Arc<SessionCommon>, conn: Arc<ConnShared>, slot: IpSlot) -> WsSession {
        WsSession {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            common,
            conn,
            channels: LiteMap::with_capacity(1),
            generation: 0,
            bad_frames: 0,
            frame_was_bad: false,
            _slot: slot,
        }
    }

    /// Every frame goes out through here, so that the bytes are counted.
    fn emit(&self, ctx: &mut ws::WebsocketContext<Self>, text: String) {
        self.conn.handed.fetch_add(frame_len(text.len()), Ordering::AcqRel);
        ctx.text(text);
    }

    /// An `error` frame answering the request `id`, about `channel` when
    /// one is named.
    fn error(
        &mut self,
        ctx: &mut ws::WebsocketContext<Self>,
        id: Option<&Value>,
        channel: Option<&str>,
        code: &'static str,
        message: String,
    ) {
        METRICS.ws_bad_frames.with_label_values(&[code]).inc();
        let mut frame = json!({"type": "error", "code": code, "message": message});
        if let Some(channel) = channel {
            frame["channel"] = channel.into();
        }
        self.emit(ctx, answer(frame, id));
        self.frame_was_bad = true;
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        // Nothing may follow the close frame.
        self.conn.close_queue();
        self.conn.handed.fetch_add(frame_len(2 + reason.len()), Ordering::AcqRel);
        ctx.close(Some(ws::CloseReason { code: ws::CloseCode::from(code), description: Some(reason.to_owned()) }));
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        if text.len() > self.common.settings.max_frame_bytes {
            let message =
                format!("{} bytes; at most {} are accepted", text.len(), self.common.settings.max_frame_bytes);
            return self.error(ctx, None, None, "frame_too_large", message);
        }
        let request = match Request::parse(text) {
            Ok(request) => request,
            Err((id, code, message)) => return self.error(ctx, id.as_ref(), None, code, message),
        };
        let id = request.id.as_ref();
        match request.op.as_str() {
            "ping" => self.emit(ctx, answer(json!({"type": "pong"}), id)),
            "list_subscriptions" => {
                let mut names: Vec<String> = self.channels.keys().map(|key| key.to_string()).collect();
                names.sort_unstable();
                self.emit(ctx, answer(json!({"type": "subscriptions", "channels": names}), id));
            }
            "subscribe" | "unsubscribe" => {
                let Some(names) = request.channels.as_ref().filter(|c| !c.is_empty()) else {
                    return self.error(ctx, id, None, "bad_request", "`channels`: expected a non-empty list".into());
                };
                if names.len() > self.common.settings.max_channels {
                    let message = format!(
                        "{} channels in one request; at most {}",
                        names.len(),
                        self.common.settings.max_channels
                    );
                    return self.error(ctx, id, None, "too_many_channels", message);
                }
                let mut keys = Vec::with_capacity(names.len());
                for name in names {
                    match name.as_str().and_then(parse_channel) {
                        Some(key) => keys.push(key),
                        None => {
                            let message =
                                format!("{name}: expected \"token:<SYMBOL>\", \"pair:<A>-<B>\" or \"candles:<SYMBOL or A-B>:<1m|5m|15m|1h|4h|1d>\" (A-Z 0-9 . _ -)");
                            self.error(ctx, id, name.as_str(), "bad_channel", message);
                        }
                    }
                }
                if let Some(stray) = request.since.keys().find(|key| !keys.contains(key)) {
                    let message = format!("`since`: {stray} is not among the channels subscribed to");
                    return self.error(ctx, id, None, "bad_since", message);
                }
                if request.op == "subscribe" {
                    self.subscribe(keys, request.id, request.known_only, request.since, ctx);
                } else {
                    self.unsubscribe(keys, id, ctx);
                }
            }
            other => {
                let other: String = other.chars().take(32).collect();
                let message = format!("{other:?}: expected subscribe, unsubscribe, list_subscriptions or ping");
                self.error(ctx, id, None, "unknown_op", message);
            }
        }
    }

    fn subscribe(
        &mut self,
        keys: Vec<ChannelKey>,
        id: Option<Value>,
        known_only: bool,
        mut since: HashMap<ChannelKey, Since>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let mut added = Vec::new();
        for key in keys {
            // A repeated subscription changes nothing: its channel's frames
            // go on, numbered on. It is answered without a snapshot.
            if self.channels.contains_key(&key) {
                let frame = json!({"type": "subscribed", "channel": key.to_string(), "already": true});
                self.emit(ctx, answer(frame, id.as_ref()));
                continue;
            }
            if self.channels.len() >= self.common.settings.max_channels {
                let message = format!("{key}: at most {} channels per connection", self.common.settings.max_channels);
                self.error(ctx, id.as_ref(), Some(&key.to_string()), "too_many_channels", message);
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            let waiting = ChannelState::Waiting { generation, id: id.clone(), known_only, since: since.remove(&key) };
            self.channels.insert(key.clone(), waiting);
            self.conn.open(&key);
            added.push((key, generation));
        }
        if added.is_empty() {
            return;
        }
        // The history is read once the live updates reach this session:
        // between the two, nothing is missed.
        let subscribe = Subscribe { id: self.id, channels: added.iter().map(|(key, _)| key.clone()).collect() };
        let subscribed = self.common.registry.send(subscribe);
        ctx.spawn(subscribed.into_actor(self).map(move |confirmed, act, ctx| {
            let confirmed = confirmed.unwrap_or(false).then(Instant::now);
            for (key, generation) in added {
                act.read_snapshot(key, generation, confirmed, ctx);
            }
        }));
    }

    /// Reads `key`'s snapshot and history (what the client missed, when it
    /// resumes), then answers the subscription.
    /// `confirmed`: when the registry said the live updates reach this
    /// session (`None`: they do not).
    fn read_snapshot(
        &mut self,
        key: ChannelKey,
        generation: u64,
        confirmed: Option<Instant>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let since = match self.channels.get(&key) {
            Some(ChannelState::Waiting { generation: g, since, .. }) if *g == generation => since.clone(),
            _ => return, // unsubscribed meanwhile
        };
        let Some(confirmed_at) = confirmed else {
            let error = SnapshotError::unavailable(format!(
                "no live updates for {key}, not subscribed: Redis did not confirm the subscription"
            ));
            return self.on_snapshot(key, generation, Err(error.clone()), Err(error), ctx);
        };
        let agg = match &key {
            ChannelKey::Live(agg) => agg,
            // A candle channel's buckets come from the registry, at its next
            // interval: nothing to read here, but whether the token or pair
            // is known when only known ones are wanted.
            ChannelKey::Candles(agg, _) => {
                if !matches!(self.channels.get(&key), Some(ChannelState::Waiting { known_only: true, .. })) {
                    return self.open_candles(key, generation, ctx);
                }
                let read = self.common.snapshots.read(&self.common.live, agg);
                ctx.spawn(read.into_actor(self).map(move |snapshot, act, ctx| match snapshot {
                    Ok(_) => act.open_candles(key, generation, ctx),
                    Err(e) => {
                        let id = match act.channels.get_mut(&key) {
                            Some(ChannelState::Waiting { generation: g, id, .. }) if *g == generation => id.take(),
                            _ => return, // unsubscribed meanwhile
                        };
                        act.refuse(key, e, id, ctx);
                    }
                }));
                return;
            }
        };
        let snapshot = self.common.snapshots.read(&self.common.live, agg);
        let history = self.common.snapshots.history(self.common.live.redis(), agg, since, confirmed_at);
        let read = futures::future::join(snapshot, history);
        ctx.spawn(
            read.into_actor(self)
                .map(move |(snapshot, history), act, ctx| act.on_snapshot(key, generation, snapshot, history, ctx)),
        );
    }

    fn on_snapshot(
        &mut self,
        key: ChannelKey,
        generation: u64,
        snapshot: Result<Arc<Value>, SnapshotError>,
        history: Result<Arc<Replay>, SnapshotError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (id, known_only, since) = match self.channels.get_mut(&key) {
            Some(ChannelState::Waiting { generation: g, id, known_only, since }) if *g == generation => {
                (id.take(), *known_only, since.take())
            }
            _ => return, // unsubscribed meanwhile
        };
        // A channel of no swap yet is subscribed as DESIGN.md's clients
        // expect (they may subscribe before a token's first swap), and
        // marked so that a misspelt name shows.
        let (snapshot, seen) = match snapshot {
            Err(e) if e.is_unknown() && !known_only => (Ok(Arc::new(crate::read::unseen_stats(key.agg()))), false),
            other => (other, true),
        };
        let name: Arc<str> = key.to_string().into();
        let (snapshot, replay) = match (snapshot, history) {
            (Ok(snapshot), Ok(replay)) => (snapshot, replay),
            (Err(e), _) | (_, Err(e)) => return self.refuse(key, e, id, ctx),
        };
        let stats: Arc<str> = snapshot.to_string().into();
        let mut frame = json!({
            "type": "subscribed", "channel": &*name, "seq": 0, "epoch": &replay.epoch,
            "offset": replay.head.to_string(), "snapshot": &*snapshot,
        });
        if !seen {
            frame["seen"] = false.into();
        }
        // The frames the client missed, when it resumes and the history
        // still has them: they follow from seq 1, then the live ones.
        let mut replayed = Vec::new();
        if let Some(since) = since {
            match &replay.missed {
                Ok(entries) => {
                    let (frames, swaps) = replay_frames(entries);
                    replayed = frames;
                    frame["recovered"] = true.into();
                    frame["missed"] = swaps.into();
                    frame["offset"] = since.offset.to_string().into();
                    METRICS.ws_resumes.with_label_values(&["recovered"]).inc();
                }
                Err(lost) => {
                    frame["recovered"] = false.into();
                    frame["reason"] = lost.reason().into();
                    METRICS.ws_resumes.with_label_values(&[lost.reason()]).inc();
                }
            }
        }
        self.emit(ctx, answer(frame, id.as_ref()));
        METRICS.ws_frames_sent.with_label_values(&["subscribed"]).inc();
        self.channels.insert(key.clone(), ChannelState::Live);
        // The writer takes the channel's frames only after this frame,
        // which this poll of the body yields first.
        let pushed = self.conn.start(&key, stats, replay.head, replayed);
        METRICS.ws_conflations.inc_by(pushed.conflations);
        METRICS.ws_conflated_frames.inc_by(pushed.conflated_swaps);
    }

    /// Refuses the subscription to `key` with an `error` frame answering
    /// the request `id`, and forgets it.
    fn refuse(&mut self, key: ChannelKey, e: SnapshotError, id: Option<Value>, ctx: &mut ws::WebsocketContext<Self>) {
        self.channels.remove(&key);
        self.conn.remove(&key);
        self.common.registry.do_send(Unsubscribe { id: self.id, channels: vec![key.clone()] });
        METRICS.ws_bad_frames.with_label_values(&[e.code]).inc();
        let frame = json!({"type": "error", "code": e.code, "channel": key.to_string(), "message": &*e.message});
        self.emit(ctx, answer(frame, id.as_ref()));
    }

    /// Answers a candle channel's subscription: its buckets come from the
    /// registry at its next interval, all of them to a new subscriber, so
    /// there is no snapshot here (nor a history: its frames are state).
    fn open_candles(&mut self, key: ChannelKey, generation: u64, ctx: &mut ws::WebsocketContext<Self>) {
        let id = match self.channels.get_mut(&key) {
            Some(ChannelState::Waiting { generation: g, id, .. }) if *g == generation => id.take(),
            _ => return, // unsubscribed meanwhile
        };
        self.emit(ctx, answer(json!({"type": "subscribed", "channel": key.to_string(), "seq": 0}), id.as_ref()));
        METRICS.ws_frames_sent.with_label_values(&["subscribed"]).inc();
        self.channels.insert(key.clone(), ChannelState::Live);
        self.conn.start(&key, "null".into(), Offset::ZERO, Vec::new());
    }

    fn unsubscribe(&mut self, keys: Vec<ChannelKey>, id: Option<&Value>, ctx: &mut ws::WebsocketContext<Self>) {
        let mut removed = Vec::new();
        for key in keys {
            if self.channels.remove(&key).is_some() {
                self.conn.remove(&key);
                removed.push(key.clone());
            }
            self.emit(ctx, answer(json!({"type": "unsubscribed", "channel": key.to_string()}), id));
        }
        if !removed.is_empty() {
            self.common.registry.do_send(Unsubscribe { id: self.id, channels: removed });
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.common.settings.queue_messages);
        METRICS.ws_sessions.inc();
        self.common.registry.do_send(Connect {
            id: self.id,
            outbound: ctx.address().recipient(),
            conn: self.conn.clone(),
        });
        // Only the pings: whether the peer answered is the registry's
        // decision (from `last_inbound_ms`), as this timer freezes with us.
        ctx.run_interval(self.common.settings.ping_interval, |act, ctx| {
            act.conn.handed.fetch_add(frame_len(0), Ordering::AcqRel);
            ctx.ping(b"");
        });
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        METRICS.ws_sessions.dec();
        self.common.registry.do_send(Disconnect { id: self.id });
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        self.conn.forget_socket();
    }
}

impl Handler<Outbound> for WsSession {
    type Result = ();

    fn handle(&mut self, message: Outbound, ctx: &mut Self::Context) {
        match message {
            Outbound::Close { code, reason } => self.close(ctx, code, reason),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, message: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.conn.last_inbound_ms.store(now_ms(), Ordering::Release);
        self.frame_was_bad = false;
        self.on_message(message, ctx);
        if std::mem::take(&mut self.frame_was_bad) {
            self.bad_frames += 1;
            if self.bad_frames >= self.common.settings.max_bad_frames {
                self.close(ctx, 1008, "too many bad frames");
            }
        }
    }
}

impl WsSession {
    fn on_message(
        &mut self,
        message: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<WsSession>,
    ) {
        match message {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Ping(payload)) => {
                self.conn.handed.fetch_add(frame_len(payload.len()), Ordering::AcqRel);
                ctx.pong(&payload);
            }
            Ok(ws::Message::Pong(_)) => {}
            Ok(ws::Message::Binary(_)) => {
                self.error(ctx, None, None, "bad_frame", "binary frames are not accepted".into())
            }
            Ok(ws::Message::Continuation(_)) => {
                self.error(ctx, None, None, "bad_frame", "fragmented messages are not accepted".into())
            }
            Ok(ws::Message::Close(reason)) => {
                let code = reason.as_ref().map_or(1000, |r| u16::from(r.code));
                self.close(ctx, if code == 1005 { 1000 } else { code }, "");
            }
            Ok(ws::Message::Nop) => {}
            Err(ws::ProtocolError::Overflow) => {
                METRICS.ws_bad_frames.with_label_values(&["frame_too_large"]).inc();
                self.close(ctx, 1009, "message too big");
            }
            Err(e) => {
                METRICS.ws_bad_frames.with_label_values(&["protocol"]).inc();
                self.close(ctx, 1002, &format!("protocol error: {e}"));
            }
        }
    }
}
