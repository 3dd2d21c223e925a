//! The bookkeeping every commit carries: `job_progress.commit_no`, which
//! fences a second job writing to the same database, with `committed_by` (the
//! run id of the lease that made the commit): together they tell whether a
//! commit whose outcome was lost landed, and whether it was this run's; and
//! `kafka_offsets`, the next input offset per partition.

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

/// Whether the commit after `commit_no`, whose outcome was lost, landed, from
/// what the database holds now (`stored`, `committed_by`): `Fenced` when
/// another run committed since, for then this run's commit did not land and
/// the job is no longer its own.
pub(in crate::sink) fn lost_commit_landed(
    (stored, committed_by): (i64, Option<&str>),
    commit_no: i64,
    run_id: &str,
) -> Result<bool, WriteError> {
    if stored == commit_no {
        return Ok(false);
    }
    if stored == commit_no + 1 && committed_by == Some(run_id) {
        return Ok(true);
    }
    Err(WriteError::Fenced(format!(
        "job_progress.commit_no is {stored} (by {}), not {commit_no} or this run's {}: another \
         conscope instance committed to this database meanwhile",
        committed_by.unwrap_or("an unknown run"),
        commit_no + 1
    )))
}

/// `commit_no` and `committed_by`, for `lost_commit_landed`.
pub(in crate::sink) async fn read_progress(client: &Client) -> Result<(i64, Option<String>), WriteError> {
    let row = client
        .query_one(
            "SELECT commit_no, committed_by FROM job_progress WHERE id = 1",
            &[],
        )
        .await
        .map_err(WriteError::at("cannot read job_progress"))?;
    Ok((row.get(0), row.get(1)))
}

/// Moves `commit_no` on by one, stamped with this run's id; `Fenced` when it
/// is no longer `commit_no`.
pub(in crate::sink) async fn advance_commit_no(
    transaction: &Transaction<'_>,
    commit_no: i64,
    run_id: &str,
) -> Result<(), WriteError> {
    let moved = transaction
        .execute(
            "UPDATE job_progress SET commit_no = $1, committed_by = $3 WHERE id = 1 AND commit_no = $2",
            &[&(commit_no + 1), &commit_no, &run_id],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost commit counts as landed only when the commit after ours is
    /// ours: one another instance made (after taking the job over) is not,
    /// though commit_no moved by exactly one.
    #[test]
    fn a_lost_commit_landed_only_when_this_run_made_it() {
        assert!(!lost_commit_landed((5, Some("other")), 5, "mine").unwrap());
        assert!(lost_commit_landed((6, Some("mine")), 5, "mine").unwrap());
        for taken_over in [(6, Some("other")), (6, None), (7, Some("mine"))] {
            assert!(
                matches!(
                    lost_commit_landed(taken_over, 5, "mine"),
                    Err(WriteError::Fenced(_))
                ),
                "{taken_over:?}"
            );
        }
    }
}
