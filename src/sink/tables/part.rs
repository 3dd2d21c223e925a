//! What the writer's other connections write (`sink::parts`): the new history
//! rows and the listing rows of the events a batch hands them, in a
//! transaction they then prepare. Nothing here may touch a temporary table,
//! which PostgreSQL refuses to prepare, or a row the main transaction writes.

use conscope_dataflows::model::ListingRow;
use tokio_postgres::Transaction;

use super::history::copy_history_rows;
use super::listings::upsert_listing_rows;
use super::retention::pruned_before;
use crate::sink::write_error::WriteError;

/// Copies `history` but the rows observed before the pruned boundary, and
/// upserts `listings`; returns how many history rows that boundary left out.
/// Their months' partitions exist already: the split hands a part only rows
/// of known months.
pub(in crate::sink) async fn write_part(
    transaction: &Transaction<'_>,
    history: &[&ListingRow],
    listings: &[&ListingRow],
) -> Result<u64, WriteError> {
    let mut pruned = 0;
    if !history.is_empty() {
        // Locked FOR SHARE like the main transaction's: a prune waits for both.
        let before = pruned_before(transaction).await?;
        let kept: Vec<&ListingRow> = history
            .iter()
            .copied()
            .filter(|row| before.is_none_or(|before| row.observed_at >= before))
            .collect();
        pruned = (history.len() - kept.len()) as u64;
        if !kept.is_empty() {
            copy_history_rows(transaction, kept).await?;
        }
    }
    upsert_listing_rows(transaction, listings).await?;
    Ok(pruned)
}
