//! `GET /v1/ws` (the WebSocket upgrade) and `GET /v1/ws/stats`.
//!
//! How a client that stops reading is found and disconnected. A session
//! actor runs only while actix polls its response body; once the client
//! stops reading, the kernel buffers fill, actix stops polling, and the
//! actor is frozen with its timers. So the decision and the close are the
//! registry's:
//! - `on_connect` keeps the descriptor number of every accepted TCP socket
//!   in the connection's extensions (the session keeps it with its worker,
//!   see `ConnSocket` for why the number stays valid), and sets a modest
//!   kernel send buffer
//!   (`SWAPSTREAM_WS_SEND_BUFFER_BYTES`) so a stalled client is noticed
//!   after kilobytes, not the megabytes the kernel would otherwise buffer;
//! - the registry pushes every channel frame into the connection's outbound
//!   queue (`actors::ws::outbound`), which conflates a backlog past
//!   `SWAPSTREAM_WS_QUEUE_BYTES` into `skipped` frames; the connection's
//!   writer (`Writer`, the response body) takes from it only when actix
//!   has room to write, and counts every byte actix pulls, the session's
//!   own frames too; what is queued or handed and not yet pulled is what
//!   waits for this client;
//! - bytes waiting of which actix pulls nothing for
//!   `SWAPSTREAM_WS_WRITE_DEADLINE_MS`, or being one of the largest while
//!   the process holds more than `SWAPSTREAM_WS_QUEUE_TOTAL_BYTES` for its
//!   clients (a queued frame counted once), evicts the client: the registry
//!   forgets it, empties its queue, offers close 4008 "slow consumer", and
//!   shortly after has the connection's worker set `SO_LINGER` 0 and shut the socket down
//!   (on that thread, so the descriptor cannot have been closed and its
//!   number reused meanwhile; a `dup` would do without the hop but costs a
//!   second descriptor per session). actix's next read or
//!   write on the connection fails, it drops the connection and with it the
//!   session, and the last close sends RST: the connection is really gone
//!   even though the client never reads again.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_rt::net::TcpStream;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::web::{Bytes, BytesMut};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use futures::Stream;
use serde_json::json;

use super::error::ApiError;
use super::get_only;
use super::middleware::{Policy, RequestId};
use crate::actors::ws::connection::{count_sent, ConnShared, ConnSocket};
use crate::actors::ws::limits::{IpLimiter, Refused};
use crate::actors::ws::session::{SessionCommon, WsSession};
use crate::metrics::METRICS;
use crate::storage::presence::Presence;

/// What the WebSocket routes need.
#[derive(Clone)]
pub struct WsState {
    pub common: Arc<SessionCommon>,
    pub limiter: IpLimiter,
}

/// The descriptor of a connection's socket, in its extensions.
#[derive(Clone, Copy)]
struct SocketFd(RawFd);

/// For `HttpServer::on_connect`: keeps the TCP socket's descriptor and sets
/// its send buffer (`send_buffer` bytes; 0 leaves the kernel's).
pub fn on_connect(send_buffer: usize) -> impl Fn(&dyn Any, &mut Extensions) + Send + Sync + Clone + 'static {
    move |connection: &dyn Any, extensions: &mut Extensions| {
        let stream = if let Some(plain) = connection.downcast_ref::<TcpStream>() {
            plain
        } else if let Some(tls) = connection.downcast_ref::<TlsStream<TcpStream>>() {
            tls.get_ref().0
        } else {
            return;
        };
        let socket = socket2::SockRef::from(stream);
        if send_buffer > 0 {
            let _ = socket.set_send_buffer_size(send_buffer);
        }
        extensions.insert(SocketFd(stream.as_raw_fd()));
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/v1/ws", upgrade)).service(get_only("/v1/ws/stats", stats));
}

async fn upgrade(
    request: HttpRequest,
    payload: web::Payload,
    state: web::Data<WsState>,
) -> Result<HttpResponse, actix_web::Error> {
    let client = match request.app_data::<web::Data<Policy>>() {
        Some(policy) => policy.client_ip(request.head()),
        None => request.peer_addr().map(|a| a.ip()),
    };
    let Some(ip) = client else {
        return Ok(HttpResponse::BadRequest().finish());
    };
    let slot = match state.limiter.acquire(ip, state.common.settings.max_conns_per_ip) {
        Ok(slot) => slot,
        Err(Refused::PerIp) => {
            METRICS.ws_refused.with_label_values(&["per_ip_limit"]).inc();
            let message =
                format!("at most {} WebSocket connections per IP address", state.common.settings.max_conns_per_ip);
            return Ok(HttpResponse::TooManyRequests()
                .json(json!({"error": {"code": "too_many_connections", "message": message}})));
        }
        Err(Refused::AtCapacity) => {
            METRICS.ws_refused.with_label_values(&["at_capacity"]).inc();
            let message = format!(
                "this instance holds its most WebSocket connections ({}); try another",
                state.limiter.capacity()
            );
            return Ok(HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(json!({"error": {"code": "at_capacity", "message": message}})));
        }
    };
    let mut response = ws::handshake(&request)?;
    let socket = request.conn_data::<SocketFd>().map(|fd| ConnSocket::on_current_worker(fd.0));
    let request_id = request.extensions().get::<RequestId>().map(|id| id.0.clone()).unwrap_or_default();
    let conn = Arc::new(ConnShared::new(socket, request_id, state.common.settings.queue_bytes));
    let session = WsSession::new(state.common.clone(), conn.clone(), slot);
    // Frames up to 4x the limit are read and answered with an error frame;
    // larger ones end the connection (1009) rather than being buffered.
    let codec = actix_http::ws::Codec::new().max_size(state.common.settings.max_frame_bytes.saturating_mul(4));
    let session = ws::WebsocketContext::with_codec(session, payload, codec);
    Ok(response.streaming(Writer { session: Box::pin(session), conn, done: false, buffer: BytesMut::new() }))
}

/// Most bytes of channel frames the writer hands the HTTP layer at once.
/// actix asks for more while less than its write buffer
/// ([`H1_WRITE_BUFFER`]) waits, so what is out of the queue and not yet in
/// the socket stays near 12 KiB and the rest of a backlog can still be
/// conflated.
const WRITE_CHUNK: usize = 4 * 1024;

/// actix-http's write buffer per connection (`h1_write_buffer_size`, 32 KiB
/// by default). The buffer grows to hold what is pulled while it is under
/// this size, and actix keeps whatever it grew to (up to 128 KiB) for the
/// connection's life: with 32 KiB and 16 KiB chunks, a client that had one
/// burst kept about 64 KiB ever after. 8 KiB is the size actix starts with,
/// so with [`WRITE_CHUNK`] it grows at most once, to 16 KiB. REST bodies
/// are written whole whatever this is.
pub const H1_WRITE_BUFFER: usize = 8 * 1024;

/// A connection's writer: its response body, which the HTTP layer polls
/// whenever it has room to write. It yields the session actor's own frames
/// first (subscribed, errors, pongs, pings, close: polling the actor also
/// runs it), then channel frames from the connection's queue, a chunk at a
/// time, and counts every byte the HTTP layer pulls.
struct Writer<S> {
    session: Pin<Box<S>>,
    conn: Arc<ConnShared>,
    done: bool,
    buffer: BytesMut,
}

impl<S> Stream for Writer<S>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>>,
{
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.session.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(bytes))) => {
                this.conn.pulled.fetch_add(bytes.len() as i64, Ordering::AcqRel);
                return Poll::Ready(Some(Ok(bytes)));
            }
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Pending => {}
        }
        // Registered before looking, so a push after the look wakes us.
        this.conn.register_writer(cx.waker());
        let taken = this.conn.take(WRITE_CHUNK, &mut this.buffer);
        if taken.bytes == 0 {
            // Drained: keep no write buffer. What `split` leaves keeps the
            // whole allocation alive (up to a chunk per idle connection);
            // while frames flow, the next chunk reuses it once the socket
            // has taken this one.
            this.buffer = BytesMut::new();
            return Poll::Pending;
        }
        count_sent(&taken);
        this.conn.pulled.fetch_add(taken.bytes as i64, Ordering::AcqRel);
        Poll::Ready(Some(Ok(this.buffer.split().freeze())))
    }
}

/// `/v1/ws/stats`: WebSocket sessions and subscribers, summed over the
/// live instances and per instance.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WsStatsBody {
    sessions: u64,
    /// Subscribers per channel (`token:ETH`, `pair:ETH-USDC`).
    channels: std::collections::BTreeMap<String, u64>,
    instances: Vec<WsInstanceBody>,
}

#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct WsInstanceBody {
    instance: String,
    sessions: u64,
    channels: std::collections::BTreeMap<String, u64>,
}

/// Sessions and subscribers of every live instance, from Redis.
#[utoipa::path(get, path = "/v1/ws/stats", tag = "websocket",
    responses((status = 200, body = WsStatsBody), (status = 503, body = super::error::ErrorBody)))]
pub async fn stats(state: web::Data<WsState>) -> Result<HttpResponse, ApiError> {
    let counts = Presence::new(state.common.live.redis()).counts().await.map_err(ApiError::redis)?;
    Ok(HttpResponse::Ok().json(counts))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use futures::stream;

    use super::*;
    use crate::actors::ws::protocol::{parse_channel, ChannelKey, FrameBody, Handoff};
    use crate::storage::redis::Offset;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn swaps(key: &ChannelKey, count: usize) -> Arc<Handoff> {
        let frames = (0..count)
            .map(|n| FrameBody::swap(format!(r#"{{"n":{n}}}"#).into(), Offset { ms: n as u64, seq: 0, count: 1 }))
            .collect();
        Arc::new(Handoff::new(key.clone(), &key.to_string(), frames))
    }

    #[test]
    fn the_writer_yields_the_sessions_frames_first_then_the_queue_and_counts_what_is_pulled() {
        let key = parse_channel("token:ETH").expect("a channel");
        let conn = Arc::new(ConnShared::new(None, String::new(), 1 << 20));
        conn.open(&key);
        conn.push(swaps(&key, 3));
        // The session's own frame (its `subscribed`), once; then nothing.
        let subscribed = Bytes::from_static(b"\x81\x02{}");
        conn.handed.fetch_add(subscribed.len() as i64, Ordering::AcqRel);
        let mut own = Some(subscribed.clone());
        let session = stream::poll_fn(move |_| match own.take() {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
            None => Poll::Pending,
        });
        let mut writer =
            Writer { session: Box::pin(session), conn: conn.clone(), done: false, buffer: BytesMut::new() };
        let woken = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut poll = || Pin::new(&mut writer).poll_next(&mut cx);

        // Both have frames: the session's go first (they may be the
        // `subscribed` frame the queued ones must follow).
        conn.start(&key, "{}".into(), Offset::ZERO, Vec::new());
        assert!(matches!(poll(), Poll::Ready(Some(Ok(b))) if b == subscribed));
        let Poll::Ready(Some(Ok(first))) = poll() else { panic!("the queued frames") };
        assert!(poll().is_pending());
        assert_eq!(woken.0.load(Ordering::SeqCst), 0);
        conn.push(swaps(&key, 1));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "a push wakes the waiting writer");
        let Poll::Ready(Some(Ok(second))) = poll() else { panic!("the new frame") };
        assert!(poll().is_pending());
        let text = String::from_utf8_lossy(&first) + String::from_utf8_lossy(&second);
        assert_eq!(text.matches(r#""type":"swap""#).count(), 4);
        assert!(
            text.contains(r#""seq":1,"#) && second.ends_with(br#""seq":4,"offset":"0-0-1","swap":{"n":0}}"#),
            "{text}"
        );
        let chunk = [first, second].concat();
        assert_eq!(conn.pulled.load(Ordering::Acquire), (subscribed.len() + chunk.len()) as i64);
        assert_eq!(conn.outstanding(), 0, "every byte handed was pulled");
    }
}
