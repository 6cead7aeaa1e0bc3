//! Helpers shared by the integration tests that drive real binaries.
//!
//! Each test file is its own crate (`mod common;`) and uses only some of
//! these, hence `dead_code` is allowed for the whole module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog_proto::wire::{FrameHeader, Request, ServerError, FRAME_HEADER_LEN, STATUS_OK};

/// Path of the `loglog` binary, built once per test process.
pub fn loglog_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let loglogd = Path::new(env!("CARGO_BIN_EXE_loglogd"));
        let profile_dir = loglogd.parent().expect("loglogd lives in a directory");
        let target_dir = profile_dir
            .parent()
            .expect("the profile directory has a parent");
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "--quiet", "-p", "loglog-cli", "--bin", "loglog"])
            .env("CARGO_TARGET_DIR", target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir
            .file_name()
            .is_some_and(|name| name == "release")
        {
            build.arg("--release");
        }
        let status = build.status().expect("cannot run cargo to build loglog");
        assert!(
            status.success(),
            "cargo build -p loglog-cli failed: {status}"
        );
        let binary = profile_dir.join(format!("loglog{}", std::env::consts::EXE_SUFFIX));
        assert!(binary.exists(), "{} was not built", binary.display());
        binary
    })
}

/// A loopback address for a node this test process starts.
///
/// Ports come from a per-process sequence below the kernel's ephemeral
/// range (32768-60999 by default), so no outgoing connection and no other
/// test's `bind(0)` can take one between this call and the node's bind (a
/// port picked with `bind(0)` and released could be, and was: two tests'
/// nodes then answered on one address). Test binaries run one at a time,
/// and the start differs per process, so reruns do not meet TIME_WAIT.
pub fn free_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    loop {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port as u16));
        // Skip a port something else on the machine holds.
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

/// `loglogd --data-dir <data_dir> --listen <listen>` with its output
/// discarded; callers add flags or redirect stderr to a log file.
pub fn loglogd_command(data_dir: &Path, listen: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loglogd"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", &listen.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// Waits until `addr` accepts connections and returns the first one,
/// asserting that `child` (the `loglogd` meant to listen there) did not
/// exit first and that it listens within `timeout`.
pub fn wait_until_listening(child: &mut Child, addr: SocketAddr, timeout: Duration) -> TcpStream {
    wait_until_listening_or_report(child, addr, timeout, |_| String::new())
}

/// [`wait_until_listening`], with `report(child)` (e.g. its log) in the
/// panic message if the child exits first.
pub fn wait_until_listening_or_report(
    child: &mut Child,
    addr: SocketAddr,
    timeout: Duration,
    report: impl FnOnce(&mut Child) -> String,
) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(stream) = TcpStream::connect(addr) {
            return stream;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("loglogd exited early: {status}: {}", report(child));
        }
        assert!(Instant::now() < deadline, "loglogd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `loglogd` process listening on `addr`, killed when dropped.
pub struct RunningNode {
    pub child: Child,
    pub addr: SocketAddr,
}

impl RunningNode {
    /// Spawns `command` (a `loglogd` that listens on `addr`) and returns
    /// once it listens (see [`wait_until_listening`]).
    pub fn start(command: &mut Command, addr: SocketAddr, timeout: Duration) -> RunningNode {
        let mut child = command.spawn().unwrap();
        wait_until_listening(&mut child, addr, timeout);
        RunningNode { child, addr }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        drop(self.child.kill());
        drop(self.child.wait());
    }
}

/// Sends one request with `request_id` on a raw connection and returns
/// the answer's header and body, whatever its status.
pub fn exchange(
    stream: &mut TcpStream,
    request: Request<'_>,
    request_id: u64,
) -> (FrameHeader, Vec<u8>) {
    let mut frame = Vec::new();
    request.encode(request_id, &mut frame);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).unwrap();
    (header, body)
}

/// One request on a raw connection: the body of an OK answer, or the error.
pub fn call(stream: &mut TcpStream, request: Request<'_>) -> Result<Vec<u8>, ServerError> {
    let (header, body) = exchange(stream, request, 7);
    if header.aux == STATUS_OK {
        Ok(body)
    } else {
        Err(ServerError::decode(header.aux, &body))
    }
}

/// A node's committed bytes from `from` up to `to`, read through the
/// client library (waits up to `timeout` for them).
pub fn committed_range(addr: SocketAddr, from: u64, to: u64, timeout: Duration) -> Vec<u8> {
    let client = Client::connect(&[addr.to_string()]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    while from + (bytes.len() as u64) < to {
        let page = client
            .read(
                from + bytes.len() as u64,
                1 << 20,
                Duration::from_millis(200),
            )
            .unwrap();
        bytes.extend_from_slice(page.raw());
        assert!(Instant::now() < deadline, "{addr} stuck below {to}");
    }
    bytes.truncate((to - from) as usize);
    bytes
}

/// Segment file starts in the log directory of `data_dir`, oldest first.
pub fn segment_starts(data_dir: &Path) -> Vec<u64> {
    let mut starts: Vec<u64> = std::fs::read_dir(data_dir.join(loglogd::LOG_DIR))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".seg")?.parse().ok()
        })
        .collect();
    starts.sort_unstable();
    starts
}

/// Configs of an embedded cluster of `members` nodes under `root` (ids from
/// 1, peer ports from [`free_addr`], no client listener): each test adds
/// what it needs, then starts them with `Node::start`.
pub fn embedded_cluster_configs(root: &Path, members: u64) -> Vec<loglogd::Config> {
    use loglogd::cluster::{ClusterConfig, PeerSpec};
    use loglogd::Config;
    let peers: Vec<PeerSpec> = (1..=members)
        .map(|id| PeerSpec {
            id,
            peer_addr: free_addr().to_string(),
            client_addr: format!("client-of-{id}:19194"),
        })
        .collect();
    peers
        .iter()
        .map(|peer| {
            let mut config = Config::new(root.join(format!("node{}", peer.id)));
            config.node_id = peer.id;
            config.listen = None;
            let mut cluster = ClusterConfig::new(peers.clone());
            cluster.peer_listen = peer.peer_addr.parse().expect("free_addr is an address");
            config.cluster = Some(cluster);
            config
        })
        .collect()
}
