//! One error type for every handler, mapped to a status and the JSON body
//! `{"error": {"code": "...", "message": "..."}}` in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{param}: {message}")]
    BadParameter { param: &'static str, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{dependency} is unavailable: {detail}")]
    Unavailable { dependency: &'static str, detail: String },
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
            ApiError::Unavailable { .. } => "unavailable",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadParameter { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .json(json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}
