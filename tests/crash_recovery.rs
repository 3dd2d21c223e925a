//! SPEC §4: `kill -9` at any moment, then a restart, ends with exactly the tables
//! of an uninterrupted run, and every alert on the alerts topic exactly once.
//! Crashes come from outside (SIGKILL) and from fault points at the dangerous
//! moments: mid-COPY, before and after COMMIT, before and during publishing.

mod common;

use std::time::Duration;

use common::*;

// Small transactions, so every run commits often enough to reach its fault
// point: against a fast broker the writer otherwise merges a run's epochs into
// a couple of commits and the later points are never reached.
const SLOW: [&str; 10] = [
    "-w",
    "2",
    "--epoch-ms",
    "10",
    "--max-batch",
    "200",
    "--max-in-flight",
    "2000",
    "--max-commit-records",
    "200",
];

fn commit_no(job: &Job) -> i64 {
    // The table appears once the job has migrated its database.
    std::panic::catch_unwind(|| query_i64(&job.database_url, "SELECT commit_no FROM job_progress"))
        .unwrap_or(0)
}

#[test]
fn crashes_at_any_moment_end_with_the_tables_of_an_uninterrupted_run() {
    require_broker();
    let input = unique("crash");
    produce_generated(&input, 4, 40_000, 5, &[]);

    let reference = Job::new("crash_ref", &input);
    reference.run_to_end(&["-w", "2"]);
    let expected = dump(&reference.database_url);
    let total_history = expected["price_history"].len();

    let crashed = Job::new("crash", &input);
    // 1. SIGKILL from outside while the job runs.
    let mut child = crashed.spawn(&SLOW);
    wait_until(Duration::from_secs(120), "the first commits", || {
        commit_no(&crashed) >= 3
    });
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let stored = query_i64(&crashed.database_url, "SELECT count(*) FROM price_history") as usize;
    assert!(
        stored < total_history,
        "the job was killed after it had finished ({stored} rows)"
    );

    // 2. Aborts at each fault point (a run that got to its end first is fine too).
    let mut aborted = 0;
    for (point, after) in [
        ("mid_copy", "3"),
        ("before_commit", "2"),
        ("after_commit", "4"),
        ("before_publish", "2"),
        ("mid_publish", "1"),
    ] {
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(&SLOW);
        let output = crashed
            .command(&args)
            .env("CONSCOPE_FAIL_POINT", point)
            .env("CONSCOPE_FAIL_AFTER", after)
            .output()
            .expect("run");
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                stderr.contains(&format!("fail point {point} reached")),
                "{point}: unexpected failure: {stderr}"
            );
            aborted += 1;
        }
    }
    assert!(aborted >= 3, "only {aborted} fault points were reached");

    // 3. A clean restart finishes the work.
    crashed.run_to_end(&["-w", "2"]);
    let got = dump(&crashed.database_url);
    for table in ["events", "price_history", "listings", "price_alerts"] {
        assert!(got[table] == expected[table], "{table} differs after crashes");
    }
    let on_topic = alert_ids_on_topic(&crashed.alerts);
    let duplicates: Vec<_> = on_topic.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicates.is_empty(), "alerts published twice: {duplicates:?}");
    let expected_ids: Vec<String> = expected["price_alerts"]
        .iter()
        .map(|row| row.split('|').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(on_topic.into_keys().collect::<Vec<_>>(), expected_ids);
    assert_eq!(query_i64(&crashed.database_url, "SELECT count(*) FROM outbox"), 0);
}
