//! The `listings` table: each listing's last state in the batch, merged with
//! one `INSERT … ON CONFLICT`.

use tokio_postgres::Transaction;

use super::copy::copy_listing_rows;
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// Upserts the batch's listing rows.
pub(super) async fn write_listings(transaction: &Transaction<'_>, merged: &Merged) -> Result<(), WriteError> {
    if !merged.listings.is_empty() {
        copy_listing_rows(
            transaction,
            "cannot copy into incoming_listings",
            "COPY incoming_listings FROM STDIN BINARY",
            false,
            merged.listings.values(),
        )
        .await?;
        transaction
            .batch_execute(
                "INSERT INTO listings SELECT * FROM incoming_listings
                 ON CONFLICT (event_id, section, \"row\", seat, source) DO UPDATE SET
                     price = EXCLUDED.price, currency = EXCLUDED.currency,
                     available = EXCLUDED.available, observed_at = EXCLUDED.observed_at",
            )
            .await
            .map_err(WriteError::at("cannot merge listings"))?;
    }
    Ok(())
}
