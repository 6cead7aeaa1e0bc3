//! Following the log's tail.

use std::collections::VecDeque;
use std::time::Duration;

use crate::client::Client;
use crate::error::Error;
use crate::page::Entry;

/// Bytes asked for by each read of a stream, unless changed.
pub const DEFAULT_PAGE_BYTES: u32 = 1024 * 1024;
/// How long each read of a stream waits at the tail for new entries. The
/// stream reads again after an empty answer, so this only sets how often an
/// idle follower polls.
pub const DEFAULT_LONG_POLL: Duration = Duration::from_secs(10);

/// Every data entry from an offset on, forever: pages are read ahead and
/// buffered, and at the tail each read long-polls for new commits.
/// Non-data entries are skipped. An error leaves the stream where it was:
/// calling [`EntryStream::next`] again retries.
pub struct EntryStream {
    client: Client,
    /// Where the next read starts (past every buffered entry).
    read_offset: u64,
    buffered: VecDeque<Entry>,
    page_bytes: u32,
    long_poll: Duration,
}

impl EntryStream {
    pub(crate) fn new(client: Client, from: u64) -> EntryStream {
        EntryStream {
            client,
            read_offset: from,
            buffered: VecDeque::new(),
            page_bytes: DEFAULT_PAGE_BYTES,
            long_poll: DEFAULT_LONG_POLL,
        }
    }

    /// Sets the bytes asked for by each read.
    pub fn page_bytes(mut self, page_bytes: u32) -> EntryStream {
        self.page_bytes = page_bytes.max(1);
        self
    }

    /// Sets how long each read waits at the tail.
    pub fn long_poll(mut self, wait: Duration) -> EntryStream {
        self.long_poll = wait;
        self
    }

    /// Offset of the next entry to read: every data entry below it was
    /// already yielded (or is buffered; see [`EntryStream::next`]).
    pub fn position(&self) -> u64 {
        self.buffered
            .front()
            .map_or(self.read_offset, |entry| entry.offset)
    }

    /// The next data entry, waiting as long as it takes for one to be
    /// committed.
    pub async fn next(&mut self) -> Result<Entry, Error> {
        loop {
            if let Some(entry) = self.buffered.pop_front() {
                return Ok(entry);
            }
            let page = self
                .client
                .read(self.read_offset, self.page_bytes, self.long_poll)
                .await?;
            self.buffered.extend(page.entries());
            self.read_offset = page.next_offset();
        }
    }
}
