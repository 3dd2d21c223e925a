//! Job metrics: what was committed, consumer lag, commit lag, publish lag,
//! input messages skipped because retention deleted them before they were read. A
//! reporter thread logs them through `tracing` every few seconds; `summary`
//! prints them on exit.
//!
//! Only committed work is counted (the writer adds an epoch's counters after its
//! transaction commits), so the figures never include rolled-back work. The
//! counters and publish lag live in process 0, where the writer and the
//! publisher run; every process of a cluster reports its own partitions' consumer
//! lag, commit lag and retention skips (see [`crate::lag`] for why each process
//! knows which of its offsets are durable), and its line and summary say only
//! what it knows.
//!
//! Commit lag is how long a message waited from its Kafka timestamp (the
//! producer's CreateTime, or the broker's LogAppendTime) until the transaction
//! holding its rows and offset committed: the Kafka source hands each message's
//! timestamp over as it reads it, and the offsets becoming durable (the sink's
//! probe passing their epoch) close them. Over the whole run, in a fixed-size
//! histogram.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use conscope_dataflows::model::Counters;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::lag::Lag;

/// Lets one log line through per `every`, counting the rest.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    pub suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_none_or(|last| now.duration_since(last) >= self.every)
        {
            self.last = Some(now);
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

/// A histogram of durations in microseconds with a fixed footprint (about 60
/// KiB): exact below 256 µs, then 128 buckets per power of two, so a percentile
/// is off by under 0.4 % (it reports its bucket's midpoint).
#[derive(Default)]
struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Histogram {
    const SUB_BITS: u32 = 7;
    const EXACT: u64 = 2 << Self::SUB_BITS;

    fn index(micros: u64) -> usize {
        if micros < Self::EXACT {
            return micros as usize;
        }
        let exponent = 63 - micros.leading_zeros();
        let shift = exponent - Self::SUB_BITS;
        let sub = (micros >> shift) - (1 << Self::SUB_BITS);
        Self::EXACT as usize + (((exponent - Self::SUB_BITS - 1) as usize) << Self::SUB_BITS) + sub as usize
    }

    /// The midpoint of bucket `index`.
    fn value(index: usize) -> u64 {
        if index < Self::EXACT as usize {
            return index as u64;
        }
        let above = index - Self::EXACT as usize;
        let shift = (above >> Self::SUB_BITS) as u32 + 1;
        let sub = (above & ((1 << Self::SUB_BITS) - 1)) as u64 + (1 << Self::SUB_BITS);
        (sub << shift) + (1 << shift) / 2
    }

    fn record(&mut self, micros: u64, count: u64) {
        let index = Self::index(micros);
        if self.counts.len() <= index {
            self.counts.resize(Self::index(u64::MAX) + 1, 0);
        }
        self.counts[index] += count;
        self.total += count;
    }

    /// The value at rank `round((total - 1) * fraction)`, as `percentile` ranks a sorted slice.
    fn percentile(&self, fraction: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total - 1) as f64 * fraction).round() as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                return Some(Self::value(index));
            }
        }
        None
    }
}

/// Consecutive messages of one partition with one timestamp, read but not yet committed.
struct Unconfirmed {
    first_offset: i64,
    timestamp_ms: i64,
    messages: u64,
}

#[derive(Default)]
struct Inner {
    committed: Counters,
    commits: u64,
    published_alerts: u64,
    published_dead_letters: u64,
    /// Outbox rows the broker refused for good, moved to `outbox_parked`.
    parked: u64,
    /// Input messages between a stored offset and the log start at startup:
    /// deleted by retention before the job read them.
    skipped_by_retention: u64,
    /// Recent publish lags (µs), for the periodic line.
    recent_lags: VecDeque<u64>,
    /// Every publish lag of this run (µs), for the summary.
    all_lags: Vec<u64>,
    /// This process's partitions: durable offsets and high watermarks.
    lag: Lag,
    /// Messages read, per partition in offset order, waiting for their commit.
    unconfirmed: BTreeMap<i32, VecDeque<Unconfirmed>>,
    /// Commit lags (µs) of this run.
    commit_lags: Histogram,
    /// Set while PostgreSQL refuses the writer's statements for a reason that
    /// is not the data's (see `sink::write_error`): the job waits.
    blocked: Option<Blocked>,
}

/// Why the writer is waiting, and since when.
#[derive(Clone, Debug)]
pub struct Blocked {
    pub sqlstate: String,
    pub reason: String,
    pub since: Instant,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    started: Instant,
    alerts_topic: String,
    /// This process's index in the cluster: process 0 runs the writer and the
    /// publisher, so only its counters and publish lag mean anything.
    process: usize,
}

fn percentile(sorted: &[u64], fraction: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted.get(index).copied()
}

fn total_lag(inner: &Inner) -> String {
    inner
        .lag
        .total()
        .map_or_else(|| "-".to_owned(), |lag| lag.to_string())
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as i64)
}

fn millis(micros: Option<u64>) -> String {
    micros.map_or_else(
        || "-".to_owned(),
        |micros| format!("{:.1}ms", micros as f64 / 1000.0),
    )
}

impl Metrics {
    /// The metrics of process `process` of the cluster (0 when alone).
    pub fn new(alerts_topic: &str, process: usize) -> Arc<Metrics> {
        Arc::new(Metrics {
            inner: Mutex::new(Inner::default()),
            started: Instant::now(),
            alerts_topic: alerts_topic.to_owned(),
            process,
        })
    }

    /// Process 0 runs the writer and the publisher.
    fn writes(&self) -> bool {
        self.process == 0
    }

    /// A source of this process opened `partition` at `start` (its stored
    /// offset, or where it starts when none is), the high watermark if known.
    pub fn own_partition(&self, partition: i32, start: i64, high: Option<i64>) {
        self.with(|inner| inner.lag.own(partition, start, high));
    }

    /// A source reported `(partition, next offset)` at `epoch`: see [`Lag::reported`].
    pub fn reported(&self, epoch: u64, offsets: &[(i32, i64)]) {
        if offsets.is_empty() {
            return;
        }
        self.with(|inner| {
            for &(partition, next) in offsets {
                inner.lag.reported(epoch, partition, next);
            }
        });
    }

    /// The dataflow stopped before its probe ran empty: offsets reported but
    /// not durable yet are dropped (see [`Lag::forget_pending`]).
    pub fn forget_reported(&self) {
        self.with(|inner| inner.lag.forget_pending());
    }

    /// Every epoch below `frontier` (the sink's probe; `None` once it is empty)
    /// is committed: moves the durable offsets and ends the commit lag of the
    /// messages below them.
    pub fn durable_below(&self, frontier: Option<u64>) {
        let now = now_micros();
        self.with(|inner| {
            for (partition, next) in inner.lag.durable_below(frontier) {
                let Some(pending) = inner.unconfirmed.get_mut(&partition) else {
                    continue;
                };
                while let Some(run) = pending.front() {
                    if run.first_offset >= next {
                        break;
                    }
                    let lag = (now - run.timestamp_ms.saturating_mul(1000)).max(0) as u64;
                    inner.commit_lags.record(lag, run.messages);
                    pending.pop_front();
                }
            }
        });
    }

    /// Messages a source just read, as `(partition, offset, Kafka timestamp in
    /// ms)` in read order: their commit lag ends when `durable_below` moves
    /// their partition's durable offset past them.
    pub fn read(&self, messages: &[(i32, i64, i64)]) {
        if messages.is_empty() {
            return;
        }
        self.with(|inner| {
            // Runs are merged within one read only, so that none straddles two epochs.
            let mut opened: Vec<i32> = Vec::new();
            for &(partition, offset, timestamp_ms) in messages {
                let pending = inner.unconfirmed.entry(partition).or_default();
                match pending.back_mut() {
                    Some(last) if opened.contains(&partition) && last.timestamp_ms == timestamp_ms => {
                        last.messages += 1;
                    }
                    _ => {
                        pending.push_back(Unconfirmed {
                            first_offset: offset,
                            timestamp_ms,
                            messages: 1,
                        });
                        if !opened.contains(&partition) {
                            opened.push(partition);
                        }
                    }
                }
            }
        });
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    /// A transaction committed: called by the writer right after the commit.
    pub fn committed(&self, counters: &Counters, rejected: u64) {
        self.with(|inner| {
            inner.committed.add(counters);
            inner.committed.rejected += rejected;
        });
    }

    pub fn commit_done(&self) {
        self.with(|inner| inner.commits += 1);
    }

    /// The writer cannot write: PostgreSQL refuses with `sqlstate` (`reason`:
    /// its message) for a reason no message explains. Kept from the first
    /// refusal until `writer_unblocked`.
    pub fn writer_blocked(&self, sqlstate: &str, reason: &str) {
        self.with(|inner| {
            if inner
                .blocked
                .as_ref()
                .is_none_or(|blocked| blocked.sqlstate != sqlstate)
            {
                inner.blocked = Some(Blocked {
                    sqlstate: sqlstate.to_owned(),
                    reason: reason.to_owned(),
                    since: Instant::now(),
                });
            }
        });
    }

    /// A commit landed: the writer is no longer blocked. `true` if it was.
    pub fn writer_unblocked(&self) -> bool {
        self.with(|inner| inner.blocked.take().is_some())
    }

    /// What `/healthz` reports: why the writer waits, if it does.
    pub fn blocked(&self) -> Option<Blocked> {
        self.with(|inner| inner.blocked.clone())
    }

    /// Records a partition's high watermark, as librdkafka's statistics report
    /// it from fetch responses: lag monitoring that costs the broker nothing.
    pub fn set_high_watermark(&self, partition: i32, high: i64) {
        self.with(|inner| inner.lag.set_high(partition, high));
    }

    /// Messages committed since start and messages up to the high watermarks
    /// seen at start, over this process's partitions.
    pub fn progress(&self) -> (u64, u64) {
        self.with(|inner| inner.lag.progress())
    }

    /// Asks the broker for the high watermarks of this process's partitions now
    /// (blocking; for the exit summary, off the worker threads).
    pub fn measure_lag(&self, consumer: &BaseConsumer, topic: &str) {
        let owned: Vec<i32> = self.with(|inner| inner.lag.owned().collect());
        for partition in owned {
            if let Ok((_, high)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10)) {
                self.set_high_watermark(partition, high);
            }
        }
    }

    /// Counts messages recovery found already on the topic (no lag sample: their
    /// acknowledgement was lost).
    pub fn found_published(&self, topic: &str, count: u64) {
        self.count_published(topic, count, None);
    }

    pub fn published(&self, topic: &str, lag_micros: u64) {
        self.count_published(topic, 1, Some(lag_micros));
    }

    /// Input messages lost to retention: a partition resumed at its log start,
    /// above its stored offset.
    pub fn skipped_by_retention(&self, count: u64) {
        self.with(|inner| inner.skipped_by_retention += count);
    }

    pub fn parked(&self, count: u64) {
        self.with(|inner| inner.parked += count);
    }

    fn count_published(&self, topic: &str, count: u64, lag_micros: Option<u64>) {
        let is_alert = topic == self.alerts_topic;
        self.with(|inner| {
            if !is_alert {
                inner.published_dead_letters += count;
                return;
            }
            inner.published_alerts += count;
            if let Some(lag) = lag_micros {
                inner.recent_lags.push_back(lag);
                if inner.recent_lags.len() > 10_000 {
                    inner.recent_lags.pop_front();
                }
                if inner.all_lags.len() < 10_000_000 {
                    inner.all_lags.push(lag);
                }
            }
        });
    }

    fn line(&self, inner: &Inner, lags: &[u64]) -> String {
        if !self.writes() {
            return self.local_line(inner);
        }
        let c = &inner.committed;
        let elapsed = self.started.elapsed().as_secs_f64();
        let processed = c.processed + c.rejected;
        format!(
            "processed={processed} events_created={} prices_stored={} duplicates={} stale={} rejected={} \
             skipped_by_retention={} alerts[listing_drop={} event_low={} rule_match={} new_low={} back_in_stock={} deal={}] commits={} lag={} commit_lag_p50={} \
             commit_lag_p99={} published_alerts={} published_dead_letters={} parked={} publish_lag_p50={} \
             publish_lag_p99={} elapsed={elapsed:.1}s rate={:.0}/s{}",
            c.events_created,
            c.prices_stored,
            c.duplicates,
            c.stale,
            c.rejected,
            inner.skipped_by_retention,
            c.listing_drop,
            c.event_low,
            c.rule_match,
            c.new_low,
            c.back_in_stock,
            c.deal,
            inner.commits,
            total_lag(inner),
            millis(inner.commit_lags.percentile(0.5)),
            millis(inner.commit_lags.percentile(0.99)),
            inner.published_alerts,
            inner.published_dead_letters,
            inner.parked,
            millis(percentile(lags, 0.5)),
            millis(percentile(lags, 0.99)),
            processed as f64 / elapsed.max(1e-9),
            inner
                .blocked
                .as_ref()
                .map_or_else(String::new, |blocked| format!(" writer_blocked={}", blocked.sqlstate)),
        )
    }

    /// What a process without the writer knows: its partitions' lag, commit lag
    /// and retention skips.
    fn local_line(&self, inner: &Inner) -> String {
        format!(
            "process={} skipped_by_retention={} lag={} commit_lag_p50={} commit_lag_p99={} elapsed={:.1}s",
            self.process,
            inner.skipped_by_retention,
            total_lag(inner),
            millis(inner.commit_lags.percentile(0.5)),
            millis(inner.commit_lags.percentile(0.99)),
            self.started.elapsed().as_secs_f64(),
        )
    }

    /// The periodic line, with publish lag over recent alerts (commit lag: the whole run).
    pub fn report(&self) -> String {
        self.with(|inner| {
            let mut lags: Vec<u64> = inner.recent_lags.iter().copied().collect();
            lags.sort_unstable();
            self.line(inner, &lags)
        })
    }

    /// The exit summary, with publish lag over the whole run and peak memory.
    pub fn summary(&self) -> String {
        self.with(|inner| {
            let mut lags = inner.all_lags.clone();
            lags.sort_unstable();
            format!("{} peak_rss={}", self.line(inner, &lags), peak_rss())
        })
    }

    /// Everything the metrics line says, in Prometheus text format (version
    /// 0.0.4) for `conscope run --metrics-addr`: counters since start, consumer
    /// lag per input partition this process owns, and commit and publish lag as
    /// summaries. A process other than 0 serves what it knows: its partitions'
    /// lag, commit lag and retention skips.
    pub fn prometheus(&self) -> String {
        self.with(|inner| {
            let c = &inner.committed;
            let mut out = String::with_capacity(4096);
            let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
                out.push_str(&format!("# HELP conscope_{name} {help}\n# TYPE conscope_{name} {kind}\n"));
                for (labels, value) in samples {
                    out.push_str(&format!("conscope_{name}{labels} {value}\n"));
                }
            };
            let plain = |value: u64| vec![(String::new(), value.to_string())];
            let seconds = |micros: Option<u64>| micros.map_or_else(|| "NaN".to_owned(), |m| format!("{:.6}", m as f64 / 1e6));
            if self.writes() {
                let counters: [(&str, &str, u64); 10] = [
                    ("messages_processed_total", "Input messages committed, rejected ones included.", c.processed + c.rejected),
                    ("events_created_total", "Events seen for the first time.", c.events_created),
                    ("prices_stored_total", "Rows written to price_history.", c.prices_stored),
                    ("duplicates_total", "Observations whose identity was already stored.", c.duplicates),
                    ("stale_total", "Observations older than their listing's current one.", c.stale),
                    ("rejected_total", "Input messages rejected to the dead-letter topic.", c.rejected),
                    ("commits_total", "PostgreSQL transactions committed by the writer.", inner.commits),
                    ("published_alerts_total", "Alerts acknowledged by the broker.", inner.published_alerts),
                    ("published_dead_letters_total", "Dead letters acknowledged by the broker.", inner.published_dead_letters),
                    ("outbox_parked_total", "Outbox rows the broker refused for good (kept in outbox_parked).", inner.parked),
                ];
                for (name, help, value) in counters {
                    metric(name, "counter", help, &plain(value));
                }
                let blocked = match &inner.blocked {
                    Some(blocked) => (format!("{{sqlstate=\"{}\"}}", label(&blocked.sqlstate)), "1".to_owned()),
                    None => (String::new(), "0".to_owned()),
                };
                metric(
                    "writer_blocked",
                    "gauge",
                    "1 while PostgreSQL refuses the writes for a reason that is not the data's (a privilege, a missing table, corruption), labelled with its SQLSTATE: the job waits and retries.",
                    &[blocked],
                );
                metric(
                    "alerts_total",
                    "counter",
                    "Alerts committed, by kind.",
                    &[
                        ("{kind=\"listing_drop\"}".to_owned(), c.listing_drop.to_string()),
                        ("{kind=\"event_low\"}".to_owned(), c.event_low.to_string()),
                        ("{kind=\"rule_match\"}".to_owned(), c.rule_match.to_string()),
                        ("{kind=\"new_low\"}".to_owned(), c.new_low.to_string()),
                        ("{kind=\"back_in_stock\"}".to_owned(), c.back_in_stock.to_string()),
                        ("{kind=\"deal\"}".to_owned(), c.deal.to_string()),
                    ],
                );
            }
            metric(
                "skipped_by_retention_total",
                "counter",
                "Input messages of this process's partitions deleted by retention before they were read.",
                &plain(inner.skipped_by_retention),
            );
            let lags: Vec<(String, String)> = inner
                .lag
                .by_partition()
                .map(|(partition, lag)| (format!("{{partition=\"{partition}\"}}"), lag.to_string()))
                .collect();
            metric(
                "consumer_lag",
                "gauge",
                "Input messages not yet committed, per partition this process reads (high watermark minus the stored offset).",
                &lags,
            );
            metric(
                "commit_lag_seconds",
                "summary",
                "From a message's Kafka timestamp to the commit of its rows, since start (this process's partitions).",
                &[
                    ("{quantile=\"0.5\"}".to_owned(), seconds(inner.commit_lags.percentile(0.5))),
                    ("{quantile=\"0.99\"}".to_owned(), seconds(inner.commit_lags.percentile(0.99))),
                ],
            );
            if self.writes() {
                let mut recent: Vec<u64> = inner.recent_lags.iter().copied().collect();
                recent.sort_unstable();
                metric(
                    "publish_lag_seconds",
                    "summary",
                    "From an alert's commit to its acknowledgement by the broker, recent alerts.",
                    &[
                        ("{quantile=\"0.5\"}".to_owned(), seconds(percentile(&recent, 0.5))),
                        ("{quantile=\"0.99\"}".to_owned(), seconds(percentile(&recent, 0.99))),
                    ],
                );
            }
            metric(
                "uptime_seconds",
                "gauge",
                "Seconds since the job started.",
                &[(String::new(), format!("{:.3}", self.started.elapsed().as_secs_f64()))],
            );
            out
        })
    }

    /// Logs `report` every `interval` on its own thread.
    pub fn spawn_reporter(self: &Arc<Self>, interval: Duration) {
        let metrics = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                tracing::info!(target: "conscope::metrics", "{}", metrics.report());
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start the metrics reporter");
        }
    }
}

/// A label value as Prometheus' text format takes it (a SQLSTATE is five
/// letters and digits; anything else is escaped all the same).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Peak resident memory of this process (VmHWM), as the kernel reports it.
pub fn peak_rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .map(|line| line.trim_start_matches("VmHWM:").trim().replace(' ', ""))
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_percentiles_are_within_half_a_percent() {
        let mut histogram = Histogram::default();
        assert_eq!(histogram.percentile(0.5), None);
        let values: Vec<u64> = (1..=100_000).map(|i| i * 37).collect();
        for value in &values {
            histogram.record(*value, 1);
        }
        for fraction in [0.0, 0.5, 0.99, 1.0] {
            let exact = percentile(&values, fraction).unwrap_or_default() as f64;
            let approx = histogram.percentile(fraction).unwrap_or_default() as f64;
            assert!(
                (approx - exact).abs() <= exact / 256.0,
                "{fraction}: {approx} vs {exact}"
            );
        }
        let mut small = Histogram::default();
        small.record(7, 3);
        small.record(u64::MAX, 1);
        assert_eq!(small.percentile(0.5), Some(7));
        assert!(small.percentile(1.0).is_some_and(|value| value > u64::MAX / 2));
    }

    #[test]
    fn commit_lag_counts_each_message_once_when_its_offset_is_durable() {
        let metrics = Metrics::new("alerts", 1);
        let now_ms = now_micros() / 1000;
        metrics.own_partition(0, 1, Some(10));
        metrics.own_partition(1, 0, Some(5));
        metrics.read(&[(0, 1, now_ms - 100), (1, 0, now_ms - 100), (0, 2, now_ms - 100)]);
        metrics.read(&[(0, 3, now_ms - 50)]);
        metrics.reported(7, &[(0, 3)]);
        metrics.reported(8, &[(0, 4), (1, 1)]);
        metrics.durable_below(Some(8));
        metrics.with(|inner| {
            assert_eq!(inner.commit_lags.total, 2);
            let p50 = inner.commit_lags.percentile(0.5).unwrap_or_default();
            assert!((100_000..1_000_000).contains(&p50), "{p50}");
            assert_eq!(inner.lag.total(), Some(7 + 5));
        });
        metrics.durable_below(None);
        metrics.with(|inner| {
            assert_eq!(inner.commit_lags.total, 4);
            assert!(inner.unconfirmed.values().all(VecDeque::is_empty));
        });
        let line = metrics.report();
        assert!(line.starts_with("process=1 "), "{line}");
        assert!(line.contains(" lag=10 "), "{line}");
        let text = metrics.prometheus();
        assert!(
            text.contains("conscope_consumer_lag{partition=\"0\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("conscope_consumer_lag{partition=\"1\"} 4\n"),
            "{text}"
        );
        // Process 1 has no writer: no counters that would read 0 forever.
        assert!(!text.contains("conscope_messages_processed_total"), "{text}");
    }
}
