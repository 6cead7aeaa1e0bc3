//! The real `loglogd` binary: flags, signals, clean shutdown, restart.
//! Each test listens on a port it picked itself (never the default 19194,
//! which other nodes on this machine may use).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loglog_proto::wire::{NodeStatus, Request, STATUS_OK};

mod common;

use common::RunningNode;

/// Starts `loglogd` with `args` (listening on `addr`); it is killed if the
/// test ends, or panics, before it exits.
fn spawn(cwd: &Path, args: &[&str], addr: SocketAddr) -> RunningNode {
    let child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    RunningNode { child, addr }
}

fn connect(addr: SocketAddr, child: &mut Child) -> TcpStream {
    let stream =
        common::wait_until_listening_or_report(child, addr, Duration::from_secs(20), output);
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

fn output(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        stdout.read_to_string(&mut text).unwrap();
    }
    if let Some(mut stderr) = child.stderr.take() {
        stderr.read_to_string(&mut text).unwrap();
    }
    text
}

fn call(stream: &mut TcpStream, request: Request<'_>, request_id: u64) -> Vec<u8> {
    let (header, body) = common::exchange(stream, request, request_id);
    assert_eq!(header.request_id, request_id);
    assert_eq!(header.aux, STATUS_OK, "error response: {body:?}");
    body
}

/// The node's status. A node that does not answer (a connection reset
/// once in CI, not reproduced since) fails the test with its output.
fn status(stream: &mut TcpStream, child: &mut Child) -> NodeStatus {
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        NodeStatus::decode(&call(stream, Request::Status, 1)).unwrap()
    }));
    answer.unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("no status answer; loglogd's output:\n{}", output(child))
    })
}

fn signal(child: &Child, name: &str) {
    let killed = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(killed.success());
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("loglogd did not exit: {}", output(child));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_a_restart_keeps_the_data() {
    let cwd = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let listen = addr.to_string();
    // Relative data dir: resolved against the process's cwd.
    let args = [
        "--listen",
        &listen,
        "--data-dir",
        "data",
        "--segment-size",
        "1MiB",
        "--max-entry-size",
        "64KiB",
    ];
    let mut node = spawn(cwd.path(), &args, addr);
    let mut stream = connect(addr, &mut node.child);
    let before = status(&mut stream, &mut node.child);
    assert_eq!(before.term, 1);
    let body = call(
        &mut stream,
        Request::Append {
            payload: b"from the binary",
            no_wait: false,
        },
        2,
    );
    let offset = u64::from_le_bytes(body.try_into().unwrap());
    assert_eq!(offset, before.commit_offset);
    signal(&node.child, "TERM");
    let exit = wait_exit(&mut node.child);
    let log = output(&mut node.child);
    assert!(exit.success(), "exit {exit}: {log}");
    assert!(log.contains(&listen), "the listen address is logged: {log}");
    assert!(cwd.path().join("data/log").is_dir());
    assert!(cwd.path().join("data/node.state").is_file());

    let mut node = spawn(cwd.path(), &args, addr);
    let mut stream = connect(addr, &mut node.child);
    let after = status(&mut stream, &mut node.child);
    assert_eq!(after.term, 2);
    let body = call(
        &mut stream,
        Request::Read {
            offset,
            max_bytes: 100,
            wait_ms: 0,
            linearizable: false,
        },
        3,
    );
    // Commit offset, the entry's header, its payload (then the new term's no-op).
    assert_eq!(&body[8 + 16..8 + 16 + 15], b"from the binary");
    signal(&node.child, "INT");
    let exit = wait_exit(&mut node.child);
    assert!(exit.success(), "exit {exit}: {}", output(&mut node.child));
}

#[test]
fn fsync_never_is_loudly_unsafe_and_bad_flags_fail() {
    let cwd = tempfile::tempdir().unwrap();
    let addr = common::free_addr();
    let listen = addr.to_string();
    let mut node = spawn(
        cwd.path(),
        &["--listen", &listen, "--fsync", "never", "--data-dir", "d"],
        addr,
    );
    let mut stream = connect(addr, &mut node.child);
    status(&mut stream, &mut node.child);
    signal(&node.child, "TERM");
    assert!(wait_exit(&mut node.child).success());
    let log = output(&mut node.child);
    assert!(log.contains("UNSAFE"), "{log}");

    let failed = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .args(["--fsync", "sometimes"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    let failed = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .args(["--segment-size", "lots"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!failed.status.success());
    // Nothing was created by the refused runs.
    assert!(!cwd.path().join("loglog-data").exists());
}

#[test]
fn a_busy_port_is_a_clear_start_error() {
    let cwd = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let output = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .args(["--listen", &listen, "--data-dir", "d"])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let log = String::from_utf8_lossy(&output.stderr).to_string()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(log.contains("cannot listen"), "{log}");
}
