//! The entry format (public contract, see `docs/FORMAT.md`).
//!
//! ```text
//! 0..4   crc    CRC32C of bytes 4..16 and the payload
//! 4..8   len    payload length
//! 8..12  term   Raft term of the leader that appended it
//! 12     kind   0 data, 1 leader no-op, 2 membership config, 3 trim; others reserved
//! 13     flags  bit 0: the payload starts with a producer envelope
//!               (see [`crate::producer`]); other bits 0
//! 14..16 reserved, 0
//! ```
//! All integers little endian. The next entry starts at `offset + 16 + len`.

/// Length of the header that precedes every payload.
pub const ENTRY_HEADER_LEN: usize = 16;

/// Largest payload the format can describe; a node's configured limit is
/// usually far lower (`DEFAULT_MAX_PAYLOAD`).
pub const MAX_PAYLOAD_LIMIT: u32 = u32::MAX - ENTRY_HEADER_LEN as u32;

/// Default maximum payload: 16 MiB - 1.
pub const DEFAULT_MAX_PAYLOAD: u32 = 16 * 1024 * 1024 - 1;

/// What an entry is for. Readers of the data log skip every kind but `Data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client's payload.
    Data,
    /// Written by a new leader when it takes office (Raft's no-op).
    NoOp,
    /// A membership configuration.
    Config,
    /// A replicated trim: once committed, every node drops the whole
    /// segments below the offset in its payload ([`encode_trim_payload`]).
    Trim,
    /// A kind this version does not know; readers skip it.
    Reserved(u8),
}

impl EntryKind {
    pub fn from_byte(byte: u8) -> EntryKind {
        match byte {
            0 => EntryKind::Data,
            1 => EntryKind::NoOp,
            2 => EntryKind::Config,
            3 => EntryKind::Trim,
            other => EntryKind::Reserved(other),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            EntryKind::Data => 0,
            EntryKind::NoOp => 1,
            EntryKind::Config => 2,
            EntryKind::Trim => 3,
            EntryKind::Reserved(other) => other,
        }
    }
}

/// Length of a trim entry's payload: the trim offset, u64 little endian.
pub const TRIM_PAYLOAD_LEN: usize = 8;

/// The payload of a [`EntryKind::Trim`] entry: the offset below which every
/// node drops whole segments.
pub fn encode_trim_payload(offset: u64) -> [u8; TRIM_PAYLOAD_LEN] {
    offset.to_le_bytes()
}

/// Decodes [`encode_trim_payload`]'s bytes; any other length is `None`.
pub fn decode_trim_payload(payload: &[u8]) -> Option<u64> {
    let bytes: [u8; TRIM_PAYLOAD_LEN] = payload.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Why bytes are not a valid entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Fewer bytes than the header, or than header plus payload.
    #[error("entry truncated: need {needed} bytes, have {available}")]
    Truncated { needed: u64, available: u64 },
    /// The payload length exceeds the limit the caller allows.
    #[error("entry payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u32, max: u32 },
    /// The checksum does not match the header and payload.
    #[error("entry checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc { stored: u32, computed: u32 },
    /// Reserved bytes are not zero (a format this version does not know, or garbage).
    #[error("entry header has non-zero reserved bytes")]
    ReservedNotZero,
    /// A data entry flagged as carrying a producer envelope is shorter than
    /// the envelope.
    #[error("entry flagged with a producer envelope has only {len} payload bytes")]
    ShortProducerEnvelope { len: u32 },
    /// The entry at `offset` would end past the largest log offset
    /// (`u64::MAX`): bytes placed there by a damaged segment name, or a
    /// peer or node that misstates offsets.
    #[error("entry at offset {offset} would end past the largest log offset")]
    PastMaxOffset { offset: u64 },
}

/// A decoded entry header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryHeader {
    pub crc: u32,
    pub len: u32,
    pub term: u32,
    pub kind: EntryKind,
    pub flags: u8,
}

impl EntryHeader {
    /// Builds the header of `payload`, computing its CRC.
    pub fn new(term: u32, kind: EntryKind, payload: &[u8]) -> EntryHeader {
        EntryHeader::with_flags(term, kind, 0, payload)
    }

    /// Builds the header of `payload` with header `flags`, computing its CRC.
    pub fn with_flags(term: u32, kind: EntryKind, flags: u8, payload: &[u8]) -> EntryHeader {
        let len = u32::try_from(payload.len()).expect("payload length fits the entry format");
        let mut header = EntryHeader {
            crc: 0,
            len,
            term,
            kind,
            flags,
        };
        header.crc = header.compute_crc(payload);
        header
    }

    /// Total length of the entry on disk and on the wire: header plus payload.
    pub fn entry_len(&self) -> u64 {
        ENTRY_HEADER_LEN as u64 + u64::from(self.len)
    }

    /// CRC32C over header bytes 4..16, then the payload.
    pub fn compute_crc(&self, payload: &[u8]) -> u32 {
        let bytes = self.encode();
        let crc = crc32c::crc32c(&bytes[4..]);
        crc32c::crc32c_append(crc, payload)
    }

    pub fn encode(&self) -> [u8; ENTRY_HEADER_LEN] {
        let mut out = [0u8; ENTRY_HEADER_LEN];
        out[0..4].copy_from_slice(&self.crc.to_le_bytes());
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..12].copy_from_slice(&self.term.to_le_bytes());
        out[12] = self.kind.to_byte();
        out[13] = self.flags;
        out
    }

    /// Decodes a header from the first 16 bytes of `bytes`, checking the
    /// reserved bytes and the length limit but not the CRC (which needs the
    /// payload: see [`EntryHeader::verify`]).
    pub fn decode(bytes: &[u8], max_payload: u32) -> Result<EntryHeader, EntryError> {
        let Some(header) = bytes.get(..ENTRY_HEADER_LEN) else {
            return Err(EntryError::Truncated {
                needed: ENTRY_HEADER_LEN as u64,
                available: bytes.len() as u64,
            });
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
        };
        if header[14] != 0 || header[15] != 0 {
            return Err(EntryError::ReservedNotZero);
        }
        let decoded = EntryHeader {
            crc: u32_at(0),
            len: u32_at(4),
            term: u32_at(8),
            kind: EntryKind::from_byte(header[12]),
            flags: header[13],
        };
        if decoded.len > max_payload.min(MAX_PAYLOAD_LIMIT) {
            return Err(EntryError::TooLarge {
                len: decoded.len,
                max: max_payload,
            });
        }
        if decoded.kind == EntryKind::Data
            && decoded.flags & crate::producer::ENTRY_FLAG_PRODUCER != 0
            && (decoded.len as usize) < crate::producer::PRODUCER_ENVELOPE_LEN
        {
            return Err(EntryError::ShortProducerEnvelope { len: decoded.len });
        }
        Ok(decoded)
    }

    /// Checks the CRC against `payload`, which must be exactly `len` bytes.
    pub fn verify(&self, payload: &[u8]) -> Result<(), EntryError> {
        if payload.len() as u64 != u64::from(self.len) {
            return Err(EntryError::Truncated {
                needed: u64::from(self.len),
                available: payload.len() as u64,
            });
        }
        let computed = self.compute_crc(payload);
        if computed != self.crc {
            return Err(EntryError::BadCrc {
                stored: self.crc,
                computed,
            });
        }
        Ok(())
    }
}

/// Appends one encoded entry (header and payload) to `out`.
pub fn encode_entry(term: u32, kind: EntryKind, payload: &[u8], out: &mut Vec<u8>) {
    encode_entry_with_flags(term, kind, 0, payload, out);
}

/// Appends one encoded entry with header `flags` to `out`.
pub fn encode_entry_with_flags(
    term: u32,
    kind: EntryKind,
    flags: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let header = EntryHeader::with_flags(term, kind, flags, payload);
    out.reserve(ENTRY_HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
}

/// One entry found in a byte range of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    /// Byte offset of the entry's header in the log.
    pub offset: u64,
    pub header: EntryHeader,
    pub payload: &'a [u8],
}

impl EntryRef<'_> {
    /// Offset where the next entry starts.
    pub fn next_offset(&self) -> u64 {
        self.offset + self.header.entry_len()
    }
}

/// Iterates over whole, CRC-checked entries in `bytes`, which starts at log
/// offset `base_offset` on an entry boundary.
///
/// Yields an error for the first invalid or incomplete entry and then stops;
/// [`EntryIter::offset`] tells where valid data ended.
pub struct EntryIter<'a> {
    bytes: &'a [u8],
    position: usize,
    base_offset: u64,
    max_payload: u32,
    failed: bool,
}

impl<'a> EntryIter<'a> {
    pub fn new(bytes: &'a [u8], base_offset: u64, max_payload: u32) -> EntryIter<'a> {
        EntryIter {
            bytes,
            position: 0,
            base_offset,
            max_payload,
            failed: false,
        }
    }

    /// Log offset just past the last entry yielded.
    pub fn offset(&self) -> u64 {
        self.base_offset + self.position as u64
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> &'a [u8] {
        &self.bytes[self.position..]
    }
}

impl<'a> Iterator for EntryIter<'a> {
    type Item = Result<EntryRef<'a>, EntryError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.bytes[self.position..];
        if rest.is_empty() || self.failed {
            return None;
        }
        let result = (|| {
            let header = EntryHeader::decode(rest, self.max_payload)?;
            let end = ENTRY_HEADER_LEN as u64 + u64::from(header.len);
            // Every yielded entry ends at or below u64::MAX, so `offset()`
            // and `EntryRef::next_offset` never overflow.
            if self.offset().checked_add(end).is_none() {
                return Err(EntryError::PastMaxOffset {
                    offset: self.offset(),
                });
            }
            if (rest.len() as u64) < end {
                return Err(EntryError::Truncated {
                    needed: end,
                    available: rest.len() as u64,
                });
            }
            let payload = &rest[ENTRY_HEADER_LEN..end as usize];
            header.verify(payload)?;
            Ok(EntryRef {
                offset: self.offset(),
                header,
                payload,
            })
        })();
        match result {
            Ok(entry) => {
                self.position += entry.header.entry_len() as usize;
                Some(Ok(entry))
            }
            Err(error) => {
                self.failed = true;
                Some(Err(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_layout_matches_the_contract() {
        let header = EntryHeader::new(7, EntryKind::NoOp, b"abc");
        let bytes = header.encode();
        assert_eq!(&bytes[4..8], &3u32.to_le_bytes());
        assert_eq!(&bytes[8..12], &7u32.to_le_bytes());
        assert_eq!(bytes[12], 1);
        assert_eq!(&bytes[13..16], &[0, 0, 0]);
        let mut crc_input = bytes[4..].to_vec();
        crc_input.extend_from_slice(b"abc");
        assert_eq!(&bytes[0..4], &crc32c::crc32c(&crc_input).to_le_bytes());
    }

    #[test]
    fn zeroed_space_is_not_an_entry() {
        let zeros = [0u8; 64];
        let mut iter = EntryIter::new(&zeros, 0, DEFAULT_MAX_PAYLOAD);
        assert!(matches!(iter.next(), Some(Err(EntryError::BadCrc { .. }))));
        assert_eq!(iter.next(), None);
        assert_eq!(iter.offset(), 0);
    }

    #[test]
    fn a_producer_flag_needs_room_for_the_envelope() {
        let mut bytes = Vec::new();
        encode_entry_with_flags(1, EntryKind::Data, 1, &[7; 15], &mut bytes);
        assert_eq!(
            EntryHeader::decode(&bytes, DEFAULT_MAX_PAYLOAD),
            Err(EntryError::ShortProducerEnvelope { len: 15 })
        );
        bytes.clear();
        encode_entry_with_flags(1, EntryKind::Data, 1, &[7; 16], &mut bytes);
        assert!(EntryHeader::decode(&bytes, DEFAULT_MAX_PAYLOAD).is_ok());
    }

    /// Found by the `segment_recovery` and `read_page` fuzz targets: an
    /// entry read at an offset near u64::MAX (a damaged segment name, a
    /// node answering a read at such an offset) overflowed the iterator's
    /// offset arithmetic.
    #[test]
    fn an_entry_past_the_largest_offset_is_an_error_not_an_overflow() {
        let mut log = Vec::new();
        encode_entry(1, EntryKind::Data, b"abc", &mut log);
        let base = u64::MAX - 10;
        let mut iter = EntryIter::new(&log, base, DEFAULT_MAX_PAYLOAD);
        assert_eq!(
            iter.next(),
            Some(Err(EntryError::PastMaxOffset { offset: base }))
        );
        assert_eq!(iter.next(), None);
        assert_eq!(iter.offset(), base);
        // An entry that ends exactly at u64::MAX is still an entry.
        let base = u64::MAX - log.len() as u64;
        let entry = EntryIter::new(&log, base, DEFAULT_MAX_PAYLOAD)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(entry.next_offset(), u64::MAX);
    }

    #[test]
    fn oversize_length_is_rejected_before_reading_the_payload() {
        let mut bytes = Vec::new();
        encode_entry(1, EntryKind::Data, &[9; 100], &mut bytes);
        assert_eq!(
            EntryHeader::decode(&bytes, 99),
            Err(EntryError::TooLarge { len: 100, max: 99 })
        );
    }

    proptest! {
        #[test]
        fn entries_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20), term in any::<u32>(), base in 0u64..1 << 50) {
            let mut log = Vec::new();
            for payload in &payloads {
                encode_entry(term, EntryKind::Data, payload, &mut log);
            }
            let mut iter = EntryIter::new(&log, base, DEFAULT_MAX_PAYLOAD);
            let mut offset = base;
            for payload in &payloads {
                let entry = iter.next().unwrap().unwrap();
                prop_assert_eq!(entry.offset, offset);
                prop_assert_eq!(entry.payload, &payload[..]);
                prop_assert_eq!(entry.header.term, term);
                offset = entry.next_offset();
            }
            prop_assert!(iter.next().is_none());
            prop_assert_eq!(iter.offset(), base + log.len() as u64);
        }

        #[test]
        fn any_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..200), bit in any::<proptest::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_entry(3, EntryKind::Data, &payload, &mut bytes);
            let bit = bit.index(bytes.len() * 8);
            bytes[bit / 8] ^= 1 << (bit % 8);
            let mut iter = EntryIter::new(&bytes, 0, DEFAULT_MAX_PAYLOAD);
            let failed = matches!(iter.next(), Some(Err(_)));
            prop_assert!(failed);
        }

        #[test]
        fn truncation_is_detected(payload in proptest::collection::vec(any::<u8>(), 1..200), cut in any::<proptest::sample::Index>()) {
            let mut bytes = Vec::new();
            encode_entry(3, EntryKind::Data, &payload, &mut bytes);
            let cut = cut.index(bytes.len() - 1) + 1;
            bytes.truncate(cut);
            let mut iter = EntryIter::new(&bytes, 0, DEFAULT_MAX_PAYLOAD);
            let truncated = matches!(iter.next(), Some(Err(EntryError::Truncated { .. })));
            prop_assert!(truncated);
        }

        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            for item in EntryIter::new(&bytes, 0, 64) {
                let _ = item;
            }
        }
    }
}
