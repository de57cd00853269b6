//! The polling thread of the Kafka reader.
//!
//! librdkafka's callbacks (rebalance included) run on the thread that polls,
//! and may block there, so polling happens on a dedicated OS thread, never on
//! an actix arbiter. On assign, the rebalance callback claims the partitions
//! in PostgreSQL and sets the checkpointed offsets on the assignment itself
//! (no seek after assign). On revoke, it hands the batch in progress to the
//! reader and waits until the reader has checkpointed it and dropped the
//! partitions' state.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use backon::BlockingRetryable as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use slog::{error, info, warn, Logger};
use tokio::sync::mpsc;

use crate::codec::{self, DecodeError};
use crate::domain::SwapEvent;
use crate::kafka::LoggingContext;
use crate::metrics::METRICS;
use crate::retry;
use crate::storage::postgres::{Claimed, PgStore};
use crate::stream::Tp;

/// From the polling thread to the reader actor, in order.
pub enum Input {
    /// The full new assignment, claimed and loaded; replaces all state.
    Assigned {
        generation: u64,
        claimed: Vec<Claimed>,
    },
    Batch {
        generation: u64,
        records: Vec<Record>,
        ticket: BatchTicket,
    },
    /// These partitions go away; reply once their work is checkpointed.
    Revoked {
        tps: Vec<Tp>,
        done: std_mpsc::SyncSender<()>,
    },
    /// The thread has stopped polling and left the group.
    Stopped,
}

/// Held from the moment a batch leaves the polling thread until the reader
/// has decided it and queued its checkpoint (or dropped it); while none is
/// held the reader is idle, and the polling thread sends what it has at
/// once instead of waiting for the batch to fill.
pub struct BatchTicket(Arc<AtomicUsize>);

impl BatchTicket {
    fn issue(in_flight: &Arc<AtomicUsize>) -> BatchTicket {
        in_flight.fetch_add(1, Ordering::AcqRel);
        BatchTicket(in_flight.clone())
    }
}

impl Drop for BatchTicket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One Kafka message, decoded or not.
pub struct Record {
    pub tp: Tp,
    pub offset: i64,
    pub body: Result<SwapEvent, Rejected>,
}

/// A message that is not a valid swap event, kept whole for the dead-letter
/// topic.
pub struct Rejected {
    pub error: DecodeError,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub content_type: Option<String>,
}

/// From the reader actor to the polling thread.
pub enum Control {
    /// Finish the batch in progress, leave the group, stop.
    Stop,
    /// Re-claim the current assignment and restart it from the checkpoint.
    Rewind,
}

pub struct PollSettings {
    pub batch_max_events: usize,
    pub batch_max_time: Duration,
    pub owner: String,
    /// Longest wait for the reader during a rebalance or shutdown.
    pub timeout: Duration,
}

/// The consumer's context: log routing and the rebalance protocol.
pub struct ReaderContext {
    log: LoggingContext,
    tx: mpsc::Sender<Input>,
    /// Drives the PostgreSQL client used from callbacks; dropped on the
    /// polling thread when it ends (a runtime must not drop inside another).
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    pg: PgStore,
    settings: PollSettings,
    generation: AtomicU64,
    buffer: Mutex<Vec<Record>>,
    /// Batches sent and not yet through the reader (see [`BatchTicket`]).
    in_flight: Arc<AtomicUsize>,
    /// Once stopping: when the polling thread must be done waiting for the
    /// reader, so that it still leaves the group before the process exits.
    stop_by: Mutex<Option<Instant>>,
}

impl ReaderContext {
    pub fn new(
        log: Logger,
        tx: mpsc::Sender<Input>,
        runtime: tokio::runtime::Runtime,
        pg: PgStore,
        settings: PollSettings,
    ) -> Self {
        ReaderContext {
            log: LoggingContext { log },
            tx,
            runtime: Mutex::new(Some(runtime)),
            pg,
            settings,
            generation: AtomicU64::new(0),
            buffer: Mutex::new(Vec::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            stop_by: Mutex::new(None),
        }
    }

    fn log(&self) -> &Logger {
        &self.log.log
    }

    /// Sends the records collected so far as one batch, if the reader's
    /// queue has room; otherwise they stay collected. Never blocks, so a
    /// reader stuck on its checkpoint cannot keep this thread from seeing a
    /// stop request.
    fn try_flush(&self) -> bool {
        let mut buffer = self.buffer.lock().expect("buffer lock");
        if buffer.is_empty() {
            return true;
        }
        match self.tx.try_reserve() {
            Ok(permit) => {
                let generation = self.generation.load(Ordering::SeqCst);
                let ticket = BatchTicket::issue(&self.in_flight);
                permit.send(Input::Batch { generation, records: std::mem::take(&mut *buffer), ticket });
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => false,
            Err(mpsc::error::TrySendError::Closed(())) => {
                buffer.clear();
                true
            }
        }
    }

    /// [`Self::try_flush`] until it succeeds or `deadline` passes; what is
    /// not sent by then is dropped, never checkpointed, so read again by
    /// whoever owns its partitions next.
    fn flush_by(&self, deadline: Instant) -> bool {
        while !self.try_flush() {
            if Instant::now() >= deadline {
                self.buffer.lock().expect("buffer lock").clear();
                return false;
            }
            std::thread::sleep(BUSY_POLL);
        }
        true
    }

    /// Sends `input` unless the reader's queue stays full until `deadline`.
    fn send_by(&self, mut input: Input, deadline: Instant) -> bool {
        loop {
            match self.tx.try_send(input) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(back)) if Instant::now() < deadline => {
                    input = back;
                    std::thread::sleep(BUSY_POLL);
                }
                Err(mpsc::error::TrySendError::Full(_)) => return false,
            }
        }
    }

    /// Claims `tpl`'s partitions in PostgreSQL (retrying while it is down),
    /// sets their checkpointed offsets on `tpl` and tells the reader.
    fn claim(&self, tpl: &mut TopicPartitionList) {
        let tps: Vec<Tp> = tpl.elements().iter().map(|e| Tp::new(e.topic(), e.partition())).collect();
        let runtime = self.runtime.lock().expect("runtime lock");
        let Some(runtime) = runtime.as_ref() else { return };
        let claim = || runtime.block_on(self.pg.claim(&tps, &self.settings.owner, chrono::Utc::now()));
        let claimed = claim
            .retry(retry::policy(CLAIM_MAX_WAIT))
            .sleep(std::thread::sleep)
            .notify(|e, wait| {
                error!(self.log(), "cannot claim partitions; retrying"; "error" => format!("{e:#}"), "retry_in_ms" => wait.as_millis());
            })
            .call()
            .expect("a policy without a retry limit");
        for c in &claimed {
            let offset = c.next_offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&c.tp.topic, c.tp.partition, offset) {
                error!(self.log(), "cannot set the resume offset"; "partition" => %c.tp, "error" => %e);
            }
        }
        let described: Vec<String> = claimed
            .iter()
            .map(|c| format!("{}@{}", c.tp, c.next_offset.map_or("start".into(), |o| o.to_string())))
            .collect();
        info!(self.log(), "partitions assigned"; "partitions" => described.join(" "));
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.buffer.lock().expect("buffer lock").clear();
        let _ = self.tx.blocking_send(Input::Assigned { generation, claimed });
    }

    fn revoke(&self, tpl: &TopicPartitionList) {
        let tps: Vec<Tp> = tpl.elements().iter().map(|e| Tp::new(e.topic(), e.partition())).collect();
        info!(self.log(), "partitions revoked"; "count" => tps.len());
        // Their lag is the new owner's to report now; the statistics only
        // ever set a series, so it goes here.
        for tp in &tps {
            let _ = METRICS.consumer_lag.remove_label_values(&[&*tp.topic, tp.partition.to_string().as_str()]);
        }
        let mut deadline = Instant::now() + self.settings.timeout;
        if let Some(stop_by) = *self.stop_by.lock().expect("stop lock") {
            deadline = deadline.min(stop_by);
        }
        let (done, wait) = std_mpsc::sync_channel(1);
        let handed_over = self.flush_by(deadline) && self.send_by(Input::Revoked { tps, done }, deadline);
        if !handed_over || wait.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
            warn!(self.log(), "the reader did not finish the revoked partitions in time");
        }
    }
}

impl ClientContext for ReaderContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.log.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.log.error(error, reason);
    }

    /// Consumer lag per partition, from librdkafka's statistics: the high
    /// watermark minus the committed offset (which follows the checkpoint).
    /// (A revoked partition's series is removed in `revoke`.)
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    let partition = partition.to_string();
                    METRICS.consumer_lag.with_label_values(&[topic.as_str(), partition.as_str()]).set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for ReaderContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.claim(tpl);
                if let Err(e) = consumer.assign(tpl) {
                    error!(self.log(), "assign failed"; "error" => %e);
                }
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.revoke(tpl);
                if let Err(e) = consumer.unassign() {
                    error!(self.log(), "unassign failed"; "error" => %e);
                }
            }
            other => {
                error!(self.log(), "rebalance error"; "error" => ?other);
                let _ = consumer.unassign();
            }
        }
    }
}

/// Decodes one message.
fn record(message: &BorrowedMessage<'_>) -> Record {
    let tp = Tp::new(message.topic(), message.partition());
    let content_type = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key.eq_ignore_ascii_case(codec::CONTENT_TYPE_HEADER)))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let payload = message.payload().unwrap_or_default();
    let body = codec::decode(payload, content_type.as_deref()).map_err(|error| Rejected {
        error,
        key: message.key().map(<[u8]>::to_vec),
        payload: payload.to_vec(),
        content_type,
    });
    if body.is_ok() {
        METRICS.events_decoded.inc();
    }
    METRICS.events_consumed.with_label_values(&[message.topic()]).inc();
    if let Some(created_ms) = message.timestamp().to_millis() {
        let age_ms = chrono::Utc::now().timestamp_millis() - created_ms;
        METRICS.read_delay.observe(age_ms.max(0) as f64 / 1000.0);
    }
    Record { tp, offset: message.offset(), body }
}

/// Longest wait for a message when no batch is open: how late a stop or
/// rewind request is seen (a message, a rebalance or a commit's answer ends
/// the wait at once). Each timeout is a wakeup of an idle consumer.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Longest wait while a batch is open and the pipeline busy: how late the
/// polling thread notices that the pipeline has become idle.
const BUSY_POLL: Duration = Duration::from_millis(1);

/// Longest wait between two tries of a partition claim while PostgreSQL
/// fails.
const CLAIM_MAX_WAIT: Duration = Duration::from_secs(5);

/// Polls until told to stop; then leaves the group within the timeout.
///
/// Batching adapts to the load: while the reader has no batch in hand,
/// whatever has arrived goes out at once (no waiting at low rates); while
/// it has, the next one collects events until the reader is free,
/// `batch_max_events` is reached, or it is `batch_max_time` old. The reader
/// waits for PostgreSQL only when two batches' worth of events wait for
/// their checkpoint (see `committer`).
pub fn run(consumer: Arc<BaseConsumer<ReaderContext>>, control: std_mpsc::Receiver<Control>) {
    let context = consumer.context();
    let idle = || context.in_flight.load(Ordering::Acquire) == 0;
    let mut batch_started: Option<Instant> = None;
    loop {
        match control.try_recv() {
            Ok(Control::Stop) | Err(std_mpsc::TryRecvError::Disconnected) => break,
            Ok(Control::Rewind) => {
                batch_started = None;
                match consumer.assignment() {
                    Ok(mut tpl) => {
                        warn!(context.log(), "rewinding to the last checkpoint"; "partitions" => tpl.count());
                        context.claim(&mut tpl);
                        if let Err(e) = consumer.assign(&tpl) {
                            error!(context.log(), "re-assign failed"; "error" => %e);
                        }
                    }
                    Err(e) => error!(context.log(), "cannot read the assignment"; "error" => %e),
                }
            }
            Err(std_mpsc::TryRecvError::Empty) => {}
        }
        if context.buffer.lock().expect("buffer lock").len() >= context.settings.batch_max_events {
            // Full, and the reader's queue too: wait for it, reading nothing.
            if !context.try_flush() {
                std::thread::sleep(BUSY_POLL);
                continue;
            }
            batch_started = None;
        }
        let wait = match batch_started {
            // Take what has already arrived, then send it.
            Some(_) if idle() => Duration::ZERO,
            Some(started) => context.settings.batch_max_time.saturating_sub(started.elapsed()).min(BUSY_POLL),
            None => IDLE_POLL,
        };
        let arrived = match consumer.poll(wait) {
            Some(Ok(message)) => {
                context.buffer.lock().expect("buffer lock").push(record(&message));
                batch_started.get_or_insert_with(Instant::now);
                true
            }
            Some(Err(e)) => {
                if let Some((code, reason)) = consumer.client().fatal_error() {
                    // Unusable for good (e.g. FENCED_INSTANCE_ID: another live
                    // consumer joined with this SWAPSTREAM_INSTANCE_ID).
                    error!(context.log(), "fatal Kafka consumer error; stopping the reader";
                        "code" => ?code, "reason" => reason,
                        "hint" => "each live instance needs its own SWAPSTREAM_INSTANCE_ID under static membership");
                    break;
                }
                warn!(context.log(), "kafka poll error"; "error" => %e);
                false
            }
            None => false,
        };
        let full = context.buffer.lock().expect("buffer lock").len() >= context.settings.batch_max_events;
        let due = batch_started.is_some_and(|t| t.elapsed() >= context.settings.batch_max_time);
        if (full || due || (batch_started.is_some() && !arrived && idle())) && context.try_flush() {
            batch_started = None;
        }
    }
    // Half the time to hand the last batch over and finish the revoke, half
    // to leave the group: all of it within the process' own stop timeout.
    let half = context.settings.timeout / 2;
    let hand_over_by = Instant::now() + half;
    *context.stop_by.lock().expect("stop lock") = Some(hand_over_by);
    context.flush_by(hand_over_by);
    info!(context.log(), "leaving the consumer group");
    if consumer.close_queue().is_ok() {
        let leave_by = Instant::now().max(hand_over_by) + half;
        while !consumer.closed() && Instant::now() < leave_by {
            consumer.poll(Duration::from_millis(100));
        }
    }
    drop(context.runtime.lock().expect("runtime lock").take());
    context.send_by(Input::Stopped, Instant::now() + half);
}
