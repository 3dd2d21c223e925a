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

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, FixedOffset, NaiveTime, SecondsFormat, TimeZone, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::config::KafkaArgs;
use crate::kafka::ensure_topic;

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
// Generator
// ---------------------------------------------------------------------------

/// Everything the generated messages depend on.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Messages to generate; 0 = an endless iterator.
    pub count: u64,
    pub events: usize,
    pub listings_per_event: usize,
    pub duplicate_rate: f64,
    pub malformed_rate: f64,
    pub stale_rate: f64,
    /// Base of every observation timestamp.
    pub start: DateTime<Utc>,
    /// Key each message by its event_id (as the SPEC asks producers to).
    pub keyed: bool,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            seed: 42,
            count: 10_000,
            events: 50,
            listings_per_event: 40,
            duplicate_rate: 0.01,
            malformed_rate: 0.005,
            stale_rate: 0.01,
            start: DateTime::from_timestamp(1_767_225_600, 0).unwrap_or_default(), // 2026-01-01T00:00:00Z
            keyed: true,
        }
    }
}

impl GeneratorConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.events == 0 || self.listings_per_event == 0 {
            bail!("--events and --listings-per-event must be at least 1");
        }
        if self.events.saturating_mul(self.listings_per_event) > 20_000_000 {
            bail!("--events x --listings-per-event must be at most 20000000 listings");
        }
        for (name, rate) in [
            ("--duplicate-rate", self.duplicate_rate),
            ("--malformed-rate", self.malformed_rate),
            ("--stale-rate", self.stale_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                bail!("{name} must be between 0 and 1, got {rate}");
            }
        }
        if self.duplicate_rate + self.malformed_rate + self.stale_rate > 1.0 {
            bail!("--duplicate-rate + --malformed-rate + --stale-rate must be at most 1");
        }
        Ok(())
    }
}

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducedMessage {
    /// The event_id as UTF-8 bytes, or `None` with `--no-key`.
    pub key: Option<Vec<u8>>,
    /// The message value (UTF-8, no newline: safe for JSON lines).
    pub value: Vec<u8>,
    /// What the generator meant it to be (for counting and tests; not sent).
    pub kind: MessageKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// A fresh, valid observation (the listing's newest).
    Observation,
    /// A valid observation older than the listing's newest one.
    Stale,
    /// A byte-identical re-send of an earlier valid message (a producer retry).
    Duplicate,
    /// A message the job must reject.
    Malformed,
}

/// The deterministic message generator: an iterator of [`ProducedMessage`].
pub struct Generator {
    config: GeneratorConfig,
    rng: StdRng,
    events: Vec<Event>,
    /// Simulated time of the latest message, epoch milliseconds; strictly increasing.
    clock_ms: i64,
    emitted: u64,
    /// Recent valid messages, the candidates for a retry duplicate.
    recent: VecDeque<ProducedMessage>,
}

/// The generator for `config`: deterministic, and independent of the wall clock.
/// Out-of-range settings are clamped (use [`GeneratorConfig::validate`] to reject them).
pub fn generate(config: &GeneratorConfig) -> Generator {
    Generator::new(config)
}

const MAX_CENTS: i64 = 100_000_000; // 1 000 000.00
const MIN_CENTS: i64 = 100; // 1.00: keeps the walk away from zero
const RECENT: usize = 128;

struct Event {
    id: String,
    name: String,
    venue: String,
    /// RFC 3339 with the venue's local offset.
    date: String,
    currency: &'static str,
    listings: Vec<Listing>,
}

struct Listing {
    section: String,
    row: String,
    seat: String,
    source: &'static str,
    cents: i64,
    available: bool,
    /// Some sellers price in whole dollars.
    whole_dollars: bool,
    /// Timestamp of the newest observation sent, if any.
    last_ts: Option<i64>,
    /// Exclusive lower bound for the next stale timestamp: stale observations fall
    /// strictly between two fresh ones and after earlier stale ones, so each is a new identity.
    stale_floor: i64,
}

impl Generator {
    pub fn new(config: &GeneratorConfig) -> Generator {
        let mut config = config.clone();
        config.events = config.events.clamp(1, 1_000_000);
        config.listings_per_event = config.listings_per_event.clamp(1, 10_000);
        for rate in [
            &mut config.duplicate_rate,
            &mut config.malformed_rate,
            &mut config.stale_rate,
        ] {
            *rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let start_ms = config.start.timestamp_millis();
        let mut ids = HashSet::new();
        let events = (0..config.events)
            .map(|_| make_event(&mut rng, &config, &mut ids))
            .collect();
        Generator {
            clock_ms: start_ms,
            config,
            rng,
            events,
            emitted: 0,
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    /// Picks an event (popular ones more often) and one of its listings.
    fn pick_listing(&mut self) -> (usize, usize) {
        let u: f64 = self.rng.gen();
        let events = self.events.len();
        let event = ((u * u * events as f64) as usize).min(events - 1);
        let listing = self.rng.gen_range(0..self.events[event].listings.len());
        (event, listing)
    }

    fn key(&self, event: usize) -> Option<Vec<u8>> {
        self.config
            .keyed
            .then(|| self.events[event].id.clone().into_bytes())
    }

    /// The listing's next fresh observation: one step of its price walk.
    fn observation(&mut self) -> ProducedMessage {
        let (e, l) = self.pick_listing();
        let ts = self.clock_ms;
        let key = self.key(e);
        let rng = &mut self.rng;
        let listing = &mut self.events[e].listings[l];
        if listing.last_ts.is_some() {
            step_price(rng, listing);
        }
        listing.stale_floor = listing.last_ts.unwrap_or(ts - 60_000);
        listing.last_ts = Some(ts);
        let (cents, available) = (listing.cents, listing.available);
        let fields = observation_fields(rng, &self.events[e], l, ts, cents, available);
        ProducedMessage {
            key,
            value: render(rng, &fields),
            kind: MessageKind::Observation,
        }
    }

    /// An observation older than the listing's newest, if a listing with room for one turns up.
    fn stale(&mut self) -> Option<ProducedMessage> {
        for _ in 0..8 {
            let (e, l) = self.pick_listing();
            let listing = &self.events[e].listings[l];
            let Some(last) = listing.last_ts else {
                continue;
            };
            if last - listing.stale_floor < 2 {
                continue;
            }
            let ts = self.rng.gen_range(listing.stale_floor + 1..last);
            let move_bp = self.rng.gen_range(-500..=500);
            let cents = round_price(listing, listing.cents * (10_000 + move_bp) / 10_000);
            self.events[e].listings[l].stale_floor = ts;
            let fields = observation_fields(&mut self.rng, &self.events[e], l, ts, cents, true);
            return Some(ProducedMessage {
                key: self.key(e),
                value: render(&mut self.rng, &fields),
                kind: MessageKind::Stale,
            });
        }
        None
    }

    /// A byte-identical copy of a recent valid message, as a producer retry sends it.
    fn duplicate(&mut self) -> Option<ProducedMessage> {
        let len = self.recent.len();
        if len == 0 {
            return None;
        }
        let back = self.rng.gen_range(0..len.min(32));
        let mut message = self.recent[len - 1 - back].clone();
        message.kind = MessageKind::Duplicate;
        Some(message)
    }

    fn malformed(&mut self) -> ProducedMessage {
        let (e, l) = self.pick_listing();
        let listing = &self.events[e].listings[l];
        let (cents, ts) = (listing.cents, self.clock_ms);
        let mut fields = observation_fields(&mut self.rng, &self.events[e], l, ts, cents, true);
        let mut key = self.key(e);
        let rng = &mut self.rng;
        let value = match rng.gen_range(0..24u32) {
            0 => {
                // Truncated in transit: an object without its closing brace.
                let text = render(rng, &fields);
                let mut cut = text.len() / 2;
                while std::str::from_utf8(&text[..cut]).is_err() {
                    cut -= 1;
                }
                text[..cut].to_vec()
            }
            1 => {
                let garbage = [
                    "<html><body>502 Bad Gateway</body></html>",
                    "price=120.50&section=101",
                    "",
                    "{\"event_id\": \"evt\", section: \"101\"}",
                    "{\"event_id\":\"evt\",\"section\":\"101\",}",
                    "{\"event_id\":\"evt\"}{\"section\":\"101\"}",
                ];
                garbage[rng.gen_range(0..garbage.len())].as_bytes().to_vec()
            }
            2 => {
                // Valid JSON, but not an object.
                match rng.gen_range(0..4) {
                    0 => [b"[".as_slice(), &render(rng, &fields), b"]"].concat(),
                    1 => b"\"sold out\"".to_vec(),
                    2 => b"42".to_vec(),
                    _ => b"null".to_vec(),
                }
            }
            3 => {
                remove(&mut fields, "section");
                render(rng, &fields)
            }
            4 => {
                remove(&mut fields, "price");
                render(rng, &fields)
            }
            5 => {
                remove(&mut fields, "event_id");
                render(rng, &fields)
            }
            6 => {
                remove(&mut fields, "timestamp");
                render(rng, &fields)
            }
            7 => {
                let price = format!("-{}", format_price(rng, cents));
                set(&mut fields, "price", maybe_quoted(rng, price));
                render(rng, &fields)
            }
            8 => {
                let zero = ["0", "0.00", "\"0\"", "\"0.00\""][rng.gen_range(0..4)];
                set(&mut fields, "price", zero.to_owned());
                render(rng, &fields)
            }
            9 => {
                // Three decimal places, the third one non-zero.
                let price = format!("{}.{:02}{}", cents / 100, cents % 100, rng.gen_range(1..=9));
                set(&mut fields, "price", maybe_quoted(rng, price));
                render(rng, &fields)
            }
            10 => {
                let big = ["1000000.01", "2500000", "99999999999.99"][rng.gen_range(0..3)];
                set(&mut fields, "price", maybe_quoted(rng, big.to_owned()));
                render(rng, &fields)
            }
            11 => {
                let bad = ["\"$45.00\"", "\"twelve\"", "\"\"", "\"12,50\"", "\"45.00 USD\""];
                set(&mut fields, "price", bad[rng.gen_range(0..bad.len())].to_owned());
                render(rng, &fields)
            }
            12 => {
                let bad = ["\"usd\"", "\"US\"", "\"DOLLARS\"", "\"€\"", "\"\""];
                set(
                    &mut fields,
                    "currency",
                    bad[rng.gen_range(0..bad.len())].to_owned(),
                );
                render(rng, &fields)
            }
            13 => {
                let bad = [
                    "\"yesterday\"",
                    "\"2026-13-45T25:61:00Z\"",
                    "\"2026/01/01 10:00\"",
                    "\"\"",
                    "true",
                ];
                set(
                    &mut fields,
                    "timestamp",
                    bad[rng.gen_range(0..bad.len())].to_owned(),
                );
                render(rng, &fields)
            }
            14 => {
                // 1999: a scraper with a dead clock battery.
                let old = [
                    "\"1999-12-31T23:59:59Z\"",
                    "946684799000",
                    "\"1999-06-15T12:00:00+02:00\"",
                ];
                set(
                    &mut fields,
                    "timestamp",
                    old[rng.gen_range(0..old.len())].to_owned(),
                );
                render(rng, &fields)
            }
            15 => {
                let future = ["\"2101-01-01T00:00:00Z\"", "4133980800000"];
                set(
                    &mut fields,
                    "timestamp",
                    future[rng.gen_range(0..future.len())].to_owned(),
                );
                render(rng, &fields)
            }
            16 => {
                // Over 64 KiB, otherwise valid.
                set(&mut fields, "notes", json_string(&"x".repeat(70_000)));
                render(rng, &fields)
            }
            17 => {
                let long = format!("{}-{}", self.events[e].id, "x".repeat(rng.gen_range(125..=300)));
                set(&mut fields, "event_id", json_string(&long));
                if key.is_some() {
                    key = Some(long.into_bytes());
                }
                render(rng, &fields)
            }
            18 => {
                let field = ["event_id", "section", "event_name"][rng.gen_range(0..3)];
                set(&mut fields, field, "\"\"".to_owned());
                render(rng, &fields)
            }
            19 => {
                let (field, raw) = [
                    ("section", "101"),
                    ("price", "true"),
                    ("price", "{\"amount\":\"120.00\"}"),
                    ("available", "\"yes\""),
                    ("event_id", "12345"),
                    ("row", "7"),
                    ("currency", "840"),
                    ("event_name", "42"),
                ][rng.gen_range(0..8)];
                set(&mut fields, field, raw.to_owned());
                render(rng, &fields)
            }
            20 => {
                let field = ["section", "row", "seat", "source"][rng.gen_range(0..4)];
                set(
                    &mut fields,
                    field,
                    json_string(&"S".repeat(rng.gen_range(65..=100))),
                );
                render(rng, &fields)
            }
            21 => {
                let field = ["event_name", "venue"][rng.gen_range(0..2)];
                set(
                    &mut fields,
                    field,
                    json_string(&"Arena ".repeat(rng.gen_range(90..=120))),
                );
                render(rng, &fields)
            }
            22 => {
                let bad = ["\"next friday\"", "\"2026-02-30\"", "20260301"];
                set(
                    &mut fields,
                    "event_date",
                    bad[rng.gen_range(0..bad.len())].to_owned(),
                );
                render(rng, &fields)
            }
            _ => {
                set(&mut fields, "price", "\"NaN\"".to_owned());
                render(rng, &fields)
            }
        };
        ProducedMessage {
            key,
            value,
            kind: MessageKind::Malformed,
        }
    }
}

impl Iterator for Generator {
    type Item = ProducedMessage;

    fn next(&mut self) -> Option<ProducedMessage> {
        if self.config.count != 0 && self.emitted >= self.config.count {
            return None;
        }
        self.emitted += 1;
        self.clock_ms += self.rng.gen_range(1..=200);
        let roll: f64 = self.rng.gen();
        let (dup, bad, stale) = (
            self.config.duplicate_rate,
            self.config.malformed_rate,
            self.config.stale_rate,
        );
        let message = if roll < dup {
            self.duplicate().unwrap_or_else(|| self.observation())
        } else if roll < dup + bad {
            self.malformed()
        } else if roll < dup + bad + stale {
            self.stale().unwrap_or_else(|| self.observation())
        } else {
            self.observation()
        };
        if matches!(message.kind, MessageKind::Observation | MessageKind::Stale) {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(message.clone());
        }
        Some(message)
    }
}

/// One step of a listing's price walk: mostly small moves, sometimes a drop or a
/// rise, sometimes sold (and later re-listed at a new price).
fn step_price(rng: &mut StdRng, listing: &mut Listing) {
    if !listing.available {
        if rng.gen_bool(0.4) {
            listing.available = true;
            let cents = listing.cents * rng.gen_range(7_000..=13_000) / 10_000;
            listing.cents = round_price(listing, cents);
        }
        return;
    }
    let roll: f64 = rng.gen();
    let cents = listing.cents;
    let next = if roll < 0.03 {
        listing.available = false;
        cents
    } else if roll < 0.08 {
        cents * (10_000 - rng.gen_range(500..=3_000)) / 10_000
    } else if roll < 0.11 {
        cents * (10_000 + rng.gen_range(500..=2_500)) / 10_000
    } else if roll < 0.45 {
        cents * (10_000 + rng.gen_range(-300..=300)) / 10_000
    } else {
        cents
    };
    listing.cents = round_price(listing, next);
}

fn round_price(listing: &Listing, cents: i64) -> i64 {
    let cents = if listing.whole_dollars {
        (cents + 50) / 100 * 100
    } else {
        cents
    };
    cents.clamp(MIN_CENTS, MAX_CENTS)
}

/// The fields of a valid observation, as raw JSON values, in message order.
/// Optional fields are sometimes left out: the event's descriptive fields, and
/// row/seat/source/currency/available when they equal their defaults (so the
/// listing's identity does not change).
fn observation_fields(
    rng: &mut StdRng,
    event: &Event,
    listing: usize,
    ts_ms: i64,
    cents: i64,
    available: bool,
) -> Vec<(&'static str, String)> {
    let listing = &event.listings[listing];
    let mut fields = Vec::with_capacity(14);
    fields.push(("event_id", json_string(&event.id)));
    if rng.gen_bool(0.85) {
        fields.push(("event_name", json_string(&event.name)));
    }
    if rng.gen_bool(0.85) {
        fields.push(("venue", json_string(&event.venue)));
    }
    if rng.gen_bool(0.85) {
        fields.push(("event_date", json_string(&event.date)));
    }
    fields.push(("section", json_string(&listing.section)));
    if !listing.row.is_empty() || rng.gen_bool(0.3) {
        fields.push(("row", json_string(&listing.row)));
    }
    if !listing.seat.is_empty() || rng.gen_bool(0.3) {
        fields.push(("seat", json_string(&listing.seat)));
    }
    if listing.source != "unknown" || rng.gen_bool(0.2) {
        fields.push(("source", json_string(listing.source)));
    }
    let price = format_price(rng, cents);
    fields.push(("price", maybe_quoted(rng, price)));
    if event.currency != "USD" || rng.gen_bool(0.75) {
        fields.push(("currency", json_string(event.currency)));
    }
    if !available || rng.gen_bool(0.5) {
        fields.push(("available", available.to_string()));
    }
    if rng.gen_bool(0.15) {
        // Unknown fields are ignored by the job.
        fields.push(("quantity", rng.gen_range(1..=4).to_string()));
    }
    fields.push(("timestamp", format_timestamp(rng, ts_ms)));
    fields
}

/// A price as JSON number text with 2, 1 or 0 decimals (never changing its value).
fn format_price(rng: &mut StdRng, cents: i64) -> String {
    let (units, fraction) = (cents / 100, cents % 100);
    if fraction == 0 {
        match rng.gen_range(0..4) {
            0 | 1 => format!("{units}"),
            2 => format!("{units}.0"),
            _ => format!("{units}.00"),
        }
    } else if fraction % 10 == 0 && rng.gen_bool(0.6) {
        format!("{units}.{}", fraction / 10)
    } else {
        format!("{units}.{fraction:02}")
    }
}

/// A number, or (a quarter of the time) the same text as a JSON string.
fn maybe_quoted(rng: &mut StdRng, number: String) -> String {
    if rng.gen_bool(0.25) {
        format!("\"{number}\"")
    } else {
        number
    }
}

/// Mostly RFC 3339 in UTC with milliseconds; sometimes with a local offset;
/// sometimes integer epoch milliseconds. The instant is always exactly `ts_ms`.
fn format_timestamp(rng: &mut StdRng, ts_ms: i64) -> String {
    let roll = rng.gen_range(0..100);
    let Some(time) = DateTime::<Utc>::from_timestamp_millis(ts_ms) else {
        return ts_ms.to_string();
    };
    if roll < 15 {
        ts_ms.to_string()
    } else if roll < 20 {
        let offset = [-5 * 3600, -8 * 3600, 3600, 5 * 3600 + 1800][rng.gen_range(0..4)];
        match FixedOffset::east_opt(offset) {
            Some(offset) => json_string(
                &time
                    .with_timezone(&offset)
                    .to_rfc3339_opts(SecondsFormat::Millis, false),
            ),
            None => ts_ms.to_string(),
        }
    } else {
        json_string(&time.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

/// `{"k":v,...}`; some scrapers put spaces after separators.
fn render(rng: &mut StdRng, fields: &[(&'static str, String)]) -> Vec<u8> {
    let (colon, comma) = if rng.gen_bool(0.2) {
        (": ", ", ")
    } else {
        (":", ",")
    };
    let mut out = String::with_capacity(320);
    out.push('{');
    for (i, (name, raw)) in fields.iter().enumerate() {
        if i > 0 {
            out.push_str(comma);
        }
        out.push('"');
        out.push_str(name);
        out.push('"');
        out.push_str(colon);
        out.push_str(raw);
    }
    out.push('}');
    out.into_bytes()
}

fn set(fields: &mut Vec<(&'static str, String)>, name: &'static str, raw: String) {
    match fields.iter_mut().find(|(field, _)| *field == name) {
        Some(field) => field.1 = raw,
        None => fields.insert(fields.len().saturating_sub(1), (name, raw)),
    }
}

fn remove(fields: &mut Vec<(&'static str, String)>, name: &str) {
    fields.retain(|(field, _)| *field != name);
}

/// A JSON string literal (never contains a raw newline).
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Catalogue: events, venues, sections
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    Arena,
    Stadium,
    Theatre,
}

#[derive(Clone, Copy)]
struct Venue {
    name: &'static str,
    /// UTC offset in hours (standard time; good enough for a mock).
    offset_hours: i32,
    layout: Layout,
}

const fn venue(name: &'static str, offset_hours: i32, layout: Layout) -> Venue {
    Venue {
        name,
        offset_hours,
        layout,
    }
}

const MSG: Venue = venue("Madison Square Garden, New York, NY", -5, Layout::Arena);
const CRYPTO: Venue = venue("Crypto.com Arena, Los Angeles, CA", -8, Layout::Arena);
const TD_GARDEN: Venue = venue("TD Garden, Boston, MA", -5, Layout::Arena);
const UNITED: Venue = venue("United Center, Chicago, IL", -6, Layout::Arena);
const CHASE: Venue = venue("Chase Center, San Francisco, CA", -8, Layout::Arena);

const US_CONCERT_VENUES: &[Venue] = &[
    MSG,
    CRYPTO,
    UNITED,
    CHASE,
    venue("Barclays Center, Brooklyn, NY", -5, Layout::Arena),
    venue("SoFi Stadium, Inglewood, CA", -8, Layout::Stadium),
    venue("MetLife Stadium, East Rutherford, NJ", -5, Layout::Stadium),
    venue("Red Rocks Amphitheatre, Morrison, CO", -7, Layout::Stadium),
];
const EU_CONCERT_VENUES: &[Venue] = &[
    venue("Accor Arena, Paris", 1, Layout::Arena),
    venue("Uber Arena, Berlin", 1, Layout::Arena),
    venue("Ziggo Dome, Amsterdam", 1, Layout::Arena),
    venue("Stade de France, Saint-Denis", 1, Layout::Stadium),
];
const UK_CONCERT_VENUES: &[Venue] = &[
    venue("The O2, London", 0, Layout::Arena),
    venue("Wembley Stadium, London", 0, Layout::Stadium),
    venue("Co-op Live, Manchester", 0, Layout::Arena),
];

const ACTS: &[&str] = &[
    "Taylor Swift — The Eras Tour",
    "Beyoncé — Cowboy Carter Tour",
    "Coldplay — Music of the Spheres World Tour",
    "Bad Bunny — Debí Tirar Más Fotos World Tour",
    "Metallica — M72 World Tour",
    "Olivia Rodrigo — GUTS World Tour",
    "Billie Eilish — Hit Me Hard and Soft Tour",
    "Bruce Springsteen and the E Street Band",
    "Kendrick Lamar & SZA — Grand National Tour",
    "Dua Lipa — Radical Optimism Tour",
    "Ed Sheeran — Mathematics Tour",
    "Foo Fighters — Everything or Nothing at All",
    "Sabrina Carpenter — Short n' Sweet Tour",
    "The Weeknd — After Hours til Dawn",
];

/// (team, home venue) per league; a game is "home vs away" within a league.
type League = &'static [(&'static str, Venue)];
const US_LEAGUES: &[League] = &[
    &[
        ("Lakers", CRYPTO),
        ("Celtics", TD_GARDEN),
        ("Knicks", MSG),
        ("Warriors", CHASE),
        ("Bulls", UNITED),
        ("Heat", venue("Kaseya Center, Miami, FL", -5, Layout::Arena)),
    ],
    &[
        (
            "Giants",
            venue("MetLife Stadium, East Rutherford, NJ", -5, Layout::Stadium),
        ),
        (
            "Cowboys",
            venue("AT&T Stadium, Arlington, TX", -6, Layout::Stadium),
        ),
        (
            "Packers",
            venue("Lambeau Field, Green Bay, WI", -6, Layout::Stadium),
        ),
        (
            "Chiefs",
            venue(
                "GEHA Field at Arrowhead Stadium, Kansas City, MO",
                -6,
                Layout::Stadium,
            ),
        ),
    ],
    &[("Rangers", MSG), ("Bruins", TD_GARDEN), ("Blackhawks", UNITED)],
    &[
        ("Yankees", venue("Yankee Stadium, Bronx, NY", -5, Layout::Stadium)),
        ("Red Sox", venue("Fenway Park, Boston, MA", -5, Layout::Stadium)),
        (
            "Dodgers",
            venue("Dodger Stadium, Los Angeles, CA", -8, Layout::Stadium),
        ),
    ],
];
const EU_LEAGUES: &[League] = &[&[
    (
        "Real Madrid",
        venue("Estadio Santiago Bernabéu, Madrid", 1, Layout::Stadium),
    ),
    (
        "FC Barcelona",
        venue("Spotify Camp Nou, Barcelona", 1, Layout::Stadium),
    ),
    (
        "Bayern München",
        venue("Allianz Arena, München", 1, Layout::Stadium),
    ),
    (
        "Paris Saint-Germain",
        venue("Parc des Princes, Paris", 1, Layout::Stadium),
    ),
]];
const UK_LEAGUES: &[League] = &[&[
    ("Arsenal", venue("Emirates Stadium, London", 0, Layout::Stadium)),
    ("Chelsea", venue("Stamford Bridge, London", 0, Layout::Stadium)),
    (
        "Manchester United",
        venue("Old Trafford, Manchester", 0, Layout::Stadium),
    ),
    ("Liverpool", venue("Anfield, Liverpool", 0, Layout::Stadium)),
]];

const US_SHOWS: &[(&str, Venue)] = &[
    (
        "Hamilton",
        venue("Richard Rodgers Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "The Lion King",
        venue("Minskoff Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "Wicked",
        venue("Gershwin Theatre, New York, NY", -5, Layout::Theatre),
    ),
    (
        "Hadestown",
        venue("Walter Kerr Theatre, New York, NY", -5, Layout::Theatre),
    ),
];
const EU_SHOWS: &[(&str, Venue)] = &[("Le Roi Lion", venue("Théâtre Mogador, Paris", 1, Layout::Theatre))];
const UK_SHOWS: &[(&str, Venue)] = &[
    (
        "Les Misérables",
        venue("Sondheim Theatre, London", 0, Layout::Theatre),
    ),
    (
        "Hamilton",
        venue("Victoria Palace Theatre, London", 0, Layout::Theatre),
    ),
    (
        "The Phantom of the Opera",
        venue("His Majesty's Theatre, London", 0, Layout::Theatre),
    ),
];

const SOURCES: &[(&str, u32)] = &[
    ("stubhub", 35),
    ("seatgeek", 25),
    ("vividseats", 20),
    ("ticketmaster", 16),
    ("unknown", 4),
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.gen_range(0..items.len())]
}

fn make_event(rng: &mut StdRng, config: &GeneratorConfig, ids: &mut HashSet<String>) -> Event {
    let id = loop {
        let id = format!("evt_{:010x}", rng.gen::<u64>() & 0xff_ffff_ffff);
        if ids.insert(id.clone()) {
            break id;
        }
    };
    let (currency, concert_venues, leagues, shows) = match rng.gen_range(0..100) {
        0..=79 => ("USD", US_CONCERT_VENUES, US_LEAGUES, US_SHOWS),
        80..=89 => ("EUR", EU_CONCERT_VENUES, EU_LEAGUES, EU_SHOWS),
        _ => ("GBP", UK_CONCERT_VENUES, UK_LEAGUES, UK_SHOWS),
    };
    // (name, venue, concert?, base price in cents)
    let (name, venue, concert, base) = match rng.gen_range(0..100) {
        0..=44 => (
            (*pick(rng, ACTS)).to_owned(),
            *pick(rng, concert_venues),
            true,
            rng.gen_range(9_000..=24_000),
        ),
        45..=84 => {
            let league = *pick(rng, leagues);
            let home = rng.gen_range(0..league.len());
            let away = (home + rng.gen_range(1..league.len().max(2))) % league.len();
            let (home, venue) = league[home];
            (
                format!("{home} vs {}", league[away].0),
                venue,
                false,
                rng.gen_range(6_000..=18_000),
            )
        }
        _ => {
            let (show, venue) = *pick(rng, shows);
            (show.to_owned(), venue, false, rng.gen_range(7_000..=16_000))
        }
    };
    // In the future relative to --start: 3 to 240 days out, evening, local time.
    let day = config.start.date_naive() + chrono::Days::new(rng.gen_range(3..=240));
    let time =
        NaiveTime::from_hms_opt(rng.gen_range(18..=20), [0, 30][rng.gen_range(0..2)], 0).unwrap_or_default();
    let date = FixedOffset::east_opt(venue.offset_hours * 3600)
        .and_then(|offset| offset.from_local_datetime(&day.and_time(time)).single())
        .map(|date| date.to_rfc3339_opts(SecondsFormat::Secs, false))
        .unwrap_or_else(|| {
            day.and_time(time)
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        });

    let mut taken = HashSet::new();
    let listings = (0..config.listings_per_event)
        .map(|index| make_listing(rng, venue.layout, concert, base, index, &mut taken))
        .collect();
    Event {
        id,
        name,
        venue: venue.name.to_owned(),
        date,
        currency,
        listings,
    }
}

/// A listing unique within its event (section, row, seat, source).
fn make_listing(
    rng: &mut StdRng,
    layout: Layout,
    concert: bool,
    base: i64,
    index: usize,
    taken: &mut HashSet<(String, String, String, &'static str)>,
) -> Listing {
    let mut attempt = 0;
    let (section, row, seat, source, multiplier) = loop {
        let (section, row, seat, multiplier) = make_seat(rng, layout, concert);
        let total: u32 = SOURCES.iter().map(|(_, weight)| weight).sum();
        let mut roll = rng.gen_range(0..total);
        let mut source = SOURCES[0].0;
        for (name, weight) in SOURCES {
            if roll < *weight {
                source = *name;
                break;
            }
            roll -= weight;
        }
        let candidate = (section, row, seat, source);
        attempt += 1;
        if !taken.contains(&candidate) {
            taken.insert(candidate.clone());
            break (candidate.0, candidate.1, candidate.2, candidate.3, multiplier);
        }
        if attempt >= 50 {
            // Practically never: fall back to a seat number no other listing uses.
            let candidate = (candidate.0, candidate.1, format!("X{index}"), candidate.3);
            taken.insert(candidate.clone());
            break (candidate.0, candidate.1, candidate.2, candidate.3, multiplier);
        }
    };
    let jitter = rng.gen_range(8_000..=13_000);
    let cents = (base * multiplier / 10_000 * jitter / 10_000).clamp(4_000, 90_000);
    let whole_dollars = rng.gen_bool(0.3);
    let cents = if whole_dollars { cents / 100 * 100 } else { cents };
    Listing {
        section,
        row,
        seat,
        source,
        cents,
        available: true,
        whole_dollars,
        last_ts: None,
        stale_floor: 0,
    }
}

/// (section, row, seat, price multiplier in basis points).
fn make_seat(rng: &mut StdRng, layout: Layout, concert: bool) -> (String, String, String, i64) {
    let letter = |rng: &mut StdRng, n: u8| char::from(b'A' + rng.gen_range(0..n)).to_string();
    let number = |rng: &mut StdRng, low: u32, high: u32| rng.gen_range(low..=high).to_string();
    if concert && layout != Layout::Theatre && rng.gen_bool(0.12) {
        let section = if layout == Layout::Stadium {
            "GA Pit"
        } else {
            "GA Floor"
        };
        return (section.to_owned(), String::new(), String::new(), 15_000);
    }
    let roll = rng.gen_range(0..100);
    let (section, row_is_letter, multiplier) = match layout {
        Layout::Arena => match roll {
            0..=14 if concert => (format!("Floor {}", letter(rng, 4)), true, 20_000),
            0..=44 => (number(rng, 101, 124), false, 13_000),
            45..=79 => (number(rng, 201, 230), false, 9_000),
            80..=91 => (format!("Mezzanine {}", number(rng, 1, 8)), false, 10_000),
            _ => (format!("Club {}", number(rng, 1, 12)), true, 22_000),
        },
        Layout::Stadium => match roll {
            0..=9 => (format!("Field {}", letter(rng, 6)), true, 18_000),
            10..=39 => (number(rng, 101, 149), false, 13_000),
            40..=64 => (number(rng, 201, 249), false, 9_000),
            65..=89 => (number(rng, 501, 549), false, 6_500),
            _ => (format!("Club {}", number(rng, 1, 20)), true, 22_000),
        },
        Layout::Theatre => match roll {
            0..=39 => ("Orchestra".to_owned(), true, 16_000),
            40..=59 => ("Front Mezzanine".to_owned(), true, 12_000),
            60..=79 => ("Rear Mezzanine".to_owned(), true, 8_000),
            80..=94 => ("Balcony".to_owned(), true, 6_500),
            _ => (format!("Box {}", letter(rng, 4)), true, 25_000),
        },
    };
    let row = if row_is_letter {
        let row = letter(rng, 26);
        if rng.gen_bool(0.1) {
            format!("{row}{row}")
        } else {
            row
        }
    } else {
        number(rng, 1, 30)
    };
    let seat = if rng.gen_bool(0.05) {
        let first = rng.gen_range(1..=28);
        format!("{first}-{}", first + 1)
    } else {
        number(rng, 1, 30)
    };
    (section, row, seat, multiplier)
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

const PROGRESS_EVERY: Duration = Duration::from_secs(5);

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let config = args.generator_config()?;
    let stop = stop_on_signal();
    match &args.output {
        Some(path) => produce_to_file(&args, &config, path, &stop),
        None => produce_to_kafka(&args, &config, &stop),
    }
}

/// Set on the first SIGINT/SIGTERM (stop, flush, summarize); a second one exits at once.
fn stop_on_signal() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let spawned = std::thread::Builder::new()
        .name("produce-signals".to_owned())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                #[cfg(unix)]
                {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut interrupt), Ok(mut terminate)) =
                        (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
                    else {
                        return;
                    };
                    loop {
                        tokio::select! {
                            _ = interrupt.recv() => {}
                            _ = terminate.recv() => {}
                        }
                        if flag.swap(true, Ordering::SeqCst) {
                            std::process::exit(130);
                        }
                        tracing::info!("stopping: flushing what was produced (signal again to abort)");
                    }
                }
                #[cfg(not(unix))]
                loop {
                    if tokio::signal::ctrl_c().await.is_err() {
                        return;
                    }
                    if flag.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                }
            });
        });
    if let Err(error) = spawned {
        tracing::warn!("cannot watch for signals: {error}");
    }
    stop
}

fn produce_to_file(
    args: &ProduceArgs,
    config: &GeneratorConfig,
    path: &std::path::Path,
    stop: &AtomicBool,
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
    let result = (|| -> io::Result<()> {
        for message in generate(config) {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if let Some(delay) = pacer.delay() {
                out.flush()?;
                sleep_unless_stopped(delay, stop);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            out.write_all(&message.value)?;
            out.write_all(b"\n")?;
            pacer.sent();
            tally.count(message.kind);
            if last_progress.elapsed() >= PROGRESS_EVERY {
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

fn sleep_unless_stopped(delay: Duration, stop: &AtomicBool) {
    let until = Instant::now() + delay;
    loop {
        let now = Instant::now();
        if now >= until || stop.load(Ordering::Relaxed) {
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
    let mut config = kafka.client_config();
    let defaults = [
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
        // No compression by default: librdkafka's bundled LZ4 works, but against the
        // local dev broker (tansu) it halved throughput (8k vs 15k msgs/s, measured);
        // on a real cluster pass --kafka compression.type=lz4.
        ("compression.type", "none"),
        // The Java client's partitioner (murmur2 of the key; random when keyless),
        // so keyed messages land where kafka::partition_for_key says and where any
        // other Kafka client would put them.
        ("partitioner", "murmur2_random"),
        // A generous local queue so bursts don't stall on QueueFull.
        ("queue.buffering.max.messages", "200000"),
    ];
    for (key, value) in defaults {
        if config.get(key).is_none() {
            config.set(key, value);
        }
    }
    config
}

fn produce_to_kafka(args: &ProduceArgs, config: &GeneratorConfig, stop: &AtomicBool) -> anyhow::Result<()> {
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
    'messages: for message in generate(config) {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        while let Some(delay) = pacer.delay() {
            // Serve delivery reports while waiting for the next token.
            producer.poll(delay.min(Duration::from_millis(100)));
            if stop.load(Ordering::Relaxed) {
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
        if tally.sent % 512 == 0 {
            // Serve delivery reports.
            producer.poll(Duration::ZERO);
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            let context = producer.context();
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                sent = tally.sent,
                delivered = context.delivered.load(Ordering::Relaxed),
                failed = context.failed.load(Ordering::Relaxed),
                in_flight = producer.in_flight_count(),
                rate = format!("{:.0}/s", tally.sent as f64 / seconds.max(1e-9)),
                "producing"
            );
            if context.failed.load(Ordering::Relaxed) > 0 {
                if let Some((code, reason)) = producer.client().fatal_error() {
                    send_error = Some(format!("fatal producer error {code:?}: {reason}"));
                    break 'messages;
                }
            }
        }
    }

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
    use std::collections::{BTreeMap, HashMap};

    use serde_json::value::RawValue;

    use super::*;

    /// What a valid message means: the fields SPEC §1 defines, defaults applied.
    #[derive(Debug)]
    struct Valid {
        event_id: String,
        listing: (String, String, String, String, String),
        cents: i64,
        currency: String,
        available: bool,
        observed_ms: i64,
        price_was_string: bool,
        price_decimals: usize,
    }

    fn string_field(
        fields: &BTreeMap<String, Box<RawValue>>,
        name: &str,
        min: usize,
        max: usize,
    ) -> Result<Option<String>, String> {
        let Some(raw) = fields.get(name) else {
            return Ok(None);
        };
        let text: String = serde_json::from_str(raw.get()).map_err(|_| format!("{name} is not a string"))?;
        let chars = text.chars().count();
        if chars < min || chars > max {
            return Err(format!("{name} has {chars} chars"));
        }
        Ok(Some(text))
    }

    fn parse_cents(text: &str) -> Result<(i64, usize), String> {
        let (units, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(units)
            || (text.contains('.') && !digits(fraction))
            || fraction.len() > 2
            || units.len() > 9
        {
            return Err(format!("bad price {text:?}"));
        }
        let units: i64 = units.parse().map_err(|_| "units")?;
        let padded = format!("{fraction:0<2}");
        let fraction_cents: i64 = padded.parse().map_err(|_| "fraction")?;
        let cents = units * 100 + fraction_cents;
        if cents <= 0 || cents > MAX_CENTS {
            return Err(format!("price out of range {text:?}"));
        }
        Ok((cents, fraction.len()))
    }

    fn year_ok(time: DateTime<Utc>) -> bool {
        (2000..=2100).contains(&chrono::Datelike::year(&time))
    }

    /// A strict reading of SPEC §1.
    fn validate(value: &[u8]) -> Result<Valid, String> {
        if value.len() > 65_536 {
            return Err("oversize".into());
        }
        let fields: BTreeMap<String, Box<RawValue>> =
            serde_json::from_slice(value).map_err(|error| format!("not a JSON object: {error}"))?;
        let event_id = string_field(&fields, "event_id", 1, 128)?.ok_or("missing event_id")?;
        string_field(&fields, "event_name", 1, 512)?;
        string_field(&fields, "venue", 0, 512)?;
        if let Some(date) = string_field(&fields, "event_date", 0, usize::MAX)? {
            DateTime::parse_from_rfc3339(&date).map_err(|_| "bad event_date")?;
        }
        let section = string_field(&fields, "section", 1, 64)?.ok_or("missing section")?;
        let row = string_field(&fields, "row", 0, 64)?.unwrap_or_default();
        let seat = string_field(&fields, "seat", 0, 64)?.unwrap_or_default();
        let source = string_field(&fields, "source", 0, 64)?.unwrap_or_else(|| "unknown".into());
        let raw_price = fields.get("price").ok_or("missing price")?.get();
        let (price_text, price_was_string) = if raw_price.starts_with('"') {
            (
                serde_json::from_str::<String>(raw_price).map_err(|_| "price")?,
                true,
            )
        } else {
            (raw_price.to_owned(), false)
        };
        let (cents, price_decimals) = parse_cents(&price_text)?;
        let currency = string_field(&fields, "currency", 3, 3)?.unwrap_or_else(|| "USD".into());
        if !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err("bad currency".into());
        }
        let available = match fields.get("available") {
            None => true,
            Some(raw) => serde_json::from_str::<bool>(raw.get()).map_err(|_| "available is not a bool")?,
        };
        let raw_ts = fields.get("timestamp").ok_or("missing timestamp")?.get();
        let observed = if raw_ts.starts_with('"') {
            let text: String = serde_json::from_str(raw_ts).map_err(|_| "timestamp")?;
            DateTime::parse_from_rfc3339(&text)
                .map_err(|_| "bad timestamp")?
                .with_timezone(&Utc)
        } else {
            if !raw_ts.bytes().all(|b| b.is_ascii_digit()) {
                return Err("timestamp is not an integer".into());
            }
            let ms: i64 = raw_ts.parse().map_err(|_| "timestamp")?;
            DateTime::from_timestamp_millis(ms).ok_or("timestamp range")?
        };
        if !year_ok(observed) {
            return Err("timestamp year".into());
        }
        Ok(Valid {
            listing: (event_id.clone(), section, row, seat, source),
            event_id,
            cents,
            currency,
            available,
            observed_ms: observed.timestamp_millis(),
            price_was_string,
            price_decimals,
        })
    }

    fn messages(config: &GeneratorConfig) -> Vec<ProducedMessage> {
        generate(config).collect()
    }

    #[test]
    fn same_seed_gives_identical_bytes() {
        let config = GeneratorConfig::default();
        let first = messages(&config);
        let second = messages(&config);
        assert_eq!(first.len(), 10_000);
        assert!(first == second);
    }

    #[test]
    fn different_seed_differs() {
        let a = messages(&GeneratorConfig {
            count: 200,
            ..GeneratorConfig::default()
        });
        let b = messages(&GeneratorConfig {
            seed: 43,
            count: 200,
            ..GeneratorConfig::default()
        });
        assert_ne!(a, b);
        let differing = a.iter().zip(&b).filter(|(x, y)| x.value != y.value).count();
        assert!(differing > 190, "only {differing} of 200 differ");
    }

    #[test]
    fn shorter_count_is_a_prefix() {
        let long = messages(&GeneratorConfig {
            count: 3_000,
            ..GeneratorConfig::default()
        });
        let short = messages(&GeneratorConfig {
            count: 1_000,
            ..GeneratorConfig::default()
        });
        assert_eq!(&long[..1_000], &short[..]);
        let endless = generate(&GeneratorConfig {
            count: 0,
            ..GeneratorConfig::default()
        });
        assert_eq!(endless.take(3_000).collect::<Vec<_>>(), long);
    }

    #[test]
    fn rates_are_roughly_respected() {
        let all = messages(&GeneratorConfig::default());
        let count = |kind| all.iter().filter(|m| m.kind == kind).count();
        let (duplicates, malformed, stale) = (
            count(MessageKind::Duplicate),
            count(MessageKind::Malformed),
            count(MessageKind::Stale),
        );
        assert!((60..=140).contains(&duplicates), "duplicates {duplicates}");
        assert!((25..=80).contains(&malformed), "malformed {malformed}");
        assert!((60..=140).contains(&stale), "stale {stale}");

        let heavy = messages(&GeneratorConfig {
            duplicate_rate: 0.2,
            malformed_rate: 0.1,
            stale_rate: 0.1,
            ..GeneratorConfig::default()
        });
        let count = |kind| heavy.iter().filter(|m| m.kind == kind).count();
        assert!((1_800..=2_200).contains(&count(MessageKind::Duplicate)));
        assert!((850..=1_150).contains(&count(MessageKind::Malformed)));
        assert!((850..=1_150).contains(&count(MessageKind::Stale)));

        let clean = messages(&GeneratorConfig {
            duplicate_rate: 0.0,
            malformed_rate: 0.0,
            stale_rate: 0.0,
            count: 2_000,
            ..GeneratorConfig::default()
        });
        assert!(clean.iter().all(|m| m.kind == MessageKind::Observation));
    }

    #[test]
    fn valid_messages_follow_the_spec_and_malformed_ones_break_it() {
        let config = GeneratorConfig {
            duplicate_rate: 0.05,
            malformed_rate: 0.05,
            stale_rate: 0.05,
            count: 20_000,
            ..GeneratorConfig::default()
        };
        let mut seen_values: HashSet<Vec<u8>> = HashSet::new();
        let mut identities = HashSet::new();
        let mut latest: HashMap<_, i64> = HashMap::new();
        let (mut strings, mut numbers, mut decimals) = (0, 0, [0usize; 3]);
        let mut currencies = HashSet::new();
        let mut oversize = 0;
        for message in messages(&config) {
            assert!(!message.value.contains(&b'\n'), "newline in a value");
            assert!(std::str::from_utf8(&message.value).is_ok(), "not UTF-8");
            let result = validate(&message.value);
            match message.kind {
                MessageKind::Malformed => {
                    assert!(
                        result.is_err(),
                        "malformed message passes: {}",
                        String::from_utf8_lossy(&message.value)
                    );
                    oversize += usize::from(message.value.len() > 65_536);
                    continue;
                }
                MessageKind::Duplicate => {
                    assert!(result.is_ok());
                    assert!(seen_values.contains(&message.value), "duplicate of nothing");
                    continue;
                }
                MessageKind::Observation | MessageKind::Stale => {}
            }
            let valid =
                result.unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&message.value)));
            assert_eq!(message.key.as_deref(), Some(valid.event_id.as_bytes()));
            assert!(valid.cents > 0 && valid.cents <= MAX_CENTS);
            assert!(valid.price_decimals <= 2);
            decimals[valid.price_decimals] += 1;
            if valid.price_was_string {
                strings += 1;
            } else {
                numbers += 1;
            }
            currencies.insert(valid.currency.clone());
            let identity = (valid.listing.clone(), valid.observed_ms);
            assert!(identities.insert(identity), "identity reused by a non-duplicate");
            let newest = latest.entry(valid.listing.clone()).or_insert(i64::MIN);
            match message.kind {
                MessageKind::Observation => {
                    assert!(valid.observed_ms > *newest, "fresh observation not newest");
                    *newest = valid.observed_ms;
                }
                _ => assert!(valid.observed_ms < *newest, "stale observation not older"),
            }
            seen_values.insert(message.value);
        }
        assert!(
            strings > 1_000 && numbers > 5_000,
            "{strings} strings, {numbers} numbers"
        );
        assert!(decimals.iter().all(|&n| n > 200), "decimals {decimals:?}");
        assert!(
            currencies.contains("USD") && currencies.len() >= 2,
            "{currencies:?}"
        );
        assert!(oversize > 0, "no oversize message");
    }

    #[test]
    fn prices_walk_drop_sell_and_relist() {
        let config = GeneratorConfig {
            duplicate_rate: 0.0,
            malformed_rate: 0.0,
            stale_rate: 0.0,
            count: 20_000,
            events: 10,
            ..GeneratorConfig::default()
        };
        let mut last: HashMap<_, (i64, bool)> = HashMap::new();
        let (mut drops, mut rises, mut sold, mut relisted) = (0, 0, 0, 0);
        for message in messages(&config) {
            let valid = validate(&message.value).unwrap_or_else(|error| panic!("{error}"));
            if let Some(&(cents, available)) = last.get(&valid.listing) {
                match (available, valid.available) {
                    (true, true) if (cents - valid.cents) * 100 >= cents * 5 => drops += 1,
                    (true, true) if valid.cents > cents => rises += 1,
                    (true, false) => sold += 1,
                    (false, true) => relisted += 1,
                    _ => {}
                }
            } else {
                assert!(
                    (4_000..=90_000).contains(&valid.cents),
                    "start price {}",
                    valid.cents
                );
            }
            last.insert(valid.listing, (valid.cents, valid.available));
        }
        assert!(drops > 200 && rises > 200 && sold > 100 && relisted > 50);
        assert!(drops <= 2_000, "too many drops: {drops}");
    }

    #[test]
    fn every_kind_of_malformed_message_shows_up() {
        let all = messages(&GeneratorConfig {
            malformed_rate: 1.0,
            duplicate_rate: 0.0,
            stale_rate: 0.0,
            count: 5_000,
            ..GeneratorConfig::default()
        });
        let reasons: HashSet<String> = all
            .iter()
            .filter_map(|m| validate(&m.value).err())
            .map(|reason| {
                reason
                    .split([':', '"'])
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect();
        assert_eq!(all.iter().filter(|m| validate(&m.value).is_ok()).count(), 0);
        for expected in [
            "oversize",
            "not a JSON object",
            "missing section",
            "missing price",
            "missing event_id",
            "missing timestamp",
            "bad price",
            "price out of range",
            "bad currency",
            "bad timestamp",
            "timestamp year",
            "bad event_date",
            "available is not a bool",
            "timestamp is not an integer",
        ] {
            assert!(reasons.contains(expected), "no {expected:?} in {reasons:?}");
        }
        assert!(reasons.iter().any(|r| r.starts_with("event_id has")));
        assert!(reasons.iter().any(|r| r.starts_with("section has")));
    }

    #[test]
    fn timestamps_come_from_start_not_the_wall_clock() {
        let start = |text: &str| parse_start(text).unwrap_or_else(|error| panic!("{error}"));
        let observed = |start: DateTime<Utc>| -> Vec<i64> {
            messages(&GeneratorConfig {
                start,
                count: 2_000,
                ..GeneratorConfig::default()
            })
            .iter()
            .filter_map(|m| validate(&m.value).ok())
            .map(|valid| valid.observed_ms)
            .collect()
        };
        let a = start("2031-05-01T12:00:00Z");
        let b = start("2031-05-02T12:00:00+00:00");
        let (times_a, times_b) = (observed(a), observed(b));
        let low = a.timestamp_millis() - 60_000;
        let high = a.timestamp_millis() + 2_000 * 200;
        assert!(times_a.iter().all(|&t| (low..=high).contains(&t)));
        // Moving --start moves every timestamp by exactly that much.
        assert_eq!(times_a.len(), times_b.len());
        assert!(times_a.iter().zip(&times_b).all(|(x, y)| y - x == 86_400_000));
        // Event dates lie ahead of --start.
        let generator = generate(&GeneratorConfig {
            start: a,
            ..GeneratorConfig::default()
        });
        for event in &generator.events {
            let date = DateTime::parse_from_rfc3339(&event.date).unwrap_or_else(|error| panic!("{error}"));
            assert!(date > a, "event_date {} before start", event.date);
        }
    }

    #[test]
    fn no_key_and_optional_fields() {
        let all = messages(&GeneratorConfig {
            keyed: false,
            count: 3_000,
            ..GeneratorConfig::default()
        });
        assert!(all.iter().all(|m| m.key.is_none()));
        let text: Vec<String> = all
            .iter()
            .filter(|m| m.kind == MessageKind::Observation)
            .map(|m| String::from_utf8_lossy(&m.value).into_owned())
            .collect();
        for field in [
            "event_name",
            "venue",
            "event_date",
            "row",
            "seat",
            "source",
            "currency",
            "available",
        ] {
            let with = text
                .iter()
                .filter(|t| t.contains(&format!("\"{field}\"")))
                .count();
            assert!(
                with > 0 && with < text.len(),
                "{field} in {with} of {}",
                text.len()
            );
        }
        assert!(text
            .iter()
            .any(|t| t.contains("\"seat\":\"\"") || t.contains("\"seat\": \"\"")));
        assert!(text.iter().any(|t| t.contains(" — ")), "no tour names");
        assert!(text.iter().any(|t| t.contains(" vs ")), "no games");
    }

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
