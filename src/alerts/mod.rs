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
//!
//! # Layout
//! - this file: the flags, the consumer loop (poll, dedup, print, deliver,
//!   commit), shutdown on signals. Touches Kafka and stdout.
//! - `format`: the readable line of an alert (pure; in the library target,
//!   `conscope::alerts::format`, so that `fuzz/` reaches it).
//! - `webhook`: the POST with retries, backoff and URL redaction. Touches the webhook.

// Its retry policy (backoff, statuses, redaction) is shared with `notify`.
pub(crate) mod webhook;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use self::webhook::{Delivery, Webhook};
use crate::config::KafkaArgs;
use crate::kafka;
use crate::shutdown::Shutdown;
use conscope::alerts::format::parse_alert;

/// How many recent alert ids the in-memory dedup remembers.
const DEDUP_CAPACITY: usize = 100_000;
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
    let shutdown = Shutdown::on_signals("finishing the current alert")?;

    let config = consumer_config(&args.kafka, &args.group, args.from_beginning);
    let consumer: BaseConsumer<AlertsContext> = config
        .create_with_context(AlertsContext)
        .context("cannot create the Kafka consumer")?;
    // Fail fast with a clear message when no broker answers.
    let partitions = kafka::partition_count_once(&consumer, &args.alerts_topic).with_context(|| {
        format!(
            "cannot read metadata of topic {:?} (is the broker up?)",
            args.alerts_topic
        )
    })?;
    match partitions {
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
            if shutdown.is_triggered() {
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
/// Client settings of a consumer of the alerts topic in its own group, `conscope
/// alerts` or `conscope notify`: offsets committed by hand, past alerts that are
/// done only; where a group with no committed offset starts. `--kafka KEY=VALUE`
/// wins over these defaults.
pub(crate) fn consumer_config(kafka: &KafkaArgs, group: &str, from_beginning: bool) -> ClientConfig {
    let mut config = kafka.client_config_with(&[
        ("enable.auto.commit", "false"),
        ("enable.auto.offset.store", "false"),
        ("enable.partition.eof", "false"),
        (
            "auto.offset.reset",
            if from_beginning { "earliest" } else { "latest" },
        ),
        // A receiver that is down pauses the poll loop (a webhook retried in
        // order, a notifier's full channel queues); do not let that cost the
        // group membership. Losing it would be safe (uncommitted alerts are
        // delivered again and deduplicated) but noisy.
        ("max.poll.interval.ms", "86400000"),
    ]);
    config.set("group.id", group);
    config
}

fn handle(
    message: &BorrowedMessage<'_>,
    recent: &mut RecentIds,
    counts: &mut Counts,
    webhook: Option<&Webhook>,
    shutdown: &Shutdown,
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
}
