//! A replicated key-value store built on LogLog, client side.
//!
//! Writes (`put`, `delete`, compare-and-set) are commands appended to the
//! log as batches (`loglog::batch`); the store's state is a
//! [`loglog::follower::StateMachine`] that applies them in log order. Every
//! instance follows the same log, so every instance converges to the same
//! state; nothing but the log is shared. An instance keeps its state in a
//! snapshot file with the log offset it covers, so a restart resumes there
//! without applying anything twice.
//!
//! A write returns once its entry is committed **and** applied locally: the
//! instance catches up to the entry, so the outcome of a compare-and-set is
//! the one the log decided (the same on every instance). A read is local by
//! default (it may miss recent writes of other instances); a linearizable
//! read first asks the leader for its commit offset (read-index, the read
//! flag `linearizable`) and applies up to it, so it sees every write
//! acknowledged before it began.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::path::Path;

use bytes::Bytes;
use loglog::follower::{ApplyError, Follower, FollowerConfig, FollowerError, StateMachine};
use loglog::{Client, Entry};
use tokio::sync::Mutex;

/// One write command; one sub-entry of a batch entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Sets `key` to `new` (`None` deletes) if its value is `expected`
    /// (`None`: absent).
    CompareAndSet {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// Sub-entry 0 of every KV batch: the id of the instance that wrote it, so
/// that instance (alone) keeps the outcomes of its own writes.
const TAG_ORIGIN: u8 = 0;
const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_CAS: u8 = 3;

/// Why bytes of the log are not KV commands.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("command truncated")]
    Truncated,
    #[error("unknown command tag {0}")]
    UnknownTag(u8),
    #[error("{0} bytes after the command")]
    TrailingBytes(usize),
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Put { key, value } => {
                out.push(TAG_PUT);
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
            Command::Delete { key } => {
                out.push(TAG_DELETE);
                put_bytes(&mut out, key);
            }
            Command::CompareAndSet { key, expected, new } => {
                out.push(TAG_CAS);
                put_bytes(&mut out, key);
                put_optional(&mut out, expected.as_deref());
                put_optional(&mut out, new.as_deref());
            }
        }
        out
    }

    pub fn decode(mut bytes: &[u8]) -> Result<Command, DecodeError> {
        let tag = take_u8(&mut bytes)?;
        let command = match tag {
            TAG_PUT => Command::Put {
                key: take_bytes(&mut bytes)?,
                value: take_bytes(&mut bytes)?,
            },
            TAG_DELETE => Command::Delete {
                key: take_bytes(&mut bytes)?,
            },
            TAG_CAS => Command::CompareAndSet {
                key: take_bytes(&mut bytes)?,
                expected: take_optional(&mut bytes)?,
                new: take_optional(&mut bytes)?,
            },
            other => return Err(DecodeError::UnknownTag(other)),
        };
        if !bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(bytes.len()));
        }
        Ok(command)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u32::try_from(bytes.len()).expect("keys and values fit an entry, so u32");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

fn put_optional(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => out.push(0),
        Some(bytes) => {
            out.push(1);
            put_bytes(out, bytes);
        }
    }
}

fn take_u8(bytes: &mut &[u8]) -> Result<u8, DecodeError> {
    let (&first, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
    *bytes = rest;
    Ok(first)
}

fn take_bytes(bytes: &mut &[u8]) -> Result<Vec<u8>, DecodeError> {
    if bytes.len() < 4 {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().expect("4-byte slice")) as usize;
    let data = bytes.get(4..4 + len).ok_or(DecodeError::Truncated)?;
    let data = data.to_vec();
    *bytes = &bytes[4 + len..];
    Ok(data)
}

fn take_optional(bytes: &mut &[u8]) -> Result<Option<Vec<u8>>, DecodeError> {
    match take_u8(bytes)? {
        0 => Ok(None),
        1 => take_bytes(bytes).map(Some),
        other => Err(DecodeError::UnknownTag(other)),
    }
}

/// Outcomes of this instance's own applied writes kept for the writers
/// waiting on them: more than the client lets be in flight at once
/// (`ClientConfig::max_in_flight`, 1024 by default), so a waiting writer
/// always finds its outcome.
const OWN_OUTCOMES: usize = 4096;

/// The encoded origin sub-entry of instance `id`.
fn encode_origin(id: u64) -> Vec<u8> {
    let mut out = vec![TAG_ORIGIN];
    out.extend_from_slice(&id.to_le_bytes());
    out
}

fn decode_origin(bytes: &[u8]) -> Option<u64> {
    match bytes {
        [TAG_ORIGIN, id @ ..] => Some(u64::from_le_bytes(id.try_into().ok()?)),
        _ => None,
    }
}

/// The store's state: the map, plus the outcomes of this instance's own
/// recent writes (not part of the snapshot: only writers of this process
/// wait for them).
#[derive(Default)]
pub struct KvState {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Commands applied since the log's start (part of the snapshot, so a
    /// restart that re-applied anything would show).
    applied_commands: u64,
    /// Id of this process's instance: entries it wrote begin with it.
    instance_id: u64,
    own_outcomes: VecDeque<(u64, Vec<bool>)>,
}

impl KvState {
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(key)
    }

    pub fn map(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.map
    }

    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    /// Takes the outcomes of this instance's write at `offset`.
    fn take_outcomes(&mut self, offset: u64) -> Option<Vec<bool>> {
        let position = self.own_outcomes.iter().position(|(at, _)| *at == offset)?;
        self.own_outcomes
            .remove(position)
            .map(|(_, outcomes)| outcomes)
    }

    /// Applies one command; true when it changed the state as asked (a
    /// compare-and-set whose expectation held, a delete of a present key).
    fn apply_command(&mut self, command: Command) -> bool {
        self.applied_commands += 1;
        match command {
            Command::Put { key, value } => {
                self.map.insert(key, value);
                true
            }
            Command::Delete { key } => self.map.remove(&key).is_some(),
            Command::CompareAndSet { key, expected, new } => {
                if self.map.get(&key) != expected.as_ref() {
                    return false;
                }
                match new {
                    Some(value) => self.map.insert(key, value),
                    None => self.map.remove(&key),
                };
                true
            }
        }
    }
}

impl StateMachine for KvState {
    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        let sub_entries = loglog::batch::decode_batch(&entry.payload)?;
        let (origin, commands) = sub_entries
            .split_first()
            .ok_or("a KV batch without its origin sub-entry")?;
        let origin = decode_origin(origin).ok_or("a KV batch without its origin sub-entry")?;
        // Decode all before applying any: a bad entry changes nothing.
        let commands = commands
            .iter()
            .map(|bytes| Command::decode(bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes: Vec<bool> = commands
            .into_iter()
            .map(|command| self.apply_command(command))
            .collect();
        if origin == self.instance_id {
            if self.own_outcomes.len() == OWN_OUTCOMES {
                self.own_outcomes.pop_front();
            }
            self.own_outcomes.push_back((entry.offset, outcomes));
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.applied_commands.to_le_bytes());
        out.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (key, value) in &self.map {
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        out
    }

    fn restore(&mut self, mut snapshot: &[u8]) -> Result<(), ApplyError> {
        if snapshot.len() < 16 {
            return Err("KV snapshot shorter than its header".into());
        }
        let applied = u64::from_le_bytes(snapshot[..8].try_into()?);
        let count = u64::from_le_bytes(snapshot[8..16].try_into()?);
        snapshot = &snapshot[16..];
        let mut map = BTreeMap::new();
        for _ in 0..count {
            let key = take_bytes(&mut snapshot)?;
            let value = take_bytes(&mut snapshot)?;
            map.insert(key, value);
        }
        if !snapshot.is_empty() {
            return Err("bytes after the KV snapshot's last pair".into());
        }
        *self = KvState {
            map,
            applied_commands: applied,
            instance_id: self.instance_id,
            own_outcomes: VecDeque::new(),
        };
        Ok(())
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(transparent)]
    Client(#[from] loglog::Error),
    #[error(transparent)]
    Follower(#[from] FollowerError),
    #[error("the outcome of the write at offset {0} is no longer known")]
    OutcomeLost(u64),
}

/// One instance of the store: a client of the cluster and a follower of
/// the log whose snapshot lives in a directory of its own.
pub struct Kv {
    client: Client,
    instance_id: u64,
    follower: Mutex<Follower<KvState>>,
}

impl Kv {
    /// Opens the instance whose state lives in `directory` (restored from
    /// its snapshot, if any). The snapshot is saved every
    /// `snapshot_every_entries` applied entries, and by [`Kv::save_snapshot`].
    pub async fn open<A: AsRef<str>>(
        cluster: &[A],
        directory: &Path,
        snapshot_every_entries: u64,
    ) -> Result<Kv, KvError> {
        let client = Client::connect(cluster).await?;
        let config = FollowerConfig {
            snapshot_every_entries,
            ..FollowerConfig::default()
        };
        // Random per process: a restarted instance never mistakes the
        // entries of its previous life (or of another instance) for its own.
        let instance_id = RandomState::new().build_hasher().finish();
        let state = KvState {
            instance_id,
            ..KvState::default()
        };
        let follower = Follower::open(directory, state, config)?;
        Ok(Kv {
            client,
            instance_id,
            follower: Mutex::new(follower),
        })
    }

    /// Appends `commands` as one batch entry, waits for it to be committed
    /// and applied here, and returns each command's outcome.
    pub async fn write(&self, commands: &[Command]) -> Result<Vec<bool>, KvError> {
        let encoded: Vec<Vec<u8>> = std::iter::once(encode_origin(self.instance_id))
            .chain(commands.iter().map(Command::encode))
            .collect();
        let offset = self.client.append_batch(&encoded).await?;
        let mut follower = self.follower.lock().await;
        // Positions are entry boundaries: past `offset` means it is applied.
        follower.catch_up_to(&self.client, offset + 1).await?;
        follower
            .state_mut()
            .take_outcomes(offset)
            .ok_or(KvError::OutcomeLost(offset))
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.write(&[Command::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }])
        .await?;
        Ok(())
    }

    /// Deletes `key`; true when it was present.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, KvError> {
        let outcomes = self.write(&[Command::Delete { key: key.to_vec() }]).await?;
        Ok(outcomes[0])
    }

    /// Sets `key` to `new` if its value is `expected` (`None`: absent);
    /// true when it did.
    pub async fn compare_and_set(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        let outcomes = self
            .write(&[Command::CompareAndSet {
                key: key.to_vec(),
                expected: expected.map(<[u8]>::to_vec),
                new: new.map(<[u8]>::to_vec),
            }])
            .await?;
        Ok(outcomes[0])
    }

    /// The value of `key`: linearizable (read-index on the leader, then
    /// apply up to its commit offset) or from the local state as it is.
    pub async fn get(&self, key: &[u8], linearizable: bool) -> Result<Option<Bytes>, KvError> {
        let mut follower = self.follower.lock().await;
        if linearizable {
            follower.sync_linearizable(&self.client).await?;
        }
        Ok(follower.state().get(key).cloned().map(Bytes::from))
    }

    /// Applies everything the leader has committed (see [`Kv::get`]).
    pub async fn sync(&self) -> Result<(), KvError> {
        self.follower
            .lock()
            .await
            .sync_linearizable(&self.client)
            .await?;
        Ok(())
    }

    /// Every pair, sorted by key, after a linearizable sync.
    pub async fn dump(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, KvError> {
        let mut follower = self.follower.lock().await;
        follower.sync_linearizable(&self.client).await?;
        Ok(follower.state().map().clone())
    }

    /// Commands applied to this instance's state since the log's start.
    pub async fn applied_commands(&self) -> u64 {
        self.follower.lock().await.state().applied_commands()
    }

    /// The log offset this instance has applied up to.
    pub async fn position(&self) -> u64 {
        self.follower.lock().await.position()
    }

    /// Saves the state with its position; a restart resumes here.
    pub async fn save_snapshot(&self) -> Result<(), KvError> {
        self.follower.lock().await.save_snapshot()?;
        Ok(())
    }

    /// Offset the snapshot on disk covers.
    pub async fn snapshot_position(&self) -> u64 {
        self.follower.lock().await.snapshot_position()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip_and_garbage_is_an_error() {
        let commands = [
            Command::Put {
                key: b"k".to_vec(),
                value: b"".to_vec(),
            },
            Command::Delete { key: Vec::new() },
            Command::CompareAndSet {
                key: b"k".to_vec(),
                expected: None,
                new: Some(b"v".to_vec()),
            },
        ];
        for command in commands {
            let bytes = command.encode();
            assert_eq!(Command::decode(&bytes).unwrap(), command);
            for cut in 0..bytes.len() {
                assert!(Command::decode(&bytes[..cut]).is_err());
            }
        }
        assert!(matches!(
            Command::decode(&[9]),
            Err(DecodeError::UnknownTag(9))
        ));
    }

    fn entry(offset: u64, origin: u64, commands: &[Command]) -> Entry {
        let encoded: Vec<Vec<u8>> = std::iter::once(encode_origin(origin))
            .chain(commands.iter().map(Command::encode))
            .collect();
        Entry {
            offset,
            term: 1,
            kind: loglog::EntryKind::Data,
            producer: None,
            payload: loglog::batch::encode_batch(&encoded).unwrap(),
        }
    }

    #[test]
    fn only_the_writing_instance_keeps_outcomes_and_bad_entries_change_nothing() {
        let mut state = KvState {
            instance_id: 7,
            ..KvState::default()
        };
        let put = Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        state
            .apply(&entry(100, 8, std::slice::from_ref(&put)))
            .unwrap();
        state.apply(&entry(200, 7, &[put.clone(), put])).unwrap();
        assert_eq!(state.take_outcomes(100), None);
        assert_eq!(state.take_outcomes(200), Some(vec![true, true]));
        assert_eq!(state.take_outcomes(200), None);
        assert_eq!(state.applied_commands(), 3);
        // Not a batch, no origin, a bad command: errors, state unchanged.
        let mut bad = entry(300, 7, &[]);
        bad.payload = Bytes::from_static(b"plain");
        assert!(state.apply(&bad).is_err());
        bad.payload = loglog::batch::encode_batch([b"\x01".as_slice()]).unwrap();
        assert!(state.apply(&bad).is_err());
        bad.payload = loglog::batch::encode_batch([encode_origin(7), vec![1, 2]]).unwrap();
        assert!(state.apply(&bad).is_err());
        assert_eq!(state.applied_commands(), 3);
    }

    #[test]
    fn snapshots_restore_the_same_state() {
        let mut state = KvState::default();
        state.apply_command(Command::Put {
            key: b"a".to_vec(),
            value: b"1".to_vec(),
        });
        assert!(!state.apply_command(Command::CompareAndSet {
            key: b"a".to_vec(),
            expected: None,
            new: None,
        }));
        let mut restored = KvState::default();
        restored.restore(&state.snapshot()).unwrap();
        assert_eq!(restored.map(), state.map());
        assert_eq!(restored.applied_commands(), 2);
        assert!(restored.restore(b"short").is_err());
    }
}
