//! Validated domain types. Parse once at the edge; everything inside the
//! service works with these.

pub mod aggregate;
pub mod makers;
pub mod money;
pub mod pair;
pub mod partial;
pub mod swap;
pub mod token;
pub mod window;

pub use money::{Amount, Price};
pub use pair::PairKey;
pub use swap::{FieldError, RawSwap, RawTime, Status, SwapEvent, SwapId, TxHash};
pub use token::TokenSymbol;
