//! The `quarantine` table: input messages PostgreSQL refused for good, and why.
//!
//! The writer stores them (`isolate` found them) before the job starts over;
//! the job loads them at start and `ingest` rejects each one with its reason,
//! so the dead letter is committed with the offsets like any other reject.
//! Keyed like `kafka_offsets` (input name, partition, offset).

use std::collections::HashMap;

use anyhow::Context;
use conscope_dataflows::model::Position;
use tokio_postgres::Client;

use super::write_error::WriteError;

/// The quarantined messages of `input_name`, with their reasons.
pub async fn load(client: &Client, input_name: &str) -> anyhow::Result<HashMap<Position, String>> {
    let rows = client
        .query(
            "SELECT partition, \"offset\", reason FROM quarantine WHERE topic = $1",
            &[&input_name],
        )
        .await
        .context("cannot read quarantine")?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let position = Position {
                partition: row.get(0),
                offset: row.get(1),
            };
            (position, row.get(2))
        })
        .collect())
}

/// Stores `offenders` (idempotent: a message found twice keeps its first reason).
pub async fn store(
    client: &Client,
    input_name: &str,
    offenders: &[(Position, String)],
) -> Result<(), WriteError> {
    let partitions: Vec<i32> = offenders.iter().map(|(position, _)| position.partition).collect();
    let offsets: Vec<i64> = offenders.iter().map(|(position, _)| position.offset).collect();
    let reasons: Vec<&str> = offenders.iter().map(|(_, reason)| reason.as_str()).collect();
    client
        .execute(
            "INSERT INTO quarantine (topic, partition, \"offset\", reason)
             SELECT $1, p, o, r FROM unnest($2::int[], $3::bigint[], $4::text[]) AS t(p, o, r)
             ON CONFLICT DO NOTHING",
            &[&input_name, &partitions, &offsets, &reasons],
        )
        .await
        .map_err(WriteError::at("cannot store quarantine"))?;
    for (position, reason) in offenders {
        tracing::warn!(
            partition = position.partition,
            offset = position.offset,
            %reason,
            "quarantined an input message PostgreSQL refuses; the job replays without it"
        );
    }
    Ok(())
}
