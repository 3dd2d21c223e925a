//! The writer's other connections: a large commit's history and listing rows,
//! written beside the main transaction in prepared transactions (two-phase
//! commit), so PostgreSQL works on one commit with more than one backend.
//!
//! One backend runs on one core, and on a world of 100k listings or more the
//! new history rows and the listing upserts are most of what a commit costs it.
//! With `--writer-connections N` (N ≥ 2) the writer splits a commit of at least
//! `--writer-split-rows` such rows ([`Split`]):
//! - the events whose rows need nothing else of the commit (no older
//!   observation, whose insert must see the new rows; no month whose partition
//!   is not known to exist yet) go to connections 1..N by a hash of the event
//!   id: all of one event's history and listing rows to one connection;
//! - each of those writes its events' rows (`tables::write_part`) and prepares
//!   its transaction;
//! - connection 0 writes everything else, the offsets and `job_progress`, in
//!   the main transaction, as with one connection.
//!
//! # Protocol (presumed abort)
//! - A part prepares under the name
//!   `conscope-<job>-<run>-<commit>-<attempt>-<part>` ([`Gid`]): the job's
//!   `job_progress.job_id`, so jobs sharing a database (one schema each) leave
//!   each other's parts alone; the run id of its lease; the `commit_no` the
//!   main transaction moves to.
//! - The main transaction takes the parts lock (a transaction advisory lock)
//!   first, and commits only once every part is prepared and still there.
//!   Its commit is the decision; the parts are committed after it.
//! - [`resolve`] ends every part left prepared (after a crash, a lost
//!   connection, a failed attempt): it commits those of the commit
//!   `job_progress` holds when that commit is their run's, and rolls back the
//!   others. It takes the parts lock for its session, so it never decides while
//!   a main transaction that may still commit is open. The job runs it before
//!   it reads its state, and the writer before each commit that follows a
//!   failure.
//!
//! Readers see all of one event's rows of a commit appear together, but the
//! events of one commit may appear part by part, milliseconds apart.
//!
//! Owns the split, the parts' names, their transactions and their resolution;
//! imports `merge` and `tables`. The writer drives it.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

use anyhow::Context;
use conscope_dataflows::model::ListingRow;
use tokio_postgres::{Client, GenericClient};

use super::merge::Merged;
use super::tables::{read_progress, write_part, KnownMonths};
use super::write_error::WriteError;

/// The parts lock's first key: "conw" in ASCII, like the job lease's classes
/// (`lease`); the second is the job's ([`JobTag::lock_key`]).
const PARTS_LOCK_CLASS: i32 = 0x636f_6e77;

/// The job a part belongs to: its `job_progress.job_id` (a UUID) as 32 hex
/// digits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTag(String);

impl JobTag {
    /// `None` unless `job_id` is a UUID's text.
    pub fn of(job_id: &str) -> Option<JobTag> {
        let hex: String = job_id
            .chars()
            .filter(|c| *c != '-')
            .collect::<String>()
            .to_ascii_lowercase();
        (hex.len() == 32 && hex.bytes().all(|byte| byte.is_ascii_hexdigit())).then_some(JobTag(hex))
    }

    /// The parts lock's second key: the UUID's first 32 bits.
    fn lock_key(&self) -> i32 {
        u32::from_str_radix(&self.0[..8], 16).unwrap_or_default() as i32
    }
}

/// The rows of one commit the other connections write, and which events'.
#[derive(Default)]
pub(super) struct Split<'a> {
    /// Events whose new history rows and listing rows are in `parts`.
    pub(super) moved: HashSet<&'a str>,
    /// Connection `k + 1`'s rows.
    pub(super) parts: Vec<Part<'a>>,
}

#[derive(Default)]
pub(super) struct Part<'a> {
    pub(super) history: Vec<&'a ListingRow>,
    pub(super) listings: Vec<&'a ListingRow>,
}

impl<'a> Split<'a> {
    /// `merged` cut for `parts` other connections, the main one keeping `keep`
    /// sixteenths of the events it could hand over ([`Balance`]); `None` when
    /// fewer than `min_rows` rows would move (two phases cost a round trip and
    /// a WAL flush more per part).
    pub(super) fn of(
        merged: &'a Merged,
        parts: usize,
        keep: u64,
        min_rows: usize,
        months: &KnownMonths,
    ) -> Option<Split<'a>> {
        if parts == 0 {
            return None;
        }
        // An older row is inserted after the new rows and must see them; a new
        // month's partition is made by the main transaction.
        let mut stays: HashSet<&str> = merged
            .maybe_stale
            .iter()
            .map(|older| older.row.listing.event_id.as_str())
            .collect();
        stays.extend(
            merged
                .history
                .iter()
                .filter(|new| !months.knows(new.row.observed_at))
                .map(|new| new.row.listing.event_id.as_str()),
        );
        let hasher = BuildHasherDefault::<DefaultHasher>::default();
        // The part an event's rows go to; `None`: the main connection keeps it.
        let part_of = |event: &str| {
            let hash = hasher.hash_one(event);
            (hash % SHARES >= keep).then_some(((hash / SHARES) % parts as u64) as usize)
        };
        let mut split = Split {
            moved: HashSet::new(),
            parts: (0..parts).map(|_| Part::default()).collect(),
        };
        let mut rows = 0;
        for row in merged.history.iter().map(|new| &new.row) {
            let event = row.listing.event_id.as_str();
            if let Some(part) = part_of(event).filter(|_| !stays.contains(event)) {
                split.moved.insert(event);
                split.parts[part].history.push(row);
                rows += 1;
            }
        }
        for row in merged.listings.values() {
            let event = row.listing.event_id.as_str();
            if let Some(part) = part_of(event).filter(|_| !stays.contains(event)) {
                split.moved.insert(event);
                split.parts[part].listings.push(row);
                rows += 1;
            }
        }
        (rows >= min_rows.max(1)).then_some(split)
    }
}

/// The events [`Split::of`] can hand over fall in this many shares by hash.
const SHARES: u64 = 16;

/// How many shares the main connection keeps, learnt commit by commit: the
/// main transaction has work of its own (events, summaries, alerts, outbox),
/// so with one other connection it should also write some history and
/// listings, with three it should write none. Which side finished last moves
/// it a share towards the other.
#[derive(Debug)]
pub(super) struct Balance {
    pub(super) keep: u64,
}

impl Default for Balance {
    fn default() -> Balance {
        Balance { keep: SHARES / 8 }
    }
}

impl Balance {
    /// After a split commit: how long the main side and the slowest part took
    /// until they were ready to commit.
    pub(super) fn learn(&mut self, main: std::time::Duration, parts: std::time::Duration) {
        // A tenth either way is noise.
        if main > parts + parts / 10 {
            self.keep = self.keep.saturating_sub(1);
        } else if parts > main + main / 10 {
            self.keep = (self.keep + 1).min(SHARES / 2);
        }
    }
}

/// The statements of two-phase commit.
#[derive(Clone, Copy)]
enum TwoPhase {
    Prepare,
    Commit,
    Rollback,
}

/// A prepared part's name. Built only from these fields, so it can stand in
/// the SQL text `PREPARE TRANSACTION` needs (it takes no parameter).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Gid {
    pub(super) job: JobTag,
    pub(super) run: String,
    pub(super) commit: i64,
    pub(super) attempt: u32,
    pub(super) part: usize,
}

impl Gid {
    fn text(&self) -> String {
        format!(
            "conscope-{}-{}-{}-{}-{}",
            self.job.0, self.run, self.commit, self.attempt, self.part
        )
    }

    /// Runs `PREPARE TRANSACTION`, `COMMIT PREPARED` or `ROLLBACK PREPARED`
    /// (`command`) for this part: the one place their SQL text is made.
    async fn run(&self, client: &impl GenericClient, command: TwoPhase) -> Result<(), tokio_postgres::Error> {
        let command = match command {
            TwoPhase::Prepare => "PREPARE TRANSACTION",
            TwoPhase::Commit => "COMMIT PREPARED",
            TwoPhase::Rollback => "ROLLBACK PREPARED",
        };
        client
            .batch_execute(&format!("{command} '{}'", self.text()))
            .await
    }

    /// A name of [`Gid::text`]'s form, or `None` (a prepared transaction that
    /// is not a part of this job's, or a name that was not built here).
    fn parse(text: &str) -> Option<Gid> {
        let mut fields = text.strip_prefix("conscope-")?.split('-');
        let job = JobTag::of(fields.next()?)?;
        let run = fields.next()?;
        let gid = Gid {
            job,
            run: run.to_owned(),
            commit: fields.next()?.parse().ok()?,
            attempt: fields.next()?.parse().ok()?,
            part: fields.next()?.parse().ok()?,
        };
        let plain =
            !run.is_empty() && run.len() <= 64 && run.bytes().all(|byte| byte.is_ascii_alphanumeric());
        (plain && fields.next().is_none() && gid.text() == text).then_some(gid)
    }
}

/// Writes `part` on `client` and prepares it as `gid`; returns how many history
/// rows the pruned boundary left out.
pub(super) async fn prepare_part(client: &mut Client, part: &Part<'_>, gid: &Gid) -> Result<u64, WriteError> {
    let transaction = client
        .transaction()
        .await
        .map_err(WriteError::at("BEGIN failed"))?;
    let pruned = write_part(&transaction, &part.history, &part.listings).await?;
    gid.run(&transaction, TwoPhase::Prepare)
        .await
        .map_err(WriteError::at("cannot prepare a part of the commit"))?;
    // The session has no transaction any more. Dropped, the wrapper would
    // send a ROLLBACK, and its commit() a COMMIT, each answered with a warning
    // that no transaction is in progress: it is let go of instead.
    std::mem::forget(transaction);
    Ok(pruned)
}

/// In the main transaction, first: the parts lock, so no [`resolve`] decides
/// about its parts while it may commit. `Transient` while a resolution on
/// another session holds it.
pub(super) async fn lock_parts(
    transaction: &tokio_postgres::Transaction<'_>,
    job: &JobTag,
) -> Result<(), WriteError> {
    try_parts_lock(
        transaction,
        "SELECT pg_try_advisory_xact_lock($1, $2)",
        job,
        "prepared parts of a commit are being resolved on another connection",
    )
    .await
}

/// Tries the parts lock of `job` with `sql` (the transaction's or the
/// session's advisory lock): `Transient`, saying `held_elsewhere`, while
/// another session holds it.
async fn try_parts_lock(
    client: &impl GenericClient,
    sql: &str,
    job: &JobTag,
    held_elsewhere: &str,
) -> Result<(), WriteError> {
    let locked: bool = client
        .query_one(sql, &[&PARTS_LOCK_CLASS, &job.lock_key()])
        .await
        .map_err(WriteError::at("cannot take the parts lock"))?
        .get(0);
    if locked {
        Ok(())
    } else {
        Err(WriteError::Transient {
            context: "parts lock",
            detail: held_elsewhere.to_owned(),
        })
    }
}

/// In the main transaction, last: every one of `gids` is still prepared (a
/// resolution on another session did not roll one back before the lock).
pub(super) async fn check_prepared(
    transaction: &tokio_postgres::Transaction<'_>,
    gids: &[Gid],
) -> Result<(), WriteError> {
    let names: Vec<String> = gids.iter().map(Gid::text).collect();
    let prepared: i64 = transaction
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database() AND gid = ANY($1)",
            &[&names],
        )
        .await
        .map_err(WriteError::at("cannot read pg_prepared_xacts"))?
        .get(0);
    if prepared == names.len() as i64 {
        Ok(())
    } else {
        Err(WriteError::Transient {
            context: "prepared parts",
            detail: format!(
                "{} of {} prepared parts are gone",
                names.len() as i64 - prepared,
                names.len()
            ),
        })
    }
}

/// Commits `gids`, after their main transaction committed.
pub(super) async fn commit_parts(client: &Client, gids: &[Gid]) -> Result<(), WriteError> {
    for gid in gids {
        gid.run(client, TwoPhase::Commit)
            .await
            .map_err(WriteError::at("cannot commit a prepared part"))?;
    }
    Ok(())
}

/// Before their main transaction committed: rolls back `prepared`, each on
/// its own connection (`others[k]` prepared part `k + 1`); whether all went.
pub(super) async fn abandon(others: &[Client], prepared: &[&Gid]) -> bool {
    let mut all = true;
    for gid in prepared {
        let rolled_back = match others.get(gid.part.wrapping_sub(1)) {
            Some(client) => gid.run(client, TwoPhase::Rollback).await.is_ok(),
            None => false,
        };
        all &= rolled_back;
    }
    all
}

/// What [`resolve`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Resolved {
    pub(super) committed: usize,
    pub(super) rolled_back: usize,
}

/// Ends every part of `job` left prepared: commits those of the commit
/// `job_progress` holds when their run made it, rolls back the others.
pub(super) async fn resolve(client: &Client, job: &JobTag) -> Result<Resolved, WriteError> {
    try_parts_lock(
        client,
        "SELECT pg_try_advisory_lock($1, $2)",
        job,
        "a commit with prepared parts is open on another connection",
    )
    .await?;
    let resolved = end_parts(client, job).await;
    let unlocked = client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&PARTS_LOCK_CLASS, &job.lock_key()],
        )
        .await
        .map_err(WriteError::at("cannot release the parts lock"));
    let resolved = resolved?;
    unlocked?;
    if resolved != Resolved::default() {
        tracing::info!(
            committed = resolved.committed,
            rolled_back = resolved.rolled_back,
            "resolved the prepared parts of an interrupted commit"
        );
    }
    Ok(resolved)
}

/// Migrations may fill a new table from `listings`, or alter a table a
/// prepared part holds locks on: the parts a crash left prepared are ended
/// first, then the migrations are applied (`db::migrate`, which refuses while
/// any is left). For the job and `conscope migrate`.
pub async fn migrate(url: &str) -> anyhow::Result<()> {
    if let Err(error) = resolve_before_migrating(url).await {
        // A database not made yet, or older than the parts: nothing to end.
        tracing::debug!("no prepared parts ended before migrating: {error:#}");
    }
    crate::db::migrate(url).await
}

/// `conscope migrate`.
pub fn migrate_command(db: &crate::config::DbArgs) -> anyhow::Result<()> {
    let runtime = crate::runtime::current_thread()?;
    runtime.block_on(migrate(&db.database_url))?;
    println!(
        "migrations applied to {}",
        crate::config::redact_url(&db.database_url)
    );
    Ok(())
}

async fn resolve_before_migrating(url: &str) -> anyhow::Result<()> {
    let client = crate::db::connect(url).await?;
    let job_id: String = client
        .query_one("SELECT job_id::text FROM job_progress WHERE id = 1", &[])
        .await?
        .get(0);
    resolve_at_start(&client, &job_id).await
}

/// At the job's start, before it reads its state (offsets, listings): the
/// parts of a commit that landed belong to that state. Waits out a main
/// transaction of an instance this one took over from, still open on a
/// session PostgreSQL has not closed yet.
pub async fn resolve_at_start(client: &Client, job_id: &str) -> anyhow::Result<()> {
    let job = JobTag::of(job_id).with_context(|| format!("job_progress.job_id is not a UUID: {job_id:?}"))?;
    let mut tries = 0;
    loop {
        match resolve(client, &job).await {
            Ok(_) => return Ok(()),
            Err(error @ WriteError::Transient { .. }) if tries < 60 => {
                tries += 1;
                tracing::warn!("{error}; trying again in 1s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(error) => {
                return Err(anyhow::Error::from(error)
                    .context("cannot resolve the prepared parts of an interrupted commit"))
            }
        }
    }
}

async fn end_parts(client: &Client, job: &JobTag) -> Result<Resolved, WriteError> {
    let names = client
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1)",
            &[&format!("conscope-{}-", job.0)],
        )
        .await
        .map_err(WriteError::at("cannot read pg_prepared_xacts"))?;
    let gids: Vec<Gid> = names
        .iter()
        .filter_map(|row| Gid::parse(row.get(0)))
        .filter(|gid| gid.job == *job)
        .collect();
    let mut resolved = Resolved::default();
    if gids.is_empty() {
        return Ok(resolved);
    }
    let (stored, committed_by) = read_progress(client).await?;
    for gid in gids {
        let landed = gid.commit == stored && committed_by.as_deref() == Some(gid.run.as_str());
        let command = match landed {
            true => TwoPhase::Commit,
            false => TwoPhase::Rollback,
        };
        gid.run(client, command)
            .await
            .map_err(WriteError::at("cannot end a prepared part"))?;
        match landed {
            true => resolved.committed += 1,
            false => resolved.rolled_back += 1,
        }
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_side_that_finishes_last_hands_work_to_the_other() {
        use std::time::Duration;
        let mut balance = Balance::default();
        let start = balance.keep;
        balance.learn(Duration::from_millis(100), Duration::from_millis(200));
        assert_eq!(balance.keep, start + 1);
        balance.learn(Duration::from_millis(100), Duration::from_millis(105));
        assert_eq!(balance.keep, start + 1, "within a tenth: unchanged");
        for _ in 0..40 {
            balance.learn(Duration::from_millis(300), Duration::from_millis(100));
        }
        assert_eq!(balance.keep, 0);
        for _ in 0..40 {
            balance.learn(Duration::from_millis(100), Duration::from_millis(300));
        }
        assert_eq!(
            balance.keep,
            SHARES / 2,
            "the main connection never keeps more than half"
        );
    }

    #[test]
    fn only_names_built_here_are_taken_for_parts() {
        let job = JobTag::of("7C9E6679-7425-40de-944b-e07fc1f90ae7").unwrap();
        assert_eq!(job, JobTag("7c9e6679742540de944be07fc1f90ae7".to_owned()));
        assert_eq!(job.lock_key(), 0x7c9e_6679);
        let gid = Gid {
            job,
            run: "0a1b2c3d4e5f6789".to_owned(),
            commit: 42,
            attempt: 3,
            part: 1,
        };
        assert_eq!(
            gid.text(),
            "conscope-7c9e6679742540de944be07fc1f90ae7-0a1b2c3d4e5f6789-42-3-1"
        );
        assert_eq!(Gid::parse(&gid.text()), Some(gid));
        let job = "7c9e6679742540de944be07fc1f90ae7";
        for foreign in [
            format!("conscope-{job}-run-1-2"),
            format!("conscope-{job}-run-1-2-3-4"),
            format!("conscope-{job}-ru'n-1-2-3"),
            format!("conscope-{job}--1-2-3"),
            format!("conscope-{job}-run-01-2-3"),
            format!("conscope-{job}-run-+1-2-3"),
            format!("conscope-{job}-run-1-2-3'; DROP TABLE listings; --"),
            format!("conscope-{}-run-1-2-3", &job[1..]),
            format!("conscope-{}g-run-1-2-3", &job[1..]),
            format!("conscope-{}-run-1-2-3", job.to_ascii_uppercase()),
            "conscope-run-1-2-3".to_owned(),
            format!("other-{job}-run-1-2-3"),
        ] {
            assert_eq!(Gid::parse(&foreign), None, "{foreign}");
        }
        assert_eq!(JobTag::of("not a uuid"), None);
    }
}
