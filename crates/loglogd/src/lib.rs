//! The LogLog node: storage, the append pipeline and the TCP server wired
//! together; the `loglogd` binary, and embeddable as a library.
//!
//! # Embedded use
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use loglogd::{Config, Node};
//!
//! let mut config = Config::new("/tmp/my-log");
//! config.listen = None; // embedded only; Some(addr) also serves TCP clients
//! let node = Node::start(config).await?;
//! let offset = node.append(&b"hello"[..]).await?; // durable when it returns
//! let chunk = node.read(offset, 1 << 20, Duration::ZERO).await?;
//! for (at, payload) in chunk.data_entries() {
//!     println!("{at}: {payload:?}");
//! }
//! node.shutdown().await;
//! # Ok(())
//! # }
//! ```
//! `examples/embedded.rs` is the runnable version
//! (`cargo run -p loglogd --example embedded`).
//!
//! # Shape (single node now, a Raft cluster later)
//!
//! * An entry's id is its byte offset; offsets are dense. Every entry header
//!   carries the term of the node that appended it.
//! * Term: `<data-dir>/node.state` holds the node's term. On start the node
//!   takes term = stored + 1 (what a single-node election does), saves it
//!   durably, then appends a no-op entry of that term before serving.
//! * The **commit offset** is what readers never pass. A single node
//!   commits what it has made durable (with `--fsync never`, what it has
//!   written).
//! * Appends run through a pipelined group commit: appenders -> a bounded
//!   queue -> ONE writer thread (drains the queue up to a byte bound,
//!   encodes every entry with the current term into one buffer, one write,
//!   answers no-wait appends) -> ONE syncer thread (one fdatasync covers
//!   every write before it; while it runs, the writer writes the next
//!   batch) -> the commit tracker (publishes the commit offset on a
//!   `tokio::sync::watch`, answers waiting appends in offset order, wakes
//!   long-poll readers). No lock is held across IO.
//! * **The replication seam**: the commit tracker is advanced by the syncer
//!   with the local durable end today. With Raft, the syncer reports the
//!   durable end to the consensus core instead, and the core advances the
//!   tracker when a quorum holds an entry of the current term; the writer,
//!   the tracker, the readers and the server stay as they are.
//! * Failures: a batch's disk space is reserved before it is written, so
//!   a full disk answers it `Unavailable` ("disk full") unwritten, and
//!   appends resume by themselves when space returns; another write error
//!   answers its batch `Unavailable` too (any part written is removed
//!   durably); an fsync error poisons the node (every append `Unavailable`
//!   until a restart, since the kernel may have dropped dirty pages).
//!   Nothing is acknowledged that is not durable; reads keep serving the
//!   committed prefix. Cluster members: ARCHITECTURE.md, "Full disk".
//! * Retention ([`Retention`], `[retention]` in the config file) trims
//!   whole old segments through [`Node::trim_prefix`]: see [`retention`].
//!
//! # TCP server
//!
//! The wire protocol is `loglog_proto::wire`. Requests are pipelined and
//! answered by id, possibly out of order. Per connection: bounded requests
//! and bytes in flight (at the bound the node stops reading the socket), and
//! responses coalesced into as few writes as possible. Node-wide: bounded
//! bytes of requests and of read answers across all connections, so the
//! node's buffered memory has a fixed worst case whatever the clients do
//! ([`Limits`], about 480 MiB with the defaults); a client that stops
//! taking its answers, or stops mid-frame, is disconnected after
//! `client_stall_timeout` so that it cannot keep its share. A malformed frame
//! (non-zero reserved bytes, a body over `max_entry_size + 1024`) is
//! answered (`TooLarge` for an append, else `BadRequest`) and closes that
//! connection only; an unknown opcode or a bad body is answered
//! `BadRequest` and the connection goes on. Past `max_connections` a new
//! connection gets one `Busy` frame (opcode 0, request id 0) and is closed.
//! A single node is its own leader, so linearizable reads are plain reads.
//! With client tokens in [`Config::auth`] (the config file's
//! `[[auth.tokens]]`), each request needs its role ([`auth`]); calls on
//! the embedded [`Node`] API are the program's own and are not checked.
//!
//! Plain TCP is the default (local use). With [`Config::tls`] the client
//! listener speaks TLS (optionally demanding client certificates) and
//! peers authenticate each other by mutual TLS with the cluster's CA
//! ([`tls`]); the protocol inside is the same. On plain TCP, read answers
//! of 16 KiB or more are sent from the segment files with `sendfile`.
//!
//! # Replicated mode
//!
//! With [`Config::cluster`] set (`loglogd --peers ...`), the node runs the
//! `loglog-raft` consensus core instead of the single-node pipeline: see
//! the [`cluster`] module. Appends on a follower answer `NotLeader` with the
//! leader's client address; reads on any node return its committed prefix;
//! a linearizable read confirms leadership with read-index first.
//!
//! # Data directory layout
//!
//! ```text
//! <data-dir>/LOCK          flock'ed while a node runs (one node per directory)
//! <data-dir>/node.state    node id, term, vote (atomically replaced, CRC-framed)
//! <data-dir>/space.spare   256 KiB set aside, given up to save state on a full disk
//! <data-dir>/log/          segment files: 00000000000000000000.seg, ...
//! <data-dir>/cluster.id    cluster members only: the cluster id fixed at bootstrap
//! <data-dir>/raft.checkpoint  cluster members only: commit offset, term map, membership
//! <data-dir>/raft.durable  cluster members only: a lower bound of the synced end, lost-tail mark
//! <data-dir>/raft.synced   cluster members only: the synced end as of the last fsync (rewritten in place)
//! ```
//! A node refuses to start (a typed [`StartError`]) on a node state or a
//! segment of another format version, a damaged segment header, segments
//! without a node state, or a directory locked by another node. It never
//! deletes data to get going.
//!
//! # Errors
//!
//! Every request error is a [`loglog_proto::wire::ServerError`]: `TooLarge`,
//! `Trimmed`, `OutOfRange`, `BadRequest`, `Busy`, `ShuttingDown`,
//! `Unavailable` (the disk failed or is full: nothing unacknowledged is ever
//! reported durable).

pub mod auth;
pub mod cluster;
pub mod config;
pub mod dedup;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod node;
mod pipeline;
pub mod retention;
mod server;
mod state;
pub mod tls;

pub use config::{
    format_duration, parse_byte_size, parse_duration, Config, Fsync, Limits,
    CONNECTION_BUFFER_BYTES, REQUEST_OVERHEAD,
};
pub use loglog_proto::wire::{NodeStatus, Role, ServerError};
pub use node::{Chunk, Node, StartError, LOCK_FILE, LOG_DIR, NODE_STATE_FILE};
pub use pipeline::Metrics;
pub use retention::Retention;
pub use state::NODE_STATE_VERSION;
pub use tls::{ClientAuth, TlsConfig, TlsListeners};
