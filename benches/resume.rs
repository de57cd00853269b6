//! What resuming costs: CLIENTS WebSocket clients reconnect at once to one
//! `api` instance and each resumes `token:ETH` from the same position,
//! MISSED swap frames back in the channel's history. Replayed frames per
//! second (all clients' frames over the time from the first subscribe sent
//! to the last replay received), and the p50/p99 of a client's time from
//! its subscribe to its last replayed frame.
//!
//! `cargo bench --bench resume -- [CLIENTS] [--missed N] [--per-entry K] [--pin]`
//! (defaults: 1000 clients, 1000 missed frames in entries of 10 swaps, as
//! the swap feed writes a batch's swaps of a channel as entries of up to 1000) with
//! Redis and PostgreSQL up (`scripts/services up`; no broker is needed:
//! the history is written here through the library's swap feed writer).
//! `--pin` runs the clients on CPU 0 and the server and Redis on CPU 1
//! (`taskset`). Prints a Markdown table row for docs/BENCHMARKS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use swapstream::domain::partial::AggKey;
use swapstream::storage::redis::{FeedSwap, RedisStore, SwapUpdate};
use tokio_tungstenite::tungstenite::Message;

#[path = "../tests/support/mod.rs"]
mod support;
use support::process::{raise_fd_limit, Child};

fn swap(n: usize) -> Arc<str> {
    json!({"tx_hash": format!("0x{n:064x}"), "log_index": 0, "block_number": 1, "status": "confirmed",
        "timestamp": "2026-12-04T08:00:00Z", "maker": format!("0x{:040x}", n % 97), "token_from": "USDC",
        "token_to": "ETH", "amount_from": "4000.5", "amount_to": "1.25", "usd_value": "4000.5"})
    .to_string()
    .into()
}

/// One client: connects, resumes from `since`, reads `missed` swap frames;
/// the time from its subscribe to its last one.
async fn resume_one(port: u16, since: Value, missed: usize, go: Arc<tokio::sync::Barrier>) -> Duration {
    let url = format!("ws://127.0.0.1:{port}/v1/ws");
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("connect");
    go.wait().await;
    let started = Instant::now();
    let request = json!({"op": "subscribe", "channels": ["token:ETH"], "since": since}).to_string();
    socket.send(Message::text(request)).await.expect("subscribe");
    let mut swaps = 0;
    while swaps < missed {
        match socket.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with(r#"{"type":"swap""#) => swaps += 1,
            Some(Ok(Message::Text(text))) if text.contains(r#""type":"subscribed""#) => {
                assert!(text.contains(r#""recovered":true"#), "not recovered: {text}");
            }
            Some(Ok(Message::Text(text))) => panic!("unexpected frame: {text}"),
            Some(Ok(_)) => {}
            other => panic!("connection ended after {swaps} frames: {other:?}"),
        }
    }
    started.elapsed()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --benches` builds this, not runs it
    }
    let args = support::args::checked(
        "cargo bench --bench resume -- [CLIENTS] [--missed N] [--per-entry K] [--pin]",
        &["--pin"],
        &["--missed", "--per-entry"],
    );
    let clients: usize = args.numbers().first().copied().unwrap_or(1000);
    let missed: usize = args.value("--missed").unwrap_or(1000);
    let per_entry: usize = args.value("--per-entry").unwrap_or(10usize).max(1);
    let pin = args.flag("--pin");
    raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let id = format!("resumebench_{:08x}", rand::random::<u32>());
        let vars = [
            ("SWAPSTREAM_POSTGRES_SCHEMA", id.clone()),
            ("SWAPSTREAM_REDIS_KEY_PREFIX", id.clone()),
            ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SWAPSTREAM_LOG_FORMAT", "json".to_owned()),
            ("SWAPSTREAM_HTTP_ACCESS_LOG", "false".to_owned()),
            ("SWAPSTREAM_RATE_LIMIT_PER_SEC", "0".to_owned()),
            ("SWAPSTREAM_WS_MAX_CONNS_PER_IP", "1000000".to_owned()),
            ("SWAPSTREAM_WS_HISTORY_SIZE", "100000".to_owned()),
        ];
        let mut api = Child::spawn(&format!("{id}-api"), &["api"], &vars);
        let port = loop {
            if let Some(port) = support::process::logged_port(&api.log) {
                break port;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if pin {
            let pin_to = |cpu: &str, pid: u32| {
                let status =
                    std::process::Command::new("taskset").args(["-a", "-p", "-c", cpu, &pid.to_string()]).output();
                assert!(status.is_ok_and(|o| o.status.success()), "taskset -p {cpu} {pid}");
            };
            pin_to("0", std::process::id());
            pin_to("1", api.pid() as u32);
            for redis in support::procfs::pids_named("redis-server") {
                pin_to("1", redis);
            }
        }

        // The history: an epoch and a position before `missed` swaps.
        let settings = swapstream::config::Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.clone())))
            .expect("settings");
        let history = swapstream::config::WsHistory { size: 100_000, max_age: Duration::from_secs(3600) };
        let feed = RedisStore::connect(&settings.redis, 100).await.expect("Redis").with_history(history);
        let key = AggKey::parse("token:ETH").unwrap();
        let update = |numbers: std::ops::Range<usize>| SwapUpdate {
            key: key.clone(),
            swaps: numbers.map(|n| FeedSwap { json: swap(n), source: "bench/0".into(), offset: n as i64 }).collect(),
            gap: false,
        };
        feed.publish_swaps(&[update(0..1)]).await.unwrap();
        let head = feed.history(&key, None).await.unwrap();
        let since = json!({"token:ETH": {"epoch": head.epoch, "offset": head.head.to_string()}});
        for start in (1..=missed).step_by(per_entry) {
            feed.publish_swaps(&[update(start..(start + per_entry).min(missed + 1))]).await.unwrap();
        }

        let go = Arc::new(tokio::sync::Barrier::new(clients + 1));
        let tasks: Vec<_> =
            (0..clients).map(|_| tokio::spawn(resume_one(port, since.clone(), missed, go.clone()))).collect();
        go.wait().await;
        let started = Instant::now();
        let mut times: Vec<Duration> = Vec::with_capacity(clients);
        for task in tasks {
            times.push(task.await.expect("client"));
        }
        let elapsed = started.elapsed();
        times.sort_unstable();
        let quantile = |q: f64| times[((times.len() as f64 * q).ceil() as usize).saturating_sub(1)].as_secs_f64() * 1e3;
        let frames = clients * missed;
        let rss = support::procfs::rss_kib(api.pid() as u32);
        eprintln!("api log: {}", api.log.display());
        println!("| clients | missed each | per entry | frames replayed | time | frames/s | p50 | p99 | api RSS |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {clients} | {missed} | {per_entry} | {frames} | {:.2} s | {:.0} | {:.0} ms | {:.0} ms | {} MiB |",
            elapsed.as_secs_f64(),
            frames as f64 / elapsed.as_secs_f64(),
            quantile(0.5),
            quantile(0.99),
            rss / 1024
        );
        let _ = api.terminate(Duration::from_secs(10)).await;
        support::stores::forget(&id).await;
    });
}
