//! `scripts/services` on a machine that is set up wrong: each problem stops
//! it with one line that says what is wrong and how to fix it. Every case
//! runs on ports, folders and a lock of its own, so the services the other
//! tests use are not touched.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A folder of executables: `fakes` written as shell scripts, and a link to
/// every program on this machine's PATH except those named in `hidden`.
fn bin_dir(root: &Path, fakes: &[(&str, &str)], hidden: &[&str]) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let link = bin.join(&name);
            if !hidden.iter().any(|h| name == **h) && !link.exists() {
                let _ = std::os::unix::fs::symlink(entry.path(), link);
            }
        }
    }
    for (name, body) in fakes {
        let path = bin.join(name);
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

struct Outcome {
    success: bool,
    stderr: String,
}

impl Outcome {
    /// The one error line; it must be the last thing said.
    fn error_line(&self) -> &str {
        let errors: Vec<&str> = self.stderr.lines().filter(|l| l.contains("error:")).collect();
        assert_eq!(errors.len(), 1, "exactly one error line expected:\n{}", self.stderr);
        assert_eq!(self.stderr.lines().last(), Some(errors[0]), "the error line comes last:\n{}", self.stderr);
        errors[0]
    }
}

/// `scripts/services up kafka` in a private state folder on free ports.
fn up_kafka(state: &Path, path: Option<&Path>, extra: &[(&str, String)]) -> Outcome {
    let mut command = Command::new(script());
    command
        .args(["up", "kafka"])
        .env("SERVICES_LOCAL_DIR", state)
        .env("SWAPSTREAM_BROKER_PORT", free_port().to_string())
        .env("SERVICES_KAFKA_CONTROLLER_PORT", free_port().to_string())
        .env("SERVICES_TIMEOUT", "20");
    if let Some(path) = path {
        command.env("PATH", path);
    }
    for (name, value) in extra {
        command.env(name, value);
    }
    let output = command.output().expect("running scripts/services");
    Outcome { success: output.status.success(), stderr: String::from_utf8_lossy(&output.stderr).into_owned() }
}

#[test]
fn a_port_taken_by_something_else_is_named_with_the_fix() {
    let state = tempfile::tempdir().unwrap();
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let outcome = up_kafka(state.path(), None, &[("SWAPSTREAM_BROKER_PORT", port.to_string())]);
    assert!(!outcome.success);
    let line = outcome.error_line();
    assert!(line.contains(&format!("127.0.0.1:{port} is taken by something that is not a Kafka broker")), "{line}");
    assert!(line.contains("SWAPSTREAM_BROKER_PORT"), "says how to fix it: {line}");
}

#[test]
fn a_java_older_than_17_is_refused_with_the_fix() {
    let state = tempfile::tempdir().unwrap();
    let java = "echo '    java.specification.version = 11' >&2";
    let bin = bin_dir(state.path(), &[("java", java)], &[]);
    let outcome = up_kafka(state.path(), Some(&bin), &[]);
    assert!(!outcome.success);
    let line = outcome.error_line();
    assert!(line.contains("needs Java 17 or later, found '11'") && line.contains("openjdk-17"), "{line}");
}

#[test]
fn no_java_and_no_package_repository_is_one_clear_line() {
    let state = tempfile::tempdir().unwrap();
    let apt = "echo 'E: Unable to locate package openjdk-17-jre-headless' >&2; exit 100";
    let bin = bin_dir(state.path(), &[("apt-get", apt)], &["java"]);
    let outcome = up_kafka(state.path(), Some(&bin), &[]);
    assert!(!outcome.success);
    let line = outcome.error_line();
    assert!(line.contains("apt-get") && line.contains("openjdk-17-jre-headless") && line.contains("by hand"), "{line}");
}

#[test]
fn maven_without_access_to_its_repository_is_one_clear_line() {
    let state = tempfile::tempdir().unwrap();
    let mvn = "echo '[ERROR] Could not transfer artifact org.apache.kafka:kafka_2.13:pom' ; exit 1";
    let bin = bin_dir(state.path(), &[("mvn", mvn)], &[]);
    let outcome = up_kafka(state.path(), Some(&bin), &[]);
    assert!(!outcome.success);
    let line = outcome.error_line();
    assert!(line.contains("Maven could not resolve Apache Kafka") && line.contains("Maven repository"), "{line}");
    assert!(
        !state.path().join("kafka").read_dir().unwrap().flatten().any(|e| e.file_name() == "libs"),
        "no half install"
    );
}

#[test]
fn a_broker_that_does_not_answer_in_time_is_stopped_and_named() {
    let state = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let outcome = up_kafka(
        state.path(),
        None,
        &[
            ("SERVICES_KAFKA_HOME", crate::support::kafka::installed_kafka().display().to_string()),
            ("SWAPSTREAM_BROKER_PORT", broker_port.to_string()),
            // Apache Kafka takes seconds to start: one is too short.
            ("SERVICES_TIMEOUT", "1".into()),
        ],
    );
    assert!(!outcome.success);
    let line = outcome.error_line();
    assert!(
        line.contains("did not answer") && line.contains("was stopped") && line.contains("SERVICES_TIMEOUT"),
        "{line}"
    );
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker_port)).is_err(), "the slow broker is not left running");
    let pid_file = state.path().join("kafka/broker/kafka.pid");
    assert!(!pid_file.exists(), "no pid file of a stopped broker");
}
