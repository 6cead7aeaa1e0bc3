//! Read throughput of small entries: one pread per chunk, headers and CRCs
//! checked in memory.
//!
//! `cargo run --release -p loglog-storage --example read_throughput -- [dir] [MiB] [payload bytes] [max bytes per read]`

use std::time::Instant;

use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_storage::{open, FsyncPolicy, StorageConfig};

fn main() {
    let mut args = std::env::args().skip(1);
    let parent = args.next().unwrap_or_else(|| ".".into());
    let mib: u64 = args.next().map_or(256, |s| s.parse().expect("MiB"));
    let payload_len: usize = args
        .next()
        .map_or(128, |s| s.parse().expect("payload bytes"));
    let max_bytes: u32 = args
        .next()
        .map_or(1 << 20, |s| s.parse().expect("max bytes"));
    let dir = tempfile::tempdir_in(&parent).expect("create a temporary directory");
    let mut config = StorageConfig::new(dir.path());
    config.fsync = FsyncPolicy::Never;
    let (mut writer, _syncer, reader) = open(config).expect("open the log");

    let mut batch = Vec::new();
    while batch.len() < 1 << 20 {
        encode_entry(1, EntryKind::Data, &vec![7u8; payload_len], &mut batch);
    }
    while writer.end_offset() < mib << 20 {
        writer.append(&batch).expect("append");
    }
    let end = writer.end_offset();

    for round in 0..3 {
        let started = Instant::now();
        let (mut offset, mut entries, mut reads) = (0u64, 0u64, 0u64);
        while offset < end {
            let chunk = reader.read(offset, max_bytes, end).expect("read");
            entries += u64::from(chunk.entry_count);
            reads += 1;
            offset = chunk.next_offset();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "round {round}: {:.0} MB/s, {:.2} M entries/s, {reads} reads of up to {max_bytes} B ({payload_len} B payloads, page cache)",
            end as f64 / elapsed / 1e6,
            entries as f64 / elapsed / 1e6,
        );
    }
}
