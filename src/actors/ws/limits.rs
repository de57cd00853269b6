//! Admission of WebSocket connections: per client IP address, and in all
//! within the process' descriptor limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Connections per IP address and in all, counted when the upgrade is
/// accepted and released when the session's actor is dropped.
#[derive(Clone)]
pub struct IpLimiter {
    counts: Arc<Mutex<Counts>>,
    /// Most sessions this process can hold (see [`session_capacity`]).
    capacity: usize,
}

#[derive(Default)]
struct Counts {
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

pub struct IpSlot {
    limiter: IpLimiter,
    ip: IpAddr,
}

/// Why an upgrade was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    PerIp,
    AtCapacity,
}

impl IpLimiter {
    pub fn new(capacity: usize) -> IpLimiter {
        IpLimiter { counts: Arc::default(), capacity }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn acquire(&self, ip: IpAddr, max_per_ip: usize) -> Result<IpSlot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.capacity {
            return Err(Refused::AtCapacity);
        }
        let count = counts.per_ip.entry(ip).or_default();
        if *count >= max_per_ip {
            return Err(Refused::PerIp);
        }
        *count += 1;
        counts.total += 1;
        Ok(IpSlot { limiter: self.clone(), ip })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total -= 1;
        if let Some(count) = counts.per_ip.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Descriptors kept for everything but WebSocket sessions: HTTP clients,
/// Kafka, PostgreSQL and Redis connections, files.
const FD_RESERVE: u64 = 1024;

/// How many WebSocket sessions fit in the process' descriptor limit: each
/// takes one, and a reserve stays free so that health checks, REST and the
/// stores still get theirs. Raises the soft limit to the hard one first.
pub fn session_capacity() -> (usize, u64) {
    let limit = rlimit::increase_nofile_limit(u64::MAX)
        .unwrap_or_else(|_| rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft));
    (usize::try_from(limit.saturating_sub(FD_RESERVE)).unwrap_or(usize::MAX), limit)
}
