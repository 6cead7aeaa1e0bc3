//! Exactly-once appends: the producer table.
//!
//! A client that wants its retries to be harmless sends every append with a
//! producer envelope (`loglog_proto::producer`): a random producer id and a
//! sequence number of its own. The node stores the envelope in front of the
//! payload (entry flag `PRODUCER`), and every node keeps this table of the
//! (producer, sequence) pairs **in its own log**, with where each entry is.
//! The table follows the log, not the requests: the single-node writer
//! records what it writes, the raft driver records every `Append` action it
//! performs (the leader's own proposals and a follower's replicated entries
//! alike) and drops records on `Truncate`, and a restart rebuilds it from a
//! bounded scan of the log's tail ([`scan_log_tail`]). So a new leader's
//! table covers every entry of its log, uncommitted entries of earlier
//! terms included.
//!
//! # What the leader answers
//!
//! For an append tagged (p, s), [`ProducerTable::decide`]:
//! * (p, s) is in the log at offset `o` (term `t`): [`Decision::Duplicate`].
//!   Nothing is appended; the caller answers `o` once the commit offset
//!   passes `o` with a term-`t` entry there (the same entry), else
//!   `NotLeader` (that copy was replaced, so a retry cannot duplicate it).
//! * Not in the log, provably: [`Decision::Append`]. A first attempt (no
//!   retry flag) is always this: by the client contract it was never sent
//!   before. A retry is, when the table has seen every entry of p above
//!   sequence s (see "exactness" below).
//! * Otherwise (a retry the table cannot decide): [`Decision::Unknown`],
//!   answered `SequenceUnknown`: nothing appended now, outcome of the
//!   earlier attempt unknown. Never a second copy.
//!
//! Why appending when (p, s) is not in the leader's log cannot make two
//! committed copies: an old copy elsewhere, of an older term, can commit
//! only ahead of the new one (terms never decrease along a log), and then
//! it was in the leader's log below its end when it proposed (log
//! matching), where the table would have found it.
//!
//! # Bounds and exactness
//!
//! At most [`DedupLimits::max_producers`] producers (the least recently
//! appending is evicted), and per producer the last
//! [`DedupLimits::window`] of its entries in log order. Each producer
//! keeps `unknown_up_to`: sequences at or below it may be in the log
//! without a record (pushed out of the window, or before the part of the
//! log the table has seen). A producer not in the table is known to have no
//! entry in the log only while the table has seen the whole log from offset
//! 0 and never evicted a producer (`absent_means_none`); after that, a
//! retry from an unknown producer is `Unknown`, and so is any retry, not
//! found, of a producer first seen after it (its older history is unknown).
//!
//! The exact guarantee: a retry of (p, s) is answered with the original's
//! offset when the original is among p's last `window` entries of the
//! leader's log and p is among the `max_producers` producers that appended
//! there most recently. A retry that is not found is appended only when the
//! table proves the log holds no copy: the table has seen the whole log from
//! offset 0 and never evicted a producer (an unknown producer has no entry),
//! or p first appeared while that held and s is above every sequence of p
//! pushed out of its window. Otherwise it is answered `SequenceUnknown`. In
//! no case is a second copy committed.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};

/// The table's maps hash u64 keys on every append, so SipHash was a fifth
/// of the single-node append path (callgrind). foldhash is seeded per
/// process: keys come from clients, so the seed must not be predictable.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::path::Path;

use loglog_proto::entry::{EntryHeader, EntryIter, ENTRY_HEADER_LEN};
use loglog_proto::producer::{entry_producer, ProducerTag};
use loglog_proto::segment::parse_segment_file_name;
use loglog_storage::LogReader;

/// Default most producers remembered.
pub const DEFAULT_MAX_PRODUCERS: usize = 1024;
/// Default entries remembered per producer: the client library keeps its
/// unfinished appends within half of it, so a client's retries after a
/// failover all fit (`loglog_proto::producer::MAX_SEQUENCE_SPAN`).
pub const DEFAULT_WINDOW: usize = loglog_proto::producer::DEDUP_WINDOW;
/// A restart rebuilds the table from at least this many bytes of the log's
/// tail (whole segments: at most one segment more), or the whole log when
/// it is shorter.
pub const REBUILD_SCAN_BYTES: u64 = 256 * 1024 * 1024;

/// The table's bounds. With the defaults the worst case is 1024 x 1024
/// records of about 40 bytes (two maps' entries), about 40 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupLimits {
    pub max_producers: usize,
    pub window: usize,
}

impl Default for DedupLimits {
    fn default() -> DedupLimits {
        DedupLimits {
            max_producers: DEFAULT_MAX_PRODUCERS,
            window: DEFAULT_WINDOW,
        }
    }
}

/// Where a (producer, sequence) is in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    pub offset: u64,
    pub term: u32,
}

/// What to do with an append tagged (producer, sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// It is in the log already, there.
    Duplicate(Located),
    /// It is not in the log: append it.
    Append,
    /// A retry the table cannot decide: answer `SequenceUnknown`.
    Unknown,
}

#[derive(Debug)]
struct Producer {
    /// Sequence -> where it is.
    by_sequence: FastMap<u64, Located>,
    /// (offset, sequence) in log order: the window's eviction order and
    /// what a truncation removes from the back.
    order: VecDeque<(u64, u64)>,
    /// Sequences at or below this may be in the log without a record.
    unknown_up_to: Option<u64>,
    /// When it last appended (a counter): the least recent goes first.
    stamp: u64,
}

/// The producer table of one node's log. Not thread-safe: owned by the
/// thread that writes the log (the pipeline's writer, the raft driver).
#[derive(Debug)]
pub struct ProducerTable {
    limits: DedupLimits,
    producers: FastMap<u64, Producer>,
    next_stamp: u64,
    /// A producer not in the table has no entry in the log.
    absent_means_none: bool,
    /// End of the log as far as the table has seen it: the next entry
    /// observed must start here (a gap means unseen entries).
    end: u64,
}

impl ProducerTable {
    /// The table of an empty log that starts at offset 0.
    pub fn new(limits: DedupLimits) -> ProducerTable {
        ProducerTable::starting_at(limits, 0)
    }

    /// The table of a log whose entries below `offset` it will not see:
    /// exact only when `offset` is 0.
    pub fn starting_at(limits: DedupLimits, offset: u64) -> ProducerTable {
        ProducerTable {
            limits: DedupLimits {
                max_producers: limits.max_producers.max(1),
                window: limits.window.max(1),
            },
            producers: FastMap::default(),
            next_stamp: 0,
            absent_means_none: offset == 0,
            end: offset,
        }
    }

    pub fn limits(&self) -> DedupLimits {
        self.limits
    }

    /// Offset just past the last entry observed.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Number of producers remembered.
    pub fn producer_count(&self) -> usize {
        self.producers.len()
    }

    /// Where (producer, sequence) is in the log, if the table knows.
    pub fn find(&self, tag: ProducerTag) -> Option<Located> {
        self.producers
            .get(&tag.producer_id)?
            .by_sequence
            .get(&tag.sequence)
            .copied()
    }

    /// What to do with an append tagged `tag`; `retry` is the request's
    /// retry flag (the client may have sent it before).
    pub fn decide(&self, tag: ProducerTag, retry: bool) -> Decision {
        if let Some(located) = self.find(tag) {
            return Decision::Duplicate(located);
        }
        if !retry {
            return Decision::Append;
        }
        let exact = match self.producers.get(&tag.producer_id) {
            Some(producer) => producer
                .unknown_up_to
                .is_none_or(|unknown| tag.sequence > unknown),
            None => self.absent_means_none,
        };
        if exact {
            Decision::Append
        } else {
            Decision::Unknown
        }
    }

    /// Observes one entry appended to the log at `offset` (its header and
    /// whole payload). Entries must be observed in log order; one that does
    /// not start where the last ended means entries the table never saw.
    pub fn observe(&mut self, offset: u64, header: &EntryHeader, payload: &[u8]) {
        if offset != self.end {
            self.lose_history();
        }
        self.end = offset + header.entry_len();
        if let Some((Some(tag), _)) = entry_producer(header, payload) {
            self.record(tag, offset, header.term);
        }
    }

    /// Observes every whole entry in `bytes`, which start at `offset` (an
    /// `Append` action's bytes, a written batch). The bytes were produced
    /// or validated by this node, so only headers are walked (no CRC); a
    /// header that does not decode ends the walk and marks the rest unseen.
    pub fn observe_bytes(&mut self, offset: u64, bytes: &[u8]) {
        let mut position = 0usize;
        while position < bytes.len() {
            let rest = &bytes[position..];
            let Ok(header) = EntryHeader::decode(rest, u32::MAX) else {
                self.lose_history();
                return;
            };
            let Some(payload) = rest.get(ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + header.len as usize)
            else {
                self.lose_history();
                return;
            };
            self.observe(offset + position as u64, &header, payload);
            position += ENTRY_HEADER_LEN + header.len as usize;
        }
    }

    /// Records that (producer, sequence) is in the log at `offset`, of
    /// `term` (the leader records its proposals at once, so that a second
    /// copy arriving in the same round is found). Recording the same pair
    /// again keeps the first record.
    pub fn record(&mut self, tag: ProducerTag, offset: u64, term: u32) {
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        if !self.producers.contains_key(&tag.producer_id)
            && self.producers.len() >= self.limits.max_producers
        {
            self.evict_least_recent();
        }
        let producer = match self.producers.entry(tag.producer_id) {
            Entry::Occupied(occupied) => {
                let producer = occupied.into_mut();
                producer.stamp = stamp;
                producer
            }
            // First seen now: if the table may have missed some of its
            // entries, none of its retries that are not found is decidable.
            Entry::Vacant(vacant) => vacant.insert(Producer {
                by_sequence: FastMap::default(),
                order: VecDeque::new(),
                unknown_up_to: (!self.absent_means_none).then_some(u64::MAX),
                stamp,
            }),
        };
        let Entry::Vacant(vacant) = producer.by_sequence.entry(tag.sequence) else {
            return;
        };
        vacant.insert(Located { offset, term });
        producer.order.push_back((offset, tag.sequence));
        while producer.order.len() > self.limits.window {
            let (_, sequence) = producer.order.pop_front().expect("longer than the window");
            producer.by_sequence.remove(&sequence);
            producer.unknown_up_to = Some(producer.unknown_up_to.unwrap_or(0).max(sequence));
        }
    }

    /// The log was cut at `offset`: entries at or above it are gone.
    pub fn truncate(&mut self, offset: u64) {
        let mut emptied = Vec::new();
        for (id, producer) in &mut self.producers {
            while producer.order.back().is_some_and(|&(at, _)| at >= offset) {
                let (_, sequence) = producer.order.pop_back().expect("checked");
                producer.by_sequence.remove(&sequence);
            }
            if producer.order.is_empty() && producer.unknown_up_to.is_none() {
                emptied.push(*id);
            }
        }
        // Nothing of theirs is left in the log: forgetting them loses nothing.
        for id in emptied {
            self.producers.remove(&id);
        }
        self.end = self.end.min(offset);
    }

    /// Entries the table never saw may be in the log (a gap): nothing that
    /// is not found can be ruled out any more.
    fn lose_history(&mut self) {
        self.absent_means_none = false;
        for producer in self.producers.values_mut() {
            producer.unknown_up_to = Some(u64::MAX);
        }
    }

    /// A scan of at most `max_producers`, only when a new producer arrives
    /// at a full table: cheaper than keeping an LRU order on every append.
    fn evict_least_recent(&mut self) {
        let least_recent = self
            .producers
            .iter()
            .min_by_key(|(_, producer)| producer.stamp)
            .map(|(&id, _)| id);
        if let Some(id) = least_recent {
            self.producers.remove(&id);
            self.absent_means_none = false;
        }
    }
}

/// Rebuilds the table of the log `reader` reads (segments in `log_dir`),
/// up to `end`, from a bounded scan of its tail: the whole log when it is
/// shorter than `scan_bytes` (nodes use [`REBUILD_SCAN_BYTES`]), else from
/// the last segment start at least that far from the end. The table is
/// exact only when the scan starts at offset 0 (see the module docs).
pub fn scan_log_tail(
    reader: &LogReader,
    log_dir: &Path,
    end: u64,
    limits: DedupLimits,
    scan_bytes: u64,
) -> Result<ProducerTable, String> {
    let start = reader.start_offset();
    let mut from = start;
    if end.saturating_sub(start) > scan_bytes {
        let entries =
            std::fs::read_dir(log_dir).map_err(|error| format!("listing {log_dir:?}: {error}"))?;
        for entry in entries {
            let entry = entry.map_err(|error| format!("listing {log_dir:?}: {error}"))?;
            let Some(segment_start) = entry.file_name().to_str().and_then(parse_segment_file_name)
            else {
                continue;
            };
            // The latest segment start that still leaves the bound to scan.
            if segment_start >= start && segment_start <= end && end - segment_start >= scan_bytes {
                from = from.max(segment_start);
            }
        }
    }
    let mut table = ProducerTable::starting_at(limits, from);
    let mut at = from;
    while at < end {
        let chunk = reader
            .read(at, 4 * 1024 * 1024, end)
            .map_err(|error| format!("scanning the log at {at} for producers: {error}"))?;
        if chunk.bytes.is_empty() {
            return Err(format!("scanning the log for producers: no entry at {at}"));
        }
        for entry in EntryIter::new(&chunk.bytes, chunk.offset, u32::MAX) {
            let entry =
                entry.map_err(|error| format!("scanning the log for producers: {error}"))?;
            table.observe(entry.offset, &entry.header, entry.payload);
        }
        at = chunk.next_offset();
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog_proto::entry::{encode_entry_with_flags, EntryKind};
    use loglog_proto::producer::ENTRY_FLAG_PRODUCER;
    use proptest::prelude::*;

    fn tag(producer_id: u64, sequence: u64) -> ProducerTag {
        ProducerTag {
            producer_id,
            sequence,
        }
    }

    /// Appends an entry tagged `tag` (or a plain one) to `log` (starting at
    /// offset 0) and shows it to `table`; returns its offset.
    fn append(table: &mut ProducerTable, log: &mut Vec<u8>, tag: Option<ProducerTag>) -> u64 {
        let offset = log.len() as u64;
        let mut payload = Vec::new();
        let mut flags = 0;
        if let Some(tag) = tag {
            payload.extend_from_slice(&tag.encode());
            flags = ENTRY_FLAG_PRODUCER;
        }
        payload.extend_from_slice(b"value");
        let mut entry = Vec::new();
        encode_entry_with_flags(2, EntryKind::Data, flags, &payload, &mut entry);
        table.observe_bytes(offset, &entry);
        log.extend_from_slice(&entry);
        offset
    }

    #[test]
    fn finds_what_the_log_holds_and_appends_what_it_does_not() {
        let mut table = ProducerTable::new(DedupLimits::default());
        let mut log = Vec::new();
        append(&mut table, &mut log, None);
        let at = append(&mut table, &mut log, Some(tag(7, 1)));
        assert_eq!(
            table.decide(tag(7, 1), true),
            Decision::Duplicate(Located {
                offset: at,
                term: 2
            })
        );
        assert_eq!(table.decide(tag(7, 2), true), Decision::Append);
        assert_eq!(table.decide(tag(8, 1), true), Decision::Append);
        // Truncation removes it: a retry then appends again.
        table.truncate(at);
        assert_eq!(table.decide(tag(7, 1), true), Decision::Append);
        assert_eq!(table.end(), at);
    }

    #[test]
    fn the_window_and_the_producer_bound_make_retries_unknown_never_new() {
        let limits = DedupLimits {
            max_producers: 2,
            window: 3,
        };
        let mut table = ProducerTable::new(limits);
        let mut log = Vec::new();
        for sequence in 0..5 {
            append(&mut table, &mut log, Some(tag(1, sequence)));
        }
        assert_eq!(table.decide(tag(1, 1), true), Decision::Unknown);
        assert!(matches!(
            table.decide(tag(1, 2), true),
            Decision::Duplicate(_)
        ));
        assert_eq!(table.decide(tag(1, 9), true), Decision::Append);
        // A first attempt is new by contract.
        assert_eq!(table.decide(tag(1, 1), false), Decision::Append);
        append(&mut table, &mut log, Some(tag(2, 0)));
        assert_eq!(table.decide(tag(3, 0), true), Decision::Append);
        append(&mut table, &mut log, Some(tag(3, 0)));
        // Producer 1 was the least recently appending: evicted.
        assert_eq!(table.producer_count(), 2);
        assert_eq!(table.decide(tag(1, 4), true), Decision::Unknown);
        assert_eq!(table.decide(tag(4, 0), true), Decision::Unknown);
        assert_eq!(table.decide(tag(4, 0), false), Decision::Append);
    }

    #[test]
    fn a_gap_in_the_observed_log_makes_misses_unknown() {
        let mut table = ProducerTable::new(DedupLimits::default());
        let mut log = Vec::new();
        append(&mut table, &mut log, Some(tag(1, 0)));
        let mut entry = Vec::new();
        encode_entry_with_flags(
            2,
            EntryKind::Data,
            ENTRY_FLAG_PRODUCER,
            &tag(1, 5).encode(),
            &mut entry,
        );
        table.observe_bytes(10_000, &entry);
        assert!(matches!(
            table.decide(tag(1, 5), true),
            Decision::Duplicate(_)
        ));
        assert_eq!(table.decide(tag(1, 3), true), Decision::Unknown);
        assert_eq!(table.decide(tag(2, 0), true), Decision::Unknown);
    }

    /// The model: the whole log's (producer, sequence) -> first offset,
    /// unbounded. The table must never contradict it: a `Duplicate` is
    /// exact, and `Append` for a retry only when the log has no copy.
    #[derive(Clone, Debug)]
    enum Op {
        Append { producer: u64, sequence: u64 },
        Plain,
        Truncate { back: usize },
        Decide { producer: u64, sequence: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u64..6, 0u64..12).prop_map(|(producer, sequence)| Op::Append { producer, sequence }),
            1 => Just(Op::Plain),
            1 => (0usize..4).prop_map(|back| Op::Truncate { back }),
            4 => (0u64..7, 0u64..14).prop_map(|(producer, sequence)| Op::Decide { producer, sequence }),
        ]
    }

    /// A restart's scan of a real log: the whole log when it is short (an
    /// exact table), else whole segments of its tail (a partial table:
    /// what it holds is found, misses are unknown, never appended).
    #[test]
    fn a_restart_rebuilds_the_table_from_the_logs_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = loglog_storage::StorageConfig::new(dir.path());
        config.segment_size = 4096;
        config.fsync = loglog_storage::FsyncPolicy::Never;
        let (mut writer, _syncer, reader) = loglog_storage::open(config).unwrap();
        let mut offsets = Vec::new();
        for sequence in 0..200 {
            let mut payload = tag(1, sequence).encode().to_vec();
            payload.extend_from_slice(&[7; 100]);
            let mut entry = Vec::new();
            encode_entry_with_flags(
                3,
                EntryKind::Data,
                ENTRY_FLAG_PRODUCER,
                &payload,
                &mut entry,
            );
            offsets.push(writer.end_offset());
            writer.append(&entry).unwrap();
        }
        let end = writer.end_offset();
        assert!(reader.segment_count() > 4, "the log spans segments");

        let whole =
            scan_log_tail(&reader, dir.path(), end, DedupLimits::default(), 1 << 30).unwrap();
        assert_eq!(whole.end(), end);
        assert_eq!(whole.find(tag(1, 0)).map(|l| l.offset), Some(offsets[0]));
        assert_eq!(whole.decide(tag(1, 500), true), Decision::Append);
        assert_eq!(whole.decide(tag(2, 0), true), Decision::Append);

        let tail = scan_log_tail(&reader, dir.path(), end, DedupLimits::default(), 5000).unwrap();
        assert_eq!(tail.end(), end);
        assert_eq!(
            tail.decide(tag(1, 199), true),
            Decision::Duplicate(Located {
                offset: offsets[199],
                term: 3
            })
        );
        assert_eq!(tail.find(tag(1, 0)), None, "the scan started past it");
        assert_eq!(tail.decide(tag(1, 0), true), Decision::Unknown);
        assert_eq!(tail.decide(tag(1, 500), true), Decision::Unknown);
        assert_eq!(tail.decide(tag(2, 0), true), Decision::Unknown);
        assert_eq!(tail.decide(tag(2, 0), false), Decision::Append);
    }

    /// Drives `table` and a model log (every entry's offset and tag) with
    /// `ops`, appending only what the table decides new (as a retry: the
    /// strictest case); `check` sees every `Op::Decide` with the offsets
    /// of the model's copies of that tag.
    fn run_model(
        table: &mut ProducerTable,
        ops: Vec<Op>,
        mut check: impl FnMut(&mut ProducerTable, ProducerTag, &[u64]) -> Result<(), TestCaseError>,
    ) -> Result<(), TestCaseError> {
        let mut log = Vec::new();
        let mut model: Vec<(u64, Option<ProducerTag>)> = Vec::new();
        for op in ops {
            match op {
                Op::Append { producer, sequence } => {
                    let tag = tag(producer, sequence);
                    if table.decide(tag, true) == Decision::Append {
                        let at = append(table, &mut log, Some(tag));
                        model.push((at, Some(tag)));
                    }
                }
                Op::Plain => {
                    let at = append(table, &mut log, None);
                    model.push((at, None));
                }
                Op::Truncate { back } => {
                    let keep = model.len().saturating_sub(back);
                    let cut = model.get(keep).map_or(log.len() as u64, |&(at, _)| at);
                    model.truncate(keep);
                    log.truncate(cut as usize);
                    table.truncate(cut);
                }
                Op::Decide { producer, sequence } => {
                    let tag = tag(producer, sequence);
                    let copies: Vec<u64> = model
                        .iter()
                        .filter(|(_, t)| *t == Some(tag))
                        .map(|&(at, _)| at)
                        .collect();
                    check(table, tag, &copies)?;
                }
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn the_table_never_contradicts_the_log(ops in proptest::collection::vec(op(), 1..200), max_producers in 1usize..5, window in 1usize..6) {
            let mut table = ProducerTable::new(DedupLimits { max_producers, window });
            run_model(&mut table, ops, |table, tag, copies| {
                prop_assert!(copies.len() <= 1, "a duplicate entered the log: {copies:?}");
                match table.decide(tag, true) {
                    Decision::Duplicate(located) => prop_assert_eq!(Some(located.offset), copies.first().copied()),
                    Decision::Append => prop_assert!(copies.is_empty()),
                    Decision::Unknown => {}
                }
                Ok(())
            })?;
        }

        #[test]
        fn with_room_for_everything_every_retry_is_decided(ops in proptest::collection::vec(op(), 1..200)) {
            let mut table = ProducerTable::new(DedupLimits { max_producers: 8, window: 16 });
            run_model(&mut table, ops, |table, tag, copies| {
                let expected = match copies.first() {
                    Some(&offset) => Decision::Duplicate(Located { offset, term: 2 }),
                    None => Decision::Append,
                };
                prop_assert_eq!(table.decide(tag, true), expected);
                Ok(())
            })?;
        }
    }
}
