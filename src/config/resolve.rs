//! From parsed arguments to [`Settings`]: the checks no single value can
//! make (one problem a line), and the effective values, secrets redacted.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use clap::{ArgMatches, FromArgMatches};

use super::args::{HttpArgs, SettingsArgs};
use super::definition::{command, explain, unknown_variables, variables};
use super::settings::{
    ConsumerSettings, CorsOrigins, HttpSettings, KafkaSettings, Logging, PostgresSettings, ProducerSettings, RateLimit,
    RedisMode, RedisSettings, Settings, TlsFiles, TopicLayout, WsHistory, WsSettings,
};
use super::values::{parse_options, redact_url};
use super::{ConfigError, Secret};

impl Settings {
    /// Reads the given variables, as the process would from its
    /// environment (for tests and tools: nothing is read from this
    /// process' own environment). Unrelated variables are ignored, unknown
    /// `SWAPSTREAM_*` ones are problems (most likely typos), blank ones
    /// are unset.
    pub fn from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<Settings, ConfigError> {
        let vars: BTreeMap<String, String> = vars.into_iter().filter(|(k, _)| k.starts_with("SWAPSTREAM_")).collect();
        let flags: HashMap<String, String> = variables().into_iter().map(|v| (v.name, v.flag)).collect();
        let mut problems = unknown_variables(vars.keys().map(String::as_str));
        let mut argv = vec!["swapstream".to_owned()];
        for (name, value) in &vars {
            if let (Some(flag), value) = (flags.get(name), value.trim()) {
                if !value.is_empty() {
                    argv.push(format!("--{flag}={value}"));
                }
            }
        }
        let parsed = command()
            .mut_args(|arg| arg.env(None))
            .try_get_matches_from(argv)
            .and_then(|matches| Ok((SettingsArgs::from_arg_matches(&matches)?, matches)));
        let settings = match parsed {
            Ok((args, matches)) => Settings::from_args(args, &matches),
            Err(e) => Err(ConfigError(vec![explain(&e).unwrap_or_else(|| e.to_string().trim().to_owned())])),
        };
        match settings {
            Ok(settings) if problems.is_empty() => Ok(settings),
            Ok(_) => Err(ConfigError(problems)),
            Err(ConfigError(more)) => {
                problems.extend(more);
                problems.sort();
                Err(ConfigError(problems))
            }
        }
    }

    /// Builds each component's settings from the parsed arguments and
    /// checks what no value alone can say; `matches` (the same parse) gives
    /// the effective values as text. Every problem is reported, one line each.
    pub fn from_args(args: SettingsArgs, matches: &ArgMatches) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        let SettingsArgs { log, kafka, postgres, redis, consumer, http, ws, producer } = args;
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());

        let explicit_instance_id = log.instance_id.filter(|id| !id.trim().is_empty());
        let instance_id = explicit_instance_id.clone().unwrap_or_else(default_instance_id);
        let static_membership = match kafka.kafka_static_membership.as_str() {
            "auto" => explicit_instance_id.is_some(),
            other => other == "true",
        };
        let topics = if kafka.kafka_topic_mode == "single" {
            TopicLayout::Single { topic: kafka.kafka_topic }
        } else {
            TopicLayout::PerToken { prefix: kafka.kafka_topic_prefix }
        };
        let options = kafka
            .kafka_options
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map_or_else(|| Some(Vec::new()), parse_options);
        if options.is_none() {
            // The value may hold a secret: name the problem, not the value.
            problems.push("SWAPSTREAM_KAFKA_OPTIONS: expected key=value[,key=value...]".to_owned());
        }
        let kafka = KafkaSettings {
            brokers: kafka.kafka_brokers.filter(|b| !b.trim().is_empty()),
            topics,
            partitions: kafka.kafka_partitions as i32,
            replication: kafka.kafka_replication as i32,
            group_id: kafka.kafka_group_id,
            group_instance_id: static_membership.then(|| instance_id.clone()),
            session_timeout: Duration::from_millis(kafka.kafka_session_timeout_ms),
            dlq_topic: kafka.kafka_dlq_topic,
            options: Secret(options.unwrap_or_default()),
        };
        let dlq_is_input = match &kafka.topics {
            TopicLayout::PerToken { prefix } => kafka.dlq_topic.starts_with(prefix.as_str()),
            TopicLayout::Single { topic } => kafka.dlq_topic == *topic,
        };
        if dlq_is_input {
            problems.push(format!(
                "SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics ({:?}), or dead letters would be read back as input",
                kafka.dlq_topic
            ));
        }

        if let Err(e) = postgres.postgres_url.parse::<tokio_postgres::Config>() {
            problems.push(format!(
                "SWAPSTREAM_POSTGRES_URL: expected a PostgreSQL URL ({e}), got {:?}",
                redact_url(&postgres.postgres_url)
            ));
        }
        let postgres = PostgresSettings {
            url: Secret(postgres.postgres_url),
            password: secret(postgres.postgres_password),
            schema: postgres.postgres_schema,
            pool_size: postgres.postgres_pool_size as usize,
        };

        let mode = if redis.redis_mode == "cluster" { RedisMode::Cluster } else { RedisMode::Single };
        let urls: Vec<String> = redis.redis_url.split(',').map(|u| u.trim().to_owned()).collect();
        if let Some(bad) = urls.iter().find(|u| redis::parse_redis_url(u).is_none()) {
            problems
                .push(format!("SWAPSTREAM_REDIS_URL: expected redis://host:port URL(s), got {:?}", redact_url(bad)));
        } else if mode == RedisMode::Single && urls.len() > 1 {
            problems.push(format!("SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"{}\"", urls.len()));
        }
        let list = |text: Option<String>| -> Vec<String> {
            text.iter().flat_map(|t| t.split(',')).map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect()
        };
        let read_urls = list(redis.redis_read_urls);
        if let Some(bad) = read_urls.iter().find(|u| redis::parse_redis_url(u).is_none()) {
            problems.push(format!(
                "SWAPSTREAM_REDIS_READ_URLS: expected redis://host:port URLs, got {:?}",
                redact_url(bad)
            ));
        } else if mode == RedisMode::Cluster && !read_urls.is_empty() {
            problems.push(
                "SWAPSTREAM_REDIS_READ_URLS: only in single mode (in cluster mode, name the nodes in SWAPSTREAM_REDIS_URL)"
                    .to_owned(),
            );
        }
        let ws_url = list(redis.redis_ws_url);
        if let Some(bad) = ws_url.iter().find(|u| redis::parse_redis_url(u).is_none()) {
            problems
                .push(format!("SWAPSTREAM_REDIS_WS_URL: expected a redis://host:port URL, got {:?}", redact_url(bad)));
        } else if ws_url.len() > 1 {
            problems.push(format!("SWAPSTREAM_REDIS_WS_URL: expected one URL, got \"{}\"", ws_url.len()));
        }
        let redis = RedisSettings {
            urls: Secret(urls),
            mode,
            read_urls: Secret(read_urls),
            ws_url: ws_url.into_iter().next().map(Secret),
            timeout: Duration::from_millis(redis.redis_timeout_ms),
            password: secret(redis.redis_password),
            key_prefix: redis.redis_key_prefix,
        };

        let consumer = ConsumerSettings {
            batch_max_events: consumer.batch_max_events as usize,
            batch_max_time: Duration::from_millis(consumer.batch_max_ms),
            checkpoint_interval: Duration::from_millis(consumer.checkpoint_interval_ms),
            lateness: Duration::from_secs(consumer.lateness_secs),
            max_future: Duration::from_secs(consumer.max_future_secs),
            shutdown_timeout: Duration::from_secs(consumer.shutdown_timeout_secs),
            recent_swaps: consumer.recent_swaps as usize,
            swap_history: Duration::from_secs(consumer.swap_history_secs),
            aggregator_threads: consumer.aggregator_threads.filter(|&n| n > 0).map_or(cores, |n| n as usize),
        };

        let http = http_settings(http, cores, &mut problems);

        let ws = WsSettings {
            queue_messages: ws.ws_queue_messages as usize,
            queue_bytes: ws.ws_queue_bytes as usize,
            queue_total_bytes: ws.ws_queue_total_bytes,
            write_deadline: Duration::from_millis(ws.ws_write_deadline_ms),
            send_buffer_bytes: ws.ws_send_buffer_bytes as usize,
            stats_interval: Duration::from_millis(ws.ws_stats_interval_ms),
            handoffs_per_sec: ws.ws_handoffs_per_sec,
            coalesce_max: Duration::from_millis(ws.ws_coalesce_max_ms),
            ping_interval: Duration::from_millis(ws.ws_ping_interval_ms),
            ping_timeout: Duration::from_millis(ws.ws_ping_timeout_ms),
            max_channels: ws.ws_max_channels as usize,
            max_frame_bytes: ws.ws_max_frame_bytes as usize,
            max_conns_per_ip: ws.ws_max_conns_per_ip as usize,
            max_bad_frames: ws.ws_max_bad_frames as u32,
            lateness: consumer.lateness,
            history: WsHistory { size: ws.ws_history_size as usize, max_age: Duration::from_secs(ws.ws_history_secs) },
            presence_heartbeat: Duration::from_secs(ws.ws_presence_heartbeat_secs),
            presence_ttl: Duration::from_secs(ws.ws_presence_ttl_secs),
        };
        if ws.ping_timeout <= ws.ping_interval {
            problems.push("SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS".into());
        }
        if ws.presence_ttl <= ws.presence_heartbeat {
            problems.push(
                "SWAPSTREAM_WS_PRESENCE_TTL_SECS: must be more than SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS".into(),
            );
        }

        let producer = ProducerSettings {
            rate: producer.rate,
            tokens: token_universe(&producer.tokens, &mut problems),
            encoding: if producer.json { "json".to_owned() } else { producer.encoding },
            confirm_delay: Duration::from_millis(producer.confirm_delay_ms),
            failed_share: producer.failed_share,
            duplicate_share: producer.duplicate_share,
            reorder_share: producer.reorder_share,
            reorder_max: Duration::from_millis(producer.reorder_max_ms),
            seed: producer.seed,
            count: Some(producer.count).filter(|&n| n > 0),
            ground_truth: producer.ground_truth.filter(|p| !p.as_os_str().is_empty()),
            progress_interval: Duration::from_secs(producer.progress_secs),
        };

        if !problems.is_empty() {
            problems.sort();
            return Err(ConfigError(problems));
        }
        let log = Logging { level: log.log_level, format: log.log_format };
        let mut effective = effective(matches);
        effective.insert("SWAPSTREAM_INSTANCE_ID".into(), instance_id.clone());
        effective.insert("SWAPSTREAM_AGGREGATOR_THREADS".into(), consumer.aggregator_threads.to_string());
        effective.insert("SWAPSTREAM_HTTP_WORKERS".into(), http.workers.to_string());
        effective.insert("SWAPSTREAM_PRODUCER_ENCODING".into(), producer.encoding.clone());
        Ok(Settings { log, instance_id, kafka, postgres, redis, consumer, http, ws, producer, effective })
    }

    /// The effective configuration, one `NAME=value` line per variable,
    /// secrets redacted.
    pub fn describe(&self) -> String {
        self.effective.iter().map(|(name, value)| format!("{name}={value}\n")).collect()
    }
}

/// Every variable that has a value (given or default) as text: secrets
/// (their values hidden from `--help` too) redacted, URLs without password.
pub(super) fn effective(matches: &ArgMatches) -> BTreeMap<String, String> {
    let command = command();
    let mut effective = BTreeMap::new();
    for arg in command.get_arguments() {
        let Some(name) = arg.get_env().and_then(|n| n.to_str()) else { continue };
        let Some(raw) = matches.try_get_raw(arg.get_id().as_str()).ok().flatten().and_then(|mut values| values.next())
        else {
            continue;
        };
        let text = raw.to_string_lossy().trim().to_owned();
        if text.is_empty() {
            continue;
        }
        let shown = if name.ends_with("_URL") || name.ends_with("_URLS") {
            text.split(',').map(|u| redact_url(u.trim())).collect::<Vec<_>>().join(",")
        } else if arg.is_hide_env_values_set() {
            "<redacted>".to_owned()
        } else {
            text
        };
        effective.insert(name.to_owned(), shown);
    }
    effective
}

/// The producer's tokens: symbols, and numbered ranges (`T1..T100000`: T1,
/// T2, ... T100000).
fn token_universe(text: &str, problems: &mut Vec<String>) -> Vec<String> {
    let mut tokens = Vec::new();
    for item in text.split(',').map(str::trim) {
        let Some((first, last)) = item.split_once("..") else {
            tokens.push(item.to_owned());
            continue;
        };
        let prefix = first.trim_end_matches(|c: char| c.is_ascii_digit());
        let from = first[prefix.len()..].parse::<u64>();
        let to = last.strip_prefix(prefix).unwrap_or(last).parse::<u64>();
        match (from, to) {
            (Ok(from), Ok(to)) if from <= to && to - from < 1_000_000 => {
                tokens.extend((from..=to).map(|n| format!("{prefix}{n}")))
            }
            _ => problems.push(format!(
                "SWAPSTREAM_PRODUCER_TOKENS: expected symbols or a numbered range like T1..T1000 (at most 1000000), got {item:?}"
            )),
        }
    }
    tokens
}

pub(super) fn http_settings(http: HttpArgs, cores: usize, problems: &mut Vec<String>) -> HttpSettings {
    let tls = match (http.http_tls_cert, http.http_tls_key) {
        (Some(cert), Some(key)) => {
            for (name, path) in [("SWAPSTREAM_HTTP_TLS_CERT", &cert), ("SWAPSTREAM_HTTP_TLS_KEY", &key)] {
                if !path.is_file() {
                    problems
                        .push(format!("{name}: expected a readable PEM file, got {:?}", path.display().to_string()));
                }
            }
            Some(TlsFiles { cert, key })
        }
        (None, None) => None,
        (cert, _) => {
            let (missing, given) = if cert.is_some() {
                ("SWAPSTREAM_HTTP_TLS_KEY", "SWAPSTREAM_HTTP_TLS_CERT")
            } else {
                ("SWAPSTREAM_HTTP_TLS_CERT", "SWAPSTREAM_HTTP_TLS_KEY")
            };
            problems.push(format!("{missing}: required when {given} is set"));
            None
        }
    };

    let mut keys: Vec<String> = http
        .api_keys
        .map(|keys| keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default();
    if let Some(path) = &http.api_keys_file {
        match std::fs::read_to_string(path) {
            Ok(text) => keys.extend(
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or_default().trim())
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned),
            ),
            Err(e) => {
                problems.push(format!("SWAPSTREAM_API_KEYS_FILE: cannot read {:?}: {e}", path.display().to_string()))
            }
        }
    }
    if keys.iter().any(|k| k.len() < 16) {
        problems.push("SWAPSTREAM_API_KEYS: every key needs at least 16 characters".into());
    }
    let cors = http.cors_origins.unwrap_or(CorsOrigins::List(Vec::new()));
    if cors == CorsOrigins::Any && !keys.is_empty() {
        problems.push("SWAPSTREAM_CORS_ORIGINS: `*` is refused while API keys are set; list the origins".into());
    }
    let rate_limit = (http.rate_limit_per_sec > 0).then_some(RateLimit {
        per_second: http.rate_limit_per_sec as u32,
        burst: http.rate_limit_burst as u32,
        shared: http.rate_limit_store == "redis",
    });

    HttpSettings {
        addr: http.http_addr,
        workers: http.http_workers.filter(|&n| n > 0).map_or(cores, |n| n as usize),
        health_addr: http.http_health_addr,
        tls,
        max_body_bytes: http.http_max_body_bytes as usize,
        compression: http.http_compression,
        access_log: http.http_access_log,
        cache: Duration::from_millis(http.http_cache_ms),
        rank_max_age: Duration::from_millis(http.rank_max_age_ms),
        api_keys: Secret(keys),
        cors,
        rate_limit,
        trusted_proxies: http.trusted_proxies.unwrap_or_default(),
    }
}

pub(super) fn secret(value: Option<String>) -> Option<Secret<String>> {
    value.filter(|v| !v.trim().is_empty()).map(Secret)
}

pub(super) fn default_instance_id() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("swapstream-{}", std::process::id()))
}
