//! One node driven by hand-made messages: the follower's checks of what a
//! leader sends, and robustness against arbitrary (untrusted) messages.

mod harness;

use harness::{Cluster, MemLog};
use loglog_proto::entry::{encode_entry, EntryKind};
use loglog_raft::{
    Action, AppendEntries, AppendOutcome, Checkpoint, Config, ConflictHint, HardState, Heartbeat,
    InstallSnapshot, LogScan, Membership, Message, RaftNode, RequestVote, Role, TermMap, TermRun,
};
use proptest::prelude::*;

fn follower() -> (RaftNode, MemLog) {
    let node = RaftNode::new(
        Config::new(2, 1),
        HardState::default(),
        LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1, 2, 3]))).finish(),
    )
    .unwrap();
    (node, MemLog(Vec::new(), 0))
}

/// Feeds `message` from node 1, applies writes to `log`, returns the rest.
fn deliver(node: &mut RaftNode, log: &mut MemLog, message: Message) -> Vec<Action> {
    node.step(1, message);
    let mut others = Vec::new();
    for action in node.take_actions(log) {
        match action {
            Action::Append { offset, bytes, .. } => {
                assert_eq!(offset, log.0.len() as u64);
                log.0.extend_from_slice(&bytes);
            }
            Action::Truncate { offset, .. } => log.0.truncate(offset as usize),
            other => others.push(other),
        }
    }
    others
}

fn append(term: u32, prev_offset: u64, prev_term: u32, entries: Vec<u8>) -> Message {
    Message::AppendEntries(AppendEntries {
        term,
        prev_offset,
        prev_term,
        leader_commit: 0,
        entries: entries.into(),
    })
}

fn response(actions: &[Action]) -> AppendOutcome {
    actions
        .iter()
        .find_map(|action| match action {
            Action::Send(envelope) => match &envelope.message {
                Message::AppendResponse(response) => Some(response.outcome),
                _ => None,
            },
            _ => None,
        })
        .expect("an AppendResponse")
}

fn entries(term: u32, payloads: &[&[u8]]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for payload in payloads {
        encode_entry(term, EntryKind::Data, payload, &mut bytes);
    }
    bytes
}

#[test]
fn valid_entries_are_appended_and_acknowledged_only_once_durable() {
    let (mut node, mut log) = follower();
    let bytes = entries(1, &[b"a", b"bb"]);
    let actions = deliver(&mut node, &mut log, append(1, 0, 0, bytes.clone()));
    assert_eq!(log.0, bytes);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Send(_))),
        "not fsynced yet: the reply waits for the fsync"
    );
    node.storage_synced(1);
    let actions = node.take_actions(&log);
    assert_eq!(
        response(&actions),
        AppendOutcome::Accepted {
            verified_end: 35,
            durable_end: 35
        }
    );
}

#[test]
fn a_probe_is_answered_at_once() {
    let (mut node, mut log) = follower();
    deliver(&mut node, &mut log, append(1, 0, 0, entries(1, &[b"a"])));
    node.storage_synced(1);
    node.take_actions(&log);
    // Nothing new (a probe or a duplicate): answered without waiting.
    let actions = deliver(&mut node, &mut log, append(1, 0, 0, entries(1, &[b"a"])));
    assert_eq!(
        response(&actions),
        AppendOutcome::Accepted {
            verified_end: 17,
            durable_end: 17
        }
    );
}

#[test]
fn corrupt_entries_are_rejected_and_nothing_is_written() {
    let (mut node, mut log) = follower();
    let mut bytes = entries(1, &[b"abc"]);
    bytes[17] ^= 1;
    let actions = deliver(&mut node, &mut log, append(1, 0, 0, bytes));
    assert!(log.0.is_empty());
    assert!(matches!(
        response(&actions),
        AppendOutcome::Rejected {
            rejected_prev: 0,
            ..
        }
    ));

    // A cut entry, an entry of a term above the leader's, terms going
    // backwards: all rejected the same way.
    let whole = entries(1, &[b"abc"]);
    let cases = [
        whole[..whole.len() - 1].to_vec(),
        entries(5, &[b"abc"]),
        [entries(3, &[b"x"]), entries(2, &[b"y"])].concat(),
    ];
    for bytes in cases {
        let actions = deliver(&mut node, &mut log, append(4, 0, 0, bytes));
        assert!(log.0.is_empty());
        assert!(matches!(response(&actions), AppendOutcome::Rejected { .. }));
    }
}

#[test]
fn a_prev_offset_inside_an_entry_is_rejected() {
    let (mut node, mut log) = follower();
    deliver(
        &mut node,
        &mut log,
        append(1, 0, 0, entries(1, &[b"0123456789"])),
    );
    // 26 bytes in the log; offset 10 is inside the entry.
    let actions = deliver(&mut node, &mut log, append(1, 10, 1, entries(1, &[b"x"])));
    assert_eq!(log.0.len(), 26);
    assert_eq!(
        response(&actions),
        AppendOutcome::Rejected {
            rejected_prev: 10,
            hint: ConflictHint {
                term: 1,
                term_start: 0,
                offset: 10
            }
        }
    );
}

#[test]
fn a_conflicting_suffix_is_truncated_at_its_byte_offset() {
    let (mut node, mut log) = follower();
    let term1 = entries(1, &[b"keep"]);
    let stale = entries(2, &[b"stale entry", b"another"]);
    deliver(
        &mut node,
        &mut log,
        append(2, 0, 0, [term1.clone(), stale].concat()),
    );
    let fresh = entries(3, &[b"new"]);
    let actions = deliver(&mut node, &mut log, append(3, 20, 1, fresh.clone()));
    assert_eq!(log.0, [term1, fresh].concat());
    assert_eq!(node.term_map().runs().len(), 2);
    assert!(matches!(
        response(&actions),
        AppendOutcome::Accepted {
            verified_end: 39,
            ..
        }
    ));
}

#[test]
fn the_rejection_hint_skips_a_whole_term() {
    let (mut node, mut log) = follower();
    let log_bytes = [
        entries(1, &[b"a"]),
        entries(2, &[b"b", b"c", b"d"]),
        entries(4, &[b"e", b"f"]),
    ]
    .concat();
    deliver(&mut node, &mut log, append(4, 0, 0, log_bytes));
    // A leader of term 5 whose log has term 3 where ours has 2 and 4.
    let actions = deliver(&mut node, &mut log, append(5, 200, 3, entries(5, &[b"z"])));
    assert_eq!(
        response(&actions),
        AppendOutcome::Rejected {
            rejected_prev: 200,
            hint: ConflictHint {
                term: 2,
                term_start: 17,
                offset: 68
            }
        },
        "stepped back over term 4 in one go"
    );
}

#[test]
fn a_stale_leader_learns_the_newer_term() {
    let (mut node, mut log) = follower();
    deliver(&mut node, &mut log, append(3, 0, 0, Vec::new()));
    let actions = deliver(&mut node, &mut log, append(2, 0, 0, entries(2, &[b"old"])));
    assert!(log.0.is_empty());
    let answered_with_term_3 = actions
        .iter()
        .any(|action| matches!(action, Action::Send(envelope) if envelope.message.term() == 3));
    assert!(answered_with_term_3);
}

#[test]
fn the_term_is_persisted_before_entries_of_that_term_are_written_or_answered() {
    let (mut node, log) = follower();
    node.step(1, append(7, 0, 0, entries(7, &[b"x"])));
    let actions = node.take_actions(&log);
    let persist = actions
        .iter()
        .position(|a| matches!(a, Action::PersistHardState(state) if state.term == 7))
        .expect("term persisted");
    let append = actions
        .iter()
        .position(|a| matches!(a, Action::Append { .. }))
        .unwrap();
    assert!(persist < append);
    // The reply waits for the fsync, after the hard state was persisted.
    node.storage_synced(1);
    let actions = node.take_actions(&log);
    assert!(matches!(
        response(&actions),
        AppendOutcome::Accepted {
            durable_end: 17,
            ..
        }
    ));
}

#[test]
fn a_restart_with_an_inconsistent_state_is_refused() {
    let mut scan = LogScan::new(Checkpoint::bootstrap(Membership::with_voters([1])));
    let bytes = entries(5, &[b"x"]);
    for entry in loglog_proto::entry::EntryIter::new(&bytes, 0, 100) {
        scan.observe(&entry.unwrap()).unwrap();
    }
    let started = RaftNode::new(Config::new(1, 1), HardState::default(), scan.finish());
    assert!(
        started.is_err(),
        "an entry of term 5 but a persisted term of 0"
    );
}

fn any_message() -> impl Strategy<Value = Message> {
    let term = 0u32..8;
    let offset = prop_oneof![0u64..200, any::<u64>()];
    let entry_bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..100),
        (
            1u32..8,
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 0..4)
        )
            .prop_map(|(term, payloads)| {
                let mut bytes = Vec::new();
                for payload in payloads {
                    encode_entry(term, EntryKind::Data, &payload, &mut bytes);
                }
                bytes
            }),
    ];
    prop_oneof![
        (
            term.clone(),
            any::<bool>(),
            any::<bool>(),
            offset.clone(),
            0u32..8
        )
            .prop_map(|(term, pre_vote, transfer, last_offset, last_term)| {
                Message::RequestVote(RequestVote {
                    term,
                    pre_vote,
                    transfer,
                    last_offset,
                    last_term,
                })
            }),
        (
            term.clone(),
            offset.clone(),
            0u32..8,
            offset.clone(),
            entry_bytes
        )
            .prop_map(|(term, prev_offset, prev_term, leader_commit, entries)| {
                Message::AppendEntries(AppendEntries {
                    term,
                    prev_offset,
                    prev_term,
                    leader_commit,
                    entries: entries.into(),
                })
            }),
        (term.clone(), offset.clone(), any::<u64>()).prop_map(|(term, commit, read_seq)| {
            Message::Heartbeat(Heartbeat {
                term,
                commit,
                read_seq,
            })
        }),
        (term.clone(), any::<bool>(), any::<bool>()).prop_map(|(term, pre_vote, granted)| {
            Message::RequestVoteResponse(loglog_raft::RequestVoteResponse {
                term,
                pre_vote,
                granted,
            })
        }),
        (term.clone(), any::<u64>(), any::<u64>()).prop_map(|(term, read_seq, log_end)| {
            Message::HeartbeatResponse(loglog_raft::HeartbeatResponse {
                term,
                read_seq,
                log_end,
            })
        }),
        term.clone()
            .prop_map(|term| Message::TimeoutNow(loglog_raft::TimeoutNow { term })),
        (term.clone(), 0u64..300, term.clone()).prop_map(|(term, last_offset, last_term)| {
            Message::NotAMember(loglog_raft::NotAMember {
                term,
                last_offset,
                last_term,
            })
        }),
        (
            term.clone(),
            1u64..300,
            0u64..300,
            1u32..8,
            0u64..300,
            1u64..5
        )
            .prop_map(
                |(term, start, leader_commit, run_term, run_start, voters)| {
                    let run = TermRun {
                        term: run_term,
                        start: run_start.min(start - 1),
                    };
                    Message::InstallSnapshot(InstallSnapshot {
                        term,
                        leader_commit,
                        checkpoint: Checkpoint {
                            commit_offset: start,
                            terms: TermMap::from_runs(vec![run]).unwrap(),
                            membership: Membership::with_voters(1..=voters),
                        },
                    })
                }
            ),
        (
            term,
            offset.clone(),
            offset.clone(),
            any::<bool>(),
            0u32..8,
            offset
        )
            .prop_map(|(term, a, b, accepted, hint_term, c)| {
                Message::AppendResponse(loglog_raft::AppendResponse {
                    term,
                    outcome: if accepted {
                        AppendOutcome::Accepted {
                            verified_end: a.max(b),
                            durable_end: a.min(b),
                        }
                    } else {
                        AppendOutcome::Rejected {
                            rejected_prev: a,
                            hint: ConflictHint {
                                term: hint_term,
                                term_start: b,
                                offset: c,
                            },
                        }
                    },
                })
            }),
    ]
}

fn snapshot(term: u32, leader_commit: u64, start: u64, start_term: u32) -> Message {
    Message::InstallSnapshot(InstallSnapshot {
        term,
        leader_commit,
        checkpoint: Checkpoint {
            commit_offset: start,
            terms: TermMap::from_runs(vec![TermRun {
                term: start_term,
                start: 0,
            }])
            .unwrap(),
            membership: Membership::with_voters([1, 2, 3]),
        },
    })
}

/// InstallSnapshot: a follower that holds the prefix keeps its log; one
/// that does not resets to the leader's start; nonsense is ignored.
#[test]
fn a_snapshot_keeps_a_matching_log_and_resets_another() {
    let (mut node, mut log) = follower();
    let bytes = entries(1, &[b"a", b"bb", b"ccc"]);
    deliver(&mut node, &mut log, append(1, 0, 0, bytes.clone()));
    node.storage_synced(1);
    let start = 17 + 18; // after the first two entries
    let actions = deliver(&mut node, &mut log, snapshot(1, 60, start, 1));
    assert!(!actions.iter().any(|a| matches!(a, Action::ResetLog { .. })));
    assert_eq!(log.0, bytes, "the log holds the prefix: kept");
    assert_eq!(node.commit_offset(), start);
    // It already matched this leader past the start.
    let end = bytes.len() as u64;
    assert_eq!(
        response(&actions),
        AppendOutcome::Accepted {
            verified_end: end,
            durable_end: end
        }
    );

    // Start above the leader's commit, or of a term above the leader's:
    // not a checkpoint an honest leader sends.
    for bogus in [snapshot(2, 10, 100, 2), snapshot(2, 200, 100, 3)] {
        let actions = deliver(&mut node, &mut log, bogus);
        assert!(!actions.iter().any(|a| matches!(a, Action::ResetLog { .. })));
    }

    // A start past our log, from a leader of term 2: reset.
    let actions = deliver(&mut node, &mut log, snapshot(2, 500, 400, 2));
    let reset = actions
        .iter()
        .find_map(|a| match a {
            Action::ResetLog { checkpoint } => Some(checkpoint.clone()),
            _ => None,
        })
        .expect("a reset");
    assert_eq!(reset.commit_offset, 400);
    assert!(actions.contains(&Action::CommitAdvanced { commit_offset: 400 }));
    assert_eq!(node.commit_offset(), 400);
    assert_eq!(node.end_offset(), 400);
    assert_eq!(node.log_start(), 400);
    assert_eq!(node.durable_offset(), 400);
    // Entries from there on are appended as usual.
    let more = entries(2, &[b"after"]);
    let actions = deliver(
        &mut node,
        &mut MemLog(vec![0; 400], 400),
        append(2, 400, 2, more),
    );
    assert!(!actions.iter().any(|a| matches!(a, Action::Send(_))));
    assert_eq!(node.end_offset(), 400 + 21);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary messages from any peer, into nodes of every role, mixed
    /// with ticks: typed rejections and ignored messages, never a panic or
    /// a broken invariant (the node asserts its own after every input).
    #[test]
    fn arbitrary_messages_never_panic(
        script in proptest::collection::vec((0usize..3, 1u64..5, any_message(), 0u8..4), 1..60)
    ) {
        let mut cluster = Cluster::new(&[1, 2, 3]);
        cluster.elect(1);
        cluster.propose(1, b"some data");
        cluster.ticks(2);
        for (target, from, message, ticks) in script {
            let target = [1, 2, 3][target];
            if from != target {
                cluster.node_mut(target).step(from, message);
            }
            for _ in 0..ticks {
                cluster.node_mut(target).tick();
            }
            // Apply the node's actions, but keep its sends off the network:
            // other nodes would treat replies to forged messages as real.
            let node = cluster.nodes.get_mut(&target).unwrap();
            for action in node.raft.take_actions(&node.log) {
                match action {
                    Action::Append { bytes, write_id, .. } => {
                        node.log.0.extend_from_slice(&bytes);
                        node.last_write = write_id;
                    }
                    Action::Truncate { offset, write_id } => {
                        node.log.0.truncate(offset as usize);
                        node.last_write = write_id;
                    }
                    Action::ResetLog { checkpoint } => {
                        let start = checkpoint.commit_offset;
                        node.log = MemLog(vec![0; start as usize], start);
                    }
                    _ => {}
                }
            }
            let last_write = node.last_write;
            node.durable_log = node.log.0.clone();
            node.raft.storage_synced(last_write);
            let _ = node.raft.take_actions(&node.log);
            let role = node.raft.role();
            prop_assert!(matches!(role, Role::Follower | Role::PreCandidate | Role::Candidate | Role::Leader));
        }
    }
}
