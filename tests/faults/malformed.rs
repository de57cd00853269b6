//! 10,000 malformed or oversized events mixed into a good stream: each one
//! in the dead-letter topic with its reason and counted; nothing valid lost;
//! the consumer keeps running.

use std::time::{Duration, Instant};

use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

use crate::helpers::{self, delivered, Names};
use crate::oracle;
use crate::stack::{Stack, ONE_AT_A_TIME};
use crate::support::http;

const BAD: usize = 10_000;

/// The `i`-th bad event: (payload, content type).
fn bad_event(i: usize, rng: &mut impl Rng) -> (Vec<u8>, Option<&'static str>) {
    let json = Some(swapstream::codec::CONTENT_TYPE_JSON);
    match i % 5 {
        0 => ((0..rng.gen_range(1..200)).map(|_| rng.gen()).collect(), Some(swapstream::codec::CONTENT_TYPE_PROTOBUF)),
        1 => (b"{\"tx_hash\": \"0x".to_vec(), None),
        2 => (helpers::swap_json((i % 250) as u8, -5, "confirmed", "-1", "ETH"), json),
        3 => (helpers::swap_json((i % 250) as u8, -5, "confirmed", "1", "NOT A TOKEN"), json),
        // Oversized: 256 KiB in a field that must be a 64-digit hash.
        _ => (format!("{{\"tx_hash\": \"0x{}\"}}", "ab".repeat(128 * 1024)).into_bytes(), json),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_bad_events_are_dead_lettered_and_nothing_valid_is_lost() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-bad");
    let mut consumer = crate::consumer(&stack, &names, "a");
    let port = helpers::logged_port(&consumer).await;

    let good = {
        let (brokers, names) = (stack.brokers(), names.clone());
        tokio::spawn(async move { helpers::produce(&brokers, &names, crate::swaps(2000), &crate::stream("max")).await })
    };
    let raw: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", stack.brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let tokens: Vec<&str> = crate::TOKENS.split(',').collect();
    let bad: Vec<(String, String, Vec<u8>, Option<&str>)> = {
        let mut rng = rand::thread_rng();
        (0..BAD)
            .map(|i| {
                let (payload, content_type) = bad_event(i, &mut rng);
                let topic = format!("{}{}", names.topic_prefix, tokens[i % tokens.len()]);
                (topic, format!("bad-{i}"), payload, content_type)
            })
            .collect()
    };
    let mut sends = Vec::with_capacity(BAD);
    for (topic, key, payload, content_type) in &bad {
        let mut record = FutureRecord::to(topic).key(key).payload(payload);
        if let Some(content_type) = content_type {
            record =
                record.headers(OwnedHeaders::new().insert(Header { key: "content-type", value: Some(*content_type) }));
        }
        sends.push(raw.send(record, Duration::from_secs(30)));
    }
    for send in futures::future::join_all(sends).await {
        send.expect("bad event delivered to the broker");
    }
    let truth = good.await.unwrap();

    oracle::wait_checkpointed(&stack, &names, delivered(&truth) + BAD as i64, Duration::from_secs(180)).await;
    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer kept running: {}", consumer.log_text());
    let counts = oracle::assert_exact(&stack, &names, &truth).await;

    // Every bad event is in the dead-letter topic, and counted by reason.
    let reader: BaseConsumer = ClientConfig::new().set("bootstrap.servers", stack.brokers()).create().unwrap();
    let metadata = reader.fetch_metadata(Some(&names.dlq), Duration::from_secs(10)).unwrap();
    let mut dead_letters = 0;
    for partition in metadata.topics()[0].partitions() {
        let (low, high) = reader.fetch_watermarks(&names.dlq, partition.id(), Duration::from_secs(10)).unwrap();
        dead_letters += high - low;
    }
    assert_eq!(dead_letters, BAD as i64, "every bad event dead-lettered once");
    let (_, metrics) = http::get(port, "/metrics").await;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("swapstream_events_dead_lettered_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted as usize, BAD, "dead letters counted by reason:\n{metrics}");

    oracle::report(
        "10,000 malformed and oversized events mixed into the stream",
        started.elapsed(),
        &truth,
        counts,
        "no restart; 10,000 of 10,000 in the dead-letter topic",
    );
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
