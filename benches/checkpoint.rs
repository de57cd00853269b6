//! Checkpoint cost as the stored state ages: a checkpoint's time with an
//! empty dedup table and with one holding an hour of checkpoints, and the
//! time to prune the recent-swaps table after a minute of swaps.
//!
//! `cargo bench --bench checkpoint -- [DEDUP_ROWS] [RECENT_ROWS]` (defaults
//! 1,000,000, and 192,600: 100 kept rows for each of 21 keys in 6
//! partitions plus a minute at 1000 swaps/s, three keys per swap) with
//! PostgreSQL up (`scripts/services up`). Each
//! checkpoint stores offsets and three dedup ids for each of 6 partitions
//! and expires the partition's oldest dedup row, as the reader does once the
//! lateness horizon moves. Works in a schema of its own, dropped at the end.
//! Prints Markdown table rows for docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use swapstream::config::Settings;
use swapstream::domain::swap::{Status, SwapId, TxHash};
use swapstream::domain::token::TokenSymbol;
use swapstream::storage::postgres::{Checkpoint, PgStore, Progress};
use swapstream::stream::partition::SeenChange;
use swapstream::stream::Tp;

#[path = "../tests/support/mod.rs"]
mod support;

const PARTITIONS: i32 = 6;
const CHECKPOINTS: usize = 400;
const KEYS: usize = 21;
const RECENT_CAP: usize = 100;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("checkpoint benchmark: run it with `cargo bench --bench checkpoint`");
        return;
    }
    let args = support::args::checked("cargo bench --bench checkpoint -- [DEDUP_ROWS] [RECENT_ROWS]", &[], &[]);
    let counts: Vec<i64> = args.numbers();
    let dedup_rows = counts.first().copied().unwrap_or(1_000_000);
    let recent_rows = counts.get(1).copied().unwrap_or(192_600);
    let schema = format!("bench_{:08x}", rand::random::<u32>());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(&schema, dedup_rows, recent_rows));
}

async fn run(schema: &str, dedup_rows: i64, recent_rows: i64) {
    let settings =
        Settings::from_vars([("SWAPSTREAM_POSTGRES_SCHEMA".to_string(), schema.to_string())]).expect("settings");
    let log = swapstream::telemetry::discard();
    let store = PgStore::connect(&settings.postgres, RECENT_CAP, &log).await.expect("PostgreSQL");
    let (sql, connection) =
        tokio_postgres::connect(settings.postgres.url.expose(), tokio_postgres::NoTls).await.expect("PostgreSQL");
    tokio::spawn(connection);

    let tps: Vec<Tp> = (0..PARTITIONS).map(|p| Tp::new("swaps.ETH", p)).collect();
    let claimed = store.claim(&tps, "bench", Utc::now()).await.expect("claim");
    let epochs: Vec<i64> = claimed.iter().map(|c| c.epoch).collect();

    println!("| dedup rows | checkpoints | mean | p50 | p99 |");
    println!("|---|---|---|---|---|");
    // Sequence numbers and event times start where the pre-filled rows end.
    let mut seq = dedup_rows / PARTITIONS as i64;
    let empty = checkpoints(&store, &tps, &epochs, &mut seq).await;
    println!("{}", row(0, &empty));
    fill_dedup(&sql, schema, dedup_rows).await;
    let aged = checkpoints(&store, &tps, &epochs, &mut seq).await;
    println!("{}", row(dedup_rows, &aged));

    fill_recent(&sql, schema, recent_rows).await;
    let started = Instant::now();
    let deleted = store.prune_recent(&tps, chrono::Utc::now()).await.expect("prune");
    println!();
    println!("| recent rows | deleted | prune time |");
    println!("|---|---|---|");
    println!("| {recent_rows} | {deleted} | {:.0} ms |", started.elapsed().as_secs_f64() * 1e3);

    sql.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.expect("drop schema");
}

/// `CHECKPOINTS` checkpoints of every partition; their durations.
async fn checkpoints(store: &PgStore, tps: &[Tp], epochs: &[i64], seq: &mut i64) -> Vec<Duration> {
    let mut times = Vec::with_capacity(CHECKPOINTS);
    for n in 1..=CHECKPOINTS as i64 {
        *seq += 1;
        let progress = tps
            .iter()
            .zip(epochs)
            .map(|(tp, &epoch)| Progress {
                tp: tp.clone(),
                next_offset: *seq,
                watermark: Some(event_time(*seq)),
                epoch,
                seen: (0..3).map(|i| seen(tp.partition, *seq, i)).collect(),
                // The pre-filled rows fall behind the horizon one a checkpoint.
                horizon: Some(event_time(n + 1)),
            })
            .collect();
        let checkpoint = Checkpoint { progress, partials: Vec::new() };
        let started = Instant::now();
        store.checkpoint(&checkpoint).await.expect("checkpoint");
        times.push(started.elapsed());
    }
    times
}

/// Row `seq`'s event time: one checkpoint per millisecond of event time.
fn event_time(seq: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_547_200_000 + seq).expect("time")
}

fn seen(partition: i32, seq: i64, i: u32) -> SeenChange {
    let hash = format!("0x{:016x}{:016x}{:032x}", partition, seq, i);
    SeenChange {
        id: SwapId { tx_hash: TxHash::parse(&hash).expect("hash"), log_index: i },
        status: Status::Confirmed,
        event_time: event_time(seq),
        token_from: TokenSymbol::parse("ETH").expect("symbol"),
        token_to: TokenSymbol::parse("USDC").expect("symbol"),
    }
}

/// `rows` dedup rows over the partitions, older than every checkpoint's.
async fn fill_dedup(sql: &tokio_postgres::Client, schema: &str, rows: i64) {
    let per_partition = rows / PARTITIONS as i64;
    sql.batch_execute(&format!(
        "INSERT INTO {schema}.dedup (topic, partition, seq, max_event_ns, changes)
         SELECT 'swaps.ETH', p, s, (1764547200000 + s) * 1000000, decode(repeat('ab', 120), 'hex')
         FROM generate_series(0, {}) p, generate_series(1, {per_partition}) s;
         ANALYZE {schema}.dedup;",
        PARTITIONS - 1
    ))
    .await
    .expect("filling dedup");
}

/// `rows` recent swaps over `KEYS` keys and the partitions.
async fn fill_recent(sql: &tokio_postgres::Client, schema: &str, rows: i64) {
    let per = rows / (KEYS as i64 * PARTITIONS as i64);
    sql.batch_execute(&format!(
        "INSERT INTO {schema}.partials (agg_key, topic, partition, volume_usd, swaps, buys, pending)
         SELECT 'token:T' || k, 'swaps.ETH', p, 0, 0, 0, 0
         FROM generate_series(1, {KEYS}) k, generate_series(0, {}) p;
         INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
         SELECT 'token:T' || k, 'swaps.ETH', p, int8send(s), decode(repeat('cd', 200), 'hex')
         FROM generate_series(1, {KEYS}) k, generate_series(0, {}) p, generate_series(1, {per}) s;
         ANALYZE {schema}.partials; ANALYZE {schema}.recent_swaps;",
        PARTITIONS - 1,
        PARTITIONS - 1
    ))
    .await
    .expect("filling recent swaps");
}

fn row(dedup_rows: i64, times: &[Duration]) -> String {
    let mut ms: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let at = |q: f64| ms[((ms.len() as f64 * q) as usize).min(ms.len() - 1)];
    format!("| {dedup_rows} | {} | {mean:.2} ms | {:.2} ms | {:.2} ms |", ms.len(), at(0.5), at(0.99))
}
