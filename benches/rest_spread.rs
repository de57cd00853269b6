//! REST over many keys, where a stats cache rarely helps: role `api` serving
//! `GET /v1/tokens/{t}/stats` and `/v1/pairs/{p}/stats` spread over N tokens
//! and N pairs (uniformly, and Zipf-like: the key of rank r asked for in
//! proportion to 1/r), with the stats cache off and on, and a list page of
//! 100 tokens from a random cursor, in name order and sorted by a window's
//! figure (with the time the first ranking took); next to `redis-benchmark`
//! GET over N keys and MGET of 100 keys at the same 64 connections, in one
//! run.
//!
//! The live state is written to Redis by the service's own write path
//! (`RedisStore::write`) from synthetic swaps, as a consumer would: token
//! `T<rank>` traded against one of five quote tokens, its swaps spread over
//! the last 24 hours, `max(2, 1440 / rank^0.6)` of them (so the first
//! tokens fill every minute and most have a few). Each token is also a pair
//! with its quote; each token's swaps are made by 40 makers. Reports Redis' memory per token and pair, and the
//! server's RSS after the run.
//!
//! Needs Redis (`scripts/services up`), and PostgreSQL for the server's
//! start. Run:
//!
//! ```sh
//! cargo bench --bench rest_spread -- [TOKENS, default 100000] [--secs S, default 10] [--pin]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use swapstream::config::Settings;
use swapstream::domain::partial::{AggKey, Partial};
use swapstream::domain::swap::{Address, Status, SwapEvent, SwapId, TxHash};
use swapstream::domain::{Amount, PairKey, TokenSymbol};
use swapstream::storage::redis::RedisStore;
use swapstream::stream::{PartialChange, Tp};

#[path = "../tests/support/mod.rs"]
mod support;

use support::load::{self, Connection, Paths, CONNECTIONS};

const FIXED_RATE: u64 = 5_000;
const LIST_RATE: u64 = 200;
const QUOTES: [&str; 5] = ["USDC", "USDT", "WETH", "WBTC", "DAI"];
/// Tokens written per call of the write path.
const CHUNK: usize = 2_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return; // `cargo test --all-targets` builds and runs benches without it.
    }
    let args = support::args::checked(
        "cargo bench --bench rest_spread -- [TOKENS] [--secs S] [--pin]",
        &["--pin"],
        &["--secs"],
    );
    let tokens: usize = args.numbers().first().copied().unwrap_or(100_000);
    let seconds: u64 = args.value("--secs").unwrap_or(10);
    let pin = args.flag("--pin");
    if pin {
        // Before the runtime starts, so that its threads inherit it.
        support::process::pin_to(0, 0);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run(tokens, Duration::from_secs(seconds), pin));
}

fn token(rank: usize) -> TokenSymbol {
    TokenSymbol::parse(&format!("T{rank:06}")).unwrap()
}

fn quote(rank: usize) -> TokenSymbol {
    TokenSymbol::parse(QUOTES[rank % QUOTES.len()]).unwrap()
}

/// Swaps of the token of `rank` (1-based) over the 24 hours before `now`.
fn swaps_of(rank: usize, now: DateTime<Utc>) -> Vec<Arc<SwapEvent>> {
    let count = (1440.0 / (rank as f64).powf(0.6)).round().max(2.0) as i64;
    (0..count)
        .map(|i| {
            let at = now - chrono::Duration::seconds(86_400 * (i + 1) / (count + 1));
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&(rank as u64).to_be_bytes());
            hash[8..16].copy_from_slice(&(i as u64).to_be_bytes());
            let amount = Amount::parse(&format!("{}.5", 10 + (i % 7))).unwrap();
            let buy = i % 3 == 0;
            let (from, to) = if buy { (quote(rank), token(rank)) } else { (token(rank), quote(rank)) };
            Arc::new(SwapEvent {
                id: SwapId { tx_hash: TxHash(hash), log_index: 0 },
                block_number: Some(1_000_000 + i as u64),
                timestamp: at,
                status: Status::Confirmed,
                maker: Some(maker_of(rank, i)),
                token_from: from,
                token_to: to,
                amount_from: amount,
                amount_to: amount,
                usd_value: amount,
            })
        })
        .collect()
}

/// The maker of a token's `i`th swap: one of 40 per token.
fn maker_of(rank: usize, i: i64) -> Address {
    let mut bytes = [0u8; 20];
    bytes[..8].copy_from_slice(&(rank as u64).to_be_bytes());
    bytes[8..16].copy_from_slice(&(i % 40).to_be_bytes());
    Address(bytes)
}

/// Writes the live state of `tokens` tokens, their pairs and the quote
/// tokens through the service's write path; returns Redis' memory used by
/// (tokens, pairs), in bytes, each measured after its own write.
async fn populate(store: &RedisStore, tokens: usize) -> (u64, u64) {
    let tp = Tp::new("swaps", 0);
    let now = Utc::now();
    let mut quotes: Vec<(AggKey, Partial)> =
        QUOTES.iter().map(|q| (AggKey::Token(TokenSymbol::parse(q).unwrap()), Partial::default())).collect();
    let mut used = [0u64; 2];
    for (i, pairs) in [false, true].into_iter().enumerate() {
        let before = redis_memory();
        let started = Instant::now();
        for first in (1..=tokens).step_by(CHUNK) {
            let mut changes = Vec::new();
            for rank in first..(first + CHUNK).min(tokens + 1) {
                let key = if pairs {
                    AggKey::Pair(PairKey::new(token(rank), quote(rank)).unwrap())
                } else {
                    AggKey::Token(token(rank))
                };
                let mut partial = Partial::default();
                for swap in swaps_of(rank, now) {
                    partial.apply(&key, &swap, 100);
                    if !pairs {
                        let (_, quote) = &mut quotes[rank % QUOTES.len()];
                        let quote_key = AggKey::Token(self::quote(rank));
                        quote.apply(&quote_key, &swap, 100);
                    }
                }
                changes.push(PartialChange { key, tp: tp.clone(), delta: partial.take_delta().unwrap() });
            }
            store.write(&changes, &Default::default(), &[]).await.expect("writing the live state");
        }
        used[i] = redis_memory().saturating_sub(before);
        println!("wrote {tokens} {} in {:.1?}", if pairs { "pairs" } else { "tokens" }, started.elapsed());
    }
    let changes: Vec<PartialChange> = quotes
        .iter_mut()
        .map(|(key, partial)| PartialChange { key: key.clone(), tp: tp.clone(), delta: partial.take_delta().unwrap() })
        .collect();
    store.write(&changes, &Default::default(), &[]).await.expect("writing the quote tokens");
    (used[0], used[1])
}

/// Redis' `used_memory`, in bytes.
fn redis_memory() -> u64 {
    let info = std::process::Command::new("redis-cli").args(["-p", "6379", "info", "memory"]).output().unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    text.lines().find_map(|l| l.strip_prefix("used_memory:")).expect("used_memory").trim().parse().unwrap()
}

/// A rank in 1..=n: uniformly, or with probability in proportion to 1/rank.
#[derive(Clone)]
enum Spread {
    Uniform(usize),
    Zipf(Arc<Vec<f64>>),
}

impl Spread {
    fn zipf(n: usize) -> Spread {
        let mut cumulative = Vec::with_capacity(n);
        let mut sum = 0.0;
        for rank in 1..=n {
            sum += 1.0 / rank as f64;
            cumulative.push(sum);
        }
        cumulative.iter_mut().for_each(|c| *c /= sum);
        Spread::Zipf(Arc::new(cumulative))
    }

    fn rank(&self, random: u64) -> usize {
        match self {
            Spread::Uniform(n) => 1 + (random % *n as u64) as usize,
            Spread::Zipf(cumulative) => {
                let u = (random >> 11) as f64 / (1u64 << 53) as f64;
                1 + cumulative.partition_point(|&c| c < u).min(cumulative.len() - 1)
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Spread::Uniform(_) => "uniform",
            Spread::Zipf(_) => "Zipf",
        }
    }
}

/// Token and pair stats, half each, over `spread`.
fn stats_paths(spread: Spread) -> Paths {
    Arc::new(move |random| {
        let rank = spread.rank(random >> 1);
        if random & 1 == 0 {
            format!("/v1/tokens/T{rank:06}/stats")
        } else {
            format!("/v1/pairs/T{rank:06}-{}/stats", QUOTES[rank % QUOTES.len()])
        }
    })
}

/// A page of 100 tokens after a random one.
fn list_paths(tokens: usize) -> Paths {
    Arc::new(move |random| format!("/v1/tokens?limit=100&cursor=T{:06}", random % tokens as u64))
}

/// A page of 100 tokens of a random ranking after a random token's place.
fn sorted_paths(tokens: usize) -> Paths {
    const SORTS: [&str; 4] = ["volume_24h", "swaps_1h", "price_change_6h", "makers_5m"];
    Arc::new(move |random| {
        let sort = SORTS[(random >> 32) as usize % SORTS.len()];
        format!("/v1/tokens?sort={sort}&limit=100&cursor=T{:06}", random % tokens as u64)
    })
}

async fn wait_ready(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if Connection::open(port).await.get(path).await == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "no answer to {path} on port {port}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn run(tokens: usize, length: Duration, pin: bool) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-rest-spread");
    std::fs::create_dir_all(&dir).unwrap();
    let prefix = format!("bench_spread_{}", std::process::id());
    let settings = Settings::from_vars([("SWAPSTREAM_REDIS_KEY_PREFIX".to_owned(), prefix.clone())]).unwrap();
    let store = RedisStore::connect(&settings.redis, 100).await.expect("Redis");
    let (token_bytes, pair_bytes) = populate(&store, tokens).await;
    let _redis_pinned = pin.then(load::RedisPinned::new);
    let server = |cache_ms: u32, log: &str| {
        let vars = [
            ("SWAPSTREAM_POSTGRES_SCHEMA", prefix.clone()),
            ("SWAPSTREAM_REDIS_KEY_PREFIX", prefix.clone()),
            ("SWAPSTREAM_HTTP_CACHE_MS", cache_ms.to_string()),
        ];
        let log = dir.join(log);
        async move { load::start("api", &vars, &log, pin).await }
    };
    let uncached = server(0, "api-uncached.log").await;
    let cached = server(250, "api.log").await;
    for port in [uncached.port, cached.port] {
        wait_ready(port, "/v1/tokens/T000001/stats").await;
    }
    println!(
        "{tokens} tokens and {tokens} pairs; {length:?} per measurement, {CONNECTIONS} connections, pinned: {pin}"
    );
    let uniform = Spread::Uniform(tokens);
    let zipf = Spread::zipf(tokens);
    load::closed_loop(uncached.port, CONNECTIONS, Duration::from_secs(2), stats_paths(uniform.clone())).await;

    load::print_header("request");
    for (cache, port) in [("cache off", uncached.port), ("cache on", cached.port)] {
        for spread in [&uniform, &zipf] {
            let paths = stats_paths(spread.clone());
            let max = load::closed_loop(port, CONNECTIONS, length, paths.clone()).await;
            let fixed = load::open_loop(port, CONNECTIONS, FIXED_RATE, length, paths).await;
            load::print_row(
                &format!("stats, {}, {cache} (fixed: {FIXED_RATE}/s)", spread.name()),
                &max,
                &fixed,
                FIXED_RATE,
            );
        }
    }
    let list = list_paths(tokens);
    let max = load::closed_loop(uncached.port, CONNECTIONS, length, list.clone()).await;
    let fixed = load::open_loop(uncached.port, CONNECTIONS, LIST_RATE, length, list).await;
    load::print_row(&format!("list of 100 tokens, cache off (fixed: {LIST_RATE}/s)"), &max, &fixed, LIST_RATE);

    // Sorted: the first request starts the ranking's build; then pages
    // after random cursors while it is built again every 5 s.
    let started = Instant::now();
    let first = "/v1/tokens?sort=volume_24h&limit=100";
    let mut connection = Connection::open(cached.port).await;
    while connection.get(first).await != 200 {
        assert!(started.elapsed() < Duration::from_secs(600), "no ranking in 10 minutes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let built = started.elapsed();
    let sorted = sorted_paths(tokens);
    let max = load::closed_loop(cached.port, CONNECTIONS, length, sorted.clone()).await;
    let fixed = load::open_loop(cached.port, CONNECTIONS, LIST_RATE, length, sorted).await;
    load::print_row(&format!("sorted list of 100 tokens, cache on (fixed: {LIST_RATE}/s)"), &max, &fixed, LIST_RATE);

    let keyspace = tokens.to_string();
    let requests = 120_000 * length.as_secs();
    let (get, get_p50, get_p99) = load::redis_benchmark(requests, &["-r", &keyspace, "-t", "get"]).await;
    println!("| redis-benchmark GET, {tokens} keys | {get:.0} | {get_p50:.3} | {get_p99:.3} | - | - | - | - |");
    let mut mget = vec!["-r", &keyspace, "MGET"];
    mget.extend(std::iter::repeat_n("key:__rand_int__", 100));
    let (mget, mget_p50, mget_p99) = load::redis_benchmark(requests / 20, &mget).await;
    println!(
        "| redis-benchmark MGET of 100, {tokens} keys | {mget:.0} | {mget_p50:.3} | {mget_p99:.3} | - | - | - | - |"
    );

    println!("First ranking of {tokens} tokens (`?sort=volume_24h`, cache on): {:.2} s", built.as_secs_f64());
    let kib = |bytes: u64| bytes as f64 / 1024.0 / tokens as f64;
    println!(
        "Redis memory: {:.2} KiB per token, {:.2} KiB per pair (used_memory after each write); `api` RSS after the run: {} MiB (cache off), {} MiB (cache on)",
        kib(token_bytes),
        kib(pair_bytes),
        support::procfs::rss_kib(uncached.child.id().unwrap()) / 1024,
        support::procfs::rss_kib(cached.child.id().unwrap()) / 1024,
    );
    drop((uncached, cached));
    support::stores::forget(&prefix).await;
}
