//! HTTP: the route table, the middleware stack and the servers.

pub mod asyncapi;
pub mod client_ip;
mod conditional;
pub mod dashboard;
pub mod error;
pub mod health;
pub mod middleware;
pub mod openapi;
pub mod rate_limit;
pub mod tls;
pub mod tokens;
pub mod ws;

use std::net::TcpListener;
use std::time::Duration;

use actix_cors::Cors;
use actix_web::dev::ServerHandle;
use actix_web::http::{header, Method};
use actix_web::middleware::{from_fn, Compress, Condition};
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;
use slog::{info, Logger};

pub use health::{Probe, Readiness};

use crate::config::HttpSettings;
use crate::read::Live;
use middleware::Policy;

/// `path` answering GET with `handler`, within [`middleware::deadline`].
/// Any other method is a 405 whose `Allow` names GET: without a default of
/// its own, the resource would hand the request to the app's 404.
fn get_only<F, Args>(path: &str, handler: F) -> impl actix_web::dev::HttpServiceFactory
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    #[cfg(test)]
    tests::REGISTERED.lock().expect("registry lock").insert(path.to_owned());
    web::resource(path)
        .route(web::get().to(handler))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(error::ApiError::MethodNotAllowed("GET"))
        }))
        .wrap(from_fn(middleware::deadline))
}

/// Health, readiness and metrics: on the main address, and alone on the
/// health address when one is configured. They need [`Readiness`] as app data.
fn health_paths(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/healthz", health::healthz))
        .service(get_only("/readyz", health::readyz))
        .service(get_only("/metrics", health::metrics));
}

/// Every path of the main address: health, the dashboard, the REST API, the
/// WebSocket and the documents of both (OpenAPI, AsyncAPI). Their handlers
/// take [`Readiness`], [`Live`], [`openapi::Document`] and [`ws::WsState`]
/// as app data.
fn served_paths(cfg: &mut web::ServiceConfig) {
    cfg.configure(health_paths)
        .configure(dashboard::routes)
        .service(get_only("/v1/openapi.json", openapi::document))
        .service(get_only("/v1/asyncapi.json", asyncapi::document))
        .configure(tokens::routes)
        .configure(ws::routes);
}

/// How `/v1` handlers answer bad query and path text: the JSON error.
fn extractor_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| error::ApiError::bad("query", e.to_string()).into()))
        .app_data(web::PathConfig::default().error_handler(|e, _| error::ApiError::bad("path", e.to_string()).into()));
}

/// Browsers may read answers from allowed origins (and the API's own).
fn cors(policy: &web::Data<Policy>) -> Cors {
    let cors = policy.cors.clone();
    Cors::default()
        .allowed_origin_fn(move |origin, head| {
            let host = head.headers().get(header::HOST).and_then(|h| h.to_str().ok());
            origin.to_str().is_ok_and(|origin| middleware::origin_allowed(origin, host, &cors))
        })
        .allowed_methods([Method::GET, Method::OPTIONS])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE, header::HeaderName::from_static("x-api-key")])
        .expose_headers(
            [middleware::REQUEST_ID, header::RETRY_AFTER, header::ETAG].into_iter().chain(rate_limit::HEADERS),
        )
        .max_age(600)
}

/// How often readiness is checked for `swapstream_ready` besides `/readyz`.
const READINESS_REFRESH: Duration = Duration::from_secs(15);

/// What the HTTP servers serve.
pub struct HttpParts {
    pub readiness: Readiness,
    pub live: Live,
    /// The WebSocket endpoint's session registry and settings.
    pub ws: ws::WsState,
}

/// The running servers.
pub struct Servers {
    pub port: u16,
    pub health_port: Option<u16>,
    handles: Vec<ServerHandle>,
}

impl Servers {
    /// Binds the listeners (port 0 works) and starts serving on the actix
    /// system of the caller.
    pub fn start(settings: &HttpSettings, parts: HttpParts, log: &Logger) -> anyhow::Result<Servers> {
        let limiter = settings
            .rate_limit
            .map(|limit| rate_limit::RateLimiter::new(limit, limit.shared.then(|| parts.live.redis().clone())));
        let policy = web::Data::new(Policy::new(settings, limiter, log.clone()));
        let readiness = web::Data::new(parts.readiness.clone());
        actix::spawn(health::refresh_readiness(parts.readiness.clone(), READINESS_REFRESH));
        let document = web::Data::new(openapi::Document::new(parts.live.recent_cap()));
        let live = web::Data::new(parts.live.clone());
        let ws = web::Data::new(parts.ws.clone());
        let send_buffer = parts.ws.common.settings.send_buffer_bytes;
        let compression = settings.compression;
        let app_policy = policy.clone();
        let server = HttpServer::new(move || {
            let policy = app_policy.clone();
            App::new()
                .app_data(policy.clone())
                .app_data(readiness.clone())
                .app_data(live.clone())
                .app_data(document.clone())
                .app_data(ws.clone())
                .configure(extractor_errors)
                .configure(served_paths)
                .default_service(web::to(|| async {
                    Err::<actix_web::HttpResponse, _>(error::ApiError::NotFound("no such route".into()))
                }))
                .wrap(from_fn(conditional::validators))
                .wrap(Condition::new(compression, Compress::default()))
                .wrap(from_fn(middleware::guard))
                .wrap(cors(&policy))
                .wrap(from_fn(middleware::refuse_origin))
                .wrap(from_fn(middleware::observe))
        })
        .on_connect(ws::on_connect(send_buffer))
        // WebSocket frames are small and must leave at once: with Nagle's
        // algorithm on, a frame waits for the client's delayed ACK (40 ms).
        .tcp_nodelay(true)
        .h1_write_buffer_size(ws::H1_WRITE_BUFFER)
        .workers(settings.workers)
        .disable_signals()
        .shutdown_timeout(5);

        let listener = TcpListener::bind(settings.addr)
            .with_context(|| format!("binding SWAPSTREAM_HTTP_ADDR {}", settings.addr))?;
        let port = listener.local_addr()?.port();
        let server = match &settings.tls {
            Some(files) => server.listen_rustls_0_23(listener, tls::server_config(files)?)?,
            None => server.listen(listener)?,
        }
        .run();
        let mut handles = vec![server.handle()];
        actix::spawn(server);

        let mut health_port = None;
        if let Some(addr) = settings.health_addr {
            let listener =
                TcpListener::bind(addr).with_context(|| format!("binding SWAPSTREAM_HTTP_HEALTH_ADDR {addr}"))?;
            health_port = Some(listener.local_addr()?.port());
            let readiness = web::Data::new(parts.readiness);
            let server = HttpServer::new(move || App::new().app_data(readiness.clone()).configure(health_paths))
                .workers(1)
                .disable_signals()
                .shutdown_timeout(1)
                .listen(listener)?
                .run();
            handles.push(server.handle());
            actix::spawn(server);
        }
        info!(log, "serving HTTP"; "port" => port, "tls" => settings.tls.is_some(), "health_port" => health_port,
            "auth" => policy.auth_enabled(), "rate_limit" => format!("{:?}", settings.rate_limit));
        Ok(Servers { port, health_port, handles })
    }

    /// Only health, readiness and metrics, plain HTTP on `settings.addr`,
    /// one worker: for the producer role, which serves no API.
    pub fn start_health(settings: &HttpSettings, readiness: Readiness, log: &Logger) -> anyhow::Result<Servers> {
        let listener = TcpListener::bind(settings.addr)
            .with_context(|| format!("binding SWAPSTREAM_HTTP_ADDR {}", settings.addr))?;
        let port = listener.local_addr()?.port();
        actix::spawn(health::refresh_readiness(readiness.clone(), READINESS_REFRESH));
        let readiness = web::Data::new(readiness);
        let server = HttpServer::new(move || {
            App::new().app_data(readiness.clone()).configure(health_paths).default_service(web::to(|| async {
                Err::<actix_web::HttpResponse, _>(error::ApiError::NotFound("no such route".into()))
            }))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(1)
        .listen(listener)?
        .run();
        let handles = vec![server.handle()];
        actix::spawn(server);
        info!(log, "serving health and metrics"; "http_port" => port);
        Ok(Servers { port, health_port: None, handles })
    }

    /// Stops accepting, lets requests in flight finish (bounded), stops.
    pub async fn stop(&self) {
        for handle in &self.handles {
            handle.stop(true).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use utoipa::OpenApi;

    use super::*;

    /// Every path [`get_only`] registered in this test process.
    pub static REGISTERED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

    #[actix_web::test]
    async fn the_openapi_document_has_every_path_the_router_serves_and_no_other() {
        actix_web::test::init_service(App::new().configure(served_paths)).await;
        let served = REGISTERED.lock().unwrap().clone();
        let document = openapi::ApiDoc::openapi();
        let documented: BTreeSet<String> = document.paths.paths.keys().cloned().collect();
        // Not JSON over HTTP, so documented elsewhere: the dashboard page and
        // its files, and the WebSocket protocol (`/v1/asyncapi.json`).
        let elsewhere: BTreeSet<String> = ["/", "/dashboard/{name}", "/v1/ws"].map(String::from).into();
        assert!(elsewhere.is_subset(&served), "{served:?}");
        assert_eq!(served.difference(&elsewhere).cloned().collect::<BTreeSet<_>>(), documented);
    }
}
