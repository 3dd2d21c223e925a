//! `--kafka` / `CONSCOPE_KAFKA` as the binary parses them: values keep their
//! commas, the settings reach librdkafka and the broker whole, and no error or
//! help text ever shows a secret.
//!
//! `commas_stay_in_values` needs the broker: it runs `conscope alerts` (a
//! consumer group member) and asks the broker which `client.id` joined.

use std::io::Read;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use conscope_testkit::*;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn produce_to_file(env: Option<&str>, flags: &[&str]) -> Output {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    let path = file.path().to_str().expect("path").to_owned();
    let mut command = conscope();
    command
        .args(["produce", "--count", "1", "--output", &path])
        .args(flags);
    match env {
        Some(value) => command.env("CONSCOPE_KAFKA", value),
        None => command.env_remove("CONSCOPE_KAFKA"),
    };
    command.output().expect("run conscope produce")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The client ids of the members of consumer group `group`, as the broker
/// reports them.
fn member_client_ids(group: &str) -> Vec<String> {
    let consumer: BaseConsumer = client_config().create().expect("Kafka client");
    match consumer.fetch_group_list(Some(group), Duration::from_secs(10)) {
        Ok(list) => list
            .groups()
            .iter()
            .flat_map(|g| g.members().iter().map(|m| m.client_id().to_owned()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs `conscope alerts` in a group of its own with `settings` given through
/// `CONSCOPE_KAFKA` (`env`) or `--kafka` flags, until the broker lists it as a
/// member of the group; returns the member's client id and what the command
/// logged (librdkafka's debug lines included).
fn join_with(topic: &str, env: Option<&str>, flags: &[&str]) -> (Vec<String>, String) {
    let group = unique("settings-group");
    let log = tempfile::NamedTempFile::new().expect("log file");
    let mut command = conscope();
    command
        .args(["alerts", "--brokers", &brokers(), "--alerts-topic", topic])
        .args(["--group", &group, "--idle-exit-ms", "60000"])
        .args(flags)
        .env("CONSCOPE_LOG", "info,librdkafka=debug")
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("log file"));
    match env {
        Some(value) => command.env("CONSCOPE_KAFKA", value),
        None => command.env_remove("CONSCOPE_KAFKA"),
    };
    let mut child = KillOnDrop(command.spawn().expect("spawn conscope alerts"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut members = Vec::new();
    while members.is_empty() && Instant::now() < deadline {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!("conscope alerts exited with {status}");
        }
        std::thread::sleep(Duration::from_millis(500));
        members = member_client_ids(&group);
    }
    drop(child);
    let mut logged = String::new();
    log.reopen()
        .expect("log file")
        .read_to_string(&mut logged)
        .expect("read log");
    (members, logged)
}

/// Debug lines that only `debug=broker` and only `debug=topic` make
/// librdkafka log, respectively (by their facility, as seen with each alone);
/// both come before the consumer joins its group.
const DEBUG_FACILITIES: [&str; 2] = ["librdkafka: BRKMAIN ", "librdkafka: METADATA "];

/// Settings whose values hold commas reach librdkafka whole, from the
/// environment and from flags: the broker sees the `client.id` given after
/// `debug=broker,topic` (split there, the id would be lost or garbled), and
/// librdkafka logs debug lines of both contexts of that one value.
#[test]
fn commas_stay_in_values() {
    require_broker();
    let topic = unique("settings-alerts");
    create_topic(&topic, 1);
    let id = unique("conscope-settings");
    let env = format!("debug=broker,topic,client.id={id},sasl.password=x,y");
    let flags = [
        "--kafka",
        "debug=broker,topic",
        "--kafka",
        &format!("client.id={id}"),
        "--kafka",
        "sasl.password=a,b",
    ];
    for (case, env, flags) in [
        ("CONSCOPE_KAFKA", Some(env.as_str()), &[][..]),
        ("--kafka", None, &flags[..]),
    ] {
        let (members, logged) = join_with(&topic, env, flags);
        assert_eq!(
            members,
            std::slice::from_ref(&id),
            "{case}: the broker's view of the group\n{logged}"
        );
        for facility in DEBUG_FACILITIES {
            assert!(
                logged.contains(facility),
                "{case}: no {facility:?} debug line\n{logged}"
            );
        }
        // librdkafka's debug output echoes no secret.
        assert!(
            !logged.contains("x,y") && !logged.contains("a,b"),
            "{case}: {logged}"
        );
    }
}

/// The binary's wiring of the checks the unit tests in `src/config.rs` go
/// through case by case: a malformed setting from the environment or a flag.
#[test]
fn errors_never_show_a_secret() {
    for (env, flags) in [
        (Some("sasl.password=hunter2,no.such.thing=s3cr3t"), &[][..]),
        (
            None,
            &["--kafka", "sasl.password=hunter2", "--kafka", "s3cr3t"][..],
        ),
    ] {
        let output = produce_to_file(env, flags);
        let shown = text(&output);
        assert!(!output.status.success(), "{env:?} {flags:?} must be refused");
        assert!(
            shown.contains("setting #2") || shown.contains("--kafka #2"),
            "{shown}"
        );
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
    }
}

#[test]
fn help_never_shows_the_environment_values() {
    let output = conscope()
        .args(["run", "--help"])
        .env("CONSCOPE_KAFKA", "sasl.password=hunter2")
        .env("DATABASE_URL", "postgres://bob:hunter2@db/x")
        .output()
        .expect("run conscope run --help");
    assert!(output.status.success());
    assert!(!text(&output).contains("hunter2"), "{}", text(&output));
}
