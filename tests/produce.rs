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

#[test]
fn same_flags_give_identical_output() {
    let (first, summary) = produce(&["--count", "2000", "--seed", "7"]);
    let (second, _) = produce(&["--count", "2000", "--seed", "7"]);
    assert_eq!(first, second);
    assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 2000);
    assert!(
        summary.contains("produced 2000 messages"),
        "summary: {summary}"
    );

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
        let year_2030 = timestamp
            .as_str()
            .is_some_and(|t| t.starts_with("2030-03-01T"))
            || timestamp
                .as_i64()
                .is_some_and(|ms| (1_898_553_600_000..1_898_640_000_000).contains(&ms))
            || timestamp
                .as_str()
                .is_some_and(|t| t.starts_with("2030-02-28T"));
        assert!(year_2030, "timestamp {timestamp} not from --start");
    }
}

#[test]
fn rate_limits_the_output() {
    let started = std::time::Instant::now();
    produce(&["--count", "60", "--rate", "200"]);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(250),
        "too fast: {elapsed:?}"
    );
}
