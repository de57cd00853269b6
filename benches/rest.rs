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

use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use support::load::{self, Connection, Server, CONNECTIONS};

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

async fn start(role: &str, schema: &str, cache_ms: u32, log: &std::path::Path, pin: bool) -> Server {
    let vars = [
        ("SWAPSTREAM_POSTGRES_SCHEMA", schema.to_owned()),
        ("SWAPSTREAM_REDIS_KEY_PREFIX", schema.to_owned()),
        ("SWAPSTREAM_PRODUCER_RATE", "6000".to_owned()),
        ("SWAPSTREAM_HTTP_CACHE_MS", cache_ms.to_string()),
    ];
    load::start(role, &vars, log, pin).await
}

async fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut connection = Connection::open(port).await;
        if connection.get(PATH).await == 200 {
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
    let _redis_pinned = pin.then(load::RedisPinned::new);
    let mut all = start("all", &schema, 250, &dir.join("all.log"), pin).await;
    wait_ready(all.port).await;
    // `all` with the embedded broker keeps its state under `<name>_embedded`.
    let api = start("api", &format!("{schema}_embedded"), 250, &dir.join("api.log"), pin).await;
    wait_ready(api.port).await;
    let uncached = start("api", &format!("{schema}_embedded"), 0, &dir.join("api-uncached.log"), pin).await;
    wait_ready(uncached.port).await;
    println!("warming up; {length:?} per measurement, {CONNECTIONS} connections, pinned: {pin}");
    let path = load::one_path(PATH);
    load::closed_loop(api.port, CONNECTIONS, Duration::from_secs(2), path.clone()).await;
    load::closed_loop(all.port, CONNECTIONS, Duration::from_secs(2), path.clone()).await;

    let mut rows = Vec::new();
    for (name, port) in [("api", api.port), ("all", all.port), ("api, stats cache off", uncached.port)] {
        let max = load::closed_loop(port, CONNECTIONS, length, path.clone()).await;
        let fixed = load::open_loop(port, CONNECTIONS, FIXED_RATE, length, path.clone()).await;
        rows.push((name, max, fixed));
    }
    let (redis_rate, redis_p50, redis_p99) = load::redis_benchmark(120_000 * length.as_secs(), &["-t", "get"]).await;
    // Context, not the target's reference: Redis answering as many bytes as we do.
    let answer = answer_bytes(api.port).await;
    let sized = sized_redis_get(120_000 * length.as_secs(), answer).await;

    load::print_header("server");
    for (name, max, fixed) in &rows {
        load::print_row(&format!("swapstream `{name}` (fixed: {FIXED_RATE}/s)"), max, fixed, FIXED_RATE);
    }
    println!("| redis-benchmark GET | {redis_rate:.0} | {redis_p50:.3} | {redis_p99:.3} | - | - | - | - |");
    let (rate, p50, p99) = sized;
    println!("| redis-benchmark GET of a {answer}-byte value (our answer's size) | {rate:.0} | {p50:.3} | {p99:.3} | - | - | - | - |");
    let _ = all.child.start_kill();
    drop(api);
    drop(uncached);
    let _ = all.child.wait().await;
    support::stores::forget(&schema).await;
    support::stores::forget(&format!("{schema}_embedded")).await;
}

/// The bytes of one answer to [`PATH`], headers included, as a client
/// without compression gets it.
async fn answer_bytes(port: u16) -> usize {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&answer));
    answer.len()
}

/// `redis-benchmark` GET of a `bytes`-long value (its key set first, and
/// deleted after, so that the plain GET reference of the next run is not
/// changed): what Redis does with an answer as large as ours.
async fn sized_redis_get(requests: u64, bytes: usize) -> (f64, f64, f64) {
    let size = bytes.to_string();
    load::redis_benchmark(1, &["-t", "set", "-d", &size]).await;
    let result = load::redis_benchmark(requests, &["-t", "get", "-d", &size]).await;
    let deleted = std::process::Command::new("redis-cli").args(["-p", "6379", "del", "key:__rand_int__"]).output();
    assert!(deleted.is_ok_and(|o| o.status.success()), "deleting redis-benchmark's key");
    result
}
