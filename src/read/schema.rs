//! How the OpenAPI document describes the domain values the read model
//! serializes: the domain types themselves carry no OpenAPI derives. Each
//! type here is the shape of one domain type on the wire, under its name;
//! the REST tests validate real answers against the served document, so a
//! shape that drifts from what is serialized fails them.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Both are decimal strings on the wire.
fn decimal_string(description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^-?[0-9]+(\.[0-9]+)?$"))
        .description(Some(description))
        .examples([serde_json::json!("4201.5")])
        .into()
}

/// The shape of `domain::Amount`.
pub struct AmountDoc;

impl PartialSchema for AmountDoc {
    fn schema() -> RefOr<Schema> {
        decimal_string("Exact decimal amount (up to 9 fractional digits).")
    }
}

impl ToSchema for AmountDoc {
    fn name() -> Cow<'static, str> {
        "Amount".into()
    }
}

/// The shape of `domain::Price`.
pub struct PriceDoc;

impl PartialSchema for PriceDoc {
    fn schema() -> RefOr<Schema> {
        decimal_string("Decimal price, rounded to 12 significant digits.")
    }
}

impl ToSchema for PriceDoc {
    fn name() -> Cow<'static, str> {
        "Price".into()
    }
}

// The shape of `domain::aggregate::Totals`.
/// All-time totals of a token or pair.
#[derive(ToSchema)]
#[schema(as = Totals)]
#[allow(dead_code)]
pub struct TotalsDoc {
    #[schema(value_type = AmountDoc)]
    volume_usd: (),
    /// The part of `volume_usd` that buys moved (of the token; of a pair's
    /// first symbol).
    #[schema(value_type = AmountDoc)]
    buy_volume_usd: (),
    /// The part of `volume_usd` that sells moved.
    #[schema(value_type = AmountDoc)]
    sell_volume_usd: (),
    swaps: u64,
    buys: u64,
    sells: u64,
    /// RFC 3339 UTC.
    first_seen: Option<String>,
    /// RFC 3339 UTC.
    last_seen: Option<String>,
}

// The shape of `domain::window::Window`.
/// A rolling window's figures: the swaps whose time is within its length
/// of the second `updated_at` is in, that second included (and any ahead
/// of the clock).
#[derive(ToSchema)]
#[schema(as = Window)]
#[allow(dead_code)]
pub struct WindowDoc {
    #[schema(value_type = AmountDoc)]
    volume_usd: (),
    /// The part of `volume_usd` that buys moved (of the token; of a pair's
    /// first symbol).
    #[schema(value_type = AmountDoc)]
    buy_volume_usd: (),
    /// The part of `volume_usd` that sells moved.
    #[schema(value_type = AmountDoc)]
    sell_volume_usd: (),
    swaps: u64,
    buys: u64,
    sells: u64,
    #[schema(value_type = Option<PriceDoc>)]
    price_usd: (),
    #[schema(value_type = Option<PriceDoc>)]
    price_change_pct: (),
    #[schema(value_type = Option<PriceDoc>)]
    high: (),
    #[schema(value_type = Option<PriceDoc>)]
    low: (),
    /// Distinct makers (wallets) of its swaps: exact up to 128; beyond, a
    /// HyperLogLog estimate with a standard error of 3.25 % (within 10 %).
    makers: u64,
}

// The shape of `domain::aggregate::Candle`.
/// One OHLCV bucket.
#[derive(ToSchema)]
#[schema(as = Candle)]
#[allow(dead_code)]
pub struct CandleDoc {
    /// Bucket start, unix seconds.
    t: i64,
    #[schema(value_type = PriceDoc)]
    open: (),
    #[schema(value_type = PriceDoc)]
    high: (),
    #[schema(value_type = PriceDoc)]
    low: (),
    #[schema(value_type = PriceDoc)]
    close: (),
    #[schema(value_type = AmountDoc)]
    volume_usd: (),
    swaps: u64,
}
