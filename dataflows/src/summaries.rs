//! Summaries stage: `event_summary` and `section_summary` (SPEC §3), kept
//! incrementally with differential dataflow from the collection of section
//! states that the processor emits (`processor.rs`): per (event, section,
//! currency) with a current listing, how many listings, how many available,
//! and the lowest available price.
//!
//! ```text
//! section states ───┬─ (available, low) ────────────────────────────► sections ─┐
//!  (SectionCurrency │                                                           ├─► SummaryRecords
//!   → SectionState) └─ by (event, currency) ─► reduce "EventSummary" ─► events ─┘   (epochs > 0)
//! ```
//!
//! A section's summary is its state without the count of all listings: the
//! processor already keeps one state per key, retracting the old one when it
//! inserts the new, so no `reduce` is needed. An event's summary adds up its
//! sections in a consolidating `reduce` (a summary says what holds at the end of
//! an epoch, not what happened message by message; alerts, which are per
//! message, stay in the processor). Every (event, ·) key is produced on the one
//! worker that owns the event in the processor, and the `reduce` arranges by
//! its key, which exchanges updates by the key's hash: every key is summarised
//! on one worker, and the accumulated summaries are the same for any number of
//! workers and processes. A key whose listings all went away has no state, so
//! its summary is retracted and not replaced: the row goes.
//!
//! Prices stay [`Cents`](crate::model::Cents); counts are the sums of the sections' counts.

use std::collections::BTreeMap;

use differential_dataflow::collection::vec::Collection as VecCollection;
use differential_dataflow::consolidation::consolidate_updates;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Concat, Operator};
use timely::dataflow::Stream;

use crate::model::{
    Change, EventCurrency, EventSummary, SectionCurrency, SectionState, SectionSummary, SinkRecord,
};

/// The two summaries, as differential collections of `(key, summary)`.
pub struct Summaries<'scope> {
    pub events: VecCollection<'scope, u64, (EventCurrency, EventSummary)>,
    pub sections: VecCollection<'scope, u64, (SectionCurrency, SectionSummary)>,
}

/// The summaries of `sections`, the collection of section states.
pub fn summarise<'scope>(
    sections: VecCollection<'scope, u64, (SectionCurrency, SectionState)>,
) -> Summaries<'scope> {
    let events = sections
        .clone()
        .map(|(section, state)| {
            let key = EventCurrency {
                event_id: section.event_id,
                currency: section.currency,
            };
            (key, state)
        })
        .reduce_named("EventSummary", |_key, states, output| {
            output.push((event_summary(states), 1))
        });
    let sections = sections.map(|(section, state)| {
        let summary = SectionSummary {
            available: state.available,
            low_price: state.low,
        };
        (section, summary)
    });
    Summaries { events, sections }
}

/// `states` holds each distinct state of one key's sections with how many
/// sections have it.
fn event_summary(states: &[(&SectionState, isize)]) -> EventSummary {
    let mut summary = EventSummary {
        listings: 0,
        available: 0,
        get_in_price: None,
    };
    for &(state, count) in states {
        let count = count as i64;
        summary.listings += state.listings * count;
        summary.available += state.available * count;
        if let Some(low) = state.low {
            summary.get_in_price = Some(summary.get_in_price.map_or(low, |price| price.min(low)));
        }
    }
    summary
}

/// The summaries' changes as sink records, at the epochs they happen in, except
/// epoch 0.
///
/// Epoch 0 holds only the state restored at start, and the listings restored are
/// exactly the `listings` table, read back after the last commit. Every commit
/// writes the summary changes in the same transaction as the listing rows they
/// derive from (and the migration that created the tables filled them from
/// `listings`), so the stored summaries already equal the summaries of the
/// restored listings: writing epoch 0 would rewrite every row to the same value
/// at each start. The collections still hold the restored state, so later
/// changes retract the right values.
pub fn summary_records<'scope>(summaries: Summaries<'scope>) -> Stream<'scope, u64, Vec<SinkRecord>> {
    let events = changes(summaries.events, "EventSummaryRecords", SinkRecord::EventSummary);
    let sections = changes(
        summaries.sections,
        "SectionSummaryRecords",
        SinkRecord::SectionSummary,
    );
    events.concat(sections)
}

/// Turns the updates of `collection` into sink records at their own times: the
/// sink commits a record with the epoch it is stamped with, and `reduce` may ship
/// updates of several times under the stamp of the earliest.
///
/// What arrives together is consolidated first: two section states that differ
/// only in their count of all listings are one section summary, retracted and
/// inserted at one time, which is no change to write. (Pairs that arrived apart
/// would be written as an upsert of the same row: still right.)
fn changes<'scope, K: Ord + Clone + 'static, V: Ord + Clone + 'static>(
    collection: VecCollection<'scope, u64, (K, V)>,
    name: &str,
    record: fn(Change<K, V>) -> SinkRecord,
) -> Stream<'scope, u64, Vec<SinkRecord>> {
    collection
        .inner
        .unary::<CapacityContainerBuilder<Vec<SinkRecord>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each_stamp(|capability, data| {
                    let mut updates: Vec<_> = data
                        .flat_map(|batch| batch.drain(..))
                        .filter(|(_, time, _)| *time != 0)
                        .collect();
                    // Sorts by (key, value, time): the times come out in order.
                    consolidate_updates(&mut updates);
                    let mut by_time: BTreeMap<u64, Vec<SinkRecord>> = BTreeMap::new();
                    for ((key, value), time, diff) in updates {
                        let diff = diff as i64;
                        by_time
                            .entry(time)
                            .or_default()
                            .push(record(Change { key, value, diff }));
                    }
                    for (time, mut records) in by_time {
                        let at = capability.delayed(&time, output.output_index());
                        output.session(&at).give_container(&mut records);
                    }
                });
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Cents;

    #[test]
    fn adds_up_the_sections_and_takes_the_lowest_available_price() {
        let sold_out = SectionState {
            listings: 2,
            available: 0,
            low: None,
        };
        let cheap = SectionState {
            listings: 1,
            available: 1,
            low: Some(Cents(150)),
        };
        let dear = SectionState {
            listings: 3,
            available: 2,
            low: Some(Cents(200)),
        };
        // `dear` twice: two sections in the same state.
        let states = [(&sold_out, 1), (&cheap, 1), (&dear, 2)];
        assert_eq!(
            event_summary(&states),
            EventSummary {
                listings: 9,
                available: 5,
                get_in_price: Some(Cents(150)),
            }
        );
        assert_eq!(
            event_summary(&states[..1]),
            EventSummary {
                listings: 2,
                available: 0,
                get_in_price: None,
            }
        );
    }
}
