//! Cluster members embedded in one process (`Node::start` with
//! `Config::cluster`): the embedded API behaves like the TCP one.

use std::time::{Duration, Instant};

use loglogd::cluster::{ClusterConfig, PeerSpec};
use loglogd::{Config, Node, Role, ServerError};

mod common;
use common::free_addr;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_members_replicate_and_redirect() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for config in common::embedded_cluster_configs(root.path(), 3) {
        nodes.push(Node::start(config).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        if let Some(leader) = nodes.iter().position(|n| n.status().role == Role::Leader) {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let leader_id = nodes[leader].status().node_id;
    let follower = (leader + 1) % 3;

    let mut offsets = Vec::new();
    for i in 0..100u32 {
        offsets.push(
            nodes[leader]
                .append(i.to_le_bytes().to_vec())
                .await
                .unwrap(),
        );
    }
    // A follower refuses appends, naming the leader's client address.
    assert_eq!(
        nodes[follower].append(&b"x"[..]).await,
        Err(ServerError::NotLeader {
            leader: Some(format!("client-of-{leader_id}:19194"))
        })
    );
    assert!(matches!(
        nodes[follower].linearizable_barrier().await,
        Err(ServerError::NotLeader { .. })
    ));
    nodes[leader].linearizable_barrier().await.unwrap();
    let end = nodes[leader].commit_offset();
    // Every member serves the same committed entries.
    for node in &nodes {
        assert!(node.wait_for_commit(end).await >= end);
        let mut read = Vec::new();
        let mut at = 0;
        while at < end {
            let chunk = node.read(at, 1 << 20, Duration::ZERO).await.unwrap();
            read.extend(
                chunk
                    .data_entries()
                    .map(|(offset, payload)| (offset, payload.to_vec())),
            );
            at = chunk.next_offset();
        }
        let expected: Vec<(u64, Vec<u8>)> = offsets
            .iter()
            .enumerate()
            .map(|(i, &offset)| (offset, (i as u32).to_le_bytes().to_vec()))
            .collect();
        assert_eq!(read, expected);
        let status = node.status();
        assert_eq!(status.leader_id, leader_id);
        assert!(node.peer_addr().is_some());
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

/// More uncommitted bytes than the core holds (64 MiB by default) arrive
/// at once: the extra appends wait for room (backpressure) instead of
/// being refused `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_uncommitted_bound_waits_instead_of_failing() {
    let root = tempfile::tempdir().unwrap();
    let peer = PeerSpec {
        id: 1,
        peer_addr: free_addr().to_string(),
        client_addr: "127.0.0.1:1".to_string(),
    };
    let mut config = Config::new(root.path().join("node1"));
    config.listen = None;
    let mut cluster = ClusterConfig::new(vec![peer.clone()]);
    cluster.peer_listen = peer.peer_addr.parse().unwrap();
    config.cluster = Some(cluster);
    let node = Node::start(config).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.status().role != Role::Leader {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let payload = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let appends: Vec<_> = (0..96)
        .map(|_| {
            let (node, payload) = (node.clone(), payload.clone());
            tokio::spawn(async move { node.append(payload).await })
        })
        .collect();
    let mut offsets = Vec::new();
    for append in appends {
        offsets.push(append.await.unwrap().expect("no Busy: the append waited"));
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 96);
    node.shutdown().await;
}

/// One member's configuration: small segments, so a trim drops real files.
fn trim_member_config(root: &std::path::Path, peers: &[PeerSpec], id: u64) -> Config {
    let mut config = Config::new(root.join(format!("node{id}")));
    config.node_id = id;
    config.listen = None;
    config.segment_size = 4096;
    let mut cluster = ClusterConfig::new(peers.to_vec());
    cluster.peer_listen = peers[id as usize - 1].peer_addr.parse().unwrap();
    config.cluster = Some(cluster);
    config
}

async fn wait_for_leader(nodes: &[Option<Node>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let leaders: Vec<usize> = (0..nodes.len())
            .filter(|&i| {
                nodes[i]
                    .as_ref()
                    .is_some_and(|n| n.status().role == Role::Leader)
            })
            .collect();
        if let [leader] = leaders[..] {
            return leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A crash in the middle of a log reset (the intent saved, the log not yet
/// reset) is completed at the next start: the log then begins at the
/// intent's offset, with that checkpoint, and reads below it answer
/// `Trimmed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_log_reset_is_completed_at_start() {
    let root = tempfile::tempdir().unwrap();
    let peers = vec![PeerSpec {
        id: 1,
        peer_addr: free_addr().to_string(),
        client_addr: "127.0.0.1:1".to_string(),
    }];
    let config = trim_member_config(root.path(), &peers, 1);
    let node = Node::start(config.clone()).await.unwrap();
    wait_for_leader(&[Some(node.clone())]).await;
    for i in 0..50u8 {
        node.append(vec![i; 100]).await.unwrap();
    }
    let commit = node.commit_offset();
    let term = node.status().term as u32;
    node.shutdown().await;

    // What `Action::ResetLog` saves first: the checkpoint to reset to.
    let start = commit + 10_000;
    let checkpoint = loglog_raft::Checkpoint {
        commit_offset: start,
        terms: loglog_raft::TermMap::from_runs(vec![loglog_raft::TermRun { term, start: 0 }])
            .unwrap(),
        membership: loglog_raft::Membership::with_voters([1]),
    };
    let reset_path = config.data_dir.join(loglogd::cluster::RESET_FILE);
    loglog_storage::state_file::save(&reset_path, &checkpoint.encode()).unwrap();

    let node = Node::start(config.clone()).await.unwrap();
    assert!(!reset_path.exists(), "the intent is dropped once done");
    assert_eq!(node.status().start_offset, start);
    assert_eq!(common::segment_starts(&config.data_dir), vec![start]);
    wait_for_leader(&[Some(node.clone())]).await;
    let offset = node.append(&b"after the reset"[..]).await.unwrap();
    assert!(offset >= start);
    assert_eq!(
        node.read(0, 1 << 20, Duration::ZERO).await,
        Err(ServerError::Trimmed { start })
    );
    node.shutdown().await;
}
