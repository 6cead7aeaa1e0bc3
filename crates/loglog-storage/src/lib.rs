//! LogLog's segment files: append, group commit, recovery, truncate, trim.
//!
//! (Design notes: see the sections below.)

mod error;
mod log;
mod prealloc;
mod recovery;
pub mod state_file;

use std::path::PathBuf;
use std::sync::Arc;

pub use crate::error::StorageError;
pub use crate::log::{LogReader, LogSyncer, LogWriter, ReadChunk, MAX_READ_BYTES};

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
    /// Entries with larger payloads are rejected, or treated as corrupt on disk.
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
    let shared = Arc::new(recovery::recover(&config)?);
    let writer = LogWriter::new(
        shared.clone(),
        config.segment_size,
        preallocation == Preallocation::ZeroAhead,
    );
    Ok((
        writer,
        LogSyncer::new(shared.clone()),
        LogReader::new(shared),
    ))
}
