//! `conscope notify`: delivers alerts from the alerts topic to the channels
//! their routes name (SPEC §7), exactly once per (alert, channel).
//!
//! ```text
//!  price_alerts ──► consumer loop ──► routes ──► per-channel queue ──► worker ──► channel
//!  (own group)        │   ▲  skips what notify_deliveries holds   (retries, cap, digest)
//!                     │   │                                             │ final outcome
//!                     │   └── offsets committed past alerts ◄── ledger writer ──► notify_deliveries
//!                     │       whose deliveries are all final        (batched transactions)
//! ```
//!
//! # Delivery
//! - **Once per (alert, channel).** A `notify_deliveries` row is committed
//!   when the channel accepted the alert (or refused it for good, or it went in a
//!   digest), and the consumer's offsets are committed only past alerts whose
//!   rows are all committed (`offsets`). After a restart or `kill -9`, alerts
//!   are read again from the committed offsets and every (alert, channel) that
//!   has a row is skipped. The one window left, a crash between the channel's
//!   answer and the row's commit (one ledger batch, milliseconds), re-sends the
//!   alert with the same `Idempotency-Key` (the alert id, on every request):
//!   a channel that honours it sees it once.
//! - **One slow channel never holds up the others**: each channel has its own
//!   queue and worker thread (`queue`). Memory stays bounded: a queue holds at
//!   most `--queue-capacity` alerts, and at most `--max-in-flight` alerts are
//!   read and not final. When a channel's queue is full, or the in-flight cap is
//!   reached (a channel down for long, or an hour's digest piling up), the loop
//!   **stops reading** the topic until room is made; the other channels go on
//!   with what their queues hold, then wait too. Nothing is dropped and nothing
//!   is spilled: the topic is the buffer.
//! - **Duplicates on the topic** (an outbox re-publish) are skipped while the
//!   first copy is in flight, and by the ledger once it is final.
//! - **One notifier per consumer group.** A second one shares the partitions
//!   (Kafka's group rebalancing) and the ledger keeps each (alert, channel) to
//!   one row, but two notifiers racing on the same alert could both send it.
//!
//! # Layout
//! - this file: the flags, the consumer loop, worker and ledger threads, shutdown.
//! - `alert`: decoding an alert and filling in its event. `message`: what a person reads.
//! - `routes`: which channels an alert goes to. `channels/`: each kind's format and the send.
//! - `queue`: a channel's worker (retries, rate cap, digest). `ledger`: the
//!   `notify_deliveries` writer. `offsets`: which offsets may be committed.
//! - `store`: the tables' SQL (shared with the CLI and the dashboard). `pg`: the
//!   notifier's connections, waiting out a database restart. `metrics`: the figures.
//! - `cli`: `conscope channels` and `conscope routes`.

pub mod alert;
pub mod channels;
pub mod cli;
mod ledger;
pub mod message;
mod metrics;
mod offsets;
mod pg;
mod queue;
pub mod routes;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use self::channels::email::SmtpSettings;
use self::channels::Settings;
use self::metrics::{add, NotifyMetrics};
use self::offsets::Tracker;
use self::pg::Pg;
use self::queue::{window_start, Job, WorkerSetup};
use self::routes::Routing;
use self::store::Channel;
use crate::config::{DbArgs, KafkaArgs};
use crate::kafka;
use crate::shutdown::Shutdown;

/// How channels are reached: shared by `notify` and `channels test`.
#[derive(clap::Args, Debug, Clone)]
pub struct ReachArgs {
    /// The dashboard's address: messages link to its event pages.
    #[arg(long, env = "CONSCOPE_DASHBOARD_URL", value_name = "URL")]
    pub dashboard_url: Option<String>,
    /// Telegram's Bot API base URL.
    #[arg(
        long,
        env = "CONSCOPE_TELEGRAM_API",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api: String,
    /// SMTP server of the email channels (STARTTLS required).
    #[arg(long, env = "CONSCOPE_SMTP_HOST", default_value = "")]
    pub smtp_host: String,
    #[arg(long, env = "CONSCOPE_SMTP_PORT", default_value = "587")]
    pub smtp_port: u16,
    /// The sender address of the mails.
    #[arg(
        long,
        env = "CONSCOPE_SMTP_FROM",
        default_value = "conscope <conscope@localhost>"
    )]
    pub smtp_from: String,
    /// SMTP user name; the password is the email channel's secret (secret_env).
    #[arg(long, env = "CONSCOPE_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// A PEM root certificate to trust for the SMTP server (a private CA).
    #[arg(long, env = "CONSCOPE_SMTP_CA_FILE", value_name = "FILE")]
    pub smtp_ca_file: Option<std::path::PathBuf>,
    /// Timeout of one request (HTTP or SMTP), connection included.
    #[arg(
        long,
        env = "CONSCOPE_NOTIFY_TIMEOUT_MS",
        default_value = "10000",
        value_name = "MS"
    )]
    pub timeout_ms: u64,
}

impl ReachArgs {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let timeout = Duration::from_millis(self.timeout_ms.max(1));
        let ca_pem = match &self.smtp_ca_file {
            Some(path) => Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read --smtp-ca-file {}", path.display()))?,
            ),
            None => None,
        };
        if let Some(url) = &self.dashboard_url {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "--dashboard-url must be an http:// or https:// URL"
            );
        }
        Ok(Settings {
            dashboard_url: self.dashboard_url.clone(),
            telegram_api: self.telegram_api.clone(),
            smtp: SmtpSettings {
                host: self.smtp_host.clone(),
                port: self.smtp_port,
                from: self.smtp_from.clone(),
                username: self.smtp_username.clone(),
                ca_pem,
                timeout,
            },
            timeout,
        })
    }
}

#[derive(clap::Args)]
pub struct NotifyArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    reach: ReachArgs,
    /// Topic the job publishes alerts to.
    #[arg(long, env = "CONSCOPE_ALERTS_TOPIC", default_value = "price_alerts")]
    alerts_topic: String,
    /// Consumer group of the notifier (its committed offsets say where to resume).
    #[arg(long, env = "CONSCOPE_NOTIFY_GROUP", default_value = "conscope-notify")]
    group: String,
    /// For a group without committed offsets, start at the oldest alert instead
    /// of only new ones.
    #[arg(long, env = "CONSCOPE_NOTIFY_FROM_BEGINNING")]
    from_beginning: bool,
    /// Serve /metrics and /healthz here (HOST:PORT).
    #[arg(long, env = "CONSCOPE_NOTIFY_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// Alerts one channel's queue holds; reading stops while a queue is full.
    #[arg(long, env = "CONSCOPE_NOTIFY_QUEUE_CAPACITY", default_value = "10000")]
    queue_capacity: usize,
    /// Alerts read and not yet final (all channels); reading stops at this many.
    #[arg(long, env = "CONSCOPE_NOTIFY_MAX_IN_FLIGHT", default_value = "50000")]
    max_in_flight: usize,
    /// Length of a rate-cap window in seconds: an hour; shorter only for tests.
    #[arg(
        long,
        env = "CONSCOPE_NOTIFY_RATE_WINDOW_SECS",
        default_value = "3600",
        hide = true
    )]
    rate_window_secs: u64,
    /// Exit once no alert came for this long and every delivery is final.
    #[arg(long, env = "CONSCOPE_NOTIFY_IDLE_EXIT_MS", value_name = "MS")]
    idle_exit_ms: Option<u64>,
}

/// Messages read per round before they are routed together (one ledger
/// lookup, one events lookup).
const BATCH: usize = 500;
const POLL: Duration = Duration::from_millis(100);
const ROUTES_RELOAD: Duration = Duration::from_secs(2);
const LOG_EVERY: Duration = Duration::from_secs(10);

struct Worker {
    queue: SyncSender<Job>,
    channel: Arc<Mutex<Channel>>,
    thread: JoinHandle<()>,
}

/// The loop's state besides the consumer.
struct Notifier {
    args: NotifyArgs,
    settings: Settings,
    shutdown: Shutdown,
    metrics: Arc<NotifyMetrics>,
    pg: Pg,
    routing: Routing,
    routing_at: Instant,
    workers: HashMap<i64, Worker>,
    ledger: mpsc::Sender<ledger::Final>,
    done: mpsc::Receiver<Vec<(i32, i64)>>,
    tracker: Tracker,
    /// Alert ids in flight by position, to skip a second copy while the first
    /// is not final.
    in_flight: HashMap<(i32, i64), String>,
    in_flight_ids: HashSet<String>,
    /// Next offset to read per partition, for the final synchronous commit.
    committable: HashMap<i32, i64>,
}

pub fn run(args: NotifyArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = args.reach.settings()?;
    anyhow::ensure!(args.queue_capacity > 0, "--queue-capacity must be at least 1");
    anyhow::ensure!(args.max_in_flight > 0, "--max-in-flight must be at least 1");
    crate::runtime::current_thread()?
        .block_on(crate::db::migrate(&args.db.database_url))
        .context("cannot prepare the database")?;
    let metrics = Arc::new(NotifyMetrics::default());
    if let Some(addr) = &args.metrics_addr {
        crate::metrics_server::spawn(addr, Arc::clone(&metrics))?;
    }
    let config = crate::alerts::consumer_config(&args.kafka, &args.group, args.from_beginning);
    let consumer: BaseConsumer = config.create().context("cannot create the Kafka consumer")?;
    kafka::partition_count_once(&consumer, &args.alerts_topic).with_context(|| {
        format!(
            "cannot read metadata of topic {:?} (is the broker up?)",
            args.alerts_topic
        )
    })?;
    consumer
        .subscribe(&[&args.alerts_topic])
        .with_context(|| format!("cannot subscribe to {:?}", args.alerts_topic))?;

    let (ledger_tx, ledger_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let ledger_pg = Pg::new(&args.db.database_url, shutdown.clone())?;
    let ledger_metrics = Arc::clone(&metrics);
    let ledger_thread = std::thread::Builder::new()
        .name("notify-ledger".into())
        .spawn(move || ledger::run(ledger_pg, ledger_rx, done_tx, ledger_metrics))?;
    let mut pg = Pg::new(&args.db.database_url, shutdown.clone())?;
    let routing = pg.routing()?;
    tracing::info!(
        topic = %args.alerts_topic,
        group = %args.group,
        channels = routing.channels.len(),
        routes = routing.routes.len(),
        "notifying"
    );
    let mut notifier = Notifier {
        args,
        settings,
        shutdown,
        metrics,
        pg,
        routing,
        routing_at: Instant::now(),
        workers: HashMap::new(),
        ledger: ledger_tx,
        done: done_rx,
        tracker: Tracker::default(),
        in_flight: HashMap::new(),
        in_flight_ids: HashSet::new(),
        committable: HashMap::new(),
    };
    let result = notifier.consume(&consumer);

    // Stop: the workers finish (or abandon, on a signal) what they hold, the
    // ledger writes every row it was given, then the offsets past them go.
    let Notifier { workers, ledger, .. } = &mut notifier;
    let workers = std::mem::take(workers);
    for (_, worker) in workers {
        drop(worker.queue);
        let _ = worker.thread.join();
    }
    drop(std::mem::replace(ledger, mpsc::channel().0));
    let _ = ledger_thread.join();
    notifier.absorb_done();
    notifier.commit(&consumer, CommitMode::Sync);
    tracing::info!("notifier stopped: {}", notifier.metrics.line());
    result
}

impl Notifier {
    fn consume(&mut self, consumer: &BaseConsumer) -> anyhow::Result<()> {
        let idle_exit = self.args.idle_exit_ms.map(Duration::from_millis);
        let mut last_message = Instant::now();
        let mut last_log = Instant::now();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            if self.shutdown.is_triggered() {
                return Ok(());
            }
            self.absorb_done();
            self.commit(consumer, CommitMode::Async);
            if self.routing_at.elapsed() >= ROUTES_RELOAD {
                self.reload_routing()?;
            }
            if last_log.elapsed() >= LOG_EVERY {
                tracing::info!("{}", self.metrics.line());
                last_log = Instant::now();
            }
            if idle_exit.is_some_and(|idle| last_message.elapsed() >= idle) && self.tracker.in_flight() == 0 {
                tracing::info!(
                    "no alert for {:?} and every delivery final; exiting",
                    last_message.elapsed()
                );
                return Ok(());
            }
            if self.tracker.in_flight() >= self.args.max_in_flight {
                // Paused: see the module doc.
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            batch.clear();
            let mut timeout = POLL;
            while batch.len() < BATCH {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Err(error)) => {
                        tracing::warn!(%error, "Kafka consumer error");
                        break;
                    }
                    Some(Ok(message)) => {
                        batch.push((
                            message.partition(),
                            message.offset(),
                            message.payload().map(<[u8]>::to_vec),
                        ));
                        timeout = Duration::ZERO;
                    }
                }
            }
            if batch.is_empty() {
                continue;
            }
            last_message = Instant::now();
            self.dispatch(&batch)?;
        }
    }

    /// Routes a batch of messages and queues their deliveries.
    fn dispatch(&mut self, batch: &[(i32, i64, Option<Vec<u8>>)]) -> anyhow::Result<()> {
        add(&self.metrics.alerts_read, batch.len() as u64);
        let mut decoded = Vec::with_capacity(batch.len());
        for (partition, offset, payload) in batch {
            match payload.as_deref().map(alert::decode) {
                Some(Ok(alert)) => decoded.push((*partition, *offset, alert)),
                Some(Err(error)) => {
                    add(&self.metrics.malformed, 1);
                    tracing::warn!(partition, offset, %error, "skipping malformed alert message");
                    self.tracker.add(*partition, *offset, 0);
                }
                None => {
                    add(&self.metrics.malformed, 1);
                    tracing::warn!(partition, offset, "skipping alert message without a value");
                    self.tracker.add(*partition, *offset, 0);
                }
            }
        }
        let ids: Vec<&str> = decoded.iter().map(|(_, _, a)| a.alert_id.as_str()).collect();
        let delivered = self.pg.delivered(&ids)?;
        let mut plans = Vec::with_capacity(decoded.len());
        for (partition, offset, alert) in decoded {
            let mut channels: Vec<i64> = self.routing.channels_for(&alert).into_iter().collect();
            if channels.is_empty() {
                add(&self.metrics.unrouted, 1);
            }
            let before = channels.len();
            channels.retain(|id| !delivered.contains(&(alert.alert_id.clone(), *id)));
            add(&self.metrics.already_delivered, (before - channels.len()) as u64);
            if self.in_flight_ids.contains(&alert.alert_id) {
                tracing::debug!(alert_id = %alert.alert_id, "skipping a second copy of an alert in flight");
                channels.clear();
            }
            plans.push((partition, offset, alert, channels));
        }
        let lookups: Vec<&str> = plans
            .iter()
            .filter(|(_, _, alert, channels)| !channels.is_empty() && alert.needs_lookup())
            .map(|(_, _, alert, _)| alert.event_id.as_str())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let events = if lookups.is_empty() {
            HashMap::new()
        } else {
            self.pg.events(&lookups)?
        };
        for (partition, offset, mut alert, channels) in plans {
            self.tracker.add(partition, offset, channels.len());
            if channels.is_empty() {
                continue;
            }
            if let Some(info) = events.get(&alert.event_id) {
                alert.enrich(info);
            }
            self.in_flight.insert((partition, offset), alert.alert_id.clone());
            self.in_flight_ids.insert(alert.alert_id.clone());
            let alert = Arc::new(alert);
            for channel_id in channels {
                self.enqueue(
                    channel_id,
                    Job {
                        alert: Arc::clone(&alert),
                        partition,
                        offset,
                    },
                )?;
            }
        }
        self.metrics
            .in_flight
            .store(self.tracker.in_flight() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Puts a job in its channel's queue, waiting (reading nothing) while the
    /// queue is full.
    fn enqueue(&mut self, channel_id: i64, job: Job) -> anyhow::Result<()> {
        if !self.workers.contains_key(&channel_id) {
            self.spawn_worker(channel_id)?;
        }
        let Some(worker) = self.workers.get(&channel_id) else {
            return Ok(());
        };
        let counts = self.metrics.channel(&lock(&worker.channel).name);
        let queue = worker.queue.clone();
        let mut job = job;
        loop {
            match queue.try_send(job) {
                Ok(()) => {
                    add(&counts.queued, 1);
                    return Ok(());
                }
                Err(TrySendError::Full(back)) => {
                    job = back;
                    if self.shutdown.is_triggered() {
                        return Ok(());
                    }
                    // Offsets may still move while we wait.
                    self.absorb_done();
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Disconnected(_)) => {
                    anyhow::bail!("the worker of channel {channel_id} stopped");
                }
            }
        }
    }

    fn spawn_worker(&mut self, channel_id: i64) -> anyhow::Result<()> {
        let Some(channel) = self.routing.channels.get(&channel_id).cloned() else {
            return Ok(());
        };
        let window = Duration::from_secs(self.args.rate_window_secs.max(1));
        let sent = self.pg.sent_since(window_start(Utc::now(), window))?;
        let (queue, jobs) = mpsc::sync_channel(self.args.queue_capacity);
        let shared = Arc::new(Mutex::new(channel.clone()));
        let setup = WorkerSetup {
            channel: Arc::clone(&shared),
            settings: self.settings.clone(),
            ledger: self.ledger.clone(),
            counts: self.metrics.channel(&channel.name),
            shutdown: self.shutdown.clone(),
            window,
            sent_in_window: sent.get(&channel_id).copied().unwrap_or(0),
        };
        let thread = std::thread::Builder::new()
            .name(format!("notify-{channel_id}"))
            .spawn(move || queue::run(jobs, setup))?;
        tracing::info!(channel = %channel.name, kind = channel.kind.as_str(), "channel worker started");
        self.workers.insert(
            channel_id,
            Worker {
                queue,
                channel: shared,
                thread,
            },
        );
        Ok(())
    }

    fn reload_routing(&mut self) -> anyhow::Result<()> {
        self.routing = self.pg.routing()?;
        self.routing_at = Instant::now();
        for (id, worker) in &self.workers {
            if let Some(channel) = self.routing.channels.get(id) {
                let mut shared = worker
                    .channel
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                if *shared != *channel {
                    *shared = channel.clone();
                }
            }
        }
        Ok(())
    }

    /// Takes in the deliveries the ledger has committed.
    fn absorb_done(&mut self) {
        while let Ok(positions) = self.done.try_recv() {
            for (partition, offset) in positions {
                self.tracker.done(partition, offset);
            }
        }
        // Forget the ids of alerts now final.
        if self.in_flight.len() != self.tracker.in_flight() {
            let tracker = &self.tracker;
            let ids = &mut self.in_flight_ids;
            self.in_flight.retain(|(partition, offset), id| {
                let pending = tracker.is_pending(*partition, *offset);
                if !pending {
                    ids.remove(id);
                }
                pending
            });
        }
        self.metrics
            .in_flight
            .store(self.tracker.in_flight() as u64, Ordering::Relaxed);
    }

    /// Commits the offsets that moved, for partitions still assigned to us.
    fn commit(&mut self, consumer: &BaseConsumer, mode: CommitMode) {
        for (partition, next) in self.tracker.advanced() {
            self.committable.insert(partition, next);
        }
        if self.committable.is_empty() {
            return;
        }
        let assigned: HashSet<i32> = match consumer.assignment() {
            Ok(list) => list.elements().iter().map(|e| e.partition()).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the assignment; not committing now");
                return;
            }
        };
        let mut offsets = TopicPartitionList::new();
        for (partition, next) in self.committable.drain() {
            if assigned.contains(&partition) {
                if let Err(error) =
                    offsets.add_partition_offset(&self.args.alerts_topic, partition, Offset::Offset(next))
                {
                    tracing::warn!(%error, "cannot build an offset commit");
                }
            }
        }
        if offsets.count() == 0 {
            return;
        }
        match consumer.commit(&offsets, mode) {
            Ok(()) => add(&self.metrics.commits, 1),
            // The deliveries are recorded: a lost commit only means a re-read,
            // which the ledger turns into skips.
            Err(error) => tracing::warn!(%error, "offset commit failed"),
        }
    }
}

fn lock(channel: &Mutex<Channel>) -> std::sync::MutexGuard<'_, Channel> {
    channel.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `conscope notify`, stopping on SIGINT/SIGTERM.
pub fn main(args: NotifyArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals("finishing the requests in progress and recording them")?;
    run(args, shutdown)
}
