//! Running the `conscope` binary: the command with the test's broker, a job's
//! topics and database, `conscope produce`, children killed with the test, and
//! the ports and hosts file of a timely cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::kafka::brokers;
use crate::pg::{fresh_database, query_strings};
use crate::unique;

/// The `conscope` binary cargo built for the running integration test: cargo
/// and nextest name it in `CARGO_BIN_EXE_conscope` at run time; otherwise it
/// lies next to the test binary's `deps/` directory, where cargo puts it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_conscope") {
        return PathBuf::from(path);
    }
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in target/<profile>/deps");
    profile.join("conscope")
}

pub fn conscope() -> Command {
    let mut command = Command::new(binary());
    command
        .env("CONSCOPE_BROKERS", brokers())
        .env(
            "CONSCOPE_LOG",
            std::env::var("CONSCOPE_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .env_remove("DATABASE_URL");
    command
}

/// Topics and database of one job.
#[derive(Clone, Debug)]
pub struct Job {
    pub input: String,
    pub alerts: String,
    pub dlq: String,
    pub database_url: String,
}

impl Job {
    /// New output topics and database, reading `input`.
    pub fn new(name: &str, input: &str) -> Job {
        let id = unique(name);
        Job {
            input: input.to_owned(),
            alerts: format!("{id}.alerts"),
            dlq: format!("{id}.dlq"),
            database_url: fresh_database(&id),
        }
    }

    pub fn command(&self, extra: &[&str]) -> Command {
        let mut command = conscope();
        command.args([
            "run",
            "--input-topic",
            &self.input,
            "--alerts-topic",
            &self.alerts,
            "--dlq-topic",
            &self.dlq,
            "--database-url",
            &self.database_url,
        ]);
        command.args(extra);
        command
    }

    /// Runs `conscope run --exit-at-end` to completion and checks it succeeded.
    /// Runs with `args` and fault point `point` armed for its `after`-th time
    /// (`src/fail.rs`); panics unless it fired.
    pub fn crash_at(&self, args: &[&str], point: &str, after: &str) -> Output {
        let output = self
            .command(args)
            .env("CONSCOPE_FAIL_POINT", point)
            .env("CONSCOPE_FAIL_AFTER", after)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(&format!("fail point {point} reached")),
            "{point}: the fault point did not fire (exit {:?}): {stderr}",
            output.status
        );
        output
    }

    pub fn run_to_end(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(extra);
        succeeded(self.command(&args).output().expect("run conscope"))
    }

    /// Runs `conscope run --exit-at-end`, killing it and failing the test when
    /// it has not ended within `limit`; checks it succeeded. Returns stdout.
    pub fn run_to_end_within(&self, limit: Duration, extra: &[&str]) -> String {
        let dir = tempfile::tempdir().expect("temp dir");
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn conscope");
        let status = exit_within(&mut child, limit);
        let stdout = std::fs::read_to_string(&out).unwrap_or_default();
        let stderr = std::fs::read_to_string(&err).unwrap_or_default();
        match status {
            None => panic!("conscope run --exit-at-end did not end within {limit:?}\n{stdout}\n{stderr}"),
            Some(status) => assert!(status.success(), "conscope run failed: {stdout}\n{stderr}"),
        }
        stdout
    }

    /// Applies the migrations to the job's database, as the job would at start.
    pub fn migrate(&self) {
        let output = conscope()
            .args(["migrate", "--database-url", &self.database_url])
            .output()
            .expect("run conscope migrate");
        assert!(
            output.status.success(),
            "conscope migrate failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// This job's id (the `conscope.job` header of what it publishes); the
    /// database must be migrated.
    pub fn job_id(&self) -> String {
        query_strings(&self.database_url, "SELECT job_id::text FROM job_progress")
            .pop()
            .expect("job_progress row")
    }

    pub fn spawn(&self, extra: &[&str]) -> Child {
        self.command(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn conscope")
    }
}

/// `output` of a `conscope run` that must have succeeded.
fn succeeded(output: Output) -> Output {
    assert!(
        output.status.success(),
        "conscope run failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Sends SIGTERM (what systemd and Kubernetes send) and waits up to `limit`
/// for the exit: its status, or `None` if it is still running.
pub fn terminate(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Waits for `child` to exit; kills it and returns `None` when it has not
/// within `limit`.
pub fn exit_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `condition` holds, or panics after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `conscope produce` into `topic` (created with `partitions`).
pub fn produce_generated(topic: &str, partitions: i32, count: u64, seed: u64, extra: &[&str]) {
    produce_generated_at(&brokers(), topic, partitions, count, seed, extra);
}

/// `produce_generated` on the broker at `brokers` (a test's own broker).
pub fn produce_generated_at(
    brokers: &str,
    topic: &str,
    partitions: i32,
    count: u64,
    seed: u64,
    extra: &[&str],
) {
    let output = conscope()
        .env("CONSCOPE_BROKERS", brokers)
        .args([
            "produce",
            "--topic",
            topic,
            "--partitions",
            &partitions.to_string(),
            "--count",
            &count.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .args(extra)
        .output()
        .expect("run conscope produce");
    assert!(
        output.status.success(),
        "conscope produce failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `conscope run` flags for small transactions, so a run commits often and is
/// still mid-run when a fault hits: against a fast broker the writer otherwise
/// merges a run's epochs into a couple of commits and a fault point late in the
/// commit is never reached. Each commit with rows to hand over is split over
/// the writer's connections (as many as `-w`), so the faults also hit commits
/// with prepared parts.
pub const SMALL_TRANSACTIONS: [&str; 10] = [
    "--epoch-ms",
    "10",
    "--max-batch",
    "200",
    "--max-in-flight",
    "500",
    "--max-commit-records",
    "200",
    "--writer-split-rows",
    "1",
];

/// Kills the child when dropped, so a failing test never leaves a job running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP port free on 127.0.0.1 now (for timely's hosts file, --metrics-addr).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A timely hosts file for `processes` processes on 127.0.0.1, each on a free port.
pub fn hosts_file(processes: usize) -> tempfile::NamedTempFile {
    use std::io::Write;
    let mut file = tempfile::NamedTempFile::new().expect("hosts file");
    for _ in 0..processes {
        writeln!(file, "127.0.0.1:{}", free_port()).expect("write hosts");
    }
    file
}
