//! Client-side upload (`Client::enable_upload`): the client sends each
//! append's bytes to every other member itself (request `upload`, keyed by
//! the SHA-256 of the entry's payload), in parallel with the append, so the
//! leader replicates the entry to them as header and digest only and its
//! network carries each payload once instead of once per follower.
//!
//! Uploads are fire-and-forget, with bounds: each member has its own
//! connection and task fed by a queue bounded in bytes; an upload that does
//! not fit (a slow or unreachable member) is skipped, never waited for.
//! Correctness never depends on an upload: a member without it gets the
//! leader's bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog_proto::upload::{digest, DIGEST_LEN};
use loglog_proto::wire::opcode;
use tokio::sync::mpsc;

use crate::auth::authenticate;
use crate::connection::Connection;
use crate::{ClientConfig, Error};
use loglog_proto::wire::ServerError;

/// Settings of upload mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadConfig {
    /// Entries whose payload is smaller than this are appended without
    /// upload (the digest and the extra request cost more than they save).
    pub min_payload: usize,
    /// Upload bytes queued for or sent to one member and not yet answered,
    /// at most; past it, uploads to that member are skipped until it
    /// catches up. It bounds how late an upload can be: an upload that
    /// arrives after the leader's message has cost a wait on the follower
    /// and is of no use (the follower got the leader's bytes).
    pub max_queued_bytes: usize,
    /// How often the member list is asked for again (in the background).
    pub refresh: Duration,
}

impl Default for UploadConfig {
    /// Uploads from 16 KiB, 2 MiB unanswered per member (a sixth of a
    /// second on a 100 Mbit/s link), members refreshed every 5 s.
    fn default() -> UploadConfig {
        UploadConfig {
            min_payload: 16 * 1024,
            max_queued_bytes: 2 * 1024 * 1024,
            refresh: Duration::from_secs(5),
        }
    }
}

/// Counters of upload mode (for tools and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadStats {
    /// Uploads handed to a member's connection.
    pub sent: u64,
    /// Uploads skipped: the member's queue was full or it was unreachable.
    pub skipped: u64,
    /// Uploads the member refused (e.g. too large).
    pub refused: u64,
}

#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    skipped: AtomicU64,
    refused: AtomicU64,
}

pub(crate) struct Uploader {
    config: UploadConfig,
    /// The client's settings: limits, TLS and token for the connections.
    client: Arc<ClientConfig>,
    state: Mutex<State>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct State {
    /// Client addresses of the members (from cluster status).
    members: Vec<String>,
    /// The leader's client address, when the status named one.
    leader: Option<String>,
    refreshed_at: Option<Instant>,
    refreshing: bool,
    links: HashMap<String, MemberLink>,
}

/// The queue of one member's upload task; dropping it ends the task.
struct MemberLink {
    queue: mpsc::Sender<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
}

/// Uploads queued per member at most (besides the byte bound).
const MAX_QUEUED_UPLOADS: usize = 4096;
/// A member that cannot be reached is tried again after this long;
/// meanwhile its uploads are skipped.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);

impl Uploader {
    pub(crate) fn new(config: UploadConfig, client: ClientConfig) -> Uploader {
        Uploader {
            config,
            client: Arc::new(client),
            state: Mutex::new(State::default()),
            counters: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn config(&self) -> &UploadConfig {
        &self.config
    }

    pub(crate) fn stats(&self) -> UploadStats {
        UploadStats {
            sent: self.counters.sent.load(Ordering::Relaxed),
            skipped: self.counters.skipped.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
        }
    }

    /// Sets the members' client addresses and the leader's (from a
    /// cluster status).
    pub(crate) fn set_members(&self, members: Vec<String>, leader: Option<String>) {
        let mut state = self.lock();
        state.links.retain(|addr, _| members.contains(addr));
        state.members = members;
        state.leader = leader;
        state.refreshed_at = Some(Instant::now());
        state.refreshing = false;
    }

    /// Whether the member list is due for a refresh; marks it under way.
    pub(crate) fn take_refresh_due(&self) -> bool {
        let mut state = self.lock();
        let due = !state.refreshing
            && state
                .refreshed_at
                .is_none_or(|at| at.elapsed() >= self.config.refresh);
        if due {
            state.refreshing = true;
        }
        due
    }

    pub(crate) fn refresh_failed(&self) {
        let mut state = self.lock();
        state.refreshing = false;
        state.refreshed_at = Some(Instant::now());
    }

    /// Queues `body` (an append's body: envelope and payload) for every
    /// member but the leader (the last one cluster status named, else
    /// `connected`, the node the append goes to); never waits. Returns
    /// whether any upload was queued (the append is then flagged
    /// `UPLOADED`).
    pub(crate) fn upload(&self, body: &[u8], connected: &str) -> bool {
        let mut upload = Vec::with_capacity(DIGEST_LEN + body.len());
        upload.extend_from_slice(&digest(body));
        upload.extend_from_slice(body);
        let upload = Bytes::from(upload);
        let mut state = self.lock();
        // A client connected to a follower has its append redirected to the
        // leader: the follower needs the upload too.
        let leader = state
            .leader
            .clone()
            .unwrap_or_else(|| connected.to_string());
        let members: Vec<String> = state
            .members
            .iter()
            .filter(|addr| **addr != leader)
            .cloned()
            .collect();
        let mut queued = false;
        for member in members {
            let link = state
                .links
                .entry(member.clone())
                .or_insert_with(|| self.spawn_link(member));
            let bytes = upload.len();
            if link.queued_bytes.load(Ordering::Relaxed) + bytes > self.config.max_queued_bytes {
                self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            link.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
            match link.queue.try_send(upload.clone()) {
                Ok(()) => queued = true,
                Err(_) => {
                    link.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
                    self.counters.skipped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        queued
    }

    fn spawn_link(&self, addr: String) -> MemberLink {
        let (queue, receiver) = mpsc::channel(MAX_QUEUED_UPLOADS);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(upload_task(
            addr,
            receiver,
            queued_bytes.clone(),
            self.counters.clone(),
            self.client.clone(),
        ));
        MemberLink {
            queue,
            queued_bytes,
        }
    }
}

/// Sends one member's uploads on its own connection, pipelined, without
/// waiting for answers; skips uploads while the member is unreachable.
async fn upload_task(
    addr: String,
    mut uploads: mpsc::Receiver<Bytes>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<Counters>,
    client: Arc<ClientConfig>,
) {
    let mut connection: Option<Connection> = None;
    let mut unreachable_until: Option<Instant> = None;
    while let Some(upload) = uploads.recv().await {
        let len = upload.len();
        let sent = async {
            if unreachable_until.is_some_and(|until| Instant::now() < until) {
                return false;
            }
            if connection.as_ref().is_none_or(Connection::is_failed) {
                let opened = async {
                    let opened = Connection::open(
                        &addr,
                        client.tls.as_ref(),
                        client.max_in_flight,
                        client.max_response_body,
                        client.connect_timeout,
                        client.request_timeout,
                    )
                    .await?;
                    if let Some(token) = &client.token {
                        match authenticate(&opened, token).await {
                            // A node older than authentication: go on.
                            Ok(_)
                            | Err(Error::Server {
                                source: ServerError::BadRequest { .. },
                                ..
                            }) => {}
                            Err(error) => return Err(error),
                        }
                    }
                    Ok::<Connection, Error>(opened)
                };
                match opened.await {
                    Ok(opened) => connection = Some(opened),
                    Err(error) => {
                        tracing::debug!(%addr, %error, "upload target unreachable");
                        unreachable_until = Some(Instant::now() + RECONNECT_BACKOFF);
                        connection = None;
                        return false;
                    }
                }
            }
            let Some(open) = connection.as_ref() else {
                return false;
            };
            match open.send(opcode::UPLOAD, 0, upload).await {
                Ok(answer) => {
                    let (counters, queued_bytes) = (counters.clone(), queued_bytes.clone());
                    // Counted against the bound until answered.
                    tokio::spawn(async move {
                        if !matches!(answer.await, Ok(Ok(_))) {
                            counters.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        queued_bytes.fetch_sub(len, Ordering::Relaxed);
                    });
                    true
                }
                Err(_) => false,
            }
        }
        .await;
        if !sent {
            queued_bytes.fetch_sub(len, Ordering::Relaxed);
        }
        let counter = if sent {
            &counters.sent
        } else {
            &counters.skipped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
