//! The JSON encoding of the wire contract.
//!
//! Each field is read as raw JSON first and converted by hand, so a wrong
//! type is reported with the field's name, and numbers keep their exact
//! decimal text instead of passing through `f64`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::DecodeError;
use crate::domain::swap::quoted;
use crate::domain::{FieldError, RawSwap, RawTime, SwapEvent};

#[derive(Deserialize)]
struct JsonSwap<'a> {
    #[serde(borrow)]
    tx_hash: Option<&'a RawValue>,
    #[serde(borrow)]
    log_index: Option<&'a RawValue>,
    #[serde(borrow)]
    block_number: Option<&'a RawValue>,
    #[serde(borrow)]
    timestamp: Option<&'a RawValue>,
    #[serde(borrow)]
    status: Option<&'a RawValue>,
    #[serde(borrow)]
    maker: Option<&'a RawValue>,
    #[serde(borrow)]
    token_from: Option<&'a RawValue>,
    #[serde(borrow)]
    token_to: Option<&'a RawValue>,
    #[serde(borrow)]
    amount_from: Option<&'a RawValue>,
    #[serde(borrow)]
    amount_to: Option<&'a RawValue>,
    #[serde(borrow)]
    usd_value: Option<&'a RawValue>,
}

pub(super) fn decode(payload: &[u8]) -> Result<RawSwap, DecodeError> {
    let json: JsonSwap = serde_json::from_slice(payload).map_err(|e| DecodeError::Json(e.to_string()))?;
    Ok(RawSwap {
        tx_hash: string("tx_hash", json.tx_hash)?,
        log_index: unsigned("log_index", json.log_index)?,
        block_number: unsigned("block_number", json.block_number)?,
        timestamp: string("timestamp", json.timestamp)?.map(RawTime::Rfc3339),
        status: string("status", json.status)?,
        maker: string("maker", json.maker)?,
        token_from: string("token_from", json.token_from)?,
        token_to: string("token_to", json.token_to)?,
        amount_from: decimal("amount_from", json.amount_from)?,
        amount_to: decimal("amount_to", json.amount_to)?,
        usd_value: decimal("usd_value", json.usd_value)?,
    })
}

/// `null` counts as absent.
fn present(raw: Option<&RawValue>) -> Option<&str> {
    raw.map(RawValue::get).filter(|text| *text != "null")
}

fn string(field: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, FieldError> {
    let Some(text) = present(raw) else { return Ok(None) };
    serde_json::from_str::<String>(text)
        .map(Some)
        .map_err(|_| FieldError::new(field, format!("expected a string, got {}", quoted(text))))
}

fn unsigned(field: &'static str, raw: Option<&RawValue>) -> Result<Option<u64>, FieldError> {
    let Some(text) = present(raw) else { return Ok(None) };
    serde_json::from_str::<u64>(text)
        .map(Some)
        .map_err(|_| FieldError::new(field, format!("expected a non-negative integer, got {}", quoted(text))))
}

/// A JSON string holding a decimal, or a JSON number taken by its text.
fn decimal(field: &'static str, raw: Option<&RawValue>) -> Result<Option<String>, FieldError> {
    let Some(text) = present(raw) else { return Ok(None) };
    let is_number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
    if is_number {
        Ok(Some(text.to_owned()))
    } else if text.starts_with('"') {
        string(field, raw)
    } else {
        Err(FieldError::new(field, format!("expected a decimal string or number, got {}", quoted(text))))
    }
}

pub(super) fn encode(event: &SwapEvent) -> Vec<u8> {
    event.wire_json().into_bytes()
}
