//! A consumer paused (SIGSTOP) past its session timeout while another takes
//! its partitions over, then resumed (SIGCONT): the zombie's checkpoint and
//! live values must not land over the new owner's (fencing), and it must
//! step back.

use std::time::{Duration, Instant};

use crate::helpers::{delivered, eventually, Names};
use crate::oracle;
use crate::stack::{Stack, ONE_AT_A_TIME};

/// (partitions owned by `owner`, partitions in all).
async fn owned(stack: &Stack, names: &Names, owner: &str) -> (i64, i64) {
    let sql =
        format!("SELECT count(*) FILTER (WHERE owner = $1)::bigint, count(*)::bigint FROM {}.offsets", names.schema);
    let client = stack.pg().await;
    client.query_one(sql.as_str(), &[&owner]).await.map(|r| (r.get(0), r.get(1))).unwrap_or((0, 0))
}

fn signal(pid: i32, signal: libc::c_int) {
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_consumer_is_fenced_out_by_the_new_owner_and_steps_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let stack = Stack::start().await;
    let names = Names::new("faults-zombie");
    let b_id = format!("{}-b", names.schema);
    let mut a = crate::consumer(&stack, &names, "a");
    let mut b = crate::consumer(&stack, &names, "b");
    let producing = {
        let (stack, names) = (&stack, names.clone());
        async move { crate::produce(stack, &names, crate::swaps(4000), "9000").await }
    };
    let pausing = async {
        eventually("both consumers own partitions", Duration::from_secs(60), || {
            let (stack, names, b_id) = (&stack, &names, b_id.as_str());
            async move {
                let (by_b, all) = owned(stack, names, b_id).await;
                all == 16 && by_b > 0 && by_b < all
            }
        })
        .await;
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        signal(a.pid(), libc::SIGSTOP);
        let paused = Instant::now();
        // Past the 6 s session timeout, b takes every partition over.
        eventually("b owns every partition", Duration::from_secs(60), || {
            let (stack, names, b_id) = (&stack, &names, b_id.as_str());
            async move {
                let (by_b, all) = owned(stack, names, b_id).await;
                by_b == all && all == 16
            }
        })
        .await;
        let taken_over = paused.elapsed();
        crate::progress(&stack, &names, Duration::from_secs(60)).await;
        signal(a.pid(), libc::SIGCONT);
        taken_over
    };
    let (truth, taken_over) = tokio::join!(producing, pausing);

    oracle::wait_checkpointed(&stack, &names, delivered(&truth), Duration::from_secs(120)).await;
    let counts = oracle::assert_exact(&stack, &names, &truth).await;
    assert!(a.child.try_wait().unwrap().is_none(), "the resumed consumer runs on: {}", a.log_text());
    // It noticed: its session had timed out, so it gave its partitions up
    // (and a checkpoint it had in flight, if any, was refused).
    let log = a.log_text();
    assert!(log.contains("partitions revoked"), "the resumed consumer stepped back: {log}");
    let fenced =
        if log.contains("checkpoint fenced") { "its in-flight checkpoint fenced" } else { "no checkpoint in flight" };
    oracle::report(
        "consumer paused (SIGSTOP) past its session timeout, resumed after the takeover",
        started.elapsed(),
        &truth,
        counts,
        &format!(
            "the other took over {:.1} s after the pause; the resumed one stepped back, {fenced}",
            taken_over.as_secs_f64()
        ),
    );
    assert!(a.terminate(Duration::from_secs(25)).await.success(), "{}", a.log_text());
    assert!(b.terminate(Duration::from_secs(25)).await.success(), "{}", b.log_text());
}
