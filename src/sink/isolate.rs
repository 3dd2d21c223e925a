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
//! when one is refused, the messages of that event in the batch that set one
//! of its text fields (name, venue, date; else `first_seen`/`last_seen`) at
//! the refused row's stamps are the ones behind it. Accepted units stay
//! written while the next ones are probed, so each probe sees what a commit
//! would (events before the listings that reference them); units of a refused
//! event are not probed, they could only fail for want of their event.
//!
//! A message older than its listing's current state has a unit of its own:
//! its history row, inserted the way the writer does (skipped if a duplicate),
//! and the event fields it brings.
//!
//! Only identifies: the messages' contributions to everything derived (the
//! current listing, the event's fields, get-in prices, summaries, alerts after
//! them) are removed by the replay that rejects them (`quarantine`). Rows no
//! message explains (summaries, rule states, dead letters) are not probed: a
//! refusal there finds no one, and the writer stops with the error.

use std::collections::{BTreeSet, HashMap};

use conscope_dataflows::model::{Alert, EventRow, ListingRow, Micros, Position, Seat};
use tokio_postgres::{Client, Transaction};

use super::config::WriterConfig;
use super::merge::{Merged, OlderRow};
use super::tables::{clear_incoming, write_rows};
use super::write_error::WriteError;

/// One part of a batch that is accepted or refused as a whole.
enum Unit<'a> {
    Event(&'a EventRow),
    Message {
        position: Position,
        history: &'a ListingRow,
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
            Unit::Message { history, .. } => &history.listing.event_id,
            Unit::Older(older) => &older.row.listing.event_id,
        }
    }

    fn position(&self) -> Option<Position> {
        match self {
            Unit::Event(_) => None,
            Unit::Message { position, .. } => Some(*position),
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
        for position in behind_event_row(merged, row) {
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
        .origins
        .iter()
        .zip(&merged.history)
        .map(|(position, history)| Unit::Message {
            position: *position,
            history,
            listing: merged
                .listings
                .get(&history.listing)
                .filter(|listing| listing.observed_at == history.observed_at),
            alerts: alerts
                .remove(&(
                    &history.listing.event_id,
                    &history.listing.seat,
                    history.observed_at,
                ))
                .unwrap_or_default(),
        })
        .chain(merged.maybe_stale.iter().map(Unit::Older))
        .collect::<Vec<_>>();
    units.sort_by_key(Unit::position);
    units
}

/// The stored messages of `merged` whose fields the event row `row` carries:
/// those of its event observed when one of its text fields was set, else when
/// it was first or last seen.
fn behind_event_row(merged: &Merged, row: &EventRow) -> Vec<Position> {
    let text_stamps: Vec<Micros> = [
        row.event_name.as_ref().map(|name| name.observed_at),
        row.venue.as_ref().map(|venue| venue.observed_at),
        row.event_date.as_ref().map(|date| date.observed_at),
    ]
    .into_iter()
    .flatten()
    .collect();
    let of_event = || {
        merged
            .history
            .iter()
            .zip(&merged.origins)
            .filter(|(history, _)| history.listing.event_id == row.event_id)
    };
    let at = |stamps: &[Micros]| -> Vec<Position> {
        of_event()
            .filter(|(history, _)| stamps.contains(&history.observed_at))
            .map(|(_, position)| *position)
            .collect()
    };
    let by_text = at(&text_stamps);
    if by_text.is_empty() {
        at(&[row.first_seen, row.last_seen])
    } else {
        by_text
    }
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
        let Some(reason) = probe(transaction, config, &units[start..end]).await? else {
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

/// Writes `units` in a savepoint: kept when accepted (`None`), rolled back
/// when refused for good (the refusal). Transient failures are returned.
async fn probe(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    units: &[Unit<'_>],
) -> Result<Option<String>, WriteError> {
    let subset = subset(units);
    transaction
        .batch_execute("SAVEPOINT probe")
        .await
        .map_err(WriteError::at("SAVEPOINT failed"))?;
    let written = match clear_incoming(transaction).await {
        Ok(()) => write_rows(transaction, config, &subset).await.map(|_stale| ()),
        Err(error) => Err(error),
    };
    let (end, outcome) = match written {
        Ok(()) => ("RELEASE SAVEPOINT probe", None),
        Err(WriteError::Definite { reason, .. }) => (
            "ROLLBACK TO SAVEPOINT probe; RELEASE SAVEPOINT probe",
            Some(reason),
        ),
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
            Unit::Message {
                position,
                history,
                listing,
                alerts,
            } => {
                merged.history.push((*history).clone());
                merged.origins.push(*position);
                if let Some(listing) = listing {
                    merged
                        .listings
                        .insert(listing.listing.clone(), (*listing).clone());
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
    use conscope_dataflows::model::{Cents, Currency, ListingKey, Stamped};

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

    fn batch() -> Merged {
        let mut merged = Merged::default();
        for (offset, seat, observed_at) in [(3, "1", 10), (1, "2", 20), (2, "1", 30)] {
            merged.history.push(row(seat, observed_at));
            merged.origins.push(Position { partition: 0, offset });
        }
        merged.listings.insert(row("1", 30).listing, row("1", 30));
        merged.listings.insert(row("2", 20).listing, row("2", 20));
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
                Unit::Message {
                    position,
                    history,
                    listing,
                    ..
                } => Some((
                    position.offset,
                    history.observed_at,
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

    /// A refused event row points at the messages that set its text fields;
    /// without those, at the ones that set first/last seen.
    #[test]
    fn an_event_row_is_traced_to_the_messages_behind_its_fields() {
        let merged = batch();
        let mut event = EventRow {
            event_id: "e1".to_owned(),
            event_name: Some(Stamped {
                value: "Name".to_owned(),
                observed_at: 20,
            }),
            venue: None,
            event_date: None,
            first_seen: 10,
            last_seen: 30,
        };
        assert_eq!(
            behind_event_row(&merged, &event),
            [Position {
                partition: 0,
                offset: 1
            }]
        );
        // A name stamped by an earlier commit: the first and last observations.
        event.event_name = Some(Stamped {
            value: "Name".to_owned(),
            observed_at: 5,
        });
        assert_eq!(
            behind_event_row(&merged, &event),
            [
                Position {
                    partition: 0,
                    offset: 3
                },
                Position {
                    partition: 0,
                    offset: 2
                }
            ]
        );
    }
}
