//! LogLog client library: async (tokio) and blocking.
//!
//! A [`Client`] keeps one TCP connection to a node of the cluster and
//! pipelines every call on it: requests carry ids, a writer task batches
//! queued frames into few socket writes, and a reader task hands each
//! answer (in whatever order the node sends them) to the caller waiting for
//! it. A semaphore bounds the requests in flight. When the connection
//! fails, every pending call fails with [`Error::Io`] and the next call
//! opens a new connection, trying the cluster's addresses in order. A node
//! that answers `NotLeader` with the leader's address gets the call resent
//! to that leader (appends too: `NotLeader` means nothing was appended).
//! Appends are exactly-once: each carries the client's producer id and a
//! sequence number (a 16-byte envelope the readers strip), so an append
//! whose answer was lost is sent again, as the same one, to the new leader,
//! which answers with the offset of the copy it already has instead of
//! appending a second ([`Error::InDoubt`] when that cannot be settled).
//!
//! Reads return [`ReadPage`]s of whole entries whose checksums are verified
//! on arrival ([`Error::Corrupt`] otherwise); iterating a page yields data
//! entries only. [`Client::entries`] follows the tail with long-polls.
//!
//! ```no_run
//! # async fn example() -> Result<(), loglog::Error> {
//! let client = loglog::Client::connect(&["127.0.0.1:19194"]).await?;
//! let offset = client.append(&b"hello"[..]).await?;
//! let page = client.read(offset, 1 << 20, std::time::Duration::ZERO).await?;
//! for entry in page.entries() {
//!     println!("{} {:?}", entry.offset, entry.payload);
//! }
//! # Ok(()) }
//! ```
//!
//! Nodes with authentication on need a token with the right role
//! ([`ClientConfig::token`], an [`AuthToken`]): the client sends it on every
//! connection it opens, and a request the token does not allow fails with
//! `ServerError::Unauthorized`.
//!
//! [`blocking::Client`] offers the same calls without async.
//!
//! On top of the log, client side (the server never interprets payloads):
//! [`batch`] packs many records into one entry, and [`follower`] drives a
//! state machine that follows the log with durable snapshots.

mod auth;
pub mod batch;
pub mod blocking;
mod client;
mod connection;
mod error;
pub mod follower;
mod page;
mod sequences;
mod stream;
mod tls;
pub mod upload;

pub use auth::AuthToken;
pub use batch::{BatchBuilder, BatchError, SubEntry};
pub use client::{Client, ClientConfig, PendingAppend, DEFAULT_CLUSTER};
pub use error::{Error, Result};
pub use follower::{Follower, FollowerConfig, FollowerError, StateMachine};
pub use page::{Entry, ReadPage};
pub use stream::{EntryStream, DEFAULT_LONG_POLL, DEFAULT_PAGE_BYTES};
pub use tls::ClientTls;
pub use upload::{UploadConfig, UploadStats};

pub use loglog_proto::auth::Roles;
pub use loglog_proto::entry::EntryKind;
pub use loglog_proto::producer::{ProducerTag, MAX_SEQUENCE_SPAN};
pub use loglog_proto::wire::{
    AdminRequest, ClusterStatus, MemberStatus, NodeStatus, Role, ServerError,
};
