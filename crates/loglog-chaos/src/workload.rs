//! The concurrent workload: appenders of unique values, plain readers,
//! linearizable readers and tail followers, all recording into one
//! [`History`] with monotonic timestamps (nanoseconds since the run began).
//!
//! Outcomes: an append acknowledged with an offset is `Ok`; an error the
//! library calls definite (`!Error::is_indeterminate`: a refusal such as
//! `NotLeader` or `Busy`, a failed connect) is `Failed`; a timeout or an
//! indeterminate error is `Indeterminate`. A client whose call timed out is
//! replaced by a new one that tries the nodes in another order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog::{Client, ClientConfig};
use loglog_sim::history::{
    AppendOutcome, History, ReadEntry, ReadKind, ReadOutcome, ReadResult, Timestamp,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How long one operation may take before it counts as indeterminate.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes asked by one read (well above a run's log, so reads are whole).
const READ_BYTES: u32 = 8 << 20;

/// What every workload task shares.
pub struct Shared {
    pub history: Mutex<History>,
    pub began: Instant,
    pub stop: AtomicBool,
    pub nodes: Vec<String>,
    /// Offsets acknowledged so far: entry boundaries to start reads at.
    pub acked_offsets: Mutex<Vec<u64>>,
    pub run: u64,
    /// Appenders upload their entries to the other members.
    pub upload: bool,
}

impl Shared {
    pub fn now(&self) -> Timestamp {
        self.began.elapsed().as_nanos() as Timestamp
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// A boundary to start a read at: 0 or an acknowledged offset.
    fn read_start(&self, rng: &mut ChaCha8Rng) -> u64 {
        let offsets = self
            .acked_offsets
            .lock()
            .expect("no task panics holding it");
        if offsets.is_empty() || rng.gen_bool(0.05) {
            0
        } else {
            // Mostly recent ones: short reads, near the tail.
            let from = offsets.len().saturating_sub(200);
            offsets[rng.gen_range(from..offsets.len())]
        }
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        max_redirects: 5,
        ..ClientConfig::default()
    }
}

/// A client trying the nodes from a random one on.
async fn connect(shared: &Shared, rng: &mut ChaCha8Rng) -> Option<Client> {
    let mut order = shared.nodes.clone();
    let turn = rng.gen_range(0..order.len());
    order.rotate_left(turn);
    tokio::time::timeout(
        OP_TIMEOUT * 3,
        Client::connect_with(&order, client_config()),
    )
    .await
    .ok()?
    .ok()
}

async fn pause_until_reconnect(shared: &Shared) {
    if !shared.stopped() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn appender(shared: Arc<Shared>, client_id: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = None;
    let mut sequence = 0u64;
    while !shared.stopped() {
        let Some(current) = client.clone() else {
            client = connect(&shared, &mut rng).await;
            if client.is_none() {
                pause_until_reconnect(&shared).await;
            } else if let (true, Some(connected)) = (shared.upload, &client) {
                // Every entry, whatever its size. Without the member list
                // (a fault right now) appends simply go without upload.
                let config = loglog::UploadConfig {
                    min_payload: 0,
                    ..loglog::UploadConfig::default()
                };
                let _ = tokio::time::timeout(OP_TIMEOUT, connected.enable_upload(config)).await;
            }
            continue;
        };
        sequence += 1;
        let value = format!("r{}-c{client_id}-{sequence}", shared.run).into_bytes();
        let id = {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.invoke_append(client_id, value.clone(), shared.now())
        };
        let result = tokio::time::timeout(OP_TIMEOUT, current.append(Bytes::from(value))).await;
        let outcome = match result {
            Ok(Ok(offset)) => AppendOutcome::Ok { offset },
            // The library says which errors leave the append in doubt (a
            // broken connection, a node shutting down...); the others are
            // definite refusals, which the checker holds it to.
            Ok(Err(error)) if !error.is_indeterminate() => AppendOutcome::Failed,
            Ok(Err(_)) | Err(_) => AppendOutcome::Indeterminate,
        };
        {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.complete_append(id, outcome, shared.now());
        }
        match outcome {
            AppendOutcome::Ok { offset } => shared
                .acked_offsets
                .lock()
                .expect("no task panics holding it")
                .push(offset),
            _ => {
                client = None;
                pause_until_reconnect(&shared).await;
            }
        }
    }
}

/// Plain reads of a random node's committed prefix, through the library.
pub async fn plain_reader(shared: Arc<Shared>, client_id: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while !shared.stopped() {
        let node = shared.nodes[rng.gen_range(0..shared.nodes.len())].clone();
        let connected =
            tokio::time::timeout(OP_TIMEOUT, Client::connect_with(&[node], client_config())).await;
        let Ok(Ok(client)) = connected else {
            pause_until_reconnect(&shared).await;
            continue;
        };
        for _ in 0..20 {
            if shared.stopped() {
                break;
            }
            let start = shared.read_start(&mut rng);
            let id = {
                let mut history = shared.history.lock().expect("no task panics holding it");
                history.invoke_read(client_id, ReadKind::Plain, shared.now())
            };
            let result =
                tokio::time::timeout(OP_TIMEOUT, client.read(start, READ_BYTES, Duration::ZERO))
                    .await;
            let (outcome, ok) = match result {
                Ok(Ok(page)) => match ReadResult::from_raw_bytes(start, page.raw()) {
                    Ok(read) => (ReadOutcome::Ok(read), true),
                    Err(_) => (ReadOutcome::Failed, false),
                },
                _ => (ReadOutcome::Failed, false),
            };
            {
                let mut history = shared.history.lock().expect("no task panics holding it");
                history.complete_read(id, outcome, shared.now());
            }
            if !ok {
                break;
            }
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
        }
    }
}

/// Linearizable reads through the library (`Client::read_linearizable`:
/// read-index on the leader, `NotLeader` followed). A page that does not
/// reach the commit offset it reports would not cover the read index: it
/// counts as a failed read (asserts nothing).
pub async fn linearizable_reader(shared: Arc<Shared>, client_id: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut client = None;
    while !shared.stopped() {
        let Some(current) = client.clone() else {
            client = connect(&shared, &mut rng).await;
            if client.is_none() {
                pause_until_reconnect(&shared).await;
            }
            continue;
        };
        let start = shared.read_start(&mut rng);
        let id = {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.invoke_read(client_id, ReadKind::Linearizable, shared.now())
        };
        let result =
            tokio::time::timeout(OP_TIMEOUT, read_linearizable_whole(&current, start)).await;
        let outcome = match result {
            Ok(Some(bytes)) => match ReadResult::from_raw_bytes(start, &bytes) {
                Ok(read) => ReadOutcome::Ok(read),
                Err(_) => ReadOutcome::Failed,
            },
            _ => ReadOutcome::Failed,
        };
        let failed = outcome == ReadOutcome::Failed;
        {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.complete_read(id, outcome, shared.now());
        }
        if failed {
            client = None;
            pause_until_reconnect(&shared).await;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
        }
    }
}

/// The bytes `[start, c)` where `c` is the commit offset a linearizable read
/// of `start` reported (at least the read index). A page cut short by the
/// size limit is completed with plain reads on the same connection: the
/// bytes below `c` are committed, so the whole still covers the read index.
async fn read_linearizable_whole(client: &Client, start: u64) -> Option<Vec<u8>> {
    let page = client
        .read_linearizable(start, READ_BYTES, Duration::ZERO)
        .await
        .ok()?;
    let commit = page.commit_offset().max(start);
    let mut bytes = page.raw().to_vec();
    let mut next = page.next_offset();
    while next < commit {
        let more = client.read(next, READ_BYTES, Duration::ZERO).await.ok()?;
        if more.raw().is_empty() {
            return None;
        }
        bytes.extend_from_slice(more.raw());
        next = more.next_offset();
    }
    Some(bytes)
}

/// Follows the log of a random node from 0 with the library's stream; each
/// stretch of entries received without error is one plain read of
/// `[from, position)`.
pub async fn tail_follower(shared: Arc<Shared>, client_id: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut from = 0u64;
    while !shared.stopped() {
        let node = shared.nodes[rng.gen_range(0..shared.nodes.len())].clone();
        let connected =
            tokio::time::timeout(OP_TIMEOUT, Client::connect_with(&[node], client_config())).await;
        let Ok(Ok(client)) = connected else {
            pause_until_reconnect(&shared).await;
            continue;
        };
        let id = {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.invoke_read(client_id, ReadKind::Plain, shared.now())
        };
        let mut stream = client
            .entries(from)
            .long_poll(Duration::from_millis(200))
            .page_bytes(64 << 10);
        let mut entries = Vec::new();
        while !shared.stopped() {
            match tokio::time::timeout(OP_TIMEOUT, stream.next()).await {
                Ok(Ok(entry)) => entries.push(ReadEntry {
                    offset: entry.offset,
                    payload: entry.payload.to_vec(),
                }),
                _ => break,
            }
        }
        let end = stream.position();
        let read = ReadResult {
            start: from,
            end,
            entries,
        };
        {
            let mut history = shared.history.lock().expect("no task panics holding it");
            history.complete_read(id, ReadOutcome::Ok(read), shared.now());
        }
        from = end;
        pause_until_reconnect(&shared).await;
    }
}
