//! Consumer lag in a timely cluster of two processes: every process reports the
//! lag of the partitions it owns, in its periodic line, at `/metrics` and in its
//! exit summary, and that lag falls as the writer (in process 0) commits, also in
//! process 1, which never sees a commit itself.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use conscope_testkit::*;

const PARTITIONS: i32 = 4;

/// `conscope_consumer_lag` per partition at `/metrics` on `port`; `None` while
/// nothing answers there.
fn scrape_lag(port: u16) -> Option<BTreeMap<i32, i64>> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let (_, body) = reply.split_once("\r\n\r\n")?;
    Some(
        body.lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("conscope_consumer_lag{partition=\"")?;
                let (partition, value) = rest.split_once("\"} ")?;
                Some((partition.parse().ok()?, value.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// The lag values of process `process`'s periodic metrics lines in `stderr`.
fn logged_lags(stderr: &Path, process: usize) -> Vec<i64> {
    std::fs::read_to_string(stderr)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (_, fields) = line.split_once("conscope::metrics: ")?;
            let fields = metrics_fields(fields);
            if fields.get("process").map(String::as_str) != Some(&process.to_string()) {
                return None;
            }
            fields.get("lag")?.parse().ok()
        })
        .collect()
}

/// Whether `values` goes down at some point from a positive value.
fn decreases(values: &[i64]) -> bool {
    values
        .iter()
        .enumerate()
        .any(|(i, before)| *before > 0 && values[i + 1..].iter().any(|after| after < before))
}

struct Cluster {
    children: Vec<KillOnDrop>,
    logs: tempfile::TempDir,
}

impl Cluster {
    /// Starts processes 0 and 1 of a cluster of two workers each, process `i`
    /// with `extra(i)` added to its flags.
    fn start(job: &Job, hosts: &str, extra: impl Fn(usize) -> Vec<String>) -> Cluster {
        let logs = tempfile::tempdir().expect("temp dir");
        let children = (0..2)
            .map(|process| {
                let mut args: Vec<String> = [
                    "-w",
                    "2",
                    "--processes",
                    "2",
                    "--hosts",
                    hosts,
                    "--epoch-ms",
                    "100",
                    "--metrics-interval",
                    "1",
                    "--process",
                ]
                .map(str::to_owned)
                .to_vec();
                args.push(process.to_string());
                args.extend(extra(process));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let child: Child = job
                    .command(&args)
                    .env("CONSCOPE_LOG", "warn,conscope::metrics=info")
                    .stdout(log_file(logs.path(), process, "stdout"))
                    .stderr(log_file(logs.path(), process, "stderr"))
                    .spawn()
                    .expect("spawn cluster process");
                KillOnDrop(child)
            })
            .collect();
        Cluster { children, logs }
    }

    fn log(&self, process: usize, stream: &str) -> PathBuf {
        self.logs.path().join(format!("{process}.{stream}"))
    }

    fn read(&self, process: usize, stream: &str) -> String {
        std::fs::read_to_string(self.log(process, stream)).unwrap_or_default()
    }

    /// Waits for both processes to exit successfully; their stdout.
    fn wait(mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        for process in 0..self.children.len() {
            let status = loop {
                if let Some(status) = self.children[process].0.try_wait().expect("wait") {
                    break status;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster did not end within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                status.success(),
                "process {process} failed: {}",
                self.read(process, "stderr")
            );
        }
        (0..2).map(|process| self.read(process, "stdout")).collect()
    }
}

fn log_file(dir: &Path, process: usize, stream: &str) -> std::fs::File {
    std::fs::File::create(dir.join(format!("{process}.{stream}"))).expect("log file")
}

#[test]
fn every_process_reports_its_partitions_lag_falling_to_zero() {
    require_broker();
    let input = unique("cluster_lag");
    produce_generated(&input, PARTITIONS, 40_000, 5, &[]);
    let job = Job::new("cluster_lag", &input);
    let hosts_file = hosts_file(2);
    let hosts = hosts_file.path().to_str().expect("path").to_owned();

    // A live cluster, paced (few messages in flight per worker) so that the
    // replay spans many commits and scrapes.
    let ports = [free_port(), free_port()];
    let live = Cluster::start(&job, &hosts, |process| {
        vec![
            "--metrics-addr".to_owned(),
            format!("127.0.0.1:{}", ports[process]),
            "--max-batch".to_owned(),
            "100".to_owned(),
            "--max-in-flight".to_owned(),
            "200".to_owned(),
        ]
    });
    // Per process, the total lag of each scrape that showed its partitions.
    let mut totals: [Vec<i64>; 2] = [Vec::new(), Vec::new()];
    let mut last: [BTreeMap<i32, i64>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        for process in 0..2 {
            if let Some(lags) = scrape_lag(ports[process]) {
                if !lags.is_empty() {
                    totals[process].push(lags.values().sum());
                }
                last[process] = lags;
            }
        }
        let owned: BTreeSet<i32> = last.iter().flat_map(|lags| lags.keys().copied()).collect();
        let done = owned == (0..PARTITIONS).collect()
            && last
                .iter()
                .all(|lags| !lags.is_empty() && lags.values().all(|lag| *lag == 0));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the processes never all reported lag 0 for their partitions: {last:?}\n{}\n{}",
            live.read(0, "stderr"),
            live.read(1, "stderr")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Each partition is one process's: process p's workers are 2p and 2p + 1,
    // and partition q belongs to worker q % 4.
    for (process, lags) in last.iter().enumerate() {
        let expected: Vec<i32> = (0..PARTITIONS)
            .filter(|q| (*q as usize % 4) / 2 == process)
            .collect();
        assert_eq!(
            lags.keys().copied().collect::<Vec<_>>(),
            expected,
            "process {process}"
        );
    }
    assert_eq!(
        stored_offsets(&job.database_url, &input),
        high_watermarks(&input),
        "lag 0 before everything was committed"
    );
    // Process 1 never commits itself, yet its lag falls as process 0 commits.
    assert!(
        decreases(&totals[1]),
        "process 1's /metrics lag never fell: {:?}",
        totals[1]
    );
    let logged = logged_lags(&live.log(1, "stderr"), 1);
    assert!(
        decreases(&logged),
        "process 1's metrics lines show no falling lag: {logged:?}"
    );
    eprintln!(
        "process 1: lag at /metrics {:?}, in its metrics lines {logged:?}",
        totals[1]
    );
    drop(live);

    // More input, then a bounded replay: each process's summary ends at lag 0.
    produce_generated(&input, PARTITIONS, 2_000, 6, &[]);
    let ended = Cluster::start(&job, &hosts, |_| vec!["--exit-at-end".to_owned()]);
    let stdouts = ended.wait(Duration::from_secs(180));
    // Process 0's summary counts the whole job's work; process 1's names it.
    assert_summary(&stdouts[0], &[("lag", 0), ("processed", 2_000)]);
    assert_summary(&stdouts[1], &[("lag", 0), ("process", 1)]);
    assert_eq!(stored_offsets(&job.database_url, &input), high_watermarks(&input));
}
