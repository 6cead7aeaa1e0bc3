//! The raft driver: one thread owns the [`RaftNode`] and the [`LogWriter`]
//! and performs the core's actions in order (the driver contract in the
//! `loglog-raft` crate docs).
//!
//! * **Inputs.** Client appends arrive on the node's `WriterCommand` queue
//!   (the same bounded queue the single-node pipeline uses); peer messages,
//!   read-index requests and wake-ups on a bounded event queue. The thread
//!   blocks on both, then drains what is queued (bounded per round) and
//!   proposes every queued append before asking for actions, so one round
//!   of actions carries a whole batch. An append the core has no room for
//!   (its uncommitted bytes at their bound) waits, in order, and holds the
//!   queue back until there is room (`Busy` after [`MAX_DEFER`]). Time comes from the monotonic clock:
//!   a round runs as many ticks as have elapsed (a ticker task only wakes
//!   the thread).
//! * **Actions**, in order: `PersistHardState` is saved (write, fsync,
//!   rename, fsync dir) before anything after it; consecutive `Append`s are
//!   gathered into one `pwrite`, written before any other action; a
//!   `Truncate` cuts the log (durably) but settles none of the appends
//!   waiting at or above it: their entries may survive on other nodes (or
//!   here, if a crash undoes the truncation) and still commit, so they move
//!   to `in_doubt`; `Send` encodes into the peer's bounded queue;
//!   `CommitAdvanced` publishes the commit offset on the node's commit watch
//!   (waking long-poll readers) and answers the waiting appends it covers.
//!   An append proposed at offset `o` in term `t` succeeded iff the
//!   committed entry at `o` is of term `t` (one leader per term writes each
//!   offset once), and definitely failed otherwise: only then is
//!   `NotLeader` (which clients retry) a safe answer.
//! * **Durability.** After each write the thread hands its write id to the
//!   syncer thread, which fdatasyncs (one sync covers every write before
//!   it: group commit) and reports the highest id done through an atomic and
//!   a wake-up. The core counts bytes durable only then. A failed write or
//!   fsync stops the driver (the node answers `Unavailable`; reads go on up
//!   to the commit offset): the core believes the bytes are in the log, so
//!   it must not go on. So a full disk must never fail a write: space is
//!   reserved (`LogWriter::reserve`) before the core takes bytes into its
//!   log. A leader answers an append it has no space for `Unavailable`
//!   without proposing it; a follower drops the entries of an
//!   `AppendEntries` it has no space for, which leaves a probe at the same
//!   `prev_offset` (a message the leader could have sent), until space
//!   returns.
//! * **Membership.** After every round the driver compares the core's
//!   latest configuration with the one it acted on: it opens an outbound
//!   connection to each new member (address from the configuration, else
//!   `--peers`), closes the ones of members gone, and tells the peer
//!   listener whom to accept. Admin requests (add-node, remove-node,
//!   transfer-leader) arrive as events and wait in a bounded list, checked
//!   after every round: an added node is proposed as a learner with its
//!   addresses, and a leader promotes every learner to voter once the
//!   core's progress shows it within `max_learner_lag_bytes` of the commit
//!   offset.
//! * **Checkpoint.** [`RaftNode::checkpoint`] is saved at most once per
//!   [`CHECKPOINT_INTERVAL`] when the commit offset moved, and at shutdown;
//!   a restart scans the log from the checkpoint's commit offset only.
//! * **Lost tail.** `<data-dir>/raft.durable` keeps a lower bound of the
//!   log's synced end (saved with the same lazy rhythm, and lowered *before*
//!   any truncation below it), and `<data-dir>/raft.synced`
//!   ([`super::synced_hint`]) the synced end as of the last fsync, exact
//!   unless the machine lost power. If recovery leaves the log shorter than
//!   the higher of the two, synced entries were lost to disk damage: the
//!   core gets a [`LostTail`] mark (that end, and the persisted term as its
//!   last term, the conservative choice its docs allow), which is persisted
//!   in `raft.durable` until the core clears it. Only synced bytes lost to
//!   damage *and* a power loss within the last interval go unnoticed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog_proto::entry::{EntryIter, ENTRY_HEADER_LEN};
use loglog_proto::wire::{MemberStatus, Role as WireRole, ServerError};
use loglog_raft::{
    Action, AppendEntries, Checkpoint, Config as RaftConfig, Envelope, HardState, LogRead,
    LogReadError, LogScan, LostTail, MemberAddress, Membership, MembershipChange, Message, NodeId,
    NotAMember, ProposeError, RaftNode, RequestError, Role, WriteId,
};
use loglog_storage::{
    state_file, FsyncPolicy, LogReader, LogSyncer, LogWriter, StorageConfig, StorageError,
    MAX_READ_BYTES,
};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use super::power_cut::{self, SyncedMark};
use super::synced_hint::{self, SyncedHint};
use super::transport::{self, AcceptedPeers, Frame, Identity, PeerQueue};
use super::upload::{LeaderDigests, MissReport, UploadCache};
use super::{ClusterConfig, CHECKPOINT_FILE, CLUSTER_ID_FILE, DURABLE_FILE, RESET_FILE};
use crate::config::{Config, Fsync};
use crate::dedup::{Decision, Located, ProducerTable};
use crate::node::{self, StartError, LOG_DIR, NODE_STATE_FILE};
use crate::pipeline::{AppendRequest, ProducerAppend, Reply, Shared, WriterCommand};
use crate::state::{NodeState, NodeStateError};
use crate::tls::PeerTls;
use loglog_proto::upload::UploadKey;

/// Bound of the driver's event queue (peer messages, read-index, wake-ups).
pub const EVENT_QUEUE: usize = 4096;
/// Bound of the driver -> syncer queue (write ids).
const SYNC_JOB_QUEUE: usize = 1024;
/// Most client appends proposed in one round (then actions are performed).
const MAX_PROPOSALS_PER_ROUND: usize = 4096;
/// Most events handled in one round.
const MAX_EVENTS_PER_ROUND: usize = 1024;
/// Most trims proposed and not yet committed; more answer `Busy`.
const MAX_PENDING_TRIMS: usize = 64;

/// The checkpoint is saved at most this often.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest an append waits for room among the core's uncommitted bytes
/// before it is answered `Busy`.
pub const MAX_DEFER: Duration = Duration::from_secs(5);
/// How long a shutting-down node keeps running the core so that appends
/// already proposed can still commit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Most a stopping leader waits for a voter to take over (a transfer
/// normally takes one round trip and an election) before it stops anyway.
const HANDOFF_LIMIT: Duration = Duration::from_secs(2);
/// A leader on a full disk hands its leadership over at most this often.
const FULL_DISK_HANDOFF_INTERVAL: Duration = Duration::from_secs(5);
/// Most admin requests waiting at once (more are answered `Busy`).
pub const MAX_PENDING_ADMIN: usize = 64;
/// How long an added node may take to catch up and become a voter.
pub const ADD_NODE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a removal may take to commit, and a leadership transfer to
/// finish.
pub const MEMBERSHIP_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Version of the cluster id file's payload.
const CLUSTER_ID_VERSION: u32 = 1;
/// Version of the durable-end file's payload.
const DURABLE_VERSION: u32 = 1;
pub const DURABLE_LEN: usize = 25;

/// `<data-dir>/raft.durable`: a lower bound of the log's synced end, and
/// the lost-tail mark while the core keeps one. Payload, little endian:
/// `version u32, synced_end u64, has_mark u8, mark_end u64, mark_term u32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DurableRecord {
    pub synced_end: u64,
    pub lost_tail: Option<LostTail>,
}

impl DurableRecord {
    pub fn encode(&self) -> [u8; DURABLE_LEN] {
        let mut out = [0u8; DURABLE_LEN];
        out[0..4].copy_from_slice(&DURABLE_VERSION.to_le_bytes());
        out[4..12].copy_from_slice(&self.synced_end.to_le_bytes());
        if let Some(mark) = self.lost_tail {
            out[12] = 1;
            out[13..21].copy_from_slice(&mark.end_offset.to_le_bytes());
            out[21..25].copy_from_slice(&mark.last_term.to_le_bytes());
        }
        out
    }

    pub fn decode(path: &Path, bytes: &[u8]) -> Result<DurableRecord, StartError> {
        let corrupt = |reason: String| StartError::CorruptState {
            path: path.to_path_buf(),
            reason,
        };
        let version = bytes
            .get(0..4)
            .map(|version| u32::from_le_bytes(version.try_into().expect("4 bytes")))
            .ok_or_else(|| corrupt("too short".to_string()))?;
        if version != DURABLE_VERSION {
            return Err(StartError::UnsupportedFormat {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let bytes: &[u8; DURABLE_LEN] = bytes
            .try_into()
            .map_err(|_| corrupt(format!("expected {DURABLE_LEN} bytes")))?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let lost_tail = match bytes[12] {
            // Without a mark its fields are zero (one encoding per record).
            0 if bytes[13..] == [0; 12] => None,
            1 => Some(LostTail {
                end_offset: u64_at(13),
                last_term: u32::from_le_bytes(bytes[21..25].try_into().expect("4 bytes")),
            }),
            other => return Err(corrupt(format!("mark flag {other}"))),
        };
        Ok(DurableRecord {
            synced_end: u64_at(4),
            lost_tail,
        })
    }
}

/// An input for the driver thread other than a client append.
pub(crate) enum Event {
    /// Time passed or a sync finished: run a round.
    Wake,
    Message {
        from: NodeId,
        message: Message,
        /// Its share of the inbound byte budget, released once stepped.
        _bytes: tokio::sync::OwnedSemaphorePermit,
    },
    /// Confirm leadership for a linearizable read (read-index).
    ReadIndex(oneshot::Sender<Result<(), ServerError>>),
    /// Every member as this node sees it (cluster status).
    Members(oneshot::Sender<Vec<MemberStatus>>),
    /// A membership or leadership change (admin request).
    Admin(AdminCommand, oneshot::Sender<Result<u64, ServerError>>),
    /// A follower could not rebuild an `AppendByDigest` we sent: resend
    /// its entries raw (module `upload`).
    UploadMissed { from: NodeId, miss: MissReport },
    /// We could not rebuild an `AppendByDigest` from `leader`: tell it.
    ReportMiss { leader: NodeId, miss: MissReport },
    /// A voter refused our connection as not a member, with its notice.
    NotAMember { from: NodeId, notice: NotAMember },
}

/// The admin requests the driver performs (trim goes through the node's
/// command queue instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AdminCommand {
    AddNode {
        id: NodeId,
        peer_addr: String,
        client_addr: String,
    },
    RemoveNode(NodeId),
    TransferLeader(NodeId),
}

/// An admin request waiting for its change to finish.
struct PendingAdmin {
    wait: AdminWait,
    deadline: Instant,
    reply: oneshot::Sender<Result<u64, ServerError>>,
}

#[derive(Clone, Copy, Debug)]
enum AdminWait {
    /// Until the node is a voter in the committed configuration.
    Voter(NodeId),
    /// Until the node is in neither the latest nor the committed one.
    Removed(NodeId),
    /// Until this node knows the node as leader.
    Leader(NodeId),
}

/// The outbound connection to one member.
struct PeerLink {
    queue: Arc<PeerQueue>,
    peer_addr: String,
    /// Dropping it stops the dialer.
    _stop: watch::Sender<bool>,
}

/// What the rest of the node sees of the consensus core.
pub(crate) struct ClusterHandle {
    events: mpsc::Sender<Event>,
    status: Arc<CoreStatus>,
    peer_addr: std::net::SocketAddr,
    identity: Arc<Identity>,
}

/// Published by the driver after every round (relaxed: status only).
#[derive(Default)]
struct CoreStatus {
    role: AtomicU8,
    leader: AtomicU64,
}

impl ClusterHandle {
    /// Waits until this node has confirmed its leadership (read-index) so
    /// that its commit offset covers every append acknowledged before the
    /// call. Followers answer `NotLeader` with the leader's address.
    pub(crate) async fn read_barrier(&self) -> Result<(), ServerError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::ReadIndex(reply))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ServerError::ShuttingDown))
    }

    /// Every member of this node's latest configuration, with its view of
    /// each (replication progress when it leads, when it last heard).
    pub(crate) async fn members(&self) -> Result<Vec<MemberStatus>, ServerError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Members(reply))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.map_err(|_| ServerError::ShuttingDown)
    }

    /// Performs an admin request on the leader (a follower answers
    /// `NotLeader`); answers once the change is done.
    pub(crate) async fn admin(&self, command: AdminCommand) -> Result<u64, ServerError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(Event::Admin(command, reply))
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ServerError::ShuttingDown))
    }

    /// Caches a payload a client uploaded; `key` is its digest and length,
    /// checked by the caller.
    pub(crate) fn upload(&self, key: UploadKey, payload: bytes::Bytes) {
        self.identity.uploads.insert(key, payload);
    }

    /// The upload cache's counters: entries rebuilt from uploads, and
    /// messages that could not be (for tests).
    pub(crate) fn upload_counters(&self) -> (u64, u64) {
        let cache = &self.identity.uploads;
        (
            cache.rebuilt_entries.load(Ordering::Relaxed),
            cache.missed_messages.load(Ordering::Relaxed),
        )
    }

    /// Bytes written to peer connections since start.
    pub(crate) fn peer_bytes_sent(&self) -> u64 {
        self.identity.bytes_sent.load(Ordering::Relaxed)
    }

    pub(crate) fn role(&self) -> WireRole {
        WireRole::from_byte(self.status.role.load(Ordering::Relaxed))
    }

    /// The leader's id as far as this node knows (0: unknown).
    pub(crate) fn leader(&self) -> u64 {
        self.status.leader.load(Ordering::Relaxed)
    }

    /// The address the peer listener is bound to.
    pub(crate) fn peer_addr(&self) -> std::net::SocketAddr {
        self.peer_addr
    }
}

fn wire_role(role: Role) -> WireRole {
    match role {
        Role::Leader => WireRole::Leader,
        Role::Candidate | Role::PreCandidate => WireRole::Candidate,
        Role::Follower => WireRole::Follower,
    }
}

/// What [`start`] hands back to `Node::start`.
pub(crate) struct Started {
    pub shared: Arc<Shared>,
    pub commands: mpsc::Sender<WriterCommand>,
    pub reader: LogReader,
    pub stopped: watch::Receiver<bool>,
    pub lock: File,
    pub handle: ClusterHandle,
}

/// Opens the data directory as a cluster member, starts the driver and
/// syncer threads and the peer transport.
pub(crate) async fn start(config: &Config, cluster: &ClusterConfig) -> Result<Started, StartError> {
    cluster
        .validate(config.node_id)
        .map_err(StartError::Config)?;
    // Certificates are read before anything else starts.
    let peer_tls = match &config.tls {
        Some(tls) => PeerTls::load(tls).map_err(StartError::Tls)?,
        None => None,
    };
    let peer_listener = TcpListener::bind(cluster.peer_listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cluster.peer_listen,
            source,
        })?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|source| StartError::Listen {
            addr: cluster.peer_listen,
            source,
        })?;
    let open_config = config.clone();
    let open_cluster = cluster.clone();
    let opened = tokio::task::spawn_blocking(move || open_cluster_dir(&open_config, &open_cluster))
        .await
        .map_err(|join| StartError::Threads(std::io::Error::other(join.to_string())))??;
    // A joining node restarted without --peers reaches the members through
    // the ones it joined with until its log names them.
    let effective;
    let cluster = if cluster.peers.is_empty() && !opened.join_peers.is_empty() {
        let mut with_peers = cluster.clone();
        with_peers.peers = opened.join_peers.clone();
        effective = with_peers;
        &effective
    } else {
        cluster
    };

    let shared = node::new_shared(config, opened.raft.commit_offset(), opened.raft.term());
    shared
        .written_end
        .store(opened.writer.end_offset(), Ordering::Release);
    let (commands_tx, commands_rx) = mpsc::channel(config.limits.max_pending_appends);
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let (sync_tx, sync_rx) = std_mpsc::sync_channel(SYNC_JOB_QUEUE);
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let synced = Arc::new(AtomicU64::new(0));
    let status = Arc::new(CoreStatus::default());

    let me = config.node_id;
    warn_on_address_mismatch(config, cluster, peer_addr);
    // The driver sets the accepted members and dials them (sync_peers).
    let identity = Arc::new(Identity {
        node_id: me,
        cluster_id: cluster.cluster_id(),
        // Set before the peer listener serves, so that no stranger gets in
        // before the driver's first sync_peers.
        accepted: std::sync::RwLock::new(accepted_peers(
            opened.raft.membership(),
            opened.raft.committed_membership(),
            cluster,
        )),
        bytes_sent: AtomicU64::new(0),
        uploads: UploadCache::new(cluster.upload_cache),
        max_payload: config.max_entry_size,
        tls: peer_tls,
        accepted_changes: watch::channel(()).0,
        not_a_member_notice: std::sync::Mutex::new(opened.raft.not_a_member_notice()),
        refusals: std::sync::Mutex::new(transport::RefusalLog::default()),
    });
    let max_entries_bytes = opened.raft.config().max_message_entries_bytes();
    tokio::spawn(transport::serve_peers(
        peer_listener,
        identity.clone(),
        events_tx.clone(),
        max_entries_bytes,
        stopped_rx.clone(),
    ));
    // The ticker only wakes the driver; the driver reads the clock.
    let ticker_events = events_tx.clone();
    let tick = cluster.tick;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            interval.tick().await;
            if let Err(mpsc::error::TrySendError::Closed(_)) = ticker_events.try_send(Event::Wake) {
                return;
            }
        }
    });

    let syncer = SyncerThread {
        fsync_delay: cluster.test_switches.fsync_delay,
        synced_mark: opened.synced_mark.clone(),
        synced_hint: opened.synced_hint.clone(),
        syncer: opened.syncer,
        fsync: config.fsync,
        jobs: sync_rx,
        synced: synced.clone(),
        wake: events_tx.clone(),
        shared: shared.clone(),
    };
    let syncer_thread = std::thread::Builder::new()
        .name("loglog-raft-sync".to_string())
        .spawn(move || syncer.run())
        .map_err(StartError::Threads)?;

    let reader = opened.writer.reader();
    let now = Instant::now();
    let commit = opened.raft.commit_offset();
    let driver = Driver {
        producers: opened.producers,
        raft: opened.raft,
        writer: opened.writer,
        reader: reader.clone(),
        shared: shared.clone(),
        status: status.clone(),
        commands: commands_rx,
        commands_open: true,
        events: events_rx,
        peer_events: events_tx.clone(),
        runtime: tokio::runtime::Handle::current(),
        sync_jobs: Some(sync_tx),
        synced,
        reported_synced: 0,
        identity: identity.clone(),
        cluster: cluster.clone(),
        links: BTreeMap::new(),
        synced_membership: None,
        removal_logged: false,
        last_heard: BTreeMap::new(),
        admin: Vec::new(),
        waiters: VecDeque::new(),
        in_doubt: Vec::new(),
        deferred: VecDeque::new(),
        deferred_again: false,
        no_wait: Vec::new(),
        reads: BTreeMap::new(),
        next_read_ctx: 1,
        trims: Vec::new(),
        batch: Vec::new(),
        batch_last_write: 0,
        node_id: me,
        state_path: config.data_dir.join(NODE_STATE_FILE),
        checkpoint_path: config.data_dir.join(CHECKPOINT_FILE),
        reset_path: config.data_dir.join(RESET_FILE),
        checkpoint_saved: (now, commit),
        durable_path: config.data_dir.join(DURABLE_FILE),
        durable: opened.durable,
        synced_mark: opened.synced_mark,
        synced_hint: opened.synced_hint,
        #[cfg(feature = "bug-injection")]
        ack_before_fsync: cluster.test_switches.ack_before_fsync,
        durable_saved_at: now,
        tick: cluster.tick,
        next_tick: now + cluster.tick,
        max_catch_up_ticks: cluster.election_ticks,
        max_commit_wait: config.limits.max_commit_wait,
        stopping: None,
        handoff: None,
        failed: false,
        upload_digests: LeaderDigests::default(),
        disk_full_since: None,
        full_disk_handoff_at: None,
    };
    let mut driver = driver;
    driver.sync_peers();
    std::thread::Builder::new()
        .name("loglog-raft".to_string())
        .spawn(move || {
            driver.run();
            // The syncer ends once the driver dropped its job sender.
            if syncer_thread.join().is_err() {
                tracing::error!("the syncer thread panicked");
            }
            stopped_tx.send_replace(true);
        })
        .map_err(StartError::Threads)?;

    Ok(Started {
        shared,
        commands: commands_tx,
        reader,
        stopped: stopped_rx,
        lock: opened.lock,
        handle: ClusterHandle {
            events: events_tx,
            status,
            peer_addr,
            identity,
        },
    })
}

/// Whom the peer listener accepts: the latest and the committed members (a
/// node removed by an uncommitted entry may still be needed to commit it),
/// each with its peer address. Not `--peers` beyond them: a founder
/// removed since must be refused like any removed node, so that it learns
/// it (a voter's refusal carries the core's `NotAMember`). None yet (a
/// joining node): any id of the cluster, whose certificate (under TLS)
/// must name the host of one of --peers (see transport).
fn accepted_peers(
    latest: &Membership,
    committed: &Membership,
    cluster: &ClusterConfig,
) -> AcceptedPeers {
    let ids: BTreeSet<NodeId> = latest.members().chain(committed.members()).collect();
    AcceptedPeers {
        members: ids
            .into_iter()
            .map(|id| {
                let peer_addr = member_address(latest, committed, cluster, id)
                    .map(|(peer, _client)| peer)
                    .unwrap_or_default();
                (id, peer_addr)
            })
            .collect(),
        join_peers: cluster
            .peers
            .iter()
            .map(|peer| peer.peer_addr.clone())
            .collect(),
    }
}

/// A member's (peer, client) address: from the latest configuration, the
/// committed one, or `--peers`, in that order.
fn member_address(
    latest: &Membership,
    committed: &Membership,
    cluster: &ClusterConfig,
    id: NodeId,
) -> Option<(String, String)> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    latest
        .address(id)
        .or_else(|| committed.address(id))
        .map(|address| (text(&address.peer), text(&address.client)))
        .or_else(|| {
            cluster
                .peer(id)
                .map(|peer| (peer.peer_addr.clone(), peer.client_addr.clone()))
        })
}

/// The addresses this node listens on should be the ones `--peers` gives
/// for it (peers dial the one, clients are redirected to the other): a
/// different port is almost surely a mistake, so say it at start.
fn warn_on_address_mismatch(
    config: &Config,
    cluster: &ClusterConfig,
    peer_addr: std::net::SocketAddr,
) {
    let Some(me) = cluster.peer(config.node_id).filter(|_| !cluster.join) else {
        return;
    };
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse::<u16>().ok())
    };
    if port(&me.peer_addr) != Some(peer_addr.port()) {
        tracing::warn!(
            listening = %peer_addr,
            listed = %me.peer_addr,
            "--peer-listen differs from this node's peer address in --peers: peers will not reach it"
        );
    }
    if let Some(listen) = config.listen {
        if port(&me.client_addr) != Some(listen.port()) {
            tracing::warn!(
                listening = %listen,
                listed = %me.client_addr,
                "--listen differs from this node's client address in --peers: redirected clients will not reach it"
            );
        }
    }
}

struct Opened {
    /// A joining node's remembered `--peers` (see `JOIN_PEERS_FILE`).
    join_peers: Vec<super::PeerSpec>,
    lock: File,
    producers: ProducerTable,
    raft: RaftNode,
    writer: LogWriter,
    syncer: LogSyncer,
    durable: DurableRecord,
    synced_mark: Option<Arc<SyncedMark>>,
    synced_hint: Arc<SyncedHint>,
}

fn dir_error(dir: &Path) -> impl FnOnce(std::io::Error) -> StartError + '_ {
    move |source| StartError::DataDir {
        dir: dir.to_path_buf(),
        source,
    }
}

fn state_error(error: StorageError) -> StartError {
    match error {
        StorageError::UnsupportedFormat { path, found } => {
            StartError::UnsupportedFormat { path, found }
        }
        StorageError::Corrupt { path, reason, .. } => StartError::CorruptState { path, reason },
        other => StartError::Storage(other),
    }
}

pub fn encode_cluster_id(cluster_id: &str) -> Vec<u8> {
    let mut out = CLUSTER_ID_VERSION.to_le_bytes().to_vec();
    out.extend_from_slice(cluster_id.as_bytes());
    out
}

pub fn decode_cluster_id(path: &Path, bytes: &[u8]) -> Result<String, StartError> {
    let corrupt = |reason: &str| StartError::CorruptState {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let version = bytes
        .get(0..4)
        .map(|version| u32::from_le_bytes(version.try_into().expect("4 bytes")))
        .ok_or_else(|| corrupt("too short"))?;
    if version != CLUSTER_ID_VERSION {
        return Err(StartError::UnsupportedFormat {
            path: path.to_path_buf(),
            found: version,
        });
    }
    String::from_utf8(bytes[4..].to_vec()).map_err(|_| corrupt("the cluster id is not UTF-8"))
}

/// Blocking: lock, check the cluster id and node id, recover and fsync the
/// log, scan it from the checkpoint, build the core (driver contract,
/// Startup).
fn open_cluster_dir(config: &Config, cluster: &ClusterConfig) -> Result<Opened, StartError> {
    let dir = &config.data_dir;
    fs::create_dir_all(dir).map_err(dir_error(dir))?;
    let lock = node::lock_data_dir(dir)?;
    let cluster_id = cluster.cluster_id();
    let id_path = dir.join(CLUSTER_ID_FILE);
    let state_path = dir.join(NODE_STATE_FILE);
    let log_dir = dir.join(LOG_DIR);

    match state_file::load(&id_path).map_err(state_error)? {
        Some(bytes) => {
            let found = decode_cluster_id(&id_path, &bytes)?;
            if found != cluster_id {
                return Err(StartError::WrongCluster {
                    dir: dir.clone(),
                    found,
                    expected: cluster_id,
                });
            }
        }
        None => {
            let has_state = state_file::load(&state_path)
                .map_err(state_error)?
                .is_some();
            if has_state || node::has_segments(&log_dir).map_err(dir_error(dir))? {
                return Err(StartError::NotAClusterMember {
                    dir: dir.clone(),
                    cluster: cluster_id,
                });
            }
            if cluster.join && cluster.peers.is_empty() {
                return Err(StartError::Config(
                    "a node joining with an empty data directory needs --peers listing the \
                     current members (it answers the leader before it has the configuration)"
                        .to_string(),
                ));
            }
            // Bootstrap: the cluster id first, so a node state never exists
            // without it in a cluster's data directory.
            state_file::save(&id_path, &encode_cluster_id(&cluster_id))?;
            tracing::info!(cluster = %cluster_id, "bootstrapped a new cluster member");
        }
    }
    tracing::info!(cluster = %cluster_id, node = config.node_id, join = cluster.join, "cluster member");
    let join_peers = if cluster.join {
        remember_join_peers(dir, cluster)?
    } else {
        Vec::new()
    };

    let hard_state = match state_file::load(&state_path).map_err(state_error)? {
        Some(bytes) => {
            let state = NodeState::decode(&bytes).map_err(|error| match error {
                NodeStateError::UnsupportedVersion { found } => StartError::UnsupportedFormat {
                    path: state_path.clone(),
                    found,
                },
                NodeStateError::Malformed { reason } => StartError::CorruptState {
                    path: state_path.clone(),
                    reason,
                },
            })?;
            if state.node_id != config.node_id {
                return Err(StartError::WrongNode {
                    dir: dir.clone(),
                    found: state.node_id,
                    expected: config.node_id,
                });
            }
            let term = u32::try_from(state.term).map_err(|_| StartError::CorruptState {
                path: state_path.clone(),
                reason: format!("term {} does not fit the entry format", state.term),
            })?;
            HardState {
                term,
                voted_for: (state.voted_for != 0).then_some(state.voted_for),
            }
        }
        None => {
            let fresh = NodeState {
                node_id: config.node_id,
                term: 0,
                voted_for: 0,
            };
            state_file::save(&state_path, &fresh.encode())?;
            HardState::default()
        }
    };

    let power_cut = cluster.test_switches.unsynced_lost_on_kill;
    if power_cut {
        if let Some(mark) = power_cut::drop_unsynced(dir, &log_dir).map_err(dir_error(dir))? {
            tracing::warn!(
                mark,
                "power-cut emulation: the log ends at most at the previous run's synced end"
            );
        }
    }
    let mut storage_config = StorageConfig::new(log_dir);
    storage_config.segment_size = config.segment_size;
    storage_config.max_payload = config.max_entry_size;
    storage_config.fsync = match config.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Never => FsyncPolicy::Never,
    };
    let (mut writer, syncer, reader) = loglog_storage::open(storage_config)?;
    // After a process crash the files may hold written, unsynced bytes; the
    // core treats the whole recovered log as durable, so make it so.
    syncer.sync()?;

    let checkpoint_path = dir.join(CHECKPOINT_FILE);
    let durable_path = dir.join(DURABLE_FILE);
    let reset_path = dir.join(RESET_FILE);
    // The previous process's synced end, exact unless the machine lost
    // power (see `synced_hint`). Read before anything below rewrites it.
    let mut synced_hint = synced_hint::load(dir);
    if let Some(bytes) = state_file::load(&reset_path).map_err(state_error)? {
        // A crash interrupted a log reset: redo it (it is idempotent). The
        // hint may predate the reset's cut: only `raft.durable`, lowered
        // first, can be trusted then.
        synced_hint = None;
        let checkpoint = Checkpoint::decode(&bytes).map_err(|error| StartError::CorruptState {
            path: reset_path.clone(),
            reason: error.to_string(),
        })?;
        tracing::warn!(
            start = checkpoint.commit_offset,
            "completing a log reset a crash interrupted"
        );
        complete_reset(
            &mut writer,
            &checkpoint,
            &checkpoint_path,
            &durable_path,
            &reset_path,
        )?;
    }
    let checkpoint = match state_file::load(&checkpoint_path).map_err(state_error)? {
        Some(bytes) => Checkpoint::decode(&bytes).map_err(|error| StartError::CorruptState {
            path: checkpoint_path.clone(),
            reason: error.to_string(),
        })?,
        // A joining node learns its configuration from the log.
        None if cluster.join => Checkpoint::bootstrap(Membership::default()),
        None => Checkpoint::bootstrap(bootstrap_membership(cluster)?),
    };
    let end = writer.end_offset();
    let producers = node::scan_producers(&reader, dir, end)?;
    let mut recovered = scan_log(&reader, end, checkpoint)
        .map_err(|reason| StartError::Raft(format!("{}: {reason}", dir.display())))?;
    recovered
        .set_log_start(writer.start_offset())
        .map_err(|error| StartError::Raft(format!("{}: {error}", dir.display())))?;

    let previous = match state_file::load(&durable_path).map_err(state_error)? {
        Some(bytes) => DurableRecord::decode(&durable_path, &bytes)?,
        None => DurableRecord::default(),
    };
    let mut lost_tail = previous.lost_tail;
    let synced_end = previous.synced_end.max(synced_hint.unwrap_or(0));
    if end < synced_end {
        tracing::error!(
            end,
            synced_end,
            "!!! recovery cut entries this node had synced (disk damage): until a leader has \
             restored them it asks for no votes and grants none to a shorter log"
        );
        let mark = LostTail {
            end_offset: synced_end,
            last_term: hard_state.term,
        };
        lost_tail = Some(match lost_tail {
            Some(older) => LostTail {
                end_offset: older.end_offset.max(mark.end_offset),
                last_term: older.last_term.max(mark.last_term),
            },
            None => mark,
        });
    }
    if let Some(mark) = lost_tail {
        recovered.set_lost_tail(mark);
    }
    // The whole recovered log was fsynced above.
    let durable = DurableRecord {
        synced_end: end,
        lost_tail,
    };
    if durable != previous {
        state_file::save(&durable_path, &durable.encode())?;
    }
    let mut raft_config = RaftConfig::new(config.node_id, election_seed(config.node_id));
    raft_config.election_ticks = cluster.election_ticks;
    raft_config.heartbeat_ticks = cluster.heartbeat_ticks;
    raft_config.max_payload = config.max_entry_size;
    let raft = RaftNode::new(raft_config, hard_state, recovered)
        .map_err(|error| StartError::Raft(error.to_string()))?;
    tracing::info!(
        term = raft.term(),
        commit = raft.commit_offset(),
        end = raft.end_offset(),
        "consensus core recovered"
    );
    // Recorded only once the start succeeded: a start refused for missing
    // data must leave the previous mark (a test may put the data back).
    let synced_mark = if power_cut {
        let mark = SyncedMark::open(dir, syncer.clone()).map_err(dir_error(dir))?;
        mark.record();
        Some(Arc::new(mark))
    } else {
        None
    };
    let synced_hint = Arc::new(SyncedHint::open(dir, syncer.clone()).map_err(dir_error(dir))?);
    Ok(Opened {
        join_peers,
        lock,
        producers,
        raft,
        writer,
        syncer,
        durable,
        synced_mark,
        synced_hint,
    })
}

/// The durable steps of a log reset after its intent (`RESET_FILE`) is
/// saved: lower the synced-end record (the log shrinks; a restart must not
/// take that for disk damage), reset the log to begin at the checkpoint's
/// offset, save the checkpoint, drop the intent.
fn complete_reset(
    writer: &mut LogWriter,
    checkpoint: &Checkpoint,
    checkpoint_path: &Path,
    durable_path: &Path,
    reset_path: &Path,
) -> Result<(), StorageError> {
    let start = checkpoint.commit_offset;
    let reset_durable = DurableRecord {
        synced_end: start,
        lost_tail: match state_file::load(durable_path)? {
            Some(bytes) => DurableRecord::decode(durable_path, &bytes)
                .map(|record| record.lost_tail)
                .unwrap_or(None),
            None => None,
        },
    };
    state_file::save(durable_path, &reset_durable.encode())?;
    writer.reset_to(start)?;
    state_file::save(checkpoint_path, &checkpoint.encode())?;
    state_file::remove(reset_path)
}

/// The founding voters of `--peers`, with their addresses (so that every
/// config entry carries every member's address, see the module docs of
/// `cluster`).
fn bootstrap_membership(cluster: &ClusterConfig) -> Result<Membership, StartError> {
    let mut membership = Membership::with_voters(cluster.peers.iter().map(|peer| peer.id));
    for peer in &cluster.peers {
        membership
            .set_address(
                peer.id,
                MemberAddress::new(peer.peer_addr.as_bytes(), peer.client_addr.as_bytes()),
            )
            .map_err(|reason| StartError::Config(format!("--peers node {}: {reason}", peer.id)))?;
    }
    Ok(membership)
}

/// A joining node's `--peers`: saved when given (the first start must give
/// them), loaded when a restart gives none.
fn remember_join_peers(
    dir: &Path,
    cluster: &ClusterConfig,
) -> Result<Vec<super::PeerSpec>, StartError> {
    let path = dir.join(super::JOIN_PEERS_FILE);
    if !cluster.peers.is_empty() {
        let text = cluster
            .peers
            .iter()
            .map(|peer| format!("{}={}@{}", peer.id, peer.peer_addr, peer.client_addr))
            .collect::<Vec<_>>()
            .join(",");
        state_file::save(&path, text.as_bytes())?;
        return Ok(cluster.peers.clone());
    }
    match state_file::load(&path).map_err(state_error)? {
        Some(bytes) => {
            let corrupt = |reason: String| StartError::CorruptState {
                path: path.clone(),
                reason,
            };
            let text = String::from_utf8(bytes).map_err(|error| corrupt(error.to_string()))?;
            super::parse_peers(&text).map_err(corrupt)
        }
        None => Ok(Vec::new()),
    }
}

/// Per-process randomness for election timeouts: nodes started together
/// must not time out together.
fn election_seed(node_id: NodeId) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ node_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id())
}

/// Scans the entries from the checkpoint's commit offset to `end`.
fn scan_log(
    reader: &LogReader,
    end: u64,
    checkpoint: Checkpoint,
) -> Result<loglog_raft::RecoveredLog, String> {
    let mut scan = LogScan::new(checkpoint);
    let mut at = scan.next_offset();
    if at > end {
        return Err(format!(
            "the log ends at {end}, below the checkpoint's commit offset {at}: committed data \
             is missing (re-seed this node from a healthy one)"
        ));
    }
    while at < end {
        let chunk = reader
            .read(at, 4 * 1024 * 1024, end)
            .map_err(|error| format!("scanning the log at {at}: {error}"))?;
        for entry in EntryIter::new(&chunk.bytes, chunk.offset, u32::MAX) {
            let entry = entry.map_err(|error| format!("scanning the log at {at}: {error}"))?;
            scan.observe(&entry)
                .map_err(|error| format!("scanning the log: {error}"))?;
        }
        if chunk.bytes.is_empty() {
            return Err(format!("scanning the log: no entry at {at}"));
        }
        at = chunk.next_offset();
    }
    scan.finish_at(end)
        .map_err(|error| format!("scanning the log: {error}"))
}

/// The core's view of the log: whole entries through a [`LogReader`], up to
/// the writer's end (every performed `Append` is written before the next
/// `take_actions`).
struct StorageLog<'a> {
    reader: &'a LogReader,
    end: u64,
}

impl LogRead for StorageLog<'_> {
    fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError> {
        let max_bytes = u32::try_from(max_bytes.min(u64::from(MAX_READ_BYTES)))
            .expect("clamped to MAX_READ_BYTES");
        match self.reader.read(from, max_bytes, self.end) {
            Ok(chunk) => Ok(chunk.bytes),
            Err(StorageError::Trimmed { start }) => Err(LogReadError::Trimmed { start }),
            Err(error) => {
                tracing::warn!(from, %error, "reading entries to send failed");
                Err(LogReadError::Storage(error.to_string()))
            }
        }
    }
}

/// An append waiting for the commit offset to pass its entry.
struct Waiter {
    offset: u64,
    end: u64,
    /// The term it was proposed in: the committed entry at `offset` is this
    /// append's own iff it has this term.
    term: u32,
    /// When it began to wait: past `Limits::max_commit_wait` it is answered
    /// `TimedOut`.
    since: Instant,
    reply: Reply,
}

/// A trim waiting for its entry to commit: answered with the log's new
/// start once the commit offset passes it with the entry of its term.
struct TrimWaiter {
    entry_offset: u64,
    term: u32,
    reply: oneshot::Sender<Result<u64, ServerError>>,
}

enum Input {
    Command(WriterCommand),
    Event(Event),
}

struct Driver {
    /// The (producer, sequence) pairs of this node's log, kept along with
    /// every `Append` and `Truncate` performed: as leader, appends are
    /// deduplicated against it (module `dedup`).
    producers: ProducerTable,
    raft: RaftNode,
    writer: LogWriter,
    reader: LogReader,
    shared: Arc<Shared>,
    status: Arc<CoreStatus>,
    commands: mpsc::Receiver<WriterCommand>,
    commands_open: bool,
    events: mpsc::Receiver<Event>,
    /// Handed to the dialers, which report refusals with a notice.
    peer_events: mpsc::Sender<Event>,
    runtime: tokio::runtime::Handle,
    /// `None` once stopping: dropping it ends the syncer thread.
    sync_jobs: Option<std_mpsc::SyncSender<WriteId>>,
    /// Highest write id the syncer made durable.
    synced: Arc<AtomicU64>,
    reported_synced: WriteId,
    identity: Arc<Identity>,
    /// `--peers`: addresses of members the configuration has none for.
    cluster: ClusterConfig,
    /// One outbound connection per member of the latest configuration.
    links: BTreeMap<NodeId, PeerLink>,
    /// The (latest, committed) configurations `links` and the accepted
    /// members follow.
    synced_membership: Option<(Membership, Membership)>,
    /// This node's removal was logged (once, until a leader reaches it
    /// again).
    removal_logged: bool,
    /// When a message from each member last arrived.
    last_heard: BTreeMap<NodeId, Instant>,
    /// Admin requests waiting for their change (at most MAX_PENDING_ADMIN).
    admin: Vec<PendingAdmin>,
    /// Waiting appends, in offset order.
    waiters: VecDeque<Waiter>,
    /// Appends whose entries a `Truncate` removed here: they may still
    /// commit (from another node's copy), so they wait for the commit offset
    /// to pass them and are settled by the term found there. Also retried
    /// appends answered with their producer's earlier copy, settled the same
    /// way. Bounded like `waiters` (each holds a client request's in-flight
    /// slot).
    in_doubt: Vec<Waiter>,
    /// Appends the core had no room for (uncommitted bytes at their bound),
    /// in arrival order, with when they first met a full core. While any
    /// wait, no new append is taken from the queue.
    deferred: VecDeque<(Instant, AppendRequest)>,
    /// The last proposal was deferred again.
    deferred_again: bool,
    /// No-wait appends proposed this round, answered once written.
    no_wait: Vec<(u64, Reply)>,
    reads: BTreeMap<u64, oneshot::Sender<Result<(), ServerError>>>,
    next_read_ctx: u64,
    /// Trims proposed here, waiting to commit (at most `MAX_PENDING_TRIMS`).
    trims: Vec<TrimWaiter>,
    /// Consecutive `Append` bytes not yet written, and the last write id.
    batch: Vec<u8>,
    batch_last_write: WriteId,
    node_id: NodeId,
    state_path: PathBuf,
    checkpoint_path: PathBuf,
    reset_path: PathBuf,
    /// When the checkpoint was last saved, and its commit offset.
    checkpoint_saved: (Instant, u64),
    durable_path: PathBuf,
    /// What `raft.durable` holds.
    durable: DurableRecord,
    /// Power-cut emulation for tests (`TestSwitches::unsynced_lost_on_kill`).
    synced_mark: Option<Arc<SyncedMark>>,
    /// `raft.synced`, capped before every cut of the log.
    synced_hint: Arc<SyncedHint>,
    /// The deliberate bug `TestSwitches::ack_before_fsync`.
    #[cfg(feature = "bug-injection")]
    ack_before_fsync: bool,
    durable_saved_at: Instant,
    tick: Duration,
    next_tick: Instant,
    max_catch_up_ticks: u32,
    /// `Limits::max_commit_wait`.
    max_commit_wait: Duration,
    stopping: Option<Instant>,
    /// A stopping leader hands its leadership over first (since when), so
    /// the cluster does not wait out an election timeout: a rolling restart
    /// then costs clients a redirect, not a stall.
    handoff: Option<Instant>,
    /// Storage failed: the core may not go on.
    failed: bool,
    /// As leader: the digests of entries clients uploaded (module `upload`).
    upload_digests: LeaderDigests,
    /// Since when this node cannot reserve disk space for new entries (a
    /// full disk): appends are refused and the leader's entries are taken
    /// as heartbeats until space returns.
    disk_full_since: Option<Instant>,
    /// When this node last handed its leadership over for a full disk.
    full_disk_handoff_at: Option<Instant>,
}

impl Driver {
    fn run(mut self) {
        let mut inputs = Vec::new();
        loop {
            self.receive(&mut inputs);
            self.retry_deferred();
            for input in inputs.drain(..) {
                self.handle(input);
            }
            self.run_core();
            if self.raft.role() != Role::Leader && !self.upload_digests.is_empty() {
                // Only a leader sends entries by digest.
                self.upload_digests.clear();
            }
            if !self.failed {
                self.sync_peers();
                self.promote_caught_up_learners();
                self.check_admin();
            }
            if self.failed || self.shared.failure.get().is_some() {
                self.failed = true;
                break;
            }
            if let Some(began) = self.handoff {
                if self.raft.role() != Role::Leader || began.elapsed() >= HANDOFF_LIMIT {
                    tracing::info!(
                        leader = ?self.raft.leader(),
                        handed_over = self.raft.role() != Role::Leader,
                        "leadership handoff over; stopping"
                    );
                    self.handoff = None;
                    self.stopping = Some(Instant::now());
                    self.refuse_queued_commands();
                }
            }
            if let Some(since) = self.stopping {
                if self.waiters.is_empty() || since.elapsed() >= SHUTDOWN_GRACE {
                    break;
                }
            }
        }
        self.finish();
    }

    /// Blocks until there is at least one input, then takes what is queued
    /// (bounded).
    fn receive(&mut self, inputs: &mut Vec<Input>) {
        let commands = &mut self.commands;
        let events = &mut self.events;
        // While appends wait for room, the queue holds the next ones back.
        let commands_open = self.commands_open && self.deferred.is_empty();
        let first = self.runtime.block_on(async {
            tokio::select! {
                event = events.recv() => event.map(Input::Event),
                command = commands.recv(), if commands_open => match command {
                    Some(command) => Some(Input::Command(command)),
                    // Every Node handle is gone: stop like a shutdown.
                    None => Some(Input::Command(WriterCommand::Shutdown)),
                },
            }
        });
        match first {
            Some(input) => inputs.push(input),
            // The event queue closed: nothing can wake us any more.
            None => inputs.push(Input::Command(WriterCommand::Shutdown)),
        }
        let mut proposals = 0;
        while proposals < MAX_PROPOSALS_PER_ROUND && commands_open && self.stopping.is_none() {
            match self.commands.try_recv() {
                Ok(command) => {
                    inputs.push(Input::Command(command));
                    proposals += 1;
                }
                Err(_) => break,
            }
        }
        for _ in 0..MAX_EVENTS_PER_ROUND {
            match self.events.try_recv() {
                Ok(event) => inputs.push(Input::Event(event)),
                Err(_) => break,
            }
        }
    }

    fn leader_address(&self, leader: Option<NodeId>) -> Option<String> {
        let client_of = |id: NodeId| {
            self.member_address(id)
                .map(|(_, client)| client)
                .filter(|client| !client.is_empty())
        };
        match leader {
            Some(id) => client_of(id),
            None => {
                // A removed node never learns the next leader: it points
                // clients at a voter of the cluster it left, which knows.
                let latest = self.raft.membership();
                if latest.is_member(self.node_id) {
                    return None;
                }
                latest.voters.iter().find_map(|&id| client_of(id))
            }
        }
    }

    /// A member's (peer, client) address (see [`member_address`]).
    fn member_address(&self, id: NodeId) -> Option<(String, String)> {
        member_address(
            self.raft.membership(),
            self.raft.committed_membership(),
            &self.cluster,
            id,
        )
    }

    /// Follows the configurations: dials new members, stops dialing members
    /// gone, and updates whom the peer listener accepts. Members of the
    /// latest and of the committed configuration are kept: a leader whose
    /// own removal is appended but not committed still needs our acks.
    fn sync_peers(&mut self) {
        if self
            .synced_membership
            .as_ref()
            .is_some_and(|(latest, committed)| {
                latest == self.raft.membership() && committed == self.raft.committed_membership()
            })
        {
            return;
        }
        let latest = self.raft.membership().clone();
        let committed = self.raft.committed_membership().clone();
        let mut wanted: BTreeSet<NodeId> = latest.members().chain(committed.members()).collect();
        if wanted.is_empty() {
            // Joining: the members to reach are the ones --peers lists.
            wanted = self.cluster.peers.iter().map(|peer| peer.id).collect();
        }
        wanted.remove(&self.node_id);
        self.links.retain(|id, _| wanted.contains(id));
        self.last_heard.retain(|id, _| wanted.contains(id));
        for &id in &wanted {
            let Some((peer_addr, _)) = self.member_address(id).filter(|(peer, _)| !peer.is_empty())
            else {
                tracing::warn!(
                    peer = id,
                    "no peer address known for member; cannot reach it"
                );
                self.links.remove(&id);
                continue;
            };
            if self
                .links
                .get(&id)
                .is_some_and(|link| link.peer_addr == peer_addr)
            {
                continue;
            }
            let queue = Arc::new(PeerQueue::new());
            let (stop, stopped) = watch::channel(false);
            self.runtime.spawn(transport::dial_peer(
                self.identity.clone(),
                id,
                peer_addr.clone(),
                queue.clone(),
                self.peer_events.clone(),
                stopped,
            ));
            self.links.insert(
                id,
                PeerLink {
                    queue,
                    peer_addr,
                    _stop: stop,
                },
            );
        }
        self.identity
            .set_accepted(accepted_peers(&latest, &committed, &self.cluster));
        tracing::info!(
            voters = ?latest.voters,
            learners = ?latest.learners,
            "membership in force"
        );
        self.synced_membership = Some((latest, committed));
    }

    /// Every member as this node sees it.
    fn members_status(&self) -> Vec<MemberStatus> {
        let latest = self.raft.membership();
        let progress: BTreeMap<NodeId, u64> = self
            .raft
            .followers()
            .into_iter()
            .map(|follower| (follower.id, follower.match_offset))
            .collect();
        let leading = self.raft.role() == Role::Leader;
        let now = Instant::now();
        latest
            .members()
            .map(|id| {
                let (peer_addr, client_addr) = self.member_address(id).unwrap_or_default();
                let match_offset = if id == self.node_id {
                    leading.then(|| self.raft.durable_offset())
                } else {
                    progress.get(&id).copied()
                };
                MemberStatus {
                    id,
                    voter: latest.is_voter(id),
                    match_offset,
                    last_heard_ms: self
                        .last_heard
                        .get(&id)
                        .map(|at| now.duration_since(*at).as_millis() as u64),
                    peer_addr,
                    client_addr,
                }
            })
            .collect()
    }

    /// Starts an admin request: proposes the change (leader only) and
    /// queues the request until the change is done.
    fn start_admin(
        &mut self,
        command: AdminCommand,
        reply: oneshot::Sender<Result<u64, ServerError>>,
    ) {
        if self.raft.role() != Role::Leader {
            drop(reply.send(Err(self.not_leader())));
            return;
        }
        if self.admin.len() >= MAX_PENDING_ADMIN {
            drop(reply.send(Err(ServerError::Busy)));
            return;
        }
        let bad = |message: String| Err(ServerError::BadRequest { message });
        let latest = self.raft.membership().clone();
        let now = Instant::now();
        let started: Result<(AdminWait, Duration), ServerError> = match command {
            AdminCommand::AddNode {
                id,
                peer_addr,
                client_addr,
            } => {
                let address = MemberAddress::new(peer_addr.as_bytes(), client_addr.as_bytes());
                if id == 0 {
                    bad("node id 0 is reserved".to_string())
                } else if latest.is_member(id) {
                    // A retried request: wait for the same change.
                    match latest.address(id) {
                        Some(known) if *known != address => bad(format!(
                            "node {id} is already a member, with other addresses"
                        )),
                        _ => Ok((AdminWait::Voter(id), ADD_NODE_TIMEOUT)),
                    }
                } else {
                    // Every member's address goes into the entry (also the
                    // founders' of a cluster whose entries have none).
                    let mut addresses: BTreeMap<NodeId, MemberAddress> = latest
                        .members()
                        .filter(|member| latest.address(*member).is_none())
                        .filter_map(|member| {
                            self.member_address(member)
                                .map(|(peer, client)| (member, MemberAddress::new(peer, client)))
                        })
                        .collect();
                    addresses.insert(id, address);
                    self.raft
                        .propose_membership_with_addresses(
                            MembershipChange::AddLearner(id),
                            &addresses,
                        )
                        .map_err(|error| self.propose_error(error))
                        .map(|_| (AdminWait::Voter(id), ADD_NODE_TIMEOUT))
                }
            }
            AdminCommand::RemoveNode(id) => {
                if !latest.is_member(id) {
                    Ok((AdminWait::Removed(id), MEMBERSHIP_CHANGE_TIMEOUT))
                } else {
                    self.raft
                        .propose_membership(MembershipChange::Remove(id))
                        .map_err(|error| self.propose_error(error))
                        .map(|_| (AdminWait::Removed(id), MEMBERSHIP_CHANGE_TIMEOUT))
                }
            }
            AdminCommand::TransferLeader(id) if id == self.node_id => {
                Ok((AdminWait::Leader(id), MEMBERSHIP_CHANGE_TIMEOUT))
            }
            AdminCommand::TransferLeader(id) => match self.raft.transfer_leadership(id) {
                Ok(()) => Ok((AdminWait::Leader(id), MEMBERSHIP_CHANGE_TIMEOUT)),
                Err(RequestError::NotLeader { leader }) => Err(ServerError::NotLeader {
                    leader: self.leader_address(leader),
                }),
                Err(RequestError::Busy(_)) => Err(ServerError::Busy),
                Err(RequestError::Invalid(reason)) => bad(reason.to_string()),
            },
        };
        match started {
            Ok((wait, timeout)) => self.admin.push(PendingAdmin {
                wait,
                deadline: now + timeout,
                reply,
            }),
            Err(error) => drop(reply.send(Err(error))),
        }
    }

    fn propose_error(&self, error: ProposeError) -> ServerError {
        match error {
            ProposeError::NotLeader { leader } => ServerError::NotLeader {
                leader: self.leader_address(leader),
            },
            ProposeError::Busy(_) => ServerError::Busy,
            ProposeError::TooLarge { max, .. } => ServerError::TooLarge { max },
            ProposeError::BadMembershipChange(reason) => ServerError::BadRequest {
                message: reason.to_string(),
            },
            ProposeError::TrimNotBelowCommit { commit_offset, .. } => {
                ServerError::OutOfRange { end: commit_offset }
            }
        }
    }

    /// Answers the admin requests whose change is done, promotes caught-up
    /// learners that an add-node waits for, and times out the rest.
    fn check_admin(&mut self) {
        if self.admin.is_empty() {
            return;
        }
        let now = Instant::now();
        let leading = self.raft.role() == Role::Leader;
        let commit = self.raft.commit_offset();
        for pending in std::mem::take(&mut self.admin) {
            let latest = self.raft.membership();
            let committed = self.raft.committed_membership();
            let outcome = match pending.wait {
                AdminWait::Voter(id) if committed.is_voter(id) => Some(Ok(commit)),
                AdminWait::Voter(id) if !latest.is_member(id) => {
                    Some(Err(ServerError::BadRequest {
                        message: format!("node {id} was removed before it became a voter"),
                    }))
                }
                AdminWait::Removed(id) if !latest.is_member(id) && !committed.is_member(id) => {
                    Some(Ok(commit))
                }
                AdminWait::Leader(id) if self.raft.leader() == Some(id) => Some(Ok(id)),
                AdminWait::Voter(_) | AdminWait::Removed(_) if !leading => {
                    // The change may still commit under the next leader: the
                    // client retries there (these requests are idempotent).
                    Some(Err(self.not_leader()))
                }
                _ => None,
            };
            let outcome = outcome.or_else(|| {
                (now >= pending.deadline).then(|| {
                    Err(ServerError::TimedOut {
                        message: format!("{:?} did not finish in time", pending.wait),
                    })
                })
            });
            match outcome {
                Some(result) => drop(pending.reply.send(result)),
                None => self.admin.push(pending),
            }
        }
    }

    /// As leader, proposes the promotion of a learner of the committed
    /// configuration whose durable log is close enough to the commit offset
    /// (the core checks the same bound and refuses otherwise). Learners
    /// exist only on their way to voter (add-node), so every caught-up one
    /// is promoted, also when the add-node request that added it was
    /// answered elsewhere (a leader change) or abandoned.
    fn promote_caught_up_learners(&mut self) {
        let latest = self.raft.membership();
        if self.raft.role() != Role::Leader
            || latest.learners.is_empty()
            || latest != self.raft.committed_membership()
        {
            return;
        }
        let lag_bound = self.raft.config().max_learner_lag_bytes;
        let commit = self.raft.commit_offset();
        let candidates = self.raft.followers().into_iter().filter(|follower| {
            !follower.voter && follower.match_offset.saturating_add(lag_bound) >= commit
        });
        // The core also wants an entry of this term on the learner; the
        // first it accepts is promoted (one change at a time).
        for learner in candidates {
            match self
                .raft
                .propose_membership(MembershipChange::PromoteLearner(learner.id))
            {
                Ok(offset) => {
                    tracing::info!(node = learner.id, offset, "learner caught up; promoting it");
                    return;
                }
                Err(error) => {
                    tracing::debug!(node = learner.id, ?error, "promotion not possible yet")
                }
            }
        }
    }

    fn not_leader(&self) -> ServerError {
        ServerError::NotLeader {
            leader: self.leader_address(self.raft.leader()),
        }
    }

    fn handle(&mut self, input: Input) {
        match input {
            Input::Command(WriterCommand::Append(request)) => self.propose(request),
            Input::Command(WriterCommand::TrimPrefix { offset, reply }) => {
                self.propose_trim(offset, reply)
            }
            Input::Command(WriterCommand::Shutdown) => {
                self.commands_open = false;
                if self.stopping.is_none() && self.handoff.is_none() {
                    if self.begin_handoff() {
                        self.handoff = Some(Instant::now());
                    } else {
                        self.stopping = Some(Instant::now());
                        self.refuse_queued_commands();
                    }
                }
            }
            Input::Event(Event::Wake) => {}
            Input::Event(Event::Message { from, message, .. }) => {
                self.last_heard.insert(from, Instant::now());
                let message = self.without_entries_that_do_not_fit(message);
                self.raft.step(from, message);
            }
            Input::Event(Event::Members(reply)) => drop(reply.send(self.members_status())),
            Input::Event(Event::UploadMissed { from, miss }) => self.resend_missed(from, miss),
            Input::Event(Event::NotAMember { from, notice }) => {
                self.raft.step(from, Message::NotAMember(notice));
            }
            Input::Event(Event::ReportMiss { leader, miss }) => {
                if let Some(link) = self.links.get(&leader) {
                    link.queue
                        .push(Frame::whole(miss.encode_frame(self.node_id, leader)));
                }
            }
            Input::Event(Event::Admin(command, reply)) => self.start_admin(command, reply),
            Input::Event(Event::ReadIndex(reply)) => {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(RequestError::NotLeader { leader }) => {
                        drop(reply.send(Err(ServerError::NotLeader {
                            leader: self.leader_address(leader),
                        })));
                    }
                    Err(RequestError::Busy(_)) => drop(reply.send(Err(ServerError::Busy))),
                    Err(RequestError::Invalid(reason)) => {
                        drop(reply.send(Err(ServerError::BadRequest {
                            message: reason.to_string(),
                        })))
                    }
                }
            }
        }
    }

    /// A replicated trim: the leader proposes a trim entry; every node
    /// drops its segments below `offset` once it commits (`Action::TrimPrefix`).
    fn propose_trim(&mut self, offset: u64, reply: oneshot::Sender<Result<u64, ServerError>>) {
        if self.stopping.is_some() {
            drop(reply.send(Err(ServerError::ShuttingDown)));
            return;
        }
        if let Some(error) = self.shared.unavailable() {
            drop(reply.send(Err(error)));
            return;
        }
        if self.trims.len() >= MAX_PENDING_TRIMS {
            drop(reply.send(Err(ServerError::Busy)));
            return;
        }
        let answer = match self.raft.propose_trim(offset) {
            Ok(entry_offset) => {
                self.trims.push(TrimWaiter {
                    entry_offset,
                    term: self.raft.term(),
                    reply,
                });
                return;
            }
            Err(ProposeError::NotLeader { leader }) => ServerError::NotLeader {
                leader: self.leader_address(leader),
            },
            Err(ProposeError::TrimNotBelowCommit { commit_offset, .. }) => {
                ServerError::OutOfRange { end: commit_offset }
            }
            Err(ProposeError::Busy(_)) => ServerError::Busy,
            Err(error) => ServerError::BadRequest {
                message: error.to_string(),
            },
        };
        drop(reply.send(Err(answer)));
    }

    /// A leader with another voter asks the most caught-up one to take
    /// over; true when the transfer began.
    fn begin_handoff(&mut self) -> bool {
        let Some(target) = self.most_caught_up_voter() else {
            return false;
        };
        match self.raft.transfer_leadership(target) {
            Ok(()) => {
                tracing::info!(
                    to = target,
                    "stopping: handing leadership over before shutdown"
                );
                true
            }
            Err(error) => {
                tracing::warn!(%error, "stopping without a leadership handoff");
                false
            }
        }
    }

    /// The voter (not this node) whose log matches the leader's furthest;
    /// None unless this node leads and has another voter.
    fn most_caught_up_voter(&self) -> Option<NodeId> {
        if self.raft.role() != Role::Leader {
            return None;
        }
        let membership = self.raft.membership();
        self.raft
            .followers()
            .into_iter()
            .filter(|follower| membership.is_voter(follower.id))
            .max_by_key(|follower| follower.match_offset)
            .map(|follower| follower.id)
    }

    /// A leader whose disk is full cannot append: it asks the most
    /// caught-up voter to take over (at most every
    /// [`FULL_DISK_HANDOFF_INTERVAL`]), so the cluster goes on committing.
    fn hand_off_for_full_disk(&mut self) {
        if self
            .full_disk_handoff_at
            .is_some_and(|at| at.elapsed() < FULL_DISK_HANDOFF_INTERVAL)
        {
            return;
        }
        let Some(target) = self.most_caught_up_voter() else {
            return;
        };
        self.full_disk_handoff_at = Some(Instant::now());
        match self.raft.transfer_leadership(target) {
            Ok(()) => tracing::warn!(to = target, "disk full: handing leadership over"),
            Err(error) => tracing::warn!(%error, "disk full: no leadership handoff"),
        }
    }

    fn refuse_queued_commands(&mut self) {
        crate::pipeline::refuse_queued_commands(&mut self.commands);
    }

    fn propose(&mut self, request: AppendRequest) {
        if !self.deferred.is_empty() {
            // First in, first proposed.
            self.deferred.push_back((Instant::now(), request));
            return;
        }
        self.propose_at(Instant::now(), request);
    }

    /// Proposes again the appends the core had no room for, in order, until
    /// it refuses one again.
    fn retry_deferred(&mut self) {
        while let Some((since, request)) = self.deferred.pop_front() {
            self.propose_at(since, request);
            if self.deferred_again {
                self.deferred_again = false;
                break;
            }
        }
    }

    /// Reserves disk space for the log to grow to `end` (the core's log end
    /// after what it is about to append), so that the write cannot fail for
    /// lack of space: a failed write would stop the driver, since the core
    /// already counts the bytes as in its log. Err (and logged once per
    /// episode) when the disk is full.
    fn reserve_space_to(&mut self, end: u64) -> Result<(), StorageError> {
        let needed = end.saturating_sub(self.writer.end_offset() + self.batch.len() as u64);
        match self.writer.reserve(needed) {
            Ok(()) => {
                if let Some(since) = self.disk_full_since.take() {
                    tracing::info!(
                        after = ?since.elapsed(),
                        "disk space is back: taking new entries again"
                    );
                    if let Some(dir) = self.state_path.parent() {
                        node::keep_spare(dir);
                    }
                }
                Ok(())
            }
            Err(error) => {
                if self.disk_full_since.is_none() {
                    tracing::warn!(
                        %error,
                        "cannot reserve disk space: refusing appends and taking the leader's \
                         entries as heartbeats until space returns"
                    );
                    self.disk_full_since = Some(Instant::now());
                }
                Err(error)
            }
        }
    }

    /// A leader's entries this node has no disk space for are dropped from
    /// its message, which then acts as a probe at the same offset (one the
    /// leader could have sent): the node stays a follower, commits what it
    /// holds, and the leader sends the entries again later.
    fn without_entries_that_do_not_fit(&mut self, message: Message) -> Message {
        let Message::AppendEntries(mut append) = message else {
            return message;
        };
        if !append.entries.is_empty() {
            let end =
                (append.prev_offset + append.entries.len() as u64).max(self.raft.end_offset());
            if self.reserve_space_to(end).is_err() {
                append.entries = Bytes::new();
            }
        }
        Message::AppendEntries(append)
    }

    /// `since`: when the append first met a full core.
    fn propose_at(&mut self, since: Instant, request: AppendRequest) {
        if self.stopping.is_some() {
            request.reply.send(Err(ServerError::ShuttingDown));
            return;
        }
        if let Some(error) = self.shared.unavailable() {
            request.reply.send(Err(error));
            return;
        }
        if self.raft.role() == Role::Leader {
            let end = self.raft.end_offset() + (ENTRY_HEADER_LEN + request.payload.len()) as u64;
            if let Err(error) = self.reserve_space_to(end) {
                self.hand_off_for_full_disk();
                // Nothing proposed: a retry cannot duplicate it.
                let what = if error.is_disk_full() {
                    "disk full"
                } else {
                    "cannot reserve disk space"
                };
                return request.reply.send(Err(ServerError::Unavailable {
                    message: format!("{what}: {error}"),
                }));
            }
        }
        if let Some(producer) = request.producer {
            // Only a leader decides; anyone else answers NotLeader below.
            if self.raft.role() == Role::Leader {
                match self.producers.decide(producer.tag, producer.retry) {
                    Decision::Append => {}
                    Decision::Duplicate(located) => return self.answer_with_copy(located, request),
                    Decision::Unknown => {
                        return request.reply.send(Err(ServerError::SequenceUnknown));
                    }
                }
            }
        }
        let flags = ProducerAppend::entry_flags(request.producer);
        match self.raft.propose_with_flags(flags, &request.payload) {
            Ok(offset) => {
                if let Some(digest) = request.upload {
                    self.upload_digests.record(offset, digest);
                }
                if let Some(producer) = request.producer {
                    // At once: a second copy in this same round must find it.
                    self.producers
                        .record(producer.tag, offset, self.raft.term());
                }
                let end = offset + (ENTRY_HEADER_LEN + request.payload.len()) as u64;
                if request.wait_for_commit {
                    debug_assert!(self.waiters.back().is_none_or(|last| last.end <= offset));
                    self.waiters.push_back(Waiter {
                        offset,
                        end,
                        term: self.raft.term(),
                        since: Instant::now(),
                        reply: request.reply,
                    });
                } else {
                    self.no_wait.push((offset, request.reply));
                }
            }
            Err(ProposeError::NotLeader { leader }) => {
                request.reply.send(Err(ServerError::NotLeader {
                    leader: self.leader_address(leader),
                }));
            }
            Err(ProposeError::TooLarge { max, .. }) => {
                request.reply.send(Err(ServerError::TooLarge { max }));
            }
            // Too many uncommitted bytes (or a leadership transfer): wait
            // for room, holding back the queue (backpressure), within a bound.
            Err(ProposeError::Busy(_)) if since.elapsed() < MAX_DEFER => {
                self.deferred.push_front((since, request));
                self.deferred_again = true;
            }
            Err(ProposeError::Busy(_)) => request.reply.send(Err(ServerError::Busy)),
            Err(
                error @ (ProposeError::BadMembershipChange(_)
                | ProposeError::TrimNotBelowCommit { .. }),
            ) => {
                request.reply.send(Err(ServerError::BadRequest {
                    message: error.to_string(),
                }));
            }
        }
    }

    /// Answers an append whose (producer, sequence) is in the log already,
    /// at `located`: with that offset once it is committed with the same
    /// term there (the same entry), else `NotLeader` (see `settle`).
    fn answer_with_copy(&mut self, located: Located, request: AppendRequest) {
        if let Some(producer) = request.producer {
            tracing::info!(
                producer = format_args!("{:#018x}", producer.tag.producer_id),
                sequence = producer.tag.sequence,
                retry = producer.retry,
                offset = located.offset,
                "append already in the log: answered with its earlier copy"
            );
        }
        if !request.wait_for_commit {
            return request.reply.send(Ok(located.offset));
        }
        let waiter = Waiter {
            offset: located.offset,
            end: located.offset,
            term: located.term,
            since: Instant::now(),
            reply: request.reply,
        };
        if located.offset < self.raft.commit_offset() {
            self.settle(waiter);
        } else {
            self.in_doubt.push(waiter);
        }
    }

    /// Ticks, reports syncs, and performs actions until the core is quiet.
    fn run_core(&mut self) {
        let now = Instant::now();
        let mut ticks = 0;
        while now >= self.next_tick {
            self.raft.tick();
            self.next_tick += self.tick;
            ticks += 1;
            if ticks >= self.max_catch_up_ticks {
                // Paused for long (SIGSTOP, a stall): do not replay it all.
                self.next_tick = now + self.tick;
                break;
            }
        }
        // Performing actions may report syncs (fsync never) or need another
        // round; a few rounds at most.
        for _ in 0..4 {
            let synced = self.synced.load(Ordering::Acquire);
            if synced > self.reported_synced {
                self.reported_synced = synced;
                self.raft.storage_synced(synced);
            }
            let log = StorageLog {
                reader: &self.reader,
                end: self.writer.end_offset(),
            };
            let actions = self.raft.take_actions(&log);
            if actions.is_empty() {
                break;
            }
            if let Err(error) = self.perform(actions) {
                self.shared.fail(error.0, &error.1);
                self.failed = true;
                return;
            }
        }
        self.publish_status();
        if self.durable_saved_at.elapsed() >= CHECKPOINT_INTERVAL {
            self.save_durable();
        }
        if ticks > 0 {
            // Tick precision is plenty for a bound of seconds.
            self.expire_waiters(now);
        }
    }

    /// Answers `TimedOut` to every append that has waited for its commit
    /// longer than `max_commit_wait`: a cluster where no majority can store
    /// entries (full disks, lost followers that still answer heartbeats, no
    /// quorum after a step-down) must not keep clients waiting forever. The
    /// entry stays in the log and may still commit, so the answer is
    /// indeterminate, never `NotLeader`.
    fn expire_waiters(&mut self, now: Instant) {
        let expired = |waiter: &Waiter| now.duration_since(waiter.since) >= self.max_commit_wait;
        let mut timed_out = Vec::new();
        // In offset order, which is also the order they began to wait.
        while self.waiters.front().is_some_and(expired) {
            timed_out.push(self.waiters.pop_front().expect("checked"));
        }
        if self.in_doubt.iter().any(expired) {
            let (late, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.in_doubt)
                .into_iter()
                .partition(expired);
            self.in_doubt = waiting;
            timed_out.extend(late);
        }
        if timed_out.is_empty() {
            return;
        }
        tracing::warn!(
            appends = timed_out.len(),
            commit = self.raft.commit_offset(),
            wait = %crate::format_duration(self.max_commit_wait),
            "appends not committed in time: answered TimedOut (they may still commit)"
        );
        for waiter in timed_out {
            waiter.reply.send(Err(ServerError::TimedOut {
                message: format!(
                    "append at offset {} not committed within {} (no majority has stored it: \
                     full disks, slow or unreachable followers); it may still commit",
                    waiter.offset,
                    crate::format_duration(self.max_commit_wait)
                ),
            }));
        }
    }

    /// Saves the synced end and the lost-tail mark when they changed.
    fn save_durable(&mut self) {
        let current = DurableRecord {
            synced_end: self.raft.durable_offset(),
            lost_tail: self.raft.lost_tail(),
        };
        self.durable_saved_at = Instant::now();
        if current == self.durable {
            return;
        }
        match state_file::save(&self.durable_path, &current.encode()) {
            Ok(()) => {
                if self.durable.lost_tail.is_some() && current.lost_tail.is_none() {
                    tracing::info!("the lost tail is restored; the node votes normally again");
                }
                self.durable = current;
            }
            // The older record is still a lower bound.
            Err(error) => tracing::warn!(%error, "saving the durable end failed"),
        }
    }

    /// Whether this node is out of the cluster: its latest configuration
    /// leaves it out (a joining node, with none yet, is not out), or a
    /// voter told it so (the core's `is_removed`: a removal it never
    /// received).
    fn is_removed(&self) -> bool {
        let latest = self.raft.membership();
        let known = !latest.voters.is_empty() || !latest.learners.is_empty();
        self.raft.is_removed() || (known && !latest.is_member(self.node_id))
    }

    fn publish_status(&mut self) {
        let removed = self.is_removed() && self.raft.role() != Role::Leader;
        if removed && !self.removal_logged {
            tracing::warn!(
                "this node was removed from the cluster (its configuration says so, or a voter \
                 answered its vote request with \"not a member\"): it does not campaign until a \
                 leader reaches it; add it again with `loglog admin add-node`, or stop it"
            );
            self.removal_logged = true;
        } else if !removed && self.removal_logged && self.raft.leader().is_some() {
            tracing::info!("a leader reaches this node again: it is a member");
            self.removal_logged = false;
        }
        let role = match self.raft.role() {
            _ if removed => WireRole::Removed,
            Role::Follower if !self.raft.membership().is_voter(self.node_id) => WireRole::Learner,
            role => wire_role(role),
        };
        self.status.role.store(role.to_byte(), Ordering::Relaxed);
        self.identity
            .set_not_a_member_notice(self.raft.not_a_member_notice());
        self.status
            .leader
            .store(self.raft.leader().unwrap_or(0), Ordering::Relaxed);
        self.shared
            .term
            .store(u64::from(self.raft.term()), Ordering::Relaxed);
    }

    fn perform(&mut self, actions: Vec<Action>) -> Result<(), (&'static str, StorageError)> {
        for action in actions {
            if let Action::Append {
                write_id,
                offset,
                bytes,
            } = action
            {
                assert_eq!(
                    offset,
                    self.writer.end_offset() + self.batch.len() as u64,
                    "the core appends at the end of the log"
                );
                self.producers.observe_bytes(offset, &bytes);
                if bytes.len() >= loglog_raft::LARGE_ENTRY_BYTES {
                    // Large entries go to the file from the core's buffer:
                    // one more write call costs less than copying them.
                    self.flush_batch()?;
                    self.write(&bytes, write_id)?;
                } else {
                    self.batch.extend_from_slice(&bytes);
                    self.batch_last_write = write_id;
                }
                continue;
            }
            // Everything before this action is written first (in order).
            self.flush_batch()?;
            match action {
                Action::Append { .. } => unreachable!("handled above"),
                Action::PersistHardState(hard_state) => {
                    let state = NodeState {
                        node_id: self.node_id,
                        term: u64::from(hard_state.term),
                        voted_for: hard_state.voted_for.unwrap_or(0),
                    };
                    // Durable (fsync, rename, fsync dir) before the next action.
                    state_file::save(&self.state_path, &state.encode())
                        .map_err(|error| ("saving the term and vote", error))?;
                }
                Action::Truncate { write_id, offset } => {
                    // The durable bounds must never claim removed bytes: a
                    // restart would take them for disk damage.
                    self.synced_hint
                        .cap_before_cut(offset)
                        .map_err(|error| ("saving the synced end", error))?;
                    if self.durable.synced_end > offset {
                        let lowered = DurableRecord {
                            synced_end: offset,
                            ..self.durable
                        };
                        state_file::save(&self.durable_path, &lowered.encode())
                            .map_err(|error| ("saving the durable end", error))?;
                        self.durable = lowered;
                    }
                    self.producers.truncate(offset);
                    self.upload_digests.truncate(offset);
                    self.writer
                        .truncate_suffix(offset)
                        .map_err(|error| ("truncating the log", error))?;
                    self.synced_hint.cut_done();
                    if let Some(mark) = &self.synced_mark {
                        mark.record();
                    }
                    self.shared
                        .written_end
                        .store(self.writer.end_offset(), Ordering::Release);
                    self.submit_sync(write_id);
                    // Gone from this log, not necessarily from the cluster's.
                    while self
                        .waiters
                        .back()
                        .is_some_and(|last| last.offset >= offset)
                    {
                        let waiter = self.waiters.pop_back().expect("checked");
                        self.in_doubt.push(waiter);
                    }
                    tracing::info!(offset, "log truncated (conflicting suffix)");
                }
                Action::Send(envelope) => self.send(&envelope),
                Action::CommitAdvanced { commit_offset } => self.commit_advanced(commit_offset),
                Action::ReadReady { ctx, .. } => {
                    if let Some(reply) = self.reads.remove(&ctx) {
                        drop(reply.send(Ok(())));
                    }
                }
                Action::ReadFailed { ctx, leader } => {
                    if let Some(reply) = self.reads.remove(&ctx) {
                        drop(reply.send(Err(ServerError::NotLeader {
                            leader: self.leader_address(leader),
                        })));
                    }
                }
                Action::ConflictBelowCommit {
                    leader,
                    offset,
                    commit_offset,
                } => {
                    tracing::error!(
                        leader,
                        offset,
                        commit_offset,
                        "!!! a leader sent entries contradicting this node's committed log; \
                         refused (a safety bug or lost durable data)"
                    );
                }
                Action::TrimPrefix { offset } => self.trim_prefix(offset)?,
                Action::ResetLog { checkpoint } => self.reset_log(&checkpoint)?,
                Action::RoleChanged { role, term, leader } => {
                    tracing::info!(?role, term, ?leader, "role changed");
                    self.shared.term.store(u64::from(term), Ordering::Relaxed);
                }
            }
        }
        self.flush_batch()?;
        // Every no-wait append proposed this round is written now.
        for (offset, reply) in self.no_wait.drain(..) {
            reply.send(Ok(offset));
        }
        Ok(())
    }

    /// A committed trim: checkpoint first (its commit offset is past the
    /// trim, so a restart never scans from a deleted segment), then drop
    /// the whole segments below `offset`.
    fn trim_prefix(&mut self, offset: u64) -> Result<(), (&'static str, StorageError)> {
        let checkpoint = self.raft.checkpoint();
        if let Err(error) = state_file::save(&self.checkpoint_path, &checkpoint.encode()) {
            // Keep the segments: the older checkpoint may need them.
            tracing::warn!(%error, offset, "saving the checkpoint failed; trim skipped");
            return Ok(());
        }
        self.checkpoint_saved = (Instant::now(), checkpoint.commit_offset);
        let start = self
            .writer
            .trim_prefix(offset)
            .map_err(|error| ("trimming the log", error))?;
        tracing::info!(offset, start, "log trimmed (replicated trim)");
        Ok(())
    }

    /// The leader's log starts above our commit offset: begin our log at
    /// its start, durably, before any later action. The intent is saved
    /// first, so a crash part-way is completed at the next start.
    fn reset_log(&mut self, checkpoint: &Checkpoint) -> Result<(), (&'static str, StorageError)> {
        let start = checkpoint.commit_offset;
        state_file::save(&self.reset_path, &checkpoint.encode())
            .map_err(|error| ("saving the log reset intent", error))?;
        self.synced_hint
            .cap_before_cut(start)
            .map_err(|error| ("saving the synced end", error))?;
        complete_reset(
            &mut self.writer,
            checkpoint,
            &self.checkpoint_path,
            &self.durable_path,
            &self.reset_path,
        )
        .map_err(|error| ("resetting the log", error))?;
        self.durable = DurableRecord {
            synced_end: start,
            ..self.durable
        };
        self.checkpoint_saved = (Instant::now(), start);
        // The log is empty from `start` on; what was below is unknown here.
        self.producers = ProducerTable::starting_at(self.producers.limits(), start);
        self.shared.written_end.store(start, Ordering::Release);
        self.synced_hint.cut_done();
        if let Some(mark) = &self.synced_mark {
            mark.record();
        }
        tracing::warn!(
            start,
            "log reset to the leader's log start (it trimmed what this node lacked)"
        );
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<(), (&'static str, StorageError)> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let written = self.write(&batch, self.batch_last_write);
        // Keep the buffer's capacity for the next batch.
        self.batch = batch;
        self.batch.clear();
        written
    }

    /// Appends whole entries to the log and hands their write to the syncer.
    fn write(
        &mut self,
        entries: &[u8],
        write_id: WriteId,
    ) -> Result<(), (&'static str, StorageError)> {
        let end = self
            .writer
            .append(entries)
            .map_err(|error| ("appending to the log", error))?;
        self.shared.written_end.store(end, Ordering::Release);
        self.shared.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.submit_sync(write_id);
        Ok(())
    }

    fn submit_sync(&mut self, write_id: WriteId) {
        #[cfg(feature = "bug-injection")]
        if self.ack_before_fsync {
            // The bug: durable before the fsync below has even started.
            self.synced.fetch_max(write_id, Ordering::AcqRel);
        }
        if let Some(jobs) = &self.sync_jobs {
            // Blocks only when the syncer is SYNC_JOB_QUEUE writes behind;
            // it never waits for us, so this cannot deadlock.
            if jobs.send(write_id).is_err() {
                tracing::error!("the syncer thread is gone");
                self.failed = true;
            }
        }
    }

    fn send(&mut self, envelope: &Envelope) {
        let Some(link) = self.links.get(&envelope.to) else {
            // Not a member of the latest configuration, or no address known.
            tracing::debug!(to = envelope.to, "no connection to peer; message dropped");
            return;
        };
        if let Message::AppendEntries(message) = &envelope.message {
            if !self.upload_digests.is_empty() {
                if let Some(frame) =
                    self.upload_digests
                        .encode_by_digest_frame(envelope.from, envelope.to, message)
                {
                    link.queue.push(Frame::whole(frame));
                    return;
                }
            }
        }
        let mut head = vec![0u8; 4];
        let body = envelope.encode_head(&mut head);
        let len = u32::try_from(head.len() - 4 + body.len())
            .expect("messages are capped far below 4 GiB");
        head[0..4].copy_from_slice(&len.to_le_bytes());
        link.queue.push(Frame { head, body });
    }

    /// A follower could not rebuild entries we sent by digest: send them
    /// raw, read back from our log, if we still lead in that term (our
    /// log's bytes there are then the ones we sent); later sends of those
    /// entries go raw too (and everything for a while after a second miss:
    /// `LeaderDigests::peer_missed`). Otherwise nothing: the core's loss
    /// handling covers it.
    fn resend_missed(&mut self, from: NodeId, miss: MissReport) {
        if self.raft.role() != Role::Leader || self.raft.term() != miss.term {
            return;
        }
        let end = self.writer.end_offset();
        let Some(wanted_end) = miss.prev_offset.checked_add(miss.entries_len) else {
            return;
        };
        self.upload_digests.peer_missed(from, wanted_end.min(end));
        if wanted_end > end || miss.entries_len == 0 {
            return;
        }
        let max = u32::try_from(miss.entries_len).unwrap_or(u32::MAX);
        let entries = match self.reader.read(miss.prev_offset, max, wanted_end) {
            Ok(chunk) => Bytes::from(chunk.bytes),
            Err(error) => {
                tracing::debug!(%error, "cannot read entries a follower missed");
                return;
            }
        };
        let message = AppendEntries {
            term: miss.term,
            prev_offset: miss.prev_offset,
            prev_term: miss.prev_term,
            leader_commit: miss.leader_commit,
            entries,
        };
        self.send(&Envelope {
            from: self.node_id,
            to: from,
            message: Message::AppendEntries(message),
        });
    }

    fn commit_advanced(&mut self, commit: u64) {
        let previous = self.shared.commit_offset();
        if commit > previous {
            self.shared.commit.send_replace(commit);
        }
        while self
            .waiters
            .front()
            .is_some_and(|first| first.end <= commit)
        {
            let waiter = self.waiters.pop_front().expect("checked");
            self.settle(waiter);
        }
        if self.in_doubt.iter().any(|waiter| waiter.offset < commit) {
            let (settled, waiting) = std::mem::take(&mut self.in_doubt)
                .into_iter()
                .partition(|waiter| waiter.offset < commit);
            self.in_doubt = waiting;
            for waiter in settled {
                self.settle(waiter);
            }
        }
        if self.trims.iter().any(|trim| trim.entry_offset < commit) {
            let (settled, waiting) = std::mem::take(&mut self.trims)
                .into_iter()
                .partition(|trim| trim.entry_offset < commit);
            self.trims = waiting;
            for trim in settled {
                let answer = if self.raft.term_map().term_at(trim.entry_offset) == trim.term {
                    // Performed: its TrimPrefix came before this commit.
                    Ok(self.writer.start_offset())
                } else {
                    Err(self.not_leader())
                };
                drop(trim.reply.send(answer));
            }
        }
        let (saved_at, saved_commit) = self.checkpoint_saved;
        if commit > saved_commit && saved_at.elapsed() >= CHECKPOINT_INTERVAL {
            self.save_checkpoint();
        }
    }

    /// Answers an append whose offset the commit offset has passed: ok iff
    /// the committed entry there is of the term it was proposed in.
    fn settle(&mut self, waiter: Waiter) {
        if self.raft.term_map().term_at(waiter.offset) == waiter.term {
            waiter.reply.send(Ok(waiter.offset));
        } else {
            // Another leader's entry is committed at its offset: it can
            // never commit, and a retry cannot duplicate it.
            waiter.reply.send(Err(self.not_leader()));
        }
    }

    fn save_checkpoint(&mut self) {
        let checkpoint = self.raft.checkpoint();
        match state_file::save(&self.checkpoint_path, &checkpoint.encode()) {
            Ok(()) => self.checkpoint_saved = (Instant::now(), checkpoint.commit_offset),
            // An older checkpoint stays valid (a longer scan at restart).
            Err(error) => tracing::warn!(%error, "saving the checkpoint failed"),
        }
    }

    /// Answers everything still waiting and stops the syncer.
    fn finish(mut self) {
        if !self.failed {
            if let Err(error) = self.flush_batch() {
                self.shared.fail(error.0, &error.1);
            }
        }
        let error = self
            .shared
            .unavailable()
            .unwrap_or(ServerError::ShuttingDown);
        for waiter in self.waiters.drain(..).chain(self.in_doubt.drain(..)) {
            waiter.reply.send(Err(error.clone()));
        }
        for (_, request) in self.deferred.drain(..) {
            request.reply.send(Err(error.clone()));
        }
        // Proposed but perhaps not written (a failed write): not acknowledged.
        for (_, reply) in self.no_wait.drain(..) {
            reply.send(Err(error.clone()));
        }
        for (_, reply) in std::mem::take(&mut self.reads) {
            drop(reply.send(Err(error.clone())));
        }
        for trim in self.trims.drain(..) {
            drop(trim.reply.send(Err(error.clone())));
        }
        for pending in self.admin.drain(..) {
            drop(pending.reply.send(Err(error.clone())));
        }
        if self.commands_open {
            self.commands_open = false;
            self.refuse_queued_commands();
        }
        if !self.failed {
            self.save_durable();
            let checkpoint = self.raft.checkpoint();
            if checkpoint.commit_offset > self.checkpoint_saved.1 {
                if let Err(error) = state_file::save(&self.checkpoint_path, &checkpoint.encode()) {
                    tracing::warn!(%error, "saving the checkpoint failed");
                }
            }
        }
        drop(self.sync_jobs.take());
        tracing::info!(
            commit = self.raft.commit_offset(),
            term = self.raft.term(),
            "consensus driver stopped"
        );
    }
}

struct SyncerThread {
    syncer: LogSyncer,
    /// `TestSwitches::fsync_delay`.
    fsync_delay: Duration,
    synced_mark: Option<Arc<SyncedMark>>,
    synced_hint: Arc<SyncedHint>,
    fsync: Fsync,
    jobs: std_mpsc::Receiver<WriteId>,
    synced: Arc<AtomicU64>,
    wake: mpsc::Sender<Event>,
    shared: Arc<Shared>,
}

impl SyncerThread {
    fn run(self) {
        while let Ok(mut write_id) = self.jobs.recv() {
            // One fsync covers every write handed over before it started.
            while let Ok(more) = self.jobs.try_recv() {
                write_id = write_id.max(more);
            }
            if self.shared.failure.get().is_some() {
                continue;
            }
            if self.fsync == Fsync::Always {
                if !self.fsync_delay.is_zero() {
                    std::thread::sleep(self.fsync_delay);
                }
                match crate::pipeline::timed_sync(&self.syncer, &self.shared) {
                    Ok(_) => {
                        self.shared.counters.syncs.fetch_add(1, Ordering::Relaxed);
                        self.synced_hint.record();
                        if let Some(mark) = &self.synced_mark {
                            mark.record();
                        }
                    }
                    Err(error) => {
                        // Never report it: the core must not count it durable.
                        self.shared.fail("fsync", &error);
                        drop(self.wake.try_send(Event::Wake));
                        continue;
                    }
                }
            }
            self.synced.fetch_max(write_id, Ordering::AcqRel);
            // A full queue means the driver is busy and checks `synced`
            // after its round anyway.
            drop(self.wake.try_send(Event::Wake));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_record_round_trips_and_rejects_garbage() {
        let path = Path::new("raft.durable");
        for record in [
            DurableRecord::default(),
            DurableRecord {
                synced_end: 4096,
                lost_tail: Some(LostTail {
                    end_offset: 8192,
                    last_term: 7,
                }),
            },
        ] {
            assert_eq!(
                DurableRecord::decode(path, &record.encode()).unwrap(),
                record
            );
        }
        // Found by the `state_files` fuzz target: mark fields without the
        // mark flag were ignored, so two byte strings meant one record.
        let mut stray_mark = DurableRecord::default().encode();
        stray_mark[18] = 0xb1;
        assert!(matches!(
            DurableRecord::decode(path, &stray_mark),
            Err(StartError::CorruptState { .. })
        ));
        let mut bad = DurableRecord::default().encode();
        bad[12] = 2;
        assert!(DurableRecord::decode(path, &bad).is_err());
        assert!(DurableRecord::decode(path, &bad[..10]).is_err());
        bad[0] = 9;
        assert!(matches!(
            DurableRecord::decode(path, &bad),
            Err(StartError::UnsupportedFormat { found: 9, .. })
        ));
    }
}
