//! Integration tests against the real stack: Apache Kafka,
//! PostgreSQL and Redis on loopback, started by `scripts/services up`
//! (`scripts/test` does that first).

mod bad_input;
mod cli;
mod consumer;
mod dashboard;
mod helpers;
mod live_fencing;
mod live_recent;
mod monitoring;
mod presence;
mod producer;
mod redis_roles;
mod rest;
mod rest_sorted;
mod services_script;
mod static_membership;
mod structure;
mod supervision;
#[path = "../support/mod.rs"]
mod support;
mod trusted_proxies;
mod websocket;
mod ws_conflation;
