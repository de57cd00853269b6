//! Running the service's binary: a clean environment of the run's own
//! names, child processes with their logs under test-artifacts/, and the
//! ports a process logs once it listens.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Token universe of the benchmark streams.
pub const TOKENS: &str = "ETH,BTC,SOL,USDC,USDT,TON";

/// Removes the caller's `SWAPSTREAM_*` variables, so only the run's own count.
pub fn clear_env(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("SWAPSTREAM_")) {
        command.env_remove(name);
    }
    command
}

/// A producer or consumer of its own topics (`<id>.`), group, schema and
/// Redis prefix, with `partitions` partitions a topic.
pub fn stream_env<'a>(command: &'a mut Command, brokers: &str, id: &str, partitions: i32) -> &'a mut Command {
    clear_env(command)
        .env("SWAPSTREAM_KAFKA_BROKERS", brokers)
        .env("SWAPSTREAM_KAFKA_TOPIC_PREFIX", format!("{id}."))
        .env("SWAPSTREAM_KAFKA_PARTITIONS", partitions.to_string())
        .env("SWAPSTREAM_KAFKA_GROUP_ID", format!("{id}-group"))
        .env("SWAPSTREAM_KAFKA_DLQ_TOPIC", format!("{id}-dlq"))
        .env("SWAPSTREAM_POSTGRES_SCHEMA", id)
        .env("SWAPSTREAM_REDIS_KEY_PREFIX", id)
        .env("SWAPSTREAM_PRODUCER_TOKENS", TOKENS)
        .env("SWAPSTREAM_LOG_FORMAT", "json")
        .env("SWAPSTREAM_HTTP_ADDR", "127.0.0.1:0")
}

/// The number a process logged under `field` (`"http_port"`,
/// `"health_port"`...) in its JSON log `text`, once it has.
pub fn logged_number(text: &str, field: &str) -> Option<u16> {
    let needle = format!("\"{field}\":");
    let at = text.find(&needle)? + needle.len();
    text[at..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().ok()
}

/// The HTTP port a process logged in its log file, once it has.
pub fn logged_port(log: &Path) -> Option<u16> {
    logged_number(&std::fs::read_to_string(log).ok()?, "http_port")
}

/// Waits (blocking) for [`logged_port`], failing after `timeout`.
pub fn wait_for_port(log: &Path, timeout: Duration) -> u16 {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(port) = logged_port(log) {
            return port;
        }
        assert!(Instant::now() < deadline, "no http_port logged in {}", log.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Open files for this process and its children: 65,536 when allowed (as
/// root), else the hard limit. A WebSocket session takes one in the server
/// and one in the client.
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on this process; children inherit it.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        let wanted = libc::rlimit { rlim_cur: 65_536, rlim_max: limit.rlim_max.max(65_536) };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
            return wanted.rlim_cur;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_cur
}

/// The service's binary, as cargo built it for this test or bench.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_swapstream"))
}

/// Where child process logs go (kept for inspection after a failure).
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating test-artifacts/");
    dir
}

/// The binary with exactly these `SWAPSTREAM_*` variables (the test
/// process's own are removed).
pub fn command(args: &[&str], vars: &[(&str, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(binary());
    command.args(args).kill_on_drop(true);
    clear_env(command.as_std_mut());
    for (name, value) in vars {
        command.env(name, value);
    }
    command
}

/// Runs the binary and waits for it, failing after `timeout`.
pub async fn run_binary(args: &[&str], vars: &[(&str, String)], timeout: Duration) -> Output {
    tokio::time::timeout(timeout, command(args, vars).output())
        .await
        .unwrap_or_else(|_| panic!("swapstream {args:?} did not finish within {timeout:?}"))
        .expect("running swapstream")
}

/// A child process whose output goes to a log file under test-artifacts/.
pub struct Child {
    pub child: tokio::process::Child,
    pub log: PathBuf,
    /// Where this process's part of the (shared, appended) log begins.
    log_start: usize,
}

impl Child {
    pub fn spawn(name: &str, args: &[&str], vars: &[(&str, String)]) -> Child {
        Child::spawn_command(name, command(args, vars))
    }

    /// [`Child::spawn`] with the open-file limit (soft and hard) at `files`.
    pub fn spawn_with_file_limit(name: &str, args: &[&str], vars: &[(&str, String)], files: u64) -> Child {
        let mut command = command(args, vars);
        // SAFETY: only setrlimit between fork and exec, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let limit = libc::rlimit { rlim_cur: files, rlim_max: files };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        Child::spawn_command(name, command)
    }

    fn spawn_command(name: &str, mut command: tokio::process::Command) -> Child {
        let log = artifacts().join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log file");
        let log_start = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
        let child = command
            .stdout(Stdio::from(file.try_clone().expect("log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawning swapstream");
        Child { child, log, log_start }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running child") as i32
    }

    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaping");
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.pid(), libc::SIGTERM) };
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {timeout:?} of SIGTERM; log: {}", self.log.display()))
            .expect("waiting")
    }

    /// What this process logged (earlier processes may share the file).
    pub fn log_text(&self) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(self.log_start..).unwrap_or_default()).into_owned()
    }
}

/// A failing test shows the end of each of its processes' logs (the files
/// under test-artifacts/ are gone with a CI machine).
impl Drop for Child {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- last lines of {}:", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Runs a command to its end, panicking with its output otherwise.
pub fn run_to_end(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Pins process `pid` (0: this one) and the threads it starts later to `cpu`.
pub fn pin_to(pid: libc::pid_t, cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, and the call reads it.
    let done = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    assert_eq!(done, 0, "cannot pin to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// `binary` as a command: on CPU `cpu` alone (through `taskset`, so every
/// thread it starts stays there) when one is given.
pub fn on_cpu(binary: &str, cpu: Option<usize>) -> Command {
    let Some(cpu) = cpu else { return Command::new(binary) };
    let mut taskset = Command::new("taskset");
    taskset.args(["-c", &cpu.to_string(), binary]);
    taskset
}
