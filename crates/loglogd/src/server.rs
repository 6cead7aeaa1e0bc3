//! The TCP server: one reader and one writer per connection.
//!
//! * The reader decodes frames ([`FrameHeader::decode`]) from one growing
//!   buffer; an append's payload is a slice of that buffer (no copy) handed
//!   to the append queue. Requests are dispatched as they arrive
//!   (pipelined); reads run as their own tasks so a long-poll blocks nothing.
//! * Every request holds a permit of the connection's in-flight bounds
//!   (requests and bytes) until its response is encoded. With no permit
//!   left the reader stops reading the socket: TCP backpressure.
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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use loglog_proto::wire::{
    encode_error_response, ok_response_header, opcode, FrameError, FrameHeader, NodeStatus,
    Request, ServerError, FRAME_HEADER_LEN, READ_RESPONSE_PREFIX_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::node::Node;
use crate::pipeline::Reply;

/// Bytes the reader asks the socket for at a time (at least).
const READ_CHUNK: usize = 64 * 1024;
/// The writer flushes once this much is buffered, even if more is queued.
const FLUSH_AT: usize = 256 * 1024;
/// Read bodies larger than this are written straight from their buffer.
const COPY_BODY_BELOW: usize = 64 * 1024;
/// How long shutdown waits for connections to deliver their last answers.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection keeps reading (and discarding) so that the
/// peer gets our last frame rather than a reset.
const LINGER: Duration = Duration::from_millis(500);
const LINGER_BYTES: usize = 1024 * 1024;
/// Connections being refused (answered `Busy`) at once.
const MAX_CONCURRENT_REFUSALS: usize = 64;

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
    /// Released once the response is encoded.
    _permit: Option<InFlightPermit>,
}

enum Body {
    Offset(u64),
    Read { commit: u64, bytes: Vec<u8> },
    Status(NodeStatus),
    Error(ServerError),
}

/// A request's share of its connection's in-flight bounds.
pub(crate) struct InFlightPermit {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// The answer address of an append that came over TCP.
pub(crate) struct PendingResponse {
    sink: ResponseSink,
    request_id: u64,
    permit: InFlightPermit,
}

impl PendingResponse {
    pub(crate) fn answer_append(self, result: Result<u64, ServerError>) {
        let body = match result {
            Ok(offset) => Body::Offset(offset),
            Err(error) => Body::Error(error),
        };
        respond(
            &self.sink,
            opcode::APPEND,
            self.request_id,
            body,
            Some(self.permit),
        );
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
        _permit: permit,
    })));
}

/// Accepts connections until shutdown, then waits (bounded) for them to
/// deliver their last answers.
pub(crate) async fn serve(listener: TcpListener, node: Node, stopped: watch::Sender<bool>) {
    let limits = node.config().limits.clone();
    let connection_slots = Arc::new(Semaphore::new(limits.max_connections));
    let refusal_slots = Arc::new(Semaphore::new(MAX_CONCURRENT_REFUSALS));
    let mut connections = JoinSet::new();
    let mut shutdown = node.shutdown_signal();
    loop {
        tokio::select! {
            _ = until_true(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match connection_slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(stream, peer, node.clone(), slot));
                    }
                    // Refusals are bounded too: past the bound a connection
                    // is closed without a word.
                    Err(_) => match refusal_slots.clone().try_acquire_owned() {
                        Ok(slot) => {
                            connections.spawn(refuse_connection(stream, peer, slot));
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

async fn refuse_connection(mut stream: TcpStream, peer: SocketAddr, _slot: OwnedSemaphorePermit) {
    tracing::warn!(%peer, "refusing connection: too many connections");
    let mut frame = Vec::new();
    encode_error_response(0, 0, &ServerError::Busy, &mut frame);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&frame).await?;
        stream.shutdown().await
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    node: Node,
    _slot: OwnedSemaphorePermit,
) {
    tracing::debug!(%peer, "connection opened");
    // Responses are small and latency matters: no Nagle.
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "set_nodelay failed");
    }
    let (read_half, write_half) = stream.into_split();
    let (sink, queue) = mpsc::unbounded_channel();
    tokio::join!(
        read_requests(read_half, node, sink, peer),
        write_responses(write_half, queue, peer)
    );
    tracing::debug!(%peer, "connection closed");
}

/// What a request needs once parsed (the payload is the frame body itself).
enum Parsed {
    Append {
        no_wait: bool,
    },
    Read {
        offset: u64,
        max_bytes: u32,
        wait_ms: u32,
    },
    Status,
}

async fn read_requests(
    mut socket: OwnedReadHalf,
    node: Node,
    sink: ResponseSink,
    peer: SocketAddr,
) {
    let config = node.config();
    let max_body = config.max_frame_body();
    let max_read = config.limits.max_read_bytes;
    let request_slots = Arc::new(Semaphore::new(config.limits.max_in_flight_requests));
    let max_in_flight_bytes = config.limits.max_in_flight_bytes;
    let byte_slots = Arc::new(Semaphore::new(max_in_flight_bytes));
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    let mut shutdown = node.shutdown_signal();
    // The permit of the frame being received: taken as soon as its header
    // is in, before its body is buffered, so that a connection never holds
    // more than its in-flight bytes (plus one read chunk) in memory.
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
                let cost = (header.frame_len() + answer_bytes).min(max_in_flight_bytes);
                let cost = u32::try_from(cost).unwrap_or(u32::MAX);
                next_permit = tokio::select! {
                    permit = acquire(&request_slots, &byte_slots, cost) => Some(permit),
                    _ = until_true(&mut shutdown) => return,
                };
            }
            let frame_len = header.frame_len();
            if buffer.len() < frame_len {
                buffer.reserve(frame_len - buffer.len());
                break;
            }
            let frame = buffer.split_to(frame_len).freeze();
            let body = frame.slice(FRAME_HEADER_LEN..);
            let permit = next_permit.take().expect("taken above for this frame");
            dispatch(&node, header, body, permit, &sink).await;
        }
        if *shutdown.borrow() {
            return;
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK / 4 {
            buffer.reserve(READ_CHUNK);
        }
        tokio::select! {
            read = socket.read_buf(&mut buffer) => match read {
                // End of stream (a partial frame, if any, is dropped).
                Ok(0) => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%peer, %error, "read failed");
                    return;
                }
            },
            _ = until_true(&mut shutdown) => return,
        }
    }
}

async fn acquire(requests: &Arc<Semaphore>, bytes: &Arc<Semaphore>, cost: u32) -> InFlightPermit {
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
    InFlightPermit {
        _request: request,
        _bytes: bytes,
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
async fn linger(socket: &mut OwnedReadHalf) {
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

async fn dispatch(
    node: &Node,
    header: FrameHeader,
    body: Bytes,
    permit: InFlightPermit,
    sink: &ResponseSink,
) {
    let request_id = header.request_id;
    let parsed = Request::parse(&header, &body).map(|request| match request {
        Request::Append { no_wait, .. } => Parsed::Append { no_wait },
        Request::Read {
            offset,
            max_bytes,
            wait_ms,
            // A single node is its own leader: every read is linearizable.
            linearizable: _,
        } => Parsed::Read {
            offset,
            max_bytes,
            wait_ms,
        },
        Request::Status => Parsed::Status,
    });
    match parsed {
        Err(error) => respond(
            sink,
            header.opcode,
            request_id,
            Body::Error(error),
            Some(permit),
        ),
        Ok(Parsed::Status) => respond(
            sink,
            opcode::STATUS,
            request_id,
            Body::Status(node.status()),
            Some(permit),
        ),
        Ok(Parsed::Append { no_wait }) => {
            let reply = Reply::Connection(PendingResponse {
                sink: sink.clone(),
                request_id,
                permit,
            });
            node.submit_append(body, !no_wait, reply).await;
        }
        Ok(Parsed::Read {
            offset,
            max_bytes,
            wait_ms,
        }) => {
            let node = node.clone();
            let sink = sink.clone();
            tokio::spawn(async move {
                let wait = Duration::from_millis(u64::from(wait_ms));
                let result = tokio::select! {
                    result = node.read(offset, max_bytes, wait) => result,
                    // The connection is gone: nobody to answer.
                    _ = sink.closed() => return,
                };
                let body = match result {
                    Ok(chunk) => Body::Read {
                        commit: chunk.commit_offset,
                        bytes: chunk.bytes,
                    },
                    Err(error) => Body::Error(error),
                };
                respond(&sink, opcode::READ, request_id, body, Some(permit));
            });
        }
    }
}

async fn write_responses(
    mut socket: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    peer: SocketAddr,
) {
    let mut out: Vec<u8> = Vec::with_capacity(FLUSH_AT + READ_CHUNK);
    let result: std::io::Result<()> = async {
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            let mut close = false;
            while let Some(message) = next.take() {
                let response = match message {
                    Outgoing::Close => {
                        close = true;
                        break;
                    }
                    Outgoing::Response(response) => response,
                };
                if let Some(large_body) = encode_response(response, &mut out) {
                    socket.write_all(&out).await?;
                    out.clear();
                    socket.write_all(&large_body).await?;
                }
                if out.len() >= FLUSH_AT {
                    break;
                }
                next = queue.try_recv().ok();
            }
            if !out.is_empty() {
                socket.write_all(&out).await?;
                out.clear();
            }
            if close {
                break;
            }
        }
        socket.shutdown().await
    }
    .await;
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "write failed");
    }
}

/// Encodes `response` into `out`; a large read body is returned instead, to
/// be written after `out` without a copy.
fn encode_response(response: Response, out: &mut Vec<u8>) -> Option<Vec<u8>> {
    let (opcode, request_id) = (response.opcode, response.request_id);
    match response.body {
        Body::Offset(offset) => {
            out.extend_from_slice(&ok_response_header(opcode, request_id, 8));
            out.extend_from_slice(&offset.to_le_bytes());
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
        Body::Error(error) => {
            encode_error_response(opcode, request_id, &error, out);
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
                Some(bytes)
            } else {
                out.extend_from_slice(&bytes);
                None
            }
        }
    }
}
