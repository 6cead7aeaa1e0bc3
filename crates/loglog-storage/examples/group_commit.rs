//! Group commit throughput: one writer appends batches of small entries
//! while a sync thread fsyncs behind it (pipelined: batch N+1 is written
//! while batch N is being fsynced; the writer waits only for batch N-1).
//!
//! `cargo run --release -p loglog-storage --example group_commit -- [dir] [seconds] [entries per batch] [payload bytes] [off]`
//! (`off` disables preallocation, to compare with appends into growing files)

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_storage::{open_with, Preallocation, StorageConfig};

#[derive(Default)]
struct Progress {
    appended: u64,
    durable: u64,
    done: bool,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let parent = args.next().unwrap_or_else(|| ".".into());
    let seconds: f64 = args.next().map_or(3.0, |s| s.parse().expect("seconds"));
    let per_batch: usize = args
        .next()
        .map_or(64, |s| s.parse().expect("entries per batch"));
    let payload_len: usize = args
        .next()
        .map_or(128, |s| s.parse().expect("payload bytes"));
    let preallocation = match args.next().as_deref() {
        Some("off") => Preallocation::Off,
        _ => Preallocation::ZeroAhead,
    };
    let dir = tempfile::tempdir_in(&parent).expect("create a temporary directory");
    let (mut writer, syncer, _reader) =
        open_with(StorageConfig::new(dir.path()), preallocation).expect("open the log");
    // Give the preparer a moment to zero ahead, as it would in a running node.
    std::thread::sleep(Duration::from_millis(300));

    let mut batch = Vec::new();
    for index in 0..per_batch {
        let payload = vec![index as u8; payload_len];
        encode_entry(1, EntryKind::Data, &payload, &mut batch);
    }

    let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
    let sync_progress = progress.clone();
    let sync_thread = std::thread::spawn(move || {
        let (lock, changed) = &*sync_progress;
        let mut latencies = Vec::new();
        loop {
            {
                let mut state = lock.lock().unwrap();
                while state.appended <= state.durable && !state.done {
                    state = changed.wait(state).unwrap();
                }
                if state.appended <= state.durable && state.done {
                    break;
                }
            }
            let started = Instant::now();
            let durable = syncer.sync().expect("sync");
            latencies.push(started.elapsed());
            lock.lock().unwrap().durable = durable;
            changed.notify_all();
        }
        latencies
    });

    let (lock, changed) = &*progress;
    let started = Instant::now();
    let mut batches = 0u64;
    let mut previous_end = writer.end_offset();
    while started.elapsed().as_secs_f64() < seconds {
        let end = writer.append(&batch).expect("append");
        batches += 1;
        let mut state = lock.lock().unwrap();
        state.appended = end;
        changed.notify_all();
        while state.durable < previous_end {
            state = changed.wait(state).unwrap();
        }
        previous_end = end;
    }
    {
        let mut state = lock.lock().unwrap();
        state.done = true;
        changed.notify_all();
        while state.durable < previous_end {
            state = changed.wait(state).unwrap();
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies = sync_thread.join().expect("sync thread");
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
    let entries = batches * per_batch as u64;
    println!(
        "preallocation {preallocation:?}: {per_batch} entries of {payload_len} B per batch, {elapsed:.1} s"
    );
    println!(
        "  {:.0} fsyncs/s, {:.0} entries/s, {:.1} MB/s, {:.1} entries per fsync",
        latencies.len() as f64 / elapsed,
        entries as f64 / elapsed,
        writer.end_offset() as f64 / elapsed / 1e6,
        entries as f64 / latencies.len() as f64,
    );
    println!(
        "  sync latency: median {:.0} us, p90 {:.0} us, p99 {:.0} us",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99)
    );
}
