//! One pipelined TCP connection to one node.
//!
//! Callers enqueue frames for a writer task and get a oneshot receiver for
//! the answer; a reader task matches answers to requests by id (answers may
//! arrive in any order). A semaphore bounds the requests in flight: a permit
//! is taken before a request is sent and given back when its answer (or the
//! connection's failure) arrives, so the pending map, the writer's queue and
//! the node's work for this connection are all bounded.
//!
//! When the connection fails (IO error, end of stream, protocol violation,
//! or a request left unanswered past its deadline), every pending request
//! fails with a typed error, and so does every later request: a failed
//! connection is never reused.
//!
//! **Deadlines.** A node that stops answering without closing the
//! connection (a stopped process, a black-holed link) would otherwise keep
//! its callers waiting until the OS gives up on the socket, which can take
//! many minutes. Each request must be answered within the client's
//! `request_timeout` of being sent, plus the time the node may rightly take
//! (a read's long-poll wait, an admin request's own bound); a watchdog in
//! the reader fails the connection when one is not, as `TimedOut` IO, which
//! callers already treat as "outcome unknown, reconnect".

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use loglog_proto::wire::{
    opcode, FrameHeader, ServerError, CONNECTION_OPCODE, FRAME_HEADER_LEN, STATUS_OK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::Error;
use crate::tls::ClientTls;

/// Frames smaller than this are copied into the writer's batch buffer;
/// larger bodies are written straight from their own buffer.
const COPY_BODY_LIMIT: usize = 64 * 1024;
/// The writer gathers queued frames into one write up to about this size.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// Socket reads ask for at least this much room.
const READ_CHUNK: usize = 64 * 1024;
/// A large body is buffered in steps of at most this, so a hostile length
/// field cannot make the client allocate more than it actually receives.
const MAX_RESERVE_STEP: usize = 4 * 1024 * 1024;
/// What an admin request may take on top of the request timeout: a node
/// answers adding a member once it has caught up, within two minutes
/// (`loglogd`'s `ADD_NODE_TIMEOUT`), or `TimedOut`.
const ADMIN_ALLOWANCE: Duration = Duration::from_secs(130);
/// Where a read request's long-poll wait (u32, milliseconds) sits in its
/// body: after the offset (u64) and max bytes (u32).
const READ_WAIT_MS_AT: usize = 12;

/// The answer to one request: its body on success, or a typed error.
pub(crate) type Reply = Result<Bytes, Error>;

/// Why a connection stopped; turned into an [`Error`] for every request.
#[derive(Clone, Debug)]
enum Failure {
    Io(Arc<io::Error>),
    Protocol(String),
    /// The node refused the whole connection before reading any request
    /// (an opcode-0 answer, e.g. `Busy` past its connection limit).
    Refused(ServerError),
}

impl Failure {
    fn to_error(&self, addr: &str) -> Error {
        match self {
            Failure::Io(source) => Error::Io {
                addr: addr.to_string(),
                source: Arc::clone(source),
            },
            Failure::Protocol(message) => Error::Protocol {
                addr: addr.to_string(),
                message: message.clone(),
            },
            Failure::Refused(source) => Error::Server {
                addr: addr.to_string(),
                source: source.clone(),
            },
        }
    }
}

/// A request sent and not yet answered.
struct Pending {
    opcode: u8,
    reply: oneshot::Sender<Reply>,
    /// Past this, unanswered, the connection is failed (see the module docs).
    deadline: Instant,
    /// Released when the answer arrives: this is what bounds in-flight requests.
    _permit: OwnedSemaphorePermit,
}

#[derive(Default)]
struct State {
    next_request_id: u64,
    /// foldhash, not SipHash: ids are ours (sequential), and this map is
    /// hit twice per request.
    pending: HashMap<u64, Pending, foldhash::fast::RandomState>,
    failure: Option<Failure>,
}

/// What the caller side, the reader and the writer share.
struct Shared {
    addr: String,
    request_timeout: Duration,
    in_flight: Arc<Semaphore>,
    state: Mutex<State>,
    /// Set when the [`Connection`] handle is dropped: the reader stops once
    /// every pending request is answered.
    closing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the
        // state stays consistent anyway (every update is a single step).
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the connection failed and fails every pending request. Only
    /// the first failure is kept.
    fn fail(&self, failure: Failure) {
        let pending = {
            let mut state = self.lock();
            if state.failure.is_none() {
                state.failure = Some(failure);
            }
            std::mem::take(&mut state.pending)
        };
        self.in_flight.close();
        let failure = self.failure().expect("failure was just recorded");
        for (_, request) in pending {
            // The caller may have stopped waiting; nothing to do then.
            let _ = request.reply.send(Err(failure.to_error(&self.addr)));
        }
    }

    fn failure(&self) -> Option<Failure> {
        self.lock().failure.clone()
    }
}

/// A frame queued for the writer task.
struct Frame {
    header: [u8; FRAME_HEADER_LEN],
    body: Bytes,
}

/// A connection before it is split into its reader and writer halves.
enum Opened {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Handle to one open connection. Dropping it closes the connection once
/// every request already sent is answered.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    frames: mpsc::Sender<Frame>,
    reader: AbortHandle,
}

impl Connection {
    /// Opens a connection to `addr` (resolved by the system) and starts its
    /// reader and writer tasks on the current tokio runtime.
    pub(crate) async fn open(
        addr: &str,
        tls: Option<&ClientTls>,
        max_in_flight: usize,
        max_response_body: u32,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Connection, Error> {
        let connect_error = |source| Error::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(connect_error(error)),
            Err(_) => {
                return Err(connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {connect_timeout:?}"),
                )))
            }
        };
        // Small requests must not wait for Nagle: latency is the point.
        stream.set_nodelay(true).map_err(connect_error)?;
        let stream = match tls {
            None => Opened::Plain(stream),
            Some(tls) => {
                let name = tls.server_name_for(addr).map_err(connect_error)?;
                let handshake = tls.connector().connect(name, stream);
                match tokio::time::timeout(connect_timeout, handshake).await {
                    Ok(Ok(stream)) => Opened::Tls(Box::new(stream)),
                    Ok(Err(error)) => {
                        return Err(connect_error(io::Error::new(
                            error.kind(),
                            format!("TLS handshake failed: {error}"),
                        )))
                    }
                    Err(_) => {
                        return Err(connect_error(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("TLS handshake: no answer within {connect_timeout:?}"),
                        )))
                    }
                }
            }
        };
        assert!(
            max_in_flight > 0,
            "at least one request must be allowed in flight"
        );
        assert!(!request_timeout.is_zero(), "a request must get some time");
        let shared = Arc::new(Shared {
            addr: addr.to_string(),
            request_timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            state: Mutex::new(State::default()),
            closing: AtomicBool::new(false),
        });
        // As many slots as permits: a caller holding a permit never waits here.
        let (frames, queued) = mpsc::channel(max_in_flight);
        // One reader and one writer either way; only the halves differ.
        let reader = match stream {
            Opened::Tls(stream) => {
                let (read_half, write_half) = tokio::io::split(*stream);
                tokio::spawn(write_loop(Arc::clone(&shared), write_half, queued));
                tokio::spawn(read_loop(Arc::clone(&shared), read_half, max_response_body))
            }
            Opened::Plain(stream) => {
                let (read_half, write_half) = stream.into_split();
                tokio::spawn(write_loop(Arc::clone(&shared), write_half, queued));
                tokio::spawn(read_loop(Arc::clone(&shared), read_half, max_response_body))
            }
        }
        .abort_handle();
        Ok(Connection {
            shared,
            frames,
            reader,
        })
    }

    pub(crate) fn addr(&self) -> &str {
        &self.shared.addr
    }

    /// True once the connection has failed; it is then never used again.
    pub(crate) fn is_failed(&self) -> bool {
        self.shared.lock().failure.is_some()
    }

    /// Sends one request and returns where its answer will arrive. Waits
    /// while the in-flight bound is reached. Once this returns, the frame is
    /// queued behind every frame of earlier calls: requests are sent in the
    /// order of the calls that returned.
    pub(crate) async fn send(
        &self,
        opcode: u8,
        flags: u8,
        body: Bytes,
    ) -> Result<oneshot::Receiver<Reply>, Error> {
        let body_len = u32::try_from(body.len()).map_err(|_| {
            Error::InvalidArgument(format!("request body of {} bytes is too large", body.len()))
        })?;
        let failed = || {
            self.shared
                .failure()
                .expect("the semaphore is closed only after a failure is recorded")
                .to_error(&self.shared.addr)
        };
        let permit = Arc::clone(&self.shared.in_flight)
            .acquire_owned()
            .await
            .map_err(|_| failed())?;
        let (reply, answer) = oneshot::channel();
        let deadline = Instant::now() + self.shared.request_timeout + allowance(opcode, &body);
        let request_id = {
            let mut state = self.shared.lock();
            if let Some(failure) = &state.failure {
                return Err(failure.to_error(&self.shared.addr));
            }
            // Ids start at 1: 0 is the node's connection-level answer.
            state.next_request_id += 1;
            let request_id = state.next_request_id;
            let previous = state.pending.insert(
                request_id,
                Pending {
                    opcode,
                    reply,
                    deadline,
                    _permit: permit,
                },
            );
            assert!(previous.is_none(), "request ids are never reused");
            request_id
        };
        let header = FrameHeader {
            body_len,
            opcode,
            aux: flags,
            request_id,
        }
        .encode();
        // Never full: the queue has a slot per permit, and this request
        // holds one. Sending without waiting keeps this call cancel-safe
        // (a request is either queued or not in the pending map at all).
        if let Err(error) = self.frames.try_send(Frame { header, body }) {
            // The writer stops only after recording a failure, which has
            // already answered this request with the error.
            let reason = match error {
                mpsc::error::TrySendError::Full(_) => "connection writer queue overflowed",
                mpsc::error::TrySendError::Closed(_) => "connection writer stopped",
            };
            self.shared.fail(Failure::Io(Arc::new(io::Error::new(
                io::ErrorKind::BrokenPipe,
                reason,
            ))));
        }
        Ok(answer)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Dropping `frames` ends the writer, which half-closes the socket.
        // The reader goes on until the requests already sent are answered
        // (their callers may still be waiting), and stops at once if none is.
        self.shared.closing.store(true, Ordering::SeqCst);
        if self.shared.lock().pending.is_empty() {
            self.reader.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut socket: W,
    mut queued: mpsc::Receiver<Frame>,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(WRITE_BATCH_BYTES);
    while let Some(first) = queued.recv().await {
        let mut next = Some(first);
        let mut result = Ok(());
        while let Some(frame) = next.take() {
            batch.extend_from_slice(&frame.header);
            if frame.body.len() < COPY_BODY_LIMIT {
                batch.extend_from_slice(&frame.body);
            } else {
                result = write_batch(&mut socket, &mut batch).await;
                if result.is_ok() {
                    result = socket.write_all(&frame.body).await;
                }
            }
            if result.is_err() {
                break;
            }
            if batch.len() < WRITE_BATCH_BYTES {
                next = queued.try_recv().ok();
            }
        }
        if result.is_ok() {
            result = write_batch(&mut socket, &mut batch).await;
        }
        if result.is_ok() {
            // TLS may hold the last record back until flushed (TCP: no-op).
            result = socket.flush().await;
        }
        if let Err(error) = result {
            shared.fail(Failure::Io(Arc::new(error)));
            return;
        }
        if batch.capacity() > 4 * WRITE_BATCH_BYTES {
            batch = Vec::with_capacity(WRITE_BATCH_BYTES);
        }
    }
    // Every handle is gone: tell the node no more requests will come.
    let _ = socket.shutdown().await;
}

async fn write_batch<W: AsyncWrite + Unpin>(socket: &mut W, batch: &mut Vec<u8>) -> io::Result<()> {
    if !batch.is_empty() {
        socket.write_all(batch).await?;
        batch.clear();
    }
    Ok(())
}

/// How long a node may rightly take to answer a request, on top of the
/// request timeout.
fn allowance(opcode: u8, body: &[u8]) -> Duration {
    match opcode {
        opcode::READ => body
            .get(READ_WAIT_MS_AT..READ_WAIT_MS_AT + 4)
            .map(|wait| u32::from_le_bytes(wait.try_into().expect("4 bytes")))
            .map_or(Duration::ZERO, |wait_ms| {
                Duration::from_millis(u64::from(wait_ms))
            }),
        opcode::ADMIN => ADMIN_ALLOWANCE,
        _ => Duration::ZERO,
    }
}

async fn read_loop<R: AsyncRead + Unpin>(shared: Arc<Shared>, socket: R, max_response_body: u32) {
    let failure = tokio::select! {
        failure = read_answers(&shared, socket, max_response_body) => failure,
        failure = overdue(&shared) => failure,
    };
    shared.fail(failure);
}

/// Returns once a pending request is past its deadline. Checks a few times
/// per request timeout, at most once a second: deadlines are a safety net
/// for a silent node, not a latency bound.
async fn overdue(shared: &Shared) -> Failure {
    let every =
        (shared.request_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let late = shared
            .lock()
            .pending
            .values()
            .filter(|request| request.deadline <= now)
            .count();
        if late > 0 {
            return Failure::Io(Arc::new(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{late} request(s) unanswered past the request timeout ({:?})",
                    shared.request_timeout
                ),
            )));
        }
    }
}

/// Reads and dispatches answers until the connection fails (the return
/// value says why) or, after the handle was dropped, nothing is pending.
async fn read_answers<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut socket: R,
    max_body: u32,
) -> Failure {
    let mut buffer = BytesMut::with_capacity(READ_CHUNK);
    loop {
        let header = match FrameHeader::decode(&buffer, max_body) {
            Ok(header) => header,
            Err(error) => return Failure::Protocol(format!("bad answer frame: {error}")),
        };
        let needed = header.map_or(FRAME_HEADER_LEN, |header| header.frame_len());
        if buffer.len() < needed {
            let missing = needed - buffer.len();
            buffer.reserve(missing.clamp(READ_CHUNK, MAX_RESERVE_STEP));
            match socket.read_buf(&mut buffer).await {
                Ok(0) => {
                    return Failure::Io(Arc::new(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed by the node",
                    )))
                }
                Ok(_) => continue,
                Err(error) => return Failure::Io(Arc::new(error)),
            }
        }
        let header = header.expect("a whole frame is buffered, so its header is");
        let mut frame = buffer.split_to(needed);
        let body = frame.split_off(FRAME_HEADER_LEN).freeze();
        if header.opcode == CONNECTION_OPCODE && header.aux != STATUS_OK {
            return Failure::Refused(ServerError::decode(header.aux, &body));
        }
        if let Err(message) = dispatch(shared, header, body) {
            return Failure::Protocol(message);
        }
        if shared.closing.load(Ordering::SeqCst) && shared.lock().pending.is_empty() {
            return Failure::Io(Arc::new(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed by the client",
            )));
        }
    }
}

/// Hands one answer to its caller; an answer that matches no pending
/// request is a protocol violation.
fn dispatch(shared: &Shared, header: FrameHeader, body: Bytes) -> Result<(), String> {
    let request = shared
        .lock()
        .pending
        .remove(&header.request_id)
        .ok_or_else(|| format!("answer to unknown request id {}", header.request_id))?;
    if request.opcode != header.opcode {
        let message = format!(
            "answer to request {} has opcode {}, the request had {}",
            header.request_id, header.opcode, request.opcode
        );
        let _ = request.reply.send(Err(Error::Protocol {
            addr: shared.addr.clone(),
            message: message.clone(),
        }));
        return Err(message);
    }
    let reply = if header.aux == STATUS_OK {
        Ok(body)
    } else {
        Err(Error::Server {
            addr: shared.addr.clone(),
            source: ServerError::decode(header.aux, &body),
        })
    };
    // The caller may have given up waiting; the answer is dropped then.
    let _ = request.reply.send(reply);
    Ok(())
}
