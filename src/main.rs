//! `swapstream <role>`: load settings, build the logger, run the role until
//! it finishes or is stopped, report why it stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use slog::{error, info};

use swapstream::config::Settings;
use swapstream::{startup, telemetry};

/// jemalloc: less memory per idle WebSocket connection than the system
/// allocator (docs/BENCHMARKS.md), and cheaper small allocations.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
        Role::Producer(_) => startup::run_producer(settings, log).await,
        Role::Consumer => startup::run_consumer(settings, log).await,
        Role::All(_) => startup::run_all(settings, log).await,
        Role::Api => startup::run_api(settings, log).await,
        Role::Config | Role::Healthcheck { .. } => unreachable!("handled before start"),
    }
}
