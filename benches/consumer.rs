//! Consumer throughput: pre-loads N swaps into the broker, then measures in
//! the same run (1) a plain rdkafka consumer that only reads the topics,
//! (2) Apache Kafka's own `kafka-consumer-perf-test` reading them, and
//! (3) the `consumer` role processing them with checkpointing on, until
//! PostgreSQL's checkpoint covers every message.
//!
//! `cargo bench --bench consumer -- [SWAPS] [--mock] [--partitions P] [--tokens N] [--instances I]`
//! (default 1,000,000 swaps) with the services up (`scripts/services up`).
//! The broker is Apache Kafka at `SWAPSTREAM_TEST_BROKERS` (127.0.0.1:9092
//! by default), or with `--mock` librdkafka's mock cluster hosted by this
//! process (no Kafka tool reference then). By default six tokens, a topic
//! per token of 4 partitions; `--partitions P` sets the partitions per
//! topic; `--tokens N` a universe of N tokens (`T1`..`TN`, at most 1,000,000:
//! the producer's numbered range) in one topic of P
//! partitions; `--instances I` runs I consumers in one group, each with the
//! topics' share the group gives it. Prints the consumers' resident memory
//! and the tokens and pairs held at the end, and a Markdown table row for
//! docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

#[path = "../tests/support/mod.rs"]
mod support;
use support::process::TOKENS;

/// The most tokens `--tokens` takes (the producer's largest range).
const MAX_TOKENS: usize = 1_000_000;

fn main() {
    // `cargo test --all-targets` runs bench targets without `--bench`: skip.
    if !std::env::args().any(|a| a == "--bench") {
        println!("consumer benchmark: run it with `cargo bench --bench consumer`");
        return;
    }
    let args = support::args::checked(
        "cargo bench --bench consumer -- [SWAPS] [--mock] [--partitions P] [--tokens N] [--instances I]",
        &["--mock"],
        &["--partitions", "--tokens", "--instances"],
    );
    let swaps: u64 = args.numbers().first().copied().unwrap_or(1_000_000);
    let mock = args.flag("--mock");
    let partitions: i32 = args.value("--partitions").unwrap_or(4);
    let universe: Option<usize> = args.value("--tokens");
    let instances: usize = args.value("--instances").unwrap_or(1);
    assert!(universe.is_none_or(|n| (2..=MAX_TOKENS).contains(&n)), "--tokens: 2 to {MAX_TOKENS}");
    let id = format!("bench_{:08x}", rand::random::<u32>());
    let prefix = format!("{id}.");
    // A topic per token, or with `--tokens` one topic for all of them.
    let (tokens, topics): (String, Vec<String>) = match universe {
        Some(n) => (format!("T1..T{n}"), vec![format!("{prefix}swaps")]),
        None => (TOKENS.to_owned(), TOKENS.split(',').map(|t| format!("{prefix}{t}")).collect()),
    };
    let cluster = mock.then(|| {
        let cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> =
            rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
        for topic in &topics {
            cluster.create_topic(topic, partitions, 1).expect("topic");
        }
        cluster
    });
    let brokers = match &cluster {
        Some(cluster) => cluster.bootstrap_servers(),
        None => std::env::var("SWAPSTREAM_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
    };
    let broker_name = if mock { "mock cluster" } else { "Apache Kafka" };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let binary = env!("CARGO_BIN_EXE_swapstream");
    let base_vars = |command: &mut std::process::Command| {
        support::process::stream_env(command, &brokers, &id, partitions).env("SWAPSTREAM_PRODUCER_TOKENS", &tokens);
        if universe.is_some() {
            command.env("SWAPSTREAM_KAFKA_TOPIC_MODE", "single").env("SWAPSTREAM_KAFKA_TOPIC", &topics[0]);
        }
    };

    // 1. Pre-load.
    eprintln!("pre-loading {swaps} swaps (pending + terminal events) into {prefix}*");
    let started = Instant::now();
    let mut producer = std::process::Command::new(binary);
    base_vars(&mut producer);
    let status = producer
        .args(["producer", "--count", &swaps.to_string(), "--rate", "max"])
        .env("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "0")
        .env("SWAPSTREAM_PRODUCER_PROGRESS_SECS", "5")
        .stderr(Stdio::null())
        .status()
        .expect("producer");
    assert!(status.success(), "producer failed");
    let plain: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{id}-plain"))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "8388608")
        // As the consumer role sets it (see `startup`).
        .set("fetch.queue.backoff.ms", "10")
        .set("receive.message.max.bytes", "134217728")
        .create()
        .expect("plain consumer");
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for topic in &topics {
        for partition in 0..partitions {
            let (_, high) = plain.fetch_watermarks(topic, partition, Duration::from_secs(10)).expect("watermarks");
            if high > 0 {
                ends.insert((topic.clone(), partition), high);
                assignment.add_partition_offset(topic, partition, Offset::Beginning).unwrap();
            }
        }
    }
    let total: i64 = ends.values().sum();
    eprintln!("pre-loaded {total} messages in {:.1}s", started.elapsed().as_secs_f64());

    // 2. Plain read of the same messages.
    plain.assign(&assignment).unwrap();
    let started = Instant::now();
    let mut read = 0i64;
    let mut remaining = ends.len();
    let mut positions: HashMap<(String, i32), i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while remaining > 0 {
        assert!(Instant::now() < deadline, "the plain read did not reach the watermarks");
        if let Some(Ok(message)) = plain.poll(Duration::from_millis(100)) {
            read += 1;
            let key = (message.topic().to_owned(), message.partition());
            positions.insert(key.clone(), message.offset() + 1);
            if positions[&key] == ends[&key] {
                remaining -= 1;
            }
        }
    }
    let plain_secs = started.elapsed().as_secs_f64();
    let plain_rate = read as f64 / plain_secs;
    eprintln!("plain read: {read} messages in {plain_secs:.2}s = {plain_rate:.0}/s");
    drop(plain);

    // 3. Kafka's own consumer, reading the same messages.
    let tool_rate = (!mock).then(|| kafka_perf_test(&brokers, &prefix, total, &id));
    if let Some(rate) = tool_rate {
        eprintln!("kafka-consumer-perf-test: {rate:.0}/s (fetch time, group join excluded)");
    }

    // 4. The consumer role, checkpointing to PostgreSQL: one instance or
    // more, started together so that they join the group at once.
    let mut children: Vec<std::process::Child> = (0..instances)
        .map(|i| {
            let mut consumer = std::process::Command::new(binary);
            base_vars(&mut consumer);
            let log_path = match i {
                0 => format!("/tmp/{id}-consumer.log"),
                i => format!("/tmp/{id}-consumer-{i}.log"),
            };
            eprintln!("consumer log: {log_path}");
            let log = std::fs::File::create(&log_path).expect("log");
            consumer
                .arg("consumer")
                .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
                .env("SWAPSTREAM_BATCH_MAX_EVENTS", std::env::var("BENCH_BATCH").unwrap_or_else(|_| "20000".into()))
                // `BENCH_LOG_LEVEL=debug`: the reader's per-batch timings in the log.
                .env("SWAPSTREAM_LOG_LEVEL", std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("consumer")
        })
        .collect();
    let (consumer_secs, covered, (held_tokens, held_pairs)) = runtime.block_on(async {
        let (client, connection) =
            tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/postgres", tokio_postgres::NoTls)
                .await
                .expect("postgres");
        tokio::spawn(connection);
        let sql = format!("SELECT coalesce(sum(next_offset), 0)::bigint FROM {id}.offsets");
        let checkpointed =
            || async { client.query_one(sql.as_str(), &[]).await.map(|r| r.get::<_, i64>(0)).unwrap_or(0) };
        // The clock starts at the first checkpoint, so group join is excluded.
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first = 0;
        while first == 0 && Instant::now() < deadline {
            first = checkpointed().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let started = Instant::now();
        let mut done = first;
        while done < total && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            done = checkpointed().await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let keys = format!(
            "SELECT count(DISTINCT agg_key) FILTER (WHERE agg_key LIKE 'token:%'), \
             count(DISTINCT agg_key) FILTER (WHERE agg_key LIKE 'pair:%') FROM {id}.partials"
        );
        let held = client.query_one(keys.as_str(), &[]).await.map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)));
        (elapsed, done - first, held.unwrap_or_default())
    });
    let rss_mib = children.iter().map(|child| support::procfs::rss_kib(child.id())).sum::<u64>() as f64 / 1024.0;
    eprintln!("consumer RSS at the end: {rss_mib:.0} MiB, holding {held_tokens} tokens and {held_pairs} pairs");
    for child in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    runtime.block_on(async {
        support::stores::forget(&id).await;
        if !mock {
            let dlq = format!("{id}-dlq");
            support::kafka::delete_topics(&brokers, &[topics.as_slice(), &[dlq]].concat()).await;
        }
    });
    let consumer_rate = covered as f64 / consumer_secs;
    eprintln!("consumer: {covered} messages in {consumer_secs:.2}s = {consumer_rate:.0}/s");
    drop(cluster);
    let tool = tool_rate.map_or("-".to_owned(), |rate| format!("{rate:.0} msg/s"));
    let reference = tool_rate.unwrap_or(plain_rate).max(plain_rate);
    println!(
        "| {broker_name} | {swaps} swaps, {total} messages | {plain_rate:.0} msg/s | {tool} | {consumer_rate:.0} msg/s ({:.0} swaps/s) | {:.2} |",
        consumer_rate / 2.0,
        consumer_rate / reference
    );
}

/// `kafka-consumer-perf-test` (through `scripts/services kafka-tool`) over
/// the topics `<prefix>*`: messages per second of fetch time.
fn kafka_perf_test(brokers: &str, prefix: &str, total: i64, id: &str) -> f64 {
    let services = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services");
    let output = std::process::Command::new(services)
        .args(["kafka-tool", "consumer-perf-test", "--bootstrap-server", brokers])
        .args(["--include", &format!("{}.*", prefix.replace('.', "\\."))])
        .args(["--num-records", &total.to_string(), "--group", &format!("{id}-perf"), "--hide-header"])
        .args(["--timeout", "30000"])
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/services kafka-tool consumer-perf-test");
    assert!(output.status.success(), "kafka-consumer-perf-test failed");
    let text = String::from_utf8_lossy(&output.stdout);
    // start.time, end.time, MB, MB/s, records, records/s, rebalance ms, fetch ms, fetch MB/s, fetch records/s
    let fields: Vec<&str> = text.lines().last().unwrap_or_default().split(',').map(str::trim).collect();
    let records: i64 = fields.get(4).and_then(|f| f.parse().ok()).unwrap_or(0);
    assert!(records >= total, "kafka-consumer-perf-test read {records} of {total}: {text}");
    fields.get(9).and_then(|f| f.parse().ok()).expect("fetch.nMsg.sec in the perf test's output")
}
