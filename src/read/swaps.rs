//! Pages of a key's confirmed swaps, newest first: the first from the
//! actors or Redis (what is recent), each next one from PostgreSQL (the
//! recent swaps of every partition and, where configured, the kept swap
//! history), after the cursor the page before ended with.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::{aggregator_unavailable, not_found, read_from, Live, ReadError};
use crate::domain::partial::{AggKey, Select};
use crate::domain::swap::EventOrder;
use crate::domain::SwapEvent;
use crate::storage::encoding::{decode_order, encode_order, to_hex};

/// Where a page of swaps ended: the event order of its last (oldest) swap;
/// the next page holds the swaps ordered before it. Written as the 104 hex
/// digits of the encoded order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapCursor(pub EventOrder);

impl fmt::Display for SwapCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&encode_order(&self.0)))
    }
}

impl FromStr for SwapCursor {
    type Err = String;

    fn from_str(text: &str) -> Result<SwapCursor, String> {
        let bytes = (text.len() == 104 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| hex::decode(text).ok())
            .flatten()
            .ok_or_else(|| format!("expected the 104 lowercase hex digits of a `next_cursor`, got {text:?}"))?;
        decode_order(&bytes).map(SwapCursor).map_err(|e| e.to_string())
    }
}

/// One page: its swaps in wire form, newest first, and the cursor of the
/// next page when this one is full.
#[derive(Debug)]
pub struct SwapPage {
    pub swaps: Vec<Value>,
    pub next: Option<SwapCursor>,
}

impl Live {
    /// The newest `limit` confirmed swaps of `key` ordered before `before`
    /// (all when `None`), newest first.
    pub async fn swaps(&self, key: &AggKey, limit: usize, before: Option<&SwapCursor>) -> Result<SwapPage, ReadError> {
        let swaps = match before {
            None => self.recent(key, limit).await?,
            Some(cursor) => {
                read_from("postgres");
                let older = self.pg.swaps_before(key, &cursor.0, limit).await.map_err(ReadError::postgres)?;
                if older.is_empty() {
                    self.pg.merged(key).await.map_err(ReadError::postgres)?.ok_or_else(|| not_found(key))?;
                }
                older.iter().map(ordered).collect()
            }
        };
        let next = swaps.last().filter(|_| swaps.len() == limit).map(|(order, _)| SwapCursor(*order));
        Ok(SwapPage { swaps: swaps.into_iter().map(|(_, swap)| swap).collect(), next })
    }

    /// The most recent confirmed swaps of `key`, newest first, wire form,
    /// each with its event order.
    async fn recent(&self, key: &AggKey, limit: usize) -> Result<Vec<(EventOrder, Value)>, ReadError> {
        if let Some(local) = self.complete_local().await {
            read_from("actors");
            let answer = local.query(key, Select::none(), limit).ok_or_else(|| not_found(key))?;
            let (_, swaps) = answer.await.map_err(aggregator_unavailable)?;
            return Ok(swaps.iter().map(|s| ordered(s)).collect());
        }
        if !self.redis.has_key(key).await.map_err(ReadError::redis)? {
            self.pg.merged(key).await.map_err(ReadError::postgres)?.ok_or_else(|| not_found(key))?;
        }
        read_from("redis");
        self.redis.recent(key, limit).await.map_err(ReadError::redis)
    }
}

/// A swap's event order and its wire form.
fn ordered(swap: &SwapEvent) -> (EventOrder, Value) {
    (swap.order_key(), serde_json::to_value(swap.to_wire()).expect("JSON"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::swap::tests::minimal_raw;
    use crate::domain::RawSwap;
    use crate::domain::RawTime;

    #[test]
    fn a_cursor_is_the_order_of_the_swap_it_was_made_from_and_reads_back() {
        let swap = RawSwap {
            log_index: Some(7),
            block_number: Some(19_000_001),
            timestamp: Some(RawTime::Rfc3339("2026-12-04T10:00:00.123456789Z".into())),
            ..minimal_raw()
        }
        .validate()
        .unwrap();
        let (order, _) = ordered(&swap);
        let cursor = SwapCursor(order);
        assert_eq!(cursor.0, swap.order_key());
        let text = cursor.to_string();
        assert_eq!(text.len(), 104);
        assert_eq!(text.parse::<SwapCursor>().unwrap(), cursor);
    }

    #[test]
    fn a_cursor_that_is_not_104_lowercase_hex_digits_is_refused_with_the_reason() {
        for bad in ["", "00", &"A".repeat(104), &"0".repeat(103), &"g".repeat(104)] {
            let error = bad.parse::<SwapCursor>().unwrap_err();
            assert!(error.contains("104 lowercase hex digits"), "{bad:?}: {error}");
        }
        assert!("0".repeat(104).parse::<SwapCursor>().is_ok(), "any order is a place to page from");
    }
}
