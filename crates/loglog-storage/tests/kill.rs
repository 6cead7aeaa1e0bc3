//! Process crashes: a child process appends and syncs (small segments, so
//! rolls are often in flight) and reports each durable offset; the parent
//! kills it with SIGKILL at a random moment, recovers the log and checks
//! that it is a valid sequence holding everything reported durable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use loglog_proto::entry::{encode_entry, EntryIter, EntryKind, DEFAULT_MAX_PAYLOAD};
use loglog_storage::{open, StorageConfig};

const CHILD_DIR_VAR: &str = "LOGLOG_STORAGE_KILL_TEST_DIR";

fn config(dir: &std::path::Path) -> StorageConfig {
    let mut config = StorageConfig::new(dir);
    config.segment_size = 4096;
    config
}

fn payload(id: u32) -> Vec<u8> {
    let mut payload = id.to_le_bytes().to_vec();
    payload.resize(4 + (id % 200) as usize, id as u8);
    payload
}

/// The child's side: runs only when the parent test starts this binary with
/// the directory in `CHILD_DIR_VAR`; appends until killed.
#[test]
fn child_appends_until_killed() {
    let Ok(dir) = std::env::var(CHILD_DIR_VAR) else {
        return;
    };
    let (mut writer, syncer, _reader) = open(config(std::path::Path::new(&dir))).unwrap();
    // Continue the sequence the log already holds.
    let mut id = std::env::var("LOGLOG_STORAGE_KILL_TEST_NEXT_ID")
        .unwrap()
        .parse::<u32>()
        .unwrap();
    loop {
        let mut bytes = Vec::new();
        for _ in 0..1 + id % 7 {
            encode_entry(1, EntryKind::Data, &payload(id), &mut bytes);
            id += 1;
        }
        writer.append(&bytes).unwrap();
        if id % 3 == 0 {
            let durable = syncer.sync().unwrap();
            println!("durable {durable} {id}");
        }
    }
}

fn read_ids(dir: &std::path::Path) -> (Vec<u32>, u64) {
    let (writer, _syncer, reader) = open(config(dir)).unwrap();
    let end = writer.end_offset();
    let mut offset = reader.start_offset();
    let mut ids = Vec::new();
    while offset < end {
        let chunk = reader.read(offset, 1 << 16, end).unwrap();
        for entry in EntryIter::new(&chunk.bytes, offset, DEFAULT_MAX_PAYLOAD) {
            let entry = entry.unwrap();
            let id = u32::from_le_bytes(entry.payload[..4].try_into().unwrap());
            assert_eq!(entry.payload, payload(id));
            ids.push(id);
        }
        offset = chunk.next_offset();
    }
    (ids, end)
}

#[test]
fn sigkill_never_loses_what_was_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut next_id = 0u32;
    for round in 0..6u32 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_appends_until_killed",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_VAR, dir.path())
            .env("LOGLOG_STORAGE_KILL_TEST_NEXT_ID", next_id.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut durable = 0u64;
        // Kill after a different number of reports each round.
        let reports = 5 + round * 23;
        let mut seen = 0;
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("durable ") {
                durable = rest.split(' ').next().unwrap().parse().unwrap();
                seen += 1;
                if seen == reports {
                    break;
                }
            }
        }
        assert_eq!(seen, reports, "the child stopped early");
        child.kill().unwrap();
        child.wait().unwrap();

        let (ids, end) = read_ids(dir.path());
        assert!(
            end >= durable,
            "round {round}: recovered end {end} < reported durable {durable}"
        );
        assert_eq!(
            ids,
            (0..ids.len() as u32).collect::<Vec<_>>(),
            "round {round}: not one sequence"
        );
        next_id = ids.len() as u32;
    }
    assert!(next_id > 0);
    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "seg")
        })
        .count();
    assert!(segments > 5, "the test crossed rolls ({segments} segments)");
}
