//! Peer transport: persistent TCP connections carrying consensus messages.
//!
//! Every node dials every other member once (one outbound connection per
//! peer, used for sending only) and accepts its peers' connections on its
//! peer listener (used for receiving only). So a message never waits for a
//! reply on the same socket, and a dead connection costs one direction.
//!
//! **Handshake.** The dialer opens with
//!
//! ```text
//! 0..8    magic "LLPEER01"
//! 8..16   from: the dialer's node id (u64 LE)
//! 16..24  to: the node id it expects to reach (u64 LE)
//! 24..26  cluster id length (u16 LE, 1..=128)
//! 26..    cluster id (ASCII)
//! ```
//!
//! and the listener answers one byte: 0 accepted, 1 another cluster, 2 not
//! the node the dialer wanted, 3 an id that is not a member, 4 malformed,
//! 5 a TLS certificate that is not the claimed member's, 6 an id that is
//! not a member, from a voter, followed by 16 bytes: the core's
//! `NotAMember` notice (term u32, last_offset u64, last_term u32), which
//! the dialer's driver steps like a message (a removed node that never
//! received its removal learns it so, and stops campaigning).
//! A refused handshake is logged on both sides (by the listener at most
//! once a minute per dialer id, with the count of refusals between) and
//! the connection closed; the dialer retries with backoff (a misconfigured
//! node keeps being refused, loudly, and never mixes its messages in). The members a node
//! accepts follow its configurations, latest and committed (a node added
//! later is accepted once the config entry adding it is in this node's
//! log, so "not a member" is retried at the normal pace; a member removed
//! since its connection was accepted has the connection closed at once,
//! and its redial is refused with answer 6); a node with no
//! configuration yet (one joining, before it has the log) accepts any id
//! of its cluster.
//!
//! **TLS.** With `tls` configured for peers, every peer connection is
//! mutual TLS first (see [`crate::tls`]): the listener refuses, and logs
//! (warn, with the remote address and the reason), a connection whose
//! certificate is not from the cluster's CA, or that has none; the dialer
//! refuses a listener whose certificate is not, and retries slowly. The
//! handshake and frames below then run inside the TLS stream, unchanged.
//! The listener then ties the node id the dialer claims to its
//! certificate: it must be valid for the name this node would dial that
//! member by (the host of its peer address in the configuration, or
//! `tls.peer_server_name`; a joining node checks against the hosts of its
//! `--peers`), else answer 5. A certificate of the cluster's CA alone (a
//! client's, say) does not make its holder a member.
//!
//! **Frames.** After the handshake the dialer sends frames of
//! `length u32 LE, Envelope::encode bytes`. The receiver caps the length
//! (one full AppendEntries batch plus one largest entry, and a little
//! room), decodes with the core's cap, checks the envelope's addressing
//! against the handshake, and closes the connection on any error: nothing
//! from the network panics or is trusted.
//!
//! **Bounds.** Each peer has an outbound queue bounded in bytes
//! ([`MAX_PEER_QUEUE_BYTES`]); past it, or while disconnected, messages are
//! dropped (the core tolerates loss and retransmits). The receiving side
//! hands messages to the driver's bounded event queue and waits when it is
//! full, so a fast peer is slowed down by TCP backpressure. Every message
//! read from a peer holds its frame's bytes of a node-wide budget
//! ([`MAX_INBOUND_BYTES`], taken before the body is read) until the driver
//! has stepped it, so the memory held by received messages is bounded
//! whatever the peers send. At most [`MAX_INBOUND_CONNECTIONS`] peer
//! connections are served at once.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use loglog_raft::{Envelope, Message, NodeId, NotAMember, LARGE_ENTRY_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use super::driver::Event;
use super::upload;
use crate::server::until_true;
use crate::tls::{PeerTls, Stream};

pub(crate) const HANDSHAKE_MAGIC: &[u8; 8] = b"LLPEER01";
pub const HANDSHAKE_FIXED_LEN: usize = 26;
/// Handshake answers.
pub(crate) const ACCEPTED: u8 = 0;
pub(crate) const WRONG_CLUSTER: u8 = 1;
pub(crate) const WRONG_NODE: u8 = 2;
pub(crate) const NOT_A_MEMBER: u8 = 3;
pub(crate) const MALFORMED: u8 = 4;
pub(crate) const WRONG_CERTIFICATE: u8 = 5;
/// "Not a member", from a voter: followed by its [`NotAMember`] notice
/// (term u32, last_offset u64, last_term u32, little endian).
pub(crate) const NOT_A_MEMBER_NOTICE: u8 = 6;
const NOTICE_LEN: usize = 16;

/// Bytes queued for one peer, at most (about four full in-flight windows).
pub const MAX_PEER_QUEUE_BYTES: usize = 32 * 1024 * 1024;
/// Peer connections served at once by the listener.
pub const MAX_INBOUND_CONNECTIONS: usize = 64;
/// Bytes of received peer messages not yet stepped by the driver, node-wide
/// (a message larger than this takes all of it, alone).
pub const MAX_INBOUND_BYTES: usize = 64 * 1024 * 1024;
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnect backoff: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// After a refused handshake (a misconfiguration), retry slowly.
const BACKOFF_REFUSED: Duration = Duration::from_secs(5);
/// Refused handshakes of one dialer id are logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Dialer ids whose last logged refusal is remembered, at most (the
/// oldest is forgotten first).
const REFUSAL_LOG_IDS: usize = 64;
/// Appends from one peer waiting (for their uploads, or for the append
/// before them) at most; past it the connection is not read.
const MAX_WAITING_APPENDS: usize = 256;
/// Small frames are gathered into one write up to this size.
const WRITE_BUFFER: usize = 256 * 1024;

/// The largest frame body accepted from a peer: what the core may put in
/// one message (`max_message_entries_bytes`) plus room for the headers.
pub fn max_frame_len(max_message_entries_bytes: u64) -> u64 {
    max_message_entries_bytes + 1024
}

/// What identifies this node to its peers.
#[derive(Debug)]
pub(crate) struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    /// Whom the peer listener accepts (kept current by the driver).
    pub accepted: RwLock<AcceptedPeers>,
    /// Notified of every change of `accepted`: open connections re-check
    /// their peer.
    pub accepted_changes: watch::Sender<()>,
    /// Bytes written to outbound peer connections since start.
    pub bytes_sent: AtomicU64,
    /// Payloads clients uploaded here (module `upload`).
    pub uploads: super::upload::UploadCache,
    /// The node's maximum payload (rebuilt entries are checked against it).
    pub max_payload: u32,
    /// Mutual TLS for every peer connection; `None`: plain TCP.
    pub tls: Option<PeerTls>,
    /// What the peer listener tells a dialer it refuses as not a member
    /// (the core's `not_a_member_notice`, kept current by the driver).
    pub not_a_member_notice: Mutex<Option<NotAMember>>,
    /// When refusals were last logged, per dialer id.
    pub refusals: Mutex<RefusalLog>,
}

impl Identity {
    pub(crate) fn set_not_a_member_notice(&self, notice: Option<NotAMember>) {
        *self
            .not_a_member_notice
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = notice;
    }

    /// Whether to log a refused handshake of `from` now (see [`RefusalLog`]).
    fn refusal_log(&self, from: NodeId) -> Option<u64> {
        self.refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(from, Instant::now())
    }

    fn not_a_member_notice(&self) -> Option<NotAMember> {
        *self
            .not_a_member_notice
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn set_accepted(&self, accepted: AcceptedPeers) {
        *self
            .accepted
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = accepted;
        self.accepted_changes.send_replace(());
    }

    /// Whether a peer admitted earlier is still a member (a joining node,
    /// with no members yet, keeps everyone).
    fn still_accepts(&self, from: NodeId) -> bool {
        let accepted = self
            .accepted
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        accepted.members.is_empty() || accepted.members.contains_key(&from)
    }

    /// Whether `from` may connect; under TLS also whether the certificate
    /// it showed is valid for the name this node would dial it by.
    fn admit(&self, from: NodeId, stream: &Stream) -> Result<(), (u8, String)> {
        let accepted = self
            .accepted
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let not_a_member = || {
            (
                NOT_A_MEMBER,
                format!("node id {from} is not a configured peer: refused"),
            )
        };
        if from == self.node_id {
            return Err(not_a_member());
        }
        let addresses: Vec<&str> = if accepted.members.is_empty() {
            // Joining: any id of the cluster.
            accepted.join_peers.iter().map(String::as_str).collect()
        } else {
            vec![accepted
                .members
                .get(&from)
                .ok_or_else(not_a_member)?
                .as_str()]
        };
        match &self.tls {
            Some(tls) => tls.check_dialer(stream, addresses).map_err(|reason| {
                (
                    WRONG_CERTIFICATE,
                    format!("node {from}'s certificate does not belong to it ({reason}): refused"),
                )
            }),
            None => Ok(()),
        }
    }
}

/// Whom the peer listener accepts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct AcceptedPeers {
    /// The members of the configurations this node follows (latest and
    /// committed), each with its peer address ("host:port": from the
    /// configurations, else `--peers`; empty when unknown).
    pub members: BTreeMap<NodeId, String>,
    /// With no members yet (a joining node): any id of the cluster is
    /// accepted, and under TLS its certificate must be valid for the host
    /// of one of these peer addresses (`--peers`, which a joining node
    /// also answers through).
    pub join_peers: Vec<String>,
}

pub fn encode_handshake(from: NodeId, to: NodeId, cluster_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(HANDSHAKE_FIXED_LEN + cluster_id.len());
    out.extend_from_slice(HANDSHAKE_MAGIC);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    let len =
        u16::try_from(cluster_id.len()).expect("cluster ids are at most 128 bytes (validated)");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(cluster_id.as_bytes());
    out
}

/// One encoded frame: `head`, then `body` (the entries of an
/// `AppendEntries`, shared with the leader's memory: large ones go to the
/// socket without being copied into a frame).
pub(crate) struct Frame {
    pub(crate) head: Vec<u8>,
    pub(crate) body: Bytes,
}

impl Frame {
    /// A frame encoded in one piece.
    pub(crate) fn whole(bytes: Vec<u8>) -> Frame {
        Frame {
            head: bytes,
            body: Bytes::new(),
        }
    }

    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

/// An outbound queue of encoded frames for one peer.
pub(crate) struct PeerQueue {
    state: Mutex<QueueState>,
    ready: Notify,
}

struct QueueState {
    frames: VecDeque<Frame>,
    bytes: usize,
    connected: bool,
    dropped: u64,
}

impl PeerQueue {
    pub(crate) fn new() -> PeerQueue {
        PeerQueue {
            state: Mutex::new(QueueState {
                frames: VecDeque::new(),
                bytes: 0,
                connected: false,
                dropped: 0,
            }),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A panic while holding it cannot leave the queue inconsistent
        // (every update is one push or one drain).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a frame; drops it when disconnected or over the byte bound
    /// (best effort, as the core expects). Never blocks on the network.
    pub(crate) fn push(&self, frame: Frame) {
        let mut state = self.lock();
        if !state.connected || state.bytes + frame.len() > MAX_PEER_QUEUE_BYTES {
            state.dropped += 1;
            return;
        }
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
    }

    fn set_connected(&self, connected: bool) {
        let mut state = self.lock();
        state.connected = connected;
        if !connected {
            state.frames.clear();
            state.bytes = 0;
        }
    }

    /// Waits for frames and takes them all.
    async fn take_all(&self, into: &mut Vec<Frame>) {
        loop {
            {
                let mut state = self.lock();
                if !state.frames.is_empty() {
                    into.extend(state.frames.drain(..));
                    state.bytes = 0;
                    return;
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Keeps one outbound connection to `peer` open until `stopped` is true or
/// its sender is dropped (the peer left the configuration, or the driver
/// stopped), sending what the driver queues.
pub(crate) async fn dial_peer(
    identity: Arc<Identity>,
    peer: NodeId,
    peer_addr: String,
    queue: Arc<PeerQueue>,
    events: mpsc::Sender<Event>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_FIRST;
    let mut logged_down = false;
    // Refused as "not a member": the peer's log may not have the entry
    // adding us yet (retry soon), or we were removed (retry ever slower).
    let mut not_member_backoff = BACKOFF_FIRST;
    loop {
        let attempt = async {
            let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&peer_addr))
                .await
                .map_err(|_| DialError::Io("connect timed out".to_string()))?
                .map_err(|error| DialError::Io(error.to_string()))?;
            // Heartbeats and acks are small and latency-bound: no Nagle.
            drop(stream.set_nodelay(true));
            let stream = match &identity.tls {
                Some(tls) => {
                    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(stream, &peer_addr))
                        .await
                        .map_err(|_| DialError::Io("TLS handshake timed out".to_string()))?
                        .map_err(|error| match error.kind() {
                            // rustls' verdicts (a certificate of another CA, a
                            // wrong name): a misconfiguration, not a glitch.
                            std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput => {
                                DialError::Tls(error.to_string())
                            }
                            _ => DialError::Io(format!("TLS handshake: {error}")),
                        })?
                }
                None => Stream::Plain(stream),
            };
            handshake(stream, &identity, peer).await
        };
        let outcome = tokio::select! {
            outcome = attempt => outcome,
            _ = until_true(&mut stopped) => return,
        };
        match outcome {
            Ok(stream) => {
                tracing::info!(peer, addr = %peer_addr, "connected to peer");
                logged_down = false;
                backoff = BACKOFF_FIRST;
                not_member_backoff = BACKOFF_FIRST;
                queue.set_connected(true);
                let result = tokio::select! {
                    result = send_frames(stream, &queue, &identity.bytes_sent) => result,
                    _ = until_true(&mut stopped) => return,
                };
                queue.set_connected(false);
                if let Err(error) = result {
                    tracing::info!(peer, addr = %peer_addr, %error, "peer connection lost");
                }
            }
            Err(DialError::NotYetMember(notice)) => {
                // Informational (the core decides what it means); dropped
                // when the driver is busy: the next refusal repeats it.
                if let Some(notice) = notice {
                    drop(events.try_send(Event::NotAMember { from: peer, notice }));
                }
                if !logged_down {
                    tracing::info!(peer, addr = %peer_addr, "peer does not know us as a member; retrying");
                    logged_down = true;
                }
                backoff = not_member_backoff;
                not_member_backoff = (not_member_backoff * 2).min(BACKOFF_REFUSED);
            }
            Err(DialError::Refused(reason)) => {
                tracing::error!(peer, addr = %peer_addr, reason, "peer refused our handshake");
                backoff = BACKOFF_REFUSED;
            }
            Err(DialError::Tls(reason)) => {
                tracing::warn!(peer, addr = %peer_addr, %reason, "refusing peer: TLS handshake failed");
                backoff = BACKOFF_REFUSED;
            }
            Err(DialError::Io(error)) => {
                if !logged_down {
                    tracing::info!(peer, addr = %peer_addr, %error, "cannot reach peer; retrying");
                    logged_down = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = until_true(&mut stopped) => return,
        }
        if backoff < BACKOFF_MAX {
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}

enum DialError {
    Io(String),
    /// The peer does not count us as a member; a voter says what it knows.
    NotYetMember(Option<NotAMember>),
    Refused(&'static str),
    /// The TLS handshake failed on a certificate (ours or theirs).
    Tls(String),
}

async fn handshake(
    mut stream: Stream,
    identity: &Identity,
    peer: NodeId,
) -> Result<Stream, DialError> {
    let hello = encode_handshake(identity.node_id, peer, &identity.cluster_id);
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&hello).await?;
        stream.flush().await?;
        stream.read_u8().await
    })
    .await
    .map_err(|_| DialError::Io("handshake timed out".to_string()))?
    .map_err(|error| match error.kind() {
        // TLS 1.3: the listener checks our certificate after our side of
        // the TLS handshake is done, and its refusal (an alert) shows here.
        std::io::ErrorKind::InvalidData => DialError::Tls(format!("the peer refused us: {error}")),
        _ => DialError::Io(format!("handshake: {error}")),
    })?;
    match answer {
        ACCEPTED => Ok(stream),
        WRONG_CLUSTER => Err(DialError::Refused(
            "it belongs to another cluster (cluster ids differ)",
        )),
        WRONG_NODE => Err(DialError::Refused(
            "the node at that address has another node id",
        )),
        NOT_A_MEMBER => Err(DialError::NotYetMember(None)),
        NOT_A_MEMBER_NOTICE => {
            let mut notice = [0u8; NOTICE_LEN];
            tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut notice))
                .await
                .map_err(|_| DialError::Io("handshake timed out".to_string()))?
                .map_err(|error| DialError::Io(format!("handshake: {error}")))?;
            Err(DialError::NotYetMember(Some(decode_notice(&notice))))
        }
        WRONG_CERTIFICATE => Err(DialError::Refused(
            "our certificate is not valid for our peer address's host (or tls.peer_server_name)",
        )),
        _ => Err(DialError::Refused("malformed handshake")),
    }
}

async fn send_frames(
    mut stream: Stream,
    queue: &PeerQueue,
    bytes_sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut frames = Vec::new();
    let mut buffer = Vec::with_capacity(WRITE_BUFFER);
    let count = |bytes: usize| {
        bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    };
    loop {
        queue.take_all(&mut frames).await;
        for frame in frames.drain(..) {
            if buffer.len() + frame.len() > WRITE_BUFFER && !buffer.is_empty() {
                stream.write_all(&buffer).await?;
                count(buffer.len());
                buffer.clear();
            }
            buffer.extend_from_slice(&frame.head);
            if frame.body.len() >= LARGE_ENTRY_BYTES {
                // Large entries go from the leader's memory to the socket,
                // in one vectored write with what is gathered before them.
                let written = buffer.len() + frame.body.len();
                stream
                    .write_all_buf(&mut Buf::chain(&buffer[..], &frame.body[..]))
                    .await?;
                count(written);
                buffer.clear();
                continue;
            }
            buffer.extend_from_slice(&frame.body);
        }
        if !buffer.is_empty() {
            stream.write_all(&buffer).await?;
            count(buffer.len());
            buffer.clear();
        }
        // TLS may hold the last record back until flushed (TCP: no-op).
        stream.flush().await?;
    }
}

/// Accepts peer connections until `stopped` and feeds their messages to
/// the driver.
pub(crate) async fn serve_peers(
    listener: TcpListener,
    identity: Arc<Identity>,
    events: mpsc::Sender<Event>,
    max_entries_bytes: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS));
    let inbound_bytes = Arc::new(Semaphore::new(MAX_INBOUND_BYTES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = until_true(&mut stopped) => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%remote, "too many peer connections; closing one");
                    continue;
                };
                let identity = identity.clone();
                let events = events.clone();
                let stopped = stopped.clone();
                let inbound_bytes = inbound_bytes.clone();
                tokio::spawn(async move {
                    let mut stopped_inner = stopped.clone();
                    drop(stream.set_nodelay(true));
                    let stream = match &identity.tls {
                        Some(tls) => {
                            match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                            {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::warn!(%remote, reason = %error, "refusing peer: TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::warn!(%remote, reason = "timed out", "refusing peer: TLS handshake failed");
                                    return;
                                }
                            }
                        }
                        None => Stream::Plain(stream),
                    };
                    let receive = receive_peer(
                        stream,
                        remote,
                        &identity,
                        &events,
                        &inbound_bytes,
                        max_entries_bytes,
                    );
                    tokio::select! {
                        result = receive => {
                            if let Err(reason) = result {
                                tracing::info!(%remote, %reason, "peer connection closed");
                            }
                        }
                        _ = until_true(&mut stopped_inner) => {}
                    }
                    drop(stopped);
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads a handshake and then frames from one peer connection.
async fn receive_peer(
    mut stream: Stream,
    remote: SocketAddr,
    identity: &Arc<Identity>,
    events: &mpsc::Sender<Event>,
    inbound_bytes: &Arc<Semaphore>,
    max_entries_bytes: u64,
) -> Result<(), String> {
    let handshake =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(&mut stream, identity));
    let from = match handshake.await {
        Ok(Ok(from)) => from,
        // Logged where it was refused (at most once a minute per id).
        Ok(Err(HandshakeEnd::Refused)) => return Ok(()),
        Ok(Err(HandshakeEnd::Failed(reason))) => return Err(reason),
        Err(_) => return Err("handshake timed out".to_string()),
    };
    tracing::info!(peer = from, %remote, "peer connected");
    // A member removed since the handshake is closed on at once: it
    // redials, and the refusal tells it (it never receives its removal).
    tokio::select! {
        result = receive_frames(stream, from, identity, events, inbound_bytes, max_entries_bytes) => result,
        () = removed_from_configuration(identity, from) => Err(format!(
            "node {from} is no longer in this node's configuration: closed"
        )),
    }
}

/// Resolves once `from` is no longer accepted by this node's listener.
async fn removed_from_configuration(identity: &Identity, from: NodeId) {
    // Subscribed before the check: a change in between still wakes us.
    let mut changes = identity.accepted_changes.subscribe();
    while identity.still_accepts(from) {
        if changes.changed().await.is_err() {
            // The identity is gone with the node: nothing to watch.
            return std::future::pending().await;
        }
    }
}

/// Reads frames from an admitted peer and hands them to the driver.
async fn receive_frames(
    stream: Stream,
    from: NodeId,
    identity: &Arc<Identity>,
    events: &mpsc::Sender<Event>,
    inbound_bytes: &Arc<Semaphore>,
    max_entries_bytes: u64,
) -> Result<(), String> {
    let max_frame = max_frame_len(max_entries_bytes);
    // Appends (raw or by digest) from the leader are stepped in the order
    // they came: each waits for the one before it, which may be waiting
    // for its uploads. At most MAX_WAITING_APPENDS wait at once.
    let mut append_chain: Option<oneshot::Receiver<()>> = None;
    let chain_slots = Arc::new(Semaphore::new(MAX_WAITING_APPENDS));
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let len = match reader.read_u32_le().await {
            Ok(len) => u64::from(len),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(error.to_string()),
        };
        if len > max_frame {
            return Err(format!(
                "frame of {len} bytes exceeds the cap of {max_frame}"
            ));
        }
        // Charged before the body is buffered; held until the driver has
        // stepped the message.
        let charge = u32::try_from(len.min(MAX_INBOUND_BYTES as u64)).expect("at most 64 MiB");
        let permit = inbound_bytes
            .clone()
            .acquire_many_owned(charge)
            .await
            .map_err(|_| "the inbound budget is closed".to_string())?;
        let body = read_frame_body(&mut reader, len as usize)
            .await
            .map_err(|error| error.to_string())?;
        if let Some(kind @ (upload::KIND_APPEND_BY_DIGEST | upload::KIND_UPLOAD_MISS)) =
            body.get(16).copied()
        {
            check_upload_frame_addressing(&body, from, identity)?;
            if kind == upload::KIND_UPLOAD_MISS {
                let event =
                    receive_upload_frame(kind, &body, from, identity, permit, max_entries_bytes)
                        .await?;
                if events.send(event).await.is_err() {
                    return Ok(()); // the driver stopped
                }
                continue;
            }
            // Malformed frames close the connection here, before waiting.
            let entries_len = match upload::decode_frame(kind, &body[17..], max_entries_bytes)? {
                upload::UploadFrame::ByDigest { head, .. } => head.entries_len,
                upload::UploadFrame::Miss(_) => 0,
            };
            // Charged for the message it will be once rebuilt, now, in order.
            drop(permit);
            let charge = u32::try_from(entries_len.max(len).min(MAX_INBOUND_BYTES as u64))
                .expect("at most 64 MiB");
            let permit = inbound_bytes
                .clone()
                .acquire_many_owned(charge)
                .await
                .map_err(|_| "the inbound budget is closed".to_string())?;
            // Its uploads may still be on their way: rebuilt in a task of
            // its own, in order with the other appends, while heartbeats
            // and votes go on.
            let slot = chain_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| "the append chain is closed".to_string())?;
            clear_if_done(&mut append_chain);
            let previous = append_chain.take();
            let (done, next) = oneshot::channel::<()>();
            append_chain = Some(next);
            let (identity, events) = (identity.clone(), events.clone());
            tokio::spawn(async move {
                // Waits for its uploads at once, alongside the appends
                // before it (the waits overlap); steps in order.
                let event =
                    receive_upload_frame(kind, &body, from, &identity, permit, max_entries_bytes)
                        .await;
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                if let Ok(event) = event {
                    let _ = events.send(event).await;
                }
                drop((done, slot));
            });
            continue;
        }
        let envelope = decode_peer_frame(&body, max_entries_bytes, from, identity.node_id)?;
        drop(body);
        let is_append = matches!(envelope.message, Message::AppendEntries(_));
        let event = Event::Message {
            from,
            message: envelope.message,
            _bytes: permit,
        };
        // An append behind one still waiting for its uploads waits too.
        clear_if_done(&mut append_chain);
        if is_append && append_chain.is_some() {
            let slot = chain_slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| "the append chain is closed".to_string())?;
            let previous = append_chain.take();
            let (done, next) = oneshot::channel::<()>();
            append_chain = Some(next);
            let events = events.clone();
            tokio::spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                let _ = events.send(event).await;
                drop((done, slot));
            });
            continue;
        }
        if events.send(event).await.is_err() {
            return Ok(()); // the driver stopped
        }
    }
}

/// Forgets the last append of the chain once it is done (a finished
/// receiver must not be awaited again).
fn clear_if_done(chain: &mut Option<oneshot::Receiver<()>>) {
    if chain
        .as_mut()
        .is_some_and(|last| !matches!(last.try_recv(), Err(TryRecvError::Empty)))
    {
        *chain = None;
    }
}

/// Checks the `from` and `to` of a frame of module `upload`.
fn check_upload_frame_addressing(
    body: &[u8],
    from: NodeId,
    identity: &Identity,
) -> Result<(), String> {
    let addressed = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    if addressed(0) != from || addressed(8) != identity.node_id {
        return Err(format!(
            "misaddressed upload frame on a connection from {from} to {}",
            identity.node_id
        ));
    }
    Ok(())
}

/// A frame of module `upload`: an `AppendByDigest` becomes the ordinary
/// `AppendEntries` when the uploads are here, else a miss to report to the
/// leader; an `UploadMiss` goes to the driver.
///
/// `permit` is the frame's share of the inbound budget; for an
/// `AppendByDigest`, the rebuilt message's (taken by the reader, in order,
/// so that an append waiting for its uploads never needs budget that a
/// later append waiting behind it holds).
async fn receive_upload_frame(
    kind: u8,
    body: &[u8],
    from: NodeId,
    identity: &Identity,
    permit: tokio::sync::OwnedSemaphorePermit,
    max_entries_bytes: u64,
) -> Result<Event, String> {
    match upload::decode_frame(kind, &body[17..], max_entries_bytes)? {
        upload::UploadFrame::Miss(miss) => Ok(Event::UploadMissed { from, miss }),
        upload::UploadFrame::ByDigest { head, parts } => {
            match upload::rebuild(&identity.uploads, &head, &parts, identity.max_payload).await {
                Some(message) => Ok(Event::Message {
                    from,
                    message: Message::AppendEntries(message),
                    _bytes: permit,
                }),
                None => Ok(Event::ReportMiss {
                    leader: from,
                    miss: head,
                }),
            }
        }
    }
}

/// The fixed head of a peer handshake (everything but the cluster id):
/// `(from, to, cluster id length)`, or the answer code refusing it and why.
pub fn decode_handshake_head(
    fixed: &[u8; HANDSHAKE_FIXED_LEN],
) -> Result<(NodeId, NodeId, usize), (u8, String)> {
    if &fixed[0..8] != HANDSHAKE_MAGIC {
        return Err((MALFORMED, "not a LogLog peer handshake".to_string()));
    }
    let from = u64::from_le_bytes(fixed[8..16].try_into().expect("8 bytes"));
    let to = u64::from_le_bytes(fixed[16..24].try_into().expect("8 bytes"));
    let id_len = usize::from(u16::from_le_bytes(
        fixed[24..26].try_into().expect("2 bytes"),
    ));
    if id_len == 0 || id_len > super::MAX_CLUSTER_ID_LEN {
        return Err((MALFORMED, format!("cluster id length {id_len}")));
    }
    Ok((from, to, id_len))
}

/// Reads exactly `len` bytes into a buffer of their own (not zeroed first:
/// its pages are touched once, by the copy from the socket).
async fn read_frame_body<R: AsyncRead + Unpin>(
    reader: &mut R,
    len: usize,
) -> std::io::Result<Bytes> {
    let mut body = BytesMut::with_capacity(len);
    while body.len() < len {
        let missing = (len - body.len()) as u64;
        if (&mut *reader).take(missing).read_buf(&mut body).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(body.freeze())
}

/// One frame body from the peer `from` (after the handshake) to this node
/// `to`: the envelope, checked to be addressed as the connection is. An
/// AppendEntries' entries are a slice of `body`.
pub fn decode_peer_frame(
    body: &Bytes,
    max_entries_bytes: u64,
    from: NodeId,
    to: NodeId,
) -> Result<Envelope, String> {
    let envelope = Envelope::decode(body, max_entries_bytes)
        .map_err(|error| format!("undecodable message: {error}"))?;
    if envelope.from != from || envelope.to != to {
        return Err(format!(
            "misaddressed message: from {} to {} on a connection from {from} to {to}",
            envelope.from, envelope.to
        ));
    }
    Ok(envelope)
}

async fn accept_handshake(
    stream: &mut Stream,
    identity: &Identity,
) -> Result<NodeId, HandshakeEnd> {
    let failed = |error: std::io::Error| HandshakeEnd::Failed(format!("handshake: {error}"));
    let mut fixed = [0u8; HANDSHAKE_FIXED_LEN];
    stream.read_exact(&mut fixed).await.map_err(failed)?;
    let refuse = |code: u8, reason: String| (code, reason);
    let verdict = decode_handshake_head(&fixed);
    let (from, to, id_len) = match verdict {
        Ok(fields) => fields,
        Err((code, reason)) => {
            drop(answer(stream, code).await);
            return Err(HandshakeEnd::Failed(reason));
        }
    };
    let mut cluster_id = vec![0u8; id_len];
    stream.read_exact(&mut cluster_id).await.map_err(failed)?;
    let verdict = if cluster_id != identity.cluster_id.as_bytes() {
        Err(refuse(
            WRONG_CLUSTER,
            format!(
                "node {from} belongs to cluster {:?}, we are {:?}: refused",
                String::from_utf8_lossy(&cluster_id),
                identity.cluster_id
            ),
        ))
    } else if to != identity.node_id {
        Err(refuse(
            WRONG_NODE,
            format!(
                "node {from} wanted node {to}, we are node {}: refused",
                identity.node_id
            ),
        ))
    } else {
        identity.admit(from, stream).map(|()| from)
    };
    let (code, reason) = match verdict {
        Ok(from) => {
            answer(stream, ACCEPTED).await.map_err(failed)?;
            return Ok(from);
        }
        Err(refusal) => refusal,
    };
    if let Some(unlogged) = identity.refusal_log(from) {
        tracing::error!(%reason, refused_since_last_logged = unlogged, "peer handshake refused");
    }
    match (code, identity.not_a_member_notice()) {
        (NOT_A_MEMBER, Some(notice)) => drop(answer_not_a_member(stream, notice).await),
        _ => drop(answer(stream, code).await),
    }
    Err(HandshakeEnd::Refused)
}

/// Why an inbound handshake ended without a peer.
enum HandshakeEnd {
    /// Refused (and logged, at most once a minute per dialer id).
    Refused,
    /// Cut short or malformed.
    Failed(String),
}

/// Remembers when a refusal of each dialer id was last logged: a removed or
/// misconfigured node redials every few seconds for as long as it runs.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    /// Dialer id -> when its refusal was last logged, and refusals since.
    last: BTreeMap<NodeId, (Instant, u64)>,
}

impl RefusalLog {
    /// Whether to log a refusal of `from` at `now`; if so, how many of its
    /// refusals were not logged since the last one.
    fn admit(&mut self, from: NodeId, now: Instant) -> Option<u64> {
        if let Some((at, unlogged)) = self.last.get_mut(&from) {
            if now.saturating_duration_since(*at) < REFUSAL_LOG_INTERVAL {
                *unlogged += 1;
                return None;
            }
            let since = *unlogged;
            (*at, *unlogged) = (now, 0);
            return Some(since);
        }
        if self.last.len() >= REFUSAL_LOG_IDS {
            let oldest = self
                .last
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                self.last.remove(&oldest);
            }
        }
        self.last.insert(from, (now, 0));
        Some(0)
    }
}

/// Refuses a dialer as not a member, with what this voter knows.
async fn answer_not_a_member(stream: &mut Stream, notice: NotAMember) -> std::io::Result<()> {
    let mut bytes = [0u8; 1 + NOTICE_LEN];
    bytes[0] = NOT_A_MEMBER_NOTICE;
    bytes[1..].copy_from_slice(&encode_notice(notice));
    stream.write_all(&bytes).await?;
    stream.flush().await
}

fn encode_notice(notice: NotAMember) -> [u8; NOTICE_LEN] {
    let mut bytes = [0u8; NOTICE_LEN];
    bytes[0..4].copy_from_slice(&notice.term.to_le_bytes());
    bytes[4..12].copy_from_slice(&notice.last_offset.to_le_bytes());
    bytes[12..16].copy_from_slice(&notice.last_term.to_le_bytes());
    bytes
}

fn decode_notice(bytes: &[u8; NOTICE_LEN]) -> NotAMember {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    NotAMember {
        term: u32_at(0),
        last_offset: u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes")),
        last_term: u32_at(12),
    }
}

/// Sends the one-byte handshake answer (flushed: TLS may hold it back).
async fn answer(stream: &mut Stream, code: u8) -> std::io::Result<()> {
    stream.write_u8(code).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_one_id_are_logged_once_a_minute_with_the_count_between() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(log.admit(7, at(0)), Some(0), "the first is logged");
        for seconds in [5, 10, 59] {
            assert_eq!(log.admit(7, at(seconds)), None);
        }
        assert_eq!(log.admit(8, at(10)), Some(0), "each id on its own");
        assert_eq!(log.admit(7, at(60)), Some(3), "then again, with the count");
        assert_eq!(log.admit(7, at(61)), None);
    }

    #[test]
    fn the_refusal_log_forgets_the_oldest_id_past_its_bound() {
        let mut log = RefusalLog::default();
        let start = Instant::now();
        for id in 0..REFUSAL_LOG_IDS as u64 {
            log.admit(id, start + Duration::from_millis(id));
        }
        let later = start + Duration::from_secs(1);
        assert_eq!(log.admit(1_000, later), Some(0));
        assert_eq!(log.last.len(), REFUSAL_LOG_IDS);
        assert!(!log.last.contains_key(&0), "the oldest went");
        assert_eq!(log.admit(0, later), Some(0), "so it is logged anew");
        assert_eq!(log.admit(5, later), None, "the others are remembered");
    }
}
