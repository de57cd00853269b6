//! `/v1/tokens...` and `/v1/pairs...`: live values merged over every Kafka
//! partition from Redis, so the answer is complete whichever partitions this
//! instance owns.

use actix_web::{web, HttpResponse};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use crate::domain::aggregate::Interval;
use crate::domain::partial::{AggKey, Merged, WINDOWS};
use crate::domain::{PairKey, TokenSymbol};
use crate::storage::redis::RedisStore;

/// Largest and default number of candles per answer.
const MAX_CANDLES: usize = 1000;
const DEFAULT_CANDLES: usize = 100;
const MAX_SWAPS: usize = 1000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/tokens", web::get().to(list_tokens))
        .route("/v1/tokens/{token}/stats", web::get().to(token_stats))
        .route("/v1/tokens/{token}/candles", web::get().to(token_candles))
        .route("/v1/tokens/{token}/swaps", web::get().to(token_swaps))
        .route("/v1/pairs", web::get().to(list_pairs))
        .route("/v1/pairs/{pair}/stats", web::get().to(pair_stats))
        .route("/v1/pairs/{pair}/candles", web::get().to(pair_candles));
}

fn token_key(text: &str) -> Result<AggKey, ApiError> {
    TokenSymbol::parse(text).map(AggKey::Token).map_err(|e| ApiError::bad("token", e.to_string()))
}

fn pair_key(text: &str) -> Result<AggKey, ApiError> {
    PairKey::parse(text).map(AggKey::Pair).map_err(|e| ApiError::bad("pair", e.to_string()))
}

async fn known(redis: &RedisStore, key: &AggKey) -> Result<(), ApiError> {
    if redis.has_key(key).await.map_err(ApiError::redis)? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("no swaps seen for {key}")))
    }
}

/// The stats object of DESIGN.md "REST".
pub fn stats_json(key: &AggKey, merged: &Merged, now: DateTime<Utc>) -> Value {
    let mut object = Map::new();
    match key {
        AggKey::Token(token) => object.insert("token".into(), json!(token)),
        AggKey::Pair(pair) => object.insert("pair".into(), json!(pair)),
    };
    object.insert("price_usd".into(), json!(merged.price_usd()));
    object.insert("pending".into(), json!(merged.pending));
    object.insert("totals".into(), json!(merged.totals.to_totals()));
    let windows: Map<String, Value> =
        WINDOWS.iter().map(|(label, length)| ((*label).to_owned(), json!(merged.window(now, *length)))).collect();
    object.insert("windows".into(), Value::Object(windows));
    object.insert("updated_at".into(), json!(crate::domain::swap::format_time(now)));
    Value::Object(object)
}

async fn stats(redis: &RedisStore, key: AggKey) -> Result<Value, ApiError> {
    let now = Utc::now();
    let merged = redis.merged(&key, &[Interval::M1], now.timestamp() - 86_400 - 60).await.map_err(ApiError::redis)?;
    Ok(stats_json(&key, &merged, now))
}

async fn token_stats(redis: web::Data<RedisStore>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = token_key(&path)?;
    known(&redis, &key).await?;
    Ok(HttpResponse::Ok().json(stats(&redis, key).await?))
}

async fn pair_stats(redis: web::Data<RedisStore>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let key = pair_key(&path)?;
    known(&redis, &key).await?;
    Ok(HttpResponse::Ok().json(stats(&redis, key).await?))
}

async fn list(redis: &RedisStore, tokens: bool) -> Result<Vec<Value>, ApiError> {
    let keys = redis.keys().await.map_err(ApiError::redis)?;
    let mut answers = Vec::new();
    for key in keys.into_iter().filter(|k| matches!(k, AggKey::Token(_)) == tokens) {
        answers.push(stats(redis, key).await?);
    }
    Ok(answers)
}

async fn list_tokens(redis: web::Data<RedisStore>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({"tokens": list(&redis, true).await?})))
}

async fn list_pairs(redis: web::Data<RedisStore>) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(json!({"pairs": list(&redis, false).await?})))
}

#[derive(Deserialize)]
struct CandleQuery {
    interval: Option<String>,
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    include_empty: Option<String>,
}

/// Unix seconds or RFC 3339.
fn time_param(param: &'static str, text: &str) -> Result<i64, ApiError> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Ok(seconds);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .map_err(|_| ApiError::bad(param, format!("expected unix seconds or an RFC 3339 time, got {text:?}")))
}

async fn candles(redis: &RedisStore, key: AggKey, query: CandleQuery) -> Result<Value, ApiError> {
    let interval = match query.interval.as_deref() {
        None => Interval::M1,
        Some(text) => Interval::parse(text).ok_or_else(|| {
            ApiError::bad("interval", format!("expected one of 1m, 5m, 15m, 1h, 4h, 1d, got {text:?}"))
        })?,
    };
    let limit = match query.limit.as_deref() {
        None => DEFAULT_CANDLES,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=MAX_CANDLES).contains(n)).ok_or_else(|| {
            ApiError::bad("limit", format!("expected an integer from 1 to {MAX_CANDLES}, got {text:?}"))
        })?,
    };
    let include_empty = match query.include_empty.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(text) => return Err(ApiError::bad("include_empty", format!("expected true or false, got {text:?}"))),
    };
    let to = query.to.as_deref().map(|t| time_param("to", t)).transpose()?.unwrap_or(i64::MAX);
    let from = query.from.as_deref().map(|t| time_param("from", t)).transpose()?.unwrap_or(i64::MIN);
    if from > to {
        return Err(ApiError::bad("from", "must not be after `to`"));
    }
    known(redis, &key).await?;
    let merged = redis.merged(&key, &[interval], from.max(0)).await.map_err(ApiError::redis)?;
    let mut list = merged.candles(interval, from, to, limit);
    if include_empty {
        list = fill_gaps(list, interval, limit);
    }
    let mut object = Map::new();
    match &key {
        AggKey::Token(token) => object.insert("token".into(), json!(token)),
        AggKey::Pair(pair) => object.insert("pair".into(), json!(pair)),
    };
    object.insert("interval".into(), json!(interval));
    object.insert("candles".into(), json!(list));
    Ok(Value::Object(object))
}

/// Fills missing buckets with the previous close and zero volume, keeping
/// the newest `limit`.
fn fill_gaps(
    list: Vec<crate::domain::aggregate::Candle>,
    interval: Interval,
    limit: usize,
) -> Vec<crate::domain::aggregate::Candle> {
    let mut filled: Vec<crate::domain::aggregate::Candle> = Vec::with_capacity(list.len());
    for candle in list {
        if let Some(previous) = filled.last().cloned() {
            let mut t = previous.t + interval.seconds();
            while t < candle.t {
                let close = previous.close;
                filled.push(crate::domain::aggregate::Candle {
                    t,
                    open: close,
                    high: close,
                    low: close,
                    close,
                    volume_usd: crate::domain::Amount::ZERO,
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

async fn token_candles(
    redis: web::Data<RedisStore>,
    path: web::Path<String>,
    query: web::Query<CandleQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = token_key(&path)?;
    Ok(HttpResponse::Ok().json(candles(&redis, key, query.into_inner()).await?))
}

async fn pair_candles(
    redis: web::Data<RedisStore>,
    path: web::Path<String>,
    query: web::Query<CandleQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = pair_key(&path)?;
    Ok(HttpResponse::Ok().json(candles(&redis, key, query.into_inner()).await?))
}

#[derive(Deserialize)]
struct SwapsQuery {
    limit: Option<String>,
}

async fn token_swaps(
    redis: web::Data<RedisStore>,
    path: web::Path<String>,
    query: web::Query<SwapsQuery>,
) -> Result<HttpResponse, ApiError> {
    let key = token_key(&path)?;
    let limit = match query.limit.as_deref() {
        None => 50,
        Some(text) => text.parse::<usize>().ok().filter(|n| (1..=MAX_SWAPS).contains(n)).ok_or_else(|| {
            ApiError::bad("limit", format!("expected an integer from 1 to {MAX_SWAPS}, got {text:?}"))
        })?,
    };
    known(&redis, &key).await?;
    let swaps = redis.recent(&key, limit).await.map_err(ApiError::redis)?;
    let AggKey::Token(token) = key else { unreachable!("token route") };
    Ok(HttpResponse::Ok().json(json!({"token": token, "swaps": swaps})))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::aggregate::Candle;
    use crate::domain::{Amount, Price};

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
