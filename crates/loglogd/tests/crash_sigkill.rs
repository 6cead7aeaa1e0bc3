//! The real `loglogd` binary killed with SIGKILL under load from 64
//! concurrent clients, then restarted, several times over: every
//! acknowledged append must be there, at its offset, with its bytes, once;
//! appends that were not acknowledged may be there, at most once.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loglog::{Client, ClientConfig};

mod common;

const CLIENTS: usize = 64;
const KILLS: usize = 8;
/// Acknowledged appends in a round before its kill can come.
const ACKS_BEFORE_KILL: usize = 3_000;

/// Starts loglogd on `addr` over `data_dir` and waits until it listens.
fn start_loglogd(data_dir: &Path, addr: SocketAddr, log: &Path) -> Child {
    let log = File::options().create(true).append(true).open(log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(addr.to_string())
        // Small segments: the load crosses segment boundaries.
        .args(["--segment-size", "256KiB", "--fsync", "always"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    common::wait_until_listening(&mut child, addr, Duration::from_secs(30));
    child
}

/// A payload unique to (round, client, seq), of a varying length.
fn payload(round: usize, client: usize, seq: u64) -> Vec<u8> {
    let mut text = format!("r{round}-c{client}-s{seq}-").into_bytes();
    // A cheap deterministic spread of sizes, 0..1500 bytes of filler.
    let spread = (seq
        .wrapping_mul(6364136223846793005)
        .wrapping_add(client as u64)
        >> 33)
        % 1500;
    text.extend(std::iter::repeat_n(
        b'a' + (seq % 26) as u8,
        spread as usize,
    ));
    text
}

/// What the clients learnt: acknowledged appends by offset, and every
/// payload ever sent (acknowledged or not).
#[derive(Default)]
struct History {
    acked: HashMap<u64, Vec<u8>>,
    sent: std::collections::HashSet<Vec<u8>>,
}

/// Runs 64 clients appending as fast as they can until the node dies.
async fn load(
    addr: SocketAddr,
    round: usize,
    history: Arc<Mutex<History>>,
    acked_this_round: Arc<AtomicUsize>,
) {
    let mut clients = Vec::new();
    for client_id in 0..CLIENTS {
        let history = Arc::clone(&history);
        let acked_this_round = Arc::clone(&acked_this_round);
        clients.push(tokio::spawn(async move {
            // The node stays down until the load has stopped: retrying an
            // append whose answer was lost (the library's exactly-once
            // retries) only for a moment keeps the rounds short.
            let config = ClientConfig {
                leader_wait: Duration::from_millis(200),
                ..ClientConfig::default()
            };
            let Ok(client) = Client::connect_with(&[addr.to_string()], config).await else {
                return;
            };
            for seq in 0.. {
                let payload = payload(round, client_id, seq);
                history.lock().unwrap().sent.insert(payload.clone());
                match client.append(payload.clone()).await {
                    Ok(offset) => {
                        let previous = history.lock().unwrap().acked.insert(offset, payload);
                        assert!(previous.is_none(), "offset {offset} acknowledged twice");
                        acked_this_round.fetch_add(1, Ordering::Relaxed);
                    }
                    // The node was killed: this append is indeterminate.
                    Err(error) => {
                        assert!(
                            error.is_indeterminate()
                                || matches!(error, loglog::Error::Connect { .. }),
                            "unexpected error: {error}"
                        );
                        return;
                    }
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
}

/// Every data entry of the committed log, by offset.
async fn whole_log(addr: SocketAddr) -> Vec<(u64, Vec<u8>)> {
    let client = Client::connect(&[addr.to_string()]).await.unwrap();
    let end = client.end_offset().await.unwrap();
    let mut offset = client.status().await.unwrap().start_offset;
    let mut entries = Vec::new();
    while offset < end {
        let page = client.read(offset, 1 << 20, Duration::ZERO).await.unwrap();
        entries.extend(
            page.entries()
                .map(|entry| (entry.offset, entry.payload.to_vec())),
        );
        offset = page.next_offset();
    }
    entries
}

fn check(history: &History, log: &[(u64, Vec<u8>)]) {
    let by_offset: HashMap<u64, &Vec<u8>> = log
        .iter()
        .map(|(offset, payload)| (*offset, payload))
        .collect();
    for (offset, payload) in &history.acked {
        let found = by_offset.get(offset);
        assert!(
            found == Some(&payload),
            "acknowledged entry at {offset} ({} bytes) is {}",
            payload.len(),
            match found {
                None => "missing".to_string(),
                Some(other) => format!("replaced by {} other bytes", other.len()),
            }
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (offset, payload) in log {
        assert!(
            history.sent.contains(payload),
            "entry at {offset} was never sent"
        );
        assert!(
            seen.insert(payload),
            "entry at {offset} is in the log twice"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let server_log = dir.path().join("loglogd.log");
    let addr = common::free_addr();
    let history = Arc::new(Mutex::new(History::default()));
    let started = Instant::now();

    for round in 0..KILLS {
        let mut child = start_loglogd(&data_dir, addr, &server_log);
        let acked_this_round = Arc::new(AtomicUsize::new(0));
        let load = tokio::spawn(load(
            addr,
            round,
            Arc::clone(&history),
            Arc::clone(&acked_this_round),
        ));
        // Kill mid-load: once some appends were acknowledged, at a moment
        // that varies from round to round.
        let deadline = Instant::now() + Duration::from_secs(20);
        while acked_this_round.load(Ordering::Relaxed) < ACKS_BEFORE_KILL {
            assert!(Instant::now() < deadline, "the load made no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(13 * round as u64)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        load.await.unwrap();

        let mut child = start_loglogd(&data_dir, addr, &server_log);
        let log = whole_log(addr).await;
        {
            let history = history.lock().unwrap();
            check(&history, &log);
            eprintln!(
                "round {round}: {} acknowledged so far, {} data entries in the log",
                history.acked.len(),
                log.len()
            );
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    let history = history.lock().unwrap();
    assert!(history.acked.len() >= KILLS * ACKS_BEFORE_KILL);
}
