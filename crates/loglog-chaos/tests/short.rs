//! The short mode of the fault-injection suite: two brief randomized runs
//! (3 and 5 nodes) against real `loglogd` processes in network namespaces.
//!
//! Needs root with `ip` and `iptables`; without them it prints a notice and
//! passes, unless `LOGLOG_CHAOS_REQUIRED=1` (set by `.ci/run`), which turns
//! a missing capability into a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use loglog_chaos::{netns, run_once, Fault, RunConfig};

/// Runs one test's clusters at a time: two at once on a 2-core machine
/// would starve each other's timers.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The `loglogd` binary: `LOGLOGD` if set, else the one cargo built next to
/// this test (`cargo test --workspace` builds it for loglogd's own tests),
/// else one built now into a separate target dir (the running cargo holds
/// the lock of its own). With `bug_injection`, one that has loglogd's
/// `bug-injection` feature (`--all-features` builds the one beside so).
fn loglogd(bug_injection: bool) -> PathBuf {
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
    let has_bugs = |binary: &Path| {
        Command::new(binary)
            .args(["--test-ack-before-fsync", "--version"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if beside.exists() && (!bug_injection || has_bugs(&beside)) {
        return beside;
    }
    let target = profile_dir.join(if bug_injection {
        "loglog-chaos-loglogd-bugs"
    } else {
        "loglog-chaos-loglogd"
    });
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", "loglogd", "--bin", "loglogd", "--target-dir"]);
    build.arg(&target);
    if bug_injection {
        build.args(["--features", "bug-injection"]);
    }
    let status = build
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building loglogd failed");
    target.join("debug").join("loglogd")
}

/// Whether the suite can run here; prints the notice or panics as the
/// module docs say.
fn chaos_capable() -> bool {
    if let Err(reason) = netns::capability() {
        if std::env::var("LOGLOG_CHAOS_REQUIRED").as_deref() == Ok("1") {
            panic!("LOGLOG_CHAOS_REQUIRED=1 but the chaos suite cannot run: {reason}");
        }
        eprintln!("NOTICE: skipping the loglog-chaos short runs: {reason}");
        return false;
    }
    true
}

#[test]
fn short_randomized_runs_have_no_violations() {
    if !chaos_capable() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let loglogd = loglogd(false);
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
            faults: Fault::ALL.to_vec(),
            work_dir: std::env::temp_dir(),
            lose_every_tail: false,
            keep: false,
            // The 3-node run also covers upload mode.
            upload: nodes == 3,
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

/// The suite catches a deliberately broken build: nodes that count bytes
/// durable before their fsync lose acknowledged appends in power cuts. The
/// same schedule on a correct build loses nothing.
#[test]
fn a_build_that_acks_before_fsync_is_caught() {
    if !chaos_capable() {
        return;
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let loglogd = loglogd(true);
    let seed = 20_261_125;
    let run = |run: u64, loglogd_args: Vec<String>| {
        let config = RunConfig {
            run,
            seed,
            nodes: 3,
            duration: Duration::from_secs(12),
            loglogd: loglogd.clone(),
            loglogd_args,
            faults: vec![Fault::PowerCut],
            work_dir: std::env::temp_dir(),
            lose_every_tail: false,
            keep: false,
            upload: false,
        };
        let report = run_once(&config).expect("the harness runs");
        eprintln!(
            "{:?}: {} ({})",
            config.loglogd_args,
            report.summary.line(),
            report.details
        );
        report
    };
    // A slow disk (20 ms per fsync) widens the window between a write and
    // its fsync, where the broken build acknowledges.
    let slow_disk = ["--test-fsync-delay".to_string(), "20ms".to_string()];
    let correct = run(10, slow_disk.to_vec());
    assert!(
        correct.summary.acked > 100,
        "the workload barely ran: {}",
        correct.details
    );
    assert_eq!(
        correct.summary.violations(),
        0,
        "the correct build failed (folder kept: {:?}):\n{}",
        correct.kept,
        correct.problems.join("\n")
    );
    let mut broken_args = slow_disk.to_vec();
    broken_args.push("--test-ack-before-fsync".to_string());
    // Whether a cut lands while acknowledged bytes are unsynced is chance
    // (on a starved machine the cuts can all meet a cluster still
    // recovering from the last one): up to three schedules, one must lose.
    let mut missed = Vec::new();
    for seed in [11, 12, 13] {
        let broken = run(seed, broken_args.clone());
        if broken.summary.lost > 0 {
            return;
        }
        missed.push(format!("{} ({})", broken.summary.line(), broken.details));
    }
    panic!(
        "power cuts on a build that acks before fsync lost nothing in {} runs:\n{}",
        missed.len(),
        missed.join("\n")
    );
}
