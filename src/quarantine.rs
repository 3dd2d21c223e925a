//! `conscope quarantine list|release`: the input messages the writer
//! quarantined because PostgreSQL refused their data (`sink::quarantine`), for
//! an operator to see them and to release those quarantined by mistake.
//!
//! Touches only the `quarantine` table of the database named by
//! `--database-url` (after applying the migrations, as every command does).
//! Every value reaches SQL as a parameter; what is printed goes through
//! `text::printable` (a reason quotes the server, which may quote the data).
//!
//! # What `release` does
//! It deletes the entries. The job reads the quarantine when a run of its
//! dataflow starts (the job's start, and the replay after each quarantine):
//! a running job goes on rejecting a released message until it starts again.
//! A quarantined message is dead-lettered, and its offset committed, right
//! after it is quarantined; a released one is processed the next time the job
//! reads it, when its partition is read again from before it (a replay into
//! another database, or offsets set back). Releasing changes nothing already
//! committed.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tokio_postgres::Client;

use crate::config::{redact_url, DbArgs};
use crate::db;
use conscope::text::printable;

#[derive(Args, Debug)]
pub struct QuarantineArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(subcommand)]
    command: QuarantineCommand,
}

#[derive(Subcommand, Debug)]
enum QuarantineCommand {
    /// List the quarantined messages: input, partition, offset, when, why.
    List {
        /// Only this input (a topic, or `file:<path>` for --input-file).
        #[arg(long, env = "CONSCOPE_QUARANTINE_TOPIC")]
        topic: Option<String>,
    },
    /// Remove quarantined messages, so that the job processes them when it reads
    /// them again (a running job: from its next start). Needs --all or --topic.
    Release {
        /// Release every quarantined message.
        #[arg(long, conflicts_with_all = ["topic", "partition", "offset"])]
        all: bool,
        /// Release those of this input (a topic, or `file:<path>`).
        #[arg(long)]
        topic: Option<String>,
        /// Only this partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        /// Only this offset of --partition.
        #[arg(long, requires = "partition")]
        offset: Option<i64>,
    },
}

/// Which entries `release` removes: all, or those of a topic, optionally
/// narrowed to a partition and an offset (NULL matches any).
#[derive(Debug, PartialEq, Eq)]
struct Selection {
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
}

fn selection(
    all: bool,
    topic: Option<String>,
    partition: Option<i32>,
    offset: Option<i64>,
) -> anyhow::Result<Selection> {
    if !all && topic.is_none() {
        bail!("quarantine release: say which messages: --all, or --topic [--partition [--offset]]");
    }
    Ok(Selection {
        topic,
        partition,
        offset,
    })
}

/// What the command line asks, checked before the database is touched.
enum Action {
    List(Option<String>),
    Release(Selection),
}

pub fn run(args: QuarantineArgs) -> anyhow::Result<()> {
    let action = match args.command {
        QuarantineCommand::List { topic } => Action::List(topic),
        QuarantineCommand::Release {
            all,
            topic,
            partition,
            offset,
        } => Action::Release(selection(all, topic, partition, offset)?),
    };
    let runtime = crate::runtime::current_thread().context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let url = &args.db.database_url;
        db::migrate(url).await?;
        let client = db::connect(url).await?;
        let context = || format!("cannot access the quarantine of {}", redact_url(url));
        match action {
            Action::List(topic) => {
                let entries = list(&client, topic.as_deref()).await.with_context(context)?;
                for entry in &entries {
                    println!("{entry}");
                }
                eprintln!("{} quarantined message(s)", entries.len());
            }
            Action::Release(selection) => {
                let released = release_entries(&client, &selection).await.with_context(context)?;
                for entry in &released {
                    println!("released {entry}");
                }
                eprintln!(
                    "released {} quarantined message(s); the job processes them when it reads them again \
                     (a running job: from its next start)",
                    released.len()
                );
            }
        }
        Ok(())
    })
}

/// `<topic> <partition>:<offset> <quarantined_at> <reason>`, printable.
async fn list(client: &Client, topic: Option<&str>) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT concat_ws(' ', topic, partition || ':' || \"offset\",
                              to_char(quarantined_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), reason)
             FROM quarantine WHERE $1::text IS NULL OR topic = $1
             ORDER BY topic, partition, \"offset\"",
            &[&topic],
        )
        .await?;
    Ok(rows.iter().map(|row| printable(row.get::<_, &str>(0))).collect())
}

/// Deletes the entries `selection` names; returns them as `list` shows them.
async fn release_entries(
    client: &Client,
    selection: &Selection,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "DELETE FROM quarantine
             WHERE ($1::text IS NULL OR topic = $1) AND ($2::int IS NULL OR partition = $2)
               AND ($3::bigint IS NULL OR \"offset\" = $3)
             RETURNING concat_ws(' ', topic, partition || ':' || \"offset\", reason)",
            &[&selection.topic, &selection.partition, &selection.offset],
        )
        .await?;
    let mut released: Vec<String> = rows.iter().map(|row| printable(row.get::<_, &str>(0))).collect();
    released.sort();
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_needs_all_or_a_topic() {
        assert!(selection(false, None, None, None).is_err());
        assert_eq!(
            selection(true, None, None, None).unwrap(),
            Selection {
                topic: None,
                partition: None,
                offset: None
            }
        );
        assert_eq!(
            selection(false, Some("t".into()), Some(1), Some(7)).unwrap(),
            Selection {
                topic: Some("t".into()),
                partition: Some(1),
                offset: Some(7)
            }
        );
    }
}
