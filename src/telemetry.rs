//! Logging: slog, JSON lines for services, human-readable on a terminal.

use std::io::IsTerminal;

use slog::{o, Drain, Logger};

use crate::config::{LogFormat, LogSettings};

/// Builds the process logger. Records go through an async drain that drops
/// (and counts) records rather than stall the caller when the sink is slow.
pub fn build_logger(settings: &LogSettings, instance_id: &str) -> Logger {
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if json {
        let drain = slog_json::Json::new(std::io::stderr())
            .add_key_value(o!(
                "ts" => slog::PushFnValue(|_, ser| ser.emit(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                "level" => slog::FnValue(|record| record.level().as_short_str()),
                "msg" => slog::PushFnValue(|record, ser| ser.emit(record.msg())),
            ))
            .build()
            .fuse();
        Box::new(drain)
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    };
    let drain = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build()
        .filter_level(settings.level)
        .fuse();
    Logger::root(drain, o!("instance" => instance_id.to_owned()))
}

/// A logger that discards everything, for tests and tools.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}
