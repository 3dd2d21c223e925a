//! SPEC §4: `kill -9` at any moment, then a restart, ends with exactly the tables
//! of an uninterrupted run, and every alert on the alerts topic exactly once.
//! Crashes come from outside (SIGKILL) and from fault points at the dangerous
//! moments: mid-COPY, with the parts of a split commit prepared, before and
//! after COMMIT, between the COMMIT and the parts' (`sink::parts`), before and
//! during publishing.
//! Rules of every kind (SPEC §2b) are active, so their state (arming, windows,
//! cooldowns, deals) must come back exactly after each crash.

use std::time::Duration;

use conscope_testkit::*;

fn slow() -> Vec<&'static str> {
    [&["-w", "2"][..], &SMALL_TRANSACTIONS[..]].concat()
}

/// Messages produced before each crash step that comes after the first: against a
/// fast broker a step that only had the previous step's leftovers would reach its
/// end before its fault point. With `--max-in-flight 500` (`slow()`) a step commits
/// at least 8 times.
const STEP_INPUT: u64 = 4_000;

#[test]
fn crashes_at_any_moment_end_with_the_tables_of_an_uninterrupted_run() {
    require_broker();
    let input = unique("crash");
    // Sections of five listings and more, so that deals can happen.
    produce_generated(
        &input,
        4,
        12_000,
        5,
        &["--events", "8", "--listings-per-event", "160"],
    );

    let events = first_event_ids(&input, 4);
    assert_eq!(events.len(), 4);
    let crashed = Job::new("crash", &input);
    add_rules_of_every_kind(&crashed, &events);
    // 1. SIGKILL from outside while the job runs.
    let mut child = crashed.spawn(&slow());
    wait_until(Duration::from_secs(120), "the first commits", || {
        commit_no(&crashed.database_url).unwrap_or(0) >= 3
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
        ("after_prepare", "2"),
        ("before_commit", "2"),
        ("before_commit_prepared", "3"),
        ("after_commit", "3"),
        ("before_publish", "1"),
        ("mid_publish", "1"),
    ];
    for (step, (point, after)) in (1u64..).zip(fault_points) {
        produce_generated(&input, 4, STEP_INPUT, 5 + step, &[]);
        let mut args = vec!["--exit-at-end"];
        args.extend(slow());
        crashed.crash_at(&args, point, after);
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
    add_rules_of_every_kind(&reference, &events);
    reference.run_to_end(&["-w", "2"]);
    // Tables, alerts by id and dead letters whole: each exactly as in the reference.
    let expected = compare::Outputs::collect(&reference, &brokers());
    assert!(
        !expected.dead_letters.is_empty(),
        "the reference published no dead letter"
    );
    let kinds = query_i64(
        &reference.database_url,
        "SELECT count(DISTINCT kind) FROM price_alerts WHERE kind IN ('rule_match', 'new_low', 'back_in_stock', 'deal')",
    );
    assert_eq!(kinds, 4, "the reference raised alerts of only {kinds} rule kinds");
    let diff = compare::compare(&expected, &compare::Outputs::collect(&crashed, &brokers()));
    assert!(diff.is_exact(), "after crashes: {diff}");
    assert_summaries_match_listings(&crashed.database_url);
    assert_rows_have_their_events(&crashed.database_url);
    assert_summaries_match_listings(&reference.database_url);
    assert_rows_have_their_events(&reference.database_url);
    assert_eq!(query_i64(&crashed.database_url, "SELECT count(*) FROM outbox"), 0);
}
