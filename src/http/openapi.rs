//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the response types they really serialize; served at `/v1/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::server::Server;
use utoipa::openapi::Ref;
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::{asyncapi, health, tokens, ws};

#[derive(OpenApi)]
#[openapi(
    info(title = "swapstream", description = "Per-token and per-pair swap aggregates: stats, rolling windows, candles, recent swaps."),
    paths(
        tokens::list_tokens,
        tokens::token_stats,
        tokens::token_candles,
        tokens::token_swaps,
        tokens::list_pairs,
        tokens::pair_stats,
        tokens::pair_candles,
        tokens::pair_swaps,
        ws::stats,
        document,
        asyncapi::document,
        health::healthz,
        health::readyz,
        health::metrics,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security, &CommonResponses),
    tags((name = "tokens"), (name = "pairs"), (name = "websocket", description = "Counts of the WebSocket service; the protocol itself is described by the AsyncAPI document at /v1/asyncapi.json"),
        (name = "health", description = "Probes and metrics: open whatever the API keys"),
        (name = "document", description = "This document, and the AsyncAPI document of the WebSocket")),
)]
pub struct ApiDoc;

/// API keys, when configured: either header. Without keys configured the
/// API is open, so no scheme is required (the empty requirement).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components
            .add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        let none: [&str; 0] = [];
        openapi.security = Some(vec![
            SecurityRequirement::new("bearer", none),
            SecurityRequirement::new("api_key", none),
            SecurityRequirement::default(),
        ]);
        // Relative: the document is served by the API it describes.
        openapi.servers = Some(vec![Server::new("/")]);
    }
}

/// What every `/v1` operation can answer besides its own responses: the
/// key check (401, 403), a method other than GET (405), the rate limit
/// (429) and a store that is down (503), each with the headers that come
/// with it; health paths only the 405.
struct CommonResponses;

impl CommonResponses {
    fn error(description: &str) -> ResponseBuilder {
        let body = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
        ResponseBuilder::new().description(description).content("application/json", body)
    }

    fn header(schema: Type, description: &str) -> utoipa::openapi::header::Header {
        HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(schema)).description(Some(description)).build()
    }

    fn responses() -> [(&'static str, Response); 5] {
        [
            (
                "401",
                Self::error("No API key, while keys are configured")
                    .header("WWW-Authenticate", Self::header(Type::String, "`Bearer`"))
                    .build(),
            ),
            ("403", Self::error("An API key that is not valid, or an origin that is not allowed").build()),
            (
                "405",
                Self::error("A method the path does not serve")
                    .header("Allow", Self::header(Type::String, "The methods the path serves"))
                    .build(),
            ),
            (
                "429",
                Self::error("Over the rate limit of the key or client address")
                    .header("Retry-After", Self::header(Type::Integer, "Seconds until a request is let through"))
                    .build(),
            ),
            ("503", Self::error("A store the answer needs is unavailable").build()),
        ]
    }

    /// The headers of a `/v1` answer let through: its validators, and where
    /// its client stands when a rate limit is configured.
    fn answer_headers() -> [(&'static str, utoipa::openapi::header::Header); 6] {
        [
            ("ETag", Self::header(Type::String, "Weak tag of the body; send it in `If-None-Match` for a 304")),
            ("Cache-Control", Self::header(Type::String, "`no-cache`: keep the answer, but ask again")),
            ("RateLimit-Limit", Self::header(Type::Integer, "With a rate limit: the burst")),
            ("RateLimit-Remaining", Self::header(Type::Integer, "With a rate limit: requests allowed at once now")),
            ("RateLimit-Reset", Self::header(Type::Integer, "With a rate limit: seconds until the bucket is full")),
            ("RateLimit-Policy", Self::header(Type::String, "With a rate limit: `<burst>;w=<seconds to refill it>`")),
        ]
    }
}

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let common = Self::responses();
        let answer_headers = Self::answer_headers();
        for (path, item) in openapi.paths.paths.iter_mut() {
            let Some(operation) = item.get.as_mut() else { continue };
            // Health paths are open and unlimited: only a wrong method applies.
            let api = path.starts_with("/v1/");
            for (status, response) in common.iter().filter(|(status, _)| api || *status == "405") {
                operation.responses.responses.entry((*status).to_owned()).or_insert_with(|| response.clone().into());
            }
            if let Some(utoipa::openapi::RefOr::T(ok)) = operation.responses.responses.get_mut("200").filter(|_| api) {
                for (name, header) in &answer_headers {
                    ok.headers.entry((*name).to_owned()).or_insert_with(|| header.clone());
                }
            }
        }
    }
}

/// The served document, rendered once when the server starts.
pub struct Document(actix_web::web::Bytes);

impl Document {
    pub fn new(recent_cap: usize) -> Document {
        Document(serde_json::to_vec(&configured(recent_cap)).expect("the document serializes").into())
    }
}

/// The document, with the limits this instance is configured with.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "document",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object)))]
pub async fn document(document: actix_web::web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document.0.clone())
}

/// [`ApiDoc`] with the largest swaps `limit` set to `recent_cap`, the swaps
/// kept per token and pair: a client that asks for more is refused, so the
/// document must not promise more.
fn configured(recent_cap: usize) -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    for path in SWAP_PATHS {
        let swaps = document.paths.paths.get_mut(path).and_then(|item| item.get.as_mut());
        let limit = swaps.into_iter().flat_map(|op| op.parameters.iter_mut().flatten()).find(|p| p.name == "limit");
        if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(schema))) =
            limit.and_then(|p| p.schema.as_mut())
        {
            schema.maximum = Some(utoipa::Number::from(recent_cap as u64));
        }
    }
    document
}

/// The paths whose `limit` is at most the swaps kept.
const SWAP_PATHS: [&str; 2] = ["/v1/tokens/{token}/swaps", "/v1/pairs/{pair}/swaps"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_documents_the_answers_every_request_can_get() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = document["paths"].as_object().unwrap();
        assert!(!paths.is_empty());
        for (path, item) in paths.iter().filter(|(path, _)| path.starts_with("/v1/")) {
            let responses = &item["get"]["responses"];
            for status in ["200", "401", "403", "405", "429", "503"] {
                assert!(responses[status].is_object(), "{path}: no {status}");
            }
            assert!(responses["429"]["headers"]["Retry-After"].is_object(), "{path}");
            assert!(responses["405"]["headers"]["Allow"].is_object(), "{path}");
            for header in ["ETag", "Cache-Control", "RateLimit-Remaining", "RateLimit-Policy"] {
                assert!(responses["200"]["headers"][header].is_object(), "{path}: no {header}");
            }
            assert_eq!(
                responses["401"]["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/ErrorBody"
            );
        }
        let health = &paths["/healthz"]["get"];
        assert!(health["responses"]["405"].is_object() && health["responses"]["401"].is_null());
        assert_eq!(health["security"], serde_json::json!([{}]), "health is open whatever the keys");
        // Either key header, or none when the API is open.
        assert_eq!(document["security"], serde_json::json!([{"bearer": []}, {"api_key": []}, {}]));
        assert_eq!(document["servers"][0]["url"], "/");
    }

    #[test]
    fn the_swaps_limit_documented_is_the_one_configured() {
        let document = serde_json::to_value(configured(250)).unwrap();
        for path in SWAP_PATHS {
            let parameters = document["paths"][path]["get"]["parameters"].as_array().unwrap();
            let limit = parameters.iter().find(|p| p["name"] == "limit").unwrap();
            assert_eq!(limit["schema"]["maximum"], 250, "{path}");
        }
    }
}
