//! Canonical token pairs.

use std::fmt;

use serde::{Serialize, Serializer};

use super::token::{SymbolError, TokenSymbol};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error("expected two token symbols joined by '-', got {0:?}")]
    Shape(String),
    #[error("both sides are {0}: a pair needs two different tokens")]
    SameToken(String),
    #[error("{0:?} splits into two token symbols in more than one way")]
    Ambiguous(String),
    #[error("bad symbol: {0}")]
    Symbol(#[from] SymbolError),
}

/// A pair of two different tokens in alphabetical order: `ETH-USDC`.
///
/// `first` < `second` always holds; [`PairKey::new`] sorts its arguments, so
/// `USDC`/`ETH` and `ETH`/`USDC` are the same pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PairKey {
    first: TokenSymbol,
    second: TokenSymbol,
}

impl PairKey {
    pub fn new(a: TokenSymbol, b: TokenSymbol) -> Result<PairKey, PairError> {
        match a.cmp(&b) {
            std::cmp::Ordering::Less => Ok(PairKey { first: a, second: b }),
            std::cmp::Ordering::Greater => Ok(PairKey { first: b, second: a }),
            std::cmp::Ordering::Equal => Err(PairError::SameToken(a.to_string())),
        }
    }

    /// Parses `A-B` in either order and any case. Symbols may themselves
    /// contain `-`; a name that splits into two valid symbols in more than one
    /// way is refused as ambiguous.
    pub fn parse(text: &str) -> Result<PairKey, PairError> {
        let mut found = None;
        for (at, _) in text.match_indices('-') {
            let (Ok(a), Ok(b)) = (TokenSymbol::parse(&text[..at]), TokenSymbol::parse(&text[at + 1..])) else {
                continue;
            };
            if found.is_some() {
                return Err(PairError::Ambiguous(text.to_owned()));
            }
            found = Some((a, b));
        }
        let (a, b) = found.ok_or_else(|| PairError::Shape(text.to_owned()))?;
        PairKey::new(a, b)
    }

    pub fn first(&self) -> &TokenSymbol {
        &self.first
    }

    pub fn second(&self) -> &TokenSymbol {
        &self.second
    }
}

impl fmt::Display for PairKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.second)
    }
}

impl Serialize for PairKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str) -> TokenSymbol {
        TokenSymbol::parse(s).unwrap()
    }

    #[test]
    fn orders_symbols_alphabetically() {
        let pair = PairKey::new(sym("USDC"), sym("ETH")).unwrap();
        assert_eq!(pair.to_string(), "ETH-USDC");
        assert_eq!(pair, PairKey::new(sym("ETH"), sym("USDC")).unwrap());
    }

    #[test]
    fn parses_either_order_and_case() {
        assert_eq!(PairKey::parse("usdc-eth").unwrap().to_string(), "ETH-USDC");
        assert_eq!(PairKey::parse("ETH-USDC").unwrap().to_string(), "ETH-USDC");
    }

    #[test]
    fn parses_symbols_that_contain_dashes_when_unambiguous() {
        // A 16-character first symbol leaves only one valid split.
        let pair = PairKey::parse("ABCDEFGHIJKLMNOP-Q-R").unwrap();
        assert_eq!((pair.first().as_str(), pair.second().as_str()), ("ABCDEFGHIJKLMNOP", "Q-R"));
        // "A-B-C" splits as A | B-C and as A-B | C.
        assert!(matches!(PairKey::parse("A-B-C"), Err(PairError::Ambiguous(_))));
    }

    #[test]
    fn refuses_bad_pairs() {
        assert!(matches!(PairKey::parse("ETHUSDC"), Err(PairError::Shape(_))));
        assert!(matches!(PairKey::parse("ETH-"), Err(PairError::Shape(_))));
        assert!(matches!(PairKey::parse("eth-ETH"), Err(PairError::SameToken(_))));
        assert!(matches!(PairKey::parse("ET H-USDC"), Err(PairError::Shape(_))));
    }
}
