//! `conscope produce --output`: the CLI end to end, without a broker.

use std::process::Command;

fn produce(args: &[&str]) -> (Vec<u8>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_conscope"))
        .arg("produce")
        .args(["--output", "-"])
        .args(args)
        .env_remove("CONSCOPE_INPUT_TOPIC")
        .env("CONSCOPE_LOG", "warn")
        .output()
        .unwrap_or_else(|error| panic!("cannot run conscope: {error}"));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "conscope produce failed: {stderr}");
    (output.stdout, stderr)
}

/// `conscope produce` to `topic`, created with three partitions.
fn produce_to<'a>(brokers: &'a str, topic: &'a str) -> [&'a str; 7] {
    [
        "produce",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--partitions",
        "3",
    ]
}

#[test]
fn same_flags_give_identical_output() {
    let (first, summary) = produce(&["--count", "2000", "--seed", "7"]);
    let (second, _) = produce(&["--count", "2000", "--seed", "7"]);
    assert_eq!(first, second);
    assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 2000);
    assert!(summary.contains("produced 2000 messages"), "summary: {summary}");

    let (other_seed, _) = produce(&["--count", "2000", "--seed", "8"]);
    assert_ne!(first, other_seed);
}

#[test]
fn lines_are_json_and_start_moves_timestamps() {
    let (out, _) = produce(&[
        "--count",
        "500",
        "--malformed-rate",
        "0",
        "--start",
        "2030-03-01T00:00:00Z",
    ]);
    let text = String::from_utf8(out).unwrap_or_else(|error| panic!("{error}"));
    for line in text.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}"));
        let timestamp = &value["timestamp"];
        let year_2030 = timestamp.as_str().is_some_and(|t| t.starts_with("2030-03-01T"))
            || timestamp
                .as_i64()
                .is_some_and(|ms| (1_898_553_600_000..1_898_640_000_000).contains(&ms))
            || timestamp.as_str().is_some_and(|t| t.starts_with("2030-02-28T"));
        assert!(year_2030, "timestamp {timestamp} not from --start");
    }
}

/// `--rate R`: lines come out at R per second. Never faster: by any time t
/// after the command started, at most R·t + 2 lines have arrived (being slowed
/// down by a loaded machine only lowers that count). Not much slower: from the
/// first line to the last takes at most 1.5 times the ideal time (the pacer
/// keeps to absolute due times, so short stalls do not add up). A limiter that
/// ignores --rate or paces at half of it fails.
#[test]
fn rate_limits_the_output() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let (count, rate) = (300usize, 100.0f64);
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_conscope"))
        .args(["produce", "--output", "-", "--count", &count.to_string()])
        .args(["--rate", &rate.to_string()])
        .env_remove("CONSCOPE_INPUT_TOPIC")
        .env("CONSCOPE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run conscope: {error}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut arrivals = Vec::new();
    for line in BufReader::new(stdout).lines() {
        line.unwrap_or_else(|error| panic!("{error}"));
        arrivals.push(started.elapsed());
    }
    let status = child.wait().unwrap_or_else(|error| panic!("{error}"));
    assert!(status.success(), "conscope produce failed: {status}");
    assert_eq!(arrivals.len(), count);
    for (index, at) in arrivals.iter().enumerate() {
        let allowed = rate * at.as_secs_f64() + 2.0;
        assert!(
            (index + 1) as f64 <= allowed,
            "{} lines by {at:?}: faster than {rate}/s",
            index + 1
        );
    }
    let ideal = Duration::from_secs_f64((count - 1) as f64 / rate);
    let took = arrivals[count - 1] - arrivals[0];
    assert!(
        took <= ideal.mul_f64(1.5),
        "{count} lines took {took:?}, slower than {rate}/s (ideal {ideal:?})"
    );
}

/// Against the real broker at `CONSCOPE_BROKERS` (fails when none answers):
/// everything is delivered, byte-identical to `--output` with the same flags,
/// keyed by event_id, each key on one partition, in generation order per partition.
#[test]
fn kafka_round_trip() {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

    conscope_testkit::require_broker();
    let brokers = conscope_testkit::brokers();
    let topic = conscope_testkit::unique("produce_test");
    let flags = ["--count", "3000", "--seed", "9", "--duplicate-rate", "0.05"];

    let output = Command::new(env!("CARGO_BIN_EXE_conscope"))
        .args(produce_to(&brokers, &topic))
        .args(flags)
        .env("CONSCOPE_LOG", "warn")
        .output()
        .unwrap_or_else(|error| panic!("cannot run conscope: {error}"));
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "produce failed: {summary} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(summary.contains("3000 delivered, 0 failed"), "{summary}");

    let (expected, _) = produce(&flags);
    let expected: Vec<&[u8]> = expected
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(expected.len(), 3000);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-check"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|error| panic!("{error}"));
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap_or_else(|error| panic!("{error}"));
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|error| panic!("{error}"));
    // partition -> (key, value) in offset order
    type Received = HashMap<i32, Vec<(Vec<u8>, Vec<u8>)>>;
    let mut by_partition = Received::new();
    let mut received = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < expected.len() && Instant::now() < deadline {
        if let Some(result) = consumer.poll(Duration::from_millis(200)) {
            let message = result.unwrap_or_else(|error| panic!("{error}"));
            let key = message
                .key()
                .unwrap_or_else(|| panic!("message without key"))
                .to_vec();
            let value = message.payload().unwrap_or_default().to_vec();
            by_partition
                .entry(message.partition())
                .or_default()
                .push((key, value));
            received += 1;
        }
    }
    assert_eq!(received, expected.len(), "not everything arrived");

    let mut partition_of_key: HashMap<Vec<u8>, i32> = HashMap::new();
    for (partition, messages) in &by_partition {
        // Each partition's messages appear in the generated order.
        let mut cursor = expected.iter();
        for (key, value) in messages {
            assert!(
                cursor.any(|line| *line == value.as_slice()),
                "partition {partition} out of order"
            );
            let owner = partition_of_key.entry(key.clone()).or_insert(*partition);
            assert_eq!(owner, partition, "a key on two partitions");
            if let Ok(json) = serde_json::from_slice::<serde_json::Value>(value) {
                if let Some(id) = json.get("event_id").and_then(|id| id.as_str()) {
                    if json.get("timestamp").is_some() && !id.is_empty() && id.len() <= 128 {
                        assert_eq!(id.as_bytes(), key.as_slice(), "key is not the event_id");
                    }
                }
            }
        }
    }
    assert!(by_partition.len() > 1, "everything on one partition");
}

/// Against the real broker: `--rate` paces what reaches Kafka, and the wait
/// for the next token sleeps. rdkafka's `poll(timeout)` polls without blocking,
/// in a loop, for the part of a timeout under a millisecond, so a producer
/// that waited in it spun on the clock: 1.2-1.3 CPU-s for these 3 s, against
/// 0.2-0.3 sleeping.
#[test]
fn kafka_rate_paces_and_sleeps() {
    use std::time::{Duration, Instant};

    conscope_testkit::require_broker();
    let brokers = conscope_testkit::brokers();
    let topic = conscope_testkit::unique("produce_rate");
    let (count, rate) = (3000, 1000.0);
    let started = Instant::now();
    // bash's `times` gives the CPU of the one child it waited for.
    let output = Command::new("bash")
        .args(["-c", r#""$0" "$@"; status=$?; times >&2; exit $status"#])
        .arg(env!("CARGO_BIN_EXE_conscope"))
        .args(produce_to(&brokers, &topic))
        .args(["--count", &count.to_string(), "--rate", &rate.to_string()])
        .env("CONSCOPE_LOG", "warn")
        .output()
        .unwrap_or_else(|error| panic!("cannot run bash: {error}"));
    let wall = started.elapsed();
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "produce failed: {summary} {stderr}");
    assert!(
        summary.contains(&format!("{count} delivered, 0 failed")),
        "{summary}"
    );

    let ideal = Duration::from_secs_f64((count - 1) as f64 / rate);
    assert!(
        wall >= ideal,
        "{count} messages in {wall:?}: faster than {rate}/s"
    );
    assert!(
        wall <= ideal * 3,
        "{count} messages took {wall:?} (ideal {ideal:?})"
    );

    let children = stderr.lines().last().unwrap_or_default();
    let cpu: f64 = children
        .split_whitespace()
        .map(|time| {
            let (minutes, seconds) = time
                .trim_end_matches('s')
                .split_once('m')
                .unwrap_or_else(|| panic!("not a time from `times`: {children:?}"));
            minutes
                .parse::<f64>()
                .unwrap_or_else(|error| panic!("{children:?}: {error}"))
                * 60.0
                + seconds
                    .parse::<f64>()
                    .unwrap_or_else(|error| panic!("{children:?}: {error}"))
        })
        .sum();
    assert!(
        cpu < wall.as_secs_f64() * 0.2,
        "{cpu:.2} CPU-s for {wall:?} of paced producing: the wait spins"
    );
}
