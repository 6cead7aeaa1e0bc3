//! The three handles over one log: [`LogWriter`], [`LogSyncer`], [`LogReader`].

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use loglog_proto::entry::{EntryHeader, ENTRY_HEADER_LEN, MAX_PAYLOAD_LIMIT};
use loglog_proto::segment::{segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN};

use crate::prealloc::{reserve_space, Preparer, Reserved, ZeroAhead, ZERO_AHEAD};
use crate::{FsyncPolicy, StorageError};

/// Upper bound of one read's buffer, whatever `max_bytes` the caller asks
/// for (a single entry larger than this is still returned whole: it is
/// bounded by the largest entry the log holds).
pub const MAX_READ_BYTES: u32 = 64 * 1024 * 1024;

/// Space reserved ahead of the writer in one `fallocate` (within the
/// segment), so that most writes need no reservation call of their own.
const RESERVE_AHEAD: u64 = 1024 * 1024;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent at every await-free step, so a
    // panic elsewhere does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

/// One open segment file.
pub(crate) struct Segment {
    /// Log offset of the first byte after the header.
    pub(crate) start: u64,
    pub(crate) file: File,
    /// Log offset just past the last entry written to this segment. Fixed
    /// once the segment is no longer the tail (it equals the next one's start).
    pub(crate) end: AtomicU64,
    /// The file's current name: a temporary name until the roll that made it
    /// is durable, then `final_path`.
    path: Mutex<PathBuf>,
    final_path: PathBuf,
    /// Zeroing ahead of the write position (see [`crate::prealloc`]).
    pub(crate) zero: Arc<ZeroAhead>,
}

impl Segment {
    pub(crate) fn new(
        start: u64,
        end: u64,
        file: File,
        path: PathBuf,
        final_path: PathBuf,
        zero: Arc<ZeroAhead>,
    ) -> Self {
        Segment {
            start,
            file,
            end: AtomicU64::new(end),
            path: Mutex::new(path),
            final_path,
            zero,
        }
    }

    pub(crate) fn path(&self) -> PathBuf {
        lock(&self.path).clone()
    }

    /// File position of log offset `offset` (which must be >= start).
    pub(crate) fn position(&self, offset: u64) -> u64 {
        debug_assert!(offset >= self.start);
        SEGMENT_HEADER_LEN as u64 + (offset - self.start)
    }

    /// Gives the file its final name (the caller makes that durable).
    pub(crate) fn rename_to_final(&self) -> Result<(), StorageError> {
        let mut path = lock(&self.path);
        if *path != self.final_path {
            fs::rename(&*path, &self.final_path).map_err(StorageError::io("rename", &path))?;
            *path = self.final_path.clone();
        }
        Ok(())
    }
}

/// A roll whose new segment is not durable yet: the old segment must be
/// fully fsynced before the new one gets its final name.
struct PendingRoll {
    old: Arc<Segment>,
    new: Arc<Segment>,
}

/// State shared by the three handles.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    dir_file: File,
    pub(crate) fsync: FsyncPolicy,
    /// Largest payload [`LogWriter::append`] takes. Entries already in the
    /// log are read whatever their size (see the crate docs, Recovery).
    pub(crate) max_payload: u32,
    /// Sorted by start; contiguous; the last one is the tail.
    segments: RwLock<Vec<Arc<Segment>>>,
    start: AtomicU64,
    /// Written end: every byte below it is written and readable.
    end: AtomicU64,
    pub(crate) durable: AtomicU64,
    /// fdatasyncs of the tail that had written bytes to cover: with
    /// `durable`, how many bytes one sync covers (see [`crate::prealloc`]).
    pub(crate) data_syncs: AtomicU64,
    /// Serializes syncs with each other and with truncate/trim, so that the
    /// durable offset never claims bytes a truncation removed.
    sync_lock: Mutex<()>,
    /// Lock order: `sync_lock`, then `pending_rolls`, then `segments`.
    pending_rolls: Mutex<Vec<PendingRoll>>,
    /// Set after a failure that leaves durability unknown (a failed fsync).
    poisoned: Mutex<Option<(String, Option<i32>)>>,
}

impl Shared {
    pub(crate) fn new(
        dir: PathBuf,
        dir_file: File,
        fsync: FsyncPolicy,
        max_payload: u32,
        segments: Vec<Arc<Segment>>,
        end: u64,
    ) -> Shared {
        assert!(!segments.is_empty(), "a log always has a tail segment");
        let start = segments[0].start;
        Shared {
            dir,
            dir_file,
            fsync,
            max_payload,
            segments: RwLock::new(segments),
            start: AtomicU64::new(start),
            end: AtomicU64::new(end),
            durable: AtomicU64::new(end),
            data_syncs: AtomicU64::new(0),
            sync_lock: Mutex::new(()),
            pending_rolls: Mutex::new(Vec::new()),
            poisoned: Mutex::new(None),
        }
    }

    fn check_poisoned(&self) -> Result<(), StorageError> {
        match &*lock(&self.poisoned) {
            None => Ok(()),
            Some((reason, errno)) => Err(StorageError::Poisoned {
                reason: reason.clone(),
                errno: *errno,
            }),
        }
    }

    /// Records `error` as fatal for this instance and returns it.
    fn poison(&self, error: StorageError) -> StorageError {
        let mut poisoned = lock(&self.poisoned);
        if poisoned.is_none() {
            tracing::error!(%error, "storage poisoned; restart to recover from disk");
            *poisoned = Some((error.to_string(), error.errno()));
        }
        error
    }

    fn fsync_dir(&self) -> Result<(), StorageError> {
        if self.fsync == FsyncPolicy::Always {
            self.dir_file
                .sync_all()
                .map_err(StorageError::io("fsync directory", &self.dir))?;
        }
        Ok(())
    }

    pub(crate) fn tail(&self) -> Arc<Segment> {
        read_lock(&self.segments)
            .last()
            .expect("a log always has a tail segment")
            .clone()
    }

    /// The segment holding `offset`, if it was not trimmed.
    fn segment_for(&self, offset: u64) -> Option<Arc<Segment>> {
        let segments = read_lock(&self.segments);
        let index = segments.partition_point(|segment| segment.start <= offset);
        index.checked_sub(1).map(|index| segments[index].clone())
    }

    /// Makes every pending roll durable: old segment fully fsynced, new
    /// segment's header fsynced, new segment renamed to its final name and
    /// the directory fsynced, in log order. Caller holds `sync_lock`.
    fn complete_rolls_locked(&self) -> Result<(), StorageError> {
        let rolls = std::mem::take(&mut *lock(&self.pending_rolls));
        self.complete_rolls(&rolls)
    }

    fn complete_rolls(&self, rolls: &[PendingRoll]) -> Result<(), StorageError> {
        for roll in rolls {
            let result = (|| {
                roll.old
                    .file
                    .sync_all()
                    .map_err(StorageError::io("fsync", &roll.old.path()))?;
                roll.new
                    .file
                    .sync_data()
                    .map_err(StorageError::io("fdatasync", &roll.new.path()))?;
                roll.new.rename_to_final()?;
                // One directory fsync per rename keeps the durable renames a
                // prefix of the log's segments (rolls are rare).
                self.fsync_dir()
            })();
            result.map_err(|error| self.poison(error))?;
        }
        Ok(())
    }

    fn sync(&self) -> Result<u64, StorageError> {
        let _sync = lock(&self.sync_lock);
        self.check_poisoned()?;
        let (target, tail, rolls) = {
            let mut pending = lock(&self.pending_rolls);
            // Read under `pending_rolls`, which every roll holds while it
            // publishes the new tail: every byte below `target` is in a
            // pending roll's segments or in `tail`.
            let target = self.end.load(Ordering::Acquire);
            (target, self.tail(), std::mem::take(&mut *pending))
        };
        let durable = self.durable.load(Ordering::Acquire);
        if self.fsync == FsyncPolicy::Always && (target > durable || !rolls.is_empty()) {
            self.complete_rolls(&rolls)?;
            tail.file
                .sync_data()
                .map_err(|error| self.poison(StorageError::io("fdatasync", &tail.path())(error)))?;
            if target > durable {
                self.data_syncs.fetch_add(1, Ordering::Relaxed);
            }
        }
        // Monotonic: a truncation lowers `durable` only while holding
        // `sync_lock`, so no sync is in flight then.
        self.durable.fetch_max(target, Ordering::AcqRel);
        Ok(self.durable.load(Ordering::Acquire))
    }
}

/// Creates a segment file starting at `start` and writes its header. With
/// [`FsyncPolicy::Always`] the file gets a temporary name (the syncer renames
/// it once the previous segment is durable); otherwise its final name.
pub(crate) fn create_segment(
    dir: &Path,
    fsync: FsyncPolicy,
    start: u64,
) -> Result<Arc<Segment>, StorageError> {
    let final_path = dir.join(segment_file_name(start));
    let path = match fsync {
        FsyncPolicy::Always => dir.join(format!("{}.tmp", segment_file_name(start))),
        FsyncPolicy::Never => final_path.clone(),
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(StorageError::io("create", &path))?;
    file.write_all_at(
        &SegmentHeader {
            start_offset: start,
        }
        .encode(),
        0,
    )
    .map_err(StorageError::io("write", &path))?;
    let header_len = SEGMENT_HEADER_LEN as u64;
    let zero = match fsync {
        FsyncPolicy::Always => ZeroAhead::new(&file, header_len),
        FsyncPolicy::Never => ZeroAhead::disabled(header_len),
    };
    Ok(Arc::new(Segment::new(
        start,
        start,
        file,
        path,
        final_path,
        Arc::new(zero),
    )))
}

/// Walks the headers of `entries` and returns the length of the longest
/// prefix of whole entries that fits in `room` bytes.
fn whole_entries_within(
    entries: &[u8],
    room: u64,
    max_payload: u32,
) -> Result<usize, StorageError> {
    let mut position = 0usize;
    while position < entries.len() {
        let header = EntryHeader::decode(&entries[position..], max_payload).map_err(|error| {
            StorageError::InvalidAppend {
                reason: format!("entry at byte {position} of the batch: {error}"),
            }
        })?;
        let next = position as u64 + header.entry_len();
        if next > entries.len() as u64 {
            return Err(StorageError::InvalidAppend {
                reason: format!("entry at byte {position} of the batch runs past its end"),
            });
        }
        if next > room {
            break;
        }
        position = next as usize;
    }
    Ok(position)
}

/// The single writer. `Send`, not `Clone`.
pub struct LogWriter {
    shared: Arc<Shared>,
    tail: Arc<Segment>,
    end: u64,
    segment_size: u64,
    /// A write failed part-way and its bytes past `end` are not removed yet.
    dirty_past_end: bool,
    /// File position of the tail below which space is allocated (reserved
    /// with `fallocate`), so that writes there cannot fail with ENOSPC.
    reserved_end: u64,
    /// False once the filesystem said it cannot `fallocate`.
    can_reserve: bool,
    /// Zeroes ahead and prepares the next segment (None without fsyncs).
    /// Dropped (joined) before `_lock`.
    preparer: Option<Preparer>,
    /// The directory, `flock`ed exclusively for as long as this writer lives.
    _lock: File,
}

impl LogWriter {
    pub(crate) fn new(
        shared: Arc<Shared>,
        segment_size: u64,
        preallocate: bool,
        lock: File,
    ) -> LogWriter {
        let tail = shared.tail();
        let end = shared.end.load(Ordering::Acquire);
        let written_end = tail.position(end);
        let preparer = match shared.fsync {
            FsyncPolicy::Always if preallocate => {
                match Preparer::start(shared.clone(), segment_size) {
                    Ok(preparer) => Some(preparer),
                    Err(error) => {
                        tracing::warn!(%error, "running without preallocation");
                        None
                    }
                }
            }
            _ => None,
        };
        LogWriter {
            shared,
            tail,
            end,
            segment_size,
            dirty_past_end: false,
            // What is written is allocated.
            reserved_end: written_end,
            can_reserve: true,
            preparer,
            _lock: lock,
        }
    }

    /// Appends whole encoded entries (header and payload, CRC already
    /// computed by the caller) at [`end_offset`](Self::end_offset). Writes
    /// them without fsync; an entry never spans segments. Returns the new end.
    ///
    /// On error nothing of a batch is left past `end_offset()`; but a batch
    /// that spans a roll is written segment by segment, so `end_offset()` may
    /// have moved by the part written before the failure:
    /// `truncate_suffix(previous end)` removes it durably.
    pub fn append(&mut self, entries: &[u8]) -> Result<u64, StorageError> {
        if entries.is_empty() {
            return Ok(self.end);
        }
        self.shared.check_poisoned()?;
        if self.dirty_past_end {
            self.remove_bytes_past_end()?;
        }
        // A log recovered from a segment named near u64::MAX has no room:
        // offsets never wrap.
        if self.end.checked_add(entries.len() as u64).is_none() {
            return Err(StorageError::InvalidAppend {
                reason: format!(
                    "{} bytes at offset {} would pass the largest log offset",
                    entries.len(),
                    self.end
                ),
            });
        }
        // The caller is trusted; check cheaply that it passed entries.
        let first = EntryHeader::decode(entries, self.shared.max_payload).map_err(|error| {
            StorageError::InvalidAppend {
                reason: format!("first entry: {error}"),
            }
        })?;
        if first.entry_len() > entries.len() as u64 {
            return Err(StorageError::InvalidAppend {
                reason: "first entry runs past the end of the batch".into(),
            });
        }
        debug_assert!(
            {
                let mut iter =
                    loglog_proto::entry::EntryIter::new(entries, self.end, self.shared.max_payload);
                iter.by_ref().all(|entry| entry.is_ok())
                    && iter.offset() == self.end + entries.len() as u64
            },
            "append was given bytes that are not whole valid entries"
        );

        let mut rest = entries;
        while !rest.is_empty() {
            let used = self.end - self.tail.start;
            let room = self.segment_size.saturating_sub(used);
            let fits = if rest.len() as u64 <= room {
                rest.len()
            } else {
                let within = whole_entries_within(rest, room, self.shared.max_payload)?;
                if within == 0 && used == 0 {
                    // An empty segment takes at least one entry, however large.
                    first_entry_len(rest, self.shared.max_payload)?
                } else {
                    within
                }
            };
            if fits == 0 {
                self.roll()?;
                continue;
            }
            self.write(&rest[..fits])?;
            rest = &rest[fits..];
        }
        Ok(self.end)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let position = self.tail.position(self.end);
        let write_end = position + bytes.len() as u64;
        // Space first: a full disk fails here, with nothing written. What
        // `reserve` did not cover (the core's own small entries: no-ops,
        // configurations, trims) may use the headroom.
        self.reserve_tail(write_end, false)?;
        self.tail.zero.claim(position, write_end);
        if let Err(error) = self.tail.file.write_all_at(bytes, position) {
            self.dirty_past_end = true;
            let error = StorageError::io("write", &self.tail.path())(error);
            // Best effort now; retried by the next append or truncation.
            let _ = self.remove_bytes_past_end();
            return Err(error);
        }
        self.end += bytes.len() as u64;
        self.tail.end.store(self.end, Ordering::Release);
        self.shared.end.store(self.end, Ordering::Release);
        if let Some(preparer) = &self.preparer {
            let zeroed = self.tail.zero.zeroed();
            let zero_limit = SEGMENT_HEADER_LEN as u64 + self.segment_size;
            if write_end + ZERO_AHEAD / 2 > zeroed
                && zeroed < zero_limit
                && self.tail.zero.enabled()
                && !preparer.zeroing_paused()
            {
                preparer.wake();
            }
        }
        Ok(())
    }

    /// Removes what a failed write may have left past `end`, durably, so a
    /// partial batch can never be recovered after a crash as if it had been
    /// appended.
    fn remove_bytes_past_end(&mut self) -> Result<(), StorageError> {
        let position = self.tail.position(self.end);
        // A cut may free the space reserved past it.
        self.reserved_end = self.reserved_end.min(position);
        let tail = &self.tail;
        tail.zero
            .shrink(position, || tail.file.set_len(position))
            .map_err(StorageError::io("truncate", &tail.path()))?;
        if self.shared.fsync == FsyncPolicy::Always {
            tail.file.sync_all().map_err(|error| {
                self.shared
                    .poison(StorageError::io("fsync", &tail.path())(error))
            })?;
        }
        self.dirty_past_end = false;
        Ok(())
    }

    /// Starts a new segment at `end`. Cheap: no fsync here; the syncer makes
    /// the roll durable before it counts anything in the new segment.
    fn roll(&mut self) -> Result<(), StorageError> {
        let start = self.end;
        let prepared = self.preparer.as_ref().and_then(Preparer::take);
        let new = match prepared {
            Some(prepared) => {
                let header = SegmentHeader {
                    start_offset: start,
                }
                .encode();
                prepared.zero.claim(0, header.len() as u64);
                prepared
                    .file
                    .write_all_at(&header, 0)
                    .map_err(StorageError::io("write", &prepared.path))?;
                let final_path = self.shared.dir.join(segment_file_name(start));
                Arc::new(Segment::new(
                    start,
                    start,
                    prepared.file,
                    prepared.path,
                    final_path,
                    prepared.zero,
                ))
            }
            None => create_segment(&self.shared.dir, self.shared.fsync, start)?,
        };
        let old = self.tail.clone();
        old.zero.retire();
        {
            let mut pending = lock(&self.shared.pending_rolls);
            if self.shared.fsync == FsyncPolicy::Always {
                pending.push(PendingRoll {
                    old,
                    new: new.clone(),
                });
            }
            write_lock(&self.shared.segments).push(new.clone());
        }
        tracing::debug!(start = self.end, "rolled to a new segment");
        self.tail = new;
        self.reserved_end = SEGMENT_HEADER_LEN as u64;
        Ok(())
    }

    /// Makes sure that appending up to `len` more bytes cannot fail for
    /// lack of disk space: allocates (`fallocate`, keeping the file size)
    /// the rest of the batch's room in the tail segment and, when the batch
    /// will roll, the start of the next segment file (created now if the
    /// preparer has none ready). On a full disk it fails with an error for
    /// which [`StorageError::is_disk_full`] holds, having written nothing,
    /// so a caller can refuse an append before it is in any log (a
    /// follower before it takes a leader's entries).
    ///
    /// What it guarantees: on filesystems that overwrite in place (ext4,
    /// xfs, tmpfs), a batch of at most `len` bytes that spans at most one
    /// roll and holds no entry larger than a segment; not on copy-on-write
    /// filesystems, and not where `fallocate` is unsupported (then it does
    /// nothing). [`append`](Self::append)
    /// reserves each segment's part itself anyway, so a full disk never
    /// leaves part of an entry written.
    pub fn reserve(&mut self, len: u64) -> Result<(), StorageError> {
        self.shared.check_poisoned()?;
        let used = self.end - self.tail.start;
        let room = self.segment_size.saturating_sub(used);
        let position = self.tail.position(self.end);
        // Never more than a segment's worth per file: space reserved past a
        // file's end stays allocated until the file is cut or deleted.
        self.reserve_tail(position + len.min(room), true)?;
        if len > room {
            if let Some(preparer) = &self.preparer {
                if self.can_reserve {
                    // What goes past this segment: at most `len`, at most a
                    // segment's worth (an entry larger than a segment is
                    // reserved when it is written).
                    let next = SEGMENT_HEADER_LEN as u64 + len.min(self.segment_size);
                    preparer.reserve_next(&self.shared.dir, next)?;
                }
            }
        }
        Ok(())
    }

    /// Reserves the tail's file range up to `to` (and up to
    /// [`RESERVE_AHEAD`] more within the segment, when there is room),
    /// leaving the headroom free or not.
    fn reserve_tail(&mut self, to: u64, keep_headroom: bool) -> Result<(), StorageError> {
        if !self.can_reserve || to <= self.reserved_end {
            return Ok(());
        }
        let from = self.reserved_end;
        let limit = SEGMENT_HEADER_LEN as u64 + self.segment_size;
        let ahead = (to + RESERVE_AHEAD).min(limit).max(to);
        let file = &self.tail.file;
        let (result, reserved) =
            match (ahead > to).then(|| reserve_space(file, from, ahead - from, true)) {
                Some(Ok(done)) => (Ok(done), ahead),
                // Not that much room (or none ahead): exactly what is needed.
                _ => (reserve_space(file, from, to - from, keep_headroom), to),
            };
        match result {
            Ok(Reserved::Yes) => {
                self.reserved_end = reserved;
                Ok(())
            }
            Ok(Reserved::Unsupported) => {
                tracing::warn!(
                    "this filesystem cannot reserve space (fallocate): a full disk may fail \
                     a write part-way (the part is removed)"
                );
                self.can_reserve = false;
                Ok(())
            }
            Err(error) => Err(StorageError::io("reserve space in", &self.tail.path())(
                error,
            )),
        }
    }

    /// Written end (not necessarily durable).
    pub fn end_offset(&self) -> u64 {
        self.end
    }

    pub fn start_offset(&self) -> u64 {
        self.shared.start.load(Ordering::Acquire)
    }

    /// Removes every byte at and after `offset` (an entry boundary, at least
    /// the start offset), durably: the removed bytes never reappear after a
    /// crash. The durable offset drops to at most `offset`.
    pub fn truncate_suffix(&mut self, offset: u64) -> Result<(), StorageError> {
        let start = self.start_offset();
        if offset < start {
            return Err(StorageError::Trimmed { start });
        }
        if offset > self.end {
            return Err(StorageError::OutOfRange { end: self.end });
        }
        self.shared.check_poisoned()?;
        if offset < self.end {
            self.check_entry_boundary(offset)?;
        }
        let shared = self.shared.clone();
        let _sync = lock(&shared.sync_lock);
        self.shared.durable.fetch_min(offset, Ordering::AcqRel);
        // Durable names first, so the files deleted below are the right ones
        // and no pending roll refers to them.
        self.shared.complete_rolls_locked()?;
        let result = self.truncate_locked(offset);
        result.map_err(|error| self.shared.poison(error))
    }

    fn truncate_locked(&mut self, offset: u64) -> Result<(), StorageError> {
        let doomed: Vec<Arc<Segment>> = {
            let mut segments = write_lock(&self.shared.segments);
            let keep = segments.partition_point(|segment| segment.start <= offset);
            debug_assert!(keep >= 1, "offset >= start, so the first segment is kept");
            segments.split_off(keep.max(1))
        };
        self.shared.end.store(offset, Ordering::Release);
        // Newest first, so a crash part-way leaves a contiguous log.
        for segment in doomed.iter().rev() {
            let path = segment.path();
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
        }
        if !doomed.is_empty() {
            self.shared.fsync_dir()?;
        }
        self.tail = self.shared.tail();
        let tail = &self.tail;
        tail.end.store(offset, Ordering::Release);
        let position = tail.position(offset);
        self.reserved_end = position;
        tail.zero
            .shrink(position, || tail.file.set_len(position))
            .map_err(StorageError::io("truncate", &tail.path()))?;
        if self.shared.fsync == FsyncPolicy::Always {
            tail.file
                .sync_all()
                .map_err(StorageError::io("fsync", &tail.path()))?;
        }
        self.end = offset;
        self.dirty_past_end = false;
        Ok(())
    }

    fn check_entry_boundary(&self, offset: u64) -> Result<(), StorageError> {
        let segment = self
            .shared
            .segment_for(offset)
            .ok_or(StorageError::Trimmed {
                start: self.start_offset(),
            })?;
        let mut header = [0u8; ENTRY_HEADER_LEN];
        segment
            .file
            .read_exact_at(&mut header, segment.position(offset))
            .map_err(StorageError::io("read", &segment.path()))?;
        match EntryHeader::decode(&header, MAX_PAYLOAD_LIMIT) {
            Ok(header) if offset + header.entry_len() <= self.end => Ok(()),
            _ => Err(StorageError::NotEntryBoundary { offset }),
        }
    }

    /// Deletes the whole segments that lie entirely below `offset` (never the
    /// tail). Returns the new start offset (at most `offset`).
    pub fn trim_prefix(&mut self, offset: u64) -> Result<u64, StorageError> {
        self.shared.check_poisoned()?;
        let shared = self.shared.clone();
        let _sync = lock(&shared.sync_lock);
        self.shared.complete_rolls_locked()?;
        let trimmed: Vec<Arc<Segment>> = {
            let mut segments = write_lock(&self.shared.segments);
            let below = segments
                .windows(2)
                .take_while(|pair| pair[1].start <= offset)
                .count();
            if below == 0 {
                return Ok(self.start_offset());
            }
            // Publish the new start before the segments disappear, so a
            // reader that misses them reports `Trimmed` with the right start.
            self.shared
                .start
                .store(segments[below].start, Ordering::Release);
            segments.drain(..below).collect()
        };
        // Oldest first, so a crash part-way leaves a contiguous log.
        for segment in &trimmed {
            let path = segment.path();
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
        }
        self.shared.fsync_dir()?;
        Ok(self.start_offset())
    }

    /// Replaces the whole log, durably, by an empty one that begins at
    /// `offset`: every segment is deleted and one empty segment named by
    /// `offset` is created; start, end and durable offsets all become
    /// `offset`. Raft's InstallSnapshot with an empty state: a node whose
    /// leader trimmed the bytes it lacks starts over at the leader's start.
    ///
    /// Segments are deleted oldest first, then the new one is created, so a
    /// crash part-way leaves a valid log (a suffix of the old segments, or
    /// an empty log at 0, or the new one). The caller records its intent
    /// durably first and redoes the reset after such a crash.
    pub fn reset_to(&mut self, offset: u64) -> Result<(), StorageError> {
        self.shared.check_poisoned()?;
        let shared = self.shared.clone();
        let _sync = lock(&shared.sync_lock);
        // Durable names first, so no pending roll refers to a deleted file.
        self.shared.complete_rolls_locked()?;
        let result = self.reset_locked(offset);
        result.map_err(|error| self.shared.poison(error))
    }

    fn reset_locked(&mut self, offset: u64) -> Result<(), StorageError> {
        let old: Vec<Arc<Segment>> = read_lock(&self.shared.segments).clone();
        self.tail.zero.retire();
        for segment in &old {
            let path = segment.path();
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
        }
        self.shared.fsync_dir()?;
        let new = create_segment(&self.shared.dir, self.shared.fsync, offset)?;
        if self.shared.fsync == FsyncPolicy::Always {
            new.file
                .sync_data()
                .map_err(StorageError::io("fdatasync", &new.path()))?;
        }
        new.rename_to_final()?;
        self.shared.fsync_dir()?;
        {
            // Readers holding an old segment keep reading its (unlinked)
            // file; new reads see only the new log.
            let mut segments = write_lock(&self.shared.segments);
            self.shared.start.store(offset, Ordering::Release);
            self.shared.end.store(offset, Ordering::Release);
            self.shared.durable.store(offset, Ordering::Release);
            *segments = vec![new.clone()];
        }
        self.tail = new;
        self.end = offset;
        self.dirty_past_end = false;
        self.reserved_end = SEGMENT_HEADER_LEN as u64;
        tracing::info!(start = offset, "log reset to begin at a new start offset");
        Ok(())
    }

    /// A syncer for this log (the same one `open` returned).
    pub fn syncer(&self) -> LogSyncer {
        LogSyncer {
            shared: self.shared.clone(),
        }
    }

    /// A reader for this log.
    pub fn reader(&self) -> LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for LogWriter {
    /// A clean close makes everything written durable, including any roll
    /// still pending (whose segment would otherwise be discarded by recovery
    /// as never durable). Errors are only logged: nothing was promised.
    fn drop(&mut self) {
        if self.shared.check_poisoned().is_ok() {
            if let Err(error) = self.shared.sync() {
                tracing::warn!(%error, "final sync while closing the log failed");
            }
        }
    }
}

fn first_entry_len(entries: &[u8], max_payload: u32) -> Result<usize, StorageError> {
    let header =
        EntryHeader::decode(entries, max_payload).map_err(|error| StorageError::InvalidAppend {
            reason: error.to_string(),
        })?;
    let len = header.entry_len();
    if len > entries.len() as u64 {
        return Err(StorageError::InvalidAppend {
            reason: "entry runs past the end of the batch".into(),
        });
    }
    Ok(len as usize)
}

/// Makes appended bytes durable. `Clone + Send + Sync`.
///
/// Meant for a dedicated sync thread: while one `sync` runs its fdatasync,
/// the writer keeps appending the next batch (pipelined group commit).
#[derive(Clone)]
pub struct LogSyncer {
    shared: Arc<Shared>,
}

impl LogSyncer {
    pub(crate) fn new(shared: Arc<Shared>) -> LogSyncer {
        LogSyncer { shared }
    }

    /// Makes durable everything appended before this call started (including
    /// across segment rolls) and returns the durable end offset. Concurrent
    /// calls are serialized. After a failed fsync every later call fails.
    pub fn sync(&self) -> Result<u64, StorageError> {
        self.shared.sync()
    }

    /// The end of the durable prefix of the log.
    pub fn durable_offset(&self) -> u64 {
        self.shared.durable.load(Ordering::Acquire)
    }
}

/// Reads the log. `Clone + Send + Sync`; any number of readers run
/// concurrently with the writer and the syncer.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

/// Whole entries read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadChunk {
    /// Log offset of the first byte of `bytes`.
    pub offset: u64,
    /// Whole entries, headers included, exactly as stored.
    pub bytes: Vec<u8>,
    /// Number of entries in `bytes`.
    pub entry_count: u32,
}

impl ReadChunk {
    /// Where the next read should start.
    pub fn next_offset(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }
}

/// Whole entries located in one segment file, not read
/// ([`LogReader::locate`]): `len` bytes at [`FileSpan::position`] of
/// [`FileSpan::file`], e.g. for `sendfile`. Holding it keeps the file open:
/// a trim or reset that deletes the segment meanwhile unlinks the file,
/// and its committed bytes stay readable through the span.
#[derive(Clone)]
pub struct FileSpan {
    segment: Arc<Segment>,
    /// Log offset of the first entry.
    pub offset: u64,
    /// Bytes of whole entries, headers included.
    pub len: u64,
    /// Number of entries in the span.
    pub entry_count: u32,
}

impl std::fmt::Debug for FileSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSpan")
            .field("segment_start", &self.segment.start)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .field("entry_count", &self.entry_count)
            .finish()
    }
}

impl FileSpan {
    /// The segment file holding the span.
    pub fn file(&self) -> &File {
        &self.segment.file
    }

    /// File position of the span's first byte.
    pub fn position(&self) -> u64 {
        self.segment.position(self.offset)
    }

    /// Where the next read should start.
    pub fn next_offset(&self) -> u64 {
        self.offset + self.len
    }
}

/// [`LogReader::locate`] reads headers through a window of this many bytes
/// while entries are large (one header per window)...
const SCAN_WINDOW_SMALL: usize = 4 * 1024;
/// ...and of this many while they are small (many headers per window).
const SCAN_WINDOW_LARGE: usize = 64 * 1024;

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>) -> LogReader {
        LogReader { shared }
    }

    /// Whole entries starting at `offset` (an entry boundary): at most
    /// `max_bytes` in total but always at least one whole entry, never past
    /// `limit` (the caller's commit offset, at most the end), and never past
    /// the end of the segment holding `offset` (read again from
    /// [`ReadChunk::next_offset`]). `offset == limit` gives an empty chunk.
    ///
    /// One `pread` of the range, then a walk of the headers in memory; every
    /// entry's CRC is checked. A corrupt entry after the first ends the chunk
    /// early; a corrupt first entry is an error.
    pub fn read(&self, offset: u64, max_bytes: u32, limit: u64) -> Result<ReadChunk, StorageError> {
        self.read_entries(offset, max_bytes, limit, true)
    }

    /// [`read`](Self::read) that never allocates more than `max_bytes`
    /// (clamped like `read`'s): when the entry at `offset` alone is larger,
    /// it fails with [`StorageError::EntryLargerThanRead`] (telling its
    /// length) instead of reading it, so that a caller bounding its memory
    /// can make room first and then `read` it.
    pub fn read_at_most(
        &self,
        offset: u64,
        max_bytes: u32,
        limit: u64,
    ) -> Result<ReadChunk, StorageError> {
        self.read_entries(offset, max_bytes, limit, false)
    }

    /// The segment holding `offset` and the end of what may be read in it
    /// (below `limit`); `None` when `offset == limit` (nothing to read).
    fn readable(
        &self,
        offset: u64,
        limit: u64,
    ) -> Result<Option<(Arc<Segment>, u64)>, StorageError> {
        let start = self.start_offset();
        if offset < start {
            return Err(StorageError::Trimmed { start });
        }
        if offset > limit {
            return Err(StorageError::OutOfRange { end: limit });
        }
        let limit = limit.min(self.end_offset());
        if offset > limit {
            return Err(StorageError::OutOfRange { end: limit });
        }
        if offset == limit {
            return Ok(None);
        }
        let segment = self
            .shared
            .segment_for(offset)
            .ok_or_else(|| StorageError::Trimmed {
                start: self.start_offset(),
            })?;
        let readable_end = limit.min(segment.end.load(Ordering::Acquire));
        if offset >= readable_end {
            // Only possible while a truncation races with a read past the
            // caller's own limit.
            return Err(StorageError::OutOfRange { end: readable_end });
        }
        Ok(Some((segment, readable_end)))
    }

    /// Where [`read`](Self::read) would find its entries, without reading
    /// them: the same whole entries (at least one, at most `max_bytes`
    /// otherwise, never past `limit` or the segment) as a [`FileSpan`] of
    /// the segment file, for sending the bytes straight from the file.
    /// `None` when `offset == limit`.
    ///
    /// Only headers are read (through a small window), and the first
    /// entry's CRC is checked (streamed through that window), so an offset
    /// that is not an entry boundary fails as in `read`. The payloads after
    /// it are not checked here: their CRCs are for the receiver to check (a
    /// damaged later entry is sent as stored, where `read` would end the
    /// chunk before it). The span is advised `WILLNEED`, so the kernel
    /// starts fetching what is not cached before it is sent.
    pub fn locate(
        &self,
        offset: u64,
        max_bytes: u32,
        limit: u64,
    ) -> Result<Option<FileSpan>, StorageError> {
        let Some((segment, readable_end)) = self.readable(offset, limit)? else {
            return Ok(None);
        };
        let available = readable_end - offset;
        let wanted =
            u64::from(max_bytes.clamp(ENTRY_HEADER_LEN as u32, MAX_READ_BYTES)).min(available);
        let read_at = |buffer: &mut [u8], at: u64| {
            segment
                .file
                .read_exact_at(buffer, segment.position(at))
                .map_err(StorageError::io("read", &segment.path()))
        };
        let mut window = vec![0u8; SCAN_WINDOW_LARGE];
        // The window holds log bytes [window_at, window_at + window_len).
        let (mut window_at, mut window_len) = (offset, 0usize);
        let mut located = 0u64;
        let mut entry_count = 0u32;
        let mut small_entries = false;
        while located < wanted {
            let at = offset + located;
            let rest = readable_end - at;
            if rest < ENTRY_HEADER_LEN as u64 {
                break;
            }
            if at < window_at || at + ENTRY_HEADER_LEN as u64 > window_at + window_len as u64 {
                let size = if small_entries {
                    SCAN_WINDOW_LARGE
                } else {
                    SCAN_WINDOW_SMALL
                };
                window_len = size.min(usize::try_from(rest).unwrap_or(usize::MAX));
                window_at = at;
                read_at(&mut window[..window_len], at)?;
            }
            let in_window = (at - window_at) as usize;
            let header_bytes: [u8; ENTRY_HEADER_LEN] = window
                [in_window..in_window + ENTRY_HEADER_LEN]
                .try_into()
                .expect("the window holds the whole header");
            let Ok(header) = EntryHeader::decode(&header_bytes, MAX_PAYLOAD_LIMIT) else {
                if located == 0 {
                    return Err(StorageError::NotEntryBoundary { offset });
                }
                break;
            };
            let len = header.entry_len();
            if len > rest {
                if located == 0 {
                    return Err(StorageError::NotEntryBoundary { offset });
                }
                break;
            }
            if located > 0 && located + len > wanted {
                break;
            }
            if located == 0 {
                // The first entry's CRC, streamed: header bytes 4..16, then
                // the payload in window-sized pieces.
                let mut crc = crc32c::crc32c(&header_bytes[4..]);
                let mut done = ENTRY_HEADER_LEN as u64;
                while done < len {
                    let piece = (len - done).min(window.len() as u64) as usize;
                    if at + done + piece as u64 <= window_at + window_len as u64 {
                        let from = (at + done - window_at) as usize;
                        crc = crc32c::crc32c_append(crc, &window[from..from + piece]);
                    } else {
                        window_len = 0;
                        read_at(&mut window[..piece], at + done)?;
                        crc = crc32c::crc32c_append(crc, &window[..piece]);
                    }
                    done += piece as u64;
                }
                if crc != header.crc {
                    return Err(StorageError::Corrupt {
                        path: segment.path(),
                        offset,
                        reason: loglog_proto::entry::EntryError::BadCrc {
                            stored: header.crc,
                            computed: crc,
                        }
                        .to_string(),
                    });
                }
            }
            located += len;
            entry_count += 1;
            small_entries = len < SCAN_WINDOW_SMALL as u64;
        }
        if located == 0 {
            return Err(StorageError::NotEntryBoundary { offset });
        }
        let span = FileSpan {
            segment,
            offset,
            len: located,
            entry_count,
        };
        // Advice only: a failure changes nothing but speed.
        let _ = rustix::fs::fadvise(
            span.file(),
            span.position(),
            std::num::NonZeroU64::new(span.len),
            rustix::fs::Advice::WillNeed,
        );
        Ok(Some(span))
    }

    fn read_entries(
        &self,
        offset: u64,
        max_bytes: u32,
        limit: u64,
        whole_first_entry: bool,
    ) -> Result<ReadChunk, StorageError> {
        let Some((segment, readable_end)) = self.readable(offset, limit)? else {
            return Ok(ReadChunk {
                offset,
                bytes: Vec::new(),
                entry_count: 0,
            });
        };
        let available = readable_end - offset;
        let wanted =
            u64::from(max_bytes.clamp(ENTRY_HEADER_LEN as u32, MAX_READ_BYTES)).min(available);
        let mut bytes = vec![0u8; wanted as usize];
        let read_at = |buffer: &mut [u8], at: u64| {
            segment
                .file
                .read_exact_at(buffer, segment.position(at))
                .map_err(StorageError::io("read", &segment.path()))
        };
        read_at(&mut bytes, offset)?;

        // Whatever the append limit is now: entries appended under a larger
        // one are still the log (see the crate docs, Recovery).
        let max_payload = MAX_PAYLOAD_LIMIT;
        let first = EntryHeader::decode(&bytes, max_payload)
            .map_err(|_| StorageError::NotEntryBoundary { offset })?;
        let first_len = first.entry_len();
        if first_len > available {
            return Err(StorageError::NotEntryBoundary { offset });
        }
        if first_len > bytes.len() as u64 {
            if !whole_first_entry {
                return Err(StorageError::EntryLargerThanRead {
                    offset,
                    entry_len: first_len,
                });
            }
            // A single entry larger than max_bytes: fetch the rest of it.
            let have = bytes.len();
            bytes.resize(first_len as usize, 0);
            read_at(&mut bytes[have..], offset + have as u64)?;
        }

        let mut position = 0usize;
        let mut entry_count = 0u32;
        while let Some(rest) = bytes
            .get(position..)
            .filter(|rest| rest.len() >= ENTRY_HEADER_LEN)
        {
            let Ok(header) = EntryHeader::decode(rest, max_payload) else {
                break;
            };
            let len = header.entry_len();
            if len > rest.len() as u64 {
                break;
            }
            let len = len as usize;
            if let Err(error) = header.verify(&rest[ENTRY_HEADER_LEN..len]) {
                if position == 0 {
                    return Err(StorageError::Corrupt {
                        path: segment.path(),
                        offset,
                        reason: error.to_string(),
                    });
                }
                break;
            }
            position += len;
            entry_count += 1;
        }
        if position == 0 {
            return Err(StorageError::NotEntryBoundary { offset });
        }
        bytes.truncate(position);
        Ok(ReadChunk {
            offset,
            bytes,
            entry_count,
        })
    }

    pub fn start_offset(&self) -> u64 {
        self.shared.start.load(Ordering::Acquire)
    }

    /// Written end (readable, not necessarily durable or committed).
    pub fn end_offset(&self) -> u64 {
        self.shared.end.load(Ordering::Acquire)
    }

    pub fn segment_count(&self) -> usize {
        read_lock(&self.shared.segments).len()
    }

    /// Every segment of the log, oldest first (the last one is the tail),
    /// for retention policies: where each starts and ends and when it was
    /// last written.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        let segments: Vec<Arc<Segment>> = read_lock(&self.shared.segments).clone();
        segments
            .iter()
            .map(|segment| SegmentInfo {
                start: segment.start,
                end: segment.end.load(Ordering::Acquire),
                // The file's mtime: the last write into it (data, or zeros
                // ahead of the writer while it was the tail).
                last_write: segment
                    .file
                    .metadata()
                    .and_then(|metadata| metadata.modified())
                    .ok(),
            })
            .collect()
    }
}

/// One segment as [`LogReader::segments`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Log offset of its first entry.
    pub start: u64,
    /// Log offset just past its last entry (the next segment's start).
    pub end: u64,
    /// When its file was last written (`None` if the filesystem cannot tell).
    pub last_write: Option<std::time::SystemTime>,
}
