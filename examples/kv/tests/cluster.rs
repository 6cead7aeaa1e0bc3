//! The KV example against a real 3-node cluster of `loglogd` processes
//! (loopback, free ports): two instances write concurrently while the
//! leader is SIGKILLed; afterwards every acknowledged write is visible in
//! both instances, both hold identical state, and a restarted instance
//! resumes from its snapshot without re-applying anything.
//!
//! `loglogd` is a binary of another package, so cargo does not hand its
//! path to this test: it is built into the same target directory first
//! (`cargo build -p loglogd --bin loglogd`, a no-op when up to date).

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loglog::{Client, Role};
use loglog_kv::Kv;

fn loglogd_binary() -> PathBuf {
    // This test runs from <target>/<profile>/deps/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "-p", "loglogd", "--bin", "loglogd"])
        .env("CARGO_TARGET_DIR", target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir
        .file_name()
        .is_some_and(|name| name == "release")
    {
        build.arg("--release");
    }
    let status = build.status().expect("cannot run cargo to build loglogd");
    assert!(status.success(), "cargo build -p loglogd failed: {status}");
    let binary = profile_dir.join(format!("loglogd{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.exists(), "{} was not built", binary.display());
    binary
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
    binary: PathBuf,
    members: Vec<Member>,
    peers_flag: String,
}

impl Cluster {
    fn new(root: &Path) -> Cluster {
        let members: Vec<Member> = (1..=3)
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
            binary: loglogd_binary(),
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
        let child = Command::new(&self.binary)
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

    fn addresses(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for member in &self.members {
            text.push_str(&format!("----- node {} -----\n", member.id));
            text.push_str(&std::fs::read_to_string(&member.log).unwrap_or_default());
        }
        text
    }

    /// Waits until a running node reports itself leader; returns its index.
    async fn wait_for_leader(&self, running: &[usize]) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for &index in running {
                let addr = self.members[index].client.to_string();
                if let Ok(client) = Client::connect(&[&addr]).await {
                    if let Ok(status) = client.status().await {
                        if status.role == Role::Leader {
                            return index;
                        }
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "no leader elected\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
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

/// Puts `prefix-i = value-i` for i in 0..count, retrying each put until it
/// is acknowledged (a put is idempotent, so retrying an indeterminate one is
/// safe). Returns the acknowledged pairs.
async fn write_all(kv: Arc<Kv>, prefix: &'static str, count: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut acknowledged = BTreeMap::new();
    for i in 0..count {
        let key = format!("{prefix}-{i}").into_bytes();
        let value = format!("value-{i}").into_bytes();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match kv.put(&key, &value).await {
                Ok(()) => break,
                Err(error) => {
                    assert!(
                        Instant::now() < deadline,
                        "put {prefix}-{i} never acknowledged: {error}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        acknowledged.insert(key, value);
    }
    acknowledged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_instances_converge_through_a_leader_kill_and_resume_from_snapshots() {
    let root = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::new(root.path());
    for index in 0..3 {
        cluster.start(index);
    }
    let leader = cluster.wait_for_leader(&[0, 1, 2]).await;
    let addresses = cluster.addresses();
    let a = Arc::new(
        Kv::open(&addresses, &root.path().join("a"), 50)
            .await
            .unwrap(),
    );
    let b = Arc::new(
        Kv::open(&addresses, &root.path().join("b"), 50)
            .await
            .unwrap(),
    );

    let writes_a = tokio::spawn(write_all(Arc::clone(&a), "a", 300));
    let writes_b = tokio::spawn(write_all(Arc::clone(&b), "b", 300));
    // SIGKILL the leader in the middle of the writes.
    while a.applied_commands().await < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.kill(leader);
    let applied_at_kill = a.applied_commands().await;
    assert!(applied_at_kill < 600, "the leader died during the writes");
    let acknowledged_a = writes_a.await.unwrap();
    let acknowledged_b = writes_b.await.unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    cluster.wait_for_leader(&survivors).await;

    let state_a = a.dump().await.unwrap();
    let state_b = b.dump().await.unwrap();
    assert_eq!(state_a, state_b, "both instances hold identical state");
    for (key, value) in acknowledged_a.iter().chain(&acknowledged_b) {
        assert_eq!(state_a.get(key), Some(value), "acknowledged write lost");
    }
    assert_eq!(state_a.len(), 600);
    assert_eq!(a.applied_commands().await, b.applied_commands().await);
    println!(
        "KV: {applied_at_kill} of 600 commands applied when the leader was killed; \
         every acknowledged write survived"
    );

    // Restart b: it resumes from its snapshot, without re-applying.
    let applied = b.applied_commands().await;
    let snapshot_at = b.snapshot_position().await;
    assert!(snapshot_at > 0, "periodic snapshots were taken");
    let applied_at_snapshot = {
        drop(b);
        let restarted = Kv::open(&addresses, &root.path().join("b"), 50)
            .await
            .unwrap();
        assert_eq!(restarted.position().await, snapshot_at);
        let at_snapshot = restarted.applied_commands().await;
        restarted.sync().await.unwrap();
        assert_eq!(
            restarted.applied_commands().await,
            applied,
            "nothing applied twice"
        );
        assert_eq!(restarted.dump().await.unwrap(), state_a);
        at_snapshot
    };
    assert!(applied_at_snapshot <= applied);
}
