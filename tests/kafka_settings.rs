//! `--kafka` / `CONSCOPE_KAFKA` as the binary parses them: values keep their
//! commas, and no error or help text ever shows a secret. Needs no broker: the
//! settings are checked before anything connects (`produce --output` writes a file).

use std::process::Output;

use conscope_testkit::*;

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

#[test]
fn commas_stay_in_values() {
    for env in [
        "sasl.password=a,b",
        "debug=broker,topic",
        "debug=broker,topic,client.id=conscope-test,sasl.password=x,y",
    ] {
        let output = produce_to_file(Some(env), &[]);
        assert!(
            output.status.success(),
            "CONSCOPE_KAFKA={env:?}: {}",
            text(&output)
        );
    }
    let output = produce_to_file(
        None,
        &["--kafka", "debug=broker,topic", "--kafka", "sasl.password=a,b"],
    );
    assert!(output.status.success(), "{}", text(&output));
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
