//! Sources: where observations enter the dataflow.
//!
//! - `kafka`: the input topic, partitions owned statically by workers.
//! - `file`: `--input-file`, JSON lines read as one partition (backfills).
//! - `restore`: the committed state read back from PostgreSQL at start (events
//!   and listings, streamed by one reader), and the source that carries it and
//!   the rules.
//! - `rules`: the active rules at start, and the poller of their changes.
//!
//! Every source emits at epoch `wall-clock ms / epoch_ms` (see `kafka`'s docs).
//! The Kafka and file sources share one operator, [`input_source`]: it closes
//! epochs (a `Progress` per partition that moved, at the epoch its messages were
//! emitted at), holds back while too much is in flight ([`InFlight`]), and ends
//! when its [`Input`] is finished or has failed. What differs (where messages
//! come from, where positions are read) is the `Input`.

pub mod file;
pub mod kafka;
pub mod restore;
pub mod rules;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conscope_dataflows::model::{Position, SourceEvent};
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{ProbeHandle, Scope, Stream};

/// How sources batch and pace their reads.
#[derive(Clone, Copy, Debug)]
pub struct SourceSettings {
    pub epoch_ms: u64,
    /// Messages read per activation at most: keeps each worker responsive.
    pub max_batch: usize,
    /// Messages emitted but not yet committed at most, per worker.
    pub max_in_flight: usize,
    /// Pause before polling again when nothing was there.
    pub idle_poll_ms: u64,
}

/// The epoch of now: every process agrees on it without coordination.
pub fn current_epoch(epoch_ms: u64) -> u64 {
    let now_ms = wall_clock().as_millis() as u64;
    // Epoch 0 is reserved for state restored at start.
    (now_ms / epoch_ms.max(1)).max(1)
}

/// How long until the next epoch starts. A source that only waits wakes then
/// at the latest, so the epoch it holds closes as soon as the clock passes it;
/// a fixed period drifted against the boundaries and held each epoch up to a
/// period longer (the rules source's 100 ms added 0-100 ms to every commit's
/// latency, 50 on average).
pub fn until_next_epoch(epoch_ms: u64) -> Duration {
    let length = u128::from(epoch_ms.max(1)) * 1_000_000;
    let now = wall_clock().as_nanos();
    Duration::from_nanos(u64::try_from(length - now % length).unwrap_or(u64::MAX))
}

/// Time since the Unix epoch: the clock epochs are counted on (zero if the
/// system clock is set before 1970).
fn wall_clock() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Messages a source emitted that are not committed yet, per epoch: what lets a
/// source stop reading while PostgreSQL is slow or away, so memory stays bounded.
#[derive(Default)]
pub struct InFlight {
    closed: VecDeque<(u64, usize)>,
    open: usize,
}

impl InFlight {
    /// Counts messages emitted at the current epoch.
    pub fn read(&mut self, messages: usize) {
        self.open += messages;
    }

    /// The current epoch, `epoch`, ends: its messages wait for its commit.
    pub fn close(&mut self, epoch: u64) {
        if self.open > 0 {
            self.closed.push_back((epoch, self.open));
            self.open = 0;
        }
    }

    /// Whether the uncommitted messages reach `limit`, given the sink's probe.
    pub fn full(&mut self, committed: &ProbeHandle<u64>, limit: usize) -> bool {
        while self
            .closed
            .front()
            .is_some_and(|(epoch, _)| !committed.less_equal(epoch))
        {
            self.closed.pop_front();
        }
        self.closed.iter().map(|(_, count)| count).sum::<usize>() + self.open >= limit
    }
}

/// Where a source's messages come from, as the shared operator sees it.
pub trait Input: 'static {
    /// Runs first at every activation (Kafka: takes up partitions added since).
    fn prepare(&mut self) {}
    /// Appends at most `max` messages to `out`. An error ends the source: what
    /// was read before it is committed, the job then fails with the error.
    fn read(&mut self, max: usize, out: &mut Vec<SourceEvent>) -> anyhow::Result<()>;
    /// Partition -> next offset to read: what `Progress` reports.
    fn positions(&self) -> &BTreeMap<i32, i64>;
    /// Nothing more will be read (a bounded input reached its end).
    fn finished(&self) -> bool;
    /// The positions in `moved` were reported at `epoch` (Kafka: lag metrics).
    fn reported(&self, _epoch: u64, _moved: &[(i32, i64)]) {}
}

/// The first error of a source that could not go on; the job fails with it
/// once the dataflow has committed what was read before it.
#[derive(Clone, Default)]
pub struct SourceFailure(Arc<Mutex<Option<anyhow::Error>>>);

impl SourceFailure {
    fn set(&self, error: anyhow::Error) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(error);
        }
    }

    /// The error, if a source failed.
    pub fn take(&self) -> Option<anyhow::Error> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// The source operator for `input` (`None`: this worker reads nothing and
/// drops its capability at once). `committed` is the sink's probe.
pub fn input_source<'scope, I: Input>(
    scope: Scope<'scope, u64>,
    name: &str,
    input: Option<I>,
    settings: SourceSettings,
    committed: ProbeHandle<u64>,
    failure: SourceFailure,
) -> Stream<'scope, u64, Vec<SourceEvent>> {
    let worker = scope.index();
    let name = name.to_owned();
    source(scope, &name.clone(), move |capability, info| {
        let activator = scope.activator_for(info.address);
        let mut capability = input.as_ref().map(|_| capability);
        let mut input = input;
        // Positions reported so far, to send Progress only for partitions that moved.
        let mut reported: BTreeMap<i32, i64> = BTreeMap::new();
        let mut in_flight = InFlight::default();
        let mut failed = false;
        let mut batch = Vec::new();
        move |output| {
            let (Some(cap), Some(open)) = (capability.as_mut(), input.as_mut()) else {
                return;
            };
            open.prepare();
            let ended = failed || open.finished();
            let epoch = current_epoch(settings.epoch_ms).max(*cap.time());
            if epoch > *cap.time() || ended {
                // Progress is emitted at the epoch its messages were emitted at.
                let mut moved = Vec::new();
                for (partition, next) in open.positions() {
                    if reported.get(partition) != Some(next) {
                        reported.insert(*partition, *next);
                        moved.push((*partition, *next));
                    }
                }
                output
                    .session(&*cap)
                    .give_iterator(moved.iter().map(|(partition, offset)| {
                        SourceEvent::Progress(Position {
                            partition: *partition,
                            offset: *offset,
                        })
                    }));
                open.reported(*cap.time(), &moved);
                in_flight.close(*cap.time());
                if ended {
                    tracing::info!(worker, source = %name, "source reached the end of its input");
                    capability = None;
                    input = None;
                    return;
                }
                cap.downgrade(&epoch);
            }

            // Backpressure: stop reading while too much is waiting for PostgreSQL.
            if in_flight.full(&committed, settings.max_in_flight) {
                activator.activate_after(Duration::from_millis(5));
                return;
            }
            let result = open.read(settings.max_batch, &mut batch);
            let read = batch.len();
            in_flight.read(read);
            output.session(&*cap).give_container(&mut batch);
            batch.clear();
            if let Err(error) = result {
                tracing::error!(source = %name, "{error:#}");
                failure.set(error);
                failed = true;
            }
            if read >= settings.max_batch || failed || open.finished() {
                activator.activate();
            } else {
                activator.activate_after(
                    Duration::from_millis(settings.idle_poll_ms).min(until_next_epoch(settings.epoch_ms)),
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_that_waits_until_the_next_epoch_wakes_in_it() {
        for epoch_ms in [1, 7, 100, 250] {
            let before = current_epoch(epoch_ms);
            let wait = until_next_epoch(epoch_ms);
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_millis(epoch_ms),
                "{wait:?} with {epoch_ms} ms epochs"
            );
            std::thread::sleep(wait);
            assert!(
                current_epoch(epoch_ms) > before,
                "still in epoch {before} after {wait:?}"
            );
        }
    }

    #[test]
    fn any_epoch_length_gives_a_wait() {
        assert!(until_next_epoch(0) <= Duration::from_millis(1));
        assert!(until_next_epoch(u64::MAX) > Duration::from_secs(3600));
    }
}
