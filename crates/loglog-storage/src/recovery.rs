//! Opening a log directory: finding the segments, checking that they form
//! one contiguous log, and finding the end of the tail.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use loglog_proto::entry::{
    EntryError, EntryHeader, EntryIter, ENTRY_HEADER_LEN, MAX_PAYLOAD_LIMIT,
};
use loglog_proto::segment::{
    parse_segment_file_name, segment_file_name, SegmentHeader, SEGMENT_HEADER_LEN,
};

use crate::log::{create_segment, Segment, Shared};
use crate::prealloc::ZeroAhead;
use crate::{FsyncPolicy, StorageConfig, StorageError};

/// Bytes read per step while scanning the tail segment.
const SCAN_CHUNK: u64 = 1024 * 1024;

/// Recovers the log in `config.dir` (creating an empty one if there is none).
///
/// Returns the shared state and the writer's lock on the directory: an
/// exclusive `flock` held for the writer's life, so that a second writer (in
/// this process or another) cannot recover, and so cut, a log in use.
pub(crate) fn recover(config: &StorageConfig) -> Result<(Shared, File), StorageError> {
    let dir = &config.dir;
    fs::create_dir_all(dir).map_err(StorageError::io("create directory", dir))?;
    let writer_lock = File::open(dir).map_err(StorageError::io("open directory", dir))?;
    rustix::fs::flock(
        &writer_lock,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .map_err(|errno| {
        StorageError::io("lock (is another writer using this log?)", dir)(errno.into())
    })?;
    let dir_file = File::open(dir).map_err(StorageError::io("open directory", dir))?;
    let fsync_dir = |dir_file: &File| -> Result<(), StorageError> {
        if config.fsync == FsyncPolicy::Always {
            dir_file
                .sync_all()
                .map_err(StorageError::io("fsync directory", dir))?;
        }
        Ok(())
    };

    let mut starts = Vec::new();
    let mut removed_temp_files = false;
    for entry in fs::read_dir(dir).map_err(StorageError::io("list directory", dir))? {
        let entry = entry.map_err(StorageError::io("list directory", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if is_own_temporary_file(name) {
            // A segment whose roll never became durable, or a preallocated
            // file: neither holds durable data (see the crate docs).
            let path = entry.path();
            tracing::info!(path = %path.display(), "removing leftover temporary file");
            fs::remove_file(&path).map_err(StorageError::io("remove", &path))?;
            removed_temp_files = true;
        } else if let Some(start) = parse_segment_file_name(name) {
            starts.push(start);
        }
    }
    if removed_temp_files {
        fsync_dir(&dir_file)?;
    }
    starts.sort_unstable();

    if starts.is_empty() {
        let segment = create_segment(dir, config.fsync, 0)?;
        if config.fsync == FsyncPolicy::Always {
            segment
                .file
                .sync_data()
                .map_err(StorageError::io("fdatasync", &segment.path()))?;
        }
        segment.rename_to_final()?;
        fsync_dir(&dir_file)?;
        let shared = Shared::new(
            dir.clone(),
            dir_file,
            config.fsync,
            config.max_payload,
            vec![segment],
            0,
        );
        return Ok((shared, writer_lock));
    }

    let mut segments = Vec::with_capacity(starts.len());
    for (index, &start) in starts.iter().enumerate() {
        let path = dir.join(segment_file_name(start));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(StorageError::io("open", &path))?;
        let file_len = file
            .metadata()
            .map_err(StorageError::io("stat", &path))?
            .len();
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let header_len = header.len().min(file_len as usize);
        file.read_exact_at(&mut header[..header_len], 0)
            .map_err(StorageError::io("read", &path))?;
        let header = SegmentHeader::decode(&header[..header_len])
            .map_err(|error| StorageError::from_segment_header(&path, error))?;
        if header.start_offset != start {
            return Err(StorageError::NotContiguous {
                path,
                reason: format!(
                    "the file name says the segment starts at {start}, its header says {}",
                    header.start_offset
                ),
            });
        }
        let data_len = file_len - SEGMENT_HEADER_LEN as u64;
        if start.checked_add(data_len).is_none() {
            return Err(StorageError::Corrupt {
                path,
                offset: start,
                reason: "the segment would run past the largest log offset".into(),
            });
        }
        let end = match starts.get(index + 1) {
            // A non-tail segment ends where the next begins: it was fully
            // fsynced before the next one got its name.
            Some(&next_start) => {
                if start + data_len < next_start {
                    return Err(StorageError::NotContiguous {
                        path,
                        reason: format!(
                            "the segment holds {data_len} bytes of log but the next segment starts at {next_start}"
                        ),
                    });
                }
                next_start
            }
            None => {
                let end = scan(&file, &path, start, data_len)?;
                let valid_len = SEGMENT_HEADER_LEN as u64 + (end - start);
                if valid_len < file_len {
                    tracing::info!(
                        path = %path.display(),
                        end,
                        removed = file_len - valid_len,
                        "truncating the tail segment after its last valid entry"
                    );
                    file.set_len(valid_len)
                        .map_err(StorageError::io("truncate", &path))?;
                }
                // What recovery found counts as durable from now on.
                if config.fsync == FsyncPolicy::Always {
                    file.sync_all().map_err(StorageError::io("fsync", &path))?;
                }
                end
            }
        };
        let is_tail = index + 1 == starts.len();
        let written = SEGMENT_HEADER_LEN as u64 + (end - start);
        let zero = if is_tail && config.fsync == FsyncPolicy::Always {
            ZeroAhead::new(&file, written)
        } else {
            ZeroAhead::disabled(written)
        };
        segments.push(Arc::new(Segment::new(
            start,
            end,
            file,
            path.clone(),
            path,
            Arc::new(zero),
        )));
    }
    let end = segments
        .last()
        .expect("at least one segment")
        .end
        .load(std::sync::atomic::Ordering::Acquire);
    let shared = Shared::new(
        dir.clone(),
        dir_file,
        config.fsync,
        config.max_payload,
        segments,
        end,
    );
    Ok((shared, writer_lock))
}

/// Temporary files this crate makes in the log directory: prepared files
/// (`prealloc-N.tmp`) and segments created without preallocation
/// (`<segment name>.tmp`). Other files are left alone.
fn is_own_temporary_file(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".tmp") else {
        return false;
    };
    let prepared = stem
        .strip_prefix("prealloc-")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()));
    prepared || parse_segment_file_name(stem).is_some()
}

/// Walks the entries of a tail segment and returns the log offset just past
/// the last valid one. The first torn, corrupt or zeroed entry is the end.
///
/// Any length the format can describe is accepted, not just the configured
/// append limit: an entry appended under a larger limit is still the log.
/// What makes an entry valid is that the file holds all of it and its CRC
/// matches. Memory stays bounded by [`SCAN_CHUNK`]: an entry larger than a
/// chunk is checked piece by piece ([`large_entry_is_valid`]).
fn scan(file: &File, path: &Path, start: u64, data_len: u64) -> Result<u64, StorageError> {
    let mut valid = 0u64;
    let mut buffer = Vec::new();
    // Bytes the next read must cover to hold the entry that did not fit.
    let mut need = 0u64;
    while valid < data_len {
        let remaining = data_len - valid;
        let chunk = remaining.min(SCAN_CHUNK.max(need));
        buffer.resize(chunk as usize, 0);
        file.read_exact_at(&mut buffer, SEGMENT_HEADER_LEN as u64 + valid)
            .map_err(StorageError::io("read", path))?;
        let mut iter = EntryIter::new(&buffer, start + valid, MAX_PAYLOAD_LIMIT);
        let error = iter.by_ref().find_map(Result::err);
        let consumed = iter.offset() - (start + valid);
        valid += consumed;
        need = 0;
        match error {
            None => {}
            // The entry continues past this buffer but not past the file.
            Some(EntryError::Truncated { needed, .. })
                if chunk < remaining && needed <= remaining - consumed =>
            {
                if needed <= SCAN_CHUNK {
                    need = needed;
                } else if large_entry_is_valid(file, path, valid, needed)? {
                    valid += needed;
                } else {
                    tracing::info!(path = %path.display(), offset = start + valid, "end of the valid log: CRC mismatch of a large entry");
                    break;
                }
            }
            Some(error) => {
                tracing::info!(path = %path.display(), offset = start + valid, %error, "end of the valid log");
                break;
            }
        }
    }
    Ok(start + valid)
}

/// Whether the `entry_len` bytes at data position `at` of a segment, which
/// the file holds, are one entry whose CRC matches. Reads them in
/// [`SCAN_CHUNK`] pieces.
fn large_entry_is_valid(
    file: &File,
    path: &Path,
    at: u64,
    entry_len: u64,
) -> Result<bool, StorageError> {
    let position = SEGMENT_HEADER_LEN as u64 + at;
    let mut header = [0u8; ENTRY_HEADER_LEN];
    file.read_exact_at(&mut header, position)
        .map_err(StorageError::io("read", path))?;
    let Ok(header) = EntryHeader::decode(&header, MAX_PAYLOAD_LIMIT) else {
        return Ok(false);
    };
    debug_assert_eq!(
        header.entry_len(),
        entry_len,
        "the scan decoded this header"
    );
    let mut crc = header.compute_crc(&[]);
    let mut piece = vec![0u8; SCAN_CHUNK as usize];
    let mut read = ENTRY_HEADER_LEN as u64;
    while read < entry_len {
        let len = (entry_len - read).min(SCAN_CHUNK) as usize;
        file.read_exact_at(&mut piece[..len], position + read)
            .map_err(StorageError::io("read", path))?;
        crc = crc32c::crc32c_append(crc, &piece[..len]);
        read += len as u64;
    }
    Ok(crc == header.crc)
}
