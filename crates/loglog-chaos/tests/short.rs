//! The short mode of the fault-injection suite: two brief randomized runs
//! (3 and 5 nodes) against real `loglogd` processes in network namespaces.
//!
//! Needs root with `ip` and `iptables`; without them it prints a notice and
//! passes, unless `LOGLOG_CHAOS_REQUIRED=1` (set by `.ci/run`), which turns
//! a missing capability into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use loglog_chaos::{netns, run_once, RunConfig};

/// The `loglogd` binary: `LOGLOGD` if set, else the one cargo built next to
/// this test (`cargo test --workspace` builds it for loglogd's own tests),
/// else one built now into a separate target dir (the running cargo holds
/// the lock of its own).
fn loglogd() -> PathBuf {
    if let Some(path) = std::env::var_os("LOGLOGD") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/short-xxxx
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in <target>/<profile>/deps");
    let beside = profile_dir.join("loglogd");
    if beside.exists() {
        return beside;
    }
    let target = profile_dir.join("loglog-chaos-loglogd");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args(["build", "-p", "loglogd", "--bin", "loglogd", "--target-dir"])
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building loglogd failed");
    target.join("debug").join("loglogd")
}

#[test]
fn short_randomized_runs_have_no_violations() {
    if let Err(reason) = netns::capability() {
        if std::env::var("LOGLOG_CHAOS_REQUIRED").as_deref() == Ok("1") {
            panic!("LOGLOG_CHAOS_REQUIRED=1 but the chaos suite cannot run: {reason}");
        }
        eprintln!("NOTICE: skipping the loglog-chaos short runs: {reason}");
        return;
    }
    let loglogd = loglogd();
    let seed = std::env::var("LOGLOG_CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(20_261_124);
    for (run, nodes, seconds) in [(0, 3, 15), (1, 5, 10)] {
        let config = RunConfig {
            run,
            seed: seed + run,
            nodes,
            duration: Duration::from_secs(seconds),
            loglogd: loglogd.clone(),
            loglogd_args: Vec::new(),
            work_dir: std::env::temp_dir(),
            lose_every_tail: false,
            keep: false,
        };
        let report = run_once(&config).expect("the harness runs");
        eprintln!(
            "nodes={nodes} seed={}: {} ({})",
            config.seed,
            report.summary.line(),
            report.details
        );
        assert!(
            report.summary.acked > 100,
            "the workload barely ran: {}",
            report.details
        );
        assert_eq!(
            report.summary.violations(),
            0,
            "violations (folder kept: {:?}):\n{}",
            report.kept,
            report.problems.join("\n")
        );
    }
}
