//! The message generator of `conscope produce`: a pure, deterministic iterator
//! of [`ProducedMessage`]s.
//!
//! Its output is a function of the [`GeneratorConfig`] alone (seed, sizes, rates,
//! `--start`), never of the wall clock, so the same flags give byte-identical
//! messages, and asking for fewer messages gives a prefix of a longer run. It owns
//! the simulation: a clock that only moves forward, the choice of message kind
//! per message (fresh observation, stale observation, producer-retry duplicate,
//! malformed), and each listing's price walk (small moves, drops, rises, sold,
//! re-listed). What exists comes from [`super::catalog`], how it is written from
//! [`super::render`], how it is broken from [`super::malformed`].
//!
//! Touches no IO. Money is integer cents; rates and probabilities are the only floats.

use std::collections::{HashSet, VecDeque};

use anyhow::bail;
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::catalog::{make_event, Event, Listing};
use super::malformed;
use super::render::{observation_fields, render};

/// Everything the generated messages depend on.
#[derive(Clone, Debug)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Messages to generate; 0 = an endless iterator.
    pub count: u64,
    pub events: usize,
    pub listings_per_event: usize,
    /// Sections each event's listings are spread over; 0: the venue layout decides.
    pub sections_per_event: usize,
    /// How a fresh observation picks its event.
    pub pick: Pick,
    /// The price walk of a fresh observation.
    pub step: Step,
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
            sections_per_event: 0,
            pick: Pick::Popular,
            step: Step::Mixed,
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
        if self.sections_per_event > self.listings_per_event {
            bail!(
                "--sections-per-event ({}) must be at most --listings-per-event ({})",
                self.sections_per_event,
                self.listings_per_event
            );
        }
        if let Step::Uniform { low_bp, high_bp } = self.step {
            if !(MIN_STEP_BP..=MAX_STEP_BP).contains(&low_bp)
                || !(MIN_STEP_BP..=MAX_STEP_BP).contains(&high_bp)
                || low_bp > high_bp
            {
                bail!(
                    "--step-pct LOW,HIGH must have -90 <= LOW <= HIGH <= 100, got {},{}",
                    low_bp as f64 / 100.0,
                    high_bp as f64 / 100.0
                );
            }
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

/// How a fresh observation picks its event (then one of its listings, uniformly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// Popular events far more often (the event at rank r with weight ~ 1/sqrt(r)):
    /// a few hot events, a long quiet tail.
    Popular,
    /// Every event equally often: with equal-sized events every listing is
    /// observed about count / listings times, the shape of a full re-scrape.
    Uniform,
}

/// The price walk of a fresh observation of an available listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Mostly small moves or none, sometimes a 5-30 % drop or a 5-25 % rise.
    Mixed,
    /// A uniform step between `low_bp` and `high_bp` basis points (-800..500:
    /// -8 %..+5 %, about one step in four a drop of 5 % or more).
    Uniform { low_bp: i64, high_bp: i64 },
}

/// Bounds of `--step-pct`, in basis points.
const MIN_STEP_BP: i64 = -9_000;
const MAX_STEP_BP: i64 = 10_000;

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

pub(super) const MAX_CENTS: i64 = 100_000_000; // 1 000 000.00
const MIN_CENTS: i64 = 100; // 1.00: keeps the walk away from zero
const RECENT: usize = 128;

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
            .map(|_| {
                make_event(
                    &mut rng,
                    config.start,
                    config.listings_per_event,
                    config.sections_per_event.min(config.listings_per_event),
                    &mut ids,
                )
            })
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
        let u = match self.config.pick {
            Pick::Popular => u * u,
            Pick::Uniform => u,
        };
        let event = ((u * events as f64) as usize).min(events - 1);
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
            step_price(rng, listing, self.config.step);
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

    /// A message the job must reject: a fresh observation, broken (see [`malformed::corrupt`]).
    fn malformed(&mut self) -> ProducedMessage {
        let (e, l) = self.pick_listing();
        let listing = &self.events[e].listings[l];
        let (cents, ts) = (listing.cents, self.clock_ms);
        let fields = observation_fields(&mut self.rng, &self.events[e], l, ts, cents, true);
        let mut key = self.key(e);
        let value = malformed::corrupt(&mut self.rng, fields, &mut key, &self.events[e].id, cents);
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

/// One step of a listing's price walk: a move as `step` says, sometimes sold
/// (and later re-listed at a new price).
fn step_price(rng: &mut StdRng, listing: &mut Listing, step: Step) {
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
    if let Step::Uniform { low_bp, high_bp } = step {
        let next = if roll < 0.03 {
            listing.available = false;
            cents
        } else {
            cents * (10_000 + rng.gen_range(low_bp..=high_bp)) / 10_000
        };
        listing.cents = round_price(listing, next);
        return;
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::produce::check::{messages, validate};
    use crate::produce::parse_start;

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
    fn a_scale_world_spreads_sections_walks_uniformly_and_picks_every_listing() {
        let config = GeneratorConfig {
            duplicate_rate: 0.0,
            malformed_rate: 0.0,
            stale_rate: 0.0,
            count: 40_000,
            events: 100,
            listings_per_event: 40,
            sections_per_event: 4,
            pick: Pick::Uniform,
            step: Step::Uniform {
                low_bp: -800,
                high_bp: 500,
            },
            ..GeneratorConfig::default()
        };
        config.validate().unwrap_or_else(|error| panic!("{error}"));
        let mut sections: HashMap<String, HashMap<String, usize>> = HashMap::new();
        let mut per_listing: HashMap<_, usize> = HashMap::new();
        let mut last: HashMap<_, (i64, bool)> = HashMap::new();
        let (mut steps, mut big_drops) = (0usize, 0usize);
        for message in messages(&config) {
            let valid = validate(&message.value).unwrap_or_else(|error| panic!("{error}"));
            *sections
                .entry(valid.event_id.clone())
                .or_default()
                .entry(valid.listing.1.clone())
                .or_default() += 1;
            *per_listing.entry(valid.listing.clone()).or_default() += 1;
            if let Some((cents, true)) = last.insert(valid.listing.clone(), (valid.cents, valid.available)) {
                if valid.available {
                    steps += 1;
                    // Rounding to whole dollars and the 1.00 floor widen a step a little.
                    let bp = (valid.cents - cents) * 10_000 / cents;
                    assert!((-1_000..=700).contains(&bp), "a step of {bp} bp");
                    big_drops += usize::from(valid.cents * 100 <= cents * 95);
                }
            }
        }
        assert_eq!(sections.len(), 100, "every event observed");
        for (event, counts) in &sections {
            assert_eq!(counts.len(), 4, "{event} has sections {counts:?}");
        }
        assert_eq!(per_listing.len(), 4_000, "every listing observed");
        let most = per_listing.values().max().copied().unwrap_or(0);
        assert!(
            most <= 30,
            "uniform picking observed one listing {most} times for 10 on average"
        );
        // -8 %..+5 % uniform: 3 of 13 steps are drops of 5 % or more.
        let share = big_drops as f64 / steps as f64;
        assert!(
            (0.17..=0.29).contains(&share),
            "{big_drops} of {steps} steps dropped 5 % or more"
        );

        for bad in [
            GeneratorConfig {
                sections_per_event: 41,
                ..GeneratorConfig::default()
            },
            GeneratorConfig {
                step: Step::Uniform {
                    low_bp: 500,
                    high_bp: -800,
                },
                ..GeneratorConfig::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
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
}
