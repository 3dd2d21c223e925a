//! `conscope alerts`: the downstream alert consumer (SPEC §4, §6).
//!
//! Tails the alerts topic (`price_alerts`) in its own consumer group, prints one
//! readable line per alert to stdout and, with `--webhook URL`, POSTs each alert's
//! JSON (the message value, byte for byte) to that URL.
//!
//! Touches: the Kafka broker (reads the alerts topic, commits the group's
//! offsets), the webhook, stdout. Never the database.
//!
//! # Delivery
//! - **At least once.** A message's offset is committed only after its alert was
//!   printed and, with `--webhook`, delivered (or definitely refused, below). A
//!   crash or Ctrl-C in between re-delivers the alert on the next run; nothing is
//!   lost.
//! - **Dedup by `alert_id`.** The job aims for no duplicates on the topic, but a
//!   replay (outbox re-publish after a crash, a re-consumed range after a group
//!   rebalance, a producer retry) can repeat an alert. We remember the most recent
//!   [`DEDUP_CAPACITY`] alert ids of this run and skip repeats. The memory is per
//!   run: after a restart, only the committed offsets prevent re-delivery.
//! - **Webhook retries.** Connection errors, 5xx, 408 and 429 are retried with
//!   exponential backoff (100 ms doubling to a 10 s cap; a 429's `Retry-After` is
//!   honoured up to a minute) **forever**: an alert is never dropped because the
//!   receiver is down, and the consumer does not move on meanwhile (order is kept).
//!   Any other 4xx, and a 3xx (redirects are not followed: a POST cannot be
//!   safely replayed to another URL, and a moved webhook is a configuration
//!   error), is a *definite* refusal: the same request would be refused forever,
//!   so retrying would block every later alert for nothing. It is logged at
//!   error level and we move on.
//! - **Malformed messages** (not JSON, missing fields, bad prices) are logged and
//!   skipped; they never stop the consumer.
//!
//! The webhook URL may hold a secret (many webhooks carry a token in the path):
//! only its scheme, host and port are ever logged.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::KafkaArgs;
use crate::kafka;

/// How many recent alert ids the in-memory dedup remembers.
const DEDUP_CAPACITY: usize = 100_000;
/// First webhook retry delay; doubles on every retry up to [`BACKOFF_CAP`].
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Longest `Retry-After` we honour.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// How long one poll waits before we look at the shutdown and idle clocks again.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(clap::Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Topic the job publishes alerts to.
    #[arg(long, env = "CONSCOPE_ALERTS_TOPIC", default_value = "price_alerts")]
    alerts_topic: String,
    /// Consumer group of this consumer (its committed offsets say where to resume).
    #[arg(long, env = "CONSCOPE_ALERTS_GROUP", default_value = "conscope-alerts")]
    group: String,
    /// For a group without committed offsets, start at the oldest alert instead of
    /// only new ones.
    #[arg(long, env = "CONSCOPE_ALERTS_FROM_BEGINNING")]
    from_beginning: bool,
    /// POST each alert's JSON to this URL (retried until it is accepted).
    #[arg(long, env = "CONSCOPE_ALERTS_WEBHOOK", value_name = "URL")]
    webhook: Option<String>,
    /// Exit after handling this many alerts (duplicates and malformed messages
    /// do not count).
    #[arg(long, env = "CONSCOPE_ALERTS_MAX", value_name = "N")]
    max_alerts: Option<u64>,
    /// Exit after this many milliseconds without any message.
    #[arg(long, env = "CONSCOPE_ALERTS_IDLE_EXIT_MS", value_name = "MS")]
    idle_exit_ms: Option<u64>,
    /// Timeout of one webhook request, connection included, in milliseconds.
    #[arg(
        long,
        env = "CONSCOPE_WEBHOOK_TIMEOUT_MS",
        default_value = "10000",
        value_name = "MS"
    )]
    webhook_timeout_ms: u64,
}

/// An alert as published on the alerts topic (SPEC §3). Only what the printed
/// line needs; the webhook gets the message value unchanged.
#[derive(Debug, Deserialize)]
struct Alert {
    alert_id: String,
    kind: String,
    event_id: String,
    #[serde(default)]
    event_name: Option<String>,
    #[serde(default)]
    section: Option<String>,
    #[serde(default)]
    row: Option<String>,
    #[serde(default)]
    seat: Option<String>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    rule_id: Option<i64>,
    /// The rule's threshold, when the publisher adds it (not in SPEC §3's minimum).
    #[serde(default)]
    max_price: Option<Box<RawValue>>,
    #[serde(default)]
    old_price: Option<Box<RawValue>>,
    new_price: Box<RawValue>,
    currency: String,
    observed_at: String,
}

/// The fields of an [`Alert`] the printed line uses, prices parsed exactly.
#[derive(Debug)]
struct Notice {
    alert_id: String,
    line: String,
}

/// Parses and validates one message value; the error says what is wrong.
fn parse_alert(payload: &[u8]) -> Result<Notice, String> {
    let alert: Alert = serde_json::from_slice(payload).map_err(|e| format!("not an alert: {e}"))?;
    if alert.alert_id.is_empty() {
        return Err("empty alert_id".to_owned());
    }
    let new_price = price(&alert.new_price).map_err(|e| format!("new_price: {e}"))?;
    let old_price = match &alert.old_price {
        Some(raw) => Some(price(raw).map_err(|e| format!("old_price: {e}"))?),
        None => None,
    };
    let max_price = match &alert.max_price {
        Some(raw) => Some(price(raw).map_err(|e| format!("max_price: {e}"))?),
        None => None,
    };
    let line = format_line(&alert, old_price, new_price, max_price);
    Ok(Notice {
        alert_id: alert.alert_id,
        line,
    })
}

/// A price from its exact JSON text: a decimal string (`"199.00"`, the contract)
/// or a bare number (`199.00`, tolerated). Never through `f64`.
fn price(raw: &RawValue) -> Result<Decimal, String> {
    let text = raw.get();
    let digits = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|e| e.to_string())?
    } else {
        text.to_owned()
    };
    let digits = digits.trim();
    let plain = !digits.is_empty()
        && digits
            .strip_prefix('-')
            .unwrap_or(digits)
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.');
    if !plain {
        return Err(format!("not a decimal price: {text}"));
    }
    Decimal::from_str_exact(digits).map_err(|e| format!("not a decimal price {text}: {e}"))
}

/// The readable line of an alert, e.g.
/// `[listing_drop] Taylor Swift — The Eras Tour · Floor A row 3 seat 12 (stubhub): 250.00 → 199.00 USD (-20.4%) at 2026-01-01T00:05:00Z`
fn format_line(
    alert: &Alert,
    old_price: Option<Decimal>,
    new_price: Decimal,
    max_price: Option<Decimal>,
) -> String {
    let name = printable(
        alert
            .event_name
            .as_deref()
            .filter(|name| !name.is_empty())
            .unwrap_or(&alert.event_id),
    );
    let what = match alert.kind.as_str() {
        "listing_drop" => String::new(),
        "event_low" => " · get-in price".to_owned(),
        "rule_match" => match (alert.rule_id, max_price) {
            (Some(id), Some(max)) => format!(" · rule #{id} ≤ {}", money(max)),
            (Some(id), None) => format!(" · rule #{id}"),
            (None, _) => " · rule".to_owned(),
        },
        _ => String::new(),
    };
    let change = match old_price {
        Some(old) => {
            let percent = percent_change(old, new_price)
                .map(|p| format!(" ({p}%)"))
                .unwrap_or_default();
            format!(
                "{} → {} {}{percent}",
                money(old),
                money(new_price),
                printable(&alert.currency)
            )
        }
        None => format!("{} {}", money(new_price), printable(&alert.currency)),
    };
    let observed_at = chrono::DateTime::parse_from_rfc3339(&alert.observed_at)
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        })
        .unwrap_or_else(|_| printable(&alert.observed_at));
    format!(
        "[{}] {name}{what} · {}: {change} at {observed_at}",
        printable(&alert.kind),
        listing(alert),
    )
}

/// `Floor A row 3 seat 12 (stubhub)`; empty row and seat are left out.
fn listing(alert: &Alert) -> String {
    let mut text = printable(alert.section.as_deref().unwrap_or("?"));
    if let Some(row) = alert.row.as_deref().filter(|r| !r.is_empty()) {
        text.push_str(" row ");
        text.push_str(&printable(row));
    }
    if let Some(seat) = alert.seat.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(" seat ");
        text.push_str(&printable(seat));
    }
    if let Some(source) = alert.source.as_deref().filter(|s| !s.is_empty()) {
        text.push_str(" (");
        text.push_str(&printable(source));
        text.push(')');
    }
    text
}

/// `(new - old) / old` in percent, exact then rounded to one decimal, signed:
/// `-20.4`, `+3.0`, `0.0`. `None` when `old` is zero.
fn percent_change(old: Decimal, new: Decimal) -> Option<String> {
    if old.is_zero() {
        return None;
    }
    let change = (new - old).checked_mul(Decimal::ONE_HUNDRED)?.checked_div(old)?;
    let mut rounded = change.round_dp_with_strategy(1, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(1);
    if rounded.is_zero() {
        // Avoid "-0.0".
        return Some("0.0".to_owned());
    }
    Some(if rounded > Decimal::ZERO {
        format!("+{rounded}")
    } else {
        rounded.to_string()
    })
}

/// A money amount with at least two decimals: `199` → `199.00`.
fn money(amount: Decimal) -> String {
    let mut amount = amount;
    if amount.scale() < 2 {
        amount.rescale(2);
    }
    amount.to_string()
}

/// Replaces control characters, so a message cannot garble the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// The most recent alert ids seen, oldest forgotten first.
struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        RecentIds {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    fn insert(&mut self, id: String) {
        if self.set.contains(&id) {
            return;
        }
        if self.order.len() >= self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        self.set.insert(id.clone());
        self.order.push_back(id);
    }
}

/// Exponential backoff: 100 ms, 200 ms, … capped at 10 s.
fn backoff(retry: u32) -> Duration {
    BACKOFF_START
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP)
}

/// The outcome of delivering one alert to the webhook.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// 2xx.
    Delivered,
    /// A definite refusal (4xx other than 408/429, or 3xx): logged, not retried.
    Refused(u16),
    /// Shutdown was requested while retrying: the alert is not done.
    Interrupted,
}

struct Webhook {
    agent: ureq::Agent,
    url: String,
    /// `scheme://host:port`, safe to log.
    shown: String,
}

impl Webhook {
    fn new(url: &str, timeout: Duration) -> anyhow::Result<Self> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .redirects(0)
            .build();
        let parsed = agent
            .post(url)
            .request_url()
            .map_err(|_| anyhow::anyhow!("--webhook is not a valid URL"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            bail!("--webhook must be an http:// or https:// URL");
        }
        let shown = match parsed.port() {
            Some(port) => format!("{}://{}:{port}", parsed.scheme(), parsed.host()),
            None => format!("{}://{}", parsed.scheme(), parsed.host()),
        };
        Ok(Webhook {
            agent,
            url: url.to_owned(),
            shown,
        })
    }

    /// POSTs `body` until it is accepted or definitely refused; retries forever
    /// otherwise, unless `shutdown` is set.
    fn deliver(&self, body: &[u8], alert_id: &str, shutdown: &AtomicBool) -> anyhow::Result<Delivery> {
        let mut retry = 0u32;
        loop {
            let result = self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/json")
                .send_bytes(body);
            let (reason, retry_after) = match result {
                Ok(response) if (200..300).contains(&response.status()) => {
                    // Read the body so the connection goes back to the pool.
                    let _ = response.into_string();
                    return Ok(Delivery::Delivered);
                }
                Ok(response) => {
                    // 1xx/3xx: redirects are not followed (see the module doc).
                    let status = response.status();
                    let location = response.header("Location").map(str::to_owned);
                    tracing::error!(
                        alert_id,
                        webhook = %self.shown,
                        status,
                        location = location.as_deref().map(redact_location).unwrap_or_default(),
                        "webhook answered {status} (redirects are not followed); alert not delivered, moving on"
                    );
                    return Ok(Delivery::Refused(status));
                }
                Err(ureq::Error::Status(status, response)) if retryable_status(status) => {
                    let retry_after = response
                        .header("Retry-After")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s).min(RETRY_AFTER_CAP));
                    let _ = response.into_string();
                    (format!("HTTP {status}"), retry_after)
                }
                Err(ureq::Error::Status(status, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    let text: String = printable(&text).chars().take(200).collect();
                    tracing::error!(
                        alert_id,
                        webhook = %self.shown,
                        status,
                        response = %text,
                        "webhook refused the alert; a {status} would be refused again, so it is not retried"
                    );
                    return Ok(Delivery::Refused(status));
                }
                Err(ureq::Error::Transport(transport)) => {
                    use ureq::ErrorKind::*;
                    if matches!(transport.kind(), InvalidUrl | UnknownScheme | InvalidProxyUrl) {
                        // Checked at start; cannot change. Exit without committing.
                        bail!("webhook request cannot be made: {}", transport_reason(&transport));
                    }
                    (transport_reason(&transport), None)
                }
            };
            let delay = backoff(retry).max(retry_after.unwrap_or_default());
            retry = retry.saturating_add(1);
            tracing::warn!(
                alert_id,
                webhook = %self.shown,
                attempt = retry,
                "webhook delivery failed ({reason}); retrying in {delay:?}"
            );
            if sleep_unless(delay, shutdown) {
                return Ok(Delivery::Interrupted);
            }
        }
    }
}

/// Statuses worth retrying: the receiver is overloaded or briefly broken.
fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 429 || status == 408
}

/// A transport error without its URL (which may hold a secret).
fn transport_reason(transport: &ureq::Transport) -> String {
    let mut text = transport.kind().to_string();
    if let Some(message) = transport.message() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(source) = std::error::Error::source(transport) {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

/// A redirect target without its path and query (they may hold a secret).
fn redact_location(location: &str) -> String {
    match location.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
            let host = host.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}/…")
        }
        None => "(relative)".to_owned(),
    }
}

/// Sleeps `delay`, waking early when `shutdown` is set; true if it was.
fn sleep_unless(delay: Duration, shutdown: &AtomicBool) -> bool {
    let until = Instant::now() + delay;
    loop {
        if shutdown.load(Ordering::SeqCst) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Logs failed asynchronous offset commits (delivered through `poll`).
struct AlertsContext;

impl ClientContext for AlertsContext {}

impl ConsumerContext for AlertsContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            // The alert was handled; a lost commit only means it may be
            // re-delivered after a restart (at least once).
            Err(error) => tracing::warn!(%error, "offset commit failed"),
        }
    }
}

/// Sets the returned flag on the first SIGINT/SIGTERM; exits at once on the second.
fn shutdown_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        let _guard = runtime.enter();
        (
            signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        )
    };
    let set = Arc::clone(&flag);
    std::thread::Builder::new()
        .name("conscope-signals".to_owned())
        .spawn(move || {
            runtime.block_on(async move {
                for round in 0..2 {
                    #[cfg(unix)]
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                    #[cfg(not(unix))]
                    if tokio::signal::ctrl_c().await.is_err() {
                        return;
                    }
                    if round == 0 {
                        tracing::info!("stopping: finishing the current alert (again to quit at once)");
                        set.store(true, Ordering::SeqCst);
                    } else {
                        std::process::exit(130);
                    }
                }
            });
        })
        .context("cannot start the signal thread")?;
    Ok(flag)
}

/// Counters, logged on exit.
#[derive(Default, Debug)]
struct Counts {
    handled: u64,
    duplicates: u64,
    malformed: u64,
    refused: u64,
}

pub fn run(args: AlertsArgs) -> anyhow::Result<()> {
    let webhook = match &args.webhook {
        Some(url) => Some(Webhook::new(
            url,
            Duration::from_millis(args.webhook_timeout_ms.max(1)),
        )?),
        None => None,
    };
    if args.max_alerts == Some(0) {
        return Ok(());
    }
    let shutdown = shutdown_flag()?;

    let mut config = args.kafka.client_config();
    let mut default = |key: &str, value: &str| {
        // `--kafka KEY=VALUE` wins over our defaults.
        if config.get(key).is_none() {
            config.set(key, value);
        }
    };
    default("enable.auto.commit", "false");
    default("enable.auto.offset.store", "false");
    default("enable.partition.eof", "false");
    default(
        "auto.offset.reset",
        if args.from_beginning { "earliest" } else { "latest" },
    );
    // A webhook that is down blocks the poll loop (we retry forever, in order);
    // do not let that cost us group membership. Losing it would be safe (the
    // uncommitted alert is re-delivered and deduped) but noisy.
    default("max.poll.interval.ms", "86400000");
    config.set("group.id", &args.group);
    let consumer: BaseConsumer<AlertsContext> = config
        .create_with_context(AlertsContext)
        .context("cannot create the Kafka consumer")?;
    // Fail fast with a clear message when no broker answers.
    match partition_count(&consumer, &args.alerts_topic)? {
        Some(partitions) => tracing::info!(
            topic = %args.alerts_topic,
            partitions,
            group = %args.group,
            "consuming alerts"
        ),
        None => tracing::warn!(
            topic = %args.alerts_topic,
            "alerts topic does not exist yet; waiting for the job to create it"
        ),
    }
    if let Some(webhook) = &webhook {
        tracing::info!(webhook = %webhook.shown, "posting alerts to the webhook");
    }
    consumer
        .subscribe(&[&args.alerts_topic])
        .with_context(|| format!("cannot subscribe to {:?}", args.alerts_topic))?;

    let idle_exit = args.idle_exit_ms.map(Duration::from_millis);
    let mut last_message = Instant::now();
    let mut recent = RecentIds::new(DEDUP_CAPACITY);
    let mut counts = Counts::default();
    // Next offset to read per partition, for the final synchronous commit.
    let mut done: HashMap<(String, i32), i64> = HashMap::new();
    let mut last_poll_error: Option<(String, Instant)> = None;
    let stdout = std::io::stdout();

    let result = (|| -> anyhow::Result<()> {
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return Ok(());
            }
            if args.max_alerts.is_some_and(|max| counts.handled >= max) {
                return Ok(());
            }
            let message = match consumer.poll(POLL_INTERVAL) {
                None => {
                    if idle_exit.is_some_and(|idle| last_message.elapsed() >= idle) {
                        tracing::info!("no alert for {:?}; exiting", last_message.elapsed());
                        return Ok(());
                    }
                    continue;
                }
                Some(Err(error)) => {
                    // Broker hiccups and missing topics: librdkafka recovers by
                    // itself; log each distinct error at most every 30 s.
                    let text = error.to_string();
                    let repeat = last_poll_error
                        .as_ref()
                        .is_some_and(|(last, at)| *last == text && at.elapsed() < Duration::from_secs(30));
                    if !repeat {
                        tracing::warn!(%error, "Kafka consumer error");
                        last_poll_error = Some((text, Instant::now()));
                    }
                    if idle_exit.is_some_and(|idle| last_message.elapsed() >= idle) {
                        return Ok(());
                    }
                    continue;
                }
                Some(Ok(message)) => message,
            };
            last_message = Instant::now();
            let finished = handle(
                &message,
                &mut recent,
                &mut counts,
                webhook.as_ref(),
                &shutdown,
                &stdout,
            )?;
            if !finished {
                // Interrupted mid-delivery: not committed, re-delivered next run.
                return Ok(());
            }
            done.insert(
                (message.topic().to_owned(), message.partition()),
                message.offset() + 1,
            );
            if let Err(error) = consumer.commit_message(&message, CommitMode::Async) {
                tracing::warn!(%error, "offset commit failed");
            }
        }
    })();

    // Make sure the asynchronous commits landed, for the partitions still ours.
    final_commit(&consumer, &done);
    tracing::info!(
        handled = counts.handled,
        duplicates = counts.duplicates,
        malformed = counts.malformed,
        webhook_refused = counts.refused,
        "alerts consumer stopped"
    );
    result
}

/// Handles one message; false when interrupted before the alert was done (its
/// offset must not be committed).
fn handle(
    message: &BorrowedMessage<'_>,
    recent: &mut RecentIds,
    counts: &mut Counts,
    webhook: Option<&Webhook>,
    shutdown: &AtomicBool,
    stdout: &std::io::Stdout,
) -> anyhow::Result<bool> {
    let position = format!("{}/{}@{}", message.topic(), message.partition(), message.offset());
    let Some(payload) = message.payload() else {
        counts.malformed += 1;
        tracing::warn!(message = %position, "skipping alert message without a value");
        return Ok(true);
    };
    let notice = match parse_alert(payload) {
        Ok(notice) => notice,
        Err(error) => {
            counts.malformed += 1;
            tracing::warn!(message = %position, %error, "skipping malformed alert message");
            return Ok(true);
        }
    };
    if recent.contains(&notice.alert_id) {
        counts.duplicates += 1;
        tracing::debug!(message = %position, alert_id = %notice.alert_id, "skipping duplicate alert");
        return Ok(true);
    }
    {
        let mut out = stdout.lock();
        writeln!(out, "{}", notice.line)
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
    }
    if let Some(webhook) = webhook {
        match webhook.deliver(payload, &notice.alert_id, shutdown)? {
            Delivery::Delivered => {}
            Delivery::Refused(_) => counts.refused += 1,
            Delivery::Interrupted => return Ok(false),
        }
    }
    recent.insert(notice.alert_id);
    counts.handled += 1;
    Ok(true)
}

/// The number of partitions of `topic`, `None` when it does not exist; an error
/// when no broker answers within [`kafka::METADATA_TIMEOUT`].
fn partition_count(consumer: &BaseConsumer<AlertsContext>, topic: &str) -> anyhow::Result<Option<usize>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), kafka::METADATA_TIMEOUT)
        .with_context(|| format!("cannot read metadata of topic {topic:?} (is the broker up?)"))?;
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len()))
}

fn final_commit(consumer: &BaseConsumer<AlertsContext>, done: &HashMap<(String, i32), i64>) {
    if done.is_empty() {
        return;
    }
    let assigned: HashSet<(String, i32)> = match consumer.assignment() {
        Ok(list) => list
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the assignment; skipping the final commit");
            return;
        }
    };
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), next) in done {
        if assigned.contains(&(topic.clone(), *partition)) {
            if let Err(error) = offsets.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::warn!(%error, "cannot build the final commit");
                return;
            }
        }
    }
    if offsets.count() == 0 {
        return;
    }
    if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
        tracing::warn!(%error, "final offset commit failed; the last alerts may be re-delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        parse_alert(json.as_bytes()).expect(json).line
    }

    #[test]
    fn listing_drop_line() {
        let text = line(
            r#"{"alert_id":"a1","kind":"listing_drop","event_id":"ts","event_name":"Taylor Swift — The Eras Tour",
                "section":"Floor A","row":"3","seat":"12","source":"stubhub","rule_id":null,
                "old_price":"250.00","new_price":"199.00","currency":"USD","observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[listing_drop] Taylor Swift — The Eras Tour · Floor A row 3 seat 12 (stubhub): 250.00 → 199.00 USD (-20.4%) at 2026-01-01T00:05:00Z"
        );
    }

    #[test]
    fn event_low_and_rule_lines() {
        let text = line(
            r#"{"alert_id":"a2","kind":"event_low","event_id":"ts","section":"GA","row":"","seat":"",
                "source":"seatgeek","old_price":"100","new_price":"99.5","currency":"EUR","observed_at":"2026-01-01T01:05:00+01:00"}"#,
        );
        assert_eq!(
            text,
            "[event_low] ts · get-in price · GA (seatgeek): 100.00 → 99.50 EUR (-0.5%) at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a3","kind":"rule_match","event_id":"ts","event_name":"TS","section":"GA","row":"","seat":"",
                "source":"x","rule_id":7,"max_price":"200.00","old_price":null,"new_price":"199.00","currency":"USD",
                "observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert_eq!(
            text,
            "[rule_match] TS · rule #7 ≤ 200.00 · GA (x): 199.00 USD at 2026-01-01T00:05:00Z"
        );
        let text = line(
            r#"{"alert_id":"a4","kind":"rule_match","event_id":"ts","section":"GA","rule_id":7,
                "old_price":250.10,"new_price":199,"currency":"USD","observed_at":"2026-01-01T00:05:00Z"}"#,
        );
        assert!(
            text.contains("rule #7 · GA: 250.10 → 199.00 USD (-20.4%)"),
            "{text}"
        );
    }

    #[test]
    fn malformed_alerts_are_errors() {
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"kind":"listing_drop"}"#,
            r#"{"alert_id":"","kind":"k","event_id":"e","new_price":"1","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"abc","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"1e3","currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":true,"currency":"USD","observed_at":"t"}"#,
            r#"{"alert_id":"x","kind":"k","event_id":"e","new_price":"1","old_price":"?","currency":"USD","observed_at":"t"}"#,
        ] {
            assert!(parse_alert(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn control_characters_are_not_printed() {
        let text = line(
            r#"{"alert_id":"a","kind":"listing_drop","event_id":"e","event_name":"evil\u001b[2Jname\n","section":"S",
                "new_price":"1.00","currency":"USD","observed_at":"2026-01-01T00:00:00Z"}"#,
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }

    #[test]
    fn percentages() {
        let d = |s: &str| Decimal::from_str_exact(s).unwrap();
        assert_eq!(percent_change(d("250.00"), d("199.00")).as_deref(), Some("-20.4"));
        assert_eq!(percent_change(d("100"), d("103")).as_deref(), Some("+3.0"));
        assert_eq!(percent_change(d("100.00"), d("99.99")).as_deref(), Some("0.0"));
        assert_eq!(percent_change(d("3.00"), d("2.00")).as_deref(), Some("-33.3"));
        assert_eq!(percent_change(d("0"), d("2.00")), None);
        assert_eq!(
            percent_change(d("1000000.00"), d("0.01")).as_deref(),
            Some("-100.0")
        );
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(6), Duration::from_millis(6400));
        assert_eq!(backoff(7), Duration::from_secs(10));
        assert_eq!(backoff(1000), Duration::from_secs(10));
    }

    #[test]
    fn recent_ids_are_bounded() {
        let mut recent = RecentIds::new(2);
        recent.insert("a".into());
        recent.insert("b".into());
        recent.insert("a".into());
        assert!(recent.contains("a") && recent.contains("b"));
        recent.insert("c".into());
        assert!(!recent.contains("a"));
        assert!(recent.contains("b") && recent.contains("c"));
        assert_eq!(recent.order.len(), 2);
    }

    #[test]
    fn webhook_url_is_checked_and_redacted() {
        let hook = Webhook::new("http://127.0.0.1:8080/hook/secret-token", Duration::from_secs(1)).unwrap();
        assert_eq!(hook.shown, "http://127.0.0.1:8080");
        assert!(Webhook::new("ftp://x/y", Duration::from_secs(1)).is_err());
        assert!(Webhook::new("not a url", Duration::from_secs(1)).is_err());
        assert_eq!(
            redact_location("https://u:p@h.example/a?b"),
            "https://h.example/…"
        );
    }
}
