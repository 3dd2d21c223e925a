//! The `event_summary` and `section_summary` tables: each changed key's new
//! row upserted, or deleted when the key has no listing left.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, decimal, Values};
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// Upserts the changed keys of `event_summary` and `section_summary` and deletes
/// the keys that have no listing left.
pub(super) async fn write_summaries(
    transaction: &Transaction<'_>,
    merged: &Merged,
) -> Result<(), WriteError> {
    if !merged.event_summaries.is_empty() {
        copy_in(
            transaction,
            "cannot copy into incoming_event_summary",
            "COPY incoming_event_summary FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::BPCHAR,
                Type::INT8,
                Type::INT8,
                Type::NUMERIC,
                Type::BOOL,
            ],
            merged.event_summaries.iter().map(|(key, summary)| -> Values<'_> {
                vec![
                    Box::new(key.event_id.as_str()),
                    Box::new(key.currency.as_str().to_owned()),
                    Box::new(summary.map(|summary| summary.listings)),
                    Box::new(summary.map(|summary| summary.available)),
                    Box::new(summary.and_then(|summary| summary.get_in_price).map(decimal)),
                    Box::new(summary.is_some()),
                ]
            }),
        )
        .await?;
        transaction
            .batch_execute(
                "DELETE FROM event_summary s USING incoming_event_summary i
                 WHERE NOT i.present AND s.event_id = i.event_id AND s.currency = i.currency;
                 INSERT INTO event_summary (event_id, currency, listings, available, get_in_price)
                 SELECT event_id, currency, listings, available, get_in_price
                 FROM incoming_event_summary WHERE present
                 ON CONFLICT (event_id, currency) DO UPDATE SET
                     listings = EXCLUDED.listings, available = EXCLUDED.available,
                     get_in_price = EXCLUDED.get_in_price",
            )
            .await
            .map_err(WriteError::at("cannot merge event_summary"))?;
    }
    if !merged.section_summaries.is_empty() {
        copy_in(
            transaction,
            "cannot copy into incoming_section_summary",
            "COPY incoming_section_summary FROM STDIN BINARY",
            &[
                Type::TEXT,
                Type::TEXT,
                Type::BPCHAR,
                Type::INT8,
                Type::NUMERIC,
                Type::BOOL,
            ],
            merged
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
                }),
        )
        .await?;
        transaction
            .batch_execute(
                "DELETE FROM section_summary s USING incoming_section_summary i
                 WHERE NOT i.present AND s.event_id = i.event_id AND s.section = i.section
                   AND s.currency = i.currency;
                 INSERT INTO section_summary (event_id, section, currency, available, low_price)
                 SELECT event_id, section, currency, available, low_price
                 FROM incoming_section_summary WHERE present
                 ON CONFLICT (event_id, section, currency) DO UPDATE SET
                     available = EXCLUDED.available, low_price = EXCLUDED.low_price",
            )
            .await
            .map_err(WriteError::at("cannot merge section_summary"))?;
    }
    Ok(())
}
