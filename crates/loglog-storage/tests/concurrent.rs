//! The writer, the syncer and readers on separate threads, with rolls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use loglog_proto::entry::{encode_entry, EntryIter, EntryKind, DEFAULT_MAX_PAYLOAD};
use loglog_storage::{open, StorageConfig};

const ENTRIES: u32 = 3000;

fn payload(id: u32) -> Vec<u8> {
    let mut payload = id.to_le_bytes().to_vec();
    payload.resize(4 + (id % 61) as usize, id as u8);
    payload
}

#[test]
fn readers_and_syncer_run_alongside_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.segment_size = 4096;
    let (mut writer, syncer, reader) = open(config.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));

    let sync_thread = {
        let syncer = syncer.clone();
        let reader = reader.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut durable = 0;
            let mut syncs = 0u32;
            while !stop.load(Ordering::Acquire) {
                let now = syncer.sync().unwrap();
                assert!(now >= durable, "durable offset went back");
                assert!(now <= reader.end_offset(), "durable past the written end");
                durable = now;
                syncs += 1;
            }
            syncs
        })
    };

    let readers: Vec<_> = (0..2)
        .map(|index| {
            let reader = reader.clone();
            let syncer = syncer.clone();
            std::thread::spawn(move || {
                let mut offset = 0u64;
                let mut next_id = 0u32;
                let max_bytes = if index == 0 { 1 } else { 700 };
                while next_id < ENTRIES {
                    // Like a node serving reads up to its commit offset.
                    let limit = syncer.durable_offset();
                    let chunk = reader.read(offset, max_bytes, limit).unwrap();
                    assert!(chunk.next_offset() <= limit);
                    for entry in EntryIter::new(&chunk.bytes, offset, DEFAULT_MAX_PAYLOAD) {
                        assert_eq!(entry.unwrap().payload, payload(next_id));
                        next_id += 1;
                    }
                    offset = chunk.next_offset();
                    if chunk.bytes.is_empty() {
                        std::thread::yield_now();
                    }
                }
                offset
            })
        })
        .collect();

    let mut id = 0u32;
    let mut batch_len = 1;
    while id < ENTRIES {
        let mut bytes = Vec::new();
        for _ in 0..batch_len.min(ENTRIES - id) {
            encode_entry(1, EntryKind::Data, &payload(id), &mut bytes);
            id += 1;
        }
        writer.append(&bytes).unwrap();
        batch_len = batch_len % 16 + 1;
    }
    let end = writer.end_offset();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), end);
    }
    stop.store(true, Ordering::Release);
    let syncs = sync_thread.join().unwrap();
    assert!(syncs > 1);
    assert!(reader.segment_count() > 20, "the test crossed many rolls");
    assert_eq!(syncer.sync().unwrap(), end);
    drop((writer, syncer, reader));

    let (writer, _syncer, reader) = open(config).unwrap();
    assert_eq!(writer.end_offset(), end);
    let mut offset = 0;
    let mut count = 0;
    while offset < end {
        let chunk = reader.read(offset, 1 << 16, end).unwrap();
        count += chunk.entry_count;
        offset = chunk.next_offset();
    }
    assert_eq!(count, ENTRIES);
}

#[test]
fn truncation_never_leaves_the_durable_offset_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.segment_size = 2048;
    let (mut writer, syncer, _reader) = open(config.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sync_thread = {
        let syncer = syncer.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                syncer.sync().unwrap();
            }
        })
    };

    // The model: entry boundaries and payload ids of the log.
    let mut boundaries = vec![0u64];
    let mut ids: Vec<u32> = Vec::new();
    let mut next_id = 0u32;
    let mut state = 0x9e37_79b9u32;
    let mut random = move |bound: u32| {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state % bound
    };
    for _ in 0..400 {
        if random(5) == 0 && ids.len() > 2 {
            let keep = ids.len() - 1 - random(ids.len().min(40) as u32) as usize;
            writer.truncate_suffix(boundaries[keep]).unwrap();
            boundaries.truncate(keep + 1);
            ids.truncate(keep);
            assert!(syncer.durable_offset() <= boundaries[keep]);
        } else {
            let mut bytes = Vec::new();
            for _ in 0..=random(8) {
                encode_entry(1, EntryKind::Data, &payload(next_id), &mut bytes);
                ids.push(next_id);
                boundaries.push(boundaries.last().unwrap() + 16 + payload(next_id).len() as u64);
                next_id += 1;
            }
            writer.append(&bytes).unwrap();
        }
        assert_eq!(writer.end_offset(), *boundaries.last().unwrap());
    }
    stop.store(true, Ordering::Release);
    sync_thread.join().unwrap();
    drop((writer, syncer));

    let (writer, _syncer, reader) = open(config).unwrap();
    let end = writer.end_offset();
    assert_eq!(end, *boundaries.last().unwrap());
    let mut offset = 0;
    let mut got = Vec::new();
    while offset < end {
        let chunk = reader.read(offset, 1 << 16, end).unwrap();
        for entry in EntryIter::new(&chunk.bytes, offset, DEFAULT_MAX_PAYLOAD) {
            let entry = entry.unwrap();
            got.push(u32::from_le_bytes(entry.payload[..4].try_into().unwrap()));
        }
        offset = chunk.next_offset();
    }
    assert_eq!(got, ids);
}

#[test]
fn zeroing_ahead_never_lands_on_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.segment_size = 6 * 1024 * 1024;
    let (mut writer, syncer, reader) = open(config.clone()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sync_thread = {
        let syncer = syncer.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                syncer.sync().unwrap();
            }
        })
    };
    // Batches of varied size, so writes cross the zeroed boundary at odd
    // positions while the preparer is zeroing.
    let mut id = 0u32;
    let mut batch = 1u32;
    while writer.end_offset() < 14 * 1024 * 1024 {
        let mut bytes = Vec::new();
        for _ in 0..batch {
            let mut payload = id.to_le_bytes().to_vec();
            payload.resize(100 + (id % 900) as usize, id as u8);
            encode_entry(1, EntryKind::Data, &payload, &mut bytes);
            id += 1;
        }
        let written = writer.append(&bytes).unwrap();
        // Each sync covers one batch at most (under 64 KiB), so the
        // preparer keeps zeroing: it stops while syncs are large.
        while syncer.durable_offset() < written {
            std::thread::yield_now();
        }
        batch = batch % 97 + 1;
    }
    stop.store(true, Ordering::Release);
    sync_thread.join().unwrap();
    let end = syncer.sync().unwrap();
    assert!(reader.segment_count() >= 3);

    // The tail file holds zeroed space past its data (the preparer ran).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let tail = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .unwrap();
    let tail_start: u64 = tail.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    let tail_len = std::fs::metadata(&tail).unwrap().len();
    assert!(
        tail_len > 32 + (end - tail_start),
        "no space was zeroed ahead"
    );
    drop((writer, syncer, reader));

    let (writer, _syncer, reader) = open(config).unwrap();
    assert_eq!(writer.end_offset(), end);
    let mut offset = 0;
    let mut next = 0u32;
    while offset < end {
        let chunk = reader.read(offset, 1 << 20, end).unwrap();
        for entry in EntryIter::new(&chunk.bytes, offset, DEFAULT_MAX_PAYLOAD) {
            let entry = entry.unwrap();
            assert_eq!(entry.payload[..4], next.to_le_bytes());
            next += 1;
        }
        offset = chunk.next_offset();
    }
    assert_eq!(next, id);
}

#[test]
fn large_syncs_append_into_a_growing_file_without_zeroing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.segment_size = 64 * 1024 * 1024;
    let (mut writer, syncer, reader) = open(config.clone()).unwrap();
    // 256 KiB per sync: past the first syncs, zeroing would only double
    // the disk writes, so the file grows with the data alone.
    let mut id = 0u32;
    while writer.end_offset() < 40 * 1024 * 1024 {
        let mut bytes = Vec::new();
        for _ in 0..4 {
            let mut payload = id.to_le_bytes().to_vec();
            payload.resize(64 * 1024, id as u8);
            encode_entry(1, EntryKind::Data, &payload, &mut bytes);
            id += 1;
        }
        writer.append(&bytes).unwrap();
        syncer.sync().unwrap();
    }
    let end = writer.end_offset();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(reader.segment_count(), 1);
    let segment = dir.path().join("00000000000000000000.seg");
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        32 + end,
        "nothing zeroed past the data"
    );
    drop((writer, syncer, reader));

    let (writer, _syncer, reader) = open(config).unwrap();
    assert_eq!(writer.end_offset(), end);
    let chunk = reader.read(0, 1 << 20, end).unwrap();
    let first = EntryIter::new(&chunk.bytes, 0, DEFAULT_MAX_PAYLOAD)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first.payload[..4], 0u32.to_le_bytes());
}
