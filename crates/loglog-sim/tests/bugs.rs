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
