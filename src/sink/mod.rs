//! Sinks: everything the job writes.
//!
//! - `writer`: the writer, one transaction per batch of epochs (rows,
//!   alerts, outbox, offsets), with prepared parts beside it on other
//!   connections when the batch is large; retries, the job lease check.
//! - `config`: what the writer is told (database, topics, lease).
//! - `merge`: the epochs of one transaction folded per key.
//! - `parts`: a large commit split over several connections (two-phase
//!   commit), and what resolves the parts a crash left prepared.
//! - `tables`: each table's SQL, the `COPY` helpers.
//! - `write_error`: which PostgreSQL failures are transient, refusals of data,
//!   refusals of the database (the writer waits), fencing.
//! - `isolate`: after a refusal of data, the input messages behind it.
//! - `quarantine`: those messages, stored, so the replay rejects them.
//! - `monitor`: committed offsets reported to the Kafka consumer group.
//! - `publisher`: the outbox publisher (alerts topic, dead-letter topic).
//! - `delivery`: the producer settings the publisher relies on, and which
//!   delivery failures are final.
//! - `recovery`: after a crash, which outbox rows already reached their topic.
//! - `encode`: the wire format of outbox messages.
//!
//! This module holds the timely side: the `PostgresSink` operator on worker 0
//! gathers each epoch's records once the epoch is complete, hands them to the
//! writer, and holds the epoch's capability until the writer reports it
//! committed. A probe on its output therefore tells every worker, in every
//! process, which epochs are durable. [`WriterThread`] runs the writer on a
//! thread of its own, started by that operator, and tells the job how it
//! ended.

pub mod config;
pub mod delivery;
pub mod encode;
mod isolate;
mod merge;
mod monitor;
pub mod parts;
pub mod publisher;
pub mod quarantine;
pub mod recovery;
mod tables;
pub mod write_error;
pub mod writer;

use std::collections::BTreeMap;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use conscope_dataflows::model::SinkRecord;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::{Capability, Operator};
use timely::dataflow::Stream;
use timely::scheduling::SyncActivator;

use crate::cluster_stop::{StopFlag, StopReason};
use crate::metrics::Metrics;
use config::WriterConfig;
use merge::EpochBatch;
use publisher::PublisherControl;
use writer::{run_writer, WriterExit};

/// Starts the writer for the sink operator on worker 0: given the operator's
/// activator, returns where to send batches and where committed epochs come back.
pub type WriterStarter =
    Box<dyn FnOnce(SyncActivator) -> (mpsc::Sender<EpochBatch>, mpsc::Receiver<u64>) + Send>;

type WriterResult = anyhow::Result<WriterExit>;

/// The writer's thread, once the sink operator has started it.
pub struct WriterThread {
    handle: Arc<Mutex<Option<JoinHandle<WriterResult>>>>,
}

impl WriterThread {
    /// The starter to hand to [`postgres_sink`] on worker 0, and the thread to
    /// join once the workers are done. When the writer ends for any reason but
    /// its input closing, it sets `stop`: the workers of every process must
    /// stop too (after an error, or to replay without quarantined messages;
    /// `crate::cluster_stop` carries it to them).
    pub fn prepare(
        config: WriterConfig,
        metrics: Arc<Metrics>,
        control: Arc<PublisherControl>,
        stop: Arc<StopFlag>,
    ) -> (WriterStarter, WriterThread) {
        let handle = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&handle);
        let starter: WriterStarter = Box::new(move |activator| {
            let (batches, batches_in) = mpsc::channel();
            let (committed_out, committed) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("pg-writer".into())
                .spawn(move || {
                    let wake = {
                        let activator = activator.clone();
                        move || {
                            let _ = activator.activate();
                        }
                    };
                    let result = run_writer(config, batches_in, committed_out, wake, metrics, control);
                    match result {
                        // Abandoned: asked to stop, which stops the workers too.
                        Ok(WriterExit::Finished | WriterExit::Abandoned) => {}
                        Ok(WriterExit::Restart) => stop.set(StopReason::Replay),
                        Err(_) => stop.set(StopReason::Failed),
                    }
                    result
                });
            let spawned = spawned
                .map_err(|error| anyhow::Error::from(error).context("cannot start the Postgres writer"));
            let handle = match spawned {
                Ok(handle) => handle,
                Err(error) => std::thread::spawn(move || Err(error)),
            };
            if let Ok(mut slot) = slot.lock() {
                *slot = Some(handle);
            }
            (batches, committed)
        });
        (starter, WriterThread { handle })
    }

    /// Waits for the writer to end; `Finished` if it never started.
    pub fn join(self) -> WriterResult {
        let handle = self.handle.lock().ok().and_then(|mut slot| slot.take());
        match handle {
            None => Ok(WriterExit::Finished),
            Some(handle) => handle
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the Postgres writer panicked"))),
        }
    }
}

pub fn postgres_sink<'scope>(
    records: Stream<'scope, u64, Vec<SinkRecord>>,
    writer: Option<WriterStarter>,
) -> Stream<'scope, u64, Vec<()>> {
    let scope = records.scope();
    // Everything goes to worker 0: one writer commits rows and offsets together.
    records.unary_frontier::<CapacityContainerBuilder<Vec<()>>, _, _, _>(
        Exchange::new(|_: &SinkRecord| 0),
        "PostgresSink",
        move |initial, info| {
            drop(initial);
            let channels =
                writer.map(|start| start(scope.worker().sync_activator_for(info.address.to_vec())));
            let mut stash: BTreeMap<u64, (Capability<u64>, Vec<Vec<SinkRecord>>)> = BTreeMap::new();
            let mut awaiting_commit: BTreeMap<u64, Capability<u64>> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|capability, batches| {
                    let Some(capability) = capability.retain_least(output.output_index()) else {
                        return;
                    };
                    let entry = stash
                        .entry(*capability.time())
                        .or_insert_with(|| (capability, Vec::new()));
                    // Taken whole, not copied into one buffer (see `EpochBatch`).
                    for batch in batches {
                        if !batch.is_empty() {
                            entry.1.push(std::mem::take(batch));
                        }
                    }
                });
                let Some((batches, committed)) = channels.as_ref() else {
                    return;
                };
                while let Some(entry) = stash.first_entry() {
                    if frontier.less_equal(entry.key()) {
                        break;
                    }
                    let (time, (capability, containers)) = entry.remove_entry();
                    if batches
                        .send(EpochBatch {
                            epoch: time,
                            containers,
                        })
                        .is_err()
                    {
                        tracing::error!("the Postgres writer stopped");
                        return;
                    }
                    awaiting_commit.insert(time, capability);
                }
                while let Ok(epoch) = committed.try_recv() {
                    awaiting_commit.remove(&epoch);
                }
            }
        },
    )
}
