//! `LogReader::locate` finds exactly the entries `read` returns, without
//! reading them (the zero-copy read path sends the span with sendfile).

use std::os::unix::fs::FileExt;

use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_storage::{open, FileSpan, StorageConfig, StorageError};

fn span_bytes(span: &FileSpan) -> Vec<u8> {
    let mut bytes = vec![0u8; span.len as usize];
    span.file()
        .read_exact_at(&mut bytes, span.position())
        .unwrap();
    bytes
}

#[test]
fn locate_finds_what_read_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.segment_size = 1 << 20;
    let (mut writer, syncer, reader) = open(config).unwrap();
    // Sizes around the scan windows (4 KiB, 64 KiB), tiny ones, and
    // entries larger than some of the reads below.
    let sizes = [
        0usize, 1, 100, 4079, 4080, 4081, 9000, 65519, 65520, 70000, 3, 200_000, 17, 500,
    ];
    let mut offsets = vec![0u64];
    for round in 0..4u8 {
        let mut batch = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            encode_entry(
                1,
                EntryKind::Data,
                &vec![round.wrapping_mul(31).wrapping_add(i as u8); *size],
                &mut batch,
            );
            offsets.push(offsets.last().unwrap() + 16 + *size as u64);
        }
        writer.append(&batch).unwrap();
    }
    let end = syncer.sync().unwrap();
    assert_eq!(end, *offsets.last().unwrap());
    assert!(
        reader.segment_count() > 1,
        "reads also stop at segment ends"
    );
    for &offset in &offsets[..offsets.len() - 1] {
        for max_bytes in [1u32, 16, 100, 4096, 65536, 100_000, 1 << 20, 4 << 20] {
            for limit in [end, (offset + 300_000).min(end)] {
                let Some(limit) = offsets.iter().copied().find(|&o| o >= limit && o > offset)
                else {
                    continue;
                };
                let read = reader.read(offset, max_bytes, limit).unwrap();
                let span = reader
                    .locate(offset, max_bytes, limit)
                    .unwrap()
                    .expect("entries to locate");
                assert_eq!(
                    (span.offset, span.len, span.entry_count),
                    (read.offset, read.bytes.len() as u64, read.entry_count),
                    "offset {offset} max {max_bytes} limit {limit}"
                );
                assert_eq!(span_bytes(&span), read.bytes);
            }
        }
    }
    assert!(reader.locate(end, 100, end).unwrap().is_none());
    assert!(matches!(
        reader.locate(end + 1, 100, end),
        Err(StorageError::OutOfRange { .. })
    ));
    // Inside an entry: not a boundary (its bytes are no valid header).
    assert!(matches!(
        reader.locate(offsets[3] + 20, 100, end),
        Err(StorageError::NotEntryBoundary { .. })
    ));
    drop(writer);
}

#[test]
fn a_damaged_first_entry_is_not_located() {
    let dir = tempfile::tempdir().unwrap();
    let (mut writer, syncer, reader) = open(StorageConfig::new(dir.path())).unwrap();
    let mut batch = Vec::new();
    encode_entry(1, EntryKind::Data, &vec![7u8; 100_000], &mut batch);
    encode_entry(1, EntryKind::Data, b"second", &mut batch);
    writer.append(&batch).unwrap();
    let end = syncer.sync().unwrap();
    let span = reader.locate(0, 1 << 20, end).unwrap().unwrap();
    assert_eq!(span.entry_count, 2);
    // Flip a payload byte of the first entry, far past the first window.
    span.file()
        .write_all_at(&[8u8], span.position() + 90_000)
        .unwrap();
    let located = reader.locate(0, 1 << 20, end);
    assert!(
        matches!(located, Err(StorageError::Corrupt { offset: 0, .. })),
        "{located:?}"
    );
    assert!(matches!(
        reader.read(0, 1 << 20, end),
        Err(StorageError::Corrupt { offset: 0, .. })
    ));
}
