//! One channel's queue and the worker thread that drains it: each alert is sent
//! with retries (capped exponential backoff, `Retry-After` honoured), or put in
//! the hour's digest once the channel's `max_per_hour` is spent; every final
//! outcome goes to the ledger writer. One thread per channel, so a slow or dead
//! channel only ever waits on itself.
//!
//! # Retries
//! Transient failures (timeouts, connection errors, 408, 429, 5xx) are retried
//! forever, [`backoff`] 100 ms doubling to 10 s, or longer when the channel
//! says `Retry-After` (honoured up to [`RETRY_AFTER_CAP`]). Definite ones (other
//! 4xx, a missing secret) are final at once: status `failed` with the reason.
//!
//! # Rate cap and digest
//! Hours are wall-clock hours (UTC; `--rate-window-secs` shortens them for
//! tests). A channel with `max_per_hour` gets that many single messages in an
//! hour; the rest of the hour's alerts wait in memory and go as ONE digest
//! message when the hour ends (status `digested`). Their offsets are not
//! committed before that: a restart re-reads them, and counts the hour's single
//! messages from `notify_deliveries`.
//!
//! Touches: the channel (through its `Sender`), the log.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender as Tx};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::alert::Alert;
use super::channels::{Outcome, Payload, Sender, Settings};
use super::ledger::Final;
use super::message::{compose, compose_digest};
use super::metrics::{add, ChannelCounts};
use super::store::{Channel, Delivery, Status};
use crate::alerts::webhook::{backoff, sleep_unless};
use crate::shutdown::Shutdown;

/// Longest `Retry-After` honoured: past it we ask again (and are told again).
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(600);

/// An alert for one channel, and where it was read.
pub struct Job {
    pub alert: Arc<Alert>,
    pub partition: i32,
    pub offset: i64,
}

/// The wall-clock window (an hour unless shortened) `now` falls in.
pub fn window_start(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let secs = window.as_secs().max(1) as i64;
    let start = now.timestamp().div_euclid(secs) * secs;
    DateTime::from_timestamp(start, 0).unwrap_or(now)
}

/// What a worker needs besides its queue.
pub struct WorkerSetup {
    /// The channel as last read from the database (the consumer loop updates it).
    pub channel: Arc<Mutex<Channel>>,
    pub settings: Settings,
    pub ledger: Tx<Final>,
    pub counts: Arc<ChannelCounts>,
    pub shutdown: Shutdown,
    pub window: Duration,
    /// Single messages already sent in the current window (from the ledger).
    pub sent_in_window: i64,
}

struct Worker {
    sender: Sender,
    setup: WorkerSetup,
    window_start: DateTime<Utc>,
    sent: i64,
    digest: Vec<Job>,
}

/// The worker's loop; returns on shutdown or when the queue's sender is gone.
pub fn run(queue: Receiver<Job>, setup: WorkerSetup) {
    let channel = lock(&setup.channel);
    let mut worker = Worker {
        sender: Sender::new(channel, setup.settings.clone()),
        window_start: window_start(Utc::now(), setup.window),
        sent: setup.sent_in_window,
        digest: Vec::new(),
        setup,
    };
    loop {
        if worker.setup.shutdown.is_triggered() {
            // Digested alerts not sent yet stay unrecorded: read again after a restart.
            return;
        }
        worker.roll_window();
        match queue.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => {
                worker.handle(job);
                worker.setup.counts.queued.fetch_sub(1, Ordering::Relaxed);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn lock(channel: &Mutex<Channel>) -> Channel {
    channel
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

impl Worker {
    /// At a new window: the last one's digest goes out, the count restarts.
    fn roll_window(&mut self) {
        let now = window_start(Utc::now(), self.setup.window);
        if now != self.window_start {
            self.send_digest();
            self.window_start = now;
            self.sent = 0;
        }
    }

    fn refresh_sender(&mut self) {
        let channel = lock(&self.setup.channel);
        if channel != self.sender.channel {
            self.sender = Sender::new(channel, self.setup.settings.clone());
        }
    }

    fn handle(&mut self, job: Job) {
        self.refresh_sender();
        let cap = self.sender.channel.max_per_hour.map(i64::from);
        if cap.is_some_and(|cap| self.sent >= cap) {
            self.digest.push(job);
            return;
        }
        let message = compose(&job.alert, self.setup.settings.dashboard_url.as_deref());
        let Some((outcome, attempts)) =
            self.deliver(&Payload::One(&job.alert), &message, &job.alert.alert_id)
        else {
            return;
        };
        let (status, error) = match outcome {
            Ok(()) => {
                self.sent += 1;
                (Status::Sent, None)
            }
            Err(reason) => {
                tracing::error!(
                    channel = %self.sender.channel.name,
                    alert_id = %job.alert.alert_id,
                    "channel refused the alert for good: {reason}"
                );
                (Status::Failed, Some(reason))
            }
        };
        self.record(&job, status, attempts, error);
    }

    fn record(&self, job: &Job, status: Status, attempts: i32, last_error: Option<String>) {
        let row = Delivery {
            alert_id: job.alert.alert_id.clone(),
            channel_id: self.sender.channel.channel_id,
            status,
            attempts,
            last_error,
            sent_at: Utc::now(),
        };
        // The ledger writer outlives the workers; a send error means it stopped
        // (shutdown), and the alert is simply not final.
        let _ = self.setup.ledger.send(Final {
            row,
            channel: self.sender.channel.name.clone(),
            partition: job.partition,
            offset: job.offset,
        });
    }

    fn send_digest(&mut self) {
        if self.digest.is_empty() {
            return;
        }
        self.refresh_sender();
        let jobs = std::mem::take(&mut self.digest);
        let alerts: Vec<&Alert> = jobs.iter().map(|job| job.alert.as_ref()).collect();
        let message = compose_digest(
            &alerts,
            self.window_start,
            self.setup.settings.dashboard_url.as_deref(),
        );
        let key = format!(
            "digest-{}-{}",
            self.sender.channel.channel_id,
            self.window_start.timestamp()
        );
        let Some((outcome, attempts)) = self.deliver(&Payload::Digest(&alerts), &message, &key) else {
            return;
        };
        let (status, error) = match outcome {
            Ok(()) => (Status::Digested, None),
            Err(reason) => {
                tracing::error!(channel = %self.sender.channel.name, alerts = jobs.len(), "channel refused the digest for good: {reason}");
                (Status::Failed, Some(format!("digest: {reason}")))
            }
        };
        for job in &jobs {
            self.record(job, status, attempts, error.clone());
        }
    }

    /// Sends until accepted (`Ok`) or definitely refused (`Err(reason)`), with
    /// the number of attempts; `None` on shutdown.
    fn deliver(
        &self,
        payload: &Payload<'_>,
        message: &super::message::Message,
        key: &str,
    ) -> Option<(Result<(), String>, i32)> {
        let mut attempts = 0i32;
        loop {
            attempts = attempts.saturating_add(1);
            let (reason, retry_after) = match self.sender.send(payload, message, key) {
                Outcome::Accepted(_) => return Some((Ok(()), attempts)),
                Outcome::Definite(reason) => return Some((Err(reason), attempts)),
                Outcome::Transient { reason, retry_after } => (reason, retry_after),
            };
            let delay = backoff(attempts.unsigned_abs() - 1)
                .max(retry_after.unwrap_or_default().min(RETRY_AFTER_CAP));
            add(&self.setup.counts.retries, 1);
            tracing::warn!(
                channel = %self.sender.channel.name,
                key,
                attempt = attempts,
                "delivery failed ({reason}); retrying in {delay:?}"
            );
            if sleep_unless(delay, &self.setup.shutdown) {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_wall_clock_aligned() {
        let t = DateTime::parse_from_rfc3339("2026-01-01T10:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let hour = Duration::from_secs(3600);
        assert_eq!(window_start(t, hour).to_rfc3339(), "2026-01-01T10:00:00+00:00");
        assert_eq!(
            window_start(t, Duration::from_secs(20)).to_rfc3339(),
            "2026-01-01T10:59:40+00:00"
        );
    }
}
