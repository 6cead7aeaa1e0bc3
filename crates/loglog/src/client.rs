//! The async client: one pipelined connection to the cluster, redirected to
//! the leader when a node says it is not.
//!
//! **Exactly-once appends.** Every [`Client`] (clones share it) has a random
//! producer id and numbers its appends; each append carries the pair in a
//! 16-byte producer envelope in front of the payload (`docs/FORMAT.md`),
//! which the node stores with the entry and which readers of this library
//! strip again. When an append's outcome is unknown (the connection broke,
//! the node shut down or failed its disk after receiving it), the client
//! sends the same (producer, sequence) again, marked as a retry, to
//! whichever node leads, until `leader_wait` has passed: the leader answers
//! with the offset of the copy its log already holds, or appends it if it
//! can tell there is none. Only if that fails does the call end with
//! [`Error::InDoubt`]. A retry never creates a second copy. So that a
//! retry always finds its original in the leader's dedup window, a client
//! keeps its unfinished appends (submitted, and their [`PendingAppend`]
//! neither waited for to the end nor dropped) within
//! [`MAX_SEQUENCE_SPAN`](crate::MAX_SEQUENCE_SPAN) sequences of the oldest:
//! past that, new appends wait.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog_proto::entry::MAX_PAYLOAD_LIMIT;
use loglog_proto::producer::{ProducerTag, PRODUCER_ENVELOPE_LEN};
use loglog_proto::wire::{
    append_once_flags, opcode, AdminRequest, ClusterStatus, NodeStatus, Request, ServerError,
    APPEND_UPLOADED, FRAME_HEADER_LEN, READ_LINEARIZABLE,
};
use tokio::sync::oneshot;

use crate::auth::{authenticate, AuthToken};
use crate::connection::{Connection, Reply};
use crate::error::Error;
use crate::page::ReadPage;
use crate::sequences::{Sequence, Sequences};
use crate::stream::EntryStream;
use crate::upload::{UploadConfig, UploadStats, Uploader};

/// Default client address of a node (design notes, section 6).
pub const DEFAULT_CLUSTER: &str = "127.0.0.1:19194";

/// Tunables of a [`Client`]; every bound is explicit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Requests sent and not yet answered on the connection; more callers wait.
    pub max_in_flight: usize,
    /// Largest answer body accepted; a larger frame is a protocol violation.
    /// It must hold the largest entry the nodes accept, plus a little.
    pub max_response_body: u32,
    /// How long opening one TCP connection may take.
    pub connect_timeout: Duration,
    /// How long a node may leave a request unanswered (on top of a read's
    /// long-poll wait, and two minutes more for admin requests, which
    /// nodes bound themselves) before the client gives up on the
    /// connection: every request on it then fails as IO `TimedOut` (an
    /// append's outcome is unknown: retried, then [`Error::InDoubt`]), and
    /// the next call opens a fresh one. Guards against a node that stops
    /// answering without closing the connection (a stopped process, a
    /// black-holed link). It must cover sending the largest request.
    pub request_timeout: Duration,
    /// How many `NotLeader` answers naming a leader one call follows at
    /// once. Past them, and when no leader is known or reachable (an
    /// election is under way), the call retries with backoff until
    /// `leader_wait` has passed.
    pub max_redirects: u32,
    /// How long one call that needs the leader (an append, a linearizable
    /// read) keeps looking for one before it fails with the last error. An
    /// append whose outcome became unknown is retried (deduplicated by the
    /// leader) within the same time, then fails with [`Error::InDoubt`].
    pub leader_wait: Duration,
    /// TLS to the nodes' client listener; `None` (the default): plain TCP,
    /// for local use.
    pub tls: Option<crate::tls::ClientTls>,
    /// The client token, for nodes with authentication on: sent on every
    /// connection the client opens (redirects and reconnects included),
    /// before any request. `None`: no token (nodes with authentication on
    /// then answer every request `Unauthorized`). A node with
    /// authentication off, or one older than it, accepts any token.
    pub token: Option<AuthToken>,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            max_in_flight: 1024,
            max_response_body: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_redirects: 3,
            leader_wait: Duration::from_secs(10),
            tls: None,
            token: None,
        }
    }
}

/// A LogLog client. Cheap to clone; clones share one connection, on which
/// concurrent calls are pipelined.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: Vec<String>,
    config: ClientConfig,
    /// This client's producer id: random, so that no two clients share it.
    producer_id: u64,
    /// This producer's sequence numbers.
    sequences: Arc<Sequences>,
    /// The connection in use; replaced when it fails or a node redirects.
    current: Mutex<Option<Arc<Connection>>>,
    /// Held while a new connection is opened, so concurrent callers that see
    /// the same failure open one connection, not one each.
    connecting: tokio::sync::Mutex<()>,
    /// Upload mode, once enabled ([`Client::enable_upload`]).
    uploader: std::sync::OnceLock<Arc<Uploader>>,
}

/// An append that was sent and whose answer is still to come; see
/// [`Client::submit_append`].
pub struct PendingAppend {
    client: Client,
    connection: Arc<Connection>,
    /// The producer envelope, then the payload: the request's body.
    body: Bytes,
    tag: ProducerTag,
    no_wait: bool,
    /// The body was uploaded to the other members (flag `UPLOADED`).
    uploaded: bool,
    answer: oneshot::Receiver<Reply>,
    search: LeaderSearch,
    /// Unfinished until this is dropped: later appends stay within reach of
    /// the nodes' dedup window while this one may still be retried.
    _sequence: Sequence,
}

impl PendingAppend {
    /// This append's (producer id, sequence).
    pub fn producer_tag(&self) -> ProducerTag {
        self.tag
    }

    /// Waits for the node's answer: the offset of the new entry (or of the
    /// copy a lost answer had already appended).
    pub async fn wait(self) -> Result<u64, Error> {
        let PendingAppend {
            client,
            mut connection,
            body,
            tag,
            no_wait,
            uploaded,
            mut answer,
            mut search,
            _sequence,
        } = self;
        // Set once an attempt may have been appended: every later attempt
        // is then marked as a retry, for the leader to deduplicate.
        let mut retry = false;
        loop {
            let error = match receive(&connection, answer).await {
                Ok(body) => return parse_offset(connection.addr(), &body),
                Err(error) => error,
            };
            let in_doubt = |source: Error| Error::InDoubt {
                producer_id: tag.producer_id,
                sequence: tag.sequence,
                source: Box::new(source),
            };
            if matches!(error.server_error(), Some(ServerError::SequenceUnknown)) {
                return Err(in_doubt(error));
            }
            let indeterminate = error.is_indeterminate();
            let target = if indeterminate {
                retry = true;
                // Any node will do: it redirects to the leader.
                search.pause().await.then_some(None)
            } else {
                // NotLeader: that node appended nothing; others refuse.
                search.after_not_leader(&error).await
            };
            let Some(target) = target else {
                return Err(if retry { in_doubt(error) } else { error });
            };
            connection = match client.reconnect(&connection, target, &mut search).await {
                Ok(connection) => connection,
                Err(error) if retry => return Err(in_doubt(error)),
                Err(error) => return Err(error),
            };
            answer = match send_append(&connection, &body, no_wait, retry, uploaded).await {
                Ok(answer) => answer,
                Err(error) if retry => return Err(in_doubt(error)),
                Err(error) => return Err(error),
            };
        }
    }
}

impl Client {
    /// Connects to the first reachable node of `cluster` ("host:port"
    /// addresses, tried in order), with the default configuration.
    pub async fn connect<A: AsRef<str>>(cluster: &[A]) -> Result<Client, Error> {
        Client::connect_with(cluster, ClientConfig::default()).await
    }

    pub async fn connect_with<A: AsRef<str>>(
        cluster: &[A],
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let cluster: Vec<String> = cluster
            .iter()
            .map(|addr| addr.as_ref().trim().to_string())
            .filter(|addr| !addr.is_empty())
            .collect();
        if cluster.is_empty() {
            return Err(Error::InvalidArgument(
                "the cluster list has no address".to_string(),
            ));
        }
        if config.max_in_flight == 0 {
            return Err(Error::InvalidArgument(
                "max_in_flight must be at least 1".to_string(),
            ));
        }
        let client = Client {
            inner: Arc::new(Inner {
                cluster,
                config,
                producer_id: random_producer_id(),
                sequences: Sequences::new(),
                current: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
                uploader: std::sync::OnceLock::new(),
            }),
        };
        client.connection().await?;
        Ok(client)
    }

    /// The addresses this client was given.
    pub fn cluster(&self) -> &[String] {
        &self.inner.cluster
    }

    /// This client's producer id, written in the envelope of its appends.
    pub fn producer_id(&self) -> u64 {
        self.inner.producer_id
    }

    /// Address of the node the client is connected to, if any.
    pub fn current_address(&self) -> Option<String> {
        self.current()
            .map(|connection| connection.addr().to_string())
    }

    /// Appends one entry and waits until it is committed (durable on a
    /// majority); returns its offset.
    pub async fn append(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.submit_append(payload, false).await?.wait().await
    }

    /// Appends one entry and returns its offset as soon as the leader has
    /// assigned one, without waiting for the commit: the entry may still be
    /// lost if the leader fails.
    pub async fn append_nowait(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.submit_append(payload, true).await?.wait().await
    }

    /// Sends an append and returns as soon as it is queued on the
    /// connection, without waiting for the answer: a caller that submits
    /// several appends in sequence gets them appended in that order (unless
    /// a redirect to a new leader resends some of them), while the answers
    /// are awaited separately. `no_wait` asks for the answer before the commit.
    ///
    /// Waits while the oldest unfinished append of this client (and its
    /// clones) is [`MAX_SEQUENCE_SPAN`](crate::MAX_SEQUENCE_SPAN) sequences
    /// back: a caller that keeps more `PendingAppend`s than that before it
    /// waits for the first would wait for itself.
    pub async fn submit_append(
        &self,
        payload: impl Into<Bytes>,
        no_wait: bool,
    ) -> Result<PendingAppend, Error> {
        let payload = payload.into();
        if payload.len() > MAX_PAYLOAD_LIMIT as usize - PRODUCER_ENVELOPE_LEN {
            return Err(Error::InvalidArgument(format!(
                "payload of {} bytes exceeds the entry format's limit of {} (with the \
                 {PRODUCER_ENVELOPE_LEN}-byte producer envelope)",
                payload.len(),
                MAX_PAYLOAD_LIMIT as usize - PRODUCER_ENVELOPE_LEN
            )));
        }
        let connection = self.connection().await?;
        let sequence = self.inner.sequences.issue().await;
        let tag = ProducerTag {
            producer_id: self.inner.producer_id,
            sequence: sequence.number(),
        };
        let mut body = Vec::with_capacity(PRODUCER_ENVELOPE_LEN + payload.len());
        body.extend_from_slice(&tag.encode());
        body.extend_from_slice(&payload);
        let body = Bytes::from(body);
        // The uploads go out first, in parallel with the append, and are
        // never waited for.
        let uploaded = self.start_upload(&body, payload.len(), connection.addr());
        let answer = send_append(&connection, &body, no_wait, false, uploaded).await?;
        Ok(PendingAppend {
            client: self.clone(),
            connection,
            body,
            tag,
            no_wait,
            uploaded,
            answer,
            search: LeaderSearch::new(&self.inner.config),
            _sequence: sequence,
        })
    }

    /// Switches on upload mode: from now on, every append whose payload is
    /// at least `config.min_payload` bytes is also uploaded by this client
    /// to every other member (module [`crate::upload`]), so the leader
    /// replicates it by digest. Learns the members from the connected
    /// node's cluster status now, and again every `config.refresh`. Upload
    /// mode stays on for the life of the client (and its clones); a second
    /// call changes nothing.
    pub async fn enable_upload(&self, config: UploadConfig) -> Result<(), Error> {
        let status = self.cluster_status().await?;
        let config_inner = &self.inner.config;
        let uploader = self
            .inner
            .uploader
            .get_or_init(|| Arc::new(Uploader::new(config, config_inner.clone())));
        let (members, leader) = member_addresses(&status);
        uploader.set_members(members, leader);
        Ok(())
    }

    /// Upload mode's counters (`None` while it is off).
    pub fn upload_stats(&self) -> Option<UploadStats> {
        self.inner.uploader.get().map(|uploader| uploader.stats())
    }

    /// Upload mode: queues the uploads of `body` for every member but the
    /// leader; returns whether the append is to be flagged `UPLOADED`.
    fn start_upload(&self, body: &Bytes, payload_len: usize, connected: &str) -> bool {
        let Some(uploader) = self.inner.uploader.get() else {
            return false;
        };
        if payload_len < uploader.config().min_payload {
            return false;
        }
        if uploader.take_refresh_due() {
            let (client, uploader) = (self.clone(), uploader.clone());
            tokio::spawn(async move {
                match client.cluster_status().await {
                    Ok(status) => {
                        let (members, leader) = member_addresses(&status);
                        uploader.set_members(members, leader);
                    }
                    Err(_) => uploader.refresh_failed(),
                }
            });
        }
        uploader.upload(body, connected)
    }

    /// Reads whole committed entries from `offset` (an entry boundary): at
    /// most about `max_bytes`, but at least one entry when one is committed.
    /// When `offset` is the node's commit offset, the node waits up to
    /// `wait` for new entries, then answers, possibly with an empty page.
    pub async fn read(
        &self,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<ReadPage, Error> {
        self.read_with(offset, max_bytes, wait, false).await
    }

    /// Like [`Client::read`], but linearizable: the answering node first
    /// confirms with a quorum that it is still the leader (read-index), so
    /// the page's commit offset is at least every append acknowledged
    /// before the call. Followers answer `NotLeader`, which is followed.
    pub async fn read_linearizable(
        &self,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<ReadPage, Error> {
        self.read_with(offset, max_bytes, wait, true).await
    }

    /// Appends the sub-entries as one batch entry (see [`crate::batch`])
    /// and waits for its commit; returns the entry's offset. Sub-entry `i`
    /// is at position `(offset, i)`.
    pub async fn append_batch<I, T>(&self, sub_entries: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let payload = crate::batch::encode_batch(sub_entries)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        self.append(payload).await
    }

    async fn read_with(
        &self,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
        linearizable: bool,
    ) -> Result<ReadPage, Error> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + 16);
        Request::Read {
            offset,
            max_bytes,
            wait_ms,
            linearizable,
        }
        .encode(0, &mut frame);
        let flags = if linearizable { READ_LINEARIZABLE } else { 0 };
        let body = Bytes::from(frame).slice(FRAME_HEADER_LEN..);
        let (addr, answer) = self.call(opcode::READ, flags, body).await?;
        ReadPage::parse(&addr, offset, answer)
    }

    /// The status of the node the client is connected to.
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let (addr, body) = self.call(opcode::STATUS, 0, Bytes::new()).await?;
        NodeStatus::decode(&body).ok_or_else(|| Error::Protocol {
            addr,
            message: format!("status answer of {} bytes is too short", body.len()),
        })
    }

    /// The connected node's status with every cluster member it knows
    /// (replication progress when it leads, when it last heard from each,
    /// its peer traffic). A single node lists no member.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let (addr, body) = self.call(opcode::CLUSTER_STATUS, 0, Bytes::new()).await?;
        ClusterStatus::decode(&body).ok_or_else(|| Error::Protocol {
            addr,
            message: format!("cluster status answer of {} bytes is malformed", body.len()),
        })
    }

    /// Sends an admin request; followers redirect it to the leader. Answers
    /// once the change is done, with the value [`AdminRequest`] describes.
    /// Add-node and remove-node are safe to retry (a node already added or
    /// removed answers at once).
    pub async fn admin(&self, request: AdminRequest<'_>) -> Result<u64, Error> {
        if let AdminRequest::AddNode {
            peer_addr,
            client_addr,
            ..
        } = request
        {
            let max = loglog_proto::wire::MAX_NODE_ADDRESS_LEN;
            if peer_addr.is_empty()
                || client_addr.is_empty()
                || peer_addr.len() > max
                || client_addr.len() > max
            {
                return Err(Error::InvalidArgument(format!(
                    "node addresses must be 1 to {max} bytes"
                )));
            }
        }
        let mut frame = Vec::new();
        Request::Admin(request).encode(0, &mut frame);
        let body = Bytes::from(frame).slice(FRAME_HEADER_LEN..);
        let (addr, answer) = self.call(opcode::ADMIN, 0, body).await?;
        answer
            .get(..8)
            .map(|value| u64::from_le_bytes(value.try_into().expect("8 bytes")))
            .ok_or_else(|| Error::Protocol {
                addr,
                message: format!("admin answer of {} bytes is too short", answer.len()),
            })
    }

    /// The end of the readable log: the connected node's commit offset,
    /// where the next committed entry will start.
    pub async fn end_offset(&self) -> Result<u64, Error> {
        Ok(self.status().await?.commit_offset)
    }

    /// Follows the log from `from` (an entry boundary): yields every data
    /// entry, then waits (long-polls) for new ones, forever.
    pub fn entries(&self, from: u64) -> EntryStream {
        EntryStream::new(self.clone(), from)
    }

    /// Follows the log from `from` like [`Client::entries`], decoding every
    /// data entry as a batch: yields each sub-entry with its `(offset, index)`.
    pub fn sub_entries(&self, from: u64) -> crate::batch::SubEntryStream {
        crate::batch::SubEntryStream::new(self.entries(from))
    }

    /// Sends a request that may safely be sent again (a read, a status):
    /// it follows redirects, and retries once on a fresh connection when
    /// the connection fails. Returns the answering node's address and body.
    async fn call(&self, opcode: u8, flags: u8, body: Bytes) -> Result<(String, Bytes), Error> {
        let mut connection = self.connection().await?;
        let mut search = LeaderSearch::new(&self.inner.config);
        let mut reconnected = false;
        loop {
            let result = match connection.send(opcode, flags, body.clone()).await {
                Ok(answer) => receive(&connection, answer).await,
                Err(error) => Err(error),
            };
            let error = match result {
                Ok(answer) => return Ok((connection.addr().to_string(), answer)),
                Err(error) => error,
            };
            let target = match error {
                Error::Io { .. } if !reconnected => {
                    reconnected = true;
                    None
                }
                error => match search.after_not_leader(&error).await {
                    Some(target) => target,
                    None => return Err(error),
                },
            };
            connection = self.reconnect(&connection, target, &mut search).await?;
        }
    }

    /// Replaces `stale` by a connection to `target` or another node; while
    /// no node is reachable (a leader just died), retries with backoff as
    /// long as `search` allows.
    async fn reconnect(
        &self,
        stale: &Arc<Connection>,
        mut target: Option<String>,
        search: &mut LeaderSearch,
    ) -> Result<Arc<Connection>, Error> {
        loop {
            match self.replace_connection(stale, target.as_deref()).await {
                Err(error @ Error::Connect { .. }) => {
                    if !search.pause().await {
                        return Err(error);
                    }
                    target = None;
                }
                result => return result,
            }
        }
    }

    fn current(&self) -> Option<Arc<Connection>> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The connection in use, opening one if there is none or it failed.
    async fn connection(&self) -> Result<Arc<Connection>, Error> {
        match self.current() {
            Some(connection) if !connection.is_failed() => Ok(connection),
            stale => self.open(stale.as_ref(), None).await,
        }
    }

    /// Replaces `stale` (which failed, or whose node is not the leader) by
    /// a connection to `target`, or to the cluster's first reachable node.
    async fn replace_connection(
        &self,
        stale: &Arc<Connection>,
        target: Option<&str>,
    ) -> Result<Arc<Connection>, Error> {
        self.open(Some(stale), target).await
    }

    async fn open(
        &self,
        stale: Option<&Arc<Connection>>,
        target: Option<&str>,
    ) -> Result<Arc<Connection>, Error> {
        let _connecting = self.inner.connecting.lock().await;
        // Another caller may have replaced the stale connection meanwhile.
        if let Some(current) = self.current() {
            let is_stale = stale.is_some_and(|stale| Arc::ptr_eq(stale, &current));
            if !is_stale && !current.is_failed() {
                return Ok(current);
            }
        }
        let config = &self.inner.config;
        // Without a target, start after the node being replaced: one that
        // knows no leader (mid-election, or a node still joining) must not
        // be asked again and again while the others go untried.
        let cluster = &self.inner.cluster;
        let after_stale = stale
            .and_then(|stale| cluster.iter().position(|addr| addr == stale.addr()))
            .map_or(0, |index| index + 1);
        let candidates = target.into_iter().chain(
            cluster[after_stale..]
                .iter()
                .chain(&cluster[..after_stale])
                .map(String::as_str),
        );
        let mut last_error = None;
        let mut tried = Vec::new();
        for addr in candidates {
            if tried.contains(&addr) {
                continue;
            }
            tried.push(addr);
            match Connection::open(
                addr,
                config.tls.as_ref(),
                config.max_in_flight,
                config.max_response_body,
                config.connect_timeout,
                config.request_timeout,
            )
            .await
            {
                Ok(connection) => {
                    if let Some(token) = &config.token {
                        match authenticate(&connection, token).await {
                            // A node older than authentication (it does not
                            // know AUTH) has none to check: go on.
                            Ok(_)
                            | Err(Error::Server {
                                source: ServerError::BadRequest { .. },
                                ..
                            }) => {}
                            // The node went away at once: try the next.
                            Err(Error::Io { source, .. }) => {
                                last_error = Some(std::io::Error::new(source.kind(), source));
                                continue;
                            }
                            // An unknown token: no other node will do better.
                            Err(other) => return Err(other),
                        }
                    }
                    let connection = Arc::new(connection);
                    *self
                        .inner
                        .current
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) =
                        Some(Arc::clone(&connection));
                    return Ok(connection);
                }
                Err(Error::Connect { source, .. }) => last_error = Some(source),
                Err(other) => return Err(other),
            }
        }
        Err(Error::Connect {
            addr: tried.join(","),
            source: last_error.expect("the cluster list is never empty"),
        })
    }
}

/// One call's search for the leader: immediate redirects first, then
/// retries with exponential backoff until the deadline.
struct LeaderSearch {
    redirects_left: u32,
    deadline: Instant,
    backoff: Duration,
}

/// First and longest pause between attempts to find a leader.
const LEADER_BACKOFF_MIN: Duration = Duration::from_millis(20);
const LEADER_BACKOFF_MAX: Duration = Duration::from_millis(500);

impl LeaderSearch {
    fn new(config: &ClientConfig) -> LeaderSearch {
        LeaderSearch {
            redirects_left: config.max_redirects,
            deadline: Instant::now() + config.leader_wait,
            backoff: LEADER_BACKOFF_MIN,
        }
    }

    /// After `error`: `Some(target)` to try again (towards the named
    /// leader, if any), `None` to give up. Only `NotLeader` is retried.
    async fn after_not_leader(&mut self, error: &Error) -> Option<Option<String>> {
        let Error::Server {
            source: ServerError::NotLeader { leader },
            ..
        } = error
        else {
            return None;
        };
        match leader {
            Some(leader) if self.redirects_left > 0 => {
                self.redirects_left -= 1;
                Some(Some(leader.clone()))
            }
            // No leader known yet, or it keeps moving: an election.
            _ => self.pause().await.then(|| leader.clone()),
        }
    }

    /// Sleeps before the next attempt; false once the deadline would pass.
    async fn pause(&mut self) -> bool {
        if Instant::now() + self.backoff > self.deadline {
            return false;
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(LEADER_BACKOFF_MAX);
        true
    }
}

/// Sends an append whose `body` starts with its producer envelope.
async fn send_append(
    connection: &Connection,
    body: &Bytes,
    no_wait: bool,
    retry: bool,
    uploaded: bool,
) -> Result<oneshot::Receiver<Reply>, Error> {
    let mut flags = append_once_flags(no_wait, retry);
    if uploaded {
        flags |= APPEND_UPLOADED;
    }
    connection.send(opcode::APPEND, flags, body.clone()).await
}

/// The client addresses of the members a cluster status lists, and the
/// leader's when it names one.
fn member_addresses(status: &ClusterStatus) -> (Vec<String>, Option<String>) {
    let members = status
        .members
        .iter()
        .map(|member| member.client_addr.clone())
        .filter(|addr| !addr.is_empty())
        .collect();
    let leader = status
        .members
        .iter()
        .find(|member| member.id == status.node.leader_id && !member.client_addr.is_empty())
        .map(|member| member.client_addr.clone());
    (members, leader)
}

/// A producer id no other client is likely to have: 64 bits from the
/// process's hashing keys (random per process), the clock, the process id
/// and a per-process counter.
fn random_producer_id() -> u64 {
    static CLIENTS: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(CLIENTS.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

async fn receive(connection: &Connection, answer: oneshot::Receiver<Reply>) -> Reply {
    answer.await.unwrap_or_else(|_| {
        Err(Error::Protocol {
            addr: connection.addr().to_string(),
            message: "request dropped without an answer".to_string(),
        })
    })
}

fn parse_offset(addr: &str, body: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = body.try_into().map_err(|_| Error::Protocol {
        addr: addr.to_string(),
        message: format!("append answer of {} bytes, expected 8", body.len()),
    })?;
    Ok(u64::from_le_bytes(bytes))
}
