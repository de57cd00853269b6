pub mod codec;
pub mod config;
pub mod domain;
pub mod kafka;
pub mod producer;
pub mod shutdown;
pub mod stream;
pub mod telemetry;
