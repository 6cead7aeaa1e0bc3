//! Property tests of crash recovery: damage the tail segment (cut it short,
//! flip a bit) and reopen. The recovered log must be a prefix of what was
//! written, hold every entry synced before the damage, and take new appends.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use loglog_proto::entry::{encode_entry, EntryIter, EntryKind, DEFAULT_MAX_PAYLOAD};
use loglog_proto::segment::{parse_segment_file_name, SEGMENT_HEADER_LEN};
use loglog_storage::{open, LogReader, StorageConfig, StorageError};
use proptest::prelude::*;

fn config(dir: &Path, segment_size: u64) -> StorageConfig {
    let mut config = StorageConfig::new(dir);
    config.segment_size = segment_size;
    config
}

/// A payload that names its entry, so no two entries look alike.
fn payload(id: u32, filler: &[u8]) -> Vec<u8> {
    let mut payload = id.to_le_bytes().to_vec();
    payload.extend_from_slice(filler);
    payload
}

fn read_all(reader: &LogReader) -> Vec<Vec<u8>> {
    let end = reader.end_offset();
    let mut offset = reader.start_offset();
    let mut payloads = Vec::new();
    while offset < end {
        let chunk = reader
            .read(offset, 4096, end)
            .expect("read the recovered log");
        for entry in EntryIter::new(&chunk.bytes, offset, DEFAULT_MAX_PAYLOAD) {
            payloads.push(entry.expect("entries read are valid").payload.to_vec());
        }
        offset = chunk.next_offset();
    }
    payloads
}

/// The last segment file (by start offset) and its start.
fn tail_segment(dir: &Path) -> (PathBuf, u64) {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap();
            let start = parse_segment_file_name(entry.file_name().to_str()?)?;
            Some((entry.path(), start))
        })
        .max_by_key(|(_, start)| *start)
        .expect("a segment file")
}

#[derive(Clone, Debug)]
enum Damage {
    /// Cut the tail file at this fraction of its data (and a bit past it).
    Truncate(f64),
    /// Flip one bit at this fraction.
    FlipBit(f64, u8),
    /// Overwrite a range with zeros, as a lost page would read.
    Zero(f64, usize),
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        (0.0..1.0f64, 0u8..8).prop_map(|(at, bit)| Damage::FlipBit(at, bit)),
        (0.0..1.0f64, 1usize..300).prop_map(|(at, len)| Damage::Zero(at, len)),
    ]
}

/// One appended batch: entry payload fillers, then whether to sync after it.
type Batch = (Vec<Vec<u8>>, bool);

fn batches_strategy() -> impl Strategy<Value = Vec<Batch>> {
    proptest::collection::vec(
        (
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..120), 1..6),
            any::<bool>(),
        ),
        1..20,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn recovery_keeps_a_valid_prefix_with_everything_synced(
        batches in batches_strategy(),
        segment_size in 64u64..1500,
        damage in damage_strategy(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut entry_ends: Vec<u64> = Vec::new();
        let mut synced = 0u64;
        {
            let (mut writer, syncer, _reader) = open(config(dir.path(), segment_size)).unwrap();
            for (fillers, sync) in &batches {
                let mut bytes = Vec::new();
                for filler in fillers {
                    let payload = payload(written.len() as u32, filler);
                    let before = bytes.len();
                    encode_entry(1, EntryKind::Data, &payload, &mut bytes);
                    entry_ends.push(writer.end_offset() + bytes.len() as u64);
                    let _ = before;
                    written.push(payload);
                }
                writer.append(&bytes).unwrap();
                if *sync {
                    synced = syncer.sync().unwrap();
                }
            }
            // Dropping closes cleanly; the damage below stands in for a crash.
        }

        let (tail_path, tail_start) = tail_segment(dir.path());
        let file = fs::OpenOptions::new().read(true).write(true).open(&tail_path).unwrap();
        let file_len = file.metadata().unwrap().len();
        let data_end = entry_ends.last().copied().unwrap_or(0).max(tail_start);
        // Damage lands in the data or just past it (pre-zeroed space).
        let span = (SEGMENT_HEADER_LEN as u64 + (data_end - tail_start) + 16).min(file_len);
        let header = SEGMENT_HEADER_LEN as u64;
        let position_at = |fraction: f64| header + ((span.saturating_sub(header)) as f64 * fraction) as u64;
        let damage_position = match damage {
            Damage::Truncate(at) => {
                let position = position_at(at);
                file.set_len(position).unwrap();
                position
            }
            Damage::FlipBit(at, bit) => {
                let position = position_at(at);
                let mut byte = [0u8; 1];
                if position < file_len {
                    file.read_exact_at(&mut byte, position).unwrap();
                    byte[0] ^= 1 << bit;
                    file.write_all_at(&byte, position).unwrap();
                }
                position
            }
            Damage::Zero(at, len) => {
                let position = position_at(at);
                let len = (len as u64).min(file_len.saturating_sub(position));
                file.write_all_at(&vec![0u8; len as usize], position).unwrap();
                position
            }
        };
        drop(file);
        let damaged_offset = tail_start + (damage_position - header);

        let (mut writer, syncer, reader) = open(config(dir.path(), segment_size)).unwrap();
        let recovered = read_all(&reader);
        prop_assert!(recovered.len() <= written.len());
        prop_assert_eq!(&recovered[..], &written[..recovered.len()], "not a prefix");
        prop_assert_eq!(
            writer.end_offset(),
            if recovered.is_empty() { 0 } else { entry_ends[recovered.len() - 1] }
        );
        let must_survive = entry_ends
            .iter()
            .filter(|&&end| end <= synced.min(damaged_offset))
            .count();
        prop_assert!(
            recovered.len() >= must_survive,
            "lost synced entries: recovered {}, synced before damage {}", recovered.len(), must_survive
        );

        // New appends go on after the recovered end and survive a reopen.
        let mut bytes = Vec::new();
        let fresh = payload(u32::MAX, b"after recovery");
        encode_entry(2, EntryKind::Data, &fresh, &mut bytes);
        writer.append(&bytes).unwrap();
        syncer.sync().unwrap();
        drop((writer, syncer, reader));
        let (_writer, _syncer, reader) = open(config(dir.path(), segment_size)).unwrap();
        let mut expected = recovered.clone();
        expected.push(fresh);
        prop_assert_eq!(read_all(&reader), expected);
    }

    #[test]
    fn truncated_entries_never_come_back(
        first in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 1..30),
        second in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..10),
        cut in any::<proptest::sample::Index>(),
        lost_tail in 0.0..1.0f64,
        sync_second in any::<bool>(),
        segment_size in 64u64..800,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, syncer, _reader) = open(config(dir.path(), segment_size)).unwrap();
        let mut boundaries = vec![0u64];
        let mut bytes = Vec::new();
        let first: Vec<Vec<u8>> = first.iter().enumerate().map(|(id, f)| payload(id as u32, f)).collect();
        for payload in &first {
            encode_entry(1, EntryKind::Data, payload, &mut bytes);
            boundaries.push(bytes.len() as u64);
        }
        writer.append(&bytes).unwrap();
        syncer.sync().unwrap();

        let kept = cut.index(first.len() + 1);
        let offset = boundaries[kept];
        writer.truncate_suffix(offset).unwrap();
        prop_assert_eq!(writer.end_offset(), offset);
        prop_assert!(syncer.durable_offset() <= offset);

        let second: Vec<Vec<u8>> = second.iter().enumerate().map(|(id, f)| payload(1000 + id as u32, f)).collect();
        let mut bytes = Vec::new();
        for payload in &second {
            encode_entry(2, EntryKind::Data, payload, &mut bytes);
        }
        writer.append(&bytes).unwrap();
        if sync_second {
            syncer.sync().unwrap();
        }
        drop((writer, syncer));

        // Without a sync of the second batch, a crash may lose any part of
        // it: cut the tail file somewhere past the truncation point.
        if !sync_second {
            let (tail_path, tail_start) = tail_segment(dir.path());
            let file = fs::OpenOptions::new().write(true).open(&tail_path).unwrap();
            let len = file.metadata().unwrap().len();
            let floor = SEGMENT_HEADER_LEN as u64 + offset.saturating_sub(tail_start);
            let at = floor + ((len.saturating_sub(floor)) as f64 * lost_tail) as u64;
            if at < len {
                file.set_len(at).unwrap();
            }
        }

        let (_writer, _syncer, reader) = open(config(dir.path(), segment_size)).unwrap();
        let recovered = read_all(&reader);
        let mut expected: Vec<Vec<u8>> = first[..kept].to_vec();
        expected.extend(second.iter().cloned());
        prop_assert!(recovered.len() >= kept, "lost entries below the truncation point");
        prop_assert!(recovered.len() <= expected.len());
        prop_assert_eq!(&recovered[..], &expected[..recovered.len()]);
        if sync_second {
            prop_assert_eq!(recovered, expected);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Whatever follows a valid header in the tail, recovery neither panics
    /// nor fails: it keeps the valid entries at the front and cuts the rest.
    #[test]
    fn garbage_in_the_tail_is_cut_not_fatal(
        valid in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 0..5),
        garbage in proptest::collection::vec(any::<u8>(), 0..600),
        small_max_payload in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = loglog_proto::segment::SegmentHeader { start_offset: 0 }.encode().to_vec();
        let mut valid_len = 0;
        for payload in &valid {
            encode_entry(1, EntryKind::Data, payload, &mut bytes);
            valid_len = bytes.len() - SEGMENT_HEADER_LEN;
        }
        bytes.extend_from_slice(&garbage);
        fs::write(dir.path().join(loglog_proto::segment::segment_file_name(0)), &bytes).unwrap();
        let mut config = config(dir.path(), 1 << 20);
        if small_max_payload {
            config.max_payload = 20;
        }
        let (mut writer, syncer, reader) = open(config).unwrap();
        let end = writer.end_offset();
        prop_assert!(end as usize <= bytes.len() - SEGMENT_HEADER_LEN);
        // The append limit does not apply to entries already in the log.
        prop_assert!(end as usize >= valid_len);
        let recovered = read_all(&reader);
        prop_assert!(recovered.len() >= valid.len());
        prop_assert_eq!(&recovered[..valid.len()], &valid[..]);
        let mut entry = Vec::new();
        encode_entry(1, EntryKind::Data, b"next", &mut entry);
        prop_assert_eq!(writer.append(&entry).unwrap(), end + entry.len() as u64);
        syncer.sync().unwrap();
    }
}

#[test]
fn a_damaged_segment_header_is_a_typed_error_not_a_silent_delete() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut writer, syncer, _) = open(config(dir.path(), 100)).unwrap();
        let mut bytes = Vec::new();
        for id in 0..10 {
            encode_entry(1, EntryKind::Data, &payload(id, &[7; 30]), &mut bytes);
        }
        writer.append(&bytes).unwrap();
        syncer.sync().unwrap();
    }
    let (tail_path, _) = tail_segment(dir.path());
    let original = fs::read(&tail_path).unwrap();
    for position in [0usize, 9, 17, 30] {
        let mut damaged = original.clone();
        damaged[position] ^= 0x40;
        fs::write(&tail_path, &damaged).unwrap();
        let result = open(config(dir.path(), 100));
        assert!(
            matches!(
                result,
                Err(StorageError::BadSegmentHeader { .. } | StorageError::NotContiguous { .. })
            ),
            "byte {position}: {:?}",
            result.err()
        );
    }
    // The data is still there once the header is repaired.
    fs::write(&tail_path, &original).unwrap();
    let (writer, _, _) = open(config(dir.path(), 100)).unwrap();
    assert_eq!(writer.end_offset(), 500);
}

#[test]
fn a_missing_middle_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut writer, _syncer, reader) = open(config(dir.path(), 100)).unwrap();
        let mut bytes = Vec::new();
        for id in 0..10 {
            encode_entry(1, EntryKind::Data, &payload(id, &[7; 30]), &mut bytes);
        }
        writer.append(&bytes).unwrap();
        assert!(reader.segment_count() >= 3);
    }
    let mut starts: Vec<u64> = fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| parse_segment_file_name(e.unwrap().file_name().to_str()?))
        .collect();
    starts.sort();
    fs::remove_file(
        dir.path()
            .join(loglog_proto::segment::segment_file_name(starts[1])),
    )
    .unwrap();
    assert!(matches!(
        open(config(dir.path(), 100)),
        Err(StorageError::NotContiguous { .. })
    ));
}

#[test]
fn leftover_temporary_files_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(config(dir.path(), 100)).unwrap());
    fs::write(dir.path().join("prealloc-7.tmp"), vec![0u8; 4096]).unwrap();
    fs::write(dir.path().join("00000000000000000090.seg.tmp"), b"garbage").unwrap();
    fs::write(dir.path().join("notes.tmp"), b"not ours").unwrap();
    let (writer, _, reader) = open(config(dir.path(), 100)).unwrap();
    assert!(
        dir.path().join("notes.tmp").exists(),
        "other files are left alone"
    );
    assert_eq!(writer.end_offset(), 0);
    assert_eq!(reader.segment_count(), 1);
    assert!(!dir.path().join("prealloc-7.tmp").exists());
    assert!(!dir.path().join("00000000000000000090.seg.tmp").exists());
}

#[test]
fn an_unknown_segment_format_version_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(config(dir.path(), 100)).unwrap());
    let (path, _) = tail_segment(dir.path());
    let mut header = fs::read(&path).unwrap();
    header[8] = 9;
    let crc = crc32c_of(&header[..28]);
    header[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&path, &header).unwrap();
    assert!(matches!(
        open(config(dir.path(), 100)),
        Err(StorageError::UnsupportedFormat { found: 9, .. })
    ));
}

#[test]
fn a_segment_named_near_the_largest_offset_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let start = u64::MAX - 10;
    let path = dir
        .path()
        .join(loglog_proto::segment::segment_file_name(start));
    let mut bytes = loglog_proto::segment::SegmentHeader {
        start_offset: start,
    }
    .encode()
    .to_vec();
    bytes.extend_from_slice(&[0u8; 64]);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(
        open(config(dir.path(), 100)),
        Err(StorageError::Corrupt { .. })
    ));
}

/// Found by the `segment_recovery` fuzz target: a segment named just below
/// u64::MAX with no log bytes recovers (its bytes fit), but an append there
/// overflowed the offset arithmetic. It is now a typed error, and the log
/// is unchanged.
#[test]
fn an_append_past_the_largest_offset_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let start = u64::MAX - 1;
    let path = dir
        .path()
        .join(loglog_proto::segment::segment_file_name(start));
    let header = loglog_proto::segment::SegmentHeader {
        start_offset: start,
    }
    .encode();
    fs::write(&path, header).unwrap();
    let (mut writer, _syncer, reader) = open(config(dir.path(), 4096)).unwrap();
    assert_eq!(writer.end_offset(), start);
    let mut entry = Vec::new();
    encode_entry(1, EntryKind::Data, b"no room", &mut entry);
    assert!(matches!(
        writer.append(&entry),
        Err(StorageError::InvalidAppend { .. })
    ));
    assert_eq!(writer.end_offset(), start);
    assert_eq!(reader.end_offset(), start);
    assert_eq!(
        fs::metadata(&path).unwrap().len(),
        SEGMENT_HEADER_LEN as u64
    );
}

/// CRC32C (Castagnoli), bitwise: the test does not need a dependency.
fn crc32c_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The configured payload limit is for new appends: reopening with a smaller
/// one keeps every entry appended under the larger one (small and large,
/// in non-tail segments and in the scanned tail, including entries larger
/// than the scan's 1 MiB buffer), and they read back intact.
#[test]
fn a_smaller_max_payload_after_reopen_keeps_larger_entries() {
    let dir = tempfile::tempdir().unwrap();
    let sizes = [10usize, 3 << 20, 100, 70_000, 5, 2 << 20, 1 << 10, 300_000];
    let expected: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(id, &size)| {
            let filler: Vec<u8> = (0..size).map(|i| (i * 7 + id) as u8).collect();
            payload(id as u32, &filler)
        })
        .collect();
    let segment_size = 4 << 20;
    {
        let mut big = config(dir.path(), segment_size);
        big.max_payload = 8 << 20;
        let (mut writer, syncer, _) = open(big).unwrap();
        for payload in &expected {
            let mut bytes = Vec::new();
            encode_entry(1, EntryKind::Data, payload, &mut bytes);
            writer.append(&bytes).unwrap();
        }
        syncer.sync().unwrap();
    }
    let total: u64 = expected.iter().map(|p| 16 + p.len() as u64).sum();
    let mut small = config(dir.path(), segment_size);
    small.max_payload = 64;
    let (mut writer, syncer, reader) = open(small.clone()).unwrap();
    assert_eq!(writer.end_offset(), total, "recovery cut entries");
    assert!(
        reader.segment_count() > 1,
        "the test covers non-tail segments"
    );
    assert_eq!(read_all_whole(&reader), expected);

    // New appends obey the smaller limit; the old entries stay.
    let mut too_big = Vec::new();
    encode_entry(2, EntryKind::Data, &[1; 65], &mut too_big);
    assert!(matches!(
        writer.append(&too_big),
        Err(StorageError::InvalidAppend { .. })
    ));
    let mut fits = Vec::new();
    encode_entry(2, EntryKind::Data, &[2; 64], &mut fits);
    writer.append(&fits).unwrap();
    syncer.sync().unwrap();
    drop((writer, syncer, reader));

    let (writer, _, reader) = open(small.clone()).unwrap();
    assert_eq!(writer.end_offset(), total + fits.len() as u64);
    let mut all = expected;
    all.push(vec![2; 64]);
    assert_eq!(read_all_whole(&reader), all);
    drop((writer, reader));

    // A large entry whose CRC fails (checked piece by piece) still ends the
    // log: damage the 2 MiB entry that starts the tail segment.
    let (tail_path, tail_start) = tail_segment(dir.path());
    let tail_file = fs::OpenOptions::new().write(true).open(&tail_path).unwrap();
    let at = SEGMENT_HEADER_LEN as u64 + 16 + 1_500_000;
    let mut byte = [0u8];
    fs::File::open(&tail_path)
        .unwrap()
        .read_exact_at(&mut byte, at)
        .unwrap();
    tail_file.write_all_at(&[byte[0] ^ 1], at).unwrap();
    drop(tail_file);
    let (writer, _, reader) = open(small).unwrap();
    assert_eq!(writer.end_offset(), tail_start);
    assert_eq!(read_all_whole(&reader), all[..5]);
}

/// Every payload of the log, reading one chunk at a time with a small
/// `max_bytes` (so large entries come back whole, one per chunk).
fn read_all_whole(reader: &LogReader) -> Vec<Vec<u8>> {
    let end = reader.end_offset();
    let mut offset = reader.start_offset();
    let mut payloads = Vec::new();
    while offset < end {
        let chunk = reader.read(offset, 4096, end).expect("read the log");
        for entry in EntryIter::new(&chunk.bytes, offset, u32::MAX) {
            payloads.push(entry.expect("entries read are valid").payload.to_vec());
        }
        offset = chunk.next_offset();
    }
    payloads
}
