//! `/healthz` (the process answers), `/readyz` (its dependencies answer) and
//! `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::json;
use utoipa::ToSchema;

/// One dependency check: a name and a probe.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>> + Send + Sync>;

/// What `/readyz` checks.
#[derive(Clone, Default)]
pub struct Readiness {
    pub probes: Vec<(&'static str, Probe)>,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `/healthz`: the process answers.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct HealthBody {
    #[schema(example = "ok")]
    status: String,
}

/// `/readyz`: every dependency's answer by name (`ok`, or `unreachable: ...`).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ReadyBody {
    /// `ready` or `not_ready`.
    #[schema(example = "ready")]
    status: String,
    checks: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "The process answers", body = HealthBody)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

impl Readiness {
    /// Runs every probe: whether all answered, and each one's answer by
    /// name. Keeps `swapstream_ready` equal to the outcome.
    pub async fn check(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut checks = serde_json::Map::new();
        let mut ready = true;
        for (name, probe) in &self.probes {
            let result = match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                Ok(Ok(())) => "ok".to_owned(),
                Ok(Err(e)) => format!("unreachable: {e:#}"),
                Err(_) => format!("unreachable: no answer within {PROBE_TIMEOUT:?}"),
            };
            ready &= result == "ok";
            checks.insert((*name).to_owned(), result.into());
        }
        crate::metrics::METRICS.ready.set(i64::from(ready));
        (ready, checks)
    }
}

/// Checks readiness every `interval`, so that `swapstream_ready` stays
/// current where nothing calls `/readyz` (Docker Compose checks `/healthz`).
pub async fn refresh_readiness(readiness: Readiness, interval: Duration) {
    loop {
        readiness.check().await;
        tokio::time::sleep(interval).await;
    }
}

#[utoipa::path(get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, description = "Every dependency answers", body = ReadyBody),
        (status = 503, description = "A dependency does not answer; `checks` says which", body = ReadyBody)))]
pub async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let (ready, checks) = readiness.check().await;
    let body = json!({"status": if ready { "ready" } else { "not_ready" }, "checks": checks});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", security(()),
    responses((status = 200, description = "Prometheus text format 0.0.4", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(crate::metrics::render())
}

/// `swapstream healthcheck --url`: a plain HTTP/1.1 GET for container
/// health checks (the runtime image has no curl). True on a 2xx answer.
pub fn probe_url(url: &str, timeout: Duration) -> Result<(), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("only http:// URLs are supported, got {url:?}"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let address = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("no address for {authority}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).map_err(|e| format!("no answer: {e}"))?;
    let status = std::str::from_utf8(&head[9..12]).unwrap_or("");
    if status.starts_with('2') {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
