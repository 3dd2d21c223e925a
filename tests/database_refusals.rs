//! PostgreSQL refusing what the job writes, mid-run, against a live job that
//! connects as a role of its own (not a superuser):
//!
//! - a refusal that says the statement or the database is wrong (a REVOKE,
//!   a renamed table) stops the writes: the job waits with `/healthz` failing
//!   and `conscope_writer_blocked` naming the SQLSTATE, never exits, and once
//!   the cause is undone goes on, losing and quarantining nothing;
//! - a refusal of one message's data (a CHECK added mid-run, refusing one
//!   history row inside a COPY) sends that message, and only it, to the
//!   dead-letter topic.
//!
//! Each ends with the exact comparison of `testkit::compare` against an
//! uninterrupted run of the same input.

use std::time::{Duration, Instant};

use conscope_testkit::compare::{compare, DeadLetter, Outputs};
use conscope_testkit::dashboard::send;
use conscope_testkit::*;

/// Each half of the input: the job reads the first, then the database is
/// broken and the second is produced, so the writes meet the breakage.
const HALF: u64 = 3_000;

/// Input produced in two halves (different seeds, so the second is not a copy
/// of the first).
fn produce_half(topic: &str, half: u64) {
    produce_generated(topic, 2, HALF, 100 + half, &[]);
}

/// The outputs of an uninterrupted run of `input` (as `postgres`), on a
/// database `setup` (SQL) is applied to first.
fn reference(input: &str, setup: Option<&str>) -> Outputs {
    let job = Job::new("refusals_ref", input);
    if let Some(setup) = setup {
        job.migrate();
        execute(&job.database_url, setup);
    }
    job.run_to_end_within(Duration::from_secs(180), &["-w", "2"]);
    let outputs = Outputs::collect(&job, &brokers());
    // No rules here, so no rule_state; every other output holds something.
    for (table, rows) in &outputs.tables {
        assert!(
            *table == "rule_state" || !rows.is_empty(),
            "the reference left {table} empty"
        );
    }
    assert!(!outputs.alerts.is_empty() && !outputs.dead_letters.is_empty());
    outputs
}

/// A live job on its own database, connecting as a role of its own, serving
/// its metrics.
struct Live {
    /// The job as `postgres` (for the checks and the comparison).
    job: Job,
    role: JobRole,
    port: u16,
    child: KillOnDrop,
}

impl Live {
    fn start(name: &str, input: &str) -> Live {
        let job = Job::new(name, input);
        job.migrate();
        let role = JobRole::create(&job.database_url);
        let port = free_port();
        let child = Live::spawn(&job, &role, port);
        Live {
            job,
            role,
            port,
            child,
        }
    }

    fn spawn(job: &Job, role: &JobRole, port: u16) -> KillOnDrop {
        let mut as_role = job.clone();
        as_role.database_url = role.url.clone();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["-w", "2", "--metrics-addr", &addr];
        args.extend_from_slice(&SMALL_TRANSACTIONS);
        KillOnDrop(as_role.spawn(&args))
    }

    /// Starts the job again, as before, once the last one has exited.
    fn start_again(&mut self) {
        self.child = Live::spawn(&self.job, &self.role, self.port);
    }

    fn get(&self, path: &str) -> (u16, String) {
        let reply = send("GET", &format!("http://127.0.0.1:{}{path}", self.port), &[], None);
        (reply.status, reply.body)
    }

    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.0.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = self.child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
            }
            panic!("the job exited ({status}) {when}:\n{stderr}");
        }
    }

    /// Waits until every message of `input` is committed and published.
    fn wait_caught_up(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            self.assert_running("before it caught up");
            let stored = stored_offsets(&self.job.database_url, &self.job.input);
            let outbox = query_i64(&self.job.database_url, "SELECT count(*) FROM outbox");
            if stored == high_watermarks(&self.job.input) && outbox == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the job did not catch up within {limit:?}: stored {stored:?}, outbox {outbox}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until the writer says it is blocked by `sqlstate`, checks it
    /// stays so for `hold` without committing or exiting, and returns what
    /// `/healthz` said.
    fn wait_blocked(&mut self, sqlstate: &str, hold: Duration) -> String {
        let gauge = format!("conscope_writer_blocked{{sqlstate=\"{sqlstate}\"}} 1");
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = loop {
            self.assert_running("while its writes were refused");
            let (status, body) = self.get("/healthz");
            if status != 200 && self.get("/metrics").1.contains(&gauge) {
                break body;
            }
            assert!(
                Instant::now() < deadline,
                "the job never reported its writes blocked by {sqlstate} (/healthz {status}: {body})"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let commits = commit_no(&self.job.database_url);
        let until = Instant::now() + hold;
        while Instant::now() < until {
            self.assert_running("while blocked");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            commit_no(&self.job.database_url),
            commits,
            "a commit landed while the writes were refused"
        );
        assert_ne!(self.get("/healthz").0, 200);
        assert_eq!(
            query_i64(&self.job.database_url, "SELECT count(*) FROM quarantine"),
            0,
            "a refusal of the database quarantined messages"
        );
        health
    }

    /// Once caught up (healthy again, and with `blocked_before` the gauge
    /// down), stops the job and collects its outputs.
    fn finish(mut self, blocked_before: bool) -> Outputs {
        self.wait_caught_up(Duration::from_secs(180));
        let (status, body) = self.get("/healthz");
        assert_eq!(status, 200, "{body}");
        if blocked_before {
            assert!(
                self.get("/metrics").1.contains("conscope_writer_blocked 0"),
                "the blocked gauge stayed up"
            );
        }
        self.assert_running("after it caught up");
        drop(self.child);
        let outputs = Outputs::collect(&self.job, &brokers());
        drop(self.role);
        outputs
    }
}

/// Breaks the database with `break_sql` once the job has read the first half,
/// produces the second, checks the job waits (blocked by `sqlstate`), repairs
/// it with `repair_sql`, and compares the end with an uninterrupted run.
fn survives(
    name: &str,
    break_sql: &dyn Fn(&str) -> String,
    repair_sql: &dyn Fn(&str) -> String,
    sqlstate: &str,
) {
    require_broker();
    let input = unique(name);
    produce_half(&input, 1);
    let mut live = Live::start(name, &input);
    live.wait_caught_up(Duration::from_secs(120));
    let role = live.role.name.clone();
    execute(&live.job.database_url, &break_sql(&role));
    produce_half(&input, 2);
    let health = live.wait_blocked(sqlstate, Duration::from_secs(5));
    assert!(
        health.contains(sqlstate),
        "/healthz does not name the refusal: {health}"
    );
    execute(&live.job.database_url, &repair_sql(&role));
    let got = live.finish(true);
    let diff = compare(&reference(&input, None), &got);
    assert!(diff.is_exact(), "{diff}");
}

#[test]
fn a_revoked_insert_makes_the_job_wait_until_it_is_granted_again() {
    survives(
        "refusal_revoke",
        &|role| format!("REVOKE INSERT ON price_history FROM {role}"),
        &|role| format!("GRANT INSERT ON price_history TO {role}"),
        "42501",
    );
}

#[test]
fn a_renamed_table_makes_the_job_wait_until_it_is_back() {
    survives(
        "refusal_rename",
        &|_| "ALTER TABLE price_history RENAME TO price_history_away".to_owned(),
        &|_| "ALTER TABLE price_history_away RENAME TO price_history".to_owned(),
        "42P01",
    );
}

/// A CHECK added mid-run refuses one message's history row inside a COPY:
/// that message, and only it, goes to the dead-letter topic, and everything
/// else lands as in an uninterrupted run with the CHECK in place from the
/// start (which `definite_errors` shows equals a run without the message).
#[test]
fn a_check_added_mid_run_sends_only_the_refused_message_to_the_dlq() {
    require_broker();
    let input = unique("refusal_check");
    produce_half(&input, 1);
    let check = "ALTER TABLE price_history ADD CONSTRAINT refuse_one CHECK (section <> 'refused')";
    let poison = br#"{"event_id":"refused-event","section":"refused","price":"12.34","timestamp":"2026-03-01T10:00:00Z"}"#;
    let mut live = Live::start("refusal_check", &input);
    live.wait_caught_up(Duration::from_secs(120));
    // The CHECK's transaction holds the table while the rest is produced, so
    // the writer meets the refused row among many others in one COPY.
    let runtime = runtime();
    let (client, connection) = runtime
        .block_on(tokio_postgres::connect(
            &live.job.database_url,
            tokio_postgres::NoTls,
        ))
        .expect("postgres");
    let connection = runtime.spawn(connection);
    runtime
        .block_on(client.batch_execute(&format!("BEGIN; {check}")))
        .expect("add the CHECK");
    produce_generated(&input, 2, HALF / 2, 7, &[]);
    produce(&input, &[(0, Some("refused-event"), poison.to_vec())]);
    let refused_at = high_watermarks(&input)[&0] - 1;
    produce_generated(&input, 2, HALF / 2, 8, &[]);
    std::thread::sleep(Duration::from_secs(2));
    runtime.block_on(client.batch_execute("COMMIT")).expect("COMMIT");
    drop(client);
    let _ = runtime.block_on(connection);
    let got = live.finish(false);

    let refused: Vec<&DeadLetter> = got
        .dead_letters
        .keys()
        .filter(|letter| letter.error.starts_with("postgres rejected"))
        .collect();
    assert_eq!(
        refused,
        [&DeadLetter {
            partition: "0".to_owned(),
            offset: refused_at.to_string(),
            // price_history is partitioned by month: PostgreSQL names the
            // partition that refused the row (the poison's March 2026).
            error:
                "postgres rejected: new row for relation \"price_history_p202603\" violates check constraint \
                    \"refuse_one\" (23514)"
                    .to_owned(),
            key: Some(b"refused-event".to_vec()),
            value: Some(poison.to_vec()),
        }]
    );
    let diff = compare(&reference(&input, Some(check)), &got);
    assert!(diff.is_exact(), "{diff}");
}

/// SIGTERM (what systemd and Kubernetes send) stops a job that waits out a
/// refusal of the database at once, with status 0 and nothing more committed;
/// started again once the grant is back, it goes on from its last commit and
/// ends as an uninterrupted run would.
#[test]
fn a_job_waiting_for_the_database_stops_on_sigterm_and_goes_on_when_started_again() {
    require_broker();
    let input = unique("refusal_stop");
    produce_half(&input, 1);
    let mut live = Live::start("refusal_stop", &input);
    live.wait_caught_up(Duration::from_secs(120));
    let role = live.role.name.clone();
    execute(
        &live.job.database_url,
        &format!("REVOKE INSERT ON price_history FROM {role}"),
    );
    produce_half(&input, 2);
    live.wait_blocked("42501", Duration::from_secs(2));
    let commits = commit_no(&live.job.database_url);
    let status = terminate(&mut live.child.0, Duration::from_secs(15));
    if status.is_none() {
        // Its stderr ends only with it.
        let _ = live.child.0.kill();
    }
    let mut stderr = String::new();
    if let Some(mut pipe) = live.child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let status = status.unwrap_or_else(|| panic!("still waiting 15 s after SIGTERM:\n{stderr}"));
    assert!(status.success(), "exit after SIGTERM: {status}\n{stderr}");
    assert!(
        stderr.contains("stopped on request while waiting for PostgreSQL"),
        "{stderr}"
    );
    assert_eq!(commit_no(&live.job.database_url), commits);

    execute(
        &live.job.database_url,
        &format!("GRANT INSERT ON price_history TO {role}"),
    );
    live.start_again();
    let got = live.finish(false);
    let diff = compare(&reference(&input, None), &got);
    assert!(diff.is_exact(), "{diff}");
}
