//! Shared test plumbing: where the services are, unique names, the binary.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use rand::Rng;

/// The separate broker process started by `scripts/services up`.
pub fn brokers() -> String {
    std::env::var("SWAPSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Fails fast, with the fix, when the broker is not running.
pub fn require_broker() -> String {
    let brokers = brokers();
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    if std::net::TcpStream::connect_timeout(&first.parse().expect("broker address"), Duration::from_secs(2)).is_err() {
        panic!("no Kafka-protocol broker at {first}: run `scripts/services up` (or `scripts/test`) first");
    }
    brokers
}

/// A name no other test run uses: `<base>-<random hex>`.
pub fn unique(base: &str) -> String {
    format!("{base}-{:08x}", rand::thread_rng().gen::<u32>())
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_swapstream"))
}

/// Runs the binary with exactly these `SWAPSTREAM_*` variables (the test
/// process's own are removed) and waits for it, failing after `timeout`.
pub async fn run_binary(args: &[&str], vars: &[(&str, String)], timeout: Duration) -> Output {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).kill_on_drop(true);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SWAPSTREAM_")) {
        command.env_remove(name);
    }
    for (name, value) in vars {
        command.env(name, value);
    }
    tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("swapstream {args:?} did not finish within {timeout:?}"))
        .expect("running swapstream")
}
