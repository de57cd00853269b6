//! Building and running the roles.

use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use slog::{info, warn, Logger};
use tokio::sync::oneshot;

use crate::actors::aggregator::Aggregators;
use crate::actors::kafka_reader::poll::{self, PollSettings, ReaderContext};
use crate::actors::kafka_reader::{Control, CoreParts, Dlq, KafkaReader};
use crate::actors::ws::registry::{SessionRegistry, Shutdown};
use crate::config::{ConfigError, Settings};
use crate::http::{HttpParts, Probe, Readiness, Servers};
use crate::kafka::{client_config, set_default, LoggingContext, PolledProducer};
use crate::read::Live;
use crate::storage::postgres::PgStore;
use crate::storage::redis::RedisStore;
use crate::telemetry::LogSettings;

/// Reads what `config` keeps as text (the log filter and format, the
/// producer's tokens and encoding) as the types that use it, so that a bad
/// value stops every role before it starts; returns the log settings.
pub fn check(settings: &Settings) -> Result<LogSettings, ConfigError> {
    let log = LogSettings::from_config(&settings.log);
    let stream = crate::producer::Stream::from_settings(&settings.producer);
    let problems: Vec<String> = [log.as_ref().err(), stream.as_ref().err()].into_iter().flatten().cloned().collect();
    match log {
        Ok(log) if problems.is_empty() => Ok(log),
        _ => Err(ConfigError(problems)),
    }
}

/// The `producer` role: until stopped or its count is reached. It serves
/// `/healthz`, `/readyz` (the broker answers) and `/metrics` on
/// `SWAPSTREAM_HTTP_ADDR` for its probes and scrapes.
pub async fn run_producer(settings: &Settings, log: &Logger) -> anyhow::Result<()> {
    let stop = crate::shutdown::signal(log.clone());
    let Some(brokers) = settings.kafka.brokers.clone() else {
        anyhow::bail!("the producer needs SWAPSTREAM_KAFKA_BROKERS");
    };
    let readiness = Readiness { probes: vec![("kafka", broker_probe(settings, &brokers, log)?)] };
    let servers = Servers::start_health(&settings.http, readiness, log)?;
    let result = crate::producer::run(settings, &brokers, log, stop, settings.consumer.shutdown_timeout).await;
    servers.stop().await;
    result.map(|_| ())
}

/// A readiness probe that asks the brokers for metadata, on a client of its own.
fn broker_probe(settings: &Settings, brokers: &str, log: &Logger) -> anyhow::Result<Probe> {
    let client: rdkafka::admin::AdminClient<LoggingContext> = client_config(&settings.kafka, brokers)
        .create_with_context(LoggingContext { log: log.clone() })
        .context("creating the Kafka metadata client")?;
    let client = Arc::new(client);
    Ok(Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                client.inner().fetch_metadata(None, Duration::from_secs(2)).map(|_| ())
            })
            .await??;
            Ok(())
        })
    }))
}

/// The `consumer` role: until SIGTERM/Ctrl-C, then a graceful stop.
pub async fn run_consumer(settings: &Settings, log: &Logger) -> anyhow::Result<()> {
    let Some(brokers) = settings.kafka.brokers.clone() else {
        anyhow::bail!("the consumer needs SWAPSTREAM_KAFKA_BROKERS");
    };
    // Listening from the start: a stop asked for while starting ends the
    // start (a group it had joined sees it go after `session.timeout.ms`).
    let signal = crate::shutdown::signal(log.clone());
    tokio::pin!(signal);
    let mut consumer = tokio::select! {
        started = Consumer::start(settings, &brokers, log) => started?,
        _ = &mut signal => {
            info!(log, "stopped while starting");
            return Ok(());
        }
    };
    tokio::select! {
        _ = &mut signal => {}
        _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
    }
    consumer.stop(settings.consumer.shutdown_timeout).await;
    Ok(())
}

/// The `api` role: REST over Redis and PostgreSQL and the WebSocket
/// endpoint over Redis pub/sub, no Kafka; nothing kept but client sessions,
/// so replicas scale behind a load balancer.
pub async fn run_api(settings: &Settings, log: &Logger) -> anyhow::Result<()> {
    let stop = crate::shutdown::signal(log.clone());
    let pg = PgStore::connect(&settings.postgres, settings.consumer.recent_swaps, log).await?;
    let redis =
        RedisStore::connect(&settings.redis, settings.consumer.recent_swaps).await?.with_history(settings.ws.history);
    let readiness = Readiness { probes: dependency_probes(&pg, &redis, None) };
    let live = Live::stores(redis, pg, settings.http.cache, settings.consumer.max_future)
        .with_rank_max_age(settings.http.rank_max_age);
    let (registry, _registry_arbiter, ws) = start_registry(settings, &live, log);
    let servers = Servers::start(&settings.http, HttpParts { readiness, live, ws }, log)?;
    info!(log, "api started"; "http_port" => servers.port);
    stop.await;
    let deadline = tokio::time::Instant::now() + settings.consumer.shutdown_timeout;
    if tokio::time::timeout_at(deadline, registry.send(Shutdown { timeout: Duration::from_secs(2) })).await.is_err() {
        warn!(log, "the WebSocket sessions were not all closed in time");
    }
    if tokio::time::timeout_at(deadline, servers.stop()).await.is_err() {
        warn!(log, "HTTP requests in flight were not all finished in time");
    }
    Ok(())
}

/// The WebSocket session registry on its own arbiter. Every instance that
/// runs one serves every channel: updates reach it through Redis pub/sub,
/// whoever owns the partitions.
fn start_registry(
    settings: &Settings,
    live: &Live,
    log: &Logger,
) -> (Addr<SessionRegistry>, Arbiter, crate::http::ws::WsState) {
    let arbiter = Arbiter::new();
    let registry = {
        let (ws, instance, live, log) = (settings.ws.clone(), settings.instance_id.clone(), live.clone(), log.clone());
        SessionRegistry::start_in_arbiter(&arbiter.handle(), move |_| SessionRegistry::new(ws, instance, live, log))
    };
    let common = crate::actors::ws::session::SessionCommon {
        snapshots: crate::actors::ws::snapshots::Snapshots::default(),
        registry: registry.clone(),
        settings: settings.ws.clone(),
        live: live.clone(),
    };
    let (capacity, fd_limit) = crate::actors::ws::limits::session_capacity();
    info!(log, "WebSocket capacity"; "sessions" => capacity, "open_file_limit" => fd_limit);
    let limiter = crate::actors::ws::limits::IpLimiter::new(capacity);
    let state = crate::http::ws::WsState { common: Arc::new(common), limiter };
    (registry, arbiter, state)
}

/// Producer and consumer in one process. Without configured brokers, an
/// embedded librdkafka mock cluster serves Kafka on a random loopback port;
/// it keeps nothing, so this mode uses its own PostgreSQL schema and Redis
/// prefix (suffix `_embedded`) and starts them afresh.
pub async fn run_all(settings: &Settings, log: &slog::Logger) -> anyhow::Result<()> {
    let signal = crate::shutdown::signal(log.clone());
    let mut settings = settings.clone();
    let mut embedded = None;
    let brokers = match settings.kafka.brokers.clone() {
        Some(brokers) => brokers,
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            let stream = crate::producer::Stream::from_settings(&settings.producer).map_err(anyhow::Error::msg)?;
            for token in &stream.tokens {
                cluster.create_topic(&settings.kafka.topics.topic_for(token), settings.kafka.partitions, 1)?;
            }
            let brokers = cluster.bootstrap_servers();
            settings.postgres.schema = format!("{}_embedded", settings.postgres.schema);
            settings.redis.key_prefix = format!("{}_embedded", settings.redis.key_prefix);
            PgStore::open(&settings.postgres, 1)?.drop_schema().await?;
            info!(log, "embedded broker (in memory; state starts afresh)"; "brokers" => &brokers,
                "inspect" => format!("kcat -b {brokers} -L"), "schema" => &settings.postgres.schema);
            embedded = Some(cluster);
            brokers
        }
    };
    let mut consumer = Consumer::start(&settings, &brokers, log).await?;
    let grace = settings.consumer.shutdown_timeout;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    actix::spawn(async move {
        signal.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    // The roles are isolated one way: a producer that fails (it already
    // replaces its client after a fatal Kafka error) leaves the consumer
    // serving; a consumer that fails ends the process, and a restart by the
    // supervisor resumes from the checkpoint.
    //
    // The grace period is shared out: the producer's flush by 30 % (and
    // the producer dropped at 40 %, whatever it is waiting for), then the
    // consumer's stop in half of it, which leaves a tenth for the exit.
    let producer = crate::producer::run(&settings, &brokers, log, stopped(stop_rx.clone()), grace.mul_f64(0.3));
    tokio::pin!(producer);
    tokio::select! {
        result = &mut producer => {
            match result {
                Ok(_) => info!(log, "producer finished; consumer runs until stopped"),
                Err(e) => slog::error!(log, "the producer stopped on an error; the consumer runs on until stopped";
                    "error" => format!("{e:#}")),
            }
            tokio::select! {
                _ = stopped(stop_rx) => {}
                _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
            }
        }
        _ = stopped(stop_rx.clone()) => {
            if tokio::time::timeout(grace.mul_f64(0.4), &mut producer).await.is_err() {
                warn!(log, "the producer did not stop in time; stopping the consumer without it");
            }
        }
        _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
    }
    consumer.stop(grace.mul_f64(0.5)).await;
    drop(embedded);
    Ok(())
}

/// A running consumer: the reader, its aggregators and the HTTP server.
pub struct Consumer {
    pub http_port: u16,
    pub aggregators: Aggregators,
    /// Held so the reader lives as long as the consumer.
    _reader: Addr<KafkaReader>,
    /// To the polling thread directly: the reader may be busy (its mailbox
    /// paused) for as long as a checkpoint hangs.
    control: std_mpsc::Sender<Control>,
    reader_stopped: oneshot::Receiver<()>,
    servers: Servers,
    registry: Addr<SessionRegistry>,
    _registry_arbiter: Arbiter,
    poll_thread: std::thread::JoinHandle<()>,
    log: Logger,
}

impl Consumer {
    /// Connects to PostgreSQL (migrating it), Redis and Kafka, joins the
    /// consumer group and starts serving. Must run inside an actix system.
    pub async fn start(settings: &Settings, brokers: &str, log: &Logger) -> anyhow::Result<Consumer> {
        let pg = PgStore::connect(&settings.postgres, settings.consumer.recent_swaps, log)
            .await?
            .with_swap_history(settings.consumer.swap_history);
        let redis = RedisStore::connect(&settings.redis, settings.consumer.recent_swaps)
            .await?
            .with_history(settings.ws.history);
        let dlq_topic = [settings.kafka.dlq_topic.clone()];
        if let Err(e) = crate::kafka::create_topics(&settings.kafka, brokers, &dlq_topic, log).await {
            warn!(log, "cannot create the dead-letter topic"; "error" => format!("{e:#}"));
        }

        let mut dlq_config = client_config(&settings.kafka, brokers);
        dlq_config.set("enable.idempotence", "true").set("acks", "all").set("linger.ms", "5");
        let dlq_producer = PolledProducer::create(&dlq_config, LoggingContext { log: log.clone() })
            .context("creating the dead-letter producer")?;
        let dlq = Dlq { producer: dlq_producer, topic: settings.kafka.dlq_topic.clone() };

        let threads = settings.consumer.aggregator_threads;
        let arbiters = (0..threads).map(|_| Arbiter::new().handle()).collect();
        let aggregators = Aggregators::new(arbiters, settings.consumer.recent_swaps)
            .keeping_history(!settings.consumer.swap_history.is_zero());

        // The polling thread owns its own runtime for the PostgreSQL calls
        // its rebalance callbacks make.
        let (input_tx, input_rx) = tokio::sync::mpsc::channel(2);
        let (control_tx, control_rx) = std_mpsc::channel();
        let (consumer_tx, consumer_rx) = oneshot::channel();
        let poll_settings = PollSettings {
            batch_max_events: settings.consumer.batch_max_events,
            batch_max_time: settings.consumer.batch_max_time,
            owner: settings.instance_id.clone(),
            timeout: settings.consumer.shutdown_timeout,
        };
        let consumer_config = {
            let mut config = client_config(&settings.kafka, brokers);
            config.set("group.id", &settings.kafka.group_id);
            config.set("enable.auto.commit", "false").set("enable.auto.offset.store", "false");
            if let Some(member) = &settings.kafka.group_instance_id {
                // Static membership (KIP-345): the same instance coming back
                // within the session timeout gets its partitions at once.
                config.set("group.instance.id", member);
            }
            let session_ms = settings.kafka.session_timeout.as_millis();
            let heartbeat_ms = (session_ms / 3).clamp(100, 1000);
            for (key, value) in [
                ("auto.offset.reset", "earliest".to_owned()),
                ("session.timeout.ms", session_ms.to_string()),
                ("heartbeat.interval.ms", heartbeat_ms.to_string()),
                ("topic.metadata.refresh.interval.ms", "5000".to_owned()),
                ("statistics.interval.ms", "5000".to_owned()),
                ("fetch.max.bytes", "8388608".to_owned()),
                ("receive.message.max.bytes", "134217728".to_owned()),
                // librdkafka stops fetching a partition whose local queue is
                // over its thresholds and, by default, waits 1 s before it
                // looks again: while a catch-up drains that queue, the reader
                // went idle for 0.2-0.5 s at a time (26 % of a 13 s run).
                ("fetch.queue.backoff.ms", "10".to_owned()),
            ] {
                set_default(&mut config, key, &value);
            }
            config
        };
        let subscription = settings.kafka.topics.subscription();
        let postgres_settings = settings.postgres.clone();
        let recent_cap = settings.consumer.recent_swaps;
        let thread_log = log.clone();
        let poll_thread = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                let setup = || -> anyhow::Result<Arc<BaseConsumer<ReaderContext>>> {
                    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
                    let pg = PgStore::open(&postgres_settings, recent_cap)?;
                    let context = ReaderContext::new(thread_log.clone(), input_tx, runtime, pg, poll_settings);
                    let consumer: BaseConsumer<ReaderContext> =
                        consumer_config.create_with_context(context).context("creating the Kafka consumer")?;
                    consumer.subscribe(&[&subscription]).context("subscribing")?;
                    Ok(Arc::new(consumer))
                };
                match setup() {
                    Ok(consumer) => {
                        let _ = consumer_tx.send(Ok(consumer.clone()));
                        poll::run(consumer, control_rx);
                    }
                    Err(e) => {
                        let _ = consumer_tx.send(Err(e));
                    }
                }
            })
            .context("starting the polling thread")?;
        let consumer = consumer_rx.await.context("the polling thread died")??;

        let (stopped_tx, stopped_rx) = oneshot::channel();
        let parts = CoreParts {
            log: log.clone(),
            settings: settings.consumer.clone(),
            consumer: consumer.clone(),
            dlq,
            pg: pg.clone(),
            redis: redis.clone(),
            feed_redis: redis.with_own_connection(&settings.redis).await?,
            aggregators: aggregators.clone(),
            control: control_tx.clone(),
        };
        let reader = KafkaReader::new(parts, input_rx, stopped_tx).start();

        let readiness = Readiness { probes: dependency_probes(&pg, &redis, Some(consumer)) };
        // The API's reads on a connection of their own: on the live writer's,
        // each would wait behind a checkpoint's pipeline of scripts.
        let reads = redis.with_own_connection(&settings.redis).await?;
        let live = Live::stores(reads, pg.clone(), settings.http.cache, settings.consumer.max_future)
            .with_rank_max_age(settings.http.rank_max_age)
            .with_local(Arc::new(aggregators.clone()));
        let (registry, registry_arbiter, ws) = start_registry(settings, &live, log);
        let parts = HttpParts { readiness, live, ws };
        let servers = Servers::start(&settings.http, parts, log)?;
        info!(log, "consumer started"; "http_port" => servers.port, "subscription" => settings.kafka.topics.subscription(),
            "group" => &settings.kafka.group_id,
            "group_instance_id" => settings.kafka.group_instance_id.as_deref().unwrap_or("(dynamic membership)"),
            "session_timeout_ms" => settings.kafka.session_timeout.as_millis());
        Ok(Consumer {
            http_port: servers.port,
            aggregators,
            _reader: reader,
            control: control_tx,
            reader_stopped: stopped_rx,
            servers,
            registry,
            _registry_arbiter: registry_arbiter,
            poll_thread,
            log: log.clone(),
        })
    }

    /// Graceful stop within `timeout`, whatever is down: the batch in
    /// flight is checkpointed and the group left (by half of it), WebSocket
    /// clients closed with 1001 and HTTP drained (by 70 %), the polling
    /// thread joined (by 90 %, leaving the rest for the process' own exit).
    /// A checkpoint that cannot be stored by then is not (its events are
    /// read again after a restart), and the process exits anyway.
    pub async fn stop(self, timeout: Duration) {
        let started = tokio::time::Instant::now();
        let at = |share: f64| started + timeout.mul_f64(share);
        let (reader_by, drained_by, end) = (at(0.5), at(0.7), at(0.9));
        let _ = self.control.send(Control::Stop);
        if tokio::time::timeout_at(reader_by, self.reader_stopped).await.is_err() {
            warn!(self.log, "the reader did not stop in time");
        }
        // Closing the sessions and draining HTTP touch Redis (presence):
        // neither may outlast the grace period when Redis is down.
        let closed = self.registry.send(Shutdown { timeout: timeout.mul_f64(0.1) });
        if tokio::time::timeout_at(drained_by, closed).await.is_err() {
            warn!(self.log, "the WebSocket sessions were not all closed in time");
        }
        if tokio::time::timeout_at(drained_by.max(tokio::time::Instant::now()), self.servers.stop()).await.is_err() {
            warn!(self.log, "HTTP requests in flight were not all finished in time");
        }
        // The polling thread leaves the group once the reader stopped.
        // Joined on a detached thread: a blocking task would hold up the
        // runtime's own shutdown for as long as the join takes.
        let (joined_tx, joined) = oneshot::channel();
        let poll_thread = self.poll_thread;
        std::thread::spawn(move || {
            let _ = poll_thread.join();
            let _ = joined_tx.send(());
        });
        if tokio::time::timeout_at(end, joined).await.is_err() {
            warn!(self.log, "the Kafka polling thread did not stop in time; exiting without it");
        }
    }

    /// Resolves when the reader stops on its own (e.g. a fatal error).
    pub fn reader_stopped(&mut self) -> &mut oneshot::Receiver<()> {
        &mut self.reader_stopped
    }
}

/// Readiness probes for PostgreSQL, Redis and (consumer) the broker.
fn dependency_probes(
    pg: &PgStore,
    redis: &RedisStore,
    consumer: Option<Arc<BaseConsumer<ReaderContext>>>,
) -> Vec<(&'static str, Probe)> {
    let mut probes: Vec<(&'static str, Probe)> = Vec::new();
    let pg = pg.clone();
    probes.push((
        "postgres",
        Arc::new(move || {
            let pg = pg.clone();
            Box::pin(async move { pg.ping().await })
        }),
    ));
    let redis = redis.clone();
    probes.push((
        "redis",
        Arc::new(move || {
            let redis = redis.clone();
            Box::pin(async move { redis.ping().await })
        }),
    ));
    if let Some(consumer) = consumer {
        probes.push((
            "kafka",
            Arc::new(move || {
                let consumer = consumer.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        consumer.fetch_metadata(None, Duration::from_secs(2)).map(|_| ())
                    })
                    .await??;
                    Ok(())
                })
            }),
        ));
    }
    probes
}
