//! SIGTERM while a dependency is down: the consumer and `all` stop within
//! their grace period (`SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS`) and exit 0. (That
//! nothing is lost or doubled across such stops is what the kill -9 and
//! outage scenarios check.)

use std::time::{Duration, Instant};

use crate::helpers::{self, Child, Names};
use crate::stack::{Stack, ONE_AT_A_TIME};

const GRACE_SECS: u64 = 5;

fn role(stack: &Stack, names: &Names, role: &str, run: usize) -> Child {
    let mut vars = stack.vars(names);
    vars.push(("SWAPSTREAM_SHUTDOWN_TIMEOUT_SECS", GRACE_SECS.to_string()));
    vars.push(("SWAPSTREAM_INSTANCE_ID", format!("{}-{role}", names.schema)));
    vars.push(("SWAPSTREAM_KAFKA_SESSION_TIMEOUT_MS", "6000".into()));
    vars.extend(crate::stream("3000"));
    Child::spawn(&format!("{}-{role}-{run}", names.schema), &[role], &vars)
}

/// SIGTERM; the time to exit, which must be a clean one.
async fn stop(child: &mut Child) -> Duration {
    let started = Instant::now();
    let status = child.terminate(Duration::from_secs(GRACE_SECS + 10)).await;
    assert!(status.success(), "a clean exit: {}", child.log_text());
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_the_broker_postgres_or_redis_down_stops_within_the_grace_period() {
    let _one = ONE_AT_A_TIME.lock().await;
    let started = Instant::now();
    let mut stack = Stack::start().await;
    let names = Names::new("faults-sigterm");
    // Topics and a first stream, so the consumer has work and partitions.
    let truth = crate::produce(&stack, &names, crate::swaps(500), "max").await;
    let mut slowest = Duration::ZERO;

    for (run, outage) in ["broker", "postgres", "redis"].into_iter().enumerate() {
        for name in ["consumer", "all"] {
            // New events, so that the role has work when the outage starts.
            crate::produce(&stack, &names, 100, "max").await;
            let mut child = role(&stack, &names, name, run);
            helpers::logged_port(&child).await;
            crate::progress(&stack, &names, Duration::from_secs(60)).await;
            match outage {
                "broker" => stack.stop_kafka().await,
                "postgres" => stack.stop_postgres().await,
                _ => stack.stop_redis().await,
            }
            let took = stop(&mut child).await;
            assert!(
                took <= Duration::from_secs(GRACE_SECS),
                "{name} took {took:?} to stop with {outage} down (grace {GRACE_SECS} s)"
            );
            slowest = slowest.max(took);
            match outage {
                "broker" => stack.start_kafka().await,
                "postgres" => stack.start_postgres().await,
                _ => stack.start_redis().await,
            }
        }
    }
    println!(
        "RELIABILITY | SIGTERM of consumer and all with the broker, PostgreSQL or Redis down | {:.0} s | {} events | - | - | slowest stop {:.1} s (grace {GRACE_SECS} s) |",
        started.elapsed().as_secs_f64(),
        truth.events.len(),
        slowest.as_secs_f64()
    );
}
