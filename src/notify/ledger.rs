//! The delivery ledger's writer: final deliveries (sent, failed, digested) from
//! every channel's worker are written to `notify_deliveries` in batches, one
//! transaction each (a statement), and only then reported to the consumer loop,
//! which may then commit the offsets past them. A row is the proof that an
//! (alert, channel) is done: a restart skips it.
//!
//! Between a channel accepting an alert and its row's commit (a few
//! milliseconds: one batch) a crash loses the row, and the alert is sent again
//! after the restart, with the same `Idempotency-Key`: a channel that honours
//! it sees it once.
//!
//! Runs on its own thread; touches the database. On shutdown it writes every
//! row already handed to it, then stops.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

use super::metrics::{add, NotifyMetrics};
use super::pg::Pg;
use super::store::{Delivery, Status};

/// Most rows in one transaction.
const BATCH: usize = 2_000;

/// A final delivery and the alert's place on the topic.
pub struct Final {
    pub row: Delivery,
    pub channel: String,
    pub partition: i32,
    pub offset: i64,
}

/// Writes until every worker has dropped its sender (and then what is left).
pub fn run(mut pg: Pg, rows: Receiver<Final>, done: Sender<Vec<(i32, i64)>>, metrics: Arc<NotifyMetrics>) {
    loop {
        let first = match rows.recv_timeout(Duration::from_millis(200)) {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rows.try_recv() {
                Ok(row) => batch.push(row),
                Err(_) => break,
            }
        }
        let deliveries: Vec<Delivery> = batch.iter().map(|f| f.row.clone()).collect();
        if pg.insert_deliveries(&deliveries).is_err() {
            // Stopped while the database was away: these alerts were sent but
            // are not recorded; their offsets stay uncommitted, and a restart
            // sends them again with the same Idempotency-Key.
            tracing::warn!(rows = batch.len(), "stopping with deliveries not recorded");
            return;
        }
        for f in &batch {
            let counts = metrics.channel(&f.channel);
            match f.row.status {
                Status::Sent => add(&counts.delivered, 1),
                Status::Failed => add(&counts.failed, 1),
                Status::Digested => add(&counts.digested, 1),
            }
        }
        if done
            .send(batch.iter().map(|f| (f.partition, f.offset)).collect())
            .is_err()
        {
            return;
        }
    }
}
