//! Client-side upload on a cluster member (`loglog_proto::upload` has the
//! formats and why the digest is SHA-256).
//!
//! * Every member keeps an [`UploadCache`]: payloads clients uploaded
//!   (request `upload`), keyed by digest and length, bounded in bytes and
//!   entries, each kept at most a while (oldest out first).
//! * The leader remembers the digest of every entry appended with the
//!   `UPLOADED` flag ([`LeaderDigests`], bounded) and sends such entries to
//!   a follower as header and digest only ([`encode_by_digest_frame`]).
//! * A follower rebuilds the entries from its cache (waiting up to
//!   [`UPLOAD_WAIT`] for an upload still on its way), checks every rebuilt
//!   entry against the leader's header CRC, and steps the ordinary
//!   `AppendEntries`. When it cannot (upload missing, expired, evicted, or
//!   not matching), it steps nothing and sends the leader a [`MissReport`];
//!   the leader answers with the same entries' raw bytes from its log, and
//!   sends those entries raw from then on (after a second miss within
//!   [`REPEATED_MISS`], every entry for [`RAW_AFTER_MISS`]: a follower
//!   that restarted, or whose uploads the client skips).
//!   If the report or the resend is lost, the core's own loss handling
//!   (probe after stalled heartbeats) resends raw bytes later: correctness
//!   never depends on an upload.
//!
//! Peer frames: these two messages share the transport's frames with the
//! core's messages (`length u32, from u64, to u64, kind u8, ...`), with
//! kinds the core does not use:
//!
//! ```text
//! 64 AppendByDigest  term u32, prev_offset u64, prev_term u32, leader_commit u64,
//!                    parts (loglog_proto::upload::encode_parts)
//! 65 UploadMiss      term u32, prev_offset u64, prev_term u32, leader_commit u64,
//!                    entries_len u64: the AppendByDigest that could not be rebuilt
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog_proto::upload::{self, Digest, Part, RebuildError, UploadKey};
use loglog_raft::{AppendEntries, NodeId};
use tokio::sync::Notify;

/// Peer frame kind: entries sent by digest.
pub(crate) const KIND_APPEND_BY_DIGEST: u8 = 64;
/// Peer frame kind: a follower could not rebuild an `AppendByDigest`.
pub(crate) const KIND_UPLOAD_MISS: u8 = 65;
/// How long a follower waits for an upload still on its way (the client
/// sends it in parallel with the append, and on a busy link it can arrive
/// well after the leader's few bytes) before asking for the bytes. Only
/// appends wait (in order); heartbeats and votes go on meanwhile.
pub const UPLOAD_WAIT: Duration = Duration::from_millis(500);
/// Digests of uploaded entries a leader remembers (about 48 bytes each).
pub const MAX_LEADER_DIGESTS: usize = 64 * 1024;
/// After a follower missed uploads twice within [`REPEATED_MISS`], the
/// leader sends it raw entries for this long: a follower the client cannot
/// keep up with (its uploads are skipped) then costs one [`UPLOAD_WAIT`]
/// per period, not one per message. A single miss (an upload that came
/// late) costs only the entries already in the log.
pub const RAW_AFTER_MISS: Duration = Duration::from_millis(500);
/// Two misses closer than this make the follower go raw for a while.
pub const REPEATED_MISS: Duration = Duration::from_secs(1);

/// Bounds of a node's upload cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Payload bytes held at most.
    pub max_bytes: usize,
    /// Payloads held at most.
    pub max_entries: usize,
    /// How long a payload is kept (an upload older than this is of no use:
    /// its append has long been replicated).
    pub ttl: Duration,
}

impl Default for UploadLimits {
    /// 256 MiB, 64 Ki payloads, 30 s.
    fn default() -> UploadLimits {
        UploadLimits {
            max_bytes: 256 * 1024 * 1024,
            max_entries: 64 * 1024,
            ttl: Duration::from_secs(30),
        }
    }
}

/// Payloads uploaded to this node, bounded and expiring, oldest out first.
pub(crate) struct UploadCache {
    limits: UploadLimits,
    state: Mutex<CacheState>,
    inserted: Notify,
    /// Entries rebuilt from uploads, and `AppendByDigest` messages that
    /// could not be (counters for tests and status).
    pub rebuilt_entries: AtomicU64,
    pub missed_messages: AtomicU64,
}

#[derive(Default)]
struct CacheState {
    payloads: HashMap<UploadKey, Bytes>,
    /// Insertion order and time: the front is the oldest, so expiry and
    /// eviction both pop from the front. Holds exactly the keys of
    /// `payloads` (a key is never inserted twice while present).
    order: VecDeque<(UploadKey, Instant)>,
    bytes: usize,
}

impl CacheState {
    fn pop_oldest(&mut self) {
        if let Some((key, _)) = self.order.pop_front() {
            if let Some(payload) = self.payloads.remove(&key) {
                self.bytes -= payload.len();
            }
        }
    }

    fn expire(&mut self, ttl: Duration, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= ttl)
        {
            self.pop_oldest();
        }
    }
}

impl std::fmt::Debug for UploadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (entries, bytes) = self.usage();
        f.debug_struct("UploadCache")
            .field("limits", &self.limits)
            .field("entries", &entries)
            .field("bytes", &bytes)
            .finish()
    }
}

impl UploadCache {
    pub(crate) fn new(limits: UploadLimits) -> UploadCache {
        UploadCache {
            limits,
            state: Mutex::new(CacheState::default()),
            inserted: Notify::new(),
            rebuilt_entries: AtomicU64::new(0),
            missed_messages: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState> {
        // Every update keeps the state consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Caches `payload` under `key` (the caller checked that `key` is its
    /// digest and length). A payload larger than the whole cache is not
    /// kept.
    pub(crate) fn insert(&self, key: UploadKey, payload: Bytes) {
        if payload.len() > self.limits.max_bytes || self.limits.max_entries == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(self.limits.ttl, now);
        if state.payloads.contains_key(&key) {
            return;
        }
        while state.payloads.len() >= self.limits.max_entries
            || state.bytes + payload.len() > self.limits.max_bytes
        {
            state.pop_oldest();
        }
        state.bytes += payload.len();
        state.payloads.insert(key, payload);
        state.order.push_back((key, now));
        drop(state);
        self.inserted.notify_waiters();
    }

    pub(crate) fn get(&self, key: &UploadKey) -> Option<Bytes> {
        let mut state = self.lock();
        state.expire(self.limits.ttl, Instant::now());
        state.payloads.get(key).cloned()
    }

    /// (payloads, bytes) held now.
    pub(crate) fn usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.payloads.len(), state.bytes)
    }

    /// Waits until every key of `keys` is cached, or until `wait` passed.
    pub(crate) async fn wait_for(&self, keys: &[UploadKey], wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.inserted.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if keys.iter().all(|key| self.get(key).is_some()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return;
            }
        }
    }
}

/// The digests of the uploaded entries in a leader's log, by offset.
#[derive(Default)]
pub(crate) struct LeaderDigests {
    by_offset: BTreeMap<u64, Digest>,
    /// Per follower: entries below this offset go raw (it missed an
    /// upload: it is catching up, or the client did not upload to it).
    raw_below: BTreeMap<NodeId, u64>,
    /// Per follower: until then, every entry goes raw.
    raw_until: BTreeMap<NodeId, Instant>,
    /// Per follower: when it last missed.
    last_miss: BTreeMap<NodeId, Instant>,
}

impl LeaderDigests {
    pub(crate) fn record(&mut self, offset: u64, digest: Digest) {
        self.by_offset.insert(offset, digest);
        while self.by_offset.len() > MAX_LEADER_DIGESTS {
            self.by_offset.pop_first();
        }
    }

    /// The log was truncated at `offset`: forget what was above.
    pub(crate) fn truncate(&mut self, offset: u64) {
        drop(self.by_offset.split_off(&offset));
    }

    pub(crate) fn clear(&mut self) {
        self.by_offset.clear();
        self.raw_below.clear();
        self.raw_until.clear();
        self.last_miss.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_offset.is_empty()
    }

    /// `peer` missed an upload: send it raw bytes below `end`, and when it
    /// missed before within [`REPEATED_MISS`], everything for
    /// [`RAW_AFTER_MISS`].
    pub(crate) fn peer_missed(&mut self, peer: NodeId, end: u64) {
        let below = self.raw_below.entry(peer).or_insert(0);
        *below = (*below).max(end);
        let now = Instant::now();
        if let Some(last) = self.last_miss.insert(peer, now) {
            if now.duration_since(last) < REPEATED_MISS {
                self.raw_until.insert(peer, now + RAW_AFTER_MISS);
            }
        }
    }

    /// The frame (length prefix included) for `message` to `to` with every
    /// uploaded entry by digest, or `None` when none of its entries is.
    pub(crate) fn encode_by_digest_frame(
        &self,
        from: NodeId,
        to: NodeId,
        message: &AppendEntries,
    ) -> Option<Vec<u8>> {
        let start = message.prev_offset;
        let end = start + message.entries.len() as u64;
        if self
            .raw_until
            .get(&to)
            .is_some_and(|until| Instant::now() < *until)
        {
            return None;
        }
        let raw_below = self.raw_below.get(&to).copied().unwrap_or(0);
        let first = start.max(raw_below);
        if first >= end || self.by_offset.range(first..end).next().is_none() {
            return None;
        }
        let mut frame = vec![0u8; 4];
        frame.extend_from_slice(&from.to_le_bytes());
        frame.extend_from_slice(&to.to_le_bytes());
        frame.push(KIND_APPEND_BY_DIGEST);
        frame.extend_from_slice(&message.term.to_le_bytes());
        frame.extend_from_slice(&message.prev_offset.to_le_bytes());
        frame.extend_from_slice(&message.prev_term.to_le_bytes());
        frame.extend_from_slice(&message.leader_commit.to_le_bytes());
        let refs = upload::encode_parts(
            &message.entries,
            start,
            |offset| {
                (offset >= raw_below)
                    .then(|| self.by_offset.get(&offset).copied())
                    .flatten()
            },
            &mut frame,
        );
        if refs == 0 {
            return None;
        }
        let len = u32::try_from(frame.len() - 4).expect("smaller than the raw message");
        frame[0..4].copy_from_slice(&len.to_le_bytes());
        Some(frame)
    }
}

/// The fields of an `AppendEntries` sent by digest, without its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MissReport {
    pub term: u32,
    pub prev_offset: u64,
    pub prev_term: u32,
    pub leader_commit: u64,
    /// Length of the raw entries the message stood for.
    pub entries_len: u64,
}

const HEAD_LEN: usize = 4 + 8 + 4 + 8;
const MISS_LEN: usize = HEAD_LEN + 8;

impl MissReport {
    pub(crate) fn encode_frame(&self, from: NodeId, to: NodeId) -> Vec<u8> {
        let mut frame = Vec::with_capacity(4 + 17 + MISS_LEN);
        frame.extend_from_slice(&((17 + MISS_LEN) as u32).to_le_bytes());
        frame.extend_from_slice(&from.to_le_bytes());
        frame.extend_from_slice(&to.to_le_bytes());
        frame.push(KIND_UPLOAD_MISS);
        frame.extend_from_slice(&self.term.to_le_bytes());
        frame.extend_from_slice(&self.prev_offset.to_le_bytes());
        frame.extend_from_slice(&self.prev_term.to_le_bytes());
        frame.extend_from_slice(&self.leader_commit.to_le_bytes());
        frame.extend_from_slice(&self.entries_len.to_le_bytes());
        frame
    }
}

fn decode_head(bytes: &[u8]) -> Option<(MissReport, &[u8])> {
    let head = bytes.get(..HEAD_LEN)?;
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(head[at..at + 8].try_into().expect("8 bytes"));
    Some((
        MissReport {
            term: u32_at(0),
            prev_offset: u64_at(4),
            prev_term: u32_at(12),
            leader_commit: u64_at(16),
            entries_len: 0,
        },
        &bytes[HEAD_LEN..],
    ))
}

/// A peer frame of one of this module's kinds, decoded (the body after
/// `from`, `to` and the kind byte).
pub(crate) enum UploadFrame<'a> {
    ByDigest {
        head: MissReport,
        parts: Vec<Part<'a>>,
    },
    Miss(MissReport),
}

/// Decodes the body of a frame of kind `kind`; `max_entries_bytes` caps the
/// entries an `AppendByDigest` stands for. Untrusted bytes: never panics.
pub(crate) fn decode_frame(
    kind: u8,
    body: &[u8],
    max_entries_bytes: u64,
) -> Result<UploadFrame<'_>, String> {
    let (mut head, rest) = decode_head(body).ok_or("upload frame truncated")?;
    match kind {
        KIND_APPEND_BY_DIGEST => {
            let (parts, len) = upload::decode_parts(rest, max_entries_bytes)
                .map_err(|error| format!("bad AppendByDigest: {error}"))?;
            head.entries_len = len;
            Ok(UploadFrame::ByDigest { head, parts })
        }
        KIND_UPLOAD_MISS => {
            let len: [u8; 8] = rest
                .try_into()
                .map_err(|_| "UploadMiss of the wrong length".to_string())?;
            head.entries_len = u64::from_le_bytes(len);
            Ok(UploadFrame::Miss(head))
        }
        other => Err(format!("unknown upload frame kind {other}")),
    }
}

/// Rebuilds the entries of an `AppendByDigest` from `cache`, waiting up to
/// [`UPLOAD_WAIT`] for uploads not there yet. `None`: the follower must ask
/// for the leader's bytes (nothing was built from a missing or wrong
/// upload).
pub(crate) async fn rebuild(
    cache: &UploadCache,
    head: &MissReport,
    parts: &[Part<'_>],
    max_payload: u32,
) -> Option<AppendEntries> {
    let keys = upload::referenced_keys(parts);
    if keys.iter().any(|key| cache.get(key).is_none()) {
        cache.wait_for(&keys, UPLOAD_WAIT).await;
    }
    let rebuilt =
        upload::rebuild_entries(parts, head.entries_len, max_payload, |key| cache.get(key));
    match rebuilt {
        Ok(entries) => {
            cache
                .rebuilt_entries
                .fetch_add(keys.len() as u64, Ordering::Relaxed);
            Some(AppendEntries {
                term: head.term,
                prev_offset: head.prev_offset,
                prev_term: head.prev_term,
                leader_commit: head.leader_commit,
                entries: entries.into(),
            })
        }
        Err(error) => {
            cache.missed_messages.fetch_add(1, Ordering::Relaxed);
            match error {
                RebuildError::Missing(_) => {
                    tracing::debug!(
                        prev_offset = head.prev_offset,
                        "upload missing; asking the leader"
                    )
                }
                RebuildError::Mismatch(key) => tracing::warn!(
                    prev_offset = head.prev_offset,
                    len = key.len,
                    "an upload does not match the leader's entry; asking the leader"
                ),
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::{encode_entry, EntryKind};

    fn key_of(payload: &[u8]) -> UploadKey {
        UploadKey::of(payload).expect("small")
    }

    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes_and_expires() {
        let cache = UploadCache::new(UploadLimits {
            max_bytes: 10,
            max_entries: 2,
            ttl: Duration::from_millis(200),
        });
        for payload in [&b"aaa"[..], b"bbb", b"ccc"] {
            cache.insert(key_of(payload), Bytes::copy_from_slice(payload));
        }
        assert!(cache.get(&key_of(b"aaa")).is_none(), "evicted: entry bound");
        assert_eq!(cache.usage(), (2, 6));
        cache.insert(key_of(b"dddddddd"), Bytes::from_static(b"dddddddd"));
        assert_eq!(cache.usage(), (1, 8), "byte bound");
        cache.insert(key_of(&[0; 11]), Bytes::from_static(&[0; 11]));
        assert_eq!(cache.usage(), (1, 8), "larger than the cache: not kept");
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get(&key_of(b"dddddddd")).is_none(), "expired");
        assert_eq!(cache.usage(), (0, 0));
    }

    #[tokio::test]
    async fn by_digest_frames_round_trip_and_fall_back_when_the_cache_cannot_help() {
        let payloads: Vec<Vec<u8>> = vec![vec![1; 3000], b"small".to_vec(), vec![2; 4000]];
        let mut entries = Vec::new();
        let mut digests = LeaderDigests::default();
        for (index, payload) in payloads.iter().enumerate() {
            let offset = 500 + entries.len() as u64;
            if index != 1 {
                digests.record(offset, upload::digest(payload));
            }
            encode_entry(3, EntryKind::Data, payload, &mut entries);
        }
        let message = AppendEntries {
            term: 3,
            prev_offset: 500,
            prev_term: 2,
            leader_commit: 400,
            entries: entries.into(),
        };
        let frame = digests.encode_by_digest_frame(1, 2, &message).unwrap();
        assert!(frame.len() < 300);
        let body = &frame[4..];
        assert_eq!(body[16], KIND_APPEND_BY_DIGEST);
        let UploadFrame::ByDigest { head, parts } =
            decode_frame(body[16], &body[17..], 1 << 20).unwrap()
        else {
            panic!("decoded as another kind");
        };
        let cache = UploadCache::new(UploadLimits::default());
        // Nothing uploaded: after the wait, a miss.
        assert_eq!(rebuild(&cache, &head, &parts, u32::MAX).await, None);
        // A payload that is not the entry's (as if the digest collided):
        // refused by the CRC check.
        cache.insert(key_of(&payloads[0]), Bytes::from(vec![9u8; 3000]));
        cache.insert(key_of(&payloads[2]), Bytes::from(payloads[2].clone()));
        assert_eq!(rebuild(&cache, &head, &parts, u32::MAX).await, None);
        let cache = UploadCache::new(UploadLimits::default());
        for payload in &payloads {
            cache.insert(key_of(payload), Bytes::from(payload.clone()));
        }
        assert_eq!(
            rebuild(&cache, &head, &parts, u32::MAX).await,
            Some(message.clone())
        );
        // A follower that missed goes raw for what was in the log, and for
        // a while for everything.
        digests.peer_missed(2, 500 + message.entries.len() as u64);
        assert!(digests.encode_by_digest_frame(1, 2, &message).is_none());
        assert!(digests.encode_by_digest_frame(1, 3, &message).is_some());
        let later = AppendEntries {
            prev_offset: 500 + message.entries.len() as u64,
            ..message.clone()
        };
        digests.record(later.prev_offset, upload::digest(&payloads[0]));
        assert!(digests.encode_by_digest_frame(1, 2, &later).is_some());
        // A second miss soon after: everything raw for a while.
        digests.peer_missed(2, later.prev_offset);
        assert!(digests.encode_by_digest_frame(1, 2, &later).is_none());
        let miss = MissReport {
            entries_len: message.entries.len() as u64,
            ..head
        };
        let frame = miss.encode_frame(2, 1);
        let UploadFrame::Miss(decoded) = decode_frame(frame[20], &frame[21..], 1 << 20).unwrap()
        else {
            panic!("decoded as another kind");
        };
        assert_eq!(decoded, miss);
    }
}
