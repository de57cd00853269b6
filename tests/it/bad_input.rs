//! Bad input goes to the dead-letter topic with its reason and origin; the
//! good events around it all count; the consumer keeps running.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};

use crate::helpers::{from_postgres, logged_port, require_broker, swap_json, unique, wait_checkpointed, Child, Names};
use crate::support::http;

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_dead_lettered_with_its_reason_and_good_input_counts() {
    let brokers = require_broker();
    let names = Names::new("it-bad-input");
    let topic = format!("{}ETH", names.topic_prefix);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let json = Some(swapstream::codec::CONTENT_TYPE_JSON);
    let protobuf = Some(swapstream::codec::CONTENT_TYPE_PROTOBUF);
    // (payload, content-type header): offsets 0.. in one partition, in order.
    let messages: Vec<(Vec<u8>, Option<&str>)> = vec![
        (swap_json(1, -10, "confirmed", "1", "ETH"), json), // 0 good
        (vec![0xff, 0xff, 0xff], protobuf),                 // 1 malformed_protobuf
        (b"{\"tx_hash\": ".to_vec(), None),                 // 2 malformed_json
        (swap_json(2, -9, "confirmed", "0", "ETH"), json),  // 3 invalid_field (amount_from)
        (swap_json(3, -9, "confirmed", "1", "E TH"), json), // 4 invalid_field (token_from)
        (swap_json(4, -9, "confirmed", "1", "ETH"), Some("text/csv")), // 5 unsupported_content_type
        (swap_json(5, 0, "confirmed", "2", "ETH"), json),   // 6 good
        (swap_json(6, -7200, "confirmed", "1", "ETH"), json), // 7 too_late
        (swap_json(7, 3600, "confirmed", "1", "ETH"), json), // 8 future_timestamp
        (swap_json(8, -5, "pending", "3", "ETH"), json),    // 9 pending
        (swap_json(8, -5, "confirmed", "3", "ETH"), json),  // 10 good
        (swap_json(5, 0, "confirmed", "2", "ETH"), json),   // 11 duplicate of 6
        (vec![], None),                                     // 12 empty
    ];
    for (payload, content_type) in &messages {
        let mut record = FutureRecord::to(&topic).partition(0).key("k").payload(payload);
        if let Some(content_type) = content_type {
            record =
                record.headers(OwnedHeaders::new().insert(Header { key: "content-type", value: Some(*content_type) }));
        }
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }

    let mut vars = names.vars(&brokers);
    vars.push(("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()));
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, messages.len() as i64, Duration::from_secs(60)).await;

    // The dead letters, with reason and origin.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique("it-dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&[&names.dlq]).unwrap();
    let mut letters: BTreeMap<i64, String> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while letters.len() < 8 && std::time::Instant::now() < deadline {
        let Some(Ok(message)) = reader.poll(Duration::from_millis(200)) else { continue };
        let header = |name: &str| {
            let headers = message.headers().expect("dead letters carry headers");
            let value = headers.iter().find(|h| h.key == name).and_then(|h| h.value).expect(name);
            String::from_utf8(value.to_vec()).unwrap()
        };
        assert_eq!(header("swapstream-source-topic"), topic);
        assert_eq!(header("swapstream-source-partition"), "0");
        assert!(!header("swapstream-error").is_empty());
        letters.insert(header("swapstream-source-offset").parse().unwrap(), header("swapstream-reason"));
    }
    let expected: BTreeMap<i64, String> = [
        (1, "malformed_protobuf"),
        (2, "malformed_json"),
        (3, "invalid_field"),
        (4, "invalid_field"),
        (5, "unsupported_content_type"),
        (7, "too_late"),
        (8, "future_timestamp"),
        (12, "empty"),
    ]
    .into_iter()
    .map(|(o, r)| (o, r.to_owned()))
    .collect();
    assert_eq!(letters, expected);

    // The good ones count, each once: offsets 0, 6 and 10.
    let (stored, pending) = from_postgres(&names).await;
    let eth = &stored["tokens"]["ETH"]["totals"];
    assert_eq!(eth["swaps"], 3);
    assert_eq!(eth["volume_usd"], "12001.5");
    assert_eq!(pending, 0);

    // Counted in metrics, and still running.
    let port = logged_port(&consumer).await;
    let (status, metrics) = http::get(port, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "swapstream_events_dead_lettered_total{reason=\"invalid_field\"} 2",
        "swapstream_events_dead_lettered_total{reason=\"too_late\"} 1",
        "swapstream_events_outcome_total{outcome=\"duplicate\"} 1",
    ] {
        assert!(metrics.contains(line), "metrics lack {line}:\n{metrics}");
    }
    assert_eq!(http::get(port, "/healthz").await.0, 200);
    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer keeps running");
    consumer.kill9().await;
}
