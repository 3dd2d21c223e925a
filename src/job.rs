//! `conscope run`: builds and drives the timely dataflow.
//!
//! ```text
//! KafkaSource/FileSource ─► ingest ─┬─► EventProcessor ◄── RestoreAndRules
//!                                   │        │      └─► section states ───► summaries
//!                                   │        │                                │
//!                                   └────────┴─► PostgresSink (worker 0) ◄────┘ ─► probe
//! ```
//!
//! Startup (each process): migrate, take the job lease (`lease`: a second
//! instance of the same process stops here, before restoring or publishing
//! anything), create the output topics and start the outbox publisher
//! (process 0), in a live job the thread that watches the input topic for
//! added partitions. Then each run of the dataflow reads the stored offsets,
//! the quarantine and the rules and opens each local worker's input (its Kafka
//! partitions, or the file), all before the workers start ([`prepare_workers`]:
//! a stored offset above its partition's end stops the job here). Each timely
//! worker then has timely's shape: build the dataflow, then drive it
//! ([`drive`]). Worker 0's sink starts the writer; worker 0 streams the
//! restored state (events and listings) and the rules into the dataflow; each
//! worker steps until the probe says everything is committed
//! (`--exit-at-end`), the shutdown handle is triggered, or the writer stops the
//! run, which stops every worker of every process ([`crate::cluster_stop`]). A
//! writer that quarantined messages PostgreSQL refuses asks for another run,
//! which replays from the last commit without them: in a cluster, every
//! process starts it, and timely connects them again. A source that failed
//! (an unreadable `--input-file`) fails the job once what it read before is
//! committed.
//! Each step hands the probe's frontier to the metrics, which is how every
//! process learns which of its offsets are durable ([`crate::lag`]); each
//! process prints its own summary on exit.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use conscope_dataflows::ingest::{ingest, Quarantine};
use conscope_dataflows::processor::{process, ProcessorConfig};
use conscope_dataflows::summaries::{summarise, summary_records};
use rdkafka::consumer::BaseConsumer;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::ProbeHandle;
use timely::{CommunicationConfig, WorkerConfig};

use crate::cluster_stop::{cluster_stop, StopFlag, StopReason};
use crate::config::{DbArgs, KafkaArgs, TopicArgs};
use crate::lease::Lease;
use crate::metrics::Metrics;
use crate::progress::Progress;
use crate::runtime::{fatal, STARTUP_PATIENCE};
use crate::shutdown::Shutdown;
use crate::sink::config::WriterConfig;
use crate::sink::encode::OutboxTarget;
use crate::sink::publisher::{run_publisher, PublisherConfig, PublisherControl};
use crate::sink::writer::WriterExit;
use crate::sink::{postgres_sink, WriterStarter, WriterThread};
use crate::source::file::{file_source, OpenFile};
use crate::source::kafka::{
    check_isolation, kafka_source, KafkaInput, OwnedPartitions, PartitionWatch, StartFrom, PARTITION_POLL,
};
use crate::source::restore::{restore_source, Checkpoint};
use crate::source::rules::{initial_rules, LiveRules, RuleFeed};
use crate::source::{SourceFailure, SourceSettings};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    topics: TopicArgs,
    /// Worker threads per process.
    #[arg(short = 'w', long, env = "CONSCOPE_WORKERS", default_value_t = 1)]
    workers: usize,
    /// Processes in the timely cluster.
    #[arg(long, env = "CONSCOPE_PROCESSES", default_value_t = 1)]
    processes: usize,
    /// This process's index in the cluster (0-based).
    #[arg(long, env = "CONSCOPE_PROCESS", default_value_t = 0)]
    process: usize,
    /// File with one `host:port` per line, one line per process.
    #[arg(long, env = "CONSCOPE_HOSTS")]
    hosts: Option<PathBuf>,
    /// Stop once everything below the high watermarks seen at start is committed
    /// and published, and print a summary.
    #[arg(long, env = "CONSCOPE_EXIT_AT_END")]
    exit_at_end: bool,
    /// Where to start while no offset is stored for the input topic yet (later,
    /// a partition without a stored offset starts at its beginning).
    #[arg(long, env = "CONSCOPE_FROM", value_enum, default_value = "earliest")]
    from: StartFrom,
    /// Read partitions whose stored offset is above their end (the topic was
    /// deleted and recreated, or its log truncated) from their log start. Without
    /// it the job refuses to start when it finds one.
    #[arg(long, env = "CONSCOPE_RESET_OFFSETS_ABOVE_END")]
    reset_offsets_above_end: bool,
    /// Read JSON lines from this file instead of the input topic.
    #[arg(long, env = "CONSCOPE_INPUT_FILE")]
    input_file: Option<PathBuf>,
    /// Smallest listing drop, in percent, that raises a listing_drop alert.
    #[arg(long, env = "CONSCOPE_MIN_DROP_PCT", default_value = "5")]
    min_drop_pct: String,
    /// Epoch length: how often offsets and rows are committed.
    #[arg(long, env = "CONSCOPE_EPOCH_MS", default_value_t = 100)]
    epoch_ms: u64,
    /// Messages a source reads per activation at most.
    #[arg(long, env = "CONSCOPE_MAX_BATCH", default_value_t = 5_000)]
    max_batch: usize,
    /// Messages per worker read but not yet committed at most (bounds memory).
    // 20 000: 1M messages of the 100k-listing world from Kafka at -w 2 peaked
    // at 300-341 MiB with 25 000 (librdkafka's queue at 16 MiB), at 317 MiB with
    // 25 000 and at 269-275 MiB with 15 000 or 20 000 (queue at 4 MiB,
    // source/kafka.rs), at about the same rate: the writer merges what is in
    // flight anyway. (50 000 peaked at 309 MB on the small world.)
    #[arg(long, env = "CONSCOPE_MAX_IN_FLIGHT", default_value_t = 20_000)]
    max_in_flight: usize,
    /// PostgreSQL connections the writer commits a large batch on (default: as
    /// many as --workers). More than one needs max_prepared_transactions at
    /// least one less in PostgreSQL; without it the writer uses one.
    #[arg(long, env = "CONSCOPE_WRITER_CONNECTIONS")]
    writer_connections: Option<usize>,
    /// History and listing rows a commit needs before the writer splits it
    /// over its connections.
    #[arg(long, env = "CONSCOPE_WRITER_SPLIT_ROWS", default_value_t = 4_096)]
    writer_split_rows: usize,
    /// Records merged into one transaction at most when the writer falls behind.
    #[arg(long, env = "CONSCOPE_MAX_COMMIT_RECORDS", default_value_t = 500_000)]
    max_commit_records: usize,
    /// Seconds between metrics log lines.
    #[arg(long, env = "CONSCOPE_METRICS_INTERVAL", default_value_t = 5)]
    metrics_interval: u64,
    /// Serve the metrics in Prometheus text format at http://HOST:PORT/metrics,
    /// and /healthz (e.g. 127.0.0.1:9464; each process of a cluster its own).
    #[arg(long, env = "CONSCOPE_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// How often a running job looks for rule changes.
    #[arg(long, env = "CONSCOPE_RULES_POLL_MS", default_value_t = 500)]
    rules_poll_ms: u64,
    /// Consumer group the job reports its progress to (monitoring only).
    #[arg(long, env = "CONSCOPE_GROUP_ID", default_value = "conscope")]
    group_id: String,
}

/// `5`, `2.5` or `12.25` percent as basis points, exactly.
fn basis_points(percent: &str) -> anyhow::Result<u32> {
    let text = percent.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let valid = !whole.is_empty()
        && whole.len() <= 3
        && fraction.len() <= 2
        && whole
            .bytes()
            .chain(fraction.bytes())
            .all(|byte| byte.is_ascii_digit());
    if !valid {
        bail!("--min-drop-pct: expected a percentage like 5 or 2.5, got {percent:?}");
    }
    let whole: u32 = whole.parse()?;
    let fraction: u32 = format!("{fraction:0<2}").parse()?;
    let points = whole * 100 + fraction;
    if points == 0 || points > 10_000 {
        bail!("--min-drop-pct: must be above 0 and at most 100, got {percent:?}");
    }
    Ok(points)
}

fn timely_config(args: &RunArgs) -> anyhow::Result<timely::Config> {
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let communication = if args.processes > 1 {
        let path = args
            .hosts
            .as_ref()
            .context("--processes > 1 needs --hosts FILE")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --hosts {}", path.display()))?;
        let addresses: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_owned)
            .collect();
        if addresses.len() < args.processes {
            bail!(
                "--hosts {} lists {} addresses for {} processes",
                path.display(),
                addresses.len(),
                args.processes
            );
        }
        if args.process >= args.processes {
            bail!(
                "--process {} is not below --processes {}",
                args.process,
                args.processes
            );
        }
        CommunicationConfig::Cluster {
            threads: args.workers,
            process: args.process,
            addresses: addresses.into_iter().take(args.processes).collect(),
            report: false,
            zerocopy: false,
        }
    } else if args.workers > 1 {
        CommunicationConfig::Process(args.workers)
    } else {
        CommunicationConfig::Thread
    };
    Ok(timely::Config {
        communication,
        worker: WorkerConfig::default(),
    })
}

/// How long a worker parks at most before it looks at the stop flags again.
const PARK: Duration = Duration::from_millis(100);

/// What every run of the dataflow shares (set up once per process).
struct Setup {
    args: RunArgs,
    min_drop_basis_points: u32,
    input_name: String,
    input_partitions: i32,
    watch: Option<PartitionWatch>,
    metrics: Arc<Metrics>,
    /// Process 0: the writer's settings and the publisher's control.
    leader: Option<(WriterConfig, Arc<PublisherControl>)>,
}

/// Runs the job until it has consumed its input (`--exit-at-end`), `shutdown`
/// is triggered, or it fails. Stopping on `shutdown` loses nothing: what was
/// not committed yet is read again at the next start.
pub fn run(mut args: RunArgs, shutdown: Shutdown) -> anyhow::Result<()> {
    let started = Instant::now();
    let min_drop_basis_points = basis_points(&args.min_drop_pct)?;
    let producer = crate::sink::delivery::producer_config(&args.kafka)?;
    timely_config(&args)?;
    let leader = args.process == 0;
    let runtime = crate::runtime::current_thread()?;
    runtime.block_on(crate::db::with_patience(STARTUP_PATIENCE, || {
        crate::sink::parts::migrate(&args.db.database_url)
    }))?;
    // Before anything is restored or published: one live instance per process.
    let lease = Lease::acquire(&args.db.database_url, args.process, |error| {
        fatal(anyhow::Error::from(error).context("this instance lost the job to another one"))
    })?;
    let client = runtime.block_on(crate::db::connect(&args.db.database_url))?;
    let input_name = match &args.input_file {
        Some(path) => {
            // Offsets are keyed by the canonical path: any name of the file resumes them.
            let (canonical, name) = crate::source::file::input_name(path)?;
            args.input_file = Some(canonical);
            name
        }
        None => args.topics.input_topic.clone(),
    };
    let job_id: String = runtime
        .block_on(client.query_one("SELECT job_id::text FROM job_progress WHERE id = 1", &[]))
        .context("cannot read job_progress")?
        .get(0);
    if leader {
        runtime.block_on(crate::sink::parts::resolve_at_start(&client, &job_id))?;
    }
    drop(client);

    let input_partitions = match &args.input_file {
        Some(_) => 1,
        None => {
            check_isolation(&args.kafka)?;
            let consumer: BaseConsumer = args
                .kafka
                .client_config()
                .create()
                .context("cannot create Kafka client")?;
            crate::kafka::partition_count(&consumer, &args.topics.input_topic)?
                .with_context(|| format!("input topic {:?} does not exist", args.topics.input_topic))?
        }
    };
    // A bounded replay reads the partitions that exist now; a live job also
    // takes up partitions added while it runs.
    let watch = match (&args.input_file, args.exit_at_end) {
        (None, false) => Some(PartitionWatch::spawn(
            &args.kafka,
            &args.topics.input_topic,
            input_partitions,
            PARTITION_POLL,
        )?),
        _ => None,
    };
    let metrics = Metrics::new(&args.topics.alerts_topic, args.process);
    metrics.spawn_reporter(Duration::from_secs(args.metrics_interval.max(1)));
    if let Some(addr) = &args.metrics_addr {
        crate::metrics_server::spawn(addr, Arc::clone(&metrics))?;
    }

    // On a terminal, a bounded replay shows how far it has come.
    let progress = match args.exit_at_end && args.input_file.is_none() {
        true => Progress::start("replay", "messages", Some(0)).and_then(|bar| {
            let metrics = Arc::clone(&metrics);
            bar.follow(Duration::from_millis(200), move || metrics.progress())
                .ok()
        }),
        false => None,
    };

    let mut publisher = None;
    let mut leader_parts = None;
    if leader {
        let alerts_partitions =
            crate::kafka::ensure_topic(&args.kafka, &args.topics.alerts_topic, input_partitions)?;
        let dlq_partitions =
            crate::kafka::ensure_topic(&args.kafka, &args.topics.dlq_topic, input_partitions)?;
        let control = Arc::new(PublisherControl::default());
        let config = PublisherConfig {
            producer,
            kafka: args.kafka.clone(),
            database_url: args.db.database_url.clone(),
            job_id: job_id.clone(),
            lease: lease.clone(),
        };
        let (publisher_control, publisher_metrics) = (Arc::clone(&control), Arc::clone(&metrics));
        publisher = Some(
            std::thread::Builder::new()
                .name("publisher".into())
                .spawn(move || run_publisher(config, publisher_control, publisher_metrics))?,
        );
        let writer_config = WriterConfig {
            database_url: args.db.database_url.clone(),
            input_name: input_name.clone(),
            alerts: OutboxTarget {
                topic: args.topics.alerts_topic.clone(),
                partitions: alerts_partitions,
            },
            dlq: OutboxTarget {
                topic: args.topics.dlq_topic.clone(),
                partitions: dlq_partitions,
            },
            max_records_per_commit: args.max_commit_records,
            job_id: job_id.clone(),
            connections: args.writer_connections.unwrap_or(args.workers).max(1),
            split_min_rows: args.writer_split_rows,
            monitor: match &args.input_file {
                Some(_) => None,
                None => Some((args.kafka.clone(), args.group_id.clone())),
            },
            lease: lease.clone(),
            shutdown: shutdown.clone(),
        };
        leader_parts = Some((writer_config, control));
    }
    let setup = Setup {
        args,
        min_drop_basis_points,
        input_name,
        input_partitions,
        watch,
        metrics: Arc::clone(&metrics),
        leader: leader_parts,
    };

    let outcome = loop {
        match run_dataflow(&setup, &shutdown) {
            // Every process of a cluster gets here together (`cluster_stop`)
            // and builds the next run; timely connects them again.
            Ok(WriterExit::Restart) if !shutdown.is_triggered() => {
                tracing::info!("replaying from the last commit without the quarantined messages");
            }
            other => break other,
        }
    };
    let args = &setup.args;

    if let (Some(publisher), Some((_, control))) = (publisher, &setup.leader) {
        // A writer that gave up waiting for PostgreSQL leaves the outbox to
        // the next start: draining it would wait for the same database.
        if matches!(outcome, Ok(WriterExit::Finished | WriterExit::Restart)) {
            control.finishing.store(true, Ordering::SeqCst);
            control.wake.notify_one();
            match publisher.join() {
                Ok(result) => result?,
                Err(_) => bail!("the alert publisher panicked"),
            }
        }
    }
    drop(progress);
    outcome?;
    if args.input_file.is_none() {
        if let Ok(consumer) = args.kafka.client_config().create::<BaseConsumer>() {
            metrics.measure_lag(&consumer, &args.topics.input_topic);
        }
    }
    println!(
        "summary: {} total_elapsed={:.1}s",
        metrics.summary(),
        started.elapsed().as_secs_f64()
    );
    drop(lease);
    Ok(())
}

/// What one worker reads: its Kafka partitions or the input file (`None`:
/// nothing, its source ends at once).
enum WorkerInput {
    Kafka(Option<OwnedPartitions>),
    File(Option<OpenFile>),
}

/// Everything a worker's dataflow needs from outside, prepared before the
/// workers start: the reads of PostgreSQL and the consumers' construction
/// block, so a worker only builds its dataflow and drives it.
struct WorkerParts {
    input: WorkerInput,
    /// Worker 0: the state to restore and the rules.
    checkpoint: Option<Checkpoint>,
    /// Worker 0 of process 0: starts the writer.
    writer: Option<WriterStarter>,
}

/// The parts of this process's workers, taken once each by worker index.
struct PreparedWorkers {
    first: usize,
    parts: Mutex<Vec<Option<WorkerParts>>>,
}

impl PreparedWorkers {
    fn take(&self, index: usize) -> Option<WorkerParts> {
        let mut parts = self.parts.lock().ok()?;
        parts.get_mut(index.checked_sub(self.first)?)?.take()
    }
}

/// Reads what the run starts from (stored offsets, quarantine, rules) and
/// opens each local worker's input.
fn prepare_workers(
    setup: &Setup,
    mut writer: Option<WriterStarter>,
) -> anyhow::Result<(PreparedWorkers, Quarantine)> {
    let args = &setup.args;
    let runtime = crate::runtime::current_thread()?;
    let (stored, quarantine, rules) =
        runtime.block_on(crate::db::with_patience(STARTUP_PATIENCE, || async {
            let client = crate::db::connect(&args.db.database_url).await?;
            let stored = crate::db::stored_offsets(&client, &setup.input_name).await?;
            let quarantine = crate::sink::quarantine::load(&client, &setup.input_name).await?;
            // Worker 0 (of process 0) feeds the rules.
            let rules = match args.process {
                0 => Some(
                    initial_rules(&client)
                        .await
                        .context("cannot read the alert rules")?,
                ),
                _ => None,
            };
            anyhow::Ok((stored, quarantine, rules))
        }))?;
    let mut checkpoint = rules.map(|(initial, known)| Checkpoint {
        database_url: args.db.database_url.clone(),
        rules: RuleFeed {
            initial,
            live: (!args.exit_at_end).then(|| LiveRules {
                database_url: args.db.database_url.clone(),
                known,
                interval: Duration::from_millis(args.rules_poll_ms.max(50)),
            }),
        },
    });
    let kafka = KafkaInput {
        kafka: args.kafka.clone(),
        group_id: args.group_id.clone(),
        topic: args.topics.input_topic.clone(),
        partitions: setup.input_partitions,
        stored: stored.clone(),
        from: args.from,
        reset_above_end: args.reset_offsets_above_end,
        exit_at_end: args.exit_at_end,
        metrics: Arc::clone(&setup.metrics),
        stats_interval_secs: args.metrics_interval,
        watch: setup.watch.clone(),
    };
    let peers = args.processes * args.workers;
    let first = args.process * args.workers;
    let mut parts = Vec::with_capacity(args.workers);
    for index in first..first + args.workers {
        let input = match &args.input_file {
            Some(path) if index == 0 => {
                WorkerInput::File(Some(OpenFile::open(path, stored.get(&0).copied().unwrap_or(0))?))
            }
            Some(_) => WorkerInput::File(None),
            None => WorkerInput::Kafka(kafka.open(index, peers)?),
        };
        parts.push(Some(WorkerParts {
            input,
            checkpoint: if index == 0 { checkpoint.take() } else { None },
            writer: if index == 0 { writer.take() } else { None },
        }));
    }
    Ok((
        PreparedWorkers {
            first,
            parts: Mutex::new(parts),
        },
        Arc::new(quarantine),
    ))
}

/// One run of the dataflow from the last commit: restore, read, commit, until
/// the input is consumed (`--exit-at-end`), `shutdown`, or the writer ends it.
fn run_dataflow(setup: &Setup, shutdown: &Shutdown) -> anyhow::Result<WriterExit> {
    let args = &setup.args;
    let config = timely_config(args)?;
    // Set by the writer when it ends for another reason than its input
    // closing; `stopped` once every worker must leave the run (`cluster_stop`).
    let writer_stop = Arc::new(StopFlag::default());
    let stopped = Arc::new(StopFlag::default());
    let (starter, writer) = match &setup.leader {
        Some((config, control)) => {
            let (starter, thread) = WriterThread::prepare(
                config.clone(),
                Arc::clone(&setup.metrics),
                Arc::clone(control),
                Arc::clone(&writer_stop),
            );
            (Some(starter), Some(thread))
        }
        None => (None, None),
    };
    let (prepared, quarantine) = prepare_workers(setup, starter)?;

    let settings = SourceSettings {
        epoch_ms: args.epoch_ms.max(1),
        max_batch: args.max_batch.max(1),
        max_in_flight: args.max_in_flight.max(1),
        idle_poll_ms: (args.epoch_ms / 4).clamp(1, 20),
    };
    let processor_config = ProcessorConfig {
        min_drop_basis_points: setup.min_drop_basis_points,
    };
    let failure = SourceFailure::default();
    let (worker_failure, worker_stopped, worker_shutdown) =
        (failure.clone(), Arc::clone(&stopped), shutdown.clone());
    let metrics = Arc::clone(&setup.metrics);
    let guards = timely::execute(config, move |worker| {
        let Some(parts) = prepared.take(worker.index()) else {
            fatal(anyhow::anyhow!(
                "worker {} has no inputs prepared",
                worker.index()
            ));
        };
        let committed = ProbeHandle::new();
        let writer_flag = parts.writer.as_ref().map(|_| Arc::clone(&writer_stop));
        worker.dataflow::<u64, _, _>(|scope| {
            cluster_stop(scope, writer_flag, committed.clone(), Arc::clone(&worker_stopped));
            let events = match parts.input {
                WorkerInput::Kafka(owned) => kafka_source(scope, owned, settings, committed.clone()),
                WorkerInput::File(file) => {
                    file_source(scope, file, settings, committed.clone(), worker_failure.clone())
                }
            };
            let (observations, source_records) = ingest(events, Arc::clone(&quarantine));
            let state = restore_source(scope, parts.checkpoint, settings.epoch_ms);
            let processed = process(observations.concat(state), processor_config.clone());
            let summaries = summary_records(summarise(processed.sections));
            let records = processed.records.concat(source_records).concat(summaries);
            postgres_sink(records, parts.writer).probe_with(&committed);
        });
        let stop = || worker_stopped.get().is_some() || worker_shutdown.is_triggered();
        drive(worker, &committed, stop, &metrics);
    })
    .map_err(|error| anyhow::anyhow!("cannot start timely workers: {error}"))?;
    for result in guards.join() {
        result.map_err(|error| anyhow::anyhow!("a worker failed: {error}"))?;
    }
    let exit = match (writer, stopped.get()) {
        (Some(writer), _) => writer.join()?,
        (None, Some(StopReason::Replay)) => WriterExit::Restart,
        (None, Some(StopReason::Failed)) => {
            bail!("the writer of process 0 failed (its log says why); this process stops with it")
        }
        (None, None) => WriterExit::Finished,
    };
    // After the writer: what was read before the failure is committed.
    match failure.take() {
        Some(error) => Err(error),
        None => Ok(exit),
    }
}

/// Steps the worker until the sink's probe says everything is committed, or
/// `stop` says so. Each step hands the probe's frontier to the metrics: what
/// makes this process's offsets durable (see `crate::lag`).
fn drive(
    worker: &mut timely::worker::Worker,
    committed: &ProbeHandle<u64>,
    stop: impl Fn() -> bool,
    metrics: &Metrics,
) {
    let mut durable_below = None;
    while !committed.done() {
        if stop() {
            // Stopping mid-epoch is safe: what is not committed is read
            // again. Dropped, or timely would step it to completion.
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
            // What is still pending may never commit (a replay after a
            // quarantine reads it again, at new epochs): forget it.
            metrics.forget_reported();
            return;
        }
        worker.step_or_park(Some(PARK));
        let frontier = committed.with_frontier(|frontier| frontier.first().copied());
        if frontier != durable_below {
            metrics.durable_below(frontier);
            durable_below = frontier;
        }
    }
    // Everything reported is committed once the probe ran empty.
    metrics.durable_below(None);
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// The job runs in-process and stops when its shutdown handle is
    /// triggered (as mini-redis's server stops on its shutdown future), with
    /// what it read committed, and releases its lease. Needs the dev stack (PostgreSQL and a broker,
    /// for the output topics).
    #[test]
    fn a_live_job_stops_on_its_shutdown_handle() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("inprocess_{}_{}", std::process::id(), nanos % 1_000_000_000);
        let base =
            std::env::var("CONSCOPE_TEST_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
        let url = format!("{base}/{name}");
        let mut file = tempfile::NamedTempFile::new().unwrap();
        for minute in 0..5 {
            std::io::Write::write_all(
                &mut file,
                format!(
                    "{{\"event_id\":\"e\",\"section\":\"A\",\"price\":\"{}\",\"timestamp\":\"2026-01-01T00:0{minute}:00Z\"}}\n",
                    100 - minute
                )
                .as_bytes(),
            )
            .unwrap();
        }
        let path = file.path().to_string_lossy().into_owned();
        let brokers = std::env::var("CONSCOPE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let args = Cli::try_parse_from([
            "run",
            "--brokers",
            &brokers,
            "--database-url",
            &url,
            "--input-file",
            &path,
            "--alerts-topic",
            &format!("{name}.alerts"),
            "--dlq-topic",
            &format!("{name}.dlq"),
        ])
        .unwrap()
        .run;

        let shutdown = Shutdown::new();
        let job = {
            let shutdown = shutdown.clone();
            std::thread::spawn(move || run(args, shutdown))
        };
        let runtime = crate::runtime::current_thread().unwrap();
        let stored = || {
            runtime.block_on(async {
                let client = crate::db::connect(&url).await.ok()?;
                let row = client
                    .query_one("SELECT count(*) FROM price_history", &[])
                    .await
                    .ok()?;
                Some(row.get::<_, i64>(0))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while stored() != Some(5) {
            assert!(Instant::now() < deadline, "the job never committed the file");
            assert!(!job.is_finished(), "a live job ended by itself");
            std::thread::sleep(Duration::from_millis(100));
        }
        shutdown.trigger();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !job.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the job did not stop on its shutdown handle"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        job.join().unwrap().unwrap();
        // Ended, it gives up the job: another instance may take it.
        assert!(Lease::acquire(&url, 0, |_| {}).is_ok());
    }

    #[test]
    fn drop_percentages_convert_exactly() {
        assert_eq!(basis_points("5").unwrap(), 500);
        assert_eq!(basis_points("2.5").unwrap(), 250);
        assert_eq!(basis_points("12.25").unwrap(), 1225);
        assert_eq!(basis_points("100").unwrap(), 10_000);
        for bad in ["0", "", "-5", "5.555", "abc", "101", "1e2"] {
            assert!(basis_points(bad).is_err(), "{bad:?}");
        }
    }
}
