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
//! - the registry adds the size of every frame it hands the session
//!   (`try_send` into a mailbox capped at `SWAPSTREAM_WS_QUEUE_MESSAGES`),
//!   and the session's body stream, wrapped here, adds every byte actix
//!   pulls from it; the difference is what waits for this client;
//! - a full mailbox, a difference above `SWAPSTREAM_WS_QUEUE_BYTES`, a
//!   difference that does not shrink for `SWAPSTREAM_WS_WRITE_DEADLINE_MS`,
//!   or one of the largest while all sessions' differences together exceed
//!   `SWAPSTREAM_WS_QUEUE_TOTAL_BYTES` evicts the client: the registry forgets it (its frames are dropped with
//!   the mailbox), offers close 4008 "slow consumer", and shortly after has
//!   the connection's worker set `SO_LINGER` 0 and shut the socket down
//!   (on that thread, so the descriptor cannot have been closed and its
//!   number reused meanwhile; a `dup` would do without the hop but costs a
//!   second descriptor per session). actix's next read or
//!   write on the connection fails, it drops the connection and with it the
//!   session, and the last close sends RST: the connection is really gone
//!   even though the client never reads again.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use actix_rt::net::TcpStream;
use actix_tls::accept::rustls_0_23::TlsStream;
use actix_web::dev::Extensions;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use futures::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::middleware::Policy;
use super::middleware::RequestId;
use crate::actors::ws_session::{ConnShared, ConnSocket, IpLimiter, Refused, SessionCommon, WsSession};
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
    cfg.route("/v1/ws", web::get().to(upgrade)).route("/v1/ws/stats", web::get().to(stats));
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
    let conn = Arc::new(ConnShared::new(socket, request_id));
    let session = WsSession::new(state.common.clone(), conn.clone(), slot);
    // Frames up to 4x the limit are read and answered with an error frame;
    // larger ones end the connection (1009) rather than being buffered.
    let codec = actix_http::ws::Codec::new().max_size(state.common.settings.max_frame_bytes.saturating_mul(4));
    let body = ws::WebsocketContext::with_codec(session, payload, codec).map(move |chunk| {
        if let Ok(bytes) = &chunk {
            conn.pulled.fetch_add(bytes.len() as i64, std::sync::atomic::Ordering::AcqRel);
        }
        chunk
    });
    Ok(response.streaming(body))
}

/// Sessions and subscribers of every live instance, from Redis.
async fn stats(state: web::Data<WsState>) -> Result<HttpResponse, ApiError> {
    let counts = Presence::new(&state.common.redis).counts().await.map_err(ApiError::redis)?;
    Ok(HttpResponse::Ok().json(counts))
}
