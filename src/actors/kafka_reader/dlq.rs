//! The dead-letter topic: bad input, with headers naming why and where from.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _};
use slog::{warn, Logger};
use tokio::sync::oneshot;

use crate::kafka::{LoggingContext, PolledProducer};
use crate::metrics::METRICS;
use crate::stream::Tp;

/// Header names on dead-lettered messages.
pub const REASON: &str = "swapstream-reason";
pub const ERROR: &str = "swapstream-error";
pub const SOURCE_TOPIC: &str = "swapstream-source-topic";
pub const SOURCE_PARTITION: &str = "swapstream-source-partition";
pub const SOURCE_OFFSET: &str = "swapstream-source-offset";

pub struct Dlq {
    /// Its context hands each report to the letter's `Delivery`.
    pub producer: PolledProducer<LoggingContext>,
    pub topic: String,
}

/// Whether the broker has a dead letter: `Ok`, or why not.
pub type Delivery = oneshot::Receiver<Result<(), String>>;

/// One message for the dead-letter topic.
pub struct DeadLetter<'a> {
    pub source: &'a Tp,
    pub offset: i64,
    pub reason: &'static str,
    pub error: String,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub content_type: Option<&'a str>,
}

impl Dlq {
    /// Enqueues the message; the answer comes once the broker has it.
    /// Counts it and logs it with the message's topic, partition and offset.
    pub fn send(&self, letter: DeadLetter<'_>, log: &Logger) -> Result<Delivery, String> {
        METRICS.dead_lettered.with_label_values(&[letter.reason]).inc();
        warn!(log, "message dead-lettered"; "reason" => letter.reason, "error" => &letter.error,
            "topic" => &*letter.source.topic, "partition" => letter.source.partition, "offset" => letter.offset,
            "dlq_topic" => &self.topic);
        let partition = letter.source.partition.to_string();
        let offset = letter.offset.to_string();
        let mut headers = OwnedHeaders::new()
            .insert(Header { key: REASON, value: Some(letter.reason) })
            .insert(Header { key: ERROR, value: Some(letter.error.as_str()) })
            .insert(Header { key: SOURCE_TOPIC, value: Some(&*letter.source.topic) })
            .insert(Header { key: SOURCE_PARTITION, value: Some(partition.as_str()) })
            .insert(Header { key: SOURCE_OFFSET, value: Some(offset.as_str()) });
        if let Some(content_type) = letter.content_type {
            headers = headers.insert(Header { key: crate::codec::CONTENT_TYPE_HEADER, value: Some(content_type) });
        }
        let (delivered, delivery) = oneshot::channel();
        let mut record =
            BaseRecord::with_opaque_to(&self.topic, Box::new(delivered)).payload(letter.payload).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        self.producer.send(record).map(|()| delivery).map_err(|(e, _)| e.to_string())
    }

    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(timeout);
    }
}
