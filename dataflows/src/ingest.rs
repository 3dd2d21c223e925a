//! The first stage after a source: parse and validate each message where it was
//! read (no exchange, so parsing scales with the source workers), split valid
//! observations from rejects, and pass partition progress through to the sink.
//!
//! A message in the [`Quarantine`] is rejected with the reason stored for it,
//! whatever it holds: that is how a message PostgreSQL refused (a definite
//! error, found by the writer) is taken out of a replay.

use std::collections::HashMap;
use std::sync::Arc;

use timely::dataflow::operators::core::OkErr;
use timely::dataflow::Stream;

use crate::model::{Position, ProcessorInput, RawMessage, Rejected, SinkRecord, SourceEvent};
use crate::parse::parse_raw;

/// Valid observations for the processor, and records for the sink (rejects and
/// offsets).
pub type Ingested<'scope> = (
    Stream<'scope, u64, Vec<ProcessorInput>>,
    Stream<'scope, u64, Vec<SinkRecord>>,
);

/// Messages to reject whatever they hold, with the reason for each.
pub type Quarantine = Arc<HashMap<Position, String>>;

pub fn ingest(events: Stream<'_, u64, Vec<SourceEvent>>, quarantine: Quarantine) -> Ingested<'_> {
    // See `classify` on the size of the error side.
    #[allow(clippy::result_large_err)]
    events.ok_err(move |event| classify(event, &quarantine))
}

// Both sides are moved straight into their output streams; boxing the error side
// would only add an allocation per reject.
#[allow(clippy::result_large_err)]
fn classify(
    event: SourceEvent,
    quarantine: &HashMap<Position, String>,
) -> Result<ProcessorInput, SinkRecord> {
    match event {
        SourceEvent::Message(raw) => {
            let parsed = match quarantine.get(&raw.position) {
                Some(reason) => Err(reason.clone()),
                None => parse_raw(&raw).map_err(|error| error.to_string()),
            };
            match parsed {
                Ok(observation) => Ok(ProcessorInput::Observation {
                    position: raw.position,
                    observation,
                }),
                Err(reason) => Err(reject(raw, reason)),
            }
        }
        SourceEvent::Progress(position) => Err(SinkRecord::Offset(position)),
    }
}

fn reject(raw: RawMessage, reason: String) -> SinkRecord {
    SinkRecord::Rejected(Rejected {
        position: raw.position,
        key: raw.key,
        payload: raw.payload,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64, payload: &str) -> SourceEvent {
        SourceEvent::Message(RawMessage {
            position: Position { partition: 0, offset },
            key: None,
            payload: Some(payload.as_bytes().to_vec()),
        })
    }

    #[test]
    fn a_quarantined_message_is_rejected_with_its_stored_reason() {
        let valid = r#"{"event_id":"e","section":"A","price":"1","timestamp":"2026-01-01T00:00:00Z"}"#;
        let quarantine: HashMap<Position, String> = [(
            Position {
                partition: 0,
                offset: 2,
            },
            "postgres rejected: no (23514)".to_owned(),
        )]
        .into();
        assert!(matches!(
            classify(message(1, valid), &quarantine),
            Ok(ProcessorInput::Observation { .. })
        ));
        match classify(message(2, valid), &quarantine) {
            Err(SinkRecord::Rejected(rejected)) => {
                assert_eq!(rejected.reason, "postgres rejected: no (23514)");
                assert_eq!(rejected.payload.as_deref(), Some(valid.as_bytes()));
            }
            other => panic!("{other:?}"),
        }
        match classify(message(3, "garbage"), &quarantine) {
            Err(SinkRecord::Rejected(rejected)) => assert!(!rejected.reason.is_empty()),
            other => panic!("{other:?}"),
        }
    }
}
