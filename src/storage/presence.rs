//! Connected WebSocket clients per instance, and a distributed lock for
//! cluster-wide singleton jobs, in Redis.
//!
//! Keys (every command touches one key, so Redis Cluster works):
//! - `<prefix>:ws:instances`: sorted set, instance id -> its last heartbeat
//!   (unix ms);
//! - `<prefix>:ws:instance:<id>`: hash, `sessions` -> live sessions and
//!   `channel:<name>` -> subscribers, rewritten on every heartbeat and
//!   expiring after the TTL, so a crashed instance's counts vanish by
//!   themselves; the clean-up job removes its leftover set entry;
//! - `<prefix>:lock:<name>`: a lock: a random token with a TTL, deleted or
//!   renewed only by the holder of that token (compare-and-delete in Lua).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use serde::Serialize;

use super::redis::{RedisConn, RedisStore};

const RELEASE: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#;
const RENEW: &str =
    r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("PEXPIRE", KEYS[1], ARGV[2]) else return 0 end"#;

/// One instance's WebSocket counts as kept in Redis.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InstanceCounts {
    pub instance: String,
    pub sessions: u64,
    pub channels: BTreeMap<String, u64>,
}

/// The counts of every live instance, and their sums.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterCounts {
    pub sessions: u64,
    pub channels: BTreeMap<String, u64>,
    pub instances: Vec<InstanceCounts>,
}

#[derive(Clone)]
pub struct Presence {
    conn: RedisConn,
    prefix: String,
}

impl Presence {
    pub fn new(redis: &RedisStore) -> Presence {
        Presence { conn: redis.tracking_connection(), prefix: redis.prefix().to_owned() }
    }

    fn instances_key(&self) -> String {
        format!("{}:ws:instances", self.prefix)
    }

    fn instance_key(&self, instance: &str) -> String {
        format!("{}:ws:instance:{instance}", self.prefix)
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}:lock:{name}", self.prefix)
    }

    /// Replaces this instance's counts; they expire after `ttl` unless the
    /// next heartbeat comes first.
    pub async fn heartbeat(&self, counts: &InstanceCounts, ttl: Duration) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let key = self.instance_key(&counts.instance);
        let mut pipe = redis::pipe();
        pipe.atomic().del(&key).ignore();
        let mut fields: Vec<(String, u64)> = vec![("sessions".into(), counts.sessions)];
        fields.extend(counts.channels.iter().map(|(c, n)| (format!("channel:{c}"), *n)));
        pipe.hset_multiple(&key, &fields).ignore();
        pipe.pexpire(&key, ttl.as_millis() as i64).ignore();
        pipe.query_async::<()>(&mut conn).await.context("writing WebSocket presence")?;
        redis::cmd("ZADD")
            .arg(self.instances_key())
            .arg(Utc::now().timestamp_millis())
            .arg(&counts.instance)
            .query_async::<()>(&mut conn)
            .await
            .context("writing the instance set")?;
        Ok(())
    }

    /// Removes this instance's counts (graceful stop).
    pub async fn remove(&self, instance: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        redis::cmd("DEL").arg(self.instance_key(instance)).query_async::<()>(&mut conn).await?;
        redis::cmd("ZREM").arg(self.instances_key()).arg(instance).query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// The counts of every instance whose heartbeat has not expired.
    pub async fn counts(&self) -> anyhow::Result<ClusterCounts> {
        let mut conn = self.conn.clone();
        let instances: Vec<String> =
            redis::cmd("ZRANGE").arg(self.instances_key()).arg(0).arg(-1).query_async(&mut conn).await?;
        let mut total = ClusterCounts::default();
        for instance in instances {
            let fields: BTreeMap<String, u64> =
                redis::cmd("HGETALL").arg(self.instance_key(&instance)).query_async(&mut conn).await?;
            if fields.is_empty() {
                continue; // expired: a dead instance not cleaned up yet
            }
            let mut counts = InstanceCounts { instance, ..Default::default() };
            for (field, n) in fields {
                if field == "sessions" {
                    counts.sessions = n;
                } else if let Some(channel) = field.strip_prefix("channel:") {
                    counts.channels.insert(channel.to_owned(), n);
                    *total.channels.entry(channel.to_owned()).or_default() += n;
                }
            }
            total.sessions += counts.sessions;
            total.instances.push(counts);
        }
        Ok(total)
    }

    /// The clean-up of dead instances, a singleton job: removes the set
    /// entries of instances without a heartbeat for `ttl` whose counts have
    /// expired. Returns the instances removed, or `None` when another
    /// instance holds the job's lock.
    pub async fn clean_dead(&self, ttl: Duration) -> anyhow::Result<Option<Vec<String>>> {
        self.with_lock("ws-presence-cleanup", ttl.max(Duration::from_secs(2)), async {
            let mut conn = self.conn.clone();
            let before = Utc::now().timestamp_millis() - ttl.as_millis() as i64;
            let candidates: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.instances_key())
                .arg("-inf")
                .arg(format!("({before}"))
                .query_async(&mut conn)
                .await?;
            let mut dead = Vec::new();
            for instance in candidates {
                // Its counts expired: no heartbeat within its TTL.
                let alive: i64 = redis::cmd("EXISTS").arg(self.instance_key(&instance)).query_async(&mut conn).await?;
                if alive == 0 {
                    redis::cmd("ZREM").arg(self.instances_key()).arg(&instance).query_async::<()>(&mut conn).await?;
                    dead.push(instance);
                }
            }
            Ok(dead)
        })
        .await
    }

    /// Runs `job` while holding the lock `name`, renewing it every third of
    /// `ttl`; `None` when someone else holds it. The job is abandoned when a
    /// renewal finds the lock lost (it expired and another instance took it).
    pub async fn with_lock<T>(
        &self,
        name: &str,
        ttl: Duration,
        job: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<Option<T>> {
        let Some(lock) = self.acquire(name, ttl).await? else { return Ok(None) };
        let renewing = async {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match self.renew(&lock).await {
                    Ok(true) => {}
                    Ok(false) => return anyhow::anyhow!("lock {name} lost"),
                    Err(e) => return e,
                }
            }
        };
        let result = tokio::select! {
            result = job => result,
            lost = renewing => Err(lost),
        };
        self.release(&lock).await?;
        result.map(Some)
    }

    /// Takes the lock `name` for `ttl` unless someone holds it.
    pub async fn acquire(&self, name: &str, ttl: Duration) -> anyhow::Result<Option<Lock>> {
        let mut conn = self.conn.clone();
        let token = format!("{:032x}", rand::random::<u128>());
        let key = self.lock_key(name);
        let set: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .context("taking a lock")?;
        Ok(set.map(|_| Lock { key, token, ttl }))
    }

    /// Extends the lock by its TTL; false when it is no longer held by `lock`.
    pub async fn renew(&self, lock: &Lock) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let renewed: i64 = redis::Script::new(RENEW)
            .key(&lock.key)
            .arg(&lock.token)
            .arg(lock.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await
            .context("renewing a lock")?;
        Ok(renewed == 1)
    }

    /// Releases the lock if `lock` still holds it; false otherwise (expired,
    /// or taken by someone else, whose lock stays).
    pub async fn release(&self, lock: &Lock) -> anyhow::Result<bool> {
        let mut conn = self.conn.clone();
        let released: i64 = redis::Script::new(RELEASE)
            .key(&lock.key)
            .arg(&lock.token)
            .invoke_async(&mut conn)
            .await
            .context("releasing a lock")?;
        Ok(released == 1)
    }
}

/// A held lock: its key and the random token that proves who holds it.
#[derive(Debug, Clone)]
pub struct Lock {
    key: String,
    token: String,
    ttl: Duration,
}

impl Lock {
    /// A lock value for `name` with another token: what a non-holder has
    /// (for tests of the release rule).
    pub fn forged(presence: &Presence, name: &str, ttl: Duration) -> Lock {
        Lock { key: presence.lock_key(name), token: format!("{:032x}", rand::random::<u128>()), ttl }
    }
}
