//! Shared by the integration tests: a parallel search for the first seed
//! that breaks something.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use loglog_sim::sim::{self, SimOptions};

/// Runs seeds `0..max_seeds` (on every core) with the options `options_for`
/// builds, and returns the lowest seed that broke something, with what
/// broke. Deterministic: every seed below the one returned ran clean.
pub fn first_violation(
    max_seeds: u64,
    options_for: impl Fn(u64) -> SimOptions + Sync,
) -> Option<(u64, Vec<String>)> {
    let next = AtomicU64::new(0);
    let lowest = AtomicU64::new(u64::MAX);
    let found: Mutex<Vec<(u64, Vec<String>)>> = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= max_seeds || seed > lowest.load(Ordering::Relaxed) {
                    break;
                }
                let report = sim::run(&options_for(seed));
                if !report.violations.is_empty() {
                    lowest.fetch_min(seed, Ordering::Relaxed);
                    found
                        .lock()
                        .expect("no panics while holding the lock")
                        .push((seed, report.violations));
                }
            });
        }
    });
    let found = found.into_inner().expect("threads are done");
    found.into_iter().min_by_key(|(seed, _)| *seed)
}
