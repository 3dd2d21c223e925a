//! `conscope produce`: the mock producer (SPEC §1, §6).
//!
//! Publishes realistic price observations to the input topic (or writes them as
//! JSON lines to a file): events with plausible names, venues and dates, listings
//! with sections, rows, seats and sources, prices that random-walk with
//! occasional drops and rises, listings that sell and get re-listed, plus a
//! configurable share of producer-retry duplicates, stale observations and
//! malformed messages of many kinds.
//!
//! The generator ([`generate`]) is pure: its output is a function of the
//! [`GeneratorConfig`] alone (seed, sizes, rates, `--start`), never of the wall
//! clock, so the same flags give byte-identical messages. Asking for fewer
//! messages gives a prefix of a longer run.
//!
//! Money is integer cents throughout; rates and probabilities are the only floats.
//!
//! # Layout
//! - this file: the flags, `run`, writing to a file or stdout, sending to Kafka
//!   (producer settings, pacing, delivery reports), the summary line. The only
//!   part that touches the outside: Kafka (creates the topic if missing), the
//!   output file or stdout, signals, the progress bar on a terminal.
//! - `generator`: the pure, deterministic message generator (config, message
//!   kinds, the clock and the price walk).
//! - `catalog`: the simulated world (events, venues, sections, sources).
//! - `render`: how an observation is written as JSON text.
//! - `malformed`: the ways a message arrives broken.
//! - `check` (tests only): a strict reading of SPEC §1 the generator is tested against.

mod catalog;
#[cfg(test)]
mod check;
mod generator;
mod malformed;
mod render;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

pub use self::generator::{generate, GeneratorConfig, MessageKind, Pick, Step};
use crate::config::KafkaArgs;
use crate::kafka::ensure_topic;
use crate::progress::Progress;
use crate::shutdown::Shutdown;

// ---------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to publish to; created with --partitions partitions if missing.
    #[arg(long, env = "CONSCOPE_INPUT_TOPIC", default_value = "raw_prices")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, env = "CONSCOPE_PRODUCE_PARTITIONS", default_value_t = 4,
          value_parser = clap::value_parser!(i32).range(1..=10_000))]
    pub partitions: i32,
    /// Number of messages to produce (0 = until interrupted).
    #[arg(long, env = "CONSCOPE_PRODUCE_COUNT", default_value_t = 10_000)]
    pub count: u64,
    /// Messages per second (0 = as fast as possible).
    #[arg(long, env = "CONSCOPE_PRODUCE_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Seed of the generator: the same flags give byte-identical messages.
    #[arg(long, env = "CONSCOPE_PRODUCE_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Number of events.
    #[arg(long, env = "CONSCOPE_PRODUCE_EVENTS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub events: u64,
    /// Listings per event.
    #[arg(long, env = "CONSCOPE_PRODUCE_LISTINGS_PER_EVENT", default_value_t = 40,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub listings_per_event: u64,
    /// Sections each event's listings are spread over, round robin (0 = as the
    /// venue's layout falls: a few listings in each of many sections). At most
    /// --listings-per-event.
    #[arg(long, env = "CONSCOPE_PRODUCE_SECTIONS_PER_EVENT", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub sections_per_event: u64,
    /// How observations pick their event: `popular` (a few hot events, a long
    /// quiet tail) or `uniform` (every listing about equally often: a re-scrape).
    #[arg(long, env = "CONSCOPE_PRODUCE_PICK", default_value = "popular", value_parser = parse_pick)]
    pub pick: Pick,
    /// Price walk of each fresh observation: `mixed` (mostly small moves, some
    /// 5-30 % drops and 5-25 % rises) or `LOW,HIGH` percent for a uniform step,
    /// e.g. `-8,5`. 3 % of steps sell the listing either way.
    #[arg(long, env = "CONSCOPE_PRODUCE_STEP_PCT", default_value = "mixed", value_parser = parse_step,
          allow_hyphen_values = true)]
    pub step_pct: Step,
    /// Fraction of messages that are byte-identical re-sends of an earlier one (producer retries).
    #[arg(long, env = "CONSCOPE_PRODUCE_DUPLICATE_RATE", default_value_t = 0.01, value_parser = parse_fraction)]
    pub duplicate_rate: f64,
    /// Fraction of messages that are malformed (invalid JSON, missing or bad fields, oversize, ...).
    #[arg(long, env = "CONSCOPE_PRODUCE_MALFORMED_RATE", default_value_t = 0.005, value_parser = parse_fraction)]
    pub malformed_rate: f64,
    /// Fraction of messages that are stale: older than the listing's latest observation.
    #[arg(long, env = "CONSCOPE_PRODUCE_STALE_RATE", default_value_t = 0.01, value_parser = parse_fraction)]
    pub stale_rate: f64,
    /// Base time of observation timestamps (RFC 3339); timestamps never come from the wall clock.
    #[arg(long, env = "CONSCOPE_PRODUCE_START", default_value = "2026-01-01T00:00:00Z", value_parser = parse_start)]
    pub start: DateTime<Utc>,
    /// Write the message values as JSON lines to FILE (`-` = stdout) instead of Kafka.
    #[arg(long, env = "CONSCOPE_PRODUCE_OUTPUT", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Produce without keys (default: key = event_id).
    #[arg(long, env = "CONSCOPE_PRODUCE_NO_KEY")]
    pub no_key: bool,
}

fn parse_fraction(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("must be between 0 and 1, got {value}"))
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {text:?}"))?;
    if value.is_finite() && value >= 0.0 {
        Ok(value)
    } else {
        Err(format!("must be a number >= 0, got {value}"))
    }
}

fn parse_pick(text: &str) -> Result<Pick, String> {
    match text.trim() {
        "popular" => Ok(Pick::Popular),
        "uniform" => Ok(Pick::Uniform),
        other => Err(format!("must be `popular` or `uniform`, got {other:?}")),
    }
}

/// `mixed`, or `LOW,HIGH` in percent with at most two decimals, kept as basis points.
fn parse_step(text: &str) -> Result<Step, String> {
    let text = text.trim();
    if text == "mixed" {
        return Ok(Step::Mixed);
    }
    let bad = || format!("must be `mixed` or LOW,HIGH in percent (e.g. -8,5), got {text:?}");
    let (low, high) = text.split_once(',').ok_or_else(bad)?;
    let basis_points = |part: &str| -> Result<i64, String> {
        let value: rust_decimal::Decimal = part.trim().parse().map_err(|_| bad())?;
        let value = value * rust_decimal::Decimal::from(100);
        if !value.fract().is_zero() {
            return Err(bad());
        }
        i64::try_from(value).map_err(|_| bad())
    };
    // Bounds are the generator's to check (GeneratorConfig::validate).
    let (low_bp, high_bp) = (basis_points(low)?, basis_points(high)?);
    Ok(Step::Uniform { low_bp, high_bp })
}

fn parse_start(text: &str) -> Result<DateTime<Utc>, String> {
    let start = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|error| format!("not an RFC 3339 time ({error}): {text:?}"))?
        .with_timezone(&Utc);
    // Observations must stay within years 2000-2100 (SPEC §1), leaving room for the walk.
    let low = Utc.with_ymd_and_hms(2000, 1, 2, 0, 0, 0).single();
    let high = Utc.with_ymd_and_hms(2090, 1, 1, 0, 0, 0).single();
    match (low, high) {
        (Some(low), Some(high)) if start >= low && start < high => Ok(start),
        _ => Err(format!("must be between 2000-01-02 and 2090-01-01, got {text:?}")),
    }
}

impl ProduceArgs {
    /// The generator configuration these flags describe.
    pub fn generator_config(&self) -> anyhow::Result<GeneratorConfig> {
        let config = GeneratorConfig {
            seed: self.seed,
            count: self.count,
            events: usize::try_from(self.events).context("--events too large")?,
            listings_per_event: usize::try_from(self.listings_per_event)
                .context("--listings-per-event too large")?,
            sections_per_event: usize::try_from(self.sections_per_event)
                .context("--sections-per-event too large")?,
            pick: self.pick,
            step: self.step_pct,
            duplicate_rate: self.duplicate_rate,
            malformed_rate: self.malformed_rate,
            stale_rate: self.stale_rate,
            start: self.start,
            keyed: !self.no_key,
        };
        config.validate()?;
        Ok(config)
    }
}

// ---------------------------------------------------------------------------
// Running: Kafka or a file
// ---------------------------------------------------------------------------

/// Counts of what was sent, for progress and the summary.
#[derive(Default)]
struct Tally {
    sent: u64,
    duplicates: u64,
    malformed: u64,
    stale: u64,
}

impl Tally {
    fn count(&mut self, kind: MessageKind) {
        self.sent += 1;
        match kind {
            MessageKind::Duplicate => self.duplicates += 1,
            MessageKind::Malformed => self.malformed += 1,
            MessageKind::Stale => self.stale += 1,
            MessageKind::Observation => {}
        }
    }

    fn summary(&self, target: &str, elapsed: Duration) -> String {
        let seconds = elapsed.as_secs_f64();
        let rate = if seconds > 0.0 {
            self.sent as f64 / seconds
        } else {
            0.0
        };
        format!(
            "produced {} messages to {target} ({} duplicates, {} malformed, {} stale) in {seconds:.2}s: {rate:.0} msgs/s",
            self.sent, self.duplicates, self.malformed, self.stale
        )
    }
}

/// Paces sending to `--rate` messages per second (token bucket with a small burst).
struct Pacer {
    rate: f64,
    since: Instant,
    sent: u64,
}

impl Pacer {
    fn new(rate: f64) -> Pacer {
        Pacer {
            rate,
            since: Instant::now(),
            sent: 0,
        }
    }

    /// How long to wait before sending the next message, if at all.
    fn delay(&mut self) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let due = self.since + Duration::from_secs_f64(self.sent as f64 / self.rate);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            return Some(due - now);
        }
        if now.duration_since(due) > Duration::from_secs(1) {
            // Fell behind (a slow broker): carry on at the rate, don't burst to catch up.
            self.since = now;
            self.sent = 0;
        }
        None
    }

    fn sent(&mut self) {
        self.sent += 1;
    }
}

/// How often the plain progress line is logged when no bar is drawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Messages between two updates of the bar (each update is cheap, not free).
const BAR_EVERY: u64 = 512;

/// On a terminal, a bar in place of the periodic progress lines.
fn progress_bar(args: &ProduceArgs) -> Option<Progress> {
    Progress::start("produce", "messages", (args.count > 0).then_some(args.count))
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let config = args.generator_config()?;
    // The first SIGINT/SIGTERM stops, flushes and summarizes.
    let stop = Shutdown::on_signals("flushing what was produced")?;
    match &args.output {
        Some(path) => produce_to_file(&args, &config, path, &stop),
        None => produce_to_kafka(&args, &config, &stop),
    }
}

fn produce_to_file(
    args: &ProduceArgs,
    config: &GeneratorConfig,
    path: &std::path::Path,
    stop: &Shutdown,
) -> anyhow::Result<()> {
    let to_stdout = path.as_os_str() == "-";
    let (mut out, target): (Box<dyn Write>, String) = if to_stdout {
        (
            Box::new(BufWriter::with_capacity(1 << 16, io::stdout().lock())),
            "stdout".to_owned(),
        )
    } else {
        let file = File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
        (
            Box::new(BufWriter::with_capacity(1 << 16, file)),
            path.display().to_string(),
        )
    };
    let started = Instant::now();
    let mut last_progress = started;
    let mut tally = Tally::default();
    let mut pacer = Pacer::new(args.rate);
    let mut broken_pipe = false;
    let bar = progress_bar(args);
    let result = (|| -> io::Result<()> {
        for message in generate(config) {
            if stop.is_triggered() {
                break;
            }
            if let Some(delay) = pacer.delay() {
                out.flush()?;
                sleep_unless_stopped(delay, stop);
                if stop.is_triggered() {
                    break;
                }
            }
            out.write_all(&message.value)?;
            out.write_all(b"\n")?;
            pacer.sent();
            tally.count(message.kind);
            if let Some(bar) = bar.as_ref().filter(|_| tally.sent % BAR_EVERY == 0) {
                bar.set(tally.sent);
            }
            if bar.is_none() && last_progress.elapsed() >= PROGRESS_EVERY {
                last_progress = Instant::now();
                tracing::info!(sent = tally.sent, target = %target, "producing");
            }
        }
        out.flush()
    })();
    match result {
        Err(error) if to_stdout && error.kind() == io::ErrorKind::BrokenPipe => broken_pipe = true,
        other => other.with_context(|| format!("cannot write to {target}"))?,
    }
    drop(bar);
    let summary = tally.summary(&target, started.elapsed());
    if to_stdout {
        if !broken_pipe {
            eprintln!("{summary}");
        }
    } else {
        println!("{summary}");
    }
    Ok(())
}

fn sleep_unless_stopped(delay: Duration, stop: &Shutdown) {
    let until = Instant::now() + delay;
    loop {
        let now = Instant::now();
        if now >= until || stop.is_triggered() {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Counts delivery reports (served by `poll` on the producing thread).
#[derive(Default)]
struct DeliveryCounter {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryCounter {}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((error, _)) => {
                let failed = self.failed.fetch_add(1, Ordering::Relaxed);
                if failed < 5 {
                    tracing::warn!("delivery failed: {error}");
                }
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| error.to_string());
                }
            }
        }
    }
}

/// Producer settings: ours first, then `--kafka` pass-through wins for any key it sets.
fn producer_config(kafka: &KafkaArgs) -> rdkafka::ClientConfig {
    kafka.client_config_with(&[
        // Retries can neither duplicate nor reorder messages within a partition:
        // the only duplicates in the topic are the ones we generate on purpose.
        ("enable.idempotence", "true"),
        // Required by idempotence, and a message counts as delivered only once
        // every in-sync replica has it.
        ("acks", "all"),
        // Wait up to 5 ms to fill batches: far better throughput, negligible latency.
        ("linger.ms", "5"),
        // Large batches (by count and bytes) for throughput at high rates.
        ("batch.num.messages", "10000"),
        ("batch.size", "1000000"),
        // No compression by default: on loopback it buys nothing and costs CPU the
        // producer shares with the broker and the job; on a real cluster's network
        // pass --kafka compression.type=lz4.
        ("compression.type", "none"),
        // The Java client's partitioner (murmur2 of the key; random when keyless),
        // so keyed messages land where kafka::partition_for_key says and where any
        // other Kafka client would put them.
        ("partitioner", "murmur2_random"),
        // A generous local queue so bursts don't stall on QueueFull.
        ("queue.buffering.max.messages", "200000"),
    ])
}

fn produce_to_kafka(args: &ProduceArgs, config: &GeneratorConfig, stop: &Shutdown) -> anyhow::Result<()> {
    let topic = args.topic.as_str();
    let partitions = ensure_topic(&args.kafka, topic, args.partitions)?;
    tracing::info!(topic, partitions, brokers = %args.kafka.brokers, "producing");
    let producer: BaseProducer<DeliveryCounter> = producer_config(&args.kafka)
        .create_with_context(DeliveryCounter::default())
        .context("cannot create Kafka producer")?;

    let started = Instant::now();
    let mut last_progress = started;
    let mut tally = Tally::default();
    let mut pacer = Pacer::new(args.rate);
    let mut send_error = None;
    let bar = progress_bar(args);
    'messages: for message in generate(config) {
        if stop.is_triggered() {
            break;
        }
        if let Some(delay) = pacer.delay() {
            // Serve the delivery reports that are in, then sleep. Not
            // `poll(delay)`: rdkafka hands librdkafka whole milliseconds and
            // loops on a non-blocking poll for the rest of a deadline, so a
            // paced producer spun on the clock (`clock_gettime` was 28 % of its
            // samples at --rate 20000, 23 CPU-s per 1M messages).
            producer.poll(Duration::ZERO);
            sleep_unless_stopped(delay, stop);
            if stop.is_triggered() {
                break 'messages;
            }
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&message.value);
        if let Some(key) = &message.key {
            record = record.key(key);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    // Never drop a message: let the queue drain, then retry.
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                    if let Some((code, reason)) = producer.client().fatal_error() {
                        send_error = Some(format!("fatal producer error {code:?}: {reason}"));
                        break 'messages;
                    }
                }
                Err((error, _)) => {
                    send_error = Some(format!("cannot send: {error}"));
                    break 'messages;
                }
            }
        }
        pacer.sent();
        tally.count(message.kind);
        if tally.sent % BAR_EVERY == 0 {
            // Serve delivery reports.
            producer.poll(Duration::ZERO);
            if let Some(bar) = &bar {
                bar.set(tally.sent);
            }
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let context = producer.context();
            let seconds = started.elapsed().as_secs_f64();
            if bar.is_none() {
                tracing::info!(
                    sent = tally.sent,
                    delivered = context.delivered.load(Ordering::Relaxed),
                    failed = context.failed.load(Ordering::Relaxed),
                    in_flight = producer.in_flight_count(),
                    rate = format!("{:.0}/s", tally.sent as f64 / seconds.max(1e-9)),
                    "producing"
                );
            }
            if context.failed.load(Ordering::Relaxed) > 0 {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    send_error = Some(format!("fatal producer error {code:?}: {reason}"));
                    break 'messages;
                }
            }
        }
    }

    drop(bar);
    let flushed = producer.flush(Duration::from_secs(120));
    let elapsed = started.elapsed();
    let context = producer.context();
    let delivered = context.delivered.load(Ordering::Relaxed);
    let failed = context.failed.load(Ordering::Relaxed);
    println!(
        "{}; {delivered} delivered, {failed} failed",
        tally.summary(topic, elapsed)
    );
    if let Some(error) = send_error {
        bail!("{error}");
    }
    if let Err(error) = flushed {
        bail!(
            "flush timed out: {} messages not confirmed by the broker ({error})",
            producer.in_flight_count()
        );
    }
    if failed > 0 {
        let first = context.first_error.lock().ok().and_then(|first| first.clone());
        bail!(
            "{failed} of {} messages were not delivered (first error: {})",
            tally.sent,
            first.unwrap_or_default()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults_and_reject_bad_values() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProduceArgs,
        }
        let cli = Cli::try_parse_from(["produce", "--topic", "t", "--no-key", "--output", "-"])
            .unwrap_or_else(|error| panic!("{error}"));
        let config = cli
            .args
            .generator_config()
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(!config.keyed);
        assert_eq!(config.seed, 42);
        assert_eq!(config.start, GeneratorConfig::default().start);
        assert!(Cli::try_parse_from(["produce", "--duplicate-rate", "1.5"]).is_err());
        assert!(Cli::try_parse_from(["produce", "--start", "yesterday"]).is_err());
        assert!(Cli::try_parse_from(["produce", "--start", "1999-01-01T00:00:00Z"]).is_err());
        assert!(Cli::try_parse_from(["produce", "--rate", "-1"]).is_err());
        assert!(Cli::try_parse_from(["produce", "--events", "0"]).is_err());
        let cli = Cli::try_parse_from(["produce", "--duplicate-rate", "0.6", "--malformed-rate", "0.6"])
            .unwrap_or_else(|error| panic!("{error}"));
        assert!(cli.args.generator_config().is_err());

        let cli = Cli::try_parse_from([
            "produce",
            "--sections-per-event",
            "4",
            "--pick",
            "uniform",
            "--step-pct",
            "-8,5.25",
        ])
        .unwrap_or_else(|error| panic!("{error}"));
        let config = cli
            .args
            .generator_config()
            .unwrap_or_else(|error| panic!("{error}"));
        assert_eq!(config.sections_per_event, 4);
        assert_eq!(config.pick, Pick::Uniform);
        assert_eq!(
            config.step,
            Step::Uniform {
                low_bp: -800,
                high_bp: 525
            }
        );
        for bad in [
            ["--step-pct", "-8"],
            ["--step-pct", "-8,5.001"],
            ["--pick", "hot"],
        ] {
            assert!(
                Cli::try_parse_from(["produce", bad[0], bad[1]]).is_err(),
                "{bad:?} accepted"
            );
        }
        for out_of_bounds in [
            ["--sections-per-event", "41"],
            ["--step-pct", "5,-8"],
            ["--step-pct", "-95,5"],
        ] {
            let cli = Cli::try_parse_from(["produce", out_of_bounds[0], out_of_bounds[1]])
                .unwrap_or_else(|error| panic!("{error}"));
            assert!(cli.args.generator_config().is_err(), "{out_of_bounds:?} accepted");
        }
    }

    #[test]
    fn passthrough_settings_override_ours() {
        let kafka = KafkaArgs {
            brokers: "b:9092".into(),
            kafka: vec!["compression.type=lz4"
                .parse()
                .unwrap_or_else(|error| panic!("{error}"))],
        };
        let config = producer_config(&kafka);
        assert_eq!(config.get("compression.type"), Some("lz4"));
        assert_eq!(config.get("enable.idempotence"), Some("true"));
        assert_eq!(config.get("bootstrap.servers"), Some("b:9092"));
    }
}
