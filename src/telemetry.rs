//! Logging: slog, JSON lines for services, human-readable on a terminal.
//!
//! JSON lines carry `ts`, `level`, `msg`, `instance`, then the record's own
//! fields. `level` is one of `ERROR`, `WARN`, `INFO`, `DEBUG`, `TRACE`, the
//! names log pipelines know; slog's `Critical` is written as `ERROR` with
//! `"critical": true`. Which records are written is decided per module by a
//! [`LogFilter`] (`SWAPSTREAM_LOG_LEVEL`).

use std::fmt;
use std::io::IsTerminal;

use slog::{o, BorrowedKV, Drain, Level, Logger, OwnedKVList, Record, RecordStatic, SingleKV};

use crate::config::Logging;

/// Where and how the process logs (`SWAPSTREAM_LOG_LEVEL`, `SWAPSTREAM_LOG_FORMAT`).
#[derive(Debug, Clone)]
pub struct LogSettings {
    pub filter: LogFilter,
    pub format: LogFormat,
}

impl LogSettings {
    /// From the configuration's text; a problem is named by its variable.
    pub fn from_config(config: &Logging) -> Result<LogSettings, String> {
        let filter = LogFilter::parse(&config.level).map_err(|why| {
            format!("SWAPSTREAM_LOG_LEVEL: expected LEVEL[,MODULE=LEVEL...]: {why}, got {:?}", config.level)
        })?;
        let format = match config.format.as_str() {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => return Err(format!("SWAPSTREAM_LOG_FORMAT: expected one of auto, json, text, got {other:?}")),
        };
        Ok(LogSettings { filter, format })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// JSON lines unless standard error is a terminal.
    Auto,
    Json,
    Text,
}

/// Builds the process logger. Records go through an async drain that drops
/// (and counts) records rather than stall the caller when the sink is slow;
/// the filter runs before it, so filtered records cost no copy.
///
/// Dropping the returned guard writes every record queued so far and ends
/// the writer thread; records logged after that are discarded. Clones of the
/// logger may outlive `main` (threads that are never joined), so the guard,
/// not the last clone, is what makes the last records reach the sink.
pub fn build_logger(settings: &LogSettings, instance_id: &str) -> (Logger, LogFlush) {
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = if json {
        let drain = slog_json::Json::new(std::io::stderr())
            .add_key_value(o!(
                "ts" => slog::PushFnValue(|_, ser| ser.emit(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                "level" => slog::FnValue(|record| level_name(record.level())),
                "msg" => slog::PushFnValue(|record, ser| ser.emit(record.msg())),
            ))
            .build()
            .fuse();
        Box::new(MarkCritical(drain))
    } else {
        let decorator = slog_term::TermDecorator::new().stderr().build();
        Box::new(slog_term::FullFormat::new(decorator).build().fuse())
    };
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(8192)
        .overflow_strategy(slog_async::OverflowStrategy::DropAndReport)
        .build_with_guard();
    // Once the guard has ended the writer, sending fails: not a reason to panic.
    let drain = Filtered { drain: drain.ignore_res(), filter: settings.filter.clone() }.fuse();
    (Logger::root(drain, o!("instance" => instance_id.to_owned())), LogFlush { _writer: guard })
}

/// Writes the logger's queued records when dropped; see [`build_logger`].
#[must_use = "dropping it at once ends the log's writer"]
pub struct LogFlush {
    _writer: slog_async::AsyncGuard,
}

/// A logger that discards everything, for tests and tools.
pub fn discard() -> Logger {
    Logger::root(slog::Discard, o!())
}

/// The `level` of a JSON line.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical | Level::Error => "ERROR",
        Level::Warning => "WARN",
        Level::Info => "INFO",
        Level::Debug => "DEBUG",
        Level::Trace => "TRACE",
    }
}

/// Adds `"critical": true` to critical records, whose `level` reads `ERROR`.
struct MarkCritical<D>(D);

impl<D: Drain> Drain for MarkCritical<D> {
    type Ok = D::Ok;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<D::Ok, D::Err> {
        if record.level() != Level::Critical {
            return self.0.log(record, values);
        }
        let rstatic = RecordStatic { location: record.location(), tag: record.tag(), level: record.level() };
        let kv = (record.kv(), SingleKV::from(("critical", true)));
        self.0.log(&Record::new(&rstatic, record.msg(), BorrowedKV(&kv)), values)
    }
}

struct Filtered<D> {
    drain: D,
    filter: LogFilter,
}

impl<D: Drain> Drain for Filtered<D> {
    type Ok = Option<D::Ok>;
    type Err = D::Err;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<Self::Ok, D::Err> {
        if self.filter.enabled(record.module(), record.level()) {
            self.drain.log(record, values).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// The most verbose level written, by module: `LEVEL[,MODULE=LEVEL...]`,
/// like `RUST_LOG`. A record is judged by the directive of the longest
/// module path that is its module or a parent of it (`a::b` covers `a::b`
/// and `a::b::c`, not `a::bc`), else by the bare level (default `info`).
/// Levels: `trace`, `debug`, `info`, `warning` (or `warn`), `error`,
/// `critical`, `off`.
#[derive(Clone, PartialEq, Eq)]
pub struct LogFilter {
    default: Option<Level>,
    /// Longest module first, so the first match is the most specific.
    modules: Vec<(String, Option<Level>)>,
}

impl LogFilter {
    pub fn parse(text: &str) -> Result<LogFilter, String> {
        let mut default = None;
        let mut modules: Vec<(String, Option<Level>)> = Vec::new();
        for directive in text.split(',').map(str::trim) {
            if directive.is_empty() {
                return Err("an empty directive (two commas, or a comma at an end)".into());
            }
            match directive.split_once('=') {
                None => {
                    if default.is_some() {
                        return Err(format!(
                            "a second bare level {directive:?} (give one, and MODULE=LEVEL for others)"
                        ));
                    }
                    default = Some(parse_level(directive)?);
                }
                Some((module, level)) => {
                    let module = module.trim();
                    if !valid_module(module) {
                        return Err(format!("{module:?} is not a module path like swapstream::actors::kafka_reader"));
                    }
                    if modules.iter().any(|(m, _)| m == module) {
                        return Err(format!("module {module:?} given twice"));
                    }
                    modules.push((module.to_owned(), parse_level(level.trim())?));
                }
            }
        }
        modules.sort_by_key(|(module, _)| std::cmp::Reverse(module.len()));
        Ok(LogFilter { default: default.unwrap_or(Some(Level::Info)), modules })
    }

    pub fn enabled(&self, module: &str, level: Level) -> bool {
        let limit = self
            .modules
            .iter()
            .find(|(prefix, _)| {
                module.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
            })
            .map_or(self.default, |(_, limit)| *limit);
        limit.is_some_and(|limit| level.is_at_least(limit))
    }
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |level: Option<Level>| level.map_or("off".to_owned(), |l| l.as_str().to_ascii_lowercase());
        write!(f, "{}", name(self.default))?;
        for (module, level) in &self.modules {
            write!(f, ",{module}={}", name(*level))?;
        }
        Ok(())
    }
}

/// `None` is `off`.
fn parse_level(text: &str) -> Result<Option<Level>, String> {
    Ok(Some(match text.to_ascii_lowercase().as_str() {
        "trace" => Level::Trace,
        "debug" => Level::Debug,
        "info" => Level::Info,
        "warning" | "warn" => Level::Warning,
        "error" => Level::Error,
        "critical" => Level::Critical,
        "off" => return Ok(None),
        _ => {
            return Err(format!("unknown level {text:?} (trace, debug, info, warning, error, critical, off)"));
        }
    }))
}

fn valid_module(path: &str) -> bool {
    !path.is_empty()
        && path.split("::").all(|part| {
            !part.is_empty()
                && !part.starts_with(|c: char| c.is_ascii_digit())
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn log_settings_are_read_from_the_configuration_text() {
        let config = |level: &str, format: &str| Logging { level: level.into(), format: format.into() };
        let settings = LogSettings::from_config(&config("warn,swapstream::http=debug", "json")).unwrap();
        assert_eq!(settings.format, LogFormat::Json);
        assert_eq!(settings.filter, LogFilter::parse("warn,swapstream::http=debug").unwrap());
        let problem = LogSettings::from_config(&config("loud", "auto")).unwrap_err();
        assert_eq!(
            problem,
            "SWAPSTREAM_LOG_LEVEL: expected LEVEL[,MODULE=LEVEL...]: unknown level \"loud\" (trace, debug, info, warning, error, critical, off), got \"loud\""
        );
    }

    #[test]
    fn a_bare_level_applies_everywhere() {
        let filter = LogFilter::parse("warn").unwrap();
        assert!(filter.enabled("swapstream::http", Level::Warning));
        assert!(filter.enabled("swapstream::http", Level::Critical));
        assert!(!filter.enabled("swapstream::http", Level::Info));
    }

    #[test]
    fn the_longest_matching_module_decides() {
        let filter = LogFilter::parse(
            "info,swapstream::actors=warn,swapstream::actors::kafka_reader=debug,swapstream::http=off",
        )
        .unwrap();
        assert!(filter.enabled("swapstream::actors::kafka_reader::poll", Level::Debug));
        assert!(filter.enabled("swapstream::actors::kafka_reader", Level::Debug));
        assert!(!filter.enabled("swapstream::actors::kafka_reader", Level::Trace));
        assert!(!filter.enabled("swapstream::actors::ws::registry", Level::Info));
        assert!(filter.enabled("swapstream::actors::ws::registry", Level::Warning));
        assert!(!filter.enabled("swapstream::http::middleware", Level::Critical));
        assert!(filter.enabled("swapstream::storage", Level::Info));
        assert!(!filter.enabled("swapstream::storage", Level::Debug));
    }

    #[test]
    fn a_module_matches_whole_path_segments_only() {
        let filter = LogFilter::parse("error,swapstream::actors::kafka=debug").unwrap();
        assert!(filter.enabled("swapstream::actors::kafka", Level::Debug));
        assert!(filter.enabled("swapstream::actors::kafka::x", Level::Debug));
        assert!(!filter.enabled("swapstream::actors::kafka_reader", Level::Debug));
    }

    #[test]
    fn without_a_bare_level_the_rest_is_at_info() {
        let filter = LogFilter::parse("swapstream::http=debug").unwrap();
        assert!(filter.enabled("swapstream::http", Level::Debug));
        assert!(filter.enabled("swapstream::storage", Level::Info));
        assert!(!filter.enabled("swapstream::storage", Level::Debug));
        assert_eq!(format!("{filter:?}"), "info,swapstream::http=debug");
        assert_eq!(LogFilter::parse(&format!("{filter:?}")).unwrap(), filter);
    }

    #[test]
    fn bad_filters_are_refused_with_the_reason() {
        for (text, reason) in [
            ("loud", "unknown level \"loud\""),
            ("info,swapstream::http=loud", "unknown level \"loud\""),
            ("info,,debug", "an empty directive"),
            ("info,debug", "a second bare level \"debug\""),
            ("info,swap stream=debug", "\"swap stream\" is not a module path"),
            ("info,swapstream::=debug", "\"swapstream::\" is not a module path"),
            ("info,=debug", "\"\" is not a module path"),
            ("a=info,a=debug", "module \"a\" given twice"),
        ] {
            let error = LogFilter::parse(text).expect_err(text);
            assert!(error.starts_with(reason), "{text}: {error}");
        }
    }

    #[test]
    fn levels_are_case_insensitive_and_off_silences() {
        let filter = LogFilter::parse("OFF,swapstream::http=Warn").unwrap();
        assert!(!filter.enabled("swapstream::storage", Level::Critical));
        assert!(filter.enabled("swapstream::http", Level::Warning));
    }

    /// Collects what a JSON drain writes.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_name_levels_as_pipelines_do_and_mark_critical() {
        let sink = Sink::default();
        let json = slog_json::Json::new(sink.clone())
            .add_key_value(o!("level" => slog::FnValue(|record| level_name(record.level()))))
            .build()
            .fuse();
        let filter = LogFilter::parse("trace").unwrap();
        let log =
            Logger::root(Filtered { drain: MarkCritical(std::sync::Mutex::new(json)).fuse(), filter }.fuse(), o!());
        slog::crit!(log, "c"; "k" => 1);
        slog::error!(log, "e");
        slog::warn!(log, "w");
        slog::info!(log, "i");
        slog::debug!(log, "d");
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let levels: Vec<&str> = lines.iter().map(|l| l["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["ERROR", "ERROR", "WARN", "INFO", "DEBUG"]);
        assert_eq!(lines[0]["critical"], true);
        assert_eq!(lines[0]["k"], 1);
        assert!(lines[1].get("critical").is_none(), "{text}");
    }
}
