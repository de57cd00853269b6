pub mod codec;
pub mod config;
pub mod domain;
pub mod kafka;
pub mod telemetry;
