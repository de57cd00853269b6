//! The consumer in-process: a panicking aggregator is restarted by its
//! supervisor, every partition rewinds to its checkpoint, and the answers
//! (from the actors and from PostgreSQL) stay exact.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use swapstream::actors::aggregator::{Poison, Query};
use swapstream::codec;
use swapstream::domain::aggregate::{Interval, Reference};
use swapstream::domain::partial::{AggKey, Select};
use swapstream::domain::{Status, SwapEvent, TokenSymbol};
use swapstream::metrics::METRICS;
use swapstream::producer::ground_truth::GroundTruthFile;
use swapstream::startup::Consumer;

use crate::helpers::{self, as_reference, delivered, from_postgres, require_broker, wait_checkpointed, Names};
use crate::support::http;

fn stream() -> Vec<(&'static str, String)> {
    vec![
        ("SWAPSTREAM_PRODUCER_TOKENS", "ETH,BTC,USDC".into()),
        ("SWAPSTREAM_PRODUCER_RATE", "max".into()),
        ("SWAPSTREAM_PRODUCER_CONFIRM_DELAY_MS", "50".into()),
        ("SWAPSTREAM_PRODUCER_DUPLICATE_SHARE", "0.2".into()),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "3".into()),
    ]
}

/// The confirmed swaps of several ground truths, each once.
fn confirmed(truths: &[&GroundTruthFile]) -> Vec<SwapEvent> {
    let mut seen = HashSet::new();
    let mut swaps = Vec::new();
    for truth in truths {
        for entry in truth.events.iter().filter(|e| e.result == "ok") {
            let event = codec::decode(entry.event.to_string().as_bytes(), Some(codec::CONTENT_TYPE_JSON)).unwrap();
            if event.status == Status::Confirmed && seen.insert(event.id) {
                swaps.push(event);
            }
        }
    }
    swaps
}

#[test]
fn a_panicking_aggregator_restarts_from_the_checkpoint_and_the_others_carry_on() {
    let system = actix::System::new();
    system.block_on(async {
        let brokers = require_broker();
        let names = Names::new("it-supervise");
        let first = helpers::produce(&brokers, &names, 150, &stream()).await;

        let mut vars: Vec<(String, String)> =
            names.vars(&brokers).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        vars.retain(|(k, _)| k != "SWAPSTREAM_LOG_FORMAT");
        vars.push(("SWAPSTREAM_HTTP_ADDR".into(), "127.0.0.1:0".into()));
        vars.push(("SWAPSTREAM_BATCH_MAX_MS".into(), "50".into()));
        let settings = swapstream::config::Settings::from_vars(vars).unwrap();
        let consumer = Consumer::start(&settings, &brokers, &swapstream::telemetry::discard()).await.unwrap();
        wait_checkpointed(&names, delivered(&first), Duration::from_secs(60)).await;

        let eth = AggKey::Token(TokenSymbol::parse("ETH").unwrap());
        let restarts_before = METRICS.aggregator_restarts.get();
        consumer.aggregators.get(&eth).expect("the ETH aggregator runs").send(Poison).await.unwrap();
        let second = helpers::produce(&brokers, &names, 150, &stream()).await;
        wait_checkpointed(&names, delivered(&first) + delivered(&second), Duration::from_secs(90)).await;
        assert_eq!(METRICS.aggregator_restarts.get(), restarts_before + 1, "the supervisor restarted it once");

        let expected = serde_json::to_value(Reference::compute(&confirmed(&[&first, &second]))).unwrap();
        // The actors' own answer (what REST serves in this role)...
        let mut merged = BTreeMap::new();
        for (key, addr) in consumer.aggregators.all() {
            let (answer, recent) =
                addr.send(Query { select: Select::Since(Interval::ALL.to_vec(), 0), recent: 5 }).await.unwrap();
            assert!(recent.len() <= 5 && recent.windows(2).all(|w| w[0].order_key() >= w[1].order_key()));
            merged.insert(key, answer);
        }
        assert_eq!(as_reference(merged), expected, "the actors' merged answer");
        // ...and PostgreSQL's.
        assert_eq!(from_postgres(&names).await.0, expected, "PostgreSQL");
        consumer.stop(Duration::from_secs(20)).await;
    });
}

/// In `swapstream all` a producer that fails leaves the consumer serving
/// (here it cannot write its ground truth after sending everything); the
/// consumer still processes every event and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn in_all_a_failing_producer_leaves_the_consumer_serving() {
    let brokers = require_broker();
    let names = Names::new("it-all-isolated");
    let mut vars = names.vars(&brokers);
    vars.extend(stream());
    vars.extend([
        ("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ("SWAPSTREAM_PRODUCER_COUNT", "60".to_owned()),
        ("SWAPSTREAM_PRODUCER_GROUND_TRUTH", "/nonexistent-dir/truth.json".to_owned()),
    ]);
    let mut all = helpers::Child::spawn(&names.schema, &["all"], &vars);
    let port = helpers::logged_port(&all).await;
    helpers::eventually("the producer reports its failure", Duration::from_secs(60), || {
        let text = all.log_text();
        async move { text.contains("the producer stopped on an error") }
    })
    .await;
    // 60 swaps of 2 events plus duplicates: every one delivered is checkpointed.
    let client = helpers::pg().await;
    helpers::eventually("the consumer checkpoints the whole stream", Duration::from_secs(60), || {
        let (client, names) = (&client, &names);
        async move { helpers::checkpointed(client, names).await >= 120 }
    })
    .await;
    let (status, _) = http::get(port, "/healthz").await;
    assert_eq!(status, 200, "still serving after the producer failed");
    let status = all.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "a clean stop: {}", all.log_text());
}
