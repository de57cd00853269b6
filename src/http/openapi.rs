//! The OpenAPI 3.1 document, generated from the handlers' annotations and
//! the response types they really serialize; served at `/v1/openapi.json`.

use actix_web::HttpResponse;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::ErrorBody;
use super::tokens;

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
    ),
    components(schemas(ErrorBody)),
    modifiers(&Security),
    tags((name = "tokens"), (name = "pairs")),
)]
pub struct ApiDoc;

/// API keys, when configured: either header.
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
    }
}

pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
