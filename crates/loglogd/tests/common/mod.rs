//! Helpers shared by the integration tests that drive real binaries.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
#[allow(dead_code)] // not every test file starts nodes
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
