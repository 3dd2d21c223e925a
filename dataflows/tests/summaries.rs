//! The summaries end to end: in-memory observations through the processor, its
//! section states and the event `reduce`, the summaries' changes captured, and
//! what a sink would store compared with the same aggregates computed naively
//! over the listings. And the processor's section states on their own.

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};

use conscope_dataflows::model::{
    Cents, Currency, EventCurrency, EventSummary, ListingKey, ListingRow, ProcessorInput, Restore,
    SectionCurrency, SectionState, SectionSummary, SinkRecord,
};
use conscope_dataflows::processor::{process, Processor, ProcessorConfig};
use conscope_dataflows::summaries::{summarise, summary_records};
use timely::dataflow::operators::capture::{Event, Extract};
use timely::dataflow::operators::{Capture, Concat};
use timely::dataflow::InputHandleVec;

mod common;
use common::{feed_and_finish, obs, Feed, Obs};

const EUR: Currency = Currency(*b"EUR");

type Update<K, V> = ((K, V), u64, isize);

/// What one run produced, from all workers.
struct Run {
    events: Vec<Update<EventCurrency, EventSummary>>,
    sections: Vec<Update<SectionCurrency, SectionSummary>>,
    /// The processor's records and the summary records, with their epochs.
    records: Vec<(u64, SinkRecord)>,
}

/// Runs `epochs` (epoch `i` at time `i`; epoch 0 is the restore) on `workers`
/// threads, each epoch's records dealt round-robin to the workers.
fn run_on(workers: usize, epochs: Vec<Vec<ProcessorInput>>) -> Run {
    let epochs = Arc::new(epochs);
    let (events_in, events_out) = mpsc::channel();
    let (sections_in, sections_out) = mpsc::channel();
    let (records_in, records_out) = mpsc::channel::<Event<u64, Vec<SinkRecord>>>();
    let senders = Arc::new(Mutex::new((events_in, sections_in, records_in)));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (events_in, sections_in, records_in) = senders.lock().unwrap().clone();
        let mut input = InputHandleVec::<u64, ProcessorInput>::new();
        worker.dataflow::<u64, _, _>(|scope| {
            let processed = process(input.to_stream(scope), ProcessorConfig::default());
            let summaries = summarise(processed.sections);
            summaries.events.inner.clone().capture_into(events_in);
            summaries.sections.inner.clone().capture_into(sections_in);
            processed
                .records
                .concat(summary_records(summaries))
                .capture_into(records_in);
        });
        feed_and_finish(worker, input, &epochs);
    })
    .unwrap();
    for result in guards.join() {
        result.unwrap();
    }
    let mut records = Vec::new();
    for event in records_out.try_iter() {
        if let Event::Messages(stamp, data) = event {
            let time = *stamp.expect_singleton();
            records.extend(data.into_iter().map(|record| (time, record)));
        }
    }
    Run {
        events: events_out
            .extract()
            .into_iter()
            .flat_map(|(_, data)| data)
            .collect(),
        sections: sections_out
            .extract()
            .into_iter()
            .flat_map(|(_, data)| data)
            .collect(),
        records,
    }
}

fn run(epochs: Vec<Vec<ProcessorInput>>) -> Run {
    run_on(1, epochs)
}

/// The collection accumulated up to and including `time`: each key's value, which
/// must be present once or not at all.
fn at<K: Ord + Clone + std::fmt::Debug, V: Ord + Clone + std::fmt::Debug>(
    updates: &[Update<K, V>],
    time: u64,
) -> BTreeMap<K, V> {
    let mut counts: BTreeMap<(K, V), isize> = BTreeMap::new();
    for ((key, value), t, diff) in updates {
        if *t <= time {
            *counts.entry((key.clone(), value.clone())).or_default() += diff;
        }
    }
    let mut collection = BTreeMap::new();
    for ((key, value), count) in counts {
        assert!(
            count == 0 || count == 1,
            "{key:?} {value:?} has multiplicity {count}"
        );
        if count == 1 {
            assert!(
                collection.insert(key.clone(), value).is_none(),
                "{key:?} has two values"
            );
        }
    }
    collection
}

impl Run {
    fn events_at(&self, time: u64) -> BTreeMap<EventCurrency, EventSummary> {
        at(&self.events, time)
    }

    fn sections_at(&self, time: u64) -> BTreeMap<SectionCurrency, SectionSummary> {
        at(&self.sections, time)
    }

    fn last_time(&self) -> u64 {
        self.records.iter().map(|(time, _)| *time).max().unwrap_or(0)
    }

    /// The `listings` table after `time` (restored rows are not written again:
    /// `restored` is what the table held before the run).
    fn listings_at(&self, restored: &[ListingRow], time: u64) -> BTreeMap<ListingKey, ListingRow> {
        let mut table: BTreeMap<ListingKey, ListingRow> = restored
            .iter()
            .map(|row| (row.listing.clone(), row.clone()))
            .collect();
        let mut rows: Vec<&(u64, SinkRecord)> = self.records.iter().filter(|(t, _)| *t <= time).collect();
        rows.sort_by_key(|(t, _)| *t);
        for (_, record) in rows {
            if let SinkRecord::Listing(row) = record {
                table.insert(row.listing.clone(), row.clone());
            }
        }
        table
    }

    /// The summary tables as the sink leaves them, starting from `tables`.
    fn store_summaries(&self, tables: &mut Tables) {
        let mut times: Vec<u64> = self.records.iter().map(|(time, _)| *time).collect();
        times.sort();
        times.dedup();
        for time in times {
            let records: Vec<&SinkRecord> = self
                .records
                .iter()
                .filter(|(t, _)| *t == time)
                .map(|(_, record)| record)
                .collect();
            // Retractions first: an insertion in the same epoch is the key's new row.
            for record in &records {
                match record {
                    SinkRecord::EventSummary(change) if change.diff < 0 => {
                        tables.events.remove(&change.key);
                    }
                    SinkRecord::SectionSummary(change) if change.diff < 0 => {
                        tables.sections.remove(&change.key);
                    }
                    _ => {}
                }
            }
            for record in &records {
                match record {
                    SinkRecord::EventSummary(change) if change.diff > 0 => {
                        tables.events.insert(change.key.clone(), change.value);
                    }
                    SinkRecord::SectionSummary(change) if change.diff > 0 => {
                        tables.sections.insert(change.key.clone(), change.value);
                    }
                    _ => {}
                }
            }
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Tables {
    events: BTreeMap<EventCurrency, EventSummary>,
    sections: BTreeMap<SectionCurrency, SectionSummary>,
}

/// SPEC §3's aggregates, computed naively over a `listings` table: the oracle.
fn aggregates(listings: &BTreeMap<ListingKey, ListingRow>) -> Tables {
    let mut tables = Tables::default();
    for row in listings.values() {
        let event = tables
            .events
            .entry(EventCurrency {
                event_id: row.listing.event_id.clone(),
                currency: row.currency,
            })
            .or_insert(EventSummary {
                listings: 0,
                available: 0,
                get_in_price: None,
            });
        event.listings += 1;
        let section = tables
            .sections
            .entry(SectionCurrency {
                event_id: row.listing.event_id.clone(),
                section: row.listing.seat.section.clone(),
                currency: row.currency,
            })
            .or_insert(SectionSummary {
                available: 0,
                low_price: None,
            });
        if row.available {
            event.available += 1;
            event.get_in_price = Some(event.get_in_price.map_or(row.price, |low| low.min(row.price)));
            section.available += 1;
            section.low_price = Some(section.low_price.map_or(row.price, |low| low.min(row.price)));
        }
    }
    tables
}

// ---------------------------------------------------------------------------
// Building inputs.

fn event(event_id: &str, currency: Currency) -> EventCurrency {
    EventCurrency {
        event_id: event_id.into(),
        currency,
    }
}

fn section(event_id: &str, section: &str, currency: Currency) -> SectionCurrency {
    SectionCurrency {
        event_id: event_id.into(),
        section: section.into(),
        currency,
    }
}

fn summary(listings: i64, available: i64, get_in_price: Option<i64>) -> EventSummary {
    EventSummary {
        listings,
        available,
        get_in_price: get_in_price.map(Cents),
    }
}

fn low(available: i64, low_price: Option<i64>) -> SectionSummary {
    SectionSummary {
        available,
        low_price: low_price.map(Cents),
    }
}

/// Checks that after every epoch of `run` the collections, and the tables the
/// sink would have written, equal the aggregates over the listings.
fn assert_matches_listings(run: &Run, restored: &[ListingRow], mut tables: Tables) {
    for time in 0..=run.last_time() {
        let expected = aggregates(&run.listings_at(restored, time));
        assert_eq!(run.events_at(time), expected.events, "event_summary at {time}");
        assert_eq!(
            run.sections_at(time),
            expected.sections,
            "section_summary at {time}"
        );
    }
    run.store_summaries(&mut tables);
    assert_eq!(tables, aggregates(&run.listings_at(restored, run.last_time())));
}

// ---------------------------------------------------------------------------
// Scenarios.

#[test]
fn a_listing_drops_is_sold_comes_back_and_changes_currency() {
    let mut feed = Feed::default();
    let ev = event("ev", Currency::USD);
    let eur = event("ev", EUR);
    let a = section("ev", "A", Currency::USD);
    let a_eur = section("ev", "A", EUR);
    let run = run(vec![
        vec![],
        feed.epoch(&[obs("1", 1000, 1)]),
        feed.epoch(&[obs("1", 800, 2)]),
        feed.epoch(&[obs("1", 800, 3).sold()]),
        feed.epoch(&[obs("1", 900, 4)]),
        feed.epoch(&[obs("1", 700, 5).currency(EUR)]),
        // A change of time only changes no summary.
        feed.epoch(&[obs("1", 700, 6).currency(EUR)]),
    ]);
    let expected_events = [
        (1, vec![(ev.clone(), summary(1, 1, Some(1000)))]),
        (2, vec![(ev.clone(), summary(1, 1, Some(800)))]),
        (3, vec![(ev.clone(), summary(1, 0, None))]),
        (4, vec![(ev.clone(), summary(1, 1, Some(900)))]),
        (5, vec![(eur.clone(), summary(1, 1, Some(700)))]),
        (6, vec![(eur, summary(1, 1, Some(700)))]),
    ];
    for (time, expected) in expected_events {
        assert_eq!(run.events_at(time), expected.into_iter().collect(), "at {time}");
    }
    let expected_sections = [
        (1, vec![(a.clone(), low(1, Some(1000)))]),
        (2, vec![(a.clone(), low(1, Some(800)))]),
        (3, vec![(a.clone(), low(0, None))]),
        (4, vec![(a, low(1, Some(900)))]),
        (5, vec![(a_eur, low(1, Some(700)))]),
    ];
    for (time, expected) in expected_sections {
        assert_eq!(run.sections_at(time), expected.into_iter().collect(), "at {time}");
    }
    // Nothing changed at epoch 6.
    assert!(run.events.iter().all(|(_, time, _)| *time != 6));
    assert_matches_listings(&run, &[], Tables::default());
}

#[test]
fn two_listings_share_a_summary_until_one_leaves_the_currency() {
    let mut feed = Feed::default();
    let run = run(vec![
        vec![],
        feed.epoch(&[obs("1", 1000, 1), obs("2", 1200, 1).section("B")]),
        // Two changes of one listing in one epoch are one net change.
        feed.epoch(&[obs("2", 900, 2).section("B"), obs("2", 950, 3).section("B")]),
        feed.epoch(&[obs("2", 950, 4).section("B").sold()]),
        feed.epoch(&[obs("1", 1100, 5).currency(EUR)]),
        feed.epoch(&[obs("3", 10, 6).event("other")]),
    ]);
    let usd = event("ev", Currency::USD);
    assert_eq!(run.events_at(1)[&usd], summary(2, 2, Some(1000)));
    assert_eq!(run.events_at(2)[&usd], summary(2, 2, Some(950)));
    assert_eq!(run.events_at(3)[&usd], summary(2, 1, Some(1000)));
    assert_eq!(
        run.events_at(4),
        [
            (usd, summary(1, 0, None)),
            (event("ev", EUR), summary(1, 1, Some(1100)))
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(
        run.sections_at(3)[&section("ev", "B", Currency::USD)],
        low(0, None)
    );
    // Section A has no USD listing left: its row goes.
    assert!(!run
        .sections_at(4)
        .contains_key(&section("ev", "A", Currency::USD)));
    assert_eq!(
        run.events_at(5)[&event("other", Currency::USD)],
        summary(1, 1, Some(10))
    );
    assert_matches_listings(&run, &[], Tables::default());
}

#[test]
fn a_sold_listing_joining_a_section_rewrites_only_the_event_summary() {
    let mut feed = Feed::default();
    let run = run(vec![
        vec![],
        feed.epoch(&[obs("1", 1000, 1)]),
        feed.epoch(&[obs("2", 900, 2).sold()]),
    ]);
    // Section A's state went (1, 1, 1000) -> (2, 1, 1000): its summary did not
    // change, so nothing of it is written.
    let at_2: Vec<&SinkRecord> = run
        .records
        .iter()
        .filter(|(time, record)| {
            *time == 2
                && matches!(
                    record,
                    SinkRecord::EventSummary(_) | SinkRecord::SectionSummary(_)
                )
        })
        .map(|(_, record)| record)
        .collect();
    assert_eq!(at_2.len(), 2, "{at_2:?}");
    assert!(at_2
        .iter()
        .all(|record| matches!(record, SinkRecord::EventSummary(_))));
    assert_eq!(
        run.events_at(2)[&event("ev", Currency::USD)],
        summary(2, 1, Some(1000))
    );
    assert_matches_listings(&run, &[], Tables::default());
}

/// Many listings of a few events, sections and currencies, with drops, sales and
/// returns, stale and duplicate messages: a small deterministic generator.
fn generated(count: usize, seed: u64) -> Vec<Obs> {
    let mut state = seed;
    let mut next = move |below: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    (0..count)
        .map(|i| {
            let mut o = obs(
                &next(6).to_string(),
                100 + next(50) as i64 * 10,
                i as i64 / 2 + next(3) as i64,
            )
            .event(["e1", "e2", "e3"][next(3) as usize])
            .section(["A", "B"][next(2) as usize]);
            if next(5) == 0 {
                o = o.currency(EUR);
            }
            if next(4) == 0 {
                o = o.sold();
            }
            o
        })
        .collect()
}

fn epochs_of(
    restored: Vec<ProcessorInput>,
    observations: &[Obs],
    feed: &mut Feed,
    size: usize,
) -> Vec<Vec<ProcessorInput>> {
    let mut epochs = vec![restored];
    epochs.extend(observations.chunks(size).map(|chunk| feed.epoch(chunk)));
    epochs
}

#[test]
fn generated_input_gives_the_aggregates_on_any_number_of_workers() {
    let observations = generated(600, 3);
    let one = run_on(1, epochs_of(vec![], &observations, &mut Feed::default(), 50));
    assert_matches_listings(&one, &[], Tables::default());
    let three = run_on(3, epochs_of(vec![], &observations, &mut Feed::default(), 7));
    let whole = |run: &Run| (run.events_at(run.last_time()), run.sections_at(run.last_time()));
    assert_eq!(whole(&three), whole(&one));
}

#[test]
fn restore_then_continue_equals_an_uninterrupted_run() {
    let observations = generated(600, 9);
    let mut feed = Feed::default();
    let uninterrupted = run_on(2, epochs_of(vec![], &observations, &mut feed, 40));
    let mut expected = Tables::default();
    uninterrupted.store_summaries(&mut expected);

    for split in [1, 333, 599] {
        let (before, after) = observations.split_at(split);
        let mut feed = Feed::default();
        let first = run_on(2, epochs_of(vec![], before, &mut feed, 40));
        let mut tables = Tables::default();
        first.store_summaries(&mut tables);

        // What the sink stored, read back at start: the listings table.
        let stored: Vec<ListingRow> = first.listings_at(&[], first.last_time()).into_values().collect();
        let restore = stored
            .iter()
            .map(|row| ProcessorInput::Restore(Restore::Listing(row.clone())))
            .collect();
        let second = run_on(2, epochs_of(restore, after, &mut feed, 40));
        // The restored listings are in the collections at epoch 0 ...
        assert_eq!(
            Tables {
                events: second.events_at(0),
                sections: second.sections_at(0)
            },
            tables,
            "split at {split}"
        );
        // ... but not written again: the stored summaries already say so.
        assert!(
            second.records.iter().all(|(time, record)| *time > 0
                || !matches!(
                    record,
                    SinkRecord::EventSummary(_) | SinkRecord::SectionSummary(_)
                )),
            "split at {split}"
        );
        assert_matches_listings(&second, &stored, tables.clone());
        second.store_summaries(&mut tables);
        assert_eq!(tables, expected, "split at {split}");
    }
}

/// The processor emits a section's state only when its (listings, available,
/// low) changes, retracting exactly what it emitted before.
#[test]
fn section_states_change_only_when_a_section_does() {
    let mut processor = Processor::new(ProcessorConfig::default());
    let mut feed = Feed::default();
    let mut epoch = |observations: &[Obs]| processor.process_epoch(feed.epoch(observations)).section_changes;
    let state = |listings: i64, available: i64, low: Option<i64>| SectionState {
        listings,
        available,
        low: low.map(Cents),
    };
    let a = section("ev", "A", Currency::USD);
    let a_eur = section("ev", "A", EUR);
    let b = section("ev", "B", Currency::USD);

    assert_eq!(
        epoch(&[obs("1", 1000, 1), obs("2", 1200, 1)]),
        [((a.clone(), state(2, 2, Some(1000))), 1)]
    );
    // A price move of a listing that is not the section's lowest, and a new
    // time only: the section is as it was.
    assert_eq!(epoch(&[obs("2", 1100, 2)]), []);
    assert_eq!(epoch(&[obs("1", 1000, 3)]), []);
    // The lowest moves.
    assert_eq!(
        epoch(&[obs("1", 1050, 4)]),
        [
            ((a.clone(), state(2, 2, Some(1000))), -1),
            ((a.clone(), state(2, 2, Some(1050))), 1)
        ]
    );
    // Sold: still listed, no longer available.
    assert_eq!(
        epoch(&[obs("1", 1050, 5).sold()]),
        [
            ((a.clone(), state(2, 2, Some(1050))), -1),
            ((a.clone(), state(2, 1, Some(1100))), 1)
        ]
    );
    // Another section moves only its own state.
    assert_eq!(
        epoch(&[obs("3", 500, 6).section("B")]),
        [((b.clone(), state(1, 1, Some(500))), 1)]
    );
    // A sold listing changing currency leaves one key for another.
    assert_eq!(
        epoch(&[obs("1", 900, 7).currency(EUR).sold()]),
        [
            ((a_eur.clone(), state(1, 0, None)), 1),
            ((a.clone(), state(2, 1, Some(1100))), -1),
            ((a.clone(), state(1, 1, Some(1100))), 1)
        ]
    );
    // There and back within one epoch: nothing.
    assert_eq!(
        epoch(&[obs("1", 900, 8).sold(), obs("1", 900, 9).currency(EUR).sold()]),
        []
    );
    // The key's last listing leaves: its state is retracted, nothing replaces it.
    assert_eq!(
        epoch(&[obs("1", 900, 10).sold()]),
        [
            ((a_eur, state(1, 0, None)), -1),
            ((a.clone(), state(1, 1, Some(1100))), -1),
            ((a, state(2, 1, Some(1100))), 1)
        ]
    );
}
