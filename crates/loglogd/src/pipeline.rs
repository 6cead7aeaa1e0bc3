//! The append pipeline: group commit with the write of batch N+1 overlapping
//! the fsync of batch N.
//!
//! ```text
//!  appenders ──(bounded queue)──> writer thread ──(bounded jobs)──> syncer thread
//!                                  │ drains the queue               │ one fsync covers every
//!                                  │ encodes one buffer             │ job received before it
//!                                  │ LogWriter::append              │ CommitTracker::advance
//!                                  └ answers no-wait appends        └ answers waiting appends,
//!                                                                     wakes long-poll readers
//! ```
//!
//! * The writer thread owns the [`LogWriter`]. It blocks on the queue, then
//!   takes everything queued up to a byte bound, encodes all entries with the
//!   current term into one reused buffer, appends it with one write, answers
//!   no-wait appends with their offsets and hands the new end and the
//!   waiting appends to the syncer as one job.
//! * The syncer thread runs [`LogSyncer::sync`] in a loop. One fdatasync
//!   covers every job received before it started, so while it runs the
//!   writer is already writing the next batch. Then the [`CommitTracker`]
//!   publishes the new commit offset and answers waiting appends, in offset
//!   order.
//! * No lock is held across IO; the threads talk through channels only.
//!
//! **The replication seam.** A single node commits what it has made durable
//! (with `fsync never`, what it has written): the syncer calls
//! [`CommitTracker::advance`] with its durable end. With Raft, the syncer
//! instead reports the durable end to the consensus core, which advances the
//! tracker when a majority holds an entry of the current term; the tracker,
//! the writer and the readers stay as they are.
//!
//! **Failures.** The writer reserves a batch's disk space
//! (`LogWriter::reserve`) before writing it: on a full disk the batch is
//! answered `Unavailable` ("disk full") with nothing written, and the next
//! batch tries again, so appends resume when space returns. A failed write
//! refuses its batch too (any part written is removed durably). A failed
//! fsync, or a failed removal, poisons the storage (after a failed fsync
//! the kernel may have dropped dirty pages): the node then answers every
//! append `Unavailable` and never acknowledges anything not durable; reads
//! go on serving the committed prefix. A restart recovers from disk.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, OnceLock};

use bytes::Bytes;
use loglog_proto::entry::{encode_entry_with_flags, EntryKind, ENTRY_HEADER_LEN};
use loglog_proto::producer::{ProducerTag, ENTRY_FLAG_PRODUCER};
use loglog_proto::wire::ServerError;
use loglog_storage::{LogSyncer, LogWriter, StorageError};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::config::Fsync;
use crate::dedup::{Decision, ProducerTable};
use crate::server::PendingResponse;

/// State shared by the node's handles, threads and connections.
pub(crate) struct Shared {
    /// The commit offset: readers never pass it. Only the [`CommitTracker`]
    /// sends; it only grows.
    pub commit: watch::Sender<u64>,
    /// End of the written log (may pass commit).
    pub written_end: AtomicU64,
    /// The current term (fixed for a single node's lifetime).
    pub term: AtomicU64,
    /// Why storage became unusable, once it has.
    pub failure: OnceLock<String>,
    /// False once shutdown began: new appends are refused.
    pub accepting: AtomicBool,
    /// Becomes true when shutdown begins: the server stops accepting,
    /// connections stop reading, long-polls return.
    pub shutdown: watch::Sender<bool>,
    /// Payload bytes queued for the writer, node-wide.
    pub pending_append_bytes: Arc<Semaphore>,
    pub counters: Counters,
    /// Prometheus series (served only with `--metrics-listen`).
    pub metrics: crate::metrics::NodeMetrics,
}

/// Monotonic counters of the pipeline's work (relaxed atomics, updated once
/// per batch or sync, never per byte).
#[derive(Default)]
pub(crate) struct Counters {
    pub entries: AtomicU64,
    pub writes: AtomicU64,
    pub syncs: AtomicU64,
    /// Highest bytes held of the server's node-wide budgets (set by it).
    pub peak_request_bytes: AtomicU64,
    pub peak_read_bytes: AtomicU64,
}

/// A snapshot of the pipeline's counters: entries per write and per sync
/// tell how well group commit batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Data entries written since start.
    pub entries_written: u64,
    /// Write batches (one `LogWriter::append` each).
    pub write_batches: u64,
    /// fdatasync rounds (0 with `fsync never`).
    pub syncs: u64,
    /// Most bytes ever taken at once from the node-wide request budget
    /// ([`crate::Limits::max_node_request_bytes`]), counting those already
    /// set aside for a request waiting for more: it reaches the budget when
    /// the budget is what holds clients back.
    pub peak_request_bytes: u64,
    /// The same for the node-wide read-answer budget
    /// ([`crate::Limits::max_node_read_bytes`]).
    pub peak_read_bytes: u64,
}

/// One fsync round of `syncer`, its latency recorded in the metrics.
pub(crate) fn timed_sync(syncer: &LogSyncer, shared: &Shared) -> Result<u64, StorageError> {
    let began = std::time::Instant::now();
    let result = syncer.sync();
    shared
        .metrics
        .fsync_latency
        .observe(began.elapsed().as_secs_f64());
    result
}

impl Counters {
    pub fn snapshot(&self) -> Metrics {
        Metrics {
            entries_written: self.entries.load(Ordering::Relaxed),
            write_batches: self.writes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            peak_request_bytes: self.peak_request_bytes.load(Ordering::Relaxed),
            peak_read_bytes: self.peak_read_bytes.load(Ordering::Relaxed),
        }
    }
}

impl Shared {
    pub fn commit_offset(&self) -> u64 {
        *self.commit.borrow()
    }

    /// Marks storage unusable; the first reason wins.
    pub fn fail(&self, what: &str, error: &StorageError) {
        let reason = if error.is_disk_full() {
            format!("disk full: {what} failed: {error}")
        } else {
            format!("{what} failed: {error}")
        };
        if self.failure.set(reason.clone()).is_ok() {
            tracing::error!(%reason, "storage failed; appends are refused until restart");
        }
    }

    pub fn unavailable(&self) -> Option<ServerError> {
        self.failure.get().map(|reason| ServerError::Unavailable {
            message: reason.clone(),
        })
    }
}

/// The producer envelope of an append and its retry flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProducerAppend {
    pub tag: ProducerTag,
    pub retry: bool,
}

impl ProducerAppend {
    /// The entry header flags of its entry.
    pub fn entry_flags(producer: Option<ProducerAppend>) -> u8 {
        if producer.is_some() {
            ENTRY_FLAG_PRODUCER
        } else {
            0
        }
    }
}

/// Where the answer to an append goes.
pub(crate) enum Reply {
    /// An embedded caller awaiting a oneshot.
    Local(oneshot::Sender<Result<u64, ServerError>>),
    /// A TCP connection's response queue (no task, no oneshot per request).
    Connection(PendingResponse),
}

impl Reply {
    pub fn send(self, result: Result<u64, ServerError>) {
        match self {
            // The caller may have given up (dropped its future): nothing to do.
            Reply::Local(sender) => drop(sender.send(result)),
            Reply::Connection(pending) => pending.answer_append(result),
        }
    }
}

pub(crate) struct AppendRequest {
    /// The entry's payload: with `producer`, its envelope comes first.
    pub payload: Bytes,
    pub producer: Option<ProducerAppend>,
    /// The client uploaded the payload to the other members (flag
    /// `UPLOADED`): its digest, for a leader to replicate it by digest.
    pub upload: Option<loglog_proto::upload::Digest>,
    pub wait_for_commit: bool,
    pub reply: Reply,
    /// The payload's share of [`Shared::pending_append_bytes`], released
    /// once the writer is done with it.
    pub _pending_bytes: OwnedSemaphorePermit,
}

/// Closes the command queue and answers everything still in it
/// `ShuttingDown`: nothing of it was written.
pub(crate) fn refuse_queued_commands(commands: &mut mpsc::Receiver<WriterCommand>) {
    commands.close();
    while let Ok(command) = commands.try_recv() {
        match command {
            WriterCommand::Append(request) => request.reply.send(Err(ServerError::ShuttingDown)),
            WriterCommand::TrimPrefix { reply, .. } => {
                drop(reply.send(Err(ServerError::ShuttingDown)))
            }
            WriterCommand::Shutdown => {}
        }
    }
}

pub(crate) enum WriterCommand {
    Append(AppendRequest),
    /// Deletes whole segments below `offset` (at most the commit offset).
    TrimPrefix {
        offset: u64,
        reply: oneshot::Sender<Result<u64, ServerError>>,
    },
    /// Write what is queued before this, refuse what comes after, stop.
    Shutdown,
}

/// A command that ends a batch and runs after it is written.
enum Control {
    TrimPrefix {
        offset: u64,
        reply: oneshot::Sender<Result<u64, ServerError>>,
    },
    Shutdown,
}

/// Where an append of a batch goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Placement {
    /// A new entry of the batch.
    New,
    /// Its producer's earlier copy, at this offset.
    Copy(u64),
    /// A retry the producer table cannot decide.
    Unknown,
}

/// An append waiting for the commit offset to reach `end`.
struct Waiter {
    /// Where the entry starts: the answer.
    offset: u64,
    /// Where it ends: it is committed once commit >= end.
    end: u64,
    reply: Reply,
}

/// One write, handed from the writer to the syncer.
struct SyncJob {
    /// End of the log after the write: an entry boundary.
    end: u64,
    waiters: Vec<Waiter>,
}

/// Bound of the writer -> syncer job queue (jobs are whole batches).
const SYNC_JOB_QUEUE: usize = 1024;

pub(crate) struct Pipeline {
    pub commands: mpsc::Sender<WriterCommand>,
    /// Becomes true when the syncer thread, the last of the two, has stopped.
    pub stopped: watch::Receiver<bool>,
}

pub(crate) struct PipelineParts {
    pub log: LogWriter,
    /// The producers of the log's entries (rebuilt from its tail).
    pub producers: ProducerTable,
    pub syncer: LogSyncer,
    pub fsync: Fsync,
    pub term: u32,
    pub max_pending_appends: usize,
    pub max_write_batch_bytes: usize,
}

/// Starts the writer and syncer threads.
pub(crate) fn start(parts: PipelineParts, shared: Arc<Shared>) -> std::io::Result<Pipeline> {
    let (commands_tx, commands_rx) = mpsc::channel(parts.max_pending_appends);
    let (jobs_tx, jobs_rx) = std_mpsc::sync_channel(SYNC_JOB_QUEUE);
    let (stopped_tx, stopped_rx) = watch::channel(false);
    let tracker = CommitTracker {
        shared: shared.clone(),
        waiting: VecDeque::new(),
    };
    let syncer = SyncerThread {
        syncer: parts.syncer,
        fsync: parts.fsync,
        jobs: jobs_rx,
        tracker,
        written_target: shared.commit_offset(),
    };
    std::thread::Builder::new()
        .name("loglog-syncer".to_string())
        .spawn(move || {
            syncer.run();
            stopped_tx.send_replace(true);
        })?;
    let writer = WriterThread {
        log: parts.log,
        producers: parts.producers,
        term: parts.term,
        commands: commands_rx,
        jobs: jobs_tx,
        shared,
        batch: Vec::with_capacity(parts.max_write_batch_bytes + ENTRY_HEADER_LEN),
        max_batch_bytes: parts.max_write_batch_bytes,
    };
    std::thread::Builder::new()
        .name("loglog-writer".to_string())
        .spawn(move || writer.run())?;
    Ok(Pipeline {
        commands: commands_tx,
        stopped: stopped_rx,
    })
}

struct WriterThread {
    log: LogWriter,
    /// The (producer, sequence) pairs in the log: appends are deduplicated
    /// against it (module `dedup`).
    producers: ProducerTable,
    term: u32,
    commands: mpsc::Receiver<WriterCommand>,
    jobs: std_mpsc::SyncSender<SyncJob>,
    shared: Arc<Shared>,
    /// Encoded entries of the current batch; reused, never shrunk.
    batch: Vec<u8>,
    max_batch_bytes: usize,
}

impl WriterThread {
    fn run(mut self) {
        let mut appends: Vec<AppendRequest> = Vec::new();
        'serve: while let Some(first) = self.commands.blocking_recv() {
            let mut next = Some(first);
            let mut batch_bytes = 0usize;
            // Take everything queued, up to the byte bound; a non-append
            // command ends the batch and runs after it.
            let mut control = None;
            while let Some(command) = next.take() {
                match command {
                    WriterCommand::Append(request) => {
                        batch_bytes += ENTRY_HEADER_LEN + request.payload.len();
                        appends.push(request);
                    }
                    WriterCommand::TrimPrefix { offset, reply } => {
                        control = Some(Control::TrimPrefix { offset, reply });
                        break;
                    }
                    WriterCommand::Shutdown => {
                        control = Some(Control::Shutdown);
                        break;
                    }
                }
                if batch_bytes >= self.max_batch_bytes {
                    break;
                }
                next = self.commands.try_recv().ok();
            }
            self.write_batch(&mut appends);
            match control {
                None => {}
                Some(Control::TrimPrefix { offset, reply }) => {
                    drop(reply.send(self.trim_prefix(offset)));
                }
                Some(Control::Shutdown) => break 'serve,
            }
        }
        // Refuse whatever raced with shutdown; then dropping `jobs` lets the
        // syncer finish its last fsync and stop.
        refuse_queued_commands(&mut self.commands);
        tracing::debug!(end = self.log.end_offset(), "writer thread stopped");
    }

    fn write_batch(&mut self, appends: &mut Vec<AppendRequest>) {
        if appends.is_empty() {
            return;
        }
        if let Some(error) = self.shared.unavailable() {
            for request in appends.drain(..) {
                request.reply.send(Err(error.clone()));
            }
            return;
        }
        let base = self.log.end_offset();
        self.batch.clear();
        // Where each append goes: a new entry, or an earlier copy of it.
        let mut placements = Vec::with_capacity(appends.len());
        for request in appends.iter() {
            let offset = base + self.batch.len() as u64;
            let placement = match request.producer {
                None => Placement::New,
                Some(producer) => match self.producers.decide(producer.tag, producer.retry) {
                    Decision::Append => {
                        self.producers.record(producer.tag, offset, self.term);
                        Placement::New
                    }
                    Decision::Duplicate(located) => Placement::Copy(located.offset),
                    Decision::Unknown => Placement::Unknown,
                },
            };
            if placement == Placement::New {
                encode_entry_with_flags(
                    self.term,
                    EntryKind::Data,
                    ProducerAppend::entry_flags(request.producer),
                    &request.payload,
                    &mut self.batch,
                );
            }
            placements.push(placement);
        }
        let written = if self.batch.is_empty() {
            Ok(base)
        } else {
            // Space first: on a full disk the batch is refused unwritten.
            self.log
                .reserve(self.batch.len() as u64)
                .and_then(|()| self.log.append(&self.batch))
        };
        match written {
            Ok(end) => {
                assert_eq!(
                    end,
                    base + self.batch.len() as u64,
                    "storage appended exactly the batch"
                );
                self.shared.written_end.store(end, Ordering::Release);
                let counters = &self.shared.counters;
                let new_entries = placements.iter().filter(|p| **p == Placement::New).count();
                if new_entries > 0 {
                    counters.writes.fetch_add(1, Ordering::Relaxed);
                    counters
                        .entries
                        .fetch_add(new_entries as u64, Ordering::Relaxed);
                }
                let commit = self.shared.commit_offset();
                let mut waiters = Vec::new();
                let mut offset = base;
                for (request, placement) in appends.drain(..).zip(placements) {
                    let (at, entry_end) = match placement {
                        Placement::New => {
                            let at = offset;
                            offset += (ENTRY_HEADER_LEN + request.payload.len()) as u64;
                            (at, offset)
                        }
                        // Committed once the commit offset passes its start
                        // (commit offsets are entry boundaries).
                        Placement::Copy(at) => (at, at + 1),
                        Placement::Unknown => {
                            request.reply.send(Err(ServerError::SequenceUnknown));
                            continue;
                        }
                    };
                    if request.wait_for_commit && entry_end > commit {
                        waiters.push(Waiter {
                            offset: at,
                            end: entry_end,
                            reply: request.reply,
                        });
                    } else {
                        request.reply.send(Ok(at));
                    }
                }
                debug_assert_eq!(offset, end);
                if waiters.is_empty() && end == base {
                    return;
                }
                // Blocks only when the syncer is SYNC_JOB_QUEUE batches behind.
                if let Err(std_mpsc::SendError(job)) = self.jobs.send(SyncJob { end, waiters }) {
                    // The syncer is gone (it only stops after us): refuse.
                    for waiter in job.waiters {
                        waiter.reply.send(Err(ServerError::ShuttingDown));
                    }
                }
            }
            Err(error) => {
                // Nothing of the batch stays in the log.
                self.producers.truncate(base);
                let answer = self.recover_from_append_error(base, &error);
                for request in appends.drain(..) {
                    request.reply.send(Err(answer.clone()));
                }
            }
        }
    }

    /// After a failed append nothing of the batch is acknowledged. A batch
    /// that spanned a segment roll may have been written in part: remove
    /// that part (durably), so the log ends where it did. A transient error
    /// (a full disk) leaves the node serving; anything worse poisons it.
    fn recover_from_append_error(&mut self, base: u64, error: &StorageError) -> ServerError {
        let truncated = if self.log.end_offset() != base {
            self.log.truncate_suffix(base)
        } else {
            Ok(())
        };
        match truncated {
            Ok(()) if !matches!(error, StorageError::Poisoned { .. }) => {
                tracing::warn!(%error, disk_full = error.is_disk_full(), "append failed; batch refused");
                let what = if error.is_disk_full() {
                    "disk full: append failed"
                } else {
                    "append failed"
                };
                ServerError::Unavailable {
                    message: format!("{what}: {error}"),
                }
            }
            Ok(()) => {
                self.shared.fail("append", error);
                self.shared
                    .unavailable()
                    .expect("fail() recorded a failure")
            }
            Err(truncate_error) => {
                self.shared
                    .fail("truncating a failed append", &truncate_error);
                self.shared
                    .unavailable()
                    .expect("fail() recorded a failure")
            }
        }
    }

    fn trim_prefix(&mut self, offset: u64) -> Result<u64, ServerError> {
        let commit = self.shared.commit_offset();
        if offset > commit {
            return Err(ServerError::OutOfRange { end: commit });
        }
        if let Some(error) = self.shared.unavailable() {
            return Err(error);
        }
        self.log.trim_prefix(offset).map_err(|error| match error {
            StorageError::Trimmed { start } => ServerError::Trimmed { start },
            StorageError::OutOfRange { end } => ServerError::OutOfRange { end },
            StorageError::NotEntryBoundary { offset } => ServerError::BadRequest {
                message: format!("offset {offset} is not an entry boundary"),
            },
            other => {
                self.shared.fail("trim", &other);
                self.shared
                    .unavailable()
                    .expect("fail() recorded a failure")
            }
        })
    }
}

struct SyncerThread {
    syncer: LogSyncer,
    fsync: Fsync,
    jobs: std_mpsc::Receiver<SyncJob>,
    tracker: CommitTracker,
    /// End of the last job received: an entry boundary the commit may reach.
    written_target: u64,
}

impl SyncerThread {
    fn run(mut self) {
        while let Ok(job) = self.jobs.recv() {
            self.absorb(job);
            while let Ok(job) = self.jobs.try_recv() {
                self.absorb(job);
            }
            if let Some(error) = self.tracker.shared.unavailable() {
                self.tracker.refuse_all(error);
                continue;
            }
            let durable = match self.fsync {
                Fsync::Always => match timed_sync(&self.syncer, &self.tracker.shared) {
                    Ok(durable) => {
                        let counters = &self.tracker.shared.counters;
                        counters.syncs.fetch_add(1, Ordering::Relaxed);
                        durable
                    }
                    Err(error) => {
                        self.tracker.shared.fail("fsync", &error);
                        let error = self
                            .tracker
                            .shared
                            .unavailable()
                            .expect("fail() recorded a failure");
                        self.tracker.refuse_all(error);
                        continue;
                    }
                },
                // Benchmark mode: the written end counts as durable.
                Fsync::Never => self.written_target,
            };
            // The sync covered every job received before it (each was sent
            // after its write); cap at the last job's end so commit always
            // lands on an entry boundary this thread has seen.
            debug_assert!(
                durable >= self.written_target,
                "a sync covers every write that finished before it started"
            );
            self.tracker.advance(durable.min(self.written_target));
        }
        tracing::debug!(
            commit = self.tracker.shared.commit_offset(),
            "syncer thread stopped"
        );
    }

    fn absorb(&mut self, job: SyncJob) {
        assert!(job.end >= self.written_target, "the log only grows");
        self.written_target = job.end;
        self.tracker.waiting.extend(job.waiters);
    }
}

/// Owns the commit offset and the appends waiting for it.
pub(crate) struct CommitTracker {
    shared: Arc<Shared>,
    /// In offset order (jobs arrive in log order).
    waiting: VecDeque<Waiter>,
}

impl CommitTracker {
    /// Publishes `commit` (wakes long-poll readers), then answers every
    /// waiting append it covers, in offset order: an appender that hears
    /// back can read its entry at once.
    fn advance(&mut self, commit: u64) {
        let previous = self.shared.commit_offset();
        if commit > previous {
            self.shared.commit.send_replace(commit);
        }
        let commit = commit.max(previous);
        while let Some(waiter) = self.waiting.front() {
            if waiter.end > commit {
                break;
            }
            let waiter = self.waiting.pop_front().expect("front exists");
            waiter.reply.send(Ok(waiter.offset));
        }
    }

    fn refuse_all(&mut self, error: ServerError) {
        for waiter in self.waiting.drain(..) {
            waiter.reply.send(Err(error.clone()));
        }
    }
}
