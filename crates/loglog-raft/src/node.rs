//! The Raft state machine: [`RaftNode`]. See the crate docs for how to
//! drive it.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use loglog_proto::entry::{
    decode_trim_payload, encode_trim_payload, EntryHeader, EntryIter, EntryKind, TRIM_PAYLOAD_LEN,
};
use loglog_proto::producer::ENTRY_FLAG_PRODUCER;
use loglog_proto::ENTRY_HEADER_LEN;

use crate::fresh::{EntryArena, FreshEntries};
use crate::log::{Checkpoint, LogRead, LogReadError, LogState, LostTail, RecoveredLog, TermMap};
use crate::membership::{MemberAddress, Membership, MembershipChange};
use crate::message::{
    AppendEntries, AppendOutcome, AppendResponse, ConflictHint, Envelope, Heartbeat,
    HeartbeatResponse, InstallSnapshot, Message, NotAMember, RequestVote, RequestVoteResponse,
    TimeoutNow,
};
use crate::rng::SplitMix64;
use crate::types::{
    Config, HardState, NodeId, ProposeError, RequestError, StartError, Term, WriteId,
};

/// What a node is doing in the current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    /// Running a pre-vote round (term not bumped yet).
    PreCandidate,
    Candidate,
    Leader,
}

/// Something the driver must do, in the order given. See the crate docs
/// for the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Persist the term and vote. Must be durable before the driver performs
    /// any action that comes after it in the list (sends and writes).
    PersistHardState(HardState),
    /// Write `bytes` (whole entries) at `offset`, which is the log's end
    /// after the previous writes. Durability is reported later through
    /// [`RaftNode::storage_synced`] with this `write_id` (or a later one).
    Append {
        write_id: WriteId,
        offset: u64,
        bytes: Bytes,
    },
    /// Cut the log at `offset` (an entry boundary above the commit offset):
    /// every byte from `offset` on is discarded. This does not fail client
    /// appends waiting at or above it: a crash can undo an unsynced
    /// truncation and the entry may still commit. Settle them by the term
    /// of the committed entry at their offset (see the driver contract).
    Truncate { write_id: WriteId, offset: u64 },
    /// Send a message to a peer (best effort: loss is fine).
    Send(Envelope),
    /// The commit offset moved up: entries below it are committed and
    /// durable locally; reads and client acknowledgements may use it. The
    /// driver may persist [`RaftNode::checkpoint`] now or later.
    CommitAdvanced { commit_offset: u64 },
    /// A read-index request (`ctx`) is confirmed: the node was leader when
    /// the request came and its commit offset has reached `read_index`. The
    /// read may be served from the local log up to the current commit.
    ReadReady { ctx: u64, read_index: u64 },
    /// A read-index request can no longer be confirmed (leadership lost).
    ReadFailed { ctx: u64, leader: Option<NodeId> },
    /// The leader sent entries that contradict bytes this node knows are
    /// committed: Raft safety was broken somewhere (a bug, or durable data
    /// lost). The node refused them. Log it loudly; the simulator fails the
    /// run on it.
    ConflictBelowCommit {
        leader: NodeId,
        offset: u64,
        commit_offset: u64,
    },
    /// A trim entry committed: drop the whole segments of the log that lie
    /// below `offset` (at most the commit offset; every node holds those
    /// bytes identically). The log's new start is the first remaining
    /// segment's, at most `offset`. Idempotent; may be emitted again after
    /// a restart. Before performing it, persist [`RaftNode::checkpoint`]
    /// (its commit offset is past `offset`), so a restart never scans from
    /// a trimmed offset.
    TrimPrefix { offset: u64 },
    /// The leader's log starts above this node's commit offset (it trimmed
    /// what this node lacks): replace the whole local log, durably, by an
    /// empty one beginning at `checkpoint.commit_offset`, and persist
    /// `checkpoint` as this node's checkpoint, both before performing any
    /// later action (like [`Action::PersistHardState`]). The node's commit
    /// offset is then the new start, and reads below it answer `Trimmed`.
    /// Earlier `Append`/`Truncate` writes are superseded: reporting them
    /// synced later is harmless.
    ResetLog { checkpoint: Checkpoint },
    /// Role, term or known leader changed (informational).
    RoleChanged {
        role: Role,
        term: Term,
        leader: Option<NodeId>,
    },
}

/// A snapshot of the node's state, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub voted_for: Option<NodeId>,
    pub leader: Option<NodeId>,
    pub commit_offset: u64,
    pub end_offset: u64,
    pub durable_offset: u64,
    pub last_term: Term,
    pub membership: Membership,
}

/// The leader's view of one follower, for status pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    pub id: NodeId,
    /// Its log is durable and matches the leader's up to here.
    pub match_offset: u64,
    /// Next byte the leader will send it.
    pub next_offset: u64,
    /// Pipelined replication (else probing one message at a time).
    pub replicating: bool,
    /// Voter (else learner) in the leader's latest configuration.
    pub voter: bool,
}

/// Heartbeat intervals without any ack progress, bytes in flight, before a
/// replicating follower is probed again (its messages were likely lost).
const STALLED_HEARTBEATS_BEFORE_PROBE: u32 = 3;

/// Election timeouts a node told [`NotAMember`] waits before it campaigns
/// (and so asks) again: a removed node stays quiet, and a wrong belief
/// costs at most this long.
pub const REMOVED_BACKOFF_ELECTIONS: u32 = 10;

/// The leader's view of one follower's log.
#[derive(Clone, Debug)]
struct Progress {
    /// The follower's log is durable and matches ours up to here.
    match_offset: u64,
    /// Next byte to send.
    next_offset: u64,
    /// Probe: one message at a time until a success shows where logs match.
    /// Replicate: pipelined, up to `max_inflight_bytes` unacknowledged.
    replicating: bool,
    /// In probe mode, a probe is out and unanswered.
    probe_sent: bool,
    /// Heard from since the last check-quorum round.
    recent_active: bool,
    /// Highest read-index round it confirmed.
    read_seq_acked: u64,
    /// `match_offset` at the previous heartbeat, and how many heartbeats in
    /// a row found it unchanged with bytes in flight: a lost message in
    /// replicate mode is detected this way and answered with a probe.
    match_at_heartbeat: u64,
    stalled_heartbeats: u32,
    /// The highest commit offset our messages let it adopt so far.
    commit_sent: u64,
}

impl Progress {
    fn new(next_offset: u64) -> Progress {
        Progress {
            match_offset: 0,
            next_offset,
            replicating: false,
            probe_sent: false,
            recent_active: false,
            read_seq_acked: 0,
            match_at_heartbeat: 0,
            stalled_heartbeats: 0,
            commit_sent: 0,
        }
    }

    fn become_probe(&mut self, next_offset: u64) {
        self.replicating = false;
        self.probe_sent = false;
        self.next_offset = next_offset;
    }
}

#[derive(Clone, Debug)]
struct PendingRead {
    ctx: u64,
    /// The heartbeat round that confirms it.
    seq: u64,
    /// Set once leadership is confirmed.
    read_index: Option<u64>,
}

/// State that only exists while leading.
#[derive(Clone, Debug)]
struct LeaderState {
    progress: BTreeMap<NodeId, Progress>,
    /// Our own entries not yet committed: what we send to followers that
    /// are caught up, without reading storage (the driver has not
    /// necessarily written them yet when we send).
    fresh: FreshEntries,
    /// Where our entries are encoded.
    arena: EntryArena,
    /// Offset of this term's no-op: once the commit offset passes it, this
    /// leader's commit offset is up to date (read-index needs that).
    term_start: u64,
    heartbeat_elapsed: u32,
    heartbeat_due: bool,
    read_seq: u64,
    pending_reads: VecDeque<PendingRead>,
    transfer_target: Option<NodeId>,
}

/// A Raft node over a byte-offset log. Deterministic: the same inputs in the
/// same order produce the same actions.
#[derive(Debug)]
pub struct RaftNode {
    config: Config,
    rng: SplitMix64,
    hard: HardState,
    role: Role,
    leader_id: Option<NodeId>,
    log: LogState,
    /// Highest offset this node knows is committed in the cluster, within
    /// the prefix it knows matches the leader's log.
    known_commit: u64,
    /// What the node reports: `min(known_commit, durable end)`; monotonic.
    commit: u64,
    /// As a follower: our log matches the current leader's up to here.
    verified_end: u64,
    /// The durable matching offset last reported to the leader.
    reported_durable: u64,
    committed_membership: Membership,
    /// Config entries at or above the commit offset: `(offset, config)`.
    pending_configs: Vec<(u64, Membership)>,
    /// Trim entries at or above the commit offset: `(entry offset, trim offset)`.
    pending_trims: Vec<(u64, u64)>,
    /// Synced entries lost to disk damage, until caught up again.
    lost_tail: Option<LostTail>,
    election_elapsed: u32,
    randomized_timeout: u32,
    /// Ticks left during which this node does not campaign because a
    /// voter whose log is at least as up to date as ours answered our vote
    /// request with [`NotAMember`]: we were most likely removed. 0: not.
    removed_backoff_ticks: u32,
    votes: BTreeMap<NodeId, bool>,
    leader: Option<LeaderState>,
    actions: Vec<Action>,
}

impl RaftNode {
    /// Starts a node from what the driver persisted: the hard state and the
    /// log recovered by a [`crate::LogScan`]. The node starts as a follower
    /// with the commit offset at the scan's floor.
    pub fn new(
        config: Config,
        hard_state: HardState,
        recovered: RecoveredLog,
    ) -> Result<RaftNode, StartError> {
        config.validate()?;
        if recovered.commit_floor > recovered.end {
            return Err(StartError::Inconsistent(
                "the commit floor is past the end of the log",
            ));
        }
        if recovered.commit_floor > 0 && recovered.terms.runs().is_empty() {
            return Err(StartError::Inconsistent(
                "a non-empty committed prefix without a term map",
            ));
        }
        if recovered.start > recovered.commit_floor {
            return Err(StartError::Inconsistent(
                "the log starts above the commit floor",
            ));
        }
        if recovered.terms.last_term() > hard_state.term {
            return Err(StartError::Inconsistent(
                "the log holds an entry of a term above the persisted term",
            ));
        }
        let mut rng = SplitMix64::new(config.seed);
        let randomized_timeout = rng.in_range(config.election_ticks, 2 * config.election_ticks);
        let log = LogState::from_recovered(&recovered);
        let node = RaftNode {
            rng,
            hard: hard_state,
            role: Role::Follower,
            leader_id: None,
            known_commit: recovered.commit_floor,
            commit: recovered.commit_floor,
            verified_end: recovered.commit_floor,
            reported_durable: 0,
            committed_membership: recovered.committed_membership,
            pending_configs: recovered.pending_configs,
            pending_trims: recovered.pending_trims,
            lost_tail: recovered.lost_tail,
            election_elapsed: 0,
            randomized_timeout,
            removed_backoff_ticks: 0,
            votes: BTreeMap::new(),
            leader: None,
            actions: Vec::new(),
            log,
            config,
        };
        node.check_invariants();
        Ok(node)
    }

    // ----- accessors -----

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn term(&self) -> Term {
        self.hard.term
    }

    pub fn hard_state(&self) -> HardState {
        self.hard
    }

    /// Whether this node was recently told, by a voter whose log is at
    /// least as up to date as its own, that it is in neither of that
    /// voter's configurations ([`NotAMember`]): most likely it was removed
    /// and never received the change. It then does not campaign for
    /// [`REMOVED_BACKOFF_ELECTIONS`] election timeouts, and asks again
    /// after them; contact with a leader (it was added again) ends it.
    pub fn is_removed(&self) -> bool {
        self.removed_backoff_ticks > 0
    }

    /// The leader of the current term, as far as this node knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_id
    }

    /// Entries below this offset are committed and durable locally.
    pub fn commit_offset(&self) -> u64 {
        self.commit
    }

    /// End of the local log (committed or not).
    pub fn end_offset(&self) -> u64 {
        self.log.end
    }

    /// First offset of the local log as the node last learned it (startup,
    /// a re-seed, or a read answering `Trimmed`); bytes below were trimmed.
    pub fn log_start(&self) -> u64 {
        self.log.start
    }

    /// Bytes below this offset are fsynced (as reported by the driver).
    pub fn durable_offset(&self) -> u64 {
        self.log.synced
    }

    pub fn term_map(&self) -> &TermMap {
        &self.log.terms
    }

    /// The configuration in force: the latest config entry in the log.
    pub fn membership(&self) -> &Membership {
        self.pending_configs
            .last()
            .map_or(&self.committed_membership, |(_, membership)| membership)
    }

    /// The configuration of the latest committed config entry (or the
    /// checkpoint's): equal to [`RaftNode::membership`] once no change is
    /// pending.
    pub fn committed_membership(&self) -> &Membership {
        &self.committed_membership
    }

    /// As leader, every follower's replication state (empty otherwise).
    pub fn followers(&self) -> Vec<FollowerProgress> {
        let Some(leader) = self.leader.as_ref() else {
            return Vec::new();
        };
        let membership = self.membership();
        leader
            .progress
            .iter()
            .map(|(&id, progress)| FollowerProgress {
                id,
                match_offset: progress.match_offset,
                next_offset: progress.next_offset,
                replicating: progress.replicating,
                voter: membership.is_voter(id),
            })
            .collect()
    }

    /// The [`LostTail`] mark given at startup, until the log is durable and
    /// verified past it again; once `None`, the driver forgets its copy.
    pub fn lost_tail(&self) -> Option<LostTail> {
        self.lost_tail
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role,
            term: self.hard.term,
            voted_for: self.hard.voted_for,
            leader: self.leader_id,
            commit_offset: self.commit,
            end_offset: self.log.end,
            durable_offset: self.log.synced,
            last_term: self.log.last_term(),
            membership: self.membership().clone(),
        }
    }

    /// What to persist so a restart can skip scanning below the commit
    /// offset (see [`Checkpoint`]).
    pub fn checkpoint(&self) -> Checkpoint {
        let mut terms = self.log.terms.clone();
        terms.truncate(self.commit);
        Checkpoint {
            commit_offset: self.commit,
            terms,
            membership: self.committed_membership.clone(),
        }
    }

    // ----- inputs -----

    /// One unit of time passed.
    pub fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_leader();
        } else {
            self.election_elapsed = self.election_elapsed.saturating_add(1);
            self.removed_backoff_ticks = self.removed_backoff_ticks.saturating_sub(1);
            if self.election_elapsed >= self.randomized_timeout && self.is_promotable() {
                self.campaign(false);
            }
        }
        self.check_invariants();
    }

    /// A message from peer `from`. Anything malformed is dropped or
    /// rejected, never trusted and never a panic.
    pub fn step(&mut self, from: NodeId, message: Message) {
        if from == self.config.id {
            return;
        }
        self.step_inner(from, message);
        self.check_invariants();
    }

    /// The driver made every write up to `write_id` durable (fsync done).
    /// Write ids belong to this `RaftNode` instance: after a restart they
    /// start again from 1, and syncs of an earlier instance's writes must
    /// not be reported.
    pub fn storage_synced(&mut self, write_id: WriteId) {
        if write_id > self.log.last_write_id {
            // Not a write we asked for: ignore rather than trust it.
            return;
        }
        self.log.synced_through(write_id);
        if self.role == Role::Leader {
            self.maybe_commit();
        } else {
            self.advance_commit();
            self.report_durable_progress();
        }
        self.check_invariants();
    }

    /// Appends a data entry (leader only). Returns its offset; the entry is
    /// committed once [`RaftNode::commit_offset`] passes that offset with
    /// an entry of the proposing term at it (see the driver contract).
    pub fn propose(&mut self, payload: &[u8]) -> Result<u64, ProposeError> {
        self.check_can_propose(payload.len() as u64)?;
        let offset = self.append_local(EntryKind::Data, payload);
        self.check_invariants();
        Ok(offset)
    }

    /// Like [`RaftNode::propose`], with entry header `flags` (byte 13 of
    /// the header, e.g. [`loglog_proto::producer::ENTRY_FLAG_PRODUCER`]).
    pub fn propose_with_flags(&mut self, flags: u8, payload: &[u8]) -> Result<u64, ProposeError> {
        self.check_can_propose(payload.len() as u64)?;
        let offset = self.append_local_with_flags(EntryKind::Data, flags, payload);
        self.check_invariants();
        Ok(offset)
    }

    /// Proposes a single-server membership change (leader only), as a
    /// config entry. It takes effect as soon as it is appended.
    pub fn propose_membership(&mut self, change: MembershipChange) -> Result<u64, ProposeError> {
        self.propose_membership_with_addresses(change, &BTreeMap::new())
    }

    /// [`RaftNode::propose_membership`] that also records member addresses
    /// in the new configuration (e.g. the added learner's): `addresses` of
    /// members of the new configuration replace theirs, others are ignored.
    pub fn propose_membership_with_addresses(
        &mut self,
        change: MembershipChange,
        addresses: &BTreeMap<NodeId, MemberAddress>,
    ) -> Result<u64, ProposeError> {
        self.check_can_propose(0)?;
        let current = self.membership().clone();
        let mut next = current
            .apply(change)
            .map_err(ProposeError::BadMembershipChange)?;
        for (&id, address) in addresses {
            if next.is_member(id) {
                next.set_address(id, address.clone())
                    .map_err(ProposeError::BadMembershipChange)?;
            }
        }
        let payload = next.encode();
        self.check_can_propose(payload.len() as u64)?;
        if !self.pending_configs.is_empty() {
            return Err(ProposeError::Busy(
                "a membership change is not committed yet",
            ));
        }
        let leader = self.leader.as_ref().expect("checked: leader");
        if self.known_commit <= leader.term_start {
            return Err(ProposeError::Busy(
                "the leader has not committed an entry of its term yet",
            ));
        }
        if let MembershipChange::PromoteLearner(id) = change {
            // Within the lag bound, and holding an entry of this term: a
            // learner of a young log (commit below the bound) would
            // otherwise be promoted before it holds anything, and count in
            // quorums while it cannot yet ack a single entry.
            let caught_up = leader.progress.get(&id).is_some_and(|progress| {
                progress.match_offset > leader.term_start
                    && progress.match_offset + self.config.max_learner_lag_bytes
                        >= self.known_commit
            });
            if !caught_up {
                return Err(ProposeError::BadMembershipChange(
                    "the learner has not caught up yet",
                ));
            }
        }
        let offset = self.append_local(EntryKind::Config, &payload);
        self.check_invariants();
        Ok(offset)
    }

    /// Proposes a replicated trim (leader only): a trim entry carrying
    /// `offset`. Once it commits, every node (including one that was down,
    /// when it catches up) gets [`Action::TrimPrefix`] and drops its whole
    /// segments below `offset`. `offset` must be below the commit offset.
    /// Returns the trim entry's offset; like an append, the trim took effect
    /// once the commit offset passes it with an entry of the proposing term.
    pub fn propose_trim(&mut self, offset: u64) -> Result<u64, ProposeError> {
        self.check_can_propose(TRIM_PAYLOAD_LEN as u64)?;
        if offset >= self.commit {
            return Err(ProposeError::TrimNotBelowCommit {
                offset,
                commit_offset: self.commit,
            });
        }
        let entry_offset = self.append_local(EntryKind::Trim, &encode_trim_payload(offset));
        self.check_invariants();
        Ok(entry_offset)
    }

    /// Starts a linearizable read (leader only): once leadership is
    /// confirmed by a heartbeat round and the commit offset reaches the read
    /// index, the node emits [`Action::ReadReady`] with `ctx`.
    pub fn read_index(&mut self, ctx: u64) -> Result<(), RequestError> {
        let leader_hint = self.leader_id;
        let max_pending = self.config.max_pending_reads;
        let Some(leader) = self.leader.as_mut() else {
            return Err(RequestError::NotLeader {
                leader: leader_hint,
            });
        };
        if leader.pending_reads.len() >= max_pending {
            return Err(RequestError::Busy("too many pending reads"));
        }
        leader.read_seq += 1;
        let seq = leader.read_seq;
        leader.pending_reads.push_back(PendingRead {
            ctx,
            seq,
            read_index: None,
        });
        leader.heartbeat_due = true;
        self.process_reads();
        self.check_invariants();
        Ok(())
    }

    /// Hands leadership to `target` (leader only): once the target's log is
    /// durable up to ours, it gets `TimeoutNow` and campaigns at once. New
    /// proposals are refused meanwhile; the transfer is abandoned after an
    /// election timeout.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), RequestError> {
        if self.role != Role::Leader {
            return Err(RequestError::NotLeader {
                leader: self.leader_id,
            });
        }
        if target == self.config.id {
            return Err(RequestError::Invalid("already the leader"));
        }
        if !self.membership().is_voter(target) {
            return Err(RequestError::Invalid("the target is not a voter"));
        }
        self.election_elapsed = 0;
        let leader = self.leader.as_mut().expect("role is leader");
        leader.transfer_target = Some(target);
        self.maybe_send_timeout_now(target);
        self.check_invariants();
        Ok(())
    }

    /// Takes the actions accumulated since the last call, first generating
    /// the entries to send to followers (read from `log` or from the
    /// leader's memory). Call it after every batch of inputs and perform the
    /// actions in order.
    pub fn take_actions(&mut self, log: &dyn LogRead) -> Vec<Action> {
        if self.role == Role::Leader {
            self.replicate(log);
        }
        self.check_invariants();
        std::mem::take(&mut self.actions)
    }

    // ----- timing and elections -----

    fn tick_leader(&mut self) {
        let heartbeat_ticks = self.config.heartbeat_ticks;
        let leader = self.leader.as_mut().expect("role is leader");
        leader.heartbeat_elapsed += 1;
        if leader.heartbeat_elapsed >= heartbeat_ticks {
            leader.heartbeat_elapsed = 0;
            leader.heartbeat_due = true;
            for progress in leader.progress.values_mut() {
                // A probe may have been lost: allow another.
                progress.probe_sent = false;
                // Replicate mode: bytes in flight and no ack for a while
                // means a message was lost; probe from what is known.
                let stalled = progress.replicating
                    && progress.match_offset < progress.next_offset
                    && progress.match_offset == progress.match_at_heartbeat;
                progress.stalled_heartbeats = if stalled {
                    progress.stalled_heartbeats + 1
                } else {
                    0
                };
                progress.match_at_heartbeat = progress.match_offset;
                if progress.stalled_heartbeats >= STALLED_HEARTBEATS_BEFORE_PROBE {
                    progress.stalled_heartbeats = 0;
                    progress.become_probe(progress.match_offset);
                }
            }
        }
        self.election_elapsed += 1;
        if self.election_elapsed >= self.config.election_ticks {
            self.election_elapsed = 0;
            if self.config.check_quorum && !self.quorum_recently_active() {
                self.become_follower(self.hard.term, None);
                return;
            }
            let leader = self.leader.as_mut().expect("role is leader");
            for progress in leader.progress.values_mut() {
                progress.recent_active = false;
            }
            leader.transfer_target = None;
        }
    }

    fn quorum_recently_active(&self) -> bool {
        let leader = self.leader.as_ref().expect("role is leader");
        let membership = self.membership();
        let active = membership
            .voters
            .iter()
            .filter(|&&id| {
                id == self.config.id || leader.progress.get(&id).is_some_and(|p| p.recent_active)
            })
            .count();
        active >= membership.quorum()
    }

    /// Whether this node may campaign: it is a voter in its latest
    /// configuration, or in the committed one. The second case is a voter
    /// whose removal is appended but not committed: it may hold the most
    /// up-to-date log, and without it the others might never elect anyone.
    /// Votes are still counted in the latest configuration (which may not
    /// include the candidate); such a leader steps down once the change
    /// commits.
    fn is_promotable(&self) -> bool {
        self.lost_tail.is_none()
            && self.removed_backoff_ticks == 0
            && (self.membership().is_voter(self.config.id)
                || self.committed_membership.is_voter(self.config.id))
    }

    /// Whether we heard from a leader recently enough to ignore candidates.
    fn in_lease(&self) -> bool {
        self.config.check_quorum
            && self.leader_id.is_some()
            && self.election_elapsed < self.config.election_ticks
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        self.randomized_timeout = self
            .rng
            .in_range(self.config.election_ticks, 2 * self.config.election_ticks);
    }

    fn campaign(&mut self, transfer: bool) {
        if self.hard.term == Term::MAX {
            // Terms are exhausted (only a broken peer gets us here): stay put
            // rather than wrap around.
            return;
        }
        if self.config.pre_vote && !transfer {
            self.become_pre_candidate();
        } else {
            self.become_candidate(transfer);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.set_role(Role::PreCandidate, None);
        self.reset_election_timer();
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        let request = RequestVote {
            term: self.hard.term + 1,
            pre_vote: true,
            transfer: false,
            last_offset: self.log.end,
            last_term: self.log.last_term(),
        };
        self.broadcast_vote_request(request);
        self.tally_votes();
    }

    fn become_candidate(&mut self, transfer: bool) {
        self.hard.term += 1;
        self.hard.voted_for = Some(self.config.id);
        self.actions.push(Action::PersistHardState(self.hard));
        self.set_role(Role::Candidate, None);
        self.reset_election_timer();
        self.votes.clear();
        self.votes.insert(self.config.id, true);
        let request = RequestVote {
            term: self.hard.term,
            pre_vote: false,
            transfer,
            last_offset: self.log.end,
            last_term: self.log.last_term(),
        };
        self.broadcast_vote_request(request);
        self.tally_votes();
    }

    fn broadcast_vote_request(&mut self, request: RequestVote) {
        let voters: Vec<NodeId> = self.membership().voters.iter().copied().collect();
        for voter in voters {
            if voter != self.config.id {
                self.send(voter, Message::RequestVote(request));
            }
        }
    }

    fn tally_votes(&mut self) {
        let membership = self.membership();
        let granted = membership
            .voters
            .iter()
            .filter(|id| self.votes.get(id) == Some(&true))
            .count();
        let rejected = membership
            .voters
            .iter()
            .filter(|id| self.votes.get(id) == Some(&false))
            .count();
        let quorum = membership.quorum();
        let voters = membership.voters.len();
        if granted >= quorum {
            match self.role {
                Role::PreCandidate => self.become_candidate(false),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if rejected > voters - quorum {
            self.become_follower(self.hard.term, None);
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(term >= self.hard.term, "terms never go backwards");
        if term > self.hard.term {
            self.hard.term = term;
            self.hard.voted_for = None;
            self.actions.push(Action::PersistHardState(self.hard));
        }
        if let Some(state) = self.leader.take() {
            for read in state.pending_reads {
                self.actions.push(Action::ReadFailed {
                    ctx: read.ctx,
                    leader,
                });
            }
        }
        // Only the committed prefix is known to match the next leader.
        self.verified_end = self.known_commit;
        self.reported_durable = 0;
        self.votes.clear();
        // Only contact with a leader restarts the election timer (granting a
        // vote does so where it happens). Learning a higher term from a
        // candidate must not: candidates that cannot win would otherwise
        // keep the one node that could from ever campaigning.
        if leader.is_some() {
            self.reset_election_timer();
        }
        self.set_role(Role::Follower, leader);
    }

    fn become_leader(&mut self) {
        assert_eq!(
            self.role,
            Role::Candidate,
            "only a candidate becomes leader"
        );
        let end = self.log.end;
        let progress = self
            .membership()
            .members()
            .filter(|&id| id != self.config.id)
            .map(|id| (id, Progress::new(end)))
            .collect();
        self.leader = Some(LeaderState {
            progress,
            fresh: FreshEntries::starting_at(end),
            arena: EntryArena::new(),
            term_start: end,
            heartbeat_elapsed: 0,
            heartbeat_due: false,
            read_seq: 0,
            pending_reads: VecDeque::new(),
            transfer_target: None,
        });
        self.election_elapsed = 0;
        self.set_role(Role::Leader, Some(self.config.id));
        self.append_local(EntryKind::NoOp, &[]);
    }

    fn set_role(&mut self, role: Role, leader: Option<NodeId>) {
        if self.role != role || self.leader_id != leader {
            self.role = role;
            self.leader_id = leader;
            self.actions.push(Action::RoleChanged {
                role,
                term: self.hard.term,
                leader,
            });
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.actions.push(Action::Send(Envelope {
            from: self.config.id,
            to,
            message,
        }));
    }

    // ----- message handling -----

    fn step_inner(&mut self, from: NodeId, message: Message) {
        // Informational, whatever its term: it changes no term.
        if let Message::NotAMember(notice) = message {
            self.handle_not_a_member(notice);
            return;
        }
        if let Message::RequestVote(_) = message {
            self.tell_if_not_a_member(from);
        }
        let term = message.term();
        if term > self.hard.term {
            match &message {
                Message::RequestVote(request) => {
                    if self.in_lease() && !request.transfer {
                        // A leader is alive: do not let this candidate disrupt it.
                        if request.pre_vote {
                            self.send(
                                from,
                                Message::RequestVoteResponse(RequestVoteResponse {
                                    term: self.hard.term,
                                    pre_vote: true,
                                    granted: false,
                                }),
                            );
                        }
                        return;
                    }
                    if !request.pre_vote {
                        self.become_follower(term, None);
                    }
                }
                Message::RequestVoteResponse(response) if response.pre_vote && response.granted => {
                    // Granted pre-votes carry the term we would campaign in.
                }
                Message::AppendEntries(_)
                | Message::Heartbeat(_)
                | Message::TimeoutNow(_)
                | Message::InstallSnapshot(_) => {
                    self.become_follower(term, Some(from));
                }
                _ => self.become_follower(term, None),
            }
        } else if term < self.hard.term {
            match message {
                Message::AppendEntries(_) | Message::Heartbeat(_) | Message::InstallSnapshot(_) => {
                    // A stale leader: tell it about the newer term so it steps down.
                    self.send(
                        from,
                        Message::HeartbeatResponse(HeartbeatResponse {
                            term: self.hard.term,
                            read_seq: 0,
                            log_end: self.log.end,
                        }),
                    );
                }
                Message::RequestVote(request) if request.pre_vote => {
                    self.send(
                        from,
                        Message::RequestVoteResponse(RequestVoteResponse {
                            term: self.hard.term,
                            pre_vote: true,
                            granted: false,
                        }),
                    );
                }
                _ => {}
            }
            return;
        }

        match message {
            Message::RequestVote(request) => self.handle_vote_request(from, request),
            Message::RequestVoteResponse(response) => self.handle_vote_response(from, response),
            Message::AppendEntries(append) => {
                if self.accept_leader(from) {
                    self.handle_append(from, append);
                }
            }
            Message::Heartbeat(heartbeat) => {
                if self.accept_leader(from) {
                    self.handle_heartbeat(from, heartbeat);
                }
            }
            Message::InstallSnapshot(snapshot) => {
                if self.accept_leader(from) {
                    self.handle_install_snapshot(from, snapshot);
                }
            }
            Message::AppendResponse(response) => self.handle_append_response(from, response),
            Message::HeartbeatResponse(response) => self.handle_heartbeat_response(from, response),
            Message::TimeoutNow(_) => {
                // Only a leader that counts us among its voters sends it.
                self.removed_backoff_ticks = 0;
                if self.role != Role::Leader && self.is_promotable() {
                    self.campaign(true);
                }
            }
            // Handled before the term checks.
            Message::NotAMember(_) => {}
        }
    }

    /// Answers a vote request from a node in neither of our configurations
    /// with [`NotAMember`] (its vote request is still handled as any other:
    /// we may be the one behind, and it may need our vote).
    fn tell_if_not_a_member(&mut self, from: NodeId) {
        if self.membership().is_member(from) || self.committed_membership.is_member(from) {
            return;
        }
        if let Some(notice) = self.not_a_member_notice() {
            self.send(from, Message::NotAMember(notice));
        }
    }

    /// What this node tells a node that is in neither of its
    /// configurations, [`NotAMember`]; `None` unless it is a voter (in its
    /// latest or committed configuration): only a voter says it, one that
    /// can itself campaign in the other's place. A driver whose transport
    /// refuses non-members before any message is exchanged sends this with
    /// its refusal, and the other side steps it as a message.
    pub fn not_a_member_notice(&self) -> Option<NotAMember> {
        let me = self.config.id;
        let voter = self.membership().is_voter(me) || self.committed_membership.is_voter(me);
        voter.then(|| NotAMember {
            term: self.hard.term,
            last_offset: self.log.end,
            last_term: self.log.last_term(),
        })
    }

    /// A voter says we are in neither of its configurations. Believed only
    /// while we campaign (or, as a learner of our latest configuration,
    /// which never campaigns, once we heard no leader for an election
    /// timeout) and only if its log is at
    /// least as up to date as ours: then its log holds ours (same last
    /// term) or comes from a later leader, which held every entry committed
    /// before it, so a committed configuration that includes us would be
    /// in it, and a voter that knows all we know can campaign in our
    /// place. Stopping is never unsafe (we only stop campaigning) and
    /// lasts a bounded time.
    fn handle_not_a_member(&mut self, notice: NotAMember) {
        let campaigning = matches!(self.role, Role::PreCandidate | Role::Candidate);
        // (A node with no configuration yet is joining, not removed.)
        let learner = self.membership().learners.contains(&self.config.id);
        let leaderless = self.election_elapsed >= self.config.election_ticks;
        let believed = campaigning || (learner && leaderless);
        if !believed {
            return;
        }
        if (notice.last_term, notice.last_offset) < (self.log.last_term(), self.log.end) {
            return;
        }
        self.removed_backoff_ticks =
            REMOVED_BACKOFF_ELECTIONS.saturating_mul(self.config.election_ticks);
        self.become_follower(self.hard.term, None);
    }

    /// A message from the leader of our term: follow it. Returns false if
    /// we are ourselves leader of this term (impossible unless a peer is
    /// broken; ignore it).
    fn accept_leader(&mut self, from: NodeId) -> bool {
        if self.role == Role::Leader {
            return false;
        }
        if self.role != Role::Follower || self.leader_id != Some(from) {
            self.become_follower(self.hard.term, Some(from));
        }
        self.election_elapsed = 0;
        // A leader replicates to us: we are a member (again).
        self.removed_backoff_ticks = 0;
        true
    }

    fn handle_vote_request(&mut self, from: NodeId, request: RequestVote) {
        let can_vote = self.hard.voted_for == Some(from)
            || (self.hard.voted_for.is_none() && self.leader_id.is_none())
            || (request.pre_vote && request.term > self.hard.term);
        let candidate_log = (request.last_term, request.last_offset);
        let up_to_date = candidate_log >= (self.log.last_term(), self.log.end)
            && self
                .lost_tail
                .is_none_or(|lost| candidate_log >= (lost.last_term, lost.end_offset));
        let granted = can_vote && up_to_date;
        if granted && !request.pre_vote {
            self.hard.voted_for = Some(from);
            self.reset_election_timer();
            if !self.bug_forget_to_persist_vote() {
                self.actions.push(Action::PersistHardState(self.hard));
            }
        }
        let term = if granted && request.pre_vote {
            request.term
        } else {
            self.hard.term
        };
        self.send(
            from,
            Message::RequestVoteResponse(RequestVoteResponse {
                term,
                pre_vote: request.pre_vote,
                granted,
            }),
        );
    }

    fn handle_vote_response(&mut self, from: NodeId, response: RequestVoteResponse) {
        let expected = match self.role {
            // A granted pre-vote names the term we would campaign in; an
            // older grant belongs to an earlier round.
            Role::PreCandidate => {
                response.pre_vote && (!response.granted || response.term == self.hard.term + 1)
            }
            Role::Candidate => !response.pre_vote && response.term == self.hard.term,
            _ => false,
        };
        if !expected || !self.membership().is_voter(from) {
            return;
        }
        self.votes.entry(from).or_insert(response.granted);
        self.tally_votes();
    }

    fn handle_heartbeat(&mut self, from: NodeId, heartbeat: Heartbeat) {
        // `commit` is at most our durable match as the leader knows it, so
        // it lies in the prefix of our log that matches the leader's.
        let commit = heartbeat.commit.min(self.log.end);
        if commit > self.known_commit {
            self.known_commit = commit;
            self.verified_end = self.verified_end.max(commit);
            self.advance_commit();
        }
        self.send(
            from,
            Message::HeartbeatResponse(HeartbeatResponse {
                term: self.hard.term,
                read_seq: heartbeat.read_seq,
                log_end: self.log.end,
            }),
        );
    }

    /// The follower side of AppendEntries: check `prev`, validate every
    /// entry, truncate a conflicting suffix, append the rest.
    fn handle_append(&mut self, from: NodeId, append: AppendEntries) {
        let prev = append.prev_offset;
        let end = prev.saturating_add(append.entries.len() as u64);
        let prev_matches = prev <= self.log.end
            && self.log.is_boundary(prev)
            && self.log.terms.term_before(prev) == append.prev_term;
        if !prev_matches {
            let hint = self.conflict_hint(prev, append.prev_term);
            self.reject_append(from, prev, hint);
            return;
        }
        let Some(entries) = self.validate_entries(&append) else {
            // Corrupt or impossible bytes: ask for them again from `prev`.
            let hint = self.conflict_hint(prev, append.prev_term);
            self.reject_append(from, prev, hint);
            return;
        };
        // A batch that extends exactly what this leader already verified.
        let pipelined = prev == self.verified_end;
        let mut truncated = false;
        // Skip the entries we already have (same offset and term means the
        // same entry); the first that differs is where our log diverges.
        let mut first_new = entries.len();
        for (index, entry) in entries.iter().enumerate() {
            if entry.offset >= self.log.end || self.log.terms.term_at(entry.offset) != entry.term {
                first_new = index;
                break;
            }
        }
        if let Some(first) = entries.get(first_new) {
            if first.offset < self.log.end {
                if first.offset < self.known_commit {
                    // Never truncate committed bytes; report the violation.
                    self.actions.push(Action::ConflictBelowCommit {
                        leader: from,
                        offset: first.offset,
                        commit_offset: self.known_commit,
                    });
                    return;
                }
                truncated = true;
                let write_id = self.log.truncate(first.offset);
                self.pending_configs
                    .retain(|(offset, _)| *offset < first.offset);
                self.pending_trims
                    .retain(|(offset, _)| *offset < first.offset);
                self.verified_end = self.verified_end.min(first.offset);
                self.actions.push(Action::Truncate {
                    write_id,
                    offset: first.offset,
                });
            }
            let start = (first.offset - prev) as usize;
            for entry in &entries[first_new..] {
                self.log
                    .push_entry(entry.term, entry.len)
                    .expect("validated: terms non-decreasing and non-zero");
                if let Some(membership) = &entry.config {
                    self.pending_configs
                        .push((entry.offset, membership.clone()));
                }
                if let Some(trim_to) = entry.trim {
                    self.pending_trims.push((entry.offset, trim_to));
                }
            }
            let write_id = self.log.record_write(self.log.end);
            let offset = first.offset;
            let bytes = append.entries.slice(start..);
            self.actions.push(Action::Append {
                write_id,
                offset,
                bytes,
            });
        }
        // An honest leader's batch ends inside our log now; a forged one (a
        // `prev` below our commit offset that is no entry boundary) may
        // claim more than we hold, so never trust past our own end.
        let end = end.min(self.log.end);
        self.verified_end = self.verified_end.max(end);
        let commit = append.leader_commit.min(end);
        if commit > self.known_commit {
            self.known_commit = commit;
        }
        self.advance_commit();
        let durable_end = self.durable_end().min(self.verified_end);
        let durable_news = durable_end > self.reported_durable;
        self.reported_durable = self.reported_durable.max(durable_end);
        self.maybe_clear_lost_tail();
        let appended = first_new < entries.len();
        if pipelined && appended && !truncated && !durable_news {
            // Nothing the leader does not know yet: the ack sent once these
            // bytes are fsynced (`report_durable_progress`) says it all, so
            // pipelined batches cost one reply each, not two.
            return;
        }
        self.send(
            from,
            Message::AppendResponse(AppendResponse {
                term: self.hard.term,
                outcome: AppendOutcome::Accepted {
                    verified_end: self.verified_end,
                    durable_end,
                },
            }),
        );
    }

    /// The follower side of InstallSnapshot: the leader's log starts at
    /// `start = checkpoint.commit_offset` (committed). If our log already
    /// holds that prefix, keep it; otherwise discard the whole log and begin
    /// an empty one at `start` (the bytes below are committed, so nothing a
    /// client was promised is lost: the cluster holds them, or trimmed them).
    fn handle_install_snapshot(&mut self, from: NodeId, snapshot: InstallSnapshot) {
        let checkpoint = snapshot.checkpoint;
        let start = checkpoint.commit_offset;
        let start_term = checkpoint.terms.last_term();
        if start == 0
            || start > snapshot.leader_commit
            || start_term == 0
            || start_term > snapshot.term
            || checkpoint.membership.voters.is_empty()
        {
            return; // Not a checkpoint an honest leader sends.
        }
        let holds_prefix = start <= self.log.end
            && self.log.is_boundary(start)
            && self.log.terms.term_before(start) == start_term;
        if holds_prefix {
            self.known_commit = self.known_commit.max(start);
            self.verified_end = self.verified_end.max(start);
            self.advance_commit();
        } else if start <= self.commit {
            // Our committed bytes disagree with the leader's: never discard them.
            self.actions.push(Action::ConflictBelowCommit {
                leader: from,
                offset: start,
                commit_offset: self.commit,
            });
            return;
        } else {
            self.log.reset(start, checkpoint.terms.clone());
            self.committed_membership = checkpoint.membership.clone();
            self.pending_configs.clear();
            self.pending_trims.clear();
            self.known_commit = start;
            self.commit = start;
            self.verified_end = start;
            self.actions.push(Action::ResetLog { checkpoint });
            self.actions.push(Action::CommitAdvanced {
                commit_offset: start,
            });
        }
        let durable_end = self.durable_end().min(self.verified_end);
        self.reported_durable = self.reported_durable.max(durable_end);
        self.maybe_clear_lost_tail();
        self.send(
            from,
            Message::AppendResponse(AppendResponse {
                term: self.hard.term,
                outcome: AppendOutcome::Accepted {
                    verified_end: self.verified_end,
                    durable_end,
                },
            }),
        );
    }

    fn reject_append(&mut self, to: NodeId, rejected_prev: u64, hint: ConflictHint) {
        self.send(
            to,
            Message::AppendResponse(AppendResponse {
                term: self.hard.term,
                outcome: AppendOutcome::Rejected {
                    rejected_prev,
                    hint,
                },
            }),
        );
    }

    /// Where our log may diverge from a leader whose entry ending at
    /// `prev_offset` has term `prev_term`: walk back a term at a time
    /// (never an entry at a time) to the last run whose term is at most
    /// `prev_term`.
    fn conflict_hint(&self, prev_offset: u64, prev_term: Term) -> ConflictHint {
        let mut offset = prev_offset.min(self.log.end);
        loop {
            let Some(run) = offset
                .checked_sub(1)
                .and_then(|last| self.log.terms.run_at(last))
            else {
                return ConflictHint {
                    term: 0,
                    term_start: 0,
                    offset: 0,
                };
            };
            if run.term <= prev_term {
                return ConflictHint {
                    term: run.term,
                    term_start: run.start,
                    offset,
                };
            }
            offset = run.start;
        }
    }

    /// Parses and checks every entry of an AppendEntries; `None` if any is
    /// corrupt, too large, of a bad term, or a config that does not decode.
    fn validate_entries(&self, append: &AppendEntries) -> Option<Vec<ReceivedEntry>> {
        let mut entries = Vec::new();
        let mut last_term = append.prev_term;
        let mut iter = EntryIter::new(&append.entries, append.prev_offset, self.config.max_payload);
        for entry in iter.by_ref() {
            let entry = entry.ok()?;
            let term = entry.header.term;
            // Known flags only: PRODUCER, on data entries.
            let flags = entry.header.flags;
            let flags_known = flags & !ENTRY_FLAG_PRODUCER == 0
                && (flags == 0 || entry.header.kind == EntryKind::Data);
            if term == 0 || term < last_term || term > append.term || !flags_known {
                return None;
            }
            last_term = term;
            let config = if entry.header.kind == EntryKind::Config {
                Some(Membership::decode(entry.payload).ok()?)
            } else {
                None
            };
            let trim = if entry.header.kind == EntryKind::Trim {
                // A trim only ever reaches below its own entry.
                Some(decode_trim_payload(entry.payload).filter(|&to| to <= entry.offset)?)
            } else {
                None
            };
            entries.push(ReceivedEntry {
                offset: entry.offset,
                term,
                len: entry.header.entry_len(),
                config,
                trim,
            });
        }
        (iter.offset() == append.prev_offset + append.entries.len() as u64).then_some(entries)
    }

    fn handle_append_response(&mut self, from: NodeId, response: AppendResponse) {
        let end = self.log.end;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        match response.outcome {
            AppendOutcome::Accepted {
                verified_end,
                durable_end,
            } => {
                if verified_end > end || durable_end > verified_end {
                    return; // Not a log of ours: ignore.
                }
                progress.match_offset = progress.match_offset.max(durable_end);
                if progress.replicating {
                    progress.next_offset = progress.next_offset.max(verified_end);
                } else {
                    progress.replicating = true;
                    progress.probe_sent = false;
                    progress.next_offset = verified_end.max(progress.match_offset);
                }
                self.maybe_commit();
                self.maybe_send_timeout_now(from);
            }
            AppendOutcome::Rejected {
                rejected_prev,
                hint,
            } => {
                let stale = if progress.replicating {
                    rejected_prev < progress.match_offset
                } else {
                    rejected_prev != progress.next_offset
                };
                if stale {
                    return;
                }
                let match_offset = progress.match_offset;
                let mut next = self.next_after_rejection(rejected_prev, hint);
                if match_offset < rejected_prev {
                    next = next.max(match_offset);
                }
                let leader = self.leader.as_mut().expect("checked above");
                let progress = leader.progress.get_mut(&from).expect("checked above");
                progress.become_probe(next);
            }
        }
    }

    /// Where to probe after a rejection, using the follower's hint: an
    /// offset that is an entry boundary of our log and, given the hint,
    /// most likely of the follower's too. Never above `rejected_prev`.
    fn next_after_rejection(&self, rejected_prev: u64, hint: ConflictHint) -> u64 {
        let terms = &self.log.terms;
        let fallback = |below: u64| -> u64 {
            if self.log.end < below {
                self.log.end
            } else {
                below
                    .checked_sub(1)
                    .and_then(|last| terms.last_start_at_most(last))
                    .unwrap_or(0)
            }
        };
        let candidate = if hint.term == 0 {
            0
        } else if terms.start_of(hint.term) == Some(hint.term_start) {
            // Both logs hold this term from the same start, each a prefix of
            // what its leader wrote: they agree up to the shorter run.
            let our_end = terms.end_of(hint.term, self.log.end).expect("term present");
            our_end.min(hint.offset)
        } else if self.log.end <= hint.term_start {
            self.log.end
        } else {
            // The follower's entries of that term are not in our log: go
            // back to our last term boundary at or before them.
            terms.last_start_at_most(hint.term_start).unwrap_or(0)
        };
        let is_our_boundary = candidate <= self.log.end
            && (self.log.is_boundary(candidate)
                || terms.start_of(terms.term_at(candidate)) == Some(candidate));
        // Equal is allowed: a rejection of intact-looking but corrupt bytes
        // points back at the same `prev`, and the bytes are simply resent.
        if candidate <= rejected_prev && is_our_boundary {
            candidate
        } else {
            fallback(rejected_prev)
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, response: HeartbeatResponse) {
        let end = self.log.end;
        let Some(leader) = self.leader.as_mut() else {
            return;
        };
        let Some(progress) = leader.progress.get_mut(&from) else {
            return;
        };
        progress.recent_active = true;
        progress.read_seq_acked = progress.read_seq_acked.max(response.read_seq);
        if response.log_end < progress.match_offset {
            // It lost bytes it acknowledged (disk damage, see `LostTail`),
            // or this response is older than its last ack: either way,
            // find out from a probe where its log really ends.
            progress.match_offset = 0;
            progress.match_at_heartbeat = 0;
            progress.become_probe(end);
        } else if !progress.replicating && progress.match_offset < end {
            progress.probe_sent = false;
        }
        self.process_reads();
    }

    // ----- leader: appending, replicating, committing -----

    fn check_can_propose(&self, payload_len: u64) -> Result<(), ProposeError> {
        let Some(leader) = self.leader.as_ref() else {
            return Err(ProposeError::NotLeader {
                leader: self.leader_id,
            });
        };
        if payload_len > u64::from(self.config.max_payload) {
            return Err(ProposeError::TooLarge {
                len: payload_len,
                max: self.config.max_payload,
            });
        }
        if leader.transfer_target.is_some() {
            return Err(ProposeError::Busy("leadership transfer in progress"));
        }
        let uncommitted = self.log.end - self.known_commit;
        if uncommitted + ENTRY_HEADER_LEN as u64 + payload_len > self.config.max_uncommitted_bytes {
            return Err(ProposeError::Busy("too many uncommitted bytes"));
        }
        Ok(())
    }

    /// Appends an entry of the current term to our own log (leader only).
    fn append_local(&mut self, kind: EntryKind, payload: &[u8]) -> u64 {
        self.append_local_with_flags(kind, 0, payload)
    }

    fn append_local_with_flags(&mut self, kind: EntryKind, flags: u8, payload: &[u8]) -> u64 {
        let offset = self.log.end;
        let leader = self.leader.as_mut().expect("only a leader appends locally");
        let header = EntryHeader::with_flags(self.hard.term, kind, flags, payload);
        let bytes = leader.arena.encode(&header.encode(), payload);
        self.log
            .push_entry(self.hard.term, bytes.len() as u64)
            .expect("a leader appends entries of its own, highest, term");
        let write_id = self.log.record_write(self.log.end);
        let leader = self.leader.as_mut().expect("only a leader appends locally");
        leader.fresh.push(bytes.clone());
        if kind == EntryKind::Config {
            let membership = Membership::decode(payload).expect("encoded by Membership::encode");
            let end = self.log.end;
            leader.progress.retain(|id, _| membership.is_member(*id));
            for id in membership.members() {
                if id != self.config.id {
                    leader
                        .progress
                        .entry(id)
                        .or_insert_with(|| Progress::new(end));
                }
            }
            self.pending_configs.push((offset, membership));
        }
        if kind == EntryKind::Trim {
            let trim_to = decode_trim_payload(payload).expect("encoded by propose_trim");
            self.pending_trims.push((offset, trim_to));
        }
        self.actions.push(Action::Append {
            write_id,
            offset,
            bytes,
        });
        #[cfg(feature = "bug-injection")]
        if self.config.bugs.ack_before_fsync {
            self.maybe_commit();
        }
        offset
    }

    /// Our own durable end, as far as commit and acks are concerned.
    fn durable_end(&self) -> u64 {
        #[cfg(feature = "bug-injection")]
        if self.config.bugs.ack_before_fsync {
            return self.log.end;
        }
        self.log.synced
    }

    fn bug_forget_to_persist_vote(&self) -> bool {
        #[cfg(feature = "bug-injection")]
        if self.config.bugs.forget_to_persist_vote {
            return true;
        }
        false
    }

    fn bug_commit_old_term(&self) -> bool {
        #[cfg(feature = "bug-injection")]
        if self.config.bugs.commit_old_term_by_counting {
            return true;
        }
        false
    }

    /// Leader: the commit offset is the largest offset durable on a quorum
    /// of voters, provided the entry ending there is of the current term.
    fn maybe_commit(&mut self) {
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        let membership = self.membership();
        if membership.voters.is_empty() {
            return;
        }
        let mut durable: Vec<u64> = membership
            .voters
            .iter()
            .map(|&id| {
                if id == self.config.id {
                    self.durable_end()
                } else {
                    leader.progress.get(&id).map_or(0, |p| p.match_offset)
                }
            })
            .collect();
        durable.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_durable = durable[membership.quorum() - 1];
        if quorum_durable > self.known_commit
            && (self.log.terms.term_before(quorum_durable) == self.hard.term
                || self.bug_commit_old_term())
        {
            self.known_commit = quorum_durable;
        }
        self.advance_commit();
    }

    /// Moves the reported commit offset to `min(known commit, durable end)`
    /// and applies what follows from it.
    fn advance_commit(&mut self) {
        let commit = self.known_commit.min(self.durable_end());
        if commit <= self.commit {
            return;
        }
        self.commit = commit;
        self.log.raise_floor(commit);
        let committed = self
            .pending_configs
            .partition_point(|(offset, _)| *offset < commit);
        if committed > 0 {
            let mut drained: Vec<_> = self.pending_configs.drain(..committed).collect();
            self.committed_membership = drained.pop().expect("at least one").1;
        }
        let trims = self
            .pending_trims
            .partition_point(|(offset, _)| *offset < commit);
        if trims > 0 {
            // Trims only move the start up: the last committed one says it all.
            let trim_to = self
                .pending_trims
                .drain(..trims)
                .map(|(_, trim_to)| trim_to)
                .max()
                .expect("at least one");
            self.actions.push(Action::TrimPrefix {
                offset: trim_to.min(commit),
            });
        }
        self.actions.push(Action::CommitAdvanced {
            commit_offset: commit,
        });
        if let Some(leader) = self.leader.as_mut() {
            leader.fresh.forget_below(commit);
        }
        self.process_reads();
        if self.role == Role::Leader && !self.membership().is_voter(self.config.id) {
            // Our removal is committed (or we are a learner): step aside.
            if self.pending_configs.is_empty() {
                self.become_follower(self.hard.term, None);
            }
        }
    }

    /// Confirms read-index requests whose heartbeat round a quorum answered,
    /// and releases those whose read index is committed.
    fn process_reads(&mut self) {
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        if self.known_commit <= leader.term_start {
            // Our commit offset may still lag the cluster's: wait for the no-op.
            return;
        }
        let membership = self.membership();
        if membership.voters.is_empty() {
            return;
        }
        let mut acked: Vec<u64> = membership
            .voters
            .iter()
            .map(|&id| {
                if id == self.config.id {
                    leader.read_seq
                } else {
                    leader.progress.get(&id).map_or(0, |p| p.read_seq_acked)
                }
            })
            .collect();
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed_seq = acked[membership.quorum() - 1];
        let known_commit = self.known_commit;
        let commit = self.commit;
        let leader = self.leader.as_mut().expect("checked above");
        for read in leader.pending_reads.iter_mut() {
            if read.seq > confirmed_seq {
                break;
            }
            read.read_index.get_or_insert(known_commit);
        }
        while let Some(read) = leader.pending_reads.front() {
            match read.read_index {
                Some(read_index) if read_index <= commit => {
                    self.actions.push(Action::ReadReady {
                        ctx: read.ctx,
                        read_index,
                    });
                    leader.pending_reads.pop_front();
                }
                _ => break,
            }
        }
    }

    fn maybe_send_timeout_now(&mut self, target: NodeId) {
        let end = self.log.end;
        let Some(leader) = self.leader.as_ref() else {
            return;
        };
        if leader.transfer_target != Some(target) {
            return;
        }
        if leader
            .progress
            .get(&target)
            .is_some_and(|p| p.match_offset == end)
        {
            self.send(
                target,
                Message::TimeoutNow(TimeoutNow {
                    term: self.hard.term,
                }),
            );
        }
    }

    /// Generates heartbeats and AppendEntries for every follower, within
    /// each one's flow-control window.
    fn replicate(&mut self, log: &dyn LogRead) {
        let peers: Vec<NodeId> = self
            .leader
            .as_ref()
            .expect("role is leader")
            .progress
            .keys()
            .copied()
            .collect();
        let heartbeat_due =
            std::mem::take(&mut self.leader.as_mut().expect("role is leader").heartbeat_due);
        for peer in peers {
            if heartbeat_due {
                self.send_heartbeat(peer);
            }
            self.replicate_to(peer, log);
            // A follower with nothing new to receive still learns a commit
            // offset that moved, now rather than at the next heartbeat (its
            // readers wait for it).
            let leader = self.leader.as_ref().expect("role is leader");
            let progress = &leader.progress[&peer];
            if self.known_commit.min(progress.match_offset) > progress.commit_sent {
                self.send_heartbeat(peer);
            }
        }
    }

    fn send_heartbeat(&mut self, peer: NodeId) {
        let leader = self.leader.as_mut().expect("role is leader");
        let progress = leader.progress.get_mut(&peer).expect("peer listed");
        let commit = self.known_commit.min(progress.match_offset);
        progress.commit_sent = progress.commit_sent.max(commit);
        let heartbeat = Heartbeat {
            term: self.hard.term,
            commit,
            read_seq: leader.read_seq,
        };
        self.send(peer, Message::Heartbeat(heartbeat));
    }

    fn replicate_to(&mut self, peer: NodeId, log: &dyn LogRead) {
        loop {
            let leader = self.leader.as_ref().expect("role is leader");
            let progress = &leader.progress[&peer];
            let from = progress.next_offset;
            let budget = if progress.replicating {
                let in_flight = from.saturating_sub(progress.match_offset);
                if from >= self.log.end || in_flight >= self.config.max_inflight_bytes {
                    return;
                }
                (self.config.max_inflight_bytes - in_flight).min(self.config.max_batch_bytes)
            } else {
                if progress.probe_sent {
                    return;
                }
                self.config.max_batch_bytes
            };
            if from < self.log.start {
                // Trimmed here: the follower starts over from our log start.
                self.send_snapshot(peer);
                return;
            }
            let entries = if from < self.log.end {
                match self.read_entries(from, budget, log) {
                    Ok(entries) => entries,
                    Err(Some(start)) if start > from && start <= self.commit => {
                        // Our log was trimmed past `from` since we last
                        // looked: a segment start, so an entry boundary.
                        self.log.start = self.log.start.max(start);
                        continue;
                    }
                    Err(_) => return, // Retried on the next call.
                }
            } else {
                Bytes::new()
            };
            let message = AppendEntries {
                term: self.hard.term,
                prev_offset: from,
                prev_term: self.log.terms.term_before(from),
                leader_commit: self.known_commit,
                entries,
            };
            let sent_end = from + message.entries.len() as u64;
            let leader = self.leader.as_mut().expect("role is leader");
            let progress = leader.progress.get_mut(&peer).expect("peer listed");
            let replicating = progress.replicating;
            if replicating {
                progress.next_offset = sent_end;
            } else {
                progress.probe_sent = true;
            }
            // The follower adopts `min(leader_commit, end of these entries)`.
            progress.commit_sent = progress.commit_sent.max(self.known_commit.min(sent_end));
            self.send(peer, Message::AppendEntries(message));
            if !replicating {
                return;
            }
        }
    }

    /// Sends the checkpoint of our log start to a follower that needs bytes
    /// below it (Raft's InstallSnapshot; the state machine is empty). One
    /// at a time, like a probe: its answer (an accept at the start) puts the
    /// follower back into replication from there.
    fn send_snapshot(&mut self, peer: NodeId) {
        let start = self.log.start;
        let mut terms = self.log.terms.clone();
        terms.truncate(start);
        let checkpoint = Checkpoint {
            commit_offset: start,
            terms,
            membership: self.committed_membership.clone(),
        };
        let known_commit = self.known_commit;
        let term = self.hard.term;
        let leader = self.leader.as_mut().expect("role is leader");
        let progress = leader.progress.get_mut(&peer).expect("peer listed");
        if progress.replicating || progress.probe_sent {
            progress.replicating = false;
            if progress.probe_sent {
                return;
            }
        }
        progress.probe_sent = true;
        progress.commit_sent = progress.commit_sent.max(start);
        self.send(
            peer,
            Message::InstallSnapshot(InstallSnapshot {
                term,
                leader_commit: known_commit,
                checkpoint,
            }),
        );
    }

    /// Whole entries from `from` (a boundary below our end), up to `budget`
    /// bytes but at least one entry: from memory when fresh, else from the
    /// driver's log. `Err(Some(start))` if the log is trimmed at `start`
    /// past `from`, `Err(None)` if they cannot be read now.
    fn read_entries(
        &self,
        from: u64,
        budget: u64,
        log: &dyn LogRead,
    ) -> Result<Bytes, Option<u64>> {
        let leader = self.leader.as_ref().expect("role is leader");
        if from >= leader.fresh.start() {
            let limit = from.saturating_add(budget);
            // The last boundary at or below the limit, but past `from`.
            let boundaries = &self.log.boundaries;
            let after_limit = boundaries.partition_point(|&start| start <= limit);
            let mut end = if limit >= self.log.end {
                self.log.end
            } else {
                boundaries
                    .get(after_limit.saturating_sub(1))
                    .copied()
                    .unwrap_or(from)
            };
            if end <= from {
                let next = boundaries.partition_point(|&start| start <= from);
                end = boundaries.get(next).copied().unwrap_or(self.log.end);
            }
            let end = leader.fresh.end_without_copying_large(from, end);
            return Ok(leader.fresh.range(from, end));
        }
        let bytes = match log.read(from, budget) {
            Ok(bytes) => bytes,
            Err(LogReadError::Trimmed { start }) => return Err(Some(start)),
            Err(LogReadError::Storage(_)) => return Err(None),
        };
        // Keep only whole entries inside our log (a header walk; the
        // follower checks the CRCs).
        let limit = self.log.end - from;
        let mut taken: u64 = 0;
        while taken < bytes.len() as u64 {
            let header = EntryHeader::decode(&bytes[taken as usize..], self.config.max_payload)
                .map_err(|_| None)?;
            let next = taken + header.entry_len();
            if next > bytes.len() as u64 || next > limit {
                break;
            }
            taken = next;
        }
        if taken == 0 {
            return Err(None);
        }
        let mut bytes = bytes;
        bytes.truncate(taken as usize);
        Ok(Bytes::from(bytes))
    }

    // ----- follower: acknowledgements -----

    /// Clears the lost-tail mark once the log is durable and matches the
    /// leader's past it.
    fn maybe_clear_lost_tail(&mut self) {
        if let Some(lost) = self.lost_tail {
            if self.durable_end().min(self.verified_end) >= lost.end_offset {
                self.lost_tail = None;
            }
        }
    }

    /// After an fsync, tell the leader how far our matching log is durable.
    fn report_durable_progress(&mut self) {
        self.maybe_clear_lost_tail();
        let Some(leader) = self.leader_id else {
            return;
        };
        if self.role != Role::Follower {
            return;
        }
        let durable_end = self.durable_end().min(self.verified_end);
        if durable_end > self.reported_durable {
            self.reported_durable = durable_end;
            self.send(
                leader,
                Message::AppendResponse(AppendResponse {
                    term: self.hard.term,
                    outcome: AppendOutcome::Accepted {
                        verified_end: self.verified_end,
                        durable_end,
                    },
                }),
            );
        }
    }

    // ----- invariants -----

    /// Cheap checks always; the costly ones only in debug builds.
    fn check_invariants(&self) {
        assert!(
            self.commit <= self.known_commit,
            "commit beyond what is known committed"
        );
        assert!(
            self.commit <= self.durable_end(),
            "commit beyond the durable log"
        );
        assert!(
            self.known_commit <= self.log.end,
            "known commit beyond the log"
        );
        assert!(
            self.log.synced <= self.log.end,
            "durable offset beyond the log"
        );
        assert!(
            self.log.start <= self.commit,
            "the log starts above the commit offset"
        );
        assert!(
            self.log.last_term() <= self.hard.term,
            "an entry from a future term"
        );
        if self.role == Role::Leader {
            assert!(self.leader.is_some() && self.leader_id == Some(self.config.id));
        }
        if cfg!(debug_assertions) {
            let boundaries = &self.log.boundaries;
            // The full order check is linear: only on small windows.
            if boundaries.len() <= 4096 {
                assert!(boundaries
                    .iter()
                    .zip(boundaries.iter().skip(1))
                    .all(|(a, b)| a < b));
            }
            assert!(boundaries
                .front()
                .is_none_or(|&first| first >= self.log.boundary_floor));
            assert!(boundaries.back().is_none_or(|&last| last < self.log.end));
            assert!(self
                .log
                .terms
                .runs()
                .last()
                .is_none_or(|run| run.start < self.log.end));
            assert!(self
                .pending_configs
                .iter()
                .all(|(offset, _)| *offset >= self.commit));
            if let Some(leader) = &self.leader {
                assert_eq!(
                    leader.fresh.end(),
                    self.log.end,
                    "the leader's fresh entries end at the log's end"
                );
                for progress in leader.progress.values() {
                    assert!(progress.match_offset <= self.log.end);
                }
            }
        }
    }
}

/// One entry of a received AppendEntries, after validation.
#[derive(Debug)]
struct ReceivedEntry {
    offset: u64,
    term: Term,
    len: u64,
    config: Option<Membership>,
    trim: Option<u64>,
}
