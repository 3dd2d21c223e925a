//! SPEC §2 Determinism: the same topic gives the same tables and the same alerts
//! for 1 worker, 4 workers with other batch sizes and epochs (and every commit
//! split over 4 writer connections), and a cluster of two processes of two
//! workers each (asking for more writer connections than PostgreSQL allows), with rules of every kind (SPEC §2b) active;
//! the summaries equal the aggregates over `listings` after each.

use std::process::Stdio;

use conscope_testkit::*;

#[test]
fn same_tables_and_alerts_for_any_workers_batches_and_processes() {
    require_broker();
    let input = unique("determinism");
    produce_generated(&input, 4, 20_000, 11, &[]);
    let events = first_event_ids(&input, 4);
    assert_eq!(events.len(), 4);

    let one = Job::new("det_w1", &input);
    add_rules_of_every_kind(&one, &events);
    one.run_to_end(&["-w", "1"]);
    let reference = dump(&one.database_url);
    assert_summaries_match_listings(&one.database_url);
    assert_rows_have_their_events(&one.database_url);
    assert!(!reference["section_summary"].is_empty());
    assert!(
        reference["price_history"].len() > 15_000,
        "{}",
        reference["price_history"].len()
    );
    for kind in [
        "listing_drop",
        "event_low",
        "rule_match",
        "new_low",
        "back_in_stock",
        "deal",
    ] {
        assert!(
            reference["price_alerts"]
                .iter()
                .any(|row| row.contains(&format!("|{kind}|"))),
            "the replay raised no {kind} alert"
        );
    }

    let four = Job::new("det_w4", &input);
    add_rules_of_every_kind(&four, &events);
    // Four writer connections, every commit split over them (`sink::parts`).
    four.run_to_end(&[
        "-w",
        "4",
        "--epoch-ms",
        "7",
        "--max-batch",
        "97",
        "--writer-split-rows",
        "1",
    ]);
    assert_summaries_match_listings(&four.database_url);
    assert_rows_have_their_events(&four.database_url);
    assert!(dump(&four.database_url) == reference, "-w 4 differs from -w 1");

    let cluster = Job::new("det_p2", &input);
    add_rules_of_every_kind(&cluster, &events);
    let hosts = hosts_file(2);
    let hosts_path = hosts.path().to_str().expect("path").to_owned();
    let processes: Vec<_> = (0..2)
        .map(|process| {
            cluster
                .command(&[
                    "--exit-at-end",
                    "-w",
                    "2",
                    "--processes",
                    "2",
                    "--process",
                    &process.to_string(),
                    "--hosts",
                    &hosts_path,
                    "--epoch-ms",
                    "23",
                    // More than the dev stack's max_prepared_transactions
                    // allows: the writer must fall back to one connection.
                    "--writer-connections",
                    "10",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn process")
        })
        .collect();
    for (process, child) in processes.into_iter().enumerate() {
        let output = child.wait_with_output().expect("process output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "cluster process failed: {stderr}");
        if process == 0 {
            assert!(
                stderr.contains("needs max_prepared_transactions >= 9")
                    && stderr.contains("writing on one connection"),
                "the writer did not say it falls back to one connection: {stderr}"
            );
        }
    }
    assert_summaries_match_listings(&cluster.database_url);
    assert_rows_have_their_events(&cluster.database_url);
    assert!(
        dump(&cluster.database_url) == reference,
        "2 processes x 2 workers differ from -w 1"
    );

    let expected_ids: Vec<String> = reference["price_alerts"]
        .iter()
        .map(|row| row.split('|').next().unwrap_or_default().to_owned())
        .collect();
    for job in [&one, &four, &cluster] {
        let on_topic = alert_ids_on_topic(&job.alerts);
        assert!(
            on_topic.values().all(|count| *count == 1),
            "an alert was published twice on {}",
            job.alerts
        );
        assert_eq!(
            on_topic.into_keys().collect::<Vec<_>>(),
            expected_ids,
            "alerts topic {}",
            job.alerts
        );
    }
}
