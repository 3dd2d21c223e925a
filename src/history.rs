//! `conscope history prune --before DATE` (SPEC §6): retention of
//! `price_history`, one month partition at a time (migration 0010).
//!
//! Touches the database named by `--database-url`: applies the migrations
//! first, then drops the partitions of `price_history` that lie entirely before
//! DATE (through `price_history_drop_partition`, which drops partitions of
//! `price_history` and nothing else) and raises `history_retention.
//! pruned_before` to the start of DATE's month (UTC), in one transaction. Never
//! deletes a row; touches no other table. A partition that straddles DATE is
//! kept whole, and said so.
//!
//! # Locks, and a job running meanwhile
//! The prune first updates the `history_retention` row, then drops. The
//! writer reads that row `FOR SHARE` in each commit before it touches
//! `price_history`, and drops (counting as stale) the rows observed before
//! it. So either the writer's commit read the row first, and the prune's
//! update waits for that commit; or the prune updated first, and the
//! writer's commit waits for the prune to commit and then sees the new
//! boundary: no commit writes into, or creates again, a month being dropped,
//! and the two never deadlock (both lock the row before the table). `DROP
//! TABLE` of a partition takes ACCESS EXCLUSIVE on `price_history`: it waits
//! for the writer's commit and for dashboard reads in progress, and holds
//! both off until the prune commits (milliseconds: no data is read or
//! written). A lock timeout keeps a long dashboard query from queueing
//! everything behind the prune: it gives up and tries again.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::config::{redact_url, DbArgs};
use crate::db;
use conscope::text::printable;

#[derive(Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: HistoryCommand,
}

#[derive(Subcommand, Debug)]
enum HistoryCommand {
    /// Remove the price_history rows observed before DATE, by dropping whole
    /// month partitions (a month that straddles DATE is kept). Observations for
    /// a pruned month that arrive later are counted as stale and not stored.
    Prune {
        /// YYYY-MM-DD (midnight UTC) or an RFC 3339 time; not in the future.
        #[arg(long, env = "CONSCOPE_PRUNE_BEFORE", value_name = "DATE")]
        before: String,
    },
}

/// Why `--before` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BeforeError {
    #[error("--before {0:?} is neither a date (YYYY-MM-DD) nor an RFC 3339 time")]
    Format(String),
    #[error("--before {0} is in the future: that would drop the history of observations still arriving")]
    Future(DateTime<Utc>),
}

/// `--before`: a date is its midnight UTC.
pub fn parse_before(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, BeforeError> {
    let text = text.trim();
    let before = if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        date.and_hms_opt(0, 0, 0).map(|midnight| midnight.and_utc())
    } else {
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|time| time.with_timezone(&Utc))
    };
    let before =
        before.ok_or_else(|| BeforeError::Format(printable(&text.chars().take(64).collect::<String>())))?;
    if before > now {
        return Err(BeforeError::Future(before));
    }
    Ok(before)
}

/// One partition of `price_history`: its range, when it is a range of times
/// (not one this job made, otherwise), and its size.
#[derive(Debug)]
struct Partition {
    oid: u32,
    name: String,
    range: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// `pg_class.reltuples`: ANALYZE's estimate; negative before the first one.
    estimated_rows: f32,
    bytes: i64,
}

impl Partition {
    fn describe(&self) -> String {
        let rows = if self.estimated_rows >= 0.0 {
            format!("about {} rows", self.estimated_rows.round() as i64)
        } else {
            "rows not yet counted by ANALYZE".to_owned()
        };
        let range = match self.range {
            Some((from, to)) => format!("[{}, {})", day(from), day(to)),
            None => "(not a range of times)".to_owned(),
        };
        format!("{} {range}: {rows}, {}", self.name, megabytes(self.bytes))
    }
}

fn day(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%d").to_string()
}

fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_048_576.0)
}

/// What a prune did.
#[derive(Debug)]
struct Pruned {
    /// `history_retention.pruned_before` after it.
    boundary: DateTime<Utc>,
    dropped: Vec<Partition>,
    kept: Vec<Partition>,
}

/// `conscope history`.
pub fn run(args: HistoryArgs) -> anyhow::Result<()> {
    let HistoryCommand::Prune { before } = &args.command;
    let before = parse_before(before, Utc::now())?;
    let runtime = crate::runtime::current_thread().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let url = &args.db.database_url;
        db::migrate(url).await?;
        let mut client = db::connect(url).await?;
        let pruned = prune_with_retry(&mut client, before)
            .await
            .with_context(|| format!("cannot prune price_history in {}", redact_url(url)))?;
        report(&client, before, &pruned).await
    })
}

/// Attempts at most this many times to get the locks, each waiting at most
/// `LOCK_TIMEOUT`.
const LOCK_ATTEMPTS: u32 = 12;
const LOCK_TIMEOUT: &str = "5s";

async fn prune_with_retry(client: &mut Client, before: DateTime<Utc>) -> anyhow::Result<Pruned> {
    let mut attempt = 1;
    loop {
        match prune(client, before).await {
            Err(error) if error.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) && attempt < LOCK_ATTEMPTS => {
                eprintln!(
                    "price_history is busy (a long query or a commit holds it); trying again ({attempt}/{LOCK_ATTEMPTS})"
                );
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            result => return result.map_err(Into::into),
        }
    }
}

/// One attempt: raises the boundary, drops the partitions entirely before it,
/// commits.
async fn prune(client: &mut Client, before: DateTime<Utc>) -> Result<Pruned, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    // Waiting for ACCESS EXCLUSIVE on price_history queues every later reader
    // and the job's commits behind the prune: wait a few seconds at most.
    transaction
        .batch_execute(&format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        .await?;
    // The row first: see the module doc for the order.
    let boundary: DateTime<Utc> = transaction
        .query_one(
            "UPDATE history_retention
             SET pruned_before = greatest(pruned_before,
                 date_trunc('month', $1::timestamptz AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')
             WHERE id = 1 RETURNING pruned_before",
            &[&before],
        )
        .await?
        .get(0);
    let partitions = partitions(&transaction).await?;
    let (dropped, kept): (Vec<Partition>, Vec<Partition>) = partitions
        .into_iter()
        .partition(|partition| partition.range.is_some_and(|(_, to)| to <= boundary));
    for partition in &dropped {
        transaction
            .execute(
                "SELECT price_history_drop_partition($1::oid::regclass)",
                &[&partition.oid],
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(Pruned {
        boundary,
        dropped,
        kept,
    })
}

/// The partitions of `price_history`, oldest first; the range read back from
/// the partition bound PostgreSQL prints (`FOR VALUES FROM ('…') TO ('…')`).
async fn partitions(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Partition>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.oid, c.relname::text, b[1]::timestamptz, b[2]::timestamptz, c.reltuples,
                    pg_total_relation_size(c.oid)
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             CROSS JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                             '^FOR VALUES FROM \\(''([^'']+)''\\) TO \\(''([^'']+)''\\)$') AS b
             WHERE i.inhparent = 'price_history'::regclass
             ORDER BY 3, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let from: Option<DateTime<Utc>> = row.get(2);
            let to: Option<DateTime<Utc>> = row.get(3);
            Partition {
                oid: row.get(0),
                name: row.get(1),
                range: from.zip(to),
                estimated_rows: row.get(4),
                bytes: row.get(5),
            }
        })
        .collect())
}

/// Prints what was dropped and what was kept, and what a month that straddles
/// `before` still holds before it (a BRIN range scan of that month).
async fn report(client: &Client, before: DateTime<Utc>, pruned: &Pruned) -> anyhow::Result<()> {
    println!("history prune --before {}", before.to_rfc3339());
    if pruned.dropped.is_empty() {
        println!(
            "dropped nothing: no partition lies entirely before {}",
            day(pruned.boundary)
        );
    }
    for partition in &pruned.dropped {
        println!("dropped {}", partition.describe());
    }
    let mut newer = Vec::new();
    for partition in &pruned.kept {
        match partition.range {
            Some((from, to)) if from < before && before < to => {
                let remaining: i64 = client
                    .query_one(
                        "SELECT count(*) FROM price_history WHERE observed_at >= $1 AND observed_at < $2",
                        &[&from, &before],
                    )
                    .await
                    .context("cannot count the rows kept before --before")?
                    .get(0);
                println!(
                    "kept    {}: it straddles {}, so its {remaining} rows observed before then stay \
                     until a prune at or after {}",
                    partition.describe(),
                    before.to_rfc3339(),
                    day(to)
                );
            }
            Some(_) => newer.push(partition),
            None => println!("kept    {}: not a month partition", partition.describe()),
        }
    }
    if let (Some(first), Some(last)) = (newer.first(), newer.last()) {
        let bytes: i64 = newer.iter().map(|partition| partition.bytes).sum();
        let from = first.range.map_or_else(String::new, |(from, _)| day(from));
        let to = last.range.map_or_else(String::new, |(_, to)| day(to));
        println!(
            "kept    {} newer partition(s), [{from}, {to}): {}",
            newer.len(),
            megabytes(bytes)
        );
    }
    println!(
        "observations before {} that arrive from now on are counted as stale and not stored",
        pruned.boundary.to_rfc3339()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn before_is_a_date_at_midnight_utc_or_a_time_and_not_in_the_future() {
        let now = at("2026-12-07T03:00:00Z");
        assert_eq!(parse_before("2026-03-15", now), Ok(at("2026-03-15T00:00:00Z")));
        assert_eq!(
            parse_before(" 2026-03-15T10:00:00+02:00 ", now),
            Ok(at("2026-03-15T08:00:00Z"))
        );
        assert_eq!(
            parse_before("15/03/2026", now),
            Err(BeforeError::Format("15/03/2026".to_owned()))
        );
        assert_eq!(
            parse_before("2026-13-01", now),
            Err(BeforeError::Format("2026-13-01".to_owned()))
        );
        assert_eq!(
            parse_before("2027-01-01", now),
            Err(BeforeError::Future(at("2027-01-01T00:00:00Z")))
        );
    }
}
