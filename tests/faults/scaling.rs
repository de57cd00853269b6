//! Consumers scaled 1 -> 3 -> 1 during the stream.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::helpers::{delivered, eventually, Names};
use crate::oracle;
use crate::stack::{Stack, ONE_AT_A_TIME};

/// The instances owning the test's partitions in PostgreSQL.
async fn owners(stack: &Stack, names: &Names) -> BTreeSet<String> {
    let sql = format!("SELECT DISTINCT coalesce(owner, '') FROM {}.offsets", names.schema);
    let client = stack.pg().await;
    client.query(sql.as_str(), &[]).await.unwrap_or_default().iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_from_one_to_three_consumers_and_back_changes_no_result() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-scale");
    let id = |member: &str| format!("{}-{member}", names.schema);
    let mut a = crate::consumer(&stack, &names, "a");
    let producing = {
        let (stack, names) = (&stack, names.clone());
        async move { crate::produce(stack, &names, crate::swaps(4000), "6000").await }
    };
    let scaling = async {
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        let mut b = crate::consumer(&stack, &names, "b");
        let mut c = crate::consumer(&stack, &names, "c");
        let three: BTreeSet<String> = [id("a"), id("b"), id("c")].into();
        let up = Instant::now();
        eventually("three consumers share the partitions", Duration::from_secs(60), || {
            let (stack, names, three) = (&stack, &names, three.clone());
            async move { owners(stack, names).await == three }
        })
        .await;
        let shared_after = up.elapsed();
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        // Graceful stops; static members give their partitions up after the session timeout.
        assert!(b.terminate(Duration::from_secs(25)).await.success(), "{}", b.log_text());
        assert!(c.terminate(Duration::from_secs(25)).await.success(), "{}", c.log_text());
        let down = Instant::now();
        let one: BTreeSet<String> = [id("a")].into();
        eventually("one consumer owns every partition again", Duration::from_secs(60), || {
            let (stack, names, one) = (&stack, &names, one.clone());
            async move { owners(stack, names).await == one }
        })
        .await;
        (shared_after, down.elapsed())
    };
    let (truth, (shared_after, back_to_one)) = tokio::join!(producing, scaling);

    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    oracle::report(
        "consumers scaled 1 -> 3 -> 1 mid-stream (graceful stops)",
        started.elapsed(),
        &truth,
        counts,
        &format!(
            "3 owners {:.1} s after starting two more; 1 owner {:.1} s after stopping them",
            shared_after.as_secs_f64(),
            back_to_one.as_secs_f64()
        ),
    );
    assert!(a.terminate(Duration::from_secs(25)).await.success(), "{}", a.log_text());
}
