//! The operations files (Grafana dashboard, Prometheus alert rules, KEDA
//! ScaledObjects) name only metrics a real consumer exports; its log lines
//! carry what they are about and follow the per-module level filter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::helpers::{self, delivered, logged_port, require_broker, wait_checkpointed, Child, Names};
use crate::support::http;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Metric names in a PromQL expression: identifiers starting `swapstream_`
/// or `process_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut start = 0;
    while start < bytes.len() {
        if word(bytes[start]) && (start == 0 || !word(bytes[start - 1])) {
            let end = (start..bytes.len()).find(|&i| !word(bytes[i])).unwrap_or(bytes.len());
            let name = &expr[start..end];
            if name.starts_with("swapstream_") || name.starts_with("process_") {
                names.push(name.to_owned());
            }
            start = end;
        } else {
            start += 1;
        }
    }
    names
}

fn json_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => json_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| json_exprs(item, out)),
        _ => {}
    }
}

/// Every PromQL expression of the operations files, by file.
fn expressions() -> BTreeMap<&'static str, Vec<String>> {
    let read = |path: &str| {
        std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    };
    let mut found = BTreeMap::new();

    let dashboard = "deploy/monitoring/grafana/dashboards/swapstream.json";
    let mut exprs = Vec::new();
    json_exprs(&serde_json::from_str(&read(dashboard)).expect("dashboard JSON"), &mut exprs);
    found.insert(dashboard, exprs);

    let alerts = "deploy/monitoring/alerts.yaml";
    let rules: serde_yaml::Value = serde_yaml::from_str(&read(alerts)).expect("alert rules YAML");
    let exprs = rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").iter())
        .map(|rule| rule["expr"].as_str().expect("every rule has an expr").to_owned())
        .collect();
    found.insert(alerts, exprs);

    let keda = "deploy/overlays/keda/scaledobjects.yaml";
    let text = read(keda);
    let mut exprs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let object = serde_yaml::Value::deserialize(document).expect("ScaledObject YAML");
        for trigger in object["spec"]["triggers"].as_sequence().into_iter().flatten() {
            if let Some(query) = trigger["metadata"]["query"].as_str() {
                exprs.push(query.to_owned());
            }
        }
    }
    found.insert(keda, exprs);
    found
}

/// `# TYPE name type` of a scrape: name -> type.
fn families(scrape: &str) -> BTreeMap<String, String> {
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
        .collect()
}

/// Whether `name` is in the scrape, a histogram's series counting as it.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|base| families.get(base).is_some_and(|k| k == "histogram"))
        })
}

#[test]
fn metric_names_are_found_in_promql() {
    let expr = "sum by (le) (rate(swapstream_x_bucket{job=\"a\"}[5m])) / process_max_fds and on (instance) up";
    assert_eq!(metric_names(expr), ["swapstream_x_bucket", "process_max_fds"]);
    let families = families("# TYPE swapstream_x histogram\nswapstream_x_bucket{le=\"1\"} 0\n");
    assert!(exported("swapstream_x_bucket", &families) && exported("swapstream_x", &families));
    assert!(!exported("swapstream_y_count", &families));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_alerts_and_scaled_objects_use_only_exported_metrics_and_logs_say_what_they_concern() {
    let brokers = require_broker();
    let names = Names::new("it-monitoring");
    let truth = helpers::produce(&brokers, &names, 40, &helpers::stream_vars("ETH,USDC", "max", 0)).await;
    // One undecodable message, for the dead-letter log line.
    let topic = format!("{}ETH", names.topic_prefix);
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().unwrap();
    let delivery = producer
        .send(FutureRecord::to(&topic).partition(0).key("k").payload("{\"tx_hash\": "), Duration::from_secs(10))
        .await
        .expect("bad message sent");

    let mut vars = names.vars(&brokers);
    vars.push(("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0".into()));
    // Debug for the checkpoint writer's module only, not for its parent.
    vars.push(("SWAPSTREAM_LOG_LEVEL", "info,swapstream::actors::kafka_reader::committer=debug".into()));
    let mut consumer = Child::spawn(&names.schema, &["consumer"], &vars);
    wait_checkpointed(&names, delivered(&truth) + 1, Duration::from_secs(90)).await;
    let port = logged_port(&consumer).await;
    let answer = http::request(port, "GET", "/v1/tokens", &[("X-Request-Id", "it-monitoring-1")]).await;
    assert_eq!(answer.status, 200);

    let used: BTreeMap<String, BTreeSet<&str>> =
        expressions().into_iter().fold(BTreeMap::new(), |mut used, (file, exprs)| {
            assert!(!exprs.is_empty(), "{file}: no PromQL found");
            for name in exprs.iter().flat_map(|e| metric_names(e)) {
                used.entry(name).or_default().insert(file);
            }
            used
        });
    assert!(used.len() >= 15, "too few metrics found in the operations files: {used:?}");
    // Labelled series appear once used: lag comes from librdkafka statistics
    // (every 5 s), so the scrape is retried until nothing is missing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, scrape) = http::get(port, "/metrics").await;
        assert_eq!(status, 200);
        let families = families(&scrape);
        let missing: Vec<_> = used.iter().filter(|(name, _)| !exported(name, &families)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not in the consumer's scrape: {missing:?}\n{scrape}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let log = consumer.log_text();
    let lines: Vec<serde_json::Value> = log.lines().filter_map(|line| serde_json::from_str(line).ok()).collect();
    assert!(!lines.is_empty(), "no JSON log lines: {log}");
    for line in &lines {
        let level = line["level"].as_str().unwrap_or_default();
        assert!(["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&level), "level {level:?} in {line}");
    }
    let dead = lines.iter().find(|l| l["msg"] == "message dead-lettered").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(dead["topic"], topic.as_str(), "{dead}");
    assert_eq!(dead["partition"], delivery.partition, "{dead}");
    assert_eq!(dead["offset"], delivery.offset, "{dead}");
    assert_eq!(dead["reason"], "malformed_json", "{dead}");
    assert_eq!(dead["level"], "WARN", "{dead}");
    let checkpoint = lines.iter().find(|l| l["msg"] == "checkpoint").unwrap_or_else(|| panic!("{log}"));
    assert_eq!(checkpoint["level"], "DEBUG", "{checkpoint}");
    let batch = lines.iter().find(|l| l["msg"] == "batch");
    assert!(batch.is_none(), "swapstream::actors::kafka_reader is at info: {batch:?}");
    let request = lines.iter().find(|l| l["msg"] == "request" && l["path"] == "/v1/tokens").expect("access log line");
    assert_eq!(request["request_id"], "it-monitoring-1", "{request}");
    assert_eq!(request["level"], "INFO", "{request}");

    let status = consumer.terminate(Duration::from_secs(25)).await;
    assert!(status.success(), "{status}");
}
