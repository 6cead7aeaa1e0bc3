//! Upload mode in the simulator: clients upload every append to the other
//! nodes (uploads lost, late, corrupt, evicted, expired, gone after a
//! crash) and leaders send uploaded entries by digest. The runs stay clean,
//! every path is taken, and a follower that skips the CRC check of a
//! rebuilt entry is caught.

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

#[test]
fn skipping_the_crc_check_of_rebuilt_entries_is_caught() {
    let caught = (0..200).find_map(|seed| {
        let mut options = upload_options(seed);
        options.upload_skips_crc_check = true;
        let report = sim::run(&options);
        (!report.violations.is_empty()).then_some((seed, report.violations))
    });
    let (seed, violations) = caught.expect("caught within 200 seeds");
    eprintln!("seed {seed}: {violations:#?}");
}
