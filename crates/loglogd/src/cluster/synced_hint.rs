//! `<data-dir>/raft.synced`: the log's synced end as of the last fsync,
//! for finding synced entries lost to disk damage after a process crash.
//!
//! `raft.durable` keeps a lower bound of the synced end that is saved
//! durably but lazily (with the checkpoint), so synced, perhaps
//! acknowledged, bytes lost within its lag went unnoticed: a node that lost
//! entries it helped commit could then vote for a leader lacking them. This
//! file closes that gap for crashes that keep the page cache (a killed or
//! crashed process, which is most crashes): after every fsync of the log
//! the syncer rewrites it in place, without an fsync of its own, so it
//! costs one small write per fsync round. After a power loss it holds some
//! earlier value, never more than was synced: it is written only after the
//! fsync that made its value true, and lowered durably before the log is
//! cut below it (a conflicting suffix removed, a reset), so a restart never
//! takes a legitimately shorter log for damage.
//!
//! The contents are a state file (`loglog_storage::state_file`, whose
//! framing is checked on load) holding the offset as u64 little endian. A
//! damaged or missing file is ignored with a warning: it only sharpens the
//! `raft.durable` bound.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use loglog_storage::{state_file, LogSyncer, StorageError};

/// The file's name in the data directory.
pub const SYNCED_HINT_FILE: &str = "raft.synced";

/// Writer of [`SYNCED_HINT_FILE`] (see the module docs).
pub(crate) struct SyncedHint {
    file: File,
    path: PathBuf,
    syncer: LogSyncer,
    /// The cap set while the log is being cut below the synced end, so that
    /// a record racing with the cut never writes an offset about to go. The
    /// lock also orders writers (the syncer thread, the driver), each of
    /// which reads the synced end while holding it.
    ceiling: Mutex<Option<u64>>,
    /// Whether a failed record was logged: once per run of failures, not
    /// after every fsync.
    failing: AtomicBool,
}

impl SyncedHint {
    /// Opens (creating) the file and records the current synced end.
    pub(crate) fn open(data_dir: &Path, syncer: LogSyncer) -> io::Result<SyncedHint> {
        let path = data_dir.join(SYNCED_HINT_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        let hint = SyncedHint {
            file,
            path,
            syncer,
            ceiling: Mutex::new(None),
            failing: AtomicBool::new(false),
        };
        hint.record();
        Ok(hint)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.ceiling
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, synced_end: u64) -> io::Result<()> {
        // Fixed size: rewriting it changes no file metadata.
        self.file
            .write_all_at(&state_file::frame(&synced_end.to_le_bytes()), 0)
    }

    /// Records the log's synced end (after an fsync). No fsync: see the
    /// module docs. A failure is logged (once until a record succeeds
    /// again); it only loses precision.
    pub(crate) fn record(&self) {
        let ceiling = self.lock();
        let synced_end = self.syncer.durable_offset();
        let value = ceiling.map_or(synced_end, |cap| cap.min(synced_end));
        match self.write(value) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(path = %self.path.display(), "recording the synced end works again");
                }
            }
            Err(error) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), %error, "cannot record the synced end; a crash with disk damage may then go unnoticed");
                }
            }
        }
    }

    /// Before the log is cut to `offset`: caps every record at `offset`
    /// and writes that durably, so a restart after the cut sees no loss.
    pub(crate) fn cap_before_cut(&self, offset: u64) -> Result<(), StorageError> {
        let mut ceiling = self.lock();
        *ceiling = Some(offset);
        let value = self.syncer.durable_offset().min(offset);
        self.write(value)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| StorageError::Io {
                op: "saving the synced end",
                path: self.path.clone(),
                source,
            })
    }

    /// After the cut: records go on from the new synced end.
    pub(crate) fn cut_done(&self) {
        *self.lock() = None;
        self.record();
    }
}

/// The synced end the previous process recorded in `data_dir`; `None` when
/// there is no record or it is damaged (logged).
pub fn load(data_dir: &Path) -> Option<u64> {
    let path = data_dir.join(SYNCED_HINT_FILE);
    match state_file::load(&path) {
        Ok(Some(payload)) => match <[u8; 8]>::try_from(payload.as_slice()) {
            Ok(bytes) => Some(u64::from_le_bytes(bytes)),
            Err(_) => {
                tracing::warn!(path = %path.display(), len = payload.len(), "ignoring a synced-end record of the wrong length");
                None
            }
        },
        Ok(None) => None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring a damaged synced-end record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None, "no record yet");
        let storage = loglog_storage::StorageConfig::new(dir.path().join("log"));
        let (mut writer, syncer, _reader) = loglog_storage::open(storage).unwrap();
        let hint = SyncedHint::open(dir.path(), syncer.clone()).unwrap();
        assert_eq!(load(dir.path()), Some(0));

        let mut entry = Vec::new();
        loglog_proto::entry::encode_entry(
            1,
            loglog_proto::entry::EntryKind::Data,
            b"x",
            &mut entry,
        );
        let end = writer.append(&entry).unwrap();
        hint.record();
        assert_eq!(load(dir.path()), Some(0), "written but not synced");
        assert_eq!(syncer.sync().unwrap(), end);
        hint.record();
        assert_eq!(load(dir.path()), Some(end));

        // A cut: capped durably first; a record racing with it stays below.
        hint.cap_before_cut(0).unwrap();
        assert_eq!(load(dir.path()), Some(0));
        hint.record();
        assert_eq!(load(dir.path()), Some(0), "capped while the cut runs");
        writer.truncate_suffix(0).unwrap();
        hint.cut_done();
        assert_eq!(load(dir.path()), Some(syncer.durable_offset()));

        std::fs::write(dir.path().join(SYNCED_HINT_FILE), b"garbage").unwrap();
        assert_eq!(load(dir.path()), None, "damage is ignored");
    }
}
