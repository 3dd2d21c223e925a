//! What one transaction writes: the records of one or more epochs folded per
//! key (`Merged`), with what depends on order put back in input order.
//!
//! Pure: no IO, imports nothing else of the sink. The writer fills a `Merged`
//! from the epochs it takes (`absorb`), `tables` writes it, `isolate` cuts it
//! into parts.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

// foldhash, not std's SipHash: hashing the listings' keys into these maps was
// 1.6 % of the job's samples (`perf`, 100 000 listings). Seeded per process,
// as the processor's maps of the same keys are.
use foldhash::{HashMap, HashSet};

use conscope_dataflows::model::{
    Alert, Carried, Change, Counters, EventCurrency, EventFields, EventRow, EventSummary, ListingKey,
    ListingRow, Position, Rejected, RuleMemory, SectionCurrency, SectionSummary, SinkRecord,
};

/// The records of one epoch, ready to commit, in the containers they came in:
/// gathering them into one `Vec` cost a copy of every record and the
/// reallocations of a growing buffer (5 % of the job's CPU, `perf`).
pub struct EpochBatch {
    pub epoch: u64,
    pub containers: Vec<Vec<SinkRecord>>,
}

/// Everything to write in one transaction, merged from one or more epochs.
#[derive(Default)]
pub(super) struct Merged {
    pub(super) epochs: Vec<u64>,
    /// New history rows, in input order within each epoch.
    pub(super) history: Vec<NewRow>,
    /// Rows of observations older than their listing's current state, in
    /// input order: epoch by epoch, and by position within an epoch.
    pub(super) maybe_stale: Vec<OlderRow>,
    pub(super) listings: ListingRows,
    pub(super) events: HashMap<String, EventRow>,
    pub(super) alerts: Vec<Alert>,
    pub(super) rule_states: BTreeMap<i64, bool>,
    /// The rest of each rule's state (rules of SPEC §2b beyond a plain
    /// `max_price`), for `rule_state.memory`.
    pub(super) rule_memories: BTreeMap<i64, Box<RuleMemory>>,
    pub(super) rejected: Vec<Rejected>,
    pub(super) offsets: BTreeMap<i32, i64>,
    pub(super) counters: Counters,
    pub(super) records: usize,
    /// Each changed summary key's row after the epochs; `None`: delete it.
    pub(super) event_summaries: HashMap<EventCurrency, Option<EventSummary>>,
    pub(super) section_summaries: HashMap<SectionCurrency, Option<SectionSummary>>,
}

/// An observation newer than its listing's current state (a `History`
/// record): its history row, its input position, and which event fields it
/// carried (the values are in its event's row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NewRow {
    pub(super) row: ListingRow,
    pub(super) position: Position,
    pub(super) carried: Carried,
}

/// An observation older than its listing's current state (a `MaybeStale`
/// record): its history row, its input position, and the event fields it
/// carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OlderRow {
    pub(super) row: ListingRow,
    pub(super) position: Position,
    pub(super) fields: Option<Box<EventFields>>,
}

/// The latest row of each listing, found by its key. A set of rows keyed by
/// their own `listing` field, so a row is stored once, without a second copy of
/// its five strings as the key of a map.
#[derive(Default)]
pub(super) struct ListingRows(HashSet<ByListing>);

impl ListingRows {
    /// Keeps `row`, replacing an earlier row of the same listing.
    pub(super) fn insert(&mut self, row: ListingRow) {
        self.0.replace(ByListing(row));
    }

    pub(super) fn get(&self, listing: &ListingKey) -> Option<&ListingRow> {
        self.0.get(listing).map(|row| &row.0)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ListingRow> {
        self.0.iter().map(|row| &row.0)
    }

    pub(super) fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

/// A listing row that hashes and compares as its key.
struct ByListing(ListingRow);

impl PartialEq for ByListing {
    fn eq(&self, other: &Self) -> bool {
        self.0.listing == other.0.listing
    }
}

impl Eq for ByListing {}

impl Hash for ByListing {
    // As `ListingKey` hashes: `Borrow` requires the same hash for both.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.listing.hash(state);
    }
}

impl Borrow<ListingKey> for ByListing {
    fn borrow(&self) -> &ListingKey {
        &self.0.listing
    }
}

/// What a commit did with the batch's history rows (`tables` tells).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct HistoryWritten {
    /// `maybe_stale` rows inserted (stale, not duplicates).
    pub(super) stale: u64,
    /// Rows not written for being observed before the pruned boundary: new
    /// rows (counted as stored by the dataflow) and older ones.
    pub(super) pruned_new: u64,
    pub(super) pruned_older: u64,
}

impl Merged {
    /// Counts the history rows once the commit told what it did with them:
    /// the `maybe_stale` rows it inserted are stale, the rest had a stored
    /// identity, so were duplicates; rows for a pruned month are stale and
    /// not stored.
    pub(super) fn count_history(&mut self, written: &HistoryWritten) {
        let duplicates = self.maybe_stale.len() as u64 - written.stale - written.pruned_older;
        self.counters.prices_stored = self.counters.prices_stored.saturating_sub(written.pruned_new);
        self.counters.add(&Counters {
            prices_stored: written.stale,
            stale: written.stale + written.pruned_new + written.pruned_older,
            duplicates,
            ..Counters::default()
        });
    }

    /// Adds the next epoch. Its records arrive in no particular order: timely's
    /// `for_each_stamp` sorts the containers of one time unstably, so even one
    /// worker's containers may come swapped. What depends on order is put in
    /// input order here; the rest is one record per key and epoch.
    pub(super) fn absorb(&mut self, batch: EpochBatch) {
        self.epochs.push(batch.epoch);
        self.records += batch.containers.iter().map(Vec::len).sum::<usize>();
        // Sized up front: grown by doubling, the map and the history spent a
        // third of `absorb`'s time rehashing, copying and faulting in fresh
        // pages (`perf`).
        let (mut listings, mut history) = (0, 0);
        for record in batch.containers.iter().flatten() {
            match record {
                SinkRecord::Listing(_) => listings += 1,
                SinkRecord::History { .. } => history += 1,
                _ => {}
            }
        }
        self.listings.reserve(listings);
        self.history.reserve(history);
        let mut event_summaries = Vec::new();
        let mut section_summaries = Vec::new();
        let mut maybe_stale = Vec::new();
        let mut rejected = Vec::new();
        for record in batch.containers.into_iter().flatten() {
            match record {
                SinkRecord::History {
                    row,
                    position,
                    carried,
                } => self.history.push(NewRow {
                    row,
                    position,
                    carried,
                }),
                SinkRecord::MaybeStale {
                    row,
                    position,
                    fields,
                } => maybe_stale.push(OlderRow {
                    row,
                    position,
                    fields,
                }),
                SinkRecord::Listing(row) => self.listings.insert(row),
                SinkRecord::Event(row) => {
                    self.events.insert(row.event_id.clone(), row);
                }
                SinkRecord::Alert(alert) => self.alerts.push(alert),
                SinkRecord::RuleState { rule_id, below } => {
                    self.rule_states.insert(rule_id, below);
                }
                SinkRecord::RuleMemory { rule_id, memory } => {
                    self.rule_memories.insert(rule_id, memory);
                }
                SinkRecord::Rejected(record) => rejected.push(record),
                SinkRecord::Offset(position) => {
                    let next = self.offsets.entry(position.partition).or_insert(position.offset);
                    *next = (*next).max(position.offset);
                }
                SinkRecord::Counters(counters) => self.counters.add(&counters),
                SinkRecord::EventSummary(change) => event_summaries.push(change),
                SinkRecord::SectionSummary(change) => section_summaries.push(change),
            }
        }
        // Stable: two records at one position are one message delivered twice.
        maybe_stale.sort_by_key(|older| older.position);
        self.maybe_stale.append(&mut maybe_stale);
        rejected.sort_by_key(|record| record.position);
        self.rejected.append(&mut rejected);
        fold_changes(&mut self.event_summaries, event_summaries);
        fold_changes(&mut self.section_summaries, section_summaries);
    }
}

/// Applies one epoch's changes of a summary on top of the epochs merged before
/// it (epochs arrive in order). Within an epoch a changed key has its old value
/// retracted and, unless it has no listing left, its new value inserted, in any
/// order: the insertion wins, a retraction alone deletes the row.
fn fold_changes<K: Hash + Eq, V>(rows: &mut HashMap<K, Option<V>>, changes: Vec<Change<K, V>>) {
    let (inserted, retracted): (Vec<_>, Vec<_>) = changes.into_iter().partition(|change| change.diff > 0);
    for change in retracted {
        rows.insert(change.key, None);
    }
    for change in inserted {
        rows.insert(change.key, Some(change.value));
    }
}

#[cfg(test)]
pub(super) mod tests {
    use conscope_dataflows::model::{Cents, Currency, Micros, Seat};

    use super::*;

    fn key(event_id: &str) -> EventCurrency {
        EventCurrency {
            event_id: event_id.to_owned(),
            currency: Currency::USD,
        }
    }

    fn summary(listings: i64) -> EventSummary {
        EventSummary {
            listings,
            available: listings,
            get_in_price: Some(Cents(100)),
        }
    }

    fn change(event_id: &str, listings: i64, diff: i64) -> Change<EventCurrency, EventSummary> {
        Change {
            key: key(event_id),
            value: summary(listings),
            diff,
        }
    }

    pub(in crate::sink) fn listing_row(seat: &str, cents: i64, observed_at: Micros) -> ListingRow {
        ListingRow {
            listing: ListingKey {
                event_id: "e1".to_owned(),
                seat: Seat {
                    section: "A".to_owned(),
                    row: "1".to_owned(),
                    seat: seat.to_owned(),
                    source: "s1".to_owned(),
                },
            },
            price: Cents(cents),
            currency: Currency::USD,
            available: true,
            observed_at,
        }
    }

    pub(in crate::sink) fn at(partition: i32, offset: i64) -> Position {
        Position { partition, offset }
    }

    /// Epochs merged into one transaction: every history row once, with its
    /// input position, in order; the last state of each listing; the highest
    /// next offset per partition; counters and rejects summed.
    #[test]
    fn absorbed_epochs_keep_every_row_and_the_last_state() {
        let counted = |processed| {
            SinkRecord::Counters(Counters {
                processed,
                ..Counters::default()
            })
        };
        let mut merged = Merged::default();
        merged.absorb(EpochBatch {
            epoch: 7,
            containers: vec![vec![
                SinkRecord::History {
                    row: listing_row("1", 100, 10),
                    position: at(0, 4),
                    carried: Carried::default(),
                },
                SinkRecord::Listing(listing_row("1", 100, 10)),
                SinkRecord::Offset(at(0, 5)),
                SinkRecord::Offset(at(1, 9)),
                SinkRecord::RuleState {
                    rule_id: 3,
                    below: true,
                },
                counted(2),
            ]],
        });
        merged.absorb(EpochBatch {
            epoch: 8,
            // In two containers, as two workers' records arrive.
            containers: vec![
                vec![
                    SinkRecord::History {
                        row: listing_row("1", 90, 20),
                        position: at(0, 5),
                        carried: Carried::default(),
                    },
                    SinkRecord::Listing(listing_row("1", 90, 20)),
                ],
                vec![
                    SinkRecord::Rejected(Rejected {
                        position: at(1, 9),
                        key: None,
                        payload: None,
                        reason: "bad".to_owned(),
                    }),
                    // Progress of another worker's partition can arrive late: the
                    // highest next offset wins.
                    SinkRecord::Offset(at(1, 10)),
                    SinkRecord::Offset(at(0, 6)),
                    SinkRecord::RuleState {
                        rule_id: 3,
                        below: false,
                    },
                    counted(3),
                ],
            ],
        });
        assert_eq!(merged.epochs, [7, 8]);
        assert_eq!(merged.records, 13);
        assert_eq!(
            merged.history.iter().map(|new| new.row.price).collect::<Vec<_>>(),
            [Cents(100), Cents(90)]
        );
        let positions: Vec<Position> = merged.history.iter().map(|new| new.position).collect();
        assert_eq!(positions, [at(0, 4), at(0, 5)]);
        let listings: Vec<&ListingRow> = merged.listings.values().collect();
        assert_eq!(listings, [&listing_row("1", 90, 20)]);
        assert_eq!(merged.offsets, BTreeMap::from([(0, 6), (1, 10)]));
        assert_eq!(merged.rule_states, BTreeMap::from([(3, false)]));
        assert_eq!(merged.rejected.len(), 1);
        assert_eq!(merged.counters.processed, 5);
    }

    /// One epoch's containers reach the sink in any order (timely sorts them
    /// unstably by time), so what depends on order is put back in input order:
    /// the first of two stale copies of an identity is the one kept.
    #[test]
    fn an_epoch_in_any_order_gives_stale_rows_and_dead_letters_in_input_order() {
        let stale = |offset: i64, cents: i64| SinkRecord::MaybeStale {
            row: listing_row("1", cents, 5),
            position: at(0, offset),
            fields: None,
        };
        let rejected = |partition: i32, offset: i64| {
            SinkRecord::Rejected(Rejected {
                position: at(partition, offset),
                key: None,
                payload: None,
                reason: "bad".to_owned(),
            })
        };
        let mut merged = Merged::default();
        merged.absorb(EpochBatch {
            epoch: 1,
            containers: vec![vec![stale(9, 300)], vec![rejected(1, 2), stale(3, 100)]],
        });
        merged.absorb(EpochBatch {
            epoch: 2,
            containers: vec![
                vec![rejected(0, 8), stale(12, 400)],
                vec![rejected(0, 7), stale(10, 200)],
            ],
        });
        let prices: Vec<i64> = merged.maybe_stale.iter().map(|older| older.row.price.0).collect();
        assert_eq!(
            prices,
            [100, 300, 200, 400],
            "by position within each epoch, epochs in order"
        );
        let positions: Vec<Position> = merged.rejected.iter().map(|record| record.position).collect();
        assert_eq!(positions, [at(1, 2), at(0, 7), at(0, 8)]);
    }

    #[test]
    fn summary_changes_fold_into_the_last_state_of_each_key() {
        let mut rows = HashMap::default();
        fold_changes(&mut rows, vec![change("a", 1, 1), change("b", 1, 1)]);
        // The insertion wins over the retraction whatever their order; a
        // retraction alone deletes.
        fold_changes(
            &mut rows,
            vec![change("a", 2, 1), change("a", 1, -1), change("b", 1, -1)],
        );
        assert_eq!(rows.get(&key("a")), Some(&Some(summary(2))));
        assert_eq!(rows.get(&key("b")), Some(&None));
        // A later epoch brings a deleted key back.
        fold_changes(&mut rows, vec![change("b", 3, 1)]);
        assert_eq!(rows.get(&key("b")), Some(&Some(summary(3))));
    }
}
