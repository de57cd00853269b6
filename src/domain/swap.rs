//! Swap events: the validated form every part of the service works with.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};

use super::money::{put_digits, Amount, AmountError};
use super::pair::PairKey;
use super::token::TokenSymbol;

/// The 32-byte hash of the transaction a swap happened in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxHash(pub [u8; 32]);

impl TxHash {
    /// Parses `0x` followed by 64 hex digits (either case).
    pub fn parse(text: &str) -> Result<TxHash, String> {
        parse_0x(text).map(TxHash)
    }
}

/// `0x` followed by `2 * N` hex digits, as `N` bytes.
fn parse_0x<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    match digits.map(|d| hex::decode_to_slice(d, &mut bytes)) {
        Some(Ok(())) => Ok(bytes),
        _ => Err(format!("expected \"0x\" followed by {} hex digits, got {}", 2 * N, quoted(text))),
    }
}

impl fmt::Display for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 66];
        text[..2].copy_from_slice(b"0x");
        hex::encode_to_slice(self.0, &mut text[2..]).expect("66 bytes hold 0x and 64 hex digits");
        f.write_str(std::str::from_utf8(&text).expect("hex is ASCII"))
    }
}

impl fmt::Debug for TxHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The 20-byte address of the account that made a swap.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(pub [u8; 20]);

impl Address {
    /// Parses `0x` followed by 40 hex digits (either case).
    pub fn parse(text: &str) -> Result<Address, String> {
        parse_0x(text).map(Address)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What identifies one swap: every status and duplicate of it shares this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SwapId {
    pub tx_hash: TxHash,
    pub log_index: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Confirmed,
    Failed,
}

impl Status {
    pub fn parse(text: &str) -> Result<Status, String> {
        match text.to_ascii_lowercase().as_str() {
            "pending" => Ok(Status::Pending),
            "confirmed" => Ok(Status::Confirmed),
            "failed" => Ok(Status::Failed),
            _ => Err(format!("expected \"pending\", \"confirmed\" or \"failed\", got {}", quoted(text))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Confirmed => "confirmed",
            Status::Failed => "failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        self != Status::Pending
    }
}

/// A field of a swap event that failed validation, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl FieldError {
    pub fn new(field: &'static str, problem: impl Into<String>) -> FieldError {
        FieldError { field, problem: problem.into() }
    }
}

/// An event time as it arrived: RFC 3339 text (JSON) or a unix time
/// (protobuf `Timestamp`).
#[derive(Debug, Clone, PartialEq)]
pub enum RawTime {
    Rfc3339(String),
    Unix { seconds: i64, nanos: i32 },
}

impl RawTime {
    fn parse(self) -> Result<DateTime<Utc>, FieldError> {
        match self {
            RawTime::Rfc3339(text) => DateTime::parse_from_rfc3339(&text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| FieldError::new("timestamp", format!("expected an RFC 3339 time, got {}", quoted(&text)))),
            RawTime::Unix { seconds, nanos } => u32::try_from(nanos)
                .ok()
                .and_then(|nanos| DateTime::from_timestamp(seconds, nanos))
                .ok_or_else(|| FieldError::new("timestamp", format!("unix time {seconds}s {nanos}ns is out of range"))),
        }
    }
}

/// A swap event as it arrived, before validation: the common ground of the
/// JSON and protobuf encodings. `None` means absent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawSwap {
    pub tx_hash: Option<String>,
    pub log_index: Option<u64>,
    pub block_number: Option<u64>,
    pub timestamp: Option<RawTime>,
    pub status: Option<String>,
    pub maker: Option<String>,
    pub token_from: Option<String>,
    pub token_to: Option<String>,
    pub amount_from: Option<String>,
    pub amount_to: Option<String>,
    pub usd_value: Option<String>,
}

impl RawSwap {
    /// Applies every rule of the wire contract; the first broken one is
    /// reported, naming its field.
    pub fn validate(self) -> Result<SwapEvent, FieldError> {
        let tx_hash = TxHash::parse(&required("tx_hash", self.tx_hash)?).map_err(|p| FieldError::new("tx_hash", p))?;
        let log_index = match self.log_index {
            None => 0,
            Some(n) => u32::try_from(n)
                .map_err(|_| FieldError::new("log_index", format!("must be at most {}, got {n}", u32::MAX)))?,
        };
        let block_number = self.block_number;
        let timestamp = self.timestamp.ok_or_else(|| FieldError::new("timestamp", "is required"))?.parse()?;
        let status = match self.status {
            None => Status::Confirmed,
            Some(text) => Status::parse(&text).map_err(|p| FieldError::new("status", p))?,
        };
        let maker = match self.maker {
            None => None,
            Some(text) => Some(Address::parse(&text).map_err(|p| FieldError::new("maker", p))?),
        };
        let token_from = symbol("token_from", self.token_from)?;
        let token_to = symbol("token_to", self.token_to)?;
        if token_from == token_to {
            return Err(FieldError::new("token_to", format!("must differ from token_from, both are {token_from}")));
        }
        let amount_from = amount("amount_from", self.amount_from)?;
        let amount_to = amount("amount_to", self.amount_to)?;
        let usd_value = amount("usd_value", self.usd_value)?;
        for (field, value) in [("amount_from", amount_from), ("amount_to", amount_to)] {
            if !value.is_positive() {
                return Err(FieldError::new(field, format!("must be > 0, got {value}")));
            }
        }
        if usd_value.is_negative() {
            return Err(FieldError::new("usd_value", format!("must be >= 0, got {usd_value}")));
        }
        Ok(SwapEvent {
            id: SwapId { tx_hash, log_index },
            block_number,
            timestamp,
            status,
            maker,
            token_from,
            token_to,
            amount_from,
            amount_to,
            usd_value,
        })
    }
}

fn required(field: &'static str, value: Option<String>) -> Result<String, FieldError> {
    value.ok_or_else(|| FieldError::new(field, "is required"))
}

fn symbol(field: &'static str, value: Option<String>) -> Result<TokenSymbol, FieldError> {
    TokenSymbol::parse(&required(field, value)?).map_err(|e| FieldError::new(field, e.to_string()))
}

fn amount(field: &'static str, value: Option<String>) -> Result<Amount, FieldError> {
    Amount::parse(&required(field, value)?).map_err(|e| match e {
        AmountError::NotANumber(text) => {
            FieldError::new(field, format!("expected a decimal number, got {}", quoted(&text)))
        }
        AmountError::OutOfRange(text) => FieldError::new(field, format!("number {} is out of range", quoted(&text))),
    })
}

/// Quotes input for an error message, cut short so hostile input stays small.
pub(crate) fn quoted(text: &str) -> String {
    const MAX: usize = 80;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

/// A validated swap event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwapEvent {
    pub id: SwapId,
    pub block_number: Option<u64>,
    pub timestamp: DateTime<Utc>,
    pub status: Status,
    pub maker: Option<Address>,
    pub token_from: TokenSymbol,
    pub token_to: TokenSymbol,
    pub amount_from: Amount,
    pub amount_to: Amount,
    pub usd_value: Amount,
}

/// The total order of swaps in event time: timestamp, then block, then log
/// index, then hash, so that "first" and "last" never depend on arrival.
pub type EventOrder = (DateTime<Utc>, u64, u32, TxHash);

impl SwapEvent {
    pub fn order_key(&self) -> EventOrder {
        (self.timestamp, self.block_number.unwrap_or(0), self.id.log_index, self.id.tx_hash)
    }

    pub fn pair(&self) -> PairKey {
        PairKey::new(self.token_from.clone(), self.token_to.clone()).expect("validated: tokens differ")
    }

    /// The event in the JSON wire form.
    pub fn to_wire(&self) -> WireSwap<'_> {
        WireSwap(self)
    }
}

/// Serializes a [`SwapEvent`] in the JSON wire form of the contract, as
/// [`SwapEvent::write_wire_json`] writes it.
pub struct WireSwap<'a>(&'a SwapEvent);

impl Serialize for WireSwap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let json = serde_json::value::RawValue::from_string(self.0.wire_json()).map_err(serde::ser::Error::custom)?;
        json.serialize(serializer)
    }
}

impl SwapEvent {
    /// The JSON wire form of the contract, as a string.
    pub fn wire_json(&self) -> String {
        let mut out = String::with_capacity(320);
        self.write_wire_json(&mut out);
        out
    }

    /// Appends the JSON wire form of the contract to `out`: the one
    /// definition of it. Written directly rather than through serde, as the
    /// swap feed writes one for every swap state it reads; no value needs
    /// escaping (hex, digits, validated symbols, RFC 3339).
    pub fn write_wire_json(&self, out: &mut String) {
        let mut digits = itoa::Buffer::new();
        out.push_str("{\"tx_hash\":\"");
        push_hex(out, &self.id.tx_hash.0);
        out.push_str("\",\"log_index\":");
        out.push_str(digits.format(self.id.log_index));
        if let Some(block) = self.block_number {
            out.push_str(",\"block_number\":");
            out.push_str(digits.format(block));
        }
        out.push_str(",\"timestamp\":\"");
        push_time(out, self.timestamp);
        out.push_str("\",\"status\":\"");
        out.push_str(self.status.as_str());
        if let Some(maker) = &self.maker {
            out.push_str("\",\"maker\":\"");
            push_hex(out, &maker.0);
        }
        out.push_str("\",\"token_from\":\"");
        out.push_str(self.token_from.as_str());
        out.push_str("\",\"token_to\":\"");
        out.push_str(self.token_to.as_str());
        for (name, amount) in
            [("amount_from", self.amount_from), ("amount_to", self.amount_to), ("usd_value", self.usd_value)]
        {
            out.push_str("\",\"");
            out.push_str(name);
            out.push_str("\":\"");
            amount.write_to(out).expect("a String takes every write");
        }
        out.push_str("\"}");
    }
}

/// `0x` and the bytes in lower-case hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.push_str("0x");
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
}

/// [`format_time`] without its allocations, for years 0 to 9999 and no
/// leap second (anything else goes through chrono).
fn push_time(out: &mut String, time: DateTime<Utc>) {
    use chrono::{Datelike, Timelike};
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&time.year()) || nanos >= 1_000_000_000 {
        out.push_str(&format_time(time));
        return;
    }
    // `YYYY-MM-DDTHH:MM:SS`, then the fraction, then `Z`.
    let mut text = *b"0000-00-00T00:00:00.000000000Z";
    put_digits(&mut text[0..4], time.year() as u32);
    put_digits(&mut text[5..7], time.month());
    put_digits(&mut text[8..10], time.day());
    put_digits(&mut text[11..13], time.hour());
    put_digits(&mut text[14..16], time.minute());
    put_digits(&mut text[17..19], time.second());
    // As chrono's `SecondsFormat::AutoSi`: none, 3, 6 or 9 digits.
    let (value, width) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    let mut at = 19;
    if width > 0 {
        put_digits(&mut text[20..20 + width], value);
        at = 20 + width;
    }
    text[at] = b'Z';
    out.push_str(std::str::from_utf8(&text[..=at]).expect("ASCII digits"));
}

/// RFC 3339 in UTC with as many fractional digits as needed.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn minimal_raw() -> RawSwap {
        RawSwap {
            tx_hash: Some(format!("0x{}", "ab".repeat(32))),
            timestamp: Some(RawTime::Rfc3339("2026-11-25T08:00:00.123Z".into())),
            token_from: Some("eth".into()),
            token_to: Some("USDC".into()),
            amount_from: Some("1.5".into()),
            amount_to: Some("6300.25".into()),
            usd_value: Some("6300.25".into()),
            ..RawSwap::default()
        }
    }

    fn error_of(raw: RawSwap) -> FieldError {
        raw.validate().expect_err("should be refused")
    }

    #[test]
    fn minimal_form_gets_the_documented_defaults() {
        let swap = minimal_raw().validate().unwrap();
        assert_eq!(swap.id.log_index, 0);
        assert_eq!(swap.status, Status::Confirmed);
        assert_eq!(swap.block_number, None);
        assert_eq!(swap.maker, None);
        assert_eq!(swap.token_from.as_str(), "ETH");
        assert_eq!(swap.amount_from, Amount::parse("1.5").unwrap());
    }

    #[test]
    fn every_required_field_is_named_when_missing() {
        type Clear = fn(&mut RawSwap);
        let cases: [(&str, Clear); 7] = [
            ("tx_hash", |r| r.tx_hash = None),
            ("timestamp", |r| r.timestamp = None),
            ("token_from", |r| r.token_from = None),
            ("token_to", |r| r.token_to = None),
            ("amount_from", |r| r.amount_from = None),
            ("amount_to", |r| r.amount_to = None),
            ("usd_value", |r| r.usd_value = None),
        ];
        for (field, clear) in cases {
            let mut raw = minimal_raw();
            clear(&mut raw);
            assert_eq!(error_of(raw), FieldError::new(field, "is required"));
        }
    }

    #[test]
    fn tx_hash_must_be_0x_and_64_hex_digits() {
        for bad in ["ab".repeat(32), format!("0x{}", "ab".repeat(31)), format!("0x{}", "zz".repeat(32))] {
            let raw = RawSwap { tx_hash: Some(bad), ..minimal_raw() };
            assert_eq!(error_of(raw).field, "tx_hash");
        }
        let upper = RawSwap { tx_hash: Some(format!("0x{}", "AB".repeat(32))), ..minimal_raw() };
        assert_eq!(upper.validate().unwrap().id.tx_hash.to_string(), format!("0x{}", "ab".repeat(32)));
    }

    #[test]
    fn timestamp_must_be_rfc3339_and_is_kept_in_utc() {
        let raw = RawSwap { timestamp: Some(RawTime::Rfc3339("yesterday".into())), ..minimal_raw() };
        assert_eq!(error_of(raw), FieldError::new("timestamp", "expected an RFC 3339 time, got \"yesterday\""));
        let offset = RawSwap { timestamp: Some(RawTime::Rfc3339("2026-11-25T10:00:00+02:00".into())), ..minimal_raw() };
        assert_eq!(format_time(offset.validate().unwrap().timestamp), "2026-11-25T08:00:00Z");
    }

    #[test]
    fn status_must_be_one_of_three() {
        let raw = RawSwap { status: Some("done".into()), ..minimal_raw() };
        assert_eq!(error_of(raw).field, "status");
        let pending = RawSwap { status: Some("PENDING".into()), ..minimal_raw() };
        assert_eq!(pending.validate().unwrap().status, Status::Pending);
    }

    #[test]
    fn log_index_must_fit_u32() {
        let raw = RawSwap { log_index: Some(1 << 33), ..minimal_raw() };
        assert_eq!(error_of(raw).field, "log_index");
    }

    #[test]
    fn maker_must_be_an_address() {
        let raw = RawSwap { maker: Some("0x1234".into()), ..minimal_raw() };
        assert_eq!(error_of(raw).field, "maker");
        let good = RawSwap { maker: Some(format!("0x{}", "12".repeat(20))), ..minimal_raw() };
        assert!(good.validate().unwrap().maker.is_some());
    }

    #[test]
    fn tokens_must_be_valid_and_different() {
        let raw = RawSwap { token_from: Some("E TH".into()), ..minimal_raw() };
        assert_eq!(error_of(raw).field, "token_from");
        let same = RawSwap { token_to: Some("Eth".into()), ..minimal_raw() };
        assert_eq!(error_of(same), FieldError::new("token_to", "must differ from token_from, both are ETH"));
    }

    #[test]
    fn amounts_must_be_positive_and_usd_not_negative() {
        let zero = RawSwap { amount_from: Some("0".into()), ..minimal_raw() };
        assert_eq!(error_of(zero), FieldError::new("amount_from", "must be > 0, got 0"));
        let negative = RawSwap { amount_to: Some("-1".into()), ..minimal_raw() };
        assert_eq!(error_of(negative), FieldError::new("amount_to", "must be > 0, got -1"));
        let tiny = RawSwap { amount_to: Some("1e-12".into()), ..minimal_raw() };
        assert_eq!(error_of(tiny), FieldError::new("amount_to", "must be > 0, got 0"));
        let usd = RawSwap { usd_value: Some("-0.01".into()), ..minimal_raw() };
        assert_eq!(error_of(usd), FieldError::new("usd_value", "must be >= 0, got -0.01"));
        let free = RawSwap { usd_value: Some("0".into()), ..minimal_raw() };
        assert!(free.validate().is_ok());
        let text = RawSwap { usd_value: Some("lots".into()), ..minimal_raw() };
        assert_eq!(error_of(text), FieldError::new("usd_value", "expected a decimal number, got \"lots\""));
    }

    #[test]
    fn order_key_breaks_timestamp_ties_by_block_then_log_index() {
        let a = RawSwap { block_number: Some(2), log_index: Some(0), ..minimal_raw() }.validate().unwrap();
        let b = RawSwap { block_number: Some(1), log_index: Some(9), ..minimal_raw() }.validate().unwrap();
        assert!(b.order_key() < a.order_key());
    }

    #[test]
    fn the_wire_json_is_the_contract_form_with_optional_fields_only_when_set() {
        let full = RawSwap {
            block_number: Some(19_000_001),
            log_index: Some(7),
            status: Some("pending".into()),
            maker: Some(format!("0x{}", "Cd".repeat(20))),
            amount_from: Some("0001.500".into()),
            amount_to: Some("4200".into()),
            usd_value: Some("0.000000001".into()),
            ..minimal_raw()
        }
        .validate()
        .unwrap();
        let expected = format!(
            r#"{{"tx_hash":"0x{}","log_index":7,"block_number":19000001,"timestamp":"2026-11-25T08:00:00.123Z","status":"pending","maker":"0x{}","token_from":"ETH","token_to":"USDC","amount_from":"1.5","amount_to":"4200","usd_value":"0.000000001"}}"#,
            "ab".repeat(32),
            "cd".repeat(20)
        );
        assert_eq!(full.wire_json(), expected);
        let minimal = minimal_raw().validate().unwrap().wire_json();
        assert!(!minimal.contains("block_number") && !minimal.contains("maker"), "{minimal}");
        // Through serde (the ground-truth file, REST) the same text.
        assert_eq!(serde_json::to_string(&full.to_wire()).unwrap(), expected);
        let value: serde_json::Value = serde_json::to_value(full.to_wire()).unwrap();
        assert_eq!(value, serde_json::from_str::<serde_json::Value>(&expected).unwrap());
    }

    proptest::proptest! {
        #[test]
        fn times_are_written_as_chrono_writes_them(
            seconds in -70_000_000_000i64..260_000_000_000,
            fraction in 0u32..1_000_000_000,
            precision in 0usize..4,
        ) {
            let nanos = match precision {
                0 => 0,
                1 => fraction / 1_000_000 * 1_000_000,
                2 => fraction / 1_000 * 1_000,
                _ => fraction,
            };
            let time = DateTime::from_timestamp(seconds, nanos).unwrap();
            let mut written = String::new();
            push_time(&mut written, time);
            proptest::prop_assert_eq!(written, format_time(time));
        }
    }

    #[test]
    fn long_input_is_quoted_short() {
        let raw = RawSwap { timestamp: Some(RawTime::Rfc3339("x".repeat(10_000))), ..minimal_raw() };
        assert!(error_of(raw).problem.len() < 200);
    }
}
