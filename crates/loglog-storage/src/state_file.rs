//! Small durable state (Raft term and vote, a commit lower bound, the cluster
//! id), replaced atomically.
//!
//! `save` writes `<path>.tmp`, fsyncs it, renames it over `path` and fsyncs
//! the directory, so after a crash `path` holds either the old or the new
//! contents, never a mix. The file is framed so that damage is a typed error
//! rather than silently wrong state:
//!
//! ```text
//! 0..8    magic    b"LOGLOGST"
//! 8..12   version  1
//! 12..16  length   of the payload
//! 16..    payload
//! last 4  crc      CRC32C of everything before it
//! ```
//!
//! **Full disk.** A node that cannot save its term can neither vote nor
//! start, and the disk may be filled by someone else than the log. So a
//! data directory keeps a spare file ([`SPARE_FILE`], [`SPARE_BYTES`]
//! allocated, made by [`ensure_spare`]); a `save` that fails for lack of
//! space deletes it and tries once more.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::StorageError;

const MAGIC: [u8; 8] = *b"LOGLOGST";
const VERSION: u32 = 1;
const PREFIX_LEN: usize = 16;
const CRC_LEN: usize = 4;
/// State files are small by design; a larger one is refused, which bounds
/// the buffer `load` allocates.
pub const MAX_STATE_LEN: usize = 1024 * 1024;

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Name of the spare file in a state file's directory (see the module docs).
pub const SPARE_FILE: &str = "space.spare";
/// Size of the spare file: room for several state files saved at once.
pub const SPARE_BYTES: u64 = 256 * 1024;

/// Makes sure `dir` holds the spare file (allocated, durable). Returns
/// whether it was created now. Fails when there is no room for it.
pub fn ensure_spare(dir: &Path) -> Result<bool, StorageError> {
    let spare = dir.join(SPARE_FILE);
    if spare.exists() {
        return Ok(false);
    }
    let temp = temp_path(&spare);
    let result = (|| {
        let file = File::create(&temp).map_err(StorageError::io("create", &temp))?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, SPARE_BYTES)
            .map_err(|errno| StorageError::io("allocate", &temp)(io::Error::from(errno)))?;
        file.sync_all().map_err(StorageError::io("fsync", &temp))?;
        fs::rename(&temp, &spare).map_err(StorageError::io("rename", &temp))?;
        File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(StorageError::io("fsync directory", dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map(|()| true)
}

/// Atomically replaces the file at `path` with `bytes` (durably: the call
/// returns after the new contents and the directory entry are fsynced).
/// On a full disk the directory's spare file is given up for it (module
/// docs).
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    match save_once(path, bytes) {
        Err(error) if error.is_disk_full() => {
            let spare = parent_dir(path).join(SPARE_FILE);
            if fs::remove_file(&spare).is_err() {
                return Err(error);
            }
            tracing::warn!(%error, path = %path.display(), "disk full: the spare space goes to this state file");
            save_once(path, bytes)
        }
        result => result,
    }
}

fn save_once(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    if bytes.len() > MAX_STATE_LEN {
        return Err(StorageError::InvalidAppend {
            reason: format!(
                "state of {} bytes exceeds the {MAX_STATE_LEN}-byte limit of a state file",
                bytes.len()
            ),
        });
    }
    let framed = frame(bytes);
    let temp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(StorageError::io("create", &temp))?;
    file.write_all(&framed)
        .map_err(StorageError::io("write", &temp))?;
    file.sync_all().map_err(StorageError::io("fsync", &temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(StorageError::io("rename", &temp))?;
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StorageError::io("fsync directory", dir))?;
    Ok(())
}

/// `bytes` framed as a state file holds them (module docs), for a caller
/// that rewrites a fixed-size state in place instead of [`save`] (what
/// [`load`] reads back either way). `bytes` must be at most
/// [`MAX_STATE_LEN`].
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    assert!(bytes.len() <= MAX_STATE_LEN, "state files are small");
    let mut framed = Vec::with_capacity(PREFIX_LEN + bytes.len() + CRC_LEN);
    framed.extend_from_slice(&MAGIC);
    framed.extend_from_slice(&VERSION.to_le_bytes());
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(bytes);
    let crc = crc32c::crc32c(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    framed
}

/// Deletes the state saved at `path`, durably (the directory is fsynced);
/// nothing to delete is fine.
pub fn remove(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(StorageError::io("remove", path)(error)),
    }
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(StorageError::io("fsync directory", dir))
}

/// Reads the state saved at `path`: `None` when there is none yet, a typed
/// error when the file is damaged or of an unknown version.
pub fn load(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::io("open", path)(error)),
    };
    let mut framed = Vec::new();
    // Read at most one byte more than the largest valid file, so an
    // oversized file is detected without reading all of it.
    let max_file_len = (PREFIX_LEN + MAX_STATE_LEN + CRC_LEN) as u64;
    file.take(max_file_len + 1)
        .read_to_end(&mut framed)
        .map_err(StorageError::io("read", path))?;
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        reason,
    };
    if framed.len() < PREFIX_LEN + CRC_LEN {
        return Err(corrupt(format!(
            "state file truncated: {} bytes",
            framed.len()
        )));
    }
    if framed.len() as u64 > max_file_len {
        return Err(corrupt("state file larger than the limit".into()));
    }
    if framed[0..8] != MAGIC {
        return Err(corrupt("not a LogLog state file (bad magic)".into()));
    }
    let (body, crc_bytes) = framed.split_at(framed.len() - CRC_LEN);
    let stored_crc = u32::from_le_bytes([crc_bytes[0], crc_bytes[1], crc_bytes[2], crc_bytes[3]]);
    if crc32c::crc32c(body) != stored_crc {
        return Err(corrupt("state file checksum mismatch".into()));
    }
    let version = u32::from_le_bytes([body[8], body[9], body[10], body[11]]);
    if version != VERSION {
        return Err(StorageError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let len = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    let payload = &body[PREFIX_LEN..];
    if payload.len() != len {
        return Err(corrupt(format!(
            "state file length field says {len} bytes, file holds {}",
            payload.len()
        )));
    }
    Ok(Some(payload.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spare_file_is_set_aside_once() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ensure_spare(dir.path()).unwrap());
        let spare = dir.path().join(SPARE_FILE);
        assert_eq!(fs::metadata(&spare).unwrap().len(), SPARE_BYTES);
        assert!(!ensure_spare(dir.path()).unwrap(), "already there");
        // An ordinary save leaves it alone (only a full disk takes it).
        save(&dir.path().join("state"), b"x").unwrap();
        assert!(spare.exists());
        assert!(!dir.path().join("space.spare.tmp").exists());
    }

    #[test]
    fn save_load_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.state");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, b"term 1").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"term 1"[..]));
        save(&path, b"term 22, vote 3").unwrap();
        assert_eq!(
            load(&path).unwrap().as_deref(),
            Some(&b"term 22, vote 3"[..])
        );
        save(&path, b"").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b""[..]));
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn damage_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.state");
        save(&path, b"some state").unwrap();
        let good = fs::read(&path).unwrap();
        for cut in 0..good.len() {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(
                matches!(load(&path), Err(StorageError::Corrupt { .. })),
                "cut at {cut}"
            );
        }
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            fs::write(&path, &bad).unwrap();
            assert!(load(&path).is_err(), "bit {bit}");
        }
        // A future version with a valid checksum.
        let mut future = good.clone();
        future[8] = 2;
        let body_len = future.len() - CRC_LEN;
        let crc = crc32c::crc32c(&future[..body_len]);
        future[body_len..].copy_from_slice(&crc.to_le_bytes());
        fs::write(&path, &future).unwrap();
        assert!(matches!(
            load(&path),
            Err(StorageError::UnsupportedFormat { found: 2, .. })
        ));
    }

    #[test]
    fn a_leftover_temp_file_is_ignored_and_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.state");
        fs::write(temp_path(&path), b"torn garbage").unwrap();
        assert_eq!(load(&path).unwrap(), None);
        save(&path, b"new").unwrap();
        assert_eq!(load(&path).unwrap().as_deref(), Some(&b"new"[..]));
    }
}
