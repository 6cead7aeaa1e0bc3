//! Fills a small filesystem and checks that a full disk is a clean, typed
//! error: nothing partial is left, the log reopens, and appends work again
//! once space is freed. Needs a small filesystem to fill, e.g. (as root):
//!
//! ```text
//! mkdir -p /tmp/full && mount -t tmpfs -o size=2m tmpfs /tmp/full
//! cargo run -p loglog-storage --example disk_full -- /tmp/full
//! ```

use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_storage::{open, StorageConfig};

fn main() {
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .expect("usage: disk_full <dir on a small filesystem>"),
    )
    .join("log");
    let mut config = StorageConfig::new(&dir);
    config.segment_size = 256 * 1024;
    let (mut writer, syncer, reader) = open(config.clone()).expect("open");
    let mut batch = Vec::new();
    for index in 0..64u32 {
        encode_entry(1, EntryKind::Data, &[index as u8; 1000], &mut batch);
    }
    let error = loop {
        let before = writer.end_offset();
        match writer.append(&batch) {
            Ok(_) => {
                if let Err(error) = syncer.sync() {
                    break error;
                }
            }
            Err(error) => {
                // As loglogd does: drop any part written before the failure.
                writer
                    .truncate_suffix(before)
                    .expect("truncate after a failed append");
                break error;
            }
        }
    };
    println!("append failed as expected: {error}");
    println!("is_disk_full: {}", error.is_disk_full());
    assert!(error.is_disk_full(), "a full disk must be recognised");
    let end = writer.end_offset();
    println!(
        "log end {end}, durable {}, {} segments",
        syncer.durable_offset(),
        reader.segment_count()
    );

    // Free space by trimming all but the tail, then append again.
    let start = writer.trim_prefix(end).expect("trim");
    println!("trimmed to {start}");
    match writer.append(&batch[..1016]) {
        Ok(new_end) => println!(
            "append after freeing space: end {new_end}, durable {:?}",
            syncer.sync().map_err(|e| e.to_string())
        ),
        Err(error) => println!("append after freeing space failed: {error}"),
    }
    drop((writer, syncer, reader));
    let (writer, _, reader) = open(config).expect("reopen after a full disk");
    println!(
        "reopened: start {} end {} ({} segments)",
        writer.start_offset(),
        writer.end_offset(),
        reader.segment_count()
    );
}
