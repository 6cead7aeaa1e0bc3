//! Client-side upload in the simulation (`SimOptions::upload`): the same
//! formats and checks as `loglogd` (`loglog_proto::upload`), with caches
//! that lose uploads in every way a real one does.
//!
//! * A client's append is also uploaded to every other node, each upload
//!   crossing the modelled network (lost, delayed, duplicated like any
//!   message), and sometimes **corrupt**: bytes stored under the digest of
//!   other bytes (a real node refuses such an upload; the follower's CRC
//!   check must still catch one that got in).
//! * Each node's cache is small (so uploads are **evicted**), forgets what
//!   is older than a short time (**expired**), and is empty after a crash
//!   (**restarted**).
//! * A leader sends entries of uploaded appends by digest; the receiver
//!   rebuilds them from its cache and checks each against its header CRC,
//!   or drops the message and reports a miss; the leader answers a miss
//!   with the raw bytes from its log and sends that follower raw bytes for
//!   what its log held then. Lost reports are covered by the core's own
//!   retransmission. The usual checks (log matching, one committed log,
//!   the client history) then prove that nothing wrong was ever written.

use std::collections::{BTreeMap, VecDeque};

use loglog_proto::upload::{self, Digest, Part, RebuildError, UploadKey};
use loglog_raft::AppendEntries;

use crate::net::{Nanos, MILLIS};

/// Uploads a node's cache holds at most.
const CACHE_ENTRIES: usize = 6;
/// How long a cached upload lives.
const CACHE_TTL: Nanos = 300 * MILLIS;
/// Digests a leader remembers.
const MAX_DIGESTS: usize = 4096;

/// What upload mode did in a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Entries sent by digest.
    pub by_digest: u64,
    /// Entries rebuilt from a cache.
    pub rebuilt: u64,
    /// Messages that could not be rebuilt (upload missing).
    pub missed: u64,
    /// Messages refused because an upload did not match its entry.
    pub mismatched: u64,
    /// Raw resends answering a miss.
    pub resent: u64,
}

#[derive(Default)]
struct Cache {
    payloads: BTreeMap<UploadKey, Vec<u8>>,
    order: VecDeque<(UploadKey, Nanos)>,
}

impl Cache {
    fn expire(&mut self, now: Nanos) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.saturating_sub(*at) >= CACHE_TTL)
        {
            let (key, _) = self.order.pop_front().expect("checked");
            self.payloads.remove(&key);
        }
    }

    fn insert(&mut self, key: UploadKey, bytes: Vec<u8>, now: Nanos) {
        self.expire(now);
        if self.payloads.contains_key(&key) {
            return;
        }
        while self.payloads.len() >= CACHE_ENTRIES {
            let (oldest, _) = self.order.pop_front().expect("as many as payloads");
            self.payloads.remove(&oldest);
        }
        self.payloads.insert(key, bytes);
        self.order.push_back((key, now));
    }
}

/// The fields of an AppendEntries sent by digest, without its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub term: u32,
    pub prev_offset: u64,
    pub prev_term: u32,
    pub leader_commit: u64,
    /// Raw length of the entries.
    pub entries_len: u64,
}

/// Every node's upload state.
pub(crate) struct UploadModel {
    caches: Vec<Cache>,
    /// As leader: digest of each uploaded entry in the node's log.
    digests: Vec<BTreeMap<u64, Digest>>,
    /// As leader: per follower, entries below this go raw.
    raw_below: Vec<BTreeMap<usize, u64>>,
    /// The wrong rule `SimOptions::upload_skips_crc_check`.
    skip_check: bool,
    pub stats: UploadStats,
}

impl UploadModel {
    pub(crate) fn new(nodes: usize, skip_check: bool) -> UploadModel {
        UploadModel {
            skip_check,
            caches: (0..nodes).map(|_| Cache::default()).collect(),
            digests: vec![BTreeMap::new(); nodes],
            raw_below: vec![BTreeMap::new(); nodes],
            stats: UploadStats::default(),
        }
    }

    /// An upload reached `node`: `payload` under `key` (which is not its
    /// key when the upload is corrupt).
    pub(crate) fn uploaded(&mut self, node: usize, key: UploadKey, payload: Vec<u8>, now: Nanos) {
        self.caches[node].insert(key, payload, now);
    }

    /// `node` crashed: its cache and its digests are gone.
    pub(crate) fn crashed(&mut self, node: usize) {
        self.caches[node] = Cache::default();
        self.digests[node].clear();
        self.raw_below[node].clear();
    }

    /// `node` proposed an uploaded payload at `offset`.
    pub(crate) fn proposed(&mut self, node: usize, offset: u64, payload: &[u8]) {
        let digests = &mut self.digests[node];
        digests.insert(offset, upload::digest(payload));
        while digests.len() > MAX_DIGESTS {
            digests.pop_first();
        }
    }

    /// `node`'s log was cut at `offset` (truncated, or reset).
    pub(crate) fn truncated(&mut self, node: usize, offset: u64) {
        drop(self.digests[node].split_off(&offset));
    }

    pub(crate) fn reset(&mut self, node: usize) {
        self.digests[node].clear();
    }

    /// `follower` missed an upload: raw below `end` from `leader`.
    pub(crate) fn peer_missed(&mut self, leader: usize, follower: usize, end: u64) {
        let below = self.raw_below[leader].entry(follower).or_insert(0);
        *below = (*below).max(end);
        self.stats.resent += 1;
    }

    /// `message` from `leader` to `follower` by digest (head and encoded
    /// parts), or `None` when none of its entries was uploaded.
    pub(crate) fn by_digest(
        &mut self,
        leader: usize,
        follower: usize,
        message: &AppendEntries,
    ) -> Option<(Head, Vec<u8>)> {
        let start = message.prev_offset;
        let end = start + message.entries.len() as u64;
        let raw_below = self.raw_below[leader].get(&follower).copied().unwrap_or(0);
        let digests = &self.digests[leader];
        let first = start.max(raw_below);
        if first >= end || digests.range(first..end).next().is_none() {
            return None;
        }
        let mut parts = Vec::new();
        let refs = upload::encode_parts(
            &message.entries,
            start,
            |offset| {
                (offset >= raw_below)
                    .then(|| digests.get(&offset).copied())
                    .flatten()
            },
            &mut parts,
        );
        if refs == 0 {
            return None;
        }
        self.stats.by_digest += refs as u64;
        let head = Head {
            term: message.term,
            prev_offset: message.prev_offset,
            prev_term: message.prev_term,
            leader_commit: message.leader_commit,
            entries_len: message.entries.len() as u64,
        };
        Some((head, parts))
    }

    /// Rebuilds a message by digest at `node`, or `None` (a miss to report).
    /// Malformed parts are an `Err` (a sender bug).
    pub(crate) fn rebuild(
        &mut self,
        node: usize,
        head: &Head,
        parts: &[u8],
        max_entries: u64,
        max_payload: u32,
        now: Nanos,
    ) -> Result<Option<AppendEntries>, String> {
        let (parts, len): (Vec<Part<'_>>, u64) =
            upload::decode_parts(parts, max_entries).map_err(|error| error.to_string())?;
        if len != head.entries_len {
            return Err(format!(
                "parts stand for {len} bytes, the head says {}",
                head.entries_len
            ));
        }
        let cache = &mut self.caches[node];
        cache.expire(now);
        let rebuilt = if self.skip_check {
            rebuild_unchecked(&parts, |key| cache.payloads.get(key).cloned())
        } else {
            upload::rebuild_entries(&parts, len, max_payload, |key| {
                cache.payloads.get(key).map(Vec::as_slice)
            })
        };
        match rebuilt {
            Ok(entries) => {
                self.stats.rebuilt += upload::referenced_keys(&parts).len() as u64;
                Ok(Some(AppendEntries {
                    term: head.term,
                    prev_offset: head.prev_offset,
                    prev_term: head.prev_term,
                    leader_commit: head.leader_commit,
                    entries: entries.into(),
                }))
            }
            Err(RebuildError::Missing(_)) => {
                self.stats.missed += 1;
                Ok(None)
            }
            Err(RebuildError::Mismatch(_)) => {
                self.stats.mismatched += 1;
                Ok(None)
            }
        }
    }
}

/// The wrong rule: trust the cache, write whatever it holds under the
/// digest without checking it against the leader's header.
fn rebuild_unchecked(
    parts: &[Part<'_>],
    mut lookup: impl FnMut(&UploadKey) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, RebuildError> {
    let mut entries = Vec::new();
    for part in parts {
        match part {
            Part::Raw(bytes) => entries.extend_from_slice(bytes),
            Part::Ref { header, digest } => {
                let len = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
                let key = UploadKey {
                    digest: *digest,
                    len,
                };
                let payload = lookup(&key).ok_or(RebuildError::Missing(key))?;
                entries.extend_from_slice(header);
                entries.extend_from_slice(&payload);
            }
        }
    }
    Ok(entries)
}
