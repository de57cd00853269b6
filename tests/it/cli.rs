//! The binary's command line: configuration errors, `config`, `--help`.

use std::time::Duration;

use crate::helpers::run_binary;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn invalid_configuration_exits_2_with_one_line_per_problem() {
    let output = run_binary(
        &["producer"],
        &[
            ("SWAPSTREAM_PRODUCER_RATE", "fast".into()),
            ("SWAPSTREAM_KAFKA_PARTITIONS", "-3".into()),
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
         \x20 SWAPSTREAM_KAFKA_PARTITIONS: expected an integer from 1 to 10000, got \"-3\"\n\
         \x20 SWAPSTREAM_PRODUCER_RATE: expected a positive number of events per minute, or \"max\", got \"fast\"\n\
         \x20 SWAPSTREAM_PRODUCER_TOKNS: unknown variable (see the configuration table in README.md)\n"
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
async fn help_explains_every_role() {
    let output = run_binary(&["--help"], &[], TIMEOUT).await;
    let stdout = String::from_utf8(output.stdout).unwrap();
    for role in ["producer", "consumer", "api", "all", "config"] {
        assert!(stdout.contains(&format!("  {role} ")), "--help lacks {role}: {stdout}");
    }
}
