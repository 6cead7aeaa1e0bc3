//! Overload, for real: ten times more concurrent writers than the node's
//! connection limit, each offering far more bytes than the per-connection
//! and node-wide budgets, against the `loglogd` binary with small limits.
//! The server's resident memory must stay under its documented bound
//! (start-up RSS + `Limits::worst_case_buffered_bytes` + a fixed slack),
//! refusals must be typed (`Busy`), and every acknowledged entry must be
//! in the log, intact.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loglog::{Client, ClientConfig};
use loglogd::Limits;

const MAX_CONNECTIONS: usize = 16;
/// Ten times the connection limit.
const WRITERS: usize = 10 * MAX_CONNECTIONS;
/// Appends each writer keeps in flight on its one connection.
const IN_FLIGHT_PER_WRITER: usize = 32;
const PAYLOAD: usize = 32 * 1024;
const RUN_FOR: Duration = Duration::from_secs(8);
/// Room for what the budgets do not count: thread stacks, the runtime,
/// allocator retention. Documented in README (Limits).
const SLACK_BYTES: u64 = 48 * 1024 * 1024;

fn limits() -> Limits {
    Limits {
        max_connections: MAX_CONNECTIONS,
        max_in_flight_bytes: 1024 * 1024,
        max_node_request_bytes: 4 * 1024 * 1024,
        max_node_read_bytes: 4 * 1024 * 1024,
        max_pending_appends: 256,
        max_pending_append_bytes: 2 * 1024 * 1024,
        ..Limits::default()
    }
}

fn start_node(dir: &std::path::Path, addr: SocketAddr) -> Child {
    let limits = limits();
    let child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--listen", &addr.to_string()])
        .args(["--max-entry-size", "64KiB"])
        .args(["--max-connections", &limits.max_connections.to_string()])
        .args([
            "--max-in-flight-bytes",
            &limits.max_in_flight_bytes.to_string(),
        ])
        .args([
            "--max-node-request-bytes",
            &limits.max_node_request_bytes.to_string(),
        ])
        .args([
            "--max-node-read-bytes",
            &limits.max_node_read_bytes.to_string(),
        ])
        .args([
            "--max-pending-appends",
            &limits.max_pending_appends.to_string(),
        ])
        .args([
            "--max-pending-append-bytes",
            &limits.max_pending_append_bytes.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("loglogd starts");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "loglogd did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Resident set size of `pid`, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc works");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS is reported");
    kib * 1024
}

/// A payload naming its writer and sequence number, filled with a pattern
/// of both, so any damage shows.
fn payload(writer: usize, seq: u64) -> Vec<u8> {
    let mut payload = vec![(writer as u8) ^ (seq as u8); PAYLOAD];
    payload[..8].copy_from_slice(&(writer as u64).to_le_bytes());
    payload[8..16].copy_from_slice(&seq.to_le_bytes());
    payload
}

#[derive(Default)]
struct Outcome {
    acked: HashMap<u64, (usize, u64)>,
    busy: u64,
    other_errors: HashMap<String, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_writers_the_limits_allow_stay_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut child = start_node(&dir.path().join("data"), addr);
    let pid = child.id();
    let baseline = rss_bytes(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let (stop, outcome) = (stop.clone(), outcome.clone());
        writers.push(tokio::spawn(async move {
            let config = ClientConfig {
                max_in_flight: IN_FLIGHT_PER_WRITER,
                leader_wait: Duration::from_millis(200),
                ..ClientConfig::default()
            };
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let Ok(client) = Client::connect_with(&[addr.to_string()], config.clone()).await
                else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                // Keep IN_FLIGHT_PER_WRITER appends pipelined on it.
                let mut pending = tokio::task::JoinSet::new();
                let mut failed = false;
                while !stop.load(Ordering::Relaxed) && !failed {
                    while pending.len() < IN_FLIGHT_PER_WRITER {
                        let client = client.clone();
                        let this = seq;
                        seq += 1;
                        pending.spawn(
                            async move { (this, client.append(payload(writer, this)).await) },
                        );
                    }
                    let Some(done) = pending.join_next().await else {
                        break;
                    };
                    let (this, result) = done.expect("append task");
                    let mut outcome = outcome.lock().unwrap();
                    match result {
                        Ok(offset) => {
                            let previous = outcome.acked.insert(offset, (writer, this));
                            assert!(previous.is_none(), "offset {offset} acknowledged twice");
                        }
                        Err(loglog::Error::Server {
                            source: loglogd::ServerError::Busy,
                            ..
                        }) => {
                            outcome.busy += 1;
                            failed = true;
                        }
                        // A refused or dropped connection: not acknowledged.
                        Err(error) => {
                            *outcome.other_errors.entry(error.to_string()).or_default() += 1;
                            failed = true;
                        }
                    }
                }
                pending.abort_all();
                while let Some(done) = pending.join_next().await {
                    if let Ok((this, Ok(offset))) = done {
                        outcome.lock().unwrap().acked.insert(offset, (writer, this));
                    }
                }
                if failed {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(RUN_FOR).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    sampler.join().unwrap();

    let peak = peak.load(Ordering::Relaxed);
    let bound = baseline + limits().worst_case_buffered_bytes() as u64 + SLACK_BYTES;
    let outcome = std::mem::take(&mut *outcome.lock().unwrap());
    eprintln!(
        "rss: start {} MiB, peak {} MiB, bound {} MiB; acked {}, busy answers {}",
        baseline >> 20,
        peak >> 20,
        bound >> 20,
        outcome.acked.len(),
        outcome.busy
    );
    eprintln!("other errors: {:?}", outcome.other_errors);
    assert!(peak <= bound, "peak RSS {peak} passed the bound {bound}");
    assert!(
        outcome.acked.len() > 100,
        "the node barely served: {}",
        outcome.acked.len()
    );

    // Every acknowledged entry is in the log, at its offset, intact. The
    // writers' connections close as their clients drop; until the node has
    // seen them go, its connection slots may still be full (Busy).
    // The refusal may come as the first answer (Busy) on a connection the
    // node accepted, so a first request is part of the retry.
    let gone_by = std::time::Instant::now() + Duration::from_secs(30);
    let (client, end) = loop {
        let attempt = async {
            let client = Client::connect(&[addr.to_string()]).await?;
            let end = client.end_offset().await?;
            Ok::<_, loglog::Error>((client, end))
        };
        match attempt.await {
            Ok(connected) => break connected,
            Err(error) if std::time::Instant::now() < gone_by => {
                eprintln!("connecting after the flood: {error}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot connect after the flood: {error}"),
        }
    };
    let mut offset = 0;
    let mut found = 0;
    while offset < end {
        let page = client.read(offset, 4 << 20, Duration::ZERO).await.unwrap();
        for entry in page.entries() {
            if let Some(&(writer, seq)) = outcome.acked.get(&entry.offset) {
                assert_eq!(
                    entry.payload[..],
                    payload(writer, seq)[..],
                    "entry at {}",
                    entry.offset
                );
                found += 1;
            }
        }
        offset = page.next_offset();
    }
    assert_eq!(
        found,
        outcome.acked.len(),
        "acknowledged entries missing from the log"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
