//! The `events` table: each event's row of the batch merged with one
//! `INSERT … ON CONFLICT`, per field the most recent value. (The fields stale
//! rows bring are applied by `history`.)

use conscope_dataflows::model::EventRow;
use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, timestamp, Values};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

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
                ]
            }),
        )
        .await?;
        transaction
            .batch_execute(
                "INSERT INTO events (event_id, event_name, venue, event_date, first_seen, last_seen,
                                     event_name_observed_at, venue_observed_at, event_date_observed_at)
                 SELECT * FROM incoming_events
                 ON CONFLICT (event_id) DO UPDATE SET
                     -- Per field the most recent value: a stale row's (applied
                     -- by the writer) stays until something newer comes.
                     event_name = CASE WHEN events.event_name_observed_at IS NULL OR EXCLUDED.event_name_observed_at >= events.event_name_observed_at
                         THEN EXCLUDED.event_name ELSE events.event_name END,
                     event_name_observed_at = CASE WHEN events.event_name_observed_at IS NULL OR EXCLUDED.event_name_observed_at >= events.event_name_observed_at
                         THEN EXCLUDED.event_name_observed_at ELSE events.event_name_observed_at END,
                     venue = CASE WHEN events.venue_observed_at IS NULL OR EXCLUDED.venue_observed_at >= events.venue_observed_at
                         THEN EXCLUDED.venue ELSE events.venue END,
                     venue_observed_at = CASE WHEN events.venue_observed_at IS NULL OR EXCLUDED.venue_observed_at >= events.venue_observed_at
                         THEN EXCLUDED.venue_observed_at ELSE events.venue_observed_at END,
                     event_date = CASE WHEN events.event_date_observed_at IS NULL OR EXCLUDED.event_date_observed_at >= events.event_date_observed_at
                         THEN EXCLUDED.event_date ELSE events.event_date END,
                     event_date_observed_at = CASE WHEN events.event_date_observed_at IS NULL OR EXCLUDED.event_date_observed_at >= events.event_date_observed_at
                         THEN EXCLUDED.event_date_observed_at ELSE events.event_date_observed_at END,
                     first_seen = EXCLUDED.first_seen, last_seen = EXCLUDED.last_seen,
                     updated_at = now()",
            )
            .await
            .map_err(WriteError::at("cannot merge events"))?;
    }
    Ok(())
}
