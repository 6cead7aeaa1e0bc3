//! Small shared types: ids, terms, the persisted hard state, configuration
//! and errors returned to the driver.

use loglog_proto::entry::DEFAULT_MAX_PAYLOAD;

/// A node's id, unique in the cluster and stable across restarts.
pub type NodeId = u64;

/// A Raft term. `u32` because the entry header stores the term in 4 bytes.
/// Term 0 is "before any leader": no entry ever carries it.
pub type Term = u32;

/// Identifies one storage write ([`crate::Action::Append`] or
/// [`crate::Action::Truncate`]). Ids increase by one per write, starting
/// at 1; the driver reports durability as "every write up to this id".
pub type WriteId = u64;

/// The state that must survive a crash before the node acts on it:
/// the current term and the vote cast in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// Length of [`HardState::encode`]'s output.
pub const HARD_STATE_LEN: usize = 13;

impl HardState {
    /// A fixed 13-byte encoding for the driver's state file, little endian:
    /// `term u32, has_vote u8 (0 or 1), voted_for u64` (0 without a vote).
    pub fn encode(&self) -> [u8; HARD_STATE_LEN] {
        let mut out = [0u8; HARD_STATE_LEN];
        out[0..4].copy_from_slice(&self.term.to_le_bytes());
        if let Some(vote) = self.voted_for {
            out[4] = 1;
            out[5..13].copy_from_slice(&vote.to_le_bytes());
        }
        out
    }

    /// Decodes [`HardState::encode`]'s bytes; anything else is `None`.
    pub fn decode(bytes: &[u8]) -> Option<HardState> {
        let bytes: &[u8; HARD_STATE_LEN] = bytes.try_into().ok()?;
        let term = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        let vote = u64::from_le_bytes(bytes[5..13].try_into().expect("8 bytes"));
        let voted_for = match bytes[4] {
            0 if vote == 0 => None,
            1 => Some(vote),
            _ => return None,
        };
        Some(HardState { term, voted_for })
    }
}

/// Test-only deliberately wrong behaviours (feature `bug-injection`). Each
/// one breaks a Raft safety rule so that the simulator can prove it notices.
#[cfg(feature = "bug-injection")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bugs {
    /// Commit an entry of an older term by counting its replicas (Raft
    /// paper, Figure 8), instead of only through an entry of the current term.
    pub commit_old_term_by_counting: bool,
    /// Record a vote in memory but never ask the driver to persist it, so a
    /// restarted node may vote twice in one term.
    pub forget_to_persist_vote: bool,
    /// Count appended bytes as durable (leader's own match, follower's ack)
    /// as soon as they are handed to the driver, before the fsync.
    pub ack_before_fsync: bool,
}

/// Tunables of one node. Build with [`Config::new`] and adjust fields.
///
/// Time is counted in ticks ([`crate::RaftNode::tick`]); the driver decides
/// how long a tick is (loglogd: 10 ms is a good start).
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Seed of the election-timeout randomness. Give each node its own
    /// (e.g. mix the node id in) so that their timeouts differ.
    pub seed: u64,
    /// Minimum election timeout in ticks. A follower's actual timeout is
    /// drawn uniformly from `election_ticks..2 * election_ticks` each time it
    /// resets. A leader with check-quorum steps down when it heard from no
    /// quorum during `election_ticks`.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks` (less than
    /// `election_ticks`).
    pub heartbeat_ticks: u32,
    /// Run a pre-vote round before a real election, so a partitioned node
    /// rejoining does not disrupt a healthy leader by bumping the term.
    pub pre_vote: bool,
    /// A leader that hears from no quorum for an election timeout steps down,
    /// and followers that heard from a leader recently ignore vote requests.
    pub check_quorum: bool,
    /// Largest payload accepted, from clients and from peers.
    pub max_payload: u32,
    /// Most entry bytes in one AppendEntries (at least one entry is always
    /// sent, even when it alone is larger).
    pub max_batch_bytes: u64,
    /// Most bytes sent to one follower and not yet acknowledged as durable.
    pub max_inflight_bytes: u64,
    /// Most bytes the leader holds above its commit offset; `propose`
    /// returns `Busy` past it. Also bounds the leader's in-memory copy of its
    /// fresh entries.
    pub max_uncommitted_bytes: u64,
    /// Most read-index requests waiting for confirmation on a leader.
    pub max_pending_reads: usize,
    /// A learner is promoted to voter only when its durable log is at most
    /// this many bytes behind the leader's commit offset.
    pub max_learner_lag_bytes: u64,
    #[cfg(feature = "bug-injection")]
    pub bugs: Bugs,
}

impl Config {
    /// Defaults suited to a 10 ms tick: elections after 150-300 ms,
    /// heartbeats every 30 ms.
    pub fn new(id: NodeId, seed: u64) -> Config {
        Config {
            id,
            seed,
            election_ticks: 15,
            heartbeat_ticks: 3,
            pre_vote: true,
            check_quorum: true,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_batch_bytes: 1024 * 1024,
            max_inflight_bytes: 8 * 1024 * 1024,
            max_uncommitted_bytes: 64 * 1024 * 1024,
            max_pending_reads: 4096,
            max_learner_lag_bytes: 1024 * 1024,
            #[cfg(feature = "bug-injection")]
            bugs: Bugs::default(),
        }
    }

    /// The cap to pass to [`crate::Envelope::decode`] for messages from
    /// peers with this configuration: a full batch plus one whole entry
    /// (a batch always carries at least one entry).
    pub fn max_message_entries_bytes(&self) -> u64 {
        self.max_batch_bytes + loglog_proto::ENTRY_HEADER_LEN as u64 + u64::from(self.max_payload)
    }

    pub(crate) fn validate(&self) -> Result<(), StartError> {
        let bad = |reason: &'static str| Err(StartError::BadConfig(reason));
        if self.election_ticks < 2 || self.election_ticks > u32::MAX / 2 {
            return bad("election_ticks must be in 2..=u32::MAX / 2");
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return bad("heartbeat_ticks must be in 1..election_ticks");
        }
        if self.max_batch_bytes == 0 || self.max_inflight_bytes == 0 {
            return bad("max_batch_bytes and max_inflight_bytes must be positive");
        }
        if self.max_message_entries_bytes() > u64::from(u32::MAX) {
            return bad("a batch plus one entry must fit a message (4 GiB)");
        }
        if self.max_payload > loglog_proto::entry::MAX_PAYLOAD_LIMIT {
            return bad("max_payload exceeds the entry format's limit");
        }
        if self.max_uncommitted_bytes < loglog_proto::ENTRY_HEADER_LEN as u64 {
            return bad("max_uncommitted_bytes must hold at least one entry header");
        }
        if self.max_pending_reads == 0 {
            return bad("max_pending_reads must be positive");
        }
        Ok(())
    }
}

/// Why `propose` (or `propose_membership`) refused an entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader; `leader` is the one it last heard from
    /// in the current term, if any.
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    /// The payload exceeds `Config::max_payload`.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    /// Back-pressure: too many uncommitted bytes, a leadership transfer in
    /// progress, or (for membership) a change still pending. Retry later.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// A membership change that is not valid against the current
    /// configuration (unknown node, already a member, learner behind...).
    #[error("invalid membership change: {0}")]
    BadMembershipChange(&'static str),
    /// A trim must stay below the commit offset: only committed bytes,
    /// which every node holds identically, may be dropped.
    #[error("trim offset {offset} is not below the commit offset {commit_offset}")]
    TrimNotBelowCommit { offset: u64, commit_offset: u64 },
}

/// Why a read-index or leadership-transfer request was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("not the leader (leader hint: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("busy: {0}")]
    Busy(&'static str),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
}

/// Why a node could not start from the state the driver gave it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("bad configuration: {0}")]
    BadConfig(&'static str),
    #[error("inconsistent persisted state: {0}")]
    Inconsistent(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_state_round_trips_and_rejects_garbage() {
        for state in [
            HardState::default(),
            HardState {
                term: 7,
                voted_for: Some(0),
            },
            HardState {
                term: u32::MAX,
                voted_for: Some(u64::MAX),
            },
        ] {
            assert_eq!(HardState::decode(&state.encode()), Some(state));
        }
        assert_eq!(HardState::decode(&[0; 12]), None);
        let mut bad = HardState::default().encode();
        bad[4] = 2;
        assert_eq!(HardState::decode(&bad), None);
    }
}
