//! HTTP load for the REST benches: keep-alive connections that send GETs and
//! read whole answers, driven as fast as answered (closed loop) or at a
//! fixed rate timed from when each request was due (open loop), and
//! `redis-benchmark` for the reference in the same run.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Concurrent keep-alive connections of every measurement (and of the Redis reference).
pub const CONNECTIONS: usize = 64;

/// The path of a connection's next request, from a random number.
pub type Paths = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// One path, always.
pub fn one_path(path: &'static str) -> Paths {
    Arc::new(move |_| path.to_owned())
}

/// One keep-alive connection: sends GETs, reads whole answers.
pub struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl Connection {
    pub async fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Connection { stream, buffer: Vec::with_capacity(64 << 10) }
    }

    /// The status of one request.
    pub async fn get(&mut self, path: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.write_all(request.as_bytes()).await.unwrap();
        self.buffer.clear();
        loop {
            let mut chunk = [0u8; 16384];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the server closed the connection");
            self.buffer.extend_from_slice(&chunk[..n]);
            let Some(head_end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            let head = std::str::from_utf8(&self.buffer[..head_end]).unwrap();
            let length: usize = head
                .split("\r\n")
                .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")))
                .map(|(_, v)| v.trim().parse().unwrap())
                .expect("content-length");
            if self.buffer.len() >= head_end + 4 + length {
                return head[9..12].parse().unwrap();
            }
        }
    }
}

/// Requests/s and latency of one measurement.
pub struct Measured {
    pub requests: u64,
    /// Answers other than 200 (counted in the rate and latencies too).
    pub errors: u64,
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn measured(mut latencies: Vec<Duration>, errors: u64, elapsed: Duration) -> Measured {
    latencies.sort();
    Measured {
        requests: latencies.len() as u64,
        errors,
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// The header of the table [`print_row`] prints rows of, first column `what`.
pub fn print_header(what: &str) {
    println!("| {what} | max req/s ({CONNECTIONS} conns) | p50 ms | p99 ms | at fixed rate: p50 ms | p99 ms | requests | not 200 |");
    println!("|---|---|---|---|---|---|---|---|");
}

/// One row: the closed loop's `max` and the open loop's `fixed` at `rate`,
/// with a note when the fixed rate was not reached.
pub fn print_row(name: &str, max: &Measured, fixed: &Measured, rate: u64) {
    println!(
        "| {name} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} |",
        max.rate,
        max.p50_ms,
        max.p99_ms,
        fixed.p50_ms,
        fixed.p99_ms,
        max.requests + fixed.requests,
        max.errors + fixed.errors,
    );
    if fixed.rate < rate as f64 * 0.9 {
        println!("  ({name} reached only {:.0} req/s of {rate} in the fixed-rate run)", fixed.rate);
    }
}

/// Every connection's latencies and errors, over the time since `started`.
async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>, started: Instant) -> Measured {
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, failed) = task.await.unwrap();
        all.extend(latencies);
        errors += failed;
    }
    measured(all, errors, started.elapsed())
}

/// Sends the request of `path`: 1 when not answered 200, else 0.
async fn fetch(connection: &mut Connection, path: &str) -> u64 {
    u64::from(connection.get(path).await != 200)
}

/// As fast as `connections` connections go, each waiting for its answer.
pub async fn closed_loop(port: u16, connections: usize, length: Duration, paths: Paths) -> Measured {
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut connection = Connection::open(port).await;
                let (mut latencies, mut errors) = (Vec::new(), 0);
                while started.elapsed() < length {
                    let path = paths(rand::random());
                    let sent = Instant::now();
                    errors += fetch(&mut connection, &path).await;
                    latencies.push(sent.elapsed());
                }
                (latencies, errors)
            })
        })
        .collect();
    gather(tasks, started).await
}

/// `rate` requests/s spread over `connections` connections; a request that
/// had to wait for its connection's previous answer is timed from when it
/// was due, so the wait counts (no coordinated omission).
pub async fn open_loop(port: u16, connections: usize, rate: u64, length: Duration, paths: Paths) -> Measured {
    let started = Instant::now();
    let per_connection = Duration::from_secs_f64(connections as f64 / rate as f64);
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let paths = paths.clone();
            tokio::spawn(async move {
                let mut connection = Connection::open(port).await;
                let (mut latencies, mut errors) = (Vec::new(), 0);
                let mut due = started + per_connection.mul_f64(i as f64 / connections as f64);
                let mut previous_done = started;
                while due < started + length {
                    tokio::time::sleep_until(due.into()).await;
                    let path = paths(rand::random());
                    // Late because the previous answer came after `due`: the
                    // wait counts. Late only by the timer's millisecond
                    // granularity: it does not.
                    let start = if previous_done > due { due } else { Instant::now() };
                    errors += fetch(&mut connection, &path).await;
                    previous_done = Instant::now();
                    latencies.push(previous_done - start);
                    due += per_connection;
                }
                (latencies, errors)
            })
        })
        .collect();
    gather(tasks, started).await
}

/// A server process that is killed when dropped.
pub struct Server {
    pub child: tokio::process::Child,
    pub port: u16,
}

/// Starts `swapstream <role>` with `vars` over a clean environment (any
/// port, JSON logs to `log`, no access log, no rate limit, two HTTP
/// workers), on CPU 1 when `pin`; returns once it logged its port.
pub async fn start(role: &str, vars: &[(&str, String)], log: &std::path::Path, pin: bool) -> Server {
    let file = std::fs::File::create(log).unwrap();
    let binary = env!("CARGO_BIN_EXE_swapstream");
    let mut command = tokio::process::Command::from(super::process::on_cpu(binary, pin.then_some(1)));
    command.arg(role).kill_on_drop(true).stdout(Stdio::null()).stderr(Stdio::from(file));
    super::process::clear_env(command.as_std_mut());
    command
        .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("SWAPSTREAM_LOG_FORMAT", "json")
        .env("SWAPSTREAM_HTTP_ACCESS_LOG", "false")
        .env("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0")
        .env("SWAPSTREAM_HTTP_WORKERS", "2")
        .envs(vars.iter().map(|(name, value)| (name, value)));
    let child = command.spawn().expect("starting swapstream");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(port) = super::process::logged_port(log) {
            break port;
        }
        assert!(Instant::now() < deadline, "{role} did not start: see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Server { child, port }
}

/// Redis' threads on CPU 1 while it lives; on every CPU again after.
pub struct RedisPinned;

impl RedisPinned {
    pub fn new() -> RedisPinned {
        pin_redis("1");
        RedisPinned
    }
}

impl Drop for RedisPinned {
    fn drop(&mut self) {
        // SAFETY: sysconf only reads a constant of the system.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1);
        pin_redis(&format!("0-{}", cpus - 1));
    }
}

/// Sets the CPUs of every thread of the running Redis (`taskset -a -p`).
fn pin_redis(cpus: &str) {
    let info = std::process::Command::new("redis-cli").args(["-p", "6379", "info", "server"]).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    let pid = text.lines().find_map(|l| l.strip_prefix("process_id:")).expect("Redis' process_id").trim();
    let status =
        std::process::Command::new("taskset").args(["-a", "-p", "-c", cpus, pid]).stdout(Stdio::null()).status();
    assert!(status.is_ok_and(|s| s.success()), "taskset -a -p -c {cpus} {pid} failed");
}

/// `redis-benchmark` at [`CONNECTIONS`] connections with `args` (its test or
/// command): (requests/s, p50 ms, p99 ms) of its first result.
pub async fn redis_benchmark(requests: u64, args: &[&str]) -> (f64, f64, f64) {
    let (connections, requests) = (CONNECTIONS.to_string(), requests.to_string());
    // Inherits this process' CPU when pinned.
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-c", &connections, "-n", &requests, "--csv"])
        .args(args)
        .output()
        .await
        .expect("redis-benchmark (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text.lines().find(|l| !l.starts_with("\"test\"") && l.starts_with('"')).expect("a result row");
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    let fields: Vec<f64> = row.rsplitn(8, ',').map(|f| f.trim_matches('"').parse().unwrap_or(0.0)).collect();
    // Taken from the end: a command's name may hold commas.
    (fields[6], fields[3], fields[1])
}
