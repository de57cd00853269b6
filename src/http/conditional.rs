//! Conditional reads: a 200 to a GET under `/v1/` carries an `ETag`, a
//! digest of its body, and `Cache-Control: no-cache` (a client or proxy
//! may keep the answer but must ask again: the figures move with every
//! swap). A request whose `If-None-Match` names the current tag gets 304
//! without the body, so a poller that finds nothing new costs a header.
//!
//! The tag is weak (`W/"…"`): compression may give the same answer other
//! bytes on the wire. It is the same on every instance for the same body.

use actix_web::body::{to_bytes, BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;

/// Adds the validators, and answers 304 when the client has the answer.
pub async fn validators(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let cacheable = request.method() == Method::GET && request.path().starts_with("/v1/") && request.path() != "/v1/ws";
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let response = next.call(request).await?;
    if !cacheable || response.status() != StatusCode::OK {
        return Ok(response.map_into_boxed_body());
    }
    let (request, response) = response.into_parts();
    let (response, body) = response.into_parts();
    // A body already in memory is taken as it is; only a stream is read.
    let body = match body.try_into_bytes() {
        Ok(bytes) => bytes,
        Err(body) => to_bytes(body)
            .await
            .map_err(|e| actix_web::error::ErrorInternalServerError(format!("reading the answer: {}", e.into())))?,
    };
    let tag = etag(&body);
    let not_modified = if_none_match.is_some_and(|list| names(&list, &tag));
    let mut response = if not_modified {
        let mut response = response.set_body(BoxBody::new(()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response.headers_mut().remove(header::CONTENT_TYPE);
        response
    } else {
        response.set_body(BoxBody::new(body))
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_str(&tag).expect("hex digits and quotes"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(ServiceResponse::new(request, response))
}

/// `W/"<16 hex digits>"`: a 64-bit digest of `body`. XXH3 is specified
/// and unseeded here, so every instance (and version) gives one body one
/// tag; a kilobyte costs it a tenth of what SipHash took.
fn etag(body: &[u8]) -> String {
    format!("W/\"{:016x}\"", xxhash_rust::xxh3::xxh3_64(body))
}

/// Whether an `If-None-Match` value names `tag` (weak comparison: `W/`
/// is ignored on both sides), or is `*`.
fn names(if_none_match: &str, tag: &str) -> bool {
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let tag = opaque(tag);
    if_none_match.split(',').any(|candidate| candidate.trim() == "*" || opaque(candidate) == tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_named_weakly_strongly_in_a_list_or_by_a_star() {
        let tag = etag(b"{\"token\":\"ETH\"}");
        assert!(tag.starts_with("W/\"") && tag.ends_with('"') && tag.len() == 20, "{tag}");
        let strong = tag.trim_start_matches("W/");
        assert!(names(&tag, &tag));
        assert!(names(strong, &tag));
        assert!(names(&format!("\"0000000000000000\", {tag}"), &tag));
        assert!(names("*", &tag));
        assert!(!names("\"0000000000000000\"", &tag));
        assert!(!names("", &tag));
    }

    #[test]
    fn one_body_one_tag_and_another_body_another() {
        assert_eq!(etag(b"a"), etag(b"a"));
        assert_ne!(etag(b"a"), etag(b"b"));
    }
}
