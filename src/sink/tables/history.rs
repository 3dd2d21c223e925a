//! `price_history`: the batch's new rows by binary `COPY`, and the rows of
//! observations older than their listing's current state, inserted in
//! partition order with the first of an identity winning; the event fields
//! the inserted stale rows bring, applied to `events` where their carrier is
//! the greater in `(observed_at, partition, offset)`: the most recent, and at
//! one time the later message. Rows observed before the pruned boundary are
//! left out, and the month partitions of the others made first (`retention`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use conscope_dataflows::model::{ListingKey, ListingRow, Micros, Position, Seat, Stamped};
use tokio_postgres::Transaction;

use super::copy::{copy_listing_rows, timestamp};
use super::events::field_merge;
use super::retention::{ensure_months, pruned_before, KnownMonths};
use super::Written;
use crate::fail::fail_point;
use crate::sink::merge::{HistoryWritten, Merged, OlderRow};
use crate::sink::write_error::WriteError;

/// Copies the batch's history rows, then inserts its older rows, but those
/// observed before the pruned boundary and the new rows of the events in
/// `moved` (another connection writes those); makes their months' partitions
/// exist first (`months`: those known to).
pub(super) async fn write_history(
    transaction: &Transaction<'_>,
    merged: &Merged,
    months: &KnownMonths,
    moved: &HashSet<&str>,
) -> Result<Written, WriteError> {
    let own = |row: &&ListingRow| !moved.contains(row.listing.event_id.as_str());
    let owned = merged.history.iter().map(|new| &new.row).filter(own).count();
    if owned == 0 && merged.maybe_stale.is_empty() {
        return Ok(Written::default());
    }
    // Before anything touches price_history: see `retention`.
    let before = pruned_before(transaction).await?;
    let kept = |row: &ListingRow| before.is_none_or(|before| row.observed_at >= before);
    let history: Vec<&ListingRow> = merged
        .history
        .iter()
        .map(|new| &new.row)
        .filter(own)
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
        copy_history_rows(transaction, history.iter().copied()).await?;
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
            pruned_new: (owned - history.len()) as u64,
            pruned_older: (merged.maybe_stale.len() - older.len()) as u64,
        },
        months: ensured,
    })
}

/// `COPY`s new rows into `price_history`.
pub(super) async fn copy_history_rows<'a>(
    transaction: &Transaction<'_>,
    rows: impl IntoIterator<Item = &'a ListingRow>,
) -> Result<(), WriteError> {
    copy_listing_rows(
        transaction,
        "cannot copy into price_history",
        "COPY price_history (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
         FROM STDIN BINARY",
        false,
        rows,
    )
    .await
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

/// One event's fields as the stale rows of a commit bring them, each with its
/// carrier's time and position.
#[derive(Debug, Default, PartialEq, Eq)]
struct StaleFields {
    event_name: Option<Stamped<String>>,
    venue: Option<Stamped<String>>,
    event_date: Option<Stamped<Micros>>,
}

/// Per event, the greatest carrier of each field in `(observed_at, position)`
/// ([`Stamped::order`]) among the rows `inserted` (the first row of each
/// inserted identity; later copies were duplicates): the most recent, and of
/// carriers at one time the later message. The update takes it only where it
/// is greater than the stored carrier too, so the result is the same however
/// the input is cut into commits (see `apply_stale_event_fields`).
fn stale_event_fields(
    rows: &[OlderRow],
    inserted: &HashSet<(ListingKey, Micros)>,
) -> BTreeMap<String, StaleFields> {
    fn greater<V: Clone>(slot: &mut Option<Stamped<V>>, value: Option<&V>, at: Micros, position: Position) {
        if let Some(value) = value {
            let order = (at, Some(position));
            if slot.as_ref().is_none_or(|stored| order > stored.order()) {
                *slot = Some(Stamped {
                    value: value.clone(),
                    observed_at: at,
                    position: Some(position),
                });
            }
        }
    }
    let mut seen: HashSet<(&ListingKey, Micros)> = HashSet::new();
    let mut updates: BTreeMap<String, StaleFields> = BTreeMap::new();
    for OlderRow {
        row,
        position,
        fields,
    } in rows
    {
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
        greater(&mut update.event_name, fields.event_name.as_ref(), at, *position);
        greater(&mut update.venue, fields.venue.as_ref(), at, *position);
        greater(&mut update.event_date, fields.event_date.as_ref(), at, *position);
    }
    updates
}

/// Sets each field a stale row brought where its carrier is greater in
/// `(observed_at, partition, offset)` than the stored one (`field_merge`, the
/// rule of the events merge): at one time the later message wins, whether the
/// job's own event row (merged before, in this commit or an earlier one) or a
/// stale row of an earlier commit put the stored value there.
async fn apply_stale_event_fields(
    transaction: &Transaction<'_>,
    updates: &BTreeMap<String, StaleFields>,
) -> Result<(), WriteError> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut events: Vec<&str> = Vec::with_capacity(updates.len());
    let (mut names, mut name_carriers) = (Vec::new(), Carriers::default());
    let (mut venues, mut venue_carriers) = (Vec::new(), Carriers::default());
    let (mut dates, mut date_carriers) = (Vec::new(), Carriers::default());
    for (event, fields) in updates {
        events.push(event.as_str());
        names.push(name_carriers.push(fields.event_name.as_ref()).map(String::as_str));
        venues.push(venue_carriers.push(fields.venue.as_ref()).map(String::as_str));
        dates.push(
            date_carriers
                .push(fields.event_date.as_ref())
                .map(|date| timestamp(*date)),
        );
    }
    transaction
        .execute(
            &*STALE_FIELDS_MERGE,
            &[
                &events,
                &names,
                &name_carriers.at,
                &name_carriers.partition,
                &name_carriers.offset,
                &venues,
                &venue_carriers.at,
                &venue_carriers.partition,
                &venue_carriers.offset,
                &dates,
                &date_carriers.at,
                &date_carriers.partition,
                &date_carriers.offset,
            ],
        )
        .await
        .map_err(WriteError::at("cannot apply the event fields of stale rows"))?;
    Ok(())
}

/// The update of `apply_stale_event_fields`: `u` has the columns of `events`
/// the merge reads.
static STALE_FIELDS_MERGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE events e SET
             {},
             updated_at = now()
         FROM unnest($1::text[],
                     $2::text[], $3::timestamptz[], $4::int[], $5::bigint[],
                     $6::text[], $7::timestamptz[], $8::int[], $9::bigint[],
                     $10::timestamptz[], $11::timestamptz[], $12::int[], $13::bigint[])
              AS u(event_id,
                   event_name, event_name_observed_at, event_name_partition, event_name_offset,
                   venue, venue_observed_at, venue_partition, venue_offset,
                   event_date, event_date_observed_at, event_date_partition, event_date_offset)
         WHERE e.event_id = u.event_id",
        field_merge("u", "e")
    )
});

/// The carriers of one field, one per event, as nullable SQL parameters.
#[derive(Default)]
struct Carriers {
    at: Vec<Option<DateTime<Utc>>>,
    partition: Vec<Option<i32>>,
    offset: Vec<Option<i64>>,
}

impl Carriers {
    /// Adds the carrier of `field` (or none); returns its value.
    fn push<'a, V>(&mut self, field: Option<&'a Stamped<V>>) -> Option<&'a V> {
        let position = field.and_then(|stamped| stamped.position);
        self.at.push(field.map(|stamped| timestamp(stamped.observed_at)));
        self.partition.push(position.map(|position| position.partition));
        self.offset.push(position.map(|position| position.offset));
        field.map(|stamped| &stamped.value)
    }
}

#[cfg(test)]
mod tests {
    use conscope_dataflows::model::EventFields;

    use super::*;
    use crate::sink::merge::tests::{at, listing_row};

    fn carried(value: &'static str, at: Micros, position: Position) -> Option<Stamped<String>> {
        Some(Stamped {
            value: value.to_owned(),
            observed_at: at,
            position: Some(position),
        })
    }

    /// Of the stale rows' event fields only inserted rows count (a later copy
    /// of an identity, or one the table held, is a duplicate), the most recent
    /// carrier wins, and of carriers at one time the later message: the later
    /// in a partition, and across partitions the greater position, whatever
    /// the order of the rows.
    #[test]
    fn stale_rows_bring_the_fields_of_their_greatest_inserted_carrier() {
        let fields = |name: Option<&str>, venue: Option<&str>| {
            Some(Box::new(EventFields {
                event_name: name.map(str::to_owned),
                venue: venue.map(str::to_owned),
                ..EventFields::default()
            }))
        };
        let rows: Vec<OlderRow> = [
            (listing_row("a", 100, 5), at(0, 0), fields(None, Some("V5"))),
            (
                listing_row("a", 101, 5),
                at(0, 1),
                fields(None, Some("copy of a@5, a duplicate")),
            ),
            (
                listing_row("b", 100, 9),
                at(0, 2),
                fields(Some("b@9 was stored before, a duplicate"), None),
            ),
            (listing_row("c", 100, 7), at(0, 3), fields(None, Some("V7"))),
            (listing_row("d", 100, 7), at(0, 4), fields(None, Some("V7 later"))),
            (
                listing_row("e", 100, 3),
                at(1, 7),
                fields(Some("N3 partition 1"), None),
            ),
            (
                listing_row("f", 100, 3),
                at(0, 9),
                fields(Some("N3 partition 0"), None),
            ),
        ]
        .into_iter()
        .map(|(row, position, fields)| OlderRow {
            row,
            position,
            fields,
        })
        .collect();
        let inserted: HashSet<(ListingKey, Micros)> = [("a", 5), ("c", 7), ("d", 7), ("e", 3), ("f", 3)]
            .into_iter()
            .map(|(seat, at)| (listing_row(seat, 0, at).listing, at))
            .collect();
        let updates = stale_event_fields(&rows, &inserted);
        assert_eq!(
            updates,
            BTreeMap::from([(
                "e1".to_owned(),
                StaleFields {
                    event_name: carried("N3 partition 1", 3, at(1, 7)),
                    venue: carried("V7 later", 7, at(0, 4)),
                    event_date: None,
                }
            )])
        );

        // The same rows in another order (as two partitions may interleave)
        // bring the same fields.
        let mut reversed: Vec<OlderRow> = rows[3..].to_vec();
        reversed.reverse();
        let updates = stale_event_fields(&reversed, &inserted);
        assert_eq!(updates["e1"].event_name, carried("N3 partition 1", 3, at(1, 7)));
        assert_eq!(updates["e1"].venue, carried("V7 later", 7, at(0, 4)));
    }
}
