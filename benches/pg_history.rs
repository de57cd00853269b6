//! The PostgreSQL history path over many keys: candle pages read by the
//! service's own query (`PgStore::candles`) from a table of N tokens'
//! candles over D days, each token's count as in `rest_spread` (rank r
//! trades `max(2, 1440 / r^0.6)` minutes a day), in every interval. Prints
//! each query's plan (`EXPLAIN ANALYZE`) and its latency over repeated reads,
//! for a busy and a quiet token, a page of 100 over a short and a long range.
//! Then the same for pages of swaps after a cursor (`PgStore::swaps_before`)
//! over a kept swap history of the same tokens (each traded minute one swap,
//! spread over four partitions): the newest page and one from the middle.
//!
//! `cargo bench --bench pg_history -- [TOKENS, default 100000] [DAYS, default 7]`
//! with PostgreSQL up (`scripts/services up`). Works in a schema of its
//! own, dropped at the end.

use std::time::{Duration, Instant};

use chrono::Utc;
use swapstream::codec::{self, Encoding};
use swapstream::config::Settings;
use swapstream::domain::aggregate::Interval;
use swapstream::domain::partial::AggKey;
use swapstream::domain::{RawSwap, RawTime};
use swapstream::storage::encoding::encode_order;
use swapstream::storage::postgres::{PgStore, CANDLES_SQL, SWAPS_BEFORE_SQL};
use tokio_postgres::types::ToSql;

#[path = "../tests/support/mod.rs"]
mod support;

const READS: usize = 200;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs benches without it.
    }
    let args = support::args::checked("cargo bench --bench pg_history -- [TOKENS] [DAYS]", &[], &[]);
    let numbers: Vec<i64> = args.numbers();
    let tokens = numbers.first().copied().unwrap_or(100_000);
    let days = numbers.get(1).copied().unwrap_or(7);
    let schema = format!("bench_pg_{:08x}", rand::random::<u32>());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run(&schema, tokens, days));
}

async fn run(schema: &str, tokens: i64, days: i64) {
    let settings =
        Settings::from_vars([("SWAPSTREAM_POSTGRES_SCHEMA".to_string(), schema.to_string())]).expect("settings");
    let log = swapstream::telemetry::discard();
    let store = PgStore::connect(&settings.postgres, 100, &log).await.expect("PostgreSQL");
    let now = Utc::now();
    store.ensure_candle_partitions(now, &log).await.expect("candle partitions");
    let (sql, connection) =
        tokio_postgres::connect(settings.postgres.url.expose(), tokio_postgres::NoTls).await.expect("PostgreSQL");
    tokio::spawn(connection);

    let started = Instant::now();
    // Every traded minute of each token, and the buckets of the coarser
    // intervals holding it; one partition.
    let fill = format!(
        "INSERT INTO {schema}.candles (agg_key, interval, t, topic, partition, open, open_at, close, close_at,
                                       high, low, volume_usd, swaps, buys, buy_volume_usd)
         SELECT 'token:T' || lpad(r::text, 6, '0'), iv.name, m.t / iv.secs * iv.secs, 'swaps', 0,
                1, decode(repeat('00', 52), 'hex'), 1, decode(repeat('00', 52), 'hex'), 1, 1, 10, 1, 0, 0
         FROM generate_series(1, {tokens}) r,
              LATERAL (SELECT {end} - (i * 86400 * {days} / n) / 60 * 60 AS t
                       FROM (SELECT greatest(2, round(1440 * {days} / r ^ 0.6))::bigint AS n) c,
                            generate_series(1, c.n) i) m,
              (VALUES ('1m', 60), ('5m', 300), ('15m', 900), ('1h', 3600), ('4h', 14400), ('1d', 86400)) iv(name, secs)
         ON CONFLICT DO NOTHING",
        end = now.timestamp() / 60 * 60,
    );
    let rows = sql.execute(&fill, &[]).await.expect("filling candles");
    sql.batch_execute(&format!("ANALYZE {schema}.candles")).await.expect("analyze");
    println!("{rows} candle rows for {tokens} tokens over {days} days, written in {:.1?}", started.elapsed());

    println!("| token | interval | range | page | p50 ms | p99 ms | candles | plan |");
    println!("|---|---|---|---|---|---|---|---|");
    let to = now.timestamp();
    for rank in [1, 1000, tokens] {
        let key = AggKey::parse(&format!("token:T{rank:06}")).unwrap();
        for (interval, range_secs) in
            [(Interval::M1, 86_400), (Interval::M1, 86_400 * days), (Interval::H1, 86_400 * days)]
        {
            let from = to - range_secs;
            let mut times = Vec::with_capacity(READS);
            let mut count = 0;
            for _ in 0..READS {
                let started = Instant::now();
                count = store.candles(&key, interval, from, to, 100).await.expect("candles").len();
                times.push(started.elapsed());
            }
            times.sort();
            let query = CANDLES_SQL.replace("{schema}", schema);
            let plan = explain(&sql, &query, &[&key.to_string(), &interval.as_str(), &from, &to, &100i64]).await;
            println!(
                "| T{rank:06} | {interval} | {} days | 100 | {:.3} | {:.3} | {count} | {plan} |",
                range_secs / 86_400,
                ms(times[READS / 2]),
                ms(times[READS * 99 / 100]),
            );
        }
    }
    swap_pages(&store, &sql, schema, tokens, days).await;
    store.drop_schema().await.expect("drop schema");
}

/// Pages of 100 swaps after a cursor over a kept swap history.
async fn swap_pages(store: &PgStore, sql: &tokio_postgres::Client, schema: &str, tokens: i64, days: i64) {
    let started = Instant::now();
    let now_ns = Utc::now().timestamp_nanos_opt().expect("a time in range");
    // Every row holds the same valid swap: the reads decode what they fetch.
    let swap = RawSwap {
        tx_hash: Some(format!("0x{}", "ab".repeat(32))),
        timestamp: Some(RawTime::Rfc3339("2026-12-04T10:00:00Z".into())),
        token_from: Some("ETH".into()),
        token_to: Some("USDC".into()),
        amount_from: Some("1".into()),
        amount_to: Some("3000".into()),
        usd_value: Some("3000".into()),
        ..RawSwap::default()
    }
    .validate()
    .expect("a valid swap");
    let partials = format!(
        "INSERT INTO {schema}.partials (agg_key, topic, partition, volume_usd, swaps, buys, pending)
         SELECT 'token:T' || lpad(r::text, 6, '0'), 'swaps', p, 0, 0, 0, 0
         FROM generate_series(1, {tokens}) r, generate_series(0, 3) p"
    );
    let rows = format!(
        "INSERT INTO {schema}.recent_swaps (agg_key, topic, partition, at, swap)
         SELECT 'token:T' || lpad(r::text, 6, '0'), 'swaps', i % 4,
                int8send($1 - i * 86400 * {days} / n * 1000000000) || decode(lpad(to_hex(i), 88, '0'), 'hex'), $2
         FROM generate_series(1, {tokens}) r,
              LATERAL (SELECT greatest(2, round(1440 * {days} / r ^ 0.6))::bigint AS n) c,
              generate_series(1, c.n) i"
    );
    sql.execute(&partials, &[]).await.expect("filling partials");
    let rows = sql.execute(&rows, &[&now_ns, &codec::encode(&swap, Encoding::Protobuf)]).await.expect("filling swaps");
    sql.batch_execute(&format!("ANALYZE {schema}.partials; ANALYZE {schema}.recent_swaps")).await.expect("analyze");
    println!(
        "\n{rows} kept swaps for {tokens} tokens over {days} days in 4 partitions, written in {:.1?}",
        started.elapsed()
    );

    println!("| token | page | p50 ms | p99 ms | swaps | plan |");
    println!("|---|---|---|---|---|---|");
    let hash = swap.order_key().3;
    for rank in [1, 1000, tokens] {
        let key = AggKey::parse(&format!("token:T{rank:06}")).unwrap();
        let middle = now_ns - 86_400 * days * 1_000_000_000 / 2;
        for (page, before_ns) in [("newest", now_ns), ("middle", middle)] {
            let before = (chrono::DateTime::from_timestamp_nanos(before_ns), 0, 0, hash);
            let mut times = Vec::with_capacity(READS);
            let mut count = 0;
            for _ in 0..READS {
                let started = Instant::now();
                count = store.swaps_before(&key, &before, 100).await.expect("swaps").len();
                times.push(started.elapsed());
            }
            times.sort();
            let query = SWAPS_BEFORE_SQL.replace("{schema}", schema);
            let plan = explain(sql, &query, &[&key.to_string(), &encode_order(&before), &100i64]).await;
            println!(
                "| T{rank:06} | {page} | {:.3} | {:.3} | {count} | {plan} |",
                ms(times[READS / 2]),
                ms(times[READS * 99 / 100]),
            );
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The plan of `query`, condensed to its scan nodes and the execution
/// time; the full plan goes to stderr.
async fn explain(sql: &tokio_postgres::Client, query: &str, params: &[&(dyn ToSql + Sync)]) -> String {
    let rows = sql.query(&format!("EXPLAIN (ANALYZE, BUFFERS) {query}"), params).await.expect("explain");
    let lines: Vec<String> = rows.iter().map(|r| r.get::<_, String>(0)).collect();
    eprintln!("{}\n", lines.join("\n"));
    let scans: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("Scan"))
        .filter_map(|l| l.trim().trim_start_matches("->").trim().split("  (").next())
        .collect();
    let total = lines.iter().find(|l| l.starts_with("Execution Time")).map(String::as_str).unwrap_or("");
    format!("{}; {total}", scans.join(", "))
}
