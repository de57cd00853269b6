//! Decoding and encoding of swap events: one entry point, [`decode`], for
//! every encoding the wire contract accepts.

mod json;
mod protobuf;

use crate::domain::{FieldError, SwapEvent};

pub const CONTENT_TYPE_HEADER: &str = "content-type";
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-protobuf";
pub const CONTENT_TYPE_JSON: &str = "application/json";

/// Largest event accepted; anything bigger is not a swap.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => CONTENT_TYPE_PROTOBUF,
            Encoding::Json => CONTENT_TYPE_JSON,
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;

    /// `protobuf` or `json`.
    fn from_str(text: &str) -> Result<Encoding, String> {
        match text {
            "protobuf" => Ok(Encoding::Protobuf),
            "json" => Ok(Encoding::Json),
            _ => Err(format!("expected one of protobuf, json, got {text:?}")),
        }
    }
}

/// Why a message is not a valid swap event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("message of {0} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("unsupported content-type {0:?}")]
    UnsupportedContentType(String),
    #[error("malformed protobuf: {0}")]
    Protobuf(String),
    #[error("malformed JSON: {0}")]
    Json(String),
    #[error("invalid field {0}")]
    Invalid(#[from] FieldError),
}

impl DecodeError {
    /// A short stable code, used as the dead-letter `reason` header and as a
    /// metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::UnsupportedContentType(_) => "unsupported_content_type",
            DecodeError::Protobuf(_) => "malformed_protobuf",
            DecodeError::Json(_) => "malformed_json",
            DecodeError::Invalid(_) => "invalid_field",
        }
    }

    /// The offending field, for validation errors.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::Invalid(e) => Some(e.field),
            _ => None,
        }
    }
}

/// Which encoding a message uses: its `content-type` header when present,
/// otherwise JSON for a body starting with `{` and protobuf for anything else.
pub fn detect(payload: &[u8], content_type: Option<&str>) -> Result<Encoding, DecodeError> {
    match content_type {
        Some(header) => {
            let media_type = header.split(';').next().unwrap_or("").trim();
            if media_type.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
                || media_type.eq_ignore_ascii_case("application/protobuf")
            {
                Ok(Encoding::Protobuf)
            } else if media_type.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
                Ok(Encoding::Json)
            } else {
                Err(DecodeError::UnsupportedContentType(crate::domain::swap::quoted(header)))
            }
        }
        None if payload.first() == Some(&b'{') => Ok(Encoding::Json),
        None => Ok(Encoding::Protobuf),
    }
}

/// Decodes and validates one swap event.
pub fn decode(payload: &[u8], content_type: Option<&str>) -> Result<SwapEvent, DecodeError> {
    if payload.is_empty() {
        return Err(DecodeError::Empty);
    }
    if payload.len() > MAX_EVENT_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let raw = match detect(payload, content_type)? {
        Encoding::Protobuf => protobuf::decode(payload)?,
        Encoding::Json => json::decode(payload)?,
    };
    Ok(raw.validate()?)
}

/// Encodes one swap event.
pub fn encode(event: &SwapEvent, encoding: Encoding) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => protobuf::encode(event),
        Encoding::Json => json::encode(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Amount, RawSwap, RawTime, Status, SwapId, TokenSymbol, TxHash};
    use chrono::DateTime;
    use proptest::prelude::*;

    const MINIMAL: &str = r#"{"tx_hash":"0xabababababababababababababababababababababababababababababababab",
        "token_from":"eth","token_to":"USDC","amount_from":"1.5","amount_to":6300.25,"usd_value":"6300.25",
        "timestamp":"2026-11-25T08:00:00.123Z"}"#;

    #[test]
    fn minimal_json_is_accepted_without_a_header() {
        let swap = decode(MINIMAL.as_bytes(), None).unwrap();
        assert_eq!(swap.token_from.as_str(), "ETH");
        assert_eq!(swap.amount_to, Amount::parse("6300.25").unwrap());
        assert_eq!(swap.status, Status::Confirmed);
    }

    #[test]
    fn full_json_from_the_contract_is_accepted() {
        let full = r#"{
          "tx_hash": "0x1111111111111111111111111111111111111111111111111111111111111111",
          "log_index": 3, "block_number": 21000000, "timestamp": "2026-11-25T08:00:00.123Z",
          "status": "pending", "maker": "0x2222222222222222222222222222222222222222",
          "token_from": "ETH", "token_to": "USDC", "amount_from": "1.5", "amount_to": "6300.25",
          "usd_value": 6300.25 }"#;
        let swap = decode(full.as_bytes(), Some("application/json; charset=utf-8")).unwrap();
        assert_eq!(swap.id.log_index, 3);
        assert_eq!(swap.block_number, Some(21_000_000));
        assert_eq!(swap.status, Status::Pending);
        assert_eq!(swap.usd_value, Amount::parse("6300.25").unwrap());
    }

    #[test]
    fn json_numbers_parse_exactly() {
        let text = MINIMAL.replace("6300.25,", "0.30000000000000001,");
        assert_eq!(decode(text.as_bytes(), None).unwrap().amount_to, Amount::parse("0.3").unwrap());
        let text = MINIMAL.replace("6300.25,", "123456789012345.123456789,");
        assert_eq!(decode(text.as_bytes(), None).unwrap().amount_to.to_string(), "123456789012345.123456789");
    }

    #[test]
    fn json_type_errors_name_the_field() {
        let cases = [
            (MINIMAL.replace(r#""tx_hash":"#, r#""log_index":"one","tx_hash":"#), "log_index"),
            (MINIMAL.replace(r#""tx_hash":"#, r#""log_index":-1,"tx_hash":"#), "log_index"),
            (MINIMAL.replace(r#""tx_hash":"#, r#""block_number":1.5,"tx_hash":"#), "block_number"),
            (MINIMAL.replace(r#""token_from":"eth""#, r#""token_from":7"#), "token_from"),
            (MINIMAL.replace("6300.25,", "true,"), "amount_to"),
            (MINIMAL.replace("6300.25,", "[1],"), "amount_to"),
        ];
        for (text, field) in cases {
            let error = decode(text.as_bytes(), None).unwrap_err();
            assert_eq!(error.field(), Some(field), "{error}");
            assert_eq!(error.reason(), "invalid_field");
        }
    }

    #[test]
    fn json_null_means_absent() {
        let text = MINIMAL.replace(r#""tx_hash":"#, r#""maker":null,"status":null,"tx_hash":"#);
        let swap = decode(text.as_bytes(), None).unwrap();
        assert_eq!((swap.maker, swap.status), (None, Status::Confirmed));
    }

    #[test]
    fn malformed_json_is_reported_as_such() {
        for bad in ["{", "{\"tx_hash\":", "{}}", "{nul}"] {
            let error = decode(bad.as_bytes(), None).unwrap_err();
            assert_eq!(error.reason(), "malformed_json", "{bad}: {error}");
        }
        let not_object = decode(b"[1,2]", Some(CONTENT_TYPE_JSON)).unwrap_err();
        assert_eq!(not_object.reason(), "malformed_json");
    }

    #[test]
    fn duplicate_json_keys_are_refused() {
        let text = MINIMAL.replace(r#""tx_hash":"#, r#""usd_value":"1","tx_hash":"#);
        assert_eq!(decode(text.as_bytes(), None).unwrap_err().reason(), "malformed_json");
    }

    #[test]
    fn garbage_without_a_header_is_malformed_protobuf() {
        let error = decode(&[0xff, 0xff, 0xff, 0x01], None).unwrap_err();
        assert_eq!(error.reason(), "malformed_protobuf");
    }

    #[test]
    fn empty_oversized_and_unknown_content_types_are_refused() {
        assert_eq!(decode(b"", None).unwrap_err(), DecodeError::Empty);
        assert_eq!(
            decode(&vec![b' '; MAX_EVENT_BYTES + 1], None).unwrap_err(),
            DecodeError::TooLarge(MAX_EVENT_BYTES + 1)
        );
        assert_eq!(decode(MINIMAL.as_bytes(), Some("text/csv")).unwrap_err().reason(), "unsupported_content_type");
    }

    #[test]
    fn protobuf_without_required_fields_names_the_first_missing_one() {
        let error = decode(&[], Some(CONTENT_TYPE_PROTOBUF)).unwrap_err();
        assert_eq!(error, DecodeError::Empty);
        // Only log_index set: tx_hash is the first required field missing.
        let error = decode(&[0x10, 0x01], Some(CONTENT_TYPE_PROTOBUF)).unwrap_err();
        assert_eq!(error, DecodeError::Invalid(FieldError::new("tx_hash", "is required")));
    }

    #[test]
    fn protobuf_unknown_status_is_invalid() {
        let swap = decode(MINIMAL.as_bytes(), None).unwrap();
        let mut bytes = encode(&swap, Encoding::Protobuf);
        bytes.extend_from_slice(&[0x28, 0x09]); // field 5 (status) = 9
        let error = decode(&bytes, Some(CONTENT_TYPE_PROTOBUF)).unwrap_err();
        assert_eq!(error.field(), Some("status"));
    }

    fn token() -> impl Strategy<Value = TokenSymbol> {
        "[A-Z0-9._-]{1,16}".prop_map(|s| TokenSymbol::parse(&s).unwrap())
    }

    prop_compose! {
        fn swap_event()(
            hash in any::<[u8; 32]>(),
            log_index in any::<u32>(),
            block_number in proptest::option::of(any::<u64>()),
            seconds in 0i64..4_000_000_000,
            nanos in 0u32..1_000_000_000,
            status in prop_oneof![Just(Status::Pending), Just(Status::Confirmed), Just(Status::Failed)],
            maker in proptest::option::of(any::<[u8; 20]>()),
            (token_from, token_to) in (token(), token()).prop_filter("tokens differ", |(a, b)| a != b),
            amount_from in 1i128..10i128.pow(27),
            amount_to in 1i128..10i128.pow(27),
            usd_value in 0i128..10i128.pow(27),
        ) -> SwapEvent {
            SwapEvent {
                id: SwapId { tx_hash: TxHash(hash), log_index },
                block_number,
                timestamp: DateTime::from_timestamp(seconds, nanos).unwrap(),
                status,
                maker: maker.map(crate::domain::swap::Address),
                token_from,
                token_to,
                amount_from: Amount::from_units(amount_from),
                amount_to: Amount::from_units(amount_to),
                usd_value: Amount::from_units(usd_value),
            }
        }
    }

    proptest! {
        #[test]
        fn protobuf_round_trips(event in swap_event()) {
            let bytes = encode(&event, Encoding::Protobuf);
            prop_assert_eq!(decode(&bytes, Some(CONTENT_TYPE_PROTOBUF)).unwrap(), event.clone());
            // Without a header too: protobuf never starts with '{' (0x7b is field 15).
            prop_assert_eq!(decode(&bytes, None).unwrap(), event);
        }

        #[test]
        fn json_round_trips(event in swap_event()) {
            let bytes = encode(&event, Encoding::Json);
            prop_assert_eq!(decode(&bytes, Some(CONTENT_TYPE_JSON)).unwrap(), event.clone());
            prop_assert_eq!(decode(&bytes, None).unwrap(), event);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes, None);
            let _ = decode(&bytes, Some(CONTENT_TYPE_JSON));
        }
    }

    #[test]
    fn raw_time_from_protobuf_is_range_checked() {
        let raw = RawSwap {
            timestamp: Some(RawTime::Unix { seconds: 0, nanos: -1 }),
            ..crate::domain::swap::tests::minimal_raw()
        };
        assert_eq!(raw.validate().unwrap_err().field, "timestamp");
    }
}
