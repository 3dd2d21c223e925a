//! A message PostgreSQL refuses for good (a definite error) is rejected to the
//! dead-letter topic and the job goes on (SPEC §1, §5): every other message lands
//! exactly as in a run without the refused ones, which means the refused
//! message's contribution to derived rows (listings, events, summaries, alerts)
//! is gone too, not only its own row.
//!
//! The parser already rejects what PostgreSQL's `text` refuses (NUL), so the
//! test simulates an unforeseen definite error with CHECK constraints added to
//! the job's database: one on `price_history` (a row of the message itself) and
//! one on `events` (a row the message only contributes a field to).

use std::time::Duration;

use conscope_testkit::*;

fn obs(event: &str, section: &str, seat: u32, cents: u64, minute: u32, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event}","section":"{section}","row":"1","seat":"{seat}","source":"s1","price":"{}.{:02}","timestamp":"2026-01-01T{:02}:{:02}:00Z"{extra}}}"#,
        cents / 100,
        cents % 100,
        minute / 60,
        minute % 60,
    )
    .into_bytes()
}

/// Good observations of e1 (partition 0) and e2 (partition 1): price walks with
/// drops, so alerts depend on every price before them.
fn good_messages() -> Vec<(i32, Option<&'static str>, Vec<u8>)> {
    let mut messages = Vec::new();
    for step in 0..60u32 {
        for (partition, event) in [(0, "e1"), (1, "e2")] {
            let seat = step % 4;
            // A deterministic walk between 50.00 and 150.00 with frequent drops.
            let cents = 5_000 + u64::from((step * 7_919 + seat * 104_729) % 10_000);
            let extra = if step % 10 == 0 {
                format!(r#","event_name":"Show {event} {step}""#)
            } else {
                String::new()
            };
            messages.push((partition, Some(event), obs(event, "A", seat, cents, step, &extra)));
        }
    }
    messages
}

/// The good messages with three poisoned ones inserted: a listing in section
/// "poison" at the lowest price of its event (so, kept, it would change the
/// get-in price, the summaries and the alerts); an observation of e2 older
/// than its listing's current one (stale) whose name is the most recent (its
/// refusal comes from the writer's update of the event's fields); and the
/// last name e2 is given.
fn with_poison(good: &[(i32, Option<&'static str>, Vec<u8>)]) -> Vec<(i32, Option<&'static str>, Vec<u8>)> {
    let mut messages = good.to_vec();
    messages.insert(41, (0, Some("e1"), obs("e1", "poison", 9, 100, 20, "")));
    // Seat 1 of e2 was last observed at minute 57; the latest name is minute 50's.
    messages.push((
        1,
        Some("e2"),
        obs("e2", "A", 1, 7_000, 55, r#","event_name":"Poison Name""#),
    ));
    messages.push((
        1,
        Some("e2"),
        obs("e2", "A", 1, 9_000, 100, r#","event_name":"Poison Name""#),
    ));
    messages
}

fn add_rule(job: &Job) {
    execute(
        &job.database_url,
        "INSERT INTO alert_rules (event_id, currency, max_price) VALUES ('e1', 'USD', 60)",
    );
}

/// A reference job on the good messages and a job on them with the poisoned
/// ones, whose database refuses those (CHECK constraints); both migrated, with
/// the same rule. `name` prefixes their topics and databases.
fn reference_and_poisoned(name: &str) -> (Job, Job) {
    let good = good_messages();
    let clean_input = unique(&format!("{name}_clean"));
    create_topic(&clean_input, 2);
    produce(&clean_input, &good);
    let poisoned_input = unique(&format!("{name}_poisoned"));
    create_topic(&poisoned_input, 2);
    produce(&poisoned_input, &with_poison(&good));

    let reference = Job::new(&format!("{name}_ref"), &clean_input);
    reference.migrate();
    add_rule(&reference);
    let poisoned = Job::new(&format!("{name}_poisoned"), &poisoned_input);
    poisoned.migrate();
    add_rule(&poisoned);
    execute(
        &poisoned.database_url,
        "ALTER TABLE price_history ADD CONSTRAINT poison CHECK (section <> 'poison');
         ALTER TABLE events ADD CONSTRAINT poison_name CHECK (event_name <> 'Poison Name')",
    );
    (reference, poisoned)
}

#[test]
fn a_message_postgres_refuses_goes_to_the_dlq_and_the_rest_lands_as_without_it() {
    require_broker();
    let good = good_messages();
    let (reference, poisoned) = reference_and_poisoned("definite");
    let poisoned_input = poisoned.input.clone();
    let reference_out = reference.run_to_end_within(Duration::from_secs(120), &[]);
    // Bounded: a crash loop or a retry loop fails here.
    let poisoned_out = poisoned.run_to_end_within(Duration::from_secs(120), &["-w", "2"]);

    assert_eq!(dump(&poisoned.database_url), dump(&reference.database_url));
    assert_summaries_match_listings(&poisoned.database_url);
    let expected_ids: Vec<String> = alert_ids_on_topic(&reference.alerts).into_keys().collect();
    let published = alert_ids_on_topic(&poisoned.alerts);
    assert!(published.values().all(|count| *count == 1), "{published:?}");
    assert_eq!(published.into_keys().collect::<Vec<_>>(), expected_ids);

    // Exactly the three poisoned messages, once each, with the usual headers.
    assert!(read_all(&reference.dlq).is_empty());
    let mut letters = read_all(&poisoned.dlq);
    letters.sort_by_key(|letter| letter.headers.get("conscope.partition").cloned());
    let refused: Vec<(String, String, String)> = letters
        .iter()
        .map(|letter| {
            let header = |name: &str| letter.headers.get(name).cloned().unwrap_or_default();
            (
                header("conscope.topic"),
                header("conscope.partition"),
                String::from_utf8_lossy(letter.value.as_deref().unwrap_or_default()).into_owned(),
            )
        })
        .collect();
    let poison = with_poison(&good);
    assert_eq!(
        refused,
        [
            (
                poisoned_input.clone(),
                "0".to_owned(),
                String::from_utf8_lossy(&poison[41].2).into_owned()
            ),
            (
                poisoned_input.clone(),
                "1".to_owned(),
                String::from_utf8_lossy(&poison[poison.len() - 2].2).into_owned()
            ),
            (
                poisoned_input.clone(),
                "1".to_owned(),
                String::from_utf8_lossy(&poison[poison.len() - 1].2).into_owned()
            ),
        ]
    );
    for letter in &letters {
        let error = letter.headers.get("conscope.error").cloned().unwrap_or_default();
        assert!(
            error.starts_with("postgres rejected:") && error.contains("23514"),
            "{error}"
        );
        assert!(letter.headers.contains_key("conscope.offset"));
    }

    let reference_summary = parse_summary(&reference_out);
    let summary = parse_summary(&poisoned_out);
    assert_eq!(
        summary.get("rejected").map(String::as_str),
        Some("3"),
        "{poisoned_out}"
    );
    for field in [
        "prices_stored",
        "events_created",
        "duplicates",
        "stale",
        "listing_drop",
        "event_low",
        "rule_match",
    ] {
        assert_eq!(summary.get(field), reference_summary.get(field), "{field}");
    }
    assert_eq!(
        query_i64(&poisoned.database_url, "SELECT count(*) FROM outbox"),
        0
    );
    assert_eq!(
        stored_offsets(&poisoned.database_url, &poisoned_input),
        high_watermarks(&poisoned_input)
    );

    // The operator's view: `quarantine list`, and `release` by position or all.
    let quarantine = |args: &[&str]| {
        let output = conscope()
            .arg("quarantine")
            .args(args)
            .args(["--database-url", &poisoned.database_url])
            .output()
            .expect("conscope quarantine");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        (
            output.status.success(),
            stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (ok, listed, _) = quarantine(&["list"]);
    assert!(ok);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 3, "{listed}");
    assert!(
        lines
            .iter()
            .all(|line| line.starts_with(&format!("{poisoned_input} ")) && line.contains("(23514)")),
        "{listed}"
    );
    let (ok, _, error) = quarantine(&["release"]);
    assert!(!ok && error.contains("--all"), "{error}");
    let (partition, offset) = lines[0]
        .split(' ')
        .nth(1)
        .and_then(|position| position.split_once(':'))
        .expect("partition:offset");
    let (ok, released, _) = quarantine(&[
        "release",
        "--topic",
        &poisoned_input,
        "--partition",
        partition,
        "--offset",
        offset,
    ]);
    assert!(ok);
    assert_eq!(released.lines().count(), 1, "{released}");
    assert_eq!(quarantine(&["list"]).1.lines().count(), 2);
    let (ok, released, _) = quarantine(&["release", "--all"]);
    assert!(ok);
    assert_eq!(released.lines().count(), 2, "{released}");
    assert_eq!(
        query_i64(&poisoned.database_url, "SELECT count(*) FROM quarantine"),
        0
    );
}

/// Two seats observed at the same instant, only seat 1 carrying the venue
/// PostgreSQL refuses (a CHECK on `events`): seat 1, and not seat 2, goes to the
/// dead-letter topic; the rest lands as in a run without seat 1's message.
#[test]
fn only_the_message_that_carried_a_refused_field_is_rejected() {
    require_broker();
    let venue = r#","venue":"Refused Hall""#;
    let mut poisoned = good_messages();
    let seat_1 = (0, Some("e1"), obs("e1", "B", 1, 4_000, 70, venue));
    let seat_2 = (0, Some("e1"), obs("e1", "B", 2, 4_100, 70, ""));
    let clean: Vec<_> = poisoned.iter().cloned().chain([seat_2.clone()]).collect();
    poisoned.push(seat_1.clone());
    poisoned.push(seat_2);
    let clean_input = unique("definite_field_clean");
    create_topic(&clean_input, 2);
    produce(&clean_input, &clean);
    let poisoned_input = unique("definite_field");
    create_topic(&poisoned_input, 2);
    produce(&poisoned_input, &poisoned);

    let reference = Job::new("definite_field_ref", &clean_input);
    reference.run_to_end_within(Duration::from_secs(120), &[]);
    let job = Job::new("definite_field", &poisoned_input);
    job.migrate();
    execute(
        &job.database_url,
        "ALTER TABLE events ADD CONSTRAINT refused_venue CHECK (venue <> 'Refused Hall')",
    );
    job.run_to_end_within(Duration::from_secs(120), &["-w", "2"]);

    assert_eq!(dump(&job.database_url), dump(&reference.database_url));
    let letters: Vec<String> = read_all(&job.dlq)
        .iter()
        .map(|letter| String::from_utf8_lossy(letter.value.as_deref().unwrap_or_default()).into_owned())
        .collect();
    assert_eq!(letters, [String::from_utf8_lossy(&seat_1.2).into_owned()]);
}

/// The same refusals in a cluster of two processes: process 0's writer
/// quarantines the refused messages and both processes replay in step without
/// them (neither stops), so the result is the one of a single process run on
/// the input without them.
#[test]
fn a_cluster_quarantines_and_both_processes_replay_in_step() {
    require_broker();
    let (reference, cluster) = reference_and_poisoned("definite_cluster");
    reference.run_to_end_within(Duration::from_secs(120), &[]);
    let hosts = hosts_file(2);
    let hosts = hosts.path().to_str().expect("hosts path").to_owned();
    std::thread::scope(|threads| {
        for process in ["0", "1"] {
            let (cluster, hosts) = (&cluster, &hosts);
            threads.spawn(move || {
                let args = [
                    "-w",
                    "1",
                    "--processes",
                    "2",
                    "--process",
                    process,
                    "--hosts",
                    hosts,
                ];
                // Bounded: a process that stops or waits for the other fails here.
                cluster.run_to_end_within(Duration::from_secs(180), &args);
            });
        }
    });

    assert_eq!(dump(&cluster.database_url), dump(&reference.database_url));
    assert_summaries_match_listings(&cluster.database_url);
    assert_eq!(
        query_i64(&cluster.database_url, "SELECT count(*) FROM quarantine"),
        3
    );
    assert_eq!(read_all(&cluster.dlq).len(), 3);
    let published = alert_ids_on_topic(&cluster.alerts);
    assert!(published.values().all(|count| *count == 1), "{published:?}");
    assert_eq!(
        published.into_keys().collect::<Vec<_>>(),
        alert_ids_on_topic(&reference.alerts)
            .into_keys()
            .collect::<Vec<_>>()
    );
}
