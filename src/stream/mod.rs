//! Per-partition stream semantics: which events count, once, in event time.

pub mod partition;

use std::fmt;
use std::sync::Arc;

pub use partition::{Outcome, PartitionState, SeenChange};

use crate::domain::partial::{AggKey, PartialDelta};

/// A Kafka topic partition.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tp {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl Tp {
    pub fn new(topic: &str, partition: i32) -> Tp {
        Tp { topic: topic.into(), partition }
    }
}

impl fmt::Display for Tp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// What one partition changed in one key's partial: the one shape a change
/// has from the aggregator that made it to the checkpoint in PostgreSQL and
/// the live state in Redis.
#[derive(Debug, Clone)]
pub struct PartialChange {
    pub key: AggKey,
    pub tp: Tp,
    pub delta: PartialDelta,
}
