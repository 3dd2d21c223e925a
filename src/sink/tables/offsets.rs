//! The bookkeeping every commit carries: `job_progress.commit_no`, which
//! tells whether a commit whose outcome was lost landed and fences a second
//! job writing to the same database, and `kafka_offsets`, the next input
//! offset per partition.

use std::collections::BTreeMap;

use tokio_postgres::{Client, Transaction};

use crate::sink::write_error::WriteError;

/// The number of commits the database holds.
pub(in crate::sink) async fn read_commit_no(client: &Client) -> Result<i64, WriteError> {
    Ok(client
        .query_one("SELECT commit_no FROM job_progress WHERE id = 1", &[])
        .await
        .map_err(WriteError::at("cannot read job_progress"))?
        .get(0))
}

/// Moves `commit_no` on by one; `Fenced` when it is no longer `commit_no`.
pub(in crate::sink) async fn advance_commit_no(
    transaction: &Transaction<'_>,
    commit_no: i64,
) -> Result<(), WriteError> {
    let moved = transaction
        .execute(
            "UPDATE job_progress SET commit_no = $1 WHERE id = 1 AND commit_no = $2",
            &[&(commit_no + 1), &commit_no],
        )
        .await
        .map_err(WriteError::at("cannot advance job_progress"))?;
    if moved != 1 {
        return Err(WriteError::Fenced(format!(
            "job_progress.commit_no is no longer {commit_no}: another conscope job is writing to this \
             database (one database holds one job's state)"
        )));
    }
    Ok(())
}

/// Stores the next input offset of each partition in `offsets`.
pub(in crate::sink) async fn store_offsets(
    transaction: &Transaction<'_>,
    input_name: &str,
    offsets: &BTreeMap<i32, i64>,
) -> Result<(), WriteError> {
    if !offsets.is_empty() {
        let partitions: Vec<i32> = offsets.keys().copied().collect();
        let next: Vec<i64> = offsets.values().copied().collect();
        transaction
            .execute(
                "INSERT INTO kafka_offsets (topic, partition, next_offset)
                 SELECT $1, p, o FROM unnest($2::int[], $3::bigint[]) AS t(p, o)
                 ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                &[&input_name, &partitions, &next],
            )
            .await
            .map_err(WriteError::at("cannot store offsets"))?;
    }
    Ok(())
}
