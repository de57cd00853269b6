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
use std::time::Duration;

use actix::prelude::*;
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::json;

use super::connection::{now_ms, ConnShared};
use super::limits::IpSlot;
use super::protocol::{frame_len, parse_channel, Outbound};
use super::registry::{Connect, Disconnect, SessionRegistry, Subscribe, Unsubscribe};
use crate::config::WsSettings;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::read::stats_from_redis;
use crate::storage::redis::RedisStore;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A subscription; its frames wait in the connection's queue until the
/// snapshot went out as seq 0.
enum ChannelState {
    Waiting { generation: u64 },
    Live,
}

/// A client request.
#[derive(Deserialize)]
struct Request {
    op: String,
    #[serde(default)]
    channels: Option<Vec<serde_json::Value>>,
}

/// What every session of a process shares (one allocation, not one per
/// connection).
pub struct SessionCommon {
    pub registry: Addr<SessionRegistry>,
    pub redis: RedisStore,
    pub settings: WsSettings,
    pub snapshots: Snapshots,
}

/// A channel's snapshot as it is read, shared by every session that
/// subscribes to the channel while the read is in flight: a reconnect storm
/// subscribes thousands of clients to the same few channels at once, and a
/// read each (dozens of Redis round trips for a day of candles) took longer
/// than the snapshot's deadline for most of them.
#[derive(Clone, Default)]
pub struct Snapshots {
    in_flight: Arc<std::sync::Mutex<HashMap<AggKey, SharedSnapshot>>>,
}

type SharedSnapshot =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<Arc<serde_json::Value>, Arc<str>>>>;

impl Snapshots {
    /// The read in flight for `key`, or a new one.
    pub fn read(&self, redis: &RedisStore, key: &AggKey) -> SharedSnapshot {
        use futures::FutureExt as _;
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(read) = in_flight.get(key).filter(|read| read.peek().is_none()) {
            return read.clone();
        }
        let (redis, owned) = (redis.clone(), key.clone());
        let read = async move {
            match tokio::time::timeout(SNAPSHOT_DEADLINE, stats_from_redis(&redis, &owned)).await {
                Ok(Ok(value)) => Ok(Arc::new(value)),
                Ok(Err(e)) => Err(Arc::from(format!("{e:#}"))),
                Err(_) => Err(Arc::from(format!("no answer within {SNAPSHOT_DEADLINE:?}"))),
            }
        }
        .boxed()
        .shared();
        in_flight.insert(key.clone(), read.clone());
        read
    }
}

/// Longest wait for a channel's snapshot before the subscription is refused.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(5);

pub struct WsSession {
    id: u64,
    common: Arc<SessionCommon>,
    conn: Arc<ConnShared>,
    /// Looked up for every handoff: hashed with foldhash, not SipHash.
    channels: foldhash::HashMap<AggKey, ChannelState>,
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
            channels: foldhash::HashMap::default(),
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

    fn error(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: &'static str, message: String) {
        METRICS.ws_bad_frames.with_label_values(&[code]).inc();
        let text = json!({"type": "error", "code": code, "message": message}).to_string();
        self.emit(ctx, text);
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
            return self.error(ctx, "frame_too_large", message);
        }
        let request: Request = match serde_json::from_str(text) {
            Ok(request) => request,
            Err(e) => return self.error(ctx, "bad_json", format!("expected a JSON request object: {e}")),
        };
        match request.op.as_str() {
            "ping" => self.emit(ctx, r#"{"type":"pong"}"#.to_owned()),
            "subscribe" | "unsubscribe" => {
                let Some(names) = request.channels.filter(|c| !c.is_empty()) else {
                    return self.error(ctx, "bad_request", "`channels`: expected a non-empty list".into());
                };
                if names.len() > self.common.settings.max_channels {
                    let message = format!(
                        "{} channels in one request; at most {}",
                        names.len(),
                        self.common.settings.max_channels
                    );
                    return self.error(ctx, "too_many_channels", message);
                }
                let mut keys = Vec::with_capacity(names.len());
                for name in names {
                    match name.as_str().and_then(parse_channel) {
                        Some(key) => keys.push(key),
                        None => {
                            let message =
                                format!("{name}: expected \"token:<SYMBOL>\" or \"pair:<A>-<B>\" (A-Z 0-9 . _ -)");
                            self.error(ctx, "bad_channel", message);
                        }
                    }
                }
                if request.op == "subscribe" {
                    self.subscribe(keys, ctx);
                } else {
                    self.unsubscribe(keys, ctx);
                }
            }
            other => {
                let other: String = other.chars().take(32).collect();
                self.error(ctx, "unknown_op", format!("{other:?}: expected subscribe, unsubscribe or ping"));
            }
        }
    }

    fn subscribe(&mut self, keys: Vec<AggKey>, ctx: &mut ws::WebsocketContext<Self>) {
        let mut added = Vec::new();
        for key in keys {
            // A repeated subscription changes nothing and is not answered.
            if self.channels.contains_key(&key) {
                continue;
            }
            if self.channels.len() >= self.common.settings.max_channels {
                let message = format!("{key}: at most {} channels per connection", self.common.settings.max_channels);
                self.error(ctx, "too_many_channels", message);
                continue;
            }
            self.generation += 1;
            let generation = self.generation;
            self.channels.insert(key.clone(), ChannelState::Waiting { generation });
            self.conn.open(&key);
            added.push(key.clone());
            let read = self.common.snapshots.read(&self.common.redis, &key);
            let fetch = async move { read.await.map(|value| (*value).clone()).map_err(|e| anyhow::anyhow!("{e}")) };
            let key = added.last().cloned().expect("just pushed");
            ctx.spawn(
                fetch.into_actor(self).map(move |result, act, ctx| act.on_snapshot(key, generation, result, ctx)),
            );
        }
        if !added.is_empty() {
            self.common.registry.do_send(Subscribe { id: self.id, channels: added });
        }
    }

    fn on_snapshot(
        &mut self,
        key: AggKey,
        generation: u64,
        result: anyhow::Result<serde_json::Value>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let current =
            matches!(self.channels.get(&key), Some(ChannelState::Waiting { generation: g, .. }) if *g == generation);
        if !current {
            return; // unsubscribed meanwhile
        }
        let name: Arc<str> = key.to_string().into();
        match result {
            Ok(snapshot) => {
                let stats: Arc<str> = snapshot.to_string().into();
                let text = json!({"type": "subscribed", "channel": &*name, "seq": 0, "snapshot": snapshot}).to_string();
                self.emit(ctx, text);
                METRICS.ws_frames_sent.with_label_values(&["subscribed"]).inc();
                self.channels.insert(key.clone(), ChannelState::Live);
                // The writer takes the channel's frames only after this
                // frame, which this poll of the body yields first.
                self.conn.start(&key, stats);
            }
            Err(e) => {
                self.channels.remove(&key);
                self.conn.remove(&key);
                self.common.registry.do_send(Unsubscribe { id: self.id, channels: vec![key.clone()] });
                let text = json!({"type": "error", "code": "unavailable", "channel": &*name,
                    "message": format!("no snapshot for {name}, not subscribed: {e:#}")})
                .to_string();
                self.emit(ctx, text);
            }
        }
    }

    fn unsubscribe(&mut self, keys: Vec<AggKey>, ctx: &mut ws::WebsocketContext<Self>) {
        let mut removed = Vec::new();
        for key in keys {
            if self.channels.remove(&key).is_some() {
                self.conn.remove(&key);
                removed.push(key.clone());
            }
            self.emit(ctx, json!({"type": "unsubscribed", "channel": key.to_string()}).to_string());
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
            Ok(ws::Message::Binary(_)) => self.error(ctx, "bad_frame", "binary frames are not accepted".into()),
            Ok(ws::Message::Continuation(_)) => {
                self.error(ctx, "bad_frame", "fragmented messages are not accepted".into())
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
