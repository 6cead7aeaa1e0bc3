//! Test-only power-cut emulation (`--test-unsynced-lost-on-kill`).
//!
//! SIGKILL keeps the page cache, so a node killed by a test keeps every
//! byte it wrote, synced or not: a bug that counts bytes durable before
//! their fsync would go unseen. With this switch the node records, after
//! every fsync and every truncation, the exact end of its synced log in
//! [`MARK_FILE`]; the next start first drops every log byte past that mark,
//! as a power cut would have. Dropping unsynced bytes is always legal (a
//! correct node never promised them), so the switch cannot make a correct
//! node lose an acknowledged append; it only makes the fault real.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use loglog_proto::segment::{parse_segment_file_name, SEGMENT_HEADER_LEN};
use loglog_storage::LogSyncer;

/// The synced end of the log, u64 little endian, inside the data directory.
pub const MARK_FILE: &str = "test-synced-end.mark";

/// Where a node records its synced end (see the module docs).
pub(crate) struct SyncedMark {
    file: File,
    path: PathBuf,
    syncer: LogSyncer,
    /// Serializes writers (the syncer thread and the driver's truncations),
    /// each of which reads the current synced end while holding it, so the
    /// last write is never an older value.
    lock: Mutex<()>,
}

impl SyncedMark {
    pub(crate) fn open(data_dir: &Path, syncer: LogSyncer) -> io::Result<SyncedMark> {
        let path = data_dir.join(MARK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        Ok(SyncedMark {
            file,
            path,
            syncer,
            lock: Mutex::new(()),
        })
    }

    /// Records the log's synced end. No fsync: the mark only has to
    /// survive SIGKILL, which keeps the page cache.
    pub(crate) fn record(&self) {
        self.record_with(|| self.syncer.durable_offset());
    }

    /// Records `synced_end()`, read under the lock.
    fn record_with(&self, synced_end: impl FnOnce() -> u64) {
        let _order = self
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let end = synced_end();
        if let Err(error) = self.file.write_all_at(&end.to_le_bytes(), 0) {
            tracing::error!(path = %self.path.display(), %error, "cannot record the synced end");
        }
    }
}

/// Drops every byte of the log in `log_dir` past the mark the previous
/// process left in `data_dir` (none: nothing to drop). Returns the mark.
pub fn drop_unsynced(data_dir: &Path, log_dir: &Path) -> io::Result<Option<u64>> {
    let mark = match fs::read(data_dir.join(MARK_FILE)) {
        Ok(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(bytes) => u64::from_le_bytes(bytes),
            Err(_) => return Ok(None),
        },
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    match fs::read_dir(log_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name();
                if let Some(start) = name.to_str().and_then(parse_segment_file_name) {
                    segments.push((start, entry.path()));
                }
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Some(mark)),
        Err(error) => return Err(error),
    }
    segments.sort();
    let holding_mark = segments.iter().rposition(|(start, _)| *start <= mark);
    for (index, (start, path)) in segments.iter().enumerate() {
        if *start > mark {
            fs::remove_file(path)?;
            tracing::warn!(path = %path.display(), mark, "power-cut emulation: removed an unsynced segment");
        } else if Some(index) == holding_mark {
            let file = OpenOptions::new().write(true).open(path)?;
            // A damaged mark near u64::MAX keeps everything (no overflow).
            let keep = (SEGMENT_HEADER_LEN as u64).saturating_add(mark - start);
            if file.metadata()?.len() > keep {
                file.set_len(keep)?;
                file.sync_all()?;
                tracing::warn!(path = %path.display(), mark, "power-cut emulation: dropped unsynced bytes");
            }
        }
    }
    File::open(log_dir)?.sync_all()?;
    Ok(Some(mark))
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::segment::segment_file_name;

    #[test]
    fn drops_bytes_and_segments_past_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::create_dir(&log).unwrap();
        let header = vec![7u8; SEGMENT_HEADER_LEN];
        let first = log.join(segment_file_name(0));
        fs::write(&first, [header.clone(), vec![1u8; 100]].concat()).unwrap();
        let second = log.join(segment_file_name(100));
        fs::write(&second, [header.clone(), vec![2u8; 50]].concat()).unwrap();
        let third = log.join(segment_file_name(150));
        fs::write(&third, [header, vec![3u8; 50]].concat()).unwrap();

        assert_eq!(
            drop_unsynced(dir.path(), &log).unwrap(),
            None,
            "no mark yet"
        );
        let storage = loglog_storage::StorageConfig::new(dir.path().join("other-log"));
        let (_writer, syncer, _reader) = loglog_storage::open(storage).unwrap();
        let mark = SyncedMark::open(dir.path(), syncer).unwrap();
        mark.record_with(|| 120);
        assert_eq!(drop_unsynced(dir.path(), &log).unwrap(), Some(120));

        assert_eq!(
            fs::metadata(&first).unwrap().len(),
            132,
            "below the mark: kept"
        );
        assert_eq!(
            fs::metadata(&second).unwrap().len(),
            SEGMENT_HEADER_LEN as u64 + 20,
            "cut at the mark"
        );
        assert!(!third.exists(), "starts past the mark: removed");
    }

    /// The mark file is read back from disk: a damaged one holding an
    /// offset near u64::MAX keeps the whole log instead of overflowing.
    #[test]
    fn a_mark_near_the_largest_offset_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::create_dir(&log).unwrap();
        let segment = log.join(segment_file_name(0));
        fs::write(&segment, vec![7u8; SEGMENT_HEADER_LEN + 100]).unwrap();
        fs::write(dir.path().join(MARK_FILE), u64::MAX.to_le_bytes()).unwrap();
        assert_eq!(drop_unsynced(dir.path(), &log).unwrap(), Some(u64::MAX));
        assert_eq!(
            fs::metadata(&segment).unwrap().len(),
            SEGMENT_HEADER_LEN as u64 + 100
        );
    }
}
