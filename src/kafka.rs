//! Shared Kafka client plumbing: client configuration from settings, a
//! client context that routes librdkafka's own log into slog, and a
//! producer whose delivery reports a thread of its own serves.

use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::producer::{BaseProducer, DeliveryResult, ProducerContext};
use slog::Logger;
use tokio::sync::oneshot;

use crate::config::KafkaSettings;

/// Client context whose log and error callbacks write to slog.
pub struct LoggingContext {
    pub log: Logger,
}

impl ClientContext for LoggingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let log = &self.log;
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical => {
                slog::crit!(log, "{}", message; "source" => "librdkafka", "facility" => facility)
            }
            RDKafkaLogLevel::Error => {
                slog::error!(log, "{}", message; "source" => "librdkafka", "facility" => facility)
            }
            RDKafkaLogLevel::Warning => {
                slog::warn!(log, "{}", message; "source" => "librdkafka", "facility" => facility)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                slog::info!(log, "{}", message; "source" => "librdkafka", "facility" => facility)
            }
            RDKafkaLogLevel::Debug => {
                slog::debug!(log, "{}", message; "source" => "librdkafka", "facility" => facility)
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        slog::error!(self.log, "kafka client error"; "error" => %error, "reason" => reason);
    }
}

/// A producer with this context hands each delivery report to the one
/// waiting for it: `Ok`, or why the broker does not have the message.
impl ProducerContext for LoggingContext {
    type DeliveryOpaque = Box<oneshot::Sender<Result<(), String>>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let _ = waiting.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string()));
    }
}

/// How long one poll of a [`PolledProducer`]'s thread waits for reports.
const DELIVERY_POLL: Duration = Duration::from_secs(1);

/// A producer whose delivery reports a thread of its own serves, in place
/// of rdkafka's `ThreadedProducer` and `FutureProducer`. Their thread polls
/// for 100 ms at a time and ends every poll spinning: the time left is
/// handed to librdkafka in whole milliseconds, so the last fraction of a
/// millisecond is polled with no wait, over and over (about 1 % of a core
/// per producer with nothing to send). A report is served as soon as it is
/// ready however long the poll, so this thread polls a second at a time.
///
/// Dropping it asks the thread to end after its current poll; the client is
/// closed there (rdkafka purges what is still queued and serves the purged
/// messages' reports), so a drop never blocks. A caller that needs those
/// reports first purges and flushes itself.
pub struct PolledProducer<C: ProducerContext + 'static> {
    producer: Arc<BaseProducer<C>>,
    stop: Arc<AtomicBool>,
}

impl<C: ProducerContext + 'static> PolledProducer<C> {
    pub fn create(config: &ClientConfig, context: C) -> KafkaResult<PolledProducer<C>> {
        let producer: Arc<BaseProducer<C>> = Arc::new(config.create_with_context(context)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (polled, stopped) = (producer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kafka-deliveries".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    polled.poll(DELIVERY_POLL);
                }
            })
            .map_err(|e| KafkaError::ClientCreation(format!("starting the delivery thread: {e}")))?;
        Ok(PolledProducer { producer, stop })
    }
}

impl<C: ProducerContext + 'static> Deref for PolledProducer<C> {
    type Target = BaseProducer<C>;

    fn deref(&self) -> &BaseProducer<C> {
        &self.producer
    }
}

impl<C: ProducerContext + 'static> Drop for PolledProducer<C> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sets `key` unless the operator's `SWAPSTREAM_KAFKA_OPTIONS` already did.
pub fn set_default(config: &mut ClientConfig, key: &str, value: &str) {
    if config.get(key).is_none() {
        config.set(key, value);
    }
}

/// A client configuration with the brokers and extra options of `settings`.
pub fn client_config(settings: &KafkaSettings, brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers).set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in settings.options.expose() {
        config.set(key, value);
    }
    config
}

/// Longest wait for the admin API.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Creates `names` with the configured partitions and replication; existing
/// topics are left as they are. A broker that does not answer the admin API
/// (librdkafka's mock cluster among them) creates topics on first use, so
/// that is logged, not an error; a topic the broker refuses is an error.
pub async fn create_topics(
    settings: &KafkaSettings,
    brokers: &str,
    names: &[String],
    log: &Logger,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::types::RDKafkaErrorCode;

    let admin: AdminClient<LoggingContext> = client_config(settings, brokers)
        .create_with_context(LoggingContext { log: log.clone() })
        .context("creating the Kafka admin client")?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|name| NewTopic::new(name, settings.partitions, TopicReplication::Fixed(settings.replication)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT)).request_timeout(Some(ADMIN_TIMEOUT));
    let results = match admin.create_topics(&topics, &options).await {
        Ok(results) => results,
        Err(e) => {
            slog::warn!(log, "cannot create topics through the admin API; relying on auto-creation"; "error" => %e);
            return Ok(());
        }
    };
    for result in results {
        match result {
            Ok(topic) => slog::info!(log, "topic created"; "topic" => topic, "partitions" => settings.partitions),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => slog::info!(log, "topic exists"; "topic" => topic),
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}
