//! Measures fdatasync latency of small appends into a growing file, into
//! fallocate'd (unwritten) space, and into pre-zeroed (written) space: the
//! numbers behind the segment preallocation policy.
//!
//! `cargo run --release -p loglog-storage --example fdatasync_latency [dir] [writes]`

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const WRITE_LEN: usize = 4096;

fn measure(path: &Path, writes: usize, prepare: impl Fn(&File)) -> Vec<Duration> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create the test file");
    prepare(&file);
    file.sync_all().expect("fsync the prepared file");
    let block = vec![0xa5u8; WRITE_LEN];
    let mut latencies = Vec::with_capacity(writes);
    for index in 0..writes {
        file.write_all_at(&block, (index * WRITE_LEN) as u64)
            .expect("write");
        let started = Instant::now();
        file.sync_data().expect("fdatasync");
        latencies.push(started.elapsed());
    }
    std::fs::remove_file(path).expect("remove the test file");
    latencies.sort();
    latencies
}

fn report(name: &str, latencies: &[Duration]) {
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    println!(
        "{name:<12} median {:>7.1} us   p90 {:>7.1} us   p99 {:>7.1} us",
        percentile(0.5).as_secs_f64() * 1e6,
        percentile(0.9).as_secs_f64() * 1e6,
        percentile(0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().unwrap_or_else(|| ".".into());
    let writes: usize = args
        .next()
        .map(|n| n.parse().expect("writes is a number"))
        .unwrap_or(2000);
    let path = Path::new(&dir).join("fdatasync-latency.tmp");
    let total = (writes * WRITE_LEN) as u64;
    println!("{writes} writes of {WRITE_LEN} B, each followed by fdatasync, in {dir}");
    for round in 0..2 {
        println!("round {round}");
        report("growing", &measure(&path, writes, |_| {}));
        report(
            "fallocated",
            &measure(&path, writes, |file| {
                rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, total)
                    .expect("fallocate");
            }),
        );
        report(
            "pre-zeroed",
            &measure(&path, writes, |file| {
                let zeros = vec![0u8; 1 << 20];
                let mut at = 0;
                while at < total {
                    file.write_all_at(&zeros, at).expect("write zeros");
                    at += zeros.len() as u64;
                }
            }),
        );
    }
}
