//! `conscope notify` against the real local broker and PostgreSQL, and real
//! receivers on 127.0.0.1 (testkit's HTTP receiver, aiosmtpd with STARTTLS):
//! every channel's format as its receiver got it, a channel that is down, 429
//! with Retry-After, a definite 400, kill -9 during a burst, and the rate cap.
//!
//! Alerts are produced straight onto a test alerts topic in the shape the job
//! publishes (`src/sink/encode.rs`): no job runs. Each test has its own topic,
//! database and consumer group.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use conscope_testkit::notify::*;
use conscope_testkit::*;
use rand::{Rng, SeedableRng};

/// Topic and database of one test.
struct Setup {
    topic: String,
    db: String,
    group: String,
}

fn setup(name: &str, partitions: i32) -> Setup {
    require_broker();
    let id = unique(name);
    let topic = format!("{id}.alerts");
    create_topic(&topic, partitions);
    let db = fresh_database(&id);
    let output = conscope()
        .args(["migrate", "--database-url", &db])
        .output()
        .expect("conscope migrate");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Setup {
        topic,
        db,
        group: format!("{id}.notify"),
    }
}

impl Setup {
    /// `conscope <args>` against this database; its stdout, which must succeed.
    fn cli(&self, args: &[&str]) -> String {
        let output = conscope()
            .args(args)
            .args(["--database-url", &self.db])
            .output()
            .expect("conscope runs");
        assert!(
            output.status.success(),
            "conscope {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn channel(&self, name: &str, kind: &str, target: &str, extra: &[&str]) -> i64 {
        let mut args = vec![
            "channels", "add", "--name", name, "--kind", kind, "--target", target,
        ];
        args.extend_from_slice(extra);
        self.cli(&args).trim().parse().expect("a channel id")
    }

    fn route(&self, channel: &str, extra: &[&str]) {
        let mut args = vec!["routes", "add", "--channel", channel];
        args.extend_from_slice(extra);
        self.cli(&args);
    }

    fn notifier(&self, extra: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = conscope();
        command
            .args([
                "notify",
                "--database-url",
                &self.db,
                "--alerts-topic",
                &self.topic,
                "--group",
                &self.group,
                "--from-beginning",
                "--timeout-ms",
                "3000",
            ])
            .args(extra)
            .env("CONSCOPE_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        command
    }

    /// Runs the notifier until it is idle with every delivery final; its log.
    fn notify_until_idle(&self, extra: &[&str], env: &[(&str, &str)], limit: Duration) -> String {
        let log = tempfile::NamedTempFile::new().expect("log file");
        let mut child = self
            .notifier(&[&["--idle-exit-ms", "1500"], extra].concat(), env)
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("spawn conscope notify");
        let status = exit_within(&mut child, limit);
        let log = std::fs::read_to_string(log.path()).unwrap_or_default();
        match status {
            Some(status) => assert!(status.success(), "conscope notify failed:\n{log}"),
            None => panic!("conscope notify did not finish within {limit:?}:\n{log}"),
        }
        log
    }

    /// `status` per alert for one channel.
    fn deliveries(&self, channel_id: i64) -> BTreeMap<String, String> {
        query_strings(
            &self.db,
            &format!(
                "SELECT alert_id || ' ' || status || ' ' || attempts || ' ' || coalesce(last_error, '')
                 FROM notify_deliveries WHERE channel_id = {channel_id}"
            ),
        )
        .into_iter()
        .map(|line| {
            let (id, rest) = line.split_once(' ').expect("id and rest");
            (id.to_owned(), rest.to_owned())
        })
        .collect()
    }
}

/// Alert `n` as the job publishes it.
fn alert(n: usize, kind: &str, event: &str, with_name: bool) -> Vec<u8> {
    let (rule_id, old, max) = match kind {
        "rule_match" => (
            serde_json::json!(7),
            serde_json::Value::Null,
            serde_json::json!("200.00"),
        ),
        "back_in_stock" => (
            serde_json::json!(8),
            serde_json::Value::Null,
            serde_json::Value::Null,
        ),
        _ => (
            serde_json::Value::Null,
            serde_json::json!(format!("{}.00", 250 + n % 50)),
            serde_json::Value::Null,
        ),
    };
    let mut value = serde_json::json!({
        "alert_id": format!("alert-{n:05}"),
        "kind": kind,
        "event_id": event,
        "section": "Floor A",
        "row": "3",
        "seat": format!("{}", n % 40),
        "source": "stubhub",
        "rule_id": rule_id,
        "max_price": max,
        "old_price": old,
        "new_price": "199.00",
        "currency": "USD",
        "observed_at": "2026-01-01T00:05:00Z",
    });
    if with_name {
        value["event_name"] = serde_json::json!("Taylor Swift — The Eras Tour");
    }
    value.to_string().into_bytes()
}

/// `count` listing drops on `partitions` partitions (keyed by event).
fn burst(topic: &str, count: usize, partitions: i32) {
    let messages: Vec<(i32, Option<&str>, Vec<u8>)> = (0..count)
        .map(|n| {
            (
                (n as i32) % partitions,
                Some("ev"),
                alert(n, "listing_drop", "ev", true),
            )
        })
        .collect();
    produce(topic, &messages);
}

fn ids(count: usize) -> BTreeSet<String> {
    (0..count).map(|n| format!("alert-{n:05}")).collect()
}

#[test]
fn every_channel_gets_a_readable_message() {
    let s = setup("notify_formats", 1);
    // The job's events table: the alert without a name gets it from here.
    execute(
        &s.db,
        "INSERT INTO events (event_id, event_name, venue, event_date, first_seen, last_seen)
         VALUES ('eras', 'Taylor Swift — The Eras Tour', 'Wembley Stadium', '2026-08-01T19:00:00Z', now(), now())",
    );
    let hooks = Receiver::start();
    let slack = Receiver::start();
    let discord = Receiver::start();
    let telegram = Receiver::start();
    let ntfy = Receiver::start();
    let smtp = SmtpServer::start();
    let webhook = s.channel(
        "hook",
        "webhook",
        &hooks.url("/hook"),
        &["--secret-env", "HOOK_SECRET"],
    );
    s.channel(
        "slack",
        "slack",
        &slack.url("/services/{secret}"),
        &["--secret-env", "SLACK_TOKEN"],
    );
    s.channel("discord", "discord", &discord.url("/api/webhooks/1/x"), &[]);
    s.channel("tg", "telegram", "-100123", &["--secret-env", "TG_TOKEN"]);
    s.channel("ntfy", "ntfy", &ntfy.url("/prices"), &[]);
    let email = s.channel(
        "mail",
        "email",
        "ops@example.com",
        &["--secret-env", "SMTP_PASSWORD"],
    );
    for name in ["hook", "slack", "discord", "tg", "ntfy", "mail"] {
        s.route(name, &[]);
    }
    // A route narrowed by kind adds nothing for its channel (once per channel).
    s.route("hook", &["--kinds", "rule_match"]);
    let alerts = [
        alert(1, "listing_drop", "eras", false),
        alert(2, "rule_match", "eras", true),
        alert(3, "back_in_stock", "eras", true),
        b"not an alert".to_vec(),
    ];
    let messages: Vec<(i32, Option<&str>, Vec<u8>)> =
        alerts.iter().map(|a| (0, Some("eras"), a.clone())).collect();
    produce(&s.topic, &messages);

    let secrets = [
        ("HOOK_SECRET", "hook-s3cret"),
        ("SLACK_TOKEN", "T000/B000/slack-s3cret"),
        ("TG_TOKEN", "123456:tg-s3cret"),
        ("SMTP_PASSWORD", "password"),
    ];
    let smtp_port = smtp.port.to_string();
    let ca = smtp.certificates.ca();
    let log = s.notify_until_idle(
        &[
            "--dashboard-url",
            "http://dash.example:8080",
            "--telegram-api",
            &telegram.url(""),
            "--smtp-host",
            "127.0.0.1",
            "--smtp-port",
            &smtp_port,
            "--smtp-username",
            "conscope",
            "--smtp-ca-file",
            ca.to_str().expect("utf-8 path"),
        ],
        &secrets,
        Duration::from_secs(60),
    );
    for (_, secret) in secrets {
        assert!(!log.contains(secret), "the log shows a secret:\n{log}");
    }

    // Webhook: the alert JSON (name, venue, date filled in), signed.
    let requests = hooks.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    for request in &requests {
        let signature = request.header("x-conscope-signature").expect("signature header");
        let (t, v1) = signature
            .strip_prefix("t=")
            .and_then(|rest| rest.split_once(",v1="))
            .expect("t=…,v1=…");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&request.body);
        assert_eq!(
            v1,
            hex(&hmac_sha256(b"hook-s3cret", &signed)),
            "signature of {}",
            request.text()
        );
        let age = chrono::Utc::now().timestamp() - t.parse::<i64>().expect("t is unix seconds");
        assert!((0..120).contains(&age), "t={t}");
        let json = request.json();
        assert_eq!(request.header("idempotency-key"), json["alert_id"].as_str());
        assert_eq!(json["event_name"], "Taylor Swift — The Eras Tour");
        assert_eq!(json["event_url"], format!("http://dash.example:8080/events/eras"));
    }
    let first = requests
        .iter()
        .find(|r| r.json()["alert_id"] == "alert-00001")
        .expect("alert 1");
    assert_eq!(first.json()["venue"], "Wembley Stadium", "looked up in events");
    eprintln!(
        "webhook sample: {} {}\n  {}",
        first.header("x-conscope-signature").unwrap_or(""),
        first.path,
        first.text()
    );

    // Slack: text fallback and mrkdwn blocks, the token from the secret in the path.
    let requests = slack.requests();
    assert_eq!(requests.len(), 3);
    let drop = requests
        .iter()
        .find(|r| r.header("idempotency-key") == Some("alert-00001"))
        .expect("drop");
    assert_eq!(drop.path, "/services/T000/B000/slack-s3cret");
    let json = drop.json();
    let text = json["text"].as_str().expect("text");
    assert!(
        text.starts_with("Price drop: Taylor Swift — The Eras Tour"),
        "{text}"
    );
    assert!(text.contains("251.00 → 199.00 USD (-20.7%)"), "{text}");
    assert!(text.contains("Wembley Stadium · 2026-08-01 19:00 UTC"), "{text}");
    assert!(
        text.contains("Section Floor A, row 3, seat 1 (stubhub)"),
        "{text}"
    );
    assert_eq!(json["blocks"][0]["type"], "section");
    let block = json["blocks"][0]["text"]["text"].as_str().expect("mrkdwn");
    assert!(
        block.contains("<http://dash.example:8080/events/eras|Open on the dashboard>"),
        "{block}"
    );
    eprintln!("slack sample: {}", drop.text());

    // Discord: one embed, linked, no mentions.
    let requests = discord.requests();
    assert_eq!(requests.len(), 3);
    let rule = requests
        .iter()
        .find(|r| r.header("idempotency-key") == Some("alert-00002"))
        .expect("rule");
    let json = rule.json();
    assert_eq!(
        json["embeds"][0]["title"],
        "Price rule matched (rule #7): Taylor Swift — The Eras Tour"
    );
    assert_eq!(json["embeds"][0]["url"], "http://dash.example:8080/events/eras");
    assert!(json["embeds"][0]["description"]
        .as_str()
        .expect("description")
        .contains("199.00 USD · rule ≤ 200.00"));
    assert_eq!(json["allowed_mentions"]["parse"], serde_json::json!([]));
    eprintln!("discord sample: {}", rule.text());

    // Telegram: sendMessage with the bot token in the path, chat id, HTML.
    let requests = telegram.requests();
    assert_eq!(requests.len(), 3);
    let back = requests
        .iter()
        .find(|r| r.header("idempotency-key") == Some("alert-00003"))
        .expect("back");
    assert_eq!(back.path, "/bot123456:tg-s3cret/sendMessage");
    let json = back.json();
    assert_eq!(json["chat_id"], -100123);
    assert_eq!(json["parse_mode"], "HTML");
    assert!(json["text"]
        .as_str()
        .expect("text")
        .starts_with("<b>Back in stock (rule #8): Taylor Swift — The Eras Tour</b>"));
    eprintln!(
        "telegram sample: {} {}",
        back.path.replace("tg-s3cret", "<token>"),
        back.text()
    );

    // ntfy: plain text body, Title (RFC 2047 for non-ASCII), Tags, Click.
    let requests = ntfy.requests();
    assert_eq!(requests.len(), 3);
    let drop = requests
        .iter()
        .find(|r| r.header("idempotency-key") == Some("alert-00001"))
        .expect("drop");
    assert_eq!(drop.path, "/prices");
    assert!(drop.header("title").expect("Title").starts_with("=?UTF-8?B?"));
    assert_eq!(
        drop.header("tags"),
        Some("chart_with_downwards_trend,listing_drop")
    );
    assert_eq!(drop.header("click"), Some("http://dash.example:8080/events/eras"));
    assert!(drop.text().contains("251.00 → 199.00 USD (-20.7%)"));
    eprintln!(
        "ntfy sample: Title: {} Tags: {} Click: {}\n  {}",
        drop.header("title").unwrap_or(""),
        drop.header("tags").unwrap_or(""),
        drop.header("click").unwrap_or(""),
        drop.text()
    );

    // Email: through STARTTLS, authenticated, text and HTML parts.
    let mails = smtp.mails();
    assert_eq!(mails.len(), 3, "{mails:?}");
    for mail in &mails {
        assert!(mail.tls, "mail sent without STARTTLS");
        assert_eq!(mail.user.as_deref(), Some("conscope"));
        assert_eq!(mail.rcpt_tos, ["ops@example.com"]);
        assert!(mail.mail_from.contains("conscope@localhost"));
        assert!(mail.data.contains("multipart/alternative"), "{}", mail.data);
        assert!(mail.data.contains("text/plain") && mail.data.contains("text/html"));
        assert!(mail.data.contains("@conscope>"), "Message-ID from the alert id");
    }
    eprintln!("email sample:\n{}", mails[0].data);

    // The ledger: one row per alert and channel, all sent.
    let rows = s.deliveries(webhook);
    assert_eq!(
        rows.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "alert-00001".to_owned(),
            "alert-00002".to_owned(),
            "alert-00003".to_owned()
        ])
    );
    assert!(rows.values().all(|r| r.starts_with("sent 1")), "{rows:?}");
    assert_eq!(s.deliveries(email).len(), 3);
    assert_eq!(query_i64(&s.db, "SELECT count(*) FROM notify_deliveries"), 18);

    // A restart sends nothing again.
    s.notify_until_idle(&[], &secrets, Duration::from_secs(60));
    assert_eq!(hooks.requests().len(), 3);

    // `channels test` sends a sample and prints the channel's answer.
    let output = conscope()
        .args(["channels", "test", "hook", "--database-url", &s.db])
        .env("HOOK_SECRET", "hook-s3cret")
        .output()
        .expect("channels test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("hook: accepted: HTTP 200 ok"),
        "{stdout}"
    );
    assert_eq!(hooks.requests().len(), 4);
}

/// A refusal for bad input names the flag, and the database is untouched.
#[test]
fn bad_channels_and_routes_are_refused_clearly() {
    let s = setup("notify_cli", 1);
    for (args, flag) in [
        (
            vec!["--name", "x", "--kind", "sms", "--target", "http://x"],
            "--kind",
        ),
        (
            vec!["--name", "x", "--kind", "webhook", "--target", "ftp://x"],
            "--target",
        ),
        (
            vec!["--name", "x", "--kind", "telegram", "--target", "123"],
            "--secret-env",
        ),
        (
            vec!["--name", "x", "--kind", "email", "--target", "nobody"],
            "--target",
        ),
        (
            vec![
                "--name",
                "x",
                "--kind",
                "ntfy",
                "--target",
                "http://x",
                "--max-per-hour",
                "0",
            ],
            "--max-per-hour",
        ),
    ] {
        let output = conscope()
            .args(["channels", "add"])
            .args(&args)
            .args(["--database-url", &s.db])
            .output()
            .expect("conscope");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains(flag),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(query_i64(&s.db, "SELECT count(*) FROM notify_channels"), 0);
    s.channel("a", "webhook", "http://127.0.0.1:9/x", &[]);
    let output = conscope()
        .args([
            "channels",
            "add",
            "--name",
            "a",
            "--kind",
            "webhook",
            "--target",
            "http://x",
            "--database-url",
            &s.db,
        ])
        .output()
        .expect("conscope");
    assert!(String::from_utf8_lossy(&output.stderr).contains("a channel named \"a\" already exists"));
    let output = conscope()
        .args(["routes", "add", "--channel", "nope", "--database-url", &s.db])
        .output()
        .expect("conscope");
    assert!(String::from_utf8_lossy(&output.stderr).contains("no channel nope"));
    s.route("a", &["--kinds", "listing_drop,deal", "--event", "ev"]);
    let list = s.cli(&["routes", "list"]);
    assert!(
        list.contains("listing_drop,deal") && list.contains("ev"),
        "{list}"
    );
    s.cli(&["channels", "disable", "a"]);
    assert!(s.cli(&["channels", "list"]).contains("no"));
    s.cli(&["routes", "remove", "1"]);
    assert_eq!(s.cli(&["routes", "list"]).trim(), "no routes");
}

/// One channel answers 503 for its first 3 s, one 429 with Retry-After: 2
/// once, one 400 for every tenth alert, one is healthy: every alert reaches
/// each once, the healthy one is not held up, the 400s are `failed`.
#[test]
fn a_failing_channel_holds_up_no_other() {
    const ALERTS: usize = 200;
    let s = setup("notify_failures", 2);
    // Down for 3 s from its first request.
    let down_for = Duration::from_secs(3);
    let first_seen = std::sync::Mutex::new(None::<Duration>);
    let flaky = Receiver::scripted(move |request, _| {
        let mut first = first_seen.lock().expect("first request");
        let since = request.at - *first.get_or_insert(request.at);
        if since < down_for {
            Answer::status(503, "down")
        } else {
            Answer::ok()
        }
    });
    let limited = Receiver::scripted(|_, n| {
        if n == 0 {
            Answer::status(429, "slow down").with_header("Retry-After", "2")
        } else {
            Answer::ok()
        }
    });
    let picky = Receiver::scripted(|request, _| {
        if request
            .header("idempotency-key")
            .is_some_and(|k| k.ends_with('0'))
        {
            Answer::status(400, "{\"error\":\"bad payload\"}")
        } else {
            Answer::ok()
        }
    });
    let healthy = Receiver::start();
    let channels: Vec<(i64, &Receiver)> = [
        ("flaky", &flaky),
        ("limited", &limited),
        ("picky", &picky),
        ("healthy", &healthy),
    ]
    .into_iter()
    .map(|(name, receiver)| {
        let id = s.channel(name, "webhook", &receiver.url("/"), &[]);
        s.route(name, &[]);
        (id, receiver)
    })
    .collect();
    burst(&s.topic, ALERTS, 2);
    s.notify_until_idle(&[], &[], Duration::from_secs(90));

    // The healthy channel had everything while the flaky one was still down.
    let last_healthy = healthy.requests().iter().map(|r| r.at).max().expect("requests");
    let flaky_requests = flaky.requests();
    let flaky_start = flaky_requests.first().expect("flaky requests").at;
    let first_flaky_ok = flaky_requests
        .iter()
        .filter(|r| r.at - flaky_start >= down_for)
        .map(|r| r.at)
        .min()
        .expect("flaky recovered");
    eprintln!(
        "healthy channel done at {last_healthy:?}; flaky channel's first success at {first_flaky_ok:?}"
    );
    assert!(
        last_healthy < first_flaky_ok,
        "the healthy channel waited for the flaky one"
    );

    let requests = limited.requests();
    let retry_gap = requests[1].at - requests[0].at;
    assert!(
        retry_gap >= Duration::from_secs(2),
        "Retry-After: 2 not honoured ({retry_gap:?})"
    );

    for (id, receiver) in &channels {
        let rows = s.deliveries(*id);
        assert_eq!(
            rows.keys().cloned().collect::<BTreeSet<_>>(),
            ids(ALERTS),
            "channel {id}"
        );
        assert_eq!(receiver.replays(), 0, "channel {id} saw an alert twice");
    }
    assert_eq!(flaky.processed(), ALERTS);
    let flaky_rows = s.deliveries(channels[0].0);
    assert!(
        flaky_rows.values().any(|r| !r.starts_with("sent 1 ")),
        "some alert needed retries"
    );
    let picky_rows = s.deliveries(channels[2].0);
    let failed: Vec<&String> = picky_rows.values().filter(|r| r.starts_with("failed")).collect();
    assert_eq!(failed.len(), ALERTS / 10);
    assert!(
        failed.iter().all(|r| r.starts_with("failed 1 HTTP 400")),
        "{failed:?}"
    );
    assert_eq!(picky.processed(), ALERTS - ALERTS / 10);
    eprintln!(
        "failures: alerts {ALERTS}, rows {}, flaky requests {} (processed {}, replays {}), 429 retry gap {retry_gap:?}, 400 failed {}",
        query_i64(&s.db, "SELECT count(*) FROM notify_deliveries"),
        flaky.requests().len(),
        flaky.processed(),
        flaky.replays(),
        failed.len()
    );
}

/// kill -9 while the notifier is delivering, 10 times, then a clean run:
/// every alert exactly once per channel in the ledger, none processed twice.
///
/// The burst goes out in 10 slices, one per round: each round produces its
/// slice, starts the notifier, waits for the slice's first rows and kills it
/// a seeded random moment later. A round whose slice was already finished at
/// the kill fails the test: every kill must land mid-delivery. The seed is
/// printed; `CONSCOPE_TEST_SEED` replays it.
#[test]
fn kill_nine_during_a_burst_loses_and_doubles_nothing() {
    const ROUNDS: usize = 10;
    const SLICE: usize = 500;
    const ALERTS: usize = ROUNDS * SLICE;
    const CHANNELS: i64 = 2;
    let s = setup("notify_kill", 2);
    // 3 ms a message (a real webhook takes tens): a slice then takes 1.5 s
    // or more to deliver, so a kill can land inside it. Against an instant
    // receiver the notifier delivers a slice between two polls.
    let slow = || {
        Receiver::scripted(|_, _| {
            std::thread::sleep(Duration::from_millis(3));
            Answer::ok()
        })
    };
    let a = slow();
    let b = slow();
    let a_id = s.channel("a", "webhook", &a.url("/a"), &[]);
    let b_id = s.channel("b", "webhook", &b.url("/b"), &[]);
    s.route("a", &[]);
    s.route("b", &[]);
    let seed: u64 = std::env::var("CONSCOPE_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("kill -9 seed {seed} (CONSCOPE_TEST_SEED={seed} replays it)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Static membership: a restarted notifier takes its partitions over at
    // once instead of waiting out the killed one's session.
    let instance = format!("group.instance.id={}", s.group);
    let slice_rows = |round: usize| {
        query_i64(
            &s.db,
            &format!(
                "SELECT count(*) FROM notify_deliveries
                 WHERE alert_id BETWEEN 'alert-{:05}' AND 'alert-{:05}'",
                round * SLICE,
                (round + 1) * SLICE - 1
            ),
        )
    };
    let expected = CHANNELS * SLICE as i64;
    for round in 0..ROUNDS {
        let messages: Vec<(i32, Option<&str>, Vec<u8>)> = (round * SLICE..(round + 1) * SLICE)
            .map(|n| (n as i32 % 2, Some("ev"), alert(n, "listing_drop", "ev", true)))
            .collect();
        produce(&s.topic, &messages);
        let mut child = KillOnDrop(
            s.notifier(&["--kafka", &instance], &[])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn conscope notify"),
        );
        // Into this slice's deliveries (past startup, the group join and what
        // the previous round left), then a random moment more.
        let mut seen = 0;
        wait_until(Duration::from_secs(60), "this round's first deliveries", || {
            seen = slice_rows(round);
            seen > 0
        });
        assert!(
            seen < expected,
            "round {round}: the slice was finished ({seen} rows) before the kill"
        );
        let delay = Duration::from_millis(rng.gen_range(0..800));
        std::thread::sleep(delay);
        child.0.kill().expect("kill -9");
        let _ = child.0.wait();
        let at_kill = slice_rows(round);
        eprintln!(
            "round {round}: {seen} rows of the slice seen, killed {delay:?} later with {at_kill}/{expected} (all rows {})",
            query_i64(&s.db, "SELECT count(*) FROM notify_deliveries")
        );
        assert!(
            0 < at_kill && at_kill < expected,
            "round {round}: killed with {at_kill} of the slice's {expected} rows: not mid-slice"
        );
    }
    s.notify_until_idle(&["--kafka", &instance], &[], Duration::from_secs(120));
    let rows = query_i64(&s.db, "SELECT count(*) FROM notify_deliveries");
    let distinct = query_i64(
        &s.db,
        "SELECT count(DISTINCT (alert_id, channel_id)) FROM notify_deliveries",
    );
    eprintln!(
        "kill -9 x{ROUNDS}: alerts {ALERTS}, rows {rows} (distinct {distinct}), a: requests {} processed {} replays {}, b: requests {} processed {} replays {}",
        a.requests().len(),
        a.processed(),
        a.replays(),
        b.requests().len(),
        b.processed(),
        b.replays()
    );
    assert_eq!(rows, CHANNELS * ALERTS as i64);
    assert_eq!(distinct, rows);
    let all = ids(ALERTS);
    for (id, receiver) in [(a_id, &a), (b_id, &b)] {
        let ledger = s.deliveries(id);
        assert_eq!(
            ledger.keys().cloned().collect::<BTreeSet<_>>(),
            all,
            "channel {id}"
        );
        assert!(ledger.values().all(|r| r.starts_with("sent")), "channel {id}");
        // Every request carried its alert's key, so each was either processed
        // (the first time) or recognised as a re-send: none processed twice.
        let requests = receiver.requests();
        assert!(
            requests
                .iter()
                .all(|r| r.header("idempotency-key").is_some_and(|k| all.contains(k))),
            "channel {id}: a request without its alert's Idempotency-Key"
        );
        assert_eq!(receiver.processed(), ALERTS, "channel {id}");
        assert_eq!(requests.len(), receiver.processed() + receiver.replays());
        assert_eq!(receiver.accepted_keys().into_iter().collect::<BTreeSet<_>>(), all);
    }
}

/// 500 alerts to a channel capped at 60 an hour (a 20 s "hour" here): 60
/// single messages and one digest of the other 440 when the window ends.
#[test]
fn past_the_cap_the_rest_of_the_hour_is_one_digest() {
    const ALERTS: usize = 500;
    const WINDOW: u64 = 20;
    let s = setup("notify_cap", 1);
    let hook = Receiver::start();
    let id = s.channel("capped", "webhook", &hook.url("/"), &["--max-per-hour", "60"]);
    s.route("capped", &[]);
    burst(&s.topic, ALERTS, 1);
    // Start early in a window, so the burst fits in one.
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if now % WINDOW < 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    s.notify_until_idle(
        &["--rate-window-secs", &WINDOW.to_string()],
        &[],
        Duration::from_secs(90),
    );
    let requests = hook.requests();
    let digests: Vec<_> = requests.iter().filter(|r| r.json()["digest"] == true).collect();
    let singles = requests.len() - digests.len();
    assert_eq!(singles, 60);
    assert_eq!(digests.len(), 1, "one digest");
    assert_eq!(digests[0].json()["count"], ALERTS - 60);
    let rows = s.deliveries(id);
    assert_eq!(rows.len(), ALERTS);
    assert_eq!(rows.values().filter(|r| r.starts_with("sent")).count(), 60);
    assert_eq!(
        rows.values().filter(|r| r.starts_with("digested")).count(),
        ALERTS - 60
    );
    let text = digests[0].json()["text"].as_str().unwrap_or_default().to_owned();
    eprintln!(
        "rate cap: {ALERTS} alerts, {singles} single messages, {} digest(s) of {}; digest text starts: {}",
        digests.len(),
        digests[0].json()["count"],
        text.lines().take(3).collect::<Vec<_>>().join(" | ")
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 as a receiver computes it (RFC 2104), independent of the notifier's.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(block.map(|b| b ^ 0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(block.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}
