//! The leader's own uncommitted entries, kept in memory: it sends them to
//! caught-up followers without reading storage (its driver has not
//! necessarily written them yet) and without copying them.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Entries at least this long are never copied once encoded: each has a
/// buffer of its own, goes into messages as a slice of it (never joined with
/// others), and a driver writes it and sends it from there. Below it, one
/// copy into a shared buffer costs less than a call or an allocation of its
/// own.
pub const LARGE_ENTRY_BYTES: usize = 16 * 1024;

/// The leader's entries from [`FreshEntries::start`] to the log's end, each
/// the one `Bytes` it encoded, shared with its `Append` action and with the
/// messages that carry it.
#[derive(Clone, Debug)]
pub(crate) struct FreshEntries {
    /// `(offset, whole entry)`, in offset order, contiguous.
    entries: VecDeque<(u64, Bytes)>,
    start: u64,
    end: u64,
}

impl FreshEntries {
    /// None yet: they will start at `offset`, the log's end.
    pub(crate) fn starting_at(offset: u64) -> FreshEntries {
        FreshEntries {
            entries: VecDeque::new(),
            start: offset,
            end: offset,
        }
    }

    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Adds the next entry (whole, encoded), at [`FreshEntries::end`].
    pub(crate) fn push(&mut self, entry: Bytes) {
        let len = entry.len() as u64;
        self.entries.push_back((self.end, entry));
        self.end += len;
    }

    /// Forgets the entries that end at or below `offset` (committed ones).
    pub(crate) fn forget_below(&mut self, offset: u64) {
        while let Some((at, entry)) = self.entries.front() {
            let entry_end = at + entry.len() as u64;
            if entry_end > offset {
                break;
            }
            self.start = entry_end;
            self.entries.pop_front();
        }
    }

    /// How far from `from` (an entry's start) towards `to` (an entry's
    /// end past it) one message should reach so that [`FreshEntries::range`]
    /// copies no large entry: just the first entry when it is large, else
    /// up to the first large entry after it.
    pub(crate) fn end_without_copying_large(&self, from: u64, to: u64) -> u64 {
        let first = self.entries.partition_point(|(at, _)| *at < from);
        let mut end = from;
        for (at, entry) in self.entries.range(first..) {
            let large = entry.len() >= LARGE_ENTRY_BYTES;
            if *at != end || end + entry.len() as u64 > to || (large && end > from) {
                break;
            }
            end += entry.len() as u64;
            if large {
                break;
            }
        }
        if end == from {
            to // `from` or `to` is not where an entry starts: no limit
        } else {
            end
        }
    }

    /// The bytes from `from` to `to`, both within `start..=end`: a shared
    /// slice of one entry when they lie in one, else copied once into one
    /// buffer.
    pub(crate) fn range(&self, from: u64, to: u64) -> Bytes {
        assert!(
            self.start <= from && from <= to && to <= self.end,
            "{from}..{to} lies within the fresh entries {}..{}",
            self.start,
            self.end
        );
        if from == to {
            return Bytes::new();
        }
        let first = self
            .entries
            .partition_point(|(at, _)| *at <= from)
            .checked_sub(1)
            .expect("from >= start, and the first entry begins at start");
        let (at, entry) = &self.entries[first];
        let skip = (from - at) as usize;
        if to - at <= entry.len() as u64 {
            return entry.slice(skip..(to - at) as usize);
        }
        let mut joined = BytesMut::with_capacity((to - from) as usize);
        for (at, entry) in self.entries.range(first..) {
            if *at >= to {
                break;
            }
            let lo = from.saturating_sub(*at) as usize;
            let hi = ((to - at) as usize).min(entry.len());
            joined.extend_from_slice(&entry[lo..hi]);
        }
        debug_assert_eq!(joined.len() as u64, to - from);
        joined.freeze()
    }
}

/// Where a leader encodes its entries. Small ones are consecutive slices
/// of shared chunks: an entry costs no allocation of its own, and sharing
/// it with its write and its messages only counts references. A chunk is
/// freed once its last entry is committed, written and sent, so what the
/// chunks hold is the uncommitted entries and at most two chunks more.
pub(crate) struct EntryArena {
    chunk: BytesMut,
}

/// Size of one arena chunk.
const ARENA_CHUNK: usize = 64 * 1024;

impl EntryArena {
    pub(crate) fn new() -> EntryArena {
        EntryArena {
            chunk: BytesMut::new(),
        }
    }

    /// One buffer holding `header` then `payload`.
    pub(crate) fn encode(&mut self, header: &[u8], payload: &[u8]) -> Bytes {
        let len = header.len() + payload.len();
        if len >= LARGE_ENTRY_BYTES {
            // Large: a buffer of its own, allocated once either way.
            let mut own = BytesMut::with_capacity(len);
            own.extend_from_slice(header);
            own.extend_from_slice(payload);
            return own.freeze();
        }
        if self.chunk.capacity() < len {
            self.chunk = BytesMut::with_capacity(ARENA_CHUNK);
        }
        self.chunk.extend_from_slice(header);
        self.chunk.extend_from_slice(payload);
        self.chunk.split().freeze()
    }
}

impl Clone for EntryArena {
    /// A fresh arena: chunks are never shared between two leaders' states.
    fn clone(&self) -> EntryArena {
        EntryArena::new()
    }
}

impl std::fmt::Debug for EntryArena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntryArena")
            .field("spare", &self.chunk.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh_of(lens: &[usize], start: u64) -> (FreshEntries, Vec<u8>) {
        let mut fresh = FreshEntries::starting_at(start);
        let mut all = Vec::new();
        for (index, &len) in lens.iter().enumerate() {
            let entry: Vec<u8> = (0..len).map(|i| (index * 31 + i) as u8).collect();
            all.extend_from_slice(&entry);
            fresh.push(Bytes::from(entry));
        }
        (fresh, all)
    }

    #[test]
    fn ranges_are_the_bytes_and_one_entry_is_shared_not_copied() {
        let (fresh, all) = fresh_of(&[5, 7, 3, 9], 100);
        assert_eq!((fresh.start(), fresh.end()), (100, 124));
        for from in 100..=124 {
            for to in from..=124 {
                let range = fresh.range(from, to);
                assert_eq!(&range[..], &all[(from - 100) as usize..(to - 100) as usize]);
            }
        }
        // The second entry, whole: the very bytes pushed, no copy.
        let second = fresh.range(105, 112);
        assert_eq!(second.as_ptr(), fresh.entries[1].1.as_ptr());
    }

    #[test]
    fn messages_stop_short_of_copying_a_large_entry() {
        let large = LARGE_ENTRY_BYTES;
        // Entries at 0, 10, 20, 20+large, 30+large, 30+2*large.
        let (fresh, _) = fresh_of(&[10, 10, large, 10, large, 10], 0);
        let end = fresh.end();
        let l = large as u64;
        // Small entries are joined up to the first large one.
        assert_eq!(fresh.end_without_copying_large(0, end), 20);
        // A large entry alone, shared.
        assert_eq!(fresh.end_without_copying_large(20, end), 20 + l);
        assert_eq!(fresh.end_without_copying_large(20 + l, end), 30 + l);
        // Never past `to`, and always at least one entry.
        assert_eq!(fresh.end_without_copying_large(0, 10), 10);
        assert_eq!(fresh.end_without_copying_large(30 + 2 * l, end), end);
    }

    #[test]
    fn small_entries_share_a_chunk_and_large_ones_get_their_own() {
        let mut arena = EntryArena::new();
        let first = arena.encode(b"head", b"one");
        let second = arena.encode(b"head", b"two");
        assert_eq!(
            (&first[..], &second[..]),
            (&b"headone"[..], &b"headtwo"[..])
        );
        // Consecutive in one chunk.
        assert_eq!(first.as_ptr().wrapping_add(first.len()), second.as_ptr());
        let large = arena.encode(b"h", &vec![7; LARGE_ENTRY_BYTES]);
        assert_eq!(large.len(), LARGE_ENTRY_BYTES + 1);
        let third = arena.encode(b"head", b"three");
        assert_eq!(second.as_ptr().wrapping_add(second.len()), third.as_ptr());
        // A chunk that cannot hold the next entry is replaced.
        let filler = vec![1; LARGE_ENTRY_BYTES - 1];
        let entries: Vec<Bytes> = (0..8).map(|_| arena.encode(b"", &filler)).collect();
        assert!(entries.iter().all(|entry| entry[..] == filler[..]));
        assert_eq!(&third[..], b"headthree", "earlier entries are untouched");
    }

    #[test]
    fn forgetting_drops_only_whole_entries_below() {
        let (mut fresh, all) = fresh_of(&[5, 7, 3], 0);
        fresh.forget_below(4);
        assert_eq!(fresh.start(), 0, "the first entry ends past 4");
        fresh.forget_below(12);
        assert_eq!(fresh.start(), 12);
        assert_eq!(&fresh.range(12, 15)[..], &all[12..15]);
        fresh.forget_below(15);
        assert_eq!((fresh.start(), fresh.end()), (15, 15));
        assert!(fresh.range(15, 15).is_empty());
    }
}
