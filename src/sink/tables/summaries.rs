//! The `event_summary` and `section_summary` tables: each changed key's new
//! row upserted, or deleted when the key has no listing left.
//!
//! A key loses its last listing only when a listing changes currency, so most
//! commits delete nothing: the `DELETE … USING` runs only when some key goes.
//! The temporary table it joins has no statistics (autovacuum never analyses
//! temporary tables), and PostgreSQL scanned the whole summary table for it at
//! every commit: 1.5 s of a 100 000-listing replay's 79 commits.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, decimal, Values};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// How one summary table is merged from its temporary table: the `COPY` into
/// it, the delete of the keys that went, the upsert of the others (each with
/// the context its errors name).
struct Merge {
    copy: (&'static str, &'static str),
    types: &'static [Type],
    delete: (&'static str, &'static str),
    upsert: (&'static str, &'static str),
}

const EVENT_SUMMARY: Merge = Merge {
    copy: (
        "cannot copy into incoming_event_summary",
        "COPY incoming_event_summary FROM STDIN BINARY",
    ),
    types: &[
        Type::TEXT,
        Type::BPCHAR,
        Type::INT8,
        Type::INT8,
        Type::NUMERIC,
        Type::BOOL,
    ],
    delete: (
        "cannot delete from event_summary",
        "DELETE FROM event_summary s USING incoming_event_summary i
         WHERE NOT i.present AND s.event_id = i.event_id AND s.currency = i.currency",
    ),
    upsert: (
        "cannot merge event_summary",
        "INSERT INTO event_summary (event_id, currency, listings, available, get_in_price)
         SELECT event_id, currency, listings, available, get_in_price
         FROM incoming_event_summary WHERE present
         ON CONFLICT (event_id, currency) DO UPDATE SET
             listings = EXCLUDED.listings, available = EXCLUDED.available,
             get_in_price = EXCLUDED.get_in_price",
    ),
};

const SECTION_SUMMARY: Merge = Merge {
    copy: (
        "cannot copy into incoming_section_summary",
        "COPY incoming_section_summary FROM STDIN BINARY",
    ),
    types: &[
        Type::TEXT,
        Type::TEXT,
        Type::BPCHAR,
        Type::INT8,
        Type::NUMERIC,
        Type::BOOL,
    ],
    delete: (
        "cannot delete from section_summary",
        "DELETE FROM section_summary s USING incoming_section_summary i
         WHERE NOT i.present AND s.event_id = i.event_id AND s.section = i.section
           AND s.currency = i.currency",
    ),
    upsert: (
        "cannot merge section_summary",
        "INSERT INTO section_summary (event_id, section, currency, available, low_price)
         SELECT event_id, section, currency, available, low_price
         FROM incoming_section_summary WHERE present
         ON CONFLICT (event_id, section, currency) DO UPDATE SET
             available = EXCLUDED.available, low_price = EXCLUDED.low_price",
    ),
};

impl Merge {
    /// Copies `rows` (the last column: whether the key still has listings),
    /// deletes the keys that went when `any_gone`, upserts the others.
    async fn run<'a>(
        &self,
        transaction: &Transaction<'_>,
        rows: impl IntoIterator<Item = Values<'a>>,
        any_gone: bool,
    ) -> Result<(), WriteError> {
        copy_in(transaction, self.copy.0, self.copy.1, self.types, rows).await?;
        if any_gone {
            transaction
                .batch_execute(self.delete.1)
                .await
                .map_err(WriteError::at(self.delete.0))?;
        }
        transaction
            .batch_execute(self.upsert.1)
            .await
            .map_err(WriteError::at(self.upsert.0))
    }
}

/// Upserts the changed keys of `event_summary` and `section_summary` and deletes
/// the keys that have no listing left.
pub(super) async fn write_summaries(
    transaction: &Transaction<'_>,
    merged: &Merged,
) -> Result<(), WriteError> {
    if !merged.event_summaries.is_empty() {
        let rows = merged.event_summaries.iter().map(|(key, summary)| -> Values<'_> {
            vec![
                Box::new(key.event_id.as_str()),
                Box::new(key.currency.as_str().to_owned()),
                Box::new(summary.map(|summary| summary.listings)),
                Box::new(summary.map(|summary| summary.available)),
                Box::new(summary.and_then(|summary| summary.get_in_price).map(decimal)),
                Box::new(summary.is_some()),
            ]
        });
        let any_gone = merged.event_summaries.values().any(Option::is_none);
        EVENT_SUMMARY.run(transaction, rows, any_gone).await?;
    }
    if !merged.section_summaries.is_empty() {
        let rows = merged
            .section_summaries
            .iter()
            .map(|(key, summary)| -> Values<'_> {
                vec![
                    Box::new(key.event_id.as_str()),
                    Box::new(key.section.as_str()),
                    Box::new(key.currency.as_str().to_owned()),
                    Box::new(summary.map(|summary| summary.available)),
                    Box::new(summary.and_then(|summary| summary.low_price).map(decimal)),
                    Box::new(summary.is_some()),
                ]
            });
        let any_gone = merged.section_summaries.values().any(Option::is_none);
        SECTION_SUMMARY.run(transaction, rows, any_gone).await?;
    }
    Ok(())
}
