//! Upload mode of the client against a real 3-member cluster (embedded
//! `loglogd` nodes serving TCP): appends are uploaded to the followers and
//! replicated by digest; a dead follower does not stop appends.

use std::time::{Duration, Instant};

use loglog::{Client, UploadConfig};
use loglogd::cluster::{ClusterConfig, PeerSpec};
use loglogd::{Config, Node, Role};

/// A loopback address from a per-process sequence below the ephemeral
/// range (as `loglogd`'s tests do), so no other socket takes it between
/// this call and the node's bind.
fn free_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919).wrapping_add(6007) % SPAN;
    loop {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

struct Cluster {
    _root: tempfile::TempDir,
    nodes: Vec<Node>,
    client_addrs: Vec<String>,
}

async fn start_cluster() -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let peers: Vec<PeerSpec> = (1..=3)
        .map(|id| PeerSpec {
            id,
            peer_addr: free_addr().to_string(),
            client_addr: free_addr().to_string(),
        })
        .collect();
    let mut nodes = Vec::new();
    for peer in &peers {
        let mut config = Config::new(root.path().join(format!("node{}", peer.id)));
        config.node_id = peer.id;
        config.listen = Some(peer.client_addr.parse().unwrap());
        let mut cluster = ClusterConfig::new(peers.clone());
        cluster.peer_listen = peer.peer_addr.parse().unwrap();
        config.cluster = Some(cluster);
        nodes.push(Node::start(config).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nodes.iter().any(|n| n.status().role == Role::Leader) {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Cluster {
        _root: root,
        nodes,
        client_addrs: peers.iter().map(|p| p.client_addr.clone()).collect(),
    }
}

fn payload(i: u32) -> Vec<u8> {
    let mut bytes = vec![(i % 253) as u8; 64 * 1024];
    bytes[..4].copy_from_slice(&i.to_le_bytes());
    bytes
}

/// Reads every data payload from each member: all the same, and `expected`.
async fn assert_every_member_holds(cluster: &Cluster, expected: &[Vec<u8>]) {
    for addr in &cluster.client_addrs {
        let client = Client::connect(&[addr]).await.unwrap();
        let mut at = 0;
        let mut payloads = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while payloads.len() < expected.len() {
            assert!(Instant::now() < deadline, "{addr} never caught up");
            let page = client
                .read(at, 1 << 20, Duration::from_millis(100))
                .await
                .unwrap();
            payloads.extend(page.entries().map(|entry| entry.payload.to_vec()));
            at = page.next_offset();
        }
        assert_eq!(payloads, expected, "{addr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_appends_are_replicated_by_digest() {
    let cluster = start_cluster().await;
    let client = Client::connect(&cluster.client_addrs).await.unwrap();
    // Room for every upload of the test at once: with the default bound
    // (2 MiB, 32 uploads of a little over 64 KiB) a slow machine that has
    // not answered the first uploads yet skips the last ones, by design.
    let config = UploadConfig {
        max_queued_bytes: 8 * 1024 * 1024,
        ..UploadConfig::default()
    };
    client.enable_upload(config).await.unwrap();
    let leader = cluster
        .nodes
        .iter()
        .position(|n| n.status().role == Role::Leader)
        .unwrap();
    let before = cluster.nodes[leader]
        .cluster_status()
        .await
        .unwrap()
        .peer_bytes_sent;
    let expected: Vec<Vec<u8>> = (0..32).map(payload).collect();
    // Pipelined, like a writer that keeps many appends in flight.
    let mut pending = Vec::new();
    for bytes in &expected {
        pending.push(client.submit_append(bytes.clone(), false).await.unwrap());
    }
    for append in pending {
        append.wait().await.unwrap();
    }
    assert_every_member_holds(&cluster, &expected).await;
    let stats = client.upload_stats().unwrap();
    assert_eq!(stats.sent, 2 * 32, "{stats:?}");
    let rebuilt: u64 = cluster.nodes.iter().map(|n| n.upload_counters().0).sum();
    assert!(
        rebuilt >= 32,
        "only {rebuilt} entries were rebuilt from uploads"
    );
    let sent = cluster.nodes[leader]
        .cluster_status()
        .await
        .unwrap()
        .peer_bytes_sent
        - before;
    // Without upload the leader sends each payload twice (2 MiB here).
    assert!(sent < 1024 * 1024, "the leader sent {sent} peer bytes");
    for node in &cluster.nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_follower_does_not_stop_uploaded_appends() {
    let cluster = start_cluster().await;
    let client = Client::connect(&cluster.client_addrs).await.unwrap();
    client.enable_upload(UploadConfig::default()).await.unwrap();
    let leader = cluster
        .nodes
        .iter()
        .position(|n| n.status().role == Role::Leader)
        .unwrap();
    let dead = (leader + 1) % 3;
    cluster.nodes[dead].shutdown().await;
    let expected: Vec<Vec<u8>> = (0..16).map(payload).collect();
    for bytes in &expected {
        client.append(bytes.clone()).await.unwrap();
    }
    let stats = client.upload_stats().unwrap();
    assert!(stats.skipped > 0, "{stats:?}");
    let alive: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let survivors = Cluster {
        _root: tempfile::tempdir().unwrap(),
        nodes: Vec::new(),
        client_addrs: alive
            .iter()
            .map(|&i| cluster.client_addrs[i].clone())
            .collect(),
    };
    assert_every_member_holds(&survivors, &expected).await;
    for &i in &alive {
        cluster.nodes[i].shutdown().await;
    }
}
