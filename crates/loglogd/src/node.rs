//! [`Node`]: start, append, read, status, trim, shutdown.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use loglog_proto::entry::{encode_entry, EntryIter, EntryKind};
use loglog_proto::segment::parse_segment_file_name;
use loglog_proto::wire::{AdminRequest, ClusterStatus, NodeStatus, Role, ServerError};
use loglog_storage::{state_file, FileSpan, FsyncPolicy, LogReader, StorageConfig, StorageError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::cluster::driver::ClusterHandle;
use crate::config::{Config, Fsync};
use crate::dedup::{self, DedupLimits, ProducerTable};
use crate::pipeline::{
    self, AppendRequest, Metrics, PipelineParts, ProducerAppend, Reply, Shared, WriterCommand,
};
use crate::server::until_true;
use crate::state::{NodeState, NodeStateError, NODE_STATE_VERSION};

/// Name of the node state file inside the data directory.
pub const NODE_STATE_FILE: &str = "node.state";
/// Name of the segment directory inside the data directory.
pub const LOG_DIR: &str = "log";
/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";
/// How long a metrics scrape waits for the raft driver's member list.
const METRICS_MEMBERS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a node did not start. Nothing on disk is deleted on any of them.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("data directory {}: {source}", dir.display())]
    DataDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("data directory {} is in use by another loglogd (lock {} is held)", dir.display(), dir.join(LOCK_FILE).display())]
    Locked { dir: PathBuf },
    #[error("{} has node state format version {found}; this build reads version {NODE_STATE_VERSION} (refusing to start, nothing was changed)", path.display())]
    UnsupportedFormat { path: PathBuf, found: u32 },
    #[error("{} is damaged: {reason} (refusing to start, nothing was changed)", path.display())]
    CorruptState { path: PathBuf, reason: String },
    #[error("data directory {} holds log segments but no node state file {NODE_STATE_FILE}; refusing to start (the term would be unknown)", dir.display())]
    MissingState { dir: PathBuf },
    #[error("data directory {} belongs to node {found}, not node {expected}", dir.display())]
    WrongNode {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("the term is exhausted (it would pass {})", u32::MAX)]
    TermExhausted,
    #[error("data directory {} belongs to cluster {found:?}, not {expected:?} (refusing to start; pass the right --cluster-id or --peers, or another --data-dir)", dir.display())]
    WrongCluster {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("data directory {} holds a single node's data (no cluster id); refusing to start it as a member of cluster {cluster:?} (use an empty --data-dir)", dir.display())]
    NotAClusterMember { dir: PathBuf, cluster: String },
    #[error("data directory {} belongs to a cluster; start it with its --peers (and --id), not as a single node", dir.display())]
    ClusterDirWithoutPeers { dir: PathBuf },
    /// The consensus core refused the recovered state.
    #[error("consensus state: {0} (refusing to start, nothing was changed)")]
    Raft(String),
    /// Opening or recovering the log failed: a corrupt segment header, a
    /// segment of another format version, an IO error...
    #[error("storage: {0} (refusing to start, nothing was deleted)")]
    Storage(#[from] StorageError),
    #[error("cannot start the node's threads: {0}")]
    Threads(io::Error),
    /// A TLS certificate, key or CA file could not be used.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Entries read from the committed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first entry in `bytes`.
    pub offset: u64,
    /// The node's commit offset when the read was answered.
    pub commit_offset: u64,
    /// Whole encoded entries (headers and payloads), exactly as in the log;
    /// empty when the read reached the commit offset.
    pub bytes: Vec<u8>,
}

impl Chunk {
    /// Offset just past the last entry: where the next read starts.
    pub fn next_offset(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }

    /// The data entries as `(offset, payload)`, skipping no-ops and other
    /// kinds (the node validated the bytes, so a bad entry ends the walk).
    pub fn data_entries(&self) -> impl Iterator<Item = (u64, &[u8])> {
        EntryIter::new(&self.bytes, self.offset, u32::MAX)
            .map_while(Result::ok)
            .filter(|entry| entry.header.kind == EntryKind::Data)
            .map(|entry| (entry.offset, entry.payload))
    }
}

/// What [`Node::read_committed`] found.
pub(crate) enum CommittedRead {
    Chunk(Chunk),
    /// The first entry is `entry_len` bytes, more than the read allowed.
    EntryLarger {
        entry_len: u64,
    },
}

/// A running node; cheap to clone (all clones are the same node).
///
/// Dropping every clone without [`Node::shutdown`] stops the pipeline once
/// queued appends are written, but a listening server keeps the node alive:
/// call `shutdown`.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node_id", &self.inner.config.node_id)
            .field("data_dir", &self.inner.config.data_dir)
            .field("local_addr", &self.inner.local_addr)
            .field("commit_offset", &self.commit_offset())
            .finish_non_exhaustive()
    }
}

pub(crate) struct NodeInner {
    config: Config,
    shared: Arc<Shared>,
    commands: mpsc::Sender<WriterCommand>,
    reader: LogReader,
    local_addr: Option<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    pipeline_stopped: watch::Receiver<bool>,
    server_stopped: Option<watch::Receiver<bool>>,
    /// Held (flock) while the node runs; released by shutdown.
    lock: Mutex<Option<File>>,
    /// Replicated mode: the consensus driver's handle.
    cluster: Option<ClusterHandle>,
}

/// The append path a node runs: the single-node pipeline or the raft driver.
struct Engine {
    shared: Arc<Shared>,
    commands: mpsc::Sender<WriterCommand>,
    reader: LogReader,
    stopped: watch::Receiver<bool>,
    lock: File,
    cluster: Option<ClusterHandle>,
}

/// What opening the data directory produced.
struct Opened {
    lock: File,
    term: u32,
    writer: loglog_storage::LogWriter,
    syncer: loglog_storage::LogSyncer,
    reader: LogReader,
    commit: u64,
    producers: ProducerTable,
}

impl Node {
    /// Opens (or creates) the data directory, recovers the log, takes a new
    /// term (stored + 1, as a single-node election would), appends its
    /// no-op entry, makes it durable, then serves: embedded always, over TCP
    /// when `config.listen` is set.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        config.validate().map_err(StartError::Config)?;
        if config.fsync == Fsync::Never {
            tracing::warn!(
                "!!! fsync never: BENCHMARK ONLY, UNSAFE: acknowledged appends are NOT durable \
                 and can be lost on an OS crash or power loss !!!"
            );
        }
        let client_tls = match &config.tls {
            Some(tls) => crate::tls::client_acceptor(tls).map_err(StartError::Tls)?,
            None => None,
        };
        let listener = match config.listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let local_addr = match &listener {
            Some(listener) => Some(listener.local_addr().map_err(|source| StartError::Listen {
                addr: config.listen.expect("a listener implies an address"),
                source,
            })?),
            None => None,
        };
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Listen { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = match &metrics_listener {
            Some(listener) => Some(listener.local_addr().map_err(|source| {
                StartError::Listen {
                    addr: config
                        .metrics_listen
                        .expect("a listener implies an address"),
                    source,
                }
            })?),
            None => None,
        };
        let engine = match &config.cluster {
            Some(cluster) => {
                let started = crate::cluster::driver::start(&config, cluster).await?;
                Engine {
                    shared: started.shared,
                    commands: started.commands,
                    reader: started.reader,
                    stopped: started.stopped,
                    lock: started.lock,
                    cluster: Some(started.handle),
                }
            }
            None => start_single(&config).await?,
        };
        let term = engine.shared.term.load(Ordering::Relaxed);
        let commit = engine.shared.commit_offset();
        let (server_stopped_tx, server_stopped_rx) = watch::channel(false);
        let node = Node {
            inner: Arc::new(NodeInner {
                config,
                shared: engine.shared,
                commands: engine.commands,
                reader: engine.reader,
                local_addr,
                metrics_addr,
                pipeline_stopped: engine.stopped,
                server_stopped: listener.as_ref().map(|_| server_stopped_rx),
                lock: Mutex::new(Some(engine.lock)),
                cluster: engine.cluster,
            }),
        };
        tracing::info!(
            data_dir = %node.inner.config.data_dir.display(),
            term,
            commit,
            fsync = ?node.inner.config.fsync,
            "node started"
        );
        if let Some(listener) = metrics_listener {
            tracing::info!(metrics = %metrics_addr.expect("listener has an address"), "serving Prometheus metrics at /metrics");
            tokio::spawn(crate::metrics::serve(
                listener,
                node.clone(),
                node.inner.shared.shutdown.subscribe(),
            ));
        }
        if node.inner.config.retention.is_enabled() {
            tokio::spawn(crate::retention::run(
                node.downgrade(),
                node.config().retention.clone(),
                node.shutdown_signal(),
            ));
        }
        if let Some(listener) = listener {
            tracing::info!(
                listen = %local_addr.expect("listener has an address"),
                tls = client_tls.is_some(),
                "listening for clients"
            );
            tokio::spawn(crate::server::serve(
                listener,
                client_tls,
                node.clone(),
                server_stopped_tx,
            ));
        }
        Ok(node)
    }

    /// Appends `payload` and waits until it is committed (durable); returns
    /// the entry's offset.
    pub async fn append(&self, payload: impl Into<Bytes>) -> Result<u64, ServerError> {
        self.append_local(payload.into(), true).await
    }

    /// Appends `payload` and answers once it has an offset (written, not yet
    /// durable: a crash may lose it).
    pub async fn append_nowait(&self, payload: impl Into<Bytes>) -> Result<u64, ServerError> {
        self.append_local(payload.into(), false).await
    }

    /// Like [`Node::append`], for a payload uploaded to the other members
    /// ([`Node::upload`] on each): a leader replicates it by digest to the
    /// members that hold it, and raw to the others.
    pub async fn append_uploaded(&self, payload: impl Into<Bytes>) -> Result<u64, ServerError> {
        let (sender, receiver) = oneshot::channel();
        self.submit_append(payload.into(), None, true, true, Reply::Local(sender))
            .await;
        receiver.await.unwrap_or(Err(ServerError::ShuttingDown))
    }

    async fn append_local(
        &self,
        payload: Bytes,
        wait_for_commit: bool,
    ) -> Result<u64, ServerError> {
        let (sender, receiver) = oneshot::channel();
        self.submit_append(payload, None, false, wait_for_commit, Reply::Local(sender))
            .await;
        receiver.await.unwrap_or(Err(ServerError::ShuttingDown))
    }

    /// Queues an append; the answer (or the refusal) always goes to `reply`.
    /// Waits while the queue is full (backpressure). With `producer`, the
    /// payload starts with its envelope and is appended at most once. With
    /// `uploaded`, the client uploaded the payload to the other members: a
    /// cluster member computes its digest here (on the caller's task, off
    /// the driver thread) so that a leader can replicate it by digest.
    pub(crate) async fn submit_append(
        &self,
        payload: Bytes,
        producer: Option<ProducerAppend>,
        uploaded: bool,
        wait_for_commit: bool,
        reply: Reply,
    ) {
        let inner = &self.inner;
        let max = inner.config.max_entry_size;
        if payload.len() > max as usize {
            return reply.send(Err(ServerError::TooLarge { max }));
        }
        if !inner.shared.accepting.load(Ordering::Acquire) {
            return reply.send(Err(ServerError::ShuttingDown));
        }
        if let Some(error) = inner.shared.unavailable() {
            return reply.send(Err(error));
        }
        let charge = u32::try_from(payload.len()).expect("payload <= max entry size, a u32");
        let Ok(permit) = inner
            .shared
            .pending_append_bytes
            .clone()
            .acquire_many_owned(charge)
            .await
        else {
            return reply.send(Err(ServerError::ShuttingDown));
        };
        let upload =
            (uploaded && inner.cluster.is_some()).then(|| loglog_proto::upload::digest(&payload));
        let request = AppendRequest {
            payload,
            producer,
            upload,
            wait_for_commit,
            reply,
            _pending_bytes: permit,
        };
        // The writer has stopped: answer through the returned request.
        if let Err(mpsc::error::SendError(WriterCommand::Append(request))) =
            inner.commands.send(WriterCommand::Append(request)).await
        {
            request.reply.send(Err(ServerError::ShuttingDown));
        }
    }

    /// Caches a payload a client uploaded (request `upload`) after checking
    /// that `digest` is its SHA-256. A single node has no one to replicate
    /// to: it accepts and drops it.
    pub fn upload(
        &self,
        digest: loglog_proto::upload::Digest,
        payload: Bytes,
    ) -> Result<(), ServerError> {
        let max = self.inner.config.max_entry_size;
        if payload.len() > max as usize {
            return Err(ServerError::TooLarge { max });
        }
        let Some(cluster) = &self.inner.cluster else {
            return Ok(());
        };
        let key =
            loglog_proto::upload::UploadKey::of(&payload).ok_or(ServerError::TooLarge { max })?;
        if key.digest != digest {
            return Err(ServerError::BadRequest {
                message: "the upload's bytes do not match its digest".to_string(),
            });
        }
        cluster.upload(key, payload);
        Ok(())
    }

    /// Entries this node rebuilt from uploads, and messages by digest it
    /// could not rebuild (asked the leader for instead); zeros on a single
    /// node.
    pub fn upload_counters(&self) -> (u64, u64) {
        self.inner
            .cluster
            .as_ref()
            .map_or((0, 0), |cluster| cluster.upload_counters())
    }

    /// Reads whole entries from `offset` (an entry boundary), up to about
    /// `max_bytes` (capped by the node's max read bytes; at least one entry),
    /// never past the commit offset. When `offset` is the commit offset,
    /// waits up to `wait` (capped by the max long-poll wait) for it to
    /// advance, then answers with what is there, possibly nothing.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<Chunk, ServerError> {
        let commit = self.long_poll(offset, wait).await?;
        match self.read_committed(offset, max_bytes, commit, true).await? {
            CommittedRead::Chunk(chunk) => Ok(chunk),
            CommittedRead::EntryLarger { .. } => {
                unreachable!("a read that takes a whole first entry never reports it larger")
            }
        }
    }

    /// The long-poll half of [`Node::read`]: when `offset` is the commit
    /// offset, waits up to `wait` (capped) for it to advance. Returns the
    /// commit offset to read below.
    pub(crate) async fn long_poll(&self, offset: u64, wait: Duration) -> Result<u64, ServerError> {
        let inner = &self.inner;
        if !inner.shared.accepting.load(Ordering::Acquire) && self.is_stopped() {
            return Err(ServerError::ShuttingDown);
        }
        let mut commit_rx = inner.shared.commit.subscribe();
        let mut commit = *commit_rx.borrow_and_update();
        if offset == commit && !wait.is_zero() {
            let wait = wait.min(inner.config.limits.max_long_poll_wait);
            let mut shutdown = inner.shared.shutdown.subscribe();
            let advanced = async {
                drop(commit_rx.wait_for(|commit| *commit > offset).await);
            };
            let stopping = until_true(&mut shutdown);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = advanced => {}
                _ = stopping => {}
            }
            commit = inner.shared.commit_offset();
        }
        Ok(commit)
    }

    /// The reading half of [`Node::read`], below `commit`. With
    /// `whole_first_entry` false it never reads more than `max_bytes`
    /// (capped by the max read bytes): a first entry larger than that is
    /// reported, not read, so the caller can make room for it first.
    pub(crate) async fn read_committed(
        &self,
        offset: u64,
        max_bytes: u32,
        commit: u64,
        whole_first_entry: bool,
    ) -> Result<CommittedRead, ServerError> {
        let reader = &self.inner.reader;
        let start = reader.start_offset();
        if offset < start {
            return Err(ServerError::Trimmed { start });
        }
        if offset > commit {
            return Err(ServerError::OutOfRange { end: commit });
        }
        if offset == commit {
            return Ok(CommittedRead::Chunk(Chunk {
                offset,
                commit_offset: commit,
                bytes: Vec::new(),
            }));
        }
        let max_bytes = max_bytes.min(self.inner.config.limits.max_read_bytes);
        let reader = reader.clone();
        let read = tokio::task::spawn_blocking(move || {
            if whole_first_entry {
                reader.read(offset, max_bytes, commit)
            } else {
                reader.read_at_most(offset, max_bytes, commit)
            }
        })
        .await
        .map_err(|join| ServerError::Unavailable {
            message: format!("read task failed: {join}"),
        })?;
        match read {
            Ok(chunk) => {
                debug_assert_eq!(chunk.offset, offset);
                debug_assert!(chunk.offset + chunk.bytes.len() as u64 <= commit);
                Ok(CommittedRead::Chunk(Chunk {
                    offset: chunk.offset,
                    commit_offset: commit,
                    bytes: chunk.bytes,
                }))
            }
            Err(StorageError::EntryLargerThanRead { entry_len, .. }) => {
                debug_assert!(!whole_first_entry);
                Ok(CommittedRead::EntryLarger { entry_len })
            }
            Err(error) => Err(read_error(offset, commit, error)),
        }
    }

    /// Where the whole entries [`Node::read_committed`] would read (taking
    /// a whole first entry) lie in a segment file, below `commit`, without
    /// reading them: the zero-copy read path. `None` when `offset` is the
    /// commit offset. See [`loglog_storage::LogReader::locate`].
    pub(crate) async fn locate_committed(
        &self,
        offset: u64,
        max_bytes: u32,
        commit: u64,
    ) -> Result<Option<FileSpan>, ServerError> {
        let reader = &self.inner.reader;
        let start = reader.start_offset();
        if offset < start {
            return Err(ServerError::Trimmed { start });
        }
        if offset > commit {
            return Err(ServerError::OutOfRange { end: commit });
        }
        if offset == commit {
            return Ok(None);
        }
        let max_bytes = max_bytes.min(self.inner.config.limits.max_read_bytes);
        let reader = reader.clone();
        tokio::task::spawn_blocking(move || reader.locate(offset, max_bytes, commit))
            .await
            .map_err(|join| ServerError::Unavailable {
                message: format!("read task failed: {join}"),
            })?
            .map_err(|error| read_error(offset, commit, error))
    }

    /// Deletes whole segments below `offset` (at most the commit offset);
    /// returns the log's new start offset. Reads below it answer `Trimmed`.
    ///
    /// On a cluster member this is a replicated trim: only the leader takes
    /// it (followers answer `NotLeader`), `offset` must be below the commit
    /// offset (else `OutOfRange` with the commit offset), and it answers
    /// once the trim entry committed and this node applied it; every other
    /// node applies it too, a node that was down when it catches up. This
    /// is the one trim mechanism; retention policies call it.
    pub async fn trim_prefix(&self, offset: u64) -> Result<u64, ServerError> {
        let (reply, answer) = oneshot::channel();
        if !self.inner.shared.accepting.load(Ordering::Acquire) {
            return Err(ServerError::ShuttingDown);
        }
        self.inner
            .commands
            .send(WriterCommand::TrimPrefix { offset, reply })
            .await
            .map_err(|_| ServerError::ShuttingDown)?;
        answer.await.unwrap_or(Err(ServerError::ShuttingDown))
    }

    /// This node's status with every member it knows (a single node lists
    /// none): `loglog status` asks every node for it.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, ServerError> {
        let (members, peer_bytes_sent) = match &self.inner.cluster {
            Some(cluster) => (cluster.members().await?, cluster.peer_bytes_sent()),
            None => (Vec::new(), 0),
        };
        Ok(ClusterStatus {
            node: self.status(),
            peer_bytes_sent,
            members,
        })
    }

    /// Performs an admin request: membership and leadership changes on a
    /// cluster's leader (a follower answers `NotLeader`; a single node has
    /// no members to change), and trim (see [`Node::trim_prefix`]). Answers
    /// once the change is done (see [`AdminRequest`] for the value).
    pub async fn admin(&self, request: AdminRequest<'_>) -> Result<u64, ServerError> {
        use crate::cluster::driver::AdminCommand;
        let command = match request {
            AdminRequest::Trim { offset } => return self.trim_prefix(offset).await,
            AdminRequest::AddNode {
                id,
                peer_addr,
                client_addr,
            } => AdminCommand::AddNode {
                id,
                peer_addr: peer_addr.to_string(),
                client_addr: client_addr.to_string(),
            },
            AdminRequest::RemoveNode { id } => AdminCommand::RemoveNode(id),
            AdminRequest::TransferLeader { id } => AdminCommand::TransferLeader(id),
        };
        match &self.inner.cluster {
            Some(cluster) => cluster.admin(command).await,
            None => Err(ServerError::BadRequest {
                message: "this node is not a cluster member (started without --peers)".to_string(),
            }),
        }
    }

    /// This node's status (a single node is always its own leader; a
    /// cluster member reports the consensus core's role and known leader).
    pub fn status(&self) -> NodeStatus {
        let inner = &self.inner;
        let node_id = inner.config.node_id;
        // Commit first: then end >= commit even while appends race.
        let commit_offset = inner.shared.commit_offset();
        let end_offset = inner
            .shared
            .written_end
            .load(Ordering::Acquire)
            .max(commit_offset);
        let (role, leader_id) = match &inner.cluster {
            Some(cluster) => (cluster.role(), cluster.leader()),
            None => (Role::Leader, node_id),
        };
        NodeStatus {
            node_id,
            term: inner.shared.term.load(Ordering::Relaxed),
            role,
            segment_count: u32::try_from(inner.reader.segment_count()).unwrap_or(u32::MAX),
            start_offset: inner.reader.start_offset(),
            commit_offset,
            end_offset,
            leader_id,
        }
    }

    /// For a linearizable read: on a cluster member, confirms leadership
    /// through read-index (its commit offset then covers every append
    /// acknowledged before the call); a follower answers `NotLeader` with
    /// the leader's address. A single node is its own leader: nothing to do.
    pub async fn linearizable_barrier(&self) -> Result<(), ServerError> {
        match &self.inner.cluster {
            Some(cluster) => cluster.read_barrier().await,
            None => Ok(()),
        }
    }

    /// The address the peer listener is bound to (cluster members only;
    /// useful with port 0).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.inner
            .cluster
            .as_ref()
            .map(|cluster| cluster.peer_addr())
    }

    /// Counters of the append pipeline (entries, write batches, syncs).
    pub fn metrics(&self) -> Metrics {
        self.inner.shared.counters.snapshot()
    }

    pub(crate) fn counters(&self) -> &pipeline::Counters {
        &self.inner.shared.counters
    }

    /// The commit offset: reads never pass it.
    pub fn commit_offset(&self) -> u64 {
        self.inner.shared.commit_offset()
    }

    /// Waits until the commit offset reaches at least `offset` (or the node
    /// stops); returns the commit offset.
    pub async fn wait_for_commit(&self, offset: u64) -> u64 {
        let mut commit_rx = self.inner.shared.commit.subscribe();
        let mut stopped = self.inner.pipeline_stopped.clone();
        tokio::select! {
            _ = async { drop(commit_rx.wait_for(|commit| *commit >= offset).await) } => {}
            _ = until_true(&mut stopped) => {}
        }
        self.commit_offset()
    }

    /// The address the TCP server listens on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.local_addr
    }

    /// The address of the Prometheus endpoint, when it is on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.inner.metrics_addr
    }

    /// The Prometheus exposition text, as `GET /metrics` serves it.
    pub async fn render_metrics(&self) -> String {
        // The members (for per-follower lag) come from the raft driver; a
        // busy or stopping driver must not stall the scrape, which then
        // simply lacks the lag series.
        let members = match &self.inner.cluster {
            Some(cluster) => {
                match tokio::time::timeout(METRICS_MEMBERS_TIMEOUT, cluster.members()).await {
                    Ok(Ok(members)) => members,
                    Ok(Err(_)) | Err(_) => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        self.inner.shared.metrics.render(self, &members)
    }

    pub(crate) fn node_metrics(&self) -> &crate::metrics::NodeMetrics {
        &self.inner.shared.metrics
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Why storage became unusable, if it has (appends then answer
    /// `Unavailable` until a restart).
    pub fn failure(&self) -> Option<String> {
        self.inner.shared.failure.get().cloned()
    }

    fn is_stopped(&self) -> bool {
        *self.inner.pipeline_stopped.borrow()
    }

    /// Stops cleanly: stops accepting connections and appends, writes and
    /// fsyncs everything queued, answers every in-flight request, closes
    /// connections, releases the data directory. Idempotent; every clone
    /// may call it.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let first = inner.shared.accepting.swap(false, Ordering::AcqRel);
        inner.shared.shutdown.send_replace(true);
        if first {
            tracing::info!("shutting down: finishing in-flight appends");
            // Everything queued before this marker is written and synced.
            drop(inner.commands.send(WriterCommand::Shutdown).await);
        }
        let mut pipeline_stopped = inner.pipeline_stopped.clone();
        until_true(&mut pipeline_stopped).await;
        if let Some(server_stopped) = &inner.server_stopped {
            let mut server_stopped = server_stopped.clone();
            until_true(&mut server_stopped).await;
        }
        let lock = inner
            .lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if lock.is_some() {
            drop(lock);
            tracing::info!(commit = self.commit_offset(), "node stopped");
        }
    }

    /// A handle that does not keep the node alive (for background tasks).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<NodeInner> {
        Arc::downgrade(&self.inner)
    }

    /// The node behind a [`Node::downgrade`] handle, while one clone lives.
    pub(crate) fn upgrade(weak: &std::sync::Weak<NodeInner>) -> Option<Node> {
        weak.upgrade().map(|inner| Node { inner })
    }

    /// The log's segments, oldest first (for retention).
    pub(crate) fn log_segments(&self) -> Vec<loglog_storage::SegmentInfo> {
        self.inner.reader.segments()
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shared.shutdown.subscribe()
    }
}

/// A failed read of the committed log, as the client is answered.
fn read_error(offset: u64, commit: u64, error: StorageError) -> ServerError {
    match error {
        StorageError::Trimmed { start } => ServerError::Trimmed { start },
        StorageError::OutOfRange { .. } => ServerError::OutOfRange { end: commit },
        StorageError::NotEntryBoundary { offset } => ServerError::BadRequest {
            message: format!("offset {offset} is not an entry boundary"),
        },
        // Without an index of every entry, an offset inside an entry whose
        // bytes happen to look like a header with a bad CRC is
        // indistinguishable from damage: answer the client, tell the log.
        StorageError::Corrupt { path, reason, .. } => {
            tracing::warn!(offset, path = %path.display(), %reason, "no valid entry at a read offset");
            ServerError::BadRequest {
                message: format!(
                    "no valid entry at offset {offset} (not an entry boundary, or damaged)"
                ),
            }
        }
        other => {
            tracing::error!(offset, error = %other, "read failed");
            ServerError::Unavailable {
                message: format!("read failed: {other}"),
            }
        }
    }
}

/// The node-wide state shared by the handles, threads and connections.
pub(crate) fn new_shared(config: &Config, commit: u64, term: u32) -> Arc<Shared> {
    let (commit_tx, _) = watch::channel(commit);
    let (shutdown_tx, _) = watch::channel(false);
    Arc::new(Shared {
        commit: commit_tx,
        written_end: AtomicU64::new(commit),
        term: AtomicU64::new(u64::from(term)),
        failure: OnceLock::new(),
        accepting: AtomicBool::new(true),
        shutdown: shutdown_tx,
        pending_append_bytes: Arc::new(Semaphore::new(config.limits.max_pending_append_bytes)),
        counters: Default::default(),
        metrics: crate::metrics::NodeMetrics::new(),
    })
}

/// The single node: open the data directory, start the append pipeline.
async fn start_single(config: &Config) -> Result<Engine, StartError> {
    let open_config = config.clone();
    let opened = tokio::task::spawn_blocking(move || open_data_dir(&open_config))
        .await
        .map_err(|join| StartError::Threads(io::Error::other(join.to_string())))??;
    let shared = new_shared(config, opened.commit, opened.term);
    let pipeline = pipeline::start(
        PipelineParts {
            log: opened.writer,
            producers: opened.producers,
            syncer: opened.syncer,
            fsync: config.fsync,
            term: opened.term,
            max_pending_appends: config.limits.max_pending_appends,
            max_write_batch_bytes: config.limits.max_write_batch_bytes,
        },
        shared.clone(),
    )
    .map_err(StartError::Threads)?;
    Ok(Engine {
        shared,
        commands: pipeline.commands,
        reader: opened.reader,
        stopped: pipeline.stopped,
        lock: opened.lock,
        cluster: None,
    })
}

fn data_dir_error(dir: &Path) -> impl FnOnce(io::Error) -> StartError + '_ {
    move |source| StartError::DataDir {
        dir: dir.to_path_buf(),
        source,
    }
}

/// Takes an exclusive flock on `<data-dir>/LOCK`: two nodes on one data
/// directory would each believe they own the log.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<File, StartError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(data_dir_error(dir))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {
            keep_spare(dir);
            Ok(file)
        }
        Err(rustix::io::Errno::WOULDBLOCK) => Err(StartError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(errno) => Err(StartError::DataDir {
            dir: dir.to_path_buf(),
            source: errno.into(),
        }),
    }
}

/// Makes sure the data directory holds its spare space for state files
/// (`state_file::ensure_spare`: given up to save the term on a full disk).
/// Best effort: without room for it the node runs anyway.
pub(crate) fn keep_spare(dir: &Path) {
    match state_file::ensure_spare(dir) {
        Ok(true) => tracing::info!("spare space for state files set aside"),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "no room to set spare space for state files aside"),
    }
}

/// True when `log_dir` holds at least one segment file.
pub(crate) fn has_segments(log_dir: &Path) -> Result<bool, io::Error> {
    let entries = match fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let name = entry?.file_name();
        if name.to_str().and_then(parse_segment_file_name).is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Blocking: lock, load the term, recover the log, bump the term, append
/// and sync the no-op.
fn open_data_dir(config: &Config) -> Result<Opened, StartError> {
    let dir = &config.data_dir;
    fs::create_dir_all(dir).map_err(data_dir_error(dir))?;
    let lock = lock_data_dir(dir)?;
    let state_path = dir.join(NODE_STATE_FILE);
    let log_dir = dir.join(LOG_DIR);
    // A cluster member's log must never get a single node's term and no-op.
    if dir.join(crate::cluster::CLUSTER_ID_FILE).exists() {
        return Err(StartError::ClusterDirWithoutPeers { dir: dir.clone() });
    }

    let previous = match state_file::load(&state_path) {
        Ok(Some(bytes)) => NodeState::decode(&bytes).map_err(|error| match error {
            NodeStateError::UnsupportedVersion { found } => StartError::UnsupportedFormat {
                path: state_path.clone(),
                found,
            },
            NodeStateError::Malformed { reason } => StartError::CorruptState {
                path: state_path.clone(),
                reason,
            },
        })?,
        Ok(None) => {
            if has_segments(&log_dir).map_err(data_dir_error(dir))? {
                return Err(StartError::MissingState { dir: dir.clone() });
            }
            NodeState {
                node_id: config.node_id,
                term: 0,
                voted_for: 0,
            }
        }
        Err(StorageError::UnsupportedFormat { path, found }) => {
            return Err(StartError::UnsupportedFormat { path, found })
        }
        Err(StorageError::Corrupt { path, reason, .. }) => {
            return Err(StartError::CorruptState { path, reason })
        }
        Err(other) => return Err(StartError::Storage(other)),
    };
    if previous.node_id != config.node_id {
        return Err(StartError::WrongNode {
            dir: dir.clone(),
            found: previous.node_id,
            expected: config.node_id,
        });
    }
    let term = previous
        .term
        .checked_add(1)
        .and_then(|term| u32::try_from(term).ok())
        .ok_or(StartError::TermExhausted)?;

    // Recover before changing anything: a damaged log refuses to start with
    // the state file untouched.
    let mut storage_config = StorageConfig::new(log_dir);
    storage_config.segment_size = config.segment_size;
    // A limit on new appends only: recovery and reads keep entries appended
    // under a larger --max-entry-size (storage crate docs, Recovery).
    storage_config.max_payload = config.max_entry_size;
    storage_config.fsync = match config.fsync {
        Fsync::Always => FsyncPolicy::Always,
        Fsync::Never => FsyncPolicy::Never,
    };
    let (mut writer, syncer, reader) = loglog_storage::open(storage_config)?;
    let producers = scan_producers(&reader, dir, writer.end_offset())?;

    // The term is durable before any entry of it exists (Raft's rule).
    let state = NodeState {
        node_id: config.node_id,
        term: u64::from(term),
        voted_for: config.node_id,
    };
    state_file::save(&state_path, &state.encode())?;

    let mut noop = Vec::new();
    encode_entry(term, EntryKind::NoOp, &[], &mut noop);
    let end = writer.append(&noop)?;
    let commit = match config.fsync {
        Fsync::Always => {
            let durable = syncer.sync()?;
            assert!(durable >= end, "a sync after the append covers it");
            end
        }
        Fsync::Never => end,
    };
    Ok(Opened {
        lock,
        term,
        writer,
        syncer,
        reader,
        commit,
        producers,
    })
}

/// Rebuilds the producer table of the log in `data_dir` (ending at `end`)
/// from its tail (module `dedup`).
pub(crate) fn scan_producers(
    reader: &LogReader,
    data_dir: &Path,
    end: u64,
) -> Result<ProducerTable, StartError> {
    let log_dir = data_dir.join(LOG_DIR);
    dedup::scan_log_tail(
        reader,
        &log_dir,
        end,
        DedupLimits::default(),
        dedup::REBUILD_SCAN_BYTES,
    )
    .map_err(|reason| StartError::CorruptState {
        path: log_dir,
        reason,
    })
}
