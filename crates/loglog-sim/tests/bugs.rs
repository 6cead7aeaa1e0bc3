//! The simulator must catch the core's deliberately wrong behaviours
//! (loglog-raft feature `bug-injection`). Run with
//! `cargo test --release -p loglog-sim --features bug-injection --test bugs`.
#![cfg(feature = "bug-injection")]

use loglog_sim::sim::{self, bugs_named, SimOptions};

/// Runs seeds from 0 with `bug` switched on until one breaks; returns that
/// seed and what broke.
fn first_violation(bug: &str, nodes: Option<usize>, max_seeds: u64) -> Option<(u64, Vec<String>)> {
    (0..max_seeds).find_map(|seed| {
        let mut options = SimOptions::new(seed);
        options.nodes = nodes;
        options.bugs = bugs_named(bug).expect("a known bug");
        let report = sim::run(&options);
        (!report.violations.is_empty()).then_some((seed, report.violations))
    })
}

#[test]
fn ack_before_fsync_is_caught() {
    let (seed, violations) =
        first_violation("ack-before-fsync", None, 100).expect("caught within 100 seeds");
    eprintln!("ack-before-fsync caught at seed {seed}: {violations:#?}");
}

#[test]
fn forgetting_to_persist_the_vote_is_caught() {
    let (seed, violations) =
        first_violation("forget-vote", None, 3000).expect("caught within 3000 seeds");
    eprintln!("forget-vote caught at seed {seed}: {violations:#?}");
    assert!(violations.iter().any(|v| v.contains("two leaders in term")));
}

/// Raft's Figure 8 needs an old-term entry on a majority ahead of a new
/// leader's no-op, then a leader of an intermediate term. The schedule gets
/// there with one-entry batches, isolated new leaders, selective loss of
/// no-ops and crashes right after commits (see the crate docs).
#[test]
fn committing_an_old_term_entry_by_counting_is_caught() {
    let (seed, violations) =
        first_violation("commit-old-term", Some(3), 4000).expect("caught within 4000 seeds");
    eprintln!("commit-old-term caught at seed {seed}: {violations:#?}");
    assert!(violations.iter().any(|v| v.contains("leader completeness")
        || v.contains("committed prefix differs")
        || v.contains("below the commit offset")));
}

/// Without the local durability check, acknowledging before the fsync is
/// still caught by the history or committed-log checks (power failures lose
/// the unsynced, acknowledged tail).
#[test]
fn ack_before_fsync_is_caught_by_the_history_and_log_checks_alone() {
    let found = (0..3000).find_map(|seed| {
        let mut options = SimOptions::new(seed);
        options.bugs = bugs_named("ack-before-fsync").expect("a known bug");
        options.check_local_durability = false;
        let report = sim::run(&options);
        (!report.violations.is_empty()).then_some((seed, report.violations))
    });
    let (seed, violations) = found.expect("caught within 3000 seeds");
    eprintln!("ack-before-fsync (no local check) caught at seed {seed}: {violations:#?}");
}
