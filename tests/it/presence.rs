//! The Redis lock for cluster-wide singleton jobs, and the WebSocket
//! presence clean-up it guards.

use std::time::{Duration, Instant};

use swapstream::storage::presence::{InstanceCounts, Lock, Presence};
use swapstream::storage::redis::RedisStore;

use crate::helpers::{eventually, Names};

#[tokio::test(flavor = "multi_thread")]
async fn the_lock_excludes_only_its_holder_expires_and_guards_the_presence_clean_up() {
    let names = Names::new("it-ws-lock");
    let settings = names.settings(&[]);
    let a = Presence::new(&RedisStore::connect(&settings.redis, 100).await.unwrap());
    let b = Presence::new(&RedisStore::connect(&settings.redis, 100).await.unwrap());
    let ttl = Duration::from_millis(800);

    // Two instances racing for the lock: exactly one holds it each round.
    for _ in 0..20 {
        let (got_a, got_b) = tokio::join!(a.acquire("job", ttl), b.acquire("job", ttl));
        let (got_a, got_b) = (got_a.unwrap(), got_b.unwrap());
        assert!(got_a.is_some() != got_b.is_some(), "both or neither took the lock");
        let (holder, lock) = match (got_a, got_b) {
            (Some(lock), None) => (&a, lock),
            (None, Some(lock)) => (&b, lock),
            _ => unreachable!(),
        };
        assert!(holder.release(&lock).await.unwrap());
    }

    // A non-holder cannot release it.
    let lock = a.acquire("job", ttl).await.unwrap().expect("free");
    assert!(!b.release(&Lock::forged(&b, "job", ttl)).await.unwrap());
    assert!(b.acquire("job", ttl).await.unwrap().is_none(), "still held by a");

    // Renewed, it outlives its TTL; released by its holder, it is free.
    let started = Instant::now();
    while started.elapsed() < ttl * 2 {
        assert!(a.renew(&lock).await.unwrap());
        assert!(b.acquire("job", ttl).await.unwrap().is_none());
        tokio::time::sleep(ttl / 4).await;
    }
    // Not renewed, it expires and the other instance takes over; the old
    // holder can then neither renew nor release the new one's lock.
    let expired_at = Instant::now();
    let taken = loop {
        if let Some(lock) = b.acquire("job", ttl).await.unwrap() {
            break lock;
        }
        assert!(expired_at.elapsed() < ttl * 4, "the lock never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(expired_at.elapsed() >= ttl / 2, "taken over before the TTL");
    assert!(!a.renew(&lock).await.unwrap());
    assert!(!a.release(&lock).await.unwrap());
    assert!(b.release(&taken).await.unwrap());

    // with_lock: the job runs for longer than the TTL, renewed meanwhile,
    // and a second instance's job does not run at the same time.
    let long_job = a.with_lock("job", ttl, async {
        tokio::time::sleep(ttl * 2).await;
        Ok(1)
    });
    let contender = async {
        tokio::time::sleep(ttl + ttl / 2).await;
        b.with_lock("job", ttl, async { Ok(2) }).await.unwrap()
    };
    let (first, second) = tokio::join!(long_job, contender);
    assert_eq!((first.unwrap(), second), (Some(1), None));

    // The clean-up removes a dead instance's leftovers, not live ones.
    let ghost = InstanceCounts { instance: "ghost".into(), sessions: 7, ..Default::default() };
    let alive = InstanceCounts { instance: "alive".into(), sessions: 2, ..Default::default() };
    a.heartbeat(&ghost, Duration::from_millis(500)).await.unwrap();
    a.heartbeat(&alive, Duration::from_secs(30)).await.unwrap();
    assert_eq!(a.counts().await.unwrap().sessions, 9);
    eventually("the dead instance's counts expire", Duration::from_secs(5), || {
        let a = &a;
        async move { a.counts().await.unwrap().sessions == 2 }
    })
    .await;
    let cleaning = Instant::now();
    let removed = loop {
        match b.clean_dead(Duration::from_millis(500)).await.unwrap() {
            Some(removed) if !removed.is_empty() => break removed,
            _ => assert!(cleaning.elapsed() < Duration::from_secs(5), "the dead instance was not cleaned up"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(removed, ["ghost"]);
    let counts = b.counts().await.unwrap();
    assert_eq!(counts.instances.iter().map(|i| i.instance.as_str()).collect::<Vec<_>>(), ["alive"]);
}

/// With its Redis gone, a command fails within `SWAPSTREAM_REDIS_TIMEOUT_MS`
/// even while the connection is being re-made (whose retries alone take
/// seconds): a clean stop with Redis down is not held by them.
#[tokio::test(flavor = "multi_thread")]
async fn with_redis_gone_every_command_fails_within_the_timeout_while_reconnecting() {
    let names = Names::new("it-redis-gone");
    let mut redis = crate::helpers::OwnRedis::start().await;
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let settings = names.settings(&[("SWAPSTREAM_REDIS_URL", &url), ("SWAPSTREAM_REDIS_TIMEOUT_MS", "300")]);
    let presence = Presence::new(&RedisStore::connect(&settings.redis, 100).await.unwrap());
    presence.remove("a").await.expect("Redis is up");

    redis.child.kill().await.unwrap();
    for attempt in 0..4 {
        let started = Instant::now();
        let result = presence.remove("a").await;
        let took = started.elapsed();
        assert!(result.is_err(), "attempt {attempt}: Redis is gone, yet the command succeeded");
        // Two commands of 300 ms at most each; the reconnection's retries
        // would take more than 6 s.
        assert!(took < Duration::from_secs(2), "attempt {attempt} took {took:?}");
    }
}
