//! The three handles over one log: [`LogWriter`], [`LogSyncer`], [`LogReader`].

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use loglog_proto::entry::{EntryHeader, ENTRY_HEADER_LEN, MAX_PAYLOAD_LIMIT};
use loglog_proto::segment::{segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN};

use crate::prealloc::{Preparer, ZeroAhead, ZERO_AHEAD};
use crate::{FsyncPolicy, StorageError};

/// Upper bound of one read's buffer, whatever `max_bytes` the caller asks
/// for (a single entry larger than this is still returned whole: it is
/// bounded by the largest entry the log holds).
pub const MAX_READ_BYTES: u32 = 64 * 1024 * 1024;

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
    durable: AtomicU64,
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
        Ok(())
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

    fn read_entries(
        &self,
        offset: u64,
        max_bytes: u32,
        limit: u64,
        whole_first_entry: bool,
    ) -> Result<ReadChunk, StorageError> {
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
            return Ok(ReadChunk {
                offset,
                bytes: Vec::new(),
                entry_count: 0,
            });
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
}
