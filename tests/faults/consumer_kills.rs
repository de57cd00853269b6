//! `kill -9` of the consumer, ten times, at random moments of a stream with
//! duplicates and reordering.

use std::time::{Duration, Instant};

use rand::Rng;

use crate::helpers::{delivered, Names};
use crate::oracle;
use crate::stack::{Stack, ONE_AT_A_TIME};

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_killed_ten_times_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-kill");
    let producing = {
        let (stack, names) = (&stack, names.clone());
        // About 50 s of stream: longer than ten kills and restarts.
        async move { crate::produce(stack, &names, crate::swaps(4000), "9000").await }
    };
    let killing = async {
        let mut slowest = Duration::ZERO;
        for _ in 0..10 {
            let restarted = Instant::now();
            let mut consumer = crate::consumer(&stack, &names, "a");
            // Kill only once it makes progress, so kills land mid-batch and
            // mid-checkpoint rather than while it joins the group.
            crate::progress(&stack, &names, Duration::from_secs(60)).await;
            slowest = slowest.max(restarted.elapsed());
            let pause = rand::thread_rng().gen_range(0..1000);
            tokio::time::sleep(Duration::from_millis(pause)).await;
            consumer.kill9().await;
        }
        slowest
    };
    let (truth, slowest) = tokio::join!(producing, killing);

    let mut consumer = crate::consumer(&stack, &names, "a");
    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    oracle::report(
        "consumer `kill -9` x10 mid-stream (20 % duplicates, 20 % reordered)",
        started.elapsed(),
        &truth,
        counts,
        &format!("restart to progress: {:.1} s at most", slowest.as_secs_f64()),
    );
    crate::helpers::logged_port(&consumer).await;
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
