//! The notifier's figures (SPEC §7): per channel, alerts delivered, failed,
//! digested and retries, with the consumer's totals; served at `/metrics` in
//! Prometheus text format (`--metrics-addr`) and logged every few seconds.
//!
//! Counted when the `notify_deliveries` row is committed (never for work that a
//! crash could undo), except retries, counted as they happen.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics_server::Exposition;

/// One channel's counters.
#[derive(Default, Debug)]
pub struct ChannelCounts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub digested: AtomicU64,
    pub retries: AtomicU64,
    /// Alerts waiting in the channel's queue or being sent.
    pub queued: AtomicU64,
}

#[derive(Default)]
pub struct NotifyMetrics {
    pub alerts_read: AtomicU64,
    pub malformed: AtomicU64,
    /// Deliveries skipped because `notify_deliveries` already had them.
    pub already_delivered: AtomicU64,
    pub unrouted: AtomicU64,
    pub in_flight: AtomicU64,
    pub commits: AtomicU64,
    channels: Mutex<BTreeMap<String, Arc<ChannelCounts>>>,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl NotifyMetrics {
    /// The counters of the channel named `name` (created on first use).
    pub fn channel(&self, name: &str) -> Arc<ChannelCounts> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(channels.entry(name.to_owned()).or_default())
    }

    fn snapshot(&self) -> Vec<(String, Arc<ChannelCounts>)> {
        let channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        channels
            .iter()
            .map(|(name, c)| (name.clone(), Arc::clone(c)))
            .collect()
    }

    /// The periodic log line's fields.
    pub fn line(&self) -> String {
        let mut line = format!(
            "alerts_read={} malformed={} already_delivered={} unrouted={} in_flight={}",
            get(&self.alerts_read),
            get(&self.malformed),
            get(&self.already_delivered),
            get(&self.unrouted),
            get(&self.in_flight)
        );
        for (name, c) in self.snapshot() {
            line.push_str(&format!(
                " [{name}: delivered={} failed={} digested={} retries={} queued={}]",
                get(&c.delivered),
                get(&c.failed),
                get(&c.digested),
                get(&c.retries),
                get(&c.queued)
            ));
        }
        line
    }
}

/// A Prometheus label value: `\`, `"` and newlines escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition for NotifyMetrics {
    fn prometheus(&self) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, u64)>| {
            out.push_str(&format!(
                "# HELP conscope_notify_{name} {help}\n# TYPE conscope_notify_{name} {kind}\n"
            ));
            for (labels, value) in samples {
                out.push_str(&format!("conscope_notify_{name}{labels} {value}\n"));
            }
        };
        let plain = |value: &AtomicU64| vec![(String::new(), get(value))];
        metric(
            "alerts_read_total",
            "counter",
            "Alert messages read from the topic.",
            plain(&self.alerts_read),
        );
        metric(
            "malformed_total",
            "counter",
            "Alert messages that could not be decoded (skipped).",
            plain(&self.malformed),
        );
        metric(
            "already_delivered_total",
            "counter",
            "Deliveries skipped because notify_deliveries already held them (a re-read after a restart).",
            plain(&self.already_delivered),
        );
        metric(
            "unrouted_total",
            "counter",
            "Alerts no active route matched.",
            plain(&self.unrouted),
        );
        metric(
            "in_flight",
            "gauge",
            "Alerts read whose deliveries are not all final yet.",
            plain(&self.in_flight),
        );
        metric(
            "offset_commits_total",
            "counter",
            "Consumer offset commits.",
            plain(&self.commits),
        );
        let channels = self.snapshot();
        let per = |field: fn(&ChannelCounts) -> &AtomicU64| {
            channels
                .iter()
                .map(|(name, c)| (format!("{{channel=\"{}\"}}", label(name)), get(field(c))))
                .collect::<Vec<_>>()
        };
        metric(
            "delivered_total",
            "counter",
            "Alerts a channel accepted (status sent).",
            per(|c| &c.delivered),
        );
        metric(
            "failed_total",
            "counter",
            "Alerts a channel refused for good (status failed).",
            per(|c| &c.failed),
        );
        metric(
            "digested_total",
            "counter",
            "Alerts sent in an hourly digest (status digested).",
            per(|c| &c.digested),
        );
        metric(
            "retries_total",
            "counter",
            "Requests retried after a transient failure.",
            per(|c| &c.retries),
        );
        metric(
            "queued",
            "gauge",
            "Alerts waiting in a channel's queue.",
            per(|c| &c.queued),
        );
        out
    }
}
