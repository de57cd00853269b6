//! The binary's command line: configuration errors, `config`, `--help`.

use std::time::Duration;

use crate::helpers::run_binary;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn invalid_configuration_exits_2_with_one_line_per_problem() {
    // A value the definition refuses, named with what was expected, and an unknown variable.
    let output = run_binary(
        &["producer"],
        &[("SWAPSTREAM_KAFKA_PARTITIONS", "-3".into()), ("SWAPSTREAM_PRODUCER_TOKNS", "ETH".into())],
        TIMEOUT,
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "invalid configuration:\n\
         \x20 SWAPSTREAM_KAFKA_PARTITIONS: expected an integer from 1 to 10000, got \"-3\"\n\
         \x20 SWAPSTREAM_PRODUCER_TOKNS: unknown variable (see the configuration table in README.md)\n"
    );

    // Values that are each valid but not together, and values only their
    // component can read (the log filter, the token universe): all at once.
    let output = run_binary(
        &["consumer"],
        &[
            ("SWAPSTREAM_WS_PING_INTERVAL_MS", "5000".into()),
            ("SWAPSTREAM_WS_PING_TIMEOUT_MS", "5000".into()),
            ("SWAPSTREAM_HTTP_TLS_KEY", "/nonexistent/key.pem".into()),
            ("SWAPSTREAM_PRODUCER_TOKNS", "ETH".into()),
        ],
        TIMEOUT,
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "invalid configuration:\n\
         \x20 SWAPSTREAM_HTTP_TLS_CERT: required when SWAPSTREAM_HTTP_TLS_KEY is set\n\
         \x20 SWAPSTREAM_PRODUCER_TOKNS: unknown variable (see the configuration table in README.md)\n\
         \x20 SWAPSTREAM_WS_PING_TIMEOUT_MS: must be more than SWAPSTREAM_WS_PING_INTERVAL_MS\n"
    );

    let output = run_binary(
        &["api"],
        &[("SWAPSTREAM_LOG_LEVEL", "loud".into()), ("SWAPSTREAM_PRODUCER_TOKENS", "ETH".into())],
        TIMEOUT,
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        stderr,
        "invalid configuration:\n\
         \x20 SWAPSTREAM_LOG_LEVEL: expected LEVEL[,MODULE=LEVEL...]: unknown level \"loud\" (trace, debug, info, warning, error, critical, off), got \"loud\"\n\
         \x20 SWAPSTREAM_PRODUCER_TOKENS: expected at least two distinct token symbols, comma-separated, got \"ETH\"\n"
    );
}

#[tokio::test]
async fn flags_are_validated_like_variables() {
    let output = run_binary(&["producer", "--rate=fast"], &[], TIMEOUT).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("SWAPSTREAM_PRODUCER_RATE: expected a positive number of events per minute"), "{stderr}");
}

#[tokio::test]
async fn config_prints_the_effective_configuration_with_secrets_redacted() {
    let output = run_binary(
        &["config"],
        &[
            ("SWAPSTREAM_REDIS_PASSWORD", "s3cret-value".into()),
            ("SWAPSTREAM_POSTGRES_URL", "postgres://app:pa55@db:5432/swaps".into()),
            ("SWAPSTREAM_KAFKA_PARTITIONS", "12".into()),
        ],
        TIMEOUT,
    )
    .await;
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("SWAPSTREAM_KAFKA_PARTITIONS=12\n"), "{stdout}");
    assert!(stdout.contains("SWAPSTREAM_REDIS_PASSWORD=<redacted>\n"), "{stdout}");
    assert!(stdout.contains("SWAPSTREAM_POSTGRES_URL=postgres://app:<redacted>@db:5432/swaps\n"), "{stdout}");
    assert!(!stdout.contains("s3cret") && !stdout.contains("pa55"), "{stdout}");
}

#[tokio::test]
async fn producer_without_brokers_says_what_is_missing() {
    let output = run_binary(&["producer"], &[("SWAPSTREAM_LOG_FORMAT", "json".into())], TIMEOUT).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("the producer needs SWAPSTREAM_KAFKA_BROKERS"), "{stderr}");
}

#[tokio::test]
async fn a_roles_help_lists_every_variable_with_its_flag() {
    for role in ["producer", "consumer", "api", "all", "config"] {
        let output = run_binary(&[role, "--help"], &[], TIMEOUT).await;
        assert!(output.status.success());
        let stdout = String::from_utf8(output.stdout).unwrap();
        for variable in swapstream::config::variables() {
            assert!(stdout.contains(&format!("[env: {}", variable.name)), "{role} --help lacks {}", variable.name);
            assert!(stdout.contains(&format!("--{} ", variable.flag)), "{role} --help lacks --{}", variable.flag);
        }
    }
}

#[tokio::test]
async fn a_flag_wins_over_its_variable() {
    let output = run_binary(
        &["config", "--count", "9", "--json", "--kafka-partitions", "12"],
        &[("SWAPSTREAM_PRODUCER_COUNT", "3".into()), ("SWAPSTREAM_KAFKA_PARTITIONS", "2".into())],
        TIMEOUT,
    )
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for line in
        ["SWAPSTREAM_PRODUCER_COUNT=9\n", "SWAPSTREAM_PRODUCER_ENCODING=json\n", "SWAPSTREAM_KAFKA_PARTITIONS=12\n"]
    {
        assert!(stdout.contains(line), "{line}: {stdout}");
    }
}

#[tokio::test]
async fn help_explains_every_role() {
    let output = run_binary(&["--help"], &[], TIMEOUT).await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    for role in ["producer", "consumer", "api", "all", "config"] {
        assert!(stdout.contains(&format!("  {role} ")), "--help lacks {role}: {stdout}");
    }
}
