//! The per-event processor: the timely operator that owns all state keyed by
//! `event_id` and turns [`ProcessorInput`]s into [`SinkRecord`]s (SPEC §2).
//!
//! Records are routed to a worker by [`stable_hash`] of their event and stashed per
//! epoch. Once the frontier passes an epoch, all of its records are applied in one
//! deterministic order, whatever the batching, arrival order or number of workers:
//! restores, then rule changes (by rule id, deactivations first), then observations
//! in `Position` order. Each observation runs through the stages in turn: dedup
//! (against its listing's current state: the processor keeps no history),
//! event state, listing state, drops, rules (every kind of SPEC §2b, each
//! judged at the message against the event clock, the event's `last_seen`
//! after it). [`Processor`] is that logic without
//! timely, so it can be driven and tested directly.
//!
//! A second output carries each epoch's net change of the collection of section
//! states, one [`SectionState`] per (event, section, currency) with a current
//! listing, as differential updates: at the end of an epoch, each section and
//! currency the epoch's listings were in before or are in after is compared
//! with the state last emitted for it (kept per event), and a changed one has
//! its old state retracted and its new one inserted (none when it has no
//! listing left). Restored listings take the same path at epoch 0. That is the
//! input of the summaries (`summaries.rs`), which need no per-message order and,
//! this way, no per-listing collection either.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use foldhash::HashMap;

use differential_dataflow::collection::vec::Collection as VecCollection;
use differential_dataflow::AsCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::alert_id::alert_id;
use crate::dedup::{classify, Verdict};
use crate::drops;
use crate::event_state;
use crate::listing_state::{Applied, Listings, Quote, SeatId, SectionId};
use crate::model::{
    stable_hash, Alert, AlertKind, Carried, Cents, Counters, Currency, EventFields, EventRow, ListingKey,
    Micros, Observation, Position, ProcessorInput, Restore, Rule, RuleChange, RuleKind, RuleMemory,
    SectionCurrency, SectionState, SinkRecord,
};
use crate::rules::{covers, is_deal, Activation, ArmedRule, Outcome, RuleState, Rules};

#[derive(Clone, Debug)]
pub struct ProcessorConfig {
    /// `--min-drop-pct` in hundredths of a percent: 5% = 500.
    pub min_drop_basis_points: u32,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        ProcessorConfig {
            min_drop_basis_points: 500,
        }
    }
}

/// A change of the collection of section states: `+1` a state a section has
/// now, `-1` one it no longer has.
pub type SectionChange = ((SectionCurrency, SectionState), isize);

/// An epoch waiting for its frontier: one capability per output, and its records.
type Pending = (Capability<u64>, Capability<u64>, Vec<ProcessorInput>);

/// What [`process`] produces: the sink's records, and the collection of section
/// states (each section and currency with a current listing, with its
/// [`SectionState`]).
pub struct Processed<'scope> {
    pub records: Stream<'scope, u64, Vec<SinkRecord>>,
    pub sections: VecCollection<'scope, u64, (SectionCurrency, SectionState)>,
}

/// The processor as a timely operator: exchanges by event, and emits each epoch's
/// records and section changes at that epoch once the input frontier has passed it.
pub fn process<'scope>(
    input: Stream<'scope, u64, Vec<ProcessorInput>>,
    config: ProcessorConfig,
) -> Processed<'scope> {
    let exchange = Exchange::new(|record: &ProcessorInput| stable_hash(record.event_id()));
    // Two outputs from one operator: the section changes come from the same state
    // and the same pass over the epoch as the records.
    let mut builder = OperatorBuilder::new("EventProcessor".to_owned(), input.scope());
    let mut input = builder.new_input(input, exchange);
    let (records_output, records) = builder.new_output();
    let (sections_output, sections) = builder.new_output();
    let mut records_output =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<SinkRecord>>>::from(records_output);
    let mut sections_output = OutputBuilder::<
        _,
        CapacityContainerBuilder<Vec<((SectionCurrency, SectionState), u64, isize)>>,
    >::from(sections_output);
    builder.build(move |initial| {
        drop(initial);
        let mut processor = Processor::new(config);
        // Ordered by time so ready epochs are applied oldest first.
        let mut stash: BTreeMap<u64, Pending> = BTreeMap::new();
        move |frontiers| {
            let mut records_handle = records_output.activate();
            let mut sections_handle = sections_output.activate();
            input.for_each_stamp(|cap, data| {
                let (Some(records_cap), Some(sections_cap)) = (
                    cap.retain_least(records_handle.output_index()),
                    cap.retain_least(sections_handle.output_index()),
                ) else {
                    return;
                };
                let time = *records_cap.time();
                let (_, _, pending) = stash
                    .entry(time)
                    .or_insert_with(|| (records_cap, sections_cap, Vec::new()));
                for batch in data {
                    pending.append(batch);
                }
            });
            while let Some(entry) = stash.first_entry() {
                if frontiers[0].less_equal(entry.key()) {
                    break;
                }
                let (records_cap, sections_cap, pending) = entry.remove();
                let time = *records_cap.time();
                let EpochOutput {
                    mut records,
                    section_changes,
                } = processor.process_epoch(pending);
                if !records.is_empty() {
                    records_handle.session(&records_cap).give_container(&mut records);
                }
                if !section_changes.is_empty() {
                    sections_handle
                        .session(&sections_cap)
                        .give_iterator(section_changes.into_iter().map(|(data, diff)| (data, time, diff)));
                }
            }
        }
    });
    Processed {
        records,
        sections: sections.as_collection(),
    }
}

/// What one epoch produced on one worker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochOutput {
    /// What the sink must write: history rows and alerts in the order they
    /// arose, then the final arming state of every rule, event and listing the
    /// epoch changed, then counters. The sink may receive these records in any
    /// order within the epoch (see the sink's `Merged::absorb`): nothing here is written
    /// twice for one key in one epoch, and the sink orders what must be ordered.
    pub records: Vec<SinkRecord>,
    /// The epoch's net change of the collection of section states, in (event,
    /// section, currency) order: a section and currency whose state changed
    /// retracts the state emitted before and inserts its state after the epoch,
    /// unless it has no listing left.
    pub section_changes: Vec<SectionChange>,
}

/// Everything known about one event.
#[derive(Clone, Debug, Default)]
pub struct EventState {
    /// `None` until the event is observed or restored (it may have rules before).
    row: Option<EventRow>,
    listings: Listings,
    rules: Rules,
    /// The state of each section and currency as last emitted on the section
    /// output, so an epoch retracts exactly what the collection holds.
    emitted: HashMap<(SectionId, Currency), SectionState>,
    /// What the epoch being applied changed of this event.
    epoch: EventEpoch,
}

/// The part of an epoch's work that belongs to one event: which listings it
/// set (with their currency before the epoch: the section state they left
/// may have changed too) and whether the events row changed. Kept in the
/// event's state so the per-message work is a lookup by seat id, not a clone
/// of a [`ListingKey`] into a map of the whole epoch.
#[derive(Clone, Debug, Default)]
struct EventEpoch {
    /// Listed in [`Epoch::events`].
    listed: bool,
    row_changed: bool,
    /// Every listing the epoch set (observed or restored), once.
    touched: Vec<Touch>,
    /// Per seat id: its position in `touched` plus one; 0 = untouched. Reset
    /// when the epoch finishes.
    slot: Vec<u32>,
}

#[derive(Clone, Copy, Debug)]
struct Touch {
    id: SeatId,
    /// Its currency before the epoch; `None`: it had no state.
    before: Option<Currency>,
    /// Observed (a `listings` row to write), not only restored.
    observed: bool,
}

impl EventEpoch {
    /// Records that the epoch set listing `id`, whose state before was `before`.
    fn touch(&mut self, id: SeatId, before: Option<Currency>, observed: bool) {
        let index = id as usize;
        if self.slot.len() <= index {
            self.slot.resize(index + 1, 0);
        }
        match self.slot[index] {
            0 => {
                self.touched.push(Touch { id, before, observed });
                self.slot[index] = self.touched.len() as u32;
            }
            position => self.touched[position as usize - 1].observed |= observed,
        }
    }
}

impl EventState {
    fn is_empty(&self) -> bool {
        self.row.is_none() && self.listings.is_empty() && self.rules.is_empty()
    }
}

/// The processor's logic for the events of one worker, one epoch at a time.
#[derive(Debug)]
pub struct Processor {
    config: ProcessorConfig,
    events: HashMap<String, EventState>,
}

impl Processor {
    pub fn new(config: ProcessorConfig) -> Processor {
        Processor {
            config,
            events: HashMap::default(),
        }
    }

    /// Number of events this processor holds state for.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// Applies all records of one epoch and returns what it produced.
    pub fn process_epoch(&mut self, records: Vec<ProcessorInput>) -> EpochOutput {
        let mut restores = Vec::new();
        let mut rule_changes = Vec::new();
        let mut observations = Vec::new();
        for record in records {
            match record {
                ProcessorInput::Restore(restore) => restores.push(restore),
                ProcessorInput::Rule(change) => rule_changes.push(change),
                ProcessorInput::Observation {
                    position,
                    observation,
                } => observations.push((position, observation)),
            }
        }
        rule_changes.sort_by(rule_change_order);
        observations.sort_by(observation_order);

        // Sized for what an epoch of observations usually yields (a history row
        // and a listing row each, an alert in some): grown by doubling, these
        // records (a few hundred bytes each) were copied again and again.
        let mut epoch = Epoch {
            out: Vec::with_capacity(observations.len() * 9 / 4),
            ..Epoch::default()
        };
        for restore in restores {
            self.restore(restore, &mut epoch);
        }
        for change in rule_changes {
            match change {
                RuleChange::Activate { rule, state } => self.activate(rule, state, &mut epoch),
                RuleChange::Deactivate { rule_id, event_id } => self.deactivate(rule_id, &event_id),
            }
        }
        for (position, observation) in observations {
            self.observe(position, observation, &mut epoch);
        }
        self.finish(epoch)
    }

    fn restore(&mut self, restore: Restore, epoch: &mut Epoch) {
        match restore {
            Restore::Event(row) => {
                let state = self.events.entry(row.event_id.clone()).or_default();
                state.row = Some(row);
            }
            Restore::Listing(row) => {
                let state = self.events.entry(row.listing.event_id.clone()).or_default();
                let id = state.listings.intern(&row.listing.seat);
                let before = state.listings.quote(id).map(|quote| quote.currency);
                state.listings.restore(&row.listing.seat, Quote::of_row(&row));
                // Not a row to write (it is stored), but its section's state
                // enters the collection, so that later changes retract it.
                state.epoch.touch(id, before, false);
                epoch.list(&row.listing.event_id, &mut state.epoch);
            }
        }
    }

    fn activate(&mut self, rule: Rule, restored: Option<RuleMemory>, epoch: &mut Epoch) {
        let state = self.events.entry(rule.event_id.clone()).or_default();
        if state.rules.has(&rule) {
            return;
        }
        let lowest = state
            .listings
            .lowest(rule.section.as_deref(), rule.currency)
            .map(|(price, seat)| (price, seat.to_seat()));
        let is_restored = restored.is_some();
        let mut rule_state = match restored {
            Some(memory) => from_memory(&mut state.listings, memory),
            None => fresh_state(&rule, &state.listings, lowest.as_ref().map(|(price, _)| *price)),
        };
        // Only a `max_price` rule may fire on being added (SPEC §2b).
        let fires = !is_restored && rule_state.below;
        if fires {
            rule_state.fired_at = state.row.as_ref().map(|row| row.last_seen);
        }
        let (rule_id, currency, event_id, max_price) = (
            rule.rule_id,
            rule.currency,
            rule.event_id.clone(),
            rule.max_price(),
        );
        if state.rules.activate(rule, rule_state, is_restored) != Activation::Fresh {
            return;
        }
        epoch.rule_states.insert(rule_id, event_id.clone());
        if !fires {
            return;
        }
        // Below at once: the alert names the listing holding the scope's lowest
        // price, as of that listing's own observation.
        let Some((price, seat)) = lowest else {
            return;
        };
        let Some(observed_at) = state.listings.get(&seat).map(|quote| quote.observed_at) else {
            return;
        };
        let listing = ListingKey { event_id, seat };
        let event_name = display_name(&state.row, &listing.event_id);
        epoch.alert(new_alert(
            AlertKind::RuleMatch,
            &listing,
            observed_at,
            Some((rule_id, max_price)),
            None,
            price,
            currency,
            event_name,
        ));
    }

    fn deactivate(&mut self, rule_id: i64, event_id: &str) {
        if let Some(state) = self.events.get_mut(event_id) {
            state.rules.deactivate(rule_id);
            if state.is_empty() {
                self.events.remove(event_id);
            }
        }
    }

    fn observe(&mut self, position: Position, observation: Observation, epoch: &mut Epoch) {
        epoch.counters.processed += 1;
        let min_drop = self.config.min_drop_basis_points;
        let listing = &observation.listing;
        let seat = &listing.seat;
        let at = observation.observed_at;
        // Not `entry`: that would allocate the key on every message.
        if !self.events.contains_key(&listing.event_id) {
            self.events
                .insert(listing.event_id.clone(), EventState::default());
        }
        let Some(state) = self.events.get_mut(&listing.event_id) else {
            return;
        };

        let id = state.listings.intern(seat);
        let previous = state.listings.quote(id).copied();
        match classify(previous.map(|quote| quote.observed_at), at) {
            Verdict::New => {}
            Verdict::Duplicate => {
                epoch.counters.duplicates += 1;
                return;
            }
            Verdict::Older => {
                if state.row.as_mut().is_some_and(|row| event_state::widen(row, at)) {
                    state.epoch.row_changed = true;
                    epoch.list(&listing.event_id, &mut state.epoch);
                }
                // Stale or a duplicate: the writer tells, counts it, and
                // applies a stale one's event fields.
                let fields = EventFields::of(&observation);
                epoch.out.push(SinkRecord::MaybeStale {
                    row: Quote::of(&observation).row_of(observation.listing),
                    position,
                    fields,
                });
                return;
            }
        }
        let quote = Quote::of(&observation);
        epoch.counters.prices_stored += 1;
        // The history row takes the message's own key, moved in at the end
        // (the alerts below still read it) and put back in this place, so the
        // records keep the order they had when it was copied here.
        let history_at = epoch.out.len();
        let carried = Carried::of(&observation);

        let event_changed = match &mut state.row {
            Some(row) => event_state::apply(row, &observation, position),
            None => {
                state.row = Some(event_state::new_row(&observation, position));
                epoch.counters.events_created += 1;
                true
            }
        };
        if event_changed {
            state.epoch.row_changed = true;
        }

        // A listing only moves the scopes of its old and new currency.
        let mut currencies = vec![quote.currency];
        if let Some(previous) = previous {
            if previous.currency != quote.currency {
                currencies.push(previous.currency);
            }
        }
        let lows_before: Vec<(Currency, Option<Cents>)> = currencies
            .iter()
            .map(|&currency| (currency, state.listings.lowest_price(None, currency)))
            .collect();
        let rules_before: Vec<(i64, Option<Cents>)> = state
            .rules
            .covering(&seat.section, &currencies)
            .into_iter()
            .map(|rule| {
                let lowest = state
                    .listings
                    .lowest_price(rule.section.as_deref(), rule.currency);
                (rule.rule_id, lowest)
            })
            .collect();

        let applied = state.listings.apply_id(id, quote);
        // Newer than `previous`, as decided above.
        debug_assert_eq!(applied, Applied::Current { previous });
        state.epoch.touch(id, previous.map(|quote| quote.currency), true);
        epoch.list(&listing.event_id, &mut state.epoch);
        let event_name = display_name(&state.row, &listing.event_id);

        if let Some((old, new)) = drops::listing_drop(previous.as_ref(), &quote, min_drop) {
            epoch.alert(new_alert(
                AlertKind::ListingDrop,
                listing,
                at,
                None,
                Some(old),
                new,
                quote.currency,
                event_name,
            ));
        }
        for (currency, before) in lows_before {
            let after = state.listings.lowest_price(None, currency);
            if let Some((old, new)) = drops::event_low(before, after) {
                epoch.alert(new_alert(
                    AlertKind::EventLow,
                    listing,
                    at,
                    None,
                    Some(old),
                    new,
                    currency,
                    event_name,
                ));
            }
        }
        let clock = state.row.as_ref().map_or(at, |row| row.last_seen);
        for (rule_id, before) in rules_before {
            let Some(armed) = state.rules.get_mut(rule_id) else {
                continue;
            };
            let outcome = evaluate(armed, &state.listings, id, &quote, &seat.section, before, clock);
            if outcome.changed {
                epoch.rule_states.insert(rule_id, listing.event_id.clone());
            }
            let Some((old, new)) = outcome.fired else {
                continue;
            };
            epoch.alert(new_alert(
                alert_kind(&armed.rule.kind),
                listing,
                at,
                Some((rule_id, armed.rule.max_price())),
                old,
                new,
                armed.rule.currency,
                event_name,
            ));
        }
        epoch.out.push(SinkRecord::History {
            row: quote.row_of(observation.listing),
            position,
            carried,
        });
        epoch.out[history_at..].rotate_right(1);
    }

    fn finish(&mut self, epoch: Epoch) -> EpochOutput {
        let Epoch {
            mut out,
            counters,
            mut events,
            rule_states,
        } = epoch;
        for (rule_id, event_id) in rule_states {
            let Some(state) = self.events.get(&event_id) else {
                continue;
            };
            let Some(armed) = state.rules.get(rule_id) else {
                continue;
            };
            out.push(SinkRecord::RuleState {
                rule_id,
                below: armed.state.below,
            });
            if has_memory(&armed.rule) {
                out.push(SinkRecord::RuleMemory {
                    rule_id,
                    memory: Box::new(to_memory(&armed.state, &state.listings)),
                });
            }
        }
        // Listing order (event, then seat), the same on every run.
        events.sort_unstable();
        let mut section_changes = Vec::new();
        // The sections and currencies an event's touched listings were or are in.
        let mut sections: Vec<(SectionId, Currency)> = Vec::new();
        for event_id in events {
            let Some(state) = self.events.get_mut(&event_id) else {
                continue;
            };
            let mut work = std::mem::take(&mut state.epoch);
            for touch in &work.touched {
                work.slot[touch.id as usize] = 0;
            }
            if work.row_changed {
                if let Some(row) = &state.row {
                    out.push(SinkRecord::Event(row.clone()));
                }
            }
            let listings = &state.listings;
            work.touched
                .sort_unstable_by(|a, b| listings.seat(a.id).cmp(&listings.seat(b.id)));
            for touch in &work.touched {
                let quote = listings.quote(touch.id).copied();
                let section = listings.section_of(touch.id);
                sections.extend(touch.before.map(|currency| (section, currency)));
                sections.extend(quote.map(|quote| (section, quote.currency)));
                if let (true, Some(quote)) = (touch.observed, quote) {
                    out.push(SinkRecord::Listing(quote.row_of(ListingKey {
                        event_id: event_id.clone(),
                        seat: listings.seat(touch.id).to_seat(),
                    })));
                }
            }
            sections.sort_unstable_by(|(a, a_currency), (b, b_currency)| {
                (listings.section_name(*a), a_currency).cmp(&(listings.section_name(*b), b_currency))
            });
            sections.dedup();
            for (section, currency) in sections.drain(..) {
                let now = listings.section_state(section, currency);
                let last = match now {
                    Some(now) => state.emitted.insert((section, currency), now),
                    None => state.emitted.remove(&(section, currency)),
                };
                if now == last {
                    continue;
                }
                let key = || SectionCurrency {
                    event_id: event_id.clone(),
                    section: listings.section_name(section).to_owned(),
                    currency,
                };
                if let Some(last) = last {
                    section_changes.push(((key(), last), -1));
                }
                if let Some(now) = now {
                    section_changes.push(((key(), now), 1));
                }
            }
            // Keep the allocations for the next epoch.
            work.touched.clear();
            work.listed = false;
            work.row_changed = false;
            state.epoch = work;
        }
        if !counters.is_empty() {
            out.push(SinkRecord::Counters(counters));
        }
        EpochOutput {
            records: out,
            section_changes,
        }
    }
}

/// What one epoch has produced so far, and what it touched.
#[derive(Default)]
struct Epoch {
    out: Vec<SinkRecord>,
    counters: Counters,
    /// The rules whose state the epoch moved, with their event. Their state
    /// is sent once, as it is after the epoch, never a sequence: timely hands
    /// the sink an epoch's containers in any order, so only the final value
    /// may be sent.
    rule_states: BTreeMap<i64, String>,
    /// The events whose [`EventEpoch`] has work, each once.
    events: Vec<String>,
}

impl Epoch {
    /// Lists an event whose [`EventEpoch`] has work.
    fn list(&mut self, event_id: &str, work: &mut EventEpoch) {
        if !work.listed {
            work.listed = true;
            self.events.push(event_id.to_owned());
        }
    }

    fn alert(&mut self, alert: Alert) {
        self.counters.count_alert(alert.kind);
        self.out.push(SinkRecord::Alert(alert));
    }
}

fn display_name<'a>(row: &'a Option<EventRow>, event_id: &'a str) -> &'a str {
    row.as_ref().map_or(event_id, EventRow::display_name)
}

/// Evaluates one rule covering the message's listing `id`, whose state is now
/// `quote`, after the message; `before` is the rule scope's lowest price
/// before it.
fn evaluate(
    armed: &mut ArmedRule,
    listings: &Listings,
    id: SeatId,
    quote: &Quote,
    section: &str,
    before: Option<Cents>,
    clock: Micros,
) -> Outcome {
    let rule = &armed.rule;
    match rule.kind {
        RuleKind::Deal { deal_pct } => {
            let verdict = if quote.available && covers(rule, section, quote.currency) {
                listings.section(section, quote.currency).and_then(|index| {
                    let median = index.lower_median()?;
                    is_deal(quote.price, median, index.len(), deal_pct).then_some(median)
                })
            } else {
                None
            };
            armed.on_deal(id, verdict, quote.price, clock)
        }
        _ => {
            let after = listings.lowest_price(rule.section.as_deref(), rule.currency);
            armed.on_lowest(before, after, clock)
        }
    }
}

/// The state a rule not evaluated before starts from: the state of its scope
/// now. A `max_price` rule is below if the scope already is; a `deal` rule
/// takes the listings that are deals now as deals (they fire again only after
/// their own message makes them no deal); a `new_low` window starts with the
/// scope's lowest price now, which every evaluation counts as the value in
/// effect.
fn fresh_state(rule: &Rule, listings: &Listings, lowest: Option<Cents>) -> RuleState {
    let mut state = RuleState::default();
    match rule.kind {
        RuleKind::MaxPrice { max_price, .. } => {
            state.below = lowest.is_some_and(|price| price <= max_price);
        }
        RuleKind::Deal { deal_pct } => {
            for (id, price) in listings.available(rule.section.as_deref(), rule.currency) {
                let section = listings.seat(id).section;
                let deal = listings.section(section, rule.currency).is_some_and(|index| {
                    index
                        .lower_median()
                        .is_some_and(|median| is_deal(price, median, index.len(), deal_pct))
                });
                if deal {
                    state.deals.insert(id);
                }
            }
        }
        RuleKind::NewLow { .. } | RuleKind::BackInStock { .. } => {}
    }
    state
}

/// Whether a rule has state beyond its arming flag to persist.
fn has_memory(rule: &Rule) -> bool {
    !matches!(rule.kind, RuleKind::MaxPrice { .. }) || rule.cooldown > 0
}

/// A rule's state as persisted: seats by name, not by this process's ids.
fn to_memory(state: &RuleState, listings: &Listings) -> RuleMemory {
    let mut deals: Vec<_> = state
        .deals
        .iter()
        .map(|id| listings.seat(*id).to_seat())
        .collect();
    deals.sort_unstable();
    RuleMemory {
        below: state.below,
        fired_at: state.fired_at,
        window: state.window.iter().copied().collect(),
        deals,
    }
}

fn from_memory(listings: &mut Listings, memory: RuleMemory) -> RuleState {
    RuleState {
        below: memory.below,
        fired_at: memory.fired_at,
        window: memory.window.into(),
        deals: memory.deals.iter().map(|seat| listings.intern(seat)).collect(),
    }
}

fn alert_kind(kind: &RuleKind) -> AlertKind {
    match kind {
        RuleKind::MaxPrice { .. } => AlertKind::RuleMatch,
        RuleKind::NewLow { .. } => AlertKind::NewLow,
        RuleKind::BackInStock { .. } => AlertKind::BackInStock,
        RuleKind::Deal { .. } => AlertKind::Deal,
    }
}

#[allow(clippy::too_many_arguments)]
fn new_alert(
    kind: AlertKind,
    listing: &ListingKey,
    observed_at: Micros,
    rule: Option<(i64, Option<Cents>)>,
    old_price: Option<Cents>,
    new_price: Cents,
    currency: Currency,
    event_name: &str,
) -> Alert {
    let rule_id = rule.map(|(rule_id, _)| rule_id);
    Alert {
        alert_id: alert_id(kind, listing, observed_at, rule_id, currency),
        kind,
        listing: listing.clone(),
        rule_id,
        max_price: rule.and_then(|(_, max_price)| max_price),
        old_price,
        new_price,
        currency,
        observed_at,
        event_name: event_name.to_owned(),
    }
}

/// By rule id, a deactivation before an activation, so "disable then re-enable"
/// within one epoch ends active. The rest only makes the order total.
fn rule_change_order(a: &RuleChange, b: &RuleChange) -> Ordering {
    fn key(change: &RuleChange) -> (i64, u8, &str) {
        match change {
            RuleChange::Deactivate { rule_id, event_id } => (*rule_id, 0, event_id),
            RuleChange::Activate { rule, .. } => (rule.rule_id, 1, &rule.event_id),
        }
    }
    key(a).cmp(&key(b)).then_with(|| match (a, b) {
        (RuleChange::Activate { rule: ra, state: sa }, RuleChange::Activate { rule: rb, state: sb }) => {
            (ra, sa).cmp(&(rb, sb))
        }
        _ => Ordering::Equal,
    })
}

/// Partition order. Two records at one position are the same message delivered
/// twice; comparing their content only makes the order total.
fn observation_order(a: &(Position, Observation), b: &(Position, Observation)) -> Ordering {
    let (pa, oa) = a;
    let (pb, ob) = b;
    pa.cmp(pb)
        .then_with(|| oa.listing.cmp(&ob.listing))
        .then_with(|| oa.observed_at.cmp(&ob.observed_at))
        .then_with(|| (oa.price, oa.currency, oa.available).cmp(&(ob.price, ob.currency, ob.available)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Seat;

    fn observation(seat: &str, price: i64, at: Micros) -> ProcessorInput {
        ProcessorInput::Observation {
            position: Position {
                partition: 0,
                offset: at,
            },
            observation: Observation {
                listing: ListingKey {
                    event_id: "ev".into(),
                    seat: Seat {
                        section: "A".into(),
                        row: "1".into(),
                        seat: seat.into(),
                        source: "s".into(),
                    },
                },
                event_name: None,
                venue: None,
                event_date: None,
                price: Cents(price),
                currency: Currency::USD,
                available: true,
                observed_at: at,
            },
        }
    }

    fn counters(out: &[SinkRecord]) -> Counters {
        out.iter()
            .find_map(|record| match record {
                SinkRecord::Counters(counters) => Some(counters.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    #[test]
    fn arrival_order_within_an_epoch_does_not_matter() {
        let records = vec![
            observation("1", 1000, 1),
            observation("1", 900, 2),
            observation("2", 800, 3),
            observation("1", 700, 4),
        ];
        let mut reversed = records.clone();
        reversed.reverse();
        let forward = Processor::new(ProcessorConfig::default()).process_epoch(records);
        let backward = Processor::new(ProcessorConfig::default()).process_epoch(reversed);
        assert_eq!(forward, backward);
        // Section A's state after the epoch: one insertion, its net.
        assert_eq!(
            forward.section_changes,
            [(
                (
                    SectionCurrency {
                        event_id: "ev".into(),
                        section: "A".into(),
                        currency: Currency::USD,
                    },
                    SectionState {
                        listings: 2,
                        available: 2,
                        low: Some(Cents(700)),
                    }
                ),
                1
            )]
        );
        let counters = counters(&forward.records);
        assert_eq!(counters.processed, 4);
        assert_eq!(counters.listing_drop, 2);
        assert_eq!(counters.event_low, 3);
    }

    #[test]
    fn deactivating_the_last_rule_of_an_unseen_event_frees_it() {
        let mut processor = Processor::new(ProcessorConfig::default());
        let rule = Rule {
            rule_id: 1,
            event_id: "other".into(),
            section: None,
            currency: Currency::USD,
            kind: RuleKind::MaxPrice {
                max_price: Cents(100),
                rearm_bp: 0,
            },
            cooldown: 0,
        };
        let out = processor.process_epoch(vec![ProcessorInput::Rule(RuleChange::Activate {
            rule,
            state: None,
        })]);
        assert_eq!(
            out.records,
            vec![SinkRecord::RuleState {
                rule_id: 1,
                below: false
            }]
        );
        assert_eq!(processor.event_count(), 1);
        let out = processor.process_epoch(vec![ProcessorInput::Rule(RuleChange::Deactivate {
            rule_id: 1,
            event_id: "other".into(),
        })]);
        assert_eq!(out, EpochOutput::default());
        assert_eq!(processor.event_count(), 0);
    }

    /// A rule that fires and re-arms within one epoch sends its final state
    /// once: the sink may receive the epoch's records in any order, so a
    /// "below, then above" sequence could be stored as "below".
    #[test]
    fn a_rule_moved_twice_in_one_epoch_sends_its_final_state_once() {
        let rule = Rule {
            rule_id: 4,
            event_id: "ev".into(),
            section: None,
            currency: Currency::USD,
            kind: RuleKind::MaxPrice {
                max_price: Cents(100),
                rearm_bp: 0,
            },
            cooldown: 0,
        };
        let mut processor = Processor::new(ProcessorConfig::default());
        processor.process_epoch(vec![ProcessorInput::Rule(RuleChange::Activate {
            rule,
            state: None,
        })]);
        let out = processor.process_epoch(vec![observation("1", 90, 1), observation("1", 120, 2)]);
        assert_eq!(counters(&out.records).rule_match, 1);
        let states: Vec<&SinkRecord> = out
            .records
            .iter()
            .filter(|record| matches!(record, SinkRecord::RuleState { .. }))
            .collect();
        assert_eq!(
            states,
            [&SinkRecord::RuleState {
                rule_id: 4,
                below: false
            }]
        );
    }

    #[test]
    fn deactivate_then_activate_in_one_epoch_ends_active() {
        let rule = Rule {
            rule_id: 1,
            event_id: "ev".into(),
            section: None,
            currency: Currency::USD,
            kind: RuleKind::MaxPrice {
                max_price: Cents(100),
                rearm_bp: 0,
            },
            cooldown: 0,
        };
        let mut processor = Processor::new(ProcessorConfig::default());
        processor.process_epoch(vec![
            ProcessorInput::Rule(RuleChange::Activate {
                rule: rule.clone(),
                state: None,
            }),
            ProcessorInput::Rule(RuleChange::Deactivate {
                rule_id: 1,
                event_id: "ev".into(),
            }),
        ]);
        let out = processor.process_epoch(vec![observation("1", 50, 1)]);
        assert_eq!(counters(&out.records).rule_match, 1);
    }
}
