//! After PostgreSQL refused a batch for good: which input messages are behind
//! the refused rows.
//!
//! ```text
//!  merged batch ─► units: each event row, then each stored message
//!                  (its history row + the listing row and alerts it set)
//!               ─► bisect in one transaction, SAVEPOINT per probe:
//!                  accepted halves stay, refused halves split until one unit
//!               ─► ROLLBACK: nothing of the probes is kept
//! ```
//!
//! A message's rows are found by its history row, which carries its input
//! position; its listing row and its alerts carry its observation identity
//! (listing + `observed_at`). An event row mixes fields of several messages:
//! when one is refused, probes (rolled back) tell which of its text fields
//! (name, venue, date) PostgreSQL refuses alone, and the messages behind it
//! are those of the event in the batch that carried such a field at its stamp
//! (the last of each partition: the one whose value the row holds). Without a
//! field to blame (the row refused without them, or only a combination of
//! them), the carriers of any of them, else the messages at `first_seen` or
//! `last_seen`. Accepted units stay written while the next ones are probed, so
//! each probe sees what a commit would (events before the listings that
//! reference them); units of a refused event are not probed, they could only
//! fail for want of their event.
//!
//! A message older than its listing's current state has a unit of its own:
//! its history row, inserted the way the writer does (skipped if a duplicate),
//! and the event fields it brings.
//!
//! Only identifies: the messages' contributions to everything derived (the
//! current listing, the event's fields, get-in prices, summaries, alerts after
//! them) are removed by the replay that rejects them (`quarantine`). Rows no
//! message explains (summaries, rule states, dead letters) are not probed: a
//! refusal there finds no one, and the writer waits it out as a refusal of
//! the database. Only refusals of data (`WriteError::Refused`) count as a
//! probe refused; any other failure ends the search, for the writer to wait
//! and start it again on a new connection.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use conscope_dataflows::model::{Alert, EventField, EventRow, ListingRow, Micros, Position, Seat};
use tokio_postgres::{Client, Transaction};

use super::config::WriterConfig;
use super::merge::{Merged, NewRow, OlderRow};
use super::tables::{clear_incoming, write_rows, KnownMonths};
use super::write_error::WriteError;

/// One part of a batch that is accepted or refused as a whole.
enum Unit<'a> {
    Event(&'a EventRow),
    Message {
        new: &'a NewRow,
        listing: Option<&'a ListingRow>,
        alerts: Vec<&'a Alert>,
    },
    /// A message older than its listing's current state: its history row
    /// (stale, or a duplicate the insert skips) and the event fields it brings.
    Older(&'a OlderRow),
}

impl Unit<'_> {
    fn event_id(&self) -> &str {
        match self {
            Unit::Event(row) => &row.event_id,
            Unit::Message { new, .. } => &new.row.listing.event_id,
            Unit::Older(older) => &older.row.listing.event_id,
        }
    }

    fn position(&self) -> Option<Position> {
        match self {
            Unit::Event(_) => None,
            Unit::Message { new, .. } => Some(new.position),
            Unit::Older(older) => Some(older.position),
        }
    }
}

/// The input messages behind the rows of `merged` PostgreSQL refuses, each
/// with the refusal (`postgres rejected: <message> (<SQLSTATE>)`). Empty when
/// no message explains the refusal.
pub(super) async fn offenders(
    client: &mut Client,
    config: &WriterConfig,
    merged: &Merged,
) -> Result<Vec<(Position, String)>, WriteError> {
    let transaction = client
        .transaction()
        .await
        .map_err(WriteError::at("BEGIN failed"))?;

    let mut events: Vec<&EventRow> = merged.events.values().collect();
    events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let events: Vec<Unit<'_>> = events.into_iter().map(Unit::Event).collect();
    let mut refused_events: HashMap<&str, String> = HashMap::new();
    for (index, reason) in bisect(&transaction, config, &events).await? {
        refused_events.insert(events[index].event_id(), reason);
    }

    let messages: Vec<Unit<'_>> = message_units(merged)
        .into_iter()
        .filter(|unit| !refused_events.contains_key(unit.event_id()))
        .collect();
    let mut found = BTreeSet::new();
    let mut offenders = Vec::new();
    for (index, reason) in bisect(&transaction, config, &messages).await? {
        if let Some(position) = messages[index].position() {
            if found.insert(position) {
                offenders.push((position, format!("postgres rejected: {reason}")));
            }
        }
    }
    for unit in &events {
        let Unit::Event(row) = unit else { continue };
        let Some(reason) = refused_events.get(row.event_id.as_str()) else {
            continue;
        };
        for position in behind_event_row(&transaction, config, merged, row).await? {
            if found.insert(position) {
                offenders.push((position, format!("postgres rejected: {reason}")));
            }
        }
    }
    // Dropping the transaction rolls every probe back.
    drop(transaction);
    offenders.sort_by_key(|(position, _)| *position);
    Ok(offenders)
}

/// One unit per message of `merged` with rows of its own (stored, or older
/// than its listing's current state), in input order.
fn message_units(merged: &Merged) -> Vec<Unit<'_>> {
    let mut alerts: HashMap<(&str, &Seat, Micros), Vec<&Alert>> = HashMap::new();
    for alert in &merged.alerts {
        alerts
            .entry((&alert.listing.event_id, &alert.listing.seat, alert.observed_at))
            .or_default()
            .push(alert);
    }
    let mut units = merged
        .history
        .iter()
        .map(|new| Unit::Message {
            new,
            listing: merged
                .listings
                .get(&new.row.listing)
                .filter(|listing| listing.observed_at == new.row.observed_at),
            alerts: alerts
                .remove(&(
                    &new.row.listing.event_id,
                    &new.row.listing.seat,
                    new.row.observed_at,
                ))
                .unwrap_or_default(),
        })
        .chain(merged.maybe_stale.iter().map(Unit::Older))
        .collect::<Vec<_>>();
    units.sort_by_key(Unit::position);
    units
}

/// The stored messages of `merged` behind the refused event row `row`: the
/// carriers of the text fields PostgreSQL refuses alone (each probed, rolled
/// back); see the module doc for when none is to blame.
async fn behind_event_row(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    merged: &Merged,
    row: &EventRow,
) -> Result<Vec<Position>, WriteError> {
    let present: Vec<EventField> = EventField::ALL
        .into_iter()
        .filter(|field| stamp(row, *field).is_some())
        .collect();
    let mut blamed = Vec::new();
    if !refused_alone(transaction, config, &keeping(row, &[])).await? {
        for &field in &present {
            if refused_alone(transaction, config, &keeping(row, &[field])).await? {
                blamed.push(field);
            }
        }
        if blamed.is_empty() {
            blamed = present;
        }
    }
    let carriers = carriers(merged, row, &blamed);
    Ok(if carriers.is_empty() {
        seen_at_bounds(merged, row)
    } else {
        carriers
    })
}

/// Whether PostgreSQL refuses the event row `row` on its own; never kept.
async fn refused_alone(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    row: &EventRow,
) -> Result<bool, WriteError> {
    Ok(probe(transaction, config, &[Unit::Event(row)], false)
        .await?
        .is_some())
}

/// `row` with only the text fields `fields` (the others left to the stored
/// row, or unset for a new event).
fn keeping(row: &EventRow, fields: &[EventField]) -> EventRow {
    let kept = |field| fields.contains(&field);
    EventRow {
        event_name: row.event_name.clone().filter(|_| kept(EventField::Name)),
        venue: row.venue.clone().filter(|_| kept(EventField::Venue)),
        event_date: row.event_date.clone().filter(|_| kept(EventField::Date)),
        ..row.clone()
    }
}

/// When the value of `field` in `row` was observed, if it has one.
fn stamp(row: &EventRow, field: EventField) -> Option<Micros> {
    match field {
        EventField::Name => row.event_name.as_ref().map(|name| name.observed_at),
        EventField::Venue => row.venue.as_ref().map(|venue| venue.observed_at),
        EventField::Date => row.event_date.as_ref().map(|date| date.observed_at),
    }
}

/// The stored messages of `merged` whose value of one of `fields` the event
/// row `row` holds: of those of its event that carried the field at its stamp,
/// the last of each partition (messages are applied in partition order, the
/// later of equal times winning).
fn carriers(merged: &Merged, row: &EventRow, fields: &[EventField]) -> Vec<Position> {
    let mut last: BTreeMap<(usize, i32), Position> = BTreeMap::new();
    for (index, field) in fields.iter().enumerate() {
        let Some(at) = stamp(row, *field) else { continue };
        for new in &merged.history {
            if new.row.listing.event_id == row.event_id
                && new.row.observed_at == at
                && new.carried.has(*field)
            {
                let slot = last
                    .entry((index, new.position.partition))
                    .or_insert(new.position);
                *slot = (*slot).max(new.position);
            }
        }
    }
    let positions: BTreeSet<Position> = last.into_values().collect();
    positions.into_iter().collect()
}

/// The stored messages of `merged` of the event of `row` observed at its
/// `first_seen` or `last_seen`.
fn seen_at_bounds(merged: &Merged, row: &EventRow) -> Vec<Position> {
    merged
        .history
        .iter()
        .filter(|new| {
            new.row.listing.event_id == row.event_id
                && (new.row.observed_at == row.first_seen || new.row.observed_at == row.last_seen)
        })
        .map(|new| new.position)
        .collect()
}

/// The units PostgreSQL refuses, by index, each with its refusal: halves of
/// a refused range are probed in turn until single units remain.
async fn bisect(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    units: &[Unit<'_>],
) -> Result<Vec<(usize, String)>, WriteError> {
    let mut refused = Vec::new();
    let mut pending = vec![(0, units.len())];
    while let Some((start, end)) = pending.pop() {
        if start >= end {
            continue;
        }
        let Some(reason) = probe(transaction, config, &units[start..end], true).await? else {
            continue;
        };
        if end - start == 1 {
            refused.push((start, reason));
        } else {
            let middle = start + (end - start) / 2;
            // Popped first: the earlier half, so units are probed in order.
            pending.push((middle, end));
            pending.push((start, middle));
        }
    }
    Ok(refused)
}

/// Writes `units` in a savepoint: kept when accepted (`None`) if `keep`,
/// rolled back when its data is refused (the refusal). Other failures are
/// returned.
async fn probe(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    units: &[Unit<'_>],
    keep: bool,
) -> Result<Option<String>, WriteError> {
    let subset = subset(units);
    transaction
        .batch_execute("SAVEPOINT probe")
        .await
        .map_err(WriteError::at("SAVEPOINT failed"))?;
    let written = match clear_incoming(transaction).await {
        // Every month asked for: a probe's creations are rolled back with it.
        Ok(()) => write_rows(
            transaction,
            config,
            &subset,
            &KnownMonths::default(),
            &HashSet::new(),
        )
        .await
        .map(|_written| ()),
        Err(error) => Err(error),
    };
    let undo = "ROLLBACK TO SAVEPOINT probe; RELEASE SAVEPOINT probe";
    let (end, outcome) = match written {
        Ok(()) if keep => ("RELEASE SAVEPOINT probe", None),
        Ok(()) => (undo, None),
        Err(WriteError::Refused { reason, .. }) => (undo, Some(reason)),
        Err(error) => return Err(error),
    };
    transaction
        .batch_execute(end)
        .await
        .map_err(WriteError::at("ending a SAVEPOINT failed"))?;
    Ok(outcome)
}

/// The rows of `units` as a batch of their own.
fn subset(units: &[Unit<'_>]) -> Merged {
    let mut merged = Merged::default();
    for unit in units {
        match unit {
            Unit::Event(row) => {
                merged.events.insert(row.event_id.clone(), (*row).clone());
            }
            Unit::Message { new, listing, alerts } => {
                merged.history.push((*new).clone());
                if let Some(listing) = listing {
                    merged.listings.insert((*listing).clone());
                }
                merged.alerts.extend(alerts.iter().map(|alert| (*alert).clone()));
            }
            Unit::Older(older) => merged.maybe_stale.push((*older).clone()),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::{Carried, Cents, Currency, ListingKey, Stamped};

    use super::*;

    fn row(seat: &str, observed_at: Micros) -> ListingRow {
        ListingRow {
            listing: ListingKey {
                event_id: "e1".to_owned(),
                seat: Seat {
                    section: "A".to_owned(),
                    row: String::new(),
                    seat: seat.to_owned(),
                    source: "s".to_owned(),
                },
            },
            price: Cents(100),
            currency: Currency::USD,
            available: true,
            observed_at,
        }
    }

    fn new_row(offset: i64, seat: &str, observed_at: Micros, carried: &[EventField]) -> NewRow {
        NewRow {
            row: row(seat, observed_at),
            position: Position { partition: 0, offset },
            carried: Carried::only(carried),
        }
    }

    fn batch() -> Merged {
        let mut merged = Merged::default();
        for (offset, seat, observed_at) in [(3, "1", 10), (1, "2", 20), (2, "1", 30)] {
            merged.history.push(new_row(offset, seat, observed_at, &[]));
        }
        merged.listings.insert(row("1", 30));
        merged.listings.insert(row("2", 20));
        merged
    }

    /// A message's unit holds its history row, and the listing row only when
    /// the listing's final state is that message's; a message older than its
    /// listing's state has a unit of its own; units come in input order.
    #[test]
    fn message_units_carry_what_each_message_set() {
        let mut merged = batch();
        let older = OlderRow {
            row: row("1", 5),
            position: Position {
                partition: 0,
                offset: 4,
            },
            fields: None,
        };
        merged.maybe_stale.push(older.clone());
        let units = message_units(&merged);
        let summary: Vec<(i64, Micros, &str)> = units
            .iter()
            .filter_map(|unit| match unit {
                Unit::Message { new, listing, .. } => Some((
                    new.position.offset,
                    new.row.observed_at,
                    if listing.is_some() { "current" } else { "stored" },
                )),
                Unit::Older(older) => Some((older.position.offset, older.row.observed_at, "older")),
                Unit::Event(_) => None,
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, 20, "current"),
                (2, 30, "current"),
                (3, 10, "stored"),
                (4, 5, "older")
            ]
        );
        let alone = subset(&units[3..]);
        assert_eq!(alone.maybe_stale, [older]);
        assert!(alone.history.is_empty());
    }

    fn event(venue_at: Option<Micros>) -> EventRow {
        EventRow {
            event_id: "e1".to_owned(),
            event_name: Some(Stamped {
                value: "Name".to_owned(),
                observed_at: 20,
                position: None,
            }),
            venue: venue_at.map(|observed_at| Stamped {
                value: "Hall".to_owned(),
                observed_at,
                position: None,
            }),
            event_date: None,
            first_seen: 10,
            last_seen: 30,
        }
    }

    fn at(offset: i64) -> Position {
        Position { partition: 0, offset }
    }

    /// Of the messages observed at a refused field's stamp, only those that
    /// carried the field, and of those the last of a partition: its value is
    /// the row's.
    #[test]
    fn a_refused_field_is_traced_to_the_message_that_carried_it() {
        let mut merged = Merged::default();
        // Seats 1 and 2 at 20, only seat 1 carrying the venue; a name at 20 too.
        merged.history.push(new_row(1, "1", 20, &[EventField::Venue]));
        merged.history.push(new_row(2, "2", 20, &[EventField::Name]));
        merged.history.push(new_row(3, "3", 30, &[]));
        let row = event(Some(20));
        assert_eq!(carriers(&merged, &row, &[EventField::Venue]), [at(1)]);
        assert_eq!(carriers(&merged, &row, &[EventField::Name]), [at(2)]);
        assert_eq!(
            carriers(&merged, &row, &[EventField::Name, EventField::Venue]),
            [at(1), at(2)]
        );
        // Two carriers at one time in one partition: the later one's value won.
        merged.history.push(new_row(4, "4", 20, &[EventField::Venue]));
        assert_eq!(carriers(&merged, &row, &[EventField::Venue]), [at(4)]);
        // A value stamped by an earlier commit: no carrier in the batch.
        assert!(carriers(&merged, &event(Some(5)), &[EventField::Venue]).is_empty());
    }

    /// Without a field to blame: the messages at the first and last times seen.
    #[test]
    fn an_event_row_without_a_field_to_blame_points_at_its_bounds() {
        let merged = batch();
        assert_eq!(seen_at_bounds(&merged, &event(None)), [at(3), at(2)]);
        assert_eq!(keeping(&event(Some(20)), &[EventField::Venue]).event_name, None);
        assert!(keeping(&event(Some(20)), &[EventField::Venue]).venue.is_some());
    }
}
