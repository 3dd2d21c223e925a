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

pub mod file;
pub mod kafka;
pub mod restore;
pub mod rules;

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use timely::dataflow::ProbeHandle;

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
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    // Epoch 0 is reserved for state restored at start.
    (now_ms / epoch_ms.max(1)).max(1)
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
