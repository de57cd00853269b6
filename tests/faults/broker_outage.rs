//! The broker stopped for 30 s under a running producer and consumer.

use std::time::{Duration, Instant};

use crate::helpers::{delivered, Names};
use crate::oracle;
use crate::stack::{time_until, Stack, ONE_AT_A_TIME};

const OUTAGE: Duration = Duration::from_secs(30);
/// Streaming goes on this long after the consumer recovered.
const AFTER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn both_roles_ride_out_a_30_s_broker_outage_on_their_own() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-broker");
    let mut consumer = crate::consumer(&stack, &names, "a");
    // The stream runs until the consumer has moved on after the outage, so
    // a broker slow to come back cannot make the stream end inside it.
    let producer = crate::Producer::start(&stack.brokers(), &names, &crate::stream("6000"));
    crate::progress(&stack, &names, Duration::from_secs(60)).await;
    stack.stop_kafka().await;
    // The fault itself lasts this long: nothing to wait for.
    tokio::time::sleep(OUTAGE).await;
    stack.start_kafka().await;
    let recovered = time_until("the consumer makes progress after the outage", Duration::from_secs(90), || {
        let (stack, names) = (&stack, &names);
        async move {
            let before = oracle::checkpointed(stack, names).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            oracle::checkpointed(stack, names).await > before
        }
    })
    .await;
    // A while of ordinary streaming after the recovery, then the end.
    tokio::time::sleep(AFTER).await;
    let truth = producer.stop().await;

    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer was not restarted: {}", consumer.log_text());
    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    oracle::report(
        "broker stopped 30 s, producer and consumer running",
        started.elapsed(),
        &truth,
        counts,
        &format!("consumer progressing {:.1} s after the broker was back", recovered.as_secs_f64()),
    );
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
