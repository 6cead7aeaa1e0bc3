//! Whole-cluster behaviour of the core, through the in-memory harness.

mod harness;

use harness::Cluster;
use loglog_proto::entry::{EntryIter, EntryKind};
use loglog_raft::{
    AppendOutcome, Membership, MembershipChange, Message, ProposeError, RequestError, Role,
};

fn payloads(log: &[u8]) -> Vec<Vec<u8>> {
    EntryIter::new(log, 0, u32::MAX)
        .map(|entry| entry.expect("valid log"))
        .filter(|entry| entry.header.kind == EntryKind::Data)
        .map(|entry| entry.payload.to_vec())
        .collect()
}

#[test]
fn a_leader_is_elected_and_its_no_op_commits_everywhere() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.ticks(40);
    let leader = cluster.leader().expect("a leader");
    let term = cluster.node(leader).term();
    cluster.ticks(5);
    for id in [1, 2, 3] {
        let node = cluster.node(id);
        assert_eq!(node.term(), term);
        assert_eq!(node.leader(), Some(leader));
        assert_eq!(node.commit_offset(), 16, "the 16-byte no-op is committed");
    }
}

#[test]
fn elections_are_deterministic_for_a_seed() {
    let run = || {
        let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
        cluster.ticks(60);
        (cluster.leader(), cluster.delivered.clone())
    };
    assert_eq!(run(), run());
}

#[test]
fn entries_replicate_and_commit_on_every_node() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let mut offsets = Vec::new();
    for i in 0..50u32 {
        offsets.push(cluster.propose(1, &i.to_le_bytes()));
    }
    cluster.deliver_all();
    cluster.ticks(3);
    let end = cluster.node(1).end_offset();
    assert_eq!(end, 16 + 50 * 20);
    assert_eq!(
        offsets[1] - offsets[0],
        20,
        "offsets are dense byte offsets"
    );
    for id in [1, 2, 3] {
        assert_eq!(cluster.node(id).commit_offset(), end);
        assert_eq!(cluster.log(id), cluster.log(1));
    }
    assert_eq!(payloads(cluster.log(2)).len(), 50);
    let followers = cluster.node(1).followers();
    assert_eq!(followers.len(), 2);
    assert!(followers
        .iter()
        .all(|f| f.replicating && f.voter && f.match_offset == end && f.next_offset == end));
    assert!(cluster.node(2).followers().is_empty());
}

#[test]
fn proposals_are_refused_by_followers_with_a_leader_hint() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(2);
    assert_eq!(
        cluster.node_mut(1).propose(b"x"),
        Err(ProposeError::NotLeader { leader: Some(2) })
    );
    let too_large = vec![0; cluster.node(2).config().max_payload as usize + 1];
    assert!(matches!(
        cluster.node_mut(2).propose(&too_large),
        Err(ProposeError::TooLarge { .. })
    ));
}

#[test]
fn uncommitted_bytes_are_bounded() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |config| {
        config.max_uncommitted_bytes = 1000;
    });
    cluster.elect(1);
    cluster.isolate(1);
    let mut accepted = 0;
    while cluster.node_mut(1).propose(&[7; 84]).is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, 10, "10 entries of 100 bytes fit in 1000");
    assert_eq!(
        cluster.node_mut(1).propose(&[7; 84]),
        Err(ProposeError::Busy("too many uncommitted bytes"))
    );
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_disrupting_the_leader() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster.ticks(100);
    assert_eq!(
        cluster.node(3).term(),
        term,
        "pre-votes never bump the term"
    );
    cluster.heal();
    cluster.ticks(30);
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.node(1).term(), term);
    assert_eq!(cluster.node(3).leader(), Some(1));
}

#[test]
fn without_pre_vote_a_rejoining_node_bumps_the_term() {
    // The contrast that shows what pre-vote buys (check-quorum off too, or
    // the lease alone would protect the leader).
    let mut cluster = Cluster::with_config(&[1, 2, 3], |config| {
        config.pre_vote = false;
        config.check_quorum = false;
    });
    cluster.elect(1);
    let term = cluster.node(1).term();
    cluster.isolate(3);
    cluster.ticks(100);
    assert!(cluster.node(3).term() > term);
    cluster.heal();
    cluster.ticks(50);
    assert!(
        cluster.node(1).term() > term,
        "the old leader was disrupted"
    );
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    let election_ticks = cluster.node(1).config().election_ticks as usize;
    cluster.ticks(2 * election_ticks);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    cluster.ticks(60);
    let new_leader = cluster.leader().expect("the majority elects a leader");
    assert_ne!(new_leader, 1);
    // Proposals on the old leader fail fast instead of hanging.
    assert!(matches!(
        cluster.node_mut(1).propose(b"x"),
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn votes_are_persisted_before_the_response_is_sent() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for id in [2, 3] {
        let node = &cluster.nodes[&id];
        assert_eq!(node.hard_state.term, node.raft.term());
        // Node 2 and 3 voted for 1 (or learned the term from it).
        assert!(node.hard_state.voted_for.is_none_or(|vote| vote == 1));
    }
}

/// A deposed leader's divergent suffix (many entries of an old term) is
/// truncated at a byte offset, and the new leader finds the divergence in
/// a few round trips thanks to the term hints, not one per entry.
#[test]
fn conflicting_suffix_is_truncated_with_fast_backtracking() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, b"committed");
    cluster.ticks(2);
    let committed_end = cluster.node(1).end_offset();
    assert_eq!(cluster.node(2).commit_offset(), committed_end);

    // Node 1 appends 100 entries nobody else sees.
    cluster.isolate(1);
    for i in 0..100u32 {
        cluster.propose(1, &[i as u8; 50]);
    }
    // Nodes 2 and 3 elect one of them, which writes different, shorter entries.
    cluster.blocked.insert((1, 2));
    let leader = cluster.elect_new_leader();
    for i in 0..10u32 {
        cluster.propose(leader, &[i as u8; 7]);
    }
    cluster.deliver_all();
    let rejections_before = count_rejections(&cluster);
    cluster.heal();
    cluster.ticks(10);
    let rejections = count_rejections(&cluster) - rejections_before;

    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(
        cluster.log(1),
        cluster.log(leader),
        "node 1 now holds the leader's log"
    );
    assert_eq!(cluster.nodes[&1].truncations, vec![committed_end]);
    assert!(
        rejections <= 3,
        "{rejections} rejections: backtracking went entry by entry"
    );
    let payloads = payloads(cluster.log(1));
    assert_eq!(payloads.len(), 11);
    assert_eq!(payloads[10], vec![9u8; 7]);
}

fn count_rejections(cluster: &Cluster) -> usize {
    cluster.count_delivered(|message| {
        matches!(
            message,
            Message::AppendResponse(response)
                if matches!(response.outcome, AppendOutcome::Rejected { .. })
        )
    })
}

/// A follower lagging by many terms of small divergent runs still catches
/// up, with rejections bounded by the number of terms, not entries.
#[test]
fn backtracking_across_several_terms() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4, 5]);
    cluster.elect(1);
    cluster.deliver_all();
    // Node 5 is cut off; nodes 1..=4 go through several leaders.
    cluster.isolate(5);
    for leader in [2, 3, 4, 1, 2] {
        cluster.elect_among(leader);
        for i in 0..20u8 {
            cluster.propose(leader, &[i; 3]);
        }
        cluster.deliver_all();
    }
    let rejections_before = count_rejections(&cluster);
    cluster.heal();
    cluster.ticks(20);
    let rejections = count_rejections(&cluster) - rejections_before;
    let leader = cluster.leader().expect("leader");
    assert_eq!(cluster.log(5), cluster.log(leader));
    assert!(
        rejections <= 2,
        "{rejections} rejections for an empty-suffix follower"
    );
}

/// Raft's Figure 8: an entry of an older term stored on a majority must not
/// be committed by counting replicas; only an entry of the current term
/// commits (and with it everything before).
#[test]
fn an_old_term_entry_on_a_majority_is_not_committed_by_counting() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |config| {
        config.max_batch_bytes = 1; // one entry per AppendEntries
    });
    let old_entry_end = figure8_setup(&mut cluster);
    let node2 = cluster.node(2);
    assert_eq!(node2.role(), Role::Leader);
    assert!(
        node2.commit_offset() < old_entry_end,
        "the term-1 entry is on 2 of 3 nodes but no term-2 entry is: nothing new commits"
    );
    // Once the no-op of term 2 reaches a majority, both commit together.
    cluster.drop_filter = None;
    cluster.ticks(5);
    assert_eq!(
        cluster.node(2).commit_offset(),
        cluster.node(2).end_offset()
    );
}

/// Node 1 leads term 1 and writes X, which reaches node 2 only (acks lost).
/// Node 1 goes down; node 2 wins term 2 and sends X then its no-op to node
/// 3, but the no-op is lost: X (term 1) is durable on nodes 2 and 3.
/// Returns X's end offset.
fn figure8_setup(cluster: &mut Cluster) -> u64 {
    cluster.elect(1);
    cluster.ticks(2);
    cluster.isolate(1);
    let x = cluster.propose(1, b"X");
    let x_end = x + 16 + 1;
    // Deliver X to node 2 only, and lose node 2's acks.
    cluster.blocked.remove(&(1, 2));
    cluster.tick(1);
    cluster.tick(1);
    cluster.deliver_all();
    assert_eq!(cluster.node(2).end_offset(), x_end);
    assert!(cluster.node(1).commit_offset() < x_end);
    cluster.crash(1);
    cluster.heal();
    // Node 3 receives only entries of term 1 from node 2 (no no-op).
    // The first such message is a probe past node 3's end: it is rejected
    // anyway, and the rejection leads node 2 back to X.
    let mut seen = 0;
    cluster.drop_filter = Some(Box::new(move |envelope| {
        let no_op_to_3 = matches!(&envelope.message, Message::AppendEntries(append)
            if envelope.to == 3 && append.entries.len() >= 16
                && u32::from_le_bytes(append.entries[8..12].try_into().unwrap()) == 2);
        if no_op_to_3 {
            seen += 1;
        }
        no_op_to_3 && seen > 1
    }));
    // Node 3 still follows node 1's lease: let time pass for 2 and 3. Node
    // 3 cannot win (its log lacks X), node 2 can.
    for _ in 0..100 {
        if cluster.node(2).role() == Role::Leader {
            break;
        }
        cluster.tick_all();
    }
    assert_eq!(cluster.node(2).role(), Role::Leader);
    cluster.ticks(3);
    assert_eq!(cluster.node(3).end_offset(), x_end, "X reached node 3");
    x_end
}

#[cfg(feature = "bug-injection")]
#[test]
fn the_injected_bug_commits_the_old_term_entry() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |config| {
        config.max_batch_bytes = 1;
        config.bugs.commit_old_term_by_counting = true;
    });
    let old_entry_end = figure8_setup(&mut cluster);
    assert!(cluster.node(2).commit_offset() >= old_entry_end);
}

#[test]
fn read_index_waits_for_a_heartbeat_round() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, b"before the read");
    cluster.deliver_all();
    let commit = cluster.node(1).commit_offset();
    cluster.node_mut(1).read_index(7).unwrap();
    cluster.run(1);
    assert!(
        cluster.nodes[&1].reads_ready.is_empty(),
        "not confirmed yet"
    );
    cluster.deliver_all();
    assert_eq!(cluster.nodes[&1].reads_ready, vec![(7, commit)]);

    // Followers refuse, naming the leader.
    assert_eq!(
        cluster.node_mut(2).read_index(8),
        Err(RequestError::NotLeader { leader: Some(1) })
    );
}

#[test]
fn read_index_on_a_deposed_leader_never_succeeds() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(1);
    cluster.node_mut(1).read_index(9).unwrap();
    cluster.run(1);
    cluster.ticks(40);
    assert!(cluster.nodes[&1].reads_ready.is_empty());
    assert_eq!(cluster.nodes[&1].reads_failed, vec![9]);
}

#[test]
fn read_index_in_a_single_node_cluster_is_immediate() {
    let mut cluster = Cluster::new(&[1]);
    cluster.elect(1);
    cluster.node_mut(1).read_index(1).unwrap();
    cluster.run(1);
    assert_eq!(cluster.nodes[&1].reads_ready, vec![(1, 16)]);
}

#[test]
fn leadership_transfer_hands_over_without_waiting_for_a_timeout() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.propose(1, b"data");
    let term = cluster.node(1).term();
    cluster.node_mut(1).transfer_leadership(3).unwrap();
    assert!(matches!(
        cluster.node_mut(1).propose(b"during transfer"),
        Err(ProposeError::Busy(_))
    ));
    cluster.run(1);
    cluster.deliver_all();
    // No tick at all: the target campaigned at once and won (the lease
    // check lets a transfer election through).
    assert_eq!(cluster.leader(), Some(3));
    assert_eq!(cluster.node(3).term(), term + 1);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    assert_eq!(
        cluster.node_mut(1).transfer_leadership(2),
        Err(RequestError::NotLeader { leader: Some(3) })
    );
}

#[test]
fn a_learner_catches_up_is_promoted_and_the_old_leader_can_leave() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..30u8 {
        cluster.propose(1, &[i; 100]);
    }
    cluster.deliver_all();
    cluster.add_node(4, Membership::default());

    // Promotion of a non-member, or before it caught up, is refused.
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_membership(MembershipChange::PromoteLearner(4)),
        Err(ProposeError::BadMembershipChange(_))
    ));
    cluster
        .node_mut(1)
        .propose_membership(MembershipChange::AddLearner(4))
        .unwrap();
    assert!(
        matches!(
            cluster
                .node_mut(1)
                .propose_membership(MembershipChange::Remove(2)),
            Err(ProposeError::Busy(_))
        ),
        "one change at a time"
    );
    cluster.run(1);
    cluster.ticks(10);
    assert_eq!(
        cluster.log(4),
        cluster.log(1),
        "the learner caught up from offset 0"
    );
    assert!(cluster.node(4).membership().learners.contains(&4));
    assert_eq!(cluster.node(4).role(), Role::Follower);

    cluster.change_membership(1, MembershipChange::PromoteLearner(4));
    cluster.ticks(5);
    let membership = cluster.node(2).membership().clone();
    assert_eq!(membership.voters, [1, 2, 3, 4].into());
    assert_eq!(membership.quorum(), 3);

    // The leader removes itself: it leads until that commits, then steps
    // down, and the rest elect a new leader.
    cluster.change_membership(1, MembershipChange::Remove(1));
    cluster.ticks(5);
    assert_eq!(cluster.node(1).role(), Role::Follower);
    cluster.ticks(60);
    let leader = cluster.leader().expect("new leader");
    assert_ne!(leader, 1);
    let offset = cluster.propose(leader, b"after the change");
    cluster.ticks(3);
    for id in [2, 3, 4] {
        assert!(cluster.node(id).commit_offset() > offset);
    }
}

#[test]
fn a_learner_never_campaigns() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.add_node(4, Membership::default());
    cluster.change_membership(1, MembershipChange::AddLearner(4));
    cluster.ticks(5);
    cluster.isolate(4);
    cluster.ticks(100);
    assert_eq!(cluster.node(4).role(), Role::Follower);
    assert_eq!(cluster.node(4).term(), cluster.node(1).term());
}

#[test]
fn a_restarted_node_keeps_its_vote_term_and_commit_floor() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..10u8 {
        cluster.propose(1, &[i; 10]);
    }
    cluster.ticks(3);
    let commit = cluster.node(2).commit_offset();
    let term = cluster.node(2).term();
    cluster.crash(2);
    cluster.restart(2);
    assert_eq!(cluster.node(2).term(), term);
    assert_eq!(
        cluster.node(2).commit_offset(),
        commit,
        "checkpoint kept the commit"
    );
    cluster.ticks(3);
    assert_eq!(cluster.log(2), cluster.log(1));
}

#[test]
fn unsynced_writes_are_not_acknowledged() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.ticks(2);
    for id in [1, 2, 3] {
        cluster.nodes.get_mut(&id).unwrap().auto_sync = false;
    }
    let offset = cluster.propose(1, b"not yet durable");
    cluster.ticks(3);
    assert!(cluster.node(1).commit_offset() <= offset, "nobody fsynced");
    cluster.sync(2);
    cluster.run(2);
    cluster.deliver_all();
    assert!(
        cluster.node(1).commit_offset() <= offset,
        "only one durable copy of 3"
    );
    cluster.sync(3);
    cluster.run(3);
    cluster.deliver_all();
    // Two followers durable: a quorum, but the leader reports commit only
    // once its own copy is durable too (the commit offset is local).
    assert!(cluster.node(1).commit_offset() <= offset);
    cluster.sync(1);
    cluster.run(1);
    assert!(cluster.node(1).commit_offset() > offset);
}

/// Raft's Figure 8, played to the end on 5 nodes: with the old-term entry X
/// on a majority, leader S1 (term 3) must not count it as committed,
/// because S5 (whose last term, 2, beats X's) can still win and overwrite
/// it. Returns whether X was overwritten. Panics (harness safety check) if
/// a node committed X.
fn figure8_full(tweak: fn(&mut loglog_raft::Config)) -> bool {
    let mut cluster = Cluster::with_config(&[1, 2, 3, 4, 5], tweak);
    // (a) S1 leads term 1; X reaches S2 only.
    cluster.elect(1);
    cluster.ticks(2);
    cluster.isolate(1);
    cluster.blocked.remove(&(1, 2));
    let x = cluster.propose(1, b"X");
    cluster.tick(1);
    cluster.tick(1);
    cluster.deliver_all();
    assert_eq!(cluster.node(2).end_offset(), x + 17);
    cluster.crash(1);
    cluster.heal();
    // (b) S5 wins term 2 with S3 and S4; its no-op stays local.
    cluster.drop_filter = Some(Box::new(|envelope| {
        envelope.from == 5 && matches!(envelope.message, Message::AppendEntries(_))
    }));
    cluster.elect(5);
    assert_eq!(cluster.node(5).term(), 2);
    cluster.crash(5);
    // (c) S1 restarts and wins term 3; X reaches S3 but S1's no-op does
    // not (the first no-op message to S3 is a probe it rejects anyway).
    cluster.restart(1);
    let mut no_ops_to_3 = 0;
    cluster.drop_filter = Some(Box::new(move |envelope| {
        let no_op_to_3 = matches!(&envelope.message, Message::AppendEntries(append)
            if envelope.to == 3 && append.entries.len() >= 16
                && u32::from_le_bytes(append.entries[8..12].try_into().unwrap()) == 3);
        if no_op_to_3 {
            no_ops_to_3 += 1;
        }
        (no_op_to_3 && no_ops_to_3 > 1) || (envelope.from == 1 && envelope.to == 4)
    }));
    cluster.elect(1);
    assert_eq!(cluster.node(1).term(), 3);
    cluster.tick(1);
    cluster.tick(1);
    cluster.deliver_all();
    assert_eq!(cluster.node(3).end_offset(), x + 17, "X is on S1, S2, S3");
    // (d) S1 crashes; S5 comes back and wins term 4 with S3 and S4.
    cluster.crash(1);
    cluster.restart(5);
    cluster.drop_filter = None;
    cluster.elect(5);
    cluster.ticks(5);
    let leader_log = cluster.log(5).to_vec();
    leader_log.get(x as usize + 16..x as usize + 17) != Some(b"X".as_slice())
}

fn no_lease(config: &mut loglog_raft::Config) {
    // Scripted elections: no pre-vote or lease to wait out; one entry per
    // AppendEntries so X and a no-op travel separately.
    config.pre_vote = false;
    config.check_quorum = false;
    config.max_batch_bytes = 1;
}

#[test]
fn figure8_old_term_entry_is_safely_overwritten() {
    assert!(figure8_full(no_lease), "S5 overwrote the uncommitted X");
}

#[cfg(feature = "bug-injection")]
#[test]
#[should_panic(expected = "committed bytes that differ")]
fn figure8_with_counting_bug_loses_a_committed_entry() {
    figure8_full(|config| {
        no_lease(config);
        config.bugs.commit_old_term_by_counting = true;
    });
}

/// A voter whose own removal is appended (not committed) may hold the most
/// up-to-date log; the others can then only win with its vote, which it
/// refuses. It must be allowed to campaign, finish the change, and step
/// down. (Found by loglog-sim, seed 227.)
#[test]
fn a_voter_with_its_own_uncommitted_removal_can_still_campaign() {
    let mut cluster = Cluster::new(&[1, 2, 3, 4]);
    cluster.elect(1);
    cluster.ticks(2);
    cluster.crash(4);
    cluster.isolate(1);
    cluster.change_membership(1, MembershipChange::Remove(1));
    let election_ticks = cluster.node(1).config().election_ticks as usize;
    cluster.ticks(2 * election_ticks);
    assert_eq!(cluster.node(1).role(), Role::Follower, "check-quorum");
    cluster.heal();
    cluster.ticks(100);
    let leader = cluster.leader().expect("a leader");
    assert_ne!(leader, 1, "node 1 stepped down once its removal committed");
    assert_eq!(cluster.node(leader).membership().voters, [2, 3, 4].into());
    let offset = cluster.propose(leader, b"progress");
    cluster.ticks(3);
    assert!(cluster.node(2).commit_offset() > offset);
    assert!(cluster.node(3).commit_offset() > offset);
}

/// A node that lost synced entries to disk damage neither campaigns nor
/// votes for a candidate its undamaged log would have refused, until it
/// has caught up again.
#[test]
fn a_node_with_a_lost_tail_votes_as_its_undamaged_log_would() {
    use loglog_proto::entry::EntryIter;
    use loglog_raft::{Checkpoint, HardState, LogScan, LostTail, RaftNode};

    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..5u8 {
        cluster.propose(1, &[i; 40]);
    }
    cluster.ticks(3);
    let end = cluster.node(3).end_offset();
    let term = cluster.node(3).term();
    // Node 3 restarts with its log cut to the first entry.
    cluster.crash(3);
    let node = cluster.nodes.get_mut(&3).unwrap();
    node.durable_log.truncate(16);
    node.log.0.truncate(16);
    node.checkpoint = Checkpoint::bootstrap(Membership::with_voters([1, 2, 3]));
    let mut scan = LogScan::new(node.checkpoint.clone());
    for entry in EntryIter::new(&node.durable_log, 0, u32::MAX) {
        scan.observe(&entry.unwrap()).unwrap();
    }
    let mut recovered = scan.finish_at(16).unwrap();
    recovered.set_lost_tail(LostTail {
        end_offset: end,
        last_term: term,
    });
    node.raft = RaftNode::new(node.config.clone(), node.hard_state, recovered).unwrap();
    node.up = true;
    let hard = HardState {
        term: term + 5,
        voted_for: None,
    };

    // A candidate whose log is behind the lost tail gets no vote from it.
    let request = |last_offset| {
        Message::RequestVote(loglog_raft::RequestVote {
            term: hard.term,
            pre_vote: true,
            transfer: false,
            last_offset,
            last_term: term,
        })
    };
    let granted = |cluster: &mut Cluster, last_offset| {
        cluster.node_mut(3).step(2, request(last_offset));
        let node = cluster.nodes.get_mut(&3).unwrap();
        node.raft.take_actions(&node.log).iter().any(|action| {
            matches!(action, loglog_raft::Action::Send(envelope)
                if matches!(envelope.message, Message::RequestVoteResponse(r) if r.granted))
        })
    };
    cluster.ticks(0);
    let node_3_term_before = cluster.node(3).term();
    assert!(!granted(&mut cluster, 100), "behind the lost tail");
    assert!(granted(&mut cluster, end), "as up to date as the lost tail");
    assert_eq!(
        cluster.node(3).term(),
        node_3_term_before,
        "pre-votes change no term"
    );

    // It does not campaign while marked, and clears once caught up.
    cluster.isolate(3);
    cluster.ticks(60);
    assert_eq!(cluster.node(3).role(), Role::Follower);
    cluster.heal();
    cluster.ticks(5);
    assert!(cluster.node(3).end_offset() >= end);
    assert_eq!(cluster.node(3).lost_tail(), None);
}

/// Replication is pipelined within a per-follower window of unacknowledged
/// bytes, in batches of at most `max_batch_bytes` (or one entry).
#[test]
fn in_flight_bytes_per_follower_are_bounded() {
    let mut cluster = Cluster::with_config(&[1, 2, 3], |config| {
        config.max_inflight_bytes = 200;
        config.max_batch_bytes = 70;
    });
    cluster.elect(1);
    cluster.ticks(2);
    // Node 2 never fsyncs, so it never acknowledges anything new.
    cluster.nodes.get_mut(&2).unwrap().auto_sync = false;
    let before = cluster.delivered.len();
    for _ in 0..20 {
        cluster.propose(1, &[1; 24]); // 40-byte entries
    }
    cluster.deliver_all();
    let sent_to = |cluster: &Cluster, to| -> Vec<usize> {
        cluster.delivered[before..]
            .iter()
            .filter(|e| e.to == to)
            .filter_map(|e| match &e.message {
                Message::AppendEntries(append) if !append.entries.is_empty() => {
                    Some(append.entries.len())
                }
                _ => None,
            })
            .collect()
    };
    let to_2 = sent_to(&cluster, 2);
    assert!(to_2.iter().all(|&len| len <= 70), "batches: {to_2:?}");
    assert!(to_2.iter().sum::<usize>() <= 200, "window: {to_2:?}");
    let to_3: usize = sent_to(&cluster, 3).iter().sum();
    assert_eq!(to_3, 800, "node 3 acknowledges, so everything flows");
    // Once node 2 syncs, the rest flows to it too.
    cluster.sync(2);
    cluster.run(2);
    cluster.deliver_all();
    cluster.nodes.get_mut(&2).unwrap().auto_sync = true;
    cluster.ticks(3);
    assert_eq!(cluster.log(2), cluster.log(1));
}

/// Followers learn that the commit offset moved without waiting for the
/// next heartbeat tick (readers on followers wait for it).
#[test]
fn followers_learn_a_new_commit_offset_at_once() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.ticks(2);
    let heartbeats_before = cluster.count_delivered(|m| matches!(m, Message::Heartbeat(_)));
    let offset = cluster.propose(1, b"x");
    cluster.deliver_all(); // no tick
    for id in [2, 3] {
        assert!(cluster.node(id).commit_offset() > offset);
    }
    let heartbeats = cluster.count_delivered(|m| matches!(m, Message::Heartbeat(_)));
    assert_eq!(heartbeats - heartbeats_before, 2, "one notice per follower");
}

/// Once the log's start is trimmed, a new node is seeded from a leader's
/// checkpoint: its log starts at the checkpoint's commit offset, it
/// catches up from there, and can become a voter and even the leader. A
/// leader then cannot serve a follower the trimmed bytes it lacks.
#[test]
fn a_node_seeded_from_a_checkpoint_catches_up_from_there() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..20u8 {
        cluster.propose(1, &[i; 30]);
    }
    cluster.ticks(3);
    let checkpoint = cluster.node(1).checkpoint();
    let start = checkpoint.commit_offset;
    assert_eq!(start, cluster.node(1).end_offset());
    cluster.add_node_from_checkpoint(4, checkpoint);
    for i in 0..5u8 {
        cluster.propose(1, &[i; 10]);
    }
    cluster.change_membership(1, MembershipChange::AddLearner(4));
    cluster.ticks(5);
    let end = cluster.node(1).end_offset();
    assert_eq!(cluster.node(4).commit_offset(), end);
    assert_eq!(
        &cluster.log(4)[start as usize..],
        &cluster.log(1)[start as usize..]
    );

    cluster.change_membership(1, MembershipChange::PromoteLearner(4));
    cluster.ticks(3);
    cluster.node_mut(1).transfer_leadership(4).unwrap();
    cluster.run(1);
    cluster.deliver_all();
    assert_eq!(cluster.leader(), Some(4));
    let offset = cluster.propose(4, b"led by the seeded node");
    cluster.ticks(3);
    assert!(cluster.node(2).commit_offset() > offset);

    // A node that needs bytes below node 4's start gets its checkpoint
    // instead (InstallSnapshot) and catches up from there.
    cluster.add_node(5, Membership::default());
    cluster.change_membership(4, MembershipChange::AddLearner(5));
    cluster.ticks(10);
    assert_eq!(cluster.nodes[&5].resets, vec![start]);
    assert_eq!(cluster.node(5).log_start(), start);
    let end = cluster.node(4).end_offset();
    assert_eq!(cluster.node(5).commit_offset(), end);
    assert_eq!(
        &cluster.log(5)[start as usize..],
        &cluster.log(4)[start as usize..]
    );
}

/// A replicated trim: committed like any entry, applied by every node
/// (also one that was down, once it catches up), never at or above the
/// commit offset; a wiped node is re-seeded from the leader's log start.
#[test]
fn trims_replicate_and_a_wiped_node_reseeds_from_the_log_start() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    for i in 0..20u8 {
        cluster.propose(1, &[i; 30]);
    }
    cluster.ticks(3);
    let commit = cluster.node(1).commit_offset();
    assert_eq!(
        cluster.node_mut(1).propose_trim(commit),
        Err(ProposeError::TrimNotBelowCommit {
            offset: commit,
            commit_offset: commit
        })
    );
    assert!(matches!(
        cluster.node_mut(2).propose_trim(10),
        Err(ProposeError::NotLeader { .. })
    ));

    cluster.crash(3);
    let trim_to = commit / 2;
    let entry = cluster.node_mut(1).propose_trim(trim_to).unwrap();
    cluster.run(1);
    cluster.ticks(3);
    assert!(cluster.node(1).commit_offset() > entry);
    for id in [1, 2] {
        assert_eq!(cluster.nodes[&id].trims, vec![trim_to], "node {id}");
        assert!(cluster.nodes[&id].log.1 > 0 && cluster.nodes[&id].log.1 <= trim_to);
    }
    cluster.restart(3);
    cluster.ticks(5);
    assert_eq!(cluster.nodes[&3].trims, vec![trim_to], "node 3 caught up");
    assert!(cluster.nodes[&3].resets.is_empty(), "it had the prefix");

    // Wipe node 2: it comes back empty and gets the leader's log start.
    let leader_start = cluster.nodes[&1].log.1;
    cluster.wipe(2);
    for i in 0..5u8 {
        cluster.propose(1, &[i; 10]);
    }
    cluster.ticks(10);
    assert_eq!(cluster.nodes[&2].resets, vec![leader_start]);
    assert_eq!(cluster.node(2).log_start(), leader_start);
    let end = cluster.node(1).end_offset();
    assert_eq!(cluster.node(2).commit_offset(), end);
    assert_eq!(
        &cluster.log(2)[leader_start as usize..],
        &cluster.log(1)[leader_start as usize..]
    );
    assert_eq!(cluster.node(2).membership(), cluster.node(1).membership());
    let snapshots = cluster.count_delivered(|m| matches!(m, Message::InstallSnapshot(_)));
    assert!(snapshots >= 1);

    // The re-seeded node can lead, and serves others from its own start.
    cluster.elect_among(2);
    assert_eq!(cluster.leader(), Some(2));
    let offset = cluster.propose(2, b"led by the re-seeded node");
    cluster.ticks(3);
    assert!(cluster.node(1).commit_offset() > offset);
    assert!(cluster.node(3).commit_offset() > offset);
}

#[test]
fn member_addresses_travel_in_config_entries() {
    use loglog_raft::MemberAddress;
    use std::collections::BTreeMap;

    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.deliver_all();
    cluster.add_node(4, Membership::default());
    let mut addresses = BTreeMap::new();
    addresses.insert(4, MemberAddress::new("h4:7104", "h4:7004"));
    addresses.insert(1, MemberAddress::new("h1:7101", "h1:7001"));
    // Addresses of non-members are ignored; too long ones refused.
    addresses.insert(9, MemberAddress::new("h9:1", "h9:2"));
    let mut too_long = addresses.clone();
    too_long.insert(4, MemberAddress::new(vec![b'x'; 300], "h4:7004"));
    assert!(matches!(
        cluster
            .node_mut(1)
            .propose_membership_with_addresses(MembershipChange::AddLearner(4), &too_long),
        Err(ProposeError::BadMembershipChange(_))
    ));
    cluster
        .node_mut(1)
        .propose_membership_with_addresses(MembershipChange::AddLearner(4), &addresses)
        .unwrap();
    cluster.run(1);
    cluster.ticks(10);
    for id in [1, 2, 3, 4] {
        let membership = cluster.node(id).membership();
        assert_eq!(
            membership.address(4),
            Some(&MemberAddress::new("h4:7104", "h4:7004")),
            "node {id}"
        );
        assert_eq!(membership.address(1).unwrap().client, b"h1:7001");
        assert_eq!(membership.address(2), None);
        assert_eq!(membership.address(9), None);
    }
    // A later change without addresses keeps them; the checkpoint has them.
    cluster.change_membership(1, MembershipChange::PromoteLearner(4));
    cluster.ticks(5);
    let checkpoint = cluster.node(4).checkpoint();
    assert!(checkpoint.membership.voters.contains(&4));
    assert_eq!(
        checkpoint.membership.address(4).unwrap().peer,
        b"h4:7104".to_vec()
    );
    let decoded = loglog_raft::Checkpoint::decode(&checkpoint.encode()).unwrap();
    assert_eq!(decoded, checkpoint);
}

/// Vote requests delivered from `from` so far.
fn vote_requests_from(cluster: &Cluster, from: u64) -> usize {
    cluster
        .delivered
        .iter()
        .filter(|envelope| {
            envelope.from == from && matches!(envelope.message, Message::RequestVote(_))
        })
        .count()
}

#[test]
fn a_removed_voter_learns_it_from_the_voters_and_stops_campaigning() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    // Node 3 is cut off while its removal commits, so it never sees it.
    cluster.isolate(3);
    cluster.change_membership(1, MembershipChange::Remove(3));
    cluster.ticks(5);
    assert_eq!(cluster.node(1).membership().voters, [1, 2].into());
    assert!(cluster.node(2).commit_offset() >= cluster.node(1).commit_offset());
    assert_eq!(cluster.node(3).membership().voters, [1, 2, 3].into());
    let term = cluster.node(1).term();

    // Healed, node 3 hears no leader (it is not in the configuration) and
    // campaigns; the voters answer "not a member", and it stops.
    cluster.heal();
    let election_ticks = cluster.node(3).config().election_ticks as usize;
    cluster.ticks(3 * election_ticks);
    assert!(cluster.node(3).is_removed(), "node 3 learned its removal");
    assert_eq!(cluster.node(3).role(), Role::Follower);
    assert!(cluster.count_delivered(|m| matches!(m, Message::NotAMember(_))) >= 1);

    // For the backoff it asks no one; the cluster is undisturbed.
    let asked = vote_requests_from(&cluster, 3);
    let backoff = loglog_raft::REMOVED_BACKOFF_ELECTIONS as usize * election_ticks;
    cluster.ticks(backoff - 3 * election_ticks);
    assert_eq!(
        vote_requests_from(&cluster, 3),
        asked,
        "quiet while removed"
    );
    // Then it asks again, hears the same, and stays quiet: about one round
    // per backoff, where it used to campaign every election timeout.
    cluster.ticks(2 * backoff);
    let rounds = (vote_requests_from(&cluster, 3) - asked) / 2;
    assert!((1..=3).contains(&rounds), "{rounds} rounds in two backoffs");
    assert!(cluster.node(3).is_removed());
    assert_eq!(cluster.leader(), Some(1));
    assert_eq!(cluster.node(1).term(), term, "no election was disturbed");
    cluster.propose(1, b"after the removal");
    cluster.ticks(3);

    // Added again, a leader reaches it: it is a member, not removed.
    cluster.change_membership(1, MembershipChange::AddLearner(3));
    cluster.ticks(10);
    assert!(!cluster.node(3).is_removed());
    assert_eq!(cluster.log(3), cluster.log(1));
}

#[test]
fn a_voter_behind_cannot_silence_a_member_it_does_not_know() {
    // Node 4 is added and promoted while node 3 is cut off, so node 3's
    // configuration does not name it: node 3 answers node 4's vote requests
    // with "not a member", but its log is behind node 4's, so node 4 does
    // not believe it (it is a member, and may need node 3's vote).
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.isolate(3);
    cluster.add_node(4, Membership::default());
    cluster.change_membership(1, MembershipChange::AddLearner(4));
    cluster.ticks(10);
    cluster.change_membership(1, MembershipChange::PromoteLearner(4));
    cluster.ticks(10);
    assert_eq!(cluster.node(4).membership().voters, [1, 2, 3, 4].into());
    assert_eq!(cluster.node(3).membership().voters, [1, 2, 3].into());

    cluster.crash(1);
    cluster.heal();
    // Only node 4's clock runs: it campaigns first.
    let election_ticks = cluster.node(4).config().election_ticks as usize;
    for _ in 0..2 * election_ticks {
        cluster.tick(4);
        cluster.deliver_all();
        assert!(!cluster.node(4).is_removed());
    }
    assert!(
        cluster.count_delivered(|m| matches!(m, Message::NotAMember(_))) >= 1,
        "node 3 told node 4"
    );
    for _ in 0..20 * election_ticks {
        cluster.tick_all();
        assert!(!cluster.node(4).is_removed());
    }
    let leader = cluster.leader().expect("a leader among 2, 3 and 4");
    let offset = cluster.propose(leader, b"after the failover");
    cluster.ticks(5);
    for id in [2, 3, 4] {
        assert!(cluster.node(id).commit_offset() > offset, "node {id}");
    }
}

#[test]
fn a_removed_learner_believes_the_notice_once_no_leader_reached_it() {
    // A driver whose transport refuses non-members hands the refusal's
    // notice to the core as a message; a learner never campaigns, so it
    // believes one only after an election timeout without a leader.
    let mut cluster = Cluster::new(&[1, 2, 3]);
    cluster.elect(1);
    cluster.add_node(4, Membership::default());
    cluster.change_membership(1, MembershipChange::AddLearner(4));
    cluster.ticks(10);
    assert!(cluster.node(4).membership().learners.contains(&4));
    cluster.isolate(4);
    cluster.change_membership(1, MembershipChange::Remove(4));
    cluster.ticks(5);
    assert!(!cluster.node(1).membership().is_member(4));
    // Just heard from the leader: not believed yet.
    let fresh = notice_of(&cluster, 1);
    cluster.node_mut(4).step(1, fresh);
    assert!(!cluster.node(4).is_removed());
    let election_ticks = cluster.node(4).config().election_ticks as usize;
    for _ in 0..election_ticks {
        cluster.tick(4);
    }
    let later = notice_of(&cluster, 1);
    cluster.node_mut(4).step(1, later);
    assert!(cluster.node(4).is_removed());
    assert_eq!(cluster.node(4).leader(), None);
    // A joining node (no configuration yet) is never told it was removed.
    cluster.add_node(5, Membership::default());
    for _ in 0..2 * election_ticks {
        cluster.tick(5);
    }
    let to_joiner = notice_of(&cluster, 1);
    cluster.node_mut(5).step(1, to_joiner);
    assert!(!cluster.node(5).is_removed());
}

/// What voter `id` tells a non-member, as the message a driver steps.
fn notice_of(cluster: &Cluster, id: u64) -> Message {
    let notice = cluster.node(id).not_a_member_notice();
    Message::NotAMember(notice.expect("a voter tells"))
}
