//! A commit split over the writer's connections (`src/sink/parts.rs`) that a
//! crash cuts in two: its parts prepared and its main transaction not
//! committed (they must be rolled back), or its main transaction committed and
//! its parts not (they must be committed). The parts are seen left prepared in
//! PostgreSQL after the crash; `conscope migrate` or the restart ends them
//! before a migration reads `listings` (the summaries' is made to run again),
//! another command refuses to migrate meanwhile, and the job ends with the
//! tables and alerts of a run on one connection.

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

        // The database is made to predate the summaries, whose migration
        // fills them from `listings`: it must see the parts' listings when
        // they were committed, and none of them when they were not.
        execute(
            &job.database_url,
            "DROP TABLE event_summary, section_summary;
             DELETE FROM schema_migrations WHERE name = '0005_summaries'",
        );
        // Another command that migrates refuses while parts are prepared.
        let refused = conscope()
            .args(["rules", "list", "--database-url", &job.database_url])
            .output()
            .expect("conscope rules list");
        let refusal = String::from_utf8_lossy(&refused.stderr);
        assert!(
            !refused.status.success()
                && refusal.contains("prepared part(s) of an interrupted conscope commit"),
            "{point}: a migration ran with parts prepared: {refusal}"
        );
        // `conscope migrate` after the first crash, `conscope run` itself
        // after the second: each ends the parts before it migrates.
        let output = match point {
            "after_prepare" => conscope()
                .args(["migrate", "--database-url", &job.database_url])
                .env("CONSCOPE_LOG", "info")
                .output()
                .expect("conscope migrate"),
            _ => {
                let mut args = vec!["--exit-at-end"];
                args.extend(split());
                job.command(&args)
                    .env("CONSCOPE_LOG", "info")
                    .output()
                    .expect("run")
            }
        };
        let (stderr, ok) = (String::from_utf8_lossy(&output.stderr), output.status.success());
        assert!(ok, "{point}: the restart failed: {stderr}");
        assert!(
            stderr.contains("resolved the prepared parts of an interrupted commit"),
            "{point}: the restart did not say it resolved the parts: {stderr}"
        );
        assert_summaries_match_listings(&job.database_url);
        if point == "after_prepare" {
            job.run_to_end(&split());
        }
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
