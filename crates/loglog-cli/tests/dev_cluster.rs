//! `loglog dev-cluster`: the real binary starts three real `loglogd`
//! processes; the test appends and reads through the printed cluster value,
//! kills the leader, reads again, and checks that SIGINT stops every node.
//!
//! `loglogd` is a binary of another package, so cargo does not hand its
//! path to this test. `LOGLOGD` names one; else the `loglogd` next to
//! `loglog` in the target directory is used, where `loglog dev-cluster`
//! finds it itself (`cargo test --workspace` has just built it, with the
//! workspace's features); else it is built there first (`cargo build -p
//! loglogd --bin loglogd`). Rebuilding an existing one is avoided: with
//! other features it would replace the binary other suites use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// The `loglogd` for `dev-cluster --loglogd` (see the module docs).
fn loglogd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LOGLOGD") {
        return PathBuf::from(path);
    }
    let loglog = Path::new(env!("CARGO_BIN_EXE_loglog"));
    let profile_dir = loglog.parent().expect("loglog lives in a directory");
    let beside = profile_dir.join(format!("loglogd{}", std::env::consts::EXE_SUFFIX));
    if beside.is_file() {
        return beside;
    }
    let target_dir = profile_dir
        .parent()
        .expect("the profile directory has a parent");
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
    assert!(beside.is_file(), "{} was not built", beside.display());
    beside
}

fn loglog(cluster: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loglog"))
        .args(["--cluster", cluster])
        .args(args)
        .env_remove("LOGLOG_CLUSTER")
        .output()
        .unwrap()
}

fn ok(cluster: &str, args: &[&str]) -> String {
    let output = loglog(cluster, args);
    assert!(output.status.success(), "loglog {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn is_running(pid: i32) -> bool {
    // Signal 0 checks that the process exists. A zombie would still count,
    // but dev-cluster reaps its nodes, so a stopped node leaves no trace.
    let pid = Pid::from_raw(pid).expect("pids are positive");
    rustix::process::test_kill_process(pid).is_ok()
}

/// Kills the dev-cluster command and whatever nodes are left if the test
/// fails half way.
struct Cleanup {
    command: Child,
    node_pids: Vec<i32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.command.kill();
        let _ = self.command.wait();
        for pid in &self.node_pids {
            if let Some(pid) = Pid::from_raw(*pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

#[test]
fn dev_cluster_serves_survives_a_leader_kill_and_stops_every_node() {
    let loglogd = loglogd_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_loglog"))
        .args(["dev-cluster", "--nodes", "3", "--loglogd"])
        .arg(&loglogd)
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = command.stdout.take().unwrap();
    let mut cleanup = Cleanup {
        command,
        node_pids: Vec::new(),
    };
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });

    // cluster:, three node lines, leader:.
    let mut cluster = String::new();
    let mut nodes = Vec::new(); // (id, pid, client address)
    let mut leader_id = 0;
    while leader_id == 0 {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("dev-cluster printed no leader line within 60 s");
        if let Some(value) = line.strip_prefix("cluster: ") {
            cluster = value.to_string();
        } else if let Some(rest) = line.strip_prefix("node ") {
            // node N: pid P, client ADDR, peer ADDR, data DIR, log FILE
            let (id, rest) = rest.split_once(": pid ").unwrap();
            let (pid, rest) = rest.split_once(", client ").unwrap();
            let (client, rest) = rest.split_once(", peer ").unwrap();
            let id: u64 = id.parse().unwrap();
            let pid: i32 = pid.parse().unwrap();
            assert!(rest.contains(&format!("node{id}.log")), "{line}");
            nodes.push((id, pid, client.to_string()));
            cleanup.node_pids.push(pid);
        } else if let Some(rest) = line.strip_prefix("leader: node ") {
            leader_id = rest.split_once(' ').unwrap().0.parse().unwrap();
        } else {
            panic!("unexpected line on stdout: {line}");
        }
    }
    assert_eq!(nodes.len(), 3);
    let clients: Vec<&str> = nodes.iter().map(|(_, _, client)| client.as_str()).collect();
    assert_eq!(cluster, clients.join(","));
    for (id, pid, _) in &nodes {
        assert!(is_running(*pid), "node {id} is not running");
        assert!(dir.path().join(format!("node{id}")).is_dir());
        assert!(dir.path().join(format!("node{id}.log")).is_file());
    }

    assert_eq!(ok(&cluster, &["append", "one", "two"]).lines().count(), 2);
    // Linearizable: a plain read may be answered by a follower that has
    // not yet learned the latest commit offset.
    assert_eq!(
        ok(&cluster, &["read", "--from", "0", "--linearizable"]),
        "one\ntwo\n"
    );

    // Kill the leader: the cluster elects another, appends and reads go on.
    let (_, leader_pid, _) = nodes.iter().find(|(id, ..)| *id == leader_id).unwrap();
    kill_process(Pid::from_raw(*leader_pid).unwrap(), Signal::KILL).unwrap();
    // An append sent while the dead leader's socket is half gone fails as
    // indeterminate (rightly: the client cannot know whether it landed), so
    // the test waits for the new leader first, as a person would.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statuses: serde_json::Value =
            serde_json::from_slice(&loglog(&cluster, &["status", "--json"]).stdout).unwrap();
        let new_leader =
            statuses.as_array().unwrap().iter().any(|node| {
                node["role"] == "leader" && node["node_id"].as_u64() != Some(leader_id)
            });
        if new_leader {
            break;
        }
        assert!(Instant::now() < deadline, "no new leader: {statuses}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ok(&cluster, &["append", "three"]).lines().count(), 1);
    // A linearizable read sees it at once, whichever node is asked first.
    assert_eq!(
        ok(&cluster, &["read", "--from", "0", "--linearizable"]),
        "one\ntwo\nthree\n"
    );
    let survivor = nodes.iter().find(|(id, ..)| *id != leader_id).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A follower serves its committed prefix, which may lag for a moment.
    loop {
        let text = ok(&survivor.2, &["read", "--from", "0"]);
        if text == "one\ntwo\nthree\n" {
            break;
        }
        assert!(Instant::now() < deadline, "survivor reads {text:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // SIGINT stops every node this command started, and it exits 0.
    let pid = Pid::from_raw(cleanup.command.id() as i32).unwrap();
    kill_process(pid, Signal::INT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = cleanup.command.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "dev-cluster did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    for (id, pid, _) in &nodes {
        assert!(!is_running(*pid), "node {id} (pid {pid}) still runs");
    }
    // The survivors stopped cleanly (SIGTERM), not killed.
    for (id, ..) in nodes.iter().filter(|(id, ..)| *id != leader_id) {
        let log = std::fs::read_to_string(dir.path().join(format!("node{id}.log"))).unwrap();
        assert!(log.contains("node stopped"), "node {id}: {log}");
    }
}
