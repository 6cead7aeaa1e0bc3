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
