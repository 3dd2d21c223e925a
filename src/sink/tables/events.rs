//! The `events` table: each event's row of the batch merged with one
//! `INSERT … ON CONFLICT`, per field the value of the greater carrier in
//! `(observed_at, partition, offset)` (`event_field_wins`, migration 0016).
//! (The fields stale rows bring are applied by `history`, by the same rule.)

use std::sync::LazyLock;

use conscope_dataflows::model::{EventRow, Position, Stamped};
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, timestamp, Values};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// The merge of `incoming_events` into `events`.
static EVENTS_MERGE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO events (event_id, event_name, venue, event_date, first_seen, last_seen,
                             event_name_observed_at, venue_observed_at, event_date_observed_at,
                             event_name_partition, event_name_offset, venue_partition,
                             venue_offset, event_date_partition, event_date_offset)
         SELECT * FROM incoming_events
         ON CONFLICT (event_id) DO UPDATE SET
             {},
             first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen,
             updated_at = now()",
        field_merge("EXCLUDED", "events")
    )
});

/// The `SET` items that take each event field (value, time and carrier's
/// position) from the row named `new` where its carrier wins over the stored
/// one, `old` (`event_field_wins`), and keep `old`'s otherwise: so a stale
/// row's value (applied by `history`) stays until a greater carrier comes,
/// whichever merge runs first. Column names only, never data. For the name:
/// `event_name = CASE WHEN event_field_wins(new.event_name_observed_at,
/// new.event_name_partition, new.event_name_offset, old.event_name_observed_at,
/// …) THEN new.event_name ELSE old.event_name END`, and the same for
/// `event_name_observed_at`, `event_name_partition`, `event_name_offset`.
pub(super) fn field_merge(new: &str, old: &str) -> String {
    let mut items = Vec::new();
    for field in ["event_name", "venue", "event_date"] {
        let wins = format!(
            "event_field_wins({new}.{field}_observed_at, {new}.{field}_partition, {new}.{field}_offset,
                              {old}.{field}_observed_at, {old}.{field}_partition, {old}.{field}_offset)"
        );
        for column in [
            field.to_owned(),
            format!("{field}_observed_at"),
            format!("{field}_partition"),
            format!("{field}_offset"),
        ] {
            items.push(format!(
                "{column} = CASE WHEN {wins} THEN {new}.{column} ELSE {old}.{column} END"
            ));
        }
    }
    items.join(",\n             ")
}

/// Merges the batch's event rows into `events`.
pub(super) async fn write_events(transaction: &Transaction<'_>, merged: &Merged) -> Result<(), WriteError> {
    if !merged.events.is_empty() {
        let mut events: Vec<&EventRow> = merged.events.values().collect();
        // A stable order keeps lock order stable between concurrent writers.
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        copy_in(
            transaction,
            "cannot copy into incoming_events",
            "COPY incoming_events FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::INT4,
                Type::INT8,
                Type::INT4,
                Type::INT8,
                Type::INT4,
                Type::INT8,
            ],
            events.iter().map(|event| -> Values<'_> {
                vec![
                    Box::new(event.event_id.as_str()),
                    Box::new(event.display_name()),
                    Box::new(event.venue.as_ref().map(|venue| venue.value.as_str())),
                    Box::new(event.event_date.as_ref().map(|date| timestamp(date.value))),
                    Box::new(timestamp(event.first_seen)),
                    Box::new(timestamp(event.last_seen)),
                    Box::new(event.event_name.as_ref().map(|name| timestamp(name.observed_at))),
                    Box::new(event.venue.as_ref().map(|venue| timestamp(venue.observed_at))),
                    Box::new(event.event_date.as_ref().map(|date| timestamp(date.observed_at))),
                    Box::new(carrier(&event.event_name).map(|at| at.partition)),
                    Box::new(carrier(&event.event_name).map(|at| at.offset)),
                    Box::new(carrier(&event.venue).map(|at| at.partition)),
                    Box::new(carrier(&event.venue).map(|at| at.offset)),
                    Box::new(carrier(&event.event_date).map(|at| at.partition)),
                    Box::new(carrier(&event.event_date).map(|at| at.offset)),
                ]
            }),
        )
        .await?;
        transaction
            .batch_execute(&EVENTS_MERGE)
            .await
            .map_err(WriteError::at("cannot merge events"))?;
    }
    Ok(())
}

/// The position of the message that carried `field`, if known.
fn carrier<V>(field: &Option<Stamped<V>>) -> Option<Position> {
    field.as_ref().and_then(|stamped| stamped.position)
}
