//! Idle cost: `swapstream all` (producer, consumer and API in one process)
//! at the design's rate, 1000 events a minute (about 16 events/s), against
//! Apache Kafka; the CPU it uses, and the broker's, over a quiet minute.
//!
//! `cargo bench --bench idle -- [--rate EVENTS_PER_MINUTE] [--secs S] [--warmup S] [--shared-broker]`
//! (defaults: 1000 events a minute, 60 s measured after 60 s of warm-up)
//! with PostgreSQL and Redis up (`scripts/services up`). The broker is one
//! of the run's own (`scripts/services broker-start` in a temporary folder,
//! on free ports), holding this stream's topics only: the shared one
//! carries every topic the tests ever made, and its idle cost grows with
//! them. `--shared-broker` uses `SWAPSTREAM_TEST_BROKERS` (127.0.0.1:9092 by
//! default) instead. Prints each process's share of one core, its context
//! switches a second (wakeups: timers and polling loops show there first),
//! and a Markdown row for docs/BENCHMARKS.md. Fails if the stream did not
//! flow.

use std::process::Stdio;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;
use support::kafka::OwnBroker;
use support::procfs::{context_switches, cpu_secs, pids_named, pids_running, threads_cpu_secs};

const USAGE: &str = "cargo bench --bench idle -- [--rate EVENTS_PER_MINUTE] [--secs S] [--warmup S] [--shared-broker]";

/// CPU seconds and context switches of a set of processes.
fn usage(pids: &[u32]) -> (f64, u64) {
    (pids.iter().map(|&p| cpu_secs(p)).sum(), pids.iter().map(|&p| context_switches(p)).sum())
}

/// `swapstream_events_consumed_total`, summed over its labels.
fn consumed(port: u16) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_, text) = runtime.block_on(support::http::get(port, "/metrics"));
    text.lines()
        .filter(|l| l.starts_with("swapstream_events_consumed_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("idle benchmark: run it with `cargo bench --bench idle`");
        return;
    }
    let args = support::args::checked(USAGE, &["--shared-broker"], &["--rate", "--secs", "--warmup"]);
    let rate: u64 = args.value("--rate").unwrap_or(1000);
    let secs: u64 = args.value("--secs").unwrap_or(60);
    let warmup: u64 = args.value("--warmup").unwrap_or(60);
    let folder = tempfile::Builder::new().prefix("swapstream-idle").tempdir().unwrap();
    let own = (!args.flag("--shared-broker")).then(|| {
        let broker = OwnBroker::new(folder.path());
        broker.start();
        broker
    });
    let (brokers, broker_pids) = match &own {
        Some(broker) => {
            let pid = std::fs::read_to_string(folder.path().join("kafka/broker/kafka.pid")).unwrap();
            (broker.brokers(), vec![pid.trim().parse().unwrap()])
        }
        None => (
            std::env::var("SWAPSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
            pids_running("kafka.Kafka"),
        ),
    };
    let id = format!("idlebench_{:08x}", rand::random::<u32>());
    let log = format!("/tmp/{id}-all.log");
    let mut command = std::process::Command::new(support::process::binary());
    support::process::stream_env(&mut command, &brokers, &id, 4);
    let mut child = command
        .arg("all")
        .env("SWAPSTREAM_PRODUCER_RATE", rate.to_string())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stdout(Stdio::null())
        .spawn()
        .expect("swapstream all");
    let pid = child.id();
    eprintln!("swapstream all: log {log}");
    let port = support::process::wait_for_port(std::path::Path::new(&log), Duration::from_secs(60));
    // Group join, topic creation, first checkpoints: not measured.
    std::thread::sleep(Duration::from_secs(warmup));

    let parts: Vec<(&str, Vec<u32>)> = vec![
        ("swapstream all", vec![pid]),
        ("Apache Kafka", broker_pids),
        ("PostgreSQL", pids_named("postgres")),
        ("Redis", pids_named("redis-server")),
    ];
    // The JVM's just-in-time compiler goes on for minutes at this load
    // after a start: shown apart, as it stops once the broker has warmed up.
    let jit = || -> f64 {
        parts[1].1.iter().map(|&p| threads_cpu_secs(p, "C1 Compiler") + threads_cpu_secs(p, "C2 Compiler")).sum()
    };
    let jit_before = jit();
    let before: Vec<(f64, u64)> = parts.iter().map(|(_, pids)| usage(pids)).collect();
    let consumed_before = consumed(port);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    let wall = started.elapsed().as_secs_f64();
    let after: Vec<(f64, u64)> = parts.iter().map(|(_, pids)| usage(pids)).collect();
    let jit_share = (jit() - jit_before) * 100.0 / wall;
    let events = consumed(port) - consumed_before;

    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(support::stores::forget(&id));
    if let Some(broker) = own {
        broker.stop();
    }

    let expected = rate as f64 / 60.0 * wall;
    eprintln!(
        "consumed {events:.0} events in {wall:.1} s ({:.1}/s; the producer's rate {:.1}/s)",
        events / wall,
        rate as f64 / 60.0
    );
    let mut shares = Vec::new();
    for (((name, pids), (cpu0, cs0)), (cpu1, cs1)) in parts.iter().zip(&before).zip(&after) {
        let share = (cpu1 - cpu0) * 100.0 / wall;
        let switches = (cs1 - cs0) as f64 / wall;
        eprintln!("{name} ({} processes): {share:.1} % of a core, {switches:.0} context switches/s", pids.len());
        shares.push(format!("{share:.1} % ({switches:.0}/s)"));
    }
    eprintln!("of which the broker's JIT compiler: {jit_share:.1} % of a core");
    shares[1].push_str(&format!(", JIT {jit_share:.1} %"));
    println!("| events/min | measured | swapstream all | Apache Kafka | PostgreSQL | Redis |");
    println!("|---|---|---|---|---|---|");
    println!("| {rate} | {wall:.0} s | {} |", shares.join(" | "));
    assert!(events >= expected * 0.5, "the stream did not flow: {events} events consumed, {expected:.0} expected");
}
