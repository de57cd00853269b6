//! PostgreSQL stopped for 30 s under a running consumer: processing pauses,
//! readiness goes false, no Kafka offset is committed past the checkpoint,
//! and processing resumes on its own afterwards.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::helpers::{self, delivered, Names};
use crate::oracle;
use crate::stack::{time_until, Stack, ONE_AT_A_TIME};
use crate::support::http;

const OUTAGE: Duration = Duration::from_secs(30);

/// The offsets Kafka holds as committed for the consumer's group (they
/// follow the checkpoint, for lag monitoring).
fn committed(stack: &Stack, names: &Names) -> Vec<i64> {
    let reader: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", stack.brokers()).set("group.id", &names.group).create().unwrap();
    let mut partitions = TopicPartitionList::new();
    for token in crate::TOKENS.split(',') {
        for partition in 0..4 {
            partitions.add_partition(&format!("{}{token}", names.topic_prefix), partition);
        }
    }
    let committed = reader.committed_offsets(partitions, Duration::from_secs(10)).unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        })
        .collect()
}

async fn readiness(port: u16) -> u16 {
    http::get(port, "/readyz").await.0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_30_s_postgres_outage_pauses_processing_and_commits_nothing_past_the_checkpoint() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-postgres");
    let mut consumer = crate::consumer(&stack, &names, "a");
    let port = helpers::logged_port(&consumer).await;
    let producing = {
        let (stack, names) = (&stack, names.clone());
        async move { crate::produce(stack, &names, crate::swaps(3000), "6000").await }
    };
    let outage = async {
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        stack.stop_postgres().await;
        let down = Instant::now();
        time_until("readiness goes false", Duration::from_secs(10), || async { readiness(port).await == 503 }).await;
        // Nothing can be checkpointed now, so nothing may be committed either.
        let first = committed(&stack, &names);
        tokio::time::sleep(OUTAGE.saturating_sub(down.elapsed())).await;
        let last = committed(&stack, &names);
        assert_eq!(first, last, "Kafka offsets were committed while PostgreSQL was down");
        stack.start_postgres().await;
        let recovered =
            time_until("readiness is back", Duration::from_secs(60), || async { readiness(port).await == 200 }).await;
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        (recovered, last)
    };
    let (truth, (recovered, committed_during)) = tokio::join!(producing, outage);

    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer was not restarted: {}", consumer.log_text());
    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let stored: i64 = oracle::checkpointed(&stack, &names).await;
    assert!(committed_during.iter().sum::<i64>() <= stored, "committed offsets never pass the checkpoint");
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    oracle::report(
        "PostgreSQL stopped 30 s under a running consumer",
        started.elapsed(),
        &truth,
        counts,
        &format!("ready again {:.1} s after PostgreSQL was back", recovered.as_secs_f64()),
    );
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
