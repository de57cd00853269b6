//! Running the service's binary: a clean environment of the run's own
//! names, and the ports a process logs once it listens.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Token universe of the benchmark streams.
pub const TOKENS: &str = "ETH,BTC,SOL,USDC,USDT,TON";

/// Removes the caller's `SWAPSTREAM_*` variables, so only the run's own count.
pub fn clear_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWAPSTREAM_")) {
        command.env_remove(name);
    }
    command
}

/// A producer or consumer of its own topics (`<id>.`), group, schema and
/// Redis prefix, with `partitions` partitions a topic.
pub fn stream_env<'a>(command: &'a mut Command, brokers: &str, id: &str, partitions: i32) -> &'a mut Command {
    clear_env(command)
        .env("SWAPSTREAM_KAFKA_BROKERS", brokers)
        .env("SWAPSTREAM_KAFKA_TOPIC_PREFIX", format!("{id}."))
        .env("SWAPSTREAM_KAFKA_PARTITIONS", partitions.to_string())
        .env("SWAPSTREAM_KAFKA_GROUP_ID", format!("{id}-group"))
        .env("SWAPSTREAM_KAFKA_DLQ_TOPIC", format!("{id}-dlq"))
        .env("SWAPSTREAM_POSTGRES_SCHEMA", id)
        .env("SWAPSTREAM_REDIS_KEY_PREFIX", id)
        .env("SWAPSTREAM_PRODUCER_TOKENS", TOKENS)
        .env("SWAPSTREAM_LOG_FORMAT", "json")
        .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
}

/// The number a process logged under `field` (`"http_port"`,
/// `"health_port"`...) in its JSON log `text`, once it has.
pub fn logged_number(text: &str, field: &str) -> Option<u16> {
    let needle = format!("\"{field}\":");
    let at = text.find(&needle)? + needle.len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// The HTTP port a process logged in its log file, once it has.
pub fn logged_port(log: &Path) -> Option<u16> {
    logged_number(&std::fs::read_to_string(log).ok()?, "http_port")
}

/// Waits (blocking) for [`logged_port`], failing after `timeout`.
pub fn wait_for_port(log: &Path, timeout: Duration) -> u16 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(port) = logged_port(log) {
            return port;
        }
        assert!(Instant::now() < deadline, "no http_port logged in {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}
