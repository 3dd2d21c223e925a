//! Job metrics: what was committed, consumer lag, publish lag. A reporter thread
//! logs them through `tracing` every few seconds; `summary` prints them on exit.
//!
//! Only committed work is counted (the writer adds an epoch's counters after its
//! transaction commits), so the figures never include rolled-back work.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use conscope_dataflows::model::Counters;
use rdkafka::consumer::{BaseConsumer, Consumer};

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

#[derive(Default)]
struct Inner {
    committed: Counters,
    commits: u64,
    published_alerts: u64,
    published_dead_letters: u64,
    /// Outbox rows the broker refused for good, moved to `outbox_parked`.
    parked: u64,
    /// Recent publish lags (µs), for the periodic line.
    recent_lags: VecDeque<u64>,
    /// Every publish lag of this run (µs), for the summary.
    all_lags: Vec<u64>,
    /// Next offset committed per input partition.
    committed_offsets: BTreeMap<i32, i64>,
    /// Last known high watermark per input partition.
    high_watermarks: BTreeMap<i32, i64>,
}

pub struct Metrics {
    inner: Mutex<Inner>,
    started: Instant,
    alerts_topic: String,
}

fn percentile(sorted: &[u64], fraction: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted.get(index).copied()
}

/// Input messages not committed yet, over the partitions whose high watermark
/// this process has seen (its own, in a cluster of several processes).
fn lag(inner: &Inner) -> Option<i64> {
    if inner.high_watermarks.is_empty() {
        return None;
    }
    Some(
        inner
            .high_watermarks
            .iter()
            .map(|(partition, high)| {
                (high - inner.committed_offsets.get(partition).copied().unwrap_or(0)).max(0)
            })
            .sum(),
    )
}

fn millis(micros: Option<u64>) -> String {
    micros.map_or_else(
        || "-".to_owned(),
        |micros| format!("{:.1}ms", micros as f64 / 1000.0),
    )
}

impl Metrics {
    pub fn new(alerts_topic: &str) -> Arc<Metrics> {
        Arc::new(Metrics {
            inner: Mutex::new(Inner::default()),
            started: Instant::now(),
            alerts_topic: alerts_topic.to_owned(),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut inner)
    }

    pub fn committed(&self, counters: &Counters, rejected: u64, offsets: &BTreeMap<i32, i64>) {
        self.with(|inner| {
            inner.committed.add(counters);
            inner.committed.rejected += rejected;
            inner.committed_offsets.extend(offsets);
        });
    }

    pub fn commit_done(&self) {
        self.with(|inner| inner.commits += 1);
    }

    /// Records a partition's high watermark, as librdkafka's statistics report
    /// it from fetch responses: lag monitoring that costs the broker nothing.
    pub fn set_high_watermark(&self, partition: i32, high: i64) {
        self.with(|inner| {
            inner.high_watermarks.insert(partition, high);
        });
    }

    /// Asks the broker for the high watermarks now (blocking; for the exit
    /// summary, off the worker threads).
    pub fn measure_lag(&self, consumer: &BaseConsumer, topic: &str, partitions: i32) {
        for partition in 0..partitions {
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
        let c = &inner.committed;
        let elapsed = self.started.elapsed().as_secs_f64();
        let processed = c.processed + c.rejected;
        format!(
            "processed={processed} events_created={} prices_stored={} duplicates={} stale={} rejected={} \
             alerts[listing_drop={} event_low={} rule_match={}] commits={} lag={} published_alerts={} \
             published_dead_letters={} parked={} publish_lag_p50={} publish_lag_p99={} elapsed={elapsed:.1}s rate={:.0}/s",
            c.events_created,
            c.prices_stored,
            c.duplicates,
            c.stale,
            c.rejected,
            c.listing_drop,
            c.event_low,
            c.rule_match,
            inner.commits,
            lag(inner).map_or_else(|| "-".to_owned(), |lag| lag.to_string()),
            inner.published_alerts,
            inner.published_dead_letters,
            inner.parked,
            millis(percentile(lags, 0.5)),
            millis(percentile(lags, 0.99)),
            processed as f64 / elapsed.max(1e-9),
        )
    }

    /// The periodic line, with publish lag over recent alerts.
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
