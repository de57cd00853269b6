//! librdkafka's mock cluster as a broker process of its own, for the
//! benchmarks' `--mock` runs: it needs nothing installed.

use std::process::Command;

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
