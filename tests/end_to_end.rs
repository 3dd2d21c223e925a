//! The job end to end on the real broker and PostgreSQL: a known mix of input
//! lands exactly as SPEC §2 says, ties of event fields with stale carriers
//! included; rejects reach the dead-letter topic with their headers; and the
//! tables are the same for any number of workers or processes.

use std::collections::BTreeMap;

use conscope_testkit::*;

fn obs(event: &str, section: &str, seat: &str, price: &str, at: &str, extra: &str) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event}","section":"{section}","row":"1","seat":"{seat}","source":"s1","price":{price},"timestamp":"{at}"{extra}}}"#
    )
    .into_bytes()
}

/// Partition 0 carries event e1, partition 1 event e2 (keyed by event, as SPEC
/// §1 asks of producers).
fn known_mix() -> Vec<(i32, Option<&'static str>, Vec<u8>)> {
    let named = r#","event_name":"Show One","venue":"Hall","event_date":"2026-06-01T20:00:00Z""#;
    vec![
        // e1 L1 first sight.
        (0, Some("e1"), obs("e1", "A", "1", r#""100.00""#, "2026-01-01T00:00:00Z", named)),
        // L1 100 -> 90: listing_drop (10%) and event_low (100 -> 90).
        (0, Some("e1"), obs("e1", "A", "1", "90", "2026-01-01T00:01:00Z", "")),
        // The same observation again: a duplicate.
        (0, Some("e1"), obs("e1", "A", "1", "90", "2026-01-01T00:01:00Z", "")),
        // Older than L1's current: stale, history only.
        (0, Some("e1"), obs("e1", "A", "1", "80", "2026-01-01T00:00:30Z", "")),
        // L2 at 95: get-in stays 90.
        (0, Some("e1"), obs("e1", "A", "2", "95", "2026-01-01T00:02:00Z", "")),
        // L1 sold: get-in rises to 95, no alert.
        (0, Some("e1"), obs("e1", "A", "1", "90", "2026-01-01T00:03:00Z", r#","available":false"#)),
        // L1 re-listed at 85: no listing_drop (was unavailable); event_low 95 -> 85;
        // the rule (<= 88) fires 95 -> 85.
        (0, Some("e1"), obs("e1", "A", "1", "85", "2026-01-01T00:04:00Z", "")),
        // Three decimals: rejected.
        (0, Some("e1"), obs("e1", "A", "1", r#""12.345""#, "2026-01-01T00:04:30Z", "")),
        // L2 95 -> 94: 1.05% < 5%, no alert; renames the event.
        (0, Some("e1"), obs("e1", "A", "2", "94", "2026-01-01T00:05:00Z", r#","event_name":"Show One (Late)""#)),
        // Stale L2 carrying an older name: history only, the name stays.
        (0, Some("e1"), obs("e1", "A", "2", "99", "2026-01-01T00:01:30Z", r#","event_name":"Stale Name""#)),
        // e2: defaults, epoch-millisecond timestamps, EUR.
        (
            1,
            Some("e2"),
            br#"{"event_id":"e2","section":"B","price":50,"currency":"EUR","timestamp":1767225600000}"#.to_vec(),
        ),
        (1, None, b"garbage".to_vec()),
        // 50 -> 40: listing_drop and event_low in EUR.
        (
            1,
            Some("e2"),
            br#"{"event_id":"e2","section":"B","price":"40","currency":"EUR","timestamp":1767225660000,"unknown":1}"#
                .to_vec(),
        ),
        (1, Some("e2"), br#"{"event_id":"e2","price":"40","timestamp":1767225660000}"#.to_vec()),
    ]
}

#[test]
fn known_mix_lands_exactly_and_rejects_reach_the_dlq() {
    require_broker();
    let input = unique("e2e_mix");
    create_topic(&input, 2);
    produce(&input, &known_mix());
    let job = Job::new("e2e_mix", &input);
    job.migrate();
    execute(
        &job.database_url,
        "INSERT INTO alert_rules (event_id, currency, max_price) VALUES ('e1', 'USD', 88)",
    );

    let output = job.run_to_end(&["-w", "2"]);
    assert_summary(
        &String::from_utf8_lossy(&output.stdout),
        &[
            ("duplicates", 1),
            ("stale", 2),
            ("rejected", 3),
            ("events_created", 2),
            ("prices_stored", 10),
        ],
    );

    let url = &job.database_url;
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, event_name, coalesce(venue, '-'), coalesce(event_date::text, '-'),
                              first_seen, last_seen) FROM events ORDER BY event_id"
        ),
        [
            "e1|Show One (Late)|Hall|2026-06-01 20:00:00+00|2026-01-01 00:00:00+00|2026-01-01 00:05:00+00",
            "e2|e2|-|-|2026-01-01 00:00:00+00|2026-01-01 00:01:00+00",
        ]
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM price_history ORDER BY event_id, seat, observed_at"
        ),
        [
            "e1|A|1|1|s1|100.00|USD|t|2026-01-01 00:00:00+00",
            "e1|A|1|1|s1|80.00|USD|t|2026-01-01 00:00:30+00",
            "e1|A|1|1|s1|90.00|USD|t|2026-01-01 00:01:00+00",
            "e1|A|1|1|s1|90.00|USD|f|2026-01-01 00:03:00+00",
            "e1|A|1|1|s1|85.00|USD|t|2026-01-01 00:04:00+00",
            "e1|A|1|2|s1|99.00|USD|t|2026-01-01 00:01:30+00",
            "e1|A|1|2|s1|95.00|USD|t|2026-01-01 00:02:00+00",
            "e1|A|1|2|s1|94.00|USD|t|2026-01-01 00:05:00+00",
            "e2|B|||unknown|50.00|EUR|t|2026-01-01 00:00:00+00",
            "e2|B|||unknown|40.00|EUR|t|2026-01-01 00:01:00+00",
        ]
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM listings ORDER BY event_id, seat"
        ),
        [
            "e1|A|1|1|s1|85.00|USD|t|2026-01-01 00:04:00+00",
            "e1|A|1|2|s1|94.00|USD|t|2026-01-01 00:05:00+00",
            "e2|B|||unknown|40.00|EUR|t|2026-01-01 00:01:00+00",
        ]
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', kind, event_id, seat, coalesce(rule_id::text, '-'),
                              coalesce(old_price::text, 'null'), new_price, currency, observed_at)
             FROM price_alerts ORDER BY event_id, observed_at, kind"
        ),
        [
            "event_low|e1|1|-|100.00|90.00|USD|2026-01-01 00:01:00+00",
            "listing_drop|e1|1|-|100.00|90.00|USD|2026-01-01 00:01:00+00",
            "event_low|e1|1|-|95.00|85.00|USD|2026-01-01 00:04:00+00",
            "rule_match|e1|1|1|95.00|85.00|USD|2026-01-01 00:04:00+00",
            "event_low|e2||-|50.00|40.00|EUR|2026-01-01 00:01:00+00",
            "listing_drop|e2||-|50.00|40.00|EUR|2026-01-01 00:01:00+00",
        ]
    );

    // Every alert row is on the alerts topic exactly once, with SPEC §3 fields.
    let on_topic = read_all(&job.alerts);
    assert_eq!(on_topic.len(), 6);
    let ids: BTreeMap<String, usize> = alert_ids_on_topic(&job.alerts);
    let table_ids = query_strings(url, "SELECT alert_id FROM price_alerts ORDER BY alert_id");
    assert_eq!(ids.keys().cloned().collect::<Vec<_>>(), table_ids);
    assert!(ids.values().all(|count| *count == 1));
    for message in &on_topic {
        let value: serde_json::Value = serde_json::from_slice(message.value.as_deref().unwrap()).unwrap();
        let event = value["event_id"].as_str().unwrap();
        assert_eq!(
            message.key.as_deref(),
            Some(event.as_bytes()),
            "alerts are keyed by event_id"
        );
        for field in [
            "alert_id",
            "kind",
            "section",
            "row",
            "seat",
            "source",
            "new_price",
            "currency",
            "observed_at",
        ] {
            assert!(value.get(field).is_some(), "alert JSON lacks {field}: {value}");
        }
        assert!(value["new_price"].is_string(), "prices are decimal strings");
    }

    // Dead letters: original key and value, and where they came from.
    let mut dead = read_all(&job.dlq);
    dead.sort_by_key(|message| {
        (
            message.headers["conscope.partition"].clone(),
            message.headers["conscope.offset"].clone(),
        )
    });
    assert_eq!(dead.len(), 3);
    let summary: Vec<(String, String, String, Option<Vec<u8>>)> = dead
        .iter()
        .map(|message| {
            assert_eq!(message.headers["conscope.topic"], input);
            (
                message.headers["conscope.partition"].clone(),
                message.headers["conscope.offset"].clone(),
                message.headers["conscope.error"]
                    .split(':')
                    .next()
                    .unwrap_or("")
                    .to_owned(),
                message.key.clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("0".into(), "7".into(), "price".into(), Some(b"e1".to_vec())),
            ("1".into(), "1".into(), "message".into(), None),
            ("1".into(), "3".into(), "section".into(), Some(b"e2".to_vec())),
        ]
    );
    assert_eq!(dead[1].value.as_deref(), Some(&b"garbage"[..]));

    // Offsets stored with the rows: a second run finds nothing new to do.
    assert_eq!(
        query_strings(
            url,
            "SELECT partition || ':' || next_offset FROM kafka_offsets ORDER BY partition"
        ),
        ["0:10", "1:4"]
    );
    let again = job.run_to_end(&[]);
    assert_summary(&String::from_utf8_lossy(&again.stdout), &[("processed", 0)]);
    assert_eq!(read_all(&job.alerts).len(), 6, "a rerun publishes nothing twice");
}

/// `--input-file` has the semantics of a topic: the same messages as JSON lines
/// give the same tables, and a second run resumes after the stored line.
#[test]
fn input_file_gives_the_tables_of_the_same_messages_on_a_topic() {
    require_broker();
    let input = unique("e2e_file");
    produce_generated(&input, 4, 5_000, 21, &[]);
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_str().expect("path").to_owned();
    let output = conscope()
        .args(["produce", "--output", &path, "--count", "5000", "--seed", "21"])
        .output()
        .expect("produce to a file");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let from_topic = Job::new("e2e_file_topic", &input);
    from_topic.run_to_end(&["-w", "2"]);
    let from_file = Job::new("e2e_file_file", &input);
    let summary = from_file.run_to_end(&["-w", "2", "--input-file", &path]);
    assert_summary(&String::from_utf8_lossy(&summary.stdout), &[("processed", 5000)]);

    let expected = dump(&from_topic.database_url);
    assert!(expected["price_history"].len() > 4_000);
    assert!(
        dump(&from_file.database_url) == expected,
        "--input-file differs from the topic"
    );
    assert_eq!(
        query_strings(
            &from_file.database_url,
            "SELECT topic || ':' || next_offset FROM kafka_offsets"
        ),
        [format!("file:{path}:5000")]
    );
    let again = from_file.run_to_end(&["--input-file", &path]);
    assert_summary(&String::from_utf8_lossy(&again.stdout), &[("processed", 0)]);
}

/// Writes an input file of a valid line, the line `middle`, and a valid line.
fn write_two_prices_around(path: &std::path::Path, middle: &[u8]) {
    let mut lines = obs("e1", "A", "1", "100", "2026-01-01T00:00:00Z", "");
    lines.push(b'\n');
    lines.extend_from_slice(middle);
    lines.push(b'\n');
    lines.extend_from_slice(&obs("e1", "A", "2", "90", "2026-01-01T00:01:00Z", ""));
    lines.push(b'\n');
    std::fs::write(path, lines).expect("write input file");
}

/// `--input-file` stores its offsets under the file's canonical path: naming the
/// same file another way resumes after the stored line and re-sends no reject.
#[test]
fn input_file_resumes_whatever_path_names_the_file() {
    require_broker();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.jsonl");
    write_two_prices_around(&path, b"garbage");
    let job = Job::new("e2e_file_paths", "unused");

    let first = job
        .command(&["--exit-at-end", "--input-file", "./x.jsonl"])
        .current_dir(dir.path())
        .output()
        .expect("run conscope");
    let first_out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{first_out}\n{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_summary(&first_out, &[("processed", 3)]);

    let absolute = path.canonicalize().expect("canonical path");
    let again = job.run_to_end(&["--input-file", absolute.to_str().expect("path")]);
    let again_out = String::from_utf8_lossy(&again.stdout);
    assert_summary(&again_out, &[("processed", 0)]);
    assert_eq!(read_all(&job.dlq).len(), 1, "each reject reaches the DLQ once");
    assert_eq!(
        query_strings(
            &job.database_url,
            "SELECT topic || ':' || next_offset FROM kafka_offsets"
        ),
        [format!("file:{}:3", absolute.display())]
    );
}

/// A line far over the size limit, without a newline for megabytes, is rejected
/// and the lines after it are still processed at their line numbers.
#[test]
fn input_file_rejects_a_huge_line_and_goes_on() {
    require_broker();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("huge.jsonl");
    write_two_prices_around(&path, &vec![b'x'; 5_000_000]);
    let job = Job::new("e2e_file_huge", "unused");
    let name = path.to_str().expect("path");
    let output = job.run_to_end(&["--input-file", name]);
    assert_summary(
        &String::from_utf8_lossy(&output.stdout),
        &[("processed", 3), ("prices_stored", 2), ("rejected", 1)],
    );
    let dead = read_all(&job.dlq);
    assert_eq!(dead.len(), 1);
    assert_eq!(
        stored_offsets(
            &job.database_url,
            &format!("file:{}", path.canonicalize().expect("path").display())
        ),
        BTreeMap::from([(0, 3)])
    );
}

/// A stored offset that retention has since deleted: the job resumes at the log
/// start, warns, and counts the messages it never saw.
#[test]
fn messages_lost_to_retention_are_counted_and_warned_about() {
    require_broker();
    let input = unique("e2e_retention");
    create_topic(&input, 1);
    let message = |seat: usize| {
        (
            0,
            Some("e1"),
            obs("e1", "A", &seat.to_string(), "100", "2026-01-01T00:00:00Z", ""),
        )
    };
    produce(&input, &(0..5).map(message).collect::<Vec<_>>());
    let job = Job::new("e2e_retention", &input);
    let first = job.run_to_end(&[]);
    assert_summary(
        &String::from_utf8_lossy(&first.stdout),
        &[("skipped_by_retention", 0)],
    );
    assert_eq!(
        stored_offsets(&job.database_url, &input),
        BTreeMap::from([(0, 5)])
    );

    produce(&input, &(5..10).map(message).collect::<Vec<_>>());
    delete_records(&input, 0, 8);
    let again = job.run_to_end(&[]);
    assert_summary(
        &String::from_utf8_lossy(&again.stdout),
        &[("processed", 2), ("skipped_by_retention", 3)],
    );
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(
        log.lines().any(|line| line.contains(" WARN ")
            && line.contains("retention")
            && metrics_fields(line).get("lost").map(String::as_str) == Some("3")),
        "no warning: {log}"
    );
    assert_eq!(
        stored_offsets(&job.database_url, &input),
        BTreeMap::from([(0, 10)])
    );
}

/// Observations older than their listing's current state are written by the
/// Postgres writer with the first of each identity winning, in one batch and
/// across runs; the duplicates among them change nothing (not the stored price,
/// not the event's fields), the stale ones change history, `first_seen`, and
/// the event fields they are the most recent carrier of (SPEC §2), which later
/// rows of the job keep unless they carry something more recent.
#[test]
fn older_observations_first_of_an_identity_wins_and_duplicates_change_nothing() {
    require_broker();
    let input = unique("e2e_older");
    create_topic(&input, 1);
    let named = r#","event_name":"Show""#;
    let stale_fields = r#","event_name":"Old Name","venue":"Stale Hall""#;
    let dup_fields = r#","event_name":"Dup Name","venue":"Dup Hall","event_date":"2027-01-01T00:00:00Z""#;
    let l1 = |price, at, extra| (0, Some("e1"), obs("e1", "A", "1", price, at, extra));
    let l2 = |price, at, extra| (0, Some("e1"), obs("e1", "A", "2", price, at, extra));
    produce(
        &input,
        &[
            l1("100", "2026-01-01T00:10:00Z", named),
            // Older: stale. Its name is older than "Show"; its venue is the
            // only one yet, so it counts.
            l1("50", "2026-01-01T00:05:00Z", stale_fields),
            // The same identity again, another price and event fields: a duplicate.
            l1("60", "2026-01-01T00:05:00Z", dup_fields),
        ],
    );
    let job = Job::new("e2e_older", &input);
    let first = job.run_to_end(&[]);
    assert_summary(
        &String::from_utf8_lossy(&first.stdout),
        &[("prices_stored", 2), ("stale", 1), ("duplicates", 1)],
    );

    // After a restart: a duplicate of a stored older identity, a stale
    // observation before everything stored, another listing's first (current)
    // observation with a venue older than the stale one's, and a newer one.
    produce(
        &input,
        &[
            l1("70", "2026-01-01T00:05:00Z", dup_fields),
            l1("40", "2026-01-01T00:01:00Z", r#","venue":"Oldest Hall""#),
            l2("80", "2026-01-01T00:03:00Z", r#","venue":"L2 Hall""#),
            l1("90", "2026-01-01T00:20:00Z", ""),
        ],
    );
    let second = job.run_to_end(&[]);
    assert_summary(
        &String::from_utf8_lossy(&second.stdout),
        &[("prices_stored", 3), ("stale", 1), ("duplicates", 1)],
    );

    let url = &job.database_url;
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', seat, price, observed_at) FROM price_history ORDER BY observed_at"
        ),
        [
            "1|40.00|2026-01-01 00:01:00+00",
            "2|80.00|2026-01-01 00:03:00+00",
            "1|50.00|2026-01-01 00:05:00+00",
            "1|100.00|2026-01-01 00:10:00+00",
            "1|90.00|2026-01-01 00:20:00+00",
        ]
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', event_name, coalesce(venue, '-'), coalesce(event_date::text, '-'),
                              first_seen, last_seen) FROM events"
        ),
        ["Show|Stale Hall|-|2026-01-01 00:01:00+00|2026-01-01 00:20:00+00"]
    );
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', seat, price, observed_at) FROM listings ORDER BY seat"
        ),
        ["1|90.00|2026-01-01 00:20:00+00", "2|80.00|2026-01-01 00:03:00+00"]
    );
}

/// Lines of one partition (an input file) where, per event, a stale carrier
/// (older than its listing's current state, so applied by the writer) and
/// another carrier of other values share an `observed_at`: each event's
/// fields must be the later message's (SPEC §2), whichever merge writes them
/// first. e1: a current carrier, then the stale one; e2: the stale carrier,
/// then a current one; e3: two stale carriers. After the pair, a message of
/// each event without fields makes the job write its event row again.
fn ties_with_stale_carriers() -> Vec<Vec<u8>> {
    let at = |seconds: u32| format!("2026-01-01T00:00:{seconds:02}Z");
    let fields = |name: &str, date: &str| {
        format!(r#","event_name":"{name}","venue":"{name} hall","event_date":"2026-06-0{date}T20:00:00Z""#)
    };
    let line = |event: &str, seat: &str, seconds: u32, extra: &str| {
        obs(event, "A", seat, "100", &at(seconds), extra)
    };
    vec![
        line("e1", "1", 20, ""),
        line("e1", "2", 10, &fields("e1 current first", "1")),
        line("e1", "1", 10, &fields("e1 stale later", "2")),
        line("e1", "2", 30, ""),
        line("e2", "1", 20, ""),
        line("e2", "1", 10, &fields("e2 stale first", "1")),
        line("e2", "2", 10, &fields("e2 current later", "2")),
        line("e2", "2", 30, ""),
        line("e3", "1", 20, ""),
        line("e3", "2", 20, ""),
        line("e3", "1", 10, &fields("e3 stale first", "1")),
        line("e3", "2", 10, &fields("e3 stale later", "2")),
        line("e3", "3", 30, ""),
    ]
}

fn write_lines(path: &std::path::Path, lines: &[Vec<u8>]) {
    let mut text = Vec::new();
    for line in lines {
        text.extend_from_slice(line);
        text.push(b'\n');
    }
    std::fs::write(path, text).expect("write input file");
}

/// SPEC §2's "ties go to the later message in partition order" when one of
/// the carriers is stale: the same fields (and their carriers' positions)
/// whether the input is one commit, a commit per message over two workers, or
/// a restart after every message.
#[test]
fn equal_times_go_to_the_later_message_with_stale_carriers() {
    require_broker();
    let lines = ties_with_stale_carriers();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ties.jsonl");
    write_lines(&path, &lines);
    let file = path.to_str().expect("path");
    let fields = |url: &str| {
        query_strings(
            url,
            "SELECT concat_ws('|', event_id, event_name, venue, event_date::date, event_name_observed_at,
                              event_name_partition, event_name_offset, venue_offset, event_date_offset)
             FROM events ORDER BY event_id",
        )
    };
    let expected = [
        "e1|e1 stale later|e1 stale later hall|2026-06-02|2026-01-01 00:00:10+00|0|2|2|2",
        "e2|e2 current later|e2 current later hall|2026-06-02|2026-01-01 00:00:10+00|0|6|6|6",
        "e3|e3 stale later|e3 stale later hall|2026-06-02|2026-01-01 00:00:10+00|0|11|11|11",
    ];

    let whole = Job::new("e2e_ties_whole", "unused");
    let output = whole.run_to_end(&["--input-file", file]);
    assert_summary(
        &String::from_utf8_lossy(&output.stdout),
        &[("processed", 13), ("stale", 4), ("duplicates", 0)],
    );
    assert_eq!(fields(&whole.database_url), expected, "one run");
    let reference = dump(&whole.database_url);

    let small = Job::new("e2e_ties_small", "unused");
    small.run_to_end(&[
        "--input-file",
        file,
        "-w",
        "2",
        "--max-batch",
        "1",
        "--epoch-ms",
        "1",
        "--max-commit-records",
        "1",
    ]);
    assert_eq!(fields(&small.database_url), expected, "small commits");
    assert!(dump(&small.database_url) == reference, "small commits differ");

    let restarted = Job::new("e2e_ties_restarted", "unused");
    for end in 1..=lines.len() {
        write_lines(&path, &lines[..end]);
        let output = restarted.run_to_end(&["--input-file", file]);
        assert_summary(&String::from_utf8_lossy(&output.stdout), &[("processed", 1)]);
    }
    assert_eq!(
        fields(&restarted.database_url),
        expected,
        "a restart after every message"
    );
    assert!(dump(&restarted.database_url) == reference, "restarts differ");
}
