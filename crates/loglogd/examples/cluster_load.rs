//! Append throughput of a replicated cluster (not a test): starts `nodes`
//! embedded cluster members in one process (real files, fsync, loopback
//! TCP between them), waits for a leader and drives it with `appenders`
//! concurrent embedded appends, each waiting for commit (quorum fsync).
//!
//! ```text
//! cargo run --release -p loglogd --example cluster_load -- [appenders=64] [payload=128] [seconds=5] [nodes=3]
//! ```
//! `nodes=0` runs a plain single node (the group-commit pipeline, no
//! consensus core) under the same load, for comparison with `nodes=1`.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loglogd::cluster::{ClusterConfig, PeerSpec};
use loglogd::{Config, Node, Role};

fn free_addr() -> Result<SocketAddr, std::io::Error> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |index: usize, default: u64| -> u64 {
        args.get(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let appenders = arg(0, 64) as usize;
    let payload_len = arg(1, 128) as usize;
    let seconds = arg(2, 5);
    let size = arg(3, 3);

    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let mut peers = Vec::new();
    for id in 1..=size {
        peers.push(PeerSpec {
            id,
            peer_addr: free_addr()?.to_string(),
            client_addr: free_addr()?.to_string(),
        });
    }
    let mut nodes = Vec::new();
    if size == 0 {
        let mut config = Config::new(dir.path().join("single"));
        config.listen = None;
        nodes.push(Node::start(config).await?);
    }
    for peer in &peers {
        let mut config = Config::new(dir.path().join(format!("node{}", peer.id)));
        config.node_id = peer.id;
        config.listen = None; // embedded
        let mut cluster = ClusterConfig::new(peers.clone());
        cluster.peer_listen = peer.peer_addr.parse()?;
        config.cluster = Some(cluster);
        nodes.push(Node::start(config).await?);
    }
    let leader = loop {
        if let Some(leader) = nodes.iter().find(|node| node.status().role == Role::Leader) {
            break leader.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!("leader: node {}", leader.status().node_id);

    let payload = bytes::Bytes::from(vec![0x5a; payload_len]);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..appenders {
        let (leader, payload, done, stop) =
            (leader.clone(), payload.clone(), done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                leader.append(payload.clone()).await.expect("append");
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let started = Instant::now();
    let before = leader.metrics();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let appended = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let after = leader.metrics();
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await?;
    }
    let rate = appended as f64 / elapsed;
    println!(
        "{}, {appenders} appenders, {payload_len} B, fsync always: {rate:.0} committed appends/s ({:.1} MB/s of payload), leader: {} writes, {} fsyncs",
        if size == 0 {
            "single node (no consensus)".to_string()
        } else {
            format!("{size} nodes")
        },
        rate * payload_len as f64 / 1e6,
        after.write_batches - before.write_batches,
        after.syncs - before.syncs,
    );
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
