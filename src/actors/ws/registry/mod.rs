//! The session registry: one actor per consumer process that owns the
//! WebSocket subscriptions (channel -> sessions) and fans updates out.
//!
//! Every update reaches it through Redis pub/sub, also the ones this
//! process's own partitions produced: the registry subscribes to
//! `<prefix>:updates:{<channel>}` for exactly the channels its clients
//! want, so a client on any instance gets every update of its channels
//! whichever instance owns the partitions. Each update is an entry of the
//! channel's history (`storage::redis::history`), which holds every swap
//! state once; the registry numbers its swaps with their offsets and hands
//! each entry on once. A session's subscription is answered once Redis has
//! confirmed the pub/sub subscription, so that the history the session
//! reads next and the live updates meet without a hole.
//!
//! New frames are handed to the sessions at once while the handoffs (a
//! wake-up and a socket write per subscriber) stay within
//! `SWAPSTREAM_WS_HANDOFFS_PER_SEC`; past it they gather per channel until
//! the budget covers them, for up to `SWAPSTREAM_WS_COALESCE_MAX_MS`, so that
//! under load a handoff carries many frames instead of the wake-ups
//! multiplying with the update rate (`HandoffBudget`).
//!
//! The registry never waits for a client. It pushes each session's frames
//! into the connection's outbound queue (`outbound::OutQueue`, owned by the
//! connection's writer), which conflates a backlog past
//! `SWAPSTREAM_WS_QUEUE_BYTES` into `skipped` frames rather than growing: a
//! client that reads, however far behind, keeps its connection. What is
//! evicted here, by a periodic sweep, is a client without progress: bytes
//! waiting (queued, or handed to the HTTP layer and not yet taken by it) and
//! none taken for the write deadline; and when the process holds more than
//! the total budget for its clients (queued frames, shared by the clients
//! they wait for, counted once), the clients with the most waiting. The
//! eviction offers close code 4008 when the session can still send it, and
//! resets the TCP connection itself (see `http::ws` for why that cannot be
//! left to the session). The same sweep drops peers silent for longer than
//! the ping timeout.
//!
//! This file holds the sessions, their subscriptions and their eviction;
//! `updates` what comes in over pub/sub (and what is read back after a
//! loss), `states` the `stats` and `candle` frames of each interval.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
// Looked up for every frame and handoff, by our own ids and validated channel
// names: foldhash (seeded per process) rather than SipHash.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use litemap::LiteMap;
use slog::{info, warn, Logger};
use tokio::sync::{mpsc, oneshot};

mod states;
mod updates;

use super::connection::{now_ms, ConnShared};
use super::fanout::{most_waiting_over, Cursor, HandoffBudget};
use super::protocol::{
    queued_frame_bytes, ChannelKey, FrameBody, Handoff, Outbound, CLOSE_PING_TIMEOUT, CLOSE_SLOW_CONSUMER,
};
use super::pubsub::{pubsub_loop, Inbox, PubSubCommand};
use crate::config::WsSettings;
use crate::domain::partial::AggKey;
use crate::metrics::METRICS;
use crate::read::Live;
use crate::storage::presence::{InstanceCounts, Presence};
use crate::storage::redis::RedisStore;

/// Time a session gets to send its close frame before its connection is reset.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

/// A session started.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Connect {
    pub id: u64,
    pub outbound: Recipient<Outbound>,
    pub conn: Arc<ConnShared>,
}

/// A session stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub id: u64,
}

/// Answered once this process' pub/sub connection is subscribed to every
/// one of the channels (false when that took longer than
/// `SUBSCRIBE_DEADLINE`): whatever is published from then on reaches the
/// session, so its history read cannot miss anything.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Subscribe {
    pub id: u64,
    pub channels: Vec<ChannelKey>,
}

/// Longest wait for Redis to confirm a pub/sub subscription.
const SUBSCRIBE_DEADLINE: Duration = Duration::from_secs(5);

type Confirmed = futures::future::Shared<oneshot::Receiver<()>>;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
    pub channels: Vec<ChannelKey>,
}

/// Graceful stop: every client gets close 1001 "going away"; resolves when
/// all sessions ended or `timeout` passed (the rest are reset).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub timeout: Duration,
}

struct Session {
    outbound: Recipient<Outbound>,
    conn: Arc<ConnShared>,
    /// A set, sorted: small for the usual one channel (a hash set starts
    /// with room for 4).
    channels: LiteMap<ChannelKey, ()>,
    /// `pulled` at the last sign of progress, and when that was.
    seen_pulled: i64,
    since_ms: u64,
}

/// The updates of one token or pair, which its channels follow: one
/// pub/sub subscription, its place in the history.
struct Feed {
    /// Its live channel and candle channels with subscribers here.
    channels: HashSet<ChannelKey>,
    /// Resolves when Redis confirmed the pub/sub subscription.
    confirmed: Confirmed,
    cursor: Cursor,
    /// While its history is read back after a pub/sub loss: the updates
    /// that came meanwhile, in order, with their arrival.
    recovering: Option<Vec<(Vec<u8>, Instant)>>,
}

struct Channel {
    name: Arc<str>,
    subscribers: HashSet<u64>,
    /// Changed since its last `stats` or `candle` frames.
    dirty: bool,
    /// New swap frames waiting for the next handoff, in order, and when
    /// the oldest one's update arrived.
    buffered: Vec<FrameBody>,
    buffered_since: Option<Instant>,
    /// A candle channel's buckets as last sent (start -> JSON), and the
    /// subscribers that have not had them yet.
    candles: BTreeMap<i64, Arc<str>>,
    fresh: HashSet<u64>,
    /// When the oldest open bucket sent closes (unix seconds): its `closed`
    /// frame is due then.
    closes_at: Option<i64>,
}

pub struct SessionRegistry {
    settings: WsSettings,
    instance: String,
    /// Where `stats` frames are read, as the snapshots are.
    live: Live,
    redis: RedisStore,
    presence: Presence,
    log: Logger,
    sessions: HashMap<u64, Session>,
    channels: HashMap<ChannelKey, Channel>,
    feeds: HashMap<AggKey, Feed>,
    pubsub: Option<mpsc::UnboundedSender<PubSubCommand>>,
    inbox: Inbox,
    /// Channels with buffered frames.
    to_flush: Vec<ChannelKey>,
    flush_scheduled: bool,
    budget: HandoffBudget,
    stats_in_flight: bool,
    closing: bool,
    closed: Vec<oneshot::Sender<()>>,
}

impl SessionRegistry {
    pub fn new(settings: WsSettings, instance: String, live: Live, log: Logger) -> SessionRegistry {
        let redis = live.redis().clone();
        SessionRegistry {
            live,
            budget: HandoffBudget::new(settings.handoffs_per_sec, settings.coalesce_max, Instant::now()),
            settings,
            instance,
            presence: Presence::new(&redis),
            redis,
            log,
            sessions: HashMap::new(),
            channels: HashMap::new(),
            feeds: HashMap::new(),
            pubsub: None,
            inbox: Inbox::default(),
            to_flush: Vec::new(),
            flush_scheduled: false,
            stats_in_flight: false,
            closing: false,
            closed: Vec::new(),
        }
    }

    fn remove_session(&mut self, id: u64) -> Option<Session> {
        let session = self.sessions.remove(&id)?;
        for key in session.channels.keys() {
            self.leave(key, id);
        }
        if self.closing && self.sessions.is_empty() {
            for done in self.closed.drain(..) {
                let _ = done.send(());
            }
        }
        Some(session)
    }

    fn leave(&mut self, key: &ChannelKey, id: u64) {
        let Some(channel) = self.channels.get_mut(key) else { return };
        channel.subscribers.remove(&id);
        channel.fresh.remove(&id);
        if !channel.subscribers.is_empty() {
            return;
        }
        self.channels.remove(key);
        let Some(feed) = self.feeds.get_mut(key.agg()) else { return };
        feed.channels.remove(key);
        if feed.channels.is_empty() {
            self.feeds.remove(key.agg());
            if let Some(pubsub) = &self.pubsub {
                let _ = pubsub.send(PubSubCommand::Unsubscribe(self.redis.updates_channel(key.agg())));
            }
        }
    }

    /// Drops a stalled or dead client: close frame if it can still go out,
    /// then the connection is reset.
    fn evict(&mut self, id: u64, reason: &'static str, ctx: &mut Context<Self>) {
        let Some(session) = self.remove_session(id) else { return };
        // Its memory goes now, whether or not the session runs again.
        session.conn.close_queue();
        METRICS.ws_evictions.with_label_values(&[reason]).inc();
        info!(self.log, "WebSocket client disconnected"; "reason" => reason, "session" => id,
            "request_id" => &session.conn.request_id, "outstanding_bytes" => session.conn.outstanding());
        let (code, text) = match reason {
            "ping_timeout" => (CLOSE_PING_TIMEOUT, "ping timeout"),
            _ => (CLOSE_SLOW_CONSUMER, "slow consumer"),
        };
        let _ = session.outbound.try_send(Outbound::Close { code, reason: text });
        ctx.run_later(CLOSE_GRACE, move |_, _| session.conn.kill());
    }

    /// Pushes `frames` of `key` into every subscriber's outbound queue,
    /// never waiting; a queue past its cap conflates (see `outbound`).
    /// `arrived`: for live swap frames, when their oldest update came over
    /// pub/sub (the start of the fan-out's latency).
    fn deliver(&mut self, key: &ChannelKey, frames: Vec<FrameBody>, arrived: Option<Instant>) {
        let Some(channel) = self.channels.get(key) else { return };
        let to: Vec<u64> = channel.subscribers.iter().copied().collect();
        self.deliver_to(key, frames, &to, arrived);
    }

    /// [`Self::deliver`] to the subscribers `to` only.
    fn deliver_to(&mut self, key: &ChannelKey, frames: Vec<FrameBody>, to: &[u64], arrived: Option<Instant>) {
        let Some(channel) = self.channels.get(key) else { return };
        if frames.is_empty() || to.is_empty() {
            return;
        }
        let handoff = Arc::new(Handoff::new(key.clone(), &channel.name, frames).arrived(arrived));
        let (mut handed, mut conflations, mut conflated) = (0, 0, 0);
        for id in to {
            let Some(session) = self.sessions.get(id) else { continue };
            let pushed = session.conn.push(handoff.clone());
            handed += u64::from(pushed.queued);
            conflations += pushed.conflations;
            conflated += pushed.conflated_swaps;
        }
        METRICS.ws_handoffs.inc_by(handed);
        METRICS.ws_conflations.inc_by(conflations);
        METRICS.ws_conflated_frames.inc_by(conflated);
        self.budget.spend(handed, Instant::now());
    }

    /// Write deadline and ping timeout, decided here for every session.
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let now = now_ms();
        let deadline = self.settings.write_deadline.as_millis() as u64;
        let silence = self.settings.ping_timeout.as_millis() as u64;
        let mut evicted = Vec::new();
        for (id, session) in &mut self.sessions {
            let pulled = session.conn.pulled.load(Ordering::Acquire);
            if pulled != session.seen_pulled || session.conn.outstanding() <= 0 {
                session.seen_pulled = pulled;
                session.since_ms = now;
            } else if now.saturating_sub(session.since_ms) > deadline {
                evicted.push((*id, "write_deadline"));
                continue;
            }
            if now.saturating_sub(session.conn.last_inbound_ms.load(Ordering::Acquire)) > silence {
                evicted.push((*id, "ping_timeout"));
            }
        }
        // First, so that what they held is released before the total is taken.
        for (id, reason) in evicted {
            self.evict(id, reason, ctx);
        }
        // Queued frames are shared by every client they wait for: counted
        // once, as the memory they take, plus what each connection has
        // handed to the HTTP layer on its own.
        let budget = i64::try_from(self.settings.queue_total_bytes).unwrap_or(i64::MAX);
        let total = queued_frame_bytes() + self.sessions.values().map(|s| s.conn.unshared().max(0)).sum::<i64>();
        let waiting = self.sessions.iter().map(|(id, session)| (*id, session.conn.outstanding()));
        for id in most_waiting_over(waiting, total, budget) {
            self.evict(id, "total_bytes", ctx);
        }
    }

    fn counts(&self) -> InstanceCounts {
        InstanceCounts {
            instance: self.instance.clone(),
            sessions: self.sessions.len() as u64,
            channels: self
                .channels
                .iter()
                .map(|(k, c)| (k.to_string(), c.subscribers.len() as u64))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let presence = self.presence.clone();
        let counts = self.counts();
        let ttl = self.settings.presence_ttl;
        let log = self.log.clone();
        ctx.spawn(
            async move {
                if let Err(e) = presence.heartbeat(&counts, ttl).await {
                    warn!(log, "cannot write WebSocket presence"; "error" => format!("{e:#}"));
                }
                match presence.clean_dead(ttl).await {
                    Ok(Some(dead)) if !dead.is_empty() => {
                        info!(log, "removed dead instances' WebSocket counts"; "instances" => format!("{dead:?}"))
                    }
                    Ok(_) => {}
                    Err(e) => warn!(log, "cannot clean up WebSocket presence"; "error" => format!("{e:#}")),
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.pubsub = Some(tx);
        let client = self.redis.pubsub_client().clone();
        actix::spawn(pubsub_loop(client, rx, ctx.address().recipient(), self.inbox.clone(), self.log.clone()));
        let sweep = (self.settings.write_deadline / 4).min(Duration::from_millis(250));
        ctx.run_interval(sweep, |act, ctx| act.sweep(ctx));
        ctx.run_interval(self.settings.stats_interval, |act, ctx| act.send_stats(ctx));
        self.heartbeat(ctx);
        ctx.run_interval(self.settings.presence_heartbeat, |act, ctx| act.heartbeat(ctx));
    }
}

impl Handler<Connect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, message: Connect, _ctx: &mut Context<Self>) {
        if self.closing {
            let _ = message.outbound.try_send(Outbound::Close { code: 1001, reason: "going away" });
        }
        let session = Session {
            outbound: message.outbound,
            seen_pulled: message.conn.pulled.load(Ordering::Acquire),
            conn: message.conn,
            channels: LiteMap::with_capacity(1),
            since_ms: now_ms(),
        };
        self.sessions.insert(message.id, session);
    }
}

impl Handler<Disconnect> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, message: Disconnect, _ctx: &mut Context<Self>) {
        self.remove_session(message.id);
    }
}

impl Handler<Subscribe> for SessionRegistry {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, message: Subscribe, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(session) = self.sessions.get_mut(&message.id) else { return Box::pin(async { false }) };
        let mut confirmations = Vec::with_capacity(message.channels.len());
        for key in message.channels {
            session.channels.insert(key.clone(), ());
            let feed = self.feeds.entry(key.agg().clone()).or_insert_with(|| {
                let (confirm, confirmed) = oneshot::channel();
                if let Some(pubsub) = &self.pubsub {
                    let _ = pubsub.send(PubSubCommand::Subscribe(self.redis.updates_channel(key.agg()), confirm));
                }
                Feed {
                    channels: HashSet::new(),
                    confirmed: futures::FutureExt::shared(confirmed),
                    cursor: Cursor::default(),
                    recovering: None,
                }
            });
            feed.channels.insert(key.clone());
            confirmations.push(feed.confirmed.clone());
            let channel = self.channels.entry(key.clone()).or_insert_with(|| Channel {
                name: key.to_string().into(),
                subscribers: HashSet::new(),
                dirty: false,
                buffered: Vec::new(),
                buffered_since: None,
                candles: BTreeMap::new(),
                fresh: HashSet::new(),
                closes_at: None,
            });
            channel.subscribers.insert(message.id);
            if let ChannelKey::Candles(..) = key {
                // Its buckets come at the next interval, to it alone first.
                channel.fresh.insert(message.id);
                channel.dirty = true;
            }
        }
        Box::pin(async move {
            let all = futures::future::join_all(confirmations);
            matches!(tokio::time::timeout(SUBSCRIBE_DEADLINE, all).await, Ok(done) if done.iter().all(Result::is_ok))
        })
    }
}

impl Handler<Unsubscribe> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, message: Unsubscribe, _ctx: &mut Context<Self>) {
        let Some(session) = self.sessions.get_mut(&message.id) else { return };
        for key in &message.channels {
            session.channels.remove(key);
        }
        for key in &message.channels {
            self.leave(key, message.id);
        }
    }
}

impl Handler<Shutdown> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, message: Shutdown, _ctx: &mut Context<Self>) -> Self::Result {
        self.closing = true;
        info!(self.log, "closing WebSocket sessions"; "sessions" => self.sessions.len());
        for session in self.sessions.values() {
            if session.outbound.try_send(Outbound::Close { code: 1001, reason: "going away" }).is_err() {
                session.conn.kill();
            }
        }
        let (done, all_closed) = oneshot::channel();
        if self.sessions.is_empty() {
            let _ = done.send(());
        } else {
            self.closed.push(done);
        }
        let presence = self.presence.clone();
        let instance = self.instance.clone();
        Box::pin(
            async move {
                let _ = tokio::time::timeout(message.timeout, all_closed).await;
                let _ = presence.remove(&instance).await;
            }
            .into_actor(self)
            .map(|_, act, _| {
                for session in act.sessions.values() {
                    session.conn.kill();
                }
            }),
        )
    }
}
