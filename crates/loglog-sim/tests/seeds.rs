//! The simulator on the real core: a bounded batch of seeds runs clean, and
//! a run is a pure function of its seed.

use loglog_sim::sim::{self, SimOptions, TraceMode};

#[test]
fn two_hundred_seeds_run_without_violations() {
    let mut acknowledged = 0;
    for seed in 0..200 {
        let report = sim::run(&SimOptions::new(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed} ({} voters) broke: {:#?}\nreplay: cargo run --release -p loglog-sim -- \
             --seeds 1 --start {seed} --nodes {} --trace",
            report.nodes,
            report.violations,
            report.nodes
        );
        acknowledged += report.appends_acknowledged;
    }
    // The runs did real work.
    assert!(acknowledged > 10_000, "{acknowledged} appends acknowledged");
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    for seed in [7, 1234] {
        let mut options = SimOptions::new(seed);
        options.trace = TraceMode::Full;
        let first = sim::run(&options);
        let second = sim::run(&options);
        assert_ne!(first.trace_hash, 0);
        assert_eq!(first.trace_hash, second.trace_hash);
        assert_eq!(first.trace, second.trace, "byte for byte");
        // Hash-only mode computes the same hash without keeping the text.
        options.trace = TraceMode::Hash;
        let hashed = sim::run(&options);
        assert_eq!(hashed.trace_hash, first.trace_hash);
        assert!(hashed.trace.is_empty());
        // And another seed is another run.
        let mut other = SimOptions::new(seed + 1);
        other.trace = TraceMode::Hash;
        assert_ne!(sim::run(&other).trace_hash, first.trace_hash);
    }
}

#[test]
fn both_cluster_sizes_and_the_seed_choice_agree() {
    for nodes in [3, 5] {
        let mut options = SimOptions::new(42);
        options.nodes = Some(nodes);
        assert_eq!(sim::founding_voters(&options), nodes);
        let report = sim::run(&options);
        assert_eq!(report.nodes, nodes);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }
    let options = SimOptions::new(42);
    assert_eq!(sim::run(&options).nodes, sim::founding_voters(&options));
}

/// A leader that trimmed its log (and has not restarted since, which would
/// have told its core the new start) must catch up followers behind that
/// start with a snapshot. The simulated disk used to answer their reads
/// with a storage error where the real storage answers `Trimmed`, so the
/// core never learned its start and these two seeds stalled for good.
#[test]
fn followers_behind_a_trimmed_leader_are_caught_up_with_a_snapshot() {
    for seed in [64_320, 66_891] {
        let mut options = SimOptions::new(seed);
        options.nodes = Some(5);
        let report = sim::run(&options);
        assert!(
            report.violations.is_empty(),
            "seed {seed}: {:#?}",
            report.violations
        );
        assert!(report.resets > 0, "seed {seed}: no follower was re-seeded");
    }
}
