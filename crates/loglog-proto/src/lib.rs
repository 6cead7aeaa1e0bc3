//! LogLog's byte formats, and nothing else: no IO, no allocation policy.
//!
//! * [`entry`]: the 16-byte entry header that prefixes every payload in the
//!   log. The log on disk and on the wire is a dense sequence of entries.
//! * [`segment`]: the header of each segment file (not part of the log).
//! * [`wire`]: the client protocol's frames.
//! * [`producer`]: the producer envelope that makes appends idempotent.
//! * [`auth`]: client roles and the stored form of client tokens.
//! * [`upload`]: payload digests and entries replicated by reference.
//!
//! Every decoder here takes untrusted bytes and returns a typed error; none
//! of them panics on any input (they are fuzzed: see `fuzz/`).
//! `docs/FORMAT.md` describes the same formats byte by byte.

pub mod auth;
pub mod entry;
pub mod producer;
pub mod segment;
pub mod upload;
pub mod wire;

pub use entry::{EntryError, EntryHeader, EntryKind, ENTRY_HEADER_LEN};
