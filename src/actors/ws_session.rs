//! One WebSocket connection (`GET /v1/ws`): parses the client's requests,
//! numbers the frames of each channel, answers subscriptions with a
//! snapshot, pings, and applies the per-connection limits.
//!
//! Channel frames do not pass through this actor: the registry pushes them
//! into the connection's outbound queue ([`OutQueue`], in [`ConnShared`]),
//! which the connection's writer (its response body, `http::ws`) drains
//! as fast as the socket takes them; this actor opens a channel there,
//! starts it once its `subscribed` frame went out, and removes it. Its
//! mailbox carries only the registry's close requests ([`Outbound`]). A
//! session runs only while actix polls its response body, so it is frozen
//! while its client does not read: nothing here decides that the client is
//! slow. The registry does, from [`ConnShared`]: the bytes queued, handed to
//! the HTTP layer and pulled by it, and it closes the socket itself.

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::{Arbiter, ArbiterHandle};
use actix_web::web::BytesMut;
use actix_web_actors::ws;
use chrono::Utc;
use futures::task::AtomicWaker;
use prometheus::IntCounter;
use serde::Deserialize;
use serde_json::json;

use super::outbound::{OutQueue, Pushed, Taken};
use super::session_registry::{Connect, Disconnect, SessionRegistry, Subscribe, Unsubscribe};
use crate::config::WsSettings;
use crate::domain::aggregate::Interval;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::storage::redis::RedisStore;

/// Close codes beyond RFC 6455's.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
pub const CLOSE_PING_TIMEOUT: u16 = 4000;

static CLOCK: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds on a monotonic clock shared by sessions and the registry.
pub fn now_ms() -> u64 {
    CLOCK.elapsed().as_millis() as u64
}

/// What the session, the registry and the body stream share about one
/// connection.
pub struct ConnShared {
    /// The connection's TCP socket, so the registry can close it while the
    /// session is frozen (see `http::ws`).
    socket: Option<ConnSocket>,
    /// Channel frames waiting for the writer; the registry pushes, the
    /// writer takes, the session opens, starts and removes channels.
    queue: Mutex<OutQueue>,
    /// The queue's bytes (estimated), readable without its lock.
    queued: AtomicI64,
    /// Wakes the writer when frames arrive in an empty queue.
    writer: AtomicWaker,
    /// Bytes handed to the HTTP layer's body stream: the session's own
    /// frames as it writes them, the queue's as the writer takes them.
    pub handed: AtomicI64,
    /// Bytes the HTTP layer took from the session's body stream.
    pub pulled: AtomicI64,
    /// When the client last sent anything (a frame, a pong), on [`now_ms`].
    pub last_inbound_ms: AtomicU64,
    /// The id of the upgrade request, for log lines about the connection.
    pub request_id: String,
}

/// A connection's socket as the registry reaches it: the descriptor actix
/// owns (no duplicate, so a session costs one descriptor, not two) and the
/// worker whose thread owns the connection.
pub struct ConnSocket {
    /// The descriptor, or -1 once the session is gone. Only the worker's
    /// thread writes or reads it: the session is dropped on that thread
    /// together with the connection, so seen from there a descriptor that
    /// is not -1 is still this connection's, never a reused number.
    fd: AtomicI32,
    worker: ArbiterHandle,
}

impl ConnSocket {
    /// `fd` of a connection accepted by the worker this is called on.
    pub fn on_current_worker(fd: RawFd) -> ConnSocket {
        ConnSocket { fd: AtomicI32::new(fd), worker: Arbiter::current() }
    }
}

impl ConnShared {
    /// `queue_bytes`: the outbound queue's cap, past which it conflates.
    pub fn new(socket: Option<ConnSocket>, request_id: String, queue_bytes: usize) -> ConnShared {
        ConnShared {
            socket,
            request_id,
            queue: Mutex::new(OutQueue::new(queue_bytes)),
            queued: AtomicI64::new(0),
            writer: AtomicWaker::new(),
            handed: AtomicI64::new(0),
            pulled: AtomicI64::new(0),
            last_inbound_ms: AtomicU64::new(now_ms()),
        }
    }

    /// Bytes waiting for this client: queued, or handed to the HTTP layer
    /// and not yet taken by it.
    pub fn outstanding(&self) -> i64 {
        self.queued.load(Ordering::Acquire) + self.handed.load(Ordering::Acquire) - self.pulled.load(Ordering::Acquire)
    }

    /// Bytes handed to the HTTP layer and not yet taken by it: this
    /// connection's alone (queued frames are shared, see [`queued_frame_bytes`]).
    pub fn unshared(&self) -> i64 {
        self.handed.load(Ordering::Acquire) - self.pulled.load(Ordering::Acquire)
    }

    fn queue(&self) -> MutexGuard<'_, OutQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `change` on the queue and keeps [`Self::queued`] equal to its bytes.
    fn with_queue<T>(&self, change: impl FnOnce(&mut OutQueue) -> T) -> T {
        let mut queue = self.queue();
        let result = change(&mut queue);
        self.queued.store(queue.bytes(), Ordering::Release);
        result
    }

    /// The registry hands on new frames of one channel (never waiting).
    pub fn push(&self, handoff: Arc<Handoff>) -> Pushed {
        let pushed = self.with_queue(|queue| queue.push(handoff));
        if pushed.queued {
            self.writer.wake();
        }
        pushed
    }

    /// Updates of `only` (or of every channel) were lost.
    pub fn gap(&self, only: Option<&AggKey>) {
        self.with_queue(|queue| queue.gap(only));
        self.writer.wake();
    }

    /// The session subscribed to `key`: its frames are taken and held.
    pub fn open(&self, key: &AggKey) {
        self.with_queue(|queue| queue.open(key.clone(), key.to_string().into()));
    }

    /// `key`'s subscribed frame (seq 0, with `snapshot`) is written: its
    /// frames follow.
    pub fn start(&self, key: &AggKey, snapshot: Arc<str>) {
        self.with_queue(|queue| queue.start(key, snapshot));
    }

    /// The session left `key`: what waits for it goes.
    pub fn remove(&self, key: &AggKey) {
        self.with_queue(|queue| queue.remove(key));
    }

    /// Drops what waits and takes nothing more (eviction, close).
    pub fn close_queue(&self) {
        self.with_queue(OutQueue::close);
    }

    /// For the writer: frames encoded into `out`, up to about `budget` bytes.
    pub fn take(&self, budget: usize, out: &mut BytesMut) -> Taken {
        let taken = self.with_queue(|queue| queue.take(budget, out));
        self.handed.fetch_add(taken.bytes as i64, Ordering::AcqRel);
        taken
    }

    /// For the writer, before it finds the queue empty.
    pub fn register_writer(&self, waker: &std::task::Waker) {
        self.writer.register(waker);
    }

    /// Resets the connection (`SO_LINGER` 0 makes the last close send RST
    /// and drop unsent data) and wakes the HTTP layer, whose next read or
    /// write fails, so it drops the connection and the session. Done on the
    /// connection's worker, soon; nothing if the session is gone by then.
    pub fn kill(self: &Arc<Self>) {
        let Some(socket) = &self.socket else { return };
        let conn = self.clone();
        socket.worker.spawn_fn(move || conn.reset_on_worker());
    }

    fn reset_on_worker(&self) {
        let Some(socket) = &self.socket else { return };
        let fd = socket.fd.load(Ordering::Acquire);
        if fd < 0 {
            return;
        }
        // SAFETY: we are on the thread that owns the connection, and the
        // session has not been dropped (`fd` is not -1), so neither has the
        // connection, which is dropped with it on this thread: `fd` is
        // still open and still this connection's socket, and stays so while
        // this function runs.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&fd);
        let _ = socket.set_linger(Some(Duration::ZERO));
        let _ = socket.shutdown(std::net::Shutdown::Both);
    }

    /// Called as the session is dropped, on the connection's worker.
    fn forget_socket(&self) {
        if let Some(socket) = &self.socket {
            socket.fd.store(-1, Ordering::Release);
        }
    }
}

/// The size of a server frame (unmasked) with `payload` bytes on the wire.
pub fn frame_len(payload: usize) -> i64 {
    let header = if payload < 126 {
        2
    } else if payload <= 65_535 {
        4
    } else {
        10
    };
    (payload + header) as i64
}

/// What a `swap` or `stats` frame carries, serialized once for every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Swap,
    Stats,
}

impl FrameKind {
    fn name(self) -> &'static str {
        match self {
            FrameKind::Swap => "swap",
            FrameKind::Stats => "stats",
        }
    }
}

#[derive(Debug)]
pub struct FrameBody {
    pub kind: FrameKind,
    pub json: Arc<str>,
}

/// Writes `{"type":..,"channel":..,"seq":..,"swap"|"stats":..}`: once per
/// frame and subscriber, so by plain copies rather than `format!`.
pub fn channel_frame(kind: FrameKind, channel: &str, seq: u64, json: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let seq = digits.format(seq);
    let name = kind.name();
    let mut text = String::with_capacity(channel_frame_len(kind, channel, json.len()) + seq.len());
    for part in
        [r#"{"type":""#, name, r#"","channel":""#, channel, r#"","seq":"#, seq, r#",""#, name, r#"":"#, json, "}"]
    {
        text.push_str(part);
    }
    text
}

/// Bytes (estimated) of the handoffs alive in this process: the channel
/// frames queued for any client, each counted once however many clients it
/// waits for.
static HANDOFF_BYTES: AtomicI64 = AtomicI64::new(0);

/// What the frames queued for WebSocket clients take, each frame once.
pub fn queued_frame_bytes() -> i64 {
    HANDOFF_BYTES.load(Ordering::Acquire)
}

/// New frames of one channel, in order, as the registry hands them to every
/// subscriber (one allocation shared by all).
#[derive(Debug)]
pub struct Handoff {
    pub key: AggKey,
    pub frames: Vec<FrameBody>,
    /// The bytes the frames take on the wire, with a one-digit `seq`.
    pub estimate: i64,
}

impl Handoff {
    pub fn new(key: AggKey, channel: &str, frames: Vec<FrameBody>) -> Handoff {
        let estimate = frames.iter().map(|f| frame_len(channel_frame_len(f.kind, channel, f.json.len()) + 1)).sum();
        HANDOFF_BYTES.fetch_add(estimate, Ordering::AcqRel);
        Handoff { key, frames, estimate }
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        HANDOFF_BYTES.fetch_sub(self.estimate, Ordering::AcqRel);
    }
}

/// A frame's length without its `seq` digits.
pub fn channel_frame_len(kind: FrameKind, channel: &str, json: usize) -> usize {
    // `{"type":"","channel":"","seq":,"":}` is 35 bytes.
    35 + 2 * kind.name().len() + channel.len() + json
}

/// Registry -> session (frames go through the connection's queue instead).
#[derive(Message)]
#[rtype(result = "()")]
pub enum Outbound {
    /// Close with this code and reason, then stop.
    Close { code: u16, reason: &'static str },
}

/// Connections per IP address and in all, counted when the upgrade is
/// accepted and released when the session's actor is dropped.
#[derive(Clone)]
pub struct IpLimiter {
    counts: Arc<Mutex<Counts>>,
    /// Most sessions this process can hold (see [`session_capacity`]).
    capacity: usize,
}

#[derive(Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

pub struct IpSlot {
    limiter: IpLimiter,
    ip: IpAddr,
}

/// Why an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    PerIp,
    AtCapacity,
}

impl IpLimiter {
    pub fn new(capacity: usize) -> IpLimiter {
        IpLimiter { counts: Arc::default(), capacity }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn acquire(&self, ip: IpAddr, max_per_ip: usize) -> Result<IpSlot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.capacity {
            return Err(Refused::AtCapacity);
        }
        let count = counts.per_ip.entry(ip).or_default();
        if *count >= max_per_ip {
            return Err(Refused::PerIp);
        }
        *count += 1;
        counts.total += 1;
        Ok(IpSlot { limiter: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(count) = counts.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Descriptors kept for everything but WebSocket sessions: HTTP clients,
/// Kafka, PostgreSQL and Redis connections, files.
const FD_RESERVE: u64 = 1024;

/// How many WebSocket sessions fit in the process' descriptor limit: each
/// takes one, and a reserve stays free so that health checks, REST and the
/// stores still get theirs. Raises the soft limit to the hard one first.
pub fn session_capacity() -> (usize, u64) {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .unwrap_or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft));
    (usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX), limit)
}

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
            match tokio::time::timeout(SNAPSHOT_DEADLINE, snapshot(&redis, &owned)).await {
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

/// The frame counters, resolved once rather than per frame.
struct FramesSent {
    swap: IntCounter,
    stats: IntCounter,
    skipped: IntCounter,
}

static FRAMES_SENT: LazyLock<FramesSent> = LazyLock::new(|| FramesSent {
    swap: METRICS.ws_frames_sent.with_label_values(&["swap"]),
    stats: METRICS.ws_frames_sent.with_label_values(&["stats"]),
    skipped: METRICS.ws_frames_sent.with_label_values(&["skipped"]),
});

/// Counts what a writer took from its queue.
pub fn count_sent(taken: &Taken) {
    FRAMES_SENT.swap.inc_by(taken.swaps);
    FRAMES_SENT.stats.inc_by(taken.stats);
    FRAMES_SENT.skipped.inc_by(taken.skipped);
}

/// `token:eth`, `TOKEN:ETH`, `pair:usdc-eth` -> the canonical key.
pub fn parse_channel(name: &str) -> Option<AggKey> {
    let (kind, rest) = name.split_once(':')?;
    AggKey::parse(&format!("{}:{rest}", kind.to_ascii_lowercase()))
}

/// The stats object of a channel, merged over every partition from Redis.
pub async fn snapshot(redis: &RedisStore, key: &AggKey) -> anyhow::Result<serde_json::Value> {
    let now = Utc::now();
    let merged = redis.merged(key, &[Interval::M1], now.timestamp() - 86_400 - 60).await?;
    Ok(crate::read::stats::stats_json(key, &merged, now))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_frame_is_the_protocol_object_and_the_estimate_its_size() {
        let swap = r#"{"tx_hash":"0xab","status":"pending"}"#;
        let text = channel_frame(FrameKind::Swap, "token:ETH", 7, swap);
        assert_eq!(
            text,
            r#"{"type":"swap","channel":"token:ETH","seq":7,"swap":{"tx_hash":"0xab","status":"pending"}}"#
        );
        let stats = channel_frame(FrameKind::Stats, "pair:ETH-USDC", 1_234_567, "{}");
        assert_eq!(stats, r#"{"type":"stats","channel":"pair:ETH-USDC","seq":1234567,"stats":{}}"#);

        // Exact for a one-digit seq, which the session corrects when it writes.
        let key = AggKey::parse("token:ETH").expect("a channel");
        let frames = (0..2).map(|_| FrameBody { kind: FrameKind::Swap, json: swap.into() }).collect();
        let handoff = Handoff::new(key, "token:ETH", frames);
        assert_eq!(handoff.estimate, 2 * frame_len(text.len()));
    }
}
