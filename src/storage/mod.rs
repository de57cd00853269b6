//! Durable state (PostgreSQL) and derived live state (Redis).

pub mod encoding;
pub mod postgres;
pub mod presence;
pub mod redis;
