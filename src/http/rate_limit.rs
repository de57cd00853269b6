//! Token buckets per client: per API key, or per client IP when anonymous.
//! `local` keeps them in this process (governor's GCRA, a token bucket
//! without a refill task); `redis` keeps them in Redis with the same
//! algorithm in a script, so every replica draws on one bucket per client.
//! When Redis cannot be reached the local buckets decide (counted), so an
//! outage of the limiter's store never takes the API down with it.
//!
//! Every limited answer says where its client stands, in the headers of
//! the IETF draft (draft-ietf-httpapi-ratelimit-headers-07):
//! `RateLimit-Limit` (the burst), `RateLimit-Remaining` (requests allowed
//! at once now), `RateLimit-Reset` (seconds until the bucket is full again,
//! or until the next request is let through after a 429) and
//! `RateLimit-Policy` (`<burst>;w=<seconds the rate takes to refill it>`).

use std::num::NonZeroU32;
use std::time::Duration;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;

use super::error::ceil_secs;
use crate::config::RateLimit;
use crate::metrics::METRICS;
use crate::storage::redis::RedisStore;

type LocalBuckets =
    governor::RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

pub struct RateLimiter {
    local: LocalBuckets,
    shared: Option<RedisStore>,
    interval: Duration,
    burst: u32,
    policy: HeaderValue,
}

/// Where a client stands after a request was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Requests it may make at once now.
    pub remaining: u32,
    /// Until its bucket is full again.
    pub full_in: Duration,
}

const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// Every header the limiter sets (browsers may read them: CORS exposes them).
pub const HEADERS: [HeaderName; 4] = [LIMIT, REMAINING, RESET, POLICY];

impl RateLimiter {
    /// `shared`: the Redis holding the buckets when the settings share them.
    pub fn new(settings: RateLimit, shared: Option<RedisStore>) -> RateLimiter {
        let per_second = NonZeroU32::new(settings.per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(settings.burst.max(1)).expect("at least 1");
        let interval = Duration::from_secs(1) / per_second.get();
        let refill_secs = ceil_secs(interval * burst.get()).max(1);
        RateLimiter {
            local: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)).with_middleware(),
            shared,
            interval,
            burst: burst.get(),
            policy: HeaderValue::from_str(&format!("{burst};w={refill_secs}")).expect("digits"),
        }
    }

    /// `Ok` with where `client` stands when it may make a request now, else
    /// how long until it may.
    pub async fn check(&self, client: &str) -> Result<Allowance, Duration> {
        if let Some(redis) = &self.shared {
            match redis.take_token(client, self.interval, self.burst).await {
                Ok(Ok(full_in)) => return Ok(self.allowance(full_in)),
                Ok(Err(wait)) => return Err(wait),
                Err(_) => METRICS.rate_limit_fallbacks.inc(),
            }
        }
        let checked = self.local.check_key(&client.to_owned()).map(|state| {
            let remaining = state.remaining_burst_capacity();
            Allowance { remaining, full_in: self.interval * (self.burst - remaining.min(self.burst)) }
        });
        checked.map_err(|not_until| {
            // Keeps the table of clients from growing without bound.
            if self.local.len() > 100_000 {
                self.local.retain_recent();
            }
            not_until.wait_time_from(DefaultClock::default().now())
        })
    }

    /// From how long until a bucket is full: the requests it allows at once.
    fn allowance(&self, full_in: Duration) -> Allowance {
        let used = full_in.as_nanos().div_ceil(self.interval.as_nanos().max(1));
        Allowance { remaining: self.burst.saturating_sub(used.min(u128::from(self.burst)) as u32), full_in }
    }

    /// The headers of an answer let through with `allowance`, or refused
    /// (`Err`: the wait until the next request is let through).
    pub fn headers(&self, headers: &mut HeaderMap, outcome: Result<Allowance, Duration>) {
        let (remaining, reset) = match outcome {
            Ok(allowance) => (allowance.remaining, allowance.full_in),
            Err(wait) => (0, wait),
        };
        headers.insert(LIMIT, HeaderValue::from(self.burst));
        headers.insert(REMAINING, HeaderValue::from(remaining));
        headers.insert(RESET, HeaderValue::from(ceil_secs(reset)));
        headers.insert(POLICY, self.policy.clone());
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
        for left in (0..3).rev() {
            let allowance = limiter.check("a").await.unwrap();
            assert_eq!(allowance.remaining, left);
            assert!(allowance.full_in <= Duration::from_secs(3 - u64::from(left)), "{allowance:?}");
        }
        let wait = limiter.check("a").await.unwrap_err();
        assert!(wait > Duration::from_millis(500) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(limiter.check("b").await.is_ok(), "another client has its own bucket");
    }

    #[test]
    fn the_headers_name_the_burst_what_is_left_and_when_it_is_full() {
        let limiter = RateLimiter::new(RateLimit { per_second: 100, burst: 200, shared: false }, None);
        let mut headers = HeaderMap::new();
        limiter.headers(&mut headers, Ok(limiter.allowance(Duration::from_millis(35))));
        let value = |headers: &HeaderMap, name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(value(&headers, "ratelimit-limit"), "200");
        assert_eq!(value(&headers, "ratelimit-remaining"), "196", "35 ms of a 10 ms interval: four used");
        assert_eq!(value(&headers, "ratelimit-reset"), "1");
        assert_eq!(value(&headers, "ratelimit-policy"), "200;w=2");
        limiter.headers(&mut headers, Err(Duration::from_millis(2500)));
        assert_eq!(value(&headers, "ratelimit-remaining"), "0");
        assert_eq!(value(&headers, "ratelimit-reset"), "3");
    }

    #[test]
    fn key_digests_do_not_contain_the_key() {
        let client = key_client("secret-key-0123456789");
        assert!(client.starts_with("key:") && !client.contains("secret"));
        assert_eq!(client, key_client("secret-key-0123456789"));
    }
}
