//! `price_history`: the batch's new rows by binary `COPY`, and the rows of
//! observations older than their listing's current state, inserted in
//! partition order with the first of an identity winning; the event fields
//! the inserted stale rows bring, applied to `events` where they are the most
//! recent. Rows observed before the pruned boundary are left out, and the
//! month partitions of the others made first (`retention`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use conscope_dataflows::model::{ListingKey, ListingRow, Micros, Seat};
use tokio_postgres::Transaction;

use super::copy::{copy_listing_rows, timestamp};
use super::retention::{ensure_months, pruned_before, KnownMonths};
use super::Written;
use crate::fail::fail_point;
use crate::sink::merge::{HistoryWritten, Merged, OlderRow};
use crate::sink::write_error::WriteError;

/// Copies the batch's history rows, then inserts its older rows, but those
/// observed before the pruned boundary; makes their months' partitions exist
/// first (`months`: those known to).
pub(super) async fn write_history(
    transaction: &Transaction<'_>,
    merged: &Merged,
    months: &KnownMonths,
) -> Result<Written, WriteError> {
    if merged.history.is_empty() && merged.maybe_stale.is_empty() {
        return Ok(Written::default());
    }
    // Before anything touches price_history: see `retention`.
    let before = pruned_before(transaction).await?;
    let kept = |row: &ListingRow| before.is_none_or(|before| row.observed_at >= before);
    let history: Vec<&ListingRow> = merged
        .history
        .iter()
        .map(|new| &new.row)
        .filter(|row| kept(row))
        .collect();
    let older: Cow<'_, [OlderRow]> = if merged.maybe_stale.iter().all(|older| kept(&older.row)) {
        Cow::Borrowed(&merged.maybe_stale)
    } else {
        Cow::Owned(
            merged
                .maybe_stale
                .iter()
                .filter(|older| kept(&older.row))
                .cloned()
                .collect(),
        )
    };
    let ensured = ensure_months(
        transaction,
        months,
        history
            .iter()
            .map(|row| row.observed_at)
            .chain(older.iter().map(|older| older.row.observed_at)),
    )
    .await?;
    if !history.is_empty() {
        copy_listing_rows(
            transaction,
            "cannot copy into price_history",
            "COPY price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             FROM STDIN BINARY",
            false,
            history.iter().copied(),
        )
        .await?;
        fail_point("mid_copy");
    }
    let stale = if older.is_empty() {
        0
    } else {
        insert_maybe_stale(transaction, &older).await?
    };
    Ok(Written {
        history: HistoryWritten {
            stale,
            pruned_new: (merged.history.len() - history.len()) as u64,
            pruned_older: (merged.maybe_stale.len() - older.len()) as u64,
        },
        months: ensured,
    })
}

/// Inserts the rows of observations older than their listing's current state,
/// in partition order, skipping every identity stored already (by an earlier
/// commit, a row above, or the batch's new rows, COPY'd before): the first one
/// of an identity wins, as SPEC §2's dedup asks. The rows it inserted are
/// stale, and their event fields then count for `events`. Returns how many it
/// inserted.
async fn insert_maybe_stale(transaction: &Transaction<'_>, rows: &[OlderRow]) -> Result<u64, WriteError> {
    copy_listing_rows(
        transaction,
        "cannot copy into incoming_history",
        "COPY incoming_history FROM STDIN BINARY",
        true,
        rows.iter().map(|older| &older.row),
    )
    .await?;
    let inserted = transaction
        .query(
            "INSERT INTO price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
             SELECT event_id, section, \"row\", seat, source, price, currency, available, observed_at
             FROM incoming_history ORDER BY ord
             ON CONFLICT DO NOTHING
             RETURNING event_id, section, \"row\", seat, source, observed_at",
            &[],
        )
        .await
        .map_err(WriteError::at("cannot insert stale history rows"))?;
    let count = inserted.len() as u64;
    if rows.iter().all(|older| older.fields.is_none()) {
        return Ok(count);
    }
    let inserted: HashSet<(ListingKey, Micros)> = inserted
        .iter()
        .map(|row| {
            let listing = ListingKey {
                event_id: row.get(0),
                seat: Seat {
                    section: row.get(1),
                    row: row.get(2),
                    seat: row.get(3),
                    source: row.get(4),
                },
            };
            let observed_at: DateTime<Utc> = row.get(5);
            (listing, observed_at.timestamp_micros())
        })
        .collect();
    let updates = stale_event_fields(rows, &inserted);
    apply_stale_event_fields(transaction, &updates).await?;
    Ok(count)
}

/// One event's fields as the stale rows of a commit bring them, each with the
/// `observed_at` of its carrier.
#[derive(Debug, Default, PartialEq, Eq)]
struct StaleFields {
    event_name: Option<(String, Micros)>,
    venue: Option<(String, Micros)>,
    event_date: Option<(Micros, Micros)>,
}

/// Per event, the most recent carrier of each field among the rows `inserted`
/// (the first row of each inserted identity; later copies were duplicates).
/// Of carriers at one `observed_at` the first in input order is kept, and the
/// update only takes a strictly more recent value: so the result is the same
/// however the input is cut into commits (see `apply_stale_event_fields`).
fn stale_event_fields(
    rows: &[OlderRow],
    inserted: &HashSet<(ListingKey, Micros)>,
) -> BTreeMap<String, StaleFields> {
    fn newer<V: Clone>(slot: &mut Option<(V, Micros)>, value: Option<&V>, at: Micros) {
        if let Some(value) = value {
            if slot.as_ref().is_none_or(|(_, stored)| at > *stored) {
                *slot = Some((value.clone(), at));
            }
        }
    }
    let mut seen: HashSet<(&ListingKey, Micros)> = HashSet::new();
    let mut updates: BTreeMap<String, StaleFields> = BTreeMap::new();
    for OlderRow { row, fields, .. } in rows {
        let identity = (&row.listing, row.observed_at);
        if !seen.insert(identity) {
            continue;
        }
        let Some(fields) = fields else { continue };
        if !inserted.contains(&(row.listing.clone(), row.observed_at)) {
            continue;
        }
        let at = row.observed_at;
        let update = updates.entry(row.listing.event_id.clone()).or_default();
        newer(&mut update.event_name, fields.event_name.as_ref(), at);
        newer(&mut update.venue, fields.venue.as_ref(), at);
        newer(&mut update.event_date, fields.event_date.as_ref(), at);
    }
    updates
}

/// Sets each field a stale row brought where it is more recent than the
/// stored one. Strictly: at one `observed_at` the value already stored stays,
/// whether the job's own event row (merged before, in this commit or an
/// earlier one) or an earlier stale row put it there.
async fn apply_stale_event_fields(
    transaction: &Transaction<'_>,
    updates: &BTreeMap<String, StaleFields>,
) -> Result<(), WriteError> {
    if updates.is_empty() {
        return Ok(());
    }
    let n = updates.len();
    let mut events: Vec<&str> = Vec::with_capacity(n);
    let (mut names, mut name_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut venues, mut venue_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut dates, mut date_ats) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for (event, fields) in updates {
        events.push(event.as_str());
        let (name, at) = split(fields.event_name.as_ref().map(|(name, at)| (name.as_str(), *at)));
        names.push(name);
        name_ats.push(at);
        let (venue, at) = split(fields.venue.as_ref().map(|(venue, at)| (venue.as_str(), *at)));
        venues.push(venue);
        venue_ats.push(at);
        let (date, at) = split(fields.event_date.map(|(date, at)| (timestamp(date), at)));
        dates.push(date);
        date_ats.push(at);
    }
    transaction
        .execute(
            "UPDATE events e SET
                 event_name = CASE WHEN u.name_at > e.event_name_observed_at OR e.event_name_observed_at IS NULL
                     THEN coalesce(u.name, e.event_name) ELSE e.event_name END,
                 event_name_observed_at = CASE WHEN u.name_at > e.event_name_observed_at OR e.event_name_observed_at IS NULL
                     THEN coalesce(u.name_at, e.event_name_observed_at) ELSE e.event_name_observed_at END,
                 venue = CASE WHEN u.venue_at > e.venue_observed_at OR e.venue_observed_at IS NULL
                     THEN coalesce(u.venue, e.venue) ELSE e.venue END,
                 venue_observed_at = CASE WHEN u.venue_at > e.venue_observed_at OR e.venue_observed_at IS NULL
                     THEN coalesce(u.venue_at, e.venue_observed_at) ELSE e.venue_observed_at END,
                 event_date = CASE WHEN u.date_at > e.event_date_observed_at OR e.event_date_observed_at IS NULL
                     THEN coalesce(u.event_date, e.event_date) ELSE e.event_date END,
                 event_date_observed_at = CASE WHEN u.date_at > e.event_date_observed_at OR e.event_date_observed_at IS NULL
                     THEN coalesce(u.date_at, e.event_date_observed_at) ELSE e.event_date_observed_at END,
                 updated_at = now()
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::timestamptz[],
                         $6::timestamptz[], $7::timestamptz[])
                  AS u(event_id, name, name_at, venue, venue_at, event_date, date_at)
             WHERE e.event_id = u.event_id",
            &[&events, &names, &name_ats, &venues, &venue_ats, &dates, &date_ats],
        )
        .await
        .map_err(WriteError::at("cannot apply the event fields of stale rows"))?;
    Ok(())
}

/// A value and its time, as two nullable SQL parameters.
fn split<V>(field: Option<(V, Micros)>) -> (Option<V>, Option<DateTime<Utc>>) {
    match field {
        Some((value, at)) => (Some(value), Some(timestamp(at))),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::EventFields;

    use super::*;
    use crate::sink::merge::tests::{at, listing_row};

    /// Of the stale rows' event fields only inserted rows count (a later copy
    /// of an identity, or one the table held, is a duplicate), the most recent
    /// carrier wins, and of carriers at one time the first in input order.
    #[test]
    fn stale_rows_bring_the_fields_of_their_most_recent_inserted_carrier() {
        let venue = |venue: &str| {
            Some(Box::new(EventFields {
                venue: Some(venue.to_owned()),
                ..EventFields::default()
            }))
        };
        let named = |name: &str| {
            Some(Box::new(EventFields {
                event_name: Some(name.to_owned()),
                ..EventFields::default()
            }))
        };
        let rows: Vec<OlderRow> = [
            (listing_row("a", 100, 5), venue("V5")),
            (listing_row("a", 101, 5), venue("copy of a@5, a duplicate")),
            (
                listing_row("b", 100, 9),
                named("b@9 was stored before, a duplicate"),
            ),
            (listing_row("c", 100, 7), venue("V7")),
            (listing_row("d", 100, 7), venue("V7 later")),
            (listing_row("e", 100, 3), named("N3")),
        ]
        .into_iter()
        .enumerate()
        .map(|(offset, (row, fields))| OlderRow {
            row,
            position: at(0, offset as i64),
            fields,
        })
        .collect();
        let inserted: HashSet<(ListingKey, Micros)> = [("a", 5), ("c", 7), ("d", 7), ("e", 3)]
            .into_iter()
            .map(|(seat, at)| (listing_row(seat, 0, at).listing, at))
            .collect();
        let updates = stale_event_fields(&rows, &inserted);
        assert_eq!(
            updates,
            BTreeMap::from([(
                "e1".to_owned(),
                StaleFields {
                    event_name: Some(("N3".to_owned(), 3)),
                    venue: Some(("V7".to_owned(), 7)),
                    event_date: None,
                }
            )])
        );
    }
}
