//! A blocking client for code without an async runtime: it owns a small
//! tokio runtime (one worker thread) that runs the async [`crate::Client`]'s
//! connection tasks. Do not use it from inside an async runtime.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loglog_proto::wire::NodeStatus;
use tokio::runtime::Runtime;

use crate::client::ClientConfig;
use crate::error::Error;
use crate::page::{Entry, ReadPage};
use crate::stream::EntryStream;

/// The blocking twin of [`crate::Client`]: same calls, same errors. Cheap
/// to clone; clones share the runtime and the connection, and may be used
/// from several threads at once (their calls are pipelined).
#[derive(Clone)]
pub struct Client {
    // Dropped before the runtime that runs its connection's tasks.
    client: crate::Client,
    runtime: Arc<Runtime>,
}

impl Client {
    /// Connects to the first reachable node of `cluster` ("host:port").
    pub fn connect<A: AsRef<str>>(cluster: &[A]) -> Result<Client, Error> {
        Client::connect_with(cluster, ClientConfig::default())
    }

    pub fn connect_with<A: AsRef<str>>(
        cluster: &[A],
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("loglog-client")
            .enable_all()
            .build()
            .map_err(|source| Error::Connect {
                addr: "(client runtime)".to_string(),
                source,
            })?;
        let client = runtime.block_on(crate::Client::connect_with(cluster, config))?;
        Ok(Client {
            runtime: Arc::new(runtime),
            client,
        })
    }

    /// The async client inside, for code that mixes both.
    pub fn as_async(&self) -> &crate::Client {
        &self.client
    }

    /// See [`crate::Client::append`].
    pub fn append(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.runtime.block_on(self.client.append(payload))
    }

    /// See [`crate::Client::append_nowait`].
    pub fn append_nowait(&self, payload: impl Into<Bytes>) -> Result<u64, Error> {
        self.runtime.block_on(self.client.append_nowait(payload))
    }

    /// See [`crate::Client::read`].
    pub fn read(&self, offset: u64, max_bytes: u32, wait: Duration) -> Result<ReadPage, Error> {
        self.runtime
            .block_on(self.client.read(offset, max_bytes, wait))
    }

    /// See [`crate::Client::read_linearizable`].
    pub fn read_linearizable(
        &self,
        offset: u64,
        max_bytes: u32,
        wait: Duration,
    ) -> Result<ReadPage, Error> {
        self.runtime
            .block_on(self.client.read_linearizable(offset, max_bytes, wait))
    }

    /// See [`crate::Client::append_batch`].
    pub fn append_batch<I, T>(&self, sub_entries: I) -> Result<u64, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        self.runtime.block_on(self.client.append_batch(sub_entries))
    }

    /// See [`crate::Client::status`].
    pub fn status(&self) -> Result<NodeStatus, Error> {
        self.runtime.block_on(self.client.status())
    }

    /// See [`crate::Client::cluster_status`].
    pub fn cluster_status(&self) -> Result<crate::ClusterStatus, Error> {
        self.runtime.block_on(self.client.cluster_status())
    }

    /// See [`crate::Client::admin`].
    pub fn admin(&self, request: crate::AdminRequest<'_>) -> Result<u64, Error> {
        self.runtime.block_on(self.client.admin(request))
    }

    /// See [`crate::Client::end_offset`].
    pub fn end_offset(&self) -> Result<u64, Error> {
        self.runtime.block_on(self.client.end_offset())
    }

    /// Every data entry from `from` on, forever (see [`crate::Client::entries`]).
    pub fn entries(&self, from: u64) -> Entries {
        Entries {
            runtime: Arc::clone(&self.runtime),
            stream: self.client.entries(from),
        }
    }
}

/// Blocking iterator over the log from an offset on; it never ends, and
/// after an error the next call retries from the same place.
pub struct Entries {
    stream: EntryStream,
    runtime: Arc<Runtime>,
}

impl Entries {
    /// See [`EntryStream::position`].
    pub fn position(&self) -> u64 {
        self.stream.position()
    }
}

impl Iterator for Entries {
    type Item = Result<Entry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.runtime.block_on(self.stream.next()))
    }
}
