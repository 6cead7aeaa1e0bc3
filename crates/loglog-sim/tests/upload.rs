//! Upload mode in the simulator: clients upload every append to the other
//! nodes (uploads lost, late, corrupt, evicted, expired, gone after a
//! crash) and leaders send uploaded entries by digest. The runs stay clean
//! and every path is taken.

use loglog_sim::sim::{self, SimOptions};
use loglog_sim::upload::UploadStats;

fn upload_options(seed: u64) -> SimOptions {
    let mut options = SimOptions::new(seed);
    options.upload = true;
    options
}

#[test]
fn two_hundred_upload_seeds_run_without_violations_through_every_path() {
    let mut total = UploadStats::default();
    let mut acknowledged = 0;
    for seed in 0..200 {
        let report = sim::run(&upload_options(seed));
        assert!(
            report.violations.is_empty(),
            "seed {seed} broke: {:#?}\nreplay: cargo run --release -p loglog-sim -- \
             --seeds 1 --start {seed} --nodes {} --upload --trace",
            report.violations,
            report.nodes
        );
        acknowledged += report.appends_acknowledged;
        total.by_digest += report.upload.by_digest;
        total.rebuilt += report.upload.rebuilt;
        total.missed += report.upload.missed;
        total.mismatched += report.upload.mismatched;
        total.resent += report.upload.resent;
    }
    assert!(acknowledged > 10_000, "{acknowledged} appends acknowledged");
    // Entries went by digest and were rebuilt; uploads were missing and
    // corrupt, and the leaders resent their own bytes.
    assert!(total.rebuilt > 1000, "{total:?}");
    assert!(total.missed > 100, "{total:?}");
    assert!(total.mismatched > 10, "{total:?}");
    assert!(total.resent > 100, "{total:?}");
}

/// Defence in depth: even a follower that skipped the CRC check of a
/// rebuilt entry would write nothing corrupt, because the core checks every
/// received entry's CRC again (and drops the whole message); the leader's
/// raw resend or the core's retransmission then brings the right bytes.
#[test]
fn a_rebuild_without_its_crc_check_is_still_stopped_by_the_core() {
    let mut mismatched_written = 0;
    for seed in 0..100 {
        let mut options = upload_options(seed);
        options.upload_skips_crc_check = true;
        let report = sim::run(&options);
        assert!(
            report.violations.is_empty(),
            "seed {seed} broke: {:#?}",
            report.violations
        );
        mismatched_written += report.upload.rebuilt;
    }
    assert!(mismatched_written > 0);
}
