//! Token buckets per client: per API key, or per client IP when anonymous.
//! `local` keeps them in this process (governor's GCRA, a token bucket
//! without a refill task); `redis` keeps them in Redis with the same
//! algorithm in a script, so every replica draws on one bucket per client.
//! When Redis cannot be reached the local buckets decide (counted), so an
//! outage of the limiter's store never takes the API down with it.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use crate::config::RateLimit;
use crate::metrics::METRICS;
use crate::storage::redis::RedisStore;

pub struct RateLimiter {
    local: DefaultKeyedRateLimiter<String>,
    shared: Option<RedisStore>,
    interval: Duration,
    burst: u32,
}

impl RateLimiter {
    /// `shared`: the Redis holding the buckets when the settings share them.
    pub fn new(settings: RateLimit, shared: Option<RedisStore>) -> RateLimiter {
        let per_second = NonZeroU32::new(settings.per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
        RateLimiter {
            local: DefaultKeyedRateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            shared,
            interval: Duration::from_secs(1) / per_second.get(),
            burst: burst.get(),
        }
    }

    /// `Ok` when `client` may make a request now, else how long to wait.
    pub async fn check(&self, client: &str) -> Result<(), Duration> {
        if let Some(redis) = &self.shared {
            match redis.take_token(client, self.interval, self.burst).await {
                Ok(None) => return Ok(()),
                Ok(Some(wait)) => return Err(wait),
                Err(_) => METRICS.rate_limit_fallbacks.inc(),
            }
        }
        self.local.check_key(&client.to_owned()).map(|_| ()).map_err(|not_until| {
            // Keeps the table of clients from growing without bound.
            if self.local.len() > 100_000 {
                self.local.retain_recent();
            }
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }
}

/// The bucket name of an API key: a digest, so keys never reach Redis or logs.
pub fn key_client(api_key: &str) -> String {
    use sha2::{Digest, Sha256};
    format!("key:{}", hex::encode(&Sha256::digest(api_key.as_bytes())[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_passes_then_the_rate_applies_per_client() {
        let limiter = RateLimiter::new(RateLimit { per_second: 1, burst: 3, shared: false }, None);
        for _ in 0..3 {
            assert!(limiter.check("a").await.is_ok());
        }
        let wait = limiter.check("a").await.unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check("b").await.is_ok(), "another client has its own bucket");
    }

    #[test]
    fn key_digests_do_not_contain_the_key() {
        let client = key_client("secret-key-0123456789");
        assert!(client.starts_with("key:") && !client.contains("secret"));
        assert_eq!(client, key_client("secret-key-0123456789"));
    }
}
