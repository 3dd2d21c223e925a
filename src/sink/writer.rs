//! The Postgres writer: one transaction per batch of epochs.
//!
//! ```text
//!  sink operator (worker 0) ──EpochBatch──► writer thread ──COMMIT──► PostgreSQL
//!          ▲                                    │
//!          └────── committed epoch + wake ──────┘──► publisher (outbox)
//! ```
//!
//! # Sinking
//! Everything derived from the messages of the epochs, the next input offsets and
//! `job_progress.commit_no + 1` commit together, so after any crash the stored
//! offsets and the rows agree: a restart neither re-applies nor skips a message.
//! When the writer falls behind, queued epochs are merged into one transaction
//! (later states win), which keeps throughput up under load. Each transaction
//! first checks that this process still holds the job lease (`lease`).
//! With more than one connection (`--writer-connections`), a large commit's
//! history and listing rows are written beside the main transaction in
//! prepared parts that commit after it (`parts`: the split, the protocol, and
//! the resolution of parts a failure left prepared, done before any later
//! write).
//!
//! # Retries
//! Every SQL call classifies its failure where it is made (`write_error`).
//! Transient failures (connection lost, server restarting, serialization,
//! resources) and refusals of the database (`Blocked`: a privilege revoked, a
//! table renamed, corruption) wait with capped backoff, open a new connection
//! (the old one may be out of step, see `CopyIn::start`) and retry the same
//! batch; a blocked writer shows on `/healthz` and `conscope_writer_blocked`
//! until a commit lands. The dataflow holds the epochs' capabilities (and the
//! sources stop reading) until the commit succeeds, so memory stays bounded
//! and nothing is skipped. A commit whose outcome is unknown is resolved by
//! `commit_no` and `committed_by`: if it moved by one and the commit is this
//! run's, the batch is in; if another run committed meanwhile, this one is
//! fenced and stops.
//!
//! # Error handling
//! A refusal of data (`Refused`: a check, a value out of range) is traced back
//! to the input messages behind the refused rows (`isolate`); they are stored
//! in `quarantine` and the writer asks the job to start over from the last
//! commit (`WriterExit::Restart`): the replay rejects them to the dead-letter
//! topic with the refusal as reason, so every other message lands exactly as it
//! would have without them, derived rows included. A refusal of data no input
//! message explains (each alone is accepted) is waited out like a refusal of
//! the database. Losing the job lease to another instance (`Fenced`) stops the
//! job at once.
//!
//! Owns the loop and the transaction around each batch: `BEGIN`, the lease
//! check, the bookkeeping and the rows (`tables`), `COMMIT`; the connections
//! and the order of a split commit's steps; and what happens when one fails.
//! Imports `config`, `merge`, `tables`, `parts`, `isolate`, `quarantine`,
//! `monitor` and the publisher's wake-up; only the sink operator (`mod.rs`)
//! and the job import it.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::future::join_all;
use tokio_postgres::{Client, Transaction};

use super::config::WriterConfig;
use super::merge::{EpochBatch, Merged};
use super::monitor::GroupMonitor;
use super::parts::{
    abandon, check_prepared, commit_parts, lock_parts, prepare_part, Balance, Gid, JobTag, Split,
};
use super::publisher::PublisherControl;
use super::tables::{
    advance_commit_no, lost_commit_landed, prepare, read_commit_no, read_progress, store_offsets, write_rows,
    KnownMonths, Written,
};
use super::write_error::WriteError;
use crate::fail::fail_point;
use crate::lease::Lease;
use crate::metrics::Metrics;

/// Why the writer returned.
#[derive(Debug, PartialEq, Eq)]
pub enum WriterExit {
    /// Its input closed: the job is stopping.
    Finished,
    /// Messages PostgreSQL refused were quarantined: the job must replay from
    /// the last commit without them.
    Restart,
    /// The job was asked to stop while the writer waited out PostgreSQL:
    /// what was not committed is read again at the next start.
    Abandoned,
}

/// Runs the writer on the calling thread until `batches` closes or messages
/// must be taken out of a replay. Sends each committed epoch on `committed`
/// and calls `wake` after each commit.
pub fn run_writer(
    config: WriterConfig,
    batches: mpsc::Receiver<EpochBatch>,
    committed: mpsc::Sender<u64>,
    wake: impl Fn() + Send + 'static,
    metrics: Arc<Metrics>,
    publisher: Arc<PublisherControl>,
) -> anyhow::Result<WriterExit> {
    let monitor = match &config.monitor {
        Some((kafka, group)) => Some(GroupMonitor::new(kafka, group, &config.input_name)?),
        None => None,
    };
    let mut rejected_log = crate::metrics::RateLimited::new(Duration::from_secs(5));
    let runtime = crate::runtime::current_thread()?;
    let result: anyhow::Result<WriterExit> = runtime.block_on(async move {
        let mut writer = Writer::connect(config, Arc::clone(&metrics)).await?;
        while let Ok(first) = batches.recv() {
            let mut merged = Merged::default();
            merged.absorb(first);
            while merged.records < writer.config.max_records_per_commit {
                match batches.try_recv() {
                    Ok(next) => merged.absorb(next),
                    Err(_) => break,
                }
            }
            let mut delay = Duration::from_millis(100);
            let written = loop {
                match writer.commit_with_retry(&merged).await {
                    Ok(written) => break written,
                    Err(WriteError::Refused {
                        context,
                        reason,
                        sqlstate,
                    }) => {
                        if writer.quarantine_refused(&merged, context, &reason).await? {
                            return Ok(WriterExit::Restart);
                        }
                        // Each message alone is accepted: a refusal of the
                        // database like any other, waited out.
                        let error = WriteError::Blocked {
                            context: "no input message explains the refusal (each alone is accepted)",
                            reason: format!("{context}: {reason}"),
                            sqlstate,
                        };
                        writer.wait(&error, &mut delay).await?;
                        writer.reconnect(&mut delay).await?;
                    }
                    Err(error) => return Err(error.into()),
                }
            };
            merged.count_history(&written.history);
            metrics.committed(&merged.counters, merged.rejected.len() as u64);
            for rejected in &merged.rejected {
                if rejected_log.allow() {
                    tracing::warn!(
                        partition = rejected.position.partition,
                        offset = rejected.position.offset,
                        reason = %rejected.reason,
                        suppressed_since_last = rejected_log.suppressed,
                        "rejected a message; copied to the dead-letter topic"
                    );
                    rejected_log.suppressed = 0;
                }
            }
            for epoch in &merged.epochs {
                if committed.send(*epoch).is_err() {
                    return Ok(WriterExit::Finished);
                }
            }
            wake();
            publisher.wake.notify_one();
            if let Some(monitor) = &monitor {
                monitor.report(&merged.offsets);
            }
        }
        Ok(WriterExit::Finished)
    });
    match result {
        Err(error) if matches!(error.downcast_ref(), Some(WriteError::Stopping)) => {
            tracing::warn!(
                "stopped on request while waiting for PostgreSQL: what was not committed is read again at the next start"
            );
            Ok(WriterExit::Abandoned)
        }
        other => other,
    }
}

struct Writer {
    config: WriterConfig,
    client: Client,
    /// The other connections (`parts`); empty with one connection.
    others: Vec<Client>,
    commit_no: i64,
    /// Commit attempts so far: names the prepared parts of each apart.
    attempts: u32,
    /// Parts may be left prepared (a failed attempt, a commit whose parts
    /// were not all committed): resolve them before anything else.
    unresolved: bool,
    /// Names this job's parts.
    job: JobTag,
    balance: Balance,
    errors: crate::metrics::RateLimited,
    metrics: Arc<Metrics>,
    months: KnownMonths,
}

impl Writer {
    async fn connect(config: WriterConfig, metrics: Arc<Metrics>) -> anyhow::Result<Writer> {
        let client = crate::db::connect_with_retry(&config.database_url, Duration::from_secs(60)).await?;
        let job = JobTag::of(&config.job_id)
            .with_context(|| format!("job_progress.job_id is not a UUID: {:?}", config.job_id))?;
        let mut writer = Writer {
            config,
            client,
            others: Vec::new(),
            commit_no: 0,
            attempts: 0,
            // The job resolved them before it read its state; once more in
            // case an instance it took over from left any since.
            unresolved: true,
            job,
            balance: Balance::default(),
            errors: crate::metrics::RateLimited::new(Duration::from_secs(10)),
            metrics,
            months: KnownMonths::default(),
        };
        let mut delay = Duration::from_millis(100);
        if let Err(error) = prepare(&writer.client).await {
            if !error.is_retried() {
                return Err(error.into());
            }
            writer.wait(&error, &mut delay).await?;
            writer.reconnect(&mut delay).await?;
        }
        let others = writer.other_connections().await;
        for _ in 0..others {
            let client =
                crate::db::connect_with_retry(&writer.config.database_url, Duration::from_secs(60)).await?;
            writer.others.push(client);
        }
        loop {
            let read = match writer.resolve_parts().await {
                Ok(()) => read_commit_no(&writer.client).await,
                Err(error) => Err(error),
            };
            match read {
                Ok(commit_no) => {
                    writer.commit_no = commit_no;
                    return Ok(writer);
                }
                Err(error) if error.is_retried() => {
                    writer.wait(&error, &mut delay).await?;
                    writer.reconnect(&mut delay).await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// After a failure worth retrying: logs it (rate-limited), reports a
    /// blocked writer (`/healthz`, `conscope_writer_blocked`), and waits with
    /// capped backoff; `Stopping` once the job is asked to stop (a wait may
    /// last as long as an operator takes to fix the database).
    async fn wait(&mut self, error: &WriteError, delay: &mut Duration) -> Result<(), WriteError> {
        if let WriteError::Blocked { reason, sqlstate, .. } = error {
            self.metrics.writer_blocked(sqlstate, reason);
        }
        if self.errors.allow() {
            let suppressed = std::mem::take(&mut self.errors.suppressed);
            match error {
                WriteError::Blocked { .. } => tracing::error!(
                    suppressed_since_last = suppressed,
                    "PostgreSQL refuses the writes ({error}): not a message's fault, so nothing is \
                     quarantined; the job keeps what it has and retries every {delay:?} until this is fixed"
                ),
                _ => tracing::warn!(
                    suppressed_since_last = suppressed,
                    "{error}; retrying in {delay:?}"
                ),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(*delay) => {}
            () = self.config.shutdown.triggered() => {}
        }
        if self.config.shutdown.is_triggered() {
            return Err(WriteError::Stopping);
        }
        *delay = (*delay * 2).min(MAX_RETRY_DELAY);
        Ok(())
    }

    /// A new, prepared connection, whatever state the old one is in: after a
    /// failure the old one may be closed, or out of step with the server (see
    /// `CopyIn::start`). Retries until it has one; returns only failures that
    /// are not worth retrying.
    async fn reconnect(&mut self, delay: &mut Duration) -> Result<(), WriteError> {
        loop {
            let attempt = match crate::db::connect(&self.config.database_url).await {
                Ok(client) => {
                    self.client = client;
                    match prepare(&self.client).await {
                        Ok(()) => self.reconnect_others().await,
                        Err(error) => Err(error),
                    }
                }
                Err(error) => Err(WriteError::Transient {
                    context: "reconnect",
                    detail: format!("{error:#}"),
                }),
            };
            match attempt {
                Ok(()) => return Ok(()),
                Err(error) if error.is_retried() => self.wait(&error, delay).await?,
                Err(error) => return Err(error),
            }
        }
    }

    /// New other connections, as many as there were.
    async fn reconnect_others(&mut self) -> Result<(), WriteError> {
        for other in &mut self.others {
            *other = crate::db::connect(&self.config.database_url)
                .await
                .map_err(|error| WriteError::Transient {
                    context: "reconnect",
                    detail: format!("{error:#}"),
                })?;
        }
        Ok(())
    }

    /// How many other connections to open: `--writer-connections` less one,
    /// or none when PostgreSQL cannot prepare that many transactions
    /// (`max_prepared_transactions`, 0 by default): the job then writes on one
    /// connection and says how to give it more.
    async fn other_connections(&self) -> usize {
        let wanted = self.config.connections.saturating_sub(1);
        if wanted == 0 {
            return 0;
        }
        let allowed = self
            .client
            .query_one("SELECT current_setting('max_prepared_transactions')::int", &[])
            .await
            .map(|row| row.get::<_, i32>(0))
            .unwrap_or(0);
        if allowed < wanted as i32 {
            tracing::warn!(
                "--writer-connections {} needs max_prepared_transactions >= {wanted} in PostgreSQL (it is {allowed}): \
                 writing on one connection",
                self.config.connections
            );
            return 0;
        }
        tracing::info!(
            connections = wanted + 1,
            "the writer commits large batches on several connections"
        );
        wanted
    }

    /// Ends the parts an earlier attempt or another instance left prepared,
    /// if any may be; they hold row locks every later write would wait for.
    async fn resolve_parts(&mut self) -> Result<(), WriteError> {
        if self.unresolved {
            super::parts::resolve(&self.client, &self.job).await?;
            self.unresolved = false;
        }
        Ok(())
    }

    /// After a commit landed: its parts must be committed before anything
    /// else, waiting out what is worth retrying.
    async fn resolve_parts_patiently(&mut self, delay: &mut Duration) -> Result<(), WriteError> {
        while let Err(error) = self.resolve_parts().await {
            if !error.is_retried() {
                return Err(error);
            }
            self.wait(&error, delay).await?;
            self.reconnect(delay).await?;
        }
        Ok(())
    }

    /// A commit landed: a blocked writer is going again.
    fn resumed(&mut self) {
        if self.metrics.writer_unblocked() {
            tracing::info!("PostgreSQL accepts the writes again; the job goes on");
        }
    }

    /// Commits `merged`, waiting out and retrying transient failures and
    /// refusals of the database (`Blocked`); returns refusals of data and
    /// fencing. Returns what it did with the history rows.
    async fn commit_with_retry(&mut self, merged: &Merged) -> Result<Written, WriteError> {
        let mut delay = Duration::from_millis(100);
        loop {
            // Set by the attempt before its COMMIT: what a commit that landed
            // unacknowledged wrote.
            let mut written = None;
            let attempt = match self.resolve_parts().await {
                Ok(()) => self.write(merged, &mut written).await,
                Err(error) => Err(error),
            };
            let error = match attempt {
                Ok(()) => {
                    self.resolve_parts_patiently(&mut delay).await?;
                    self.commit_no += 1;
                    self.metrics.commit_done();
                    self.resumed();
                    fail_point("after_commit");
                    return Ok(self.committed(written));
                }
                Err(error) if error.is_retried() => error,
                // A month partition dropped behind the writer's back (by
                // hand, not by `history prune`): once more, asking for every
                // month, before looking for offending messages.
                Err(WriteError::Refused { .. }) if self.months.forget() => continue,
                Err(error) => return Err(error),
            };
            self.wait(&error, &mut delay).await?;
            self.reconnect(&mut delay).await?;
            // Did the lost commit land? commit_no and committed_by tell;
            // another run's commit means this one is fenced.
            if let Ok((stored, committed_by)) = read_progress(&self.client).await {
                let run_id = self.config.lease.run_id();
                if lost_commit_landed((stored, committed_by.as_deref()), self.commit_no, run_id)? {
                    tracing::info!("the interrupted commit had landed");
                    self.resolve_parts_patiently(&mut delay).await?;
                    self.commit_no = stored;
                    self.metrics.commit_done();
                    self.resumed();
                    return Ok(self.committed(written));
                }
            }
        }
    }

    /// What a landed commit wrote; its months' partitions now exist.
    fn committed(&mut self, written: Option<Written>) -> Written {
        let written = written.unwrap_or_default();
        self.months.learn(&written.months);
        written
    }

    /// PostgreSQL refused data of `merged`: finds the input messages behind the
    /// refused rows and quarantines them, waiting out failures on the way.
    /// `false` when no message explains the refusal (each alone is accepted).
    async fn quarantine_refused(
        &mut self,
        merged: &Merged,
        context: &str,
        reason: &str,
    ) -> Result<bool, WriteError> {
        tracing::warn!(
            "PostgreSQL refused a commit ({context}: {reason}); looking for the input messages behind it"
        );
        let mut delay = Duration::from_millis(100);
        loop {
            // Parts left prepared would hold the rows the probes write.
            if let Err(error) = self.resolve_parts().await {
                self.wait(&error, &mut delay).await?;
                self.reconnect(&mut delay).await?;
                continue;
            }
            let attempt = match super::isolate::offenders(&mut self.client, &self.config, merged).await {
                Ok(offenders) if offenders.is_empty() => return Ok(false),
                Ok(offenders) => {
                    super::quarantine::store(&self.client, &self.config.input_name, &offenders).await
                }
                Err(error) => Err(error),
            };
            match attempt {
                Ok(()) => return Ok(true),
                Err(error @ WriteError::Fenced(_)) => return Err(error),
                // Storing the quarantine refused for its data would be a
                // refusal of the database (the rows are the job's own).
                Err(error) => {
                    self.wait(&error.before_any_row(), &mut delay).await?;
                    self.reconnect(&mut delay).await?;
                }
            }
        }
    }
}

/// The longest wait between two attempts of a commit PostgreSQL refuses or
/// cannot take: an operator's fix is picked up within it.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

impl Writer {
    /// One attempt at committing `merged`: on one connection, or split over
    /// all of them (`parts`) when it is large enough.
    async fn write(&mut self, merged: &Merged, written: &mut Option<Written>) -> Result<(), WriteError> {
        self.attempts = self.attempts.wrapping_add(1);
        let split = Split::of(
            merged,
            self.others.len(),
            self.balance.keep,
            self.config.split_min_rows,
            &self.months,
        );
        let Some(split) = split else {
            return write(
                &mut self.client,
                &self.config,
                merged,
                self.commit_no,
                &self.months,
                written,
            )
            .await;
        };
        // From here until it is resolved, a part may be prepared.
        self.unresolved = true;
        let run_id = self.config.lease.run_id();
        let gids: Vec<Gid> = (1..=split.parts.len())
            .map(|part| Gid {
                job: self.job.clone(),
                run: run_id.to_owned(),
                commit: self.commit_no + 1,
                attempt: self.attempts,
                part,
            })
            .collect();
        let (config, months, commit_no, job) = (&self.config, &self.months, self.commit_no, &self.job);
        // The main connection is borrowed by the transaction until COMMIT.
        {
            let (client, others) = (&mut self.client, &mut self.others);
            let started = Instant::now();
            let main = async {
                let transaction = client
                    .transaction()
                    .await
                    .map_err(WriteError::at("BEGIN failed"))?;
                check_lease(&transaction, &config.lease).await?;
                lock_parts(&transaction, job).await?;
                advance_commit_no(&transaction, commit_no, run_id).await?;
                let rows = write_rows(&transaction, config, merged, months, &split.moved).await?;
                store_offsets(&transaction, &config.input_name, &merged.offsets).await?;
                Ok::<_, WriteError>((transaction, rows, started.elapsed()))
            };
            let parts = join_all(others.iter_mut().zip(&split.parts).zip(&gids).map(
                |((client, part), gid)| async move {
                    prepare_part(client, part, gid)
                        .await
                        .map(|pruned| (pruned, started.elapsed()))
                },
            ));
            let (main, parts) = tokio::join!(main, parts);
            let mut prepared = Vec::new();
            let mut failure = None;
            let (mut pruned, mut parts_took) = (0, Duration::ZERO);
            for (part, gid) in parts.into_iter().zip(&gids) {
                match part {
                    Ok((part_pruned, took)) => {
                        prepared.push(gid);
                        pruned += part_pruned;
                        parts_took = parts_took.max(took);
                    }
                    Err(error) => failure = failure.or(Some(error)),
                }
            }
            let ready = match (main, failure) {
                (Ok((transaction, rows, main_took)), None) => {
                    self.balance.learn(main_took, parts_took);
                    fail_point("after_prepare");
                    match check_prepared(&transaction, &gids).await {
                        Ok(()) => Ok((transaction, rows)),
                        Err(error) => Err(error),
                    }
                }
                (Err(error), _) | (Ok(_), Some(error)) => Err(error),
            };
            let (transaction, mut rows) = match ready {
                Ok(ready) => ready,
                Err(error) => {
                    // The main transaction is rolled back (dropped): so are the
                    // parts, at once, so their row locks go; what fails to is
                    // left to the next attempt's resolution.
                    if abandon(&self.others, &prepared).await {
                        self.unresolved = false;
                    }
                    return Err(error);
                }
            };
            rows.history.pruned_new += pruned;
            *written = Some(rows);
            fail_point("before_commit");
            transaction
                .commit()
                .await
                .map_err(WriteError::at("COMMIT failed"))?;
        }
        fail_point("before_commit_prepared");
        // Landed: a failure here is one to retry whatever it says, and the
        // retry's resolution commits the parts.
        commit_parts(&self.client, &gids)
            .await
            .map_err(|error| WriteError::Transient {
                context: "COMMIT PREPARED",
                detail: error.to_string(),
            })?;
        self.unresolved = false;
        Ok(())
    }
}

/// One attempt on the main connection alone.
async fn write(
    client: &mut Client,
    config: &WriterConfig,
    merged: &Merged,
    commit_no: i64,
    months: &KnownMonths,
    written: &mut Option<Written>,
) -> Result<(), WriteError> {
    let transaction = client
        .transaction()
        .await
        .map_err(WriteError::at("BEGIN failed"))?;
    check_lease(&transaction, &config.lease).await?;
    advance_commit_no(&transaction, commit_no, config.lease.run_id()).await?;

    *written = Some(write_rows(&transaction, config, merged, months, &HashSet::new()).await?);

    store_offsets(&transaction, &config.input_name, &merged.offsets).await?;
    fail_point("before_commit");
    transaction
        .commit()
        .await
        .map_err(WriteError::at("COMMIT failed"))?;
    Ok(())
}

/// No commit without the job lease: the lease's session must still hold the
/// lock (it may have been lost with its connection, and taken by another
/// instance since; then the lease stops the job).
async fn check_lease(transaction: &Transaction<'_>, lease: &Lease) -> Result<(), WriteError> {
    let Some(pid) = lease.holder_pid() else {
        return Err(WriteError::Transient {
            context: "job lease",
            detail: "the job lease is being taken again after a lost connection".to_owned(),
        });
    };
    let held = lease
        .is_held_in(transaction)
        .await
        .map_err(WriteError::at("cannot check the job lease"))?;
    if held {
        Ok(())
    } else {
        // Its session is gone: the lease notices within a second and takes
        // the lock again, or stops the job if another instance has it.
        Err(WriteError::Transient {
            context: "job lease",
            detail: format!("the job lease's session (pid {pid}) no longer holds the lock"),
        })
    }
}
