//! Progress bars: `conscope produce` and `conscope run --exit-at-end` draw one on
//! a terminal (a pseudo-terminal from util-linux's `script`, which
//! scripts/test.sh installs when missing), with the log lines printed whole
//! around it; without a terminal their output is plain lines, no escape
//! sequence, no bar.

use std::process::Command;

use conscope_testkit::*;

/// Runs `program args` in a pseudo-terminal; everything it wrote there.
fn in_terminal(env: &[(&str, &str)], program: &str, args: &[&str]) -> String {
    let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
    let mut line = vec!["env".to_owned()];
    line.extend(env.iter().map(|(key, value)| quote(&format!("{key}={value}"))));
    line.push(quote(program));
    line.extend(args.iter().map(|arg| quote(arg)));
    let output = Command::new("script")
        .args(["-qec", &line.join(" "), "/dev/null"])
        .env("CONSCOPE_BROKERS", brokers())
        .env_remove("DATABASE_URL")
        .output()
        .expect("run script(1) from util-linux");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{line:?} failed: {text}");
    text
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`), split where the
/// terminal would start a line over (`\r`, `\n`).
fn screen_lines(text: &str) -> Vec<String> {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split(['\r', '\n'])
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether `line` is a plain `tracing` line: `<RFC 3339 time>Z  LEVEL target: message`.
fn is_log_line(line: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else {
        return false;
    };
    let level = rest.trim_start();
    time.len() > 20
        && time.starts_with("20")
        && time.ends_with('Z')
        && ["INFO ", "WARN ", "ERROR ", "DEBUG ", "TRACE "]
            .iter()
            .any(|prefix| level.starts_with(prefix))
        && level.contains(": ")
}

/// Runs `command` without a terminal (output to pipes): its stdout and stderr,
/// checked to hold no escape sequence and no line drawn over.
fn plain_output(command: &mut Command) -> (String, String) {
    let output = command.output().expect("run conscope");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for (what, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        assert!(!text.contains('\u{1b}'), "{what} has escape sequences: {text:?}");
        assert!(!text.contains('\r'), "{what} redraws a line: {text:?}");
    }
    (stdout, stderr)
}

#[test]
fn produce_draws_a_bar_only_on_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("out.jsonl");
    let path = path.to_str().expect("path");
    // Paced, so the bar has time to be drawn.
    let args = ["produce", "--count", "3000", "--rate", "3000", "--output", path];

    let (stdout, stderr) = plain_output(conscope().env("CONSCOPE_LOG", "info").args(args));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("produced 3000 messages to {path} (")),
        "{stdout}"
    );
    assert!(!stderr.contains("messages"), "a bar without a terminal: {stderr}");
    assert!(stderr.lines().all(is_log_line), "{stderr}");

    let shown = in_terminal(&[], env!("CARGO_BIN_EXE_conscope"), &args);
    let screen = screen_lines(&shown);
    assert!(
        screen.iter().any(|line| line.starts_with("produce [")
            && line.contains("/3,000 messages")
            && line.contains(" ETA ")),
        "no bar drawn: {shown:?}"
    );
    // The bar is cleared before the summary, which stays one whole line.
    assert!(
        screen
            .iter()
            .any(|line| line.starts_with("produced 3000 messages to ")),
        "{shown:?}"
    );
}

#[test]
fn a_bounded_replay_draws_a_bar_only_on_a_terminal() {
    require_broker();
    let input = unique("progress");
    produce_generated(&input, 2, 10_000, 3, &[]);
    // Paced: a few hundred messages per commit, so the bar is drawn on the way.
    let pacing = [
        "-w",
        "1",
        "--max-batch",
        "200",
        "--max-in-flight",
        "500",
        "--metrics-interval",
        "1",
    ];

    let plain = Job::new("progress_plain", &input);
    let (stdout, stderr) = plain_output(
        plain
            .command(&[&["--exit-at-end"][..], &pacing].concat())
            .env("CONSCOPE_LOG", "info,librdkafka=warn,rdkafka=warn"),
    );
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_eq!(parse_summary(&stdout)["processed"], "10000");
    assert!(!stderr.contains("replay ["), "a bar without a terminal: {stderr}");
    assert!(stderr.lines().all(is_log_line), "{stderr}");
    assert!(stderr.contains(" conscope::metrics: processed="), "{stderr}");

    let shown_job = Job::new("progress_tty", &input);
    let mut args = vec!["run", "--exit-at-end"];
    args.extend(pacing);
    args.extend([
        "--input-topic",
        &shown_job.input,
        "--alerts-topic",
        &shown_job.alerts,
        "--dlq-topic",
        &shown_job.dlq,
        "--database-url",
        &shown_job.database_url,
    ]);
    let shown = in_terminal(
        &[("CONSCOPE_LOG", "info,librdkafka=warn,rdkafka=warn")],
        env!("CARGO_BIN_EXE_conscope"),
        &args,
    );
    let screen = screen_lines(&shown);
    assert!(
        screen
            .iter()
            .any(|line| line.starts_with("replay [") && line.contains("/10,000 messages")),
        "no bar drawn: {shown:?}"
    );
    // Log lines are printed whole above the bar, never torn by it.
    assert!(
        screen
            .iter()
            .any(|line| is_log_line(line) && line.contains(" conscope::metrics: processed=")),
        "no whole metrics line: {shown:?}"
    );
    let summary = screen
        .iter()
        .find(|line| line.starts_with("summary: "))
        .unwrap_or_else(|| panic!("no summary: {shown:?}"));
    assert_eq!(parse_summary(summary)["processed"], "10000");
}
