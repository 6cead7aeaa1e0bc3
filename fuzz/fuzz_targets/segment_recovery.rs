//! Feeds arbitrary segment files to storage recovery, as a node opening its
//! data directory after a crash does: up to three segments, each with a
//! valid header for its start offset or raw bytes, contiguous or not, and
//! optionally with every entry's CRC made valid (so that the fuzzer reaches
//! deep into entry lengths and kinds rather than stopping at a CRC).
//!
//! Recovery must fail with a typed error or open a log that
//! - starts where the first segment does and ends at or after it;
//! - holds, from the tail segment's start to its end, only whole valid
//!   entries (what a reader and the raft scan then walk);
//! - takes an append at its end, and opens again at the same start with
//!   the appended entry as its last one (recovery is idempotent and keeps
//!   what was written after it).
#![no_main]

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use loglog_proto::entry::{
    encode_entry, EntryHeader, EntryIter, EntryKind, ENTRY_HEADER_LEN, MAX_PAYLOAD_LIMIT,
};
use loglog_proto::segment::{segment_file_name, SegmentHeader};
use loglog_storage::{FsyncPolicy, Preallocation, StorageConfig, MAX_READ_BYTES};

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        tempfile::Builder::new()
            .prefix("loglog-fuzz-recovery-")
            .tempdir_in(base)
            .expect("a scratch directory")
    })
    .path()
}

/// Rewrites the CRC of every entry whose header decodes and whose payload
/// the bytes hold, front to back, stopping at the first that does not.
fn make_crcs_valid(log: &mut [u8]) {
    let mut at = 0;
    while let Ok(header) = EntryHeader::decode(&log[at..], MAX_PAYLOAD_LIMIT) {
        let end = at + ENTRY_HEADER_LEN + header.len as usize;
        let Some(payload) = log.get(at + ENTRY_HEADER_LEN..end) else {
            return;
        };
        let crc = header.compute_crc(payload);
        log[at..at + 4].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
}

struct Segment {
    start: u64,
    file: Vec<u8>,
}

/// Takes `len` bytes from the front of `input`.
fn take<'a>(input: &mut &'a [u8], len: usize) -> Option<&'a [u8]> {
    let taken = input.get(..len)?;
    *input = &input[len..];
    Some(taken)
}

/// The input's layout (all little endian):
/// `wide u8, start (u64 if wide & 1 else u16), count u8 (1 + count % 3)`,
/// then per segment `flags u8, [step u16 if flags & 4], [len u16 unless
/// last], log bytes (the last segment takes the rest)`. Flags: 1 make the
/// entries' CRCs valid, 2 no segment header (the raw bytes are the file),
/// 4 the next segment starts `step` after this one's start instead of
/// right after its log bytes.
fn segments(mut input: &[u8]) -> Option<Vec<Segment>> {
    let input = &mut input;
    let wide = take(input, 1)?[0] & 1 != 0;
    let mut start = if wide {
        u64::from_le_bytes(take(input, 8)?.try_into().ok()?)
    } else {
        u64::from(u16::from_le_bytes(take(input, 2)?.try_into().ok()?))
    };
    let count = 1 + usize::from(take(input, 1)?[0] % 3);
    let mut segments: Vec<Segment> = Vec::new();
    for index in 0..count {
        let flags = take(input, 1)?[0];
        let step = if flags & 4 != 0 {
            Some(u64::from(u16::from_le_bytes(
                take(input, 2)?.try_into().ok()?,
            )))
        } else {
            None
        };
        let mut log = if index + 1 == count {
            take(input, input.len())?.to_vec()
        } else {
            let len = u16::from_le_bytes(take(input, 2)?.try_into().ok()?);
            take(input, usize::from(len))?.to_vec()
        };
        if flags & 1 != 0 {
            make_crcs_valid(&mut log);
        }
        let file = if flags & 2 == 0 {
            [
                &SegmentHeader {
                    start_offset: start,
                }
                .encode()[..],
                &log,
            ]
            .concat()
        } else {
            log.clone()
        };
        if segments.iter().any(|segment| segment.start == start) {
            break; // one file per start offset
        }
        segments.push(Segment { start, file });
        start = start.saturating_add(step.unwrap_or(log.len() as u64));
    }
    Some(segments)
}

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        dir: dir.to_path_buf(),
        segment_size: 4096,
        max_payload: 1 << 20,
        fsync: FsyncPolicy::Never,
    }
}

/// Every entry from `from` to `end`, checked; the offset where they end.
fn read_all(reader: &loglog_storage::LogReader, from: u64, end: u64) -> u64 {
    let mut at = from;
    while at < end {
        let chunk = reader
            .read(at, MAX_READ_BYTES, end)
            .unwrap_or_else(|error| panic!("reading the recovered tail at {at}: {error}"));
        assert!(
            !chunk.bytes.is_empty(),
            "a read below the end returns an entry"
        );
        for entry in EntryIter::new(&chunk.bytes, at, MAX_PAYLOAD_LIMIT) {
            entry.expect("the recovered tail holds valid entries");
        }
        at = chunk.next_offset();
    }
    assert_eq!(at, end);
    at
}

fuzz_target!(|data: &[u8]| {
    let Some(segments) = segments(data) else {
        return;
    };
    let dir = scratch().join("log");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("create the log directory");
    for segment in &segments {
        fs::write(dir.join(segment_file_name(segment.start)), &segment.file)
            .expect("write a segment");
    }
    let first_start = segments
        .iter()
        .map(|segment| segment.start)
        .min()
        .expect("one");
    let tail_start = segments
        .iter()
        .map(|segment| segment.start)
        .max()
        .expect("one");

    let Ok((mut writer, _syncer, reader)) =
        loglog_storage::open_with(config(&dir), Preallocation::Off)
    else {
        return;
    };
    let end = writer.end_offset();
    assert_eq!(reader.start_offset(), first_start);
    assert!(end >= tail_start);
    read_all(&reader, tail_start, end);
    // Bytes below the tail are trusted (each was fsynced whole before the
    // next segment got its name), so a read there may fail, never panic.
    let _ = reader.read(first_start, MAX_READ_BYTES, end);

    let mut entry = Vec::new();
    encode_entry(7, EntryKind::Data, b"after recovery", &mut entry);
    let Ok(new_end) = writer.append(&entry) else {
        // Only at the end of the offset space.
        assert!(end.checked_add(entry.len() as u64 + 4096).is_none());
        return;
    };
    assert_eq!(new_end, end + entry.len() as u64);
    drop((writer, reader));

    let (writer, _syncer, reader) = loglog_storage::open_with(config(&dir), Preallocation::Off)
        .expect("a recovered log opens again");
    assert_eq!(reader.start_offset(), first_start);
    assert_eq!(writer.end_offset(), new_end);
    let last = reader
        .read(end, MAX_READ_BYTES, new_end)
        .expect("read the appended entry");
    assert_eq!(last.bytes, entry);
});
