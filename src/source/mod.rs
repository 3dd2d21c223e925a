//! Sources: where observations enter the dataflow.
//!
//! - `kafka`: the input topic, partitions owned statically by workers.
//! - `file`: `--input-file`, JSON lines read as one partition (backfills).
//! - `state`: state restored from PostgreSQL at start and live rule changes.
//!
//! Every source emits at epoch `wall-clock ms / epoch_ms` (see `kafka`'s docs).

pub mod file;
pub mod kafka;
pub mod state;

use std::time::{SystemTime, UNIX_EPOCH};

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
