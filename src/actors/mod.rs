//! The actors of the consumer role.

pub mod aggregator;
pub mod kafka_reader;
pub mod ws;
