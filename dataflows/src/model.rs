//! The records that flow through the dataflow: observations, their positions in
//! the input, restored state, rule changes, and what the sink writes.
//!
//! Everything here is plain data (serde + bincode, as timely exchanges it). Money is
//! [`Cents`] (an exact integer), times are [`Micros`] (microseconds since the UNIX
//! epoch, UTC: PostgreSQL's `timestamptz` resolution). No IO.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Microseconds since 1970-01-01T00:00:00Z.
pub type Micros = i64;

/// An exact amount of money in hundredths of the currency unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cents(pub i64);

impl fmt::Display for Cents {
    /// Decimal text with exactly two places, as `NUMERIC(12,2)` prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

/// An ISO 4217-style code: three upper-case ASCII letters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Currency(pub [u8; 3]);

impl Currency {
    pub const USD: Currency = Currency(*b"USD");

    /// Accepts exactly three upper-case ASCII letters.
    pub fn parse(text: &str) -> Option<Currency> {
        let bytes = text.as_bytes();
        if bytes.len() == 3 && bytes.iter().all(u8::is_ascii_uppercase) {
            Some(Currency([bytes[0], bytes[1], bytes[2]]))
        } else {
            None
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ever built from three ASCII upper-case letters.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of a listing's key below its event: `(section, row, seat, source)`.
/// Ordered so that "the smallest `(section, row, seat, source)` among equals" is the
/// first in a `BTreeSet`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Seat {
    pub section: String,
    pub row: String,
    pub seat: String,
    pub source: String,
}

/// A listing: `(event_id, section, row, seat, source)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ListingKey {
    pub event_id: String,
    pub seat: Seat,
}

/// One valid price observation (SPEC §1), after defaults were applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    pub listing: ListingKey,
    pub event_name: Option<String>,
    pub venue: Option<String>,
    pub event_date: Option<Micros>,
    pub price: Cents,
    pub currency: Currency,
    pub available: bool,
    pub observed_at: Micros,
}

/// The optional event fields an observation carried (at its `observed_at`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFields {
    pub event_name: Option<String>,
    pub venue: Option<String>,
    pub event_date: Option<Micros>,
}

impl EventFields {
    /// The fields of `observation`, `None` when it carried none.
    pub fn of(observation: &Observation) -> Option<Box<EventFields>> {
        let fields = EventFields {
            event_name: observation.event_name.clone(),
            venue: observation.venue.clone(),
            event_date: observation.event_date,
        };
        (fields != EventFields::default()).then(|| Box::new(fields))
    }
}

/// One of the event fields an observation may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventField {
    Name,
    Venue,
    Date,
}

impl EventField {
    pub const ALL: [EventField; 3] = [EventField::Name, EventField::Venue, EventField::Date];

    fn bit(self) -> u8 {
        match self {
            EventField::Name => 1,
            EventField::Venue => 2,
            EventField::Date => 4,
        }
    }
}

/// Which event fields a message carried, in a byte: what lets the writer tell,
/// of the messages of an event observed at one instant, the ones behind a
/// field PostgreSQL refuses (the values themselves are in the event row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carried(u8);

impl Carried {
    pub fn of(observation: &Observation) -> Carried {
        Carried::from_flags(
            observation.event_name.is_some(),
            observation.venue.is_some(),
            observation.event_date.is_some(),
        )
    }

    /// What `fields` (a `MaybeStale` record's) carried.
    pub fn of_fields(fields: Option<&EventFields>) -> Carried {
        fields.map_or(Carried::default(), |fields| {
            Carried::from_flags(
                fields.event_name.is_some(),
                fields.venue.is_some(),
                fields.event_date.is_some(),
            )
        })
    }

    pub fn only(fields: &[EventField]) -> Carried {
        Carried(fields.iter().fold(0, |bits, field| bits | field.bit()))
    }

    fn from_flags(name: bool, venue: bool, date: bool) -> Carried {
        Carried(u8::from(name) | u8::from(venue) << 1 | u8::from(date) << 2)
    }

    pub fn has(self, field: EventField) -> bool {
        self.0 & field.bit() != 0
    }
}

/// Where a message sits in its input: the order that decides "first wins" and the
/// order alerts are evaluated in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

/// A message as read from the input, before parsing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMessage {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// What a source emits: messages, and how far each partition has been read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceEvent {
    Message(RawMessage),
    /// Every message of `partition` before `offset` has been emitted at or before
    /// this epoch: the offset to resume from once the epoch is durable.
    Progress(Position),
}

/// A message that breaks SPEC §1, bound for the dead-letter topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub position: Position,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Short human-readable reason naming the field.
    pub reason: String,
}

/// The current state of one listing (a row of `listings`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingRow {
    pub listing: ListingKey,
    pub price: Cents,
    pub currency: Currency,
    pub available: bool,
    pub observed_at: Micros,
}

/// A value of an event field together with the observation time and the
/// position of the message that set it, so "taken from the most recent
/// observation that carried it, ties going to the later message" survives
/// restarts and holds whichever of two carriers is applied first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamped<V> {
    pub value: V,
    pub observed_at: Micros,
    /// The carrier's position; `None` for a value stored before positions
    /// were (a restored row): any carrier at the same time wins over it.
    pub position: Option<Position>,
}

impl<V> Stamped<V> {
    /// What decides between two carriers of a field: the greater wins. Within a
    /// partition, at equal times, the later message (SPEC §2). Carriers in two
    /// partitions at one time (producers key by event, so an event's messages
    /// normally share one) have no order in the input: `(partition, offset)`
    /// is an arbitrary tie-break, but a deterministic one.
    pub fn order(&self) -> (Micros, Option<Position>) {
        (self.observed_at, self.position)
    }
}

/// The key of a row of `event_summary`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventCurrency {
    pub event_id: String,
    pub currency: Currency,
}

/// A row of `event_summary` without its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EventSummary {
    /// The event's listings in this currency.
    pub listings: i64,
    /// How many of them are available.
    pub available: i64,
    /// The lowest price among the available ones.
    pub get_in_price: Option<Cents>,
}

/// The key of a row of `section_summary`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SectionCurrency {
    pub event_id: String,
    pub section: String,
    pub currency: Currency,
}

/// A row of `section_summary` without its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SectionSummary {
    /// Available listings of the section in this currency.
    pub available: i64,
    /// The lowest price among them.
    pub low_price: Option<Cents>,
}

/// What the summaries need of one section's current listings in one currency
/// (a key with at least one listing): the value of a [`SectionCurrency`] in the
/// differential collection the processor emits, from which both summaries
/// follow (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SectionState {
    /// The section's listings in this currency, available or not.
    pub listings: i64,
    /// How many of them are available.
    pub available: i64,
    /// The lowest price among the available ones.
    pub low: Option<Cents>,
}

/// One update of a differential collection, as the sink receives it: `diff` > 0
/// inserts `value` at `key`, < 0 retracts it. Within one epoch a key's old value
/// is retracted and its new one inserted; a key with only a retraction is gone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change<K, V> {
    pub key: K,
    pub value: V,
    pub diff: i64,
}

/// One row of `events`, minus its wall-clock columns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRow {
    pub event_id: String,
    pub event_name: Option<Stamped<String>>,
    pub venue: Option<Stamped<String>>,
    pub event_date: Option<Stamped<Micros>>,
    pub first_seen: Micros,
    pub last_seen: Micros,
}

impl EventRow {
    /// The display name: the most recent `event_name`, else the `event_id`.
    pub fn display_name(&self) -> &str {
        self.event_name
            .as_ref()
            .map(|name| name.value.as_str())
            .unwrap_or(&self.event_id)
    }
}

/// An alert rule (a row of `alert_rules`, SPEC §2b).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rule {
    pub rule_id: i64,
    pub event_id: String,
    /// `None`: the whole event.
    pub section: Option<String>,
    pub currency: Currency,
    pub kind: RuleKind,
    /// After a firing the rule stays silent until the event clock has moved
    /// past the firing's time plus this; 0 = no cooldown.
    pub cooldown: Micros,
}

impl Rule {
    /// The rule's price threshold, for the kinds that take one.
    pub fn max_price(&self) -> Option<Cents> {
        match self.kind {
            RuleKind::MaxPrice { max_price, .. } => Some(max_price),
            RuleKind::NewLow { max_price, .. } | RuleKind::BackInStock { max_price } => max_price,
            RuleKind::Deal { .. } => None,
        }
    }
}

/// What a rule watches for, with the parameters of its kind (SPEC §2b).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RuleKind {
    /// Today's rule: the scope's lowest price at or below `max_price`. It
    /// re-arms once the lowest price rises above `max_price` by more than
    /// `rearm_bp` hundredths of a percent, or the scope empties.
    MaxPrice { max_price: Cents, rearm_bp: u32 },
    /// The scope's lowest price strictly below every value it held in the
    /// last `window_days` days of event time.
    NewLow {
        window_days: u32,
        max_price: Option<Cents>,
    },
    /// Available listings in scope (under `max_price` when set) go from none
    /// to some.
    BackInStock { max_price: Option<Cents> },
    /// A listing at least `deal_pct` % below its section's lower median.
    Deal { deal_pct: u32 },
}

impl RuleKind {
    /// The `alert_rules.kind` text.
    pub fn as_str(&self) -> &'static str {
        match self {
            RuleKind::MaxPrice { .. } => "max_price",
            RuleKind::NewLow { .. } => "new_low",
            RuleKind::BackInStock { .. } => "back_in_stock",
            RuleKind::Deal { .. } => "deal",
        }
    }
}

/// A rule's state beyond its definition, as persisted in `rule_state` and
/// restored at start: what makes a restarted job continue every rule exactly.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RuleMemory {
    /// `max_price`: fired, waiting to re-arm.
    pub below: bool,
    /// Event-clock time of the last firing (for the cooldown).
    pub fired_at: Option<Micros>,
    /// `new_low`: the values the scope's lowest price held before its current
    /// one that can still be the window's low, each with the event-clock time
    /// it stopped being in effect; oldest first, prices increasing.
    pub window: Vec<(Micros, Cents)>,
    /// `deal`: the listings that are a deal now (judged at their own messages).
    pub deals: Vec<Seat>,
}

/// A change to the set of active rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuleChange {
    /// A rule became active. `state` is its persisted state when restored after
    /// a restart (`Some`), or `None` for a rule the job has not evaluated yet,
    /// which starts from the state of its scope at that moment (a `max_price`
    /// rule fires at once if its scope is already at or below `max_price`).
    Activate { rule: Rule, state: Option<RuleMemory> },
    /// A rule was disabled or deleted.
    Deactivate { rule_id: i64, event_id: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AlertKind {
    ListingDrop,
    EventLow,
    RuleMatch,
    NewLow,
    BackInStock,
    Deal,
}

impl AlertKind {
    pub const ALL: [AlertKind; 6] = [
        AlertKind::ListingDrop,
        AlertKind::EventLow,
        AlertKind::RuleMatch,
        AlertKind::NewLow,
        AlertKind::BackInStock,
        AlertKind::Deal,
    ];

    /// The `kind` column's text.
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::ListingDrop => "listing_drop",
            AlertKind::EventLow => "event_low",
            AlertKind::RuleMatch => "rule_match",
            AlertKind::NewLow => "new_low",
            AlertKind::BackInStock => "back_in_stock",
            AlertKind::Deal => "deal",
        }
    }
}

/// One row of `price_alerts`, plus the event's display name for notifiers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub alert_id: String,
    pub kind: AlertKind,
    pub listing: ListingKey,
    pub rule_id: Option<i64>,
    /// The rule's threshold (rule alerts whose rule has one), for notifications.
    pub max_price: Option<Cents>,
    pub old_price: Option<Cents>,
    pub new_price: Cents,
    pub currency: Currency,
    pub observed_at: Micros,
    pub event_name: String,
}

/// Counts of what a stage did with the messages of one epoch on one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub processed: u64,
    pub events_created: u64,
    pub prices_stored: u64,
    pub duplicates: u64,
    pub stale: u64,
    pub rejected: u64,
    pub listing_drop: u64,
    pub event_low: u64,
    pub rule_match: u64,
    pub new_low: u64,
    pub back_in_stock: u64,
    pub deal: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.processed += other.processed;
        self.events_created += other.events_created;
        self.prices_stored += other.prices_stored;
        self.duplicates += other.duplicates;
        self.stale += other.stale;
        self.rejected += other.rejected;
        self.listing_drop += other.listing_drop;
        self.event_low += other.event_low;
        self.rule_match += other.rule_match;
        self.new_low += other.new_low;
        self.back_in_stock += other.back_in_stock;
        self.deal += other.deal;
    }

    pub fn is_empty(&self) -> bool {
        *self == Counters::default()
    }

    pub fn count_alert(&mut self, kind: AlertKind) {
        match kind {
            AlertKind::ListingDrop => self.listing_drop += 1,
            AlertKind::EventLow => self.event_low += 1,
            AlertKind::RuleMatch => self.rule_match += 1,
            AlertKind::NewLow => self.new_low += 1,
            AlertKind::BackInStock => self.back_in_stock += 1,
            AlertKind::Deal => self.deal += 1,
        }
    }
}

/// State read back from PostgreSQL at start, so a restarted job continues exactly
/// where the last committed transaction left it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Restore {
    Event(EventRow),
    Listing(ListingRow),
}

/// What the per-event processor consumes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessorInput {
    Restore(Restore),
    Rule(RuleChange),
    Observation {
        position: Position,
        observation: Observation,
    },
}

impl ProcessorInput {
    /// The event whose worker owns this record.
    pub fn event_id(&self) -> &str {
        match self {
            ProcessorInput::Restore(Restore::Event(row)) => &row.event_id,
            ProcessorInput::Restore(Restore::Listing(row)) => &row.listing.event_id,
            ProcessorInput::Rule(RuleChange::Activate { rule, .. }) => &rule.event_id,
            ProcessorInput::Rule(RuleChange::Deactivate { event_id, .. }) => event_id,
            ProcessorInput::Observation { observation, .. } => &observation.listing.event_id,
        }
    }
}

/// Everything the Postgres sink writes for one epoch, in one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkRecord {
    /// A new row of `price_history`: an observation newer than its listing's
    /// current state (or its listing's first), so its identity is not stored
    /// yet; and where its message sits in the input: what lets the writer name
    /// the message behind a row PostgreSQL refuses (`carried`: behind a field
    /// of its event's row).
    History {
        row: ListingRow,
        position: Position,
        carried: Carried,
    },
    /// A row for `price_history` of an observation older than its listing's
    /// current state: stale, unless its identity is stored already (a
    /// duplicate). Only the stored history can tell, so the writer decides: it
    /// inserts these in partition order, first one of an identity wins, and
    /// counts each as stale (inserted) or duplicate (skipped). A stale one's
    /// event fields count for `events` (SPEC §2: the most recent carrier of a
    /// field), so the writer applies `fields` of the rows it inserted.
    MaybeStale {
        row: ListingRow,
        position: Position,
        fields: Option<Box<EventFields>>,
    },
    /// The latest state of a listing at the end of the epoch.
    Listing(ListingRow),
    /// The latest state of an event at the end of the epoch.
    Event(EventRow),
    Alert(Alert),
    /// The persisted arming state of a rule.
    RuleState {
        rule_id: i64,
        below: bool,
    },
    /// The rest of a rule's state ([`RuleMemory`]), for the rules that have
    /// more than an arming state (a kind other than `max_price`, or a
    /// cooldown); sent with the rule's `RuleState` in the same epoch.
    RuleMemory {
        rule_id: i64,
        memory: Box<RuleMemory>,
    },
    Rejected(Rejected),
    /// A change of `event_summary`.
    EventSummary(Change<EventCurrency, EventSummary>),
    /// A change of `section_summary`.
    SectionSummary(Change<SectionCurrency, SectionSummary>),
    /// The next offset to read of an input partition, once this epoch is durable.
    Offset(Position),
    Counters(Counters),
}

/// A stable 64-bit FNV-1a hash: used to route an event to its worker, so routing
/// is the same in every process and every run.
pub fn stable_hash(text: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cents_print_as_numeric_12_2() {
        assert_eq!(Cents(0).to_string(), "0.00");
        assert_eq!(Cents(5).to_string(), "0.05");
        assert_eq!(Cents(12345).to_string(), "123.45");
        assert_eq!(Cents(100_000_000).to_string(), "1000000.00");
        assert_eq!(Cents(-150).to_string(), "-1.50");
    }

    #[test]
    fn currency_accepts_three_upper_case_letters_only() {
        assert_eq!(Currency::parse("EUR"), Some(Currency(*b"EUR")));
        for bad in ["eur", "EU", "EURO", "E1R", "", "ÉUR"] {
            assert_eq!(Currency::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stable_hash_is_fnv1a() {
        assert_eq!(stable_hash(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(stable_hash("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
