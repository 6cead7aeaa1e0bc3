//! A modelled disk: one node's log file and its small state file.
//!
//! The log file is a durable image plus an ordered list of unsynced
//! operations (writes and truncations). What the node sees is the image
//! with every operation applied. A sync makes the operations issued so far
//! durable. A crash keeps a random prefix of the unsynced operations (the
//! page cache may have written some back) and may tear the last one it
//! keeps: only a random prefix of its bytes reaches the platter.
//!
//! Bit flips hit the durable image directly. Recovery scans the image from
//! the start, checking every entry's CRC, and truncates at the first entry
//! that is torn or corrupt: the same rule as the real storage, which scans
//! its tail and truncates at the first bad CRC.
//!
//! Trims and resets model the real storage's segment deletions, which are
//! durable when they return (files deleted, directory fsynced): the log
//! then starts at `start`, and the bytes below it read as zeros (gone).
//!
//! Small state files (term and vote, the commit checkpoint) are replaced
//! atomically and synchronously (write temp, fsync, rename): a write is
//! entirely durable once it returns, and a crash never leaves half of one.

use std::collections::BTreeMap;

use loglog_proto::entry::{EntryError, EntryIter};
use rand::Rng;

/// An operation issued to the log file and not yet synced.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PendingOp {
    /// Write `bytes` at `offset` (always the end of the file as seen then).
    Write { offset: u64, bytes: Vec<u8> },
    /// Cut the file to `len` bytes.
    Truncate { len: u64 },
}

/// What survived a crash, for the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrashReport {
    /// Unsynced operations that reached the platter.
    pub kept_ops: usize,
    /// Unsynced operations lost.
    pub lost_ops: usize,
    /// Whether the last kept write was torn.
    pub torn: bool,
    /// Length of the durable log image after the crash.
    pub durable_len: u64,
}

/// What recovery found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// End of the valid log: the image was truncated here.
    pub log_end: u64,
    /// Bytes cut off the end of the image (torn or corrupt tail).
    pub truncated_bytes: u64,
    /// Why recovery stopped before the end of the image, if it did.
    pub stopped_by: Option<EntryError>,
}

/// One node's disk.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    durable: Vec<u8>,
    pending: Vec<PendingOp>,
    /// The file as the running node sees it: `durable` with `pending` applied.
    visible: Vec<u8>,
    /// Operations completed by syncs so far (a sync covers a prefix).
    synced_ops: u64,
    /// Operations ever issued.
    issued_ops: u64,
    state_files: BTreeMap<&'static str, Vec<u8>>,
    /// First offset still in the log; both images hold zeros below it.
    start: u64,
}

/// A point in the stream of log operations, returned by [`Disk::sync_point`]:
/// completing a sync made at this point makes every operation before it
/// durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SyncPoint(u64);

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    /// The log file as the running node sees it.
    pub fn log(&self) -> &[u8] {
        &self.visible
    }

    /// First offset still in the log (bytes below were trimmed).
    pub fn start(&self) -> u64 {
        self.start
    }

    /// Drops the entries wholly below `offset` (each entry stands for a
    /// segment: the new start is the last entry boundary at or below
    /// `offset`), durably. `offset` is at most the commit offset, so those
    /// bytes are synced. Returns the new start.
    pub fn trim_prefix(&mut self, offset: u64, max_payload: u32) -> u64 {
        let mut start = self.start;
        for entry in EntryIter::new(&self.visible[start as usize..], start, max_payload) {
            let Ok(entry) = entry else { break };
            if entry.next_offset() > offset {
                break;
            }
            start = entry.next_offset();
        }
        let durable_cut = (start as usize).min(self.durable.len());
        self.durable[..durable_cut].fill(0);
        let visible_cut = (start as usize).min(self.visible.len());
        self.visible[..visible_cut].fill(0);
        self.start = start;
        start
    }

    /// Replaces the whole log, durably, by an empty one beginning at
    /// `start` (a re-seed from the leader's log start). Unsynced operations
    /// are dropped: syncs already in flight complete nothing more.
    pub fn reset_to(&mut self, start: u64) {
        self.durable = vec![0; start as usize];
        self.visible = self.durable.clone();
        self.pending.clear();
        self.synced_ops = self.issued_ops;
        self.start = start;
    }

    /// Loses everything: log and state files (a wiped data directory).
    pub fn wipe(&mut self) {
        *self = Disk::default();
    }

    /// The log's length as the running node sees it.
    pub fn log_len(&self) -> u64 {
        self.visible.len() as u64
    }

    /// The durable log image.
    pub fn durable_log(&self) -> &[u8] {
        &self.durable
    }

    /// Appends `bytes` at the end of the log (unsynced).
    pub fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let offset = self.log_len();
        self.visible.extend_from_slice(bytes);
        self.pending.push(PendingOp::Write {
            offset,
            bytes: bytes.to_vec(),
        });
        self.issued_ops += 1;
    }

    /// Truncates the log to `len` bytes (unsynced). Truncating at or past
    /// the end does nothing.
    pub fn truncate(&mut self, len: u64) {
        if len >= self.log_len() {
            return;
        }
        self.visible.truncate(len as usize);
        self.pending.push(PendingOp::Truncate { len });
        self.issued_ops += 1;
    }

    /// Where a sync issued now would reach.
    pub fn sync_point(&self) -> SyncPoint {
        SyncPoint(self.issued_ops)
    }

    /// Whether every operation before `point` is durable.
    pub fn is_synced(&self, point: SyncPoint) -> bool {
        self.synced_ops >= point.0
    }

    /// Completes a sync issued at `point`: every operation issued before it
    /// becomes durable.
    pub fn complete_sync(&mut self, point: SyncPoint) {
        while self.synced_ops < point.0 {
            let op = self.pending.remove(0);
            apply(&mut self.durable, &op, None, self.start);
            self.synced_ops += 1;
        }
    }

    /// Whether some operation is not yet durable.
    pub fn has_unsynced(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Replaces the state file `name` atomically and durably.
    pub fn write_state(&mut self, name: &'static str, state: Vec<u8>) {
        self.state_files.insert(name, state);
    }

    /// The state file `name`, if one was ever written.
    pub fn state(&self, name: &str) -> Option<&[u8]> {
        self.state_files.get(name).map(Vec::as_slice)
    }

    /// Power loss: keeps a random prefix of the unsynced operations, maybe
    /// tearing the last kept write, and drops the rest.
    pub fn crash(&mut self, rng: &mut impl Rng) -> CrashReport {
        let total = self.pending.len();
        let kept_ops = if total == 0 {
            0
        } else {
            rng.gen_range(0..=total)
        };
        let mut torn = false;
        for (index, op) in self.pending.drain(..).enumerate().take(kept_ops) {
            let tear = match &op {
                PendingOp::Write { bytes, .. }
                    if index + 1 == kept_ops && bytes.len() > 1 && rng.gen_bool(0.5) =>
                {
                    torn = true;
                    Some(rng.gen_range(1..bytes.len()))
                }
                _ => None,
            };
            apply(&mut self.durable, &op, tear, self.start);
        }
        self.pending.clear();
        self.synced_ops = 0;
        self.issued_ops = 0;
        self.visible = self.durable.clone();
        CrashReport {
            kept_ops,
            lost_ops: total - kept_ops,
            torn,
            durable_len: self.durable.len() as u64,
        }
    }

    /// Flips one random bit of the durable log image in `[from, len)`.
    /// Returns the bit's byte offset, or `None` when that range is empty.
    pub fn flip_bit(&mut self, from: u64, rng: &mut impl Rng) -> Option<u64> {
        let from = from.max(self.start);
        let len = self.durable.len() as u64;
        if from >= len {
            return None;
        }
        let at = rng.gen_range(from..len);
        let bit = rng.gen_range(0..8);
        let at_index = at as usize;
        // The running node sees the flip too unless an unsynced write
        // covers that byte in its page cache.
        if self.visible.get(at_index) == Some(&self.durable[at_index]) {
            self.visible[at_index] ^= 1 << bit;
        }
        self.durable[at_index] ^= 1 << bit;
        Some(at)
    }

    /// Recovery after a restart: scans the durable image from offset 0 and
    /// truncates it at the first torn or corrupt entry (durably, as the
    /// real storage does before serving).
    pub fn recover(&mut self, max_payload: u32) -> Recovery {
        assert!(
            self.pending.is_empty(),
            "recovery runs on a crashed disk, which has no unsynced operations"
        );
        let start = self.start as usize;
        if self.durable.len() < start {
            // Only a reset's zeros were lost (they stand for no bytes).
            self.durable.resize(start, 0);
        }
        let mut iter = EntryIter::new(&self.durable[start..], self.start, max_payload);
        let mut stopped_by = None;
        for entry in iter.by_ref() {
            if let Err(error) = entry {
                stopped_by = Some(error);
                break;
            }
        }
        let log_end = iter.offset();
        let truncated_bytes = self.durable.len() as u64 - log_end;
        self.durable.truncate(log_end as usize);
        self.visible = self.durable.clone();
        Recovery {
            log_end,
            truncated_bytes,
            stopped_by,
        }
    }
}

/// Applies `op` to `image`; a torn write keeps only its first `tear` bytes.
/// Bytes below `start` stay zero (trimmed; only written before the trim).
fn apply(image: &mut Vec<u8>, op: &PendingOp, tear: Option<usize>, start: u64) {
    match op {
        PendingOp::Write { offset, bytes } => {
            let bytes = &bytes[..tear.unwrap_or(bytes.len())];
            let offset = *offset as usize;
            // A write past the current end (an earlier write was lost or
            // torn) leaves a hole of zeros, as a sparse file would.
            if image.len() < offset {
                image.resize(offset, 0);
            }
            let overlap = (image.len() - offset).min(bytes.len());
            image[offset..offset + overlap].copy_from_slice(&bytes[..overlap]);
            image.extend_from_slice(&bytes[overlap..]);
            let trimmed = (start as usize).min(offset + bytes.len());
            if offset < trimmed {
                image[offset..trimmed].fill(0);
            }
        }
        PendingOp::Truncate { len } => image.truncate(*len as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::encode_entry;
    use loglog_proto::EntryKind;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn entry(term: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        encode_entry(term, EntryKind::Data, payload, &mut bytes);
        bytes
    }

    #[test]
    fn synced_writes_survive_a_crash_and_unsynced_ones_may_not() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut disk = Disk::new();
        disk.append(&entry(1, b"one"));
        let point = disk.sync_point();
        disk.complete_sync(point);
        let synced_len = disk.log_len();
        for round in 0..200 {
            let mut copy = disk.clone();
            copy.append(&entry(1, b"two"));
            copy.append(&entry(1, b"three"));
            let report = copy.crash(&mut rng);
            assert!(
                copy.durable_log().starts_with(disk.durable_log()),
                "{round}"
            );
            assert_eq!(report.kept_ops + report.lost_ops, 2);
            let recovery = copy.recover(1 << 20);
            assert!(recovery.log_end >= synced_len);
            // Recovery keeps whole entries only.
            let ends = [synced_len, synced_len + 19, synced_len + 19 + 21];
            assert!(ends.contains(&recovery.log_end), "{recovery:?}");
        }
    }

    #[test]
    fn crashes_keep_prefixes_and_tear_some_writes() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut outcomes = std::collections::BTreeSet::new();
        let mut torn = 0;
        for _ in 0..500 {
            let mut disk = Disk::new();
            disk.append(&entry(1, b"aaaa"));
            disk.append(&entry(1, b"bbbb"));
            let report = disk.crash(&mut rng);
            torn += usize::from(report.torn);
            let recovery = disk.recover(1 << 20);
            outcomes.insert(recovery.log_end);
            assert_eq!(disk.log_len(), recovery.log_end);
        }
        assert_eq!(outcomes.into_iter().collect::<Vec<_>>(), vec![0, 20, 40]);
        assert!(torn > 50, "torn writes happen: {torn}");
    }

    #[test]
    fn a_lost_truncation_brings_back_the_old_suffix() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen_old = false;
        let mut seen_new = false;
        for _ in 0..100 {
            let mut disk = Disk::new();
            disk.append(&entry(1, b"keep"));
            disk.append(&entry(1, b"old!"));
            let point = disk.sync_point();
            disk.complete_sync(point);
            disk.truncate(20);
            disk.append(&entry(2, b"new!"));
            assert_eq!(&disk.log()[20..], &entry(2, b"new!")[..]);
            disk.crash(&mut rng);
            disk.recover(1 << 20);
            assert!(disk.log_len() == 20 || disk.log_len() == 40);
            let tail = &disk.log()[20..];
            seen_old |= tail == entry(1, b"old!");
            seen_new |= tail == entry(2, b"new!");
            // The truncation alone, a torn new write (which fails its CRC),
            // the old entry or the new one: never a mix that passes.
            assert!(tail.is_empty() || tail == entry(1, b"old!") || tail == entry(2, b"new!"));
        }
        assert!(seen_old && seen_new);
    }

    #[test]
    fn trims_and_resets_are_durable_and_recovery_scans_from_the_start() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut disk = Disk::new();
        disk.append(&entry(1, b"one"));
        disk.append(&entry(1, b"two"));
        disk.append(&entry(1, b"three"));
        let point = disk.sync_point();
        disk.complete_sync(point);
        // Entry boundaries 0, 19, 38, 59: a trim at 30 keeps the entry at 19.
        assert_eq!(disk.trim_prefix(30, 1 << 20), 19);
        disk.append(&entry(1, b"four"));
        disk.crash(&mut rng);
        let recovery = disk.recover(1 << 20);
        assert!(recovery.log_end >= 59, "{recovery:?}");
        assert_eq!(disk.start(), 19);
        assert!(disk.log()[..19].iter().all(|&byte| byte == 0));

        disk.append(&entry(1, b"unsynced"));
        disk.reset_to(500);
        assert_eq!((disk.start(), disk.log_len()), (500, 500));
        assert!(!disk.has_unsynced());
        disk.append(&entry(2, b"after"));
        let point = disk.sync_point();
        disk.complete_sync(point);
        disk.crash(&mut rng);
        assert_eq!(disk.recover(1 << 20).log_end, 500 + 21);
    }

    #[test]
    fn recovery_truncates_at_a_flipped_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..100 {
            let mut disk = Disk::new();
            for payload in [&b"first"[..], b"second", b"third"] {
                disk.append(&entry(3, payload));
            }
            let point = disk.sync_point();
            disk.complete_sync(point);
            let at = disk.flip_bit(0, &mut rng).unwrap();
            let recovery = disk.recover(1 << 20);
            assert!(recovery.stopped_by.is_some());
            assert!(recovery.log_end <= at, "{recovery:?} flip at {at}");
            // Recovery stopped at the start of the entry holding the flip.
            let starts = [0, 21, 43];
            assert!(starts.contains(&recovery.log_end));
            assert!(at < recovery.log_end + 22);
        }
    }

    #[test]
    fn sync_points_cover_only_what_was_issued_before() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut disk = Disk::new();
        disk.append(&entry(1, b"a"));
        let first = disk.sync_point();
        disk.append(&entry(1, b"b"));
        assert!(!disk.is_synced(first));
        disk.complete_sync(first);
        assert!(disk.is_synced(first));
        assert!(disk.has_unsynced());
        assert_eq!(disk.durable_log(), &entry(1, b"a")[..]);
        // Losing everything unsynced leaves exactly the synced entry.
        loop {
            let mut copy = disk.clone();
            let report = copy.crash(&mut rng);
            if report.kept_ops == 0 {
                assert_eq!(copy.log(), &entry(1, b"a")[..]);
                break;
            }
        }
    }

    #[test]
    fn state_file_is_atomic() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let mut disk = Disk::new();
        assert_eq!(disk.state("hard"), None);
        disk.write_state("hard", vec![1, 2, 3]);
        disk.crash(&mut rng);
        assert_eq!(disk.state("hard"), Some(&[1u8, 2, 3][..]));
    }
}
