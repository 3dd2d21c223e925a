//! Where the sources start and how they end, on the real broker and files:
//! `--from latest` applies only while nothing is stored (SPEC §6), a stored
//! offset above its partition's end stops the job until the operator resets
//! it, and an `--input-file` that cannot be read fails the job.

use std::time::Duration;

use conscope_testkit::*;

fn observation(event: &str, price: u32, minute: u32) -> Vec<u8> {
    format!(
        r#"{{"event_id":"{event}","section":"A","price":{price},"timestamp":"2026-01-01T{:02}:{:02}:00Z"}}"#,
        minute / 60,
        minute % 60
    )
    .into_bytes()
}

fn messages(partition: i32, event: &str, count: u32, first_minute: u32) -> Vec<(i32, Option<&str>, Vec<u8>)> {
    (0..count)
        .map(|i| {
            (
                partition,
                Some(event),
                observation(event, 100 + i, first_minute + i),
            )
        })
        .collect()
}

fn history_rows(url: &str, event: &str) -> i64 {
    query_i64(
        url,
        &format!("SELECT count(*) FROM price_history WHERE event_id = '{event}'"),
    )
}

/// SPEC §6's "tried here": a partition added while the job was down is read
/// from its beginning by `run --from latest`, since offsets are stored.
#[test]
fn from_latest_reads_a_partition_added_while_the_job_was_down() {
    require_broker();
    let input = unique("fromlatest");
    create_topic(&input, 2);
    produce(&input, &messages(0, "p0", 5, 0));
    produce(&input, &messages(1, "p1", 5, 0));
    let job = Job::new("fromlatest", &input);
    job.run_to_end_within(Duration::from_secs(120), &[]);

    add_partitions(&input, 3);
    produce(&input, &messages(2, "p2", 30, 0));
    produce(&input, &messages(0, "p0", 10, 100));
    job.run_to_end_within(Duration::from_secs(120), &["--from", "latest"]);

    assert_eq!(stored_offsets(&job.database_url, &input), high_watermarks(&input));
    assert_eq!(history_rows(&job.database_url, "p2"), 30);
    assert_eq!(history_rows(&job.database_url, "p0"), 15);
}

/// The topic deleted and recreated under a stored job: the job refuses to
/// start, naming the topic, the partition and the offsets; with
/// `--reset-offsets-above-end` it reads the new log from its start.
#[test]
fn a_recreated_topic_stops_the_job_until_its_offsets_are_reset() {
    require_broker();
    let input = unique("recreated");
    create_topic(&input, 1);
    produce(&input, &messages(0, "old", 6, 0));
    let job = Job::new("recreated", &input);
    job.run_to_end_within(Duration::from_secs(120), &[]);
    assert_eq!(stored_offsets(&job.database_url, &input), [(0, 6)].into());

    recreate_topic(&input, 1);
    produce(&input, &messages(0, "new", 2, 0));
    let refused = job.command(&["--exit-at-end"]).output().expect("conscope run");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "it started: {stderr}");
    assert!(stderr.contains(&input), "{stderr}");
    assert!(
        stderr.contains("partition 0: stored next offset 6 > high watermark 2"),
        "{stderr}"
    );
    assert!(stderr.contains("--reset-offsets-above-end"), "{stderr}");
    assert_eq!(history_rows(&job.database_url, "new"), 0);

    job.run_to_end_within(Duration::from_secs(120), &["--reset-offsets-above-end"]);
    assert_eq!(stored_offsets(&job.database_url, &input), [(0, 2)].into());
    assert_eq!(history_rows(&job.database_url, "new"), 2);
}

/// An `--input-file` whose reads fail (a directory: open succeeds, every read
/// fails with EISDIR) is an error naming the file and the cause, not an
/// empty input that ends with status 0.
#[test]
fn an_unreadable_input_file_fails_the_job() {
    let directory = tempfile::tempdir().expect("temp dir");
    let path = directory.path().to_string_lossy().into_owned();
    let job = Job::new("unreadable", "unused");
    let output = job
        .command(&["--exit-at-end", "--input-file", &path])
        .output()
        .expect("conscope run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exited 0: {stderr}");
    assert!(
        stderr.contains(&format!("cannot read --input-file {path}")),
        "{stderr}"
    );
    assert!(stderr.contains("Is a directory"), "{stderr}");
}
