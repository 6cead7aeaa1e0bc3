//! LogLog's consensus core: Raft over byte offsets, sans-IO.
//!
//! [`RaftNode`] is a deterministic state machine. It does no IO, reads no
//! clock, starts no thread and draws randomness only from a generator
//! seeded by [`Config::seed`]: the same inputs in the same order give the
//! same outputs, which is what the deterministic simulator (`loglog-sim`)
//! relies on. The driver (the simulator, or `loglogd` over real files and
//! TCP) feeds it events and performs the [`Action`]s it returns.
//!
//! # Raft over byte offsets
//!
//! The Raft log *is* the data log: a dense sequence of entries in
//! `loglog-proto`'s format (16-byte header: CRC32C, length, term, kind).
//! Positions are byte offsets; an entry is identified by its start offset,
//! and "index" in the Raft paper becomes "end offset" here:
//!
//! * AppendEntries carries `(prev_offset, prev_term, raw entry bytes,
//!   leader_commit)`, where `prev_term` is the term of the entry *ending*
//!   at `prev_offset`. Entry bytes travel exactly as stored.
//! * The commit offset is the largest end offset durable on a quorum of
//!   voters whose last entry is of the leader's current term (Raft's
//!   Figure 8 rule); a new leader appends a no-op to get there.
//! * Instead of an index of every entry the node keeps a [`TermMap`] (the
//!   first offset of each term; all entries of a term are contiguous, and
//!   a term starts at the same offset in every log that has it) and the
//!   entry boundaries above its commit offset. Below the commit offset all
//!   logs agree, so a leader's `prev_offset` there is trusted; above it a
//!   follower rejects a `prev_offset` that is not one of its boundaries.
//! * A rejecting follower sends a [`ConflictHint`] (its term at the
//!   divergence and that term's first offset), so the leader jumps back a
//!   whole term per round trip, never an entry at a time.
//!
//! Also: randomized election timeouts, pre-vote, check-quorum (a leader
//! that hears from no quorum for an election timeout steps down; followers
//! that heard from a leader recently ignore candidates), pipelined
//! replication with per-follower flow control (`max_inflight_bytes`) and
//! batching (`max_batch_bytes`), probe mode after a rejection, read-index
//! ([`RaftNode::read_index`]), leadership transfer
//! ([`RaftNode::transfer_leadership`]), single-server membership changes
//! with learners ([`RaftNode::propose_membership`]; config entry payload format in
//! the [`membership`] module docs), and a removed voter that never received
//! its removal (the leader stops replicating to it once the change is
//! appended) learns it from the voters it asks for votes: they answer
//! [`NotAMember`], and it stops campaigning ([`RaftNode::is_removed`]).
//!
//! # Driver contract
//!
//! **Startup.** The driver persists two things: the [`HardState`] (term and
//! vote) and, lazily, a [`Checkpoint`] (a commit offset, the term map below
//! it, the membership in force at it). At start it recovers the log (cut at
//! the first torn or corrupt entry) and fsyncs it (after a process crash
//! the files may hold written but unsynced bytes, and the node treats its
//! whole recovered log as durable), then scans the entries from
//! `checkpoint.commit_offset` to the end through a [`LogScan`], checks the
//! end with [`LogScan::finish_at`], and calls [`RaftNode::new`]. A brand-new founding node uses
//! `Checkpoint::bootstrap(initial voters)` (the same on every founding
//! node); a node joining an existing cluster uses
//! `Checkpoint::bootstrap(Membership::default())` and learns the
//! configuration from the log. A log whose first segments were trimmed is
//! reported with [`RecoveredLog::set_log_start`]. The node never reports a commit offset below
//! the checkpoint's. If recovery cut entries the node had synced (a bad CRC
//! in the middle of durable data), the driver marks it with
//! [`RecoveredLog::set_lost_tail`] (see [`LostTail`]) and keeps that mark
//! until [`RaftNode::lost_tail`] returns `None`.
//!
//! **Events.** Call [`RaftNode::tick`] every tick (the driver's unit of
//! time; the timeouts in [`Config`] are counted in ticks),
//! [`RaftNode::step`] for each message received, [`RaftNode::propose`] /
//! [`RaftNode::propose_membership`] / [`RaftNode::read_index`] /
//! [`RaftNode::transfer_leadership`] for client requests, and
//! [`RaftNode::storage_synced`]`(write_id)` when an fsync completed: every
//! `Append`/`Truncate` with an id up to `write_id` is then durable.
//!
//! **Actions.** After any batch of events, call
//! [`RaftNode::take_actions`]`(&log)` and perform the actions **in order**:
//!
//! 1. [`Action::PersistHardState`]: make it durable (write, fsync, rename)
//!    *before performing any later action of the list*: a vote or a term
//!    must never be visible to a peer, nor entries of the new term be
//!    written, before it survives a crash.
//! 2. [`Action::Append`] / [`Action::Truncate`]: apply to the log in order.
//!    They need not be durable at once, but must be readable through the
//!    [`LogRead`] passed to the next `take_actions`. Fsync whenever
//!    convenient (group commit) and report with `storage_synced`; the node
//!    counts bytes as durable (its own match as leader, its ack as
//!    follower, its commit offset) only after that. Write ids make this
//!    safe across truncation (an offset may be rewritten; an id is not).
//! 3. [`Action::Send`]: send best effort (drops, duplicates and reordering
//!    are tolerated); [`Envelope::encode`] gives the bytes, and the
//!    receiver decodes with [`Envelope::decode`] capped by
//!    [`Config::max_message_entries_bytes`].
//! 4. [`Action::CommitAdvanced`]: entries below the offset are committed and
//!    durable locally: serve reads up to it and acknowledge client appends
//!    below it. A pending append proposed at offset `o` in term `t`
//!    succeeded once the commit offset passes `o` **and** the committed
//!    entry at `o` is of term `t` (`term_map().term_at(o) == t`: one leader
//!    per term writes each offset once, so that entry is the proposal); it
//!    failed once the commit offset passes `o` with another term there.
//!    A `Truncate` at or below `o` settles nothing: an unsynced truncation
//!    can be undone by a crash and the old entry can still commit (found by
//!    `loglog-sim`, `--truncate-fails-appends` replays it). Keep such
//!    appends waiting; until the commit offset passes `o` they are in
//!    doubt, which a client sees as a timeout (indeterminate).
//!    Persist [`RaftNode::checkpoint`] from time to time.
//! 5. [`Action::TrimPrefix`]: drop whole segments below the offset, after
//!    persisting [`RaftNode::checkpoint`]. [`Action::ResetLog`]: wipe the
//!    log to begin at the checkpoint's offset and persist that checkpoint,
//!    durably, before any later action (see the variants' docs).
//! 6. [`Action::ReadReady`] / [`Action::ReadFailed`]: answer read-index
//!    requests. [`Action::RoleChanged`] is informational.
//!    [`Action::ConflictBelowCommit`] means a leader contradicted bytes this
//!    node knows are committed (a safety bug or lost durable data): the node
//!    refused them; log it loudly (the simulator fails the run on it).
//!
//! **Reading the log.** The leader reads the entries it sends from the
//! driver's [`LogRead`], except its own fresh entries (above the commit
//! offset), which it keeps in memory (bounded by
//! `max_uncommitted_bytes`) because the driver may not have written them
//! yet when they are sent.
//!
//! # Example
//!
//! A single-node cluster, with the log kept in a `Vec<u8>`:
//!
//! ```
//! use loglog_raft::{Action, Checkpoint, Config, HardState, LogRead, LogReadError, LogScan,
//!                   Membership, RaftNode, Role};
//!
//! struct MemLog(Vec<u8>);
//! impl LogRead for MemLog {
//!     fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError> {
//!         // A real driver returns whole entries only; one node never reads.
//!         let end = (from + max_bytes).min(self.0.len() as u64);
//!         Ok(self.0[from as usize..end as usize].to_vec())
//!     }
//! }
//!
//! let scan = LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1])));
//! let mut node = RaftNode::new(Config::new(1, 42), HardState::default(), scan.finish()).unwrap();
//! let mut log = MemLog(Vec::new());
//! let mut hard_state = HardState::default();
//! let mut run = |node: &mut RaftNode, log: &mut MemLog, hard_state: &mut HardState| {
//!     for action in node.take_actions(log) {
//!         match action {
//!             Action::PersistHardState(state) => *hard_state = state, // + fsync
//!             Action::Append { write_id, offset, bytes } => {
//!                 assert_eq!(offset, log.0.len() as u64);
//!                 log.0.extend_from_slice(&bytes);
//!                 node.storage_synced(write_id); // after fsync
//!             }
//!             Action::Truncate { offset, .. } => log.0.truncate(offset as usize),
//!             _ => {}
//!         }
//!     }
//! };
//! while node.role() != Role::Leader {
//!     node.tick();
//!     run(&mut node, &mut log, &mut hard_state);
//! }
//! let offset = node.propose(b"hello").unwrap();
//! run(&mut node, &mut log, &mut hard_state);
//! run(&mut node, &mut log, &mut hard_state);
//! assert!(node.commit_offset() > offset);
//! assert_eq!(hard_state.term, node.term());
//! ```
//!
//! # Trimming and catching up from the log start
//!
//! The log is the state, so a snapshot is just a log start.
//! [`RaftNode::propose_trim`] appends a trim entry (kind 3, the offset as
//! payload); once it commits every node gets [`Action::TrimPrefix`] and
//! drops its whole segments below the offset (never at or above its commit
//! offset). A node that was down replicates the entry and trims when it
//! catches up. The driver tells the node where its stored log starts at
//! startup ([`RecoveredLog::set_log_start`]) and, when a read finds the
//! range gone, through [`LogReadError::Trimmed`].
//!
//! A follower that needs bytes below the leader's log start (a new or
//! wiped node, or one far behind) gets [`Message::InstallSnapshot`] instead
//! of entries: the checkpoint of the leader's log start. Unless its log
//! already holds that prefix, it answers with [`Action::ResetLog`]: its log
//! is replaced, durably, by an empty one beginning at the leader's start,
//! its commit offset jumps there, and replication goes on from there.
//!
//! # Limits
//!
//! * A wiped node (log, checkpoint and hard state lost) is re-seeded from
//!   the leader's log start, but it forgot its vote and what it had
//!   acknowledged: it may vote twice in one term, or help elect a leader
//!   lacking an entry it helped commit (as in any Raft that loses persisted
//!   state). Wipe a node only while the cluster is healthy (a stable leader
//!   whose log holds everything committed), keep its hard state, or mark it
//!   with a [`LostTail`] as the simulator does.
//! * Terms are `u32` (the entry header's field); a node at term `u32::MAX`
//!   stops campaigning rather than wrap.
//!
//! # Bug injection
//!
//! With the cargo feature `bug-injection` (off by default), [`Config`] has
//! a `bugs` field whose switches make a node commit an old-term entry by
//! counting replicas, forget to persist its vote, or count bytes durable
//! before the fsync. They exist so the simulator can prove it catches each.

mod fresh;
pub mod log;
pub mod membership;
pub mod message;
mod node;
mod rng;
mod types;

pub use fresh::LARGE_ENTRY_BYTES;
pub use log::{
    Checkpoint, LogRead, LogReadError, LogScan, LogStateError, LostTail, RecoveredLog, TermMap,
    TermRun,
};
pub use membership::{
    MemberAddress, Membership, MembershipChange, MembershipError, CONFIG_PAYLOAD_VERSION,
    CONFIG_PAYLOAD_VERSION_ADDRESSES, MAX_ADDRESS_LEN, MAX_MEMBERS,
};
pub use message::{
    AppendEntries, AppendOutcome, AppendResponse, ConflictHint, DecodeError, Envelope, Heartbeat,
    HeartbeatResponse, InstallSnapshot, Message, NotAMember, RequestVote, RequestVoteResponse,
    TimeoutNow,
};
pub use node::{Action, FollowerProgress, RaftNode, Role, Status, REMOVED_BACKOFF_ELECTIONS};
#[cfg(feature = "bug-injection")]
pub use types::Bugs;
pub use types::{
    Config, HardState, NodeId, ProposeError, RequestError, StartError, Term, WriteId,
    HARD_STATE_LEN,
};
