//! REST benchmark: `GET /v1/tokens/ETH/stats` from role `api` (Redis and
//! PostgreSQL; also once with the stats cache off) and role `all`
//! (aggregator actors, with its producer running),
//! next to `redis-benchmark` GET, at 64 concurrent keep-alive connections, in
//! one run. For each server: the most requests/s the 64 connections get
//! (closed loop), and latency at a fixed 5000 requests/s (open loop, timed
//! from each request's scheduled start, so a stall counts in full).
//!
//! Needs PostgreSQL and Redis (`scripts/services up`); the broker is the
//! embedded one of role `all`. Run:
//!
//! ```sh
//! cargo bench --bench rest -- [seconds per measurement, default 10] [--pin]
//! ```
//!
//! `--pin`: the load generators (this process, `redis-benchmark`) on CPU 0,
//! the servers (`swapstream`, and Redis for the run) on CPU 1, so that the
//! server's latency is not the client's scheduling.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[path = "../tests/support/mod.rs"]
mod support;

const CONNECTIONS: usize = 64;
const FIXED_RATE: u64 = 5_000;
const PATH: &str = "/v1/tokens/ETH/stats";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs benches without it.
    }
    let args = support::args::checked("cargo bench --bench rest -- [SECONDS_PER_MEASUREMENT] [--pin]", &["--pin"], &[]);
    let seconds: u64 = args.numbers().first().copied().unwrap_or(10);
    let pin = args.flag("--pin");
    if pin {
        // Before the runtime starts, so that its threads inherit it.
        support::process::pin_to(0, 0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(Duration::from_secs(seconds), pin));
}

/// Redis' threads on CPU 1 while it lives; on every CPU again after.
struct RedisPinned;

impl RedisPinned {
    fn new() -> RedisPinned {
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

/// A server process that is killed when dropped.
struct Server {
    child: tokio::process::Child,
    port: u16,
}

async fn start(role: &str, schema: &str, cache_ms: u32, log: &std::path::Path, pin: bool) -> Server {
    let file = std::fs::File::create(log).unwrap();
    let binary = env!("CARGO_BIN_EXE_swapstream");
    let mut command = tokio::process::Command::from(support::process::on_cpu(binary, pin.then_some(1)));
    command.arg(role).kill_on_drop(true).stdout(Stdio::null()).stderr(Stdio::from(file));
    support::process::clear_env(command.as_std_mut());
    command
        .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("SWAPSTREAM_POSTGRES_SCHEMA", schema)
        .env("SWAPSTREAM_REDIS_KEY_PREFIX", schema)
        .env("SWAPSTREAM_LOG_FORMAT", "json")
        .env("SWAPSTREAM_HTTP_ACCESS_LOG", "false")
        .env("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0")
        .env("SWAPSTREAM_HTTP_WORKERS", "2")
        .env("SWAPSTREAM_PRODUCER_RATE", "6000")
        .env("SWAPSTREAM_HTTP_CACHE_MS", cache_ms.to_string());
    let child = command.spawn().expect("starting swapstream");
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(port) = support::process::logged_port(log) {
            break port;
        }
        assert!(Instant::now() < deadline, "{role} did not start: see {}", log.display());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Server { child, port }
}

/// One keep-alive connection: sends GETs, reads whole answers.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
    request: Vec<u8>,
}

impl Connection {
    async fn open(port: u16) -> Connection {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let request = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes();
        Connection { stream, buffer: Vec::with_capacity(16 << 10), request }
    }

    /// The status of one request.
    async fn get(&mut self) -> u16 {
        self.stream.write_all(&self.request).await.unwrap();
        self.buffer.clear();
        loop {
            let mut chunk = [0u8; 8192];
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

struct Measured {
    requests: u64,
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn measured(mut latencies: Vec<Duration>, elapsed: Duration) -> Measured {
    latencies.sort();
    Measured {
        requests: latencies.len() as u64,
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    }
}

/// Every connection's latencies, over the time since `started`.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) -> Measured {
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    measured(all, started.elapsed())
}

/// As fast as 64 connections go, each waiting for its answer.
async fn closed_loop(port: u16, length: Duration) -> Measured {
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            tokio::spawn(async move {
                let mut connection = Connection::open(port).await;
                let mut latencies = Vec::new();
                while started.elapsed() < length {
                    let sent = Instant::now();
                    assert_eq!(connection.get().await, 200);
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    gather(tasks, started).await
}

/// `FIXED_RATE` requests/s spread over the connections; a request that had
/// to wait for its connection's previous answer is timed from when it was
/// due, so the wait counts (no coordinated omission).
async fn open_loop(port: u16, length: Duration) -> Measured {
    let started = Instant::now();
    let per_connection = Duration::from_secs_f64(CONNECTIONS as f64 / FIXED_RATE as f64);
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            tokio::spawn(async move {
                let mut connection = Connection::open(port).await;
                let mut latencies = Vec::new();
                let mut due = started + per_connection.mul_f64(i as f64 / CONNECTIONS as f64);
                let mut previous_done = started;
                while due < started + length {
                    tokio::time::sleep_until(due.into()).await;
                    // Late because the previous answer came after `due`: the
                    // wait counts. Late only by the timer's millisecond
                    // granularity: it does not.
                    let start = if previous_done > due { due } else { Instant::now() };
                    assert_eq!(connection.get().await, 200);
                    previous_done = Instant::now();
                    latencies.push(previous_done - start);
                    due += per_connection;
                }
                latencies
            })
        })
        .collect();
    gather(tasks, started).await
}

/// `redis-benchmark` GET at the same concurrency: (requests/s, p50, p99).
async fn redis_get(length: Duration) -> (f64, f64, f64) {
    let requests = (120_000 * length.as_secs()).to_string();
    // Inherits this process' CPU when pinned.
    let output = tokio::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-c", "64", "-n", &requests, "-t", "get", "--csv"])
        .output()
        .await
        .expect("redis-benchmark (Debian package redis-tools)");
    let text = String::from_utf8_lossy(&output.stdout);
    let row = text.lines().find(|l| l.starts_with("\"GET\"")).expect("a GET row");
    let fields: Vec<f64> = row.split(',').skip(1).map(|f| f.trim_matches('"').parse().unwrap_or(0.0)).collect();
    // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    (fields[0], fields[3], fields[5])
}

async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut connection = Connection::open(port).await;
        if connection.get().await == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "no ETH stats on port {port}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run(length: Duration, pin: bool) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-rest");
    std::fs::create_dir_all(&dir).unwrap();
    let schema = format!("bench_rest_{}", std::process::id());
    let _redis_pinned = pin.then(RedisPinned::new);
    let mut all = start("all", &schema, 250, &dir.join("all.log"), pin).await;
    wait_ready(all.port).await;
    // `all` with the embedded broker keeps its state under `<name>_embedded`.
    let api = start("api", &format!("{schema}_embedded"), 250, &dir.join("api.log"), pin).await;
    wait_ready(api.port).await;
    let uncached = start("api", &format!("{schema}_embedded"), 0, &dir.join("api-uncached.log"), pin).await;
    wait_ready(uncached.port).await;
    println!("warming up; {length:?} per measurement, {CONNECTIONS} connections, pinned: {pin}");
    closed_loop(api.port, Duration::from_secs(2)).await;
    closed_loop(all.port, Duration::from_secs(2)).await;

    let mut rows = Vec::new();
    for (name, port) in [("api", api.port), ("all", all.port), ("api, stats cache off", uncached.port)] {
        let max = closed_loop(port, length).await;
        let fixed = open_loop(port, length).await;
        rows.push((name, max, fixed));
    }
    let (redis_rate, redis_p50, redis_p99) = redis_get(length).await;

    println!("| server | max req/s (64 conns) | p50 ms | p99 ms | at {FIXED_RATE} req/s: p50 ms | p99 ms | requests |");
    println!("|---|---|---|---|---|---|---|");
    for (name, max, fixed) in &rows {
        println!(
            "| swapstream `{name}` | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
            max.rate,
            max.p50_ms,
            max.p99_ms,
            fixed.p50_ms,
            fixed.p99_ms,
            max.requests + fixed.requests
        );
        if fixed.rate < FIXED_RATE as f64 * 0.9 {
            println!("  ({name} reached only {:.0} req/s of {FIXED_RATE} in the fixed-rate run)", fixed.rate);
        }
    }
    println!("| redis-benchmark GET | {redis_rate:.0} | {redis_p50:.3} | {redis_p99:.3} | - | - | - |");
    let _ = all.child.start_kill();
    drop(api);
    drop(uncached);
    let _ = all.child.wait().await;
}
