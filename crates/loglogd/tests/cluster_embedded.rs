//! Cluster members embedded in one process (`Node::start` with
//! `Config::cluster`): the embedded API behaves like the TCP one.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use loglogd::cluster::{ClusterConfig, PeerSpec};
use loglogd::{Config, Node, Role, ServerError};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_members_replicate_and_redirect() {
    let root = tempfile::tempdir().unwrap();
    let peers: Vec<PeerSpec> = (1..=3)
        .map(|id| PeerSpec {
            id,
            peer_addr: free_addr().to_string(),
            client_addr: format!("client-of-{id}:19194"),
        })
        .collect();
    let mut nodes = Vec::new();
    for peer in &peers {
        let mut config = Config::new(root.path().join(format!("node{}", peer.id)));
        config.node_id = peer.id;
        config.listen = None;
        let mut cluster = ClusterConfig::new(peers.clone());
        cluster.peer_listen = peer.peer_addr.parse().unwrap();
        config.cluster = Some(cluster);
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
