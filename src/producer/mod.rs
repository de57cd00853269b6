//! The `producer` role: synthetic swap events into Kafka at a steady rate.
//!
//! Every swap is sent as `pending`, then as `confirmed` or `failed` after the
//! confirmation delay. Events can be duplicated and held back on purpose so
//! consumers can be tested against both. On stop, events still scheduled are
//! sent at once (so every lifecycle completes) and the client is flushed.

mod generator;
pub mod ground_truth;
pub mod read_back;

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, PurgeConfig};
use rdkafka::Message as _;
use slog::{error, info, warn, Logger};
use tokio::time::Instant;

pub use generator::{Generator, SwapPlan};
use ground_truth::{Delivery, GroundTruth, SentEvent};

use crate::codec::Encoding;
use crate::codec::{self, CONTENT_TYPE_HEADER};
use crate::config::{ProducerSettings, Rate, Settings};
use crate::domain::{SwapEvent, TokenSymbol};
use crate::kafka::{client_config, LoggingContext, PolledProducer};
use crate::retry::Backoff;

/// Duplicates follow their original within this delay.
const DUPLICATE_MAX_DELAY: Duration = Duration::from_millis(500);

/// Longest wait before a new producer replaces one that hit a fatal error.
const RECREATE_MAX_WAIT: Duration = Duration::from_secs(10);

/// At a stop, how long the reports of purged messages get to arrive.
const PURGED_REPORTS_WITHIN: Duration = Duration::from_millis(500);

/// What a producer run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Summary {
    pub swaps: u64,
    pub events_sent: u64,
    pub delivered: u64,
    pub delivery_errors: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

/// Deliveries counted on librdkafka's thread, and recorded for the ground
/// truth when asked to; shared by every client a run creates.
struct Deliveries {
    delivered: AtomicU64,
    errors: AtomicU64,
    record: Option<Mutex<Vec<(u64, Delivery)>>>,
}

/// One producer client's context: its log routing and the run's deliveries.
struct DeliveryContext {
    log: LoggingContext,
    deliveries: Arc<Deliveries>,
}

impl ClientContext for DeliveryContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }
}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Self::DeliveryOpaque) {
        let deliveries = &self.deliveries;
        let delivery = match result {
            Ok(message) => {
                deliveries.delivered.fetch_add(1, Ordering::Relaxed);
                if message.offset() < 0 {
                    // See `read_back`: stored earlier, librdkafka says, but not where.
                    warn!(self.log.log, "delivered without an offset"; "topic" => message.topic(),
                        "partition" => message.partition(), "seq" => *seq);
                }
                Delivery::Ok { partition: message.partition(), offset: message.offset() }
            }
            Err((error, _)) => {
                let count = deliveries.errors.fetch_add(1, Ordering::Relaxed);
                if count < 10 || count.is_power_of_two() {
                    warn!(self.log.log, "delivery failed"; "error" => %error, "errors" => count + 1);
                }
                Delivery::Failed { error: error.to_string() }
            }
        };
        if let Some(record) = &deliveries.record {
            record.lock().expect("delivery record lock").push((*seq, delivery));
        }
    }
}

/// An event waiting for its send time.
struct Scheduled {
    due: Instant,
    seq: u64,
    event: Arc<SwapEvent>,
    duplicate: bool,
    reordered: bool,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Spaces the creation of swaps evenly, two events each (pending and
/// terminal), so events go out at the configured rate; after a stall it
/// resumes the rate instead of bursting to catch up.
struct Pacer {
    interval: Option<Duration>,
    next: Instant,
}

impl Pacer {
    fn new(rate: Rate) -> Pacer {
        let interval = match rate {
            Rate::PerMinute(per_minute) => Some(Duration::from_secs_f64(2.0 * 60.0 / per_minute)),
            Rate::Max => None,
        };
        Pacer { interval, next: Instant::now() }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else { return };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        } else if now - self.next > Duration::from_secs(1) {
            self.next = now;
        }
        self.next += interval;
    }
}

/// What the producer sends, as the domain's and the codec's types: the
/// token universe and the encoding that `config` keeps as text.
#[derive(Debug, Clone)]
pub struct Stream {
    pub tokens: Vec<TokenSymbol>,
    pub encoding: Encoding,
}

impl Stream {
    /// Reads `SWAPSTREAM_PRODUCER_TOKENS` (at least two distinct symbols)
    /// and `SWAPSTREAM_PRODUCER_ENCODING`; a problem is named by its variable.
    pub fn from_settings(settings: &ProducerSettings) -> Result<Stream, String> {
        let tokens = {
            let given = settings.tokens.join(",");
            let problem = || {
                format!("SWAPSTREAM_PRODUCER_TOKENS: expected at least two distinct token symbols, comma-separated, got {given:?}")
            };
            let tokens: Vec<TokenSymbol> = settings
                .tokens
                .iter()
                .map(|s| TokenSymbol::parse(s))
                .collect::<Result<_, _>>()
                .map_err(|_| problem())?;
            let mut distinct = tokens.clone();
            distinct.sort();
            distinct.dedup();
            if distinct.len() != tokens.len() || tokens.len() < 2 {
                return Err(problem());
            }
            distinct
        };
        let encoding =
            settings.encoding.parse::<Encoding>().map_err(|e| format!("SWAPSTREAM_PRODUCER_ENCODING: {e}"))?;
        Ok(Stream { tokens, encoding })
    }
}

/// Runs the producer until `stop` resolves or the configured count of swaps
/// is sent; returns what it did. In-flight messages get `flush_within` to
/// be delivered at the end (a broker that is down cannot hold up a stop);
/// those still waiting then are counted as delivery errors.
pub async fn run(
    settings: &Settings,
    brokers: &str,
    log: &Logger,
    stop: impl Future<Output = ()>,
    flush_within: Duration,
) -> anyhow::Result<Summary> {
    let config = &settings.producer;
    let Stream { tokens, encoding } = Stream::from_settings(config).map_err(anyhow::Error::msg)?;
    create_topics(settings, &tokens, brokers, log).await?;

    let deliveries = Arc::new(Deliveries {
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        record: config.ground_truth.as_ref().map(|_| Mutex::new(Vec::new())),
    });
    let mut client = Client::create(settings, brokers, log, &deliveries)?;

    let seed = config.seed.unwrap_or_else(rand::random);
    info!(log, "producer started"; "brokers" => brokers, "seed" => seed, "rate" => ?config.rate,
        "encoding" => ?encoding, "count" => config.count);
    let mut generator = Generator::new(&tokens, config.failed_share, seed);
    let mut queue: BinaryHeap<Reverse<Scheduled>> = BinaryHeap::new();
    let mut sent: Vec<SentEvent> = Vec::new();
    let mut summary = Summary::default();
    let mut pacer = Pacer::new(config.rate);
    let mut seq = 0u64;
    let mut progress = Progress::new(config.progress_interval);
    tokio::pin!(stop);
    let mut stopping = false;

    loop {
        // Every event goes out when due (all at once when stopping), so it
        // leaves at its event time; only the creation of swaps is paced.
        let now = Instant::now();
        while let Some(Reverse(next)) = queue.peek_mut().filter(|n| stopping || n.0.due <= now).map(PeekMut::pop) {
            let topic = settings.kafka.topics.topic_for(&next.event.token_from);
            let payload = codec::encode(&next.event, encoding);
            client.send(&topic, &next, &payload, encoding).await?;
            summary.events_sent += 1;
            summary.duplicates += u64::from(next.duplicate);
            if !next.duplicate && generator.chance(config.duplicate_share) {
                seq += 1;
                let due = Instant::now() + generator.delay_up_to(DUPLICATE_MAX_DELAY);
                queue.push(Reverse(Scheduled {
                    due,
                    seq,
                    event: next.event.clone(),
                    duplicate: true,
                    reordered: false,
                }));
            }
            if config.ground_truth.is_some() {
                sent.push(SentEvent {
                    seq: next.seq,
                    topic,
                    duplicate: next.duplicate,
                    reordered: next.reordered,
                    event: next.event,
                });
            }
            if let Some(line) = progress.tick(&summary, &deliveries) {
                info!(log, "progress"; line);
            }
        }
        let creating = !stopping && config.count.is_none_or(|count| summary.swaps < count);
        if !creating && queue.is_empty() {
            break;
        }
        if stopping {
            continue;
        }
        let next_due = queue.peek().map(|Reverse(next)| next.due);
        tokio::select! {
            _ = pacer.wait(), if creating => {
                let plan = generator.next_swap(chrono::Utc::now(), config.confirm_delay);
                summary.swaps += 1;
                let now = Instant::now();
                for (event, delay) in [(plan.pending, Duration::ZERO), (plan.terminal, config.confirm_delay)] {
                    let (extra, reordered) = if generator.chance(config.reorder_share) {
                        (generator.delay_up_to(config.reorder_max), true)
                    } else {
                        (Duration::ZERO, false)
                    };
                    summary.reordered += u64::from(reordered);
                    seq += 1;
                    queue.push(Reverse(Scheduled {
                        due: now + delay + extra,
                        seq,
                        event: Arc::new(event),
                        duplicate: false,
                        reordered,
                    }));
                }
            }
            _ = tokio::time::sleep_until(next_due.unwrap_or(now)), if next_due.is_some() => {}
            _ = &mut stop => stopping = true,
        }
    }

    client.flush(flush_within).await?;
    summary.delivered = deliveries.delivered.load(Ordering::Relaxed);
    summary.delivery_errors = deliveries.errors.load(Ordering::Relaxed);
    info!(log, "producer stopped"; "swaps" => summary.swaps, "sent" => summary.events_sent,
        "delivered" => summary.delivered, "delivery_errors" => summary.delivery_errors,
        "duplicates" => summary.duplicates, "reordered" => summary.reordered);

    if let (Some(path), Some(record)) = (&config.ground_truth, &deliveries.record) {
        let mut deliveries = std::mem::take(&mut *record.lock().expect("delivery record lock"));
        let config = client_config(&settings.kafka, brokers);
        if let Err(e) = read_back::place(&config, encoding, &sent, &mut deliveries, log).await {
            error!(log, "cannot look for the events delivered without an offset: the ground truth counts them delivered";
                "error" => format!("{e:#}"));
        }
        let truth = GroundTruth::build(seed, encoding, &summary, sent, deliveries);
        truth.write(path).with_context(|| format!("writing the ground truth to {}", path.display()))?;
        info!(log, "ground truth written"; "path" => %path.display());
    }
    Ok(summary)
}

/// The Kafka producer client of a run. librdkafka's answer to a fatal error
/// (e.g. an idempotence sequence the broker no longer knows after it lost its
/// producer state) is a new producer instance: `send` makes one, after a
/// backoff, and goes on. The messages the old instance still held fail
/// their delivery (counted, and recorded as failed in the ground truth).
struct Client {
    producer: PolledProducer<DeliveryContext>,
    make: Box<dyn Fn() -> anyhow::Result<PolledProducer<DeliveryContext>> + Send>,
    log: Logger,
    backoff: Backoff,
}

impl Client {
    fn create(
        settings: &Settings,
        brokers: &str,
        log: &Logger,
        deliveries: &Arc<Deliveries>,
    ) -> anyhow::Result<Client> {
        let config = client_config(&settings.kafka, brokers);
        let (log_for_context, deliveries) = (log.clone(), deliveries.clone());
        let make = Box::new(move || {
            let context = DeliveryContext {
                log: LoggingContext { log: log_for_context.clone() },
                deliveries: deliveries.clone(),
            };
            let mut config = config.clone();
            config
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "1") // events are stamped when sent: keep their wait short
                .set("compression.type", "lz4")
                .set("queue.buffering.max.messages", "500000");
            PolledProducer::create(&config, context).context("creating the Kafka producer")
        });
        Ok(Client { producer: make()?, make, log: log.clone(), backoff: Backoff::new(RECREATE_MAX_WAIT) })
    }

    async fn send(
        &mut self,
        topic: &str,
        next: &Scheduled,
        payload: &[u8],
        encoding: codec::Encoding,
    ) -> anyhow::Result<()> {
        let key = next.event.id.tx_hash.to_string();
        loop {
            let headers =
                OwnedHeaders::new().insert(Header { key: CONTENT_TYPE_HEADER, value: Some(encoding.content_type()) });
            let record = BaseRecord::with_opaque_to(topic, Box::new(next.seq))
                .key(key.as_bytes())
                .payload(payload)
                .headers(headers);
            match self.producer.send(record) {
                Ok(()) => {
                    self.backoff.reset();
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    // The local queue is full: wait for deliveries to drain it.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => match self.producer.client().fatal_error() {
                    Some((code, reason)) => self.recreate(code, &reason).await?,
                    None => return Err(error).with_context(|| format!("sending to topic {topic}")),
                },
            }
        }
    }

    /// A new client in place of one that hit a fatal error.
    async fn recreate(&mut self, code: RDKafkaErrorCode, reason: &str) -> anyhow::Result<()> {
        let wait = self.backoff.wait();
        crate::metrics::METRICS.producer_recreated.inc();
        error!(self.log, "fatal Kafka producer error; recreating the producer"; "code" => ?code, "reason" => reason,
            "in_flight" => self.producer.in_flight_count(), "after_ms" => wait.as_millis());
        tokio::time::sleep(wait).await;
        let fresh = (self.make)()?;
        // The old client is closed on its delivery thread: its purged
        // messages' reports come from there.
        drop(std::mem::replace(&mut self.producer, fresh));
        Ok(())
    }

    /// Waits up to `within` for in-flight messages; what is still waiting
    /// then is purged, and its delivery reports say so.
    async fn flush(self, within: Duration) -> anyhow::Result<()> {
        info!(self.log, "flushing"; "in_flight" => self.producer.in_flight_count(), "within_ms" => within.as_millis());
        let (producer, log) = (self.producer, self.log);
        // On a thread of its own, not a blocking task: a caller that stops
        // waiting (a grace period ran out) must not have the runtime's
        // shutdown wait for a client that cannot reach its brokers.
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("producer-flush".into())
            .spawn(move || {
                if let Err(e) = producer.flush(within) {
                    warn!(log, "in-flight messages not delivered before the stop"; "in_flight" => producer.in_flight_count(),
                        "error" => %e);
                    // What is left fails now, its reports served before the
                    // summary counts them.
                    producer.purge(PurgeConfig::default().queue().inflight());
                    let _ = producer.flush(PURGED_REPORTS_WITHIN);
                }
                drop(producer);
                let _ = done_tx.send(());
            })
            .context("starting the flush thread")?;
        done.await.context("flushing in-flight messages")
    }
}

/// Creates the topics the producer writes to; existing ones stay as they are.
async fn create_topics(settings: &Settings, tokens: &[TokenSymbol], brokers: &str, log: &Logger) -> anyhow::Result<()> {
    let mut names: Vec<String> = tokens.iter().map(|t| settings.kafka.topics.topic_for(t)).collect();
    names.dedup();
    crate::kafka::create_topics(&settings.kafka, brokers, &names, log).await
}

/// The periodic progress line.
struct Progress {
    every: Duration,
    last_at: Instant,
    last_sent: u64,
}

impl Progress {
    fn new(every: Duration) -> Progress {
        Progress { every, last_at: Instant::now(), last_sent: 0 }
    }

    fn tick(&mut self, summary: &Summary, deliveries: &Deliveries) -> Option<slog::OwnedKV<impl slog::KV>> {
        let elapsed = self.last_at.elapsed();
        if elapsed < self.every {
            return None;
        }
        let rate = (summary.events_sent - self.last_sent) as f64 / elapsed.as_secs_f64();
        self.last_at = Instant::now();
        self.last_sent = summary.events_sent;
        Some(slog::o!(
            "swaps" => summary.swaps,
            "sent" => summary.events_sent,
            "events_per_sec" => format!("{rate:.1}"),
            "delivered" => deliveries.delivered.load(Ordering::Relaxed),
            "errors" => deliveries.errors.load(Ordering::Relaxed),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_reads_the_token_universe_and_the_encoding() {
        let mut settings = Settings::from_vars([]).unwrap().producer;
        let stream = Stream::from_settings(&settings).unwrap();
        assert_eq!(stream.tokens.len(), 6);
        assert_eq!(stream.encoding, Encoding::Protobuf);

        settings.tokens = vec!["eth".into(), "btc".into()];
        settings.encoding = "json".into();
        let stream = Stream::from_settings(&settings).unwrap();
        assert_eq!(stream.tokens.iter().map(TokenSymbol::as_str).collect::<Vec<_>>(), ["BTC", "ETH"]);
        assert_eq!(stream.encoding, Encoding::Json);

        for tokens in [vec!["ETH"], vec!["ETH", "eth"], vec!["ETH", ""], vec!["ETH", "B C"]] {
            settings.tokens = tokens.iter().map(|t| t.to_string()).collect();
            let problem = Stream::from_settings(&settings).expect_err("refused");
            assert!(problem.starts_with("SWAPSTREAM_PRODUCER_TOKENS: expected at least two distinct"), "{problem}");
        }
    }
}
