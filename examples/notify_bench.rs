//! The notifier's benchmark, against the local broker and PostgreSQL and a
//! local webhook receiver (testkit's, on 127.0.0.1). Prints one line per
//! figure:
//!
//! ```text
//! throughput: N alerts to 1 webhook channel in S s = R alerts/s (rows N)
//! down channel: D s down, N alerts, peak RSS M MiB (VmHWM), queued Q, rows while down 0
//! ```
//!
//! - **throughput**: `NOTIFY_BENCH_ALERTS` alerts (default 20 000) are put on a
//!   fresh topic, then one `conscope notify` delivers them to one webhook channel
//!   that answers 200 at once; the time from its start to the last
//!   `notify_deliveries` row (its startup included).
//! - **down channel**: the same to a channel that answers 503 for
//!   `NOTIFY_BENCH_DOWN_SECS` (default 600) seconds; the notifier's peak
//!   resident memory (`VmHWM` of /proc/PID/status) over that time, then the
//!   channel comes back and every alert must be delivered.
//!
//! Run: `cargo run --release --example notify_bench` (the stack must be up).

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conscope_testkit::notify::{Answer, Receiver};
use conscope_testkit::*;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A topic with `count` alerts and a migrated database with one webhook
/// channel routed every alert.
fn prepare(name: &str, count: usize, url: &str) -> (String, String) {
    let id = unique(name);
    let topic = format!("{id}.alerts");
    create_topic(&topic, 4);
    let db = fresh_database(&id);
    let run = |args: &[&str]| {
        let output = conscope()
            .args(args)
            .args(["--database-url", &db])
            .output()
            .expect("conscope");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    run(&["migrate"]);
    run(&[
        "channels",
        "add",
        "--name",
        "hook",
        "--kind",
        "webhook",
        "--target",
        url,
        "--secret-env",
        "BENCH_SECRET",
    ]);
    run(&["routes", "add", "--channel", "hook"]);
    let mut messages = Vec::with_capacity(count);
    for n in 0..count {
        let event = format!("event-{}", n % 97);
        let value = serde_json::json!({
            "alert_id": format!("bench-{n:08}"), "kind": "listing_drop", "event_id": event,
            "event_name": "Benchmark Night", "section": "A", "row": "1", "seat": format!("{}", n % 50),
            "source": "bench", "rule_id": null, "max_price": null, "old_price": "120.00",
            "new_price": "99.00", "currency": "USD", "observed_at": "2026-01-01T00:00:00Z"
        });
        messages.push(((n % 4) as i32, Some(event), value.to_string().into_bytes()));
    }
    for chunk in messages.chunks(10_000) {
        let chunk: Vec<(i32, Option<&str>, Vec<u8>)> = chunk
            .iter()
            .map(|(p, k, v)| (*p, k.as_deref(), v.clone()))
            .collect();
        produce(&topic, &chunk);
    }
    (topic, db)
}

fn notifier(topic: &str, db: &str) -> Child {
    conscope()
        .args([
            "notify",
            "--database-url",
            db,
            "--alerts-topic",
            topic,
            "--group",
            &format!("{topic}.g"),
            "--from-beginning",
        ])
        .env("BENCH_SECRET", "bench")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn conscope notify")
}

fn rows(db: &str) -> i64 {
    query_i64(db, "SELECT count(*) FROM notify_deliveries")
}

/// VmHWM of `pid` in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() {
    require_broker();
    let count = env_number("NOTIFY_BENCH_ALERTS", 20_000) as usize;
    let down_secs = env_number("NOTIFY_BENCH_DOWN_SECS", 600);

    let receiver = Receiver::start();
    let (topic, db) = prepare("notify_bench", count, &receiver.url("/hook"));
    let started = Instant::now();
    let mut child = notifier(&topic, &db);
    while rows(&db) < count as i64 {
        assert!(
            started.elapsed() < Duration::from_secs(1200),
            "throughput run took over 20 min"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seconds = started.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "throughput: {count} alerts to 1 webhook channel in {seconds:.2} s = {:.0} alerts/s (rows {}, receiver requests {})",
        count as f64 / seconds,
        rows(&db),
        receiver.requests().len()
    );

    let down = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&down);
    let dead = Receiver::scripted(move |_, _| {
        if flag.load(Ordering::Relaxed) {
            Answer::status(503, "down")
        } else {
            Answer::ok()
        }
    });
    let (topic, db) = prepare("notify_bench_down", count, &dead.url("/hook"));
    let mut child = notifier(&topic, &db);
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(down_secs) {
        peak = peak.max(peak_rss_kib(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_secs(1));
    }
    let rows_while_down = rows(&db);
    down.store(false, Ordering::Relaxed);
    let back = Instant::now();
    while rows(&db) < count as i64 {
        assert!(
            back.elapsed() < Duration::from_secs(600),
            "not delivered after the channel came back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    peak = peak.max(peak_rss_kib(child.id()).unwrap_or(0));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "down channel: {down_secs} s down, {count} alerts, peak RSS {:.1} MiB (VmHWM), rows while down {rows_while_down}, all {count} delivered {:.1} s after it came back, receiver requests {}",
        peak as f64 / 1024.0,
        back.elapsed().as_secs_f64(),
        dead.requests().len()
    );
}
