//! The crate's one error type.

use std::io;
use std::path::{Path, PathBuf};

use loglog_proto::segment::SegmentHeaderError;

/// `ENOSPC` on Linux.
const ENOSPC: i32 = 28;
/// `EDQUOT` on Linux.
const EDQUOT: i32 = 122;

/// Everything that can go wrong in storage. Messages name the file involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The offset lies below the log's start: those segments were trimmed.
    #[error("offset is below the log's start offset {start} (trimmed)")]
    Trimmed { start: u64 },
    /// The offset lies past the readable end of the log.
    #[error("offset is past the readable end {end}")]
    OutOfRange { end: u64 },
    /// The bytes at `offset` are not the start of a valid entry.
    #[error("offset {offset} is not an entry boundary")]
    NotEntryBoundary { offset: u64 },
    /// [`LogReader::read_at_most`](crate::LogReader::read_at_most): the
    /// entry at `offset` alone is larger than the read allows.
    #[error("the entry at offset {offset} is {entry_len} bytes, more than the read allows")]
    EntryLargerThanRead { offset: u64, entry_len: u64 },
    /// Bytes on disk that should be valid (below the recovered end, or a
    /// state file) are not.
    #[error("corrupt data in {} at log offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A segment file's header is damaged: this is not a torn tail, so
    /// recovery refuses to guess and leaves the data alone.
    #[error("bad segment header in {}: {source}", path.display())]
    BadSegmentHeader {
        path: PathBuf,
        #[source]
        source: SegmentHeaderError,
    },
    /// A segment or state file written by a newer (or unknown) format version.
    #[error("unsupported format version {found} in {}", path.display())]
    UnsupportedFormat { path: PathBuf, found: u32 },
    /// The segment files do not form one contiguous log.
    #[error("segments are not contiguous at {}: {reason}", path.display())]
    NotContiguous { path: PathBuf, reason: String },
    /// `append` was given bytes that are not whole encoded entries.
    #[error("invalid append: {reason}")]
    InvalidAppend { reason: String },
    /// An earlier write or fsync failed. After a failed fsync the kernel may
    /// have dropped dirty pages, so nothing written since the last good sync
    /// can be trusted: the node must restart and recover from disk.
    #[error("storage is unusable after an earlier failure (restart to recover): {reason}")]
    Poisoned {
        reason: String,
        /// The `errno` of the original failure, if it was a system error.
        errno: Option<i32>,
    },
}

impl StorageError {
    /// True when the disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        let errno = match self {
            StorageError::Io { source, .. } => source.raw_os_error(),
            StorageError::Poisoned { errno, .. } => *errno,
            _ => None,
        };
        matches!(errno, Some(ENOSPC) | Some(EDQUOT))
    }

    pub(crate) fn io(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
        let path = path.to_path_buf();
        move |source| StorageError::Io { op, path, source }
    }

    pub(crate) fn from_segment_header(path: &Path, source: SegmentHeaderError) -> StorageError {
        match source {
            SegmentHeaderError::UnsupportedVersion { found } => StorageError::UnsupportedFormat {
                path: path.to_path_buf(),
                found,
            },
            source => StorageError::BadSegmentHeader {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// The `errno` behind this error, for poisoning.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            StorageError::Io { source, .. } => source.raw_os_error(),
            StorageError::Poisoned { errno, .. } => *errno,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_is_recognised() {
        let full = StorageError::Io {
            op: "write",
            path: PathBuf::from("/x"),
            source: io::Error::from_raw_os_error(ENOSPC),
        };
        assert!(full.is_disk_full());
        let quota = StorageError::Poisoned {
            reason: "x".into(),
            errno: Some(EDQUOT),
        };
        assert!(quota.is_disk_full());
        let other = StorageError::Io {
            op: "write",
            path: PathBuf::from("/x"),
            source: io::Error::from_raw_os_error(5),
        };
        assert!(!other.is_disk_full());
        assert!(other.to_string().contains("/x"));
    }
}
