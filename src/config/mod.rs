//! Settings from `SWAPSTREAM_*` environment variables, or the flags of the
//! same names.
//!
//! One declarative definition: every setting is a clap argument with its
//! variable (`env`), long flag, default, range and meaning, in groups
//! ([`SettingsArgs`]) that every role flattens, so `swapstream <role>
//! --help` lists them all. [`Settings::from_args`] then checks what one
//! value alone cannot say (the ping timeout against the ping interval, a
//! TLS certificate without its key...) and builds each component's own
//! small settings struct. A test keeps the definition and the README's
//! table in step.
//!
//! This module imports nothing of the crate: what needs the domain's or a
//! component's types (the log filter, the producer's tokens and encoding)
//! is kept as plain text here and built where it is used.

mod args;
mod definition;
mod resolve;
mod settings;
#[cfg(test)]
mod tests;
mod values;

use std::fmt;

pub use args::*;
pub use definition::{blank_variables_unset, command, explain, unknown_variables, variables};
pub use settings::*;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Secret(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One documented variable, read from the definition: name, long flag,
/// default as text (`(...)` when computed or absent), meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub flag: String,
    pub default: String,
    pub help: String,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("\n"))
    }
}

impl std::error::Error for ConfigError {}
