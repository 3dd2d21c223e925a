//! The first stage after a source: parse and validate each message where it was
//! read (no exchange, so parsing scales with the source workers), split valid
//! observations from rejects, and pass partition progress through to the sink.

use timely::dataflow::operators::core::OkErr;
use timely::dataflow::Stream;

use crate::model::{ProcessorInput, Rejected, SinkRecord, SourceEvent};
use crate::parse::parse_raw;

/// Valid observations for the processor, and records for the sink (rejects and
/// offsets).
pub type Ingested<'scope> = (
    Stream<'scope, u64, Vec<ProcessorInput>>,
    Stream<'scope, u64, Vec<SinkRecord>>,
);

pub fn ingest(events: Stream<'_, u64, Vec<SourceEvent>>) -> Ingested<'_> {
    events.ok_err(classify)
}

// Both sides are moved straight into their output streams; boxing the error side
// would only add an allocation per reject.
#[allow(clippy::result_large_err)]
fn classify(event: SourceEvent) -> Result<ProcessorInput, SinkRecord> {
    match event {
        SourceEvent::Message(raw) => match parse_raw(&raw) {
            Ok(observation) => Ok(ProcessorInput::Observation {
                position: raw.position,
                observation,
            }),
            Err(error) => Err(SinkRecord::Rejected(Rejected {
                position: raw.position,
                key: raw.key,
                payload: raw.payload,
                reason: error.to_string(),
            })),
        },
        SourceEvent::Progress(position) => Err(SinkRecord::Offset(position)),
    }
}
