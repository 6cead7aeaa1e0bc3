//! Batches: many sub-entries packed into one log entry.
//!
//! LogLog orders entries, not records: one append costs one trip through
//! the leader's queue and one share of an fsync, whatever its size. Packing
//! many small records into one entry ("one append, one fsync, many
//! records") multiplies the records per second a cluster commits. The
//! server never looks inside: a batch is an ordinary data entry whose
//! payload starts with a small header (docs/FORMAT.md, section "Batches"):
//!
//! ```text
//! magic "LLBA" | version u8 = 1 | flags u8 = 0 | reserved u16 = 0 | count u32
//! then `count` times: len u32 | len bytes
//! ```
//!
//! A sub-entry's position is `(entry offset, index)`: the offset of the
//! entry holding the batch and the sub-entry's index in it, so positions
//! are totally ordered like the log itself. Decoding untrusted bytes never
//! panics: every malformation is a [`BatchError`].

use bytes::{BufMut, Bytes, BytesMut};

/// First four bytes of every batch payload.
pub const BATCH_MAGIC: [u8; 4] = *b"LLBA";
/// The batch format version this library writes and reads.
pub const BATCH_VERSION: u8 = 1;
/// Bytes of the batch header (magic, version, flags, reserved, count).
pub const BATCH_HEADER_LEN: usize = 12;
/// Bytes before each sub-entry's data (its length).
pub const SUB_ENTRY_PREFIX_LEN: usize = 4;

/// Why bytes are not a well-formed batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Shorter than the batch header.
    #[error("{len} bytes are too short for a batch header of {BATCH_HEADER_LEN}")]
    TooShort { len: usize },
    /// The payload does not start with the batch magic: not a batch.
    #[error("not a batch: magic {found:02x?}, expected \"LLBA\"")]
    BadMagic { found: [u8; 4] },
    /// A batch of a format version this library does not read.
    #[error("batch format version {found} is not supported (this library reads {BATCH_VERSION})")]
    UnsupportedVersion { found: u8 },
    /// Flags or reserved bytes that are not zero.
    #[error("batch header has non-zero flags or reserved bytes")]
    NonZeroReserved,
    /// The bytes end inside sub-entry `index` (its length prefix or data).
    #[error("batch truncated inside sub-entry {index} of {count}")]
    Truncated { index: u32, count: u32 },
    /// Bytes remain after the last sub-entry the header counts.
    #[error("{extra} bytes after the last of {count} sub-entries")]
    TrailingBytes { count: u32, extra: usize },
    /// The batch would not fit the entry format (more than u32 bytes or
    /// sub-entries).
    #[error("batch too large: {0}")]
    TooLarge(String),
}

/// Builds one batch payload: append sub-entries, then [`BatchBuilder::finish`].
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    buffer: BytesMut,
    count: u32,
}

impl Default for BatchBuilder {
    fn default() -> BatchBuilder {
        BatchBuilder::new()
    }
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::with_capacity(0)
    }

    /// A builder whose buffer holds `bytes` of sub-entries without growing.
    pub fn with_capacity(bytes: usize) -> BatchBuilder {
        let mut buffer = BytesMut::with_capacity(BATCH_HEADER_LEN + bytes);
        buffer.put_slice(&BATCH_MAGIC);
        buffer.put_u8(BATCH_VERSION);
        buffer.put_u8(0);
        buffer.put_u16_le(0);
        buffer.put_u32_le(0); // count, written by finish
        BatchBuilder { buffer, count: 0 }
    }

    /// Adds one sub-entry (it may be empty).
    pub fn push(&mut self, sub_entry: &[u8]) -> Result<(), BatchError> {
        let len = u32::try_from(sub_entry.len())
            .map_err(|_| BatchError::TooLarge(format!("sub-entry of {} bytes", sub_entry.len())))?;
        let count = self
            .count
            .checked_add(1)
            .ok_or_else(|| BatchError::TooLarge("more than u32::MAX sub-entries".to_string()))?;
        let new_len = self.buffer.len() + SUB_ENTRY_PREFIX_LEN + sub_entry.len();
        if u32::try_from(new_len).is_err() {
            return Err(BatchError::TooLarge(format!("batch of {new_len} bytes")));
        }
        self.buffer.put_u32_le(len);
        self.buffer.put_slice(sub_entry);
        self.count = count;
        Ok(())
    }

    /// Sub-entries pushed so far.
    pub fn len(&self) -> u32 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes of the payload [`BatchBuilder::finish`] would return: compare
    /// it with the node's maximum entry size before pushing more.
    pub fn encoded_len(&self) -> usize {
        self.buffer.len()
    }

    /// The batch payload, ready for [`crate::Client::append`].
    pub fn finish(mut self) -> Bytes {
        self.buffer[8..12].copy_from_slice(&self.count.to_le_bytes());
        self.buffer.freeze()
    }
}

/// Encodes `sub_entries` as one batch payload.
pub fn encode_batch<I, T>(sub_entries: I) -> Result<Bytes, BatchError>
where
    I: IntoIterator<Item = T>,
    T: AsRef<[u8]>,
{
    let mut builder = BatchBuilder::new();
    for sub_entry in sub_entries {
        builder.push(sub_entry.as_ref())?;
    }
    Ok(builder.finish())
}

/// True when `payload` starts with the batch magic (any version): it was
/// most likely written as a batch. A plain entry could start with the same
/// four bytes; applications that mix both should use batches only.
pub fn is_batch(payload: &[u8]) -> bool {
    payload.len() >= BATCH_HEADER_LEN && payload[..4] == BATCH_MAGIC
}

/// Decodes a batch payload into its sub-entries (slices of `payload`, no
/// copy). The whole batch is validated before anything is returned, so a
/// malformed batch yields an error and no sub-entry at all.
pub fn decode_batch(payload: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    let count = validate_header(payload)?;
    // Each sub-entry needs at least its prefix: bound the allocation by
    // what the bytes can hold, not by the untrusted count.
    let room = (payload.len() - BATCH_HEADER_LEN) / SUB_ENTRY_PREFIX_LEN;
    let mut sub_entries = Vec::with_capacity((count as usize).min(room));
    let mut position = BATCH_HEADER_LEN;
    for index in 0..count {
        let truncated = BatchError::Truncated { index, count };
        let prefix_end = position
            .checked_add(SUB_ENTRY_PREFIX_LEN)
            .filter(|end| *end <= payload.len())
            .ok_or(truncated.clone())?;
        let len = u32::from_le_bytes(
            payload[position..prefix_end]
                .try_into()
                .expect("the prefix slice is 4 bytes"),
        ) as usize;
        let end = prefix_end
            .checked_add(len)
            .filter(|end| *end <= payload.len())
            .ok_or(truncated)?;
        sub_entries.push(payload.slice(prefix_end..end));
        position = end;
    }
    if position != payload.len() {
        return Err(BatchError::TrailingBytes {
            count,
            extra: payload.len() - position,
        });
    }
    Ok(sub_entries)
}

/// Checks the header; returns the sub-entry count.
fn validate_header(payload: &[u8]) -> Result<u32, BatchError> {
    if payload.len() < BATCH_HEADER_LEN {
        return Err(BatchError::TooShort { len: payload.len() });
    }
    let magic: [u8; 4] = payload[..4].try_into().expect("4-byte slice");
    if magic != BATCH_MAGIC {
        return Err(BatchError::BadMagic { found: magic });
    }
    if payload[4] != BATCH_VERSION {
        return Err(BatchError::UnsupportedVersion { found: payload[4] });
    }
    if payload[5..8] != [0, 0, 0] {
        return Err(BatchError::NonZeroReserved);
    }
    Ok(u32::from_le_bytes(
        payload[8..12].try_into().expect("4-byte slice"),
    ))
}

/// One record of a batch, with its position in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubEntry {
    /// Offset of the log entry that holds the batch.
    pub offset: u64,
    /// Index of the sub-entry in its batch (0 for the first).
    pub index: u32,
    /// The sub-entry's bytes, shared with the read buffer (no copy).
    pub payload: Bytes,
}

/// The sub-entries of one log entry, with their positions.
pub fn sub_entries(entry: &crate::Entry) -> Result<Vec<SubEntry>, BatchError> {
    Ok(decode_batch(&entry.payload)?
        .into_iter()
        .enumerate()
        .map(|(index, payload)| SubEntry {
            offset: entry.offset,
            index: u32::try_from(index).expect("a batch counts at most u32::MAX sub-entries"),
            payload,
        })
        .collect())
}

/// Why a [`SubEntryStream`] could not yield the next sub-entry.
#[derive(Debug, thiserror::Error)]
pub enum SubEntryError {
    /// Reading the log failed; calling `next` again retries.
    #[error(transparent)]
    Client(#[from] crate::Error),
    /// The data entry at `offset` is not a well-formed batch. The stream
    /// stays before it: skip it with [`SubEntryStream::skip_entry`].
    #[error("entry at offset {offset} is not a batch: {source}")]
    NotABatch {
        offset: u64,
        #[source]
        source: BatchError,
    },
}

/// Every sub-entry of every batch from an offset on, forever, with its
/// position: [`crate::EntryStream`] with each entry decoded as a batch.
pub struct SubEntryStream {
    entries: crate::EntryStream,
    /// The entry whose sub-entries are being yielded, decoded.
    current: std::collections::VecDeque<SubEntry>,
    /// A data entry that failed to decode, held until skipped.
    rejected: Option<crate::Entry>,
}

impl SubEntryStream {
    pub(crate) fn new(entries: crate::EntryStream) -> SubEntryStream {
        SubEntryStream {
            entries,
            current: std::collections::VecDeque::new(),
            rejected: None,
        }
    }

    /// The next sub-entry, waiting as long as it takes for one to be committed.
    pub async fn next(&mut self) -> Result<SubEntry, SubEntryError> {
        loop {
            if let Some(sub_entry) = self.current.pop_front() {
                return Ok(sub_entry);
            }
            let entry = match self.rejected.take() {
                Some(entry) => entry,
                None => self.entries.next().await?,
            };
            match sub_entries(&entry) {
                Ok(sub_entries) => self.current.extend(sub_entries),
                Err(source) => {
                    let offset = entry.offset;
                    self.rejected = Some(entry);
                    return Err(SubEntryError::NotABatch { offset, source });
                }
            }
        }
    }

    /// Drops the entry that was not a batch, so `next` goes on after it.
    pub fn skip_entry(&mut self) {
        self.rejected = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn batches_round_trip(sub_entries in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..300), 0..60)) {
            let payload = encode_batch(&sub_entries).unwrap();
            prop_assert!(is_batch(&payload));
            let expected_len = BATCH_HEADER_LEN
                + sub_entries.iter().map(|s| SUB_ENTRY_PREFIX_LEN + s.len()).sum::<usize>();
            prop_assert_eq!(payload.len(), expected_len);
            let decoded = decode_batch(&payload).unwrap();
            prop_assert_eq!(decoded.len(), sub_entries.len());
            for (got, want) in decoded.iter().zip(&sub_entries) {
                prop_assert_eq!(&got[..], &want[..]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_batch(&Bytes::from(bytes));
        }

        #[test]
        fn corrupted_batches_are_typed_errors_or_valid(
            sub_entries in proptest::collection::vec(
                proptest::collection::vec(any::<u8>(), 0..40), 0..10),
            flip_at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let payload = encode_batch(&sub_entries).unwrap().to_vec();
            // A flipped byte: decoding returns an error or some batch, never panics.
            let mut flipped = payload.clone();
            let at = flip_at.index(flipped.len());
            flipped[at] ^= flip;
            let _ = decode_batch(&Bytes::from(flipped));
            // A cut batch is always an error: the count promises more bytes.
            let cut_len = cut.index(payload.len());
            let result = decode_batch(&Bytes::from(payload[..cut_len].to_vec()));
            prop_assert!(result.is_err(), "a batch cut to {} bytes decoded", cut_len);
            // One extra byte is always an error too.
            let mut longer = payload.clone();
            longer.push(0);
            prop_assert_eq!(
                decode_batch(&Bytes::from(longer)),
                Err(BatchError::TrailingBytes { count: sub_entries.len() as u32, extra: 1 })
            );
        }
    }

    #[test]
    fn a_batch_of_the_maximum_entry_size_round_trips() {
        let max = loglog_proto::entry::DEFAULT_MAX_PAYLOAD as usize;
        let big = vec![0xa5u8; max - BATCH_HEADER_LEN - 2 * SUB_ENTRY_PREFIX_LEN];
        let payload = encode_batch([&big[..], &[][..]]).unwrap();
        assert_eq!(payload.len(), max);
        let decoded = decode_batch(&payload).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(&decoded[0][..], &big[..]);
        assert!(decoded[1].is_empty());
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        let good = encode_batch([b"a".as_slice(), b"".as_slice()]).unwrap();
        assert_eq!(
            decode_batch(&Bytes::from_static(b"LLBA")),
            Err(BatchError::TooShort { len: 4 })
        );
        let mut bad = good.to_vec();
        bad[0] = b'X';
        assert!(matches!(
            decode_batch(&Bytes::from(bad)),
            Err(BatchError::BadMagic { .. })
        ));
        let mut bad = good.to_vec();
        bad[4] = 2;
        assert_eq!(
            decode_batch(&Bytes::from(bad)),
            Err(BatchError::UnsupportedVersion { found: 2 })
        );
        let mut bad = good.to_vec();
        bad[6] = 1;
        assert_eq!(
            decode_batch(&Bytes::from(bad)),
            Err(BatchError::NonZeroReserved)
        );
        // A count far larger than the bytes: an error, no huge allocation.
        let mut bad = good.to_vec();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode_batch(&Bytes::from(bad)),
            Err(BatchError::Truncated {
                index: 2,
                count: u32::MAX
            })
        );
        let empty = encode_batch(Vec::<Vec<u8>>::new()).unwrap();
        assert_eq!(empty.len(), BATCH_HEADER_LEN);
        assert!(decode_batch(&empty).unwrap().is_empty());
    }
}
