//! The actors of the consumer role.

pub mod aggregator;
pub mod kafka_reader;
pub mod outbound;
pub mod session_registry;
pub mod ws_session;
