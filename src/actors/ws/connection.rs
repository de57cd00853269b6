//! One connection's shared state: what the session, the registry and the
//! writer (the response body, `http::ws`) know of it. The one owner of the
//! connection's outbound byte budget: the queue's bytes, the bytes handed to
//! the HTTP layer and the bytes it took.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use actix_rt::{Arbiter, ArbiterHandle};
use actix_web::web::BytesMut;
use futures::task::AtomicWaker;
use prometheus::IntCounter;

use super::outbound::{OutQueue, Pushed, Replayed, Taken};
use super::protocol::{ChannelKey, Handoff};
use crate::metrics::METRICS;
use crate::storage::redis::Offset;

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
    /// connection's alone (queued frames are shared, see [`super::protocol::queued_frame_bytes`]).
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
    pub fn gap(&self, only: Option<&ChannelKey>) {
        self.with_queue(|queue| queue.gap(only));
        self.writer.wake();
    }

    /// The session subscribed to `key`: its frames are taken and held.
    pub fn open(&self, key: &ChannelKey) {
        self.with_queue(|queue| queue.open(key.clone(), key.to_string().into()));
    }

    /// `key`'s subscribed frame (seq 0, with `snapshot`) is written: its
    /// frames follow, the `replay` first, then the queued ones after `floor`.
    pub fn start(&self, key: &ChannelKey, snapshot: Arc<str>, floor: Offset, replay: Vec<Replayed>) -> Pushed {
        let pushed = self.with_queue(|queue| queue.start(key, snapshot, floor, replay));
        self.writer.wake();
        pushed
    }

    /// The session left `key`: what waits for it goes.
    pub fn remove(&self, key: &ChannelKey) {
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
    pub(super) fn forget_socket(&self) {
        if let Some(socket) = &self.socket {
            socket.fd.store(-1, Ordering::Release);
        }
    }
}

/// The frame counters, resolved once rather than per frame.
struct FramesSent {
    swap: IntCounter,
    stats: IntCounter,
    skipped: IntCounter,
    candle: IntCounter,
}

static FRAMES_SENT: LazyLock<FramesSent> = LazyLock::new(|| FramesSent {
    swap: METRICS.ws_frames_sent.with_label_values(&["swap"]),
    stats: METRICS.ws_frames_sent.with_label_values(&["stats"]),
    skipped: METRICS.ws_frames_sent.with_label_values(&["skipped"]),
    candle: METRICS.ws_frames_sent.with_label_values(&["candle"]),
});

/// Counts what a writer took from its queue.
pub fn count_sent(taken: &Taken) {
    for arrived in &taken.arrivals {
        METRICS.ws_fanout_seconds.observe(arrived.elapsed().as_secs_f64());
    }
    FRAMES_SENT.swap.inc_by(taken.swaps);
    FRAMES_SENT.stats.inc_by(taken.stats);
    FRAMES_SENT.skipped.inc_by(taken.skipped);
    FRAMES_SENT.candle.inc_by(taken.candles);
}
