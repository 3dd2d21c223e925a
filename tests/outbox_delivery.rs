//! The outbox publisher against the real broker (SPEC §4, §5): a dead letter
//! too large for a broker is cut to 64 KiB; a message the broker refuses for
//! good is parked and blocks nothing; recovery deletes only the rows it finds
//! on the topic (never trusting that delivery had no gaps), also behind other
//! producers' messages; producer settings recovery relies on cannot be
//! switched off with `--kafka`.

use std::collections::BTreeMap;
use std::time::Duration;

use conscope_testkit::*;

/// Long enough for a run of a few messages; a run that waits forever fails.
const LIMIT: Duration = Duration::from_secs(90);

fn obs(price: &str, minute: u32) -> Vec<u8> {
    format!(
        r#"{{"event_id":"e1","section":"A","row":"1","seat":"1","source":"s1","price":"{price}","timestamp":"2026-01-01T00:{minute:02}:00Z"}}"#
    )
    .into_bytes()
}

fn message(key: Option<&str>, value: Vec<u8>) -> Outgoing {
    Outgoing {
        partition: 0,
        key: key.map(str::to_owned),
        value,
        headers: Vec::new(),
    }
}

/// 100 -> 90 gives a listing_drop and an event_low alert.
fn two_alerts_around(rejects: [Vec<u8>; 2]) -> Vec<Outgoing> {
    let [first, second] = rejects;
    vec![
        message(Some("e1"), obs("100.00", 0)),
        message(Some("big"), first),
        message(Some("e1"), obs("90.00", 1)),
        message(None, second),
    ]
}

#[test]
fn an_oversized_dead_letter_is_cut_to_64_kib_and_later_messages_flow() {
    require_broker();
    let input = unique("oversized");
    create_topic(&input, 1);
    let huge: Vec<u8> = (0..999_900u32).map(|i| b'a' + (i % 26) as u8).collect();
    produce_with(
        &input,
        &two_alerts_around([huge.clone(), b"garbage".to_vec()]),
        &[("message.max.bytes", "2000000")],
    );
    let job = Job::new("oversized", &input);

    let summary = job.run_to_end_within(LIMIT, &[]);
    assert_summary(
        &summary,
        &[
            ("published_dead_letters", 2),
            ("published_alerts", 2),
            ("parked", 0),
        ],
    );

    let dead: Vec<Read> = read_all(&job.dlq);
    assert_eq!(dead.len(), 2, "{dead:?}");
    let cut = &dead[0];
    assert_eq!(cut.value.as_deref(), Some(&huge[..65_536]));
    assert_eq!(cut.key.as_deref(), Some(&b"big"[..]));
    let expected: BTreeMap<String, String> = [
        ("conscope.topic", input.as_str()),
        ("conscope.partition", "0"),
        ("conscope.offset", "1"),
        ("conscope.original_size", "999900"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (name, value) in &expected {
        assert_eq!(cut.headers.get(name), Some(value), "{name}: {:?}", cut.headers);
    }
    assert!(
        cut.headers["conscope.error"].contains("65536"),
        "{:?}",
        cut.headers
    );
    assert_eq!(dead[1].value.as_deref(), Some(&b"garbage"[..]));
    assert!(!dead[1].headers.contains_key("conscope.original_size"));
    assert_eq!(alert_ids_on_topic(&job.alerts).len(), 2);
    assert_eq!(query_i64(&job.database_url, "SELECT count(*) FROM outbox"), 0);
}

#[test]
fn a_dead_letter_the_broker_refuses_is_parked_and_blocks_nothing() {
    require_broker();
    let input = unique("refused");
    create_topic(&input, 1);
    // Under 64 KiB, so not cut, but over what this dead-letter topic takes.
    let long = vec![b'x'; 3_000];
    produce(
        &input,
        &[
            (0, Some("e1"), obs("100.00", 0)),
            (0, Some("big"), long),
            (0, Some("e1"), obs("90.00", 1)),
            (0, None, b"garbage".to_vec()),
        ],
    );
    let job = Job::new("refused", &input);
    create_topic_with(&job.dlq, 1, &[("max.message.bytes", "2048")]);

    let summary = job.run_to_end_within(LIMIT, &[]);
    assert_summary(
        &summary,
        &[
            ("parked", 1),
            ("published_dead_letters", 1),
            ("published_alerts", 2),
        ],
    );

    let dead = read_all(&job.dlq);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].value.as_deref(), Some(&b"garbage"[..]));
    assert_eq!(alert_ids_on_topic(&job.alerts).len(), 2);
    let url = &job.database_url;
    assert_eq!(query_i64(url, "SELECT count(*) FROM outbox"), 0);
    assert_eq!(
        query_strings(
            url,
            "SELECT concat_ws('|', topic, length(payload), headers[1]) FROM outbox_parked \
             WHERE park_error ILIKE '%too large%' AND parked_at IS NOT NULL"
        ),
        [format!("{}|3000|conscope.error", job.dlq)]
    );
}

/// A migrated job (empty input, one-partition alerts topic) whose outbox holds
/// alerts for `alerts[0]` with seqs `1..=count` and ids `{name}-{seq}`, as a
/// crashed publisher session left them; the job and its id.
fn job_with_pending_alerts(name: &str, count: i64) -> (Job, String) {
    require_broker();
    let input = unique(name);
    create_topic(&input, 1);
    let job = Job::new(name, &input);
    job.migrate();
    create_topic(&job.alerts, 1);
    for seq in 1..=count {
        execute(
            &job.database_url,
            &format!(
                "INSERT INTO outbox (seq, topic, partition, key, payload, headers)
                 VALUES ({seq}, '{topic}', 0, 'e1', convert_to('{{\"alert_id\":\"{name}-{seq}\"}}', 'UTF8'),
                         ARRAY['conscope.alert_id', '{name}-{seq}'])",
                topic = job.alerts
            ),
        );
    }
    execute(
        &job.database_url,
        &format!("SELECT setval('outbox_seq_seq', {count})"),
    );
    let id = job.job_id();
    (job, id)
}

/// What an earlier session of `job_id` (or another job) left on the topic.
fn published(job_id: &str, seq: i64, alert_id: &str) -> Outgoing {
    Outgoing {
        partition: 0,
        key: Some("e1".into()),
        value: format!(r#"{{"alert_id":"{alert_id}"}}"#).into_bytes(),
        headers: vec![
            ("conscope.seq".into(), seq.to_string()),
            ("conscope.job".into(), job_id.into()),
        ],
    }
}

fn counts(ids: &[&str]) -> BTreeMap<String, usize> {
    ids.iter().map(|id| ((*id).to_owned(), 1)).collect()
}

#[test]
fn recovery_resends_a_row_missing_before_a_later_one_instead_of_deleting_it() {
    let (job, me) = job_with_pending_alerts("gap", 3);
    // Seq 2 never landed (a message timeout), seq 3 did after it.
    produce_with(
        &job.alerts,
        &[published(&me, 1, "gap-1"), published(&me, 3, "gap-3")],
        &[],
    );

    job.run_to_end_within(LIMIT, &[]);
    assert_eq!(
        alert_ids_on_topic(&job.alerts),
        counts(&["gap-1", "gap-2", "gap-3"])
    );
    assert_eq!(query_i64(&job.database_url, "SELECT count(*) FROM outbox"), 0);
}

#[test]
fn recovery_finds_its_messages_behind_other_producers_messages() {
    let (job, me) = job_with_pending_alerts("mine", 3);
    let mut stranger = message(Some("e9"), br#"{"alert_id":"theirs-1"}"#.to_vec());
    stranger.headers.push(("x-origin".into(), "elsewhere".into()));
    produce_with(
        &job.alerts,
        &[
            published(&me, 1, "mine-1"),
            published(&me, 2, "mine-2"),
            stranger,
            // Another job's seq 3 is not ours.
            published("3d2a6c1e-0000-4000-8000-000000000000", 3, "theirs-2"),
        ],
        &[],
    );

    job.run_to_end_within(LIMIT, &[]);
    assert_eq!(
        alert_ids_on_topic(&job.alerts),
        counts(&["mine-1", "mine-2", "mine-3", "theirs-1", "theirs-2"])
    );
    assert_eq!(query_i64(&job.database_url, "SELECT count(*) FROM outbox"), 0);
    // The next recovery reads from after the last acknowledged message.
    assert_eq!(
        query_i64(
            &job.database_url,
            "SELECT scan_from FROM outbox_partitions WHERE partition = 0"
        ),
        5
    );
}

#[test]
fn kafka_settings_that_break_exactly_once_publishing_are_refused_at_start() {
    for (setting, name) in [
        ("acks=1", "acks"),
        ("enable.idempotence=false", "enable.idempotence"),
        ("enable.gapless.guarantee=false", "enable.gapless.guarantee"),
    ] {
        let output = conscope()
            .args([
                "run",
                "--exit-at-end",
                "--input-topic",
                &unique("never_read"),
                "--database-url",
                "postgres://nobody:hunter2@127.0.0.1:1/none",
                "--kafka",
                "sasl.password=hunter2",
                "--kafka",
                setting,
            ])
            .output()
            .expect("run conscope");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{setting} was accepted");
        assert!(
            stderr.contains(&format!("--kafka {name}:")),
            "{setting}: {stderr}"
        );
        assert!(!stderr.contains("hunter2"), "{stderr}");
    }
}
