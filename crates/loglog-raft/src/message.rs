//! Messages between nodes, and their byte encoding.
//!
//! Every message carries the sender's term. Entries travel as raw log bytes
//! (a run of whole entries, exactly as stored), never re-encoded.
//!
//! # Encoding
//!
//! [`Envelope::encode`] writes `from u64, to u64` and then the message;
//! [`Message::encode`] writes a kind byte and the fields in order, all
//! little endian, booleans packed in a flags byte:
//!
//! ```text
//! 1 RequestVote          term u32, flags u8 (1 pre-vote, 2 transfer), last_offset u64, last_term u32
//! 2 RequestVoteResponse  term u32, flags u8 (1 pre-vote, 2 granted)
//! 3 AppendEntries        term u32, prev_offset u64, prev_term u32, leader_commit u64,
//!                        entries_len u32, entries bytes
//! 4 AppendResponse       term u32, outcome u8, then
//!                          0 accepted: verified_end u64, durable_end u64
//!                          1 rejected: rejected_prev u64, hint term u32, hint term_start u64, hint offset u64
//! 5 Heartbeat            term u32, commit u64, read_seq u64
//! 6 HeartbeatResponse    term u32, read_seq u64, log_end u64
//! 7 TimeoutNow           term u32
//! 8 InstallSnapshot      term u32, leader_commit u64, checkpoint_len u32,
//!                        checkpoint bytes (`Checkpoint::encode`)
//! 9 NotAMember           term u32, last_offset u64, last_term u32
//! ```
//!
//! Decoding takes untrusted bytes: every length is checked, the entry bytes
//! are capped by the caller's limit, unknown kinds or flag bits and trailing
//! bytes are errors. Decoding never panics. (Entry headers and CRCs inside
//! `entries` are checked by the receiving node, not here.)

use bytes::Bytes;

use crate::log::{Checkpoint, LogStateError};
use crate::types::{NodeId, Term};

/// A message and its addressing, as sent between nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub from: NodeId,
    pub to: NodeId,
    pub message: Message,
}

/// The messages of the protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    RequestVote(RequestVote),
    RequestVoteResponse(RequestVoteResponse),
    AppendEntries(AppendEntries),
    AppendResponse(AppendResponse),
    Heartbeat(Heartbeat),
    HeartbeatResponse(HeartbeatResponse),
    TimeoutNow(TimeoutNow),
    InstallSnapshot(InstallSnapshot),
    NotAMember(NotAMember),
}

/// A candidate asks for a vote (or, with `pre_vote`, asks whether it would
/// get one, without anyone changing term).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestVote {
    /// The candidate's term; for a pre-vote, the term it would campaign in.
    pub term: Term,
    pub pre_vote: bool,
    /// Set when the election follows a leadership transfer (`TimeoutNow`):
    /// voters then grant it even if they heard from a leader recently.
    pub transfer: bool,
    /// End offset of the candidate's log.
    pub last_offset: u64,
    /// Term of the candidate's last entry (0 if its log is empty).
    pub last_term: Term,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestVoteResponse {
    /// The voter's term, or for a granted pre-vote the term asked about.
    pub term: Term,
    pub pre_vote: bool,
    pub granted: bool,
}

/// Entries from the leader (or an empty probe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendEntries {
    pub term: Term,
    /// Offset where `entries` start; it must be an entry boundary of the
    /// follower's log.
    pub prev_offset: u64,
    /// Term of the entry that ends at `prev_offset` (0 if it is the start).
    pub prev_term: Term,
    /// The leader's commit offset.
    pub leader_commit: u64,
    /// Whole entries, raw log bytes, starting at `prev_offset`. Shared, not
    /// copied, between the leader's memory, its messages and their frames.
    pub entries: Bytes,
}

/// A follower's answer to `AppendEntries`; also sent unprompted when its
/// durable offset advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    pub term: Term,
    pub outcome: AppendOutcome,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The follower's log matches the leader's up to `verified_end`, and is
    /// durable (fsynced) and matching up to `durable_end <= verified_end`.
    Accepted { verified_end: u64, durable_end: u64 },
    /// `prev_offset` of the rejected message did not match; `hint` lets the
    /// leader jump to the divergence point a term at a time.
    Rejected {
        rejected_prev: u64,
        hint: ConflictHint,
    },
}

/// What a rejecting follower knows about where its log diverges.
///
/// `offset` is at most the rejected `prev_offset` and at most the
/// follower's end; the follower's entries of `term` start at `term_start`
/// and cover every byte below `offset` from there (`term` is the term of
/// the follower's byte at `offset - 1`, and `term <= prev_term`). `term == 0`
/// means the follower has nothing useful below `offset`, which is then 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConflictHint {
    pub term: Term,
    pub term_start: u64,
    pub offset: u64,
}

/// Leadership heartbeat: keeps followers from campaigning, carries the
/// commit offset, and confirms leadership for read-index (`read_seq`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub term: Term,
    /// `min(leader commit, the follower's durable match)`: safe for the
    /// follower to adopt without a log check.
    pub commit: u64,
    pub read_seq: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatResponse {
    pub term: Term,
    pub read_seq: u64,
    /// The follower's log end. Below what the leader counts as its match
    /// only if the follower lost acknowledged bytes (disk damage): the
    /// leader then probes it again instead of waiting forever.
    pub log_end: u64,
}

/// Leadership transfer: the target campaigns at once, skipping pre-vote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeoutNow {
    pub term: Term,
}

/// The answer, besides the vote response, to a vote request from a node
/// that is in neither of the sender's configurations (latest, committed):
/// most likely a removed voter that never received its removal (the
/// leader stopped replicating to it once the change was appended). The
/// candidate believes it only if the sender's log is at least as up to
/// date as its own (see `RaftNode`), and then stops campaigning for a
/// while. Informational: its term is the sender's, and it changes no term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotAMember {
    pub term: Term,
    /// End offset of the sender's log.
    pub last_offset: u64,
    /// Term of the sender's last entry (0 if its log is empty).
    pub last_term: Term,
}

/// Raft's InstallSnapshot with an empty state machine: the leader no longer
/// holds the bytes a follower needs (they were trimmed), so it sends the
/// checkpoint of its log start instead. The follower makes its log begin
/// at `checkpoint.commit_offset` (keeping its entries if it already holds
/// that prefix, else discarding its whole log) and then takes entries from
/// there as usual.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstallSnapshot {
    pub term: Term,
    /// The leader's commit offset (at least the checkpoint's).
    pub leader_commit: u64,
    /// `commit_offset`: the leader's log start, an entry boundary below its
    /// commit offset; `terms`: the leader's term runs below it; `membership`:
    /// the leader's committed configuration (the entries from the start on
    /// replay any change made since, so the follower ends with the same).
    pub checkpoint: Checkpoint,
}

impl Message {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::AppendEntries(m) => m.term,
            Message::AppendResponse(m) => m.term,
            Message::Heartbeat(m) => m.term,
            Message::HeartbeatResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::NotAMember(m) => m.term,
        }
    }
}

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message truncated")]
    Truncated,
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    #[error("unknown append outcome {0}")]
    UnknownOutcome(u8),
    #[error("entries of {len} bytes exceed the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("bad snapshot checkpoint: {0}")]
    BadCheckpoint(LogStateError),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

const KIND_REQUEST_VOTE: u8 = 1;
const KIND_REQUEST_VOTE_RESPONSE: u8 = 2;
const KIND_APPEND_ENTRIES: u8 = 3;
const KIND_APPEND_RESPONSE: u8 = 4;
const KIND_HEARTBEAT: u8 = 5;
const KIND_HEARTBEAT_RESPONSE: u8 = 6;
const KIND_TIMEOUT_NOW: u8 = 7;
const KIND_INSTALL_SNAPSHOT: u8 = 8;
const KIND_NOT_A_MEMBER: u8 = 9;

const FLAG_PRE_VOTE: u8 = 1;
const FLAG_SECOND: u8 = 2;

impl Envelope {
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tail = self.encode_head(out);
        out.extend_from_slice(&tail);
    }

    /// Appends the encoding of this envelope to `out` except its last part,
    /// the entries of an `AppendEntries` (empty for other messages), which
    /// it returns: the encoding is `out`'s new bytes followed by them, so a
    /// transport can write large entries without copying them into a frame.
    pub fn encode_head(&self, out: &mut Vec<u8>) -> Bytes {
        out.extend_from_slice(&self.from.to_le_bytes());
        out.extend_from_slice(&self.to.to_le_bytes());
        self.message.encode_head(out)
    }

    /// Decodes a whole envelope; `max_entries_bytes` caps AppendEntries,
    /// whose entries are a slice of `bytes`, not a copy.
    pub fn decode(bytes: &Bytes, max_entries_bytes: u64) -> Result<Envelope, DecodeError> {
        let mut reader = Reader { bytes };
        let from = reader.u64()?;
        let to = reader.u64()?;
        let message = Message::decode_within(bytes, reader.bytes, max_entries_bytes)?;
        Ok(Envelope { from, to, message })
    }
}

impl Message {
    /// Appends the encoding of this message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tail = self.encode_head(out);
        out.extend_from_slice(&tail);
    }

    /// [`Envelope::encode_head`] for the message alone.
    pub fn encode_head(&self, out: &mut Vec<u8>) -> Bytes {
        let flags = |first: bool, second: bool| {
            (if first { FLAG_PRE_VOTE } else { 0 }) | (if second { FLAG_SECOND } else { 0 })
        };
        match self {
            Message::RequestVote(m) => {
                out.push(KIND_REQUEST_VOTE);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.push(flags(m.pre_vote, m.transfer));
                out.extend_from_slice(&m.last_offset.to_le_bytes());
                out.extend_from_slice(&m.last_term.to_le_bytes());
            }
            Message::RequestVoteResponse(m) => {
                out.push(KIND_REQUEST_VOTE_RESPONSE);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.push(flags(m.pre_vote, m.granted));
            }
            Message::AppendEntries(m) => {
                let len = u32::try_from(m.entries.len())
                    .expect("a batch is bounded by max_batch_bytes plus one entry, under 4 GiB");
                out.push(KIND_APPEND_ENTRIES);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.extend_from_slice(&m.prev_offset.to_le_bytes());
                out.extend_from_slice(&m.prev_term.to_le_bytes());
                out.extend_from_slice(&m.leader_commit.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                // The last field: the caller sends it after `out`.
                return m.entries.clone();
            }
            Message::AppendResponse(m) => {
                out.push(KIND_APPEND_RESPONSE);
                out.extend_from_slice(&m.term.to_le_bytes());
                match m.outcome {
                    AppendOutcome::Accepted {
                        verified_end,
                        durable_end,
                    } => {
                        out.push(0);
                        out.extend_from_slice(&verified_end.to_le_bytes());
                        out.extend_from_slice(&durable_end.to_le_bytes());
                    }
                    AppendOutcome::Rejected {
                        rejected_prev,
                        hint,
                    } => {
                        out.push(1);
                        out.extend_from_slice(&rejected_prev.to_le_bytes());
                        out.extend_from_slice(&hint.term.to_le_bytes());
                        out.extend_from_slice(&hint.term_start.to_le_bytes());
                        out.extend_from_slice(&hint.offset.to_le_bytes());
                    }
                }
            }
            Message::Heartbeat(m) => {
                out.push(KIND_HEARTBEAT);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.extend_from_slice(&m.commit.to_le_bytes());
                out.extend_from_slice(&m.read_seq.to_le_bytes());
            }
            Message::HeartbeatResponse(m) => {
                out.push(KIND_HEARTBEAT_RESPONSE);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.extend_from_slice(&m.read_seq.to_le_bytes());
                out.extend_from_slice(&m.log_end.to_le_bytes());
            }
            Message::TimeoutNow(m) => {
                out.push(KIND_TIMEOUT_NOW);
                out.extend_from_slice(&m.term.to_le_bytes());
            }
            Message::InstallSnapshot(m) => {
                let checkpoint = m.checkpoint.encode();
                let len = u32::try_from(checkpoint.len())
                    .expect("a checkpoint (term runs and one membership) is far below 4 GiB");
                out.push(KIND_INSTALL_SNAPSHOT);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.extend_from_slice(&m.leader_commit.to_le_bytes());
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&checkpoint);
            }
            Message::NotAMember(m) => {
                out.push(KIND_NOT_A_MEMBER);
                out.extend_from_slice(&m.term.to_le_bytes());
                out.extend_from_slice(&m.last_offset.to_le_bytes());
                out.extend_from_slice(&m.last_term.to_le_bytes());
            }
        }
        Bytes::new()
    }

    /// Decodes exactly one message filling `bytes` (AppendEntries' entries
    /// are a slice of it).
    pub fn decode(bytes: &Bytes, max_entries_bytes: u64) -> Result<Message, DecodeError> {
        Message::decode_within(bytes, bytes, max_entries_bytes)
    }

    /// Decodes exactly one message filling `encoded`, a part of `source`.
    fn decode_within(
        source: &Bytes,
        encoded: &[u8],
        max_entries_bytes: u64,
    ) -> Result<Message, DecodeError> {
        let mut reader = Reader { bytes: encoded };
        let kind = reader.u8()?;
        let message = match kind {
            KIND_REQUEST_VOTE => {
                let term = reader.u32()?;
                let flags = reader.flags()?;
                Message::RequestVote(RequestVote {
                    term,
                    pre_vote: flags & FLAG_PRE_VOTE != 0,
                    transfer: flags & FLAG_SECOND != 0,
                    last_offset: reader.u64()?,
                    last_term: reader.u32()?,
                })
            }
            KIND_REQUEST_VOTE_RESPONSE => {
                let term = reader.u32()?;
                let flags = reader.flags()?;
                Message::RequestVoteResponse(RequestVoteResponse {
                    term,
                    pre_vote: flags & FLAG_PRE_VOTE != 0,
                    granted: flags & FLAG_SECOND != 0,
                })
            }
            KIND_APPEND_ENTRIES => {
                let term = reader.u32()?;
                let prev_offset = reader.u64()?;
                let prev_term = reader.u32()?;
                let leader_commit = reader.u64()?;
                let len = u64::from(reader.u32()?);
                if len > max_entries_bytes {
                    return Err(DecodeError::TooLarge {
                        len,
                        max: max_entries_bytes,
                    });
                }
                let entries = source.slice_ref(reader.take(len as usize)?);
                Message::AppendEntries(AppendEntries {
                    term,
                    prev_offset,
                    prev_term,
                    leader_commit,
                    entries,
                })
            }
            KIND_APPEND_RESPONSE => {
                let term = reader.u32()?;
                let outcome = match reader.u8()? {
                    0 => AppendOutcome::Accepted {
                        verified_end: reader.u64()?,
                        durable_end: reader.u64()?,
                    },
                    1 => AppendOutcome::Rejected {
                        rejected_prev: reader.u64()?,
                        hint: ConflictHint {
                            term: reader.u32()?,
                            term_start: reader.u64()?,
                            offset: reader.u64()?,
                        },
                    },
                    other => return Err(DecodeError::UnknownOutcome(other)),
                };
                Message::AppendResponse(AppendResponse { term, outcome })
            }
            KIND_HEARTBEAT => Message::Heartbeat(Heartbeat {
                term: reader.u32()?,
                commit: reader.u64()?,
                read_seq: reader.u64()?,
            }),
            KIND_HEARTBEAT_RESPONSE => Message::HeartbeatResponse(HeartbeatResponse {
                term: reader.u32()?,
                read_seq: reader.u64()?,
                log_end: reader.u64()?,
            }),
            KIND_TIMEOUT_NOW => Message::TimeoutNow(TimeoutNow {
                term: reader.u32()?,
            }),
            KIND_INSTALL_SNAPSHOT => {
                let term = reader.u32()?;
                let leader_commit = reader.u64()?;
                let len = u64::from(reader.u32()?);
                if len > max_entries_bytes {
                    return Err(DecodeError::TooLarge {
                        len,
                        max: max_entries_bytes,
                    });
                }
                let checkpoint = Checkpoint::decode(reader.take(len as usize)?)
                    .map_err(DecodeError::BadCheckpoint)?;
                Message::InstallSnapshot(InstallSnapshot {
                    term,
                    leader_commit,
                    checkpoint,
                })
            }
            KIND_NOT_A_MEMBER => Message::NotAMember(NotAMember {
                term: reader.u32()?,
                last_offset: reader.u64()?,
                last_term: reader.u32()?,
            }),
            other => return Err(DecodeError::UnknownKind(other)),
        };
        if !reader.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.bytes.len()));
        }
        Ok(message)
    }
}

/// A cursor over untrusted bytes: every read checks the length first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < len {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn flags(&mut self) -> Result<u8, DecodeError> {
        let flags = self.u8()?;
        if flags & !(FLAG_PRE_VOTE | FLAG_SECOND) != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        Ok(flags)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("took 4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("took 8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<u32>(),
                any::<bool>(),
                any::<bool>(),
                any::<u64>(),
                any::<u32>()
            )
                .prop_map(|(term, pre_vote, transfer, last_offset, last_term)| {
                    Message::RequestVote(RequestVote {
                        term,
                        pre_vote,
                        transfer,
                        last_offset,
                        last_term,
                    })
                }),
            (any::<u32>(), any::<bool>(), any::<bool>()).prop_map(|(term, pre_vote, granted)| {
                Message::RequestVoteResponse(RequestVoteResponse {
                    term,
                    pre_vote,
                    granted,
                })
            }),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..200)
            )
                .prop_map(|(term, prev_offset, prev_term, leader_commit, entries)| {
                    Message::AppendEntries(AppendEntries {
                        term,
                        prev_offset,
                        prev_term,
                        leader_commit,
                        entries: Bytes::from(entries),
                    })
                }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(
                |(term, verified_end, durable_end)| {
                    Message::AppendResponse(AppendResponse {
                        term,
                        outcome: AppendOutcome::Accepted {
                            verified_end,
                            durable_end,
                        },
                    })
                }
            ),
            (
                any::<u32>(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(term, rejected_prev, hint_term, term_start, offset)| {
                    Message::AppendResponse(AppendResponse {
                        term,
                        outcome: AppendOutcome::Rejected {
                            rejected_prev,
                            hint: ConflictHint {
                                term: hint_term,
                                term_start,
                                offset,
                            },
                        },
                    })
                }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(term, commit, read_seq)| {
                Message::Heartbeat(Heartbeat {
                    term,
                    commit,
                    read_seq,
                })
            }),
            (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(term, read_seq, log_end)| {
                Message::HeartbeatResponse(HeartbeatResponse {
                    term,
                    read_seq,
                    log_end,
                })
            }),
            any::<u32>().prop_map(|term| Message::TimeoutNow(TimeoutNow { term })),
            (any::<u32>(), any::<u64>(), any::<u32>()).prop_map(
                |(term, last_offset, last_term)| {
                    Message::NotAMember(NotAMember {
                        term,
                        last_offset,
                        last_term,
                    })
                }
            ),
            (
                any::<u32>(),
                any::<u64>(),
                1u64..1 << 40,
                1u32..100,
                proptest::collection::btree_set(1u64..50, 1..6)
            )
                .prop_map(|(term, leader_commit, start, run_term, voters)| {
                    let terms = crate::log::TermMap::from_runs(vec![crate::log::TermRun {
                        term: run_term,
                        start: start - 1,
                    }])
                    .expect("one run");
                    Message::InstallSnapshot(InstallSnapshot {
                        term,
                        leader_commit,
                        checkpoint: Checkpoint {
                            commit_offset: start,
                            terms,
                            membership: crate::membership::Membership::with_voters(voters),
                        },
                    })
                }),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(message in any_message(), from in any::<u64>(), to in any::<u64>()) {
            let envelope = Envelope { from, to, message };
            let mut bytes = Vec::new();
            envelope.encode(&mut bytes);
            let encoded = Bytes::from(bytes.clone());
            prop_assert_eq!(Envelope::decode(&encoded, 1 << 20), Ok(envelope.clone()));
            // Every strict prefix is an error, never a panic or a wrong message.
            for cut in 0..bytes.len() {
                prop_assert!(Envelope::decode(&encoded.slice(..cut), 1 << 20).is_err());
            }
            bytes.push(0);
            prop_assert_eq!(
                Envelope::decode(&Bytes::from(bytes), 1 << 20),
                Err(DecodeError::TrailingBytes(1))
            );
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let bytes = Bytes::from(bytes);
            let _ = Envelope::decode(&bytes, 64);
            let _ = Message::decode(&bytes, 64);
        }
    }

    #[test]
    fn entries_over_the_cap_are_refused_and_entries_are_not_copied() {
        let message = Message::AppendEntries(AppendEntries {
            term: 1,
            prev_offset: 0,
            prev_term: 0,
            leader_commit: 0,
            entries: Bytes::from(vec![0; 100]),
        });
        let mut bytes = Vec::new();
        message.encode(&mut bytes);
        let encoded = Bytes::from(bytes.clone());
        assert_eq!(
            Message::decode(&encoded, 99),
            Err(DecodeError::TooLarge { len: 100, max: 99 })
        );
        // Decoded entries share the encoded buffer.
        let Ok(Message::AppendEntries(decoded)) = Message::decode(&encoded, 100) else {
            panic!("the encoding decodes");
        };
        assert_eq!(
            decoded.entries.as_ptr(),
            encoded[encoded.len() - 100..].as_ptr()
        );
        // A length field claiming more than the buffer holds is truncation.
        bytes.truncate(bytes.len() - 1);
        assert_eq!(
            Message::decode(&Bytes::from(bytes), 1000),
            Err(DecodeError::Truncated)
        );
    }
}
