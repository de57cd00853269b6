//! Shared Kafka client plumbing: client configuration from settings, and a
//! client context that routes librdkafka's own log into slog.

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use slog::Logger;

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
