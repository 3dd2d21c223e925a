//! Summaries stage: `event_summary` and `section_summary` (SPEC §3), kept
//! incrementally with differential dataflow from the collection of current
//! listings that the processor emits (`processor.rs`).
//!
//! ```text
//! current listings ─┬─ by (event, currency) ──────────► reduce "EventSummary"
//!  (ListingKey →    │                                       │
//!   ListingPrice)   └─ by (event, section, currency) ─► reduce "SectionSummary"
//!                                                           │
//!                                    SummaryRecords ◄───────┘ (changes at epochs > 0)
//! ```
//!
//! A summary says what holds at the end of an epoch, not what happened message by
//! message, so a consolidating `reduce` is the right tool here (alerts, which are
//! per message, stay in the processor). Each `reduce` arranges its input by key,
//! which exchanges updates by the key's hash: every key is summarised on one
//! worker, and the accumulated summaries are the same for any number of workers
//! and processes. A key whose listings all went away has no input, so its
//! summary is retracted and not replaced: the row goes.
//!
//! Prices stay [`Cents`]; counts are the collection's multiplicities.

use std::collections::BTreeMap;

use differential_dataflow::collection::vec::Collection as VecCollection;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::{Concat, Operator};
use timely::dataflow::Stream;

use crate::model::{
    Cents, Change, EventCurrency, EventSummary, ListingKey, ListingPrice, SectionCurrency, SectionSummary,
    SinkRecord,
};

/// The two summaries, as differential collections of `(key, summary)`.
pub struct Summaries<'scope> {
    pub events: VecCollection<'scope, u64, (EventCurrency, EventSummary)>,
    pub sections: VecCollection<'scope, u64, (SectionCurrency, SectionSummary)>,
}

/// The summaries of `listings`, the collection of current listings.
pub fn summarise<'scope>(
    listings: VecCollection<'scope, u64, (ListingKey, ListingPrice)>,
) -> Summaries<'scope> {
    let events = listings
        .clone()
        .map(|(listing, price)| {
            let key = EventCurrency {
                event_id: listing.event_id,
                currency: price.currency,
            };
            (key, (price.price, price.available))
        })
        .reduce_named("EventSummary", |_key, prices, output| {
            output.push((event_summary(prices), 1))
        });
    let sections = listings
        .map(|(listing, price)| {
            let key = SectionCurrency {
                event_id: listing.event_id,
                section: listing.seat.section,
                currency: price.currency,
            };
            (key, (price.price, price.available))
        })
        .reduce_named("SectionSummary", |_key, prices, output| {
            output.push((section_summary(prices), 1))
        });
    Summaries { events, sections }
}

/// `prices` holds each distinct `(price, available)` of one key with how many
/// listings have it, sorted by price: the first available one is the lowest.
fn event_summary(prices: &[(&(Cents, bool), isize)]) -> EventSummary {
    let mut summary = EventSummary {
        listings: 0,
        available: 0,
        get_in_price: None,
    };
    for &(&(price, available), count) in prices {
        let count = count as i64;
        summary.listings += count;
        if available {
            summary.available += count;
            summary.get_in_price.get_or_insert(price);
        }
    }
    summary
}

fn section_summary(prices: &[(&(Cents, bool), isize)]) -> SectionSummary {
    let event = event_summary(prices);
    SectionSummary {
        available: event.available,
        low_price: event.get_in_price,
    }
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
fn changes<'scope, K: Clone + 'static, V: Clone + 'static>(
    collection: VecCollection<'scope, u64, (K, V)>,
    name: &str,
    record: fn(Change<K, V>) -> SinkRecord,
) -> Stream<'scope, u64, Vec<SinkRecord>> {
    collection
        .inner
        .unary::<CapacityContainerBuilder<Vec<SinkRecord>>, _, _, _>(Pipeline, name, move |_, _| {
            move |input, output| {
                input.for_each_stamp(|capability, data| {
                    let mut by_time: BTreeMap<u64, Vec<SinkRecord>> = BTreeMap::new();
                    for ((key, value), time, diff) in data.flat_map(|batch| batch.drain(..)) {
                        if time == 0 {
                            continue;
                        }
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

    #[test]
    fn counts_every_listing_and_prices_the_available_ones() {
        let prices = [
            (&(Cents(100), false), 2),
            (&(Cents(150), true), 1),
            (&(Cents(200), true), 3),
        ];
        let prices: Vec<(&(Cents, bool), isize)> = prices.to_vec();
        assert_eq!(
            event_summary(&prices),
            EventSummary {
                listings: 6,
                available: 4,
                get_in_price: Some(Cents(150)),
            }
        );
        assert_eq!(
            section_summary(&prices[..1]),
            SectionSummary {
                available: 0,
                low_price: None,
            }
        );
    }
}
