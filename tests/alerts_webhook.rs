//! `conscope alerts --webhook` against a real Kafka broker (`CONSCOPE_BROKERS`,
//! default 127.0.0.1:9092) and a real HTTP receiver on 127.0.0.1.
//!
//! Produces alerts (plus a duplicate and a garbage message) to a topic of its
//! own, runs the consumer with a webhook that fails its first requests, and checks
//! that every alert reaches the webhook exactly once, that a 4xx is not retried,
//! that stdout is readable, and that a second run of the same group resumes
//! after the committed offsets. Topics are never deleted (unique names instead).
//!
//! No broker is a failure, not a skip: CI starts one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

const EVENT_NAME: &str = "Taylor Swift — The Eras Tour";
/// The webhook path holds a "secret" that must never show up in the logs.
const SECRET: &str = "s3cr3t-t0ken";
/// The receiver answers 503 to this many requests before accepting any.
const FAIL_FIRST: usize = 3;
/// The alert the receiver refuses with 400 (a definite error: not retried).
const REFUSED: &str = "alert-07";

fn brokers() -> String {
    std::env::var("CONSCOPE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("conscope_test_{tag}_{}_{nanos}", std::process::id())
}

fn client_config() -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers());
    config
}

/// Panics with a clear message when no broker answers.
fn require_broker() {
    let consumer: BaseConsumer = client_config().create().expect("Kafka client");
    if let Err(error) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka broker answers at {} ({error}); start one (CI does) or point \
             CONSCOPE_BROKERS at one",
            brokers()
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().expect("admin");
    let results = runtime()
        .block_on(admin.create_topics(
            [&NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topic");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("cannot create topic {name}: {code}"));
    }
    // Wait until the topic shows in metadata.
    let consumer: BaseConsumer = client_config().create().expect("Kafka client");
    let started = Instant::now();
    loop {
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        if metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "topic {topic} never showed up in metadata"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Produces the messages in order (each send awaited), keyed like the job does.
fn produce(topic: &str, messages: &[(String, String)]) {
    let producer: FutureProducer = client_config()
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    runtime().block_on(async {
        for (key, value) in messages {
            producer
                .send(
                    FutureRecord::to(topic).key(key).payload(value),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|(error, _)| panic!("cannot produce to {topic}: {error}"));
        }
    });
}

/// Alert number `n` as the job publishes it (SPEC §3 plus event_name).
fn alert(n: u32) -> (String, String) {
    let kind = ["listing_drop", "event_low", "rule_match"][(n % 3) as usize];
    let (rule_id, old_price) = if kind == "rule_match" {
        (serde_json::json!(n), serde_json::Value::Null)
    } else {
        (
            serde_json::Value::Null,
            serde_json::json!(format!("{}.00", 240 + n)),
        )
    };
    let value = serde_json::json!({
        "alert_id": format!("alert-{n:02}"),
        "kind": kind,
        "event_id": "taylor-swift-2026",
        "event_name": EVENT_NAME,
        "section": "Floor A",
        "row": "3",
        "seat": format!("{n}"),
        "source": "stubhub",
        "rule_id": rule_id,
        "old_price": old_price,
        "new_price": "199.00",
        "currency": "USD",
        "observed_at": format!("2026-01-01T00:{n:02}:00Z"),
    });
    ("taylor-swift-2026".to_owned(), value.to_string())
}

#[derive(Debug, Clone)]
struct Request {
    status: u16,
    path: String,
    content_type: Option<String>,
    body: String,
}

impl Request {
    fn alert_id(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("alert_id")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("webhook body is not an alert: {}", self.body))
    }
}

/// An HTTP receiver on 127.0.0.1:0: 503 to the first `fail_first` requests,
/// 400 to the [`REFUSED`] alert, 200 otherwise; records every request.
fn start_receiver(fail_first: usize) -> (u16, Arc<Mutex<Vec<Request>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
    let port = listener.local_addr().expect("receiver address").port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let recorded = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            let mut length = 0usize;
            let mut content_type = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "content-type" => content_type = Some(value.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let body = String::from_utf8_lossy(&body).into_owned();
            let mut requests = recorded.lock().expect("receiver lock");
            let status = if requests.len() < fail_first {
                503
            } else if body.contains(&format!("\"{REFUSED}\"")) {
                400
            } else {
                200
            };
            requests.push(Request {
                status,
                path,
                content_type,
                body,
            });
            drop(requests);
            let reason = match status {
                200 => "OK",
                400 => "Bad Request",
                _ => "Service Unavailable",
            };
            let mut stream = reader.into_inner();
            let _ = write!(
                stream,
                "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.flush();
        }
    });
    (port, requests)
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `conscope alerts ARGS`, killing it (and failing) after `limit`.
fn run_alerts(args: &[String], limit: Duration) -> Run {
    run_alerts_with(args, limit, |_| {})
}

/// Like [`run_alerts`]; `meanwhile` gets the child's pid while it runs.
fn run_alerts_with(args: &[String], limit: Duration, meanwhile: impl FnOnce(u32)) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_conscope"))
        .arg("alerts")
        .args(args)
        .env("CONSCOPE_BROKERS", brokers())
        .env("CONSCOPE_LOG", "info")
        .env_remove("CONSCOPE_KAFKA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run the conscope binary");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    meanwhile(child.id());
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for conscope") {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let Some(status) = status else {
        panic!("conscope alerts did not exit within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    };
    Run {
        success: status.success(),
        stdout,
        stderr,
    }
}

#[test]
fn every_alert_reaches_the_webhook_once() {
    require_broker();
    let topic = unique("alerts");
    let group = format!("{topic}_group");
    create_topic(&topic);

    // alert-01..10, garbage, a duplicate of alert-03, alert-11..20: the extras
    // sit in the middle so that --max-alerts 20 has to get past them.
    let mut messages: Vec<(String, String)> = (1..=10).map(alert).collect();
    messages.push(("taylor-swift-2026".to_owned(), "not json {".to_owned()));
    messages.push(alert(3));
    messages.extend((11..=20).map(alert));
    produce(&topic, &messages);

    let (port, requests) = start_receiver(FAIL_FIRST);
    let webhook = format!("http://127.0.0.1:{port}/hook/{SECRET}");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["--alerts-topic", &topic, "--group", &group, "--webhook", &webhook]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    let run = run_alerts(
        &args(&[
            "--from-beginning",
            "--max-alerts",
            "20",
            "--idle-exit-ms",
            "30000",
        ]),
        Duration::from_secs(120),
    );
    let context = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.success, "conscope alerts failed\n{context}");

    let seen = requests.lock().expect("receiver lock").clone();
    // The first alert met three 503s, then got through.
    assert!(seen.len() > FAIL_FIRST, "{seen:#?}\n{context}");
    for request in &seen[..FAIL_FIRST] {
        assert_eq!(request.status, 503);
        assert_eq!(request.alert_id(), "alert-01", "retries keep the order");
    }
    for request in &seen {
        assert_eq!(request.path, format!("/hook/{SECRET}"));
        assert_eq!(request.content_type.as_deref(), Some("application/json"));
    }
    // Every alert exactly once past the 503s; the refused one was not retried;
    // the duplicate and the garbage never reached the webhook.
    let answered: Vec<(String, u16)> = seen[FAIL_FIRST..]
        .iter()
        .map(|r| (r.alert_id(), r.status))
        .collect();
    let expected: Vec<(String, u16)> = (1..=20)
        .map(|n| {
            let id = format!("alert-{n:02}");
            let status = if id == REFUSED { 400 } else { 200 };
            (id, status)
        })
        .collect();
    assert_eq!(answered, expected, "\n{context}");
    // Bodies are the alerts as published, byte for byte.
    for request in &seen[FAIL_FIRST..] {
        let n: u32 = request.alert_id()["alert-".len()..]
            .parse()
            .expect("alert number");
        assert_eq!(request.body, alert(n).1);
    }

    // One readable line per alert, in order.
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 20, "\n{context}");
    assert_eq!(
        lines[0],
        format!(
            "[event_low] {EVENT_NAME} · get-in price · Floor A row 3 seat 1 (stubhub): \
             241.00 → 199.00 USD (-17.4%) at 2026-01-01T00:01:00Z"
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "[rule_match] {EVENT_NAME} · rule #2 · Floor A row 3 seat 2 (stubhub): \
             199.00 USD at 2026-01-01T00:02:00Z"
        )
    );
    assert_eq!(
        lines[2],
        format!(
            "[listing_drop] {EVENT_NAME} · Floor A row 3 seat 3 (stubhub): \
             243.00 → 199.00 USD (-18.1%) at 2026-01-01T00:03:00Z"
        )
    );
    for (line, n) in lines.iter().zip(1u32..) {
        assert!(line.contains(EVENT_NAME), "{line}");
        assert!(line.contains("199.00 USD"), "{line}");
        assert!(line.contains(&format!("seat {n} ")), "{line}");
    }
    // Retries were logged; the malformed message was reported; the webhook's
    // secret path never was.
    assert!(run.stderr.contains("retrying"), "\n{context}");
    assert!(run.stderr.contains("malformed"), "\n{context}");
    assert!(
        !run.stderr.contains(SECRET),
        "the webhook path leaked:\n{context}"
    );

    // A second run of the same group resumes after the committed offsets:
    // only the new alerts are handled.
    produce(&topic, &[alert(21), alert(22)]);
    let run = run_alerts(&args(&["--idle-exit-ms", "10000"]), Duration::from_secs(120));
    let context = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.success, "second run failed\n{context}");
    let seen = requests.lock().expect("receiver lock").clone();
    let new: Vec<(String, u16)> = seen[FAIL_FIRST + 20..]
        .iter()
        .map(|r| (r.alert_id(), r.status))
        .collect();
    assert_eq!(
        new,
        vec![("alert-21".to_owned(), 200), ("alert-22".to_owned(), 200)],
        "\n{context}"
    );
    assert_eq!(run.stdout.lines().count(), 2, "\n{context}");
}

/// Waits until `requests` holds at least `count` requests.
fn wait_for_requests(requests: &Mutex<Vec<Request>>, count: usize) {
    let started = Instant::now();
    while requests.lock().expect("receiver lock").len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the webhook never got {count} requests"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_alert_interrupted_before_delivery_is_delivered_by_the_next_run() {
    require_broker();
    let topic = unique("alerts_stop");
    let group = format!("{topic}_group");
    create_topic(&topic);
    produce(&topic, &[alert(1), alert(2)]);

    // The receiver is down for good: the consumer retries until it is stopped.
    let (down_port, down) = start_receiver(usize::MAX);
    let args = |port: u16, extra: &[&str]| -> Vec<String> {
        let webhook = format!("http://127.0.0.1:{port}/hook");
        let mut args: Vec<String> = [
            "--alerts-topic",
            &topic,
            "--group",
            &group,
            "--from-beginning",
            "--webhook",
            &webhook,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = run_alerts_with(&args(down_port, &[]), Duration::from_secs(120), |pid| {
        wait_for_requests(&down, 3);
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "cannot signal conscope");
    });
    let context = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.success, "SIGTERM is a clean stop\n{context}");
    assert_eq!(run.stdout.lines().count(), 1, "\n{context}");
    assert!(down
        .lock()
        .expect("receiver lock")
        .iter()
        .all(|r| r.alert_id() == "alert-01" && r.status == 503));

    // The undelivered alert was not committed: the next run delivers it first.
    let (up_port, up) = start_receiver(0);
    let run = run_alerts(
        &args(up_port, &["--max-alerts", "2", "--idle-exit-ms", "30000"]),
        Duration::from_secs(120),
    );
    let context = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(run.success, "second run failed\n{context}");
    let delivered: Vec<(String, u16)> = up
        .lock()
        .expect("receiver lock")
        .iter()
        .map(|r| (r.alert_id(), r.status))
        .collect();
    assert_eq!(
        delivered,
        vec![("alert-01".to_owned(), 200), ("alert-02".to_owned(), 200)],
        "\n{context}"
    );
}
