//! The producer's ground-truth file: every event it sent, where it landed,
//! and the aggregates a correct consumer must end with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::Summary;
use crate::codec::Encoding;
use chrono::{DateTime, Utc};

use crate::domain::aggregate::Reference;
use crate::domain::window::windows_at as windows_at_fn;
use crate::domain::window::Window;
use crate::domain::{Status, SwapEvent};

/// Where one event ended up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Delivery {
    Ok { partition: i32, offset: i64 },
    Failed { error: String },
}

/// One event as the producer sent it.
pub struct SentEvent {
    pub seq: u64,
    pub topic: String,
    pub duplicate: bool,
    pub reordered: bool,
    pub event: Arc<SwapEvent>,
}

#[derive(Serialize)]
struct EventRecord<'a> {
    topic: &'a str,
    #[serde(flatten)]
    delivery: &'a Delivery,
    duplicate: bool,
    reordered: bool,
    event: crate::domain::swap::WireSwap<'a>,
}

/// Counts of what the ground truth describes: what was sent (counted from
/// the delivery reports: `delivered`, `duplicates` and `reordered` count
/// delivered events only), and how the delivered swaps ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    #[serde(flatten)]
    pub sent: Summary,
    /// Swaps whose confirmed event was delivered.
    pub confirmed: u64,
    pub failed: u64,
}

pub struct GroundTruth {
    seed: u64,
    encoding: Encoding,
    counts: Counts,
    events: Vec<(SentEvent, Delivery)>,
    expected: Reference,
    windows_at: DateTime<Utc>,
    windows: BTreeMap<String, BTreeMap<&'static str, Window>>,
}

impl GroundTruth {
    pub fn build(
        seed: u64,
        encoding: Encoding,
        summary: &Summary,
        sent: Vec<SentEvent>,
        deliveries: Vec<(u64, Delivery)>,
    ) -> GroundTruth {
        let mut by_seq: HashMap<u64, Delivery> = deliveries.into_iter().collect();
        let events: Vec<(SentEvent, Delivery)> = sent
            .into_iter()
            .map(|s| {
                let delivery = by_seq.remove(&s.seq).unwrap_or(Delivery::Failed { error: "no delivery report".into() });
                (s, delivery)
            })
            .collect();
        let delivered = || events.iter().filter(|(_, d)| matches!(d, Delivery::Ok { .. })).map(|(s, _)| s);
        let mut seen = HashSet::new();
        let mut terminal: Vec<&SwapEvent> = Vec::new();
        for sent in delivered() {
            if sent.event.status.is_terminal() && seen.insert(sent.event.id) {
                terminal.push(&sent.event);
            }
        }
        let counts = Counts {
            sent: Summary {
                swaps: summary.swaps,
                events_sent: summary.events_sent,
                delivered: delivered().count() as u64,
                delivery_errors: events.len() as u64 - delivered().count() as u64,
                duplicates: delivered().filter(|s| s.duplicate).count() as u64,
                reordered: delivered().filter(|s| s.reordered).count() as u64,
            },
            confirmed: terminal.iter().filter(|e| e.status == Status::Confirmed).count() as u64,
            failed: terminal.iter().filter(|e| e.status == Status::Failed).count() as u64,
        };
        let expected = Reference::compute(terminal.iter().copied());
        let windows_at = Utc::now();
        let windows = windows_at_fn(terminal.iter().copied(), windows_at);
        GroundTruth { seed, encoding, counts, events, expected, windows_at, windows }
    }

    /// Writes the file: `{"seed", "encoding", "counts", "events": [...],
    /// "expected": {"tokens": {...}, "pairs": {...}}}`.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        #[derive(Serialize)]
        struct File<'a> {
            seed: u64,
            encoding: Encoding,
            counts: &'a Counts,
            events: Vec<EventRecord<'a>>,
            expected: &'a Reference,
            windows_at: String,
            windows: &'a BTreeMap<String, BTreeMap<&'static str, Window>>,
        }
        let file = File {
            seed: self.seed,
            encoding: self.encoding,
            counts: &self.counts,
            events: self
                .events
                .iter()
                .map(|(s, d)| EventRecord {
                    topic: &s.topic,
                    delivery: d,
                    duplicate: s.duplicate,
                    reordered: s.reordered,
                    event: s.event.to_wire(),
                })
                .collect(),
            expected: &self.expected,
            windows_at: crate::domain::swap::format_time(self.windows_at),
            windows: &self.windows,
        };
        let temporary = path.with_extension("partial");
        let mut writer = std::io::BufWriter::new(std::fs::File::create(&temporary)?);
        serde_json::to_writer(&mut writer, &file)?;
        writer.flush()?;
        drop(writer);
        std::fs::rename(temporary, path)
    }
}

/// The ground-truth file as read back by tests and tools.
#[derive(Debug, Deserialize)]
pub struct GroundTruthFile {
    pub seed: u64,
    pub encoding: Encoding,
    pub counts: Counts,
    pub events: Vec<EventEntry>,
    pub expected: serde_json::Value,
    /// When `windows` were taken, and the windows of every key then.
    pub windows_at: DateTime<Utc>,
    pub windows: serde_json::Value,
}

#[derive(Debug, Deserialize)]
pub struct EventEntry {
    pub topic: String,
    pub result: String,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
    pub duplicate: bool,
    pub reordered: bool,
    pub event: serde_json::Value,
}

impl GroundTruthFile {
    pub fn read(path: &Path) -> anyhow::Result<GroundTruthFile> {
        let text = std::fs::read(path)?;
        Ok(serde_json::from_slice(&text)?)
    }

    /// Delivered events per (topic, partition), in offset order.
    pub fn delivered(&self) -> BTreeMap<(String, i32), Vec<&EventEntry>> {
        let mut map: BTreeMap<(String, i32), Vec<&EventEntry>> = BTreeMap::new();
        for entry in self.events.iter().filter(|e| e.result == "ok") {
            map.entry((entry.topic.clone(), entry.partition.unwrap_or(-1))).or_default().push(entry);
        }
        for entries in map.values_mut() {
            entries.sort_by_key(|e| e.offset);
        }
        map
    }
}
