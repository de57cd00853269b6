//! `swapstream <role>`: load settings, build the logger, run the role until
//! it finishes or is stopped, report why it stopped.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use slog::{error, info};

use swapstream::config::{self, Settings, SettingsArgs};
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
    long_about = "Token-swap stream analytics: Kafka in, exact per-token and per-pair aggregates out over REST and WebSocket.\n\nEvery setting is a SWAPSTREAM_* environment variable (see README.md) and a flag of its own; a flag wins over its variable. `swapstream <role> --help` lists them all."
)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Emit synthetic swap events (pending, then confirmed or failed) into Kafka at a steady rate.
    Producer(SettingsArgs),
    /// Read swap events from Kafka, aggregate them exactly once into PostgreSQL and Redis, and serve WebSocket clients.
    Consumer(SettingsArgs),
    /// Serve the REST API from Redis (live values) and PostgreSQL (history); stateless, scale by replicas.
    Api(SettingsArgs),
    /// Producer and consumer in one process, for local use and demos; runs an embedded in-memory broker when SWAPSTREAM_KAFKA_BROKERS is empty.
    All(SettingsArgs),
    /// Print the effective configuration (secrets redacted) and exit.
    Config(SettingsArgs),
    /// GET a URL and exit 0 on a 2xx answer, 1 otherwise (container health checks).
    Healthcheck {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}

/// What a role runs.
#[derive(Clone, Copy)]
enum Run {
    Producer,
    Consumer,
    Api,
    All,
}

/// Invalid configuration: the problems, one a line, and exit status 2.
fn refuse(mut problems: Vec<String>) -> ExitCode {
    problems.sort();
    eprintln!("invalid configuration:");
    for line in &problems {
        eprintln!("  {line}");
    }
    ExitCode::from(EXIT_CONFIG)
}

fn main() -> ExitCode {
    let names: Vec<String> = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok()).collect();
    let unknown = config::unknown_variables(names.iter().map(String::as_str));
    let command = config::blank_variables_unset(Cli::command());
    let parsed = command.try_get_matches().and_then(|matches| Ok((Cli::from_arg_matches(&matches)?, matches)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        Err(e) if matches!(e.kind(), ErrorKind::ValueValidation | ErrorKind::InvalidValue) => {
            let Some(line) = config::explain(&e) else { e.exit() };
            return refuse(unknown.into_iter().chain([line]).collect());
        }
        Err(e) => e.exit(),
    };
    let (run, args) = match cli.role {
        Role::Healthcheck { url } => {
            return match swapstream::http::health::probe_url(&url, std::time::Duration::from_secs(3)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("unhealthy: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Role::Producer(args) => (Some(Run::Producer), args),
        Role::Consumer(args) => (Some(Run::Consumer), args),
        Role::Api(args) => (Some(Run::Api), args),
        Role::All(args) => (Some(Run::All), args),
        Role::Config(args) => (None, args),
    };
    let Some((_, role_matches)) = matches.subcommand() else { unreachable!("a role is required") };
    let checked = Settings::from_args(args, role_matches)
        .and_then(|settings| startup::check(&settings).map(|log_settings| (settings, log_settings)));
    let (settings, log_settings) = match checked {
        Ok(checked) if unknown.is_empty() => checked,
        Ok(_) => return refuse(unknown),
        Err(problems) => return refuse(unknown.into_iter().chain(problems.0).collect()),
    };
    let Some(run) = run else {
        print!("{}", settings.describe());
        return ExitCode::SUCCESS;
    };

    let (log, flush) = telemetry::build_logger(&log_settings, &settings.instance_id);
    info!(log, "configuration"; "settings" => ?settings.effective);
    let system = actix::System::new();
    let result = system.block_on(start(run, &settings, &log));
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
    // Write the last records before the process ends.
    drop(flush);
    code
}

async fn start(run: Run, settings: &Settings, log: &slog::Logger) -> anyhow::Result<()> {
    match run {
        Run::Producer => startup::run_producer(settings, log).await,
        Run::Consumer => startup::run_consumer(settings, log).await,
        Run::All => startup::run_all(settings, log).await,
        Run::Api => startup::run_api(settings, log).await,
    }
}
