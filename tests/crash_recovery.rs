//! SPEC §4: `kill -9` at any moment, then a restart, ends with exactly the tables
//! of an uninterrupted run, and every alert on the alerts topic exactly once.
//! Crashes come from outside (SIGKILL) and from fault points at the dangerous
//! moments: mid-COPY, before and after COMMIT, before and during publishing.

use std::time::Duration;

use conscope_testkit::*;

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
    "500",
    "--max-commit-records",
    "200",
];

fn commit_no(job: &Job) -> i64 {
    // The table appears once the job has migrated its database.
    std::panic::catch_unwind(|| query_i64(&job.database_url, "SELECT commit_no FROM job_progress"))
        .unwrap_or(0)
}

/// Messages produced before each crash step that comes after the first: against a
/// fast broker a step that only had the previous step's leftovers would reach its
/// end before its fault point. With `--max-in-flight 500` (`SLOW`) a step commits
/// at least 8 times.
const STEP_INPUT: u64 = 4_000;

#[test]
fn crashes_at_any_moment_end_with_the_tables_of_an_uninterrupted_run() {
    require_broker();
    let input = unique("crash");
    produce_generated(&input, 4, 12_000, 5, &[]);

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
        (1..12_000).contains(&stored),
        "the job was not killed mid-run ({stored} rows stored)"
    );

    // 2. An abort at each fault point, each with new input to work on.
    let fault_points = [
        ("mid_copy", "3"),
        ("before_commit", "2"),
        ("after_commit", "3"),
        ("before_publish", "1"),
        ("mid_publish", "1"),
    ];
    for (step, (point, after)) in (1u64..).zip(fault_points) {
        produce_generated(&input, 4, STEP_INPUT, 5 + step, &[]);
        let mut args = vec!["--exit-at-end"];
        args.extend_from_slice(&SLOW);
        let output = crashed
            .command(&args)
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
    }

    // 3. A clean restart finishes the work; an uninterrupted run of the same
    // topic is the reference. Before it, the database is made to predate the
    // summaries: the restart's migration must fill them from `listings`, which
    // the job then takes as the state of its restored listings.
    execute(
        &crashed.database_url,
        "DROP TABLE event_summary, section_summary;
         DELETE FROM schema_migrations WHERE name = '0005_summaries'",
    );
    crashed.run_to_end(&["-w", "2"]);
    let reference = Job::new("crash_ref", &input);
    reference.run_to_end(&["-w", "2"]);
    let expected = dump(&reference.database_url);
    let got = dump(&crashed.database_url);
    for table in [
        "events",
        "price_history",
        "listings",
        "price_alerts",
        "event_summary",
        "section_summary",
    ] {
        assert!(got[table] == expected[table], "{table} differs after crashes");
    }
    assert_summaries_match_listings(&crashed.database_url);
    assert_history_has_its_events(&crashed.database_url);
    assert_summaries_match_listings(&reference.database_url);
    assert_history_has_its_events(&reference.database_url);
    let on_topic = alert_ids_on_topic(&crashed.alerts);
    let duplicates: Vec<_> = on_topic.iter().filter(|(_, count)| **count > 1).collect();
    assert!(duplicates.is_empty(), "alerts published twice: {duplicates:?}");
    let expected_ids: Vec<String> = expected["price_alerts"]
        .iter()
        .map(|row| row.split('|').next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(on_topic.into_keys().collect::<Vec<_>>(), expected_ids);
    // Dead letters too: each rejected input message exactly once, as in the
    // reference, with the same reason, key and value.
    let (got_dead, expected_dead) = (dead_letters(&crashed.dlq), dead_letters(&reference.dlq));
    assert!(
        got_dead == expected_dead,
        "dead letters differ after crashes: {} vs {} in the reference",
        got_dead.len(),
        expected_dead.len()
    );
    assert_eq!(query_i64(&crashed.database_url, "SELECT count(*) FROM outbox"), 0);
}

/// The dead letters on `topic` as (input partition, input offset, reason, key,
/// value), sorted, duplicates kept: each must match the reference's exactly.
type DeadLetter = (String, String, String, Option<Vec<u8>>, Option<Vec<u8>>);

fn dead_letters(topic: &str) -> Vec<DeadLetter> {
    let header = |read: &Read, name: &str| read.headers.get(name).cloned().unwrap_or_default();
    let mut letters: Vec<DeadLetter> = read_all(topic)
        .into_iter()
        .map(|read| {
            (
                header(&read, "conscope.partition"),
                header(&read, "conscope.offset"),
                header(&read, "conscope.error"),
                read.key.clone(),
                read.value.clone(),
            )
        })
        .collect();
    letters.sort();
    assert!(!letters.is_empty(), "no dead letters on {topic}");
    letters
}
