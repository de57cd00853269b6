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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::connection::{now_ms, ConnShared};
use super::limits::IpSlot;
use super::outbound::Replayed;
use super::protocol::{frame_len, parse_channel, swap_frames, ChannelKey, Outbound};
use super::registry::{Connect, Disconnect, SessionRegistry, Subscribe, Unsubscribe};
use crate::config::WsSettings;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::read::{Live, ReadError};
use crate::storage::redis::{HistoryEntry, Offset, RedisStore, Replay};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A subscription; its frames wait in the connection's queue until the
/// snapshot went out as seq 0, answering the request `id` that asked.
enum ChannelState {
    Waiting { generation: u64, id: Option<Value>, known_only: bool, since: Option<Since> },
    Live,
}

/// Where a resuming client was in a channel: the history's epoch and its
/// offset there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Since {
    epoch: String,
    offset: Offset,
}

/// The longest string a client's request `id` may be.
const MAX_ID_CHARS: usize = 64;

/// A client request: `{"op": ..., "id": ..., "channels": [...]}`.
struct Request {
    op: String,
    /// Echoed on every answer to the request: a string of at most
    /// [`MAX_ID_CHARS`] or an integer.
    id: Option<Value>,
    channels: Option<Vec<Value>>,
    /// Refuse tokens and pairs without a swap seen (REST answers 404)
    /// instead of subscribing with an all-zero snapshot.
    known_only: bool,
    /// Per channel, where the client was: `{"token:ETH": {"epoch": ..,
    /// "offset": ..}}`.
    since: HashMap<ChannelKey, Since>,
}

impl Request {
    /// The request in `text`; the error (code, message) carries the `id`
    /// when that much could be read.
    fn parse(text: &str) -> Result<Request, (Option<Value>, &'static str, String)> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| (None, "bad_json", format!("expected a JSON request object: {e}")))?;
        let Value::Object(mut fields) = value else {
            return Err((None, "bad_json", "expected a JSON request object".into()));
        };
        let id = match fields.remove("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) if id.chars().count() <= MAX_ID_CHARS => Some(Value::String(id)),
            Some(Value::Number(id)) if id.is_i64() || id.is_u64() => Some(Value::Number(id)),
            Some(_) => {
                let message = format!("`id`: expected a string of at most {MAX_ID_CHARS} characters or an integer");
                return Err((None, "bad_request", message));
            }
        };
        let op = match fields.remove("op") {
            Some(Value::String(op)) => op,
            _ => return Err((id, "bad_request", "`op`: expected a string".into())),
        };
        let channels = match fields.remove("channels") {
            None | Some(Value::Null) => None,
            Some(Value::Array(channels)) => Some(channels),
            Some(_) => return Err((id, "bad_request", "`channels`: expected a list".into())),
        };
        let known_only = match fields.remove("known_only") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(known_only)) => known_only,
            Some(_) => return Err((id, "bad_request", "`known_only`: expected true or false".into())),
        };
        let since = match fields.remove("since") {
            None | Some(Value::Null) => HashMap::new(),
            Some(since) => Self::since(since).map_err(|message| (id.clone(), "bad_since", message))?,
        };
        Ok(Request { op, id, channels, known_only, since })
    }

    fn since(value: Value) -> Result<HashMap<ChannelKey, Since>, String> {
        const SHAPE: &str = r#"expected {"<channel>": {"epoch": "<epoch>", "offset": "<offset>"}, ...}"#;
        let Value::Object(channels) = value else { return Err(format!("`since`: {SHAPE}")) };
        let mut since = HashMap::with_capacity(channels.len());
        for (name, position) in channels {
            let shown: String = name.chars().take(64).collect();
            let key = match parse_channel(&name) {
                Some(key @ ChannelKey::Live(_)) => key,
                Some(ChannelKey::Candles(..)) => {
                    return Err(format!("`since`: {shown} has no history: its frames are state, subscribe again"))
                }
                None => return Err(format!("`since`: {shown:?} is not a channel")),
            };
            let field = |field: &str| position.get(field).and_then(Value::as_str).map(str::to_owned);
            let (Some(epoch), Some(offset)) = (field("epoch"), field("offset")) else {
                return Err(format!("`since.{shown}`: {SHAPE}"));
            };
            let offset = offset
                .parse()
                .map_err(|()| format!("`since.{shown}.offset`: expected an offset from a frame of this channel"))?;
            since.insert(key, Since { epoch, offset });
        }
        Ok(since)
    }
}

/// `frame` with the request's `id` when it had one.
fn answer(mut frame: Value, id: Option<&Value>) -> String {
    if let (Some(id), Value::Object(fields)) = (id, &mut frame) {
        fields.insert("id".into(), id.clone());
    }
    frame.to_string()
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
    code: &'static str,
    message: Arc<str>,
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
            let error = |code, message: String| SnapshotError { code, message: message.into() };
            match tokio::time::timeout(SNAPSHOT_DEADLINE, live.shared_stats(&owned)).await {
                Ok(Ok(value)) => Ok(Arc::new(value)),
                Ok(Err(ReadError::NotFound(e))) => Err(error(UNKNOWN_CHANNEL, format!("{e}, not subscribed"))),
                Ok(Err(e)) => Err(error("unavailable", format!("no snapshot for {owned}, not subscribed: {e}"))),
                Err(_) => Err(error(
                    "unavailable",
                    format!("no snapshot for {owned}, not subscribed: no answer within {SNAPSHOT_DEADLINE:?}"),
                )),
            }
        }
        .boxed()
        .shared();
        in_flight.insert(key.clone(), read.clone());
        read
    }

    /// `key`'s history after `since` from a read in flight that was begun
    /// at or after `confirmed`, the moment this session's live updates
    /// began (an earlier read would miss what came in between), or a new
    /// one.
    fn history(&self, redis: &RedisStore, key: &AggKey, since: Option<Since>, confirmed: Instant) -> SharedHistory {
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

/// The error code of a channel with no swap seen (REST answers 404).
const UNKNOWN_CHANNEL: &str = "unknown_channel";

/// Longest wait for a channel's snapshot before the subscription is refused.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(5);

/// Longest wait for a channel's history (queued behind other reads
/// included) before the subscription is refused.
const HISTORY_DEADLINE: Duration = Duration::from_secs(10);

pub struct WsSession {
    id: u64,
    common: Arc<SessionCommon>,
    conn: Arc<ConnShared>,
    /// Looked up for every handoff: hashed with foldhash, not SipHash.
    channels: foldhash::HashMap<ChannelKey, ChannelState>,
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
            let error = SnapshotError {
                code: "unavailable",
                message: format!("no live updates for {key}, not subscribed: Redis did not confirm the subscription")
                    .into(),
            };
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
        let read = self.common.snapshots.history(self.common.live.redis(), agg, since, confirmed_at);
        let history = async move {
            match tokio::time::timeout(HISTORY_DEADLINE, read).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {HISTORY_DEADLINE:?}")),
            }
        };
        let read = futures::future::join(snapshot, history);
        ctx.spawn(read.into_actor(self).map(move |(snapshot, history), act, ctx| {
            let history = history.map_err(|e| SnapshotError {
                code: "unavailable",
                message: format!("no history for {key}, not subscribed: {e}").into(),
            });
            act.on_snapshot(key, generation, snapshot, history, ctx)
        }));
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
            Err(e) if e.code == UNKNOWN_CHANNEL && !known_only => {
                (Ok(Arc::new(crate::read::unseen_stats(key.agg()))), false)
            }
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

/// A history's entries as the frames they make, and how many swaps.
fn replay_frames(entries: &[HistoryEntry]) -> (Vec<Replayed>, u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_read_with_its_id_and_a_bad_one_says_which_field() {
        let request = Request::parse(r#"{"op":"subscribe","id":"r-1","channels":["token:ETH"],"known_only":true}"#)
            .unwrap_or_else(|(_, code, message)| panic!("{code}: {message}"));
        assert_eq!(
            (request.op.as_str(), request.id, request.channels.map(|c| c.len()), request.known_only),
            ("subscribe", Some(json!("r-1")), Some(1), true)
        );
        assert_eq!(Request::parse(r#"{"op":"ping","id":42}"#).map(|r| r.id).ok(), Some(Some(json!(42))));

        let refused = |text: &str| Request::parse(text).err();
        let (id, code, message) = refused(r#"{"op":"ping","id":1.5}"#).expect("refused");
        assert_eq!((id, code), (None, "bad_request"));
        assert!(message.starts_with("`id`"), "{message}");
        let long = format!(r#"{{"op":"ping","id":"{}"}}"#, "x".repeat(MAX_ID_CHARS + 1));
        assert_eq!(refused(&long).map(|(_, code, _)| code), Some("bad_request"));
        let (id, code, message) = refused(r#"{"id":7,"channels":[]}"#).expect("refused");
        assert_eq!((id, code), (Some(json!(7)), "bad_request"), "the id is echoed once it was read");
        assert!(message.starts_with("`op`"), "{message}");
        assert_eq!(refused(r#"[1,2]"#).map(|(_, code, _)| code), Some("bad_json"));
        assert_eq!(
            refused(r#"{"op":"subscribe","channels":"token:ETH"}"#).map(|(_, code, _)| code),
            Some("bad_request")
        );
        assert_eq!(
            refused(r#"{"op":"subscribe","channels":[],"known_only":1}"#).map(|(_, code, _)| code),
            Some("bad_request")
        );
    }

    #[test]
    fn an_answer_carries_the_id_only_when_the_request_had_one() {
        let read = |text: String| serde_json::from_str::<Value>(&text).expect("JSON");
        assert_eq!(read(answer(json!({"type": "pong"}), None)), json!({"type": "pong"}));
        assert_eq!(read(answer(json!({"type": "pong"}), Some(&json!("a")))), json!({"type": "pong", "id": "a"}));
    }
}
