//! Preallocation off the hot path: zeroing ahead of the write position and
//! preparing the next segment file.
//!
//! An fdatasync after writing into space that is already written (zeroed)
//! and whose size is already durable needs no journal commit for metadata.
//! Measured here (`examples/fdatasync_latency.rs`, 4 KiB appends, medians of
//! several runs): about 145-220 us into pre-zeroed space, against 210-290 us
//! into a growing file and 210-320 us into `fallocate`d (unwritten) space,
//! whose extents still need converting.
//!
//! Zeroing a whole 256 MiB segment up front would double the disk writes in
//! one burst; instead one background thread, the preparer, keeps the tail
//! segment zeroed [`ZERO_AHEAD`] bytes ahead of the writer in
//! [`ZERO_CHUNK`] steps (each fdatasynced, so its size is durable before the
//! writer gets there), and keeps the first chunk of the next segment file
//! ready. Zeros are written with `O_DIRECT` through a second descriptor when
//! the filesystem allows it, so they never sit dirty in the page cache where
//! the syncer's fdatasync of the same file would have to flush them.
//!
//! But `O_DIRECT` leaves the zeroed blocks out of the page cache, and a
//! buffered `pwrite` that covers only part of an uncached block must first
//! read it from disk (ext4: `ext4_block_write_begin` -> `ext4_read_bh_lock`).
//! With small appends every batch ends in a fresh, partly written block: one
//! synchronous disk read per batch on the writer's path. So each zeroed
//! piece is then handed to readahead (`posix_fadvise(WILLNEED)`, which does
//! not wait): the zeros come back as clean cached pages before the writer
//! gets there, at the cost of reading them once, asynchronously, in large
//! requests. Zeroing through the page cache instead (buffered zeros, each
//! piece fdatasynced by the preparer, so the pages are clean and cached)
//! also avoids the reads, but was slower: its flushes compete with the
//! syncer's. Measured on the development machine (2 shared cores, ext4 on
//! a virtual disk), medians of 6 interleaved runs, `chrt -f 10`:
//!
//! ```text
//!                      group_commit 3 s, 64 x 128 B      tcp_load 64 64 128 4 always
//!                      fsyncs/s  entries/s  median sync  committed appends/s
//! O_DIRECT only           5,700    364,000      133 us            108,000
//! O_DIRECT + WILLNEED     6,950    459,000      122 us            121,000
//! buffered + fdatasync    5,800    407,000       96 us            110,000
//! ```
//! Disk reads per 3 s group_commit run (`/sys/block/vda/stat`): about
//! 18,000 with `O_DIRECT` only (one per batch, issued by the writer: a perf
//! trace of `block:block_rq_issue` shows them as the writer's), about 900
//! with WILLNEED (readahead by the preparer), near 0 buffered.
//!
//! Zeroing is only an optimisation: when the writer outruns it, the writer
//! appends into a growing file, which is equally correct. The one rule is
//! that zeros never land on data: see [`ZeroAhead`].
//!
//! **Only for small syncs.** Zeroing saves each fdatasync a metadata commit
//! but writes (and reads back) every byte once more; when one sync covers
//! many bytes the saving is small and the extra disk traffic is not. So the
//! tail (and the next segment's first chunk) is zeroed only while syncs
//! cover less than [`LARGE_SYNC_BYTES`] on average, measured over
//! [`SYNC_SAMPLE`] syncs. `loglog bench`, one node, 64 writers, on
//! the development machine (quiet, 2026-11-24), zeroing always / never:
//!
//! ```text
//! entry size   bytes per sync   committed appends/s, zeroing always / never
//! 128 B        ~4 KiB           138,000 / 105,000
//! 1 KiB        ~30 KiB          114,000 /  81,000
//! 4 KiB        ~120 KiB          73,000 /  76,000
//! 64 KiB x 8   ~200 KiB          6,700 /   8,300   (3 nodes: 2,700 / 3,900)
//! ```

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use loglog_proto::segment::SEGMENT_HEADER_LEN;

use crate::log::{lock, Shared};
use crate::StorageError;

/// How far ahead of the write position the tail is kept zeroed.
pub(crate) const ZERO_AHEAD: u64 = 8 * 1024 * 1024;
/// Bytes zeroed (and fdatasynced) per step.
pub(crate) const ZERO_CHUNK: u64 = 1024 * 1024;
/// Bytes written per `pwrite` of zeros: the longest a writer that caught up
/// with the zeroing may wait.
const ZERO_PIECE: u64 = 256 * 1024;
/// Alignment of `O_DIRECT` writes.
const ALIGN: u64 = 4096;
/// How long the preparer waits before retrying after an error (a full disk).
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Syncs covering this many bytes on average or more gain less from a
/// zeroed tail than the zeroing costs (see the module docs).
const LARGE_SYNC_BYTES: u64 = 64 * 1024;
/// Syncs over which the bytes per sync are averaged.
const SYNC_SAMPLE: u64 = 16;
/// While zeroing is paused for large syncs, how often the preparer looks
/// again (the writer does not wake it for zeroing then).
const SYNC_RECHECK: Duration = Duration::from_millis(50);

/// Whether recent syncs were large, from the log's durable offset and
/// count of data syncs.
struct SyncSize {
    durable: u64,
    syncs: u64,
    large: bool,
}

impl SyncSize {
    fn new(shared: &Shared) -> SyncSize {
        SyncSize {
            durable: shared.durable.load(Ordering::Acquire),
            syncs: shared.data_syncs.load(Ordering::Acquire),
            large: false,
        }
    }

    /// Whether syncs have covered at least [`LARGE_SYNC_BYTES`] on average
    /// over the last [`SYNC_SAMPLE`] or more (the last answer until then).
    fn large(&mut self, shared: &Shared) -> bool {
        let syncs = shared.data_syncs.load(Ordering::Acquire);
        let durable = shared.durable.load(Ordering::Acquire);
        let sampled = syncs.saturating_sub(self.syncs);
        // A truncation can lower `durable`: start the sample over.
        if durable < self.durable {
            *self = SyncSize {
                large: self.large,
                ..SyncSize::new(shared)
            };
        } else if sampled >= SYNC_SAMPLE {
            self.large = (durable - self.durable) / sampled >= LARGE_SYNC_BYTES;
            self.durable = durable;
            self.syncs = syncs;
        }
        self.large
    }
}

fn align_up(value: u64) -> u64 {
    value.div_ceil(ALIGN) * ALIGN
}

/// The zeroing state of one segment file.
///
/// Protocol: the preparer zeroes `[from, to)` only with `from` at or past
/// `claimed`, the highest file position the writer has asked for; the
/// writer, before writing past `zeroed`, waits for any zeroing in progress
/// that overlaps its range and raises `claimed`. Writes below `zeroed` need
/// no lock: all zeroing from then on starts at or above it.
pub(crate) struct ZeroAhead {
    /// File position below which the writer may write without coordination.
    zeroed: AtomicU64,
    state: Mutex<ZeroState>,
    zeroing_done: Condvar,
    /// The preparer's own descriptor of the file: opened with `O_DIRECT`
    /// where the filesystem allows, else a duplicate; None disables zeroing
    /// (and is what a segment gets once it is no longer the tail).
    zero_file: Mutex<Option<Arc<File>>>,
}

struct ZeroState {
    /// File range the preparer is writing zeros to right now.
    in_progress: Option<(u64, u64)>,
    claimed: u64,
    /// Bumped whenever the file is cut, so a zeroing step that started
    /// before does not report space as zeroed.
    generation: u64,
}

impl ZeroAhead {
    /// State for `file`, whose bytes below `zeroed` are all written.
    pub(crate) fn new(file: &File, zeroed: u64) -> ZeroAhead {
        // Reopening through /proc gives a second open file description with
        // its own flags, whatever the file is named now.
        let zero_file = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .or_else(|_| file.try_clone())
            .ok()
            .map(Arc::new);
        ZeroAhead {
            zeroed: AtomicU64::new(zeroed),
            state: Mutex::new(ZeroState {
                in_progress: None,
                claimed: zeroed,
                generation: 0,
            }),
            zeroing_done: Condvar::new(),
            zero_file: Mutex::new(zero_file),
        }
    }

    /// State for a file that is never zeroed ahead (not the tail, or no
    /// fsyncs at all so nothing to gain).
    pub(crate) fn disabled(zeroed: u64) -> ZeroAhead {
        ZeroAhead {
            zeroed: AtomicU64::new(zeroed),
            state: Mutex::new(ZeroState {
                in_progress: None,
                claimed: zeroed,
                generation: 0,
            }),
            zeroing_done: Condvar::new(),
            zero_file: Mutex::new(None),
        }
    }

    /// Stops zeroing this file for good and closes the extra descriptor.
    pub(crate) fn retire(&self) {
        lock(&self.zero_file).take();
    }

    pub(crate) fn enabled(&self) -> bool {
        lock(&self.zero_file).is_some()
    }

    pub(crate) fn zeroed(&self) -> u64 {
        self.zeroed.load(Ordering::Acquire)
    }

    /// The writer calls this before writing file range `[from, to)`.
    pub(crate) fn claim(&self, from: u64, to: u64) {
        if to <= self.zeroed() {
            return;
        }
        let mut state = lock(&self.state);
        while matches!(state.in_progress, Some((start, end)) if start < to && from < end) {
            state = self
                .zeroing_done
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        state.claimed = state.claimed.max(to);
    }

    /// Runs `shrink` (which cuts the file to `len`) with no zeroing in
    /// progress, then lets zeroing resume from `len`.
    pub(crate) fn shrink<R>(&self, len: u64, shrink: impl FnOnce() -> R) -> R {
        let mut state = lock(&self.state);
        while state.in_progress.is_some() {
            state = self
                .zeroing_done
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let result = shrink();
        state.generation += 1;
        state.claimed = len;
        self.zeroed.fetch_min(len, Ordering::AcqRel);
        result
    }

    /// Zeroes one chunk ahead of `write_position` if the zeroed space ends
    /// less than `ZERO_AHEAD` ahead of it and below `limit`, then fdatasyncs.
    /// Returns whether it did any work.
    ///
    /// The chunk is written in pieces, each announced in `in_progress`, so a
    /// writer that catches up waits for one piece at most, and each piece
    /// starts at or above the writer's claim.
    fn zero_step(
        &self,
        path: &Path,
        write_position: u64,
        gap: u64,
        limit: u64,
    ) -> Result<bool, StorageError> {
        let Some(file) = lock(&self.zero_file).clone() else {
            return Ok(false);
        };
        let (from, to, generation) = {
            let state = lock(&self.state);
            debug_assert!(state.in_progress.is_none(), "only the preparer zeroes");
            // `gap` leaves room before an active writer, so that it does not
            // run into a piece being written the moment it starts.
            let from = align_up(
                self.zeroed()
                    .max(state.claimed)
                    .max(write_position.saturating_add(gap).min(limit)),
            );
            if from >= limit || from >= write_position.saturating_add(ZERO_AHEAD) {
                return Ok(false);
            }
            (
                from,
                align_up((from + ZERO_CHUNK).min(limit)),
                state.generation,
            )
        };
        check_headroom(&file, to - from).map_err(StorageError::io("write zeros to", path))?;
        let zeros = aligned_zeros();
        let mut at = from;
        while at < to {
            let piece = {
                let mut state = lock(&self.state);
                if state.generation != generation {
                    // The file was cut meanwhile: start over from the new state.
                    return Ok(true);
                }
                at = at.max(align_up(state.claimed));
                if at >= to {
                    break;
                }
                let piece = (at, (at + ZERO_PIECE).min(to));
                state.in_progress = Some(piece);
                piece
            };
            let written = file.write_all_at(&zeros[..(piece.1 - piece.0) as usize], piece.0);
            if written.is_ok() {
                bring_into_page_cache(&file, piece.0, piece.1);
            }
            let mut state = lock(&self.state);
            state.in_progress = None;
            self.zeroing_done.notify_all();
            drop(state);
            written.map_err(StorageError::io("write zeros to", path))?;
            at = piece.1;
        }
        // Makes the new size durable too, so the writer's fdatasyncs into
        // this space need no metadata commit.
        file.sync_data()
            .map_err(StorageError::io("fdatasync", path))?;
        let state = lock(&self.state);
        if state.generation == generation {
            self.zeroed.fetch_max(at, Ordering::AcqRel);
        }
        Ok(true)
    }
}

/// Starts reading file range `[from, to)` into the page cache, without
/// waiting for it.
///
/// `O_DIRECT` zeros bypass the page cache, and the writer's `pwrite` of a
/// block that is neither cached nor fully overwritten must read it first
/// (read-modify-write): with small appends, one synchronous disk read per
/// batch on the writer's path. Asking for readahead of the zeros just
/// written makes them clean cached pages before the writer gets there. Only
/// an optimisation: if it fails or the pages are evicted, the writer reads.
fn bring_into_page_cache(file: &File, from: u64, to: u64) {
    let advice = rustix::fs::fadvise(
        file,
        from,
        std::num::NonZeroU64::new(to.saturating_sub(from)),
        rustix::fs::Advice::WillNeed,
    );
    if let Err(error) = advice {
        tracing::debug!(%error, "readahead of zeroed space failed");
    }
}

/// A static, page-aligned buffer of zeros for `O_DIRECT` writes.
fn aligned_zeros() -> &'static [u8] {
    #[repr(C, align(4096))]
    struct Page([u8; ZERO_PIECE as usize]);
    static ZEROS: Page = Page([0; ZERO_PIECE as usize]);
    &ZEROS.0
}

/// A file ready to become the next segment: its first bytes are zeroed and
/// durable; the writer writes the header when it rolls.
pub(crate) struct PreparedFile {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) zero: Arc<ZeroAhead>,
}

struct Control {
    state: Mutex<ControlState>,
    wake: Condvar,
    wake_requested: AtomicBool,
    /// Set while syncs are large and the tail is not zeroed: the writer
    /// then need not wake the preparer after every append.
    zeroing_paused: AtomicBool,
    /// Numbers the prepared files (`prealloc-N.tmp`), whoever creates them.
    next_id: AtomicU64,
}

struct ControlState {
    shutdown: bool,
    prepared: Option<PreparedFile>,
}

/// Handle to the preparer thread; stops and joins it when dropped.
pub(crate) struct Preparer {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Preparer {
    pub(crate) fn start(shared: Arc<Shared>, segment_size: u64) -> Result<Preparer, StorageError> {
        let control = Arc::new(Control {
            state: Mutex::new(ControlState {
                shutdown: false,
                prepared: None,
            }),
            wake: Condvar::new(),
            wake_requested: AtomicBool::new(true),
            zeroing_paused: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
        });
        let thread_control = control.clone();
        let thread = std::thread::Builder::new()
            .name("loglog-prealloc".into())
            .spawn(move || run(&thread_control, &shared, segment_size))
            .map_err(StorageError::io(
                "spawn the preallocation thread for",
                &PathBuf::new(),
            ))?;
        Ok(Preparer {
            control,
            thread: Some(thread),
        })
    }

    /// Whether zeroing ahead is paused (large syncs): waking the preparer
    /// for it would find nothing to do.
    pub(crate) fn zeroing_paused(&self) -> bool {
        self.control.zeroing_paused.load(Ordering::Acquire)
    }

    /// Asks the preparer to look for work. Cheap when it was already asked.
    pub(crate) fn wake(&self) {
        if !self.control.wake_requested.swap(true, Ordering::AcqRel) {
            let _state = lock(&self.control.state);
            self.control.wake.notify_one();
        }
    }

    /// Reserves (allocates) the first `len` bytes of the next segment file,
    /// creating that file now if none is prepared yet, so that the writes
    /// after the next roll cannot fail for lack of space (see
    /// [`crate::LogWriter::reserve`]).
    pub(crate) fn reserve_next(&self, dir: &Path, len: u64) -> Result<(), StorageError> {
        let mut state = lock(&self.control.state);
        if state.prepared.is_none() {
            let id = self.control.next_id.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("prealloc-{id}.tmp"));
            let file = create_file(&path)?;
            let zero = Arc::new(ZeroAhead::new(&file, 0));
            state.prepared = Some(PreparedFile { file, path, zero });
        }
        let prepared = state.prepared.as_ref().expect("set above");
        match reserve_space(&prepared.file, 0, len, true) {
            Ok(_) => Ok(()),
            Err(error) => Err(StorageError::io("reserve space in", &prepared.path)(error)),
        }
    }

    /// The prepared next segment file, if one is ready.
    pub(crate) fn take(&self) -> Option<PreparedFile> {
        let prepared = lock(&self.control.state).prepared.take();
        self.wake();
        prepared
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        lock(&self.control.state).shutdown = true;
        self.control.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Some(prepared) = lock(&self.control.state).prepared.take() {
            let _ = std::fs::remove_file(&prepared.path);
        }
    }
}

fn run(control: &Control, shared: &Shared, segment_size: u64) {
    let limit = (SEGMENT_HEADER_LEN as u64).saturating_add(segment_size);
    let first_zeroed = ZERO_AHEAD.min(limit);
    // The zeroing state of the last file prepared, which may already be the
    // tail: its first `first_zeroed` bytes are zeroed in steps.
    let mut preparing: Option<(Arc<ZeroAhead>, PathBuf)> = None;
    // Failures repeat every `ERROR_BACKOFF` while the disk is full: warn
    // once per run of failures.
    let mut warned = false;
    let mut sync_size = SyncSize::new(shared);
    let report = |warned: &mut bool, what: &str, error: StorageError| {
        if *warned {
            tracing::debug!(%error, "{what} failed again");
        } else {
            tracing::warn!(%error, "{what} failed; appends go on without preallocation");
            *warned = true;
        }
    };
    loop {
        control.wake_requested.store(false, Ordering::Release);
        let mut worked = false;
        let mut failed = false;

        // Zeroing ahead of the writer comes first: it is what the next
        // appends need.
        let tail = shared.tail();
        let write_position = tail.position(tail.end.load(Ordering::Acquire));
        let zeroing_pays = !sync_size.large(shared);
        control
            .zeroing_paused
            .store(!zeroing_pays, Ordering::Release);
        if zeroing_pays {
            match tail
                .zero
                .zero_step(&tail.path(), write_position, ZERO_PIECE, limit)
            {
                Ok(did) => worked |= did,
                Err(error) => {
                    report(&mut warned, "zeroing ahead of the writer", error);
                    failed = true;
                }
            }
        }

        if zeroing_pays && !failed && !worked {
            if let Some((zero, path)) = &preparing {
                // Once it is the tail, the step above takes care of it.
                if zero.zeroed() < first_zeroed && !Arc::ptr_eq(zero, &tail.zero) {
                    match zero.zero_step(path, 0, 0, first_zeroed) {
                        Ok(did) => worked |= did,
                        Err(error) => {
                            report(&mut warned, "zeroing the next segment file", error);
                            failed = true;
                        }
                    }
                }
            }
        }

        let needs_file = lock(&control.state).prepared.is_none();
        if needs_file && !failed && !worked {
            let id = control.next_id.fetch_add(1, Ordering::Relaxed);
            let path = shared.dir.join(format!("prealloc-{id}.tmp"));
            match create_file(&path) {
                Ok(file) => {
                    let zero = Arc::new(ZeroAhead::new(&file, 0));
                    preparing = Some((zero.clone(), path.clone()));
                    let mut state = lock(&control.state);
                    if state.shutdown {
                        drop(state);
                        let _ = std::fs::remove_file(&path);
                        return;
                    }
                    if state.prepared.is_some() {
                        // The writer made one meanwhile (`reserve_next`).
                        drop(state);
                        let _ = std::fs::remove_file(&path);
                    } else {
                        state.prepared = Some(PreparedFile { file, path, zero });
                        worked = true;
                    }
                }
                Err(error) => {
                    report(&mut warned, "preparing the next segment file", error);
                    failed = true;
                }
            }
        }

        if worked && !failed {
            warned = false;
        }
        let mut state = lock(&control.state);
        if state.shutdown {
            return;
        }
        if failed {
            let (_state, _) = control
                .wake
                .wait_timeout(state, ERROR_BACKOFF)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        } else if !worked && !zeroing_pays {
            // Nobody wakes us for zeroing now: look at the syncs again soon.
            let (_state, _) = control
                .wake
                .wait_timeout(state, SYNC_RECHECK)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        } else if !worked {
            while !state.shutdown && !control.wake_requested.load(Ordering::Acquire) {
                state = control
                    .wake
                    .wait(state)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        }
    }
}

/// Free space the log never takes (neither preallocation nor appends): it
/// is kept for the node's small state files (term and vote, checkpoints),
/// which are replaced whole (write a temporary file, rename). A node that
/// cannot save its term can neither vote nor start, so on a full disk the
/// log stops growing first.
pub const DISK_HEADROOM: u64 = 64 * 1024;

/// ENOSPC unless the filesystem of `file` has `len` bytes free on top of
/// [`DISK_HEADROOM`]. Filesystems that cannot tell pass.
pub(crate) fn check_headroom(file: &File, len: u64) -> std::io::Result<()> {
    match rustix::fs::fstatvfs(file) {
        Ok(stat)
            if stat.f_bavail.saturating_mul(stat.f_frsize) < len.saturating_add(DISK_HEADROOM) =>
        {
            Err(std::io::Error::from(rustix::io::Errno::NOSPC))
        }
        _ => Ok(()),
    }
}

/// Whether [`reserve_space`] reserved the range or the filesystem cannot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reserved {
    Yes,
    /// `fallocate` is not supported here: nothing is guaranteed.
    Unsupported,
}

/// Allocates file range `[from, from + len)` without changing the file's
/// size (`fallocate` with `KEEP_SIZE`): later writes into it need no new
/// space, so they cannot fail with ENOSPC (on filesystems that overwrite in
/// place; not on copy-on-write ones). Fails with ENOSPC (or EDQUOT) when
/// the space is not there, having written nothing; with `keep_headroom`,
/// also when it would leave less than [`DISK_HEADROOM`] free.
pub(crate) fn reserve_space(
    file: &File,
    from: u64,
    len: u64,
    keep_headroom: bool,
) -> std::io::Result<Reserved> {
    if len == 0 {
        return Ok(Reserved::Yes);
    }
    if keep_headroom {
        check_headroom(file, len)?;
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::KEEP_SIZE, from, len) {
        Ok(()) => Ok(Reserved::Yes),
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS) => Ok(Reserved::Unsupported),
        Err(errno) => Err(std::io::Error::from(errno)),
    }
}

fn create_file(path: &Path) -> Result<File, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(StorageError::io("create", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_never_land_below_the_writers_claim() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment");
        let file = create_file(&path).unwrap();
        let zero = ZeroAhead::new(&file, 0);
        let limit = 16 * ZERO_CHUNK;

        // The writer claims and writes 10000 bytes, past anything zeroed.
        zero.claim(0, 10_000);
        file.write_all_at(&[0xab; 10_000], 0).unwrap();
        assert!(zero.zero_step(&path, 10_000, 0, limit).unwrap());
        let zeroed = zero.zeroed();
        assert_eq!(zeroed, align_up(10_000) + ZERO_CHUNK);
        let mut data = vec![0u8; 10_000];
        file.read_exact_at(&mut data, 0).unwrap();
        assert!(data.iter().all(|&b| b == 0xab), "zeros landed on data");
        assert_eq!(file.metadata().unwrap().len(), zeroed);

        // Below `zeroed` the writer needs no claim; zeroing goes on above it.
        file.write_all_at(&[0xcd; 100], zeroed - 100).unwrap();
        zero.claim(zeroed - 100, zeroed);
        while zero.zero_step(&path, zeroed, 0, limit).unwrap() {}
        assert!(zero.zeroed() >= zeroed + ZERO_AHEAD - ZERO_CHUNK);
        let mut tail = [0u8; 100];
        file.read_exact_at(&mut tail, zeroed - 100).unwrap();
        assert_eq!(tail, [0xcd; 100]);

        // A cut lowers `zeroed` and zeroing resumes from the cut.
        zero.shrink(5000, || file.set_len(5000)).unwrap();
        assert_eq!(zero.zeroed(), 5000);
        assert!(zero.zero_step(&path, 5000, ZERO_PIECE, limit).unwrap());
        assert_eq!(zero.zeroed(), align_up(5000 + ZERO_PIECE) + ZERO_CHUNK);
        let mut data = vec![0u8; 5000];
        file.read_exact_at(&mut data, 0).unwrap();
        assert!(data.iter().all(|&b| b == 0xab));

        // Nothing past the limit, and nothing once retired.
        zero.retire();
        assert!(!zero.zero_step(&path, 5000, 0, limit).unwrap());
        assert!(!zero.enabled());
    }
}
