//! The client's typed errors.

use std::io;
use std::sync::Arc;

use loglog_proto::entry::EntryError;
use loglog_proto::wire::ServerError;

/// Everything a LogLog client call can fail with.
///
/// Whether a failed append may still have been applied matters to callers:
/// [`Error::is_indeterminate`] tells. Most [`Error::Server`] answers mean
/// the node refused the request and nothing changed; `ShuttingDown` and
/// `Unavailable` may also answer an append that was already written (and
/// replicated) when the node stopped or its disk failed, and `TimedOut` one
/// that was not committed in time but may still commit, so for appends
/// they are indeterminate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No TCP connection could be opened (`addr` lists every address tried).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// An established connection failed or was closed; every request pending
    /// on it fails with this error. Appends among them are indeterminate.
    #[error("connection to {addr} failed: {source}")]
    Io {
        addr: String,
        #[source]
        source: Arc<io::Error>,
    },
    /// The node answered with a typed error; the request had no effect.
    #[error("{addr}: {source}")]
    Server {
        addr: String,
        #[source]
        source: ServerError,
    },
    /// The node broke the wire protocol (unknown request id, malformed body,
    /// data past its own commit offset). The connection is dropped.
    #[error("protocol violation by {addr}: {message}")]
    Protocol { addr: String, message: String },
    /// An entry received from the network failed validation (bad checksum,
    /// truncated, bad header): the bytes were corrupted on the way.
    #[error("corrupt entry at offset {offset} from {addr}: {source}")]
    Corrupt {
        addr: String,
        offset: u64,
        #[source]
        source: EntryError,
    },
    /// An append whose outcome is unknown: an attempt may have been
    /// appended (its answer was lost), and retrying it as the same
    /// (producer, sequence) did not settle it within `leader_wait`, or the
    /// leader could no longer tell (`SequenceUnknown`: its producer table
    /// no longer covers it). It was appended at most once; read the log to
    /// find out (readers see the producer tag: [`crate::Entry::producer`]).
    #[error("append (producer {producer_id:#018x}, sequence {sequence}) in doubt: {source}")]
    InDoubt {
        producer_id: u64,
        sequence: u64,
        #[source]
        source: Box<Error>,
    },
    /// The caller asked for something that cannot be sent (e.g. a payload
    /// larger than the entry format allows, or an empty cluster list).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// The server's typed error, if the node answered with one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            Error::Server { source, .. } => Some(source),
            _ => None,
        }
    }

    /// True when a failed append may nonetheless have been (or still be)
    /// committed: the request may have reached the node before the
    /// connection failed. Such an append must not be blindly retried by a
    /// caller that needs exactly-once entries.
    pub fn is_indeterminate(&self) -> bool {
        matches!(
            self,
            Error::Io { .. }
                | Error::InDoubt { .. }
                | Error::Protocol { .. }
                | Error::Corrupt { .. }
                | Error::Server {
                    source: ServerError::ShuttingDown
                        | ServerError::Unavailable { .. }
                        | ServerError::TimedOut { .. }
                        | ServerError::SequenceUnknown,
                    ..
                }
        )
    }
}

/// Shorthand for results of client calls.
pub type Result<T, E = Error> = std::result::Result<T, E>;
