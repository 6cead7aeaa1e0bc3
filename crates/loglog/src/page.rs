//! Read answers: a page of whole, checksum-verified entries.

use bytes::Bytes;
use loglog_proto::entry::{EntryIter, EntryKind, ENTRY_HEADER_LEN, MAX_PAYLOAD_LIMIT};
use loglog_proto::producer::{entry_producer, ProducerTag, PRODUCER_ENVELOPE_LEN};
use loglog_proto::wire::READ_RESPONSE_PREFIX_LEN;

use crate::error::Error;

/// One entry of the log, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Byte offset of the entry (its id).
    pub offset: u64,
    /// Raft term of the leader that appended it.
    pub term: u32,
    /// What the entry is; [`ReadPage::entries`] yields only `Data`.
    pub kind: EntryKind,
    /// Who appended it and its sequence number, when it was appended with
    /// a producer envelope (every append of this library is).
    pub producer: Option<ProducerTag>,
    /// The payload as the appender gave it (after the producer envelope,
    /// which is stripped), shared with the page's buffer (no copy).
    pub payload: Bytes,
}

impl Entry {
    /// Offset where the next entry starts.
    pub fn next_offset(&self) -> u64 {
        let envelope = if self.producer.is_some() {
            PRODUCER_ENVELOPE_LEN
        } else {
            0
        };
        self.offset + (ENTRY_HEADER_LEN + envelope + self.payload.len()) as u64
    }
}

/// Where one entry lies in a page's bytes; built once, when the page is
/// verified, so iterating never decodes (or fails) again.
#[derive(Clone, Copy, Debug)]
struct EntrySpan {
    /// Position of the header in the page's bytes.
    position: usize,
    /// Bytes of the payload after the producer envelope, if any.
    payload_len: usize,
    producer: Option<ProducerTag>,
    term: u32,
    kind: EntryKind,
}

/// One read answer: whole entries starting at [`ReadPage::offset`], every
/// one checksum-verified when the page was received.
#[derive(Clone, Debug)]
pub struct ReadPage {
    offset: u64,
    commit_offset: u64,
    bytes: Bytes,
    spans: Vec<EntrySpan>,
}

impl ReadPage {
    /// Parses and verifies the body of a successful read answer for `offset`
    /// from the node at `addr` (named in errors). The client does this for
    /// every read answer; public for tools that speak the wire protocol.
    pub fn parse(addr: &str, offset: u64, mut body: Bytes) -> Result<ReadPage, Error> {
        if body.len() < READ_RESPONSE_PREFIX_LEN {
            return Err(Error::Protocol {
                addr: addr.to_string(),
                message: format!("read answer of {} bytes has no commit offset", body.len()),
            });
        }
        let prefix = body.split_to(READ_RESPONSE_PREFIX_LEN);
        let commit_offset = u64::from_le_bytes(prefix[..].try_into().expect("prefix is 8 bytes"));
        let mut spans = Vec::new();
        let mut iter = EntryIter::new(&body, offset, MAX_PAYLOAD_LIMIT);
        for item in iter.by_ref() {
            match item {
                Ok(entry) => {
                    // A valid header flagged PRODUCER has room for the envelope.
                    let (producer, payload) = entry_producer(&entry.header, entry.payload)
                        .unwrap_or((None, entry.payload));
                    spans.push(EntrySpan {
                        position: (entry.offset - offset) as usize,
                        payload_len: payload.len(),
                        producer,
                        term: entry.header.term,
                        kind: entry.header.kind,
                    })
                }
                Err(source) => {
                    return Err(Error::Corrupt {
                        addr: addr.to_string(),
                        offset: iter.offset(),
                        source,
                    })
                }
            }
        }
        let page = ReadPage {
            offset,
            commit_offset,
            bytes: body,
            spans,
        };
        if page.next_offset() > commit_offset {
            return Err(Error::Protocol {
                addr: addr.to_string(),
                message: format!(
                    "read answer reaches offset {} past the node's commit offset {commit_offset}",
                    page.next_offset()
                ),
            });
        }
        Ok(page)
    }

    /// Offset of the page's first entry (the offset that was read).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Offset just past the page's last entry: where the next read starts.
    pub fn next_offset(&self) -> u64 {
        self.offset + self.bytes.len() as u64
    }

    /// The answering node's commit offset when it answered.
    pub fn commit_offset(&self) -> u64 {
        self.commit_offset
    }

    /// True when the page holds no entry at all (the read waited at the
    /// commit offset and nothing new was committed).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The page's bytes exactly as stored in the log: entry headers and
    /// payloads, from [`ReadPage::offset`] to [`ReadPage::next_offset`].
    pub fn raw(&self) -> &Bytes {
        &self.bytes
    }

    /// The data entries of the page, in log order. Entries of other kinds
    /// (leader no-ops, configurations, reserved kinds) are skipped: they
    /// occupy offsets but carry no client data.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.all_entries()
            .filter(|entry| entry.kind == EntryKind::Data)
    }

    /// Every entry of the page, of every kind, in log order.
    pub fn all_entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.spans.iter().map(|span| self.entry_at(span))
    }

    fn entry_at(&self, span: &EntrySpan) -> Entry {
        let envelope = if span.producer.is_some() {
            PRODUCER_ENVELOPE_LEN
        } else {
            0
        };
        let start = span.position + ENTRY_HEADER_LEN + envelope;
        Entry {
            offset: self.offset + span.position as u64,
            term: span.term,
            kind: span.kind,
            producer: span.producer,
            payload: self.bytes.slice(start..start + span.payload_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::encode_entry;

    fn body(commit: u64, log: &[u8]) -> Bytes {
        let mut body = commit.to_le_bytes().to_vec();
        body.extend_from_slice(log);
        Bytes::from(body)
    }

    #[test]
    fn pages_yield_data_entries_only_with_their_offsets() {
        let mut log = Vec::new();
        encode_entry(1, EntryKind::NoOp, b"", &mut log);
        encode_entry(1, EntryKind::Data, b"hello", &mut log);
        encode_entry(2, EntryKind::Reserved(9), b"zz", &mut log);
        encode_entry(2, EntryKind::Data, b"world", &mut log);
        let base = 1000;
        let page = ReadPage::parse("a", base, body(base + log.len() as u64, &log)).unwrap();
        let data: Vec<Entry> = page.entries().collect();
        assert_eq!(data.len(), 2);
        assert_eq!(data[0].offset, base + 16);
        assert_eq!(&data[0].payload[..], b"hello");
        assert_eq!(data[0].term, 1);
        assert_eq!(data[1].offset, base + 16 + 21 + 18);
        assert_eq!(&data[1].payload[..], b"world");
        assert_eq!(data[1].next_offset(), page.next_offset());
        assert_eq!(page.all_entries().count(), 4);
        assert_eq!(&page.raw()[..], &log[..]);
    }

    #[test]
    fn producer_envelopes_are_stripped_and_reported() {
        let tag = ProducerTag {
            producer_id: 42,
            sequence: 7,
        };
        let mut payload = tag.encode().to_vec();
        payload.extend_from_slice(b"user");
        let mut log = Vec::new();
        loglog_proto::entry::encode_entry_with_flags(
            1,
            EntryKind::Data,
            loglog_proto::producer::ENTRY_FLAG_PRODUCER,
            &payload,
            &mut log,
        );
        encode_entry(1, EntryKind::Data, b"plain", &mut log);
        let page = ReadPage::parse("a", 0, body(log.len() as u64, &log)).unwrap();
        let entries: Vec<Entry> = page.entries().collect();
        assert_eq!(entries[0].producer, Some(tag));
        assert_eq!(&entries[0].payload[..], b"user");
        assert_eq!(entries[0].next_offset(), 16 + 20);
        assert_eq!(entries[1].offset, 36);
        assert_eq!(entries[1].producer, None);
        assert_eq!(&entries[1].payload[..], b"plain");
        // The raw bytes keep the envelope: that is what is stored.
        assert_eq!(&page.raw()[16..32], &tag.encode());
    }

    #[test]
    fn corrupt_and_truncated_bytes_are_typed_errors() {
        let mut log = Vec::new();
        encode_entry(1, EntryKind::Data, b"hello", &mut log);
        encode_entry(1, EntryKind::Data, b"world", &mut log);
        let mut flipped = log.clone();
        *flipped.last_mut().unwrap() ^= 0x40;
        match ReadPage::parse("a", 0, body(100, &flipped)) {
            Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, 21),
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(matches!(
            ReadPage::parse("a", 0, body(100, &log[..30])),
            Err(Error::Corrupt { offset: 21, .. })
        ));
        assert!(matches!(
            ReadPage::parse("a", 0, Bytes::from_static(b"1234")),
            Err(Error::Protocol { .. })
        ));
    }

    /// Found by the `read_page` fuzz target: an answer with an entry for a
    /// read at an offset near u64::MAX overflowed the offset arithmetic.
    #[test]
    fn entries_past_the_largest_offset_are_corrupt_not_an_overflow() {
        let mut log = Vec::new();
        encode_entry(1, EntryKind::Data, b"hello", &mut log);
        let offset = u64::MAX - 3;
        assert!(matches!(
            ReadPage::parse("a", offset, body(u64::MAX, &log)),
            Err(Error::Corrupt {
                source: loglog_proto::entry::EntryError::PastMaxOffset { .. },
                ..
            })
        ));
    }

    #[test]
    fn data_past_the_commit_offset_is_a_protocol_violation() {
        let mut log = Vec::new();
        encode_entry(1, EntryKind::Data, b"hello", &mut log);
        assert!(matches!(
            ReadPage::parse("a", 0, body(20, &log)),
            Err(Error::Protocol { .. })
        ));
        let empty = ReadPage::parse("a", 50, body(50, &[])).unwrap();
        assert!(empty.is_empty());
        assert_eq!(empty.next_offset(), 50);
    }
}
