//! Apache Kafka for a test or bench: the jars `scripts/services` installs,
//! a broker of one run's own (a private folder and free ports), which
//! can be stopped and started again while clients run against it, and the
//! deletion of a run's topics.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::process::run_to_end;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The project's Apache Kafka jars, installed by `scripts/services install
/// kafka` if need be (a broker of someone else's may have been reused), once
/// per process.
pub fn installed_kafka() -> PathBuf {
    static HOME: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HOME.get_or_init(|| {
        let output = Command::new(repo().join("scripts/services"))
            .args(["install", "kafka"])
            .output()
            .expect("scripts/services");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let line = String::from_utf8_lossy(&output.stdout).into_owned();
        let home =
            line.split(" installed in ").nth(1).and_then(|rest| rest.split(" (").next()).expect("the install line");
        PathBuf::from(home)
    })
    .clone()
}

/// A broker in `dir` on ports of its own; its logs are under
/// `dir/kafka/broker/`. Not started until [`OwnBroker::start`].
#[derive(Clone)]
pub struct OwnBroker {
    dir: PathBuf,
    pub port: u16,
    controller_port: u16,
}

impl OwnBroker {
    pub fn new(dir: &Path) -> OwnBroker {
        OwnBroker { dir: dir.to_owned(), port: free_port(), controller_port: free_port() }
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `scripts/services` with this broker's folder and ports.
    pub fn services(&self, args: &[&str]) -> Command {
        let mut command = Command::new(repo().join("scripts/services"));
        command
            .args(args)
            .env("SERVICES_LOCAL_DIR", &self.dir)
            .env("SERVICES_KAFKA_HOME", installed_kafka())
            .env("SWAPSTREAM_BROKER_PORT", self.port.to_string())
            .env("SERVICES_KAFKA_CONTROLLER_PORT", self.controller_port.to_string())
            .env("SERVICES_KAFKA_HEAP", "384m");
        command
    }

    /// Starts the broker (its data is kept across a stop), blocking until it answers.
    pub fn start(&self) {
        run_to_end(&mut self.services(&["broker-start"]), "starting the run's Kafka");
    }

    pub fn stop(&self) {
        run_to_end(&mut self.services(&["broker-stop"]), "stopping the run's Kafka");
    }

    /// The last `lines` lines of each of the broker's logs, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let folder = self.dir.join("kafka/broker");
        let mut tail = String::new();
        for file in ["stdout.log", "server.log"] {
            let text = std::fs::read_to_string(folder.join(file)).unwrap_or_default();
            let last: Vec<&str> = text.lines().rev().take(lines).collect();
            tail.push_str(&format!("---- last lines of the run's Kafka {file}:\n"));
            for line in last.into_iter().rev() {
                tail.push_str(line);
                tail.push('\n');
            }
        }
        tail
    }
}

/// Deletes a run's `topics` on `brokers` when it ends: every run makes
/// topics of its own, and thousands left behind slow the broker's next
/// start (see `scripts/test`). Best effort: what fails is printed.
pub async fn delete_topics(brokers: &str, topics: &[String]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;

    let admin: AdminClient<DefaultClientContext> =
        match rdkafka::ClientConfig::new().set("bootstrap.servers", brokers).create() {
            Ok(admin) => admin,
            Err(e) => return eprintln!("cannot delete the run's topics: {e}"),
        };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(30)));
    match admin.delete_topics(&names, &options).await {
        Ok(results) => {
            let failed: Vec<String> =
                results.into_iter().filter_map(|r| r.err().map(|(t, e)| format!("{t}: {e}"))).collect();
            eprintln!(
                "deleted {} of {} topics{}",
                names.len() - failed.len(),
                names.len(),
                if failed.is_empty() { String::new() } else { format!(" ({})", failed.join(", ")) }
            );
        }
        Err(e) => eprintln!("cannot delete the run's topics: {e}"),
    }
}
