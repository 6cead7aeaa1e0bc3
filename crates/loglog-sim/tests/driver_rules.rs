//! A wrong driver rule must be caught by the history checker alone.

mod common;

use common::first_violation;
use loglog_sim::sim::SimOptions;

/// Telling a client its append failed because the leader's log was
/// truncated under it is wrong (the entry can still commit), and the
/// history checker proves it (about one 3-node seed in a thousand: a
/// power failure right after the truncation undoes it, and the old leader
/// wins again).
#[test]
fn failing_appends_at_a_truncation_is_caught() {
    let found = first_violation(10_000, |seed| {
        let mut options = SimOptions::new(seed);
        options.nodes = Some(3);
        options.truncate_fails_appends = true;
        options
    });
    let (seed, violations) = found.expect("caught within 10000 seeds");
    eprintln!("truncate-fails-appends caught at seed {seed}: {violations:#?}");
    assert!(violations
        .iter()
        .any(|v| v.contains("of a failed append is visible")));
}
