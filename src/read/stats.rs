//! The stats object of a token or pair, as REST answers it and WebSocket
//! snapshots and `stats` frames carry it: one rendering for both.

use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::schema::{PriceDoc, TotalsDoc, WindowDoc};

use crate::domain::aggregate::Totals;
use crate::domain::partial::{AggKey, Merged};
use crate::domain::window::{self, At, Window, WINDOWS};
use crate::domain::{PairKey, Price, TokenSymbol};

/// The stats object of DESIGN.md "REST": for a token `token`, for a pair `pair`.
#[derive(Serialize, ToSchema)]
pub struct StatsBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH")]
    pub token: Option<TokenSymbol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "ETH-USDC")]
    pub pair: Option<PairKey>,
    /// Last price: in USD for a token, in units of the second symbol for a pair.
    #[schema(value_type = Option<PriceDoc>)]
    pub price_usd: Option<Price>,
    /// Swaps seen pending and not yet confirmed or failed.
    pub pending: i64,
    #[schema(value_type = TotalsDoc)]
    pub totals: Totals,
    pub windows: Windows,
    /// When these figures were computed (RFC 3339 UTC).
    pub updated_at: String,
}

/// Rolling windows ending at `updated_at`.
#[derive(Serialize, ToSchema)]
pub struct Windows {
    #[serde(rename = "5m")]
    #[schema(value_type = WindowDoc)]
    pub m5: Window,
    #[serde(rename = "1h")]
    #[schema(value_type = WindowDoc)]
    pub h1: Window,
    #[serde(rename = "6h")]
    #[schema(value_type = WindowDoc)]
    pub h6: Window,
    #[serde(rename = "24h")]
    #[schema(value_type = WindowDoc)]
    pub h24: Window,
}

impl StatsBody {
    pub fn new(key: &AggKey, merged: &Merged, at: At) -> StatsBody {
        let (token, pair) = match key {
            AggKey::Token(token) => (Some(token.clone()), None),
            AggKey::Pair(pair) => (None, Some(pair.clone())),
        };
        let [m5, h1, h6, h24] = WINDOWS.map(|(_, length)| window::of(&merged.candles, at, length));
        StatsBody {
            token,
            pair,
            price_usd: merged.price_usd(),
            pending: merged.pending,
            totals: merged.totals.to_totals(),
            windows: Windows { m5, h1, h6, h24 },
            updated_at: crate::domain::swap::format_time(at.now),
        }
    }
}

/// The stats object as JSON (for the WebSocket snapshots and frames).
pub fn stats_json(key: &AggKey, merged: &Merged, at: At) -> Value {
    serde_json::to_value(StatsBody::new(key, merged, at)).expect("JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    #[test]
    fn the_windows_are_named_and_ordered_as_the_domain_defines_them() {
        let now = Utc::now();
        let body = stats_json(&AggKey::parse("token:ETH").unwrap(), &Merged::default(), At::with_any_future(now));
        let names: Vec<&str> = body["windows"].as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = WINDOWS.iter().map(|(label, _)| *label).collect();
        expected.sort_unstable();
        let mut names = names;
        names.sort_unstable();
        assert_eq!(names, expected);
    }
}
