//! LogLog's segment files: append, group commit, recovery, truncate, trim,
//! reset.
//!
//! [`open`] recovers a log directory and returns three handles: the single
//! [`LogWriter`], a [`LogSyncer`] for a dedicated sync thread and any number
//! of [`LogReader`]s. The bytes of the log are the entries exactly as the
//! clients and peers see them (`loglog_proto::entry`): no index, no copy.
//!
//! # On-disk layout
//!
//! ```text
//! <dir>/00000000000000000000.seg   SegmentHeader (32 B) + log bytes [0, s1)
//! <dir>/000000000000000s1.seg      SegmentHeader (32 B) + log bytes [s1, s2)
//! ...                              (names: segment_file_name(start), 20 digits)
//! <dir>/prealloc-N.tmp             next segment being prepared, or a rolled
//!                                  segment whose roll is not durable yet
//! <dir>/<segment name>.tmp         the same, made without preallocation
//! ```
//!
//! Log offset `start` of a segment sits at file position 32. A segment holds
//! whole entries only: when the next entry does not fit in `segment_size`
//! the writer rolls to a new segment (an entry larger than a segment gets
//! one of its own). A non-tail segment ends exactly where the next begins;
//! its file may be longer (zeroed space past the data is ignored). Segment
//! files stay open for the life of the log (one descriptor each).
//!
//! # Durability and group commit
//!
//! [`LogWriter::append`] only writes (`pwrite`, no fsync) and publishes the
//! new end, so readers can see it at once (they are limited by the caller's
//! commit offset). [`LogSyncer::sync`], called from another thread, makes
//! durable everything appended before it started and returns the durable
//! end: it reads the written end, then fdatasyncs; the writer keeps
//! appending meanwhile, so one fdatasync covers every batch written while
//! the previous one ran (pipelined group commit). Syncs are serialized.
//!
//! A roll is cheap on the hot path: the new segment is a prepared file with
//! a temporary name; the writer writes its header and goes on. The next sync
//! completes the roll before counting anything in it: fsync of the old
//! segment, fdatasync of the new one (its header), rename to the final name,
//! fsync of the directory. So a `.seg` file always has a durable header, and
//! every `.seg` file but the last is complete up to the next one's start.
//!
//! [`LogWriter::truncate_suffix`] excludes syncs while it runs, first lowers
//! the durable offset, then deletes later segments (newest first), cuts the
//! tail with `ftruncate` and fsyncs: removed bytes cannot reappear after a
//! crash, and the durable offset never claims them. A failed fsync poisons
//! the log (the kernel may have dropped the dirty pages): every later call
//! fails with [`StorageError::Poisoned`] until the process reopens the log.
//!
//! [`LogWriter::reset_to`] (a re-seed from a leader's log start) deletes
//! every segment, oldest first, then creates one empty segment named by the
//! new start (fsynced, renamed, directory fsynced). A crash part-way leaves
//! a valid log (a suffix of the old segments, an empty log at 0, or the new
//! one); the caller saves its intent first and redoes the reset at start.
//!
//! # Full disk
//!
//! No byte is written without space reserved for it:
//! [`LogWriter::append`] first allocates the range it writes (`fallocate`
//! with `KEEP_SIZE`, 1 MiB ahead within the segment when there is room),
//! and [`LogWriter::reserve`] lets a caller reserve a whole batch, the
//! start of the next segment included, before the batch is in any log.
//! Neither reserve nor preallocation takes the last [`DISK_HEADROOM`]
//! bytes of the filesystem: they are left for the small state files and
//! for appends nobody reserved (the Raft core's own small entries: no-ops,
//! configurations, trims), so that a node on a full disk can still save its
//! term, win an election, or take a trim that frees space. So on a full
//! disk an append fails with an error for which
//! [`StorageError::is_disk_full`] holds and nothing written, and succeeds
//! again once space returns. Filesystems without `fallocate` get no such
//! guarantee (a part-written batch is then removed, as for any failed
//! write); copy-on-write filesystems neither (an overwrite needs new
//! space).
//!
//! # Preallocation
//!
//! fdatasync after writing into already written, durable space needs no
//! metadata commit, which a growing file does. A background thread keeps the
//! tail zeroed a few MiB ahead of the writer, chunk by chunk, and prepares
//! the next segment file, so disk writes are not doubled in one burst and
//! the hot path never waits for it (see `prealloc.rs` and the examples
//! `fdatasync_latency` and `group_commit` for the figures). The zeros are
//! written around the page cache (`O_DIRECT`, so the syncer never flushes
//! them) and then read back into it asynchronously, so that the writer's
//! partial-block writes never wait for a disk read (read-modify-write).
//! Measured on the development machine, 128-byte entries, 64 per batch,
//! writer and sync thread pipelined: about 6,950 fsyncs/s and 459,000
//! entries/s, median sync 122 us (364,000 entries/s without the readback),
//! against 3,000-4,500 fsyncs/s and median 180-300 us with
//! [`Preallocation::Off`]. Zeroing costs a second write of every byte, which
//! only small syncs gain from: while syncs cover 64 KiB or more on average
//! (large entries), the tail is not zeroed and the writer appends into a
//! growing file (`prealloc.rs`, "Only for small syncs").
//!
//! # Recovery
//!
//! Only the tail is read. [`open`] removes its own leftover temporary files
//! (prepared files, and segments whose roll never became durable: nothing in
//! them was ever reported durable; other files are left alone), checks that
//! the `.seg` files are contiguous (header CRC, version, start matching the
//! name, each one long enough to reach the next one's start), and scans the
//! last segment from its start, checking every entry's header and CRC. The
//! first torn, corrupt or zeroed entry is the end: the file is cut there and
//! fsynced, so stale bytes can never be taken for entries later.
//!
//! An entry is valid when its header decodes, the file holds all of its
//! bytes and its CRC matches, whatever its length up to the format's
//! `MAX_PAYLOAD_LIMIT`: [`StorageConfig::max_payload`] limits new appends
//! only (the caller enforces its own limit before that). Were it applied to
//! the log's existing entries, reopening with a smaller limit would take the
//! first larger, acknowledged entry for a torn tail and cut it with
//! everything after it. Reads and `truncate_suffix` check entries the same
//! way. The scan's memory stays bounded: an entry larger than the scan's
//! 1 MiB buffer is checked piece by piece, so a garbage length in a torn
//! header costs reading at most the rest of the file, not allocating it. A damaged segment header, an unknown
//! format version or a gap is a typed error: recovery never deletes data
//! that is not a torn tail.
//!
//! Data written but never covered by a completed sync may be lost in a
//! crash; a clean close (dropping the [`LogWriter`]) syncs first.
//!
//! # Small state
//!
//! [`state_file`] keeps small durable records (Raft term and vote, a commit
//! lower bound, the cluster id) in atomically replaced, checksummed files.

mod error;
mod log;
mod prealloc;
mod recovery;
pub mod state_file;

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::error::StorageError;
pub use crate::log::{
    FileSpan, LogReader, LogSyncer, LogWriter, ReadChunk, SegmentInfo, MAX_READ_BYTES,
};
pub use crate::prealloc::DISK_HEADROOM;

/// Whether syncs call fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every sync is a real fdatasync (and fsync of the directory on rolls).
    Always,
    /// No fsync at all: nothing survives a machine crash. Benchmarks only.
    Never,
}

/// Where and how the log is stored.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Directory of segment files (created if missing).
    pub dir: PathBuf,
    /// Roll to a new segment once the current one's data reaches this.
    pub segment_size: u64,
    /// Largest payload [`LogWriter::append`] takes: a limit on new entries
    /// only. Entries already in the log are recovered and read whatever their
    /// size (up to the format's `MAX_PAYLOAD_LIMIT`), so reopening with a
    /// smaller limit never cuts entries appended under a larger one.
    pub max_payload: u32,
    pub fsync: FsyncPolicy,
}

/// Default segment size: 256 MiB.
pub const DEFAULT_SEGMENT_SIZE: u64 = 256 * 1024 * 1024;

impl StorageConfig {
    /// 256 MiB segments, the format's default maximum payload, real fsyncs.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            dir: dir.into(),
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_payload: loglog_proto::entry::DEFAULT_MAX_PAYLOAD,
            fsync: FsyncPolicy::Always,
        }
    }
}

/// Opens (creating if empty) and recovers the log. Returns the three handles.
///
/// Fails while another [`LogWriter`] of the same directory is alive (an
/// exclusive `flock` on the directory, released when the writer drops).
pub fn open(config: StorageConfig) -> Result<(LogWriter, LogSyncer, LogReader), StorageError> {
    open_with(config, Preallocation::ZeroAhead)
}

/// How segment space is prepared ahead of the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preallocation {
    /// A background thread zeroes the tail ahead of the write position and
    /// prepares the next segment file (the default; see the crate docs).
    /// Ignored with [`FsyncPolicy::Never`], where it would gain nothing.
    ZeroAhead,
    /// Append into growing files, create segment files at roll time. For
    /// measurements and for filesystems where zeroing does not pay.
    Off,
}

/// [`open`], choosing the preallocation policy.
pub fn open_with(
    config: StorageConfig,
    preallocation: Preallocation,
) -> Result<(LogWriter, LogSyncer, LogReader), StorageError> {
    let (shared, writer_lock) = recovery::recover(&config)?;
    let shared = Arc::new(shared);
    let writer = LogWriter::new(
        shared.clone(),
        config.segment_size,
        preallocation == Preallocation::ZeroAhead,
        writer_lock,
    );
    Ok((
        writer,
        LogSyncer::new(shared.clone()),
        LogReader::new(shared),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_send_and_sync_as_documented() {
        fn send<T: Send>() {}
        fn send_sync_clone<T: Send + Sync + Clone>() {}
        send::<LogWriter>();
        send_sync_clone::<LogSyncer>();
        send_sync_clone::<LogReader>();
    }
}
