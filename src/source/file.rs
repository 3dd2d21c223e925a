//! `--input-file`: JSON lines read as partition 0 of a pseudo-topic named
//! `file:<canonical path>`, line number = offset, with the same semantics as a
//! topic: offsets stored with the rows, restart resumes after the last committed
//! line, rejects go to the dead-letter topic. Read by worker 0; the file is
//! bounded, so the source ends at the end of the file.
//!
//! The name is the canonical path so that `./x.jsonl` and `/abs/x.jsonl` share
//! their stored offsets: otherwise a second name re-reads the file and sends
//! every reject to the dead-letter topic again.
//!
//! Lines are read with the size limit enforced while reading: of a line longer
//! than [`MAX_MESSAGE_BYTES`] only the first `MAX_MESSAGE_BYTES + 1` bytes are
//! kept (what the parser's size rule needs to reject it) and the rest is skipped
//! unbuffered, so a file without newlines is never held in memory whole.
//!
//! A read that fails is not the end of the file: the lines before it are
//! committed, then the job fails with an error naming the file, the line and
//! the error (a restart resumes at that line).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

use conscope_dataflows::model::{Position, RawMessage, SourceEvent};
use conscope_dataflows::parse::MAX_MESSAGE_BYTES;
use timely::dataflow::{ProbeHandle, Scope, Stream};

use super::{input_source, Input, SourceFailure, SourceSettings};
use crate::metrics::RateLimited;

#[derive(Debug, thiserror::Error)]
pub enum InputFileError {
    #[error("cannot resolve --input-file {}", path.display())]
    Resolve {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open --input-file {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read --input-file {} at line {line} (0-based): {source}", path.display())]
    Read {
        path: PathBuf,
        line: i64,
        #[source]
        source: io::Error,
    },
}

/// The canonical path of `path` and the pseudo-topic its offsets are stored under.
pub fn input_name(path: &Path) -> Result<(PathBuf, String), InputFileError> {
    let canonical = std::fs::canonicalize(path).map_err(|source| InputFileError::Resolve {
        path: path.to_owned(),
        source,
    })?;
    let name = format!("file:{}", canonical.display());
    Ok((canonical, name))
}

/// A line as read: at most `keep` of its bytes, and its full length.
struct Line {
    kept: Vec<u8>,
    length: usize,
}

/// Reads the next line without its `\n`, keeping at most `keep` bytes of it and
/// skipping the rest without buffering it. `None` at the end of the input.
fn read_line_bounded(reader: &mut impl BufRead, keep: usize) -> io::Result<Option<Line>> {
    let mut line = Line {
        kept: Vec::new(),
        length: 0,
    };
    let mut any = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(available) => available,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if available.is_empty() {
            return Ok(any.then_some(line));
        }
        any = true;
        let newline = available.iter().position(|byte| *byte == b'\n');
        let chunk = &available[..newline.unwrap_or(available.len())];
        let room = keep.saturating_sub(line.kept.len());
        line.kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        line.length += chunk.len();
        let used = newline.map_or(available.len(), |at| at + 1);
        reader.consume(used);
        if newline.is_some() {
            return Ok(Some(line));
        }
    }
}

pub struct OpenFile<R = BufReader<File>> {
    reader: R,
    /// The file's name, for errors.
    path: PathBuf,
    /// Partition 0 -> the next line to read.
    next: BTreeMap<i32, i64>,
    at_end: bool,
    oversize_log: RateLimited,
}

impl OpenFile {
    /// Opens `path` and skips the `start` lines already committed.
    pub fn open(path: &Path, start: i64) -> Result<OpenFile, InputFileError> {
        let file = File::open(path).map_err(|source| InputFileError::Open {
            path: path.to_owned(),
            source,
        })?;
        OpenFile::from_reader(BufReader::with_capacity(1 << 20, file), path, start)
    }
}

impl<R: BufRead> OpenFile<R> {
    /// Reads `reader` as the file `path`, skipping the `start` lines already committed.
    fn from_reader(mut reader: R, path: &Path, start: i64) -> Result<OpenFile<R>, InputFileError> {
        let read_error = |line, source| InputFileError::Read {
            path: path.to_owned(),
            line,
            source,
        };
        let mut skipped = 0;
        while skipped < start {
            // Committed lines are only counted: nothing of them is kept.
            match read_line_bounded(&mut reader, 0) {
                Ok(Some(_)) => skipped += 1,
                Ok(None) => break,
                Err(source) => return Err(read_error(skipped, source)),
            }
        }
        Ok(OpenFile {
            reader,
            path: path.to_owned(),
            next: BTreeMap::from([(0, skipped)]),
            at_end: false,
            oversize_log: RateLimited::new(Duration::from_secs(10)),
        })
    }

    fn line_number(&self) -> i64 {
        self.next.get(&0).copied().unwrap_or(0)
    }

    /// The next line without its line ending, cut to `MAX_MESSAGE_BYTES + 1`
    /// bytes when longer (with its full length), `None` at the end of the file.
    fn next_line(&mut self) -> Result<Option<Line>, InputFileError> {
        let line = read_line_bounded(&mut self.reader, MAX_MESSAGE_BYTES + 1).map_err(|source| {
            InputFileError::Read {
                path: self.path.clone(),
                line: self.line_number(),
                source,
            }
        })?;
        let Some(mut line) = line else { return Ok(None) };
        // A `\r` kept from a cut line is not its ending: dropping it could bring
        // the cut line within the limit.
        if line.length == line.kept.len() && line.kept.last() == Some(&b'\r') {
            line.kept.pop();
            line.length -= 1;
        }
        Ok(Some(line))
    }
}

impl<R: BufRead + 'static> Input for OpenFile<R> {
    fn read(&mut self, max: usize, out: &mut Vec<SourceEvent>) -> anyhow::Result<()> {
        for _ in 0..max {
            let line = match self.next_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    tracing::info!(lines = self.line_number(), "input file read to its end");
                    self.at_end = true;
                    return Ok(());
                }
                // Not the end of the input: the job must fail, not pass for done.
                Err(error) => {
                    self.at_end = true;
                    return Err(error.into());
                }
            };
            let offset = self.line_number();
            if line.length > line.kept.len() && self.oversize_log.allow() {
                // The dead-letter record names the cut size; this names the real one.
                tracing::warn!(
                    line = offset,
                    bytes = line.length,
                    limit = MAX_MESSAGE_BYTES,
                    suppressed = self.oversize_log.suppressed,
                    "--input-file line over the size limit: rejected, read only up to the limit"
                );
            }
            out.push(SourceEvent::Message(RawMessage {
                position: Position { partition: 0, offset },
                key: None,
                payload: Some(line.kept),
            }));
            self.next.insert(0, offset + 1);
        }
        Ok(())
    }

    fn positions(&self) -> &BTreeMap<i32, i64> {
        &self.next
    }

    fn finished(&self) -> bool {
        self.at_end
    }
}

/// The file source: worker 0 reads `file`, the others read nothing.
pub fn file_source<'scope>(
    scope: Scope<'scope, u64>,
    file: Option<OpenFile>,
    settings: SourceSettings,
    committed: ProbeHandle<u64>,
    failure: SourceFailure,
) -> Stream<'scope, u64, Vec<SourceEvent>> {
    input_source(scope, "FileSource", file, settings, committed, failure)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use conscope_dataflows::parse::MAX_MESSAGE_BYTES;
    use timely::dataflow::operators::capture::{Capture, Event};
    use timely::dataflow::operators::Probe;

    use super::*;

    /// Reads `data`, then fails every read: a disk that went away mid-file.
    struct FailsAfter(io::Cursor<Vec<u8>>);

    impl Read for FailsAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(io::Error::other("device went away")),
                read => Ok(read),
            }
        }
    }

    /// A read error in the middle of the file is not its end: the real source
    /// operator emits the lines before it with their progress, then ends, and
    /// leaves an error naming the file, the line and the cause for the job.
    #[test]
    fn a_read_error_mid_file_fails_the_source() {
        let reader = BufReader::with_capacity(8, FailsAfter(io::Cursor::new(b"a\nb\nc\n".to_vec())));
        let open = OpenFile::from_reader(reader, Path::new("/data/prices.jsonl"), 0).expect("open");
        let failure = SourceFailure::default();
        let settings = SourceSettings {
            epoch_ms: 1,
            max_batch: 2,
            max_in_flight: 100,
            idle_poll_ms: 1,
        };
        let source_failure = failure.clone();
        let events = timely::execute_directly(move |worker| {
            let committed = ProbeHandle::new();
            let captured = worker.dataflow::<u64, _, _>(|scope| {
                let events = input_source(
                    scope,
                    "FileSource",
                    Some(open),
                    settings,
                    committed.clone(),
                    source_failure,
                );
                events.probe_with(&committed).capture()
            });
            while !committed.done() {
                worker.step();
            }
            captured
        });
        let mut messages = Vec::new();
        let mut progress = Vec::new();
        for event in events.try_iter() {
            if let Event::Messages(_, data) = event {
                for record in data {
                    match record {
                        SourceEvent::Message(message) => messages.push(message.position.offset),
                        SourceEvent::Progress(position) => progress.push(position.offset),
                    }
                }
            }
        }
        assert_eq!(messages, [0, 1, 2]);
        assert_eq!(progress.last(), Some(&3), "{progress:?}");
        let error = format!("{:#}", failure.take().expect("the source failed"));
        assert!(error.contains("/data/prices.jsonl"), "{error}");
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("device went away"), "{error}");
    }

    /// A line over the limit is cut at the limit plus one byte (enough for the
    /// parser's size rule to reject it), never read whole; the next line follows.
    #[test]
    fn a_line_over_the_limit_is_read_only_up_to_it() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"first\r\n").expect("write");
        file.write_all(&vec![b'x'; 5_000_000]).expect("write");
        file.write_all(b"\nlast\n").expect("write");
        file.flush().expect("flush");

        let mut open = OpenFile::open(file.path(), 0).expect("open");
        let line = |open: &mut OpenFile| open.next_line().expect("readable").expect("a line").kept;
        assert_eq!(line(&mut open), b"first");
        let long = line(&mut open);
        assert_eq!(long.len(), MAX_MESSAGE_BYTES + 1);
        assert!(
            long.capacity() <= 2 * (MAX_MESSAGE_BYTES + 1),
            "{}",
            long.capacity()
        );
        assert_eq!(line(&mut open), b"last");
        assert!(open.next_line().expect("readable").is_none());

        // Resuming after the long line skips it by counting lines, as before.
        let mut resumed = OpenFile::open(file.path(), 2).expect("open");
        assert_eq!(line(&mut resumed), b"last");
    }
}
