//! What the integration tests, the fault suite and the benchmarks share:
//! an HTTP client, running the service's binary, Apache Kafka and a mock
//! broker process, reading metrics and `/proc`, clearing a run's stores. Each includes it with
//! `#[path = "<relative>/tests/support/mod.rs"] mod support;` and uses what
//! it needs.
#![allow(dead_code)]

pub mod args;
pub mod http;
pub mod kafka;
pub mod load;
pub mod metrics;
pub mod mock_broker;
pub mod process;
pub mod procfs;
pub mod stores;
