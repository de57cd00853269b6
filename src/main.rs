//! `swapstream <role>`: load settings, build the logger, run the role until
//! it finishes or is stopped, report why it stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slog::{error, info};

use swapstream::config::{Rate, Settings};
use swapstream::startup::Consumer;
use swapstream::{producer, shutdown, telemetry};

/// Exit status for invalid configuration.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "swapstream",
    version,
    about = "Token-swap stream analytics: Kafka in, exact aggregates out over REST and WebSocket.",
    long_about = "Token-swap stream analytics: Kafka in, exact per-token and per-pair aggregates out over REST and WebSocket.\n\nEvery setting comes from SWAPSTREAM_* environment variables (see README.md); flags below override a few of them."
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Emit synthetic swap events (pending, then confirmed or failed) into Kafka at a steady rate.
    Producer(ProducerArgs),
    /// Read swap events from Kafka, aggregate them exactly once into PostgreSQL and Redis, and serve WebSocket clients.
    Consumer,
    /// Serve the REST API from Redis (live values) and PostgreSQL (history); stateless, scale by replicas.
    Api,
    /// Producer and consumer in one process, for local use and demos; runs an embedded in-memory broker when SWAPSTREAM_KAFKA_BROKERS is empty.
    All(ProducerArgs),
    /// Print the effective configuration (secrets redacted) and exit.
    Config,
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise (container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

#[derive(clap::Args)]
struct ProducerArgs {
    /// Stop after this many swaps, once each one's every event is sent [env: SWAPSTREAM_PRODUCER_COUNT].
    #[arg(long)]
    count: Option<u64>,
    /// Events per minute, or "max" [env: SWAPSTREAM_PRODUCER_RATE].
    #[arg(long)]
    rate: Option<String>,
    /// Encode events as JSON instead of protobuf [env: SWAPSTREAM_PRODUCER_ENCODING=json].
    #[arg(long)]
    json: bool,
    /// Write the ground-truth file here at the end [env: SWAPSTREAM_PRODUCER_GROUND_TRUTH].
    #[arg(long)]
    ground_truth: Option<PathBuf>,
}

impl ProducerArgs {
    /// The flags as the variables they override.
    fn overrides(&self) -> Vec<(String, String)> {
        let mut vars = Vec::new();
        if let Some(count) = self.count {
            vars.push(("SWAPSTREAM_PRODUCER_COUNT".into(), count.to_string()));
        }
        if let Some(rate) = &self.rate {
            vars.push(("SWAPSTREAM_PRODUCER_RATE".into(), rate.clone()));
        }
        if self.json {
            vars.push(("SWAPSTREAM_PRODUCER_ENCODING".into(), "json".into()));
        }
        if let Some(path) = &self.ground_truth {
            vars.push(("SWAPSTREAM_PRODUCER_GROUND_TRUTH".into(), path.display().to_string()));
        }
        vars
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Role::Healthcheck { url } = &cli.role {
        return match swapstream::http::health::probe_url(url, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("unhealthy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let overrides = match &cli.role {
        Role::Producer(args) | Role::All(args) => args.overrides(),
        _ => Vec::new(),
    };
    let settings = match Settings::from_vars(std::env::vars().chain(overrides)) {
        Ok(settings) => settings,
        Err(problems) => {
            eprintln!("invalid configuration:");
            for line in &problems.0 {
                eprintln!("  {line}");
            }
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Role::Config = cli.role {
        print!("{}", settings.describe());
        return ExitCode::SUCCESS;
    }

    let log = telemetry::build_logger(&settings.log, &settings.instance_id);
    info!(log, "configuration"; "settings" => ?settings.effective);
    let system = actix::System::new();
    let result = system.block_on(run(cli.role, &settings, &log));
    let code = match result {
        Ok(()) => {
            info!(log, "stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            error!(log, "stopped on error"; "error" => format!("{e:#}"));
            ExitCode::FAILURE
        }
    };
    // Let the async drain write the last records.
    drop(log);
    code
}

async fn run(role: Role, settings: &Settings, log: &slog::Logger) -> anyhow::Result<()> {
    match role {
        Role::Producer(_) => {
            let Some(brokers) = settings.kafka.brokers.clone() else {
                anyhow::bail!("the producer needs SWAPSTREAM_KAFKA_BROKERS");
            };
            if settings.producer.rate == Rate::Max {
                info!(log, "rate: as fast as the broker takes events");
            }
            producer::run(settings, &brokers, log, shutdown::signal(log.clone())).await.map(|_| ())
        }
        Role::Consumer => {
            let Some(brokers) = settings.kafka.brokers.clone() else {
                anyhow::bail!("the consumer needs SWAPSTREAM_KAFKA_BROKERS");
            };
            let mut consumer = Consumer::start(settings, &brokers, log).await?;
            tokio::select! {
                _ = shutdown::signal(log.clone()) => {}
                _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
            }
            consumer.stop(settings.consumer.shutdown_timeout).await;
            Ok(())
        }
        Role::All(_) => run_all(settings, log).await,
        Role::Api => anyhow::bail!(
            "the api role is not available yet: `producer`, `consumer`, `all` and `config` are built so far"
        ),
        Role::Config | Role::Healthcheck { .. } => unreachable!("handled before start"),
    }
}

/// Producer and consumer in one process. Without configured brokers, an
/// embedded librdkafka mock cluster serves Kafka on a random loopback port;
/// it keeps nothing, so this mode uses its own PostgreSQL schema and Redis
/// prefix (suffix `_embedded`) and starts them afresh.
async fn run_all(settings: &Settings, log: &slog::Logger) -> anyhow::Result<()> {
    let mut settings = settings.clone();
    let mut embedded = None;
    let brokers = match settings.kafka.brokers.clone() {
        Some(brokers) => brokers,
        None => {
            let cluster = rdkafka::mocking::MockCluster::new(1)?;
            for token in &settings.producer.tokens {
                cluster.create_topic(&settings.kafka.topics.topic_for(token), settings.kafka.partitions, 1)?;
            }
            let brokers = cluster.bootstrap_servers();
            settings.postgres.schema = format!("{}_embedded", settings.postgres.schema);
            settings.redis.key_prefix = format!("{}_embedded", settings.redis.key_prefix);
            swapstream::storage::postgres::PgStore::connect(&settings.postgres, 1, log).await?.drop_schema().await?;
            info!(log, "embedded broker (in memory; state starts afresh)"; "brokers" => &brokers,
                "inspect" => format!("kcat -b {brokers} -L"), "schema" => &settings.postgres.schema);
            embedded = Some(cluster);
            brokers
        }
    };
    let mut consumer = Consumer::start(&settings, &brokers, log).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let signal_log = log.clone();
    actix::spawn(async move {
        shutdown::signal(signal_log).await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    tokio::select! {
        result = producer::run(&settings, &brokers, log, stopped(stop_rx.clone())) => {
            result?;
            info!(log, "producer finished; consumer runs until stopped");
            tokio::select! {
                _ = stopped(stop_rx) => {}
                _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
            }
        }
        _ = consumer.reader_stopped() => anyhow::bail!("the Kafka reader stopped unexpectedly"),
    }
    consumer.stop(settings.consumer.shutdown_timeout).await;
    drop(embedded);
    Ok(())
}
