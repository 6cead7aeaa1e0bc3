//! The writer never waits for a disk read: the space zeroed ahead of it
//! (with `O_DIRECT`) is read back into the page cache by the preparer, so
//! the writer's partial-block writes find their blocks cached instead of
//! reading each fresh block first (read-modify-write).

use std::time::Duration;

use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_storage::{open, StorageConfig};

/// Bytes this thread caused to be read from storage (`/proc/thread-self/io`).
fn thread_read_bytes() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("read_bytes: "))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn small_appends_into_zeroed_space_read_nothing_from_disk() {
    if thread_read_bytes().is_none() {
        eprintln!("no per-thread IO accounting here (/proc/thread-self/io); nothing to check");
        return;
    }
    // On the target's disk, not a tmpfs /tmp where O_DIRECT is refused.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut writer, syncer, _reader) = open(StorageConfig::new(dir.path())).unwrap();
    let mut batch = Vec::new();
    for index in 0..64u8 {
        encode_entry(1, EntryKind::Data, &[index; 128], &mut batch);
    }
    // Without the read-back the writer reads a block per batch (400 blocks,
    // 1.6 MiB, every round). A round may still read a little on a loaded
    // machine: readahead that has not finished yet, or the test's own code
    // paged in on first use. So it gets a few rounds, each after a pause
    // that lets the preparer zero and read back the space ahead.
    let mut reads = Vec::new();
    for _round in 0..3 {
        // If the preparer were slower still, the writer would append into a
        // growing file, which reads nothing either.
        std::thread::sleep(Duration::from_secs(1));
        let before = thread_read_bytes().unwrap();
        // 400 batches of 9 KiB: 3.6 MiB, within the zeroed space; each
        // batch ends in a fresh, partly written block.
        for index in 0..400 {
            writer.append(&batch).unwrap();
            if index % 8 == 0 {
                syncer.sync().unwrap();
            }
        }
        let read = thread_read_bytes().unwrap() - before;
        syncer.sync().unwrap();
        if read < 64 * 1024 {
            return;
        }
        reads.push(read);
    }
    panic!("the writer read {reads:?} bytes from disk in rounds of 3.6 MiB of appends");
}
