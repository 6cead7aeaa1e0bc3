//! The node's knowledge of its own log, without holding its bytes: the
//! term-boundary map, the entry boundaries above the commit offset, the end
//! and durable offsets, plus the startup scan and the checkpoint that lets
//! a restarted node skip scanning its committed prefix.

use std::collections::VecDeque;

use loglog_proto::entry::{decode_trim_payload, EntryKind, EntryRef};

use crate::membership::{Membership, MembershipError};
use crate::types::{Term, WriteId};

/// One run of the term map: entries of `term` start at `start` and go on
/// until the next run's start (or the log's end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TermRun {
    pub term: Term,
    pub start: u64,
}

/// The first offset of each term present in a log (Kafka's leader-epoch
/// cache). Terms and starts strictly increase. All entries of a term are
/// contiguous, so the term of any byte is a binary search, and every run
/// start is an entry boundary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TermMap {
    runs: Vec<TermRun>,
}

/// Why a term map, a scan or a checkpoint is not consistent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogStateError {
    #[error("term map runs are not strictly increasing in term and start")]
    TermMapNotIncreasing,
    #[error("entry at offset {offset} has term {term}, below the log's last term {last_term}")]
    TermWentBackwards {
        offset: u64,
        term: Term,
        last_term: Term,
    },
    #[error("entry at offset {offset} has term 0, which no leader uses")]
    ZeroTerm { offset: u64 },
    #[error("entry at offset {found} does not continue the scan at {expected}")]
    NotContiguous { expected: u64, found: u64 },
    #[error("config entry at offset {offset}: {error}")]
    BadConfigEntry { offset: u64, error: MembershipError },
    #[error("trim entry at offset {offset}: bad payload or a trim offset above the entry")]
    BadTrimEntry { offset: u64 },
    #[error("the log starts at {start}, above the checkpoint's commit offset {commit_offset}")]
    StartAboveCommit { start: u64, commit_offset: u64 },
    #[error("the scan reached offset {scanned} but the log ends at {log_end}")]
    EndMismatch { scanned: u64, log_end: u64 },
    #[error("checkpoint: {0}")]
    BadCheckpoint(&'static str),
}

impl TermMap {
    pub fn new() -> TermMap {
        TermMap::default()
    }

    /// Rebuilds a map from persisted runs, checking their order.
    pub fn from_runs(runs: Vec<TermRun>) -> Result<TermMap, LogStateError> {
        let increasing = runs
            .windows(2)
            .all(|pair| pair[0].term < pair[1].term && pair[0].start < pair[1].start);
        if !increasing || runs.iter().any(|run| run.term == 0) {
            return Err(LogStateError::TermMapNotIncreasing);
        }
        Ok(TermMap { runs })
    }

    pub fn runs(&self) -> &[TermRun] {
        &self.runs
    }

    /// Term of the last entry (0 for an empty log).
    pub fn last_term(&self) -> Term {
        self.runs.last().map_or(0, |run| run.term)
    }

    /// Index of the run holding byte `offset`, if any.
    fn run_index_at(&self, offset: u64) -> Option<usize> {
        let after = self.runs.partition_point(|run| run.start <= offset);
        after.checked_sub(1)
    }

    /// Term of the entry holding byte `offset` (0 if below the first run).
    /// The caller keeps `offset` below the log's end.
    pub fn term_at(&self, offset: u64) -> Term {
        self.run_index_at(offset)
            .map_or(0, |index| self.runs[index].term)
    }

    /// Term of the entry that ends at `offset` (0 at offset 0).
    pub fn term_before(&self, offset: u64) -> Term {
        offset.checked_sub(1).map_or(0, |last| self.term_at(last))
    }

    /// The run holding byte `offset`, if any.
    pub fn run_at(&self, offset: u64) -> Option<TermRun> {
        self.run_index_at(offset).map(|index| self.runs[index])
    }

    /// Start of `term`'s run, if the log has entries of that term.
    pub fn start_of(&self, term: Term) -> Option<u64> {
        self.runs
            .binary_search_by_key(&term, |run| run.term)
            .ok()
            .map(|index| self.runs[index].start)
    }

    /// End of `term`'s run in a log ending at `log_end`.
    pub fn end_of(&self, term: Term, log_end: u64) -> Option<u64> {
        let index = self.runs.binary_search_by_key(&term, |run| run.term).ok()?;
        Some(self.runs.get(index + 1).map_or(log_end, |next| next.start))
    }

    /// The last run whose term is at most `term`.
    pub fn last_run_at_most(&self, term: Term) -> Option<TermRun> {
        let after = self.runs.partition_point(|run| run.term <= term);
        after.checked_sub(1).map(|index| self.runs[index])
    }

    /// The largest run start at most `offset`.
    pub fn last_start_at_most(&self, offset: u64) -> Option<u64> {
        self.run_at(offset).map(|run| run.start)
    }

    /// Records an entry of `term` at `offset` appended at the log's end.
    pub(crate) fn observe(&mut self, term: Term, offset: u64) -> Result<(), LogStateError> {
        if term == 0 {
            return Err(LogStateError::ZeroTerm { offset });
        }
        let last_term = self.last_term();
        if term < last_term {
            return Err(LogStateError::TermWentBackwards {
                offset,
                term,
                last_term,
            });
        }
        if term > last_term {
            debug_assert!(self.runs.last().is_none_or(|run| run.start < offset));
            self.runs.push(TermRun {
                term,
                start: offset,
            });
        }
        Ok(())
    }

    /// Forgets every run starting at or after `offset` (the log is cut there).
    pub(crate) fn truncate(&mut self, offset: u64) {
        let keep = self.runs.partition_point(|run| run.start < offset);
        self.runs.truncate(keep);
    }
}

/// Read-only access to the bytes of the node's own log, provided by the
/// driver when it asks for actions ([`crate::RaftNode::take_actions`]).
///
/// It must reflect every `Append`/`Truncate` action the node returned from
/// earlier `take_actions` calls (written, not necessarily fsynced). The node
/// only reads ranges it knows are in its log.
pub trait LogRead {
    /// Whole entries starting at `from` (an entry boundary): as many as fit
    /// in `max_bytes`, but at least one entry if any starts at `from`, even
    /// when it alone is larger. Never returns part of an entry. May return
    /// fewer bytes than available (e.g. to stop at a segment's end), but not
    /// zero bytes when an entry starts at `from`.
    ///
    /// Below the log's start (after a `TrimPrefix`) it must answer
    /// [`LogReadError::Trimmed`] with that start, never a storage error:
    /// that answer is how a leader learns its new start and sends a
    /// follower behind it a snapshot instead of retrying the read forever.
    fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError>;
}

/// Why a [`LogRead::read`] failed. The node skips that send and retries on
/// the next heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LogReadError {
    /// The range starts below the log's first retained offset.
    #[error("offset trimmed: the log starts at {start}")]
    Trimmed { start: u64 },
    /// A storage error (the driver logs the detail).
    #[error("storage read failed: {0}")]
    Storage(String),
}

/// What the node needs about its log at startup; build it with a
/// [`LogScan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveredLog {
    pub(crate) terms: TermMap,
    pub(crate) end: u64,
    pub(crate) commit_floor: u64,
    /// Entry starts in `commit_floor..end`.
    pub(crate) boundaries: VecDeque<u64>,
    /// The configuration in force at `commit_floor`.
    pub(crate) committed_membership: Membership,
    /// Config entries at or above `commit_floor`, in log order.
    pub(crate) pending_configs: Vec<(u64, Membership)>,
    /// Trim entries at or above `commit_floor`: `(entry offset, trim offset)`.
    pub(crate) pending_trims: Vec<(u64, u64)>,
    /// First offset still in the log (bytes below were trimmed).
    pub(crate) start: u64,
    pub(crate) lost_tail: Option<LostTail>,
}

/// Synced entries a node lost to disk damage (recovery cut its log at a
/// bad CRC below bytes it had fsynced, and perhaps acknowledged).
///
/// Raft assumes acknowledged entries survive; a node that forgot some
/// could vote for a candidate lacking an entry it helped commit. While the
/// mark is set the node asks for no votes, and grants a vote only to a
/// candidate whose log is at least as up to date as `(last_term,
/// end_offset)`: the vote its undamaged log would have granted. The mark
/// clears ([`crate::RaftNode::lost_tail`] becomes `None`) once the node's
/// log is durable and verified against a leader up to `end_offset` again.
///
/// A driver that cannot tell what was lost may be conservative: the
/// length of the damaged log before the cut as `end_offset`, and the
/// persisted current term as `last_term` (a higher mark only refuses more
/// votes). The driver persists the mark until it is cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostTail {
    pub end_offset: u64,
    pub last_term: Term,
}

impl RecoveredLog {
    /// Records synced entries lost to damage (see [`LostTail`]).
    pub fn set_lost_tail(&mut self, lost_tail: LostTail) {
        self.lost_tail = Some(lost_tail);
    }

    /// Records where the stored log begins (its first segment's start):
    /// bytes below were trimmed. At most the commit floor, and an entry
    /// boundary (segments start at entry boundaries). Default 0.
    pub fn set_log_start(&mut self, start: u64) -> Result<(), LogStateError> {
        if start > self.commit_floor {
            return Err(LogStateError::StartAboveCommit {
                start,
                commit_offset: self.commit_floor,
            });
        }
        self.start = start;
        Ok(())
    }

    pub fn log_start(&self) -> u64 {
        self.start
    }

    pub fn end_offset(&self) -> u64 {
        self.end
    }

    pub fn commit_floor(&self) -> u64 {
        self.commit_floor
    }

    pub fn term_map(&self) -> &TermMap {
        &self.terms
    }

    /// The latest configuration in the log (committed or not).
    pub fn membership(&self) -> &Membership {
        self.pending_configs
            .last()
            .map_or(&self.committed_membership, |(_, membership)| membership)
    }
}

/// What a node persists, lazily, to restart without scanning its whole log:
/// a commit offset it knows is committed *and* durable locally, the term
/// map below it, and the configuration in force at it. Any older
/// checkpoint is also valid (it only means a longer scan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub commit_offset: u64,
    /// Runs starting below `commit_offset`.
    pub terms: TermMap,
    /// The configuration in force at `commit_offset`.
    pub membership: Membership,
}

impl Checkpoint {
    /// The state of a brand-new node: empty log, `membership` as the
    /// bootstrap configuration. Every founding member must use the same
    /// one; a node joining later uses an empty membership and learns the
    /// configuration from the config entries it replicates.
    pub fn bootstrap(membership: Membership) -> Checkpoint {
        Checkpoint {
            commit_offset: 0,
            terms: TermMap::new(),
            membership,
        }
    }

    /// Encoding for the driver's state file (little endian):
    /// `commit_offset u64, run count u32, runs (term u32, start u64)...,
    /// membership length u32, membership bytes` where the membership uses
    /// the config entry payload format, or is empty for no members.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.commit_offset.to_le_bytes());
        let runs = u32::try_from(self.terms.runs.len()).expect("fewer than 2^32 terms");
        out.extend_from_slice(&runs.to_le_bytes());
        for run in &self.terms.runs {
            out.extend_from_slice(&run.term.to_le_bytes());
            out.extend_from_slice(&run.start.to_le_bytes());
        }
        let membership = if self.membership.voters.is_empty() {
            Vec::new()
        } else {
            self.membership.encode()
        };
        out.extend_from_slice(&(membership.len() as u32).to_le_bytes());
        out.extend_from_slice(&membership);
        out
    }

    /// Decodes [`Checkpoint::encode`]'s bytes; untrusted input gives errors.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, LogStateError> {
        let bad = LogStateError::BadCheckpoint;
        let take = |at: usize, len: usize| bytes.get(at..at + len).ok_or(bad("truncated"));
        let commit_offset = u64::from_le_bytes(take(0, 8)?.try_into().expect("8 bytes"));
        let run_count = u32::from_le_bytes(take(8, 4)?.try_into().expect("4 bytes")) as usize;
        if run_count > bytes.len() / 12 {
            return Err(bad("run count exceeds the bytes present"));
        }
        let mut runs = Vec::with_capacity(run_count);
        let mut at = 12;
        for _ in 0..run_count {
            let term = u32::from_le_bytes(take(at, 4)?.try_into().expect("4 bytes"));
            let start = u64::from_le_bytes(take(at + 4, 8)?.try_into().expect("8 bytes"));
            runs.push(TermRun { term, start });
            at += 12;
        }
        let terms = TermMap::from_runs(runs)?;
        if terms
            .runs
            .last()
            .is_some_and(|run| run.start >= commit_offset)
        {
            return Err(bad("a term run starts at or above the commit offset"));
        }
        let membership_len = u32::from_le_bytes(take(at, 4)?.try_into().expect("4 bytes")) as usize;
        let membership_bytes = take(at + 4, membership_len)?;
        if at + 4 + membership_len != bytes.len() {
            return Err(bad("trailing bytes"));
        }
        let membership = if membership_len == 0 {
            Membership::default()
        } else {
            Membership::decode(membership_bytes).map_err(|_| bad("bad membership"))?
        };
        Ok(Checkpoint {
            commit_offset,
            terms,
            membership,
        })
    }
}

/// Rebuilds a [`RecoveredLog`] at startup from a checkpoint and the entries
/// of the log from the checkpoint's commit offset to the end of the valid
/// log (after storage recovery cut any torn tail).
///
/// ```
/// use loglog_proto::entry::{encode_entry, EntryIter, EntryKind};
/// use loglog_raft::{Checkpoint, LogScan, Membership};
///
/// let mut log = Vec::new();
/// encode_entry(1, EntryKind::NoOp, b"", &mut log);
/// encode_entry(1, EntryKind::Data, b"hello", &mut log);
/// let mut scan = LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1, 2, 3])));
/// for entry in EntryIter::new(&log, scan.next_offset(), u32::MAX) {
///     scan.observe(&entry.unwrap()).unwrap();
/// }
/// let recovered = scan.finish_at(log.len() as u64).unwrap();
/// assert_eq!(recovered.end_offset(), log.len() as u64);
/// ```
#[derive(Debug)]
pub struct LogScan {
    recovered: RecoveredLog,
}

impl LogScan {
    pub fn new(checkpoint: Checkpoint) -> LogScan {
        LogScan {
            recovered: RecoveredLog {
                terms: checkpoint.terms,
                end: checkpoint.commit_offset,
                commit_floor: checkpoint.commit_offset,
                boundaries: VecDeque::new(),
                committed_membership: checkpoint.membership,
                pending_configs: Vec::new(),
                pending_trims: Vec::new(),
                start: 0,
                lost_tail: None,
            },
        }
    }

    /// The offset of the next entry the scan expects.
    pub fn next_offset(&self) -> u64 {
        self.recovered.end
    }

    /// Feeds the next entry of the log (CRC already checked by the iterator).
    pub fn observe(&mut self, entry: &EntryRef<'_>) -> Result<(), LogStateError> {
        let recovered = &mut self.recovered;
        if entry.offset != recovered.end {
            return Err(LogStateError::NotContiguous {
                expected: recovered.end,
                found: entry.offset,
            });
        }
        recovered.terms.observe(entry.header.term, entry.offset)?;
        if entry.header.kind == EntryKind::Config {
            let membership = Membership::decode(entry.payload).map_err(|error| {
                LogStateError::BadConfigEntry {
                    offset: entry.offset,
                    error,
                }
            })?;
            recovered.pending_configs.push((entry.offset, membership));
        }
        if entry.header.kind == EntryKind::Trim {
            let trim_to = decode_trim_payload(entry.payload)
                .filter(|&trim_to| trim_to <= entry.offset)
                .ok_or(LogStateError::BadTrimEntry {
                    offset: entry.offset,
                })?;
            recovered.pending_trims.push((entry.offset, trim_to));
        }
        recovered.boundaries.push_back(entry.offset);
        recovered.end = entry.next_offset();
        Ok(())
    }

    /// The recovered log, trusting that every entry up to the end of the
    /// valid log was observed. Prefer [`LogScan::finish_at`].
    pub fn finish(self) -> RecoveredLog {
        self.recovered
    }

    /// The recovered log, checking that the scan reached `log_end`, the end
    /// of the valid log on disk. Fails if the log is shorter than the
    /// checkpoint's commit offset (committed data lost: the node must not
    /// start as if it had it) or if entries were skipped.
    pub fn finish_at(self, log_end: u64) -> Result<RecoveredLog, LogStateError> {
        if log_end != self.recovered.end {
            return Err(LogStateError::EndMismatch {
                scanned: self.recovered.end,
                log_end,
            });
        }
        Ok(self.recovered)
    }
}

/// The node's view of its log (no bytes): used by [`crate::RaftNode`].
#[derive(Clone, Debug)]
pub(crate) struct LogState {
    pub(crate) terms: TermMap,
    /// First offset of the stored log, as last learned from the driver
    /// (startup, or a read answering `Trimmed`); never above the commit
    /// offset. A follower whose next byte is below it gets the leader's
    /// checkpoint at it instead of entries.
    pub(crate) start: u64,
    /// End offset: where the next entry goes.
    pub(crate) end: u64,
    /// Entry starts at or above `boundary_floor` (at most the commit offset),
    /// ascending. Below the floor every log agrees with the leader's, so a
    /// leader's boundary there is ours too.
    pub(crate) boundaries: VecDeque<u64>,
    pub(crate) boundary_floor: u64,
    /// Offset up to which this log is fsynced (and not truncated since).
    pub(crate) synced: u64,
    /// Writes handed out and not yet reported durable: id and the end offset
    /// they leave durable, lowered by any later truncation.
    pub(crate) unsynced_writes: VecDeque<(WriteId, u64)>,
    pub(crate) last_write_id: WriteId,
}

impl LogState {
    pub(crate) fn from_recovered(recovered: &RecoveredLog) -> LogState {
        LogState {
            terms: recovered.terms.clone(),
            start: recovered.start,
            end: recovered.end,
            boundaries: recovered.boundaries.clone(),
            boundary_floor: recovered.commit_floor,
            synced: recovered.end,
            unsynced_writes: VecDeque::new(),
            last_write_id: 0,
        }
    }

    pub(crate) fn last_term(&self) -> Term {
        self.terms.last_term()
    }

    /// Whether `offset` is an entry boundary of this log, as far as the node
    /// can tell: below the floor it trusts the leader (committed prefix).
    pub(crate) fn is_boundary(&self, offset: u64) -> bool {
        if offset == self.end || offset <= self.boundary_floor {
            return offset <= self.end;
        }
        offset < self.end && self.boundaries.binary_search(&offset).is_ok()
    }

    /// Records an appended entry at the end; returns its validation error.
    pub(crate) fn push_entry(&mut self, term: Term, len: u64) -> Result<(), LogStateError> {
        self.terms.observe(term, self.end)?;
        self.boundaries.push_back(self.end);
        self.end += len;
        Ok(())
    }

    /// A new write id for an Append or Truncate leaving the log at `end`.
    pub(crate) fn record_write(&mut self, end_after: u64) -> WriteId {
        self.last_write_id += 1;
        self.unsynced_writes
            .push_back((self.last_write_id, end_after));
        self.last_write_id
    }

    /// Cuts the log at `offset` (an entry boundary above the floor).
    pub(crate) fn truncate(&mut self, offset: u64) -> WriteId {
        assert!(
            offset >= self.boundary_floor && offset < self.end,
            "truncation at {offset} outside {}..{}",
            self.boundary_floor,
            self.end
        );
        self.terms.truncate(offset);
        let keep = self.boundaries.partition_point(|&start| start < offset);
        self.boundaries.truncate(keep);
        self.end = offset;
        self.synced = self.synced.min(offset);
        for (_, end_after) in self.unsynced_writes.iter_mut() {
            *end_after = (*end_after).min(offset);
        }
        self.record_write(offset)
    }

    /// Replaces the whole log by an empty one beginning at `start` whose
    /// prefix has the term map `terms` (runs below `start`). The driver makes
    /// it durable before any later action, so the log is durable up to
    /// `start` at once; writes handed out earlier can leave no more.
    pub(crate) fn reset(&mut self, start: u64, terms: TermMap) {
        self.terms = terms;
        self.start = start;
        self.end = start;
        self.boundaries.clear();
        self.boundary_floor = start;
        self.synced = start;
        for (_, end_after) in self.unsynced_writes.iter_mut() {
            *end_after = start;
        }
    }

    /// The driver reports every write up to `write_id` durable.
    pub(crate) fn synced_through(&mut self, write_id: WriteId) {
        while let Some(&(id, end_after)) = self.unsynced_writes.front() {
            if id > write_id {
                break;
            }
            self.unsynced_writes.pop_front();
            self.synced = end_after;
        }
        debug_assert!(self.synced <= self.end);
    }

    /// Drops boundaries below `floor` (the commit offset moved up).
    pub(crate) fn raise_floor(&mut self, floor: u64) {
        if floor <= self.boundary_floor {
            return;
        }
        self.boundary_floor = floor;
        let drop = self.boundaries.partition_point(|&start| start < floor);
        self.boundaries.drain(..drop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::{encode_entry, EntryIter};

    fn map(runs: &[(Term, u64)]) -> TermMap {
        TermMap::from_runs(
            runs.iter()
                .map(|&(term, start)| TermRun { term, start })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn term_lookups() {
        let terms = map(&[(1, 0), (3, 100), (4, 250)]);
        assert_eq!(terms.term_at(0), 1);
        assert_eq!(terms.term_at(99), 1);
        assert_eq!(terms.term_at(100), 3);
        assert_eq!(terms.term_before(100), 1);
        assert_eq!(terms.term_before(0), 0);
        assert_eq!(terms.end_of(3, 300), Some(250));
        assert_eq!(terms.end_of(4, 300), Some(300));
        assert_eq!(terms.end_of(2, 300), None);
        assert_eq!(
            terms.last_run_at_most(2),
            Some(TermRun { term: 1, start: 0 })
        );
        assert_eq!(terms.last_run_at_most(0), None);
        let mut cut = terms.clone();
        cut.truncate(100);
        assert_eq!(cut.runs(), &[TermRun { term: 1, start: 0 }]);
    }

    #[test]
    fn bad_maps_are_rejected() {
        assert!(TermMap::from_runs(vec![
            TermRun { term: 2, start: 0 },
            TermRun { term: 2, start: 5 }
        ])
        .is_err());
        let mut terms = map(&[(2, 0)]);
        assert!(terms.observe(1, 10).is_err());
        assert!(terms.observe(0, 10).is_err());
    }

    #[test]
    fn writes_become_durable_in_order_and_truncation_caps_them() {
        let recovered = LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1]))).finish();
        let mut log = LogState::from_recovered(&recovered);
        log.push_entry(1, 100).unwrap();
        let first = log.record_write(100);
        let cut = log.truncate(50 - 50);
        log.push_entry(2, 30).unwrap();
        let second = log.record_write(30);
        log.synced_through(first);
        assert_eq!(log.synced, 0, "the first write's bytes were cut");
        log.synced_through(cut);
        log.synced_through(second);
        assert_eq!(log.synced, 30);
    }

    #[test]
    fn scan_and_checkpoint_round_trip() {
        let mut bytes = Vec::new();
        encode_entry(1, EntryKind::NoOp, b"", &mut bytes);
        let config = Membership::with_voters([1, 2]);
        encode_entry(1, EntryKind::Config, &config.encode(), &mut bytes);
        encode_entry(2, EntryKind::Data, b"x", &mut bytes);
        let mut scan = LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1])));
        for entry in EntryIter::new(&bytes, 0, 1000) {
            scan.observe(&entry.unwrap()).unwrap();
        }
        let recovered = scan.finish_at(bytes.len() as u64).unwrap();
        assert_eq!(recovered.membership(), &config);
        assert_eq!(recovered.term_map().runs().len(), 2);
        assert_eq!(recovered.boundaries.len(), 3);

        let checkpoint = Checkpoint {
            commit_offset: 40,
            terms: map(&[(1, 0), (2, 39)]),
            membership: config,
        };
        assert_eq!(
            Checkpoint::decode(&checkpoint.encode()),
            Ok(checkpoint.clone())
        );
        let encoded = checkpoint.encode();
        for cut in 0..encoded.len() {
            assert!(Checkpoint::decode(&encoded[..cut]).is_err());
        }
    }
}
