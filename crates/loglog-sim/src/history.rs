//! A history of client operations against a LogLog cluster, and a checker
//! that judges it against the one final log.
//!
//! The history is independent of the simulator: the real-process fault
//! suite records the same operations (with monotonic nanoseconds as
//! timestamps) and calls the same [`check`].
//!
//! Every appended value must be unique in the whole history: the checker
//! identifies appends by their bytes. The final log is given as the data
//! entries of the committed log (offset and payload), read back after the
//! run, plus its end offset.
//!
//! What the checker proves (each failure is a typed [`Violation`]):
//! * every acknowledged append is in the final log exactly once, at the
//!   offset it was acknowledged with;
//! * no value of an append that definitely failed is ever visible (in the
//!   final log or in any read);
//! * no value appears twice, and no value appears that nobody appended;
//! * real time: if A was acknowledged before B was invoked, A's offset is
//!   below B's (B may be acknowledged, or indeterminate but present);
//! * every read is a slice of the final log: the entries it returned are
//!   exactly the final log's data entries in its offset range;
//! * a linearizable read covers every append acknowledged before it began,
//!   and never less than a linearizable read that completed before it
//!   began;
//! * no read returns a value whose append was invoked after the read
//!   completed.
//!
//! ```
//! use loglog_proto::entry::encode_entry;
//! use loglog_proto::EntryKind;
//! use loglog_sim::history::{check, AppendOutcome, FinalLog, History, ReadKind, ReadOutcome, ReadResult};
//!
//! let mut history = History::new();
//! let append = history.invoke_append(1, b"a".to_vec(), 100);
//! history.complete_append(append, AppendOutcome::Ok { offset: 0 }, 200);
//!
//! // The committed log, as read back after the run (raw log bytes).
//! let mut log = Vec::new();
//! encode_entry(1, EntryKind::Data, b"a", &mut log);
//! let read = history.invoke_read(2, ReadKind::Linearizable, 300);
//! let result = ReadResult::from_raw_bytes(0, &log).unwrap();
//! history.complete_read(read, ReadOutcome::Ok(result), 400);
//!
//! let final_log = FinalLog::from_raw_bytes(&log).unwrap();
//! assert!(check(&history, &final_log).is_empty());
//! ```

use std::collections::BTreeMap;
use std::fmt;

use loglog_proto::entry::{EntryError, EntryIter};
use loglog_proto::producer::entry_producer;
use loglog_proto::EntryKind;

/// A point in time, in nanoseconds, from any monotonic clock shared by all
/// clients of one history (simulated time in the simulator).
pub type Timestamp = u64;

/// Identifies an append within its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AppendId(pub usize);

/// Identifies a read within its [`History`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadId(pub usize);

/// How an append ended, as far as its client knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Not completed yet; at check time this counts as indeterminate.
    Pending,
    /// Acknowledged as committed at this offset.
    Ok { offset: u64 },
    /// Definitely not appended (rejected before it was proposed, or its
    /// offset is known to hold another committed entry).
    Failed,
    /// Unknown: timed out, or the connection broke after sending.
    Indeterminate,
}

/// One append operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendOp {
    pub client: u64,
    pub value: Vec<u8>,
    pub invoked_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub outcome: AppendOutcome,
}

/// Plain reads return a node's committed prefix; linearizable reads go
/// through read-index on the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    Plain,
    Linearizable,
}

/// One data entry as read back: its offset in the log and its payload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ReadEntry {
    pub offset: u64,
    pub payload: Vec<u8>,
}

/// What a successful read returned: the data entries found in
/// `[start, end)`, where `start` and `end` are entry boundaries. Entries of
/// other kinds (no-ops, configs) are skipped, so the range may be wider
/// than the entries. For a linearizable read, `end` must be the read index
/// (the read covers everything up to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub start: u64,
    pub end: u64,
    pub entries: Vec<ReadEntry>,
}

impl ReadResult {
    /// Decodes raw log bytes read from `start` (an entry boundary), as a
    /// node serves them, keeping data entries only. Fails on the first
    /// malformed or incomplete entry: a node must never serve one.
    pub fn from_raw_bytes(start: u64, bytes: &[u8]) -> Result<ReadResult, EntryError> {
        let mut entries = Vec::new();
        let mut iter = EntryIter::new(bytes, start, u32::MAX);
        for entry in iter.by_ref() {
            let entry = entry?;
            if entry.header.kind == EntryKind::Data {
                // The value is the appender's payload: after the producer
                // envelope, when the entry has one (real clusters' clients).
                let payload = entry_producer(&entry.header, entry.payload)
                    .map_or(entry.payload, |(_, payload)| payload);
                entries.push(ReadEntry {
                    offset: entry.offset,
                    payload: payload.to_vec(),
                });
            }
        }
        Ok(ReadResult {
            start,
            end: iter.offset(),
            entries,
        })
    }
}

/// How a read ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    Pending,
    Ok(ReadResult),
    /// Failed or timed out: a failed read asserts nothing.
    Failed,
    /// The offset was below the answering node's log start (trimmed): it
    /// asserts only that the log held committed bytes up to `start`.
    Trimmed {
        start: u64,
    },
}

/// One read operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOp {
    pub client: u64,
    pub kind: ReadKind,
    pub invoked_at: Timestamp,
    pub completed_at: Option<Timestamp>,
    pub outcome: ReadOutcome,
}

/// The operations of a run, in invocation order.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub appends: Vec<AppendOp>,
    pub reads: Vec<ReadOp>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn invoke_append(&mut self, client: u64, value: Vec<u8>, at: Timestamp) -> AppendId {
        self.appends.push(AppendOp {
            client,
            value,
            invoked_at: at,
            completed_at: None,
            outcome: AppendOutcome::Pending,
        });
        AppendId(self.appends.len() - 1)
    }

    /// Records how an append ended. Completing an append twice keeps the
    /// first outcome: a client learns its fate once.
    pub fn complete_append(&mut self, id: AppendId, outcome: AppendOutcome, at: Timestamp) {
        let op = &mut self.appends[id.0];
        if op.outcome == AppendOutcome::Pending {
            op.outcome = outcome;
            op.completed_at = Some(at);
        }
    }

    pub fn invoke_read(&mut self, client: u64, kind: ReadKind, at: Timestamp) -> ReadId {
        self.reads.push(ReadOp {
            client,
            kind,
            invoked_at: at,
            completed_at: None,
            outcome: ReadOutcome::Pending,
        });
        ReadId(self.reads.len() - 1)
    }

    pub fn complete_read(&mut self, id: ReadId, outcome: ReadOutcome, at: Timestamp) {
        let op = &mut self.reads[id.0];
        if op.outcome == ReadOutcome::Pending {
            op.outcome = outcome;
            op.completed_at = Some(at);
        }
    }

    pub fn append(&self, id: AppendId) -> &AppendOp {
        &self.appends[id.0]
    }

    /// Number of appends acknowledged as committed.
    pub fn acknowledged_appends(&self) -> usize {
        self.appends
            .iter()
            .filter(|op| matches!(op.outcome, AppendOutcome::Ok { .. }))
            .count()
    }
}

/// The one committed log at the end of a run: its data entries in offset
/// order and its end offset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FinalLog {
    pub entries: Vec<ReadEntry>,
    pub end: u64,
}

impl FinalLog {
    /// Decodes the whole committed log, from offset 0.
    pub fn from_raw_bytes(bytes: &[u8]) -> Result<FinalLog, EntryError> {
        let read = ReadResult::from_raw_bytes(0, bytes)?;
        Ok(FinalLog {
            entries: read.entries,
            end: read.end,
        })
    }
}

/// A broken promise, with enough detail to find it in a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged append is not in the final log.
    AcknowledgedAppendLost { value: Vec<u8>, offset: u64 },
    /// An acknowledged append is in the final log at another offset.
    AcknowledgedAtWrongOffset {
        value: Vec<u8>,
        acknowledged: u64,
        found: u64,
    },
    /// The value of a definitely failed append is visible.
    FailedAppendVisible { value: Vec<u8>, offset: u64 },
    /// A value appears more than once in the final log.
    DuplicateValue { value: Vec<u8>, offsets: Vec<u64> },
    /// A value in the final log that no client appended.
    UnknownValue { value: Vec<u8>, offset: u64 },
    /// The final log's entries are not in increasing offset order, or lie
    /// past its end.
    MalformedFinalLog { offset: u64 },
    /// A acknowledged before B was invoked, yet B's offset is not above A's.
    RealTimeOrder {
        earlier_value: Vec<u8>,
        earlier_offset: u64,
        later_value: Vec<u8>,
        later_offset: u64,
    },
    /// A read returned something other than the final log's slice.
    ReadNotASlice { read: usize, reason: String },
    /// A read was answered `Trimmed` at a start past the final log: a node
    /// trimmed bytes that never committed.
    TrimmedBeyondFinalLog {
        read: usize,
        start: u64,
        final_end: u64,
    },
    /// A read went past the end of the final log.
    ReadBeyondFinalLog {
        read: usize,
        end: u64,
        final_end: u64,
    },
    /// A linearizable read missed an append acknowledged before it began.
    StaleLinearizableRead {
        read: usize,
        read_end: u64,
        missed_value: Vec<u8>,
        missed_offset: u64,
    },
    /// A linearizable read covers less than one that completed before it
    /// began.
    LinearizableReadWentBack {
        read: usize,
        read_end: u64,
        earlier_read: usize,
        earlier_end: u64,
    },
    /// A read returned a value whose append was invoked after the read
    /// completed.
    ReadFromTheFuture { read: usize, value: Vec<u8> },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |value: &[u8]| format_value(value);
        match self {
            Violation::AcknowledgedAppendLost { value, offset } => write!(
                f,
                "acknowledged append {} at offset {offset} is not in the final log",
                show(value)
            ),
            Violation::AcknowledgedAtWrongOffset {
                value,
                acknowledged,
                found,
            } => write!(
                f,
                "append {} acknowledged at offset {acknowledged} is in the final log at {found}",
                show(value)
            ),
            Violation::FailedAppendVisible { value, offset } => write!(
                f,
                "value {} of a failed append is visible at offset {offset}",
                show(value)
            ),
            Violation::DuplicateValue { value, offsets } => {
                write!(f, "value {} appears at offsets {offsets:?}", show(value))
            }
            Violation::UnknownValue { value, offset } => write!(
                f,
                "value {} at offset {offset} was never appended",
                show(value)
            ),
            Violation::MalformedFinalLog { offset } => {
                write!(f, "final log is malformed at offset {offset}")
            }
            Violation::RealTimeOrder {
                earlier_value,
                earlier_offset,
                later_value,
                later_offset,
            } => write!(
                f,
                "append {} (offset {earlier_offset}) was acknowledged before append {} was \
                 invoked, yet the latter is at offset {later_offset}",
                show(earlier_value),
                show(later_value)
            ),
            Violation::ReadNotASlice { read, reason } => {
                write!(f, "read #{read} is not a slice of the final log: {reason}")
            }
            Violation::TrimmedBeyondFinalLog {
                read,
                start,
                final_end,
            } => write!(
                f,
                "read #{read} was answered Trimmed at {start}, past the final log's end \
                 {final_end}"
            ),
            Violation::ReadBeyondFinalLog {
                read,
                end,
                final_end,
            } => write!(
                f,
                "read #{read} covers up to {end}, past the final log's end {final_end}"
            ),
            Violation::StaleLinearizableRead {
                read,
                read_end,
                missed_value,
                missed_offset,
            } => write!(
                f,
                "linearizable read #{read} (up to {read_end}) misses append {} at offset \
                 {missed_offset}, acknowledged before the read began",
                show(missed_value)
            ),
            Violation::LinearizableReadWentBack {
                read,
                read_end,
                earlier_read,
                earlier_end,
            } => write!(
                f,
                "linearizable read #{read} (up to {read_end}) began after read #{earlier_read} \
                 (up to {earlier_end}) completed, yet covers less"
            ),
            Violation::ReadFromTheFuture { read, value } => write!(
                f,
                "read #{read} returned value {} appended only after the read completed",
                show(value)
            ),
        }
    }
}

/// Shows a value as text when it is printable, else as hex.
fn format_value(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if text.chars().all(|c| !c.is_control()) => format!("{text:?}"),
        _ => {
            let hex: String = value.iter().take(32).map(|b| format!("{b:02x}")).collect();
            format!("0x{hex}{}", if value.len() > 32 { "..." } else { "" })
        }
    }
}

/// Caps the number of violations reported: one bug usually breaks many
/// promises at once, and the first few tell the story.
const MAX_VIOLATIONS: usize = 64;

/// Checks `history` against `final_log`. Returns every violation found (up
/// to a cap); an empty vector means the history is consistent.
pub fn check(history: &History, final_log: &FinalLog) -> Vec<Violation> {
    let mut violations = Vec::new();
    let mut report = |violation: Violation| {
        if violations.len() < MAX_VIOLATIONS {
            violations.push(violation);
        }
    };

    // Index the appends by value (values are unique by contract; a client
    // that reuses a value is a broken test, and the later op wins).
    let mut append_by_value: BTreeMap<&[u8], usize> = BTreeMap::new();
    for (index, op) in history.appends.iter().enumerate() {
        append_by_value.insert(&op.value, index);
    }

    // The final log: offsets increasing, each value known and unique.
    let mut offsets_by_value: BTreeMap<&[u8], Vec<u64>> = BTreeMap::new();
    let mut previous_offset: Option<u64> = None;
    for entry in &final_log.entries {
        if previous_offset.is_some_and(|previous| entry.offset <= previous)
            || entry.offset >= final_log.end
        {
            report(Violation::MalformedFinalLog {
                offset: entry.offset,
            });
        }
        previous_offset = Some(entry.offset);
        offsets_by_value
            .entry(&entry.payload)
            .or_default()
            .push(entry.offset);
    }
    for (value, offsets) in &offsets_by_value {
        if offsets.len() > 1 {
            report(Violation::DuplicateValue {
                value: value.to_vec(),
                offsets: offsets.clone(),
            });
        }
        match append_by_value.get(value) {
            None => report(Violation::UnknownValue {
                value: value.to_vec(),
                offset: offsets[0],
            }),
            Some(&index) if history.appends[index].outcome == AppendOutcome::Failed => {
                report(Violation::FailedAppendVisible {
                    value: value.to_vec(),
                    offset: offsets[0],
                })
            }
            Some(_) => {}
        }
    }

    // Acknowledged appends: present, at their offset.
    for op in &history.appends {
        if let AppendOutcome::Ok { offset } = op.outcome {
            match offsets_by_value.get(op.value.as_slice()) {
                None => report(Violation::AcknowledgedAppendLost {
                    value: op.value.clone(),
                    offset,
                }),
                Some(found) if !found.contains(&offset) => {
                    report(Violation::AcknowledgedAtWrongOffset {
                        value: op.value.clone(),
                        acknowledged: offset,
                        found: found[0],
                    })
                }
                Some(_) => {}
            }
        }
    }

    // Real-time order. `acknowledged` holds (completion time, offset, op)
    // sorted by completion; a prefix maximum of offsets answers "the
    // highest offset acknowledged before time t".
    let mut acknowledged: Vec<(Timestamp, u64, usize)> = history
        .appends
        .iter()
        .enumerate()
        .filter_map(|(index, op)| match (op.outcome, op.completed_at) {
            (AppendOutcome::Ok { offset }, Some(at)) => Some((at, offset, index)),
            _ => None,
        })
        .collect();
    acknowledged.sort();
    let mut prefix_max: Vec<(u64, usize)> = Vec::with_capacity(acknowledged.len());
    for &(_, offset, index) in &acknowledged {
        let best = match prefix_max.last() {
            Some(&(max, max_index)) if max >= offset => (max, max_index),
            _ => (offset, index),
        };
        prefix_max.push(best);
    }
    // The highest acknowledged offset (and its op) among appends completed
    // strictly before `at`.
    let highest_acknowledged_before = |at: Timestamp| -> Option<(u64, usize)> {
        let count = acknowledged.partition_point(|&(completed, _, _)| completed < at);
        count.checked_sub(1).map(|last| prefix_max[last])
    };
    for op in &history.appends {
        // Where did this append land? Acknowledged ones at their offset;
        // indeterminate ones wherever the final log holds them.
        let landed = match op.outcome {
            AppendOutcome::Ok { offset } => Some(offset),
            AppendOutcome::Indeterminate | AppendOutcome::Pending => offsets_by_value
                .get(op.value.as_slice())
                .map(|offsets| offsets[0]),
            AppendOutcome::Failed => None,
        };
        let Some(later_offset) = landed else { continue };
        if let Some((earlier_offset, earlier)) = highest_acknowledged_before(op.invoked_at) {
            if earlier_offset >= later_offset {
                report(Violation::RealTimeOrder {
                    earlier_value: history.appends[earlier].value.clone(),
                    earlier_offset,
                    later_value: op.value.clone(),
                    later_offset,
                });
            }
        }
    }

    // Reads.
    let final_offsets: Vec<u64> = final_log.entries.iter().map(|e| e.offset).collect();
    let mut linearizable_done: Vec<(Timestamp, u64, usize)> = Vec::new();
    for (read_index, read) in history.reads.iter().enumerate() {
        if let ReadOutcome::Trimmed { start } = read.outcome {
            if start > final_log.end {
                report(Violation::TrimmedBeyondFinalLog {
                    read: read_index,
                    start,
                    final_end: final_log.end,
                });
            }
        }
        let ReadOutcome::Ok(result) = &read.outcome else {
            continue;
        };
        if let Some(reason) = slice_mismatch(result, final_log, &final_offsets) {
            report(Violation::ReadNotASlice {
                read: read_index,
                reason,
            });
        }
        if result.end > final_log.end {
            report(Violation::ReadBeyondFinalLog {
                read: read_index,
                end: result.end,
                final_end: final_log.end,
            });
        }
        for entry in &result.entries {
            if let Some(&index) = append_by_value.get(entry.payload.as_slice()) {
                let op = &history.appends[index];
                if op.outcome == AppendOutcome::Failed {
                    report(Violation::FailedAppendVisible {
                        value: op.value.clone(),
                        offset: entry.offset,
                    });
                }
                if read.completed_at.is_some_and(|done| op.invoked_at > done) {
                    report(Violation::ReadFromTheFuture {
                        read: read_index,
                        value: op.value.clone(),
                    });
                }
            }
        }
        if read.kind == ReadKind::Linearizable {
            if let Some((missed_offset, missed)) = highest_acknowledged_before(read.invoked_at) {
                if missed_offset >= result.end {
                    report(Violation::StaleLinearizableRead {
                        read: read_index,
                        read_end: result.end,
                        missed_value: history.appends[missed].value.clone(),
                        missed_offset,
                    });
                }
            }
            if let Some(done) = read.completed_at {
                linearizable_done.push((done, result.end, read_index));
            }
        }
    }

    // Linearizable reads never go back in real time.
    linearizable_done.sort();
    let mut prefix_max_reads: Vec<(u64, usize)> = Vec::with_capacity(linearizable_done.len());
    for &(_, end, index) in &linearizable_done {
        let best = match prefix_max_reads.last() {
            Some(&(max, max_index)) if max >= end => (max, max_index),
            _ => (end, index),
        };
        prefix_max_reads.push(best);
    }
    for (read_index, read) in history.reads.iter().enumerate() {
        let (ReadKind::Linearizable, ReadOutcome::Ok(result)) = (read.kind, &read.outcome) else {
            continue;
        };
        let count = linearizable_done.partition_point(|&(done, _, _)| done < read.invoked_at);
        if let Some(last) = count.checked_sub(1) {
            let (earlier_end, earlier_read) = prefix_max_reads[last];
            if earlier_end > result.end {
                report(Violation::LinearizableReadWentBack {
                    read: read_index,
                    read_end: result.end,
                    earlier_read,
                    earlier_end,
                });
            }
        }
    }

    violations
}

/// Why `result` is not exactly the final log's data entries in its range,
/// or `None` when it is.
fn slice_mismatch(
    result: &ReadResult,
    final_log: &FinalLog,
    final_offsets: &[u64],
) -> Option<String> {
    if result.start > result.end {
        return Some(format!("start {} above end {}", result.start, result.end));
    }
    let first = final_offsets.partition_point(|&offset| offset < result.start);
    let last = final_offsets.partition_point(|&offset| offset < result.end);
    let expected = &final_log.entries[first..last];
    for (position, entry) in result.entries.iter().enumerate() {
        match expected.get(position) {
            None => {
                return Some(format!(
                    "entry at offset {} is not in the final log's range [{}, {})",
                    entry.offset, result.start, result.end
                ))
            }
            Some(wanted) if wanted != entry => {
                return Some(format!(
                    "entry at offset {} ({}) differs from the final log's entry at offset {} ({})",
                    entry.offset,
                    format_value(&entry.payload),
                    wanted.offset,
                    format_value(&wanted.payload)
                ))
            }
            Some(_) => {}
        }
    }
    if result.entries.len() < expected.len() {
        let missing = &expected[result.entries.len()];
        return Some(format!(
            "misses the final log's entry at offset {} ({})",
            missing.offset,
            format_value(&missing.payload)
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::encode_entry;

    /// A log whose entries are `values` in order, each a data entry, with
    /// real entry framing so offsets are realistic.
    fn log_of(values: &[&str]) -> (FinalLog, Vec<u8>) {
        let mut bytes = Vec::new();
        for value in values {
            encode_entry(1, EntryKind::Data, value.as_bytes(), &mut bytes);
        }
        (FinalLog::from_raw_bytes(&bytes).unwrap(), bytes)
    }

    fn offset_of(log: &FinalLog, value: &str) -> u64 {
        log.entries
            .iter()
            .find(|e| e.payload == value.as_bytes())
            .unwrap()
            .offset
    }

    fn acked(history: &mut History, value: &str, offset: u64, invoke: u64, done: u64) {
        let id = history.invoke_append(1, value.into(), invoke);
        history.complete_append(id, AppendOutcome::Ok { offset }, done);
    }

    /// A consistent history of three acknowledged appends, one
    /// indeterminate that landed, one indeterminate that did not, one
    /// failure, and reads of both kinds.
    fn good() -> (History, FinalLog) {
        let (log, _) = log_of(&["a", "b", "c", "d"]);
        let mut history = History::new();
        acked(&mut history, "a", offset_of(&log, "a"), 0, 10);
        acked(&mut history, "b", offset_of(&log, "b"), 11, 20);
        let lost = history.invoke_append(2, b"x".to_vec(), 12);
        history.complete_append(lost, AppendOutcome::Indeterminate, 40);
        let landed = history.invoke_append(2, b"c".to_vec(), 41);
        history.complete_append(landed, AppendOutcome::Indeterminate, 60);
        let failed = history.invoke_append(3, b"y".to_vec(), 5);
        history.complete_append(failed, AppendOutcome::Failed, 6);
        acked(&mut history, "d", offset_of(&log, "d"), 61, 70);
        let read = history.invoke_read(4, ReadKind::Linearizable, 21);
        let end = offset_of(&log, "c");
        let entries = log.entries[..2].to_vec();
        history.complete_read(
            read,
            ReadOutcome::Ok(ReadResult {
                start: 0,
                end,
                entries,
            }),
            25,
        );
        let plain = history.invoke_read(4, ReadKind::Plain, 71);
        let entries = log.entries[1..3].to_vec();
        history.complete_read(
            plain,
            ReadOutcome::Ok(ReadResult {
                start: offset_of(&log, "b"),
                end: offset_of(&log, "d"),
                entries,
            }),
            72,
        );
        (history, log)
    }

    #[test]
    fn consistent_history_passes() {
        let (history, log) = good();
        assert_eq!(check(&history, &log), vec![]);
    }

    #[test]
    fn lost_acknowledged_append_is_caught() {
        let (history, _) = good();
        let (shorter, _) = log_of(&["a", "b", "c"]);
        let violations = check(&history, &shorter);
        assert!(violations.iter().any(
            |v| matches!(v, Violation::AcknowledgedAppendLost { value, .. } if value == b"d")
        ));
    }

    #[test]
    fn wrong_offset_is_caught() {
        let (mut history, log) = good();
        if let AppendOutcome::Ok { offset } = &mut history.appends[0].outcome {
            *offset += 1;
        }
        let violations = check(&history, &log);
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::AcknowledgedAtWrongOffset { .. })));
    }

    #[test]
    fn visible_failed_append_is_caught() {
        let (history, _) = good();
        let (log, _) = log_of(&["a", "b", "c", "d", "y"]);
        let violations = check(&history, &log);
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::FailedAppendVisible { value, .. } if value == b"y")));
    }

    #[test]
    fn trimmed_reads_are_fine_unless_past_the_final_log() {
        let (mut history, log) = good();
        let inside = history.invoke_read(5, ReadKind::Plain, 80);
        history.complete_read(inside, ReadOutcome::Trimmed { start: log.end }, 81);
        assert_eq!(check(&history, &log), Vec::new());
        let past = history.invoke_read(5, ReadKind::Linearizable, 82);
        history.complete_read(past, ReadOutcome::Trimmed { start: log.end + 1 }, 83);
        assert!(check(&history, &log)
            .iter()
            .any(|v| matches!(v, Violation::TrimmedBeyondFinalLog { .. })));
    }

    #[test]
    fn failed_append_seen_by_a_read_is_caught() {
        let (mut history, log) = good();
        let read = history.invoke_read(5, ReadKind::Plain, 80);
        history.complete_read(
            read,
            ReadOutcome::Ok(ReadResult {
                start: 0,
                end: 0,
                entries: vec![ReadEntry {
                    offset: 0,
                    payload: b"y".to_vec(),
                }],
            }),
            81,
        );
        let violations = check(&history, &log);
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::FailedAppendVisible { .. })));
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::ReadNotASlice { .. })));
    }

    #[test]
    fn duplicates_and_unknown_values_are_caught() {
        let (history, _) = good();
        let (log, _) = log_of(&["a", "b", "c", "d", "a", "zzz"]);
        let violations = check(&history, &log);
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::DuplicateValue { value, .. } if value == b"a")));
        assert!(violations
            .iter()
            .any(|v| matches!(v, Violation::UnknownValue { value, .. } if value == b"zzz")));
    }

    #[test]
    fn real_time_order_is_enforced() {
        // b was invoked after a was acknowledged, yet sits before it.
        let (log, _) = log_of(&["b", "a"]);
        let mut history = History::new();
        acked(&mut history, "a", offset_of(&log, "a"), 0, 10);
        acked(&mut history, "b", offset_of(&log, "b"), 11, 20);
        let violations = check(&history, &log);
        assert!(matches!(
            violations.as_slice(),
            [Violation::RealTimeOrder { later_value, .. }] if later_value == b"b"
        ));
        // Concurrent appends may land in either order.
        let mut concurrent = History::new();
        acked(&mut concurrent, "a", offset_of(&log, "a"), 0, 10);
        acked(&mut concurrent, "b", offset_of(&log, "b"), 5, 20);
        assert_eq!(check(&concurrent, &log), vec![]);
        // An indeterminate append that landed is ordered too.
        let mut indeterminate = History::new();
        acked(&mut indeterminate, "a", offset_of(&log, "a"), 0, 10);
        let id = indeterminate.invoke_append(2, b"b".to_vec(), 11);
        indeterminate.complete_append(id, AppendOutcome::Indeterminate, 30);
        assert_eq!(check(&indeterminate, &log).len(), 1);
    }

    #[test]
    fn stale_linearizable_read_is_caught_but_stale_plain_read_is_fine() {
        let (log, _) = log_of(&["a", "b"]);
        let mut history = History::new();
        acked(&mut history, "a", offset_of(&log, "a"), 0, 10);
        acked(&mut history, "b", offset_of(&log, "b"), 11, 20);
        let only_a = ReadResult {
            start: 0,
            end: offset_of(&log, "b"),
            entries: log.entries[..1].to_vec(),
        };
        let plain = history.invoke_read(3, ReadKind::Plain, 30);
        history.complete_read(plain, ReadOutcome::Ok(only_a.clone()), 31);
        assert_eq!(check(&history, &log), vec![]);
        let linearizable = history.invoke_read(3, ReadKind::Linearizable, 30);
        history.complete_read(linearizable, ReadOutcome::Ok(only_a), 31);
        let violations = check(&history, &log);
        assert!(matches!(
            violations.as_slice(),
            [Violation::StaleLinearizableRead { missed_value, .. }] if missed_value == b"b"
        ));
    }

    #[test]
    fn linearizable_reads_never_go_back() {
        let (log, _) = log_of(&["a", "b"]);
        let mut history = History::new();
        let id = history.invoke_append(1, b"a".to_vec(), 0);
        history.complete_append(id, AppendOutcome::Indeterminate, 5);
        let id = history.invoke_append(1, b"b".to_vec(), 0);
        history.complete_append(id, AppendOutcome::Indeterminate, 5);
        let both = ReadResult {
            start: 0,
            end: log.end,
            entries: log.entries.clone(),
        };
        let only_a = ReadResult {
            start: 0,
            end: offset_of(&log, "b"),
            entries: log.entries[..1].to_vec(),
        };
        let first = history.invoke_read(3, ReadKind::Linearizable, 10);
        history.complete_read(first, ReadOutcome::Ok(both), 20);
        let second = history.invoke_read(3, ReadKind::Linearizable, 21);
        history.complete_read(second, ReadOutcome::Ok(only_a), 22);
        let violations = check(&history, &log);
        assert!(matches!(
            violations.as_slice(),
            [Violation::LinearizableReadWentBack { read: 1, .. }]
        ));
    }

    #[test]
    fn reads_must_be_exact_slices() {
        let (log, _) = log_of(&["a", "b", "c"]);
        let mut history = History::new();
        for value in ["a", "b", "c"] {
            let id = history.invoke_append(1, value.into(), 0);
            history.complete_append(id, AppendOutcome::Indeterminate, 1);
        }
        // Skipping b inside the range is a gap.
        let gap = ReadResult {
            start: 0,
            end: log.end,
            entries: vec![log.entries[0].clone(), log.entries[2].clone()],
        };
        let read = history.invoke_read(2, ReadKind::Plain, 2);
        history.complete_read(read, ReadOutcome::Ok(gap), 3);
        // A read past the end of the final log saw uncommitted data.
        let beyond = ReadResult {
            start: 0,
            end: log.end + 20,
            entries: log.entries.clone(),
        };
        let read = history.invoke_read(2, ReadKind::Plain, 4);
        history.complete_read(read, ReadOutcome::Ok(beyond), 5);
        let violations = check(&history, &log);
        assert!(matches!(
            violations.as_slice(),
            [
                Violation::ReadNotASlice { read: 0, .. },
                Violation::ReadBeyondFinalLog { read: 1, .. }
            ]
        ));
    }

    #[test]
    fn read_from_the_future_is_caught() {
        let (log, _) = log_of(&["a"]);
        let mut history = History::new();
        let read = history.invoke_read(2, ReadKind::Plain, 0);
        history.complete_read(
            read,
            ReadOutcome::Ok(ReadResult {
                start: 0,
                end: log.end,
                entries: log.entries.clone(),
            }),
            5,
        );
        acked(&mut history, "a", 0, 10, 20);
        let violations = check(&history, &log);
        assert!(matches!(
            violations.as_slice(),
            [Violation::ReadFromTheFuture { .. }]
        ));
    }

    #[test]
    fn raw_reads_skip_non_data_entries_and_reject_corruption() {
        let mut bytes = Vec::new();
        encode_entry(1, EntryKind::NoOp, b"", &mut bytes);
        encode_entry(1, EntryKind::Data, b"v", &mut bytes);
        let read = ReadResult::from_raw_bytes(100, &bytes).unwrap();
        assert_eq!(read.end, 100 + bytes.len() as u64);
        assert_eq!(
            read.entries,
            vec![ReadEntry {
                offset: 116,
                payload: b"v".to_vec()
            }]
        );
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(ReadResult::from_raw_bytes(100, &bytes).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use loglog_proto::entry::encode_entry;
    use proptest::prelude::*;

    /// A history of a correct system: each operation takes effect at one
    /// instant between its invocation and completion; appends land in the
    /// order of those instants; reads see exactly what took effect before.
    #[derive(Debug, Clone)]
    struct Scenario {
        history: History,
        log: FinalLog,
    }

    /// `ops`: per operation, (is_append, landed, outcome selector, widths).
    fn build(ops: Vec<(bool, bool, u8, u64, u64)>) -> Scenario {
        let mut history = History::new();
        let mut bytes = Vec::new();
        // (offset, end) of entries in the log, in order.
        let mut landed_entries: Vec<(u64, u64)> = Vec::new();
        for (index, (is_append, landed, outcome, before, after)) in ops.into_iter().enumerate() {
            // Operation `index` takes effect at instant 10 * index + 5.
            let effect = 10 * index as u64 + 5;
            let invoked = effect - before.min(effect);
            let completed = effect + after;
            if is_append {
                let value = format!("v{index}").into_bytes();
                let id = history.invoke_append(index as u64, value.clone(), invoked);
                if landed {
                    let offset = bytes.len() as u64;
                    encode_entry(1, EntryKind::Data, &value, &mut bytes);
                    landed_entries.push((offset, bytes.len() as u64));
                    let result = if outcome % 2 == 0 {
                        AppendOutcome::Ok { offset }
                    } else {
                        AppendOutcome::Indeterminate
                    };
                    history.complete_append(id, result, completed);
                } else {
                    let result = if outcome % 2 == 0 {
                        AppendOutcome::Failed
                    } else {
                        AppendOutcome::Indeterminate
                    };
                    history.complete_append(id, result, completed);
                }
            } else {
                let kind = if outcome % 2 == 0 {
                    ReadKind::Linearizable
                } else {
                    ReadKind::Plain
                };
                // Everything that took effect so far, from some boundary.
                let end = bytes.len() as u64;
                let skip = usize::from(outcome / 2) % (landed_entries.len() + 1);
                let start = landed_entries.get(skip).map_or(end, |&(offset, _)| offset);
                let result = ReadResult::from_raw_bytes(start, &bytes[start as usize..])
                    .expect("valid entries");
                let id = history.invoke_read(index as u64, kind, invoked);
                history.complete_read(id, ReadOutcome::Ok(result), completed);
            }
        }
        let log = FinalLog::from_raw_bytes(&bytes).expect("valid entries");
        Scenario { history, log }
    }

    fn scenarios() -> impl Strategy<Value = Scenario> {
        proptest::collection::vec(
            (
                any::<bool>(),
                any::<bool>(),
                any::<u8>(),
                0u64..30,
                0u64..30,
            ),
            1..40,
        )
        .prop_map(build)
    }

    proptest! {
        #[test]
        fn correct_histories_pass(scenario in scenarios()) {
            prop_assert_eq!(check(&scenario.history, &scenario.log), vec![]);
        }

        /// Losing any acknowledged entry from the final log is caught.
        #[test]
        fn losing_an_acknowledged_entry_is_caught(scenario in scenarios(), pick in any::<proptest::sample::Index>()) {
            let acknowledged: Vec<u64> = scenario.history.appends.iter().filter_map(|op| match op.outcome {
                AppendOutcome::Ok { offset } => Some(offset),
                _ => None,
            }).collect();
            prop_assume!(!acknowledged.is_empty());
            let lost = acknowledged[pick.index(acknowledged.len())];
            let mut log = scenario.log.clone();
            log.entries.retain(|entry| entry.offset != lost);
            let violations = check(&scenario.history, &log);
            let caught = violations.iter().any(|v| matches!(v, Violation::AcknowledgedAppendLost { offset, .. } if *offset == lost));
            prop_assert!(caught);
        }

        /// Swapping the payloads of two entries of the final log is caught
        /// whenever one of them was acknowledged.
        #[test]
        fn reordering_the_log_is_caught(scenario in scenarios(), a in any::<proptest::sample::Index>(), b in any::<proptest::sample::Index>()) {
            let entries = scenario.log.entries.len();
            prop_assume!(entries >= 2);
            let (a, b) = (a.index(entries), b.index(entries));
            prop_assume!(a != b);
            let mut log = scenario.log.clone();
            let payload_a = log.entries[a].payload.clone();
            log.entries[a].payload = log.entries[b].payload.clone();
            log.entries[b].payload = payload_a;
            let acknowledged = |payload: &[u8]| scenario.history.appends.iter().any(|op| {
                op.value == payload && matches!(op.outcome, AppendOutcome::Ok { .. })
            });
            prop_assume!(acknowledged(&log.entries[a].payload) || acknowledged(&log.entries[b].payload));
            prop_assert!(!check(&scenario.history, &log).is_empty());
        }
    }
}
