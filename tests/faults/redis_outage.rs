//! Redis stopped for 30 s under a running consumer, and back empty (this
//! Redis keeps nothing on disk, so the restart is also a flush): the live
//! values and the REST answers are rebuilt from the durable state.

use std::time::{Duration, Instant};

use crate::helpers::{self, delivered, Names};
use crate::oracle;
use crate::stack::{time_until, Stack, ONE_AT_A_TIME};

const OUTAGE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_for_30_s_and_back_empty_is_rebuilt_from_postgres() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut stack = Stack::start().await;
    let names = Names::new("faults-redis");
    let mut consumer = crate::consumer(&stack, &names, "a");
    let port = helpers::logged_port(&consumer).await;
    let producing = {
        let (brokers, names) = (stack.brokers(), names.clone());
        async move { helpers::produce(&brokers, &names, crate::swaps(3000), &crate::stream("6000")).await }
    };
    let producing = tokio::spawn(producing);
    crate::progress(&stack, &names, Duration::from_secs(60)).await;
    stack.stop_redis().await;
    tokio::time::sleep(OUTAGE).await;
    stack.start_redis().await;
    let truth = producing.await.unwrap();

    assert!(consumer.child.try_wait().unwrap().is_none(), "the consumer was not restarted: {}", consumer.log_text());
    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let expected = truth.expected.clone();
    let rebuilt = time_until("Redis is rebuilt to the ground truth", Duration::from_secs(60), || {
        let (stack, names, expected) = (&stack, &names, expected.clone());
        async move { oracle::from_redis(stack, names).await == expected }
    })
    .await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    let (status, body) = helpers::http_get(port, "/v1/tokens/ETH/stats").await;
    assert_eq!(status, 200, "REST answers again: {body}");
    let rest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rest["totals"]["swaps"], truth.expected["tokens"]["ETH"]["totals"]["swaps"], "REST after the rebuild");
    oracle::report(
        "Redis stopped 30 s, back empty (a flush)",
        started.elapsed(),
        &truth,
        counts,
        &format!("Redis equal to the truth {:.1} s after the stream was stored", rebuilt.as_secs_f64()),
    );
    assert!(consumer.terminate(Duration::from_secs(25)).await.success(), "{}", consumer.log_text());
}
