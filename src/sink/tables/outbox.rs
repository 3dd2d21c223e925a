//! The `outbox` table: the messages to publish once the transaction commits
//! (alerts, dead letters), by binary `COPY`. The publisher sends them.

use tokio_postgres::types::Type;
use tokio_postgres::Transaction;

use super::copy::{copy_in, Values};
use crate::sink::config::WriterConfig;
use crate::sink::encode::dead_letter;
use crate::sink::merge::Merged;
use crate::sink::write_error::WriteError;

/// A message to publish once the transaction commits.
pub(super) struct OutboxRow<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) key: Option<Vec<u8>>,
    pub(super) payload: Vec<u8>,
    pub(super) headers: Vec<String>,
}

/// Adds a dead letter for each message the batch rejected.
pub(super) fn push_dead_letters<'a>(
    outbox: &mut Vec<OutboxRow<'a>>,
    config: &'a WriterConfig,
    merged: &Merged,
) {
    for rejected in &merged.rejected {
        let (payload, headers) = dead_letter(rejected, &config.input_name);
        outbox.push(OutboxRow {
            topic: &config.dlq.topic,
            partition: config
                .dlq
                .partition_for(rejected.key.as_deref(), rejected.position.partition),
            key: rejected.key.clone(),
            payload,
            headers,
        });
    }
}

/// Copies `outbox` into the table.
pub(super) async fn write_outbox(
    transaction: &Transaction<'_>,
    outbox: &[OutboxRow<'_>],
) -> Result<(), WriteError> {
    if !outbox.is_empty() {
        copy_in(
            transaction,
            "cannot copy into outbox",
            "COPY outbox (topic, partition, key, payload, headers) FROM STDIN BINARY",
            &[Type::TEXT, Type::INT4, Type::BYTEA, Type::BYTEA, Type::TEXT_ARRAY],
            outbox.iter().map(|row| -> Values<'_> {
                vec![
                    Box::new(row.topic),
                    Box::new(row.partition),
                    Box::new(row.key.as_deref()),
                    Box::new(row.payload.as_slice()),
                    Box::new(row.headers.as_slice()),
                ]
            }),
        )
        .await?;
    }
    Ok(())
}
