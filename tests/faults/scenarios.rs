//! The eight fault scenarios and the suite that runs them one at a time, each
//! on its own database (and output topics) reading the same produced topic,
//! then compares each with the uninterrupted reference run (`common::compare`)
//! and prints one table.
//!
//! Every scenario that acts "mid-run" uses small transactions (`SLOW`), so the
//! job commits often and is still far from the end when the fault hits.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_postgres::NoTls;

use crate::services::{OwnBroker, Process, ThrowawayPostgres};
use conscope_testkit::compare::{compare, Diff, Outputs};
use conscope_testkit::{
    assert_summaries_match_listings, brokers, commit_no, conscope, high_watermarks, high_watermarks_at,
    hosts_file, pg_base, produce_generated, produce_generated_at, require_broker, runtime, try_execute,
    unique, Job, JobRole, SMALL_TRANSACTIONS,
};

/// How big a suite is.
pub struct Size {
    pub name: &'static str,
    /// Messages in the replayed topic.
    pub messages: u64,
    /// SIGKILLs of scenario 1.
    pub kills: usize,
    /// A kill comes up to this long after the run's first commit.
    pub max_kill_delay: Duration,
    pub pg_restarts: usize,
    /// How long scenario 5 blocks the writes, and scenario 8 revokes INSERT.
    pub lock: Duration,
    /// `--max-in-flight` of scenario 5: what the job may hold while blocked.
    pub in_flight: u64,
    pub own_pg_port: u16,
    pub own_broker_port: u16,
}

const SLOW: [&str; 10] = SMALL_TRANSACTIONS;

const WORKERS: [&str; 2] = ["-w", "2"];

/// Peak RSS allowed while writes are blocked: reading stops at `--max-in-flight`
/// uncommitted messages, so blocked writes must not grow the job beyond what it
/// needs running (the benchmark's peak for 1M messages unblocked at -w 2 is 321 MiB).
const BLOCKED_RSS_BOUND_MIB: u64 = 256;

/// Longest a job may take to reach the end of the topic once nothing stops it.
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// The seed of the produced topic.
const TOPIC_SEED: u64 = 9;

/// What one scenario found.
pub struct Outcome {
    name: &'static str,
    /// What was injected ("20 kills").
    injected: String,
    diff: Diff,
    peak_rss_kib: u64,
    took: Duration,
    /// Anything that went wrong besides the comparison.
    problems: Vec<String>,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.problems.is_empty() && self.diff.is_exact()
    }

    fn verdict(&self) -> &'static str {
        if self.passed() {
            "PASS"
        } else {
            "FAIL"
        }
    }
}

/// A job's topics, database, and the broker it talks to.
struct Target {
    job: Job,
    brokers: String,
}

impl Target {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = self.job.command(args);
        command.env("CONSCOPE_BROKERS", &self.brokers);
        command
    }

    /// `conscope run --exit-at-end -w 2 [args]`, spawned.
    fn spawn(&self, dir: &std::path::Path, name: &str, args: &[&str]) -> Process {
        let mut all = vec!["--exit-at-end"];
        all.extend_from_slice(&WORKERS);
        all.extend_from_slice(args);
        Process::spawn(self.command(&all), dir, name)
    }

    /// `conscope run -w 2 [args]` as a service (no `--exit-at-end`), spawned: it
    /// never ends by itself, so a kill or a second instance always meets it
    /// running, however fast it has read the topic.
    fn spawn_live(&self, dir: &std::path::Path, name: &str, args: &[&str]) -> Process {
        let mut all = WORKERS.to_vec();
        all.extend_from_slice(args);
        Process::spawn(self.command(&all), dir, name)
    }

    fn commit_no(&self) -> Option<i64> {
        commit_no(&self.job.database_url)
    }
}

/// Waits until the job commits past `above`; an error when it exits first or
/// `limit` passes.
fn wait_for_commit(
    target: &Target,
    process: &mut Process,
    above: i64,
    limit: Duration,
) -> Result<i64, String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(now) = target.commit_no().filter(|now| *now > above) {
            return Ok(now);
        }
        if let Some(status) = process.poll() {
            return Err(format!(
                "the job exited ({status}) before committing past {above}: {}",
                process.stderr_tail()
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!("no commit past {above} within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rule of the replay: (event, section, max price).
type Rule = (String, Option<String>, String);

/// The suite: the produced topic, its rules, the reference outputs.
pub struct Suite {
    size: Size,
    input: String,
    rules: Vec<Rule>,
    reference: Outputs,
    dir: PathBuf,
    rng: StdRng,
    outcomes: Vec<Outcome>,
}

impl Suite {
    /// Runs every scenario, prints the table, fails when any scenario failed.
    pub fn run(size: Size) {
        require_broker();
        let seed = std::env::var("CONSCOPE_FAULTS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20_261_203);
        let dir = std::env::temp_dir().join(unique("faults"));
        std::fs::create_dir_all(&dir).expect("log dir");
        let input = unique(&format!("faults_{}", size.name));
        progress(&format!(
            "{} suite: {} messages into {input}, kill seed {seed}, logs in {}",
            size.name,
            size.messages,
            dir.display()
        ));
        produce_generated(&input, 4, size.messages, TOPIC_SEED, &[]);
        let rules = rules_for_topic();
        let mut suite = Suite {
            size,
            input,
            rules,
            reference: Outputs::default(),
            dir,
            rng: StdRng::seed_from_u64(seed),
            outcomes: Vec::new(),
        };
        let started = Instant::now();
        let reference = suite.target("reference", &pg_base(), &brokers());
        let mut run = reference.spawn(&suite.dir, "reference", &[]);
        let status = run.wait_for(RUN_LIMIT);
        assert!(
            status.is_some_and(|s| s.success()),
            "the reference run failed: {}",
            run.stderr_tail()
        );
        suite.reference = Outputs::collect(&reference.job, &reference.brokers);
        suite.reference.assert_meaningful();
        assert_summaries_match_listings(&reference.job.database_url);
        let alerts = &suite.reference.tables["price_alerts"];
        for kind in ["listing_drop", "event_low", "rule_match"] {
            assert!(
                alerts.iter().any(|row| row.contains(&format!("|{kind}|"))),
                "the reference run raised no {kind} alert"
            );
        }
        assert!(
            suite.reference.tables["listings"]
                .iter()
                .any(|row| row.contains("|f|20")),
            "the replay has no sold listing"
        );
        progress(&format!(
            "reference: {} rows, {} alerts, {} dead letters in {:?} (peak RSS {} MiB)",
            suite.reference.tables.values().map(Vec::len).sum::<usize>(),
            suite.reference.alerts.len(),
            suite.reference.dead_letters.len(),
            started.elapsed(),
            run.peak_rss_kib / 1024
        ));

        type Scenario = fn(&mut Suite, &mut Outcome) -> Result<(), String>;
        let scenarios: [(&'static str, Scenario); 8] = [
            ("1 sigkill", Suite::sigkills),
            ("2 fault points", Suite::fault_points),
            ("3 postgres restart", Suite::postgres_restarts),
            ("4 broker kill", Suite::broker_kill),
            ("5 blocked writes", Suite::blocked_writes),
            ("6 second instance", Suite::second_instance),
            ("7 cluster kill", Suite::cluster_kill),
            ("8 revoke, grant", Suite::revoke_grant),
        ];
        let only = std::env::var("CONSCOPE_FAULTS_ONLY").unwrap_or_default();
        for (name, scenario) in scenarios {
            if !only.is_empty() && !only.split(',').any(|n| name.starts_with(n.trim())) {
                continue;
            }
            progress(&format!("==> {name}"));
            let started = Instant::now();
            let mut outcome = Outcome {
                name,
                injected: String::new(),
                diff: Diff::default(),
                peak_rss_kib: 0,
                took: Duration::ZERO,
                problems: Vec::new(),
            };
            if let Err(problem) = scenario(&mut suite, &mut outcome) {
                outcome.problems.push(problem);
            }
            outcome.took = started.elapsed();
            progress(&format!(
                "<== {name}: {} ({}) {}",
                outcome.verdict(),
                outcome.diff,
                outcome.problems.join("; ")
            ));
            suite.outcomes.push(outcome);
        }
        let table = suite.table();
        println!("{table}");
        if let Ok(path) = std::env::var("CONSCOPE_FAULTS_REPORT") {
            std::fs::write(&path, &table).expect("write the report");
        }
        let failed: Vec<&str> = suite
            .outcomes
            .iter()
            .filter(|o| !o.passed())
            .map(|o| o.name)
            .collect();
        // The job logs stay for a look when anything failed.
        if failed.is_empty() {
            let _ = std::fs::remove_dir_all(&suite.dir);
        } else {
            progress(&format!("job logs kept in {}", suite.dir.display()));
        }
        assert!(failed.is_empty(), "fault scenarios failed: {failed:?}\n{table}");
    }

    /// New topics and a new database (on the Postgres at `pg`) with the suite's rules.
    fn target(&self, name: &str, pg: &str, brokers: &str) -> Target {
        let id = unique(&format!("faults_{name}"));
        let job = Job {
            input: self.input.clone(),
            alerts: format!("{id}.alerts"),
            dlq: format!("{id}.dlq"),
            database_url: format!("{pg}/{id}"),
        };
        // `migrate` creates the database.
        job.migrate();
        for (event, section, max_price) in &self.rules {
            let mut command = conscope();
            command.args([
                "rules",
                "add",
                "--database-url",
                &job.database_url,
                "--event",
                event,
                "--max-price",
                max_price,
            ]);
            if let Some(section) = section {
                command.args(["--section", section]);
            }
            let output = command.output().expect("conscope rules add");
            assert!(
                output.status.success(),
                "rules add: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Target {
            job,
            brokers: brokers.to_owned(),
        }
    }

    /// Runs the job to the end of the topic, then compares with the reference.
    fn finish(&self, target: &Target, outcome: &mut Outcome, name: &str) {
        let mut run = target.spawn(&self.dir, name, &[]);
        if let Err(problem) = run.end_well(RUN_LIMIT, "the final run") {
            outcome.problems.push(problem);
        }
        outcome.peak_rss_kib = outcome.peak_rss_kib.max(run.peak_rss_kib);
        drop(run);
        let got = Outputs::collect(&target.job, &target.brokers);
        outcome.diff = compare(&self.reference, &got);
        let outbox = count(&target.job.database_url, "SELECT count(*) FROM outbox");
        if outbox != Some(0) {
            outcome
                .problems
                .push(format!("outbox not empty at the end: {outbox:?}"));
        }
    }

    fn kill_delay(&mut self) -> Duration {
        let max = self.size.max_kill_delay.as_millis() as u64;
        Duration::from_millis(self.rng.gen_range(0..=max))
    }

    /// Scenario 1: SIGKILL at random moments, each after the run committed at least once.
    fn sigkills(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let target = self.target("kill", &pg_base(), &brokers());
        let mut kills = 0;
        let result = (|| {
            for round in 0..self.size.kills {
                let before = target.commit_no().unwrap_or(0);
                let mut run = target.spawn_live(&self.dir, &format!("kill{round}"), &SLOW);
                wait_for_commit(&target, &mut run, before, Duration::from_secs(120))?;
                std::thread::sleep(self.kill_delay());
                if let Some(status) = run.poll() {
                    return Err(format!("run {round} ended by itself ({status}) before its kill"));
                }
                run.kill();
                kills += 1;
                outcome.peak_rss_kib = outcome.peak_rss_kib.max(run.peak_rss_kib);
            }
            Ok(())
        })();
        outcome.injected = format!("{kills} kills");
        self.finish(&target, outcome, "kill_end");
        result
    }

    /// Scenario 2: an abort at each fault point of `src/fail.rs`, each seen to fire.
    fn fault_points(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let target = self.target("points", &pg_base(), &brokers());
        let points = [
            ("mid_copy", "3"),
            ("after_prepare", "2"),
            ("before_commit", "2"),
            ("before_commit_prepared", "3"),
            ("after_commit", "3"),
            ("before_publish", "1"),
            ("mid_publish", "1"),
        ];
        let mut fired = Vec::new();
        for (point, after) in points {
            let mut command = target.command(&["--exit-at-end", "-w", "2"]);
            command.args(SLOW);
            command
                .env("CONSCOPE_FAIL_POINT", point)
                .env("CONSCOPE_FAIL_AFTER", after);
            let mut run = Process::spawn(command, &self.dir, point);
            let status = run.wait_for(RUN_LIMIT);
            outcome.peak_rss_kib = outcome.peak_rss_kib.max(run.peak_rss_kib);
            let stderr = run.stderr_text();
            if status.is_some_and(|s| !s.success()) && stderr.contains(&format!("fail point {point} reached"))
            {
                fired.push(point);
            } else {
                outcome.problems.push(format!(
                    "{point} did not fire (exit {status:?}): {}",
                    run.stderr_tail()
                ));
            }
        }
        outcome.injected = format!("{}/{} faults", fired.len(), points.len());
        self.finish(&target, outcome, "points_end");
        Ok(())
    }

    /// Runs the job with small transactions and calls `inject` (given the running
    /// process) once it has committed; the job must then commit again and reach
    /// the end by itself.
    fn survive(
        &self,
        target: &Target,
        name: &str,
        outcome: &mut Outcome,
        inject: impl FnOnce(&mut Process) -> Result<(), String>,
    ) -> Result<(), String> {
        let mut run = target.spawn(&self.dir, name, &SLOW);
        let result = (|| {
            let last = wait_for_commit(target, &mut run, 0, Duration::from_secs(120))?;
            inject(&mut run)?;
            wait_for_commit(target, &mut run, last, Duration::from_secs(180))?;
            run.end_well(RUN_LIMIT, &format!("the {name} run"))
        })();
        outcome.peak_rss_kib = outcome.peak_rss_kib.max(run.peak_rss_kib);
        result
    }

    /// Scenario 3: Postgres restarted with `-m immediate` mid-run, on a cluster of its own:
    /// restarting the shared one would break every other test running meanwhile.
    fn postgres_restarts(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let postgres = ThrowawayPostgres::start(self.size.own_pg_port);
        let target = self.target("pgrestart", &postgres.url(), &brokers());
        let mut restarts = 0;
        let result = self.survive(&target, "pgrestart", outcome, |run| {
            for round in 0..self.size.pg_restarts {
                if round > 0 {
                    // The job must come back and go on committing between restarts.
                    let last = target.commit_no().unwrap_or(0);
                    wait_for_commit(&target, run, last, Duration::from_secs(120))?;
                }
                postgres.restart_immediate();
                restarts += 1;
            }
            Ok(())
        });
        outcome.injected = format!("{restarts} pg restarts");
        self.finish(&target, outcome, "pgrestart_end");
        result
    }

    /// Scenario 4: the broker killed with `kill -9` mid-run and started again: a broker of
    /// its own, holding the same topic (same producer, same seed).
    fn broker_kill(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let broker = OwnBroker::start(self.size.own_broker_port);
        produce_generated_at(
            &broker.address(),
            &self.input,
            4,
            self.size.messages,
            TOPIC_SEED,
            &[],
        );
        let shared = high_watermarks(&self.input);
        let own = high_watermarks_at(&broker.address(), &self.input);
        if shared != own {
            return Err(format!(
                "the topic on the own broker differs: {own:?}, shared {shared:?}"
            ));
        }
        let target = self.target("brokerkill", &pg_base(), &broker.address());
        let delay = self.kill_delay();
        let mut kills = 0;
        let result = self.survive(&target, "brokerkill", outcome, |run| {
            std::thread::sleep(delay);
            broker.kill();
            kills += 1;
            // Long enough for the job's requests to fail and be retried.
            std::thread::sleep(Duration::from_secs(3));
            if let Some(status) = run.poll() {
                return Err(format!(
                    "the job exited ({status}) while the broker was down: {}",
                    run.stderr_tail()
                ));
            }
            broker.up();
            Ok(())
        });
        outcome.injected = format!("{kills} broker kill");
        self.finish(&target, outcome, "brokerkill_end");
        result
    }

    /// Scenario 5: writes blocked by an `ACCESS EXCLUSIVE` lock on `price_history` held by
    /// another session while the job has input to read: it must stop reading at
    /// `--max-in-flight`, stay within its memory bound, and lose nothing.
    fn blocked_writes(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let target = self.target("lock", &pg_base(), &brokers());
        let in_flight = self.size.in_flight.to_string();
        let args = [
            "--epoch-ms",
            "10",
            "--max-batch",
            "200",
            "--max-commit-records",
            "200",
            "--max-in-flight",
            &in_flight,
        ];
        outcome.injected = format!("{}s lock", self.size.lock.as_secs());
        let result = (|| {
            let mut run = target.spawn(&self.dir, "lock", &args);
            wait_for_commit(&target, &mut run, 0, Duration::from_secs(120))?;
            let url = target.job.database_url.clone();
            let rt = runtime();
            let (client, connection) = rt
                .block_on(tokio_postgres::connect(&url, NoTls))
                .map_err(|e| format!("connect: {e}"))?;
            let connection = rt.spawn(connection);
            rt.block_on(client.batch_execute("BEGIN; LOCK TABLE price_history IN ACCESS EXCLUSIVE MODE"))
                .map_err(|e| format!("LOCK TABLE: {e}"))?;
            let locked_at = target.commit_no();
            let deadline = Instant::now() + self.size.lock;
            while Instant::now() < deadline {
                if let Some(status) = run.poll() {
                    return Err(format!(
                        "the job exited ({status}) while its writes were blocked: {}",
                        run.stderr_tail()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            run.poll();
            let blocked_peak = run.peak_rss_kib;
            let still = target.commit_no();
            rt.block_on(client.batch_execute("COMMIT"))
                .map_err(|e| format!("COMMIT: {e}"))?;
            drop(client);
            let _ = rt.block_on(connection);
            outcome.peak_rss_kib = blocked_peak;
            progress(&format!(
                "writes blocked for {:?}: commit_no {locked_at:?} -> {still:?}, peak RSS {} MiB",
                self.size.lock,
                blocked_peak / 1024
            ));
            if locked_at != still {
                return Err(format!(
                    "the lock did not block the writes: commit_no {locked_at:?} -> {still:?}"
                ));
            }
            if blocked_peak / 1024 > BLOCKED_RSS_BOUND_MIB {
                return Err(format!(
                    "peak RSS {} MiB while blocked, over the bound of {BLOCKED_RSS_BOUND_MIB} MiB",
                    blocked_peak / 1024
                ));
            }
            run.end_well(RUN_LIMIT, "the run after the release")
        })();
        let blocked_peak = outcome.peak_rss_kib;
        self.finish(&target, outcome, "lock_end");
        // The column shows the peak under blocked writes, not the final run's.
        outcome.peak_rss_kib = blocked_peak;
        result
    }

    /// Scenario 6: a second instance on the same database while the first runs: refused
    /// with a clear error before it restores state or publishes anything.
    fn second_instance(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let target = self.target("second", &pg_base(), &brokers());
        // Another job on another database of the same cluster, as in production:
        // its lease must neither refuse nor be named to this job's instances.
        let neighbour = self.target("neighbour", &pg_base(), &brokers());
        outcome.injected = "1 2nd instance".to_owned();
        let result = (|| {
            let mut other = neighbour.spawn_live(&self.dir, "neighbour", &SLOW);
            wait_for_commit(&neighbour, &mut other, 0, Duration::from_secs(120))?;
            let mut first = target.spawn_live(&self.dir, "first", &SLOW);
            wait_for_commit(&target, &mut first, 0, Duration::from_secs(120))?;
            let mut command = target.command(&["--exit-at-end", "-w", "2"]);
            command.args(SLOW).env("CONSCOPE_LOG", "info");
            let mut second = Process::spawn(command, &self.dir, "second");
            let status = second.wait_for(Duration::from_secs(60));
            let first_alive = first.poll().is_none();
            let stderr = second.stderr_text();
            let mut problems = Vec::new();
            match status {
                None => {
                    second.kill();
                    problems.push("the second instance was not refused: still running after 60 s".to_owned());
                }
                Some(status) if status.success() => {
                    problems.push("the second instance exited 0: not refused".to_owned())
                }
                Some(_) => {}
            }
            if !first_alive {
                problems.push(format!(
                    "the first instance did not survive the second: {}",
                    first.stderr_tail()
                ));
            }
            for (line, what) in [
                ("restored state", "restored state"),
                ("outbox recovery", "recovered the outbox"),
            ] {
                if stderr.contains(line) {
                    problems.push(format!("the second instance {what} before it was refused"));
                }
            }
            if status.is_some_and(|s| !s.success())
                && !stderr.contains("another `conscope run` holds this job")
            {
                problems.push(format!(
                    "the second instance's error does not say another instance runs: {}",
                    second.stderr_tail()
                ));
            }
            if first_alive {
                // An instance that lost its lease stops within a lease check:
                // give it that long to show it kept its lease. Then it is killed
                // (a normal event) and the final run below replays the rest.
                std::thread::sleep(Duration::from_secs(4));
                if let Some(status) = first.poll() {
                    problems.push(format!(
                        "the first instance stopped after the refusal ({status}): {}",
                        first.stderr_tail()
                    ));
                }
                first.kill();
            }
            other.kill();
            outcome.peak_rss_kib = first.peak_rss_kib;
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        })();
        self.finish(&target, outcome, "second_end");
        result
    }

    /// Scenario 7: a cluster of two processes, one killed mid-run; then the cluster restarted.
    fn cluster_kill(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let target = self.target("cluster", &pg_base(), &brokers());
        let hosts_file = hosts_file(2);
        let hosts = hosts_file.path().to_string_lossy().into_owned();
        let dir = self.dir.clone();
        let spawn = |round: &str, index: usize| {
            let process = index.to_string();
            let mut args = vec![
                "--exit-at-end",
                "-w",
                "1",
                "--processes",
                "2",
                "--process",
                &process,
                "--hosts",
                &hosts,
            ];
            args.extend_from_slice(&SLOW);
            Process::spawn(target.command(&args), &dir, &format!("{round}_p{index}"))
        };
        let delay = self.kill_delay();
        let mut kills = 0;
        let result = (|| {
            let mut p0 = spawn("cluster", 0);
            let mut p1 = spawn("cluster", 1);
            wait_for_commit(&target, &mut p0, 0, Duration::from_secs(120))?;
            std::thread::sleep(delay);
            if p1.poll().is_some() {
                return Err(format!("process 1 ended before its kill: {}", p1.stderr_tail()));
            }
            p1.kill();
            kills += 1;
            // A timely cluster cannot go on without a member: process 0 should
            // stop by itself; scripts/cluster.sh would stop it otherwise.
            if p0.wait_for(Duration::from_secs(30)).is_none() {
                progress("process 0 still runs 30 s after process 1 was killed; killing it");
                p0.kill();
            }
            outcome.peak_rss_kib = p0.peak_rss_kib.max(p1.peak_rss_kib);
            let mut p0 = spawn("restart", 0);
            let mut p1 = spawn("restart", 1);
            for (index, process) in [(0, &mut p0), (1, &mut p1)] {
                process.end_well(RUN_LIMIT, &format!("restarted process {index}"))?;
                outcome.peak_rss_kib = outcome.peak_rss_kib.max(process.peak_rss_kib);
            }
            Ok(())
        })();
        outcome.injected = format!("{kills} process kill");
        self.finish(&target, outcome, "cluster_end");
        result
    }

    /// Scenario 8: INSERT on `price_history` revoked mid-run from the job's role
    /// (a role of its own, not a superuser), granted back after `size.lock`:
    /// the writes stop, the job waits without exiting or quarantining
    /// anything, and goes on once the grant is back.
    fn revoke_grant(&mut self, outcome: &mut Outcome) -> Result<(), String> {
        let owner = self.target("revoke", &pg_base(), &brokers());
        let role = JobRole::create(&owner.job.database_url);
        let target = Target {
            job: Job {
                database_url: role.url.clone(),
                ..owner.job.clone()
            },
            brokers: owner.brokers.clone(),
        };
        let url = owner.job.database_url.clone();
        let mut revokes = 0;
        let result = self.survive(&target, "revoke", outcome, |run| {
            try_execute(
                &url,
                &format!("REVOKE INSERT ON price_history FROM {}", role.name),
            )?;
            revokes += 1;
            // A commit past its permission check when the REVOKE came may
            // still land; none after.
            std::thread::sleep(Duration::from_secs(2));
            let blocked_at = owner.commit_no();
            let deadline = Instant::now() + self.size.lock;
            while Instant::now() < deadline {
                if let Some(status) = run.poll() {
                    return Err(format!(
                        "the job exited ({status}) while INSERT was revoked: {}",
                        run.stderr_tail()
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let still = owner.commit_no();
            let quarantined = count(&url, "SELECT count(*) FROM quarantine");
            progress(&format!(
                "INSERT revoked for {:?}: commit_no {blocked_at:?} -> {still:?}, {quarantined:?} quarantined",
                self.size.lock
            ));
            try_execute(&url, &format!("GRANT INSERT ON price_history TO {}", role.name))?;
            if blocked_at != still {
                return Err(format!(
                    "commits landed without INSERT on price_history: commit_no {blocked_at:?} -> {still:?}"
                ));
            }
            if quarantined != Some(0) {
                return Err(format!("the refusal quarantined messages: {quarantined:?}"));
            }
            Ok(())
        });
        outcome.injected = format!("{revokes} revoke");
        self.finish(&target, outcome, "revoke_end");
        result
    }

    fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fault suite ({}: {} messages, topic {})",
            self.size.name, self.size.messages, self.input
        );
        let _ = writeln!(
            out,
            "{:<20} {:<15} {:>9} {:>15} {:>15} {:>9} {:>6}  result",
            "scenario", "injected", "compared", "missing t/a/d", "extra t/a/d", "peak RSS", "time"
        );
        for o in &self.outcomes {
            let missing = format!(
                "{}/{}/{}",
                o.diff.tables.missing, o.diff.alerts.missing, o.diff.dead_letters.missing
            );
            let extra = format!(
                "{}/{}/{}",
                o.diff.tables.extra, o.diff.alerts.extra, o.diff.dead_letters.extra
            );
            let _ = writeln!(
                out,
                "{:<20} {:<15} {:>9} {:>15} {:>15} {:>5} MiB {:>5}s  {}",
                o.name,
                o.injected,
                o.diff.compared,
                missing,
                extra,
                o.peak_rss_kib / 1024,
                o.took.as_secs(),
                o.verdict()
            );
        }
        for o in &self.outcomes {
            if !o.passed() {
                let _ = writeln!(out, "{}: {} {}", o.name, o.diff, o.problems.join("; "));
            }
        }
        let _ = writeln!(
            out,
            "t/a/d = table rows / alert ids on the alerts topic / dead letters; \
             extra = doubled or unexpected"
        );
        out
    }
}

fn progress(line: &str) {
    eprintln!(
        "[faults {:?}] {line}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 86_400)
            .unwrap_or(0)
    );
}

fn count(url: &str, sql: &str) -> Option<i64> {
    runtime().block_on(async {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
        tokio::spawn(connection);
        client.query_one(sql, &[]).await.ok()?.try_get(0).ok()
    })
}

/// Rules on events of the topic's first messages (the generator is seeded, so
/// `conscope produce --output -` with the same seed shows them): two on whole
/// events, one on a section, each at a price seen, and one that never fires.
fn rules_for_topic() -> Vec<Rule> {
    let output = conscope()
        .args(["produce", "--output", "-", "--count", "500", "--seed"])
        .arg(TOPIC_SEED.to_string())
        .output()
        .expect("conscope produce --output -");
    assert!(output.status.success(), "conscope produce --output - failed");
    let mut observations = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let price = match &value["price"] {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            _ => continue,
        };
        let (Some(event), Some(section)) = (value["event_id"].as_str(), value["section"].as_str()) else {
            continue;
        };
        if value["currency"].as_str().unwrap_or("USD") != "USD" {
            continue;
        }
        if !observations
            .iter()
            .any(|(e, _, _): &(String, String, String)| e == event)
        {
            observations.push((event.to_owned(), section.to_owned(), price));
        }
    }
    assert!(observations.len() >= 4, "too few events in the first messages");
    let mut rules: Vec<Rule> = Vec::new();
    for (event, _, price) in &observations[0..2] {
        rules.push((event.clone(), None, price.clone()));
    }
    let (event, section, price) = &observations[2];
    rules.push((event.clone(), Some(section.clone()), price.clone()));
    rules.push((observations[3].0.clone(), None, "0.01".to_owned()));
    rules
}
