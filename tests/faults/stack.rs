//! A stack of one fault test's own: Apache Kafka (through
//! `scripts/services` with a private folder and ports), PostgreSQL (a
//! private cluster made with `initdb`) and Redis, each on free loopback
//! ports, each one stoppable and startable while the service runs against
//! it. The shared services the other tests use are never touched.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{self, eventually, Names};
use crate::support::kafka::{free_port, OwnBroker};
use crate::support::process::run_to_end;

/// One fault test at a time: each runs a JVM broker, a PostgreSQL and a
/// Redis of its own besides the service's processes.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The newest PostgreSQL server binaries on this machine.
fn pg_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/services installs them)")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.last().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin/{tool}"))
}

pub struct Stack {
    dir: tempfile::TempDir,
    kafka: OwnBroker,
    pub pg_port: u16,
    pub redis_port: u16,
    redis: Option<std::process::Child>,
}

impl Stack {
    pub async fn start() -> Stack {
        let dir = tempfile::Builder::new().prefix("swapstream-faults").tempdir().unwrap();
        let kafka = OwnBroker::new(&dir.path().join("services"));
        let mut stack = Stack { dir, kafka, pg_port: free_port(), redis_port: free_port(), redis: None };
        stack.init_postgres();
        stack.start_postgres().await;
        stack.start_redis().await;
        stack.start_kafka().await;
        stack
    }

    pub fn brokers(&self) -> String {
        self.kafka.brokers()
    }

    pub fn postgres_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.pg_port)
    }

    pub fn redis_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.redis_port)
    }

    /// Variables of a process of this test on this stack.
    pub fn vars(&self, names: &Names) -> Vec<(&'static str, String)> {
        let mut vars = names.vars(&self.brokers());
        vars.push(("SWAPSTREAM_POSTGRES_URL", self.postgres_url()));
        vars.push(("SWAPSTREAM_REDIS_URL", self.redis_url()));
        vars
    }

    /// Settings that reach this stack's stores.
    pub fn settings(&self, names: &Names) -> swapstream::config::Settings {
        let (pg, redis) = (self.postgres_url(), self.redis_url());
        names.settings(&[("SWAPSTREAM_POSTGRES_URL", &pg), ("SWAPSTREAM_REDIS_URL", &redis)])
    }

    pub async fn pg(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&self.postgres_url(), tokio_postgres::NoTls).await.expect("the stack's PostgreSQL");
        tokio::spawn(connection);
        client
    }

    // ------------------------------------------------------------ Kafka

    pub async fn start_kafka(&self) {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.start()).await.unwrap();
    }

    pub async fn stop_kafka(&self) {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || kafka.stop()).await.unwrap();
    }

    // ------------------------------------------------------------ PostgreSQL

    fn pg_data(&self) -> PathBuf {
        self.dir.path().join("pg")
    }

    /// A cluster owned by the `postgres` user (PostgreSQL refuses to run as root).
    fn as_postgres(&self, tool: &str) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
        command
    }

    fn init_postgres(&self) {
        let data = self.pg_data();
        std::fs::create_dir_all(&data).unwrap();
        let uid: u32 = String::from_utf8(Command::new("id").args(["-u", "postgres"]).output().unwrap().stdout)
            .unwrap()
            .trim()
            .parse()
            .expect("a postgres user (the Debian package makes it)");
        for path in [self.dir.path(), data.as_path()] {
            std::os::unix::fs::chown(path, Some(uid), None).unwrap();
        }
        run_to_end(
            self.as_postgres("initdb").args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"]).arg(&data),
            "initdb",
        );
    }

    pub async fn start_postgres(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.pg_port,
            self.pg_data().display()
        );
        let log = self.dir.path().join("pg.log");
        let mut command = self.as_postgres("pg_ctl");
        command.arg("-D").arg(self.pg_data()).args(["-o", &options, "-l"]).arg(&log).args(["-w", "start"]);
        tokio::task::spawn_blocking(move || run_to_end(&mut command, "starting the stack's PostgreSQL")).await.unwrap();
    }

    pub async fn stop_postgres(&self) {
        let mut command = self.as_postgres("pg_ctl");
        command.arg("-D").arg(self.pg_data()).args(["-m", "fast", "-w", "stop"]);
        tokio::task::spawn_blocking(move || run_to_end(&mut command, "stopping the stack's PostgreSQL")).await.unwrap();
    }

    // ------------------------------------------------------------ Redis

    /// Redis keeps nothing on disk: a restart is also a flush.
    pub async fn start_redis(&mut self) {
        let port = self.redis_port;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/services installs it)");
        self.redis = Some(child);
        eventually("the stack's Redis answers", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    pub async fn stop_redis(&mut self) {
        if let Some(mut child) = self.redis.take() {
            // SAFETY: a signal to our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing scenario shows what its broker last said.
            eprintln!("{}", self.kafka.log_tail(20));
        }
        if let Some(mut child) = self.redis.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.as_postgres("pg_ctl").arg("-D").arg(self.pg_data()).args(["-m", "immediate", "stop"]).output();
        let _ = self.kafka.services(&["broker-stop"]).output();
    }
}

/// How long `check` took to become true, polling until `timeout`.
pub async fn time_until<F, Fut>(what: &str, timeout: Duration, check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    helpers::eventually(what, timeout, check).await;
    started.elapsed()
}
