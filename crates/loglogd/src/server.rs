//! The TCP server: one reader and one writer per connection.
//!
//! * The reader decodes frames ([`FrameHeader::decode`]) from one growing
//!   buffer; an append's payload is a slice of that buffer (no copy) handed
//!   to the append queue. Requests are dispatched as they arrive
//!   (pipelined); reads run as their own tasks so a long-poll blocks nothing.
//! * Every request holds a permit of the connection's in-flight bounds
//!   (requests and bytes) and of the node's request budget until its
//!   response is written out. With no permit left the reader stops reading
//!   the socket: TCP backpressure. A read also holds the node's read-answer
//!   budget for the bytes it may answer, taken after its long-poll wait and
//!   before it reads the log (see [`crate::Limits`] for the whole account).
//! * A client that takes none of its answers, or sends none of a frame it
//!   has begun, for `client_stall_timeout` is disconnected, which returns
//!   what it held of the budgets.
//! * Memory outside the budgets is the connection's two buffers: the read
//!   buffer (at most two [`READ_CHUNK`]s: a frame larger than a chunk gets
//!   an allocation of exactly its size, charged) and the write buffer
//!   ([`FLUSH_AT`] plus one small response). Append payloads smaller than a
//!   chunk are copied out of the read buffer, so a queued append never pins
//!   a whole chunk that its charge does not cover.
//! * Responses go through an unbounded queue (its length is bounded by the
//!   in-flight permits) so that the node's threads never block on a slow
//!   client; the writer drains the queue into one buffer and writes it with
//!   one syscall, flushing whenever the queue is empty.
//! * A malformed frame (non-zero reserved bytes, oversize length) cannot be
//!   skipped safely: it is answered (`BadRequest`, or `TooLarge` for an
//!   append) and that connection alone is closed. An unknown opcode or a bad
//!   body is answered `BadRequest` and the connection goes on.
//! * Past `max_connections`, a new connection gets one `Busy` frame (opcode
//!   0, request id 0) and is closed.
//! * Plain TCP or TLS ([`crate::tls`]): one code path. The reader is
//!   generic over the read half and the writer over the write half
//!   ([`AnswerSocket`]); only the TLS handshake at the start differs, and
//!   how a read's bytes reach the socket:
//! * **Zero-copy reads** (plain TCP only): a read answer is located in the
//!   segment file ([`Node::locate_committed`]: headers only, the first
//!   entry's CRC checked) instead of read into memory, and the writer sends
//!   it with `sendfile(2)` from the file to the socket, after the frame
//!   header and commit offset, in bounded pieces, waiting for the socket's
//!   readiness on `EAGAIN` (stall timeout as for any write). The bytes on
//!   the wire are the same as the copying path's. Under TLS the bytes must
//!   pass through the encryption, so reads are copied as before.
//! * With client tokens configured, each connection holds the roles its
//!   AUTH request earned ([`crate::auth`]); a request without its role is
//!   answered `Unauthorized` before it is parsed or reaches the node.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::pin;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use loglog_proto::entry::ENTRY_HEADER_LEN;
use loglog_proto::wire::{
    encode_error_response, ok_response_header, opcode, FrameError, FrameHeader, NodeStatus,
    Request, ServerError, CONNECTION_OPCODE, FRAME_HEADER_LEN, READ_RESPONSE_PREFIX_LEN,
};
use loglog_storage::FileSpan;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::auth::ConnectionAccess;
use crate::config::REQUEST_OVERHEAD;
use crate::metrics::NodeMetrics;
use crate::node::{Chunk, CommittedRead, Node};
use crate::pipeline::{ProducerAppend, Reply};

/// Bytes the reader asks the socket for at a time (at least). A frame
/// larger than this gets a buffer of its own.
const READ_CHUNK: usize = 32 * 1024;
/// The writer flushes once this much is buffered, even if more is queued.
const FLUSH_AT: usize = 64 * 1024;
/// Read bodies larger than this are written straight from their buffer.
const COPY_BODY_BELOW: usize = 16 * 1024;
/// Room for one response other than a large read body (an error message
/// or a status is far smaller).
const SMALL_RESPONSE_MAX: usize = COPY_BODY_BELOW + 4 * 1024;
const _: () = assert!(
    2 * READ_CHUNK + FLUSH_AT + SMALL_RESPONSE_MAX <= crate::config::CONNECTION_BUFFER_BYTES,
    "the documented per-connection buffer bound holds"
);
/// How long shutdown waits for connections to deliver their last answers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection keeps reading (and discarding) so that the
/// peer gets our last frame rather than a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1024 * 1024;
/// Connections being refused (answered `Busy`) at once.
const MAX_CONCURRENT_REFUSALS: usize = 64;
/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes one `sendfile` call is asked to send (the socket usually
/// takes less: what fits its send buffer).
const SENDFILE_MAX: u64 = 1024 * 1024;

type ResponseSink = mpsc::UnboundedSender<Outgoing>;

enum Outgoing {
    Response(Response),
    /// Write what came before, then close the connection.
    Close,
}

struct Response {
    request_id: u64,
    opcode: u8,
    body: Body,
    /// Released once the response is written to the socket (or copied
    /// into the connection's write buffer).
    permit: Option<InFlightPermit>,
    /// When the append it answers arrived (commit latency metric).
    append_received: Option<Instant>,
}

enum Body {
    Offset(u64),
    Read {
        commit: u64,
        bytes: Vec<u8>,
    },
    /// A read answered from the segment file by `sendfile` (plain TCP).
    ReadFile {
        commit: u64,
        span: FileSpan,
    },
    Status(NodeStatus),
    ClusterStatus(Vec<u8>),
    /// An admin request's u64 answer.
    Admin(u64),
    /// An ok answer without a body (upload).
    Empty,
    /// An AUTH request's answer: the roles granted, one byte.
    Roles(u8),
    Error(ServerError),
}

/// A request's share of its connection's in-flight bounds and of the
/// node's budgets.
pub(crate) struct InFlightPermit {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
    _node_bytes: OwnedSemaphorePermit,
    /// A read's answer bytes, charged to the node's read budget.
    _answer: Option<OwnedSemaphorePermit>,
}

/// The node-wide budgets shared by every connection (see [`crate::Limits`]).
struct NodeBudget {
    node: Node,
    request_bytes: Arc<Semaphore>,
    max_request_bytes: usize,
    read_bytes: Arc<Semaphore>,
    max_read_bytes: usize,
}

impl NodeBudget {
    /// Records the bytes held now, for [`crate::Metrics`]. Writes the
    /// shared peaks only when they grow (rarely, once warm).
    fn note_held(&self) {
        let counters = self.node.counters();
        let requests = (self.max_request_bytes - self.request_bytes.available_permits()) as u64;
        let reads = (self.max_read_bytes - self.read_bytes.available_permits()) as u64;
        if requests > counters.peak_request_bytes.load(Ordering::Relaxed) {
            counters
                .peak_request_bytes
                .fetch_max(requests, Ordering::Relaxed);
        }
        if reads > counters.peak_read_bytes.load(Ordering::Relaxed) {
            counters.peak_read_bytes.fetch_max(reads, Ordering::Relaxed);
        }
    }

    /// Takes `bytes` of the read budget (all of it at most, so that an
    /// answer larger than the whole budget still runs, alone).
    async fn charge_read(&self, bytes: u64) -> OwnedSemaphorePermit {
        let bytes = bytes.min(self.max_read_bytes as u64);
        let bytes = u32::try_from(bytes).unwrap_or(u32::MAX);
        let permit = self
            .read_bytes
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("node budgets are never closed");
        self.note_held();
        permit
    }
}

/// The answer address of an append that came over TCP.
pub(crate) struct PendingResponse {
    sink: ResponseSink,
    request_id: u64,
    permit: InFlightPermit,
    received: Instant,
}

impl PendingResponse {
    pub(crate) fn answer_append(self, result: Result<u64, ServerError>) {
        let body = match result {
            Ok(offset) => Body::Offset(offset),
            Err(error) => Body::Error(error),
        };
        drop(self.sink.send(Outgoing::Response(Response {
            request_id: self.request_id,
            opcode: opcode::APPEND,
            body,
            permit: Some(self.permit),
            append_received: Some(self.received),
        })));
    }
}

fn respond(
    sink: &ResponseSink,
    opcode: u8,
    request_id: u64,
    body: Body,
    permit: Option<InFlightPermit>,
) {
    // A closed connection cannot be answered; its client sees the close.
    drop(sink.send(Outgoing::Response(Response {
        request_id,
        opcode,
        body,
        permit,
        append_received: None,
    })));
}

/// Accepts connections until shutdown, then waits (bounded) for them to
/// deliver their last answers.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    node: Node,
    stopped: watch::Sender<bool>,
) {
    let limits = node.config().limits.clone();
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let budget = Arc::new(NodeBudget {
        node: node.clone(),
        request_bytes: Arc::new(Semaphore::new(limits.max_node_request_bytes)),
        max_request_bytes: limits.max_node_request_bytes,
        read_bytes: Arc::new(Semaphore::new(limits.max_node_read_bytes)),
        max_read_bytes: limits.max_node_read_bytes,
    });
    let refusal_slots = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    let mut connections = JoinSet::new();
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = until_true(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match connection_slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(
                            stream,
                            peer,
                            tls.clone(),
                            node.clone(),
                            budget.clone(),
                            slot,
                        ));
                    }
                    // Refusals are bounded too: past the bound a connection
                    // is closed without a word.
                    Err(_) => match refusal_slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            connections.spawn(refuse_connection(stream, peer, tls.clone(), slot));
                        }
                        Err(_) => drop(stream),
                    },
                },
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "connections did not drain in time; closing them"
        );
        connections.shutdown().await;
    }
    stopped.send_replace(true);
}

/// Waits until a flag becomes true (or its sender is gone), holding no
/// borrow of it (a watch `Ref` is not `Send`).
pub(crate) async fn until_true(flag: &mut watch::Receiver<bool>) {
    drop(flag.wait_for(|value| *value).await);
}

async fn refuse_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    _slot: OwnedSemaphorePermit,
) {
    tracing::warn!(%peer, "refusing connection: too many connections");
    let mut frame = Vec::new();
    encode_error_response(CONNECTION_OPCODE, 0, &ServerError::Busy, &mut frame);
    async fn answer<S: AsyncWrite + Unpin>(mut stream: S, frame: &[u8]) -> std::io::Result<()> {
        stream.write_all(frame).await?;
        stream.shutdown().await
    }
    // A TLS client can read the answer only inside a TLS session.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        match tls {
            Some(acceptor) => answer(acceptor.accept(stream).await?, &frame).await,
            None => answer(stream, &frame).await,
        }
    })
    .await;
}

/// Where a connection's answers are written: plain TCP, which can also
/// send file bytes with `sendfile`, or the write half of a TLS stream.
pub(crate) trait AnswerSocket: AsyncWrite + Unpin + Send {
    /// The TCP socket that file bytes may be sent to as they are; `None`
    /// when they must pass through this writer (TLS).
    fn zero_copy_socket(&self) -> Option<&TcpStream>;
}

impl AnswerSocket for OwnedWriteHalf {
    fn zero_copy_socket(&self) -> Option<&TcpStream> {
        Some(self.as_ref())
    }
}

impl AnswerSocket for tokio::io::WriteHalf<tokio_rustls::server::TlsStream<TcpStream>> {
    fn zero_copy_socket(&self) -> Option<&TcpStream> {
        None
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    node: Node,
    budget: Arc<NodeBudget>,
    _slot: OwnedSemaphorePermit,
) {
    tracing::debug!(%peer, "connection opened");
    // Responses are small and latency matters: no Nagle.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "set_nodelay failed");
    }
    match tls {
        None => {
            let (read_half, write_half) = stream.into_split();
            serve_stream(read_half, write_half, peer, node, budget).await;
        }
        Some(acceptor) => {
            let stream = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::warn!(%peer, reason = %error, "refusing client: TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, reason = "timed out", "refusing client: TLS handshake failed");
                    return;
                }
            };
            let (read_half, write_half) = tokio::io::split(stream);
            serve_stream(read_half, write_half, peer, node, budget).await;
        }
    }
    tracing::debug!(%peer, "connection closed");
}

/// Serves one connection, plain or TLS: the same reader and writer.
async fn serve_stream<R, W>(
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    node: Node,
    budget: Arc<NodeBudget>,
) where
    R: AsyncRead + Unpin + Send,
    W: AnswerSocket,
{
    let zero_copy = write_half.zero_copy_socket().is_some();
    let (sink, queue) = mpsc::unbounded_channel();
    let stall_timeout = node.config().limits.client_stall_timeout;
    let metrics = node.node_metrics().clone();
    metrics.connections.inc();
    tokio::join!(
        read_requests(read_half, zero_copy, node, budget, sink, peer),
        write_responses(write_half, queue, peer, stall_timeout, &metrics)
    );
    metrics.connections.dec();
}

/// What a request needs once parsed (the payload is the frame body itself).
enum Parsed {
    Append {
        no_wait: bool,
        /// The producer envelope (at the start of the body) and the retry flag.
        producer: Option<ProducerAppend>,
    },
    Read {
        offset: u64,
        max_bytes: u32,
        wait_ms: u32,
        /// Confirm leadership (read-index) before reading.
        linearizable: bool,
    },
    Status,
    ClusterStatus,
    Admin,
    Upload,
    /// Answered by [`screen`] before dispatch, never here.
    Auth,
}

/// Reads and dispatches requests; `zero_copy`: reads are answered by
/// `sendfile` from the segment files (the writer can).
async fn read_requests<R: AsyncRead + Unpin>(
    mut socket: R,
    zero_copy: bool,
    node: Node,
    budget: Arc<NodeBudget>,
    sink: ResponseSink,
    peer: SocketAddr,
) {
    let config = node.config();
    let max_body = config.max_frame_body();
    let max_read = config.limits.max_read_bytes;
    let request_slots = Arc::new(Semaphore::new(config.limits.max_in_flight_requests));
    let max_in_flight_bytes = config.limits.max_in_flight_bytes;
    let byte_slots = Arc::new(Semaphore::new(max_in_flight_bytes));
    let stall_timeout = config.limits.client_stall_timeout;
    let stall_check = tokio::time::sleep(stall_timeout);
    tokio::pin!(stall_check);
    // Only armed while the connection holds no role (auth on, no known
    // token yet): then it is closed when this fires.
    let auth_deadline = tokio::time::sleep(config.limits.auth_timeout);
    tokio::pin!(auth_deadline);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    // Whether `buffer` is an allocation made for the one (large) frame it
    // is receiving, so that frame may keep it without a copy.
    let mut dedicated = false;
    let mut shutdown = node.shutdown_signal();
    let mut access = ConnectionAccess::new(&config.auth);
    // The permit of the frame being received: taken as soon as its header
    // is in, before its body is buffered, so that a connection never holds
    // more than its in-flight bytes (plus its read buffer) in memory.
    let mut next_permit: Option<InFlightPermit> = None;
    loop {
        // Every whole frame already buffered.
        loop {
            let header = match FrameHeader::decode(&buffer, max_body) {
                Ok(Some(header)) => header,
                Ok(None) => break,
                Err(error) => {
                    reject_malformed(&buffer, &error, config.max_entry_size, &sink, peer);
                    linger(&mut socket).await;
                    return;
                }
            };
            let frame_len = header.frame_len();
            if next_permit.is_none() {
                // A read's answer is charged up front too: what it asks for
                // (if its body is already here), at most max_read.
                let answer_bytes = if header.opcode == opcode::READ {
                    match buffer.get(FRAME_HEADER_LEN + 8..FRAME_HEADER_LEN + 12) {
                        Some(asked) => u32::from_le_bytes(asked.try_into().expect("4 bytes"))
                            .min(max_read) as usize,
                        None => max_read as usize,
                    }
                } else {
                    0
                };
                let cost = (frame_len + answer_bytes).min(max_in_flight_bytes);
                let node_cost = (frame_len + REQUEST_OVERHEAD).min(budget.max_request_bytes);
                next_permit = tokio::select! {
                    permit = acquire(&request_slots, &byte_slots, cost, &budget, node_cost) => Some(permit),
                    _ = until_true(&mut shutdown) => return,
                };
            }
            if buffer.len() < frame_len {
                if frame_len > READ_CHUNK && !dedicated {
                    // A large frame gets an allocation of exactly its size,
                    // charged above, which it keeps (no copy, no slack).
                    let mut own = BytesMut::with_capacity(frame_len);
                    own.extend_from_slice(&buffer);
                    buffer = own;
                    dedicated = true;
                } else if !dedicated && !buffer.try_reclaim(frame_len - buffer.len()) {
                    buffer = fresh_read_buffer(&buffer, frame_len - buffer.len());
                }
                break;
            }
            let frame = buffer.split_to(frame_len).freeze();
            let owns_allocation = std::mem::take(&mut dedicated);
            if owns_allocation {
                debug_assert!(buffer.is_empty(), "a dedicated buffer holds one frame");
                buffer = BytesMut::with_capacity(READ_CHUNK);
            }
            let body = frame.slice(FRAME_HEADER_LEN..);
            drop(frame);
            let permit = next_permit.take().expect("taken above for this frame");
            if let Some(answer) = screen(&mut access, &config.auth, &header, &body, peer) {
                respond(
                    &sink,
                    header.opcode,
                    header.request_id,
                    answer,
                    Some(permit),
                );
                continue;
            }
            dispatch(
                &node,
                &budget,
                header,
                body,
                owns_allocation,
                permit,
                &sink,
                zero_copy,
            )
            .await;
        }
        if *shutdown.borrow() {
            return;
        }
        // Room to read into; a dedicated buffer has exactly its frame's.
        if !dedicated
            && buffer.capacity() - buffer.len() < READ_CHUNK / 4
            && !buffer.try_reclaim(READ_CHUNK)
        {
            buffer = fresh_read_buffer(&buffer, READ_CHUNK);
        }
        // A frame begun must keep coming: its charge is held meanwhile. The
        // timer is long-lived and only moved when it fires early, so the
        // hot path does not touch the timer wheel on every read.
        let waiting_since = Instant::now();
        let read = loop {
            tokio::select! {
                read = socket.read_buf(&mut buffer) => break read,
                () = &mut stall_check, if !buffer.is_empty() => {
                    let deadline = waiting_since + stall_timeout;
                    if Instant::now() >= deadline {
                        tracing::info!(%peer, "client stalled in the middle of a frame; closing");
                        return;
                    }
                    stall_check.as_mut().reset(deadline);
                }
                () = &mut auth_deadline, if access.holds_no_role() => {
                    tracing::debug!(%peer, timeout = ?config.limits.auth_timeout, "client sent no known token in time; closing");
                    return;
                }
                // The writer gave up on this client: nobody to answer.
                _ = sink.closed() => return,
                _ = until_true(&mut shutdown) => return,
            }
        };
        match read {
            // End of stream (a partial frame, if any, is dropped).
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%peer, %error, "read failed");
                return;
            }
        }
    }
}

fn stalled(stall_timeout: Duration) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("the client took none of its answers for {stall_timeout:?}"),
    )
}

/// Runs `io` to completion, failing if it makes no progress for
/// `stall_timeout`. It is polled once first, so a timer is armed only when
/// the socket is full.
async fn within_stall<T>(
    io: impl Future<Output = std::io::Result<T>>,
    stall_timeout: Duration,
) -> std::io::Result<T> {
    let mut io = pin!(io);
    match std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await {
        Poll::Ready(result) => result,
        Poll::Pending => tokio::time::timeout(stall_timeout, io)
            .await
            .map_err(|_| stalled(stall_timeout))?,
    }
}

/// Writes all of `bytes`, failing if the client takes none of them for
/// `stall_timeout` (a slow client that makes progress is fine).
async fn write_all_or_stall<W: AsyncWrite + Unpin>(
    socket: &mut W,
    mut bytes: &[u8],
    stall_timeout: Duration,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let written = within_stall(socket.write(bytes), stall_timeout).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Sends `span` from its segment file to `socket` with `sendfile(2)`:
/// bounded pieces, `EAGAIN` waits for the socket's readiness, failing if
/// the client takes none of it for `stall_timeout`.
async fn send_file_or_stall(
    socket: &TcpStream,
    span: &FileSpan,
    stall_timeout: Duration,
) -> std::io::Result<()> {
    let mut position = span.position();
    let end = position + span.len;
    while position < end {
        let count = (end - position).min(SENDFILE_MAX) as usize;
        // try_io clears the socket's readiness on EAGAIN, so `writable`
        // then waits for the next edge.
        let sent = socket.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(socket, span.file(), Some(&mut position), count)
                .map_err(std::io::Error::from)
        });
        match sent {
            // The file ends before the span: committed bytes are never
            // removed from an open segment file, so this is damage.
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the segment file ended inside a committed span",
                ))
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                tokio::time::timeout(stall_timeout, socket.writable())
                    .await
                    .map_err(|_| stalled(stall_timeout))??;
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// A new read buffer holding `buffer`'s bytes (part of one frame smaller
/// than a chunk) and room for `more`: at most two chunks, where
/// `BytesMut::reserve` could double a buffer still shared with frames.
fn fresh_read_buffer(buffer: &BytesMut, more: usize) -> BytesMut {
    debug_assert!(buffer.len() < READ_CHUNK, "only part of one small frame");
    let mut fresh = BytesMut::with_capacity(buffer.len() + more.max(READ_CHUNK));
    fresh.extend_from_slice(buffer);
    fresh
}

async fn acquire(
    requests: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
    cost: usize,
    budget: &NodeBudget,
    node_cost: usize,
) -> InFlightPermit {
    let cost = u32::try_from(cost).unwrap_or(u32::MAX);
    let node_cost = u32::try_from(node_cost).unwrap_or(u32::MAX);
    // The common case, everything free, without the futures' machinery
    // (a tenth of the append path's instructions in callgrind).
    if let Ok(request) = requests.clone().try_acquire_owned() {
        if let Ok(bytes) = bytes.clone().try_acquire_many_owned(cost) {
            if let Ok(node_bytes) = budget
                .request_bytes
                .clone()
                .try_acquire_many_owned(node_cost)
            {
                budget.note_held();
                return InFlightPermit {
                    _request: request,
                    _bytes: bytes,
                    _node_bytes: node_bytes,
                    _answer: None,
                };
            }
        }
    }
    let request = requests
        .clone()
        .acquire_owned()
        .await
        .expect("connection semaphores are never closed");
    let bytes = bytes
        .clone()
        .acquire_many_owned(cost)
        .await
        .expect("connection semaphores are never closed");
    let node_bytes = budget
        .request_bytes
        .clone()
        .acquire_many_owned(node_cost)
        .await
        .expect("node budgets are never closed");
    budget.note_held();
    InFlightPermit {
        _request: request,
        _bytes: bytes,
        _node_bytes: node_bytes,
        _answer: None,
    }
}

/// Answers a frame whose header cannot be trusted, then closes.
fn reject_malformed(
    buffer: &[u8],
    error: &FrameError,
    max_entry_size: u32,
    sink: &ResponseSink,
    peer: SocketAddr,
) {
    tracing::debug!(%peer, %error, "malformed frame; closing the connection");
    // decode() only fails with a whole header present.
    let request_id = u64::from_le_bytes(buffer[8..16].try_into().expect("8 bytes"));
    let frame_opcode = buffer[4];
    let answer = match error {
        FrameError::TooLarge { .. } if frame_opcode == opcode::APPEND => ServerError::TooLarge {
            max: max_entry_size,
        },
        other => ServerError::BadRequest {
            message: format!("malformed frame, closing the connection: {other}"),
        },
    };
    respond(sink, frame_opcode, request_id, Body::Error(answer), None);
    drop(sink.send(Outgoing::Close));
}

/// Reads and discards for a moment so the peer gets our last frame and a
/// clean close rather than a reset.
async fn linger<R: AsyncRead + Unpin>(socket: &mut R) {
    let mut discard = vec![0u8; 16 * 1024];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER, async {
        while total < LINGER_BYTES {
            match socket.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// Answers an AUTH request, or a request the connection has no role for;
/// `None` lets the request through to [`dispatch`].
fn screen(
    access: &mut ConnectionAccess,
    auth: &crate::auth::AuthConfig,
    header: &FrameHeader,
    body: &[u8],
    peer: SocketAddr,
) -> Option<Body> {
    if header.opcode != opcode::AUTH {
        return access.admit(header.opcode).err().map(Body::Error);
    }
    let answer = match Request::parse(header, body) {
        Ok(Request::Auth { token }) => access
            .authenticate(auth, token, peer)
            .map(|roles| Body::Roles(roles.bits())),
        Ok(_) => unreachable!("an AUTH opcode parses as an AUTH request or not at all"),
        Err(error) => Err(error),
    };
    Some(answer.unwrap_or_else(Body::Error))
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    node: &Node,
    budget: &Arc<NodeBudget>,
    header: FrameHeader,
    body: Bytes,
    owns_allocation: bool,
    permit: InFlightPermit,
    sink: &ResponseSink,
    zero_copy: bool,
) {
    let request_id = header.request_id;
    let parsed = Request::parse(&header, &body).map(|request| match request {
        Request::Append { no_wait, .. } => Parsed::Append {
            no_wait,
            producer: None,
        },
        Request::Upload { .. } => Parsed::Upload,
        Request::AppendOnce {
            producer,
            retry,
            no_wait,
            ..
        } => Parsed::Append {
            no_wait,
            producer: Some(ProducerAppend {
                tag: producer,
                retry,
            }),
        },
        Request::Read {
            offset,
            max_bytes,
            wait_ms,
            linearizable,
        } => Parsed::Read {
            offset,
            max_bytes,
            wait_ms,
            linearizable,
        },
        Request::Status => Parsed::Status,
        Request::ClusterStatus => Parsed::ClusterStatus,
        Request::Admin(_) => Parsed::Admin,
        Request::Auth { .. } => Parsed::Auth,
    });
    match parsed {
        Err(error) => respond(
            sink,
            header.opcode,
            request_id,
            Body::Error(error),
            Some(permit),
        ),
        Ok(Parsed::Auth) => respond(
            sink,
            opcode::AUTH,
            request_id,
            Body::Error(ServerError::BadRequest {
                message: "AUTH is answered by the connection".to_string(),
            }),
            Some(permit),
        ),
        Ok(Parsed::Status) => respond(
            sink,
            opcode::STATUS,
            request_id,
            Body::Status(node.status()),
            Some(permit),
        ),
        Ok(Parsed::ClusterStatus) => {
            let node = node.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let body = match node.cluster_status().await {
                    Ok(status) => Body::ClusterStatus(status.encode()),
                    Err(error) => Body::Error(error),
                };
                respond(
                    &sink,
                    opcode::CLUSTER_STATUS,
                    request_id,
                    body,
                    Some(permit),
                );
            });
        }
        Ok(Parsed::Admin) => {
            let node = node.clone();
            let sink = sink.clone();
            // An add-node may wait long (the new node catches up): its own
            // task, holding its in-flight permit like any request.
            tokio::spawn(async move {
                let result = match Request::parse(&header, &body) {
                    Ok(Request::Admin(admin)) => {
                        tokio::select! {
                            result = node.admin(admin) => result,
                            _ = sink.closed() => return,
                        }
                    }
                    // The same bytes parsed as an admin request above.
                    _ => Err(ServerError::BadRequest {
                        message: "malformed admin request".to_string(),
                    }),
                };
                let body = match result {
                    Ok(value) => Body::Admin(value),
                    Err(error) => Body::Error(error),
                };
                respond(&sink, opcode::ADMIN, request_id, body, Some(permit));
            });
        }
        Ok(Parsed::Upload) => {
            // Body: digest (32 bytes), then the payload (checked by parse).
            let digest: loglog_proto::upload::Digest = body[..loglog_proto::upload::DIGEST_LEN]
                .try_into()
                .expect("parse checked the digest's length");
            let payload = body.slice(loglog_proto::upload::DIGEST_LEN..);
            let payload = if owns_allocation {
                payload
            } else {
                Bytes::copy_from_slice(&payload)
            };
            let body = match node.upload(digest, payload) {
                Ok(()) => Body::Empty,
                Err(error) => Body::Error(error),
            };
            respond(sink, opcode::UPLOAD, request_id, body, Some(permit));
        }
        Ok(Parsed::Append { no_wait, producer }) => {
            let reply = Reply::Connection(PendingResponse {
                sink: sink.clone(),
                request_id,
                permit,
                received: Instant::now(),
            });
            node.node_metrics().append_bytes.inc_by(body.len() as u64);
            // A small payload shares its read buffer with other frames:
            // copied, it pins no more than it is charged while queued.
            let payload = if owns_allocation {
                body
            } else {
                Bytes::copy_from_slice(&body)
            };
            let uploaded = loglog_proto::wire::append_uploaded(&header);
            node.submit_append(payload, producer, uploaded, !no_wait, reply)
                .await;
        }
        Ok(Parsed::Read {
            offset,
            max_bytes,
            wait_ms,
            linearizable,
        }) => {
            let node = node.clone();
            let sink = sink.clone();
            let budget = budget.clone();
            let mut permit = permit;
            tokio::spawn(async move {
                let wait = Duration::from_millis(u64::from(wait_ms));
                let read = async {
                    // A cluster member confirms its leadership first (a
                    // single node is its own leader).
                    if linearizable {
                        node.linearizable_barrier().await?;
                    }
                    if zero_copy {
                        locate_within_budget(&node, &budget, offset, max_bytes, wait).await
                    } else {
                        read_within_budget(&node, &budget, offset, max_bytes, wait)
                            .await
                            .map(|(chunk, answer)| {
                                let body = Body::Read {
                                    commit: chunk.commit_offset,
                                    bytes: chunk.bytes,
                                };
                                (body, answer)
                            })
                    }
                };
                let result = tokio::select! {
                    result = read => result,
                    // The connection is gone: nobody to answer.
                    _ = sink.closed() => return,
                };
                let body = match result {
                    Ok((body, answer)) => {
                        permit._answer = answer;
                        body
                    }
                    Err(error) => Body::Error(error),
                };
                respond(&sink, opcode::READ, request_id, body, Some(permit));
            });
        }
    }
}

/// [`Node::read`] with its answer charged to the node's read budget: after
/// the long-poll wait (a waiting read holds no answer bytes), before the
/// log is read. An entry larger than the charge is charged its full length
/// before it is read. Returns the permit the answer holds until it is sent.
async fn read_within_budget(
    node: &Node,
    budget: &NodeBudget,
    offset: u64,
    max_bytes: u32,
    wait: Duration,
) -> Result<(Chunk, Option<OwnedSemaphorePermit>), ServerError> {
    let commit = node.long_poll(offset, wait).await?;
    read_below_commit(node, budget, offset, max_bytes, commit).await
}

/// The reading half of [`read_within_budget`], once `commit` is known.
async fn read_below_commit(
    node: &Node,
    budget: &NodeBudget,
    offset: u64,
    max_bytes: u32,
    commit: u64,
) -> Result<(Chunk, Option<OwnedSemaphorePermit>), ServerError> {
    if offset >= commit {
        // Nothing to read (or an error): no answer bytes.
        return match node.read_committed(offset, max_bytes, commit, true).await? {
            CommittedRead::Chunk(chunk) => Ok((chunk, None)),
            CommittedRead::EntryLarger { .. } => unreachable!("whole first entry asked"),
        };
    }
    let limit = max_bytes
        .min(node.config().limits.max_read_bytes)
        .max(ENTRY_HEADER_LEN as u32);
    let charge = u64::from(limit).min(commit - offset);
    let mut answer = budget.charge_read(charge).await;
    match node.read_committed(offset, limit, commit, false).await? {
        CommittedRead::Chunk(chunk) => {
            debug_assert!(chunk.bytes.len() as u64 <= charge);
            Ok((chunk, Some(answer)))
        }
        CommittedRead::EntryLarger { entry_len } => {
            // Charged in full (or the whole budget) before it is read; the
            // first charge is given back first, so two such reads cannot
            // each hold part of the budget while waiting for the rest.
            drop(answer);
            answer = budget.charge_read(entry_len).await;
            match node.read_committed(offset, limit, commit, true).await? {
                CommittedRead::Chunk(chunk) => Ok((chunk, Some(answer))),
                CommittedRead::EntryLarger { .. } => unreachable!("whole first entry asked"),
            }
        }
    }
}

/// [`read_within_budget`] for the zero-copy path: the answer is located
/// in the segment file, not read. It is charged to the read budget all the
/// same (what it may answer, then a larger first entry in full), so reads
/// in flight are bounded the same way whichever path serves them.
async fn locate_within_budget(
    node: &Node,
    budget: &NodeBudget,
    offset: u64,
    max_bytes: u32,
    wait: Duration,
) -> Result<(Body, Option<OwnedSemaphorePermit>), ServerError> {
    let commit = node.long_poll(offset, wait).await?;
    let limit = max_bytes
        .min(node.config().limits.max_read_bytes)
        .max(ENTRY_HEADER_LEN as u32);
    let charge = u64::from(limit).min(commit.saturating_sub(offset));
    if charge < COPY_BODY_BELOW as u64 {
        // A small answer is copied into the connection's buffer with the
        // answers around it (one write for many), as on the copying path.
        let (chunk, answer) = read_below_commit(node, budget, offset, max_bytes, commit).await?;
        let body = Body::Read {
            commit: chunk.commit_offset,
            bytes: chunk.bytes,
        };
        return Ok((body, answer));
    }
    let mut answer = Some(budget.charge_read(charge).await);
    let Some(span) = node.locate_committed(offset, limit, commit).await? else {
        return Ok((
            Body::Read {
                commit,
                bytes: Vec::new(),
            },
            None,
        ));
    };
    if span.len > charge {
        // One entry larger than asked: charged in full (the first charge
        // given back first, as in read_within_budget).
        drop(answer.take());
        answer = Some(budget.charge_read(span.len).await);
    }
    Ok((Body::ReadFile { commit, span }, answer))
}

async fn write_responses<W: AnswerSocket>(
    mut socket: W,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    peer: SocketAddr,
    stall_timeout: Duration,
    metrics: &NodeMetrics,
) {
    // Never grows: it is flushed at FLUSH_AT, and one more small response
    // fits (larger read bodies are written from their own buffer).
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT + SMALL_RESPONSE_MAX);
    let result: std::io::Result<()> = async {
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            let mut close = false;
            while let Some(message) = next.take() {
                let mut response = match message {
                    Outgoing::Close => {
                        close = true;
                        break;
                    }
                    Outgoing::Response(response) => response,
                };
                // Held until the bytes it covers are written (a large body)
                // or copied into `out` (counted as connection buffer).
                let permit = response.permit.take();
                count_response(metrics, &response);
                match encode_response(response, &mut out) {
                    None => {}
                    Some(LargeBody::Bytes(large_body)) => {
                        write_all_or_stall(&mut socket, &out, stall_timeout).await?;
                        out.clear();
                        write_all_or_stall(&mut socket, &large_body, stall_timeout).await?;
                    }
                    Some(LargeBody::File(span)) => {
                        write_all_or_stall(&mut socket, &out, stall_timeout).await?;
                        out.clear();
                        let tcp = socket.zero_copy_socket().ok_or_else(|| {
                            // Zero-copy answers are made only for
                            // connections whose socket can take them.
                            std::io::Error::other("a file answer on a connection without sendfile")
                        })?;
                        send_file_or_stall(tcp, &span, stall_timeout).await?;
                    }
                }
                drop(permit);
                debug_assert!(out.len() < FLUSH_AT + SMALL_RESPONSE_MAX);
                if out.len() >= FLUSH_AT {
                    break;
                }
                next = queue.try_recv().ok();
            }
            if !out.is_empty() {
                write_all_or_stall(&mut socket, &out, stall_timeout).await?;
                out.clear();
            }
            // TLS may hold the last record back until flushed (TCP: no-op).
            within_stall(socket.flush(), stall_timeout).await?;
            if close {
                break;
            }
        }
        socket.shutdown().await
    }
    .await;
    if let Err(error) = result {
        if error.kind() == std::io::ErrorKind::TimedOut {
            tracing::info!(%peer, %error, "closing a stalled client");
        } else {
            tracing::debug!(%peer, %error, "write failed");
        }
    }
}

fn count_response(metrics: &NodeMetrics, response: &Response) {
    match &response.body {
        Body::Offset(_) => {
            metrics.appends.inc();
            if let Some(received) = response.append_received {
                metrics
                    .commit_latency
                    .observe(received.elapsed().as_secs_f64());
            }
        }
        Body::Read { bytes, .. } => {
            metrics.reads.inc();
            metrics.read_bytes.inc_by(bytes.len() as u64);
        }
        Body::ReadFile { span, .. } => {
            metrics.reads.inc();
            metrics.read_bytes.inc_by(span.len);
        }
        Body::Error(error) => metrics.error(error),
        Body::Status(_)
        | Body::ClusterStatus(_)
        | Body::Admin(_)
        | Body::Empty
        | Body::Roles(_) => {}
    }
}

/// A read body written after the connection's buffer, not copied into it.
enum LargeBody {
    Bytes(Vec<u8>),
    /// Sent from the segment file with `sendfile`.
    File(FileSpan),
}

/// Encodes `response` into `out`; a large read body is returned instead, to
/// be written after `out` without a copy.
fn encode_response(response: Response, out: &mut Vec<u8>) -> Option<LargeBody> {
    let (opcode, request_id) = (response.opcode, response.request_id);
    match response.body {
        Body::Offset(offset) | Body::Admin(offset) => {
            out.extend_from_slice(&ok_response_header(opcode, request_id, 8));
            out.extend_from_slice(&offset.to_le_bytes());
            None
        }
        Body::Empty => {
            out.extend_from_slice(&ok_response_header(opcode, request_id, 0));
            None
        }
        Body::Status(status) => {
            let encoded = status.encode();
            out.extend_from_slice(&ok_response_header(
                opcode,
                request_id,
                encoded.len() as u32,
            ));
            out.extend_from_slice(&encoded);
            None
        }
        Body::ClusterStatus(encoded) => {
            // Bounded by the member count (at most 510 records of < 560 bytes).
            let body_len = u32::try_from(encoded.len()).expect("a cluster status fits a frame");
            out.extend_from_slice(&ok_response_header(opcode, request_id, body_len));
            out.extend_from_slice(&encoded);
            None
        }
        Body::Error(error) => {
            encode_error_response(opcode, request_id, &error, out);
            None
        }
        Body::Roles(roles) => {
            out.extend_from_slice(&ok_response_header(opcode, request_id, 1));
            out.push(roles);
            None
        }
        Body::Read { commit, bytes } => {
            // Bounded by max read bytes or one entry (<= max entry size),
            // both far below u32::MAX.
            let body_len = u32::try_from(READ_RESPONSE_PREFIX_LEN + bytes.len())
                .expect("a read answer fits a frame");
            out.extend_from_slice(&ok_response_header(opcode, request_id, body_len));
            out.extend_from_slice(&commit.to_le_bytes());
            if bytes.len() >= COPY_BODY_BELOW {
                Some(LargeBody::Bytes(bytes))
            } else {
                out.extend_from_slice(&bytes);
                None
            }
        }
        Body::ReadFile { commit, span } => {
            // Bounded like Body::Read: by max read bytes or one entry.
            let body_len = u32::try_from(READ_RESPONSE_PREFIX_LEN as u64 + span.len)
                .expect("a read answer fits a frame");
            out.extend_from_slice(&ok_response_header(opcode, request_id, body_len));
            out.extend_from_slice(&commit.to_le_bytes());
            Some(LargeBody::File(span))
        }
    }
}
