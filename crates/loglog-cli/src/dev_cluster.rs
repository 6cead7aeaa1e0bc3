//! `loglog dev-cluster`: a local cluster of `loglogd` processes on loopback,
//! for trying things out.
//!
//! Every node is a real `loglogd` child process with its own data directory
//! and log file under one directory. The command prints the `--cluster`
//! value and each node's pid and addresses on stdout (a public contract, see
//! the crate README), waits for a leader, then runs until SIGINT, SIGTERM or
//! SIGHUP and stops every node it started. Nodes are also stopped when the
//! command fails or panics (a guard's `Drop`), and the kernel sends each one
//! SIGTERM if this process dies without cleaning up (`PR_SET_PDEATHSIG`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use loglog::{ClientConfig, Role};
use tokio::signal::unix::{signal, SignalKind};

/// Name of the file in the cluster directory that keeps the `--peers`
/// value, so the same directory can be started again with the same ports.
const PEERS_FILE: &str = "peers";
/// Node `i` listens for peers on its client port plus this.
const PEER_PORT_OFFSET: u16 = 100;
/// How long the nodes have to elect a leader.
const ELECTION_WAIT: Duration = Duration::from_secs(30);
/// How long a node has to stop after SIGTERM before it is killed.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// How often the nodes' processes are checked while the cluster runs.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// Start a local cluster of loglogd processes on loopback; Ctrl-C stops it.
///
/// Prints `cluster: ADDR,ADDR,...` (the value for `--cluster` or
/// `LOGLOG_CLUSTER`), one `node N: ...` line per node, and `leader: ...`
/// once one is elected.
#[derive(Args, Debug)]
pub struct DevClusterArgs {
    /// Number of nodes: 1, 3 or 5.
    #[arg(long, default_value_t = 3, value_parser = parse_node_count)]
    nodes: u16,

    /// Directory for the nodes' data (D/nodeN) and logs (D/nodeN.log);
    /// created if missing, kept after exit. Default: a fresh temp directory.
    #[arg(long, value_name = "D")]
    dir: Option<PathBuf>,

    /// Ports: node N serves clients on P+N-1 and peers on P+100+N-1.
    /// Default: free ports picked by the system (a directory started before
    /// reuses its ports).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u16).range(1..))]
    base_port: Option<u16>,

    /// The loglogd binary. Default: `loglogd` next to this executable, else
    /// on PATH.
    #[arg(long, value_name = "PATH")]
    loglogd: Option<PathBuf>,
}

fn parse_node_count(text: &str) -> Result<u16, String> {
    match text.trim() {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        other => Err(format!(
            "{other:?} nodes: a dev cluster has 1, 3 or 5 nodes"
        )),
    }
}

/// One member's addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    id: u16,
    client: SocketAddr,
    peer: SocketAddr,
}

/// The `--peers` value of `members` (`ID=PEER@CLIENT,...`).
fn peers_value(members: &[Member]) -> String {
    members
        .iter()
        .map(|member| format!("{}={}@{}", member.id, member.peer, member.client))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a `--peers` value written by [`peers_value`].
fn parse_peers_value(text: &str) -> Result<Vec<Member>, String> {
    let mut members = Vec::new();
    for item in text.trim().split(',') {
        let parse = || -> Option<Member> {
            let (id, addresses) = item.split_once('=')?;
            let (peer, client) = addresses.split_once('@')?;
            Some(Member {
                id: id.parse().ok()?,
                peer: peer.parse().ok()?,
                client: client.parse().ok()?,
            })
        };
        members.push(parse().ok_or_else(|| format!("bad member {item:?}"))?);
    }
    Ok(members)
}

/// Members on consecutive ports from `base` (see `--base-port`).
fn members_from_base(nodes: u16, base: u16) -> anyhow::Result<Vec<Member>> {
    let last_peer_port = u32::from(base) + u32::from(PEER_PORT_OFFSET) + u32::from(nodes) - 1;
    if last_peer_port > u32::from(u16::MAX) {
        bail!("--base-port {base} is too high: {nodes} nodes need ports up to {last_peer_port}");
    }
    Ok((1..=nodes)
        .map(|id| Member {
            id,
            client: loopback(base + id - 1),
            peer: loopback(base + PEER_PORT_OFFSET + id - 1),
        })
        .collect())
}

/// Members on free ports picked by the system: all listeners are held open
/// together so no two members get the same port.
fn members_on_free_ports(nodes: u16) -> anyhow::Result<Vec<Member>> {
    let mut listeners = Vec::new();
    for _ in 0..2 * nodes {
        listeners.push(TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?);
    }
    let mut ports = Vec::new();
    for listener in &listeners {
        ports.push(listener.local_addr()?.port());
    }
    Ok((1..=nodes)
        .map(|id| {
            let index = usize::from(id - 1);
            Member {
                id,
                client: loopback(ports[index]),
                peer: loopback(ports[usize::from(nodes) + index]),
            }
        })
        .collect())
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The `loglogd` to run: `--loglogd`, else next to this executable, else
/// the first on PATH.
fn find_loglogd(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--loglogd {}: no such file", path.display());
    }
    let name = format!("loglogd{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    if let Some(path) = beside.as_ref().filter(|path| path.is_file()) {
        return Ok(path.clone());
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(path) = on_path
        .iter()
        .map(|dir| dir.join(&name))
        .find(|path| path.is_file())
    {
        return Ok(path);
    }
    let beside = beside.map_or_else(
        || "this executable".to_string(),
        |path| path.display().to_string(),
    );
    bail!(
        "cannot find the loglogd binary: not at {beside} nor on PATH \
         (build it with `cargo build --bin loglogd`, or pass --loglogd PATH)"
    )
}

/// The cluster directory and the members to start in it: a directory
/// started before keeps its ports (the cluster id is derived from them).
fn prepare_directory(args: &DevClusterArgs) -> anyhow::Result<(PathBuf, Vec<Member>)> {
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            dir.clone()
        }
        None => std::env::temp_dir().join(format!(
            "loglog-dev-cluster-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis())
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    let peers_file = dir.join(PEERS_FILE);
    let members = match std::fs::read_to_string(&peers_file) {
        Ok(text) => {
            let members = parse_peers_value(&text)
                .map_err(|error| anyhow::anyhow!("{}: {error}", peers_file.display()))?;
            if members.len() != usize::from(args.nodes) {
                bail!(
                    "{} holds a cluster of {} nodes, not {}: use another --dir",
                    dir.display(),
                    members.len(),
                    args.nodes
                );
            }
            if let Some(base) = args.base_port {
                if members != members_from_base(args.nodes, base)? {
                    bail!(
                        "{} holds a cluster on other ports ({}): use another --dir or drop --base-port",
                        dir.display(),
                        peers_value(&members)
                    );
                }
            }
            members
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let members = match args.base_port {
                Some(base) => members_from_base(args.nodes, base)?,
                None => members_on_free_ports(args.nodes)?,
            };
            std::fs::write(&peers_file, format!("{}\n", peers_value(&members)))
                .with_context(|| format!("cannot write {}", peers_file.display()))?;
            members
        }
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", peers_file.display()))
        }
    };
    Ok((dir, members))
}

/// A started node.
struct RunningNode {
    member: Member,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Child,
    /// Set once the process is known to have exited.
    exited: Option<ExitStatus>,
}

/// Every node this command started; dropping it stops them all.
struct Nodes(Vec<RunningNode>);

impl Nodes {
    /// Checks every running node; returns the ones that exited since the
    /// last call.
    fn newly_exited(&mut self) -> Vec<(u16, ExitStatus, PathBuf)> {
        let mut exited = Vec::new();
        for node in &mut self.0 {
            if node.exited.is_some() {
                continue;
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                node.exited = Some(status);
                exited.push((node.member.id, status, node.log_path.clone()));
            }
        }
        exited
    }

    fn all_exited(&self) -> bool {
        self.0.iter().all(|node| node.exited.is_some())
    }

    /// SIGTERM to every running node (a clean stop: in-flight appends
    /// finish, the log is fsynced), then waits; a node still running after
    /// [`STOP_WAIT`] is killed.
    fn stop(&mut self) {
        for node in &mut self.0 {
            if node.exited.is_none() {
                let pid = rustix::process::Pid::from_child(&node.child);
                // The only failure is a process already gone (ESRCH).
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + STOP_WAIT;
        for node in &mut self.0 {
            while node.exited.is_none() {
                match node.child.try_wait() {
                    Ok(Some(status)) => node.exited = Some(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = node.child.kill();
                        node.exited = node.child.wait().ok();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `loglogd` for `member`, its stdout and stderr appended to its log.
fn spawn_node(
    loglogd: &Path,
    dir: &Path,
    member: &Member,
    peers: &str,
) -> anyhow::Result<RunningNode> {
    let data_dir = dir.join(format!("node{}", member.id));
    let log_path = dir.join(format!("node{}.log", member.id));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open {}", log_path.display()))?;
    let mut command = Command::new(loglogd);
    command
        .arg("--id")
        .arg(member.id.to_string())
        .arg("--data-dir")
        .arg(&data_dir)
        .arg("--listen")
        .arg(member.client.to_string())
        .arg("--peer-listen")
        .arg(member.peer.to_string())
        .arg("--peers")
        .arg(peers)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal reaches this
        // command only, which then stops each node once, cleanly.
        .process_group(0);
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes two raw system calls (no allocation, no locks).
    unsafe {
        command.pre_exec(move || {
            // If this process dies without stopping the node (SIGKILL), the
            // kernel sends the node SIGTERM. The signal follows the thread
            // that forked: `run` spawns from the main thread, which lives
            // as long as the process.
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))?;
            // The parent may have died before the line above took effect.
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", loglogd.display()))?;
    Ok(RunningNode {
        member: member.clone(),
        data_dir,
        log_path,
        child,
        exited: None,
    })
}

/// The last lines of a node's log, for error messages.
fn log_tail(path: &Path) -> String {
    const TAIL_BYTES: u64 = 2048;
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let len = file.metadata().map_or(0, |meta| meta.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.take(TAIL_BYTES).read_to_end(&mut bytes);
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    let lines: Vec<&str> = lines.into_iter().rev().collect();
    lines.join(" | ")
}

/// The leader, once some node says it is one: (node id, term).
async fn find_leader(members: &[Member]) -> Option<(u64, u64)> {
    let config = ClientConfig {
        connect_timeout: Duration::from_millis(500),
        ..crate::client_config()
    };
    for member in members {
        let addr = member.client.to_string();
        let query = async {
            let client = loglog::Client::connect_with(&[&addr], config.clone()).await?;
            client.status().await
        };
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(1), query).await {
            if status.role == Role::Leader {
                return Some((status.node_id, status.term));
            }
        }
    }
    None
}

pub async fn run(args: DevClusterArgs) -> anyhow::Result<()> {
    // Handlers first: a signal during startup still stops what started.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;

    let loglogd = find_loglogd(args.loglogd.as_deref())?;
    let (dir, members) = prepare_directory(&args)?;
    let peers = peers_value(&members);
    let mut nodes = Nodes(Vec::with_capacity(members.len()));
    for member in &members {
        nodes.0.push(spawn_node(&loglogd, &dir, member, &peers)?);
    }

    let cluster: Vec<String> = members.iter().map(|m| m.client.to_string()).collect();
    println!("cluster: {}", cluster.join(","));
    for node in &nodes.0 {
        println!(
            "node {}: pid {}, client {}, peer {}, data {}, log {}",
            node.member.id,
            node.child.id(),
            node.member.client,
            node.member.peer,
            node.data_dir.display(),
            node.log_path.display()
        );
    }

    let deadline = Instant::now() + ELECTION_WAIT;
    let (leader, term) = loop {
        if let Some((id, status, log)) = nodes.newly_exited().into_iter().next() {
            bail!(
                "node {id} exited ({status}) before a leader was elected; its log {}: {}",
                log.display(),
                log_tail(&log)
            );
        }
        if let Some(found) = find_leader(&members).await {
            break found;
        }
        if Instant::now() > deadline {
            bail!(
                "no leader after {} s; the nodes' logs are in {}",
                ELECTION_WAIT.as_secs(),
                dir.display()
            );
        }
        tokio::select! {
            _ = interrupt.recv() => return stop(nodes),
            _ = terminate.recv() => return stop(nodes),
            _ = hangup.recv() => return stop(nodes),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    };
    let leader_addr = members
        .iter()
        .find(|member| u64::from(member.id) == leader)
        .map_or_else(|| "?".to_string(), |member| member.client.to_string());
    println!("leader: node {leader} at {leader_addr}, term {term}");
    eprintln!(
        "{} nodes running; data and logs in {} (kept after exit). Try:\n  \
         loglog --cluster {} append hello\n\
         Ctrl-C stops every node.",
        members.len(),
        dir.display(),
        cluster.join(",")
    );

    let mut watch = tokio::time::interval(WATCH_INTERVAL);
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = hangup.recv() => break,
            _ = watch.tick() => {
                for (id, status, log) in nodes.newly_exited() {
                    eprintln!("node {id} exited ({status}); its log: {}", log.display());
                }
                if nodes.all_exited() {
                    bail!("every node has exited; their logs are in {}", dir.display());
                }
            }
        }
    }
    stop(nodes)
}

fn stop(mut nodes: Nodes) -> anyhow::Result<()> {
    let running = nodes.0.iter().filter(|node| node.exited.is_none()).count();
    eprintln!("stopping {running} nodes");
    nodes.stop();
    eprintln!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_counts_are_one_three_or_five() {
        assert_eq!(parse_node_count("3"), Ok(3));
        assert!(parse_node_count("2").is_err());
        assert!(parse_node_count("7").is_err());
    }

    #[test]
    fn base_port_layout_and_peers_round_trip() {
        let members = members_from_base(3, 24000).unwrap();
        assert_eq!(
            peers_value(&members),
            "1=127.0.0.1:24100@127.0.0.1:24000,2=127.0.0.1:24101@127.0.0.1:24001,\
             3=127.0.0.1:24102@127.0.0.1:24002"
        );
        assert_eq!(parse_peers_value(&peers_value(&members)).unwrap(), members);
        assert!(members_from_base(5, 65_500).is_err());
        assert!(parse_peers_value("1=nonsense").is_err());
    }

    #[test]
    fn free_ports_are_distinct() {
        let members = members_on_free_ports(5).unwrap();
        let mut ports: Vec<u16> = members
            .iter()
            .flat_map(|member| [member.client.port(), member.peer.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 10);
    }
}
