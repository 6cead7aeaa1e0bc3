//! A real 3-node cluster: three `loglogd` processes on loopback (ports
//! picked free), driven through the client library and raw frames.
//! Elects a leader, follows `NotLeader` redirects, serves identical
//! committed bytes on every node, survives a SIGKILL of the leader (the
//! failover time is printed), and a restarted node catches up.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog_proto::producer::{entry_producer, ProducerTag};
use loglog_proto::wire::{
    FrameHeader, NodeStatus, Request, Role, ServerError, FRAME_HEADER_LEN, STATUS_OK,
};

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

struct Member {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    members: Vec<Member>,
    peers_flag: String,
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
        }
    }

    fn start(&mut self, index: usize) {
        let member = &mut self.members[index];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log)
            .unwrap();
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
                "--peers",
                &self.peers_flag,
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        member.child = Some(child);
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

/// One request on a raw connection: the body of an OK answer, or the error.
fn call(stream: &mut TcpStream, request: Request<'_>) -> Result<Vec<u8>, ServerError> {
    let mut frame = Vec::new();
    request.encode(7, &mut frame);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).unwrap();
    if header.aux == STATUS_OK {
        Ok(body)
    } else {
        Err(ServerError::decode(header.aux, &body))
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
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (addrs, stop, acknowledged) = (addrs.clone(), stop.clone(), acknowledged.clone());
        clients.push(std::thread::spawn(move || {
            let mut failed = 0u64;
            let mut in_doubt = 0u64;
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
        "16 clients: {} appends acknowledged, {failed} failed ({in_doubt} in doubt), \
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

/// A follower whose disk lost synced entries (its segment cut short while
/// it was down, above its checkpoint) restarts with the core's lost-tail
/// mark, catches up from the leader, and the mark clears.
#[test]
fn a_follower_that_lost_synced_entries_is_marked_and_restored() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path(), 3);
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]);
    let follower = (leader + 1) % 3;
    let client = Client::connect(&[cluster.members[leader].client.to_string()]).unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..100 {
        let payload = format!("before-{i}").into_bytes();
        acknowledged.push((payload.clone(), client.append(payload).unwrap()));
    }
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(client).is_err() {
        assert!(child.try_wait().unwrap().is_none(), "loglogd exited");
        assert!(Instant::now() < deadline, "loglogd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    assert_eq!(handshake(peer, 7, 1, "alpha").1, 3, "not a member");
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
