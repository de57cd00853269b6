//! HTTP: the route table and the server.

pub mod health;

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::{web, App, HttpServer};

pub use health::{Probe, Readiness};

/// The routes every role serves.
pub fn configure(readiness: Readiness) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(readiness.clone()))
            .route("/healthz", web::get().to(health::healthz))
            .route("/readyz", web::get().to(health::readyz))
            .route("/metrics", web::get().to(health::metrics));
    }
}

/// Starts the HTTP server on an already bound listener (port 0 works).
pub fn serve(listener: TcpListener, readiness: Readiness, workers: usize) -> std::io::Result<Server> {
    let routes = configure(readiness);
    Ok(HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run())
}
