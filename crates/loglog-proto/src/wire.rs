//! The client protocol's frames (public contract, see `docs/FORMAT.md`).
//!
//! Requests are pipelined on one TCP connection; every response carries the
//! id of its request, and responses may come back in any order. Every frame
//! is a 16-byte header and a body:
//!
//! ```text
//! request                          response
//! 0..4   body length u32           0..4   body length u32
//! 4      opcode u8                 4      opcode u8 (the request's)
//! 5      flags u8                  5      status u8 (0 ok, else ErrorCode)
//! 6..8   reserved, 0               6..8   reserved, 0
//! 8..16  request id u64            8..16  request id u64
//! ```
//! All integers little endian.

use std::fmt;

use crate::producer::{ProducerTag, PRODUCER_ENVELOPE_LEN};

pub const FRAME_HEADER_LEN: usize = 16;

/// Opcodes of requests.
pub mod opcode {
    /// Body: the payload, after a producer envelope with
    /// [`super::APPEND_PRODUCER`]. Flags: [`super::APPEND_NO_WAIT`],
    /// [`super::APPEND_PRODUCER`], [`super::APPEND_RETRY`].
    /// Ok body: offset u64 of the new entry (or of the producer's earlier
    /// copy of it).
    pub const APPEND: u8 = 1;
    /// Body: offset u64, max bytes u32, wait ms u32. Flags: [`super::READ_LINEARIZABLE`].
    /// Ok body: commit offset u64, then whole entries starting at offset.
    pub const READ: u8 = 2;
    /// Body: empty. Ok body: [`super::NodeStatus`].
    pub const STATUS: u8 = 3;
    /// Body: empty. Ok body: [`super::ClusterStatus`].
    pub const CLUSTER_STATUS: u8 = 4;
    /// Body: [`super::AdminRequest`] (a sub-op byte and its fields).
    /// Ok body: a u64 (see [`super::AdminRequest`]).
    pub const ADMIN: u8 = 5;
    /// Body: digest (32 bytes, SHA-256 of the payload), then the payload
    /// ([`crate::upload`]). Ok body: empty. Caches the payload on this node
    /// for a while, for an append with [`super::APPEND_UPLOADED`].
    pub const UPLOAD: u8 = 6;
    /// Body: a client token (1 to [`crate::auth::MAX_TOKEN_LEN`] bytes).
    /// Ok body: the roles it grants, one byte ([`crate::auth::Roles`]).
    /// Sent once per connection, before other requests; the connection
    /// keeps the roles until it closes or the next AUTH.
    pub const AUTH: u8 = 7;
}

/// Opcode of a response about the whole connection, not one request: the
/// node refused the connection before reading any request (e.g. `Busy`
/// past its connection limit) and closes it. Its request id is 0, which
/// no request uses.
pub const CONNECTION_OPCODE: u8 = 0;

/// Sub-op bytes of [`opcode::ADMIN`] requests.
pub mod admin_op {
    pub const ADD_NODE: u8 = 1;
    pub const REMOVE_NODE: u8 = 2;
    pub const TRANSFER_LEADER: u8 = 3;
    pub const TRIM: u8 = 4;
}

/// Longest node address in admin requests and cluster status (bytes).
pub const MAX_NODE_ADDRESS_LEN: usize = 255;

/// Append flag: answer once the entry has an offset, without waiting for commit.
pub const APPEND_NO_WAIT: u8 = 1;
/// Append flag: the body starts with a 16-byte producer envelope
/// ([`crate::producer`]); the node stores it in front of the payload and
/// appends each (producer id, sequence) at most once.
pub const APPEND_PRODUCER: u8 = 2;
/// Append flag (with [`APPEND_PRODUCER`] only): this (producer id,
/// sequence) may have been sent before; the node answers with the earlier
/// copy's offset, appends it if it can tell no copy exists, or answers
/// `SequenceUnknown`.
pub const APPEND_RETRY: u8 = 4;
/// Append flag: the client uploaded this body (the entry's whole payload,
/// envelope included) to the other members (opcode 6), so the leader may
/// replicate the entry by digest. See [`append_uploaded`].
pub const APPEND_UPLOADED: u8 = 8;

/// Whether an append frame carries [`APPEND_UPLOADED`].
pub fn append_uploaded(header: &FrameHeader) -> bool {
    header.opcode == opcode::APPEND && header.aux & APPEND_UPLOADED != 0
}
/// Read flag: confirm leadership (read-index) before answering.
pub const READ_LINEARIZABLE: u8 = 1;

/// Status byte of a response that succeeded.
pub const STATUS_OK: u8 = 0;

/// The header shared by requests and responses. `code` is the opcode and
/// `aux` is the request's flags or the response's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub body_len: u32,
    pub opcode: u8,
    pub aux: u8,
    pub request_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("frame header has non-zero reserved bytes")]
    ReservedNotZero,
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..4].copy_from_slice(&self.body_len.to_le_bytes());
        out[4] = self.opcode;
        out[5] = self.aux;
        out[8..16].copy_from_slice(&self.request_id.to_le_bytes());
        out
    }

    /// Decodes a frame header from the start of `bytes`; `Ok(None)` when
    /// fewer than 16 bytes are there yet. A frame whose body exceeds
    /// `max_body` is an error: the connection cannot be trusted to resync.
    pub fn decode(bytes: &[u8], max_body: u32) -> Result<Option<FrameHeader>, FrameError> {
        let Some(bytes) = bytes.get(..FRAME_HEADER_LEN) else {
            return Ok(None);
        };
        let body_len = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
        if bytes[6] != 0 || bytes[7] != 0 {
            return Err(FrameError::ReservedNotZero);
        }
        if body_len > max_body {
            return Err(FrameError::TooLarge {
                len: body_len,
                max: max_body,
            });
        }
        Ok(Some(FrameHeader {
            body_len,
            opcode: bytes[4],
            aux: bytes[5],
            request_id: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
        }))
    }

    /// Length of the whole frame, header included.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len as usize
    }
}

/// A decoded request; the append payload borrows from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Append {
        payload: &'a [u8],
        no_wait: bool,
    },
    /// An append with a producer envelope (flag [`APPEND_PRODUCER`]):
    /// `payload` is the user's payload after the envelope.
    AppendOnce {
        producer: ProducerTag,
        retry: bool,
        payload: &'a [u8],
        no_wait: bool,
    },
    Read {
        offset: u64,
        max_bytes: u32,
        wait_ms: u32,
        linearizable: bool,
    },
    Status,
    ClusterStatus,
    Admin(AdminRequest<'a>),
    /// An entry's payload for the node's upload cache, with its digest.
    Upload {
        digest: crate::upload::Digest,
        payload: &'a [u8],
    },
    /// Authenticates the connection with a client token (opcode 7).
    Auth {
        token: &'a [u8],
    },
}

/// An administrative request (opcode 5), answered by the leader (a
/// follower answers `NotLeader`). Body: sub-op u8, then
///
/// ```text
/// 1 add-node         id u64, peer address len u8 + bytes, client address len u8 + bytes
/// 2 remove-node      id u64
/// 3 transfer-leader  id u64
/// 4 trim             offset u64
/// ```
///
/// Addresses are UTF-8 `host:port`, 1 to 255 bytes. The ok answer is a
/// u64: for add-node and remove-node the answering leader's commit offset
/// (past the config entry that made the change), for transfer-leader the
/// new leader's id, for trim the log's new start offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminRequest<'a> {
    /// Add a node: it joins as a learner, catches up, and is promoted to
    /// voter by the leader; answered once it is a voter.
    AddNode {
        id: u64,
        peer_addr: &'a str,
        client_addr: &'a str,
    },
    /// Remove a voter or learner; answered once the change is committed.
    RemoveNode { id: u64 },
    /// Hand leadership to a voter; answered once it leads.
    TransferLeader { id: u64 },
    /// Drop whole segments below the offset.
    Trim { offset: u64 },
}

impl<'a> AdminRequest<'a> {
    fn parse(body: &'a [u8]) -> Result<AdminRequest<'a>, String> {
        let (&sub_op, rest) = body.split_first().ok_or("admin body is empty")?;
        let (number, rest) = rest
            .split_first_chunk::<8>()
            .ok_or("admin body is too short")?;
        let number = u64::from_le_bytes(*number);
        let no_more = |rest: &[u8]| {
            if rest.is_empty() {
                Ok(())
            } else {
                Err("admin body is too long".to_string())
            }
        };
        match sub_op {
            admin_op::ADD_NODE => {
                let mut rest = rest;
                let mut address = || -> Result<&'a str, String> {
                    let (&len, tail) = rest.split_first().ok_or("add-node body is too short")?;
                    let bytes = tail
                        .get(..usize::from(len))
                        .ok_or("add-node body is too short")?;
                    rest = &tail[usize::from(len)..];
                    let text = std::str::from_utf8(bytes)
                        .map_err(|_| "a node address is not UTF-8".to_string())?;
                    if text.is_empty() {
                        return Err("a node address is empty".to_string());
                    }
                    Ok(text)
                };
                let peer_addr = address()?;
                let client_addr = address()?;
                no_more(rest)?;
                Ok(AdminRequest::AddNode {
                    id: number,
                    peer_addr,
                    client_addr,
                })
            }
            admin_op::REMOVE_NODE => {
                no_more(rest).map(|()| AdminRequest::RemoveNode { id: number })
            }
            admin_op::TRANSFER_LEADER => {
                no_more(rest).map(|()| AdminRequest::TransferLeader { id: number })
            }
            admin_op::TRIM => no_more(rest).map(|()| AdminRequest::Trim { offset: number }),
            other => Err(format!("unknown admin sub-op {other}")),
        }
    }

    fn sub_op(&self) -> u8 {
        match self {
            AdminRequest::AddNode { .. } => admin_op::ADD_NODE,
            AdminRequest::RemoveNode { .. } => admin_op::REMOVE_NODE,
            AdminRequest::TransferLeader { .. } => admin_op::TRANSFER_LEADER,
            AdminRequest::Trim { .. } => admin_op::TRIM,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.sub_op());
        match *self {
            AdminRequest::AddNode {
                id,
                peer_addr,
                client_addr,
            } => {
                out.extend_from_slice(&id.to_le_bytes());
                for address in [peer_addr, client_addr] {
                    let len = u8::try_from(address.len())
                        .expect("addresses are checked to be at most 255 bytes");
                    out.push(len);
                    out.extend_from_slice(address.as_bytes());
                }
            }
            AdminRequest::RemoveNode { id } | AdminRequest::TransferLeader { id } => {
                out.extend_from_slice(&id.to_le_bytes());
            }
            AdminRequest::Trim { offset } => out.extend_from_slice(&offset.to_le_bytes()),
        }
    }

    fn body_len(&self) -> usize {
        match self {
            AdminRequest::AddNode {
                peer_addr,
                client_addr,
                ..
            } => 1 + 8 + 2 + peer_addr.len() + client_addr.len(),
            _ => 9,
        }
    }
}

/// Length of a read request's body.
pub const READ_BODY_LEN: usize = 16;

impl<'a> Request<'a> {
    /// Interprets a frame's body. Errors are `BadRequest`s to send back; the
    /// connection stays usable since the frame length was valid.
    pub fn parse(header: &FrameHeader, body: &'a [u8]) -> Result<Request<'a>, ServerError> {
        let bad = |message: String| Err(ServerError::BadRequest { message });
        match header.opcode {
            opcode::APPEND => {
                let flags = header.aux;
                if flags & !(APPEND_NO_WAIT | APPEND_PRODUCER | APPEND_RETRY | APPEND_UPLOADED) != 0
                    || (flags & APPEND_RETRY != 0 && flags & APPEND_PRODUCER == 0)
                {
                    return bad(format!("unknown append flags {flags:#04x}"));
                }
                let no_wait = flags & APPEND_NO_WAIT != 0;
                if flags & APPEND_PRODUCER == 0 {
                    return Ok(Request::Append {
                        payload: body,
                        no_wait,
                    });
                }
                let Some((producer, payload)) = ProducerTag::split(body) else {
                    return bad(format!(
                        "an append with a producer envelope needs at least \
                         {PRODUCER_ENVELOPE_LEN} body bytes, got {}",
                        body.len()
                    ));
                };
                Ok(Request::AppendOnce {
                    producer,
                    retry: flags & APPEND_RETRY != 0,
                    payload,
                    no_wait,
                })
            }
            opcode::READ => {
                if header.aux & !READ_LINEARIZABLE != 0 {
                    return bad(format!("unknown read flags {:#04x}", header.aux));
                }
                if body.len() != READ_BODY_LEN {
                    return bad(format!(
                        "read body must be {READ_BODY_LEN} bytes, got {}",
                        body.len()
                    ));
                }
                Ok(Request::Read {
                    offset: u64::from_le_bytes(body[0..8].try_into().expect("8 bytes")),
                    max_bytes: u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")),
                    wait_ms: u32::from_le_bytes(body[12..16].try_into().expect("4 bytes")),
                    linearizable: header.aux & READ_LINEARIZABLE != 0,
                })
            }
            opcode::STATUS => {
                if !body.is_empty() || header.aux != 0 {
                    return bad("status takes no body and no flags".to_string());
                }
                Ok(Request::Status)
            }
            opcode::CLUSTER_STATUS => {
                if !body.is_empty() || header.aux != 0 {
                    return bad("cluster status takes no body and no flags".to_string());
                }
                Ok(Request::ClusterStatus)
            }
            opcode::ADMIN => {
                if header.aux != 0 {
                    return bad(format!("unknown admin flags {:#04x}", header.aux));
                }
                AdminRequest::parse(body).map(Request::Admin).or_else(bad)
            }
            opcode::UPLOAD => {
                if header.aux != 0 {
                    return bad(format!("unknown upload flags {:#04x}", header.aux));
                }
                let Some((digest, payload)) = crate::upload::split_upload_body(body) else {
                    return bad("an upload body starts with a 32-byte digest".to_string());
                };
                Ok(Request::Upload { digest, payload })
            }
            opcode::AUTH => {
                if header.aux != 0 {
                    return bad(format!("unknown auth flags {:#04x}", header.aux));
                }
                if body.is_empty() || body.len() > crate::auth::MAX_TOKEN_LEN {
                    return bad(format!(
                        "a token is 1 to {} bytes, got {}",
                        crate::auth::MAX_TOKEN_LEN,
                        body.len()
                    ));
                }
                Ok(Request::Auth { token: body })
            }
            other => bad(format!("unknown opcode {other}")),
        }
    }

    pub fn opcode(&self) -> u8 {
        match self {
            Request::Append { .. } | Request::AppendOnce { .. } => opcode::APPEND,
            Request::Read { .. } => opcode::READ,
            Request::Status => opcode::STATUS,
            Request::ClusterStatus => opcode::CLUSTER_STATUS,
            Request::Admin(_) => opcode::ADMIN,
            Request::Upload { .. } => opcode::UPLOAD,
            Request::Auth { .. } => opcode::AUTH,
        }
    }

    /// Appends the whole frame for this request to `out`.
    pub fn encode(&self, request_id: u64, out: &mut Vec<u8>) {
        let (aux, body_len) = match *self {
            Request::Append { payload, no_wait } => {
                (if no_wait { APPEND_NO_WAIT } else { 0 }, payload.len())
            }
            Request::AppendOnce {
                retry,
                payload,
                no_wait,
                ..
            } => (
                append_once_flags(no_wait, retry),
                PRODUCER_ENVELOPE_LEN + payload.len(),
            ),
            Request::Read { linearizable, .. } => (
                if linearizable { READ_LINEARIZABLE } else { 0 },
                READ_BODY_LEN,
            ),
            Request::Status | Request::ClusterStatus => (0, 0),
            Request::Admin(admin) => (0, admin.body_len()),
            Request::Upload { payload, .. } => (0, crate::upload::DIGEST_LEN + payload.len()),
            Request::Auth { token } => (0, token.len()),
        };
        let header = FrameHeader {
            body_len: u32::try_from(body_len).expect("request body fits a frame"),
            opcode: self.opcode(),
            aux,
            request_id,
        };
        out.extend_from_slice(&header.encode());
        match *self {
            Request::Append { payload, .. } => out.extend_from_slice(payload),
            Request::AppendOnce {
                producer, payload, ..
            } => {
                out.extend_from_slice(&producer.encode());
                out.extend_from_slice(payload);
            }
            Request::Read {
                offset,
                max_bytes,
                wait_ms,
                ..
            } => {
                out.extend_from_slice(&offset.to_le_bytes());
                out.extend_from_slice(&max_bytes.to_le_bytes());
                out.extend_from_slice(&wait_ms.to_le_bytes());
            }
            Request::Status | Request::ClusterStatus => {}
            Request::Admin(admin) => admin.encode_body(out),
            Request::Upload { digest, payload } => {
                out.extend_from_slice(&digest);
                out.extend_from_slice(payload);
            }
            Request::Auth { token } => out.extend_from_slice(token),
        }
    }
}

/// The flags of an append with a producer envelope.
pub fn append_once_flags(no_wait: bool, retry: bool) -> u8 {
    let mut flags = APPEND_PRODUCER;
    if no_wait {
        flags |= APPEND_NO_WAIT;
    }
    if retry {
        flags |= APPEND_RETRY;
    }
    flags
}

/// Role of a node, as reported by status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    Candidate,
    Leader,
    Learner,
    /// Out of the cluster: its own configuration leaves it out, or a voter
    /// whose log is at least as up to date told it so (a removal it never
    /// received). It does not campaign until a leader reaches it again.
    Removed,
    Unknown(u8),
}

impl Role {
    pub fn to_byte(self) -> u8 {
        match self {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
            Role::Learner => 3,
            Role::Removed => 4,
            Role::Unknown(byte) => byte,
        }
    }

    pub fn from_byte(byte: u8) -> Role {
        match byte {
            0 => Role::Follower,
            1 => Role::Candidate,
            2 => Role::Leader,
            3 => Role::Learner,
            4 => Role::Removed,
            other => Role::Unknown(other),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Follower => f.write_str("follower"),
            Role::Candidate => f.write_str("candidate"),
            Role::Leader => f.write_str("leader"),
            Role::Learner => f.write_str("learner"),
            Role::Removed => f.write_str("removed"),
            Role::Unknown(byte) => write!(f, "unknown({byte})"),
        }
    }
}

/// Body of a successful status response. Fixed layout of
/// [`NodeStatus::ENCODED_LEN`] bytes; later versions may append fields, so
/// decoders accept longer bodies and ignore the rest.
///
/// ```text
/// 0..8   node id          8..16  term
/// 16     role             17..20 reserved
/// 20..24 segment count    24..32 start offset
/// 32..40 commit offset    40..48 end offset (written, may pass commit)
/// 48..56 leader id (0: unknown)
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u64,
    pub term: u64,
    pub role: Role,
    pub segment_count: u32,
    pub start_offset: u64,
    pub commit_offset: u64,
    pub end_offset: u64,
    pub leader_id: u64,
}

impl NodeStatus {
    pub const ENCODED_LEN: usize = 56;

    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0..8].copy_from_slice(&self.node_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.term.to_le_bytes());
        out[16] = self.role.to_byte();
        out[20..24].copy_from_slice(&self.segment_count.to_le_bytes());
        out[24..32].copy_from_slice(&self.start_offset.to_le_bytes());
        out[32..40].copy_from_slice(&self.commit_offset.to_le_bytes());
        out[40..48].copy_from_slice(&self.end_offset.to_le_bytes());
        out[48..56].copy_from_slice(&self.leader_id.to_le_bytes());
        out
    }

    pub fn decode(body: &[u8]) -> Option<NodeStatus> {
        let body = body.get(..Self::ENCODED_LEN)?;
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        Some(NodeStatus {
            node_id: u64_at(0),
            term: u64_at(8),
            role: Role::from_byte(body[16]),
            segment_count: u32::from_le_bytes(body[20..24].try_into().expect("4 bytes")),
            start_offset: u64_at(24),
            commit_offset: u64_at(32),
            end_offset: u64_at(40),
            leader_id: u64_at(48),
        })
    }
}

/// Body of a successful cluster status response: the answering node's
/// [`NodeStatus`], its peer traffic, and every member it knows with its
/// view of that member. Later versions may append fields; decoders ignore
/// bytes after the last record.
///
/// ```text
/// 0..56   NodeStatus (as for opcode 3)
/// 56..64  peer bytes sent u64: bytes written to peer connections since start
/// 64..66  member count M u16 (0: a single node, or a joining one)
/// 66..    M records: id u64, flags u8 (bit 0 voter, bit 1 progress known:
///         the answering node leads), match offset u64 (the leader's view:
///         durable and matching up to here), last heard ms u64 (since this
///         node last received from it; u64::MAX: never, or itself), peer
///         address len u8 + bytes, client address len u8 + bytes (UTF-8,
///         empty: unknown)
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node: NodeStatus,
    pub peer_bytes_sent: u64,
    pub members: Vec<MemberStatus>,
}

/// One member as seen by the node answering a cluster status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    pub id: u64,
    pub voter: bool,
    /// The leader's view of its log (`None` unless the answering node leads).
    pub match_offset: Option<u64>,
    /// Milliseconds since the answering node last heard from it.
    pub last_heard_ms: Option<u64>,
    pub peer_addr: String,
    pub client_addr: String,
}

const MEMBER_VOTER: u8 = 1;
const MEMBER_PROGRESS: u8 = 2;

impl ClusterStatus {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(66 + 40 * self.members.len());
        out.extend_from_slice(&self.node.encode());
        out.extend_from_slice(&self.peer_bytes_sent.to_le_bytes());
        let count = u16::try_from(self.members.len()).expect("at most 510 members");
        out.extend_from_slice(&count.to_le_bytes());
        for member in &self.members {
            out.extend_from_slice(&member.id.to_le_bytes());
            let mut flags = 0;
            if member.voter {
                flags |= MEMBER_VOTER;
            }
            if member.match_offset.is_some() {
                flags |= MEMBER_PROGRESS;
            }
            out.push(flags);
            out.extend_from_slice(&member.match_offset.unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&member.last_heard_ms.unwrap_or(u64::MAX).to_le_bytes());
            for address in [&member.peer_addr, &member.client_addr] {
                // Longer addresses are never stored (MAX_NODE_ADDRESS_LEN).
                let bytes = &address.as_bytes()[..address.len().min(MAX_NODE_ADDRESS_LEN)];
                out.push(bytes.len() as u8);
                out.extend_from_slice(bytes);
            }
        }
        out
    }

    /// Decodes untrusted bytes: `None` when they do not hold a whole status.
    pub fn decode(body: &[u8]) -> Option<ClusterStatus> {
        let node = NodeStatus::decode(body)?;
        let mut rest = body.get(NodeStatus::ENCODED_LEN..)?;
        let mut take = |len: usize| -> Option<&[u8]> {
            let taken = rest.get(..len)?;
            rest = &rest[len..];
            Some(taken)
        };
        let u64_of = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        let peer_bytes_sent = u64_of(take(8)?);
        let count = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes"));
        let mut members = Vec::with_capacity(usize::from(count).min(512));
        for _ in 0..count {
            let id = u64_of(take(8)?);
            let flags = take(1)?[0];
            let match_offset = u64_of(take(8)?);
            let last_heard = u64_of(take(8)?);
            let mut address = || -> Option<String> {
                let len = usize::from(take(1)?[0]);
                Some(String::from_utf8_lossy(take(len)?).into_owned())
            };
            let peer_addr = address()?;
            let client_addr = address()?;
            members.push(MemberStatus {
                id,
                voter: flags & MEMBER_VOTER != 0,
                match_offset: (flags & MEMBER_PROGRESS != 0).then_some(match_offset),
                last_heard_ms: (last_heard != u64::MAX).then_some(last_heard),
                peer_addr,
                client_addr,
            });
        }
        Some(ClusterStatus {
            node,
            peer_bytes_sent,
            members,
        })
    }
}

/// Length of the prefix of a successful read response's body.
pub const READ_RESPONSE_PREFIX_LEN: usize = 8;

/// Typed errors a node answers with. The status byte is [`ServerError::code`];
/// the body carries the detail.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// Body: the leader's client address as UTF-8, empty when unknown.
    #[error("not the leader{}", match leader { Some(addr) => format!(" (leader is {addr})"), None => " (leader unknown)".to_string() })]
    NotLeader { leader: Option<String> },
    /// Body: the log's start offset u64.
    #[error("offset is below the log's start offset {start} (trimmed)")]
    Trimmed { start: u64 },
    /// Body: the maximum payload u32.
    #[error("entry too large: the maximum payload is {max} bytes")]
    TooLarge { max: u32 },
    /// Body: a UTF-8 message.
    #[error("bad request: {message}")]
    BadRequest { message: String },
    /// Body: empty. Retry later.
    #[error("server busy, retry later")]
    Busy,
    /// Body: empty.
    #[error("server is shutting down")]
    ShuttingDown,
    /// Body: the node's commit offset u64, which the read offset passed.
    #[error("offset is past the end of the committed log ({end})")]
    OutOfRange { end: u64 },
    /// Body: a UTF-8 message. The node cannot make entries durable (disk
    /// full, IO error); nothing was acknowledged.
    #[error("storage unavailable: {message}")]
    Unavailable { message: String },
    /// Body: empty. Answers a retried append (flag [`APPEND_RETRY`]) whose
    /// earlier copy the node can neither find nor rule out (its producer
    /// table no longer covers it): nothing was appended now, and whether
    /// the earlier attempt was is unknown.
    #[error("outcome of the retried append unknown: its producer sequence is outside the node's dedup window; nothing was appended now")]
    SequenceUnknown,
    /// Body: a UTF-8 message. An admin request did not finish in time
    /// (e.g. the added node did not catch up), or an append was not
    /// committed within the node's `max_commit_wait` (no majority stored
    /// it); either may still finish later.
    #[error("timed out: {message}")]
    TimedOut { message: String },
    /// Body: a UTF-8 message. The connection's token (or its lack of one)
    /// does not grant the role the request needs, or an AUTH request's
    /// token is not known; nothing changed.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// A status byte this version does not know.
    #[error("unknown error code {code}")]
    Unknown { code: u8 },
}

impl ServerError {
    /// A stable snake_case name of the error's kind (metrics labels, logs).
    pub fn kind_name(&self) -> &'static str {
        match self {
            ServerError::NotLeader { .. } => "not_leader",
            ServerError::Trimmed { .. } => "trimmed",
            ServerError::TooLarge { .. } => "too_large",
            ServerError::BadRequest { .. } => "bad_request",
            ServerError::Busy => "busy",
            ServerError::ShuttingDown => "shutting_down",
            ServerError::OutOfRange { .. } => "out_of_range",
            ServerError::Unavailable { .. } => "unavailable",
            ServerError::SequenceUnknown => "sequence_unknown",
            ServerError::TimedOut { .. } => "timed_out",
            ServerError::Unauthorized { .. } => "unauthorized",
            ServerError::Unknown { .. } => "unknown",
        }
    }

    pub fn code(&self) -> u8 {
        match self {
            ServerError::NotLeader { .. } => 1,
            ServerError::Trimmed { .. } => 2,
            ServerError::TooLarge { .. } => 3,
            ServerError::BadRequest { .. } => 4,
            ServerError::Busy => 5,
            ServerError::ShuttingDown => 6,
            ServerError::OutOfRange { .. } => 7,
            ServerError::Unavailable { .. } => 8,
            ServerError::SequenceUnknown => 9,
            ServerError::TimedOut { .. } => 10,
            ServerError::Unauthorized { .. } => 12,
            ServerError::Unknown { code } => *code,
        }
    }

    /// The error's body bytes.
    pub fn encode_body(&self) -> Vec<u8> {
        match self {
            ServerError::NotLeader { leader } => leader.clone().unwrap_or_default().into_bytes(),
            ServerError::Trimmed { start } => start.to_le_bytes().to_vec(),
            ServerError::TooLarge { max } => max.to_le_bytes().to_vec(),
            ServerError::BadRequest { message }
            | ServerError::Unavailable { message }
            | ServerError::TimedOut { message }
            | ServerError::Unauthorized { message } => message.clone().into_bytes(),
            ServerError::OutOfRange { end } => end.to_le_bytes().to_vec(),
            ServerError::Busy
            | ServerError::ShuttingDown
            | ServerError::SequenceUnknown
            | ServerError::Unknown { .. } => Vec::new(),
        }
    }

    /// Decodes the error of a response whose status byte is `code` (non-zero).
    /// A malformed body gives the error with what could be read, not a panic.
    pub fn decode(code: u8, body: &[u8]) -> ServerError {
        let text = || String::from_utf8_lossy(body).into_owned();
        let u64_body = || {
            body.get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
                .unwrap_or(0)
        };
        match code {
            1 => ServerError::NotLeader {
                leader: if body.is_empty() { None } else { Some(text()) },
            },
            2 => ServerError::Trimmed { start: u64_body() },
            3 => ServerError::TooLarge {
                max: body
                    .get(..4)
                    .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                    .unwrap_or(0),
            },
            4 => ServerError::BadRequest { message: text() },
            5 => ServerError::Busy,
            6 => ServerError::ShuttingDown,
            7 => ServerError::OutOfRange { end: u64_body() },
            8 => ServerError::Unavailable { message: text() },
            9 => ServerError::SequenceUnknown,
            10 => ServerError::TimedOut { message: text() },
            12 => ServerError::Unauthorized { message: text() },
            code => ServerError::Unknown { code },
        }
    }
}

/// Appends a whole error response frame to `out`.
pub fn encode_error_response(opcode: u8, request_id: u64, error: &ServerError, out: &mut Vec<u8>) {
    let body = error.encode_body();
    let header = FrameHeader {
        body_len: u32::try_from(body.len()).expect("error body fits a frame"),
        opcode,
        aux: error.code(),
        request_id,
    };
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(&body);
}

/// Header of a successful response with a body of `body_len` bytes; the
/// caller writes the body (for reads, possibly straight from a file).
pub fn ok_response_header(opcode: u8, request_id: u64, body_len: u32) -> [u8; FRAME_HEADER_LEN] {
    FrameHeader {
        body_len,
        opcode,
        aux: STATUS_OK,
        request_id,
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(request: Request<'_>) {
        let mut frame = Vec::new();
        request.encode(77, &mut frame);
        let header = FrameHeader::decode(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(header.request_id, 77);
        assert_eq!(header.frame_len(), frame.len());
        assert_eq!(
            Request::parse(&header, &frame[FRAME_HEADER_LEN..]).unwrap(),
            request
        );
    }

    #[test]
    fn requests_round_trip() {
        round_trip(Request::Append {
            payload: b"hello",
            no_wait: false,
        });
        round_trip(Request::Append {
            payload: b"",
            no_wait: true,
        });
        round_trip(Request::Read {
            offset: 1 << 40,
            max_bytes: 4096,
            wait_ms: 250,
            linearizable: true,
        });
        round_trip(Request::Status);
        round_trip(Request::AppendOnce {
            producer: ProducerTag {
                producer_id: u64::MAX,
                sequence: 3,
            },
            retry: true,
            payload: b"once",
            no_wait: false,
        });
        round_trip(Request::AppendOnce {
            producer: ProducerTag {
                producer_id: 1,
                sequence: 0,
            },
            retry: false,
            payload: b"",
            no_wait: true,
        });
        round_trip(Request::ClusterStatus);
        round_trip(Request::Auth { token: b"llt_0123" });
        round_trip(Request::Admin(AdminRequest::AddNode {
            id: 4,
            peer_addr: "10.0.0.4:19195",
            client_addr: "10.0.0.4:19194",
        }));
        round_trip(Request::Admin(AdminRequest::RemoveNode { id: 2 }));
        round_trip(Request::Admin(AdminRequest::TransferLeader { id: 3 }));
        round_trip(Request::Admin(AdminRequest::Trim { offset: 1 << 30 }));
        round_trip(Request::Upload {
            digest: crate::upload::digest(b"payload"),
            payload: b"payload",
        });
    }

    #[test]
    fn malformed_producer_appends_are_bad_requests() {
        let header = |aux, body_len| FrameHeader {
            body_len,
            opcode: opcode::APPEND,
            aux,
            request_id: 1,
        };
        // Too short for the envelope; retry without a producer; unknown bits.
        for (aux, body) in [
            (APPEND_PRODUCER, &[0u8; 15][..]),
            (APPEND_RETRY, &[0u8; 16][..]),
            (16, &[0u8; 16][..]),
        ] {
            assert!(matches!(
                Request::parse(&header(aux, body.len() as u32), body),
                Err(ServerError::BadRequest { .. })
            ));
        }
    }

    #[test]
    fn admin_bodies_are_checked() {
        let header = |len: usize| FrameHeader {
            body_len: len as u32,
            opcode: opcode::ADMIN,
            aux: 0,
            request_id: 1,
        };
        for body in [
            &[][..],
            &[9, 0, 0, 0, 0, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 0][..],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0, 7][..],
            &[1, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1, b'x'][..],
            &[1, 4, 0, 0, 0, 0, 0, 0, 0, 3, b'a'][..],
        ] {
            assert!(
                matches!(
                    Request::parse(&header(body.len()), body),
                    Err(ServerError::BadRequest { .. })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn cluster_status_round_trips() {
        let status = ClusterStatus {
            node: NodeStatus {
                node_id: 2,
                term: 3,
                role: Role::Leader,
                segment_count: 1,
                start_offset: 0,
                commit_offset: 64,
                end_offset: 80,
                leader_id: 2,
            },
            peer_bytes_sent: 12345,
            members: vec![
                MemberStatus {
                    id: 1,
                    voter: true,
                    match_offset: Some(64),
                    last_heard_ms: Some(12),
                    peer_addr: "h1:2".into(),
                    client_addr: "h1:1".into(),
                },
                MemberStatus {
                    id: 4,
                    voter: false,
                    match_offset: None,
                    last_heard_ms: None,
                    peer_addr: String::new(),
                    client_addr: String::new(),
                },
            ],
        };
        let bytes = status.encode();
        assert_eq!(ClusterStatus::decode(&bytes), Some(status));
        for len in [0, 60, 66, bytes.len() - 1] {
            if len < bytes.len() && len != 66 {
                assert_eq!(ClusterStatus::decode(&bytes[..len]), None, "{len}");
            }
        }
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let header = FrameHeader {
            body_len: 10,
            opcode: 99,
            aux: 0,
            request_id: 1,
        };
        assert!(matches!(
            Request::parse(&header, &[0; 10]),
            Err(ServerError::BadRequest { .. })
        ));
        let read = FrameHeader {
            body_len: 3,
            opcode: opcode::READ,
            aux: 0,
            request_id: 1,
        };
        assert!(matches!(
            Request::parse(&read, &[0; 3]),
            Err(ServerError::BadRequest { .. })
        ));
        let big = FrameHeader {
            body_len: 1000,
            opcode: 1,
            aux: 0,
            request_id: 1,
        }
        .encode();
        assert_eq!(
            FrameHeader::decode(&big, 999),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        );
        assert_eq!(FrameHeader::decode(&big[..15], 999), Ok(None));
    }

    #[test]
    fn auth_requests_carry_one_bounded_token() {
        let header = |body_len: usize, aux: u8| FrameHeader {
            body_len: body_len as u32,
            opcode: opcode::AUTH,
            aux,
            request_id: 1,
        };
        let max = crate::auth::MAX_TOKEN_LEN;
        let token = vec![b'x'; max];
        assert_eq!(
            Request::parse(&header(max, 0), &token),
            Ok(Request::Auth { token: &token })
        );
        for (body, aux) in [(&[][..], 0), (&[b'x'; 257][..], 0), (&b"tok"[..], 1)] {
            assert!(matches!(
                Request::parse(&header(body.len(), aux), body),
                Err(ServerError::BadRequest { .. })
            ));
        }
        assert_eq!(
            ServerError::Unauthorized {
                message: String::new()
            }
            .code(),
            12
        );
        assert_eq!(
            ServerError::Unauthorized {
                message: String::new()
            }
            .kind_name(),
            "unauthorized"
        );
    }

    #[test]
    fn errors_round_trip() {
        let errors = [
            ServerError::NotLeader {
                leader: Some("10.0.0.1:19194".into()),
            },
            ServerError::NotLeader { leader: None },
            ServerError::Trimmed { start: 4096 },
            ServerError::TooLarge { max: 1024 },
            ServerError::BadRequest {
                message: "nope".into(),
            },
            ServerError::Busy,
            ServerError::ShuttingDown,
            ServerError::OutOfRange { end: 9 },
            ServerError::Unavailable {
                message: "disk full".into(),
            },
            ServerError::SequenceUnknown,
            ServerError::TimedOut {
                message: "slow".into(),
            },
            ServerError::Unauthorized {
                message: "append needs the append role".into(),
            },
        ];
        for error in errors {
            assert_eq!(
                ServerError::decode(error.code(), &error.encode_body()),
                error
            );
        }
    }

    #[test]
    fn status_round_trips() {
        let status = NodeStatus {
            node_id: 1,
            term: 5,
            role: Role::Leader,
            segment_count: 3,
            start_offset: 0,
            commit_offset: 100,
            end_offset: 116,
            leader_id: 1,
        };
        assert_eq!(NodeStatus::decode(&status.encode()), Some(status));
        assert_eq!(NodeStatus::decode(&[0; 10]), None);
    }

    proptest! {
        #[test]
        fn parsing_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some(header)) = FrameHeader::decode(&bytes, 1 << 20) {
                let body = bytes.get(FRAME_HEADER_LEN..).unwrap_or(&[]);
                let body = &body[..body.len().min(header.body_len as usize)];
                let _ = Request::parse(&header, body);
                let _ = ServerError::decode(header.aux, body);
                let _ = NodeStatus::decode(body);
                let _ = ClusterStatus::decode(body);
            }
        }
    }
}
