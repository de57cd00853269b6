//! One connection type for a single Redis server or a cluster, whose every
//! command is answered or failed within the configured timeout.
//!
//! redis-rs bounds the wait for an answer once a command is sent, but a
//! command issued while the connection is being re-made waits for the
//! reconnection and its retries (seconds, growing), and a cluster command
//! may be retried across nodes. The bound here covers all of it, so a
//! caller (a REST read, a live write, a clean stop) learns of an outage
//! within `SWAPSTREAM_REDIS_TIMEOUT_MS` whatever state the link is in.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

#[derive(Clone)]
pub struct RedisConn {
    link: Link,
    timeout: Duration,
}

#[derive(Clone)]
enum Link {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    pub fn cluster(connection: ClusterConnection, timeout: Duration) -> RedisConn {
        RedisConn { link: Link::Cluster(connection), timeout }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self.link, Link::Cluster(_))
    }
}

/// A reconnecting connection to one Redis server, made within 10 s, whose
/// commands fail after `timeout` without an answer. The manager gets no
/// response timeout of its own: [`bounded`] covers the answer already.
pub async fn managed(client: &redis::Client, timeout: Duration, what: &str) -> anyhow::Result<RedisConn> {
    let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let manager = tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager_with_config(config))
        .await
        .with_context(|| format!("connecting to {what}: timed out"))?
        .with_context(|| format!("connecting to {what}"))?;
    Ok(RedisConn { link: Link::Single(manager), timeout })
}

/// `answer`, or a timeout error once `timeout` has passed.
fn bounded<'a, T: Send + 'a>(timeout: Duration, answer: RedisFuture<'a, T>) -> RedisFuture<'a, T> {
    Box::pin(async move {
        tokio::time::timeout(timeout, answer).await.unwrap_or_else(|_| {
            Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within the timeout")))
        })
    })
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let answer = match &mut self.link {
            Link::Single(c) => c.req_packed_command(cmd),
            Link::Cluster(c) => c.req_packed_command(cmd),
        };
        bounded(self.timeout, answer)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let answer = match &mut self.link {
            Link::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Link::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        };
        bounded(self.timeout, answer)
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}
