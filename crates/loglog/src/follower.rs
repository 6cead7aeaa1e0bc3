//! State machines that follow the log.
//!
//! An application keeps its state (a key-value map, an index, ...) as a
//! [`StateMachine`] that applies the log's data entries in order. A
//! [`Follower`] drives it: it reads the log from the first entry not yet
//! applied, long-polls at the tail, and now and then saves a snapshot of the
//! state **together with the offset it covers** in one file, replaced
//! atomically (write a temporary file, fsync it, rename it over the old one,
//! fsync the directory).
//!
//! Exactly-once application across crashes follows from that one file: the
//! state in memory is never persisted on its own, so after a crash the state
//! machine is restored from the snapshot and the log is read again from the
//! snapshot's offset. Entries applied after the last snapshot were applied
//! to a state that died with the process; they are applied once more to the
//! restored state, which has never seen them. Nothing is skipped either:
//! the offset is always an entry boundary just past the last applied entry.
//!
//! Reads go to any node (they return its committed prefix), so a leader
//! change is a connection error that the [`crate::Client`] recovers from by
//! reconnecting to the next node of the cluster; [`Follower::run`] retries
//! such transient errors with a bounded backoff. A log trimmed above the
//! follower's position is not transient: it is [`FollowerError::Trimmed`],
//! and the state can only be rebuilt from a snapshot taken elsewhere.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use loglog_proto::wire::ServerError;

use crate::client::Client;
use crate::error::Error;
use crate::page::Entry;

/// The state an application builds from the log.
pub trait StateMachine {
    /// Applies one data entry (at `entry.offset`). Entries come in log
    /// order, each exactly once per state. An error stops the follower
    /// before the entry counts as applied.
    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError>;

    /// The whole state as bytes, to be restored by [`StateMachine::restore`].
    fn snapshot(&self) -> Vec<u8>;

    /// Replaces the state by the one `snapshot` holds.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), ApplyError>;
}

/// An application's own error from [`StateMachine::apply`] or `restore`.
pub type ApplyError = Box<dyn std::error::Error + Send + Sync>;

/// Why a follower stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowerError {
    /// The log's start offset moved past the follower's position: the
    /// entries it still needs were trimmed away.
    #[error("the log is trimmed up to offset {start}, past this follower's position {position}")]
    Trimmed { position: u64, start: u64 },
    /// A client call failed (and, in [`Follower::run`], was not transient).
    #[error(transparent)]
    Client(#[from] Error),
    /// The state machine refused an entry or a snapshot.
    #[error("state machine failed at offset {offset}: {source}")]
    Apply {
        offset: u64,
        #[source]
        source: ApplyError,
    },
    /// Reading or writing the snapshot file failed.
    #[error("snapshot file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The snapshot file is not one this library wrote (bad magic, version,
    /// length or checksum).
    #[error("snapshot file {path} is corrupt: {reason}")]
    CorruptSnapshot { path: PathBuf, reason: String },
}

/// Tunables of a [`Follower`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerConfig {
    /// Save a snapshot after this many applied entries (0: only when asked).
    pub snapshot_every_entries: u64,
    /// Bytes asked for by each read.
    pub page_bytes: u32,
    /// How long each read waits at the tail.
    pub long_poll: Duration,
    /// Longest pause between retries of a transient error.
    pub max_backoff: Duration,
    /// How long [`Follower::catch_up_to`] and [`Follower::sync_linearizable`]
    /// retry transient errors (a leader change takes an election) before
    /// returning the last one.
    pub retry_for: Duration,
}

impl Default for FollowerConfig {
    fn default() -> FollowerConfig {
        FollowerConfig {
            snapshot_every_entries: 10_000,
            page_bytes: crate::DEFAULT_PAGE_BYTES,
            long_poll: crate::DEFAULT_LONG_POLL,
            max_backoff: Duration::from_secs(2),
            retry_for: Duration::from_secs(30),
        }
    }
}

/// Name of the snapshot file in the follower's directory.
pub const SNAPSHOT_FILE: &str = "snapshot";
const SNAPSHOT_MAGIC: [u8; 4] = *b"LLFS";
const SNAPSHOT_VERSION: u8 = 1;
/// magic 4, version 1, reserved 3, offset 8, length 8.
const SNAPSHOT_HEADER_LEN: usize = 24;
const SNAPSHOT_CRC_LEN: usize = 4;

/// Drives a [`StateMachine`] along the log; see the module documentation.
pub struct Follower<S> {
    state: S,
    /// Offset of the next entry to apply: every data entry below it is in
    /// `state`. Always an entry boundary.
    position: u64,
    /// Offset covered by the snapshot on disk.
    snapshot_position: u64,
    applied_since_snapshot: u64,
    directory: PathBuf,
    config: FollowerConfig,
}

impl<S: StateMachine> Follower<S> {
    /// Opens the follower whose snapshot lives in `directory` (created if
    /// missing): restores `state` from the snapshot when there is one, else
    /// starts `state` as given at offset 0.
    pub fn open(
        directory: impl Into<PathBuf>,
        mut state: S,
        config: FollowerConfig,
    ) -> Result<Follower<S>, FollowerError> {
        let directory = directory.into();
        fs::create_dir_all(&directory).map_err(|source| FollowerError::Io {
            path: directory.clone(),
            source,
        })?;
        let path = directory.join(SNAPSHOT_FILE);
        let position = match read_snapshot(&path)? {
            Some((position, snapshot)) => {
                state
                    .restore(&snapshot)
                    .map_err(|source| FollowerError::Apply {
                        offset: position,
                        source,
                    })?;
                position
            }
            None => 0,
        };
        Ok(Follower {
            state,
            position,
            snapshot_position: position,
            applied_since_snapshot: 0,
            directory,
            config,
        })
    }

    /// The state machine, with every entry below [`Follower::position`] applied.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// Mutable access to the state machine, for bookkeeping outside what
    /// the log determines (e.g. results handed to local waiters). Changing
    /// the replicated state here would make this instance diverge.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// Offset of the next entry to apply.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Offset covered by the snapshot on disk (where a restart resumes).
    pub fn snapshot_position(&self) -> u64 {
        self.snapshot_position
    }

    /// Reads once (waiting up to `wait` at the tail) and applies what came.
    /// Returns how many data entries were applied. Saves a snapshot when
    /// [`FollowerConfig::snapshot_every_entries`] is reached.
    pub async fn poll(&mut self, client: &Client, wait: Duration) -> Result<usize, FollowerError> {
        let page = match client
            .read(self.position, self.config.page_bytes, wait)
            .await
        {
            Ok(page) => page,
            Err(Error::Server {
                source: ServerError::Trimmed { start },
                ..
            }) => {
                return Err(FollowerError::Trimmed {
                    position: self.position,
                    start,
                })
            }
            Err(error) => return Err(error.into()),
        };
        let mut applied = 0;
        for entry in page.entries() {
            self.state
                .apply(&entry)
                .map_err(|source| FollowerError::Apply {
                    offset: entry.offset,
                    source,
                })?;
            self.position = entry.next_offset();
            applied += 1;
        }
        // Non-data entries after the last data entry are passed too.
        self.position = page.next_offset();
        self.applied_since_snapshot += applied as u64;
        let every = self.config.snapshot_every_entries;
        if every > 0 && self.applied_since_snapshot >= every {
            self.save_snapshot()?;
        }
        Ok(applied)
    }

    /// Applies every entry below `target` (an offset the caller learned
    /// from the log, e.g. a commit offset), long-polling until they are
    /// committed on the node read from. Transient errors are retried for
    /// [`FollowerConfig::retry_for`].
    pub async fn catch_up_to(&mut self, client: &Client, target: u64) -> Result<(), FollowerError> {
        let mut retry = Retry::new(&self.config);
        while self.position < target {
            match self.poll(client, self.config.long_poll).await {
                Ok(_) => retry.reset(),
                Err(error) => retry.wait_or_fail(error).await?,
            }
        }
        Ok(())
    }

    /// A linearizable catch-up (read-index): asks the leader for its commit
    /// offset with a linearizable read, then applies up to it. Afterwards
    /// the state reflects every append acknowledged before the call.
    /// Transient errors are retried for [`FollowerConfig::retry_for`].
    pub async fn sync_linearizable(&mut self, client: &Client) -> Result<(), FollowerError> {
        let mut retry = Retry::new(&self.config);
        let commit_offset = loop {
            match client
                .read_linearizable(self.position, self.config.page_bytes, Duration::ZERO)
                .await
            {
                Ok(page) => break page.commit_offset(),
                Err(Error::Server {
                    source: ServerError::Trimmed { start },
                    ..
                }) => {
                    return Err(FollowerError::Trimmed {
                        position: self.position,
                        start,
                    })
                }
                Err(error) => retry.wait_or_fail(error.into()).await?,
            }
        };
        self.catch_up_to(client, commit_offset).await
    }

    /// Follows the log forever, retrying transient errors (lost
    /// connections, leader changes, busy or lagging nodes) with a bounded
    /// exponential backoff. Returns only on a permanent error.
    pub async fn run(&mut self, client: &Client) -> Result<(), FollowerError> {
        let forever = FollowerConfig {
            retry_for: Duration::MAX,
            ..self.config.clone()
        };
        let mut retry = Retry::new(&forever);
        loop {
            match self.poll(client, self.config.long_poll).await {
                Ok(_) => retry.reset(),
                Err(error) => retry.wait_or_fail(error).await?,
            }
        }
    }

    /// Saves the state and its position atomically; a restart resumes here.
    pub fn save_snapshot(&mut self) -> Result<(), FollowerError> {
        let snapshot = self.state.snapshot();
        let path = self.directory.join(SNAPSHOT_FILE);
        write_snapshot(&path, self.position, &snapshot)?;
        self.snapshot_position = self.position;
        self.applied_since_snapshot = 0;
        Ok(())
    }
}

/// Bounded exponential backoff over transient errors.
struct Retry {
    backoff: Duration,
    max_backoff: Duration,
    give_up_at: Option<tokio::time::Instant>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(20);

impl Retry {
    fn new(config: &FollowerConfig) -> Retry {
        Retry {
            backoff: FIRST_BACKOFF,
            max_backoff: config.max_backoff,
            give_up_at: tokio::time::Instant::now().checked_add(config.retry_for),
        }
    }

    fn reset(&mut self) {
        self.backoff = FIRST_BACKOFF;
    }

    /// Sleeps before the next attempt, or returns `error` when it is not
    /// transient or the time to retry is over.
    async fn wait_or_fail(&mut self, error: FollowerError) -> Result<(), FollowerError> {
        let now = tokio::time::Instant::now();
        if !is_transient(&error) || self.give_up_at.is_some_and(|at| now + self.backoff > at) {
            return Err(error);
        }
        tracing::debug!(%error, "follower retrying");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        Ok(())
    }
}

/// Errors a follower waits out: the cluster is changing or busy, not broken.
pub fn is_transient(error: &FollowerError) -> bool {
    match error {
        FollowerError::Client(error) => match error {
            Error::Connect { .. } | Error::Io { .. } => true,
            Error::Server { source, .. } => matches!(
                source,
                ServerError::NotLeader { .. }
                    | ServerError::Busy
                    | ServerError::ShuttingDown
                    | ServerError::Unavailable { .. }
                    // A lagging node we reconnected to has not committed our
                    // position yet.
                    | ServerError::OutOfRange { .. }
            ),
            _ => false,
        },
        _ => false,
    }
}

fn write_snapshot(path: &Path, position: u64, snapshot: &[u8]) -> Result<(), FollowerError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FollowerError::Io { path, source }
    };
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_LEN + snapshot.len() + SNAPSHOT_CRC_LEN);
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.push(SNAPSHOT_VERSION);
    bytes.extend_from_slice(&[0; 3]);
    bytes.extend_from_slice(&position.to_le_bytes());
    bytes.extend_from_slice(&(snapshot.len() as u64).to_le_bytes());
    bytes.extend_from_slice(snapshot);
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());

    let temp = path.with_extension("tmp");
    let mut file = fs::File::create(&temp).map_err(io_error(&temp))?;
    file.write_all(&bytes).map_err(io_error(&temp))?;
    file.sync_all().map_err(io_error(&temp))?;
    drop(file);
    fs::rename(&temp, path).map_err(io_error(path))?;
    // The rename is durable only once the directory is.
    let directory = path.parent().unwrap_or(Path::new("."));
    fs::File::open(directory)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error(directory))?;
    Ok(())
}

/// The snapshot on disk: its position and bytes, or `None` when there is none.
fn read_snapshot(path: &Path) -> Result<Option<(u64, Vec<u8>)>, FollowerError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(FollowerError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let corrupt = |reason: String| FollowerError::CorruptSnapshot {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < SNAPSHOT_HEADER_LEN + SNAPSHOT_CRC_LEN {
        return Err(corrupt(format!("{} bytes is too short", bytes.len())));
    }
    if bytes[..4] != SNAPSHOT_MAGIC {
        return Err(corrupt("bad magic".to_string()));
    }
    if bytes[4] != SNAPSHOT_VERSION {
        return Err(corrupt(format!("unsupported version {}", bytes[4])));
    }
    let (body, crc) = bytes.split_at(bytes.len() - SNAPSHOT_CRC_LEN);
    let crc = u32::from_le_bytes(crc.try_into().expect("4-byte slice"));
    if crc32c::crc32c(body) != crc {
        return Err(corrupt("checksum mismatch".to_string()));
    }
    let position = u64::from_le_bytes(bytes[8..16].try_into().expect("8-byte slice"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8-byte slice"));
    if len != (body.len() - SNAPSHOT_HEADER_LEN) as u64 {
        return Err(corrupt(format!("length {len} does not match the file")));
    }
    Ok(Some((position, body[SNAPSHOT_HEADER_LEN..].to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_files_round_trip_and_corruption_is_typed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SNAPSHOT_FILE);
        assert!(read_snapshot(&path).unwrap().is_none());
        write_snapshot(&path, 4242, b"state bytes").unwrap();
        assert_eq!(
            read_snapshot(&path).unwrap(),
            Some((4242, b"state bytes".to_vec()))
        );
        write_snapshot(&path, 5000, b"").unwrap();
        assert_eq!(read_snapshot(&path).unwrap(), Some((5000, Vec::new())));
        let mut bytes = fs::read(&path).unwrap();
        bytes[10] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(FollowerError::CorruptSnapshot { .. })
        ));
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            read_snapshot(&path),
            Err(FollowerError::CorruptSnapshot { .. })
        ));
    }
}
