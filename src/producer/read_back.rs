//! Where an event landed when its delivery report does not say.
//!
//! librdkafka reports an idempotent send as delivered, with no offset, when
//! the broker answers a retry with `DUPLICATE_SEQUENCE_NUMBER`: it takes
//! that to mean an earlier try was stored, but nothing says where, or
//! whether. In one run here such an event was at no offset of its
//! partition. A ground truth must say what the log holds, so these events
//! are looked for in their partitions: found, they get their offset; not
//! found by the partition's end, they count as not delivered.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use slog::{error, info, Logger};

use super::ground_truth::{Delivery, SentEvent};
use crate::codec::{self, Encoding};
use crate::stream::Tp;

/// Longest time spent reading partitions back at the end of a run.
const READ_BACK_WITHIN: Duration = Duration::from_secs(60);

/// Gives each delivery without an offset the one its event has in the log,
/// or makes it a failed delivery if the log does not hold it (see the
/// module's comment). Nothing to do, and no client made, when every report
/// had its offset.
pub async fn place(
    config: &ClientConfig,
    encoding: Encoding,
    sent: &[SentEvent],
    deliveries: &mut [(u64, Delivery)],
    log: &Logger,
) -> anyhow::Result<()> {
    let events: HashMap<u64, &SentEvent> = sent.iter().map(|s| (s.seq, s)).collect();
    let mut known = HashSet::new();
    let mut places = Vec::new();
    let mut unplaced = Vec::new();
    for (i, (seq, delivery)) in deliveries.iter().enumerate() {
        let (Delivery::Ok { partition, offset }, Some(sent)) = (delivery, events.get(seq)) else { continue };
        if *offset >= 0 {
            known.insert((Tp::new(&sent.topic, *partition), *offset));
            continue;
        }
        places.push(i);
        unplaced.push(Unplaced {
            tp: Tp::new(&sent.topic, *partition),
            key: sent.event.id.tx_hash.to_string().into_bytes(),
            payload: codec::encode(&sent.event, encoding),
        });
    }
    if unplaced.is_empty() {
        return Ok(());
    }
    info!(log, "looking for events delivered without an offset"; "events" => unplaced.len());
    let config = config.clone();
    let found = tokio::task::spawn_blocking(move || locate(&config, &unplaced, &known, READ_BACK_WITHIN))
        .await
        .context("the read-back thread")??;
    for (i, offset) in places.into_iter().zip(found) {
        let (seq, delivery) = &mut deliveries[i];
        let Delivery::Ok { partition, .. } = *delivery else { continue };
        *delivery = match offset {
            Some(offset) => {
                info!(log, "event found in the log"; "seq" => *seq, "partition" => partition, "offset" => offset);
                Delivery::Ok { partition, offset }
            }
            None => {
                error!(log, "event reported delivered is not in the log"; "seq" => *seq, "partition" => partition);
                Delivery::Failed { error: "reported delivered without an offset, and not in its partition".into() }
            }
        };
    }
    Ok(())
}

/// An event delivered without an offset.
struct Unplaced {
    tp: Tp,
    key: Vec<u8>,
    payload: Vec<u8>,
}

/// The offset of each of `unplaced` in its partition, or `None` where the
/// partition, read to its end, does not hold it. `known` are the offsets
/// other delivery reports gave (never taken for an unplaced event, so that
/// of two sends of the same event each keeps its own). Blocking: reads
/// the partitions from their start, for at most `within`.
fn locate(
    config: &ClientConfig,
    unplaced: &[Unplaced],
    known: &HashSet<(Tp, i64)>,
    within: Duration,
) -> anyhow::Result<Vec<Option<i64>>> {
    let mut found = vec![None; unplaced.len()];
    let deadline = Instant::now() + within;
    let mut config = config.clone();
    // A group id librdkafka wants for an assignment; nothing is committed.
    config.set("group.id", "swapstream-read-back").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().context("creating the read-back consumer")?;

    // Each partition is read from its start to its end as of now.
    let mut ends: HashMap<Tp, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for Unplaced { tp, .. } in unplaced {
        if ends.contains_key(tp) {
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(&tp.topic, tp.partition, deadline.saturating_duration_since(Instant::now()))
            .with_context(|| format!("reading the offsets of {tp}"))?;
        if high > low {
            assignment.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(low))?;
            ends.insert(tp.clone(), high);
        }
    }
    consumer.assign(&assignment).context("assigning the partitions to read back")?;

    while !ends.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "partitions not read to their end within {within:?}: {:?}", ends.keys());
        let Some(message) = consumer.poll(left.min(Duration::from_millis(200))) else { continue };
        let message = message.context("reading a partition back")?;
        let (tp, offset) = (Tp::new(message.topic(), message.partition()), message.offset());
        if !known.contains(&(tp.clone(), offset)) {
            let unclaimed = unplaced.iter().enumerate().position(|(i, u)| {
                found[i].is_none()
                    && u.tp == tp
                    && message.key() == Some(u.key.as_slice())
                    && message.payload() == Some(u.payload.as_slice())
            });
            if let Some(i) = unclaimed {
                found[i] = Some(offset);
            }
        }
        if ends.get(&tp).is_some_and(|&end| offset + 1 >= end) {
            ends.remove(&tp);
        }
    }
    Ok(found)
}
