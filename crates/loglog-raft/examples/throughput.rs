//! How fast the consensus core alone moves bytes: a 3-node cluster in one
//! thread, logs in memory, fsync reported at once, messages passed
//! directly (encoded and decoded, as on a network). This is the CPU cost
//! of the core (entry encoding, CRC checks on followers, bookkeeping),
//! the ceiling it puts on a real node.
//!
//! ```text
//! cargo run --release -p loglog-raft --example throughput [payload_bytes] [total_mib]
//! ```

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use loglog_proto::entry::EntryIter;
use loglog_raft::{
    Action, Checkpoint, Config, Envelope, HardState, LogRead, LogReadError, LogScan, Membership,
    RaftNode, Role,
};

struct MemLog(Vec<u8>);

impl LogRead for MemLog {
    fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError> {
        let mut end = from;
        for entry in EntryIter::new(&self.0[from as usize..], from, u32::MAX) {
            let entry = entry.map_err(|error| LogReadError::Storage(error.to_string()))?;
            if end > from && entry.next_offset() - from > max_bytes {
                break;
            }
            end = entry.next_offset();
        }
        Ok(self.0[from as usize..end as usize].to_vec())
    }
}

struct Node {
    raft: RaftNode,
    log: MemLog,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let payload_len: usize = args
        .next()
        .map_or(4096, |a| a.parse().expect("payload bytes"));
    let total_mib: usize = args.next().map_or(256, |a| a.parse().expect("total MiB"));
    let membership = Membership::with_voters([1, 2, 3]);
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let mut config = Config::new(id, id);
            config.max_payload = payload_len as u32;
            Node {
                raft: RaftNode::new(
                    config,
                    HardState::default(),
                    LogScan::new(Checkpoint::bootstrap(membership.clone())).finish(),
                )
                .expect("valid start"),
                log: MemLog(Vec::new()),
            }
        })
        .collect();
    let mut network: VecDeque<Bytes> = VecDeque::new();
    let pump = |nodes: &mut Vec<Node>, network: &mut VecDeque<Bytes>| loop {
        let mut idle = true;
        for node in nodes.iter_mut() {
            let actions = node.raft.take_actions(&node.log);
            for action in actions {
                idle = false;
                match action {
                    Action::Append {
                        write_id, bytes, ..
                    } => {
                        node.log.0.extend_from_slice(&bytes);
                        node.raft.storage_synced(write_id);
                    }
                    Action::Truncate { offset, .. } => node.log.0.truncate(offset as usize),
                    Action::Send(envelope) => {
                        let mut bytes = Vec::new();
                        envelope.encode(&mut bytes);
                        network.push_back(Bytes::from(bytes));
                    }
                    _ => {}
                }
            }
        }
        while let Some(bytes) = network.pop_front() {
            idle = false;
            let envelope = Envelope::decode(&bytes, u64::MAX).expect("valid message");
            nodes[envelope.to as usize - 1]
                .raft
                .step(envelope.from, envelope.message);
        }
        if idle {
            return;
        }
    };
    while nodes[0].raft.role() != Role::Leader {
        nodes[0].raft.tick();
        pump(&mut nodes, &mut network);
    }
    let payload = vec![0x5a; payload_len];
    let entries = total_mib * 1024 * 1024 / payload_len;
    let start = Instant::now();
    let mut proposed = 0;
    while proposed < entries {
        // Propose until back-pressure, then let the cluster catch up.
        while proposed < entries && nodes[0].raft.propose(&payload).is_ok() {
            proposed += 1;
        }
        pump(&mut nodes, &mut network);
    }
    pump(&mut nodes, &mut network);
    let elapsed = start.elapsed().as_secs_f64();
    let end = nodes[0].raft.end_offset();
    // Followers learn the last commit offset with the next heartbeat.
    assert_eq!(nodes[0].raft.commit_offset(), end);
    let bytes = (entries * payload_len) as f64;
    println!(
        "payload={payload_len}B entries={entries} elapsed={elapsed:.3}s \
         throughput={:.0} MiB/s {:.0} entries/s (3 nodes, one thread)",
        bytes / elapsed / (1024.0 * 1024.0),
        entries as f64 / elapsed
    );
}
