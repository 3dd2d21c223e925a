//! The services a fault scenario may break, all of its own so that breaking
//! them disturbs no other test: a throwaway PostgreSQL cluster (initdb + pg_ctl
//! in a temporary directory, on a port of its own) and a broker of its own
//! (scripts/stack-up.sh on another port). Also the job processes: spawned with
//! their output in files, waited for with their peak RSS sampled.
//!
//! Touches only what it creates: its data directories, its ports, its children.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs `program` as user postgres when this process is root (the server
/// refuses to run as root), as this user otherwise.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// Whether this process runs as root: /proc/self belongs to its effective user.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// The newest installed PostgreSQL's bin directory (Debian layout).
fn pg_bin() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql (scripts/stack-up.sh)")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let version = versions.pop().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"))
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A PostgreSQL cluster of its own, stopped and deleted when dropped.
pub struct ThrowawayPostgres {
    pub port: u16,
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl ThrowawayPostgres {
    pub fn start(port: u16) -> ThrowawayPostgres {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        // The server runs as postgres: let it into the directory and own its data.
        run(
            Command::new("chmod").arg("755").arg(dir.path()),
            "chmod the cluster's directory",
        );
        if is_root() {
            run(
                Command::new("chown").arg("-R").arg("postgres:").arg(dir.path()),
                "chown the cluster's directory",
            );
        }
        let bin = pg_bin();
        run(
            as_postgres(&bin.join("initdb"))
                .args(["-U", "postgres", "-A", "trust", "--no-sync", "-D"])
                .arg(&data),
            "initdb",
        );
        let cluster = ThrowawayPostgres { port, dir, bin };
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c max_prepared_transactions=8 -c unix_socket_directories={}",
            cluster.dir.path().display()
        );
        run(
            as_postgres(&cluster.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-D"])
                .arg(&data)
                .args(["-l"])
                .arg(cluster.dir.path().join("server.log"))
                .args(["-o", &options, "start"]),
            "pg_ctl start",
        );
        cluster
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }

    /// `pg_ctl restart -m immediate`: every backend killed, crash recovery at start.
    pub fn restart_immediate(&self) {
        run(
            as_postgres(&self.bin.join("pg_ctl"))
                .args(["-w", "-t", "60", "-m", "immediate", "-D"])
                .arg(self.dir.path().join("data"))
                .args(["-l"])
                .arg(self.dir.path().join("server.log"))
                .arg("restart"),
            "pg_ctl restart -m immediate",
        );
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.bin.join("pg_ctl"))
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.dir.path().join("data"))
            .arg("stop")
            .output();
    }
}

/// A broker of its own on `port` (scripts/stack-up.sh), stopped and wiped when dropped.
pub struct OwnBroker {
    pub port: u16,
    stack_dir: tempfile::TempDir,
}

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts")
}

impl OwnBroker {
    pub fn start(port: u16) -> OwnBroker {
        let broker = OwnBroker {
            port,
            stack_dir: tempfile::tempdir().expect("temp dir"),
        };
        broker.up();
        broker
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn script(&self, name: &str) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(scripts().join(name))
            .env("CONSCOPE_BROKER_PORT", self.port.to_string())
            .env("CONSCOPE_STACK_DIR", self.stack_dir.path());
        command
    }

    /// Starts the broker (again), waiting until it answers.
    pub fn up(&self) {
        run(
            &mut self.script("stack-up.sh"),
            "scripts/stack-up.sh (own broker)",
        );
    }

    /// `kill -9` of the broker's JVM.
    pub fn kill(&self) {
        let pid_file = self.stack_dir.path().join(format!("kafka-{}/pid", self.port));
        let pid = std::fs::read_to_string(&pid_file).expect("the broker's pid file");
        run(
            Command::new("kill").args(["-KILL", pid.trim()]),
            "kill -9 the broker",
        );
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while proc.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self
            .script("stack-down.sh")
            .args(["--broker-only", "--wipe"])
            .output();
    }
}

/// A running job process, its output in files of `dir`.
pub struct Process {
    child: Option<Child>,
    pub stderr: PathBuf,
    /// The highest VmHWM seen, in KiB.
    pub peak_rss_kib: u64,
}

impl Process {
    pub fn spawn(mut command: Command, dir: &Path, name: &str) -> Process {
        let stdout = dir.join(format!("{name}.out"));
        let stderr = dir.join(format!("{name}.err"));
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("spawn conscope");
        Process {
            child: Some(child),
            stderr,
            peak_rss_kib: 0,
        }
    }

    /// Samples VmHWM; its exit status once it has exited.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        if let Some(kib) = vm_hwm_kib(child.id()) {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
        child.try_wait().expect("try_wait")
    }

    /// Waits for the exit up to `limit`; None when it is still running.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `limit` for a successful exit; an error naming `what` otherwise.
    pub fn end_well(&mut self, limit: Duration, what: &str) -> Result<(), String> {
        match self.wait_for(limit) {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("{what} failed ({status}): {}", self.stderr_tail())),
            None => Err(format!(
                "{what} did not end within {limit:?}: {}",
                self.stderr_tail()
            )),
        }
    }

    /// SIGKILL, then reaped.
    pub fn kill(&mut self) {
        self.poll();
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last lines of its stderr, for a report.
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The peak resident set size of `pid` so far (VmHWM), in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
