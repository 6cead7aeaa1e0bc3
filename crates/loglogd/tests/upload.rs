//! Client-side upload on embedded cluster members: entries replicated by
//! digest when the followers hold the upload, and raw when they do not
//! (nothing uploaded, followers restarted in between, an upload whose
//! bytes do not match its digest). In every case the committed logs are
//! byte for byte the same on every member.

use std::time::{Duration, Instant};

use bytes::Bytes;
use loglog_proto::upload::digest;
use loglogd::{Config, Node, Role, ServerError};

mod common;

struct Cluster {
    _root: tempfile::TempDir,
    configs: Vec<Config>,
    nodes: Vec<Node>,
}

impl Cluster {
    async fn start() -> Cluster {
        let root = tempfile::tempdir().unwrap();
        let configs = common::embedded_cluster_configs(root.path(), 3);
        let mut nodes = Vec::new();
        for config in &configs {
            nodes.push(Node::start(config.clone()).await.unwrap());
        }
        Cluster {
            _root: root,
            configs,
            nodes,
        }
    }

    async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(leader) = self
                .nodes
                .iter()
                .position(|n| n.status().role == Role::Leader)
            {
                return leader;
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn followers(&self, leader: usize) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| i != leader).collect()
    }

    /// Every member's whole committed log, raw, once all hold `end`.
    async fn assert_logs_identical(&self, end: u64) -> Vec<u8> {
        let mut logs = Vec::new();
        for node in &self.nodes {
            let deadline = Instant::now() + Duration::from_secs(10);
            while node.commit_offset() < end {
                assert!(Instant::now() < deadline, "a member never reached {end}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut log = Vec::new();
            let mut at = 0;
            while at < end {
                let chunk = node.read(at, 1 << 20, Duration::ZERO).await.unwrap();
                log.extend_from_slice(&chunk.bytes);
                at = chunk.next_offset();
            }
            log.truncate(end as usize);
            logs.push(log);
        }
        assert!(logs.iter().all(|log| log == &logs[0]), "logs differ");
        logs.swap_remove(0)
    }

    async fn shutdown(self) {
        for node in &self.nodes {
            node.shutdown().await;
        }
    }
}

/// Starts a node again once its stopped self released its ports.
async fn restart(config: &Config) -> Node {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Node::start(config.clone()).await {
            Ok(node) => return node,
            Err(loglogd::StartError::Listen { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("restart failed: {error}"),
        }
    }
}

fn payload(i: u32) -> Bytes {
    let mut bytes = vec![(i % 251) as u8; 64 * 1024];
    bytes[..4].copy_from_slice(&i.to_le_bytes());
    Bytes::from(bytes)
}

/// The data payloads of `log`, in order.
fn data_payloads(log: &[u8]) -> Vec<Vec<u8>> {
    loglog_proto::entry::EntryIter::new(log, 0, u32::MAX)
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.header.kind == loglog_proto::EntryKind::Data)
        .map(|entry| entry.payload.to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_entries_go_by_digest_and_the_leader_sends_almost_no_payload() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let leader_node = &cluster.nodes[leader];
    let before = leader_node.cluster_status().await.unwrap().peer_bytes_sent;
    let count = 40u32;
    for i in 0..count {
        let payload = payload(i);
        for follower in cluster.followers(leader) {
            cluster.nodes[follower]
                .upload(digest(&payload), payload.clone())
                .unwrap();
        }
        leader_node.append_uploaded(payload).await.unwrap();
    }
    let end = leader_node.commit_offset();
    let log = cluster.assert_logs_identical(end).await;
    assert_eq!(
        data_payloads(&log),
        (0..count).map(|i| payload(i).to_vec()).collect::<Vec<_>>()
    );
    let sent = leader_node.cluster_status().await.unwrap().peer_bytes_sent - before;
    let appended = u64::from(count) * 64 * 1024;
    assert!(
        sent * 10 < appended,
        "the leader sent {sent} peer bytes for {appended} payload bytes"
    );
    for follower in cluster.followers(leader) {
        let (rebuilt, missed) = cluster.nodes[follower].upload_counters();
        assert_eq!((rebuilt, missed), (u64::from(count), 0));
        // The same counts as Prometheus series (upload cache hits, misses).
        let text = cluster.nodes[follower].render_metrics().await;
        for line in [
            format!("loglog_upload_rebuilt_entries_total {count}"),
            "loglog_upload_missed_messages_total 0".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_upload_missing_the_followers_get_the_leaders_bytes() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    for i in 0..20 {
        cluster.nodes[leader]
            .append_uploaded(payload(i))
            .await
            .unwrap();
    }
    let end = cluster.nodes[leader].commit_offset();
    let log = cluster.assert_logs_identical(end).await;
    assert_eq!(data_payloads(&log).len(), 20);
    let missed: u64 = cluster
        .followers(leader)
        .iter()
        .map(|&f| cluster.nodes[f].upload_counters().1)
        .sum();
    assert!(missed > 0, "the followers were asked by digest");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_restarted_between_upload_and_append_fall_back() {
    let mut cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let payloads: Vec<Bytes> = (0..10).map(payload).collect();
    for follower in cluster.followers(leader) {
        for payload in &payloads {
            cluster.nodes[follower]
                .upload(digest(payload), payload.clone())
                .unwrap();
        }
    }
    // Restart the followers: their caches are gone.
    for follower in cluster.followers(leader) {
        cluster.nodes[follower].shutdown().await;
        cluster.nodes[follower] = restart(&cluster.configs[follower]).await;
    }
    let leader = cluster.leader().await;
    for payload in &payloads {
        cluster.nodes[leader]
            .append_uploaded(payload.clone())
            .await
            .unwrap();
    }
    let end = cluster.nodes[leader].commit_offset();
    let log = cluster.assert_logs_identical(end).await;
    assert_eq!(
        data_payloads(&log),
        payloads.iter().map(|p| p.to_vec()).collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_does_not_match_its_digest_is_refused_and_never_written() {
    let cluster = Cluster::start().await;
    let leader = cluster.leader().await;
    let honest = payload(1);
    let forged = payload(2);
    for follower in cluster.followers(leader) {
        // The bytes of one payload under the digest of another.
        assert!(matches!(
            cluster.nodes[follower].upload(digest(&honest), forged.clone()),
            Err(ServerError::BadRequest { .. })
        ));
    }
    cluster.nodes[leader]
        .append_uploaded(honest.clone())
        .await
        .unwrap();
    let end = cluster.nodes[leader].commit_offset();
    let log = cluster.assert_logs_identical(end).await;
    assert_eq!(data_payloads(&log), vec![honest.to_vec()]);
    cluster.shutdown().await;
}
