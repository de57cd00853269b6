//! The one retry policy of the service: while a store or the broker is down,
//! wait 100 ms, then twice as long each time (with jitter, so instances that
//! lost the same server do not come back in step) up to a cap, for as long
//! as it takes. The callers decide what is worth retrying and log each wait.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first wait.
pub const FIRST: Duration = Duration::from_millis(100);

/// Waits of 100 ms doubling to `cap`, without end.
pub fn policy(cap: Duration) -> ExponentialBuilder {
    ExponentialBuilder::new()
        .with_min_delay(FIRST)
        .with_max_delay(cap)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// A policy's waits one at a time, for loops that are not one call: `wait`
/// gives the coming wait, `reset` starts over after a success.
pub struct Backoff {
    policy: ExponentialBuilder,
    waits: ExponentialBackoff,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        let policy = policy(cap);
        Backoff { policy, waits: policy.build() }
    }

    /// The wait before the coming try.
    pub fn wait(&mut self) -> Duration {
        // Without a limit on tries the policy never runs out.
        self.waits.next().unwrap_or(FIRST)
    }

    pub fn reset(&mut self) {
        self.waits = self.policy.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_the_cap_with_jitter_and_start_over_after_a_reset() {
        let cap = Duration::from_secs(10);
        let mut backoff = Backoff::new(cap);
        let waits: Vec<Duration> = (0..12).map(|_| backoff.wait()).collect();
        // Each wait is its step's delay plus up to as much again in jitter,
        // the delay doubling from FIRST and held at the cap.
        let mut step = FIRST;
        for wait in &waits {
            assert!(*wait >= step && *wait <= step * 2, "{wait:?} outside {step:?}..={:?}", step * 2);
            step = (step * 2).min(cap);
        }
        assert!(waits[11] >= cap, "the cap is reached: {waits:?}");
        backoff.reset();
        assert!(backoff.wait() <= FIRST * 2);
    }
}
