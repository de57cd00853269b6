//! HTTP: the route table and the server.

pub mod error;
pub mod health;
pub mod tokens;
pub mod ws;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

pub use health::{Probe, Readiness};

use crate::storage::redis::RedisStore;

/// The routes: health and metrics always, `/v1` when Redis is there, the
/// WebSocket routes when the process runs a session registry.
pub fn configure(
    readiness: Readiness,
    redis: Option<RedisStore>,
    ws: Option<ws::WsState>,
) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        if let Some(ws) = &ws {
            cfg.app_data(web::Data::new(ws.clone())).configure(ws::routes);
        }
        cfg.app_data(web::Data::new(readiness.clone()))
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(health::metrics));
        if let Some(redis) = &redis {
            cfg.app_data(web::Data::new(redis.clone()))
                .app_data(
                    web::QueryConfig::default()
                        .error_handler(|e, _| error::ApiError::bad("query", e.to_string()).into()),
                )
                .app_data(
                    web::PathConfig::default().error_handler(|e, _| error::ApiError::bad("path", e.to_string()).into()),
                )
                .configure(tokens::routes);
        }
    }
}

/// Counts every request by route pattern and status, and times it.
async fn record_metrics(
    request: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let route = request.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let started = std::time::Instant::now();
    let response = next.call(request).await;
    let status = match &response {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.as_response_error().status_code().as_u16(),
    };
    let metrics = &crate::metrics::METRICS;
    metrics.http_requests.with_label_values(&[&route, &status.to_string()]).inc();
    metrics.http_seconds.with_label_values(&[&route]).observe(started.elapsed().as_secs_f64());
    response
}

/// Starts the HTTP server on an already bound listener (port 0 works).
pub fn serve(
    listener: TcpListener,
    readiness: Readiness,
    redis: Option<RedisStore>,
    ws: Option<ws::WsState>,
    workers: usize,
) -> std::io::Result<Server> {
    let send_buffer = ws.as_ref().map_or(0, |ws| ws.settings.send_buffer_bytes);
    let routes = configure(readiness, redis, ws);
    Ok(HttpServer::new(move || {
        App::new().wrap(actix_web::middleware::from_fn(record_metrics)).configure(routes.clone())
    })
    .on_connect(ws::on_connect(send_buffer))
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run())
}
