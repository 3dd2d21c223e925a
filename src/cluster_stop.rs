//! Stopping a run of the dataflow in step across the cluster. The writer runs
//! in process 0; when it ends for another reason than its input closing (it
//! quarantined messages PostgreSQL refuses and the run must be replayed
//! without them, or it failed), every worker of every process must leave the
//! dataflow, so that the processes can build the next run together (a timely
//! cluster only runs with all its members) or stop together.
//!
//! The writer sets its [`StopFlag`]; the `ClusterStop` operator on the
//! writer's worker sees it and broadcasts the reason through the dataflow, so
//! it reaches the workers of the other processes over timely's own channels;
//! each worker that receives it sets its process's flag, which the worker loop
//! (`job::drive`) watches. The writer's worker stops on the broadcast too, not
//! on the writer's flag: by then the reason is on its way to every peer.
//!
//! Touches nothing outside the dataflow and the two flags.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::operators::vec::broadcast::Broadcast;
use timely::dataflow::operators::Inspect;
use timely::dataflow::{ProbeHandle, Scope};

/// How often the writer's worker looks at the writer's flag. A stop is rare;
/// this bounds how long the cluster goes on after the writer ended.
const POLL: Duration = Duration::from_millis(20);

/// Why a run stops before its input is consumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Messages PostgreSQL refuses were quarantined: run again from the last
    /// commit, without them.
    Replay,
    /// The writer failed: the job stops.
    Failed,
}

impl StopReason {
    fn code(self) -> u8 {
        match self {
            StopReason::Replay => 1,
            StopReason::Failed => 2,
        }
    }

    fn from_code(code: u8) -> Option<StopReason> {
        match code {
            1 => Some(StopReason::Replay),
            2 => Some(StopReason::Failed),
            _ => None,
        }
    }
}

/// A reason to stop, shared between threads; the first one set stays.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicU8);

impl StopFlag {
    pub fn set(&self, reason: StopReason) {
        let _ = self
            .0
            .compare_exchange(0, reason.code(), Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn get(&self) -> Option<StopReason> {
        StopReason::from_code(self.0.load(Ordering::SeqCst))
    }
}

/// Adds the operator to this worker's dataflow. `writer`: the writer's flag,
/// on the worker that runs the writer (`None` elsewhere); `committed`: the
/// sink's probe (once everything is committed there is nothing left to stop);
/// `received`: this process's flag, set when the broadcast arrives.
pub fn cluster_stop<'scope>(
    scope: Scope<'scope, u64>,
    writer: Option<Arc<StopFlag>>,
    committed: ProbeHandle<u64>,
    received: Arc<StopFlag>,
) {
    source(scope, "ClusterStop", move |capability, info| {
        let activator = scope.activator_for(info.address);
        // Only the writer's worker has anything to say.
        let mut capability = writer.as_ref().map(|_| capability);
        move |output| {
            let (Some(held), Some(writer)) = (capability.as_ref(), writer.as_ref()) else {
                return;
            };
            if let Some(reason) = writer.get() {
                output.session(held).give(reason.code());
                capability = None;
            } else if committed.done() {
                capability = None;
            } else {
                activator.activate_after(POLL);
            }
        }
    })
    .broadcast()
    .inspect(move |code: &u8| {
        if let Some(reason) = StopReason::from_code(*code) {
            received.set(reason);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_stays() {
        let flag = StopFlag::default();
        assert_eq!(flag.get(), None);
        flag.set(StopReason::Replay);
        flag.set(StopReason::Failed);
        assert_eq!(flag.get(), Some(StopReason::Replay));
    }
}
