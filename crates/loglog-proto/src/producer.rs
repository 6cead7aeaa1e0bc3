//! The producer envelope: what makes an append idempotent (public contract,
//! see `docs/FORMAT.md`).
//!
//! A client that wants exactly-once appends names itself with a random
//! producer id and numbers its appends. The 16 bytes go in front of the
//! payload, on the wire and in the log, and the entry header's flag
//! [`ENTRY_FLAG_PRODUCER`] says they are there:
//!
//! ```text
//! 0..8   producer id u64
//! 8..16  sequence u64
//! 16..   the user's payload
//! ```
//! All integers little endian. The entry's `len` and CRC cover the envelope
//! like any payload byte; a raw reader sees it as the first 16 payload bytes.

use crate::entry::{EntryHeader, EntryKind};

/// Length of the envelope in front of the user's payload.
pub const PRODUCER_ENVELOPE_LEN: usize = 16;

/// Entries per producer that a node's exactly-once table remembers, in log
/// order: a retry finds its original among them, or the table proves there
/// is none.
pub const DEDUP_WINDOW: usize = 1024;

/// Most sequences a producer may have issued from its oldest unfinished
/// append on (that one included): half of [`DEDUP_WINDOW`]. Every entry of
/// the producer appended while an append is unfinished then has a sequence
/// within this span on either side of it, so fewer than `DEDUP_WINDOW` of
/// them follow it in any log and none of them leaves the window before its
/// retry: the retry is always decided, never answered `SequenceUnknown`.
pub const MAX_SEQUENCE_SPAN: u64 = (DEDUP_WINDOW / 2) as u64;

/// Entry header flag (byte 13, bit 0): the payload starts with a producer
/// envelope. Only data entries carry it.
pub const ENTRY_FLAG_PRODUCER: u8 = 1;

/// Who appended an entry, and which of its appends it is: an append sent
/// again with the same tag is the same append.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProducerTag {
    pub producer_id: u64,
    pub sequence: u64,
}

impl ProducerTag {
    pub fn encode(&self) -> [u8; PRODUCER_ENVELOPE_LEN] {
        let mut out = [0u8; PRODUCER_ENVELOPE_LEN];
        out[0..8].copy_from_slice(&self.producer_id.to_le_bytes());
        out[8..16].copy_from_slice(&self.sequence.to_le_bytes());
        out
    }

    /// Splits `payload` into its envelope and the user's payload; `None`
    /// when it is shorter than an envelope.
    pub fn split(payload: &[u8]) -> Option<(ProducerTag, &[u8])> {
        if payload.len() < PRODUCER_ENVELOPE_LEN {
            return None;
        }
        let (envelope, rest) = payload.split_at(PRODUCER_ENVELOPE_LEN);
        let u64_at =
            |at: usize| u64::from_le_bytes(envelope[at..at + 8].try_into().expect("8 bytes of 16"));
        Some((
            ProducerTag {
                producer_id: u64_at(0),
                sequence: u64_at(8),
            },
            rest,
        ))
    }
}

/// The producer tag of an entry and its user payload: `(None, payload)` for
/// an entry without the flag. `None` as a whole when the flag is set but the
/// payload cannot hold an envelope (never a valid entry: see
/// [`crate::entry::EntryError::ShortProducerEnvelope`]).
pub fn entry_producer<'a>(
    header: &EntryHeader,
    payload: &'a [u8],
) -> Option<(Option<ProducerTag>, &'a [u8])> {
    if header.kind != EntryKind::Data || header.flags & ENTRY_FLAG_PRODUCER == 0 {
        return Some((None, payload));
    }
    ProducerTag::split(payload).map(|(tag, rest)| (Some(tag), rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{encode_entry_with_flags, EntryIter, DEFAULT_MAX_PAYLOAD};
    use proptest::prelude::*;

    #[test]
    fn envelope_layout_matches_the_contract() {
        let tag = ProducerTag {
            producer_id: 0x0102_0304_0506_0708,
            sequence: 9,
        };
        let bytes = tag.encode();
        assert_eq!(&bytes[0..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &9u64.to_le_bytes());
        assert_eq!(ProducerTag::split(&bytes), Some((tag, &[][..])));
        assert_eq!(ProducerTag::split(&bytes[..15]), None);
    }

    proptest! {
        #[test]
        fn flagged_entries_round_trip(producer_id in any::<u64>(), sequence in any::<u64>(), user in proptest::collection::vec(any::<u8>(), 0..100)) {
            let tag = ProducerTag { producer_id, sequence };
            let mut payload = tag.encode().to_vec();
            payload.extend_from_slice(&user);
            let mut log = Vec::new();
            encode_entry_with_flags(3, EntryKind::Data, ENTRY_FLAG_PRODUCER, &payload, &mut log);
            let entry = EntryIter::new(&log, 0, DEFAULT_MAX_PAYLOAD).next().unwrap().unwrap();
            prop_assert_eq!(entry.header.flags, ENTRY_FLAG_PRODUCER);
            prop_assert_eq!(entry_producer(&entry.header, entry.payload), Some((Some(tag), &user[..])));
        }

        #[test]
        fn splitting_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40), flags in any::<u8>()) {
            let mut header = EntryHeader::new(1, EntryKind::Data, &bytes);
            header.flags = flags;
            let _ = entry_producer(&header, &bytes);
        }
    }
}
