//! A commit split over the writer's connections (`src/sink/parts.rs`) that a
//! crash cuts in two: its parts prepared and its main transaction not
//! committed (they must be rolled back), or its main transaction committed and
//! its parts not (they must be committed). The parts are seen left prepared in
//! PostgreSQL after the crash; the restart ends them before it reads its
//! state, and ends with the tables and alerts of a run on one connection.

use conscope_testkit::*;

/// Two workers, so two writer connections, and every commit split.
fn split() -> Vec<&'static str> {
    [&["-w", "2"][..], &SMALL_TRANSACTIONS[..]].concat()
}

fn prepared_parts(url: &str) -> i64 {
    query_i64(
        url,
        "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
    )
}

/// Crashes `job` at `point` (its `after`-th time), and returns how many
/// prepared parts it left.
fn crash_at(job: &Job, point: &str, after: &str) -> i64 {
    let mut args = vec!["--exit-at-end"];
    args.extend(split());
    job.crash_at(&args, point, after);
    prepared_parts(&job.database_url)
}

#[test]
fn a_crash_between_a_split_commits_parts_and_its_main_transaction_is_resolved_at_restart() {
    require_broker();
    let input = unique("split");
    produce_generated(&input, 4, 6_000, 21, &[]);
    let reference = Job::new("split_ref", &input);
    reference.run_to_end(&["-w", "1", "--writer-connections", "1"]);
    let expected = dump(&reference.database_url);
    assert!(expected["price_history"].len() > 4_000);

    for (point, decision) in [
        ("after_prepare", "rolled back"),
        ("before_commit_prepared", "committed"),
    ] {
        let job = Job::new("split", &input);
        let left = crash_at(&job, point, "3");
        assert!(left >= 1, "{point}: no part left prepared");

        let mut args = vec!["--exit-at-end"];
        args.extend(split());
        let output = job
            .command(&args)
            .env("CONSCOPE_LOG", "info")
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{point}: the restart failed: {stderr}");
        assert!(
            stderr.contains("resolved the prepared parts of an interrupted commit"),
            "{point}: the restart did not say it resolved the parts: {stderr}"
        );
        let resolved = stderr
            .lines()
            .find(|line| line.contains("resolved the prepared parts"))
            .unwrap_or_default()
            .to_owned();
        let count = |field: &str| -> i64 {
            resolved
                .split_whitespace()
                .find_map(|word| word.strip_prefix(&format!("{field}=")))
                .and_then(|value| value.parse().ok())
                .unwrap_or(-1)
        };
        match decision {
            "committed" => assert_eq!(
                (count("committed"), count("rolled_back")),
                (left, 0),
                "{resolved}"
            ),
            _ => assert_eq!(
                (count("committed"), count("rolled_back")),
                (0, left),
                "{resolved}"
            ),
        }
        assert_eq!(
            prepared_parts(&job.database_url),
            0,
            "{point}: parts left after the restart"
        );
        assert!(
            dump(&job.database_url) == expected,
            "{point}: the tables differ from a run on one connection"
        );
        assert_summaries_match_listings(&job.database_url);
        assert_eq!(
            alert_ids_on_topic(&job.alerts)
                .values()
                .filter(|count| **count != 1)
                .count(),
            0,
            "{point}: an alert was published twice"
        );
    }
}
