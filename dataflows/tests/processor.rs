//! The processor operator end to end: in-memory inputs through timely, outputs
//! captured and compared exactly.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{mpsc, Arc, Mutex};

use conscope_dataflows::alert_id::alert_id;
use conscope_dataflows::model::{
    Alert, AlertKind, Carried, Cents, Counters, Currency, EventField, EventRow, ListingKey, ListingRow,
    Micros, Observation, Position, ProcessorInput, Restore, Rule, RuleChange, RuleKind, RuleMemory, Seat,
    SinkRecord, Stamped,
};
use conscope_dataflows::processor::{process, ProcessorConfig};
use conscope_dataflows::rules::DAY;
use timely::dataflow::operators::capture::Event;
use timely::dataflow::operators::Capture;
use timely::dataflow::InputHandleVec;

mod common;
use common::{feed_and_finish, obs, Feed, Obs};

const EUR: Currency = Currency(*b"EUR");

// ---------------------------------------------------------------------------
// Running the operator.

/// What a run produced, from all workers, with the epoch of each record, after
/// the writer's dedup of `MaybeStale` rows (see [`write_like_the_sink`]).
#[derive(Debug)]
struct Output {
    records: Vec<(u64, SinkRecord)>,
    /// The identities in `price_history` after the run.
    stored: HashSet<(ListingKey, Micros)>,
}

/// Runs `epochs` (epoch `i` at time `i`) through `process` on `workers` threads.
/// Each epoch's records are dealt round-robin to the workers, so they arrive at the
/// processor from several places in no particular order.
fn run_on(workers: usize, config: ProcessorConfig, epochs: Vec<Vec<ProcessorInput>>) -> Output {
    run_after(HashSet::new(), workers, config, epochs)
}

/// [`run_on`] on a database whose `price_history` holds `stored`.
fn run_after(
    stored: HashSet<(ListingKey, Micros)>,
    workers: usize,
    config: ProcessorConfig,
    epochs: Vec<Vec<ProcessorInput>>,
) -> Output {
    let epochs = Arc::new(epochs);
    let (send, recv) = mpsc::channel::<Event<u64, Vec<SinkRecord>>>();
    let send = Arc::new(Mutex::new(send));
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let send = send.lock().unwrap().clone();
        let mut input = InputHandleVec::<u64, ProcessorInput>::new();
        let config = config.clone();
        worker.dataflow::<u64, _, _>(|scope| {
            process(input.to_stream(scope), config).records.capture_into(send);
        });
        feed_and_finish(worker, input, &epochs);
    })
    .unwrap();
    for result in guards.join() {
        result.unwrap();
    }
    let mut records = Vec::new();
    let mut stored = stored;
    let mut uncounted: BTreeMap<u64, Counters> = BTreeMap::new();
    for event in recv.try_iter() {
        if let Event::Messages(stamp, data) = event {
            let time = *stamp.expect_singleton();
            let counted = uncounted.entry(time).or_default();
            for record in write_like_the_sink(data, &mut stored, counted) {
                records.push((time, record));
            }
        }
    }
    for (time, counters) in uncounted {
        if !counters.is_empty() {
            records.push((time, SinkRecord::Counters(counters)));
        }
    }
    Output { records, stored }
}

/// What the writer does with `MaybeStale` rows, in the order one worker emitted
/// them: the first of an identity not stored yet is a stale history row, the
/// others are duplicates. Their counts go into the next `Counters` record of the
/// epoch (`uncounted` until then).
fn write_like_the_sink(
    records: Vec<SinkRecord>,
    stored: &mut HashSet<(ListingKey, Micros)>,
    uncounted: &mut Counters,
) -> Vec<SinkRecord> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        match record {
            SinkRecord::History {
                row,
                position,
                carried,
            } => {
                assert!(
                    stored.insert((row.listing.clone(), row.observed_at)),
                    "a History row of a stored identity: {row:?}"
                );
                out.push(SinkRecord::History {
                    row,
                    position,
                    carried,
                });
            }
            SinkRecord::MaybeStale {
                row,
                position,
                fields,
            } => {
                if stored.insert((row.listing.clone(), row.observed_at)) {
                    uncounted.stale += 1;
                    uncounted.prices_stored += 1;
                    let carried = Carried::of_fields(fields.as_deref());
                    out.push(SinkRecord::History {
                        row,
                        position,
                        carried,
                    });
                } else {
                    uncounted.duplicates += 1;
                }
            }
            SinkRecord::Counters(mut counters) => {
                counters.add(uncounted);
                *uncounted = Counters::default();
                out.push(SinkRecord::Counters(counters));
            }
            other => out.push(other),
        }
    }
    out
}

fn run(epochs: Vec<Vec<ProcessorInput>>) -> Output {
    run_on(1, ProcessorConfig::default(), epochs)
}

impl Output {
    fn at(&self, time: u64) -> Vec<SinkRecord> {
        self.records
            .iter()
            .filter(|(t, _)| *t == time)
            .map(|(_, record)| record.clone())
            .collect()
    }

    fn alerts(&self) -> Vec<Alert> {
        self.records
            .iter()
            .filter_map(|(_, record)| match record {
                SinkRecord::Alert(alert) => Some(alert.clone()),
                _ => None,
            })
            .collect()
    }

    /// Alerts in a run-independent order.
    fn alert_set(&self) -> Vec<Alert> {
        let mut alerts = self.alerts();
        alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        alerts
    }

    /// `(kind, "section/row/seat", old, new, rule)` in emission order.
    fn alert_summary(&self) -> Vec<Brief> {
        self.alerts().iter().map(brief).collect()
    }

    fn history(&self) -> Vec<ListingRow> {
        self.records
            .iter()
            .filter_map(|(_, record)| match record {
                SinkRecord::History { row, .. } => Some(row.clone()),
                _ => None,
            })
            .collect()
    }

    fn history_set(&self) -> Vec<ListingRow> {
        let mut rows = self.history();
        rows.sort_by(|a, b| (&a.listing, a.observed_at).cmp(&(&b.listing, b.observed_at)));
        rows
    }

    fn counters(&self) -> Counters {
        let mut total = Counters::default();
        for (_, record) in &self.records {
            if let SinkRecord::Counters(counters) = record {
                total.add(counters);
            }
        }
        total
    }

    /// The last state emitted for every listing.
    fn final_listings(&self) -> BTreeMap<ListingKey, ListingRow> {
        let mut last = BTreeMap::new();
        for (time, record) in &self.records {
            if let SinkRecord::Listing(row) = record {
                let slot = last.entry(row.listing.clone()).or_insert((*time, row.clone()));
                if *time >= slot.0 {
                    *slot = (*time, row.clone());
                }
            }
        }
        last.into_iter().map(|(key, (_, row))| (key, row)).collect()
    }

    /// The last row emitted for every event.
    fn final_events(&self) -> BTreeMap<String, EventRow> {
        let mut last = BTreeMap::new();
        for (time, record) in &self.records {
            if let SinkRecord::Event(row) = record {
                let slot = last.entry(row.event_id.clone()).or_insert((*time, row.clone()));
                if *time >= slot.0 {
                    *slot = (*time, row.clone());
                }
            }
        }
        last.into_iter().map(|(key, (_, row))| (key, row)).collect()
    }

    /// The last persisted state of every rule. Within one epoch a rule's states
    /// come out in order from its one worker, so the last one wins.
    fn final_rule_states(&self) -> BTreeMap<i64, bool> {
        let mut states: BTreeMap<i64, (u64, bool)> = BTreeMap::new();
        for (time, record) in &self.records {
            if let SinkRecord::RuleState { rule_id, below } = record {
                let slot = states.entry(*rule_id).or_insert((*time, *below));
                if *time >= slot.0 {
                    *slot = (*time, *below);
                }
            }
        }
        states.into_iter().map(|(id, (_, below))| (id, below)).collect()
    }

    /// The last persisted memory of every rule that has one.
    fn final_rule_memories(&self) -> BTreeMap<i64, RuleMemory> {
        let mut memories: BTreeMap<i64, (u64, RuleMemory)> = BTreeMap::new();
        for (time, record) in &self.records {
            if let SinkRecord::RuleMemory { rule_id, memory } = record {
                let slot = memories.entry(*rule_id).or_insert((*time, (**memory).clone()));
                if *time >= slot.0 {
                    *slot = (*time, (**memory).clone());
                }
            }
        }
        memories
            .into_iter()
            .map(|(id, (_, memory))| (id, memory))
            .collect()
    }

    fn rule_states(&self) -> Vec<(i64, bool)> {
        self.records
            .iter()
            .filter_map(|(_, record)| match record {
                SinkRecord::RuleState { rule_id, below } => Some((*rule_id, *below)),
                _ => None,
            })
            .collect()
    }
}

type Brief = (&'static str, String, Option<i64>, i64, Option<i64>);

fn brief(alert: &Alert) -> Brief {
    let seat = &alert.listing.seat;
    (
        alert.kind.as_str(),
        format!("{}/{}/{}", seat.section, seat.row, seat.seat),
        alert.old_price.map(|c| c.0),
        alert.new_price.0,
        alert.rule_id,
    )
}

fn of_kind(briefs: Vec<Brief>, kind: AlertKind) -> Vec<Brief> {
    briefs.into_iter().filter(|b| b.0 == kind.as_str()).collect()
}

// ---------------------------------------------------------------------------
// Building inputs.

fn rule(rule_id: i64, section: Option<&str>, max_price: i64) -> Rule {
    kind_rule(
        rule_id,
        section,
        RuleKind::MaxPrice {
            max_price: Cents(max_price),
            rearm_bp: 0,
        },
        0,
    )
}

fn kind_rule(rule_id: i64, section: Option<&str>, kind: RuleKind, cooldown: Micros) -> Rule {
    Rule {
        rule_id,
        event_id: "ev".into(),
        section: section.map(Into::into),
        currency: Currency::USD,
        kind,
        cooldown,
    }
}

fn activate(rule: Rule) -> ProcessorInput {
    ProcessorInput::Rule(RuleChange::Activate { rule, state: None })
}

fn deactivate(rule_id: i64) -> ProcessorInput {
    ProcessorInput::Rule(RuleChange::Deactivate {
        rule_id,
        event_id: "ev".into(),
    })
}

fn counters(processed: u64, f: impl FnOnce(&mut Counters)) -> Counters {
    let mut counters = Counters {
        processed,
        ..Counters::default()
    };
    f(&mut counters);
    counters
}

// ---------------------------------------------------------------------------
// Scenarios.

#[test]
fn first_observation_creates_event_and_listing_exactly() {
    let mut feed = Feed::default();
    let a1 = obs("1", 1000, 10).named("Show");
    let out = run(vec![feed.epoch(std::slice::from_ref(&a1))]);
    assert_eq!(
        out.at(0),
        vec![
            SinkRecord::History {
                row: a1.row(),
                position: Position {
                    partition: 0,
                    offset: 1
                },
                carried: Carried::only(&[EventField::Name]),
            },
            SinkRecord::Event(EventRow {
                event_id: "ev".into(),
                event_name: Some(Stamped {
                    value: "Show".into(),
                    observed_at: 10,
                    position: Some(Position {
                        partition: 0,
                        offset: 1
                    }),
                }),
                venue: None,
                event_date: None,
                first_seen: 10,
                last_seen: 10,
            }),
            SinkRecord::Listing(a1.row()),
            SinkRecord::Counters(counters(1, |c| {
                c.events_created = 1;
                c.prices_stored = 1;
            })),
        ]
    );
    assert!(out.alerts().is_empty(), "a first listing is not a drop");
}

#[test]
fn duplicates_are_counted_and_change_nothing_first_wins() {
    let mut feed = Feed::default();
    let first = obs("1", 1000, 10);
    let retry = obs("1", 500, 10).named("Other");
    let out = run(vec![
        feed.epoch(&[first.clone(), retry.clone()]),
        feed.epoch(std::slice::from_ref(&retry)),
    ]);
    assert_eq!(out.history(), vec![first.row()]);
    assert_eq!(out.final_listings()[&first.key()], first.row());
    assert_eq!(out.final_events()["ev"].event_name, None);
    assert!(out.alerts().is_empty());
    assert_eq!(
        out.at(1),
        vec![SinkRecord::Counters(counters(1, |c| c.duplicates = 1))],
        "a duplicate-only epoch writes nothing but counters"
    );
    assert_eq!(
        out.counters(),
        counters(3, |c| {
            c.duplicates = 2;
            c.prices_stored = 1;
            c.events_created = 1;
        })
    );
}

#[test]
fn stale_observation_goes_to_history_and_first_seen_only() {
    let mut feed = Feed::default();
    let current = obs("1", 1000, 10);
    let stale = obs("1", 1, 5).named("Old name");
    let out = run(vec![
        feed.epoch(std::slice::from_ref(&current)),
        feed.epoch(std::slice::from_ref(&stale)),
    ]);
    assert_eq!(
        out.at(1),
        vec![
            SinkRecord::History {
                row: stale.row(),
                position: Position {
                    partition: 0,
                    offset: 2
                },
                carried: Carried::only(&[EventField::Name]),
            },
            SinkRecord::Event(EventRow {
                event_id: "ev".into(),
                // Its name is not applied here: only the writer knows the row
                // is stale rather than a duplicate, and it applies a stale
                // row's fields itself (`fields` of the MaybeStale record). As
                // a stored observation it is the event's first.
                event_name: None,
                venue: None,
                event_date: None,
                first_seen: 5,
                last_seen: 10,
            }),
            SinkRecord::Counters(counters(1, |c| {
                c.prices_stored = 1;
                c.stale = 1;
            })),
        ]
    );
    assert_eq!(out.final_listings()[&current.key()], current.row());
    assert!(out.alerts().is_empty());
}

#[test]
fn sold_then_relisted_is_no_listing_drop() {
    let mut feed = Feed::default();
    let out = run(vec![feed.epoch(&[
        obs("1", 1000, 1),
        obs("2", 1200, 2),
        obs("1", 1000, 3).sold(),
        obs("1", 500, 4),
        // An event whose only listing sells and comes back cheaper: the scope
        // emptied in between, so that is no drop of its get-in price either.
        obs("1", 1000, 1).event("solo"),
        obs("1", 1000, 2).event("solo").sold(),
        obs("1", 500, 3).event("solo"),
    ])]);
    assert_eq!(
        out.alert_summary(),
        vec![("event_low", "A/1/1".into(), Some(1200), 500, None)]
    );
    let solo = obs("1", 500, 3).event("solo");
    assert_eq!(out.final_listings()[&solo.key()], solo.row());
}

#[test]
fn currencies_have_separate_get_in_prices() {
    let mut feed = Feed::default();
    let out = run(vec![feed.epoch(&[
        obs("1", 1000, 1),
        obs("2", 900, 2).currency(EUR),
        obs("3", 800, 3).currency(EUR),
        obs("4", 950, 4),
        // Moving to another currency: no listing_drop, USD get-in goes up (from
        // 950 it stays 950), EUR goes down.
        obs("1", 700, 5).currency(EUR),
    ])]);
    let alerts = out.alerts();
    let got: Vec<(Brief, Currency)> = alerts.iter().map(|a| (brief(a), a.currency)).collect();
    assert_eq!(
        got,
        vec![
            (("event_low", "A/1/3".into(), Some(900), 800, None), EUR),
            (
                ("event_low", "A/1/4".into(), Some(1000), 950, None),
                Currency::USD
            ),
            (("event_low", "A/1/1".into(), Some(800), 700, None), EUR),
        ]
    );
}

#[test]
fn equal_prices_are_no_drop() {
    let mut feed = Feed::default();
    let out = run(vec![feed.epoch(&[
        obs("1", 1000, 1),
        obs("2", 1000, 2),
        obs("1", 1000, 3),
    ])]);
    assert!(out.alerts().is_empty());
}

#[test]
fn listing_drop_threshold_is_inclusive() {
    let mut feed = Feed::default();
    let out = run(vec![feed.epoch(&[
        obs("1", 10000, 1).event("exact"),
        obs("1", 9500, 2).event("exact"),
        obs("1", 10000, 1).event("under"),
        obs("1", 9501, 2).event("under"),
    ])]);
    let drops: Vec<(String, i64)> = out
        .alerts()
        .iter()
        .filter(|a| a.kind == AlertKind::ListingDrop)
        .map(|a| (a.listing.event_id.clone(), a.new_price.0))
        .collect();
    assert_eq!(drops, vec![("exact".to_string(), 9500)]);

    let mut feed = Feed::default();
    let config = ProcessorConfig {
        min_drop_basis_points: 250,
    };
    let out = run_on(
        1,
        config,
        vec![feed.epoch(&[obs("1", 10000, 1), obs("1", 9750, 2), obs("1", 9600, 3)])],
    );
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::ListingDrop),
        vec![("listing_drop", "A/1/1".into(), Some(10000), 9750, None)],
        "2.5%: 9750 is exactly 2.5% off, 9600 only 1.54% off 9750"
    );
}

#[test]
fn two_drops_in_one_epoch_are_two_alerts() {
    let mut feed = Feed::default();
    let out = run(vec![
        feed.epoch(&[obs("1", 10000, 1)]),
        feed.epoch(&[obs("1", 9000, 2), obs("1", 8000, 3)]),
    ]);
    assert_eq!(
        out.alert_summary(),
        vec![
            ("listing_drop", "A/1/1".into(), Some(10000), 9000, None),
            ("event_low", "A/1/1".into(), Some(10000), 9000, None),
            ("listing_drop", "A/1/1".into(), Some(9000), 8000, None),
            ("event_low", "A/1/1".into(), Some(9000), 8000, None),
        ]
    );
    let listing_rows: Vec<SinkRecord> = out
        .at(1)
        .into_iter()
        .filter(|r| matches!(r, SinkRecord::Listing(_)))
        .collect();
    assert_eq!(
        listing_rows,
        vec![SinkRecord::Listing(obs("1", 8000, 3).row())],
        "one final listing row per epoch"
    );
    assert_eq!(out.counters().listing_drop, 2);
    assert_eq!(out.counters().event_low, 2);
}

#[test]
fn event_low_needs_a_previous_get_in_price() {
    let mut feed = Feed::default();
    let out = run(vec![feed.epoch(&[
        obs("1", 1000, 1),
        obs("2", 1100, 2),
        obs("3", 999, 3),
    ])]);
    assert_eq!(
        out.alert_summary(),
        vec![("event_low", "A/1/3".into(), Some(1000), 999, None)]
    );
}

#[test]
fn rule_fires_rearms_and_fires_again() {
    let mut feed = Feed::default();
    let out = run(vec![
        vec![activate(rule(7, None, 1000))],
        feed.epoch(&[
            obs("1", 1200, 1),
            obs("1", 1000, 2),       // fires: 1200 -> 1000
            obs("1", 900, 3),        // still below
            obs("1", 1100, 4),       // re-arms
            obs("1", 950, 5),        // fires again
            obs("1", 950, 6).sold(), // scope empties: re-arms
            obs("1", 800, 7),        // fires from an empty scope
        ]),
    ]);
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::RuleMatch),
        vec![
            ("rule_match", "A/1/1".into(), Some(1200), 1000, Some(7)),
            ("rule_match", "A/1/1".into(), Some(1100), 950, Some(7)),
            ("rule_match", "A/1/1".into(), None, 800, Some(7)),
        ]
    );
    // One state per rule and epoch, the last: the sink may receive an epoch's
    // records in any order, so a sequence within an epoch could be stored
    // reversed.
    assert_eq!(out.rule_states(), vec![(7, false), (7, true)]);
    let fired = out
        .alerts()
        .into_iter()
        .find(|a| a.kind == AlertKind::RuleMatch)
        .unwrap();
    assert_eq!(fired.observed_at, 2);
    assert_eq!(fired.currency, Currency::USD);
    assert_eq!(fired.event_name, "ev");
}

#[test]
fn section_rule_ignores_other_sections() {
    let mut feed = Feed::default();
    let out = run(vec![
        vec![activate(rule(1, Some("A"), 1000))],
        feed.epoch(&[obs("1", 500, 1).section("B"), obs("1", 1500, 2), obs("1", 900, 3)]),
    ]);
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::RuleMatch),
        vec![("rule_match", "A/1/1".into(), Some(1500), 900, Some(1))]
    );
}

#[test]
fn rule_added_while_below_fires_at_once_naming_the_lowest_listing() {
    let mut feed = Feed::default();
    let out = run(vec![
        feed.epoch(&[
            obs("3", 700, 1),
            obs("1", 700, 2).section("B"),
            obs("9", 700, 3),
            obs("5", 900, 4),
        ]),
        vec![
            activate(rule(1, None, 1000)),
            activate(rule(2, Some("C"), 1000)),
            activate(rule(3, None, 600)),
        ],
    ]);
    let alerts = out.alerts();
    let rule_alerts: Vec<&Alert> = alerts.iter().filter(|a| a.kind == AlertKind::RuleMatch).collect();
    assert_eq!(rule_alerts.len(), 1);
    let alert = rule_alerts[0];
    // Ties at 700: the smallest (section, row, seat, source) is A/1/3, observed at 1.
    assert_eq!(brief(alert), ("rule_match", "A/1/3".into(), None, 700, Some(1)));
    assert_eq!(alert.observed_at, 1);
    assert_eq!(
        out.at(1)
            .into_iter()
            .filter(|r| matches!(r, SinkRecord::RuleState { .. }))
            .collect::<Vec<_>>(),
        vec![
            SinkRecord::RuleState {
                rule_id: 1,
                below: true
            },
            SinkRecord::RuleState {
                rule_id: 2,
                below: false
            },
            SinkRecord::RuleState {
                rule_id: 3,
                below: false
            },
        ]
    );
    assert_eq!(out.counters().rule_match, 1);
}

#[test]
fn deactivated_rule_does_not_fire() {
    let mut feed = Feed::default();
    let out = run(vec![
        vec![activate(rule(1, None, 1000)), activate(rule(2, None, 1000))],
        vec![deactivate(1), feed.msg(&obs("1", 1500, 1))],
        // Deactivation and the would-be trigger in one epoch: rule changes apply
        // first.
        vec![feed.msg(&obs("1", 500, 2)), deactivate(2)],
    ]);
    assert!(of_kind(out.alert_summary(), AlertKind::RuleMatch).is_empty());
}

#[test]
fn restored_rule_that_is_below_does_not_fire_again() {
    let a1 = obs("1", 500, 1);
    let mut feed = Feed::default();
    let out = run(vec![
        vec![
            ProcessorInput::Restore(Restore::Listing(a1.row())),
            ProcessorInput::Rule(RuleChange::Activate {
                rule: rule(1, None, 1000),
                state: Some(RuleMemory {
                    below: true,
                    ..RuleMemory::default()
                }),
            }),
        ],
        feed.epoch(&[obs("1", 400, 2), obs("1", 1200, 3), obs("1", 900, 4)]),
    ]);
    assert!(out.at(0).is_empty(), "restoring writes nothing");
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::RuleMatch),
        vec![("rule_match", "A/1/1".into(), Some(1200), 900, Some(1))]
    );
    assert_eq!(out.counters().events_created, 1, "no Restore::Event was given");
}

#[test]
fn restored_event_is_not_created_again() {
    let a1 = obs("1", 500, 1).named("Show");
    let event = EventRow {
        event_id: "ev".into(),
        event_name: Some(Stamped {
            value: "Show".into(),
            observed_at: 1,
            position: None,
        }),
        venue: None,
        event_date: None,
        first_seen: 1,
        last_seen: 1,
    };
    let mut feed = Feed::default();
    let out = run(vec![
        vec![
            ProcessorInput::Restore(Restore::Event(event)),
            ProcessorInput::Restore(Restore::Listing(a1.row())),
        ],
        feed.epoch(&[a1.clone(), obs("1", 400, 2)]),
    ]);
    assert_eq!(
        out.counters(),
        counters(2, |c| {
            c.duplicates = 1;
            c.prices_stored = 1;
            c.listing_drop = 1;
            c.event_low = 1;
        })
    );
    assert_eq!(out.alerts()[0].event_name, "Show");
}

#[test]
fn alert_ids_are_stable_and_depend_on_the_rule() {
    let inputs = || {
        let mut feed = Feed::default();
        vec![
            vec![activate(rule(1, None, 1000)), activate(rule(2, None, 1000))],
            feed.epoch(&[obs("1", 1500, 1), obs("1", 900, 2)]),
        ]
    };
    let first = run(inputs()).alerts();
    let second = run(inputs()).alerts();
    assert_eq!(first, second);
    let rule_ids: Vec<&str> = first
        .iter()
        .filter(|a| a.kind == AlertKind::RuleMatch)
        .map(|a| a.alert_id.as_str())
        .collect();
    assert_eq!(rule_ids.len(), 2);
    assert_ne!(rule_ids[0], rule_ids[1]);
    for alert in &first {
        assert_eq!(
            alert.alert_id,
            alert_id(
                alert.kind,
                &alert.listing,
                alert.observed_at,
                alert.rule_id,
                alert.currency
            )
        );
    }
    // Another partition and offsets: the same ids.
    let moved = inputs()
        .into_iter()
        .map(|epoch| {
            epoch
                .into_iter()
                .map(|record| match record {
                    ProcessorInput::Observation {
                        position,
                        observation,
                    } => ProcessorInput::Observation {
                        position: Position {
                            partition: 5,
                            offset: position.offset + 1000,
                        },
                        observation,
                    },
                    other => other,
                })
                .collect()
        })
        .collect();
    assert_eq!(run(moved).alerts(), first);
}

// ---------------------------------------------------------------------------
// Generated workloads: determinism and restore.

/// A small deterministic PRNG (SplitMix64), so the workload is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const EVENTS: usize = 6;
const PARTITIONS: i32 = 3;

/// Rules present at start, over the generated events: every kind, some with
/// a cooldown.
fn generated_rules() -> Vec<Rule> {
    let mut rules = Vec::new();
    for event in 0..EVENTS {
        let event_id = format!("e{event}");
        let mut add =
            |n: i64, section: Option<&str>, currency: Currency, kind: RuleKind, cooldown: Micros| {
                rules.push(Rule {
                    rule_id: event as i64 * 10 + n,
                    event_id: event_id.clone(),
                    section: section.map(Into::into),
                    currency,
                    kind,
                    cooldown,
                })
            };
        let max_price = |cents: i64| RuleKind::MaxPrice {
            max_price: Cents(cents),
            rearm_bp: 0,
        };
        add(1, None, Currency::USD, max_price(9000), 0);
        add(2, Some("B"), Currency::USD, max_price(9500), 0);
        add(3, None, EUR, max_price(8500), 0);
        add(
            4,
            None,
            Currency::USD,
            RuleKind::MaxPrice {
                max_price: Cents(9500),
                rearm_bp: 500,
            },
            2 * HOUR,
        );
        add(
            5,
            None,
            Currency::USD,
            RuleKind::NewLow {
                window_days: 1,
                max_price: None,
            },
            0,
        );
        add(
            6,
            Some("A"),
            Currency::USD,
            RuleKind::NewLow {
                window_days: 2,
                max_price: Some(Cents(9000)),
            },
            3 * HOUR,
        );
        add(
            7,
            Some("B"),
            Currency::USD,
            RuleKind::BackInStock { max_price: None },
            0,
        );
        add(
            8,
            None,
            Currency::USD,
            RuleKind::BackInStock {
                max_price: Some(Cents(8000)),
            },
            HOUR,
        );
        add(9, None, Currency::USD, RuleKind::Deal { deal_pct: 10 }, 0);
        add(
            0,
            Some("A"),
            Currency::USD,
            RuleKind::Deal { deal_pct: 5 },
            4 * HOUR,
        );
    }
    rules
}

const HOUR: Micros = DAY / 24;

/// The generated clock's unit: a minute, so that `new_low` windows of days
/// and cooldowns of hours both open and close within a workload.
const MINUTE: Micros = 60_000_000;

/// A messy stream in partition order: each event lives in one partition (producers
/// key by event), with random-walk prices, sales, currency changes, retries
/// (duplicates) and late (stale) observations.
fn generated_messages(seed: u64, count: usize) -> Vec<ProcessorInput> {
    let mut rng = Rng(seed);
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut prices: HashMap<(usize, u64), i64> = HashMap::new();
    let mut clock = [0i64; EVENTS];
    let mut sent: Vec<(Position, Observation)> = Vec::new();
    let mut messages = Vec::new();
    for _ in 0..count {
        let event = rng.below(EVENTS as u64) as usize;
        let partition = event as i32 % PARTITIONS;
        let offset = offsets[partition as usize];
        offsets[partition as usize] += 1;
        let position = Position { partition, offset };

        if rng.below(100) < 8 {
            // A retry of an earlier message of this partition, possibly with
            // another price: same identity, so a duplicate.
            let earlier: Vec<&(Position, Observation)> =
                sent.iter().filter(|(p, _)| p.partition == partition).collect();
            if !earlier.is_empty() {
                let mut observation = earlier[rng.below(earlier.len() as u64) as usize].1.clone();
                observation.price = Cents(observation.price.0 + 1);
                messages.push(ProcessorInput::Observation {
                    position,
                    observation,
                });
                continue;
            }
        }

        // Six listings per section: deals need five available.
        let listing = rng.below(12);
        clock[event] += 1 + rng.below(1000) as i64;
        let mut observed_at = clock[event];
        if rng.below(100) < 7 {
            observed_at -= 1 + rng.below(3000) as i64; // late: often stale
        }
        let price = prices.entry((event, listing)).or_insert(10_000);
        let step = rng.below(21) as i64 - 12; // drifts down, -12%..+8%
        *price = (*price + *price * step / 100).clamp(100, 50_000);
        let observation = Observation {
            listing: ListingKey {
                event_id: format!("e{event}"),
                seat: Seat {
                    section: if listing.is_multiple_of(2) { "A" } else { "B" }.into(),
                    row: format!("{}", listing / 4),
                    seat: format!("{}", listing % 4),
                    source: if listing.is_multiple_of(3) { "x" } else { "y" }.into(),
                },
            },
            event_name: (rng.below(4) == 0).then(|| format!("Event {event} v{}", rng.below(5))),
            venue: (rng.below(6) == 0).then(|| format!("Venue {}", rng.below(3))),
            event_date: (rng.below(8) == 0).then(|| rng.below(1000) as i64),
            price: Cents(*price),
            currency: if rng.below(10) == 0 { EUR } else { Currency::USD },
            available: rng.below(10) != 0,
            observed_at: 1_000_000 + observed_at * MINUTE,
        };
        sent.push((position, observation.clone()));
        messages.push(ProcessorInput::Observation {
            position,
            observation,
        });
    }
    messages
}

/// Epoch 0 activates the rules; the messages follow in chunks of `chunk`.
fn epochs_of(
    rules: &[ProcessorInput],
    messages: &[ProcessorInput],
    chunk: usize,
) -> Vec<Vec<ProcessorInput>> {
    let mut epochs = vec![rules.to_vec()];
    epochs.extend(messages.chunks(chunk).map(<[ProcessorInput]>::to_vec));
    epochs
}

fn rule_inputs() -> Vec<ProcessorInput> {
    generated_rules().into_iter().map(activate).collect()
}

#[test]
fn same_results_for_any_batching_and_worker_count() {
    let messages = generated_messages(42, 1500);
    let rules = rule_inputs();
    let reference = run_on(
        1,
        ProcessorConfig::default(),
        epochs_of(&rules, &messages, messages.len()),
    );
    let kinds = reference.counters();
    assert!(
        kinds.listing_drop > 0 && kinds.event_low > 0 && kinds.rule_match > 0,
        "{kinds:?}"
    );
    assert!(
        kinds.new_low > 0 && kinds.back_in_stock > 0 && kinds.deal > 0,
        "{kinds:?}"
    );
    assert!(kinds.duplicates > 0 && kinds.stale > 0, "{kinds:?}");
    assert_eq!(kinds.events_created, EVENTS as u64);

    for (workers, chunk) in [(1, 1), (1, 37), (4, 1), (4, 250), (4, messages.len())] {
        let other = run_on(
            workers,
            ProcessorConfig::default(),
            epochs_of(&rules, &messages, chunk),
        );
        let what = format!("{workers} workers, chunks of {chunk}");
        assert_eq!(other.alert_set(), reference.alert_set(), "{what}");
        assert_eq!(other.history_set(), reference.history_set(), "{what}");
        assert_eq!(other.final_listings(), reference.final_listings(), "{what}");
        assert_eq!(other.final_events(), reference.final_events(), "{what}");
        assert_eq!(other.final_rule_states(), reference.final_rule_states(), "{what}");
        assert_eq!(
            other.final_rule_memories(),
            reference.final_rule_memories(),
            "{what}"
        );
        assert_eq!(other.counters(), reference.counters(), "{what}");
    }
}

/// What the sink would have stored after `out`, read back as restore records.
fn restore_from(out: &Output) -> Vec<ProcessorInput> {
    restore_with(out, generated_rules())
}

/// [`restore_from`] with `rules` active.
fn restore_with(out: &Output, rules: Vec<Rule>) -> Vec<ProcessorInput> {
    let mut records = Vec::new();
    for row in out.final_events().into_values() {
        records.push(ProcessorInput::Restore(Restore::Event(row)));
    }
    for row in out.final_listings().into_values() {
        records.push(ProcessorInput::Restore(Restore::Listing(row)));
    }
    let states = out.final_rule_states();
    let memories = out.final_rule_memories();
    for rule in rules {
        let below = states.get(&rule.rule_id).copied();
        assert!(below.is_some(), "every evaluated rule has a persisted state");
        // As the sink stores them: `below` in its column, the rest beside it.
        let state = below.map(|below| RuleMemory {
            below,
            ..memories.get(&rule.rule_id).cloned().unwrap_or_default()
        });
        records.push(ProcessorInput::Rule(RuleChange::Activate { rule, state }));
    }
    records
}

#[test]
fn restore_then_continue_equals_an_uninterrupted_run() {
    let messages = generated_messages(7, 1200);
    let rules = rule_inputs();
    let whole = run_on(2, ProcessorConfig::default(), epochs_of(&rules, &messages, 100));

    for split in [1, 555, 1100] {
        let (before, after) = messages.split_at(split);
        let first = run_on(2, ProcessorConfig::default(), epochs_of(&rules, before, 100));
        let second = run_after(
            first.stored.clone(),
            2,
            ProcessorConfig::default(),
            epochs_of(&restore_from(&first), after, 100),
        );

        let mut alerts = first.alert_set();
        alerts.extend(second.alert_set());
        alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_eq!(alerts, whole.alert_set(), "split at {split}");

        let mut history = first.history();
        history.extend(second.history());
        history.sort_by(|a, b| (&a.listing, a.observed_at).cmp(&(&b.listing, b.observed_at)));
        assert_eq!(history, whole.history_set(), "split at {split}");

        let mut listings = first.final_listings();
        listings.extend(second.final_listings());
        assert_eq!(listings, whole.final_listings(), "split at {split}");

        let mut events = first.final_events();
        events.extend(second.final_events());
        assert_eq!(events, whole.final_events(), "split at {split}");

        let mut rule_states = first.final_rule_states();
        rule_states.extend(second.final_rule_states());
        assert_eq!(rule_states, whole.final_rule_states(), "split at {split}");

        let mut memories = first.final_rule_memories();
        memories.extend(second.final_rule_memories());
        assert_eq!(memories, whole.final_rule_memories(), "split at {split}");

        let mut counters = first.counters();
        counters.add(&second.counters());
        assert_eq!(counters, whole.counters(), "split at {split}");
    }
}

// ---------------------------------------------------------------------------
// Rule kinds (SPEC §2b): each kind's edges, each sequence also checked across
// epoch boundaries and restarts.

/// Runs `messages` with `rules` active: one message per epoch, all in one
/// epoch, and cut at every point by a restart (restored from what the first
/// part persisted). All must give the same alerts; returns the first run.
fn run_kinds(rules: &[Rule], messages: &[Obs]) -> Output {
    let mut feed = Feed::default();
    let inputs = feed.epoch(messages);
    let activations: Vec<ProcessorInput> = rules.iter().cloned().map(activate).collect();
    let whole = run(epochs_of(&activations, &inputs, 1));
    let one_epoch = run(epochs_of(&activations, &inputs, inputs.len()));
    assert_eq!(one_epoch.alert_set(), whole.alert_set(), "in one epoch");
    for split in 1..inputs.len() {
        let (before, after) = inputs.split_at(split);
        let first = run(epochs_of(&activations, before, 1));
        let second = run_after(
            first.stored.clone(),
            1,
            ProcessorConfig::default(),
            epochs_of(&restore_with(&first, rules.to_vec()), after, 1),
        );
        let mut alerts = first.alert_set();
        alerts.extend(second.alert_set());
        alerts.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        assert_eq!(alerts, whole.alert_set(), "restarted after message {split}");
    }
    whole
}

fn new_low(window_days: u32, max_price: Option<i64>) -> RuleKind {
    RuleKind::NewLow {
        window_days,
        max_price: max_price.map(Cents),
    }
}

#[test]
fn new_low_equal_to_the_window_low_does_not_fire() {
    let out = run_kinds(
        &[kind_rule(1, None, new_low(30, None), 0)],
        &[
            obs("1", 1000, 1), // the first value: nothing held before it
            obs("2", 900, 2),  // below 1000
            obs("2", 1100, 3), // L back to 1000
            obs("2", 900, 4),  // equal to the window's low: no
            obs("3", 899, 5),  // strictly below
        ],
    );
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::NewLow),
        vec![
            ("new_low", "A/1/2".into(), Some(1000), 900, Some(1)),
            ("new_low", "A/1/3".into(), Some(900), 899, Some(1)),
        ]
    );
}

#[test]
fn new_low_counts_the_value_in_effect_w_days_ago() {
    let out = run_kinds(
        &[kind_rule(1, None, new_low(1, None), 0)],
        &[
            obs("1", 100, 0),
            obs("1", 200, 10), // 100 held until 10
            // Exactly a day after 100 stopped: it was in effect at the window's
            // start, so 150 is no new low.
            obs("2", 150, 10 + DAY),
            // A microsecond later 100 is out; 150 and 200 remain.
            obs("2", 140, 11 + DAY),
        ],
    );
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::NewLow),
        vec![("new_low", "A/1/2".into(), Some(150), 140, Some(1))]
    );
}

#[test]
fn new_low_respects_max_price_and_a_rule_added_later_starts_from_now() {
    let mut feed = Feed::default();
    let out = run(vec![
        feed.epoch(&[obs("1", 500, 1)]),
        vec![activate(kind_rule(1, None, new_low(30, Some(450)), 0))],
        feed.epoch(&[obs("2", 480, 2), obs("3", 440, 3)]),
    ]);
    // 480 is a new low but above max_price; 440 is below the window's 480.
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::NewLow),
        vec![("new_low", "A/1/3".into(), Some(480), 440, Some(1))]
    );
}

#[test]
fn a_scope_that_empties_and_comes_back() {
    let rules = [
        kind_rule(1, None, new_low(30, None), 0),
        kind_rule(2, None, RuleKind::BackInStock { max_price: None }, 0),
        rule(3, None, 1000),
    ];
    let out = run_kinds(
        &rules,
        &[
            obs("1", 900, 1),        // never listed, then available
            obs("1", 900, 2).sold(), // empty: holds no value
            obs("1", 950, 3),        // back; 900 was held within the window
            obs("1", 800, 4),        // a new low
            obs("1", 800, 5).sold(), // empty again
            obs("2", 1200, 6),       // back, above max_price
        ],
    );
    let briefs = out.alert_summary();
    assert_eq!(
        of_kind(briefs.clone(), AlertKind::NewLow),
        vec![("new_low", "A/1/1".into(), Some(900), 800, Some(1))]
    );
    assert_eq!(
        of_kind(briefs.clone(), AlertKind::BackInStock),
        vec![
            ("back_in_stock", "A/1/1".into(), None, 900, Some(2)),
            ("back_in_stock", "A/1/1".into(), None, 950, Some(2)),
            ("back_in_stock", "A/1/2".into(), None, 1200, Some(2)),
        ]
    );
    // An emptied scope re-arms max_price: it fires on each return below.
    assert_eq!(
        of_kind(briefs, AlertKind::RuleMatch),
        vec![
            ("rule_match", "A/1/1".into(), None, 900, Some(3)),
            ("rule_match", "A/1/1".into(), None, 950, Some(3)),
        ]
    );
}

#[test]
fn back_in_stock_under_max_price_and_not_at_once() {
    let mut feed = Feed::default();
    let out = run(vec![
        feed.epoch(&[obs("1", 500, 1)]),
        // Added while A ≥ 1: no alert at once, none while A stays ≥ 1.
        vec![activate(kind_rule(
            1,
            None,
            RuleKind::BackInStock {
                max_price: Some(Cents(600)),
            },
            0,
        ))],
        feed.epoch(&[
            obs("2", 400, 2),
            obs("1", 700, 3),
            obs("2", 650, 4),
            obs("3", 600, 5),
        ]),
    ]);
    // After 2 goes to 650 nothing is under 600: A = 0; 3 at 600 brings it back.
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::BackInStock),
        vec![("back_in_stock", "A/1/3".into(), None, 600, Some(1))]
    );
}

#[test]
fn a_deal_needs_five_listings_and_only_its_own_message_judges_it() {
    let deal = |pct| RuleKind::Deal { deal_pct: pct };
    let out = run_kinds(
        &[kind_rule(1, Some("A"), deal(20), 0)],
        &[
            obs("1", 1000, 1),
            obs("2", 1000, 2),
            obs("3", 1000, 3),
            obs("4", 500, 4),               // four listings: not judged a deal
            obs("5", 1000, 5),              // five now, but 4's own message was before
            obs("4", 800, 6),               // median 1000, 800 ≤ 1000 × 0.8: a deal
            obs("4", 790, 7),               // still a deal: no second alert
            obs("5", 1000, 8).sold(),       // four available again; 4 stays flagged
            obs("4", 780, 9),               // no deal (four listings): re-arms
            obs("5", 1000, 10),             // five again
            obs("4", 770, 11),              // a deal again
            obs("6", 100, 12).section("B"), // another section: out of scope
        ],
    );
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::Deal),
        vec![
            ("deal", "A/1/4".into(), Some(1000), 800, Some(1)),
            ("deal", "A/1/4".into(), Some(1000), 770, Some(1)),
        ]
    );
}

#[test]
fn deal_uses_the_lower_median() {
    // 200, 300, 400, 500, 600, then 240: six listings, the lower median is 300.
    let mut messages: Vec<Obs> = (1..=5).map(|n| obs(&n.to_string(), n * 100 + 100, n)).collect();
    messages.push(obs("6", 240, 6)); // ≤ 300 × 0.8 = 240
    messages.push(obs("7", 250, 7)); // seven: median 300, and 250 > 240
    let out = run_kinds(
        &[kind_rule(1, None, RuleKind::Deal { deal_pct: 20 }, 0)],
        &messages,
    );
    assert_eq!(
        of_kind(out.alert_summary(), AlertKind::Deal),
        vec![("deal", "A/1/6".into(), Some(300), 240, Some(1))]
    );
}

#[test]
fn max_price_hysteresis_and_cooldown_across_epochs_and_restarts() {
    let kind = RuleKind::MaxPrice {
        max_price: Cents(1000),
        rearm_bp: 1000, // re-arms above 1100
    };
    let out = run_kinds(
        &[kind_rule(1, None, kind, 0), kind_rule(2, None, kind, 50)],
        &[
            obs("1", 1000, 1),  // both fire
            obs("1", 1100, 10), // inside the band: no re-arm
            obs("1", 990, 20),  // still fired: nothing
            obs("1", 1101, 30), // above the band: both re-arm
            obs("1", 999, 40),  // 1 fires; 2 is cooling (1 + 50 ≥ 40): swallowed, counts as fired
            obs("1", 998, 60),  // 2 is past its cooldown but fired: nothing
            obs("1", 1200, 70), // both re-arm
            obs("1", 900, 80),  // both fire (2: 80 > 1 + 50)
        ],
    );
    let fired: Vec<(i64, Micros)> = out
        .alerts()
        .iter()
        .filter(|a| a.kind == AlertKind::RuleMatch)
        .map(|a| (a.rule_id.unwrap_or(0), a.observed_at))
        .collect();
    assert_eq!(fired, vec![(1, 1), (2, 1), (1, 40), (1, 80), (2, 80)]);
}

#[test]
fn cooldown_is_in_event_time_and_applies_to_every_kind() {
    let rules = [
        kind_rule(1, None, new_low(30, None), HOUR),
        kind_rule(2, None, RuleKind::Deal { deal_pct: 10 }, HOUR),
    ];
    let mut messages: Vec<Obs> = (1..=5).map(|n| obs(&n.to_string(), 1000, n)).collect();
    messages.extend([
        obs("1", 800, 10),            // new low, and a deal
        obs("2", 700, 20),            // both swallowed: inside the hour
        obs("3", 650, 10 + HOUR),     // new low swallowed (10 + 1h is inside), 3 a deal: swallowed
        obs("4", 600, 11 + HOUR),     // new low fires; 4 becomes a deal: fires
        obs("2", 1000, 12 + HOUR),    // 2 no longer a deal
        obs("2", 500, 13 + 2 * HOUR), // both fire again after the hour
    ]);
    let out = run_kinds(&rules, &messages);
    let fired: Vec<(&str, i64)> = out
        .alerts()
        .iter()
        .filter(|a| a.rule_id.is_some())
        .map(|a| (a.kind.as_str(), a.new_price.0))
        .collect();
    assert_eq!(
        fired,
        vec![
            ("new_low", 800),
            ("deal", 800),
            ("new_low", 600),
            ("deal", 600),
            ("new_low", 500),
            ("deal", 500),
        ]
    );
}
