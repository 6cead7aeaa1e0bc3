//! A full disk, for real: `loglogd` runs on a small tmpfs mounted in a
//! mount namespace of its own (`unshare -rm`, no root needed), kept alive
//! by a holder process so that a node can be restarted on the same tmpfs
//! (`nsenter` into it). The disk is filled with a ballast file next to the
//! log (through `/proc/<holder>/root`).
//!
//! * A single node: appends past the space answer `Unavailable` ("disk
//!   full"); every acknowledged append stays readable; once the ballast is
//!   deleted the node acknowledges appends again by itself, without a
//!   restart; after a restart the log is intact.
//! * A follower of a 3-node cluster: while its disk is full the other two
//!   keep committing, the follower stays up and never fails; after the
//!   ballast is deleted it catches up, byte for byte.
//! * A leader of a 3-node cluster fills up: it hands over.
//! * Two followers fill up: no majority can store an append, so the leader
//!   answers it `TimedOut` after `--max-commit-wait` instead of never; once
//!   space returns it commits after all.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog_proto::entry::{EntryIter, EntryKind};
use loglog_proto::wire::{NodeStatus, Request, Role, ServerError, READ_RESPONSE_PREFIX_LEN};

mod common;
use common::{call, committed_range};

/// How long `committed_range` waits for a member's committed bytes.
const RANGE_WAIT: Duration = Duration::from_secs(30);

/// A tmpfs of `size` mounted at `dir` in a private mount namespace, alive
/// as long as the holder process (a `sleep`) is.
struct SmallDisk {
    holder: Child,
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        let script = format!(
            "mount -t tmpfs -o size={size} loglog-full {dir} && echo mounted && exec sleep 600",
            dir = dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["-rm", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare(1) runs (util-linux)");
        let mut line = [0u8; 8];
        holder
            .stdout
            .take()
            .unwrap()
            .read_exact(&mut line)
            .expect("the tmpfs is mounted");
        assert_eq!(&line, b"mounted\n");
        SmallDisk {
            holder,
            dir: dir.to_path_buf(),
        }
    }

    /// `path` (under the mount point) as this process sees it.
    fn outside(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap();
        PathBuf::from(format!("/proc/{}/root", self.holder.id())).join(relative)
    }

    /// Starts `loglogd` with `args` inside the namespace, logging to `log`.
    fn start_node(&self, args: &[String], log: &Path) -> Child {
        Command::new("nsenter")
            .args(["-t", &self.holder.id().to_string(), "-U", "-m"])
            .arg("--preserve-credentials")
            .arg(env!("CARGO_BIN_EXE_loglogd"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(File::options().create(true).append(true).open(log).unwrap())
            .spawn()
            .expect("nsenter(1) runs (util-linux)")
    }

    /// Writes a ballast file next to the log until the disk is full.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("ballast");
        let mut file = File::create(self.outside(&path)).unwrap();
        let chunk = [0u8; 4096];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(error) if error.raw_os_error() == Some(28) => break,
                Err(error) => panic!("writing the ballast: {error}"),
            }
        }
        path
    }

    /// Bytes in use on the tmpfs.
    fn used_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.outside(&self.dir)).unwrap();
        (stat.f_blocks - stat.f_bfree) * stat.f_frsize
    }

    fn remove(&self, path: &Path) {
        std::fs::remove_file(self.outside(path)).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        drop(self.holder.kill());
        drop(self.holder.wait());
    }
}

fn connect(child: &mut Child, addr: SocketAddr, log: &Path) -> TcpStream {
    let stream =
        common::wait_until_listening_or_report(child, addr, Duration::from_secs(20), |_| {
            std::fs::read_to_string(log).unwrap_or_default()
        });
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

fn stop(child: &mut Child, log: &Path) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "loglogd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        exit.success(),
        "exit {exit}: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn numbered_payload(index: u32) -> Vec<u8> {
    let mut payload = vec![index as u8; 4096];
    payload[..4].copy_from_slice(&index.to_le_bytes());
    payload
}

fn append(stream: &mut TcpStream, payload: &[u8]) -> Result<u64, ServerError> {
    call(
        stream,
        Request::Append {
            payload,
            no_wait: false,
        },
    )
    .map(|body| u64::from_le_bytes(body.try_into().unwrap()))
}

/// Every data entry of the node's committed log.
fn committed_data(stream: &mut TcpStream) -> Vec<(u64, Vec<u8>)> {
    let status = NodeStatus::decode(&call(stream, Request::Status).unwrap()).unwrap();
    let mut found = Vec::new();
    let mut offset = status.start_offset;
    while offset < status.commit_offset {
        let body = call(
            stream,
            Request::Read {
                offset,
                max_bytes: 64 * 1024,
                wait_ms: 0,
                linearizable: false,
            },
        )
        .unwrap();
        let entries = &body[READ_RESPONSE_PREFIX_LEN..];
        for entry in EntryIter::new(entries, offset, u32::MAX) {
            let entry = entry.unwrap();
            if entry.header.kind == EntryKind::Data {
                found.push((entry.offset, entry.payload.to_vec()));
            }
        }
        offset += entries.len() as u64;
    }
    found
}

/// Appends numbered entries from `next` until one is refused; returns it.
fn append_until_refused(
    stream: &mut TcpStream,
    next: &mut u32,
    acknowledged: &mut Vec<(u64, Vec<u8>)>,
) -> ServerError {
    for _ in 0..2_000 {
        let payload = numbered_payload(*next);
        *next += 1;
        match append(stream, &payload) {
            Ok(offset) => acknowledged.push((offset, payload)),
            Err(error) => return error,
        }
    }
    panic!("8 MiB of appends fit on a full 1 MiB disk");
}

fn expect_disk_full(error: &ServerError) {
    match error {
        ServerError::Unavailable { message } => {
            assert!(message.contains("disk full"), "{message}")
        }
        other => panic!("expected Unavailable (disk full), got {other}"),
    }
}

#[test]
fn a_full_disk_refuses_appends_loses_nothing_and_resumes_when_space_returns() {
    let mount = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("loglogd.log");
    let disk = SmallDisk::mount(mount.path(), "1m");
    let addr = common::free_addr();
    let args: Vec<String> = [
        "--data-dir",
        &format!("{}/data", mount.path().display()),
        "--listen",
        &addr.to_string(),
        "--segment-size",
        "256KiB",
        "--max-entry-size",
        "64KiB",
    ]
    .map(String::from)
    .to_vec();
    let mut child = disk.start_node(&args, &log);
    let mut stream = connect(&mut child, addr, &log);

    // The log alone fills the disk: refused, typed.
    let mut acknowledged = Vec::new();
    let mut next = 0u32;
    let refusal = append_until_refused(&mut stream, &mut next, &mut acknowledged);
    expect_disk_full(&refusal);
    assert!(!acknowledged.is_empty());
    // Still refusing, still reading: every acknowledged entry is there.
    expect_disk_full(&append(&mut stream, &[7u8; 4096]).unwrap_err());
    assert_eq!(committed_data(&mut stream), acknowledged);

    // Trim frees space: the node takes appends again by itself.
    let status = NodeStatus::decode(&call(&mut stream, Request::Status).unwrap()).unwrap();
    let trim_to = status.commit_offset / 2;
    let trimmed_start = {
        let client = Client::connect(&[addr.to_string()]).unwrap();
        client
            .admin(loglog::AdminRequest::Trim { offset: trim_to })
            .unwrap()
    };
    assert!(trimmed_start > 0);
    acknowledged.retain(|(offset, _)| *offset >= trimmed_start);

    // Now a ballast file takes every byte left: refused again.
    let ballast = disk.fill();
    let refusal = append_until_refused(&mut stream, &mut next, &mut acknowledged);
    expect_disk_full(&refusal);
    assert_eq!(committed_data(&mut stream), acknowledged);

    // Space returns: appends are acknowledged again, without a restart.
    disk.remove(&ballast);
    let deadline = Instant::now() + Duration::from_secs(10);
    let resumed_at = loop {
        let payload = numbered_payload(next);
        next += 1;
        match append(&mut stream, &payload) {
            Ok(offset) => {
                acknowledged.push((offset, payload));
                break offset;
            }
            Err(error) => expect_disk_full(&error),
        }
        assert!(Instant::now() < deadline, "appends never resumed");
        std::thread::sleep(Duration::from_millis(50));
    };
    for _ in 0..20 {
        let payload = numbered_payload(next);
        next += 1;
        let offset = append(&mut stream, &payload).unwrap();
        acknowledged.push((offset, payload));
    }
    assert!(resumed_at > 0);
    assert_eq!(committed_data(&mut stream), acknowledged);

    // A clean stop even so, and a restart finds the log intact.
    stop(&mut child, &log);
    let mut child = disk.start_node(&args, &log);
    let mut stream = connect(&mut child, addr, &log);
    assert_eq!(committed_data(&mut stream), acknowledged);
    stop(&mut child, &log);
}

/// A member of a 3-node cluster: two on the ordinary disk, the third on
/// `disk` when given.
struct Member {
    id: u64,
    client: SocketAddr,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn status(addr: SocketAddr) -> Option<NodeStatus> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    NodeStatus::decode(&call(&mut stream, Request::Status).ok()?)
}

/// Three nodes, those `start` names on one 8 MiB tmpfs, the others on the
/// ordinary disk.
struct ThreeNodes {
    disk: SmallDisk,
    members: Vec<Member>,
    clients: Vec<String>,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl ThreeNodes {
    /// Members `small` on the tmpfs, every member with `extra` flags.
    fn start(small: &[u64], extra: &[&str]) -> ThreeNodes {
        let root = tempfile::tempdir().unwrap();
        let mount = tempfile::tempdir().unwrap();
        let disk = SmallDisk::mount(mount.path(), "8m");
        let peers: Vec<(u64, SocketAddr, SocketAddr)> = (1..=3)
            .map(|id| (id, common::free_addr(), common::free_addr()))
            .collect();
        let peers_flag = peers
            .iter()
            .map(|(id, peer, client)| format!("{id}={peer}@{client}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = peers
            .iter()
            .map(|&(id, peer, client)| {
                let data_dir = if small.contains(&id) {
                    mount.path().join(format!("data{id}"))
                } else {
                    root.path().join(format!("node{id}"))
                };
                let args = [
                    "--id",
                    &id.to_string(),
                    "--data-dir",
                    data_dir.to_str().unwrap(),
                    "--listen",
                    &client.to_string(),
                    "--peer-listen",
                    &peer.to_string(),
                    "--peers",
                    &peers_flag,
                    "--segment-size",
                    "256KiB",
                ]
                .iter()
                .chain(extra)
                .map(|arg| arg.to_string())
                .collect();
                Member {
                    id,
                    client,
                    args,
                    log: root.path().join(format!("node{id}.log")),
                    child: None,
                }
            })
            .collect();
        for member in &mut members {
            member.child = Some(if small.contains(&member.id) {
                disk.start_node(&member.args, &member.log)
            } else {
                Command::new(env!("CARGO_BIN_EXE_loglogd"))
                    .args(&member.args)
                    .env("RUST_LOG", "info")
                    .stdout(Stdio::null())
                    .stderr(File::create(&member.log).unwrap())
                    .spawn()
                    .unwrap()
            });
        }
        let clients = members.iter().map(|m| m.client.to_string()).collect();
        ThreeNodes {
            disk,
            members,
            clients,
            _dirs: (root, mount),
        }
    }

    fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "----- node {} -----\n{}",
                    m.id,
                    std::fs::read_to_string(&m.log).unwrap_or_default()
                )
            })
            .collect()
    }

    fn leader(&self) -> Option<u64> {
        self.members
            .iter()
            .find(|m| status(m.client).is_some_and(|s| s.role == Role::Leader))
            .map(|m| m.id)
    }

    /// Waits for a leader, then moves the leadership to a node `wanted`
    /// accepts (asking node `target`).
    fn lead_with(&self, wanted: impl Fn(u64) -> bool, target: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.leader() {
                Some(id) if wanted(id) => return,
                Some(_) => {
                    if let Ok(client) = Client::connect(&self.clients) {
                        drop(client.admin(loglog::AdminRequest::TransferLeader { id: target }));
                    }
                }
                None => {}
            }
            assert!(Instant::now() < deadline, "no leader\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn node3_is_running(&mut self) -> bool {
        self.members[2]
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none()
    }

    /// Once space is back: node 3 catches up, its log is node 1's, and it
    /// holds every acknowledged append.
    fn node3_catches_up(&self, acknowledged: &[(u64, Vec<u8>)]) {
        let commit = (0..2)
            .map(|index| status(self.members[index].client).unwrap().commit_offset)
            .max()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while status(self.members[2].client).is_none_or(|s| s.commit_offset < commit) {
            assert!(
                Instant::now() < deadline,
                "node 3 never caught up: {:?}\n{}",
                status(self.members[2].client),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let expected = committed_range(self.members[0].client, 0, commit, RANGE_WAIT);
        assert_eq!(
            committed_range(self.members[2].client, 0, commit, RANGE_WAIT),
            expected,
            "node 3 holds the same log"
        );
        let mut found = std::collections::HashMap::new();
        for entry in EntryIter::new(&expected, 0, u32::MAX) {
            let entry = entry.unwrap();
            if entry.header.kind == EntryKind::Data {
                let (_, body) =
                    loglog_proto::producer::entry_producer(&entry.header, entry.payload).unwrap();
                found.insert(entry.offset, body.to_vec());
            }
        }
        for (offset, payload) in acknowledged {
            assert_eq!(found.get(offset), Some(payload), "acknowledged at {offset}");
        }
    }
}

fn cluster_payload(n: u32) -> Vec<u8> {
    format!("entry-{n:06}-{}", "z".repeat(1000)).into_bytes()
}

/// Appends `cluster_payload(n)` for each `n` in `numbers`, recording each
/// (offset, payload) as acknowledged.
fn append_cluster_payloads(
    client: &Client,
    numbers: std::ops::Range<u32>,
    acknowledged: &mut Vec<(u64, Vec<u8>)>,
) {
    for n in numbers {
        let payload = cluster_payload(n);
        acknowledged.push((client.append(payload.clone()).unwrap(), payload));
    }
}

#[test]
fn a_follower_with_a_full_disk_catches_up_when_space_returns() {
    let mut cluster = ThreeNodes::start(&[3], &[]);
    cluster.lead_with(|id| id != 3, 1);
    let client = Client::connect(&cluster.clients).unwrap();
    let mut acknowledged = Vec::new();
    append_cluster_payloads(&client, 0..100, &mut acknowledged);

    // Node 3's disk fills up; the other two go on committing.
    let ballast = cluster.disk.fill();
    append_cluster_payloads(&client, 100..1600, &mut acknowledged);
    let last = acknowledged.last().unwrap().0;
    let full = status(cluster.members[2].client).expect("node 3 is up and answers");
    assert!(
        full.end_offset < last,
        "node 3 could not hold it all: {full:?}, last append at {last}"
    );
    assert!(cluster.node3_is_running());

    // Space returns: node 3 catches up by itself.
    cluster.disk.remove(&ballast);
    cluster.node3_catches_up(&acknowledged);
    let node3_log = std::fs::read_to_string(&cluster.members[2].log).unwrap();
    assert!(
        node3_log.contains("cannot reserve disk space") && node3_log.contains("disk space is back"),
        "node 3 went through the full disk: {node3_log}"
    );
    // Space reserved is space used: at most the log, the tail's and the
    // next segment's reservations, and the spare file.
    let log_bytes = status(cluster.members[2].client).unwrap().end_offset;
    let segment = 256 * 1024;
    assert!(
        cluster.disk.used_bytes() <= log_bytes + 4 * segment,
        "{} bytes used for a log of {log_bytes}",
        cluster.disk.used_bytes()
    );
}

#[test]
fn a_leader_with_a_full_disk_hands_over_and_the_cluster_goes_on() {
    let mut cluster = ThreeNodes::start(&[3], &[]);
    cluster.lead_with(|id| id == 3, 3);
    let client = Client::connect(&cluster.clients).unwrap();
    let mut acknowledged = Vec::new();
    append_cluster_payloads(&client, 0..100, &mut acknowledged);

    // The leader's disk fills up: it refuses, hands over, and the client
    // (retrying what was refused) is answered by the new leader.
    cluster.lead_with(|id| id == 3, 3);
    let ballast = cluster.disk.fill();
    append_cluster_payloads(&client, 100..1600, &mut acknowledged);
    let leader = cluster.leader();
    assert!(matches!(leader, Some(1 | 2)), "leader {leader:?}");
    assert!(cluster.node3_is_running());
    let node3_log = std::fs::read_to_string(&cluster.members[2].log).unwrap();
    // It handed over, unless an election (a starved machine) took the lead
    // from it before it met the full disk: its last role change before the
    // first "cannot reserve" then says it was no longer leader.
    let first_full = node3_log.find("cannot reserve disk space");
    let lost_it_first = first_full.is_some_and(|at| {
        node3_log[..at]
            .rfind("role changed")
            .is_some_and(|change| !node3_log[change..at].contains("role=Leader"))
    });
    assert!(
        node3_log.contains("disk full: handing leadership over") || lost_it_first,
        "{node3_log}"
    );
    // Stepping down saved the new term in the spare space set aside.
    assert!(
        node3_log.contains("the spare space goes to this state file"),
        "{node3_log}"
    );

    cluster.disk.remove(&ballast);
    cluster.node3_catches_up(&acknowledged);
}

#[test]
fn appends_no_majority_can_store_time_out_and_commit_once_space_returns() {
    let mut cluster = ThreeNodes::start(&[2, 3], &["--max-commit-wait", "1s"]);
    cluster.lead_with(|id| id == 1, 1);
    let client = Client::connect(&cluster.clients).unwrap();
    let mut acknowledged = Vec::new();
    append_cluster_payloads(&client, 0..100, &mut acknowledged);

    // Both followers' disk fills up: the leader takes appends but cannot
    // commit them. Each is answered TimedOut after about a second, not never.
    let ballast = cluster.disk.fill();
    let node1 = &mut cluster.members[0];
    let mut leader = connect(node1.child.as_mut().unwrap(), node1.client, &node1.log);
    let (timed_out, waited) = (0..2_000)
        .find_map(|n| {
            let payload = numbered_payload(n);
            let sent = Instant::now();
            match append(&mut leader, &payload) {
                Ok(offset) => {
                    acknowledged.push((offset, payload));
                    None
                }
                Err(error) => Some((error, sent.elapsed())),
            }
        })
        .expect("8 MiB of appends fit on two full followers' disks");
    let ServerError::TimedOut { message } = &timed_out else {
        panic!("expected TimedOut, got {timed_out}\n{}", cluster.logs());
    };
    assert!(message.contains("may still commit"), "{message}");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(10),
        "answered after {waited:?}"
    );
    assert_eq!(cluster.leader(), Some(1), "{}", cluster.logs());
    let at_timeout = status(cluster.members[0].client).unwrap();
    assert!(
        at_timeout.end_offset > at_timeout.commit_offset,
        "{at_timeout:?}"
    );

    // Space returns: the entry that timed out commits after all, and both
    // followers catch up with every acknowledged append.
    cluster.disk.remove(&ballast);
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(cluster.members[0].client).unwrap().commit_offset < at_timeout.end_offset {
        assert!(
            Instant::now() < deadline,
            "never committed\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.node3_is_running());
    cluster.node3_catches_up(&acknowledged);
}
