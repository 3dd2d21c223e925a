//! The `listings` table: each listing's last state in the batch, merged with
//! one `INSERT … ON CONFLICT`: from a temporary table on the main connection,
//! from arrays on the writer's other connections (`part`), which cannot use
//! temporary tables in a prepared transaction.

use std::collections::HashSet;

use conscope_dataflows::model::ListingRow;
use tokio_postgres::Transaction;

use super::copy::{copy_listing_rows, decimal, timestamp};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// A stored listing takes the incoming state.
const UPSERT: &str = "ON CONFLICT (event_id, section, \"row\", seat, source) DO UPDATE SET
     price = EXCLUDED.price, currency = EXCLUDED.currency,
     available = EXCLUDED.available, observed_at = EXCLUDED.observed_at";

/// Upserts the batch's listing rows but those of the events in `moved`.
pub(super) async fn write_listings(
    transaction: &Transaction<'_>,
    merged: &Merged,
    moved: &HashSet<&str>,
) -> Result<(), WriteError> {
    let mut rows = merged
        .listings
        .values()
        .filter(|row| !moved.contains(row.listing.event_id.as_str()))
        .peekable();
    if rows.peek().is_some() {
        copy_listing_rows(
            transaction,
            "cannot copy into incoming_listings",
            "COPY incoming_listings FROM STDIN BINARY",
            false,
            rows,
        )
        .await?;
        transaction
            .batch_execute(&format!(
                "INSERT INTO listings SELECT * FROM incoming_listings {UPSERT}"
            ))
            .await
            .map_err(WriteError::at("cannot merge listings"))?;
    }
    Ok(())
}

/// Upserts `rows` from one array per column: no temporary table.
pub(super) async fn upsert_listing_rows(
    transaction: &Transaction<'_>,
    rows: &[&ListingRow],
) -> Result<(), WriteError> {
    if rows.is_empty() {
        return Ok(());
    }
    let column = |field: fn(&ListingRow) -> &str| rows.iter().map(|row| field(row)).collect::<Vec<&str>>();
    let events = column(|row| &row.listing.event_id);
    let sections = column(|row| &row.listing.seat.section);
    let seat_rows = column(|row| &row.listing.seat.row);
    let seats = column(|row| &row.listing.seat.seat);
    let sources = column(|row| &row.listing.seat.source);
    let currencies = column(|row| row.currency.as_str());
    let prices: Vec<_> = rows.iter().map(|row| decimal(row.price)).collect();
    let available: Vec<bool> = rows.iter().map(|row| row.available).collect();
    let observed: Vec<_> = rows.iter().map(|row| timestamp(row.observed_at)).collect();
    transaction
        .execute(
            &format!(
                "INSERT INTO listings (event_id, section, \"row\", seat, source, price, currency, available, observed_at)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::numeric[], $7::text[], $8::bool[], $9::timestamptz[])
                 {UPSERT}"
            ),
            &[&events, &sections, &seat_rows, &seats, &sources, &prices, &currencies, &available, &observed],
        )
        .await
        .map_err(WriteError::at("cannot merge listings"))?;
    Ok(())
}
