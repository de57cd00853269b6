//! WebSocket fan-out: N clients on one `consumer` instance while the
//! producer sends a steady stream; delivered frames per second, latency
//! from each swap's event timestamp to its receipt by a client (p50, p99),
//! and the server's resident memory per idle connection.
//!
//! `cargo bench --bench websocket -- [CLIENTS...] [--rate SWAPS_PER_S] [--secs S] [--one-channel] [--channels N] [--pin] [--mock] [--debug-log] [--set NAME=VALUE]...`
//! (defaults: 1000 and 10000 clients, 1000 swaps/s, i.e. 2000 events/s as
//! each swap is a pending and a terminal event, 20 s per run) with
//! the services up (`scripts/services up`). The broker is Apache Kafka at
//! `SWAPSTREAM_TEST_BROKERS` (127.0.0.1:9092 by default), or with `--mock`
//! librdkafka's mock cluster in a process of its own
//! ([`support::mock_broker::MockBroker`]). Clients subscribe
//! round-robin to every token and pair channel, to the first N of them
//! (the token channels first) with `--channels N`, or all to `token:ETH` with
//! `--one-channel`. `--pin` runs this process (the clients) on CPU 0 and the
//! consumer on CPU 1. The server's own share of the latency, from a swap
//! update's arrival over Redis pub/sub to its frames' hand-over to each
//! client's socket, is the consumer's `swapstream_ws_fanout_seconds` over
//! the measured seconds. `--debug-log` runs the consumer at log level `debug`
//! (a line per batch and per checkpoint); the consumer's log path is
//! printed. `--set SWAPSTREAM_...=VALUE` (repeatable) passes a setting to
//! the consumer. Prints a Markdown table row per run for docs/BENCHMARKS.md.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

#[path = "../tests/support/mod.rs"]
mod support;
use support::process::{raise_fd_limit, TOKENS};
use support::procfs::{pids_named, pids_running, rss_kib, CpuShares};

fn channels(one: bool, first: Option<usize>) -> Vec<String> {
    if one {
        return vec!["token:ETH".into()];
    }
    let tokens: Vec<&str> = TOKENS.split(',').collect();
    let mut all: Vec<String> = tokens.iter().map(|t| format!("token:{t}")).collect();
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[i + 1..] {
            all.push(format!("pair:{a}-{b}"));
        }
    }
    all.truncate(first.unwrap_or(usize::MAX).max(1));
    all
}

/// The event timestamps in a frame or update message, in order, without
/// parsing the whole text.
fn event_times(text: &str) -> impl Iterator<Item = DateTime<Utc>> + '_ {
    text.split("\"timestamp\":\"").skip(1).filter_map(|rest| {
        let end = rest.find('"')?;
        DateTime::parse_from_rfc3339(&rest[..end]).ok().map(|t| t.with_timezone(&Utc))
    })
}

/// The top bit of a recorded latency marks a pending swap.
const PENDING: u32 = 1 << 31;

/// A latency in microseconds since `at`, below the pending bit.
fn micros_since(at: DateTime<Utc>, now: DateTime<Utc>) -> u32 {
    (now - at).num_microseconds().unwrap_or(0).clamp(0, i64::from(PENDING - 1)) as u32
}

/// The `q` quantile of sorted microseconds, in milliseconds (0 when empty).
fn quantile_ms(sorted: &[u32], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or(0) as f64 / 1e3
}

/// Latencies without the pending bit, sorted.
fn sorted_micros<'a>(latencies: impl Iterator<Item = &'a (u32, i64)>) -> Vec<u32> {
    let mut sorted: Vec<u32> = latencies.map(|(l, _)| l & !PENDING).collect();
    sorted.sort_unstable();
    sorted
}

/// Latency above this counts towards a stall.
const STALL_MS: u32 = 25;

/// Whether the frames over `STALL_MS` are spread over the run or come in a
/// few stalls: frames of swaps whose event times lie within 100 ms of each
/// other form one stall. Prints the count and the three largest, each with
/// its first event time (UTC), to match against the servers' logs.
fn stalls(latencies: &[(u32, i64)]) -> String {
    let mut slow: Vec<(i64, u32)> =
        latencies.iter().map(|(l, at)| (*at, (l & !PENDING) / 1000)).filter(|(_, ms)| *ms > STALL_MS).collect();
    slow.sort_unstable();
    // (first event ms, last event ms, frames, worst ms)
    let mut groups: Vec<(i64, i64, usize, u32)> = Vec::new();
    for (at, ms) in slow {
        match groups.last_mut() {
            Some(g) if at - g.1 <= 100 => *g = (g.0, at, g.2 + 1, g.3.max(ms)),
            _ => groups.push((at, at, 1, ms)),
        }
    }
    let total = latencies.len().max(1);
    let slow_frames: usize = groups.iter().map(|g| g.2).sum();
    groups.sort_by_key(|g| std::cmp::Reverse(g.2));
    let largest: Vec<String> = groups
        .iter()
        .take(3)
        .map(|g| {
            let at = DateTime::from_timestamp_millis(g.0).unwrap_or_default().format("%H:%M:%S%.3f");
            format!("{} frames over {} ms of events from {at}, worst {} ms", g.2, g.1 - g.0, g.3)
        })
        .collect();
    format!(
        "frames over {STALL_MS} ms: {slow_frames} of {total} ({:.2} %) in {} stalls; largest: {}",
        slow_frames as f64 * 100.0 / total as f64,
        groups.len(),
        largest.join("; ")
    )
}

/// What every run of one invocation shares.
struct Options {
    swaps_per_s: u64,
    secs: u64,
    one_channel: bool,
    /// `--channels N`: the first N channels only.
    channels: Option<usize>,
    /// `--pin`: clients on CPU 0, the consumer on CPU 1.
    pin: bool,
    mock: bool,
    debug_log: bool,
    /// `--set NAME=VALUE`: settings of the consumer beyond the bench's own.
    consumer_env: Vec<(String, String)>,
}

struct Run {
    clients: usize,
    served: usize,
    frames: u64,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
    rss_per_conn_kib: f64,
    rss_idle_mib: f64,
    rss_busy_mib: f64,
}

// Connecting yields each client's reader task, joined after the measurement.
#[allow(clippy::async_yields_async)]
fn run(clients: usize, options: &Options) -> Run {
    let Options { swaps_per_s, secs, one_channel, channels, pin, mock, debug_log, ref consumer_env } = *options;
    let id = format!("wsbench_{:08x}", rand::random::<u32>());
    let mut topics: Vec<String> = TOKENS.split(',').map(|t| format!("{id}.{t}")).collect();
    topics.push(format!("{id}-dlq"));
    let mock = mock.then(|| support::mock_broker::MockBroker::start(&topics, 4));
    let brokers = match &mock {
        Some(mock) => mock.bootstrap.clone(),
        None => std::env::var("SWAPSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
    };
    let binary = env!("CARGO_BIN_EXE_swapstream");
    let base = |command: &mut std::process::Command| {
        support::process::stream_env(command, &brokers, &id, 4);
        if mock.is_some() {
            // The mock answers an empty fetch only after the full wait, even
            // when data arrives meanwhile (Kafka answers at once).
            command.env("SWAPSTREAM_KAFKA_OPTIONS", "fetch.wait.max.ms=1");
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // Topics first, so the consumer owns its partitions before clients come.
    let mut create = std::process::Command::new(binary);
    base(&mut create);
    let status = create.args(["producer", "--count", "1", "--rate", "max"]).stderr(Stdio::null()).status().unwrap();
    assert!(status.success(), "producer (topic creation) failed");

    let log = format!("/tmp/{id}-consumer.log");
    let mut consumer = support::process::on_cpu(binary, pin.then_some(1));
    base(&mut consumer);
    let mut child = consumer
        .arg("consumer")
        .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
        .env("SWAPSTREAM_WS_MAX_CONNS_PER_IP", "1000000")
        .env("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0")
        .env("SWAPSTREAM_HTTP_ACCESS_LOG", "false")
        .env("SWAPSTREAM_WS_PING_INTERVAL_MS", "30000")
        .env("SWAPSTREAM_WS_PING_TIMEOUT_MS", "120000")
        .env("SWAPSTREAM_LOG_LEVEL", if debug_log { "debug" } else { "info" })
        .envs(consumer_env.iter().cloned())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .expect("consumer");
    let pid = child.id();
    let port = support::process::wait_for_port(std::path::Path::new(&log), Duration::from_secs(30));
    eprintln!("consumer log: {log}");
    std::thread::sleep(Duration::from_secs(3)); // group join; not measured
    let rss_base = rss_kib(pid);

    let channels = self::channels(one_channel, channels);
    let frames = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let result = runtime.block_on(async {
        // Connect and subscribe every client, 200 at a time. Each starts
        // reading (and so answering pings) as soon as it is subscribed;
        // frames before the measurement are not counted.
        let mut tasks = Vec::with_capacity(clients);
        for chunk in (0..clients).collect::<Vec<_>>().chunks(200) {
            let connecting = chunk.iter().map(|i| {
                let channel = channels[i % channels.len()].clone();
                let (frames, measuring) = (frames.clone(), measuring.clone());
                async move {
                    let url = format!("ws://127.0.0.1:{port}/v1/ws");
                    let (mut socket, _) =
                        tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true)
                            .await
                            .expect("connect");
                    let request = format!(r#"{{"op":"subscribe","channels":["{channel}"]}}"#);
                    socket.send(Message::text(request)).await.unwrap();
                    loop {
                        if let Some(Ok(Message::Text(text))) = socket.next().await {
                            if text.contains("\"subscribed\"") {
                                break;
                            }
                        }
                    }
                    // The reader's handle, joined after the measurement.
                    tokio::spawn(read_frames(socket, frames, measuring))
                }
            });
            tasks.extend(futures::future::join_all(connecting).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_idle = rss_kib(pid);

        let mut producer = std::process::Command::new(binary);
        base(&mut producer);
        let events_per_min = swaps_per_s * 2 * 60;
        let mut producer = producer
            .args(["producer", "--rate", &events_per_min.to_string()])
            .env("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "500")
            .stderr(Stdio::null())
            .spawn()
            .expect("producer");
        tokio::time::sleep(Duration::from_secs(3)).await; // warm-up

        // The same swaps as the consumer publishes them, before the fan-out.
        // On a thread of its own: in the clients' runtime it would wait
        // behind the clients' reads and time the fan-out's bursts too.
        let published = {
            let (id, measuring) = (id.clone(), measuring.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(read_published(id, measuring))
            })
        };
        let broker = match &mock {
            Some(mock) => vec![mock.pid()],
            None => pids_running("kafka.Kafka"),
        };
        let cpu = CpuShares::start(vec![
            ("consumer", vec![pid]),
            ("PostgreSQL", pids_named("postgres")),
            ("broker", broker),
            ("producer", vec![producer.id()]),
            ("Redis", pids_named("redis-server")),
            ("bench clients", vec![std::process::id()]),
        ]);
        let metrics_before = support::http::get(port, "/metrics").await.1;
        measuring.store(true, Ordering::Relaxed);
        let started = Instant::now();
        let mut rss_busy = 0;
        while started.elapsed() < Duration::from_secs(secs) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_busy = rss_busy.max(rss_kib(pid));
        }
        measuring.store(false, Ordering::Relaxed);
        let measured = started.elapsed().as_secs_f64();
        eprintln!("{}", cpu.finish());
        // Where the time went, from the consumer's own histograms.
        let metrics = support::http::get(port, "/metrics").await.1;
        for name in
            ["swapstream_read_delay_seconds", "swapstream_checkpoint_duration_seconds", "swapstream_live_write_seconds"]
        {
            eprintln!("{}", support::metrics::histogram_summary(&metrics, name));
        }
        eprintln!(
            "fan-out, pub/sub arrival to socket (measured seconds only): {}",
            support::metrics::histogram_summary_between(&metrics_before, &metrics, "swapstream_ws_fanout_seconds")
        );
        let delivered = frames.load(Ordering::Relaxed);
        let _ = producer.kill();
        let _ = producer.wait();
        // Idle again: what the clients keep once the traffic has stopped,
        // their queues have drained and the allocator's dirty pages have
        // decayed (jemalloc: 10 s by default).
        tokio::time::sleep(Duration::from_secs(12)).await;
        let rss_after = rss_kib(pid);
        eprintln!(
            "RSS idle again, 12 s after the load: {:.0} MiB ({:.1} KiB per connection)",
            rss_after as f64 / 1024.0,
            (rss_after as f64 - rss_base as f64) / clients as f64
        );
        let _ = child.kill();
        let _ = child.wait();
        let mut latencies = Vec::new();
        let mut served = 0;
        for task in tasks {
            if let Ok((got, mut l)) = task.await {
                served += usize::from(got > 0);
                latencies.append(&mut l);
            }
        }
        let split = |pending: bool| {
            let part = sorted_micros(latencies.iter().filter(|(l, _)| (l & PENDING != 0) == pending));
            format!("p50 {:.1} ms, p99 {:.1} ms", quantile_ms(&part, 0.5), quantile_ms(&part, 0.99))
        };
        eprintln!("pending swaps: {}; confirmed swaps: {}", split(true), split(false));
        eprintln!("at the client: {}", stalls(&latencies));
        if let Ok(Ok(at_redis)) = published.join() {
            let sorted = sorted_micros(at_redis.iter());
            eprintln!(
                "at Redis pub/sub: p50 {:.1} ms, p99 {:.1} ms",
                quantile_ms(&sorted, 0.5),
                quantile_ms(&sorted, 0.99)
            );
            eprintln!("at Redis pub/sub: {}", stalls(&at_redis));
        }
        let latencies = sorted_micros(latencies.iter());
        Run {
            clients,
            served,
            frames: delivered,
            secs: measured,
            p50_ms: quantile_ms(&latencies, 0.5),
            p99_ms: quantile_ms(&latencies, 0.99),
            rss_per_conn_kib: (rss_idle as f64 - rss_base as f64) / clients as f64,
            rss_idle_mib: rss_idle as f64 / 1024.0,
            rss_busy_mib: rss_busy as f64 / 1024.0,
        }
    });
    runtime.block_on(async {
        support::stores::forget(&id).await;
        if mock.is_none() {
            support::kafka::delete_topics(&brokers, &topics).await;
        }
    });
    result
}

/// The bench clients' WebSocket settings. tungstenite zero-fills its read
/// buffer up to `read_buffer_size` past what it holds before every read: at
/// its default of 128 KiB that memset was 41 % of the clients' CPU, taken
/// from the two cores the server under test shares with them.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(8 * 1024)
}

/// Subscribes to every update channel of the consumer's key prefix and
/// times each published swap as `read_frames` does, until measuring ends:
/// the pipeline up to the fan-out.
async fn read_published(
    prefix: String,
    measuring: Arc<std::sync::atomic::AtomicBool>,
) -> redis::RedisResult<Vec<(u32, i64)>> {
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.psubscribe(format!("{prefix}:updates:*")).await?;
    let mut stream = pubsub.into_on_message();
    let mut latencies = Vec::new();
    let mut measured = false;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
        if !measuring.load(Ordering::Relaxed) {
            if measured {
                break;
            }
            continue;
        }
        measured = true;
        let message = match next {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => continue,
        };
        let now = Utc::now();
        let payload: String = message.get_payload().unwrap_or_default();
        latencies.extend(event_times(&payload).map(|at| (micros_since(at, now), at.timestamp_millis())));
    }
    Ok(latencies)
}

/// Reads a client's frames until the connection ends: how many arrived
/// while measuring, and of each swap frame its latency in microseconds and
/// its event time in unix milliseconds.
async fn read_frames<S>(
    mut socket: S,
    frames: Arc<AtomicU64>,
    measuring: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<(u32, i64)>)
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let mut latencies: Vec<(u32, i64)> = Vec::new();
    let mut got = 0u64;
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            if !measuring.load(Ordering::Relaxed) {
                continue;
            }
            got += 1;
            frames.fetch_add(1, Ordering::Relaxed);
            if text.starts_with("{\"type\":\"swap\"") {
                if let Some(at) = event_times(&text).next() {
                    let pending = if text.contains("\"status\":\"pending\"") { PENDING } else { 0 };
                    latencies.push((micros_since(at, Utc::now()) | pending, at.timestamp_millis()));
                }
            }
        }
    }
    (got, latencies)
}

fn main() {
    support::mock_broker::serve_mock_broker_if_asked();
    // `cargo test --all-targets` runs bench targets without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("websocket benchmark: run it with `cargo bench --bench websocket`");
        return;
    }
    let limit = raise_fd_limit();
    // Client counts are the numbers that are not the value of an option.
    let args = support::args::checked(
        "cargo bench --bench websocket -- [CLIENTS...] [--rate SWAPS_PER_S] [--secs S] [--one-channel] \
         [--channels N] [--pin] [--mock] [--debug-log] [--set NAME=VALUE]...",
        &["--one-channel", "--pin", "--mock", "--debug-log"],
        &["--rate", "--secs", "--set", "--channels"],
    );
    let mut counts: Vec<usize> = args.numbers();
    if counts.is_empty() {
        counts = vec![1000, 10_000];
    }
    let options = Options {
        swaps_per_s: args.value("--rate").unwrap_or(1000),
        secs: args.value("--secs").unwrap_or(20),
        one_channel: args.flag("--one-channel"),
        channels: args.value("--channels"),
        pin: args.flag("--pin"),
        mock: args.flag("--mock"),
        debug_log: args.flag("--debug-log"),
        consumer_env: args
            .values("--set")
            .filter_map(|set| set.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect(),
    };
    if options.pin {
        // Before any runtime starts, so that its threads inherit it.
        support::process::pin_to(0, 0);
    }
    eprintln!("file descriptor limit {limit}");
    println!(
        "| clients | channels | served | frames/s delivered | p50 | p99 | RSS idle (per connection) | RSS under load |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for clients in counts {
        let r = run(clients, &options);
        println!(
            "| {} | {} | {} | {:.0} | {:.1} ms | {:.1} ms | {:.0} MiB ({:.1} KiB) | {:.0} MiB |",
            r.clients,
            match (options.one_channel, options.channels) {
                (true, _) => "token:ETH".to_owned(),
                (false, Some(n)) => format!("first {n}, round-robin"),
                (false, None) => "21, round-robin".to_owned(),
            },
            r.served,
            r.frames as f64 / r.secs,
            r.p50_ms,
            r.p99_ms,
            r.rss_idle_mib,
            r.rss_per_conn_kib,
            r.rss_busy_mib,
        );
    }
}
