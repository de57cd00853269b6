//! Shared by the benchmarks (each includes it with `mod common;` and uses
//! what it needs).
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Token universe of the benchmark streams.
pub const TOKENS: &str = "ETH,BTC,SOL,USDC,USDT,TON";

/// Removes the caller's `SWAPSTREAM_*` variables, so only the benchmark's count.
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

/// The HTTP port a process logged (JSON log at `log`), once it has.
pub fn logged_port(log: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let at = text.find("\"http_port\":")? + "\"http_port\":".len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
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

/// Set in a re-executed benchmark binary that is to serve as the broker.
const MOCK_BROKER_VAR: &str = "SWAPSTREAM_BENCH_MOCK_BROKER";

/// librdkafka's mock cluster in a process of its own, as the benchmark's
/// broker when asked for (`--mock`): it needs nothing installed. Ends when
/// the benchmark drops it.
pub struct MockBroker {
    child: std::process::Child,
    pub bootstrap: String,
}

impl MockBroker {
    /// Starts one with `topics` of `partitions` partitions each.
    pub fn start(topics: &[String], partitions: i32) -> MockBroker {
        use std::io::BufRead as _;
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(MOCK_BROKER_VAR, format!("{partitions};{}", topics.join(",")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("mock broker process");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("bootstrap line");
        assert!(!line.trim().is_empty(), "the mock broker process printed no address");
        MockBroker { child, bootstrap: line.trim().to_owned() }
    }

    /// The process serving the broker.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // its end of input: it exits
        let _ = self.child.wait();
    }
}

/// In a binary started by [`MockBroker::start`]: serves until its input
/// closes, then exits. Elsewhere returns at once. Call first in `main`.
pub fn serve_mock_broker_if_asked() {
    use std::io::{Read as _, Write as _};
    let Ok(spec) = std::env::var(MOCK_BROKER_VAR) else { return };
    let (partitions, topics) = spec.split_once(';').expect("partitions;topics");
    let cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> =
        rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    for topic in topics.split(',').filter(|t| !t.is_empty()) {
        cluster.create_topic(topic, partitions.parse().expect("partitions"), 1).expect("topic");
    }
    println!("{}", cluster.bootstrap_servers());
    std::io::stdout().flush().expect("stdout");
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    std::process::exit(0);
}

/// `GET path` on 127.0.0.1:`port`: the body (HTTP/1.0, so it ends with the
/// connection), or empty when the server does not answer in 10 s.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut text = String::new();
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok() {
        let _ = stream.read_to_string(&mut text);
    }
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// A Prometheus histogram in `metrics` as "mean X ms, p50 <= Y ms, p99 <= Z ms"
/// (quantiles as the upper bound of their bucket).
pub fn histogram_summary(metrics: &str, name: &str) -> String {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let find = |suffix: &str| metrics.lines().find(|l| l.starts_with(&format!("{name}{suffix} "))).map(value);
    let (Some(sum), Some(count)) = (find("_sum"), find("_count")) else { return format!("{name}: absent") };
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|rest| {
            let (le, _) = rest.split_once('"')?;
            Some((le.parse::<f64>().unwrap_or(f64::INFINITY), value(rest)))
        })
        .collect();
    let quantile = |q: f64| {
        buckets.iter().find(|(_, cumulative)| *cumulative >= q * count).map_or(f64::INFINITY, |(le, _)| *le) * 1000.0
    };
    format!(
        "{name}: {count} observed, mean {:.1} ms, p50 <= {} ms, p99 <= {} ms",
        sum / count.max(1.0) * 1000.0,
        quantile(0.5),
        quantile(0.99)
    )
}
