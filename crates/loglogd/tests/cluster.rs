//! A real 3-node cluster: three `loglogd` processes on loopback (ports
//! picked free), driven through the client library and raw frames.
//! Elects a leader, follows `NotLeader` redirects, serves identical
//! committed bytes on every node, survives a SIGKILL of the leader (the
//! failover time is printed), and a restarted node catches up. A
//! replicated trim reaches every node, and a wiped node is re-seeded from
//! the leader's log start. Membership changes under load (a fourth node
//! added, the leader removed), leadership transfer, and `loglog status
//! --json` over a cluster.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog::AdminRequest;
use loglog_proto::producer::{entry_producer, ProducerTag};

mod common;
use loglog_proto::wire::{NodeStatus, Request, Role, ServerError};

use common::{call, committed_range, free_addr, segment_starts, wait_until_listening};

struct Member {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// `None`: a founding voter (started with the cluster's --peers).
    /// `Some(args)`: a node added later, started with `--join` and these
    /// cluster flags.
    join_args: Option<Vec<String>>,
}

struct Cluster {
    members: Vec<Member>,
    peers_flag: String,
    /// More flags for every process (e.g. a small `--segment-size`).
    extra_args: Vec<String>,
}

impl Cluster {
    fn new(root: &Path, size: u64) -> Cluster {
        let members: Vec<Member> = (1..=size)
            .map(|id| Member {
                id,
                client: free_addr(),
                peer: free_addr(),
                dir: root.join(format!("node{id}")),
                log: root.join(format!("node{id}.log")),
                child: None,
                join_args: None,
            })
            .collect();
        let peers_flag = members
            .iter()
            .map(|m| format!("{}={}@{}", m.id, m.peer, m.client))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            members,
            peers_flag,
            extra_args: Vec::new(),
        }
    }

    /// A node that is not a founding voter (`--join`), for `add-node`;
    /// `start` starts it with `join_args`. Returns its index.
    fn add_joining_member(&mut self, root: &Path, join_args: Vec<String>) -> usize {
        let id = self
            .members
            .iter()
            .map(|member| member.id)
            .max()
            .unwrap_or(0)
            + 1;
        self.members.push(Member {
            id,
            client: free_addr(),
            peer: free_addr(),
            dir: root.join(format!("node{id}")),
            log: root.join(format!("node{id}.log")),
            child: None,
            join_args: Some(join_args),
        });
        self.members.len() - 1
    }

    /// The cluster id the founders derived, from a founder's data dir
    /// (`cluster.id`: a 4-byte version, then the id).
    fn cluster_id(&self) -> String {
        let bytes = std::fs::read(self.members[0].dir.join("cluster.id")).unwrap();
        // A state file: 16-byte prefix, payload, 4-byte CRC (docs/FORMAT.md).
        String::from_utf8(bytes[16 + 4..bytes.len() - 4].to_vec()).unwrap()
    }

    fn client_addrs(&self, indexes: &[usize]) -> Vec<String> {
        indexes
            .iter()
            .map(|&index| self.members[index].client.to_string())
            .collect()
    }

    fn start(&mut self, index: usize) {
        let member = &mut self.members[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap();
        let cluster_args = match &member.join_args {
            Some(args) => {
                let mut join = vec!["--join".to_string()];
                join.extend(args.iter().cloned());
                join
            }
            None => vec!["--peers".to_string(), self.peers_flag.clone()],
        };
        let child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
            .args([
                "--id",
                &member.id.to_string(),
                "--data-dir",
                member.dir.to_str().unwrap(),
                "--listen",
                &member.client.to_string(),
                "--peer-listen",
                &member.peer.to_string(),
            ])
            .args(&cluster_args)
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        member.child = Some(child);
    }

    /// Sends a signal (`kill` syntax: "-STOP", "-CONT") to a running node.
    fn signal(&self, index: usize, name: &str) {
        let pid = self.members[index]
            .child
            .as_ref()
            .expect("running")
            .id()
            .to_string();
        let sent = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(sent.success(), "kill {name} {pid}");
    }

    fn kill(&mut self, index: usize) {
        let mut child = self.members[index].child.take().expect("running");
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            text.push_str(&format!("----- node {} -----\n", member.id));
            text.push_str(&std::fs::read_to_string(&member.log).unwrap_or_default());
        }
        text
    }

    fn status(&self, index: usize) -> Option<NodeStatus> {
        let mut stream = TcpStream::connect(self.members[index].client).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let body = call(&mut stream, Request::Status).ok()?;
        NodeStatus::decode(&body)
    }

    /// Waits until one running node is leader and every running node names it.
    fn wait_for_leader(&self, running: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let statuses: Vec<Option<NodeStatus>> =
                running.iter().map(|&index| self.status(index)).collect();
            let leaders: Vec<usize> = running
                .iter()
                .zip(&statuses)
                .filter(|(_, status)| status.is_some_and(|s| s.role == Role::Leader))
                .map(|(&index, _)| index)
                .collect();
            if let [leader] = leaders[..] {
                let leader_id = self.members[leader].id;
                if statuses
                    .iter()
                    .all(|status| status.is_some_and(|s| s.leader_id == leader_id))
                {
                    return leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected: {statuses:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            if let Some(mut child) = member.child.take() {
                drop(child.kill());
                drop(child.wait());
            }
        }
    }
}

/// Every committed byte of a node, read through the client library, up to
/// `at_least` (waits for the node to get there).
fn committed_bytes(addr: SocketAddr, at_least: u64) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    // A node just (re)started may not listen yet.
    let client = loop {
        match Client::connect(&[addr.to_string()]) {
            Ok(client) => break client,
            Err(error) => assert!(Instant::now() < deadline, "{addr}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut bytes = Vec::new();
    loop {
        let page = client
            .read(bytes.len() as u64, 1 << 20, Duration::from_millis(200))
            .unwrap();
        bytes.extend_from_slice(page.raw());
        if page.is_empty() && bytes.len() as u64 >= at_least {
            assert_eq!(page.commit_offset(), bytes.len() as u64);
            return bytes;
        }
        assert!(
            Instant::now() < deadline,
            "node {addr} stuck at {} of {at_least}",
            bytes.len()
        );
    }
}

/// The data entries of a log: the appender's payload (after the producer
/// envelope, if any) -> offsets. Also checks that no (producer, sequence)
/// is in the log twice.
fn data_entries(bytes: &[u8]) -> HashMap<Vec<u8>, Vec<u64>> {
    let mut entries: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    let mut tags: HashMap<ProducerTag, u64> = HashMap::new();
    for entry in loglog_proto::entry::EntryIter::new(bytes, 0, u32::MAX) {
        let entry = entry.expect("committed bytes are whole, valid entries");
        if entry.header.kind == loglog_proto::entry::EntryKind::Data {
            let (tag, payload) = entry_producer(&entry.header, entry.payload)
                .expect("a valid entry flagged PRODUCER holds an envelope");
            if let Some(tag) = tag {
                if let Some(first) = tags.insert(tag, entry.offset) {
                    panic!("{tag:?} at {first} and again at {}", entry.offset);
                }
            }
            entries
                .entry(payload.to_vec())
                .or_default()
                .push(entry.offset);
        }
    }
    entries
}

/// Appends `payload` through a fresh client of `addrs`, retrying (each try
/// with a payload of its own, so a retry never duplicates an entry) until
/// one is acknowledged. Returns the acknowledged payload and its offset.
fn append_until_acknowledged(addrs: &[String], payload: &str) -> (Vec<u8>, u64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    for attempt in 0.. {
        let payload = format!("{payload}/try{attempt}").into_bytes();
        if let Ok(client) = Client::connect(addrs) {
            if let Ok(offset) = client.append(payload.clone()) {
                return (payload, offset);
            }
        }
        assert!(Instant::now() < deadline, "no append acknowledged");
        std::thread::sleep(Duration::from_millis(5));
    }
    unreachable!()
}

#[test]
fn three_node_cluster_replicates_redirects_and_fails_over() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;

    // Appends sent to a follower are redirected to the leader.
    let mut acknowledged: Vec<(Vec<u8>, u64)> = Vec::new();
    let client = Client::connect(&[cluster.members[follower].client.to_string()]).unwrap();
    for i in 0..200 {
        let payload = format!("first-{i}").into_bytes();
        let offset = client.append(payload.clone()).unwrap();
        acknowledged.push((payload, offset));
    }
    assert_eq!(
        client.status().unwrap().role,
        Role::Leader,
        "the client followed the redirect to the leader"
    );

    // A follower answers an append NotLeader with the leader's client address.
    let mut raw = TcpStream::connect(cluster.members[follower].client).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let leader_addr = cluster.members[leader].client.to_string();
    assert_eq!(
        call(
            &mut raw,
            Request::Append {
                no_wait: false,
                payload: b"x"
            }
        ),
        Err(ServerError::NotLeader {
            leader: Some(leader_addr.clone())
        })
    );
    // Linearizable reads: through read-index on the leader, NotLeader on a follower.
    let linearizable = Request::Read {
        offset: 0,
        max_bytes: 1 << 20,
        wait_ms: 0,
        linearizable: true,
    };
    assert_eq!(
        call(&mut raw, linearizable),
        Err(ServerError::NotLeader {
            leader: Some(leader_addr)
        })
    );
    let mut raw_leader = TcpStream::connect(cluster.members[leader].client).unwrap();
    raw_leader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let body = call(&mut raw_leader, linearizable).expect("leader serves linearizable reads");
    let commit = u64::from_le_bytes(body[0..8].try_into().unwrap());
    let last_end = acknowledged.last().unwrap().1 + 16 + b"first-199".len() as u64;
    assert!(
        commit >= last_end,
        "a linearizable read sees every acknowledged append"
    );

    // Every node serves the same committed bytes.
    let logs: Vec<Vec<u8>> = (0..3)
        .map(|index| committed_bytes(cluster.members[index].client, last_end))
        .collect();
    let shortest = logs.iter().map(Vec::len).min().unwrap();
    for log in &logs {
        assert_eq!(
            log[..shortest],
            logs[0][..shortest],
            "committed logs differ"
        );
    }

    // SIGKILL the leader; a new leader takes appends.
    let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let survivor_addrs: Vec<String> = survivors
        .iter()
        .map(|&index| cluster.members[index].client.to_string())
        .collect();
    let killed_at = Instant::now();
    cluster.kill(leader);
    let (payload, offset) = append_until_acknowledged(&survivor_addrs, "after-kill");
    let failover = killed_at.elapsed();
    println!("FAILOVER: SIGKILL of the leader to the first acknowledged append: {failover:?}");
    acknowledged.push((payload, offset));
    let new_leader = cluster.wait_for_leader(&survivors);
    assert_ne!(new_leader, leader);
    let client = Client::connect(&survivor_addrs).unwrap();
    for i in 0..200 {
        let payload = format!("second-{i}").into_bytes();
        let offset = client.append(payload.clone()).unwrap();
        acknowledged.push((payload, offset));
    }

    // The killed node restarts and catches up; all three agree.
    cluster.start(leader);
    let (last_payload, last_offset) = acknowledged.last().unwrap().clone();
    let end = last_offset + 16 + last_payload.len() as u64;
    let logs: Vec<Vec<u8>> = (0..3)
        .map(|index| committed_bytes(cluster.members[index].client, end))
        .collect();
    let shortest = logs.iter().map(Vec::len).min().unwrap();
    for log in &logs {
        assert_eq!(
            log[..shortest],
            logs[0][..shortest],
            "committed logs differ"
        );
    }
    // Every acknowledged entry is there exactly once, at its offset.
    let entries = data_entries(&logs[0]);
    for (payload, offset) in &acknowledged {
        assert_eq!(
            entries.get(payload),
            Some(&vec![*offset]),
            "acknowledged entry {:?} at {offset}",
            String::from_utf8_lossy(payload)
        );
    }
    assert!(
        entries.values().all(|offsets| offsets.len() == 1),
        "no entry appears twice"
    );
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}\n{}",
        cluster.logs()
    );
}

/// The acceptance scenario: 16 concurrent clients append unique
/// values while the leader is SIGKILLed and restarted twice; every
/// acknowledged value is then in the log exactly once, at its offset, no
/// value (acknowledged or not) is there twice although the client library
/// retried appends whose answers were lost (exactly-once appends), and the
/// committed logs of all nodes are byte-identical.
#[test]
fn sixteen_clients_survive_two_leader_kills() {
    let in_doubt = writers_survive_two_leader_kills(16, Sharing::ClientEach);
    println!("{in_doubt} appends in doubt");
}

/// As above, but 48 writers share one client, so one producer: an append
/// whose connection broke waits out its retry backoff while the others go
/// on at the new leader, and its retry must still be decided (the client
/// keeps its unfinished appends within half the dedup window). Every append
/// is acknowledged; none ends in doubt.
#[test]
fn forty_eight_writers_of_one_client_survive_two_leader_kills() {
    let in_doubt = writers_survive_two_leader_kills(48, Sharing::OneClient);
    assert_eq!(in_doubt, 0, "appends of the shared client ended in doubt");
}

enum Sharing {
    ClientEach,
    OneClient,
}

/// `writers` threads append unique values while the leader is SIGKILLed
/// and restarted twice; checks exactly-once and identical logs; returns how
/// many appends ended in doubt.
fn writers_survive_two_leader_kills(writers: usize, sharing: Sharing) -> u64 {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    cluster.wait_for_leader(&[0, 1, 2]);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|member| member.client.to_string())
        .collect();
    let shared = match sharing {
        Sharing::ClientEach => None,
        Sharing::OneClient => Some(Client::connect(&addrs).unwrap()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..writers {
        let (addrs, stop, acknowledged) = (addrs.clone(), stop.clone(), acknowledged.clone());
        let shared = shared.clone();
        clients.push(std::thread::spawn(move || {
            let mut failed = 0u64;
            let mut in_doubt = 0u64;
            let mut client = shared;
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if client.is_none() {
                    client = Client::connect(&addrs).ok();
                }
                let Some(connected) = &client else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                // Every value is sent by one append call only: the library
                // itself retries it (the same producer sequence) when its
                // outcome is unknown, and must not duplicate it.
                let payload = format!("c{c}-{n}").into_bytes();
                let started = Instant::now();
                match connected.append(payload.clone()) {
                    Ok(offset) => acknowledged.lock().unwrap().push((
                        payload,
                        offset,
                        started,
                        Instant::now(),
                    )),
                    Err(error) => {
                        failed += 1;
                        if matches!(error, loglog::Error::InDoubt { .. }) {
                            in_doubt += 1;
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            (failed, in_doubt)
        }));
    }
    let mut failovers = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(700));
        let leader = cluster.wait_for_leader(&[0, 1, 2]);
        let killed_at = Instant::now();
        cluster.kill(leader);
        let dead = Instant::now();
        // Failover: until an append sent after the leader died is acknowledged.
        let first_ack = loop {
            let first = acknowledged
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, _, started, _)| *started >= dead)
                .map(|(_, _, _, acked)| *acked)
                .min();
            if let Some(acked) = first {
                break acked;
            }
            assert!(
                killed_at.elapsed() < Duration::from_secs(10),
                "no append acknowledged after the kill\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        failovers.push(first_ack - killed_at);
        let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
        cluster.wait_for_leader(&survivors);
        cluster.start(leader);
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let (mut failed, mut in_doubt) = (0, 0);
    for client in clients {
        let (client_failed, client_in_doubt) = client.join().unwrap();
        failed += client_failed;
        in_doubt += client_in_doubt;
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let deduplicated = cluster
        .logs()
        .matches("answered with its earlier copy")
        .count();
    println!(
        "{writers} writers: {} appends acknowledged, {failed} failed ({in_doubt} in doubt), \
         {deduplicated} retries answered with their earlier copy; failovers (SIGKILL to the \
         next acknowledged append): {failovers:?}",
        acknowledged.len()
    );
    assert!(acknowledged.len() > 100, "too few appends went through");

    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let commit = cluster.status(leader).unwrap().commit_offset;
    let logs: Vec<Vec<u8>> = (0..3)
        .map(|index| committed_bytes(cluster.members[index].client, commit))
        .collect();
    for log in &logs[1..] {
        assert!(log == &logs[0], "committed logs differ between nodes");
    }
    let entries = data_entries(&logs[0]);
    for (payload, offset, _, _) in &acknowledged {
        assert_eq!(
            entries.get(payload),
            Some(&vec![*offset]),
            "acknowledged entry {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    let twice: Vec<_> = entries
        .iter()
        .filter(|(_, offsets)| offsets.len() > 1)
        .map(|(payload, offsets)| (String::from_utf8_lossy(payload), offsets))
        .collect();
    assert!(twice.is_empty(), "values in the log twice: {twice:?}");
    in_doubt
}

/// The same (producer, sequence) sent again as raw frames is answered with
/// the first copy's offset and never appended twice: by the same leader, by
/// a new leader after the first was SIGKILLed (its table was built from the
/// entries it replicated as a follower), and by a leader restarted (its
/// table rebuilt from its log). A retry of a sequence never sent is
/// appended, since the table has seen the whole log.
#[test]
fn a_producer_sequence_is_appended_once_across_failovers_and_restarts() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let all = [0, 1, 2];
    let tag = ProducerTag {
        producer_id: 0xabcd,
        sequence: 9,
    };
    let append = |cluster: &Cluster, leader: usize, tag: ProducerTag, retry: bool| {
        let mut stream = TcpStream::connect(cluster.members[leader].client).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let request = Request::AppendOnce {
            producer: tag,
            retry,
            payload: b"exactly once",
            no_wait: false,
        };
        let body = call(&mut stream, request).unwrap_or_else(|error| {
            panic!(
                "append {tag:?} on node {leader}: {error}\n{}",
                cluster.logs()
            )
        });
        u64::from_le_bytes(body.try_into().unwrap())
    };
    let leader = cluster.wait_for_leader(&all);
    let first = append(&cluster, leader, tag, false);
    assert_eq!(append(&cluster, leader, tag, true), first);
    // A first attempt sent twice (against the client contract) is caught too.
    assert_eq!(append(&cluster, leader, tag, false), first);

    cluster.kill(leader);
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != leader).collect();
    let new_leader = cluster.wait_for_leader(&survivors);
    assert_eq!(append(&cluster, new_leader, tag, true), first);
    let fresh = ProducerTag {
        sequence: 10,
        ..tag
    };
    let fresh_offset = append(&cluster, new_leader, fresh, true);
    assert!(fresh_offset > first);

    // Restart everyone: every table is rebuilt from its node's log.
    cluster.start(leader);
    for index in survivors {
        cluster.kill(index);
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&all);
    assert_eq!(append(&cluster, leader, tag, true), first);
    assert_eq!(append(&cluster, leader, fresh, true), fresh_offset);

    let commit = cluster.status(leader).unwrap().commit_offset;
    let logs: Vec<Vec<u8>> = all
        .iter()
        .map(|&index| committed_bytes(cluster.members[index].client, commit))
        .collect();
    for log in &logs[1..] {
        assert!(log == &logs[0], "committed logs differ between nodes");
    }
    // data_entries also checks that no (producer, sequence) is there twice.
    assert_eq!(
        data_entries(&logs[0])[&b"exactly once"[..]],
        vec![first, fresh_offset]
    );
}

/// Starts every member of a 3-node `cluster` and appends `count` entries
/// through the leader: (a follower's index, the client, what was
/// acknowledged).
fn start_and_append(cluster: &mut Cluster, count: usize) -> (usize, Client, Vec<(Vec<u8>, u64)>) {
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let client = Client::connect(&[cluster.members[leader].client.to_string()]).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..count {
        let payload = format!("before-{i}").into_bytes();
        acknowledged.push((payload.clone(), client.append(payload).unwrap()));
    }
    (follower, client, acknowledged)
}

/// After `follower` restarted with synced entries cut from its log: more
/// appends go through, the follower ends up holding every acknowledged
/// entry at its offset, and its log shows the lost-tail mark set, then
/// cleared.
fn assert_lost_tail_marked_and_restored(
    cluster: &Cluster,
    follower: usize,
    client: &Client,
    mut acknowledged: Vec<(Vec<u8>, u64)>,
) {
    for i in 0..50 {
        let payload = format!("after-{i}").into_bytes();
        acknowledged.push((payload.clone(), client.append(payload).unwrap()));
    }
    let (payload, offset) = acknowledged.last().unwrap().clone();
    let bytes = committed_bytes(
        cluster.members[follower].client,
        offset + 16 + payload.len() as u64,
    );
    let entries = data_entries(&bytes);
    for (payload, offset) in &acknowledged {
        assert_eq!(entries.get(payload), Some(&vec![*offset]));
    }
    let log = &cluster.members[follower].log;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(
            text.contains("recovery cut entries this node had synced"),
            "no lost-tail mark: {text}"
        );
        if text.contains("the lost tail is restored") {
            break;
        }
        assert!(Instant::now() < deadline, "the mark never cleared: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A follower whose disk lost synced entries (its segment cut short while
/// it was down, above its checkpoint) restarts with the core's lost-tail
/// mark, catches up from the leader, and the mark clears.
#[test]
fn a_follower_that_lost_synced_entries_is_marked_and_restored() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    let (follower, client, acknowledged) = start_and_append(&mut cluster, 100);
    // Let the follower sync and record its synced end, then stop it cleanly.
    std::thread::sleep(Duration::from_millis(1500));
    let end = cluster.status(follower).unwrap().end_offset;
    let mut child = cluster.members[follower].child.take().unwrap();
    assert!(Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap()
        .success());
    assert!(child.wait().unwrap().success());
    // Disk damage: the last entries' bytes are gone.
    let segment = cluster.members[follower]
        .dir
        .join("log")
        .join("00000000000000000000.seg");
    File::options()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(32 + end - 40)
        .unwrap();
    // Its checkpoint is from before the damage: committed bytes past it
    // are missing, and it would rightly refuse to start. An older
    // checkpoint is always valid: none at all (scan from the start).
    std::fs::remove_file(cluster.members[follower].dir.join("raft.checkpoint")).unwrap();
    cluster.start(follower);
    assert_lost_tail_marked_and_restored(&cluster, follower, &client, acknowledged);
}

/// The same damage right after a crash: the follower is SIGKILLed as soon
/// as the last append is acknowledged, so `raft.durable` (saved once a
/// second) may lag what it had synced and acknowledged; `raft.synced`,
/// rewritten after every fsync, still gives the exact synced end, and the
/// mark is set.
#[test]
fn a_follower_that_lost_synced_entries_right_before_a_crash_is_marked() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    // Unsynced bytes are dropped at the next start, as by a power cut: the
    // cut below then removes synced bytes only.
    cluster.extra_args = vec!["--test-unsynced-lost-on-kill".to_string()];
    let (follower, client, acknowledged) = start_and_append(&mut cluster, 200);
    cluster.kill(follower);
    let dir = cluster.members[follower].dir.clone();
    let mark = std::fs::read(dir.join("test-synced-end.mark")).unwrap();
    let synced_end = u64::from_le_bytes(mark.try_into().unwrap());
    assert!(synced_end > 40, "the follower synced nothing");
    // Disk damage: the last 40 synced bytes are gone.
    File::options()
        .write(true)
        .open(dir.join("log").join("00000000000000000000.seg"))
        .unwrap()
        .set_len(32 + synced_end - 40)
        .unwrap();
    // A checkpoint past the damage would rightly refuse the start (see the
    // test above); none at all is always valid.
    let _ = std::fs::remove_file(dir.join("raft.checkpoint"));
    cluster.start(follower);
    assert_lost_tail_marked_and_restored(&cluster, follower, &client, acknowledged);
}

/// Every node SIGKILLed at once under load (twice): the restarted cluster
/// elects a leader (no node wrongly believes it lost synced data, which
/// would keep it from voting) and every acknowledged entry is there once.
#[test]
fn whole_cluster_sigkilled_under_load_recovers() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|member| member.client.to_string())
        .collect();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    for round in 0..2 {
        for index in 0..3 {
            cluster.start(index);
        }
        cluster.wait_for_leader(&[0, 1, 2]);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (addrs, stop, acknowledged) =
                    (addrs.clone(), stop.clone(), acknowledged.clone());
                std::thread::spawn(move || {
                    let Ok(client) = Client::connect(&addrs) else {
                        return;
                    };
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let payload = format!("r{round}-w{w}-{n}").into_bytes();
                        match client.append(payload.clone()) {
                            Ok(offset) => acknowledged.lock().unwrap().push((payload, offset)),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(800));
        for index in 0..3 {
            cluster.kill(index);
        }
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }
    }
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    // An append of the new term commits everything before it.
    let (payload, offset) = append_until_acknowledged(&addrs, "final");
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    assert!(acknowledged.len() > 50, "too few appends went through");
    let end = offset + 16 + payload.len() as u64;
    assert!(cluster.status(leader).is_some());
    let logs: Vec<Vec<u8>> = (0..3)
        .map(|index| committed_bytes(cluster.members[index].client, end))
        .collect();
    let shortest = logs.iter().map(Vec::len).min().unwrap();
    for log in &logs {
        assert_eq!(
            log[..shortest],
            logs[0][..shortest],
            "committed logs differ"
        );
    }
    let entries = data_entries(&logs[0]);
    for (payload, offset) in &acknowledged {
        assert_eq!(
            entries.get(payload),
            Some(&vec![*offset]),
            "acknowledged entry {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert!(entries.values().all(|offsets| offsets.len() == 1));
    assert!(
        !cluster
            .logs()
            .contains("recovery cut entries this node had synced"),
        "a process crash loses no synced bytes"
    );
}

#[test]
fn a_data_dir_of_another_cluster_or_node_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let run = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loglogd"));
        command
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(["--listen", &free_addr().to_string()])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    };
    let peer = free_addr();
    let peers = format!("1={peer}@127.0.0.1:1,2=127.0.0.1:2@127.0.0.1:3");
    // Bootstrap as node 1 of cluster "alpha", then stop it.
    let mut first = run(&[
        "--id",
        "1",
        "--peer-listen",
        &peer.to_string(),
        "--peers",
        &peers,
        "--cluster-id",
        "alpha",
    ])
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("cluster.id").exists() || !dir.join("node.state").exists() {
        assert!(Instant::now() < deadline, "node 1 did not bootstrap");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    first.kill().unwrap();
    first.wait().unwrap();

    let refused = |args: &[&str], expect: &str| {
        let output = run(args).output().unwrap();
        assert!(!output.status.success(), "{args:?} started");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    };
    let free_peer = free_addr().to_string();
    refused(
        &[
            "--id",
            "1",
            "--peer-listen",
            &free_peer,
            "--peers",
            &peers,
            "--cluster-id",
            "beta",
        ],
        "belongs to cluster \"alpha\", not \"beta\"",
    );
    refused(
        &[
            "--id",
            "2",
            "--peer-listen",
            &free_peer,
            "--peers",
            &peers,
            "--cluster-id",
            "alpha",
        ],
        "belongs to node 1, not node 2",
    );
    refused(&[], "belongs to a cluster");
}

/// Starts one `loglogd` with `peers` and returns it once its client port
/// answers.
fn start_one(dir: &Path, id: u64, client: SocketAddr, peer: SocketAddr, peers: &str) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .args(["--id", &id.to_string()])
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--listen", &client.to_string()])
        .args(["--peer-listen", &peer.to_string()])
        .args(["--peers", peers, "--cluster-id", "alpha"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_listening(&mut child, client, Duration::from_secs(10));
    child
}

fn handshake(peer: SocketAddr, from: u64, to: u64, cluster_id: &str) -> (TcpStream, u8) {
    let mut stream = TcpStream::connect(peer).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut hello = b"LLPEER01".to_vec();
    hello.extend_from_slice(&from.to_le_bytes());
    hello.extend_from_slice(&to.to_le_bytes());
    hello.extend_from_slice(&(cluster_id.len() as u16).to_le_bytes());
    hello.extend_from_slice(cluster_id.as_bytes());
    stream.write_all(&hello).unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).unwrap();
    (stream, answer[0])
}

/// The peer port refuses nodes of another cluster, wrong or unknown ids,
/// and closes (without dying) on garbage or oversize frames.
#[test]
fn peer_handshake_refuses_strangers_and_garbage_closes_the_connection() {
    let root = tempfile::tempdir().unwrap();
    let (client, peer) = (free_addr(), free_addr());
    // Node 2 never runs: no leader, but the peer port serves.
    let peers = format!("1={peer}@{client},2=127.0.0.1:9@127.0.0.1:10");
    let mut node = start_one(&root.path().join("n1"), 1, client, peer, &peers);
    let closed = |mut stream: TcpStream| {
        let mut buffer = [0u8; 16];
        matches!(stream.read(&mut buffer), Ok(0) | Err(_))
    };

    let (stream, answer) = handshake(peer, 2, 1, "beta");
    assert_eq!(answer, 1, "another cluster is refused");
    assert!(closed(stream));
    assert_eq!(handshake(peer, 2, 3, "alpha").1, 2, "wrong node id");
    // Not a member: node 1, a voter, says so with what it knows (term,
    // log end, last term), checked against its status below.
    let (mut stream, answer) = handshake(peer, 7, 1, "alpha");
    assert_eq!(answer, 6, "not a member, told by a voter");
    let mut notice = [0u8; 16];
    stream.read_exact(&mut notice).unwrap();
    assert!(closed(stream));
    let mut garbage = TcpStream::connect(peer).unwrap();
    garbage
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    garbage.write_all(&[0xAB; 64]).unwrap();
    let mut answer = [0u8; 1];
    garbage.read_exact(&mut answer).unwrap();
    assert_eq!(answer[0], 4, "not a handshake");

    // Accepted, then an undecodable frame: the node closes the connection.
    let (mut stream, answer) = handshake(peer, 2, 1, "alpha");
    assert_eq!(answer, 0);
    stream.write_all(&12u32.to_le_bytes()).unwrap();
    stream.write_all(&[0xFF; 12]).unwrap();
    assert!(closed(stream));
    // Accepted, then a frame length over the cap: closed before reading it.
    let (mut stream, answer) = handshake(peer, 2, 1, "alpha");
    assert_eq!(answer, 0);
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed(stream));

    // The node is alive and well: a follower without a leader.
    let mut raw = TcpStream::connect(client).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let status = NodeStatus::decode(&call(&mut raw, Request::Status).unwrap()).unwrap();
    assert_eq!(status.node_id, 1);
    assert_ne!(status.role, Role::Leader);
    assert_eq!(
        u64::from_le_bytes(notice[4..12].try_into().unwrap()),
        status.end_offset,
        "the notice carries node 1's log end"
    );
    assert_eq!(
        u64::from(u32::from_le_bytes(notice[0..4].try_into().unwrap())),
        status.term
    );
    assert!(node.try_wait().unwrap().is_none());
    node.kill().unwrap();
    node.wait().unwrap();
}

/// A cluster of one voter elects itself and serves appends and
/// linearizable reads; restarted, it keeps its log and term.
#[test]
fn single_member_cluster_serves_appends_across_restarts() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("n1");
    let (client, peer) = (free_addr(), free_addr());
    let peers = format!("1={peer}@{client}");
    let mut acknowledged = Vec::new();
    let mut last_term = 0;
    for round in 0..2 {
        let mut node = start_one(&dir, 1, client, peer, &peers);
        let client_lib = Client::connect(&[client.to_string()]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let offset = loop {
            match client_lib.append(format!("round{round}-0").into_bytes()) {
                Ok(offset) => break offset,
                Err(error) => assert!(Instant::now() < deadline, "{error}"),
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        acknowledged.push((format!("round{round}-0").into_bytes(), offset));
        for i in 1..50 {
            let payload = format!("round{round}-{i}").into_bytes();
            acknowledged.push((payload.clone(), client_lib.append(payload).unwrap()));
        }
        let status = client_lib.status().unwrap();
        assert_eq!((status.role, status.leader_id), (Role::Leader, 1));
        assert!(status.term > last_term, "a restart elects in a new term");
        last_term = status.term;
        let mut raw = TcpStream::connect(client).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let linearizable = Request::Read {
            offset: 0,
            max_bytes: 1 << 20,
            wait_ms: 0,
            linearizable: true,
        };
        assert!(call(&mut raw, linearizable).is_ok());
        let (payload, offset) = acknowledged.last().unwrap();
        let bytes = committed_bytes(client, offset + 16 + payload.len() as u64);
        let entries = data_entries(&bytes);
        for (payload, offset) in &acknowledged {
            assert_eq!(entries.get(payload), Some(&vec![*offset]));
        }
        // SIGTERM: a clean stop.
        let stopped = Command::new("kill")
            .arg(node.id().to_string())
            .status()
            .unwrap();
        assert!(stopped.success());
        assert!(node.wait().unwrap().success());
    }
}

/// A client given every node's address rides out the leader's death within
/// one call: it follows NotLeader, skips the dead node, and waits out the
/// election (`ClientConfig::leader_wait`) instead of failing.
#[test]
fn one_append_call_rides_out_the_leaders_death() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let addrs: Vec<String> = cluster
        .members
        .iter()
        .map(|member| member.client.to_string())
        .collect();
    let client = Client::connect(&addrs).unwrap();
    let before = client.append(&b"before"[..]).unwrap();
    cluster.kill(leader);
    let started = Instant::now();
    // The append goes out on the dying leader's connection: its outcome is
    // unknown, so the library sends it again (the same producer sequence)
    // to the survivors, which answer NotLeader while the election runs.
    let after = client
        .append(&b"after"[..])
        .unwrap_or_else(|error| panic!("{error}\n{}", cluster.logs()));
    println!(
        "one append call across the leader's death took {:?}",
        started.elapsed()
    );
    assert!(after > before);
    let survivor = (0..3).find(|&index| index != leader).unwrap();
    let log = committed_bytes(cluster.members[survivor].client, after + 1);
    let entries = data_entries(&log);
    assert_eq!(entries[&b"before"[..]], vec![before]);
    assert_eq!(entries[&b"after"[..]], vec![after]);
}

/// Waits until a member's log starts past 0 (it applied a trim or was
/// re-seeded) and returns its start.
fn wait_for_start(cluster: &Cluster, index: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = cluster.status(index) {
            if status.start_offset > 0 {
                return status.start_offset;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} never trimmed\n{}",
            cluster.members[index].id,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long `committed_range` waits for a member's committed bytes.
const RANGE_WAIT: Duration = Duration::from_secs(15);

/// A replicated trim with `loglogd` processes as followers, under load:
/// every node drops its segments below the trim (files gone, start offset
/// in status, reads below answer `Trimmed`); a node down during the trim
/// trims once it catches up; a wiped node (empty data directory, same id)
/// is re-seeded from the leader's log start and then holds the same bytes.
/// Member 1 runs embedded in this process, because the test asks it for
/// the trim (`Node::trim_prefix`; the admin request comes separately), so
/// it must be the leader: the processes are killed until it is.
#[test]
fn a_replicated_trim_reaches_every_process_and_a_wiped_one_reseeds() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    cluster.extra_args = vec!["--segment-size".to_string(), "4096".to_string()];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let peers: Vec<loglogd::cluster::PeerSpec> = cluster
        .members
        .iter()
        .map(|m| loglogd::cluster::PeerSpec {
            id: m.id,
            peer_addr: m.peer.to_string(),
            client_addr: m.client.to_string(),
        })
        .collect();
    let mut config = loglogd::Config::new(cluster.members[0].dir.clone());
    config.node_id = 1;
    config.listen = Some(cluster.members[0].client);
    config.segment_size = 4096;
    let mut cluster_config = loglogd::cluster::ClusterConfig::new(peers);
    cluster_config.peer_listen = cluster.members[0].peer;
    config.cluster = Some(cluster_config);
    let embedded = runtime.block_on(loglogd::Node::start(config)).unwrap();
    cluster.start(1);
    cluster.start(2);
    for attempt in 0.. {
        let leader = cluster.wait_for_leader(&[0, 1, 2]);
        if leader == 0 {
            break;
        }
        assert!(attempt < 30, "member 1 never became leader");
        cluster.kill(leader);
        let deadline = Instant::now() + Duration::from_secs(10);
        while embedded.status().role != Role::Leader && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        cluster.start(leader);
    }

    let leader_addr = cluster.members[0].client.to_string();
    let client = Client::connect(std::slice::from_ref(&leader_addr)).unwrap();
    for i in 0..300 {
        client.append(vec![i as u8; 200]).unwrap();
    }
    // Load: appends keep coming through the trim and the catch-ups.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let addr = leader_addr.clone();
        std::thread::spawn(move || {
            let client = Client::connect(&[addr]).unwrap();
            let mut acknowledged = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.append(vec![0xab; 300]).unwrap();
                acknowledged += 1;
            }
            acknowledged
        })
    };

    let (down, up) = (2, 1);
    cluster.kill(down);
    let commit = embedded.commit_offset();
    assert!(matches!(
        runtime.block_on(embedded.trim_prefix(u64::MAX / 2)),
        Err(ServerError::OutOfRange { .. })
    ));
    let trim_to = commit / 2;
    let start = runtime.block_on(embedded.trim_prefix(trim_to)).unwrap();
    assert!(
        start > 0 && start <= trim_to,
        "start {start}, trim {trim_to}"
    );
    let up_start = wait_for_start(&cluster, up);
    assert!(up_start <= trim_to);
    cluster.start(down);
    let down_start = wait_for_start(&cluster, down);
    assert!(down_start <= trim_to);

    for index in 0..3 {
        let status = cluster.status(index).unwrap();
        assert_eq!(
            segment_starts(&cluster.members[index].dir)[0],
            status.start_offset,
            "node {}: files below the start are gone",
            index + 1
        );
        let mut stream = TcpStream::connect(cluster.members[index].client).unwrap();
        let read = Request::Read {
            offset: 0,
            max_bytes: 1 << 20,
            wait_ms: 0,
            linearizable: false,
        };
        assert_eq!(
            call(&mut stream, read),
            Err(ServerError::Trimmed {
                start: status.start_offset
            })
        );
    }

    // Wipe a follower process: same id, empty data directory.
    let wiped = up;
    cluster.kill(wiped);
    std::fs::remove_dir_all(&cluster.members[wiped].dir).unwrap();
    let leader_start = embedded.status().start_offset;
    cluster.start(wiped);
    assert_eq!(wait_for_start(&cluster, wiped), leader_start);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 0);
    let end = embedded.commit_offset();
    let expected = committed_range(cluster.members[0].client, leader_start, end, RANGE_WAIT);
    for index in 1..3 {
        let from = cluster
            .status(index)
            .unwrap()
            .start_offset
            .max(leader_start);
        let bytes = committed_range(cluster.members[index].client, from, end, RANGE_WAIT);
        assert_eq!(
            bytes[..],
            expected[(from - leader_start) as usize..],
            "node {}: same bytes from the start on",
            index + 1
        );
    }
    assert_eq!(segment_starts(&cluster.members[wiped].dir)[0], leader_start);
    runtime.block_on(embedded.shutdown());
}

/// Acknowledged appends: payload and offset.
type Acknowledged = std::sync::Arc<std::sync::Mutex<Vec<(Vec<u8>, u64)>>>;

/// Appender threads: each appends its own numbered payloads through a
/// client of `addrs` until `stop`, recording every acknowledged append
/// (payload, offset). A failed try is not retried with the same payload,
/// so nothing acknowledged can be duplicated by a retry.
struct Appenders {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acknowledged: Acknowledged,
    threads: Vec<std::thread::JoinHandle<u64>>,
}

impl Appenders {
    fn start(addrs: &[String], count: usize, tag: &str) -> Appenders {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged: Acknowledged = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..count)
            .map(|c| {
                let (addrs, stop, acknowledged) =
                    (addrs.to_vec(), stop.clone(), acknowledged.clone());
                let tag = tag.to_string();
                std::thread::spawn(move || {
                    let mut failed = 0u64;
                    let mut client = None;
                    for n in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        if client.is_none() {
                            client = Client::connect(&addrs).ok();
                        }
                        let Some(connected) = &client else {
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        };
                        let payload = format!("{tag}-c{c}-{n}").into_bytes();
                        match connected.append(payload.clone()) {
                            Ok(offset) => acknowledged.lock().unwrap().push((payload, offset)),
                            Err(_) => {
                                failed += 1;
                                std::thread::sleep(Duration::from_millis(10));
                            }
                        }
                    }
                    failed
                })
            })
            .collect();
        Appenders {
            stop,
            acknowledged,
            threads,
        }
    }

    fn count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// Stops the threads; returns the acknowledged appends and the failed tries.
    fn finish(self) -> (Vec<(Vec<u8>, u64)>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let failed = self.threads.into_iter().map(|t| t.join().unwrap()).sum();
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        (acknowledged, failed)
    }
}

/// The committed logs of `indexes` are byte-identical and hold every
/// acknowledged entry exactly once, at its acknowledged offset.
fn assert_identical_logs_with(
    cluster: &Cluster,
    indexes: &[usize],
    commit: u64,
    acknowledged: &[(Vec<u8>, u64)],
) {
    let logs: Vec<Vec<u8>> = indexes
        .iter()
        .map(|&index| committed_bytes(cluster.members[index].client, commit))
        .collect();
    let shortest = logs.iter().map(Vec::len).min().unwrap();
    assert!(shortest as u64 >= commit);
    for (log, &index) in logs.iter().zip(indexes).skip(1) {
        assert!(
            log[..shortest] == logs[0][..shortest],
            "committed logs of node {} and node {} differ",
            cluster.members[indexes[0]].id,
            cluster.members[index].id
        );
    }
    let entries = data_entries(&logs[0][..shortest]);
    for (payload, offset) in acknowledged {
        assert_eq!(
            entries.get(payload),
            Some(&vec![*offset]),
            "acknowledged entry {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert!(
        entries.values().all(|offsets| offsets.len() == 1),
        "no entry appears twice"
    );
}

/// Runs the `loglog` command line; returns its stdout (asserts success).
fn loglog_cli(cluster: &[String], args: &[&str]) -> String {
    let output = Command::new(common::loglog_binary())
        .arg("--cluster")
        .arg(cluster.join(","))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "loglog {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The cluster status of one node (through the client library).
fn cluster_status(addr: SocketAddr) -> Option<loglog::ClusterStatus> {
    Client::connect(&[addr.to_string()])
        .ok()?
        .cluster_status()
        .ok()
}

/// A fourth node joins a loaded 3-node cluster (8 appenders all along),
/// becomes a voter, the leader is removed, appends go on; every remaining
/// node has the same committed bytes with every acknowledged entry exactly
/// once. Then the added node restarts without --peers (its peers'
/// addresses come from its log) and keeps replicating.
#[test]
fn a_node_added_under_load_becomes_a_voter_and_the_old_leader_is_removed() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let first_leader = cluster.wait_for_leader(&[0, 1, 2]);
    let founders = cluster.client_addrs(&[0, 1, 2]);
    let appenders = Appenders::start(&founders, 8, "load");
    // Enough log for the new node to catch up with while appends go on.
    while appenders.count() < 2000 {
        std::thread::sleep(Duration::from_millis(10));
    }

    // Node 4 starts empty, knowing only the founders, and waits.
    let cluster_id = cluster.cluster_id();
    let joiner = cluster.add_joining_member(
        root.path(),
        vec![
            "--cluster-id".to_string(),
            cluster_id.clone(),
            "--peers".to_string(),
            cluster.peers_flag.clone(),
        ],
    );
    cluster.start(joiner);
    let (joiner_id, joiner_peer, joiner_client) = (
        cluster.members[joiner].id,
        cluster.members[joiner].peer.to_string(),
        cluster.members[joiner].client.to_string(),
    );
    // Through a follower: the request follows NotLeader to the leader.
    let follower = (first_leader + 1) % 3;
    let added = loglog_cli(
        &cluster.client_addrs(&[follower]),
        &[
            "admin",
            "add-node",
            &joiner_id.to_string(),
            &joiner_peer,
            &joiner_client,
        ],
    );
    assert!(
        added.starts_with(&format!("added node {joiner_id} (commit offset ")),
        "{added}"
    );
    let leader = cluster.wait_for_leader(&[0, 1, 2, joiner]);
    let status = cluster_status(cluster.members[leader].client).unwrap();
    let member = status
        .members
        .iter()
        .find(|member| member.id == joiner_id)
        .expect("node 4 is a member");
    assert!(member.voter, "node 4 is a voter: {status:?}");
    assert_eq!(member.client_addr, joiner_client);
    assert_eq!(member.peer_addr, joiner_peer);
    // Retried, the request answers at once.
    let again = Client::connect(&founders)
        .unwrap()
        .admin(AdminRequest::AddNode {
            id: joiner_id,
            peer_addr: &joiner_peer,
            client_addr: &joiner_client,
        });
    assert!(again.is_ok(), "{again:?}");

    // Remove the leader itself; the other three go on.
    let before_removal = appenders.count();
    let removed_id = cluster.members[leader].id;
    let removed = Client::connect(&founders)
        .unwrap()
        .admin(AdminRequest::RemoveNode { id: removed_id });
    assert!(removed.is_ok(), "{removed:?}\n{}", cluster.logs());
    let removed = loglog_cli(
        &founders,
        &["admin", "remove-node", &removed_id.to_string()],
    );
    assert!(
        removed.starts_with(&format!("removed node {removed_id}")),
        "{removed}"
    );
    let remaining: Vec<usize> = (0..4).filter(|&index| index != leader).collect();
    let new_leader = cluster.wait_for_leader(&remaining);
    assert_ne!(new_leader, leader);
    let status = cluster_status(cluster.members[new_leader].client).unwrap();
    assert!(
        status.members.iter().all(|member| member.id != removed_id),
        "the removed node is gone from the configuration: {status:?}"
    );
    assert_eq!(status.members.len(), 3);
    // The old leader committed its own removal before stepping down: it
    // knows it is out, says so, and never campaigns.
    let removed_status = cluster.status(leader).unwrap();
    assert_eq!(removed_status.role, Role::Removed, "{removed_status:?}");
    cluster.kill(leader);
    // Appends go on without it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while appenders.count() < before_removal + 300 {
        assert!(
            Instant::now() < deadline,
            "appends stalled after the removal\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut acknowledged, failed) = appenders.finish();
    println!(
        "membership change under load: {} appends acknowledged, {failed} failed tries",
        acknowledged.len()
    );

    // The added node restarts with its own flags only: no --peers.
    cluster.kill(joiner);
    cluster.members[joiner].join_args = Some(vec!["--cluster-id".to_string(), cluster_id]);
    cluster.start(joiner);
    let survivors = cluster.client_addrs(&remaining);
    for i in 0..100 {
        acknowledged.push(append_until_acknowledged(
            &survivors,
            &format!("after-restart-{i}"),
        ));
    }
    let leader = cluster.wait_for_leader(&remaining);
    let commit = cluster.status(leader).unwrap().commit_offset;
    assert_identical_logs_with(&cluster, &remaining, commit, &acknowledged);
}

/// `loglog admin transfer-leader` hands the leadership to the named voter.
#[test]
fn leadership_moves_to_the_named_voter() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let addrs = cluster.client_addrs(&[0, 1, 2]);
    let appenders = Appenders::start(&addrs, 4, "transfer");
    for _ in 0..2 {
        let current = cluster.wait_for_leader(&[0, 1, 2]);
        let target = (current + 1) % 3;
        let target_id = cluster.members[target].id;
        let answer = loglog_cli(
            &addrs,
            &["admin", "transfer-leader", &target_id.to_string()],
        );
        assert_eq!(answer.trim(), format!("leader is node {target_id}"));
        assert_eq!(cluster.wait_for_leader(&[0, 1, 2]), target);
    }
    // A node that is not a voter is refused with a typed error.
    let refused = Client::connect(&addrs)
        .unwrap()
        .admin(AdminRequest::TransferLeader { id: 99 });
    assert!(
        matches!(
            refused,
            Err(loglog::Error::Server {
                source: ServerError::BadRequest { .. },
                ..
            })
        ),
        "{refused:?}"
    );
    let (acknowledged, _) = appenders.finish();
    assert!(!acknowledged.is_empty());
    let leader_now = cluster.wait_for_leader(&[0, 1, 2]);
    assert_ne!(leader_now, leader);
    let commit = cluster.status(leader_now).unwrap().commit_offset;
    assert_identical_logs_with(&cluster, &[0, 1, 2], commit, &acknowledged);
}

/// `loglog status --json` over a 3-node cluster lists every node (also
/// those not named in --cluster) with one leader, replication lag and the
/// bytes each sent to peers, growing with appends; a dead node is listed as
/// unreachable without failing the command.
#[test]
fn status_json_lists_every_node_with_lag_and_peer_traffic() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let status = |cluster: &Cluster| -> Vec<serde_json::Value> {
        let text = loglog_cli(&cluster.client_addrs(&[0]), &["status", "--json"]);
        serde_json::from_str::<serde_json::Value>(&text)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    let before = status(&cluster);
    assert_eq!(before.len(), 3, "every member is listed: {before:?}");
    let leaders: Vec<&serde_json::Value> = before
        .iter()
        .filter(|node| node["role"] == "leader")
        .collect();
    assert_eq!(leaders.len(), 1, "{before:?}");
    assert_eq!(leaders[0]["node_id"], cluster.members[leader].id);
    for node in &before {
        assert!(node["peer_address"].is_string(), "{node}");
        assert_eq!(node["voter"], true);
        assert!(node["peer_bytes_sent"].is_u64(), "{node}");
        assert!(node["replication_lag_bytes"].is_u64(), "{node}");
        assert!(node["end_offset"].as_u64() >= node["commit_offset"].as_u64());
        if node["role"] != "leader" {
            assert!(node["last_contact_ms"].as_u64().unwrap() < 5_000, "{node}");
        }
    }
    let total_sent = |nodes: &[serde_json::Value]| -> u64 {
        nodes
            .iter()
            .map(|node| node["peer_bytes_sent"].as_u64().unwrap())
            .sum()
    };
    let sent_before = total_sent(&before);

    let client = Client::connect(&cluster.client_addrs(&[leader])).unwrap();
    let payload = vec![7u8; 1000];
    for _ in 0..1000 {
        client.append(payload.clone()).unwrap();
    }
    // Once the followers caught up, their lag is small.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let nodes = status(&cluster);
        let lags: Vec<u64> = nodes
            .iter()
            .map(|node| node["replication_lag_bytes"].as_u64().unwrap())
            .collect();
        if lags.iter().all(|&lag| lag < 100_000) {
            break nodes;
        }
        assert!(Instant::now() < deadline, "lags stay high: {lags:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Each follower received every entry (from whichever node led), so the
    // nodes together sent at least that much to their peers.
    let sent_after = total_sent(&after);
    assert!(
        sent_after >= sent_before + 2 * (1000 * 1000 - 100_000),
        "peer traffic grows with appends: {sent_before} -> {sent_after}"
    );

    // A dead follower is listed as unreachable; the command succeeds.
    // Not node 0: the status is asked through it alone.
    let dead = (1..3).find(|&index| index != leader).unwrap();
    cluster.kill(dead);
    let with_dead = status(&cluster);
    assert_eq!(with_dead.len(), 3, "{with_dead:?}");
    let unreachable: Vec<&serde_json::Value> = with_dead
        .iter()
        .filter(|node| node["error"].is_string())
        .collect();
    assert_eq!(unreachable.len(), 1, "{with_dead:?}");
    assert_eq!(
        unreachable[0]["address"],
        cluster.members[dead].client.to_string()
    );
    let text = loglog_cli(&cluster.client_addrs(&[0, 1, 2]), &["status"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.contains(" peer_bytes_sent="), "{text}");
}

/// A rolling restart under load fails no append: each node in turn gets
/// SIGTERM (a leader first hands its leadership over), stops cleanly, is
/// restarted and catches up; clients retry what a stopping node left in
/// doubt as the same (producer, sequence), so nothing fails and nothing is
/// written twice.
#[test]
fn a_rolling_restart_under_load_fails_no_append() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    cluster.wait_for_leader(&[0, 1, 2]);
    let addrs = cluster.client_addrs(&[0, 1, 2]);
    let appenders = Appenders::start(&addrs, 8, "rolling");
    // Start with the followers and end with the leader of the moment, so
    // at least one stop is a leader's handoff.
    let first_leader = cluster.wait_for_leader(&[0, 1, 2]);
    let mut order: Vec<usize> = (0..3).filter(|&index| index != first_leader).collect();
    order.push(first_leader);
    for index in order {
        let before = appenders.count();
        let deadline = Instant::now() + Duration::from_secs(20);
        while appenders.count() < before + 500 {
            assert!(
                Instant::now() < deadline,
                "appends stalled\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut child = cluster.members[index].child.take().expect("running");
        let stopped = Command::new("kill")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        assert!(stopped.success());
        assert!(
            child.wait().unwrap().success(),
            "node {} stopped cleanly",
            index + 1
        );
        cluster.start(index);
        cluster.wait_for_leader(&[0, 1, 2]);
    }
    let (acknowledged, failed) = appenders.finish();
    println!(
        "rolling restart: {} appends acknowledged, {failed} failed",
        acknowledged.len()
    );
    assert_eq!(
        failed,
        0,
        "an append failed during the rolling restart\n{}",
        cluster.logs()
    );
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let commit = cluster.status(leader).unwrap().commit_offset;
    assert_identical_logs_with(&cluster, &[0, 1, 2], commit, &acknowledged);
}

/// Retention (`--retention-max-bytes`) on three processes under appends,
/// with small segments: the leader proposes trims at its segment
/// boundaries, every node applies them once committed. Every node's start
/// advances by whole segments (files deleted), never past its own commit
/// offset, all end at the same start, reads below it answer `Trimmed`,
/// and every acknowledged entry at or above it is still there, the same
/// bytes on every node.
#[test]
fn retention_trims_whole_segments_on_every_node_under_load() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    let max_bytes = 16 * 1024;
    cluster.extra_args = [
        "--segment-size",
        "4096",
        "--retention-max-bytes",
        "16KiB",
        "--retention-check-interval",
        "100ms",
    ]
    .map(String::from)
    .to_vec();
    for index in 0..3 {
        cluster.start(index);
    }
    cluster.wait_for_leader(&[0, 1, 2]);
    let addrs = cluster.client_addrs(&[0, 1, 2]);
    let appenders = Appenders::start(&addrs, 4, "retained");

    // Under load every node's start moves again and again, never to or
    // past its own commit offset (a follower trims only what it committed).
    let mut starts_seen: Vec<Vec<u64>> = vec![vec![0]; 3];
    let deadline = Instant::now() + Duration::from_secs(90);
    while starts_seen.iter().any(|seen| seen.len() < 4) {
        for (index, seen) in starts_seen.iter_mut().enumerate() {
            if let Some(status) = cluster.status(index) {
                assert!(
                    status.start_offset <= status.commit_offset,
                    "node {}: {status:?}",
                    index + 1
                );
                if status.start_offset != *seen.last().unwrap() {
                    seen.push(status.start_offset);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "starts seen {starts_seen:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (acknowledged, _failed) = appenders.finish();
    let last_end = acknowledged
        .iter()
        .map(|(_, offset)| *offset)
        .max()
        .unwrap();

    // Settled: every node trimmed to within the bound, to the same start.
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = loop {
        let statuses: Vec<Option<NodeStatus>> = (0..3).map(|index| cluster.status(index)).collect();
        let settled = statuses.iter().all(|status| {
            status.is_some_and(|s| {
                s.commit_offset > last_end && s.commit_offset - s.start_offset <= max_bytes
            })
        }) && statuses
            .iter()
            .all(|s| s.map(|s| s.start_offset) == statuses[0].map(|s| s.start_offset));
        if settled {
            break statuses.into_iter().map(Option::unwrap).collect::<Vec<_>>();
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {statuses:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let start = statuses[0].start_offset;
    let commit = statuses.iter().map(|s| s.commit_offset).min().unwrap();
    assert!(
        start > 0 && commit - start > max_bytes - 2 * 4096,
        "{statuses:?}"
    );
    let mut logs = Vec::new();
    for (index, status) in statuses.iter().enumerate() {
        let member = &cluster.members[index];
        assert_eq!(
            segment_starts(&member.dir)[0],
            status.start_offset,
            "node {}: files below the start are deleted",
            member.id
        );
        let mut stream = TcpStream::connect(member.client).unwrap();
        let below = Request::Read {
            offset: start - 1,
            max_bytes: 1 << 20,
            wait_ms: 0,
            linearizable: false,
        };
        assert_eq!(
            call(&mut stream, below),
            Err(ServerError::Trimmed { start })
        );
        logs.push(committed_range(member.client, start, commit, RANGE_WAIT));
    }
    assert!(
        logs.iter().all(|log| *log == logs[0]),
        "same bytes on every node"
    );
    let mut kept: HashMap<Vec<u8>, u64> = HashMap::new();
    for entry in loglog_proto::entry::EntryIter::new(&logs[0], start, u32::MAX) {
        let entry = entry.expect("committed bytes are whole, valid entries");
        if entry.header.kind == loglog_proto::entry::EntryKind::Data {
            let (_, payload) = entry_producer(&entry.header, entry.payload).unwrap();
            kept.insert(payload.to_vec(), entry.offset);
        }
    }
    let mut above = 0;
    for (payload, offset) in &acknowledged {
        if *offset >= start && *offset < commit {
            assert_eq!(kept.get(payload), Some(offset), "acknowledged entry lost");
            above += 1;
        }
    }
    assert!(above > 0);
}

/// Retention by age on three processes, with a follower stopped (SIGSTOP)
/// while the others append and trim: once resumed it catches up (re-seeded
/// from the leader's start, which has passed its end) and ends at the
/// same start; `min_bytes` of committed log stay on every node, and no
/// running node's start passes its commit offset.
#[test]
fn retention_by_age_trims_a_paused_follower_only_after_it_catches_up() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    let min_bytes = 8 * 1024;
    cluster.extra_args = [
        "--segment-size",
        "4096",
        "--retention-max-age",
        "1s",
        "--retention-min-bytes",
        "8KiB",
        "--retention-check-interval",
        "100ms",
    ]
    .map(String::from)
    .to_vec();
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let paused = (leader + 1) % 3;
    let client = Client::connect(&cluster.client_addrs(&[leader])).unwrap();
    cluster.signal(paused, "-STOP");
    let paused_segments = segment_starts(&cluster.members[paused].dir);
    let mut acknowledged = Vec::new();
    for n in 0..300 {
        let payload = format!("later-{n:04}-{}", "b".repeat(64)).into_bytes();
        acknowledged.push((client.append(payload.clone()).unwrap(), payload));
    }
    // The leader and the running follower trim the old segments.
    let running = 3 - leader - paused;
    let leader_start = wait_for_start(&cluster, leader);
    wait_for_start(&cluster, running);
    assert_eq!(
        segment_starts(&cluster.members[paused].dir),
        paused_segments
    );

    cluster.signal(paused, "-CONT");
    let deadline = Instant::now() + Duration::from_secs(20);
    let statuses = loop {
        let statuses: Vec<NodeStatus> = (0..3).filter_map(|index| cluster.status(index)).collect();
        for status in &statuses {
            // (The paused node's status may show its new start a moment
            // before its commit jump while it is re-seeded.)
            if status.node_id != cluster.members[paused].id {
                assert!(status.start_offset <= status.commit_offset, "{status:?}");
            }
        }
        if statuses.len() == 3
            && statuses
                .iter()
                .all(|s| s.start_offset == statuses[0].start_offset)
            && statuses[0].start_offset >= leader_start
            && statuses.iter().all(|s| {
                s.start_offset <= s.commit_offset
                    && s.commit_offset - s.start_offset < min_bytes + 4096
            })
        {
            break statuses;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {statuses:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for (index, status) in statuses.iter().enumerate() {
        assert!(
            status.commit_offset - status.start_offset >= min_bytes,
            "min_bytes kept on node {}: {status:?}",
            index + 1
        );
        assert_eq!(
            segment_starts(&cluster.members[index].dir)[0],
            status.start_offset
        );
    }
    let start = statuses[0].start_offset;
    let commit = statuses.iter().map(|s| s.commit_offset).min().unwrap();
    let kept = committed_range(cluster.members[paused].client, start, commit, RANGE_WAIT);
    assert_eq!(
        kept,
        committed_range(cluster.members[leader].client, start, commit, RANGE_WAIT)
    );
    let mut found = 0;
    for entry in loglog_proto::entry::EntryIter::new(&kept, start, u32::MAX) {
        let entry = entry.unwrap();
        if let Some((_, payload)) = acknowledged
            .iter()
            .find(|(offset, _)| *offset == entry.offset)
        {
            let (_, body) = entry_producer(&entry.header, entry.payload).unwrap();
            assert_eq!(body, &payload[..]);
            found += 1;
        }
    }
    assert!(found > 0, "acknowledged entries above the start are kept");
}

/// A follower stopped (SIGSTOP) while it is removed never receives its
/// removal. Resumed, it campaigns; the voters refuse its connections as
/// not a member, with their log position, and it stops campaigning and
/// reports `removed` (the leader and its term undisturbed). Added again,
/// a leader reaches it and it is a voter once more.
#[test]
fn a_node_removed_while_stopped_learns_it_and_stops_campaigning() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 4);
    for index in 0..4 {
        cluster.start(index);
    }
    let all: Vec<usize> = (0..4).collect();
    let leader = cluster.wait_for_leader(&all);
    let stopped = (leader + 1) % 4;
    let stopped_id = cluster.members[stopped].id;
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != stopped).collect();
    let others_addrs = cluster.client_addrs(&others);
    let client = Client::connect(&others_addrs).unwrap();
    client.append(&b"before the removal"[..]).unwrap();

    cluster.signal(stopped, "-STOP");
    let removed = client.admin(AdminRequest::RemoveNode { id: stopped_id });
    assert!(removed.is_ok(), "{removed:?}\n{}", cluster.logs());
    client.append(&b"after the removal"[..]).unwrap();
    let term = cluster.status(leader).unwrap().term;
    cluster.signal(stopped, "-CONT");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status(stopped);
        if status.is_some_and(|status| status.role == Role::Removed) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {stopped_id} never learned its removal: {status:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(&cluster.members[stopped].log).unwrap();
    assert!(
        log.contains("this node was removed from the cluster"),
        "{log}"
    );
    // Quiet from then on: no election among the others.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cluster.status(stopped).unwrap().role, Role::Removed);
    let leader_status = cluster.status(leader).unwrap();
    assert_eq!(leader_status.role, Role::Leader);
    assert_eq!(
        leader_status.term, term,
        "the removed node disturbed no one"
    );

    // Added again (same id, same data): a member once more.
    let member = &cluster.members[stopped];
    let added = client.admin(AdminRequest::AddNode {
        id: stopped_id,
        peer_addr: &member.peer.to_string(),
        client_addr: &member.client.to_string(),
    });
    assert!(added.is_ok(), "{added:?}\n{}", cluster.logs());
    let status = cluster.status(stopped).unwrap();
    assert_eq!(status.role, Role::Follower, "{status:?}");
    let log = std::fs::read_to_string(&cluster.members[stopped].log).unwrap();
    assert!(log.contains("a leader reaches this node again"), "{log}");
    for index in 0..4 {
        cluster.kill(index);
    }
}
