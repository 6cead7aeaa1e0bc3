//! Append, read, roll, truncate, trim and reopen on real files.

use loglog_proto::entry::{encode_entry, EntryIter, EntryKind, DEFAULT_MAX_PAYLOAD};
use loglog_storage::{open, FsyncPolicy, StorageConfig, StorageError};

fn entries(payloads: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in payloads {
        encode_entry(1, EntryKind::Data, payload, &mut out);
    }
    out
}

fn payloads_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    EntryIter::new(bytes, 0, DEFAULT_MAX_PAYLOAD)
        .map(|entry| entry.unwrap().payload.to_vec())
        .collect()
}

fn small_config(dir: &std::path::Path) -> StorageConfig {
    let mut config = StorageConfig::new(dir);
    config.segment_size = 100;
    config
}

#[test]
fn append_read_sync_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(StorageConfig::new(dir.path())).unwrap();
    assert_eq!((writer.start_offset(), writer.end_offset()), (0, 0));
    let batch = entries(&[b"one", b"two", b"three"]);
    let end = writer.append(&batch).unwrap();
    assert_eq!(end, batch.len() as u64);
    assert_eq!(syncer.sync().unwrap(), end);
    assert_eq!(syncer.durable_offset(), end);

    let chunk = reader.read(0, 1 << 20, end).unwrap();
    assert_eq!(chunk.bytes, batch);
    assert_eq!(chunk.entry_count, 3);
    assert_eq!(chunk.next_offset(), end);
    // At least one entry, even when max_bytes is smaller.
    let chunk = reader.read(0, 1, end).unwrap();
    assert_eq!(payloads_of(&chunk.bytes), vec![b"one".to_vec()]);
    // Never past the limit.
    let chunk = reader.read(0, 1 << 20, 19 + 19).unwrap();
    assert_eq!(chunk.entry_count, 2);
    assert!(reader.read(0, 1 << 20, 19 + 19).is_ok());
    assert!(reader.read(end, 100, end).unwrap().bytes.is_empty());
    assert!(
        matches!(reader.read(end + 1, 100, end), Err(StorageError::OutOfRange { end: e }) if e == end)
    );
    assert!(matches!(
        reader.read(1, 100, end),
        Err(StorageError::NotEntryBoundary { offset: 1 })
    ));
    // The limit cuts an entry: the offset or the limit is not a boundary.
    assert!(matches!(
        reader.read(0, 100, 5),
        Err(StorageError::NotEntryBoundary { offset: 0 })
    ));
    drop((writer, syncer, reader));

    let (mut writer, _syncer, reader) = open(StorageConfig::new(dir.path())).unwrap();
    assert_eq!(writer.end_offset(), end);
    assert_eq!(reader.read(0, 1 << 20, end).unwrap().bytes, batch);
    writer.append(&entries(&[b"four"])).unwrap();
    let all = reader.read(0, 1 << 20, writer.end_offset()).unwrap();
    assert_eq!(payloads_of(&all.bytes).len(), 4);
}

#[test]
fn rolls_and_reads_stop_at_segment_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    // 30-byte entries: three fit in a 100-byte segment.
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 14]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    let batch = entries(&refs);
    writer.append(&batch).unwrap();
    assert_eq!(reader.segment_count(), 4);
    let end = syncer.sync().unwrap();
    assert_eq!(end, 300);
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < end {
        let chunk = reader.read(offset, 1 << 20, end).unwrap();
        assert!(chunk.bytes.len() <= 90, "a read stops at its segment's end");
        seen.extend(payloads_of(&chunk.bytes));
        offset = chunk.next_offset();
    }
    assert_eq!(seen, payloads);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&"00000000000000000090.seg".to_string()),
        "{names:?}"
    );
    drop((writer, syncer, reader));

    let (writer, _syncer, reader) = open(small_config(dir.path())).unwrap();
    assert_eq!(writer.end_offset(), 300);
    assert_eq!(reader.segment_count(), 4);
    assert_eq!(
        payloads_of(&reader.read(270, 1000, 300).unwrap().bytes),
        vec![payloads[9].clone()]
    );
}

#[test]
fn an_entry_larger_than_a_segment_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    let batch = entries(&[b"small", &[7u8; 500], b"after"]);
    writer.append(&batch).unwrap();
    syncer.sync().unwrap();
    assert_eq!(reader.segment_count(), 3);
    let chunk = reader.read(21, 10, writer.end_offset()).unwrap();
    assert_eq!(chunk.bytes.len(), 516);
}

#[test]
fn truncate_suffix_then_shorter_appends_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, _reader) = open(small_config(dir.path())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 14]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    writer.append(&entries(&refs)).unwrap();
    syncer.sync().unwrap();
    writer.truncate_suffix(60).unwrap();
    assert_eq!(writer.end_offset(), 60);
    assert!(syncer.durable_offset() <= 60);
    writer.append(&entries(&[b"x"])).unwrap();
    syncer.sync().unwrap();
    drop((writer, syncer));
    let (writer, _syncer, reader) = open(small_config(dir.path())).unwrap();
    assert_eq!(writer.end_offset(), 77);
    let chunk = reader.read(0, 1000, 77).unwrap();
    let mut got = payloads_of(&chunk.bytes);
    got.extend(payloads_of(
        &reader.read(chunk.next_offset(), 1000, 77).unwrap().bytes,
    ));
    assert_eq!(
        got,
        vec![payloads[0].clone(), payloads[1].clone(), b"x".to_vec()]
    );
}

#[test]
fn trim_prefix_deletes_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 14]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    writer.append(&entries(&refs)).unwrap();
    syncer.sync().unwrap();
    assert_eq!(writer.trim_prefix(100).unwrap(), 90);
    assert_eq!(reader.start_offset(), 90);
    assert!(matches!(
        reader.read(0, 10, 300),
        Err(StorageError::Trimmed { start: 90 })
    ));
    assert_eq!(reader.read(90, 10, 300).unwrap().entry_count, 1);
    // Never the tail.
    assert_eq!(writer.trim_prefix(10_000).unwrap(), 270);
    drop((writer, syncer, reader));
    let (writer, _, _) = open(small_config(dir.path())).unwrap();
    assert_eq!((writer.start_offset(), writer.end_offset()), (270, 300));
}

/// Re-seeding: the whole log is replaced by an empty one beginning at a
/// given offset (above, inside or below the old log), durably.
#[test]
fn reset_to_begins_an_empty_log_at_the_offset() {
    for reset_at in [1_000u64, 120, 90, 0] {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
        let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 14]).collect();
        let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
        writer.append(&entries(&refs)).unwrap();
        syncer.sync().unwrap();
        writer.reset_to(reset_at).unwrap();
        assert_eq!(
            (writer.start_offset(), writer.end_offset()),
            (reset_at, reset_at)
        );
        assert_eq!(reader.segment_count(), 1);
        assert_eq!(syncer.durable_offset(), reset_at);
        if reset_at > 0 {
            assert!(matches!(
                reader.read(0, 10, reset_at),
                Err(StorageError::Trimmed { start }) if start == reset_at
            ));
        }
        writer.append(&entries(&[b"after the reset"])).unwrap();
        let end = syncer.sync().unwrap();
        let chunk = reader.read(reset_at, 1000, end).unwrap();
        assert_eq!(payloads_of(&chunk.bytes), vec![b"after the reset".to_vec()]);
        drop((writer, syncer, reader));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.ends_with(".seg"))
            .collect();
        assert_eq!(names, vec![format!("{reset_at:020}.seg")]);
        let (writer, _, _) = open(small_config(dir.path())).unwrap();
        assert_eq!(
            (writer.start_offset(), writer.end_offset()),
            (reset_at, end)
        );
    }
}

#[test]
fn fsync_never_still_works() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path());
    config.fsync = FsyncPolicy::Never;
    let (mut writer, syncer, _) = open(config.clone()).unwrap();
    writer
        .append(&entries(&[&[1u8; 40], &[2u8; 40], &[3u8; 40]]))
        .unwrap();
    assert_eq!(syncer.sync().unwrap(), 168);
    drop((writer, syncer));
    let (writer, _, reader) = open(config).unwrap();
    assert_eq!(writer.end_offset(), 168);
    assert_eq!(reader.segment_count(), 3);
}

#[test]
fn invalid_appends_and_bad_arguments_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    assert_eq!(writer.append(&[]).unwrap(), 0);
    assert!(matches!(
        writer.append(&[1, 2, 3]),
        Err(StorageError::InvalidAppend { .. })
    ));
    let batch = entries(&[b"abc", b"defg"]);
    assert!(matches!(
        writer.append(&batch[..batch.len() - 30]),
        Err(StorageError::InvalidAppend { .. })
    ));
    assert_eq!(writer.end_offset(), 0);
    writer.append(&batch).unwrap();
    syncer.sync().unwrap();
    assert!(matches!(
        writer.truncate_suffix(1000),
        Err(StorageError::OutOfRange { end: 39 })
    ));
    assert!(matches!(
        writer.truncate_suffix(5),
        Err(StorageError::NotEntryBoundary { offset: 5 })
    ));
    assert_eq!(writer.end_offset(), 39);
    assert_eq!(syncer.durable_offset(), 39);
    // A limit past the end is clamped to the end.
    assert_eq!(reader.read(0, u32::MAX, 10_000).unwrap().bytes, batch);
    writer.truncate_suffix(0).unwrap();
    assert_eq!((writer.end_offset(), syncer.durable_offset()), (0, 0));
    assert!(reader.read(0, 100, 0).unwrap().bytes.is_empty());
    drop((writer, syncer, reader));
    let (writer, _, _) = open(small_config(dir.path())).unwrap();
    assert_eq!(writer.end_offset(), 0);
}

#[test]
fn a_roll_counts_only_once_a_sync_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    let first = entries(&[&[1u8; 34], &[2u8; 34]]); // 100 bytes: fills a segment
    writer.append(&first).unwrap();
    syncer.sync().unwrap();
    writer.append(&entries(&[&[3u8; 34]])).unwrap();
    assert_eq!(reader.segment_count(), 2);
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    // The new segment still has its temporary name: a crash now (simulated
    // by copying the directory) recovers the log as it was at the last sync.
    assert!(!names(dir.path()).contains(&"00000000000000000100.seg".to_string()));
    let crashed = tempfile::tempdir().unwrap();
    for name in names(dir.path()) {
        std::fs::copy(dir.path().join(&name), crashed.path().join(&name)).unwrap();
    }
    let (recovered, _, _) = open(small_config(crashed.path())).unwrap();
    assert_eq!(recovered.end_offset(), 100);
    // (Its own preparer may have made a new prealloc file meanwhile.)
    let segments: Vec<String> = names(crashed.path())
        .into_iter()
        .filter(|name| name.ends_with(".seg"))
        .collect();
    assert_eq!(segments, vec!["00000000000000000000.seg"]);

    assert_eq!(syncer.sync().unwrap(), 150);
    assert!(names(dir.path()).contains(&"00000000000000000100.seg".to_string()));
}

#[test]
fn truncation_across_segments_then_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(small_config(dir.path())).unwrap();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 14]).collect();
    let refs: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    writer.append(&entries(&refs)).unwrap();
    syncer.sync().unwrap();
    assert_eq!(reader.segment_count(), 4);
    // Exactly at a segment's start: that segment stays, empty.
    writer.truncate_suffix(180).unwrap();
    assert_eq!(reader.segment_count(), 3);
    assert_eq!(writer.end_offset(), 180);
    writer.truncate_suffix(120).unwrap();
    assert_eq!(reader.segment_count(), 2);
    writer.append(&entries(&[&[9u8; 200]])).unwrap();
    syncer.sync().unwrap();
    drop((writer, syncer, reader));
    let (writer, _, reader) = open(small_config(dir.path())).unwrap();
    assert_eq!(writer.end_offset(), 120 + 216);
    let chunk = reader.read(120, 1, 336).unwrap();
    assert_eq!(payloads_of(&chunk.bytes), vec![vec![9u8; 200]]);
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, _syncer, reader) = open(small_config(dir.path())).unwrap();
    let second = open(small_config(dir.path()));
    assert!(
        matches!(&second, Err(StorageError::Io { .. })),
        "{:?}",
        second.err()
    );
    // The lock goes with the writer; readers may outlive it.
    drop(writer);
    let (_writer, _, _) = open(small_config(dir.path())).unwrap();
    assert_eq!(reader.end_offset(), 0);
}

#[test]
fn read_at_most_never_reads_more_than_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, _syncer, reader) = open(small_config(dir.path())).unwrap();
    let big = vec![9u8; 5000];
    let end = writer
        .append(&entries(&[b"a", &big, b"bc", b"def"]))
        .unwrap();
    let big_at = 17;
    let after_big = big_at + 16 + 5000;

    // Within the bound: whole entries, like `read`.
    let chunk = reader.read_at_most(0, 40, end).unwrap();
    assert_eq!(payloads_of(&chunk.bytes), vec![b"a".to_vec()]);
    let chunk = reader.read_at_most(after_big, 1000, end).unwrap();
    assert_eq!(
        payloads_of(&chunk.bytes),
        vec![b"bc".to_vec(), b"def".to_vec()]
    );

    // An entry larger than the bound is not read; its length is told.
    match reader.read_at_most(big_at, 4096, end) {
        Err(StorageError::EntryLargerThanRead { offset, entry_len }) => {
            assert_eq!((offset, entry_len), (big_at, 5016));
        }
        other => panic!("expected EntryLargerThanRead, got {other:?}"),
    }
    // `read` returns it whole, and so does `read_at_most` once it fits.
    assert_eq!(
        payloads_of(&reader.read(big_at, 4096, end).unwrap().bytes),
        vec![big.clone()]
    );
    assert_eq!(
        payloads_of(&reader.read_at_most(big_at, 5016, end).unwrap().bytes),
        vec![big]
    );
}
