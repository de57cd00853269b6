//! HTTP: the route table and the server.

pub mod error;
pub mod health;
pub mod tokens;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

pub use health::{Probe, Readiness};

use crate::storage::redis::RedisStore;

/// The routes: health and metrics always, `/v1` when Redis is there.
pub fn configure(readiness: Readiness, redis: Option<RedisStore>) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
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

/// Starts the HTTP server on an already bound listener (port 0 works).
pub fn serve(
    listener: TcpListener,
    readiness: Readiness,
    redis: Option<RedisStore>,
    workers: usize,
) -> std::io::Result<Server> {
    let routes = configure(readiness, redis);
    Ok(HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run())
}
