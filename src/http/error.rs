//! One error type for every handler and middleware, mapped to a status and
//! the JSON body `{"error": {"code": "...", "message": "..."}}` in one place.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{param}: {message}")]
    BadParameter { param: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed here; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    Unauthorized,
    #[error("the API key is not valid")]
    BadKey,
    #[error("origin {0:?} is not allowed")]
    OriginNotAllowed(String),
    #[error("too many requests; retry in {} s", ceil_secs(*.0))]
    RateLimited(Duration),
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{dependency} is unavailable: {detail}")]
    Unavailable { dependency: &'static str, detail: String },
}

/// The error body, as the OpenAPI document describes it.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_parameter`, `not_found`,
    /// `method_not_allowed`, `unauthorized`, `forbidden`, `origin_not_allowed`,
    /// `rate_limited`, `too_large`, `unavailable`.
    pub code: &'static str,
    /// Human-readable; names the parameter for `bad_parameter`.
    pub message: String,
}

impl From<crate::read::ReadError> for ApiError {
    fn from(error: crate::read::ReadError) -> ApiError {
        match error {
            crate::read::ReadError::NotFound(message) => ApiError::NotFound(message),
            crate::read::ReadError::Unavailable { dependency, detail } => ApiError::Unavailable { dependency, detail },
        }
    }
}

impl ApiError {
    pub fn bad(param: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadParameter { param, message: message.into() }
    }

    pub fn redis(error: anyhow::Error) -> ApiError {
        ApiError::Unavailable { dependency: "redis", detail: format!("{error:#}") }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadParameter { .. } => "bad_parameter",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Unauthorized => "unauthorized",
            ApiError::BadKey => "forbidden",
            ApiError::OriginNotAllowed(_) => "origin_not_allowed",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Whole seconds, rounded up: a client that waits that long is let through.
pub(super) fn ceil_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadKey | ApiError::OriginNotAllowed(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::Unauthorized => {
                response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited(wait) => {
                response.insert_header((header::RETRY_AFTER, ceil_secs(*wait).max(1).to_string()));
            }
            ApiError::MethodNotAllowed(allow) => {
                response.insert_header((header::ALLOW, *allow));
            }
            _ => {}
        }
        response.json(ErrorBody { error: ErrorDetail { code: self.code(), message: self.to_string() } })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        let header_of = |wait| {
            let response = ApiError::RateLimited(wait).error_response();
            response.headers().get(header::RETRY_AFTER).unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(header_of(Duration::from_millis(10)), "1");
        assert_eq!(header_of(Duration::from_millis(1500)), "2");
        assert_eq!(header_of(Duration::ZERO), "1");
    }

    #[test]
    fn statuses_are_mapped_in_one_place() {
        assert_eq!(ApiError::bad("limit", "x").status_code(), StatusCode::BAD_REQUEST);
        assert_eq!(ApiError::Unauthorized.status_code(), StatusCode::UNAUTHORIZED);
        assert_eq!(ApiError::BadKey.status_code(), StatusCode::FORBIDDEN);
        let response = ApiError::MethodNotAllowed("GET").error_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers().get(header::ALLOW).unwrap(), "GET");
        assert_eq!(ApiError::redis(anyhow::anyhow!("down")).status_code(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
