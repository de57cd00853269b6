//! Rows to domain values.

use anyhow::Context as _;
use chrono::DateTime;

use crate::domain::makers::Makers;
use crate::domain::partial::{CandlePartial, PricePoint, TotalsPartial};
use crate::domain::{Amount, Price};
use crate::storage::encoding::decode_order;

/// A candle from the columns `t, open, open_at, close, close_at, high, low,
/// volume_usd, swaps, buys, buy_volume_usd, makers` starting at `first`.
pub(super) fn candle_from_row(row: &tokio_postgres::Row, first: usize) -> anyhow::Result<CandlePartial> {
    Ok(CandlePartial {
        t: row.get(first),
        open: PricePoint { price: parse_price(row.get(first + 1))?, at: decode_order(row.get(first + 2))? },
        close: PricePoint { price: parse_price(row.get(first + 3))?, at: decode_order(row.get(first + 4))? },
        high: parse_price(row.get(first + 5))?,
        low: parse_price(row.get(first + 6))?,
        volume_usd: parse_amount(row.get(first + 7))?,
        buy_volume_usd: parse_amount(row.get(first + 10))?,
        swaps: row.get::<_, i64>(first + 8) as u64,
        buys: row.get::<_, i64>(first + 9) as u64,
        makers: Makers::from_bytes(row.get(first + 11))?,
    })
}

/// Totals and pending gauge from the columns `volume_usd, swaps, buys,
/// first_seen_ns, last_price, last_at, pending, buy_volume_usd` starting at
/// `first`.
pub(super) fn totals_from_row(row: &tokio_postgres::Row, first: usize) -> anyhow::Result<(TotalsPartial, i64)> {
    let last = match (row.get::<_, Option<&str>>(first + 4), row.get::<_, Option<&[u8]>>(first + 5)) {
        (Some(price), Some(at)) => Some(PricePoint { price: parse_price(price)?, at: decode_order(at)? }),
        _ => None,
    };
    let first_seen: Option<i64> = row.get(first + 3);
    let totals = TotalsPartial {
        volume_usd: parse_amount(row.get(first))?,
        buy_volume_usd: parse_amount(row.get(first + 7))?,
        swaps: row.get::<_, i64>(first + 1) as u64,
        buys: row.get::<_, i64>(first + 2) as u64,
        first_seen: first_seen.map(DateTime::from_timestamp_nanos),
        last,
    };
    Ok((totals, row.get(first + 6)))
}

fn parse_amount(text: &str) -> anyhow::Result<Amount> {
    Amount::parse(text).with_context(|| format!("bad amount {text:?} in PostgreSQL"))
}

fn parse_price(text: &str) -> anyhow::Result<Price> {
    Price::parse(text).with_context(|| format!("bad price {text:?} in PostgreSQL"))
}
