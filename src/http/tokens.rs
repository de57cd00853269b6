//! `/v1/tokens...` and `/v1/pairs...`: parameters parsed and named in
//! errors, answers from [`Live`], bodies typed so the OpenAPI document is
//! generated from what is really served.

use actix_web::{web, HttpResponse};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::get_only;
use crate::domain::aggregate::{Candle, Interval};
use crate::domain::pair::PairError;
use crate::domain::partial::AggKey;
use crate::domain::{Amount, PairKey, TokenSymbol};
use crate::read::rank::Sort;
use crate::read::schema::{AmountDoc, CandleDoc};
use crate::read::stats::StatsBody;
use crate::read::swaps::SwapCursor;
use crate::read::Live;

/// Largest and default number of candles per answer.
const MAX_CANDLES: usize = 1000;
const DEFAULT_CANDLES: usize = 100;
/// Default number of swaps per answer; the most is what is kept
/// (`SWAPSTREAM_RECENT_SWAPS`), so a larger limit is refused, not cut short.
const DEFAULT_SWAPS: usize = 50;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get_only("/v1/tokens", list_tokens))
        .service(get_only("/v1/tokens/{token}/stats", token_stats))
        .service(get_only("/v1/tokens/{token}/candles", token_candles))
        .service(get_only("/v1/tokens/{token}/swaps", token_swaps))
        .service(get_only("/v1/pairs", list_pairs))
        .service(get_only("/v1/pairs/{pair}/stats", pair_stats))
        .service(get_only("/v1/pairs/{pair}/candles", pair_candles))
        .service(get_only("/v1/pairs/{pair}/swaps", pair_swaps));
}

fn token_key(text: &str) -> Result<AggKey, ApiError> {
    TokenSymbol::parse(text).map(AggKey::Token).map_err(|e| ApiError::bad("token", e.to_string()))
}

/// A name of the pair pattern that names no pair (a token with itself, or
/// one that splits into two symbols in two ways) is not found: the
/// document's pattern cannot tell those apart, so they are not bad requests.
fn pair_key(text: &str) -> Result<AggKey, ApiError> {
    PairKey::parse(text).map(AggKey::Pair).map_err(|e| match e {
        PairError::SameToken(_) | PairError::Ambiguous(_) => ApiError::NotFound(format!("no pair {text:?}: {e}")),
        PairError::Shape(_) | PairError::Symbol(_) => ApiError::bad("pair", e.to_string()),
    })
}

/// The `token` or the `pair` field of an answer about `key`.
fn named(key: AggKey) -> (Option<TokenSymbol>, Option<PairKey>) {
    match key {
        AggKey::Token(token) => (Some(token), None),
        AggKey::Pair(pair) => (None, Some(pair)),
    }
}

fn json_response(body: web::Bytes) -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(body)
}

#[utoipa::path(get, path = "/v1/tokens/{token}/stats", tag = "tokens",
    params(("token" = String, Path, description = "Token symbol, case-insensitive", example = "ETH", pattern = "^[A-Za-z0-9._-]{1,16}$")),
    responses((status = 200, body = StatsBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn token_stats(live: web::Data<Live>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(json_response(live.stats(&token_key(&path)?).await?))
}

#[utoipa::path(get, path = "/v1/pairs/{pair}/stats", tag = "pairs",
    params(("pair" = String, Path, description = "Two symbols joined by `-`, either order", example = "ETH-USDC", pattern = "^[A-Za-z0-9._-]{1,16}-[A-Za-z0-9._-]{1,16}$")),
    responses((status = 200, body = StatsBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn pair_stats(live: web::Data<Live>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    Ok(json_response(live.stats(&pair_key(&path)?).await?))
}

/// Largest and default page of the lists.
const MAX_LISTED: usize = 1000;
const DEFAULT_LISTED: usize = 100;

/// Query of `/v1/tokens` and `/v1/pairs`: pages in name order, or sorted by
/// a window's figure.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many (1 to 1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the page before: the keys after it. In name
    /// order any name; sorted, a name stands for its place in the ranking
    /// (past the end when not ranked).
    #[param(pattern = "^[A-Za-z0-9._-]{1,50}$")]
    cursor: Option<String>,
    /// Sort by a window's figure instead of the name: volume (USD), swaps,
    /// price change or distinct makers, of the 5m, 1h, 6h or 24h window.
    /// Keys without the figure (no price change) come last; ties by name.
    /// The ranking is at most `SWAPSTREAM_RANK_MAX_AGE_MS` old.
    #[param(pattern = "^(volume|swaps|price_change|makers)_(5m|1h|6h|24h)$", example = "volume_24h")]
    sort: Option<String>,
    /// With `sort`: `desc` (most first, the default) or `asc`; name order
    /// is ascending only.
    #[param(pattern = "^(asc|desc)$")]
    order: Option<String>,
    /// Only names starting with this, case-insensitive (for a pair, its
    /// name as listed: the two symbols in alphabetical order).
    #[param(pattern = "^[A-Za-z0-9._-]{1,33}$")]
    prefix: Option<String>,
}

/// `{"<field>": [stats, ...], "next_cursor": ...}`: one page, each key's
/// rendered stats.
async fn list(live: &Live, field: &str, tokens: bool, query: &ListQuery) -> Result<HttpResponse, ApiError> {
    let limit = limit_param(query.limit.as_deref(), DEFAULT_LISTED, MAX_LISTED)?;
    let text = |param: &'static str, value: &Option<String>, most: usize| -> Result<Option<String>, ApiError> {
        let Some(value) = value else { return Ok(None) };
        let valid = (1..=most).contains(&value.len())
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(ApiError::bad(param, format!("expected 1 to {most} of A-Z 0-9 . _ -, got {value:?}")));
        }
        Ok(Some(value.clone()))
    };
    let cursor = text("cursor", &query.cursor, 50)?;
    let prefix = text("prefix", &query.prefix, 33)?.unwrap_or_default().to_ascii_uppercase();
    let descending = match query.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(ApiError::bad("order", format!("expected asc or desc, got {other:?}"))),
    };
    let sort = query.sort.as_deref().map(|sort| Sort::parse(sort, descending)).transpose();
    let sort = sort.map_err(|e| ApiError::bad("sort", e))?;
    let (keys, next) = match sort {
        Some(sort) => live.sorted_page(tokens, sort, &prefix, cursor.as_deref(), limit).await?,
        None => {
            let cursor = cursor.map(|c| c.to_ascii_uppercase());
            live.page(tokens, &prefix, cursor.as_deref(), limit).await?
        }
    };
    let stats = live.page_stats(&keys).await?;
    let mut body = format!("{{\"{field}\":[").into_bytes();
    for (i, stats) in stats.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(stats);
    }
    body.extend_from_slice(b"],\"next_cursor\":");
    body.extend_from_slice(serde_json::to_string(&next).expect("JSON").as_bytes());
    body.push(b'}');
    Ok(json_response(body.into()))
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TokensBody {
    /// In name order, or as `sort` asks.
    tokens: Vec<StatsBody>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct PairsBody {
    /// In name order, or as `sort` asks.
    pairs: Vec<StatsBody>,
    /// Pass as `cursor` for the next page; null on the last.
    next_cursor: Option<String>,
}

#[utoipa::path(get, path = "/v1/tokens", tag = "tokens", params(ListQuery),
    responses((status = 200, body = TokensBody), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_tokens(live: web::Data<Live>, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    list(&live, "tokens", true, &query).await
}

#[utoipa::path(get, path = "/v1/pairs", tag = "pairs", params(ListQuery),
    responses((status = 200, body = PairsBody), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_pairs(live: web::Data<Live>, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    list(&live, "pairs", false, &query).await
}

/// Query of the candles endpoints. Values are parsed by hand so that a bad
/// one is named in the error.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CandleQuery {
    /// Bucket length.
    #[param(value_type = Option<CandleInterval>)]
    interval: Option<String>,
    /// Earliest bucket start: unix seconds or RFC 3339.
    #[param(schema_with = time_schema, example = "2026-11-25T08:00:00Z")]
    from: Option<String>,
    /// Latest bucket start: unix seconds or RFC 3339. Before `from`: no candles.
    #[param(schema_with = time_schema)]
    to: Option<String>,
    /// Newest this many buckets (1 to 1000, default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// Fill buckets without swaps with the previous close and zero volume.
    #[param(value_type = Option<bool>)]
    include_empty: Option<String>,
}

/// The candle intervals, for the OpenAPI document.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum CandleInterval {
    #[schema(rename = "1m")]
    M1,
    #[schema(rename = "5m")]
    M5,
    #[schema(rename = "15m")]
    M15,
    #[schema(rename = "1h")]
    H1,
    #[schema(rename = "4h")]
    H4,
    #[schema(rename = "1d")]
    D1,
}

#[derive(Serialize, ToSchema)]
pub struct CandlesBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH")]
    token: Option<TokenSymbol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH-USDC")]
    pair: Option<PairKey>,
    #[schema(value_type = CandleInterval)]
    interval: Interval,
    /// Oldest first.
    #[schema(value_type = Vec<CandleDoc>)]
    candles: Vec<Candle>,
}

/// The unix seconds a time parameter may be: years 1 to 9999, as in RFC 3339.
const EARLIEST: i64 = -62_135_596_800;
const LATEST: i64 = 253_402_300_799;

/// Unix seconds (years 1 to 9999) or RFC 3339.
fn time_param(param: &'static str, text: &str) -> Result<i64, ApiError> {
    let seconds = match text.parse::<i64>() {
        Ok(seconds) => Some(seconds).filter(|s| (EARLIEST..=LATEST).contains(s)),
        Err(_) => DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp()),
    };
    seconds.ok_or_else(|| {
        ApiError::bad(
            param,
            format!("expected unix seconds ({EARLIEST} to {LATEST}) or an RFC 3339 time, got {text:?}"),
        )
    })
}

/// A time parameter in the OpenAPI document: an integer in range, or a date-time.
fn time_schema() -> utoipa::openapi::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(EARLIEST)).maximum(Some(LATEST)))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime))),
        )
        .build()
        .into()
}

fn limit_param(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    match text.map(|t| (t, t.parse::<usize>())) {
        None => Ok(default),
        Some((_, Ok(n))) if (1..=max).contains(&n) => Ok(n),
        Some((_, Ok(n))) if n > max => Err(ApiError::bad("limit", format!("at most {max}, got {n}"))),
        Some((text, _)) => Err(ApiError::bad("limit", format!("expected an integer from 1 to {max}, got {text:?}"))),
    }
}

async fn candles(live: &Live, key: AggKey, query: CandleQuery) -> Result<HttpResponse, ApiError> {
    let interval = match query.interval.as_deref() {
        None => Interval::M1,
        Some(text) => Interval::parse(text).ok_or_else(|| {
            ApiError::bad("interval", format!("expected one of 1m, 5m, 15m, 1h, 4h, 1d, got {text:?}"))
        })?,
    };
    let limit = limit_param(query.limit.as_deref(), DEFAULT_CANDLES, MAX_CANDLES)?;
    let include_empty = match query.include_empty.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(text) => return Err(ApiError::bad("include_empty", format!("expected true or false, got {text:?}"))),
    };
    let to = query.to.as_deref().map(|t| time_param("to", t)).transpose()?.unwrap_or(i64::MAX);
    let from = query.from.as_deref().map(|t| time_param("from", t)).transpose()?.unwrap_or(0);
    // `from` after `to` is an empty range: no candles, once the key is known.
    let mut list = live.candles(&key, interval, from, to.max(from), limit).await?;
    if from > to {
        list.clear();
    }
    if include_empty {
        list = fill_gaps(list, interval, limit);
    }
    let (token, pair) = named(key);
    Ok(HttpResponse::Ok().json(CandlesBody { token, pair, interval, candles: list }))
}

/// Fills missing buckets with the previous close and zero volume, keeping
/// the newest `limit`.
fn fill_gaps(list: Vec<Candle>, interval: Interval, limit: usize) -> Vec<Candle> {
    let mut filled: Vec<Candle> = Vec::with_capacity(list.len());
    for candle in list {
        if let Some(previous) = filled.last().cloned() {
            let mut t = previous.t + interval.seconds();
            while t < candle.t {
                let close = previous.close;
                filled.push(Candle {
                    t,
                    open: close,
                    high: close,
                    low: close,
                    close,
                    volume_usd: Amount::ZERO,
                    swaps: 0,
                });
                t += interval.seconds();
            }
        }
        filled.push(candle);
    }
    let skip = filled.len().saturating_sub(limit);
    filled.split_off(skip)
}

#[utoipa::path(get, path = "/v1/tokens/{token}/candles", tag = "tokens",
    params(("token" = String, Path, description = "Token symbol, case-insensitive", example = "ETH", pattern = "^[A-Za-z0-9._-]{1,16}$"), CandleQuery),
    responses((status = 200, body = CandlesBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn token_candles(
    live: web::Data<Live>,
    path: web::Path<String>,
    query: web::Query<CandleQuery>,
) -> Result<HttpResponse, ApiError> {
    candles(&live, token_key(&path)?, query.into_inner()).await
}

#[utoipa::path(get, path = "/v1/pairs/{pair}/candles", tag = "pairs",
    params(("pair" = String, Path, description = "Two symbols joined by `-`, either order", example = "ETH-USDC", pattern = "^[A-Za-z0-9._-]{1,16}-[A-Za-z0-9._-]{1,16}$"),
        CandleQuery),
    responses((status = 200, body = CandlesBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn pair_candles(
    live: web::Data<Live>,
    path: web::Path<String>,
    query: web::Query<CandleQuery>,
) -> Result<HttpResponse, ApiError> {
    candles(&live, pair_key(&path)?, query.into_inner()).await
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SwapsQuery {
    /// Newest this many swaps (1 to the swaps kept per token and pair,
    /// `SWAPSTREAM_RECENT_SWAPS`, default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The `next_cursor` of the page before: the swaps older than its last.
    #[param(pattern = "^[0-9a-f]{104}$")]
    before: Option<String>,
}

/// A swap event in the JSON wire form (DESIGN.md "Swap event").
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct SwapDoc {
    #[schema(example = "0x5e1f...")]
    tx_hash: String,
    log_index: u32,
    block_number: Option<u64>,
    /// RFC 3339 UTC.
    timestamp: String,
    #[schema(example = "confirmed")]
    status: String,
    maker: Option<String>,
    token_from: String,
    token_to: String,
    #[schema(value_type = AmountDoc)]
    amount_from: Amount,
    #[schema(value_type = AmountDoc)]
    amount_to: Amount,
    #[schema(value_type = AmountDoc)]
    usd_value: Amount,
}

#[derive(Serialize, ToSchema)]
pub struct SwapsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH")]
    token: Option<TokenSymbol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH-USDC")]
    pair: Option<PairKey>,
    /// Newest first.
    #[schema(value_type = Vec<SwapDoc>)]
    swaps: Vec<Value>,
    /// Pass as `before` for the next (older) page; null when this page is
    /// not full. Older pages come from what PostgreSQL keeps: the recent
    /// swaps of each partition, and the swap history where one is kept
    /// (`SWAPSTREAM_SWAP_HISTORY_SECS`).
    #[schema(value_type = Option<String>, pattern = "^[0-9a-f]{104}$")]
    next_cursor: Option<String>,
}

async fn swaps(live: &Live, key: AggKey, query: &SwapsQuery) -> Result<HttpResponse, ApiError> {
    let max = live.recent_cap();
    let limit = limit_param(query.limit.as_deref(), DEFAULT_SWAPS.min(max), max)?;
    let before =
        query.before.as_deref().map(str::parse::<SwapCursor>).transpose().map_err(|e| ApiError::bad("before", e))?;
    let page = live.swaps(&key, limit, before.as_ref()).await?;
    let (token, pair) = named(key);
    let next_cursor = page.next.map(|c| c.to_string());
    Ok(HttpResponse::Ok().json(SwapsBody { token, pair, swaps: page.swaps, next_cursor }))
}

#[utoipa::path(get, path = "/v1/tokens/{token}/swaps", tag = "tokens",
    params(("token" = String, Path, description = "Token symbol, case-insensitive", example = "ETH", pattern = "^[A-Za-z0-9._-]{1,16}$"), SwapsQuery),
    responses((status = 200, body = SwapsBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn token_swaps(
    live: web::Data<Live>,
    path: web::Path<String>,
    query: web::Query<SwapsQuery>,
) -> Result<HttpResponse, ApiError> {
    swaps(&live, token_key(&path)?, &query).await
}

#[utoipa::path(get, path = "/v1/pairs/{pair}/swaps", tag = "pairs",
    params(("pair" = String, Path, description = "Two symbols joined by `-`, either order", example = "ETH-USDC", pattern = "^[A-Za-z0-9._-]{1,16}-[A-Za-z0-9._-]{1,16}$"),
        SwapsQuery),
    responses((status = 200, body = SwapsBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub async fn pair_swaps(
    live: web::Data<Live>,
    path: web::Path<String>,
    query: web::Query<SwapsQuery>,
) -> Result<HttpResponse, ApiError> {
    swaps(&live, pair_key(&path)?, &query).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Price;

    fn candle(t: i64, close: &str) -> Candle {
        let price = Price::parse(close).unwrap();
        Candle {
            t,
            open: price,
            high: price,
            low: price,
            close: price,
            volume_usd: Amount::parse("1").unwrap(),
            swaps: 1,
        }
    }

    #[test]
    fn gaps_are_filled_with_the_previous_close_and_no_volume() {
        let filled = fill_gaps(vec![candle(60, "10"), candle(240, "12")], Interval::M1, 100);
        let times: Vec<i64> = filled.iter().map(|c| c.t).collect();
        assert_eq!(times, [60, 120, 180, 240]);
        assert_eq!(filled[1].open, Price::parse("10").unwrap());
        assert_eq!((filled[2].swaps, filled[2].volume_usd), (0, Amount::ZERO));
        assert_eq!(fill_gaps(vec![candle(60, "10"), candle(240, "12")], Interval::M1, 2).len(), 2);
    }

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(time_param("from", "1764057600").unwrap(), 1_764_057_600);
        assert_eq!(time_param("from", "2025-11-25T08:00:00Z").unwrap(), 1_764_057_600);
        assert!(matches!(time_param("from", "soon"), Err(ApiError::BadParameter { param: "from", .. })));
    }
}
