//! One simulated run: a cluster of real [`RaftNode`]s on modelled disks and
//! a modelled network, clients appending and reading, a fault schedule,
//! then a heal phase; checked all along and at the end.
//!
//! # The driver
//!
//! Each node is driven as `loglogd` drives it: after every input (tick,
//! message, sync completion, client request) the simulator takes the core's
//! actions and performs them in order. `PersistHardState` writes the state
//! file synchronously (atomic replace), `Append`/`Truncate` go to the disk
//! model's unsynced tail, one fsync at a time is in flight per node (group
//! commit: it covers every write issued before it started) and its
//! completion is reported with `storage_synced`. Sends go through the
//! network model. The node persists its checkpoint lazily (on a random
//! subset of commit advances), so restarts see stale checkpoints too.
//!
//! # Trims and re-seeds
//!
//! Leaders propose trims below their commit offset (a fault like any
//! other); every node drops the entries below the trim once it commits
//! (each entry stands for a segment), after persisting its checkpoint. A
//! node that needs bytes below its leader's log start (behind after a long
//! downtime, or wiped) gets the leader's checkpoint and resets its log to
//! begin there. A wiped node loses its log and checkpoint but keeps its
//! term and vote (Raft needs those; see `loglog-raft`'s Limits) and is
//! marked like a corrupted node (it may have acknowledged what it lost).
//! Reads below a node's start are answered `Trimmed`: not a violation.
//!
//! # Corruption
//!
//! A bit flip hits the durable log of a crashed node; recovery truncates at
//! the first bad CRC, which may cut entries the node had acknowledged. Raft
//! alone is not safe against such amnesia (the node could vote for a
//! candidate lacking a committed entry it had helped commit), so the driver
//! gives the core a [`LostTail`] mark: the end and last term of its synced
//! log before the damage. Until its log is durable and verified up to that
//! end again, the core asks for no votes, and grants a vote only to a
//! candidate whose log is at least as up to date as the marked log was (the
//! vote it would have cast without the damage). The simulator checks that
//! the core keeps that promise (its vote requests and grants while marked
//! are judged against the mark). The mark lives in its own state file so
//! that it survives further crashes, until the core clears it. At most one
//! node is marked at a time.
//!
//! # Checks
//!
//! All along: one leader per term; a new leader's log holds every committed
//! byte (leader completeness); every node's committed prefix is
//! byte-identical to the one committed log and durable locally; commit
//! offsets never go back within a node's life; nothing committed is ever
//! truncated; log matching between every pair of nodes at each election and
//! at the end. At the end: the history checker on the committed log, and
//! liveness: once healed, some append invoked after the heal is
//! acknowledged within a bounded simulated time.

use std::collections::BTreeMap;

use bytes::Bytes;
use loglog_proto::entry::{EntryHeader, EntryIter};
use loglog_proto::upload::UploadKey;
use loglog_proto::{EntryKind, ENTRY_HEADER_LEN};
use loglog_raft::{
    Action, AppendEntries, Checkpoint, Config, Envelope, HardState, LogRead, LogReadError, LogScan,
    LostTail, Membership, MembershipChange, Message, NodeId, ProposeError, RaftNode, RequestError,
    RequestVote, Role, Term, WriteId,
};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::disk::{Disk, SyncPoint};
use crate::history::{
    self, AppendId, AppendOutcome, FinalLog, History, ReadId, ReadKind, ReadOutcome, ReadResult,
};
use crate::net::{EventQueue, Nanos, NetConfig, Network, MICROS, MILLIS, SECONDS};
pub use crate::upload::UploadStats;
use crate::upload::{self, UploadModel};

/// Names of the state files a node keeps beside its log.
const HARD_STATE_FILE: &str = "hard_state";
const CHECKPOINT_FILE: &str = "checkpoint";
const AMNESIA_FILE: &str = "amnesia";

/// Largest payload the simulated nodes accept.
const MAX_PAYLOAD: u32 = 4096;
/// Simulated tick length before each node's clock skew.
const BASE_TICK: Nanos = 10 * MILLIS;
/// A client gives up on one attempt after this long (the append becomes
/// indeterminate).
const ATTEMPT_TIMEOUT: Nanos = SECONDS;
/// A client stops retrying rejected attempts after this long.
const OPERATION_DEADLINE: Nanos = 3 * SECONDS;
/// Once healed, an append invoked after the heal must be acknowledged
/// within this long.
const LIVENESS_BOUND: Nanos = 10 * SECONDS;
/// Bytes a plain read returns at most (always at least one entry).
const PLAIN_READ_BYTES: usize = 2048;

/// How much of the run to record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// Nothing (fastest).
    Off,
    /// A hash of the trace lines (for determinism tests).
    Hash,
    /// The full text.
    Full,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    /// Founding voters (3 or 5); `None` lets the seed choose.
    pub nodes: Option<usize>,
    pub trace: TraceMode,
    /// Check that each node's committed bytes are durable on its own disk
    /// (the core's contract). Switch off to see the other checks (history,
    /// committed prefixes) catch a broken durability rule on their own.
    pub check_local_durability: bool,
    /// A wrong driver rule, for showing the checker bites: answer "failed"
    /// to appends waiting at or above a `Truncate` (their entry may still
    /// commit: the truncation may be lost in a crash, or another node
    /// holding the entry may win an election).
    pub truncate_fails_appends: bool,
    /// Client-side upload: clients also upload each append to every node,
    /// and leaders send uploaded entries by digest (module `upload`).
    pub upload: bool,
    /// A follower rule left out: hand an entry rebuilt from an upload to
    /// the core without checking it against the leader's header CRC. Still
    /// safe (the core checks every received entry's CRC and drops the
    /// message), which the upload tests show.
    pub upload_skips_crc_check: bool,
    /// Deliberately wrong core behaviours to switch on in every node.
    #[cfg(feature = "bug-injection")]
    pub bugs: loglog_raft::Bugs,
}

impl SimOptions {
    pub fn new(seed: u64) -> SimOptions {
        SimOptions {
            seed,
            nodes: None,
            trace: TraceMode::Off,
            check_local_durability: true,
            truncate_fails_appends: false,
            upload: false,
            upload_skips_crc_check: false,
            #[cfg(feature = "bug-injection")]
            bugs: loglog_raft::Bugs::default(),
        }
    }
}

/// What a run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    /// Founding voters.
    pub nodes: usize,
    /// Everything that broke, in the order found.
    pub violations: Vec<String>,
    pub appends_invoked: u64,
    pub appends_acknowledged: u64,
    pub reads_ok: u64,
    pub faults: u64,
    pub sim_nanos: Nanos,
    pub events: u64,
    /// Liveness was not reached only because a node that lost entries to
    /// corruption held back its vote (accepted, see the module docs).
    pub amnesia_stall: bool,
    /// Simulated time from the heal to the first acknowledgement of an
    /// append invoked after it (`None` if that never happened).
    pub recovery_nanos: Option<Nanos>,
    /// Commits by a leader ending on an older term's entry.
    pub old_term_commits: u64,
    /// Trims performed by nodes (`TrimPrefix`), logs reset to a leader's
    /// start (`ResetLog`), and reads answered `Trimmed`.
    pub trims: u64,
    pub resets: u64,
    pub reads_trimmed: u64,
    /// Times a campaigning node was told "not a member" by a voter and
    /// believed it (`RaftNode::is_removed` turned on).
    pub removals_noticed: u64,
    /// FNV-1a of the trace lines (0 with [`TraceMode::Off`]).
    pub trace_hash: u64,
    /// The trace text (empty unless [`TraceMode::Full`]).
    pub trace: String,
    /// What upload mode did (zeros without it).
    pub upload: UploadStats,
}

/// The core's deliberately wrong behaviour called `name`
/// (`commit-old-term`, `forget-vote`, `ack-before-fsync`).
#[cfg(feature = "bug-injection")]
pub fn bugs_named(name: &str) -> Option<loglog_raft::Bugs> {
    let mut bugs = loglog_raft::Bugs::default();
    match name {
        "commit-old-term" => bugs.commit_old_term_by_counting = true,
        "forget-vote" => bugs.forget_to_persist_vote = true,
        "ack-before-fsync" => bugs.ack_before_fsync = true,
        _ => return None,
    }
    Some(bugs)
}

/// How many founding voters a run of `options` has.
pub fn founding_voters(options: &SimOptions) -> usize {
    choose_voters(options.nodes, &mut ChaCha8Rng::seed_from_u64(options.seed))
}

fn choose_voters(nodes: Option<usize>, rng: &mut ChaCha8Rng) -> usize {
    let choice = if rng.gen_bool(0.5) { 3 } else { 5 };
    nodes.unwrap_or(choice)
}

/// Runs one seed to the end.
pub fn run(options: &SimOptions) -> SimReport {
    let mut sim = Sim::new(options);
    sim.run();
    sim.finish()
}

// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum ClientRequest {
    Append(Vec<u8>),
    Read { kind: ReadKind, start: u64 },
}

#[derive(Clone, Debug)]
enum Reply {
    AppendOk {
        offset: u64,
    },
    AppendFailed,
    NotLeader {
        hint: Option<NodeId>,
    },
    Busy,
    ReadOk(ReadResult),
    ReadFailed,
    /// The read offset is below the node's log start.
    ReadTrimmed {
        start: u64,
    },
    /// A broken core promise, turned into a violation by the node.
    ReadIndexPastCommit {
        read_index: u64,
        commit: u64,
    },
}

#[derive(Debug)]
enum Event {
    Tick {
        node: usize,
        life: u32,
    },
    Deliver {
        from: usize,
        to: usize,
        /// The envelope as it crosses the wire ([`Envelope::encode`]).
        bytes: Bytes,
    },
    /// An upload reached `node`: `payload` cached under `key`.
    Upload {
        node: usize,
        key: UploadKey,
        payload: Vec<u8>,
    },
    /// An AppendEntries sent by digest (upload mode).
    DeliverByDigest {
        from: usize,
        to: usize,
        head: upload::Head,
        parts: Vec<u8>,
    },
    /// `from` could not rebuild an AppendEntries by digest from `to`.
    UploadMiss {
        from: usize,
        to: usize,
        head: upload::Head,
    },
    SyncDone {
        node: usize,
        life: u32,
        point: SyncPoint,
        write_id: WriteId,
    },
    Request {
        node: usize,
        client: usize,
        attempt: u64,
        request: ClientRequest,
    },
    Reply {
        client: usize,
        attempt: u64,
        reply: Reply,
    },
    AttemptTimeout {
        client: usize,
        attempt: u64,
    },
    ClientNext {
        client: usize,
    },
    ClientRetry {
        client: usize,
        attempt: u64,
    },
    Fault,
    Restart {
        node: usize,
    },
    Crash {
        node: usize,
        life: u32,
    },
    HealNetwork,
    Heal,
    Stop,
}

/// A client append waiting on its leader for the commit.
#[derive(Clone, Debug)]
struct WaitingAppend {
    client: usize,
    attempt: u64,
    term: Term,
    value: Vec<u8>,
}

/// A linearizable read waiting for its read index.
#[derive(Clone, Debug)]
struct WaitingRead {
    client: usize,
    attempt: u64,
    start: u64,
}

struct SimNode {
    id: NodeId,
    disk: Disk,
    /// `None` while crashed.
    core: Option<RaftNode>,
    /// Incremented at every restart: events of an earlier life are stale.
    life: u32,
    tick_interval: Nanos,
    sync_in_flight: bool,
    last_write_id: WriteId,
    waiting_appends: BTreeMap<u64, WaitingAppend>,
    waiting_reads: BTreeMap<u64, WaitingRead>,
    /// Commit offset reported in this life (never goes back).
    commit: u64,
    /// Committed bytes already compared with the one committed log.
    checked_commit: u64,
    /// Founding members bootstrap with the initial voters; others join empty.
    founding: bool,
    /// Set after corruption cut synced entries: no votes asked or granted
    /// until the durable log reaches this length again.
    amnesia: Option<AmnesiaMark>,
    /// While paused (SIGSTOP), the process handles no event before this.
    paused_until: Nanos,
    /// The last vote request received from each candidate (by node
    /// index), to judge this node's grants while it is marked.
    vote_requests: BTreeMap<usize, RequestVote>,
}

/// What a node's synced log was before corruption cut it (see the module
/// docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AmnesiaMark {
    end: u64,
    last_term: Term,
}

impl AmnesiaMark {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = self.end.to_le_bytes().to_vec();
        bytes.extend_from_slice(&self.last_term.to_le_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<AmnesiaMark> {
        (bytes.len() == 12).then(|| AmnesiaMark {
            end: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
            last_term: Term::from_le_bytes(bytes[8..].try_into().expect("4 bytes")),
        })
    }
}

impl SimNode {
    fn is_up(&self) -> bool {
        self.core.is_some()
    }
}

#[derive(Clone, Debug)]
enum ClientOp {
    Append {
        id: AppendId,
        value: Vec<u8>,
    },
    Read {
        id: ReadId,
        kind: ReadKind,
        start: u64,
    },
}

struct Client {
    target: usize,
    op: Option<ClientOp>,
    op_invoked_at: Nanos,
    attempt: u64,
    sequence: u64,
}

/// [`LogRead`] over a node's disk, as the real storage serves it.
struct DiskLog<'a>(&'a Disk);

impl LogRead for DiskLog<'_> {
    /// Whole entries from `from`, CRC-checked like the real storage's
    /// reader: a corrupt first entry is an error, a corrupt later one ends
    /// the chunk early; below the log's start, `Trimmed` (the trimmed
    /// bytes are gone; the core then sends a snapshot).
    fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError> {
        if from < self.0.start() {
            return Err(LogReadError::Trimmed {
                start: self.0.start(),
            });
        }
        let log = self.0.log();
        let Some(rest) = log.get(from as usize..) else {
            return Err(LogReadError::Storage(format!(
                "read at {from} past the end {}",
                log.len()
            )));
        };
        let mut end = 0usize;
        for entry in EntryIter::new(rest, from, MAX_PAYLOAD) {
            match entry {
                Ok(entry) => {
                    let entry_len = entry.header.entry_len() as usize;
                    if end > 0 && (end + entry_len) as u64 > max_bytes {
                        break;
                    }
                    end += entry_len;
                }
                Err(error) if end == 0 => {
                    return Err(LogReadError::Storage(format!("at {from}: {error}")));
                }
                Err(_) => break,
            }
        }
        Ok(rest[..end].to_vec())
    }
}

struct Sim {
    seed: u64,
    rng: ChaCha8Rng,
    trace_mode: TraceMode,
    check_local_durability: bool,
    truncate_fails_appends: bool,
    trace: String,
    trace_hash: u64,
    queue: EventQueue<Event>,
    network: Network,
    nodes: Vec<SimNode>,
    founding_voters: usize,
    clients: Vec<Client>,
    history: History,
    /// The one committed log: the longest committed prefix any node reported.
    committed: Vec<u8>,
    /// For each term, the end of the committed log as reported by nodes in
    /// that term (for leader completeness).
    committed_end_by_term: BTreeMap<Term, u64>,
    leaders: BTreeMap<Term, usize>,
    /// Offsets of acknowledged appends (committed entry boundaries), for
    /// choosing where reads start.
    acknowledged_offsets: Vec<u64>,
    violations: Vec<String>,
    faults: u64,
    events: u64,
    reads_ok: u64,
    /// Schedule parameters chosen by the seed.
    fault_end: Nanos,
    mean_fault_gap: Nanos,
    faulty_net: NetConfig,
    /// Probability of crashing a node at an interesting moment: right
    /// after it grants a vote, advances its commit offset as leader, or
    /// takes office.
    crash_trigger: f64,
    /// Longest downtime of a crash (storms use short ones).
    max_downtime: Nanos,
    pre_vote: bool,
    check_quorum: bool,
    election_ticks: u32,
    max_batch_bytes: u64,
    /// Probability that an fsync stalls.
    disk_stalls: f64,
    /// Runs where liveness failed only because a node marked after
    /// corruption held back its votes (see the module docs).
    amnesia_stall: bool,
    /// Leader commits that ended on an entry of an older term (only a
    /// broken core does that): a measure of how close runs come to
    /// Figure 8.
    old_term_commits: u64,
    trims: u64,
    resets: u64,
    reads_trimmed: u64,
    removals_noticed: u64,
    /// Until this time, AppendEntries starting with a no-op to these nodes
    /// are lost.
    no_op_loss_until: Nanos,
    no_op_loss_to: Vec<usize>,
    /// `client_links_cut[client * nodes + node]`: that client cannot reach
    /// that node (nor hear from it).
    client_links_cut: Vec<bool>,
    healed_at: Option<Nanos>,
    live_at: Option<Nanos>,
    stopping: bool,
    /// Upload mode's caches and digests (`None`: off).
    uploads: Option<UploadModel>,
    #[cfg(feature = "bug-injection")]
    bugs: loglog_raft::Bugs,
}

impl Sim {
    fn new(options: &SimOptions) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
        let founding_voters = choose_voters(options.nodes, &mut rng);
        // One spare node to add, promote and remove.
        let node_count = founding_voters + 1;
        let client_count = rng.gen_range(1..=4);
        let fault_end = rng.gen_range(6..=14) * SECONDS;
        // Three profiles: calm (faults every few hundred ms), stormy
        // (every few tens of ms, short downtimes), and targeted (crashes at
        // the moments where durability and voting rules matter).
        let profile = rng.gen_range(0..3);
        let mean_fault_gap = match profile {
            0 => rng.gen_range(150..=800) * MILLIS,
            _ => rng.gen_range(20..=150) * MILLIS,
        };
        let max_downtime = match profile {
            0 => 3 * SECONDS,
            _ => rng.gen_range(5..=300) * MILLIS,
        };
        let crash_trigger = match profile {
            2 => rng.gen_range(1..=50) as f64 / 100.0,
            _ => 0.0,
        };
        let faulty_net = random_net(&mut rng);
        let pre_vote = rng.gen_bool(0.7);
        let check_quorum = rng.gen_bool(0.7);
        let election_ticks = rng.gen_range(8..=20);
        let disk_stalls = rng.gen_range(0..=30) as f64 / 100.0;
        // Small batches send one entry at a time, so followers acknowledge
        // a new leader's old-term entries before its no-op.
        let max_batch_bytes = if rng.gen_bool(0.4) {
            // 1: exactly one entry per message.
            *[1, 1, 32, 64, 128, 256]
                .choose(&mut rng)
                .expect("non-empty")
        } else {
            16 * 1024
        };
        let nodes = (0..node_count)
            .map(|index| SimNode {
                id: index as NodeId + 1,
                disk: Disk::new(),
                core: None,
                life: 0,
                // Each clock runs at its own speed, within +-20%.
                tick_interval: BASE_TICK * rng.gen_range(80..=120) / 100,
                sync_in_flight: false,
                last_write_id: 0,
                waiting_appends: BTreeMap::new(),
                waiting_reads: BTreeMap::new(),
                commit: 0,
                checked_commit: 0,
                founding: index < founding_voters,
                amnesia: None,
                paused_until: 0,
                vote_requests: BTreeMap::new(),
            })
            .collect();
        let clients = (0..client_count)
            .map(|_| Client {
                target: rng.gen_range(0..founding_voters),
                op: None,
                op_invoked_at: 0,
                attempt: 0,
                sequence: 0,
            })
            .collect();
        let mut sim = Sim {
            seed: options.seed,
            rng,
            trace_mode: options.trace,
            check_local_durability: options.check_local_durability,
            truncate_fails_appends: options.truncate_fails_appends,
            trace: String::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            queue: EventQueue::new(),
            network: Network::new(node_count, NetConfig::healthy()),
            nodes,
            founding_voters,
            clients,
            history: History::new(),
            committed: Vec::new(),
            committed_end_by_term: BTreeMap::new(),
            leaders: BTreeMap::new(),
            acknowledged_offsets: Vec::new(),
            violations: Vec::new(),
            faults: 0,
            events: 0,
            reads_ok: 0,
            fault_end,
            mean_fault_gap,
            faulty_net,
            crash_trigger,
            max_downtime,
            pre_vote,
            check_quorum,
            election_ticks,
            max_batch_bytes,
            disk_stalls,
            amnesia_stall: false,
            old_term_commits: 0,
            trims: 0,
            resets: 0,
            reads_trimmed: 0,
            removals_noticed: 0,
            no_op_loss_until: 0,
            no_op_loss_to: Vec::new(),
            client_links_cut: vec![false; client_count * node_count],
            healed_at: None,
            live_at: None,
            stopping: false,
            uploads: options
                .upload
                .then(|| UploadModel::new(node_count, options.upload_skips_crc_check)),
            #[cfg(feature = "bug-injection")]
            bugs: options.bugs,
        };
        let (seed, faulty_net) = (sim.seed, sim.faulty_net);
        let max_batch_bytes = sim.max_batch_bytes;
        sim.trace_line(|| {
            format!(
                "seed {seed} voters {founding_voters} nodes {node_count} clients {client_count} \
                 fault_end {}ms gap {}ms max_downtime {}ms crash_trigger {crash_trigger} \
                 pre_vote {pre_vote} check_quorum {check_quorum} election_ticks {election_ticks} \
                 max_batch_bytes {max_batch_bytes} net {faulty_net:?}",
                fault_end / MILLIS,
                mean_fault_gap / MILLIS,
                max_downtime / MILLIS,
            )
        });
        sim
    }

    // ----- tracing and violations -----

    fn trace_line(&mut self, line: impl FnOnce() -> String) {
        if self.trace_mode == TraceMode::Off {
            return;
        }
        let line = format!("{:>12} {}\n", self.queue.now() / MICROS, line());
        for byte in line.bytes() {
            self.trace_hash ^= u64::from(byte);
            self.trace_hash = self.trace_hash.wrapping_mul(0x100_0000_01b3);
        }
        if self.trace_mode == TraceMode::Full {
            self.trace.push_str(&line);
        }
    }

    fn violation(&mut self, what: String) {
        self.trace_line(|| format!("VIOLATION {what}"));
        let repeated = self.violations.iter().any(|seen| seen.ends_with(&what));
        if self.violations.len() < 32 && !repeated {
            let at = self.queue.now();
            self.violations.push(format!("t={}us: {what}", at / MICROS));
        }
    }

    // ----- main loop -----

    fn run(&mut self) {
        for index in 0..self.nodes.len() {
            self.start_node(index);
        }
        for client in 0..self.clients.len() {
            let delay = self.rng.gen_range(0..50 * MILLIS);
            self.queue.schedule_in(delay, Event::ClientNext { client });
        }
        let first_fault = self.rng.gen_range(300 * MILLIS..1500 * MILLIS);
        self.queue.schedule(first_fault, Event::Fault);
        self.queue.schedule(self.fault_end, Event::Heal);
        while let Some((_, event)) = self.queue.pop() {
            self.events += 1;
            if matches!(event, Event::Stop) {
                break;
            }
            self.handle(event);
            if self.violations.len() >= 8 {
                break;
            }
        }
    }

    /// The node an event is handled by, if it is one the node's process
    /// must run (and so waits while the process is paused).
    fn handling_node(event: &Event) -> Option<usize> {
        match event {
            Event::Tick { node, .. }
            | Event::SyncDone { node, .. }
            | Event::Request { node, .. }
            | Event::Deliver { to: node, .. }
            | Event::DeliverByDigest { to: node, .. }
            | Event::UploadMiss { to: node, .. } => Some(*node),
            _ => None,
        }
    }

    fn handle(&mut self, event: Event) {
        if let Some(node) = Self::handling_node(&event) {
            let resume_at = self.nodes[node].paused_until;
            if self.queue.now() < resume_at {
                // A paused process (SIGSTOP) handles nothing; its timers,
                // sockets and fsync completions wait for it, in order.
                self.queue.schedule(resume_at, event);
                return;
            }
        }
        match event {
            Event::Tick { node, life } => {
                if self.nodes[node].life == life && self.nodes[node].is_up() {
                    self.core(node).tick();
                    self.drive(node);
                    let interval = self.nodes[node].tick_interval;
                    self.queue.schedule_in(interval, Event::Tick { node, life });
                }
            }
            Event::Deliver { from, to, bytes } => {
                if self.nodes[to].is_up() && self.network.is_open(from, to) {
                    let cap = self.core(to).config().max_message_entries_bytes();
                    let message = match Envelope::decode(&bytes, cap) {
                        Ok(envelope) => envelope.message,
                        Err(error) => {
                            self.violation(format!(
                                "a message from node {} does not decode: {error}",
                                self.nodes[from].id
                            ));
                            return;
                        }
                    };
                    if let Message::RequestVote(request) = &message {
                        self.nodes[to].vote_requests.insert(from, *request);
                    }
                    let from_id = self.nodes[from].id;
                    let was_removed = self.core(to).is_removed();
                    self.core(to).step(from_id, message);
                    if !was_removed && self.core(to).is_removed() {
                        self.removals_noticed += 1;
                        let id = self.nodes[to].id;
                        self.trace_line(|| {
                            format!("node {id} told by node {from_id} that it is not a member")
                        });
                    }
                    self.drive(to);
                }
            }
            Event::Upload { node, key, payload } => {
                let now = self.queue.now();
                if let Some(uploads) = self.uploads.as_mut() {
                    uploads.uploaded(node, key, payload, now);
                }
            }
            Event::DeliverByDigest {
                from,
                to,
                head,
                parts,
            } => {
                if !(self.nodes[to].is_up() && self.network.is_open(from, to)) {
                    return;
                }
                let now = self.queue.now();
                let cap = self.core(to).config().max_message_entries_bytes();
                let uploads = self.uploads.as_mut().expect("sent in upload mode only");
                match uploads.rebuild(to, &head, &parts, cap, MAX_PAYLOAD, now) {
                    Ok(Some(message)) => {
                        let from_id = self.nodes[from].id;
                        self.core(to).step(from_id, Message::AppendEntries(message));
                        self.drive(to);
                    }
                    Ok(None) => {
                        self.trace_line(|| {
                            format!(
                                "node {} misses an upload at {}; asks node {}",
                                to + 1,
                                head.prev_offset,
                                from + 1
                            )
                        });
                        let deliveries = self.network.deliveries(to, from, &mut self.rng);
                        for &delay in deliveries.as_slice() {
                            self.queue.schedule_in(
                                delay,
                                Event::UploadMiss {
                                    from: to,
                                    to: from,
                                    head,
                                },
                            );
                        }
                    }
                    Err(error) => self.violation(format!(
                        "a message by digest from node {} does not decode: {error}",
                        from + 1
                    )),
                }
            }
            Event::UploadMiss { from, to, head } => {
                if self.nodes[to].is_up() && self.network.is_open(from, to) {
                    self.resend_missed(to, from, head);
                }
            }
            Event::SyncDone {
                node,
                life,
                point,
                write_id,
            } => {
                if self.nodes[node].life == life && self.nodes[node].is_up() {
                    let state = &mut self.nodes[node];
                    state.sync_in_flight = false;
                    state.disk.complete_sync(point);
                    self.core(node).storage_synced(write_id);
                    self.drive(node);
                }
            }
            Event::Request {
                node,
                client,
                attempt,
                request,
            } => {
                if self.nodes[node].is_up() {
                    self.serve_request(node, client, attempt, request);
                    self.drive(node);
                }
            }
            Event::Reply {
                client,
                attempt,
                reply,
            } => self.client_reply(client, attempt, reply),
            Event::AttemptTimeout { client, attempt } => self.client_timeout(client, attempt),
            Event::ClientNext { client } => self.client_next(client),
            Event::ClientRetry { client, attempt } => self.client_retry(client, attempt),
            Event::Fault => {
                if self.healed_at.is_none() {
                    self.inject_fault();
                    let gap = self
                        .rng
                        .gen_range(self.mean_fault_gap / 4..self.mean_fault_gap * 2);
                    self.queue.schedule_in(gap, Event::Fault);
                }
            }
            Event::Crash { node, life } => {
                if self.nodes[node].life == life && self.nodes[node].is_up() {
                    self.crash_node(node);
                    let downtime = self
                        .rng
                        .gen_range(MILLIS..=self.max_downtime.min(50 * MILLIS));
                    self.queue.schedule_in(downtime, Event::Restart { node });
                }
            }
            Event::Restart { node } => {
                if !self.nodes[node].is_up() {
                    self.start_node(node);
                }
            }
            Event::HealNetwork => {
                self.network.heal();
                self.client_links_cut.fill(false);
                self.trace_line(|| "network healed".to_string());
            }
            Event::Heal => self.heal(),
            Event::Stop => {}
        }
    }

    fn core(&mut self, node: usize) -> &mut RaftNode {
        self.nodes[node]
            .core
            .as_mut()
            .expect("callers check that the node is up")
    }

    // ----- node lifecycle -----

    fn start_node(&mut self, index: usize) {
        let founding_voters = self.founding_voters;
        let node = &mut self.nodes[index];
        node.life += 1;
        let recovery = node.disk.recover(MAX_PAYLOAD);
        let hard_state = node
            .disk
            .state(HARD_STATE_FILE)
            .map(|bytes| HardState::decode(bytes).expect("the simulator wrote a valid hard state"))
            .unwrap_or_default();
        let bootstrap_membership = if node.founding {
            Membership::with_voters(1..=founding_voters as NodeId)
        } else {
            Membership::default()
        };
        let mut log_end = node.disk.log_len();
        // A checkpoint past the end of the recovered log (corruption cut
        // committed entries) is no longer true: scan from the start.
        let checkpoint = node
            .disk
            .state(CHECKPOINT_FILE)
            .map(|bytes| Checkpoint::decode(bytes).expect("the simulator wrote a valid checkpoint"))
            .filter(|checkpoint| checkpoint.commit_offset <= log_end);
        if checkpoint.is_none() && node.disk.start() > 0 {
            // Trimmed, and the bytes the checkpoint covered are damaged:
            // nothing to scan from. Re-seed it (as an operator would): an
            // empty log, caught up from a leader's log start.
            node.disk.reset_to(0);
            log_end = 0;
            let id = node.id;
            self.trace_line(|| {
                format!("node {id}: trimmed log damaged below its checkpoint; re-seeded")
            });
        }
        let node = &mut self.nodes[index];
        let checkpoint = checkpoint.unwrap_or_else(|| Checkpoint::bootstrap(bootstrap_membership));
        node.amnesia = node
            .disk
            .state(AMNESIA_FILE)
            .and_then(AmnesiaMark::decode)
            .filter(|mark| mark.end > log_end);
        node.vote_requests.clear();
        let checkpoint_commit = checkpoint.commit_offset;
        let mut scan = LogScan::new(checkpoint);
        let from = scan.next_offset();
        let mut scan_error = None;
        for entry in EntryIter::new(&node.disk.log()[from as usize..], from, MAX_PAYLOAD) {
            let entry = entry.expect("recovery left only valid entries");
            if let Err(error) = scan.observe(&entry) {
                scan_error = Some(error);
                break;
            }
        }
        let seed = self
            .seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(u64::from(node.life) << 16 | node.id);
        #[allow(unused_mut)]
        let mut config = Config::new(node.id, seed);
        config.max_payload = MAX_PAYLOAD;
        config.max_batch_bytes = self.max_batch_bytes;
        config.max_inflight_bytes = self.max_batch_bytes * 4;
        config.max_uncommitted_bytes = 256 * 1024;
        config.max_learner_lag_bytes = 4096;
        config.pre_vote = self.pre_vote;
        config.check_quorum = self.check_quorum;
        config.election_ticks = self.election_ticks;
        config.heartbeat_ticks = (self.election_ticks / 5).max(1);
        #[cfg(feature = "bug-injection")]
        {
            config.bugs = self.bugs;
        }
        let id = node.id;
        let life = node.life;
        node.sync_in_flight = false;
        node.last_write_id = 0;
        node.waiting_appends.clear();
        node.waiting_reads.clear();
        node.commit = 0;
        node.checked_commit = 0;
        if let Some(error) = scan_error {
            self.violation(format!("node {id}: startup scan failed: {error}"));
            return;
        }
        let mut recovered = match scan.finish_at(log_end) {
            Ok(recovered) => recovered,
            Err(error) => {
                self.violation(format!(
                    "node {id}: startup scan did not reach the end: {error}"
                ));
                return;
            }
        };
        if let Err(error) = recovered.set_log_start(self.nodes[index].disk.start()) {
            self.violation(format!("node {id}: log start: {error}"));
            return;
        }
        if let Some(mark) = self.nodes[index].amnesia {
            recovered.set_lost_tail(LostTail {
                end_offset: mark.end,
                last_term: mark.last_term,
            });
        }
        match RaftNode::new(config, hard_state, recovered) {
            Ok(core) => {
                let commit = core.commit_offset();
                if commit < checkpoint_commit {
                    self.violation(format!(
                        "node {id}: restarted with commit {commit}, below its checkpoint's \
                         {checkpoint_commit}"
                    ));
                }
                let node = &mut self.nodes[index];
                node.commit = commit;
                node.core = Some(core);
                let amnesia = node.amnesia;
                self.trace_line(|| {
                    format!(
                        "node {id} starts (life {life}) term {} vote {:?} log_end {log_end} \
                         commit {commit} recovery {recovery:?} amnesia {amnesia:?}",
                        hard_state.term, hard_state.voted_for
                    )
                });
                self.check_commit(index);
                let interval = self.nodes[index].tick_interval;
                let phase = self.rng.gen_range(0..interval);
                self.queue
                    .schedule_in(phase, Event::Tick { node: index, life });
            }
            Err(error) => self.violation(format!("node {id}: restart refused: {error}")),
        }
    }

    fn crash_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if node.core.take().is_none() {
            return;
        }
        if let Some(uploads) = self.uploads.as_mut() {
            uploads.crashed(index);
        }
        node.paused_until = 0;
        let report = node.disk.crash(&mut self.rng);
        let id = node.id;
        self.trace_line(|| format!("node {id} crashes: {report:?}"));
    }

    /// Performs the core's actions in order, as `loglogd` would.
    fn drive(&mut self, index: usize) {
        loop {
            let node = &mut self.nodes[index];
            let Some(core) = node.core.as_mut() else {
                return;
            };
            let actions = core.take_actions(&DiskLog(&node.disk));
            if actions.is_empty() {
                break;
            }
            for action in actions {
                self.perform(index, action);
            }
        }
        let node = &mut self.nodes[index];
        if node.disk.has_unsynced() && !node.sync_in_flight {
            node.sync_in_flight = true;
            let point = node.disk.sync_point();
            let write_id = node.last_write_id;
            let life = node.life;
            // Usually a fast fsync; sometimes the disk stalls, leaving a
            // long unsynced tail for a crash to tear or lose.
            let latency = if self.rng.gen_bool(self.disk_stalls) {
                self.rng.gen_range(2 * MILLIS..40 * MILLIS)
            } else {
                self.rng.gen_range(150 * MICROS..2 * MILLIS)
            };
            self.queue.schedule_in(
                latency,
                Event::SyncDone {
                    node: index,
                    life,
                    point,
                    write_id,
                },
            );
        }
    }

    fn perform(&mut self, index: usize, action: Action) {
        let id = self.nodes[index].id;
        match action {
            Action::PersistHardState(hard) => {
                self.nodes[index]
                    .disk
                    .write_state(HARD_STATE_FILE, hard.encode().to_vec());
            }
            Action::Append {
                write_id,
                offset,
                bytes,
            } => {
                let node = &mut self.nodes[index];
                if offset != node.disk.log_len() {
                    let end = node.disk.log_len();
                    self.violation(format!(
                        "node {id}: append at {offset} but the log ends at {end}"
                    ));
                    return;
                }
                node.disk.append(&bytes);
                node.last_write_id = node.last_write_id.max(write_id);
            }
            Action::Truncate { write_id, offset } => {
                if let Some(uploads) = self.uploads.as_mut() {
                    uploads.truncated(index, offset);
                }
                let node = &mut self.nodes[index];
                let commit = node.commit;
                node.disk.truncate(offset);
                node.last_write_id = node.last_write_id.max(write_id);
                // Appends waiting at or above the cut are NOT failed: the
                // truncation is not durable yet (a crash may bring the
                // entry back), and another node may hold the entry and win
                // an election. They stay waiting: the commit offset passing
                // them decides (see `complete_committed_appends`), or the
                // client times out in doubt.
                self.trace_line(|| format!("node {id} truncates at {offset}"));
                // A power failure right after a truncation may undo it
                // (and the new leader's unsynced entries elsewhere).
                self.maybe_trigger_crash(index, 0.8, 0.5);
                if self.truncate_fails_appends {
                    let failed = self.nodes[index].waiting_appends.split_off(&offset);
                    for (_, waiting) in failed {
                        self.reply(index, waiting.client, waiting.attempt, Reply::AppendFailed);
                    }
                }
                if offset < commit {
                    self.violation(format!(
                        "node {id}: truncated at {offset}, below its commit offset {commit}"
                    ));
                }
            }
            Action::Send(envelope) => {
                if matches!(
                    envelope.message,
                    Message::RequestVoteResponse(response) if response.granted && !response.pre_vote
                ) {
                    self.maybe_trigger_crash(index, 0.3, 0.0);
                }
                self.send(index, envelope)
            }
            Action::CommitAdvanced { commit_offset } => {
                let node = &mut self.nodes[index];
                if commit_offset <= node.commit {
                    let previous = node.commit;
                    self.violation(format!(
                        "node {id}: commit went from {previous} to {commit_offset}"
                    ));
                    return;
                }
                node.commit = commit_offset;
                if let Some(core) = node
                    .core
                    .as_ref()
                    .filter(|core| core.role() == Role::Leader)
                {
                    if core.term_map().term_before(commit_offset) != core.term() {
                        self.old_term_commits += 1;
                        let term = core.term();
                        self.trace_line(|| {
                            format!("node {id}, leader of term {term}, committed an older term's entry at {commit_offset}")
                        });
                    }
                }
                self.check_commit(index);
                let node = &mut self.nodes[index];
                if self.rng.gen_bool(0.3) {
                    let checkpoint = node
                        .core
                        .as_ref()
                        .expect("performing its actions")
                        .checkpoint();
                    node.disk.write_state(CHECKPOINT_FILE, checkpoint.encode());
                }
                self.complete_committed_appends(index);
                if self.nodes[index]
                    .core
                    .as_ref()
                    .is_some_and(|core| core.role() == Role::Leader)
                {
                    // While no-ops are being lost, a leader's commit may
                    // rest on entries of older terms alone: crash it then
                    // more often (Raft's Figure 8).
                    let boost = if self.queue.now() < self.no_op_loss_until {
                        0.3
                    } else {
                        0.0
                    };
                    self.maybe_trigger_crash(index, 0.3, boost);
                }
            }
            Action::ReadReady { ctx, read_index } => {
                if let Some(waiting) = self.nodes[index].waiting_reads.remove(&ctx) {
                    let reply = match self.serve_linearizable_read(index, waiting.start, read_index)
                    {
                        Reply::ReadIndexPastCommit { read_index, commit } => {
                            self.violation(format!(
                                "node {id}: read index {read_index} is past its commit offset \
                                 {commit}"
                            ));
                            Reply::ReadFailed
                        }
                        reply => reply,
                    };
                    self.reply(index, waiting.client, waiting.attempt, reply);
                }
            }
            Action::ReadFailed { ctx, leader } => {
                if let Some(waiting) = self.nodes[index].waiting_reads.remove(&ctx) {
                    self.reply(
                        index,
                        waiting.client,
                        waiting.attempt,
                        Reply::NotLeader { hint: leader },
                    );
                }
            }
            Action::TrimPrefix { offset } => {
                let node = &mut self.nodes[index];
                let commit = node.commit;
                // The driver contract: checkpoint first (past the trim).
                let checkpoint = node
                    .core
                    .as_ref()
                    .expect("performing its actions")
                    .checkpoint();
                if checkpoint.commit_offset < offset {
                    let at = checkpoint.commit_offset;
                    self.violation(format!(
                        "node {id}: trim at {offset} above its checkpoint's commit {at}"
                    ));
                    return;
                }
                node.disk.write_state(CHECKPOINT_FILE, checkpoint.encode());
                let start = node.disk.trim_prefix(offset, MAX_PAYLOAD);
                self.trims += 1;
                self.trace_line(|| {
                    format!("node {id} (commit {commit}) trims below {offset}: starts at {start}")
                });
                self.maybe_trigger_crash(index, 0.5, 0.0);
            }
            Action::ResetLog { checkpoint } => {
                let node = &mut self.nodes[index];
                let start = checkpoint.commit_offset;
                if start <= node.commit {
                    let commit = node.commit;
                    self.violation(format!(
                        "node {id}: log reset to {start}, not above its commit offset {commit}"
                    ));
                    return;
                }
                node.disk.reset_to(start);
                node.disk.write_state(CHECKPOINT_FILE, checkpoint.encode());
                if let Some(uploads) = self.uploads.as_mut() {
                    uploads.reset(index);
                }
                node.checked_commit = node.checked_commit.max(start);
                self.resets += 1;
                self.trace_line(|| format!("node {id} resets its log to begin at {start}"));
                self.maybe_trigger_crash(index, 0.5, 0.0);
            }
            Action::ConflictBelowCommit {
                leader,
                offset,
                commit_offset,
            } => {
                self.violation(format!(
                    "node {id}: leader {leader} sent entries conflicting at {offset}, below the \
                     commit offset {commit_offset}"
                ));
            }
            Action::RoleChanged { role, term, leader } => {
                self.trace_line(|| {
                    format!("node {id} is {role:?} in term {term}, leader {leader:?}")
                });
                if role == Role::Leader {
                    self.on_new_leader(index, term);
                    if self.crash_trigger > 0.0
                        && self.healed_at.is_none()
                        && self.rng.gen_bool(0.3)
                    {
                        // Its no-op gets lost on the way to some followers
                        // while its older entries get through.
                        let others: Vec<usize> = (0..self.nodes.len())
                            .filter(|&other| other != index)
                            .collect();
                        let count = self.rng.gen_range(1..=others.len().div_ceil(2));
                        self.no_op_loss_to = others
                            .choose_multiple(&mut self.rng, count)
                            .copied()
                            .collect();
                        let duration = self.rng.gen_range(50 * MILLIS..500 * MILLIS);
                        self.no_op_loss_until = self.queue.now() + duration;
                    }
                    if self.crash_trigger > 0.0
                        && self.healed_at.is_none()
                        && self.rng.gen_bool(0.5)
                    {
                        self.maybe_isolate(index);
                    } else {
                        self.maybe_trigger_crash(index, 0.3, 0.0);
                    }
                }
            }
        }
    }

    /// In the targeted profile, sometimes crashes the node a moment after
    /// an interesting step (before or after its fsync lands).
    /// In the targeted profile, sometimes cuts a new leader off at once:
    /// it keeps taking client appends that nobody else gets, leaving a
    /// divergent tail of its term (an ingredient of Raft's Figure 8).
    fn maybe_isolate(&mut self, index: usize) {
        if self.rng.gen_bool(self.crash_trigger) {
            let everyone: Vec<usize> = (0..self.nodes.len()).collect();
            self.network.partition(&[index], &everyone);
            let id = self.nodes[index].id;
            self.trace_line(|| format!("new leader {id} cut off"));
            let duration = self.rng.gen_range(50 * MILLIS..600 * MILLIS);
            self.queue.schedule_in(duration, Event::HealNetwork);
            self.faults += 1;
        }
    }

    /// `boost` raises the trigger probability for the rarest moments.
    fn maybe_trigger_crash(&mut self, index: usize, power_failure: f64, boost: f64) {
        if (self.crash_trigger > 0.0 || boost > 0.0)
            && self.healed_at.is_none()
            && self.rng.gen_bool(self.crash_trigger.max(boost))
        {
            let delay = self.rng.gen_range(0..2 * MILLIS);
            // Sometimes the power fails for everyone at that moment, so
            // followers lose what they had not synced either.
            let everyone = self.rng.gen_bool(power_failure);
            for node in 0..self.nodes.len() {
                if node == index || everyone {
                    let life = self.nodes[node].life;
                    self.queue.schedule_in(delay, Event::Crash { node, life });
                }
            }
            self.faults += 1;
        }
    }

    fn send(&mut self, from: usize, envelope: Envelope) {
        let Some(to) = self.node_index(envelope.to) else {
            self.violation(format!("message to unknown node {}", envelope.to));
            return;
        };
        if self.queue.now() < self.no_op_loss_until
            && self.no_op_loss_to.contains(&to)
            && matches!(&envelope.message, Message::AppendEntries(append)
                if append.entries.get(12) == Some(&EntryKind::NoOp.to_byte()))
        {
            // Selective loss: a new leader's no-op does not get through,
            // while the older entries before it do (Raft's Figure 8).
            return;
        }
        let lost_tail = self.nodes[from].core.as_ref().and_then(RaftNode::lost_tail);
        if let Some(mark) = lost_tail {
            // See the module docs: a node that lost synced entries to
            // corruption asks for no votes until caught up, and grants only
            // the votes its undamaged log would have granted.
            let broken = match &envelope.message {
                Message::RequestVote(_) => true,
                Message::RequestVoteResponse(response) if response.granted => self.nodes[from]
                    .vote_requests
                    .get(&to)
                    .is_none_or(|request| {
                        (request.last_term, request.last_offset) < (mark.last_term, mark.end_offset)
                    }),
                _ => false,
            };
            if broken {
                let id = self.nodes[from].id;
                self.violation(format!(
                    "node {id}, marked {mark:?} after losing synced entries, sent {:?}",
                    envelope.message
                ));
                return;
            }
        }
        if let (Some(uploads), Message::AppendEntries(message)) =
            (self.uploads.as_mut(), &envelope.message)
        {
            if let Some((head, parts)) = uploads.by_digest(from, to, message) {
                let deliveries = self.network.deliveries(from, to, &mut self.rng);
                for &delay in deliveries.as_slice() {
                    self.queue.schedule_in(
                        delay,
                        Event::DeliverByDigest {
                            from,
                            to,
                            head,
                            parts: parts.clone(),
                        },
                    );
                }
                return;
            }
        }
        let deliveries = self.network.deliveries(from, to, &mut self.rng);
        if deliveries.as_slice().is_empty() {
            return;
        }
        // Real bytes on the wire: the receiver decodes what the codec wrote.
        let mut encoded = Vec::new();
        envelope.encode(&mut encoded);
        let bytes = Bytes::from(encoded);
        for &delay in deliveries.as_slice() {
            self.queue.schedule_in(
                delay,
                Event::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// `follower` could not rebuild entries `leader` sent by digest: like
    /// `loglogd`, the leader resends them raw from its log if it still
    /// leads in that term, and sends those entries raw from then on.
    fn resend_missed(&mut self, leader: usize, follower: usize, head: upload::Head) {
        let Some(core) = self.nodes[leader].core.as_ref() else {
            return;
        };
        if core.role() != Role::Leader || core.term() != head.term {
            return;
        }
        let disk = &self.nodes[leader].disk;
        let Some(wanted_end) = head.prev_offset.checked_add(head.entries_len) else {
            return;
        };
        if wanted_end > disk.log().len() as u64 || head.entries_len == 0 {
            return;
        }
        let Ok(entries) = DiskLog(disk).read(head.prev_offset, head.entries_len) else {
            return;
        };
        self.uploads
            .as_mut()
            .expect("misses only in upload mode")
            .peer_missed(leader, follower, wanted_end);
        let envelope = Envelope {
            from: self.nodes[leader].id,
            to: self.nodes[follower].id,
            message: Message::AppendEntries(AppendEntries {
                term: head.term,
                prev_offset: head.prev_offset,
                prev_term: head.prev_term,
                leader_commit: head.leader_commit,
                entries: entries.into(),
            }),
        };
        self.send(leader, envelope);
    }

    fn node_index(&self, id: NodeId) -> Option<usize> {
        let index = usize::try_from(id).ok()?.checked_sub(1)?;
        (index < self.nodes.len()).then_some(index)
    }

    // ----- checks -----

    /// Compares the node's newly committed bytes with the one committed log
    /// (extending it), and checks they are durable locally.
    fn check_commit(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let id = node.id;
        // Below its log start a node holds nothing (trimmed or re-seeded).
        let (from, to) = (node.checked_commit.max(node.disk.start()), node.commit);
        if to <= from {
            node.checked_commit = node.checked_commit.max(to);
            return;
        }
        node.checked_commit = to;
        if node.amnesia.is_some()
            && node
                .core
                .as_ref()
                .is_some_and(|core| core.lost_tail().is_none())
        {
            // The core cleared its mark: forget it durably.
            node.amnesia = None;
            node.disk.write_state(AMNESIA_FILE, Vec::new());
        }
        let durable_len = node.disk.durable_log().len() as u64;
        if let Some(claimed) = node.core.as_ref().map(RaftNode::durable_offset) {
            if self.check_local_durability && claimed > durable_len {
                self.violation(format!(
                    "node {id}: the core counts {claimed} bytes durable, the disk holds {durable_len}"
                ));
            }
        }
        let node = &self.nodes[index];
        let log = node.disk.log();
        if (log.len() as u64) < to {
            let len = log.len();
            self.violation(format!("node {id}: commit {to} is past its log end {len}"));
            return;
        }
        let durable = node.disk.durable_log();
        if self.check_local_durability
            && (durable.len() < to as usize
                || durable[from as usize..to as usize] != log[from as usize..to as usize])
        {
            self.violation(format!(
                "node {id}: committed bytes {from}..{to} are not durable locally"
            ));
        }
        let overlap_end = to.min(self.committed.len() as u64);
        if from < overlap_end
            && self.committed[from as usize..overlap_end as usize]
                != self.nodes[index].disk.log()[from as usize..overlap_end as usize]
        {
            let at = first_difference(
                &self.committed[from as usize..overlap_end as usize],
                &self.nodes[index].disk.log()[from as usize..overlap_end as usize],
            ) + from;
            self.violation(format!(
                "node {id}: committed prefix differs from the committed log at offset {at}"
            ));
            return;
        }
        if from > self.committed.len() as u64 {
            let known = self.committed.len();
            self.violation(format!(
                "node {id}: its log starts at {from}, past the committed log's end {known}"
            ));
            return;
        }
        if to > self.committed.len() as u64 {
            // The reporting node's term bounds the term of the leader that
            // committed these bytes from above.
            let term = self.nodes[index].core.as_ref().map_or(0, RaftNode::term);
            let end = self.committed_end_by_term.entry(term).or_insert(0);
            *end = (*end).max(to);
            let start = self.committed.len();
            let extension = self.nodes[index].disk.log()[start..to as usize].to_vec();
            self.committed.extend_from_slice(&extension);
        }
    }

    fn on_new_leader(&mut self, index: usize, term: Term) {
        let id = self.nodes[index].id;
        if let Some(&other) = self.leaders.get(&term) {
            if other != index {
                let other_id = self.nodes[other].id;
                self.violation(format!(
                    "two leaders in term {term}: nodes {other_id} and {id}"
                ));
            }
        }
        self.leaders.insert(term, index);
        // Bytes committed in earlier terms must all be in the new leader's
        // log (a leader of an older term elected late may lack bytes that
        // later terms committed).
        let required = self
            .committed_end_by_term
            .range(..term)
            .map(|(_, &end)| end)
            .max()
            .unwrap_or(0) as usize;
        let log = self.nodes[index].disk.log();
        let start = (self.nodes[index].disk.start() as usize).min(required);
        if !log[start.min(log.len())..].starts_with(&self.committed[start..required]) {
            let at = first_difference(
                &self.committed[start..required],
                &log[start.min(log.len())..],
            ) + start as u64;
            let committed_len = required;
            self.violation(format!(
                "leader completeness: node {id}, leader of term {term}, lacks committed bytes \
                 from offset {at} (committed in earlier terms up to {committed_len})"
            ));
        }
        self.check_log_matching();
    }

    /// Log matching: if two logs hold an entry of the same term at the same
    /// offset, they are identical up to the end of that entry.
    fn check_log_matching(&mut self) {
        let runs: Vec<Option<Vec<(u64, u64, Term)>>> = self
            .nodes
            .iter()
            .map(|node| {
                node.is_up()
                    .then(|| entry_boundaries(node.disk.log(), node.disk.start()))
            })
            .collect();
        for a in 0..self.nodes.len() {
            for b in a + 1..self.nodes.len() {
                let (Some(entries_a), Some(entries_b)) = (&runs[a], &runs[b]) else {
                    continue;
                };
                // The last entry both logs hold with the same offset and term.
                let (mut i, mut j) = (0, 0);
                let mut matched_end = None;
                while i < entries_a.len() && j < entries_b.len() {
                    let (offset_a, end_a, term_a) = entries_a[i];
                    let (offset_b, _, term_b) = entries_b[j];
                    match offset_a.cmp(&offset_b) {
                        std::cmp::Ordering::Less => i += 1,
                        std::cmp::Ordering::Greater => j += 1,
                        std::cmp::Ordering::Equal => {
                            if term_a == term_b {
                                matched_end = Some(end_a);
                            }
                            i += 1;
                            j += 1;
                        }
                    }
                }
                if let Some(end) = matched_end {
                    // Compared from where both logs still hold bytes.
                    let start = self.nodes[a].disk.start().max(self.nodes[b].disk.start()) as usize;
                    let log_a = &self.nodes[a].disk.log()[start..end as usize];
                    let log_b = self.nodes[b].disk.log();
                    if log_b.len() < end as usize || log_a != &log_b[start..end as usize] {
                        let at = first_difference(log_a, &log_b[start..]) + start as u64;
                        let (id_a, id_b) = (self.nodes[a].id, self.nodes[b].id);
                        self.violation(format!(
                            "log matching: nodes {id_a} and {id_b} share an entry ending at \
                             {end} of the same term but differ at offset {at}"
                        ));
                    }
                }
            }
        }
    }

    // ----- the node's client service -----

    fn serve_request(&mut self, index: usize, client: usize, attempt: u64, request: ClientRequest) {
        match request {
            ClientRequest::Append(value) => {
                let core = self.core(index);
                let term = core.term();
                match core.propose(&value) {
                    Ok(offset) => {
                        if let Some(uploads) = self.uploads.as_mut() {
                            uploads.proposed(index, offset, &value);
                        }
                        let id = self.nodes[index].id;
                        self.trace_line(|| {
                            format!("node {id} proposed client {client}'s append at {offset} in term {term}")
                        });
                        self.nodes[index].waiting_appends.insert(
                            offset,
                            WaitingAppend {
                                client,
                                attempt,
                                term,
                                value,
                            },
                        );
                    }
                    Err(ProposeError::NotLeader { leader }) => {
                        self.reply(index, client, attempt, Reply::NotLeader { hint: leader })
                    }
                    Err(ProposeError::Busy(_)) => self.reply(index, client, attempt, Reply::Busy),
                    Err(error) => {
                        self.violation(format!("propose refused a valid append: {error}"));
                    }
                }
            }
            ClientRequest::Read {
                kind: ReadKind::Plain,
                start,
            } => {
                let reply = self.serve_plain_read(index, start);
                self.reply(index, client, attempt, reply);
            }
            ClientRequest::Read {
                kind: ReadKind::Linearizable,
                start,
            } => {
                let ctx = (client as u64) << 40 | attempt;
                match self.core(index).read_index(ctx) {
                    Ok(()) => {
                        self.nodes[index].waiting_reads.insert(
                            ctx,
                            WaitingRead {
                                client,
                                attempt,
                                start,
                            },
                        );
                    }
                    Err(RequestError::NotLeader { leader }) => {
                        self.reply(index, client, attempt, Reply::NotLeader { hint: leader })
                    }
                    Err(_) => self.reply(index, client, attempt, Reply::Busy),
                }
            }
        }
    }

    /// The node's committed prefix from `start`, whole entries, CRC-checked
    /// (a corrupt entry fails the read rather than being served).
    fn serve_plain_read(&self, index: usize, start: u64) -> Reply {
        let node = &self.nodes[index];
        let commit = node.commit;
        if start > commit {
            return Reply::ReadFailed;
        }
        if start < node.disk.start() {
            return Reply::ReadTrimmed {
                start: node.disk.start(),
            };
        }
        let log = &node.disk.log()[start as usize..commit as usize];
        let mut end = 0usize;
        for entry in EntryIter::new(log, start, MAX_PAYLOAD) {
            let Ok(entry) = entry else {
                return Reply::ReadFailed;
            };
            end += entry.header.entry_len() as usize;
            if end >= PLAIN_READ_BYTES {
                break;
            }
        }
        match ReadResult::from_raw_bytes(start, &log[..end]) {
            Ok(result) => Reply::ReadOk(result),
            Err(_) => Reply::ReadFailed,
        }
    }

    /// Everything from `start` up to the read index.
    fn serve_linearizable_read(&self, index: usize, start: u64, read_index: u64) -> Reply {
        let node = &self.nodes[index];
        if start >= read_index {
            // Nothing to return, but the read index itself is the answer
            // the checker judges.
            return Reply::ReadOk(ReadResult {
                start: read_index,
                end: read_index,
                entries: Vec::new(),
            });
        }
        if read_index > node.commit {
            // The core promised the commit offset had reached it.
            return Reply::ReadIndexPastCommit {
                read_index,
                commit: node.commit,
            };
        }
        if start < node.disk.start() {
            return Reply::ReadTrimmed {
                start: node.disk.start(),
            };
        }
        match ReadResult::from_raw_bytes(
            start,
            &node.disk.log()[start as usize..read_index as usize],
        ) {
            Ok(result) => Reply::ReadOk(result),
            Err(_) => Reply::ReadFailed,
        }
    }

    /// Acknowledges the appends the commit offset has passed: each either
    /// is committed at its offset, or another entry is and it failed.
    fn complete_committed_appends(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        let commit = node.commit;
        let still_waiting = match node.waiting_appends.range(commit..).next() {
            Some((&offset, _)) => node.waiting_appends.split_off(&offset),
            None => BTreeMap::new(),
        };
        let done = std::mem::replace(&mut node.waiting_appends, still_waiting);
        for (offset, waiting) in done {
            let node = &self.nodes[index];
            // Ours if the committed entry at that offset is of the term we
            // proposed it in and holds our bytes. Below the log start (a
            // trim or re-seed took it) only the term map remains, which
            // settles it as the driver contract says.
            let ours = if offset < node.disk.start() {
                node.core
                    .as_ref()
                    .is_some_and(|core| core.term_map().term_at(offset) == waiting.term)
            } else {
                EntryIter::new(&node.disk.log()[offset as usize..], offset, MAX_PAYLOAD)
                    .next()
                    .and_then(Result::ok)
                    .is_some_and(|entry| {
                        entry.header.term == waiting.term
                            && entry.header.kind == EntryKind::Data
                            && entry.payload == waiting.value
                    })
            };
            let reply = if ours {
                Reply::AppendOk { offset }
            } else {
                Reply::AppendFailed
            };
            self.reply(index, waiting.client, waiting.attempt, reply);
        }
    }

    fn reply(&mut self, node: usize, client: usize, attempt: u64, reply: Reply) {
        // Replies cross the network too: during faults some are lost,
        // which leaves the client in doubt.
        if self.client_cut_off(client, node)
            || (self.healed_at.is_none()
                && self.network.config.loss > 0.0
                && self.rng.gen_bool(0.02))
        {
            return;
        }
        let delay = self.rng.gen_range(50 * MICROS..400 * MICROS);
        self.queue.schedule_in(
            delay,
            Event::Reply {
                client,
                attempt,
                reply,
            },
        );
    }

    // ----- clients -----

    fn client_next(&mut self, index: usize) {
        if self.stopping || self.clients[index].op.is_some() {
            return;
        }
        let now = self.queue.now();
        let choice = self.rng.gen_range(0..100);
        let client = &mut self.clients[index];
        client.sequence += 1;
        let op = if choice < 70 {
            // Mostly small values; a few large ones exceed small batches.
            let padding = if self.rng.gen_bool(0.03) {
                self.rng.gen_range(500..4000)
            } else {
                self.rng.gen_range(0..64)
            };
            let mut value = format!("c{index}-{}-", client.sequence).into_bytes();
            value.extend(std::iter::repeat_n(b'.', padding));
            let id = self.history.invoke_append(index as u64, value.clone(), now);
            ClientOp::Append { id, value }
        } else {
            let kind = if choice < 85 {
                ReadKind::Plain
            } else {
                ReadKind::Linearizable
            };
            let known = &self.acknowledged_offsets;
            let start = if known.is_empty() || self.rng.gen_bool(0.2) {
                0
            } else {
                let recent = known.len().saturating_sub(16);
                known[self.rng.gen_range(recent..known.len())]
            };
            let id = self.history.invoke_read(index as u64, kind, now);
            ClientOp::Read { id, kind, start }
        };
        self.trace_line(|| match &op {
            ClientOp::Append { value, .. } => {
                format!(
                    "client {index} appends {:?}",
                    String::from_utf8_lossy(value)
                )
            }
            ClientOp::Read { kind, start, .. } => {
                format!("client {index} reads ({kind:?}) from {start}")
            }
        });
        let client = &mut self.clients[index];
        client.op = Some(op);
        client.op_invoked_at = now;
        self.client_send(index);
    }

    fn client_cut_off(&self, client: usize, node: usize) -> bool {
        self.client_links_cut[client * self.nodes.len() + node]
    }

    fn client_send(&mut self, index: usize) {
        let client = &mut self.clients[index];
        client.attempt += 1;
        let attempt = client.attempt;
        let node = client.target;
        let request = match client.op.as_ref().expect("sending an operation") {
            ClientOp::Append { value, .. } => ClientRequest::Append(value.clone()),
            ClientOp::Read { kind, start, .. } => ClientRequest::Read {
                kind: *kind,
                start: *start,
            },
        };
        self.trace_line(|| format!("client {index} attempt {attempt} to node {}", node + 1));
        if let (Some(_), ClientRequest::Append(value)) = (&self.uploads, &request) {
            self.upload_to_others(index, node, value.clone());
        }
        let delay = self.rng.gen_range(50 * MICROS..400 * MICROS);
        // A client cut off from that node: the request is lost.
        if !self.client_cut_off(index, node) {
            self.queue.schedule_in(
                delay,
                Event::Request {
                    node,
                    client: index,
                    attempt,
                    request,
                },
            );
        }
        self.queue.schedule_in(
            ATTEMPT_TIMEOUT,
            Event::AttemptTimeout {
                client: index,
                attempt,
            },
        );
    }

    /// Upload mode: the client uploads `value` to every node but `target`,
    /// each upload lost, late or corrupt like a message can be.
    fn upload_to_others(&mut self, client: usize, target: usize, value: Vec<u8>) {
        let key = UploadKey::of(&value).expect("small values");
        for node in 0..self.nodes.len() {
            if node == target || self.client_cut_off(client, node) || self.rng.gen_bool(0.1) {
                continue; // not sent, or lost
            }
            let mut payload = value.clone();
            if self.rng.gen_bool(0.05) && !payload.is_empty() {
                // Wrong bytes under the right digest: a real node refuses
                // such an upload, the CRC check must catch it anyway.
                let at = self.rng.gen_range(0..payload.len());
                payload[at] ^= 0x5a;
            }
            // Usually there before the leader's message, sometimes after.
            let delay = self.rng.gen_range(20 * MICROS..3 * MILLIS);
            self.queue
                .schedule_in(delay, Event::Upload { node, key, payload });
        }
    }

    fn client_reply(&mut self, index: usize, attempt: u64, reply: Reply) {
        let now = self.queue.now();
        if self.clients[index].attempt != attempt {
            return;
        }
        self.trace_line(|| match &reply {
            Reply::ReadOk(result) => format!(
                "client {index} attempt {attempt}: read [{}, {}) {} entries",
                result.start,
                result.end,
                result.entries.len()
            ),
            other => format!("client {index} attempt {attempt}: {other:?}"),
        });
        let Some(op) = self.clients[index].op.clone() else {
            return;
        };
        match (op, reply) {
            (ClientOp::Append { id, .. }, Reply::AppendOk { offset }) => {
                self.history
                    .complete_append(id, AppendOutcome::Ok { offset }, now);
                self.acknowledged_offsets.push(offset);
                if self
                    .healed_at
                    .is_some_and(|healed| self.history.append(id).invoked_at >= healed)
                    && self.live_at.is_none()
                {
                    self.live_at = Some(now);
                    self.trace_line(|| "live again: an append after the heal committed".into());
                    self.queue.schedule_in(2 * SECONDS, Event::Stop);
                }
                self.client_done(index);
            }
            (ClientOp::Append { id, .. }, Reply::AppendFailed) => {
                self.history.complete_append(id, AppendOutcome::Failed, now);
                self.client_done(index);
            }
            (ClientOp::Read { id, .. }, Reply::ReadOk(result)) => {
                self.reads_ok += 1;
                self.history.complete_read(id, ReadOutcome::Ok(result), now);
                self.client_done(index);
            }
            (ClientOp::Read { id, .. }, Reply::ReadFailed) => {
                self.history.complete_read(id, ReadOutcome::Failed, now);
                self.client_done(index);
            }
            (ClientOp::Read { id, .. }, Reply::ReadTrimmed { start }) => {
                self.reads_trimmed += 1;
                self.history
                    .complete_read(id, ReadOutcome::Trimmed { start }, now);
                self.client_done(index);
            }
            (op, reply) => {
                // A definite rejection (not the leader, busy, or a reply
                // that does not fit the operation): retry elsewhere until
                // the deadline.
                let hint = match reply {
                    Reply::NotLeader { hint } => hint,
                    _ => None,
                };
                if now >= self.clients[index].op_invoked_at + OPERATION_DEADLINE {
                    match op {
                        ClientOp::Append { id, .. } => {
                            self.history.complete_append(id, AppendOutcome::Failed, now)
                        }
                        ClientOp::Read { id, .. } => {
                            self.history.complete_read(id, ReadOutcome::Failed, now)
                        }
                    }
                    self.client_done(index);
                    return;
                }
                let target = match hint.and_then(|id| self.node_index(id)) {
                    Some(leader) if leader != self.clients[index].target => leader,
                    _ => self.rng.gen_range(0..self.nodes.len()),
                };
                let client = &mut self.clients[index];
                client.target = target;
                // A new attempt number makes the old attempt's timeout stale.
                client.attempt += 1;
                let attempt = client.attempt;
                let backoff = self.rng.gen_range(5 * MILLIS..30 * MILLIS);
                self.queue.schedule_in(
                    backoff,
                    Event::ClientRetry {
                        client: index,
                        attempt,
                    },
                );
            }
        }
    }

    fn client_retry(&mut self, index: usize, attempt: u64) {
        if self.clients[index].attempt == attempt && self.clients[index].op.is_some() {
            self.client_send(index);
        }
    }

    /// The attempt got no answer in time: an append's fate is unknown, a
    /// read simply failed. The client moves on to another node.
    fn client_timeout(&mut self, index: usize, attempt: u64) {
        let now = self.queue.now();
        let client = &mut self.clients[index];
        if client.attempt != attempt {
            return;
        }
        let Some(op) = client.op.clone() else { return };
        client.target = self.rng.gen_range(0..self.nodes.len());
        self.trace_line(|| format!("client {index} attempt {attempt} timed out"));
        match op {
            ClientOp::Append { id, .. } => {
                self.history
                    .complete_append(id, AppendOutcome::Indeterminate, now)
            }
            ClientOp::Read { id, .. } => self.history.complete_read(id, ReadOutcome::Failed, now),
        }
        self.client_done(index);
    }

    fn client_done(&mut self, index: usize) {
        let client = &mut self.clients[index];
        client.op = None;
        client.attempt += 1;
        let think = self.rng.gen_range(0..20 * MILLIS);
        self.queue
            .schedule_in(think, Event::ClientNext { client: index });
    }

    // ----- faults -----

    fn inject_fault(&mut self) {
        let now = self.queue.now();
        if now >= self.fault_end {
            return;
        }
        self.faults += 1;
        let node_count = self.nodes.len();
        match self.rng.gen_range(0..100) {
            0..=24 => {
                // Crash a node, restart it later; sometimes flip a bit of
                // its disk while it is down.
                let index = self.rng.gen_range(0..node_count);
                if !self.nodes[index].is_up() {
                    return;
                }
                let disk = &self.nodes[index].disk;
                let synced = last_valid_entry(disk.durable_log(), disk.start());
                self.crash_node(index);
                let any_amnesia = self.nodes.iter().any(|node| {
                    node.disk
                        .state(AMNESIA_FILE)
                        .and_then(AmnesiaMark::decode)
                        .is_some()
                });
                if !any_amnesia && self.rng.gen_bool(0.25) {
                    let node = &mut self.nodes[index];
                    if let Some(at) = node.disk.flip_bit(0, &mut self.rng) {
                        let id = node.id;
                        // Any synced byte may have been acknowledged: mark
                        // the node until it has them all again.
                        let (end, last_term) = synced;
                        let mark = AmnesiaMark { end, last_term };
                        node.disk.write_state(AMNESIA_FILE, mark.encode());
                        self.trace_line(|| format!("node {id}: bit flip at offset {at}"));
                    }
                }
                let downtime = self.rng.gen_range(MILLIS..=self.max_downtime);
                self.queue
                    .schedule_in(downtime, Event::Restart { node: index });
                if self.rng.gen_bool(0.3) {
                    // It comes back behind the leader's start: re-seeded.
                    self.trim();
                }
            }
            25..=29 => {
                // Power failure: a quorum or everyone at once.
                let mut all: Vec<usize> = (0..node_count).collect();
                all.shuffle(&mut self.rng);
                let count = self.rng.gen_range(node_count / 2 + 1..=node_count);
                self.trace_line(|| format!("power failure of {count} nodes"));
                for &index in &all[..count] {
                    self.crash_node(index);
                    let downtime = self.rng.gen_range(MILLIS..=self.max_downtime);
                    self.queue
                        .schedule_in(downtime, Event::Restart { node: index });
                }
            }
            30..=34 => {
                // Pause a process (SIGSTOP), often the leader's: it wakes
                // up believing what it believed, e.g. that it leads.
                let index = match self.current_leader() {
                    Some(leader) if self.rng.gen_bool(0.5) => leader,
                    _ => self.rng.gen_range(0..node_count),
                };
                let duration = self.rng.gen_range(20 * MILLIS..2 * SECONDS);
                self.nodes[index].paused_until = now + duration;
                let id = self.nodes[index].id;
                self.trace_line(|| format!("node {id} paused for {}ms", duration / MILLIS));
            }
            35..=44 => {
                // Symmetric partition of a random minority or majority.
                let mut all: Vec<usize> = (0..node_count).collect();
                all.shuffle(&mut self.rng);
                let side_len = self.rng.gen_range(1..=node_count / 2);
                let side = all[..side_len].to_vec();
                self.network.partition(&side, &all);
                let ids: Vec<NodeId> = side.iter().map(|&i| self.nodes[i].id).collect();
                self.trace_line(|| format!("partition: {ids:?} cut off"));
                let duration = self.rng.gen_range(100 * MILLIS..3 * SECONDS);
                self.queue.schedule_in(duration, Event::HealNetwork);
            }
            45..=54 => {
                // One-way partition: one node stops hearing another (or
                // everyone).
                let from = self.rng.gen_range(0..node_count);
                let everyone = self.rng.gen_bool(0.3);
                for to in 0..node_count {
                    if to != from && (everyone || self.rng.gen_bool(0.5)) {
                        self.network.block(from, to);
                    }
                }
                let id = self.nodes[from].id;
                self.trace_line(|| format!("one-way partition: messages from node {id} dropped"));
                let duration = self.rng.gen_range(100 * MILLIS..2 * SECONDS);
                self.queue.schedule_in(duration, Event::HealNetwork);
            }
            55..=59 => {
                // Cut some clients off some nodes (until the network heals).
                let clients = self.clients.len();
                for link in 0..clients * node_count {
                    if self.rng.gen_bool(0.3) {
                        self.client_links_cut[link] = true;
                    }
                }
                self.trace_line(|| "some clients cut off some nodes".to_string());
                let duration = self.rng.gen_range(100 * MILLIS..2 * SECONDS);
                self.queue.schedule_in(duration, Event::HealNetwork);
            }
            60..=69 => {
                // Network weather: lossy and slow, or healthy again.
                self.network.config = if self.rng.gen_bool(0.6) {
                    self.faulty_net
                } else {
                    NetConfig::healthy()
                };
                let config = self.network.config;
                self.trace_line(|| format!("network now {config:?}"));
            }
            70..=77 => self.change_membership(),
            78..=84 => {
                // Selective loss of leaders' no-ops to some nodes for a while.
                let count = self.rng.gen_range(1..=node_count / 2);
                let mut all: Vec<usize> = (0..node_count).collect();
                all.shuffle(&mut self.rng);
                self.no_op_loss_to = all[..count].to_vec();
                let duration = self.rng.gen_range(100 * MILLIS..2 * SECONDS);
                self.no_op_loss_until = now + duration;
                let ids: Vec<NodeId> = self
                    .no_op_loss_to
                    .iter()
                    .map(|&i| self.nodes[i].id)
                    .collect();
                self.trace_line(|| format!("no-ops to {ids:?} lost for {}ms", duration / MILLIS));
            }
            92..=96 => self.trim(),
            97..=99 => self.wipe(),
            _ => {
                // Leadership transfer to a random voter.
                let Some(leader) = self.current_leader() else {
                    return;
                };
                let voters: Vec<NodeId> = self
                    .core(leader)
                    .membership()
                    .voters
                    .iter()
                    .copied()
                    .collect();
                let target = *voters.choose(&mut self.rng).expect("a leader has voters");
                let result = self.core(leader).transfer_leadership(target);
                let id = self.nodes[leader].id;
                self.trace_line(|| {
                    format!("transfer leadership from {id} to {target}: {result:?}")
                });
                self.drive(leader);
            }
        }
    }

    /// The leader trims at a random offset below its commit offset.
    fn trim(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let commit = self.core(leader).commit_offset();
        if commit == 0 {
            return;
        }
        let offset = self.rng.gen_range(0..commit);
        let result = self.core(leader).propose_trim(offset);
        let id = self.nodes[leader].id;
        self.trace_line(|| format!("trim below {offset} via leader {id}: {result:?}"));
        match result {
            Ok(_) | Err(ProposeError::Busy(_)) => {}
            Err(error) => self.violation(format!("a valid trim was refused: {error}")),
        }
        self.drive(leader);
    }

    /// Wipes a node's log and checkpoint (its term and vote survive, see
    /// the module docs) and brings it back after a while: it is re-seeded
    /// from its leader's log start once that is past 0. Marked like a
    /// corrupted node, so at most one node is marked at a time.
    fn wipe(&mut self) {
        let any_amnesia = self.nodes.iter().any(|node| {
            node.disk
                .state(AMNESIA_FILE)
                .and_then(AmnesiaMark::decode)
                .is_some()
        });
        let index = self.rng.gen_range(0..self.nodes.len());
        if any_amnesia || !self.nodes[index].is_up() {
            return;
        }
        let disk = &self.nodes[index].disk;
        let (end, last_term) = last_valid_entry(disk.durable_log(), disk.start());
        let hard_state = disk.state(HARD_STATE_FILE).map(<[u8]>::to_vec);
        self.crash_node(index);
        let node = &mut self.nodes[index];
        node.disk.wipe();
        if let Some(hard_state) = hard_state {
            node.disk.write_state(HARD_STATE_FILE, hard_state);
        }
        if end > 0 {
            node.disk
                .write_state(AMNESIA_FILE, AmnesiaMark { end, last_term }.encode());
        }
        let id = node.id;
        self.trace_line(|| format!("node {id} wiped (log and checkpoint)"));
        let downtime = self.rng.gen_range(MILLIS..=self.max_downtime.max(SECONDS));
        self.queue
            .schedule_in(downtime, Event::Restart { node: index });
        self.trim();
    }

    /// The up node that is leader in the highest term, if any.
    fn current_leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|core| core.role() == Role::Leader)
            })
            .max_by_key(|&i| self.nodes[i].core.as_ref().map(RaftNode::term))
    }

    /// One single-server change through the leader: add a learner, promote
    /// it, or remove a voter, keeping at least three voters.
    fn change_membership(&mut self) {
        let Some(leader) = self.current_leader() else {
            return;
        };
        let membership = self.core(leader).membership().clone();
        let all: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        let outsiders: Vec<NodeId> = all
            .iter()
            .copied()
            .filter(|id| !membership.voters.contains(id) && !membership.learners.contains(id))
            .collect();
        let change = if let Some(&learner) = membership.learners.iter().next() {
            if self.rng.gen_bool(0.8) {
                MembershipChange::PromoteLearner(learner)
            } else {
                MembershipChange::Remove(learner)
            }
        } else if membership.voters.len() > 3 && (outsiders.is_empty() || self.rng.gen_bool(0.5)) {
            let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
            MembershipChange::Remove(*voters.choose(&mut self.rng).expect("voters"))
        } else if let Some(&outsider) = outsiders.choose(&mut self.rng) {
            MembershipChange::AddLearner(outsider)
        } else {
            return;
        };
        let result = self.core(leader).propose_membership(change);
        let id = self.nodes[leader].id;
        self.trace_line(|| format!("membership change via leader {id}: {change:?} -> {result:?}"));
        self.drive(leader);
    }

    /// End of the fault phase: restart every node, heal the network, and
    /// watch for liveness.
    fn heal(&mut self) {
        let now = self.queue.now();
        self.healed_at = Some(now);
        self.network.heal();
        self.client_links_cut.fill(false);
        self.network.config = NetConfig::healthy();
        self.no_op_loss_until = 0;
        self.trace_line(|| "heal: network healthy, every node restarted".to_string());
        for index in 0..self.nodes.len() {
            if !self.nodes[index].is_up() {
                self.start_node(index);
            }
        }
        self.queue.schedule_in(LIVENESS_BOUND, Event::Stop);
    }

    fn finish(mut self) -> SimReport {
        let now = self.queue.now();
        self.stopping = true;
        if self.violations.is_empty() {
            let marked = self.nodes.iter().any(|node| node.amnesia.is_some());
            if self.live_at.is_none() && marked {
                // Known and accepted: a node that lost acknowledged entries
                // to corruption may withhold the one vote a quorum needs
                // (e.g. when the longest log belongs to a node that removed
                // itself). Safety holds; availability waits for an operator.
                self.amnesia_stall = true;
                self.trace_line(|| {
                    "no leader after the heal: a corrupted node holds back its vote".into()
                });
            } else if self.live_at.is_none() {
                let healed = self.healed_at.unwrap_or(now);
                let leaders: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|node| {
                        node.core
                            .as_ref()
                            .map(|core| format!("{:?}", core.status()))
                    })
                    .collect();
                self.violation(format!(
                    "liveness: no append invoked after the heal at {}ms was acknowledged within {}s;                      nodes: {}",
                    healed / MILLIS,
                    LIVENESS_BOUND / SECONDS,
                    leaders.join("; ")
                ));
            }
            self.check_log_matching();
            match FinalLog::from_raw_bytes(&self.committed) {
                Ok(final_log) => {
                    for violation in history::check(&self.history, &final_log) {
                        self.violation(format!("history: {violation}"));
                    }
                }
                Err(error) => self.violation(format!("the committed log does not decode: {error}")),
            }
        }
        let upload = self
            .uploads
            .as_ref()
            .map(|uploads| uploads.stats)
            .unwrap_or_default();
        let appends_invoked = self.history.appends.len() as u64;
        let appends_acknowledged = self.history.acknowledged_appends() as u64;
        let committed_len = self.committed.len();
        self.trace_line(|| {
            format!(
                "end: committed {committed_len} bytes, \
                 {appends_acknowledged}/{appends_invoked} appends acknowledged"
            )
        });
        SimReport {
            seed: self.seed,
            nodes: self.founding_voters,
            violations: self.violations,
            appends_invoked,
            appends_acknowledged,
            reads_ok: self.reads_ok,
            faults: self.faults,
            sim_nanos: now,
            events: self.events,
            amnesia_stall: self.amnesia_stall,
            recovery_nanos: self
                .live_at
                .zip(self.healed_at)
                .map(|(live, healed)| live - healed),
            old_term_commits: self.old_term_commits,
            trims: self.trims,
            resets: self.resets,
            reads_trimmed: self.reads_trimmed,
            removals_noticed: self.removals_noticed,
            trace_hash: if self.trace_mode == TraceMode::Off {
                0
            } else {
                self.trace_hash
            },
            trace: self.trace,
            upload,
        }
    }
}

/// A lossy, slow, reordering network for the fault phase.
fn random_net(rng: &mut ChaCha8Rng) -> NetConfig {
    NetConfig {
        loss: rng.gen_range(0..=15) as f64 / 100.0,
        duplicate: rng.gen_range(0..=5) as f64 / 100.0,
        min_delay: rng.gen_range(50..=500) * MICROS,
        max_delay: rng.gen_range(1..=20) * MILLIS,
        spike: rng.gen_range(0..=10) as f64 / 100.0,
        spike_delay: rng.gen_range(10..=300) * MILLIS,
    }
}

/// The first offset where `a` and `b` differ (or where the shorter ends).
fn first_difference(a: &[u8], b: &[u8]) -> u64 {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len())) as u64
}

/// End and term of the last entry of the valid (CRC-checked) prefix of `log`.
/// The log holds bytes from `start` on (zeros below: trimmed).
fn last_valid_entry(log: &[u8], start: u64) -> (u64, Term) {
    let mut last = (0, 0);
    let rest = log.get(start as usize..).unwrap_or_default();
    for entry in EntryIter::new(rest, start, MAX_PAYLOAD) {
        let Ok(entry) = entry else { break };
        last = (entry.next_offset(), entry.header.term);
    }
    last
}

/// `(offset, end, term)` of every entry in `log` from `start` (its log
/// start: zeros below) on (headers only).
fn entry_boundaries(log: &[u8], start: u64) -> Vec<(u64, u64, Term)> {
    let mut entries = Vec::new();
    let mut at = start as usize;
    while let Some(rest) = log.get(at..).filter(|rest| rest.len() >= ENTRY_HEADER_LEN) {
        let Ok(header) = EntryHeader::decode(rest, MAX_PAYLOAD) else {
            break;
        };
        let end = at + header.entry_len() as usize;
        if end > log.len() {
            break;
        }
        entries.push((at as u64, end as u64, header.term));
        at = end;
    }
    entries
}
