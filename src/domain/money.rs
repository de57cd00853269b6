//! Exact decimal quantities.
//!
//! [`Amount`] is a fixed-point number with nine fractional digits stored in an
//! `i128`: sums are exact and independent of order, which a running `f64` sum
//! is not. [`Price`] is the quotient of two amounts, rounded to
//! [`PRICE_SIGNIFICANT_DIGITS`] significant digits.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fractional digits kept by [`Amount`].
pub const SCALE: u32 = 9;
const ONE: i128 = 1_000_000_000;

/// Significant digits kept by a [`Price`].
pub const PRICE_SIGNIFICANT_DIGITS: u32 = 12;

/// Longest decimal text accepted, to keep hostile input cheap.
const MAX_TEXT_LEN: usize = 64;

/// Why a decimal text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("expected a decimal number, got {0:?}")]
    NotANumber(String),
    #[error("number {0:?} is out of range")]
    OutOfRange(String),
}

/// An exact decimal with nine fractional digits.
///
/// Inputs with more fractional digits are rounded half to even, once, when
/// parsed; from then on every operation is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(i128);

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// The amount whose fixed-point representation is `units` / 10^9.
    pub const fn from_units(units: i128) -> Self {
        Amount(units)
    }

    /// The fixed-point representation: the value times 10^9.
    pub const fn units(self) -> i128 {
        self.0
    }

    pub fn is_positive(self) -> bool {
        self.0 > 0
    }

    pub fn is_negative(self) -> bool {
        self.0 < 0
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    /// Parses decimal text: an optional sign, digits with an optional
    /// fraction, and an optional exponent (`1.5`, `-2`, `6.3e3`, `.5`).
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let not_a_number = || AmountError::NotANumber(text.to_owned());
        if text.is_empty() || text.len() > MAX_TEXT_LEN {
            return Err(not_a_number());
        }
        let (negative, rest) = match text.as_bytes()[0] {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => {
                let exponent: i32 = rest[at + 1..].parse().map_err(|_| not_a_number())?;
                (&rest[..at], exponent)
            }
            None => (rest, 0),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int_part.is_empty() && frac_part.is_empty()) || !all_digits(int_part) || !all_digits(frac_part) {
            return Err(not_a_number());
        }
        // The number is `digits * 10^(exponent - frac_part.len())`.
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        let shift = exponent - frac_part.len() as i32 + SCALE as i32;
        let units = scale_digits(digits, shift).ok_or_else(|| AmountError::OutOfRange(text.to_owned()))?;
        Ok(Amount(if negative { -units } else { units }))
    }

    /// This amount as a `Decimal`; exact, as 10^9-scaled values of any
    /// single swap fit in its 96-bit mantissa.
    pub fn to_decimal(self) -> Option<Decimal> {
        Decimal::try_from_i128_with_scale(self.0, SCALE).ok()
    }
}

/// `digits * 10^shift` as an integer, rounding half to even when `shift < 0`.
fn scale_digits(digits: &str, shift: i32) -> Option<i128> {
    if digits.is_empty() {
        return Some(0);
    }
    if shift >= 0 {
        // i128 holds 38 full decimal digits.
        if digits.len() + shift as usize > 38 {
            return None;
        }
        let base: i128 = digits.parse().ok()?;
        return base.checked_mul(10i128.checked_pow(shift as u32)?);
    }
    let dropped = (-shift) as usize;
    if dropped > digits.len() {
        // Everything is below half a unit: rounds to zero.
        return Some(0);
    }
    let (kept, cut) = digits.split_at(digits.len() - dropped);
    if kept.len() > 38 {
        return None;
    }
    let mut units: i128 = if kept.is_empty() { 0 } else { kept.parse().ok()? };
    let first_cut = cut.as_bytes()[0];
    let rest_nonzero = cut.as_bytes()[1..].iter().any(|&b| b != b'0');
    let round_up = first_cut > b'5' || (first_cut == b'5' && (rest_nonzero || units % 2 == 1));
    if round_up {
        units = units.checked_add(1)?;
    }
    Some(units)
}

impl FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Amount::parse(s)
    }
}

impl Amount {
    /// Writes the plain decimal notation (see `Display`) without the
    /// formatting machinery: the swap feed writes three per swap.
    pub fn write_to(self, out: &mut impl fmt::Write) -> fmt::Result {
        if self.0 < 0 {
            out.write_char('-')?;
        }
        let abs = self.0.unsigned_abs();
        let (int, frac) = (abs / ONE as u128, (abs % ONE as u128) as u32);
        let mut digits = itoa::Buffer::new();
        out.write_str(digits.format(int))?;
        if frac != 0 {
            // Nine digits, leading zeros kept, trailing ones dropped.
            let mut text = [b'0'; 9];
            put_digits(&mut text, frac);
            out.write_char('.')?;
            out.write_str(std::str::from_utf8(&text).expect("ASCII digits").trim_end_matches('0'))?;
        }
        Ok(())
    }
}

/// `value` in decimal, zero-padded to fill `slot` (its high digits cut).
pub(crate) fn put_digits(slot: &mut [u8], mut value: u32) {
    for digit in slot.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

impl fmt::Display for Amount {
    /// Plain decimal notation without trailing zeros: `1.5`, `-0.001`, `42`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_to(f)
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;
    fn add(self, other: Amount) -> Amount {
        Amount(self.0 + other.0)
    }
}

impl std::ops::AddAssign for Amount {
    fn add_assign(&mut self, other: Amount) {
        self.0 += other.0;
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;
    fn sub(self, other: Amount) -> Amount {
        Amount(self.0 - other.0)
    }
}

impl std::ops::SubAssign for Amount {
    fn sub_assign(&mut self, other: Amount) {
        self.0 -= other.0;
    }
}

impl std::iter::Sum for Amount {
    fn sum<I: Iterator<Item = Amount>>(iter: I) -> Amount {
        iter.fold(Amount::ZERO, |a, b| a + b)
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Amount::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A price: the quotient of two amounts, rounded half to even to twelve
/// significant digits, normalised (no trailing zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price(Decimal);

impl Price {
    /// `numerator / denominator`, or `None` when the denominator is not
    /// positive or the quotient does not fit.
    pub fn ratio(numerator: Amount, denominator: Amount) -> Option<Price> {
        if !denominator.is_positive() || numerator.is_negative() {
            return None;
        }
        let quotient = numerator.to_decimal()?.checked_div(denominator.to_decimal()?)?;
        Some(Price::rounded(quotient))
    }

    fn rounded(value: Decimal) -> Price {
        let rounded = value
            .round_sf_with_strategy(PRICE_SIGNIFICANT_DIGITS, RoundingStrategy::MidpointNearestEven)
            .unwrap_or(value);
        Price(rounded.normalize())
    }

    pub fn as_decimal(self) -> Decimal {
        self.0
    }

    pub fn parse(text: &str) -> Option<Price> {
        Decimal::from_str_exact(text).ok().map(Price::rounded)
    }

    /// Percentage change from `from` to `self`, rounded like a price; `None`
    /// when `from` is zero.
    pub fn change_pct(self, from: Price) -> Option<Price> {
        if from.0.is_zero() {
            return None;
        }
        let change = (self.0 - from.0).checked_div(from.0)?.checked_mul(Decimal::ONE_HUNDRED)?;
        Some(Price::rounded(change))
    }
}

impl fmt::Display for Price {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl Serialize for Price {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Price {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Price::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("bad price {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount(text: &str) -> Amount {
        Amount::parse(text).unwrap()
    }

    #[test]
    fn parses_plain_decimals_exactly() {
        assert_eq!(amount("1.5").units(), 1_500_000_000);
        assert_eq!(amount("6300.25").units(), 6_300_250_000_000);
        assert_eq!(amount("0.000000001").units(), 1);
        assert_eq!(amount("-2").units(), -2_000_000_000);
        assert_eq!(amount(".5").units(), 500_000_000);
        assert_eq!(amount("5.").units(), 5_000_000_000);
        assert_eq!(amount("007").units(), 7_000_000_000);
    }

    #[test]
    fn parses_exponents() {
        assert_eq!(amount("6.3e3"), amount("6300"));
        assert_eq!(amount("1E-9").units(), 1);
        assert_eq!(amount("25e-1"), amount("2.5"));
    }

    #[test]
    fn rounds_extra_fraction_digits_half_to_even() {
        assert_eq!(amount("0.0000000005").units(), 0);
        assert_eq!(amount("0.0000000015").units(), 2);
        assert_eq!(amount("0.00000000051").units(), 1);
        assert_eq!(amount("1.0000000004999").units(), 1_000_000_000);
        assert_eq!(amount("1e-30").units(), 0);
    }

    #[test]
    fn refuses_what_is_not_a_number() {
        for bad in ["", "abc", "1.2.3", "1,5", "--1", "0x10", "1e", "e5", ".", "NaN", "inf", " 1"] {
            assert!(matches!(Amount::parse(bad), Err(AmountError::NotANumber(_))), "{bad:?} should be refused");
        }
    }

    #[test]
    fn refuses_out_of_range_numbers() {
        assert!(matches!(Amount::parse("1e40"), Err(AmountError::OutOfRange(_))));
        assert!(matches!(Amount::parse("99999999999999999999999999999999999999"), Err(AmountError::OutOfRange(_))));
    }

    #[test]
    fn displays_without_trailing_zeros() {
        assert_eq!(amount("1.50").to_string(), "1.5");
        assert_eq!(amount("42").to_string(), "42");
        assert_eq!(amount("-0.001").to_string(), "-0.001");
        assert_eq!(Amount::ZERO.to_string(), "0");
    }

    #[test]
    fn price_is_a_rounded_ratio() {
        let price = Price::ratio(amount("6300.25"), amount("1.5")).unwrap();
        assert_eq!(price.to_string(), "4200.16666667");
        assert_eq!(Price::ratio(amount("1"), amount("3")).unwrap().to_string(), "0.333333333333");
        assert_eq!(Price::ratio(amount("10"), amount("4")).unwrap().to_string(), "2.5");
        assert!(Price::ratio(amount("1"), Amount::ZERO).is_none());
    }

    #[test]
    fn price_change_is_a_percentage() {
        let from = Price::parse("4000").unwrap();
        let to = Price::parse("4200").unwrap();
        assert_eq!(to.change_pct(from).unwrap().to_string(), "5");
        assert_eq!(from.change_pct(to).unwrap().to_string(), "-4.7619047619");
    }

    proptest! {
        #[test]
        fn display_then_parse_round_trips(units in -(10i128.pow(30))..10i128.pow(30)) {
            let value = Amount::from_units(units);
            prop_assert_eq!(Amount::parse(&value.to_string()).unwrap(), value);
        }

        #[test]
        fn sums_do_not_depend_on_order(mut values in proptest::collection::vec(0i128..10i128.pow(20), 0..50)) {
            let forward: Amount = values.iter().map(|&u| Amount::from_units(u)).sum();
            values.reverse();
            let backward: Amount = values.iter().map(|&u| Amount::from_units(u)).sum();
            prop_assert_eq!(forward, backward);
        }

        #[test]
        fn amounts_are_written_as_rust_decimal_writes_them_normalized(units in any::<i64>(), scale in 0u32..4) {
            let units = i128::from(units) * 10i128.pow(scale * 3);
            let reference = rust_decimal::Decimal::from_i128_with_scale(units, 9).normalize().to_string();
            prop_assert_eq!(Amount::from_units(units).to_string(), reference);
        }
    }
}
