use std::collections::HashMap;
use std::path::PathBuf;

use clap::FromArgMatches;

use super::*;

fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

fn problems(vars: &[(&str, &str)]) -> Vec<String> {
    settings(vars).expect_err("should be refused").0
}

#[test]
fn defaults_are_valid() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.kafka.brokers, None);
    assert_eq!(s.kafka.partitions, 4);
    assert_eq!(s.kafka.topics, TopicLayout::PerToken { prefix: "swaps.".into() });
    assert_eq!(s.producer.rate, Rate::PerMinute(1000.0));
    assert_eq!(s.producer.tokens, ["ETH", "BTC", "SOL", "USDC", "USDT", "TON"]);
    assert_eq!(s.producer.encoding, "protobuf");
    assert_eq!(s.producer.count, None);
    assert_eq!(s.postgres.schema, "swapstream");
    assert_eq!(s.redis.mode, RedisMode::Single);
    assert_eq!(s.log, Logging { level: "info".into(), format: "auto".into() });
}

#[test]
fn a_bad_rate_is_named_with_what_was_expected() {
    assert_eq!(
        problems(&[("SWAPSTREAM_PRODUCER_RATE", "fast")]),
        ["SWAPSTREAM_PRODUCER_RATE: expected a positive number of events per minute, or \"max\", got \"fast\""]
    );
    assert_eq!(settings(&[("SWAPSTREAM_PRODUCER_RATE", "max")]).unwrap().producer.rate, Rate::Max);
}

#[test]
fn every_bad_value_is_named_with_what_was_expected() {
    for (name, value, expected) in [
        ("SWAPSTREAM_HTTP_ADDR", "everywhere", "expected an address like 0.0.0.0:8080"),
        ("SWAPSTREAM_KAFKA_BROKERS", "localhost", "expected host:port[,host:port...]"),
        ("SWAPSTREAM_KAFKA_PARTITIONS", "0", "expected an integer from 1 to 10000"),
        ("SWAPSTREAM_KAFKA_TOPIC_MODE", "many", "expected one of per_token, single"),
        ("SWAPSTREAM_LOG_FORMAT", "xml", "expected one of auto, json, text"),
        (
            "SWAPSTREAM_POSTGRES_SCHEMA",
            "Robert'); DROP TABLE",
            "expected a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)",
        ),
        ("SWAPSTREAM_PRODUCER_FAILED_SHARE", "1.5", "expected a share from 0 to 1"),
        ("SWAPSTREAM_HTTP_COMPRESSION", "maybe", "expected true or false"),
        (
            "SWAPSTREAM_TRUSTED_PROXIES",
            "10.0.0.0/33",
            "expected networks like 10.0.0.0/8 or addresses, comma-separated",
        ),
        ("SWAPSTREAM_CORS_ORIGINS", "app.example.com", "expected `*` or origins like https://app.example.com"),
    ] {
        assert_eq!(problems(&[(name, value)]), [format!("{name}: {expected}, got {value:?}")]);
    }
}

#[test]
fn problems_between_settings_are_reported_at_once() {
    let found = problems(&[
        ("SWAPSTREAM_WS_PING_INTERVAL_MS", "5000"),
        ("SWAPSTREAM_WS_PING_TIMEOUT_MS", "5000"),
        ("SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS", "20"),
        ("SWAPSTREAM_HTTP_TLS_CERT", "/nonexistent/cert.pem"),
        ("SWAPSTREAM_API_KEYS", "0123456789abcdef"),
        ("SWAPSTREAM_CORS_ORIGINS", "*"),
        ("SWAPSTREAM_KAFKA_DLQ_TOPIC", "swaps.dead"),
        ("SWAPSTREAM_REDIS_URL", "redis://a:1,redis://b:2"),
        ("SWAPSTREAM_PRODUCER_RAET", "5"),
    ]);
    assert_eq!(
        found,
        [
            "SWAPSTREAM_CORS_ORIGINS: `*` is refused while API keys are set; list the origins",
            "SWAPSTREAM_HTTP_TLS_KEY: required when SWAPSTREAM_HTTP_TLS_CERT is set",
            "SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics (\"swaps.dead\"), or dead letters would be read back as input",
            "SWAPSTREAM_PRODUCER_RAET: unknown variable (see the configuration table in README.md)",
            "SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"2\"",
            "SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS",
            "SWAPSTREAM_WS_PRESENCE_TTL_SECS: must be more than SWAPSTREAM_WS_PRESENCE_HEARTBEAT_SECS",
        ]
    );
    assert_eq!(
        problems(&[("SWAPSTREAM_API_KEYS", "short")]),
        ["SWAPSTREAM_API_KEYS: every key needs at least 16 characters"]
    );
}

#[test]
fn unknown_swapstream_variables_are_refused_and_others_ignored() {
    let found = problems(&[("SWAPSTREAM_PRODUCER_RAET", "5"), ("PATH", "/bin")]);
    assert_eq!(found, ["SWAPSTREAM_PRODUCER_RAET: unknown variable (see the configuration table in README.md)"]);
    let found = problems(&[("SWAPSTREAM_PRODUCER_RAET", "5"), ("SWAPSTREAM_KAFKA_PARTITIONS", "0")]);
    assert_eq!(found.len(), 2, "{found:?}");
}

#[test]
fn blank_variables_are_unset() {
    let s = settings(&[("SWAPSTREAM_HTTP_HEALTH_ADDR", " "), ("SWAPSTREAM_KAFKA_PARTITIONS", "")]).unwrap();
    assert_eq!(s.http.health_addr, None);
    assert_eq!(s.kafka.partitions, 4);
}

#[test]
fn the_producer_flags_are_arguments_of_their_variables() {
    let flags: HashMap<String, String> = variables().into_iter().map(|v| (v.flag, v.name)).collect();
    for (flag, name) in [
        ("count", "SWAPSTREAM_PRODUCER_COUNT"),
        ("rate", "SWAPSTREAM_PRODUCER_RATE"),
        ("ground-truth", "SWAPSTREAM_PRODUCER_GROUND_TRUTH"),
        ("encoding", "SWAPSTREAM_PRODUCER_ENCODING"),
    ] {
        assert_eq!(flags.get(flag).map(String::as_str), Some(name), "--{flag}");
    }
    let matches = command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(["swapstream", "--count", "7", "--json", "--rate", "max", "--ground-truth", "t.json"])
        .unwrap();
    let args = SettingsArgs::from_arg_matches(&matches).unwrap();
    let s = Settings::from_args(args, &matches).unwrap();
    assert_eq!((s.producer.count, s.producer.rate, s.producer.encoding.as_str()), (Some(7), Rate::Max, "json"));
    assert_eq!(s.producer.ground_truth, Some(PathBuf::from("t.json")));
    assert_eq!(s.effective["SWAPSTREAM_PRODUCER_COUNT"], "7");
    assert_eq!(s.effective["SWAPSTREAM_PRODUCER_ENCODING"], "json");
}

#[test]
fn secrets_never_show_in_the_description_or_debug() {
    let s = settings(&[
        ("SWAPSTREAM_POSTGRES_URL", "postgres://app:hunter2@db:5432/swaps"),
        ("SWAPSTREAM_REDIS_PASSWORD", "hunter3"),
        ("SWAPSTREAM_KAFKA_OPTIONS", "sasl.password=hunter4"),
    ])
    .unwrap();
    let described = s.describe();
    let debugged = format!("{s:?}");
    for secret in ["hunter2", "hunter3", "hunter4"] {
        assert!(!described.contains(secret), "{described}");
        assert!(!debugged.contains(secret), "{debugged}");
    }
    assert!(described.contains("SWAPSTREAM_POSTGRES_URL=postgres://app:<redacted>@db:5432/swaps\n"));
    assert!(described.contains("SWAPSTREAM_REDIS_PASSWORD=<redacted>\n"));
    assert_eq!(s.kafka.options.expose(), &[("sasl.password".to_owned(), "hunter4".to_owned())]);
}

#[test]
fn secret_values_are_hidden_from_help() {
    for name in
        ["SWAPSTREAM_KAFKA_OPTIONS", "SWAPSTREAM_POSTGRES_PASSWORD", "SWAPSTREAM_REDIS_PASSWORD", "SWAPSTREAM_API_KEYS"]
    {
        let command = command();
        let arg = command.get_arguments().find(|a| a.get_env().is_some_and(|e| e == name)).unwrap();
        assert!(arg.is_hide_env_values_set(), "{name}");
    }
}

#[test]
fn bad_secret_values_are_not_echoed() {
    let found = problems(&[("SWAPSTREAM_KAFKA_OPTIONS", "hunter5")]);
    assert_eq!(found, ["SWAPSTREAM_KAFKA_OPTIONS: expected key=value[,key=value...]"]);
    let found = problems(&[("SWAPSTREAM_POSTGRES_URL", "postgres://app:hunter6@db:notaport/x")]);
    assert!(found.len() == 1 && !found[0].contains("hunter6"), "{found:?}");
}

#[test]
fn the_dead_letter_topic_must_not_be_an_input_topic() {
    let found = problems(&[("SWAPSTREAM_KAFKA_DLQ_TOPIC", "swaps.dlq")]);
    assert_eq!(found.len(), 1);
    assert!(found[0].starts_with("SWAPSTREAM_KAFKA_DLQ_TOPIC: must not be one of the swap topics"), "{found:?}");
}

#[test]
fn single_topic_mode_uses_the_topic_setting() {
    let s = settings(&[("SWAPSTREAM_KAFKA_TOPIC_MODE", "single"), ("SWAPSTREAM_KAFKA_TOPIC", "all-swaps")]).unwrap();
    assert_eq!(s.kafka.topics.topic_for("ETH"), "all-swaps");
    assert_eq!(settings(&[]).unwrap().kafka.topics.topic_for("ETH"), "swaps.ETH");
    assert_eq!(settings(&[]).unwrap().kafka.topics.subscription(), "^swaps\\.");
}

#[test]
fn redis_cluster_takes_a_url_list() {
    let s = settings(&[
        ("SWAPSTREAM_REDIS_MODE", "cluster"),
        ("SWAPSTREAM_REDIS_URL", "redis://127.0.0.1:7001,redis://127.0.0.1:7002"),
    ])
    .unwrap();
    assert_eq!(s.redis.urls.expose().len(), 2);
    let found = problems(&[("SWAPSTREAM_REDIS_URL", "redis://a:1,redis://b:2")]);
    assert_eq!(found, ["SWAPSTREAM_REDIS_URL: expected one URL in single mode, got \"2\""]);
}

#[test]
fn read_replicas_and_a_websocket_redis_are_optional_urls_and_replicas_need_single_mode() {
    let none = settings(&[]).unwrap();
    assert!(none.redis.read_urls.expose().is_empty() && none.redis.ws_url.is_none());
    let s = settings(&[
        ("SWAPSTREAM_REDIS_READ_URLS", "redis://r1:6379, redis://:pw@r2:6379"),
        ("SWAPSTREAM_REDIS_WS_URL", "redis://ws:6379"),
    ])
    .unwrap();
    assert_eq!(s.redis.read_urls.expose(), &["redis://r1:6379", "redis://:pw@r2:6379"]);
    assert_eq!(s.redis.ws_url.as_ref().map(|u| u.expose().as_str()), Some("redis://ws:6379"));
    assert!(s.describe().contains("SWAPSTREAM_REDIS_READ_URLS=redis://r1:6379,redis://:<redacted>@r2:6379\n"));

    let found = problems(&[
        ("SWAPSTREAM_REDIS_MODE", "cluster"),
        ("SWAPSTREAM_REDIS_URL", "redis://a:1,redis://b:2"),
        ("SWAPSTREAM_REDIS_READ_URLS", "redis://r1:6379"),
        ("SWAPSTREAM_REDIS_WS_URL", "redis://ws:1,redis://ws:2"),
    ]);
    assert_eq!(
        found,
        [
            "SWAPSTREAM_REDIS_READ_URLS: only in single mode (in cluster mode, name the nodes in SWAPSTREAM_REDIS_URL)",
            "SWAPSTREAM_REDIS_WS_URL: expected one URL, got \"2\"",
        ]
    );
    let found = problems(&[("SWAPSTREAM_REDIS_READ_URLS", "http://r1")]);
    assert_eq!(found, ["SWAPSTREAM_REDIS_READ_URLS: expected redis://host:port URLs, got \"http://r1\""]);
}

#[test]
fn every_variable_has_a_flag_and_help_and_is_described_with_its_default() {
    let s = settings(&[]).unwrap();
    let variables = variables();
    assert_eq!(variables.len(), 81, "every SWAPSTREAM_* variable is an argument");
    for variable in &variables {
        assert!(variable.name.starts_with("SWAPSTREAM_"), "{variable:?}");
        assert!(!variable.help.is_empty() && !variable.flag.is_empty(), "{variable:?}");
        let optional = variable.default.starts_with('(');
        assert!(optional || s.effective.get(&variable.name) == Some(&variable.default), "{} missing", variable.name);
    }
}

#[test]
fn the_readme_documents_exactly_the_variables_of_the_definition() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let variables = variables();
    for variable in &variables {
        let row = format!("| `{}` | `{}` | {} |", variable.name, variable.default, variable.help);
        assert!(readme.lines().any(|line| line == row), "README.md lacks the row for {}: {row}", variable.name);
    }
    let rows: Vec<&str> = readme.lines().filter(|line| line.starts_with("| `SWAPSTREAM_")).collect();
    let in_table = rows.iter().filter(|row| row.matches(" | ").count() == 2 && row.contains("` | `"));
    for row in in_table {
        let name = row.trim_start_matches("| `").split('`').next().unwrap_or_default();
        assert!(variables.iter().any(|v| v.name == name), "README.md documents {name}, which the definition lacks");
    }
}

#[test]
fn the_producer_takes_numbered_token_ranges_and_refuses_broken_ones() {
    let s = settings(&[("SWAPSTREAM_PRODUCER_TOKENS", "ETH, T1..T3,X10..12")]).unwrap();
    assert_eq!(s.producer.tokens, ["ETH", "T1", "T2", "T3", "X10", "X11", "X12"]);
    assert_eq!(settings(&[("SWAPSTREAM_PRODUCER_TOKENS", "T1..T100000")]).unwrap().producer.tokens.len(), 100_000);
    for bad in ["T5..T1", "T1..", "T..T9", "T1..T2000000"] {
        assert_eq!(
            problems(&[("SWAPSTREAM_PRODUCER_TOKENS", bad)]),
            [format!(
                "SWAPSTREAM_PRODUCER_TOKENS: expected symbols or a numbered range like T1..T1000 (at most 1000000), got {bad:?}"
            )]
        );
    }
}
