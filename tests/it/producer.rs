//! The producer role against the real broker, read back with a separate
//! consumer and checked against its own ground-truth file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use swapstream::codec;
use swapstream::domain::aggregate::Reference;
use swapstream::domain::{Status, SwapEvent};
use swapstream::producer::ground_truth::GroundTruthFile;

use crate::helpers::{self, require_broker, unique, Names};
use crate::support::http;

const TOKENS: &str = "ETH,BTC,SOL,USDC";
const PARTITIONS: i32 = 3;

/// Runs the producer against the test broker with injection turned on.
async fn produce(prefix: &str, count: u32, extra: &[(&str, String)]) -> GroundTruthFile {
    let names = Names { topic_prefix: prefix.to_owned(), ..Names::new("it-producer") };
    let mut vars = vec![
        ("SWAPSTREAM_KAFKA_PARTITIONS", PARTITIONS.to_string()),
        ("SWAPSTREAM_PRODUCER_TOKENS", TOKENS.into()),
        ("SWAPSTREAM_PRODUCER_RATE", "max".into()),
        ("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "100".into()),
        ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "0.2".into()),
        ("SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", "0.25".into()),
        ("SWAPSTREAM_PRODUCER_REORDER_SHARE", "0.25".into()),
        ("SWAPSTREAM_PRODUCER_REORDER_MAX_MS", "300".into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    helpers::produce(&require_broker(), &names, count, &vars).await
}

/// One message read back from the broker.
struct ReadBack {
    topic: String,
    partition: i32,
    offset: i64,
    content_type: Option<String>,
    event: SwapEvent,
}

/// Reads every message of the prefix's topics from the beginning up to the
/// high watermarks, with a plain rdkafka consumer.
fn read_back(prefix: &str) -> Vec<ReadBack> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", require_broker())
        .set("group.id", unique("it-readback"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    for token in TOKENS.split(',') {
        let topic = format!("{prefix}{token}");
        for partition in 0..PARTITIONS {
            let (low, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(10)).unwrap();
            assert_eq!(low, 0);
            if high > 0 {
                assignment.add_partition_offset(&topic, partition, Offset::Beginning).unwrap();
                ends.insert((topic.clone(), partition), high);
            }
        }
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut read = Vec::new();
    let mut remaining: HashSet<(String, i32)> = ends.keys().cloned().collect();
    while !remaining.is_empty() {
        assert!(std::time::Instant::now() < deadline, "did not read up to the watermarks: {remaining:?} left");
        let Some(message) = consumer.poll(Duration::from_millis(200)) else { continue };
        let message = message.unwrap();
        let content_type = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == codec::CONTENT_TYPE_HEADER))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8(v.to_vec()).unwrap());
        let event = codec::decode(message.payload().unwrap(), content_type.as_deref()).unwrap();
        let key = (message.topic().to_owned(), message.partition());
        assert_eq!(message.key(), Some(event.id.tx_hash.to_string().as_bytes()), "the key is the tx hash");
        if message.offset() + 1 >= ends[&key] {
            remaining.remove(&key);
        }
        read.push(ReadBack { topic: key.0, partition: key.1, offset: message.offset(), content_type, event });
    }
    read
}

fn wire(event: &SwapEvent) -> serde_json::Value {
    serde_json::to_value(event.to_wire()).unwrap()
}

async fn check_round_trip(encoding: &str, content_type: &str, extra: &[(&str, String)]) {
    let prefix = format!("{}.", unique(&format!("it-producer-{encoding}")));
    let truth = produce(&prefix, 300, extra).await;
    let read = read_back(&prefix);

    // Every delivered event is in the broker where the ground truth says,
    // byte-for-byte the same event, and nothing else is.
    let mut expected: BTreeMap<(String, i32, i64), &serde_json::Value> = BTreeMap::new();
    for entry in truth.events.iter().filter(|e| e.result == "ok") {
        expected.insert((entry.topic.clone(), entry.partition.unwrap(), entry.offset.unwrap()), &entry.event);
    }
    assert_eq!(truth.counts.sent.delivery_errors, 0);
    assert_eq!(read.len(), expected.len());
    for message in &read {
        assert_eq!(message.content_type.as_deref(), Some(content_type));
        assert_eq!(message.topic, format!("{prefix}{}", message.event.token_from), "topic per token sold");
        let key = (message.topic.clone(), message.partition, message.offset);
        assert_eq!(expected.get(&key), Some(&&wire(&message.event)), "event at {key:?}");
    }

    // Lifecycles: every swap was pending, then exactly one terminal status.
    let mut statuses: HashMap<_, Vec<Status>> = HashMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for message in &read {
        if !seen.insert((message.event.id, message.event.status)) {
            duplicates += 1;
            continue;
        }
        statuses.entry(message.event.id).or_default().push(message.event.status);
    }
    assert_eq!(statuses.len(), 300, "swaps");
    assert_eq!(duplicates, truth.counts.sent.duplicates, "duplicate count");
    assert!(truth.counts.sent.duplicates > 0 && truth.counts.sent.reordered > 0, "injection is on: {:?}", truth.counts);
    for (id, mut list) in statuses {
        list.sort_by_key(|s| s.as_str());
        assert!(
            list == [Status::Confirmed, Status::Pending] || list == [Status::Failed, Status::Pending],
            "{id:?} has statuses {list:?}"
        );
    }

    // The expected aggregates are those of what was read, computed anew.
    let mut first_terminal = HashSet::new();
    let confirmed: Vec<&SwapEvent> = read
        .iter()
        .map(|m| &m.event)
        .filter(|e| e.status.is_terminal() && first_terminal.insert(e.id))
        .filter(|e| e.status == Status::Confirmed)
        .collect();
    assert_eq!(confirmed.len() as u64, truth.counts.confirmed);
    let recomputed = serde_json::to_value(Reference::compute(confirmed)).unwrap();
    assert_eq!(recomputed, truth.expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_stream_matches_its_ground_truth() {
    check_round_trip("protobuf", codec::CONTENT_TYPE_PROTOBUF, &[]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_stream_matches_its_ground_truth() {
    check_round_trip("json", codec::CONTENT_TYPE_JSON, &[("SWAPSTREAM_PRODUCER_ENCODING", "json".into())]).await;
}

/// A fatal error of the idempotent producer is answered with a new producer
/// instance, and the run goes on. The error is an out-of-order sequence under
/// the gapless guarantee, injected by librdkafka's mock cluster: a real
/// broker cannot be made to answer so on demand.
#[tokio::test(flavor = "multi_thread")]
async fn a_fatal_producer_error_is_answered_with_a_new_producer() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext> = MockCluster::new(1).unwrap();
    let names = Names::new("it-fatal");
    for token in TOKENS.split(',') {
        cluster.create_topic(&format!("{}{token}", names.topic_prefix), PARTITIONS, 1).unwrap();
    }
    cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER]);
    let truth_path = names.truth_path();
    let mut vars = names.vars(&cluster.bootstrap_servers());
    vars.extend([
        ("SWAPSTREAM_PRODUCER_TOKENS", TOKENS.to_owned()),
        ("SWAPSTREAM_PRODUCER_RATE", "6000".to_owned()),
        ("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "100".to_owned()),
        ("SWAPSTREAM_KAFKA_OPTIONS", "enable.idempotence=true,enable.gapless.guarantee=true".to_owned()),
    ]);
    let truth_arg = truth_path.display().to_string();
    let output = helpers::run_binary(
        &["producer", "--count", "100", "--ground-truth", &truth_arg],
        &vars,
        Duration::from_secs(120),
    )
    .await;
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the producer ran to its end: {log}");
    assert!(log.contains("fatal Kafka producer error; recreating the producer"), "a fatal error was met: {log}");

    let truth = GroundTruthFile::read(&truth_path).unwrap();
    assert_eq!(truth.events.len(), 200, "every swap's two events were sent");
    let delivered = truth.events.iter().filter(|e| e.result == "ok").count();
    let lost_with_the_old_client = truth.events.len() - delivered;
    assert!(delivered >= 190, "the new producer delivered the rest: {delivered} of 200 ({log})");
    assert!(lost_with_the_old_client < 10, "only what the failed client held is lost: {lost_with_the_old_client}");
}

/// The producer serves what its probes and scrapes ask for: `/healthz`,
/// `/readyz` (the broker answers) and `/metrics`; it stops on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn the_producer_serves_health_readiness_and_metrics() {
    let names = Names::new("it-producer-http");
    let mut vars = names.vars(&require_broker());
    vars.extend([("SWAPSTREAM_PRODUCER_TOKENS", TOKENS.to_owned()), ("SWAPSTREAM_PRODUCER_RATE", "600".to_owned())]);
    let mut producer = helpers::Child::spawn(&names.schema, &["producer"], &vars);
    let port = helpers::logged_port(&producer).await;

    let (status, body) = http::get(port, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http::get(port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["checks"]["kafka"], "ok");
    let (status, metrics) = http::get(port, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("swapstream_producer_recreated_total 0"), "{metrics}");
    let (status, _) = http::get(port, "/v1/tokens").await;
    assert_eq!(status, 404, "the producer serves no API");

    let status = producer.terminate(Duration::from_secs(20)).await;
    assert!(status.success(), "{}", producer.log_text());
}

/// A delivery report without an offset (librdkafka's answer to a retry the
/// broker calls a duplicate) is settled against the log before the ground
/// truth is built: the event's offset when its partition holds it, a failed
/// delivery when it does not; an offset another report gave is never
/// taken, so two sends of one event keep their own.
#[tokio::test(flavor = "multi_thread")]
async fn events_delivered_without_an_offset_are_looked_for_in_their_partition() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use swapstream::codec::Encoding;
    use swapstream::producer::ground_truth::{Delivery, SentEvent};
    use swapstream::producer::read_back;

    let brokers = require_broker();
    let names = Names::new("it-producer-locate");
    let topic = format!("{}ETH", names.topic_prefix);
    let settings = names.settings(&[("SWAPSTREAM_KAFKA_PARTITIONS", "1")]);
    let log = swapstream::telemetry::discard();
    swapstream::kafka::create_topics(&settings.kafka, &brokers, std::slice::from_ref(&topic), &log)
        .await
        .expect("creating the topic");
    let event = |hash: u8| {
        let json = helpers::swap_json(hash, -5, "pending", "1", "ETH");
        std::sync::Arc::new(codec::decode(&json, Some(codec::CONTENT_TYPE_JSON)).expect("a valid swap"))
    };
    let events: Vec<_> = (1..=5).map(event).collect();
    // The fifth event sent twice (seq 5 and 6), as a duplicate is.
    let sent: Vec<SentEvent> = [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 4)]
        .into_iter()
        .map(|(seq, i)| SentEvent {
            seq,
            topic: topic.clone(),
            duplicate: seq == 6,
            reordered: false,
            event: events[i].clone(),
        })
        .collect();
    // Sent as the producer sends them, at offsets 0 to 4: every event but
    // the fourth, the fifth twice.
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let mut offsets = Vec::new();
    for s in sent.iter().filter(|s| s.seq != 4) {
        let (key, payload) = (s.event.id.tx_hash.to_string(), codec::encode(&s.event, Encoding::Json));
        let record = FutureRecord::to(&topic).partition(0).key(&key).payload(&payload);
        offsets.push(producer.send(record, Duration::from_secs(10)).await.unwrap().offset);
    }
    assert_eq!(offsets, [0, 1, 2, 3, 4]);

    // The reports of 2, 4 (never sent) and 6 (the fifth's second send) came without offsets.
    let ok = |offset| Delivery::Ok { partition: 0, offset };
    let mut deliveries = vec![(1, ok(0)), (2, ok(-1001)), (3, ok(2)), (4, ok(-1001)), (5, ok(3)), (6, ok(-1001))];
    read_back::place(
        &swapstream::kafka::client_config(&settings.kafka, &brokers),
        Encoding::Json,
        &sent,
        &mut deliveries,
        &log,
    )
    .await
    .expect("reading the partition back");
    let settled: Vec<(u64, Option<i64>)> = deliveries
        .iter()
        .map(|(seq, d)| {
            (
                *seq,
                match d {
                    Delivery::Ok { offset, .. } => Some(*offset),
                    Delivery::Failed { .. } => None,
                },
            )
        })
        .collect();
    assert_eq!(settled, [(1, Some(0)), (2, Some(1)), (3, Some(2)), (4, None), (5, Some(3)), (6, Some(4))]);
}
