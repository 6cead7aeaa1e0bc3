//! Retention on a real single-node `loglogd` process with small segments:
//! by size under appends, and by age with a minimum kept. The log start
//! advances by whole segments, their files are deleted, reads below the
//! start answer `Trimmed` and everything acknowledged at or above it is
//! still read back. (The 3-node cluster case is in `tests/cluster.rs`.)

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog_proto::wire::{NodeStatus, ServerError};

mod common;

const SEGMENT_SIZE: u64 = 4096;

struct Process {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
}

impl Process {
    fn start(root: &Path, retention_flags: &[&str]) -> Process {
        let addr = common::free_addr();
        let dir = root.join("data");
        let log = root.join("loglogd.log");
        let child = common::loglogd_command(&dir, addr)
            .args(["--segment-size", &SEGMENT_SIZE.to_string()])
            .args(["--retention-check-interval", "100ms"])
            .args(retention_flags)
            .env("RUST_LOG", "info")
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let process = Process {
            child,
            addr,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while process.client().is_none() {
            assert!(Instant::now() < deadline, "no answer\n{}", process.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
        process
    }

    fn client(&self) -> Option<Client> {
        let client = Client::connect(&[self.addr.to_string()]).ok()?;
        client.status().ok()?;
        Some(client)
    }

    fn status(&self) -> NodeStatus {
        self.client().expect("the node answers").status().unwrap()
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Segment file starts, oldest first.
    fn segment_starts(&self) -> Vec<u64> {
        common::segment_starts(&self.dir)
    }

    /// Waits until `done(status)` holds; returns that status.
    fn wait_for(&self, what: &str, done: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {status:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// Every data entry from `start` to the commit offset: payload -> offset.
fn entries_from(client: &Client, start: u64) -> HashMap<Vec<u8>, u64> {
    let mut entries = HashMap::new();
    let mut offset = start;
    loop {
        let page = client.read(offset, 1 << 20, Duration::ZERO).unwrap();
        if page.is_empty() {
            return entries;
        }
        for entry in page.entries() {
            entries.insert(entry.payload.to_vec(), entry.offset);
        }
        offset = page.next_offset();
    }
}

/// The start is a segment boundary, the files below it are gone, reads
/// below it answer `Trimmed`, and every acknowledged entry at or above it
/// reads back at its offset.
fn check_trimmed_log(process: &Process, status: &NodeStatus, acknowledged: &[(Vec<u8>, u64)]) {
    let start = status.start_offset;
    assert!(start > 0 && start <= status.commit_offset, "{status:?}");
    assert_eq!(
        process.segment_starts()[0],
        start,
        "files below the start are deleted"
    );
    let client = process.client().unwrap();
    let below = client.read(0, 1 << 20, Duration::ZERO).unwrap_err();
    assert_eq!(
        below.server_error(),
        Some(&ServerError::Trimmed { start }),
        "{below}"
    );
    let kept = entries_from(&client, start);
    let mut above = 0;
    for (payload, offset) in acknowledged {
        if *offset >= start {
            assert_eq!(kept.get(payload), Some(offset), "acknowledged entry lost");
            above += 1;
        }
    }
    assert!(above > 0, "some acknowledged entries are above the start");
}

#[test]
fn max_bytes_trims_whole_segments_under_appends() {
    let root = tempfile::tempdir().unwrap();
    let max_bytes = 16 * 1024;
    let process = Process::start(root.path(), &["--retention-max-bytes", "16KiB"]);
    let client = process.client().unwrap();
    let mut acknowledged = Vec::new();
    let mut starts_seen = vec![0];
    for n in 0..1500u32 {
        let payload = format!("entry-{n:06}-{}", "x".repeat(100)).into_bytes();
        let offset = client.append(payload.clone()).unwrap();
        acknowledged.push((payload, offset));
        if n % 50 == 0 {
            let status = client.status().unwrap();
            // Never at or above the commit offset.
            assert!(status.start_offset <= status.commit_offset, "{status:?}");
            if status.start_offset != *starts_seen.last().unwrap() {
                starts_seen.push(status.start_offset);
            }
        }
    }
    assert!(
        starts_seen.len() >= 3,
        "the start advanced again and again under appends: {starts_seen:?}"
    );
    let end = acknowledged.last().unwrap().1;
    // Once the policy ran after the last append: within the bound, in
    // whole segments (at most one segment less than the bound).
    let status = process.wait_for("trimmed to the bound", |status| {
        status.commit_offset - status.start_offset <= max_bytes && status.commit_offset > end
    });
    assert!(
        status.commit_offset - status.start_offset > max_bytes - 2 * SEGMENT_SIZE,
        "{status:?}"
    );
    check_trimmed_log(&process, &status, &acknowledged);
}

#[test]
fn max_age_trims_old_segments_but_keeps_min_bytes() {
    let root = tempfile::tempdir().unwrap();
    let min_bytes = 10 * 1024;
    let process = Process::start(
        root.path(),
        &[
            "--retention-max-age",
            "1s",
            "--retention-min-bytes",
            "10KiB",
        ],
    );
    let client = process.client().unwrap();
    let mut acknowledged = Vec::new();
    for n in 0..400u32 {
        let payload = format!("aged-{n:06}-{}", "y".repeat(100)).into_bytes();
        acknowledged.push((payload.clone(), client.append(payload).unwrap()));
    }
    let written = client.status().unwrap();
    assert!(written.segment_count > 6, "{written:?}");
    // Once they are older than 1 s, all go but the last 10 KiB.
    let status = process.wait_for("old segments trimmed", |status| {
        status.start_offset > 0
            && status.commit_offset - status.start_offset < min_bytes + SEGMENT_SIZE
    });
    assert!(
        status.commit_offset - status.start_offset >= min_bytes,
        "min_bytes kept: {status:?}"
    );
    check_trimmed_log(&process, &status, &acknowledged);
    // Nothing more goes: what is left is within min_bytes of the commit.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(client.status().unwrap().start_offset, status.start_offset);
}
