//! What deciding one batch costs a partition's dedup state as it fills up
//! to the lateness bound: the batch's events observed, then expiry.
//!
//! `cargo bench --bench dedup -- [TRACKED...]` (defaults 10,000, 100,000
//! and 1,000,000 swap ids remembered). At 1000 swaps/s over 4 partitions
//! the default bound of an hour holds about 900,000 per partition. Each
//! round observes a batch of 4 new confirmed swaps 1 ms apart and expires
//! what fell behind the bound (about 4 ids a batch once the state is full),
//! as the reader does for every batch. Needs no services. Prints Markdown
//! table rows for docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use swapstream::domain::{RawSwap, RawTime, SwapEvent};
use swapstream::stream::PartitionState;

#[path = "../tests/support/mod.rs"]
mod support;

const BATCH: u64 = 4;
const ROUNDS: u64 = 2_000;

fn event(n: u64, at: DateTime<Utc>) -> SwapEvent {
    RawSwap {
        tx_hash: Some(format!("0x{n:064x}")),
        timestamp: Some(RawTime::Unix { seconds: at.timestamp(), nanos: at.timestamp_subsec_nanos() as i32 }),
        status: Some("confirmed".into()),
        token_from: Some("ETH".into()),
        token_to: Some("USDC".into()),
        amount_from: Some("1".into()),
        amount_to: Some("4000".into()),
        usd_value: Some("4000".into()),
        ..RawSwap::default()
    }
    .validate()
    .expect("a valid swap")
}

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("dedup benchmark: run it with `cargo bench --bench dedup`");
        return;
    }
    let args = support::args::checked("cargo bench --bench dedup -- [TRACKED...]", &[], &[]);
    let mut sizes: Vec<u64> = args.numbers();
    if sizes.is_empty() {
        sizes = vec![10_000, 100_000, 1_000_000];
    }
    println!("| swap ids tracked | batches | mean per batch | p99 per batch |");
    println!("|---|---|---|---|");
    for tracked in sizes {
        let (mean, p99) = run(tracked);
        println!("| {tracked} | {ROUNDS} | {:.1} µs | {:.1} µs |", mean * 1e6, p99 * 1e6);
    }
}

/// Fills a state with `tracked` swaps 1 ms apart, exactly spanning the
/// lateness bound, then times batches that each add and expire `BATCH`.
fn run(tracked: u64) -> (f64, f64) {
    let lateness = Duration::from_millis(tracked);
    let mut state = PartitionState::new(lateness, Duration::from_secs(300));
    let start = DateTime::from_timestamp(1_764_547_200, 0).expect("a time");
    let now = start + chrono::Duration::milliseconds((tracked + BATCH * ROUNDS) as i64);
    let at = |n: u64| start + chrono::Duration::milliseconds(n as i64);
    for n in 0..tracked {
        state.observe(&event(n, at(n)), now);
    }
    state.expire();
    let batches: Vec<Vec<SwapEvent>> = (0..ROUNDS)
        .map(|round| (0..BATCH).map(|i| tracked + round * BATCH + i).map(|n| event(n, at(n))).collect())
        .collect();
    let mut times = Vec::with_capacity(ROUNDS as usize);
    for batch in &batches {
        let started = Instant::now();
        for event in batch {
            state.observe(event, now);
        }
        state.expire();
        state.take_changes();
        times.push(started.elapsed().as_secs_f64());
    }
    assert!(state.tracked() as u64 <= tracked + BATCH, "expiry keeps up: {} tracked", state.tracked());
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    (mean, times[times.len() * 99 / 100])
}
