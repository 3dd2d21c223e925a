//! The SQL of every table the writer fills, one file per table, and the
//! session's temporary tables the merges go through.
//!
//! # Encoding
//! History rows go in with binary `COPY`. Rows of observations older than their
//! listing's current state (`MaybeStale`: stale, or duplicates of a stored
//! identity, which only the table knows) are `COPY`'d into a temporary table and
//! inserted in partition order with `ON CONFLICT DO NOTHING`: the first of an
//! identity wins, the rows inserted split them into the stale and duplicate
//! counters, and the stale ones' event fields are applied where their carrier
//! is the greater in `(observed_at, partition, offset)`, the order the events
//! merge keeps per field too (`event_field_wins`, migration 0016). Listings,
//! events and alerts are `COPY`'d
//! into temporary tables and merged with one `INSERT … ON CONFLICT` each; rejects
//! and alerts become `outbox` rows. Summary changes (differential updates) are
//! folded into the new row of each changed key, or its absence, and merged the
//! same way (upsert, or delete when the key has no listing left). No SQL is built
//! from data.
//!
//! # Layout
//! - `copy`: the `COPY` helpers and the encoding of values.
//! - `events`, `history`, `listings`, `summaries`, `alerts`, `outbox`,
//!   `rule_state`: one table's SQL each, called in that order by [`write_rows`].
//! - `offsets`: `job_progress` and `kafka_offsets`, the writer's bookkeeping.
//! - `part`: what the writer's other connections write (`sink::parts`).
//! - `retention`: `history_retention` and the month partitions of
//!   `price_history`, as `history` needs them.
//!
//! Writes what `merge` folded, within a transaction it is handed; never
//! begins or commits one. Imports `merge` and `config`, never the writer or
//! `isolate`.

mod alerts;
mod copy;
mod events;
mod history;
mod listings;
mod offsets;
mod outbox;
mod part;
mod retention;
mod rule_state;
mod summaries;

use std::collections::HashSet;

use tokio_postgres::{Client, Transaction};

use super::config::WriterConfig;
use super::merge::{HistoryWritten, Merged};
use super::write_error::WriteError;
use alerts::write_alerts;
use events::write_events;
use history::write_history;
use listings::write_listings;
pub(super) use offsets::{
    advance_commit_no, lost_commit_landed, read_commit_no, read_progress, store_offsets,
};
use outbox::{push_dead_letters, write_outbox};
pub(super) use part::write_part;
pub(super) use retention::KnownMonths;
use retention::Month;
use rule_state::write_rule_states;
use summaries::write_summaries;

/// Per-connection temporary tables for the merges.
pub(super) async fn prepare(client: &Client) -> Result<(), WriteError> {
    client
        .batch_execute(
            "CREATE TEMP TABLE IF NOT EXISTS incoming_events (
                 event_id TEXT, event_name TEXT, venue TEXT, event_date TIMESTAMPTZ,
                 first_seen TIMESTAMPTZ, last_seen TIMESTAMPTZ, event_name_observed_at TIMESTAMPTZ,
                 venue_observed_at TIMESTAMPTZ, event_date_observed_at TIMESTAMPTZ,
                 event_name_partition INTEGER, event_name_offset BIGINT, venue_partition INTEGER,
                 venue_offset BIGINT, event_date_partition INTEGER, event_date_offset BIGINT)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_history (
                 ord BIGINT, event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 price NUMERIC(12,2), currency CHAR(3), available BOOLEAN, observed_at TIMESTAMPTZ)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_listings (
                 event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 price NUMERIC(12,2), currency CHAR(3), available BOOLEAN, observed_at TIMESTAMPTZ)
                 ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_alerts (
                 alert_id TEXT, kind TEXT, event_id TEXT, section TEXT, \"row\" TEXT, seat TEXT, source TEXT,
                 rule_id BIGINT, old_price NUMERIC(12,2), new_price NUMERIC(12,2), currency CHAR(3),
                 observed_at TIMESTAMPTZ) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_event_summary (
                 event_id TEXT, currency CHAR(3), listings BIGINT, available BIGINT,
                 get_in_price NUMERIC(12,2), present BOOLEAN) ON COMMIT DELETE ROWS;
             CREATE TEMP TABLE IF NOT EXISTS incoming_section_summary (
                 event_id TEXT, section TEXT, currency CHAR(3), available BIGINT,
                 low_price NUMERIC(12,2), present BOOLEAN) ON COMMIT DELETE ROWS;",
        )
        .await
        .map_err(WriteError::at("cannot create temporary tables"))?;
    Ok(())
}

/// Empties the temporary tables within a transaction (they empty themselves
/// at commit): `isolate` writes several probes in one transaction. Every
/// temporary table of the session, so a table added to `prepare` is covered.
pub(super) async fn clear_incoming(transaction: &Transaction<'_>) -> Result<(), WriteError> {
    transaction
        .batch_execute(
            "DO $$ DECLARE t regclass; BEGIN
                 FOR t IN SELECT oid FROM pg_class WHERE relnamespace = pg_my_temp_schema() AND relkind = 'r'
                 LOOP EXECUTE format('DELETE FROM %s', t); END LOOP;
             END $$",
        )
        .await
        .map_err(WriteError::at("cannot empty the temporary tables"))
}

/// What [`write_rows`] did with the history rows, and the months whose
/// partitions it made sure of (known once the transaction commits).
#[derive(Debug, Default)]
pub(super) struct Written {
    pub(super) history: HistoryWritten,
    pub(super) months: Vec<Month>,
}

/// Every row derived from the messages of `merged`: events, history, listings,
/// summaries, alerts, the outbox, rule states. Without the bookkeeping
/// (progress, offsets), so `isolate` can write parts of a batch. `months`:
/// the month partitions of `price_history` known to exist. The new history
/// rows and the listing rows of the events in `moved` are left out: the
/// writer's other connections write them (`sink::parts`).
pub(super) async fn write_rows(
    transaction: &Transaction<'_>,
    config: &WriterConfig,
    merged: &Merged,
    months: &KnownMonths,
    moved: &HashSet<&str>,
) -> Result<Written, WriteError> {
    // Events first: history, listings and alerts reference them.
    write_events(transaction, merged).await?;
    let written = write_history(transaction, merged, months, moved).await?;
    write_listings(transaction, merged, moved).await?;

    // With the listings they summarise, in the same transaction.
    write_summaries(transaction, merged).await?;

    let mut outbox = write_alerts(transaction, config, merged).await?;
    push_dead_letters(&mut outbox, config, merged);
    write_outbox(transaction, &outbox).await?;

    write_rule_states(transaction, merged).await?;

    Ok(written)
}
