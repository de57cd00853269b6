//! Token symbols.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub const MAX_SYMBOL_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SymbolError {
    #[error("must be 1 to {MAX_SYMBOL_LEN} characters, got {0}")]
    Length(usize),
    #[error("may contain only A-Z 0-9 . _ -, got {0:?}")]
    Charset(String),
}

/// A token symbol: 1 to 16 characters of `A-Z 0-9 . _ -`, upper case.
///
/// Parsing is case-insensitive; the stored form is always upper case. Cheap
/// to clone (shared).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenSymbol(Arc<str>);

impl TokenSymbol {
    pub fn parse(text: &str) -> Result<TokenSymbol, SymbolError> {
        let len = text.chars().count();
        if len == 0 || len > MAX_SYMBOL_LEN {
            return Err(SymbolError::Length(len));
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !text.chars().all(valid) {
            return Err(SymbolError::Charset(text.to_owned()));
        }
        Ok(TokenSymbol(text.to_ascii_uppercase().into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TokenSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TokenSymbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSymbol({})", self.0)
    }
}

impl AsRef<str> for TokenSymbol {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for TokenSymbol {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TokenSymbol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        TokenSymbol::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_upper_cases_valid_symbols() {
        assert_eq!(TokenSymbol::parse("eth").unwrap().as_str(), "ETH");
        assert_eq!(TokenSymbol::parse("USDC.e").unwrap().as_str(), "USDC.E");
        assert_eq!(TokenSymbol::parse("a_b-c9").unwrap().as_str(), "A_B-C9");
        assert_eq!(TokenSymbol::parse("X").unwrap().as_str(), "X");
        assert_eq!(TokenSymbol::parse("ABCDEFGHIJKLMNOP").unwrap().as_str().len(), 16);
    }

    #[test]
    fn refuses_bad_lengths() {
        assert_eq!(TokenSymbol::parse(""), Err(SymbolError::Length(0)));
        assert_eq!(TokenSymbol::parse("ABCDEFGHIJKLMNOPQ"), Err(SymbolError::Length(17)));
    }

    #[test]
    fn refuses_other_characters() {
        for bad in ["ET H", "ETH/USD", "ÉTH", "ETH\n", "a*"] {
            assert!(matches!(TokenSymbol::parse(bad), Err(SymbolError::Charset(_))), "{bad:?}");
        }
    }
}
