//! Deterministic simulation of whole LogLog clusters, with a history checker.
//!
//! * [`history`]: a history of client operations (appends and reads with
//!   their outcomes and timestamps) and [`history::check`], which judges it
//!   against the one final committed log. Independent of the simulator: the
//!   real-process fault suite reuses it.
//! * [`disk`]: a node's disk: durable image plus unsynced operations; a
//!   crash keeps a random prefix of them and may tear the last; bit flips;
//!   recovery truncates at the first bad CRC, as the real storage does.
//! * [`net`]: loss, delay, reordering, duplication, symmetric and one-way
//!   partitions; the event queue ordered by (time, sequence).
//! * [`sim`]: one run of a cluster of real `loglog_raft::RaftNode`s driven
//!   as `loglogd` drives them, with clients, a fault schedule chosen by the
//!   seed, a heal phase, and safety checks all along (see its docs).
//!
//! Everything random comes from one ChaCha8 stream seeded by the seed; no
//! hash-map iteration order and no wall clock reach a run, so a seed
//! replays byte for byte (`--trace` prints the trace and its hash).
//!
//! # The fault schedule
//!
//! Each seed picks a cluster (3 or 5 founding voters plus one spare node
//! for membership changes), 1-4 clients, per-node clock speeds (+-20%),
//! core settings (pre-vote and check-quorum on or off, election timeout,
//! batch size down to one entry per message), a lossy network profile, a
//! disk stall rate, and one of three fault profiles: calm (a fault every
//! few hundred ms), stormy (every few tens of ms, short downtimes) and
//! targeted (also crashes a node, or everyone, a moment after it grants a
//! vote, commits as leader or takes office, and cuts off new leaders).
//! Faults: crash and restart (with a bit flip on the crashed disk at most
//! once at a time), power failure of a quorum or all (also right after a
//! truncation), process pauses (SIGSTOP), symmetric and one-way partitions,
//! clients cut off from some nodes, network weather, selective loss of new
//! leaders' no-ops, membership changes (add learner, promote, remove) and
//! leadership transfers. Messages cross the network as the bytes
//! `Envelope::encode` writes and are decoded on arrival. Then the heal phase: every node up, the network healthy; an
//! append invoked after the heal must be acknowledged within 10 s.
//!
//! The known-bad variants of the core (feature `bug-injection`) are each
//! caught within a few thousand seeds: see `tests/bugs.rs`. A client append
//! waiting on a node whose log was truncated under it is not failed: it
//! stays waiting until the commit offset passes it (then it succeeded iff
//! the committed entry there is its own), else it ends in doubt;
//! `tests/driver_rules.rs` shows the checker catching the opposite rule.

pub mod disk;
pub mod history;
pub mod net;
pub mod sim;
pub mod upload;
