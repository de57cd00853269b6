//! The request pipeline around every handler, outermost first:
//! 1. [`observe`]: request id (accepted or made), access log line, metrics;
//! 2. [`refuse_origin`]: 403 for a browser `Origin` that is neither the API's
//!    own nor allowed (CORS headers for allowed ones come from actix-cors,
//!    with the same rule, [`origin_allowed`]);
//! 3. [`guard`] on `/v1`: body size, API key, rate limit;
//! 4. compression, when on;
//! 5. `conditional::validators`: `ETag` and `Cache-Control` on read
//!    answers, 304 for a client that has the answer already;
//! 6. after routing, around each resource's handler: [`deadline`] for the
//!    answer ([`ANSWER_DEADLINE`], then 503).
//!
//! Each is off when its settings say so (no keys: no authentication; rate 0:
//! no limit; empty origin list: only same-origin browser calls).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{RequestHead, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};
use rand::Rng;
use slog::{info, o, warn, Logger};
use subtle::ConstantTimeEq;

use super::client_ip::TrustedProxies;
use super::error::ApiError;
use super::rate_limit::{key_client, RateLimiter};
use crate::config::{CorsOrigins, HttpSettings};
use crate::metrics::METRICS;

/// Longest time a `/v1` request may take before it is answered with 503.
pub const ANSWER_DEADLINE: Duration = Duration::from_secs(5);

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, in the request's extensions for handlers whose log
/// lines concern the request (e.g. a WebSocket connection's).
#[derive(Clone, Debug)]
pub struct RequestId(pub String);
const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// What the middlewares need, shared by every worker.
pub struct Policy {
    pub log: Logger,
    pub access_log: bool,
    keys: Vec<Vec<u8>>,
    pub cors: CorsOrigins,
    limiter: Option<RateLimiter>,
    max_body_bytes: usize,
    proxies: TrustedProxies,
}

impl Policy {
    pub fn new(settings: &HttpSettings, limiter: Option<RateLimiter>, log: Logger) -> Policy {
        Policy {
            log,
            access_log: settings.access_log,
            keys: settings.api_keys.expose().iter().map(|k| k.as_bytes().to_vec()).collect(),
            cors: settings.cors.clone(),
            limiter,
            max_body_bytes: settings.max_body_bytes,
            proxies: TrustedProxies::new(settings.trusted_proxies.clone()),
        }
    }

    /// The client's address: the peer, or behind a trusted proxy the
    /// address it forwarded.
    pub fn client_ip(&self, head: &RequestHead) -> Option<IpAddr> {
        head.peer_addr.map(|peer| self.proxies.client(peer.ip(), &head.headers))
    }

    pub fn auth_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Compares with every key in constant time, so timing tells nothing of
    /// how much of a key matched or which one.
    fn known_key(&self, presented: &[u8]) -> bool {
        self.keys.iter().fold(false, |found, key| found | bool::from(key.as_slice().ct_eq(presented)))
    }
}

/// A caller's request id when it is short and plain, else a new one.
fn request_id(request: &ServiceRequest) -> String {
    request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:016x}", rand::thread_rng().gen::<u64>()))
}

pub async fn observe(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let policy = request.app_data::<web::Data<Policy>>().cloned();
    let id = request_id(&request);
    let (method, path) = (request.method().clone(), request.path().to_owned());
    let peer = match &policy {
        Some(policy) => policy.client_ip(request.head()),
        None => request.peer_addr().map(|a| a.ip()),
    };
    request.extensions_mut().insert(RequestId(id.clone()));
    let result = next.call(request).await;
    // Asked after routing, actix finds the pattern by the route taken;
    // before it, by matching the path again. A request refused before
    // routing (origin, key, rate) is matched here.
    let (status, route) = match &result {
        Ok(response) => (response.status(), response.request().match_pattern()),
        Err(e) => (e.as_response_error().status_code(), None),
    };
    let route = route.as_deref().unwrap_or("unmatched");
    let elapsed = started.elapsed();
    METRICS.http_requests.with_label_values(&[route, status.as_str()]).inc();
    METRICS.http_seconds.with_label_values(&[route]).observe(elapsed.as_secs_f64());
    if let Some(policy) = policy.filter(|p| p.access_log || status.is_server_error()) {
        let log = policy.log.new(o!("request_id" => id.clone()));
        let micros = elapsed.as_micros() as u64;
        let (method, peer) = (method.as_str(), peer.map(|ip| ip.to_string()).unwrap_or_default());
        if status.is_server_error() {
            let error = match &result {
                Ok(response) => response.response().error().map(|e| e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            warn!(log, "request"; "method" => method, "path" => path, "status" => status.as_u16(),
                "micros" => micros, "peer" => peer, "error" => error);
        } else {
            info!(log, "request"; "method" => method, "path" => path, "status" => status.as_u16(),
                "micros" => micros, "peer" => peer);
        }
    }
    result.map(|mut response| {
        if let Ok(value) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, value);
        }
        response
    })
}

/// Same origin (the `Origin`'s host and port are the request's `Host`), or
/// allowed by configuration.
pub fn origin_allowed(origin: &str, host: Option<&str>, cors: &CorsOrigins) -> bool {
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    if authority.is_some() && authority == host {
        return true;
    }
    match cors {
        CorsOrigins::Any => true,
        CorsOrigins::List(origins) => origins.iter().any(|allowed| allowed == origin),
    }
}

fn refused(request: ServiceRequest, error: ApiError, reason: &'static str) -> ServiceResponse {
    METRICS.http_rejected.with_label_values(&[reason]).inc();
    let response = error.error_response();
    request.into_response(response)
}

pub async fn refuse_origin(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    if let (Some(policy), Some(origin)) =
        (request.app_data::<web::Data<Policy>>(), request.headers().get(header::ORIGIN))
    {
        let origin = origin.to_str().unwrap_or("(not text)");
        let host = request.headers().get(header::HOST).and_then(|h| h.to_str().ok());
        if !origin_allowed(origin, host, &policy.cors) {
            let error = ApiError::OriginNotAllowed(origin.to_owned());
            return Ok(refused(request, error, "origin_not_allowed").map_into_right_body());
        }
    }
    next.call(request).await.map(ServiceResponse::map_into_left_body)
}

/// The API key a request presents: `Authorization: Bearer`, `X-API-Key`, or
/// (WebSocket upgrades only, as browsers cannot set headers there) the
/// `api_key` query parameter.
fn presented_key(request: &ServiceRequest) -> Option<String> {
    let headers = request.headers();
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
    {
        return Some(bearer.trim().to_owned());
    }
    if let Some(key) = headers.get(&API_KEY).and_then(|v| v.to_str().ok()) {
        return Some(key.trim().to_owned());
    }
    if request.path() == "/v1/ws" {
        return web::Query::<std::collections::HashMap<String, String>>::from_query(request.query_string())
            .ok()
            .and_then(|query| query.get("api_key").cloned());
    }
    None
}

pub async fn guard(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(policy) = request.app_data::<web::Data<Policy>>().cloned() else {
        return next.call(request).await.map(ServiceResponse::map_into_left_body);
    };
    if !request.path().starts_with("/v1/") && request.path() != "/v1" {
        return next.call(request).await.map(ServiceResponse::map_into_left_body);
    }
    let length = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if length > policy.max_body_bytes {
        let error = ApiError::TooLarge(policy.max_body_bytes);
        return Ok(refused(request, error, "too_large").map_into_right_body());
    }
    let key = presented_key(&request);
    if policy.auth_enabled() {
        match &key {
            None => return Ok(refused(request, ApiError::Unauthorized, "unauthorized").map_into_right_body()),
            Some(key) if !policy.known_key(key.as_bytes()) => {
                return Ok(refused(request, ApiError::BadKey, "forbidden").map_into_right_body());
            }
            Some(_) => {}
        }
    }
    if let Some(limiter) = &policy.limiter {
        // A key counts only once it is known to be valid; otherwise the IP.
        let client = match key.filter(|_| policy.auth_enabled()) {
            Some(key) => key_client(&key),
            None => format!("ip:{}", policy.client_ip(request.head()).map(|ip| ip.to_string()).unwrap_or_default()),
        };
        let outcome = limiter.check(&client).await;
        if let Err(wait) = outcome {
            let mut response = refused(request, ApiError::RateLimited(wait), "rate_limited");
            limiter.headers(response.headers_mut(), outcome);
            return Ok(response.map_into_right_body());
        }
        let mut response = next.call(request).await?.map_into_left_body();
        limiter.headers(response.headers_mut(), outcome);
        return Ok(response);
    }
    next.call(request).await.map(ServiceResponse::map_into_left_body)
}

/// The handler's answer, or 503 once [`ANSWER_DEADLINE`] has passed: a
/// store that accepts connections but never answers must not hold the
/// client. It wraps each resource (`get_only`), so it runs after routing:
/// the 503 is answered with the routed request, whose route the metrics
/// name, and the request can be held twice (routing needs it alone).
pub async fn deadline(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let routed = request.request().clone();
    match tokio::time::timeout(ANSWER_DEADLINE, next.call(request)).await {
        Ok(result) => result.map(ServiceResponse::map_into_left_body),
        Err(_) => {
            let error = ApiError::Unavailable {
                dependency: "a backing store",
                detail: format!("no answer within {} s", ANSWER_DEADLINE.as_secs()),
            };
            let response = actix_web::HttpResponse::from_error(error);
            Ok(ServiceResponse::new(routed, response).map_into_right_body())
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::middleware::from_fn;
    use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
    use actix_web::{App, HttpResponse};

    use super::*;

    #[actix_web::test]
    async fn an_answer_past_the_deadline_is_a_503_counted_under_its_route() {
        // The runtime's clock jumps to the deadline.
        tokio::time::pause();
        // Built as `get_only` builds a resource, not with it: `get_only` adds
        // its path to the served paths the OpenAPI document is checked against.
        let slow = web::resource("/v1/deadline-test/{x}")
            .route(web::get().to(|| async {
                tokio::time::sleep(ANSWER_DEADLINE * 2).await;
                HttpResponse::Ok().finish()
            }))
            .wrap(from_fn(deadline));
        let app = init_service(App::new().service(slow).wrap(from_fn(observe))).await;
        let response = call_service(&app, TestRequest::get().uri("/v1/deadline-test/1").to_request()).await;
        assert_eq!(response.status(), 503);
        let body: serde_json::Value = read_body_json(response).await;
        assert_eq!(body["error"]["code"], "unavailable", "{body}");
        let counted = METRICS.http_requests.with_label_values(&["/v1/deadline-test/{x}", "503"]).get();
        assert_eq!(counted, 1, "the 503 keeps its request, and so its route");
    }

    #[test]
    fn same_origin_is_always_allowed_and_others_only_when_listed() {
        let none = CorsOrigins::List(Vec::new());
        assert!(origin_allowed("http://api.example:8080", Some("api.example:8080"), &none));
        assert!(!origin_allowed("http://evil.example", Some("api.example:8080"), &none));
        assert!(!origin_allowed("null", Some("api.example:8080"), &none));
        let listed = CorsOrigins::List(vec!["https://app.example".into()]);
        assert!(origin_allowed("https://app.example", Some("api.example"), &listed));
        assert!(!origin_allowed("https://app.example.evil", Some("api.example"), &listed));
        assert!(origin_allowed("https://anything", None, &CorsOrigins::Any));
    }
}
