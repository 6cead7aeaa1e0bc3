//! The `loglogd` processes of one run, each started with `ip netns exec` in
//! its own namespace (so its pid is the node's: signals reach it directly).
//! `Drop` kills every node still running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};
use loglog_proto::entry::EntryIter;
use loglog_proto::segment::{parse_segment_file_name, SEGMENT_HEADER_LEN};

use crate::netns::{run, Network};
use crate::relay::RELAY_PORT;

/// Client port of every node (each has its own address).
pub const CLIENT_PORT: u16 = 7000;
/// Peer port of every node.
pub const PEER_PORT: u16 = 7100;

pub struct Member {
    pub id: u64,
    pub namespace: String,
    pub client_addr: String,
    /// Where the node's peer listener binds.
    pub peer_addr: String,
    /// Where its peers dial it: its relay, which forwards to `peer_addr`.
    pub relay_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    stopped: bool,
}

impl Member {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// A tail segment cut by [`Cluster::truncate_tail`].
pub struct TailCut {
    pub description: String,
    /// (copy of the original, the segment) when something was cut.
    restore: Option<(PathBuf, PathBuf)>,
}

pub struct Cluster {
    loglogd: PathBuf,
    /// Passed to every node after the harness's own flags.
    extra_args: Vec<String>,
    peers_flag: String,
    pub members: Vec<Member>,
}

impl Cluster {
    /// Describes the members (nothing is started).
    pub fn new(network: &Network, loglogd: &Path, extra_args: &[String], root: &Path) -> Cluster {
        let members: Vec<Member> = (0..network.node_count())
            .map(|index| {
                let id = index as u64 + 1;
                let ip = network.node_ip(index);
                Member {
                    id,
                    namespace: network.node_namespace(index).to_string(),
                    client_addr: format!("{ip}:{CLIENT_PORT}"),
                    peer_addr: format!("{ip}:{PEER_PORT}"),
                    relay_addr: format!("{ip}:{RELAY_PORT}"),
                    data_dir: root.join(format!("node{id}")),
                    log_path: root.join(format!("node{id}.log")),
                    child: None,
                    stopped: false,
                }
            })
            .collect();
        let peers_flag = members
            .iter()
            // Peers dial each other through the relays (delay, duplication).
            .map(|m| format!("{}={}@{}", m.id, m.relay_addr, m.client_addr))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            loglogd: loglogd.to_path_buf(),
            extra_args: extra_args.to_vec(),
            peers_flag,
            members,
        }
    }

    pub fn client_addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_addr.clone()).collect()
    }

    pub fn start(&mut self, index: usize) -> Result<()> {
        let member = &mut self.members[index];
        assert!(member.child.is_none(), "node {} already runs", member.id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&member.log_path)
            .with_context(|| format!("cannot open {}", member.log_path.display()))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &member.namespace])
            .arg(&self.loglogd)
            .args(["--id", &member.id.to_string(), "--data-dir"])
            .arg(&member.data_dir)
            .args(["--listen", &member.client_addr])
            .args(["--peer-listen", &member.peer_addr])
            .args(["--peers", &self.peers_flag])
            .args(["--segment-size", "1MiB"])
            // SIGKILL keeps the page cache; with this a kill also loses
            // what the node had not fsynced, as a power cut would.
            .arg("--test-unsynced-lost-on-kill")
            .args(&self.extra_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start loglogd")?;
        member.child = Some(child);
        member.stopped = false;
        Ok(())
    }

    /// SIGKILL every node, then reap them: no node runs on while another
    /// is being reaped (a power cut stops them all at once).
    pub fn kill_all(&mut self) {
        for member in &mut self.members {
            if let Some(child) = &mut member.child {
                let _ = child.kill();
            }
        }
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[index].stopped = false;
    }

    fn signal(&mut self, index: usize, signal: &str) -> Result<()> {
        let Some(child) = &self.members[index].child else {
            return Ok(());
        };
        run("kill", &[signal, &child.id().to_string()]).map(drop)
    }

    pub fn stop(&mut self, index: usize) -> Result<()> {
        self.signal(index, "-STOP")?;
        self.members[index].stopped = self.members[index].child.is_some();
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> Result<()> {
        self.signal(index, "-CONT")?;
        self.members[index].stopped = false;
        Ok(())
    }

    /// Resumes stopped nodes and starts dead ones.
    pub fn revive_all(&mut self) -> Result<()> {
        for index in 0..self.members.len() {
            if self.members[index].stopped {
                self.resume(index)?;
            }
            if !self.members[index].is_running() {
                self.start(index)?;
            }
        }
        Ok(())
    }

    /// A node exited by itself (crash): its exit status, reaped.
    pub fn exited(&mut self, index: usize) -> Option<String> {
        let child = self.members[index].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.members[index].child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// Cuts the tail segment of a stopped (dead) node at a random byte of
    /// its written entries, after copying it to `<segment>.chaos-backup`
    /// next to the data directory; returns what was done and the copy.
    pub fn truncate_tail(&self, index: usize, pick: impl FnOnce(u64) -> u64) -> Result<TailCut> {
        let member = &self.members[index];
        assert!(!member.is_running(), "truncate only a dead node's log");
        let Some((start, path)) = tail_segment(&member.data_dir)? else {
            return Ok(TailCut {
                description: "no segment".to_string(),
                restore: None,
            });
        };
        let backup = member
            .data_dir
            .with_extension(format!("tail-{start}.chaos-backup"));
        std::fs::copy(&path, &backup)?;
        let bytes = std::fs::read(&path)?;
        let body = bytes.get(SEGMENT_HEADER_LEN..).unwrap_or(&[]);
        let mut iter = EntryIter::new(body, start, u32::MAX);
        for entry in iter.by_ref() {
            if entry.is_err() {
                break;
            }
        }
        let written = iter.offset() - start;
        if written == 0 {
            return Ok(TailCut {
                description: format!("{} holds no entry", path.display()),
                restore: None,
            });
        }
        let cut = pick(written);
        let new_len = SEGMENT_HEADER_LEN as u64 + cut;
        File::options().write(true).open(&path)?.set_len(new_len)?;
        Ok(TailCut {
            description: format!(
                "{} cut to {new_len} bytes ({cut} of {written} entry bytes kept)",
                path.display()
            ),
            restore: Some((backup, path)),
        })
    }

    /// Puts a cut segment back as it was (the node must be dead).
    pub fn undo_cut(&self, index: usize, cut: &TailCut) -> Result<()> {
        assert!(
            !self.members[index].is_running(),
            "restore only a dead node's log"
        );
        if let Some((backup, path)) = &cut.restore {
            std::fs::copy(backup, path)?;
        }
        Ok(())
    }

    /// The last few KiB of a node's stderr log.
    pub fn log_tail(&self, index: usize) -> String {
        let bytes = std::fs::read(&self.members[index].log_path).unwrap_or_default();
        let from = bytes.len().saturating_sub(4096);
        String::from_utf8_lossy(&bytes[from..]).into_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}

/// The segment file with the highest start offset under `dir` (searched
/// two levels deep).
fn tail_segment(dir: &Path) -> Result<Option<(u64, PathBuf)>> {
    let mut best: Option<(u64, PathBuf)> = None;
    let mut pending = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 2 {
                pending.push((path, depth + 1));
            } else if let Some(start) = entry.file_name().to_str().and_then(parse_segment_file_name)
            {
                if best.as_ref().is_none_or(|(best, _)| start > *best) {
                    best = Some((start, path));
                }
            }
        }
    }
    Ok(best)
}
