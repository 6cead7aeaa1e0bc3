//! Writes the seed corpus of every fuzz target: a handful of valid inputs
//! per target, made by encoding real values with the project's own
//! encoders, into `fuzz/corpus/<target>/seed-*`.
//!
//! `cargo +nightly run --example seed_corpus` (from `fuzz/`). Deterministic:
//! running it again rewrites the same files.

use std::fs;
use std::path::{Path, PathBuf};

use loglog_proto::entry::{encode_entry, encode_entry_with_flags, encode_trim_payload, EntryKind};
use loglog_proto::producer::{ProducerTag, ENTRY_FLAG_PRODUCER};
use loglog_proto::segment::SegmentHeader;
use loglog_proto::wire::{
    AdminRequest, ClusterStatus, FrameHeader, MemberStatus, NodeStatus, Request, Role, ServerError,
};
use loglog_raft::{
    AppendEntries, AppendOutcome, AppendResponse, Checkpoint, ConflictHint, Envelope, HardState,
    Heartbeat, HeartbeatResponse, InstallSnapshot, MemberAddress, Membership, Message, NotAMember,
    RequestVote, RequestVoteResponse, TermMap, TermRun, TimeoutNow,
};

struct Corpus {
    root: PathBuf,
}

impl Corpus {
    fn write(&self, target: &str, seeds: Vec<Vec<u8>>) {
        let dir = self.root.join(target);
        fs::create_dir_all(&dir).expect("create the corpus directory");
        for (index, seed) in seeds.iter().enumerate() {
            fs::write(dir.join(format!("seed-{index:02}")), seed).expect("write a seed");
        }
        println!("{target}: {} seeds", seeds.len());
    }
}

/// A short log: a no-op, data entries (one with a producer envelope), a
/// membership config entry and a trim entry.
fn sample_log() -> Vec<u8> {
    let mut log = Vec::new();
    encode_entry(1, EntryKind::NoOp, b"", &mut log);
    encode_entry(1, EntryKind::Data, b"hello", &mut log);
    let tag = ProducerTag {
        producer_id: 0x1234_5678_9abc_def0,
        sequence: 7,
    };
    let mut payload = tag.encode().to_vec();
    payload.extend_from_slice(b"from a producer");
    encode_entry_with_flags(2, EntryKind::Data, ENTRY_FLAG_PRODUCER, &payload, &mut log);
    encode_entry(
        2,
        EntryKind::Config,
        &sample_membership().encode(),
        &mut log,
    );
    encode_entry(3, EntryKind::Trim, &encode_trim_payload(16), &mut log);
    log
}

fn sample_membership() -> Membership {
    let mut membership = Membership::with_voters([1, 2, 3]);
    membership
        .set_address(1, MemberAddress::new("10.0.0.1:19195", "10.0.0.1:19194"))
        .expect("a member's address");
    membership
        .set_address(2, MemberAddress::new("10.0.0.2:19195", "10.0.0.2:19194"))
        .expect("a member's address");
    membership
}

fn sample_checkpoint() -> Checkpoint {
    Checkpoint {
        commit_offset: 4096,
        terms: TermMap::from_runs(vec![
            TermRun { term: 1, start: 0 },
            TermRun {
                term: 3,
                start: 1024,
            },
        ])
        .expect("increasing runs"),
        membership: sample_membership(),
    }
}

fn sample_messages() -> Vec<Message> {
    vec![
        Message::RequestVote(RequestVote {
            term: 4,
            pre_vote: true,
            transfer: false,
            last_offset: 1024,
            last_term: 3,
        }),
        Message::RequestVoteResponse(RequestVoteResponse {
            term: 4,
            pre_vote: false,
            granted: true,
        }),
        Message::AppendEntries(AppendEntries {
            term: 3,
            prev_offset: 0,
            prev_term: 0,
            leader_commit: 0,
            entries: sample_log().into(),
        }),
        Message::AppendResponse(AppendResponse {
            term: 3,
            outcome: AppendOutcome::Accepted {
                verified_end: 200,
                durable_end: 100,
            },
        }),
        Message::AppendResponse(AppendResponse {
            term: 3,
            outcome: AppendOutcome::Rejected {
                rejected_prev: 300,
                hint: ConflictHint {
                    term: 2,
                    term_start: 64,
                    offset: 128,
                },
            },
        }),
        Message::Heartbeat(Heartbeat {
            term: 3,
            commit: 200,
            read_seq: 9,
        }),
        Message::HeartbeatResponse(HeartbeatResponse {
            term: 3,
            read_seq: 9,
            log_end: 200,
        }),
        Message::TimeoutNow(TimeoutNow { term: 3 }),
        Message::NotAMember(NotAMember {
            term: 3,
            last_offset: 200,
            last_term: 3,
        }),
        Message::InstallSnapshot(InstallSnapshot {
            term: 3,
            leader_commit: 5000,
            checkpoint: sample_checkpoint(),
        }),
    ]
}

fn encoded_envelope(message: Message) -> Vec<u8> {
    let mut out = Vec::new();
    Envelope {
        from: 1,
        to: 2,
        message,
    }
    .encode(&mut out);
    out
}

fn batch_seeds() -> Vec<Vec<u8>> {
    let encode = |subs: &[&[u8]]| {
        loglog::batch::encode_batch(subs.iter().copied())
            .expect("a small batch")
            .to_vec()
    };
    vec![
        encode(&[]),
        encode(&[b"one"]),
        encode(&[b"put k1 v1", b"", b"put k2 a longer value"]),
    ]
}

fn raft_state_seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = sample_messages()
        .into_iter()
        .map(encoded_envelope)
        .collect();
    seeds.push(
        HardState {
            term: 5,
            voted_for: Some(2),
        }
        .encode()
        .to_vec(),
    );
    seeds.push(sample_checkpoint().encode());
    seeds.push(Checkpoint::bootstrap(Membership::default()).encode());
    seeds.push(Membership::with_voters([1, 2, 3]).encode());
    seeds.push(sample_membership().encode());
    seeds
}

fn entry_parser_seeds() -> Vec<Vec<u8>> {
    let log = sample_log();
    let mut segment = SegmentHeader { start_offset: 1000 }.encode().to_vec();
    segment.extend_from_slice(&log);
    vec![log, segment]
}

fn frame(request: Request<'_>, request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(request_id, &mut out);
    out
}

fn response(opcode: u8, status: u8, body: &[u8]) -> Vec<u8> {
    let mut out = FrameHeader {
        body_len: body.len() as u32,
        opcode,
        aux: status,
        request_id: 3,
    }
    .encode()
    .to_vec();
    out.extend_from_slice(body);
    out
}

fn sample_node_status() -> NodeStatus {
    NodeStatus {
        node_id: 1,
        term: 3,
        role: Role::Leader,
        segment_count: 2,
        start_offset: 0,
        commit_offset: 4096,
        end_offset: 5000,
        leader_id: 1,
    }
}

fn sample_cluster_status() -> ClusterStatus {
    ClusterStatus {
        node: sample_node_status(),
        peer_bytes_sent: 123_456,
        members: vec![
            MemberStatus {
                id: 1,
                voter: true,
                match_offset: Some(5000),
                last_heard_ms: None,
                peer_addr: "10.0.0.1:19195".into(),
                client_addr: "10.0.0.1:19194".into(),
            },
            MemberStatus {
                id: 4,
                voter: false,
                match_offset: Some(100),
                last_heard_ms: Some(12),
                peer_addr: "10.0.0.4:19195".into(),
                client_addr: String::new(),
            },
        ],
    }
}

fn wire_frame_seeds() -> Vec<Vec<u8>> {
    let tag = ProducerTag {
        producer_id: 42,
        sequence: 1,
    };
    let requests = vec![
        frame(
            Request::Append {
                payload: b"hello",
                no_wait: false,
            },
            1,
        ),
        frame(
            Request::AppendOnce {
                producer: tag,
                retry: true,
                payload: b"once",
                no_wait: true,
            },
            2,
        ),
        frame(
            Request::Read {
                offset: 16,
                max_bytes: 65536,
                wait_ms: 100,
                linearizable: true,
            },
            3,
        ),
        frame(Request::Status, 4),
        frame(Request::ClusterStatus, 5),
        frame(
            Request::Admin(AdminRequest::AddNode {
                id: 4,
                peer_addr: "10.0.0.4:19195",
                client_addr: "10.0.0.4:19194",
            }),
            6,
        ),
        frame(Request::Admin(AdminRequest::RemoveNode { id: 2 }), 7),
        frame(Request::Admin(AdminRequest::TransferLeader { id: 3 }), 8),
        frame(Request::Admin(AdminRequest::Trim { offset: 4096 }), 9),
    ];
    let mut seeds = vec![requests.concat()];
    seeds.extend(requests);
    use loglog_proto::wire::opcode;
    seeds.push(response(opcode::STATUS, 0, &sample_node_status().encode()));
    seeds.push(response(
        opcode::CLUSTER_STATUS,
        0,
        &sample_cluster_status().encode(),
    ));
    for error in [
        ServerError::NotLeader {
            leader: Some("10.0.0.2:19194".into()),
        },
        ServerError::Trimmed { start: 4096 },
        ServerError::TooLarge { max: 1 << 24 },
        ServerError::Unavailable {
            message: "disk full".into(),
        },
    ] {
        seeds.push(response(opcode::APPEND, error.code(), &error.encode_body()));
    }
    seeds
}

fn read_page_seeds() -> Vec<Vec<u8>> {
    let log = sample_log();
    let answer = |offset: u64, commit: u64, log: &[u8]| {
        [&offset.to_le_bytes()[..], &commit.to_le_bytes(), log].concat()
    };
    vec![
        answer(0, log.len() as u64, &log),
        answer(4096, 4096 + log.len() as u64 + 100, &log),
        // A long-poll that timed out: no entries.
        answer(4096, 4096, &[]),
    ]
}

/// `segment_recovery`'s input layout (see the target): start, count, then
/// per segment flags, an optional step, a length unless last, the log.
fn recovery_input(start: u64, segments: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&start.to_le_bytes());
    out.push((segments.len() - 1) as u8);
    for (index, (flags, log)) in segments.iter().enumerate() {
        out.push(*flags);
        if flags & 4 != 0 {
            out.extend_from_slice(&(log.len() as u16).to_le_bytes());
        }
        if index + 1 < segments.len() {
            out.extend_from_slice(&(log.len() as u16).to_le_bytes());
        }
        out.extend_from_slice(log);
    }
    out
}

fn segment_recovery_seeds() -> Vec<Vec<u8>> {
    let log = sample_log();
    let mut torn = log.clone();
    torn.truncate(log.len() - 3);
    let mut zero_tail = log.clone();
    zero_tail.extend_from_slice(&[0; 64]);
    vec![
        recovery_input(0, &[(0, &log)]),
        recovery_input(4096, &[(0, &log), (0, &torn)]),
        recovery_input(0, &[(0, &log), (0, &log), (0, &zero_tail)]),
        recovery_input(0, &[(0, b"")]),
    ]
}

fn peer_stream_seeds() -> Vec<Vec<u8>> {
    let handshake = loglogd::fuzzing::encode_handshake(1, 2, "loglog-3a5f");
    let frame = |message: Message| {
        let body = encoded_envelope(message);
        [&(body.len() as u32).to_le_bytes()[..], &body].concat()
    };
    let frames: Vec<Vec<u8>> = sample_messages()
        .into_iter()
        // The target caps entries at 4 KiB, like a node's cap, only smaller.
        .map(frame)
        .collect();
    let mut seeds = vec![[handshake.clone(), frames.concat()].concat()];
    seeds.extend(
        frames
            .into_iter()
            .map(|frame| [handshake.clone(), frame].concat()),
    );
    seeds
}

fn state_files_seeds() -> Vec<Vec<u8>> {
    use loglogd::fuzzing::{encode_cluster_id, DurableRecord, NodeState};
    let with_mode = |mode: u8, bytes: &[u8]| [&[mode][..], bytes].concat();
    let node_state = NodeState {
        node_id: 2,
        term: 7,
        voted_for: 1,
    }
    .encode();
    let durable = DurableRecord {
        synced_end: 4096,
        lost_tail: Some(loglog_raft::LostTail {
            end_offset: 5000,
            last_term: 3,
        }),
    }
    .encode();
    // The framing: a state file as the node saves it.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("node.state");
    loglog_storage::state_file::save(&path, &node_state).expect("save a state file");
    let framed = fs::read(&path).expect("read the state file");
    vec![
        with_mode(0, &framed),
        with_mode(1, &120u64.to_le_bytes()),
        with_mode(1, &40u64.to_le_bytes()),
        with_mode(2, &node_state),
        with_mode(2, &durable),
        with_mode(2, &DurableRecord::default().encode()),
        with_mode(2, &encode_cluster_id("loglog-3a5f")),
        with_mode(
            2,
            b"1=10.0.0.1:19195@10.0.0.1:19194,2=10.0.0.2:19195@10.0.0.2:19194",
        ),
        with_mode(2, &sample_checkpoint().encode()),
    ]
}

fn config_file_seeds() -> Vec<Vec<u8>> {
    let files = [
        "data_dir = \"/var/lib/loglog\"\nlisten = \"127.0.0.1:7001\"\n",
        concat!(
            "id = 1\n",
            "data_dir = \"d1\"\n",
            "listen = \"127.0.0.1:7001\"\n",
            "metrics_listen = \"127.0.0.1:9194\"\n",
            "peer_listen = \"127.0.0.1:7101\"\n",
            "peers = \"1=127.0.0.1:7101@127.0.0.1:7001,2=127.0.0.1:7102@127.0.0.1:7002\"\n",
            "segment_size = \"64MiB\"\n",
            "max_entry_size = 1048576\n",
            "fsync = \"always\"\n",
            "cluster_id = \"my-cluster\"\n",
            "\n[limits]\n",
            "max_connections = 64\n",
            "max_in_flight_bytes = \"8MiB\"\n",
            "max_long_poll_wait = \"30s\"\n",
            "client_stall_timeout = \"1m\"\n",
        ),
        "id = 4\njoin = true\ncluster_id = \"c\"\npeer_listen = \"127.0.0.1:0\"\n",
        "fsync = \"never\"\nsegment_size = 4096\n",
    ];
    files.iter().map(|file| file.as_bytes().to_vec()).collect()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let corpus = Corpus { root };
    corpus.write("batch", batch_seeds());
    corpus.write("raft_state", raft_state_seeds());
    corpus.write("entry_parser", entry_parser_seeds());
    corpus.write("wire_frame", wire_frame_seeds());
    corpus.write("read_page", read_page_seeds());
    corpus.write("segment_recovery", segment_recovery_seeds());
    corpus.write("peer_stream", peer_stream_seeds());
    corpus.write("state_files", state_files_seeds());
    corpus.write("config_file", config_file_seeds());
}
