//! A small deterministic in-memory cluster for the core's tests: it passes
//! encoded messages between nodes through one FIFO queue, keeps each node's
//! log in a `Vec<u8>` with a separate durable copy (lost writes on crash),
//! and checks Raft's safety properties after every step.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use loglog_proto::entry::EntryIter;
use loglog_raft::{
    Action, Checkpoint, Config, Envelope, HardState, LogRead, LogReadError, LogScan, Membership,
    MembershipChange, Message, NodeId, RaftNode, Role, Term, WriteId,
};

/// A log in memory: the bytes, and the offset it starts at (below it the
/// vector holds zeros standing for trimmed bytes).
pub struct MemLog(pub Vec<u8>, pub u64);

impl LogRead for MemLog {
    fn read(&self, from: u64, max_bytes: u64) -> Result<Vec<u8>, LogReadError> {
        if from < self.1 {
            return Err(LogReadError::Trimmed { start: self.1 });
        }
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

pub struct SimNode {
    pub raft: RaftNode,
    pub config: Config,
    pub log: MemLog,
    /// What survives a crash: the log as of the last fsync.
    pub durable_log: Vec<u8>,
    pub hard_state: HardState,
    pub checkpoint: Checkpoint,
    pub last_write: WriteId,
    pub synced_write: WriteId,
    pub up: bool,
    /// Fsync right after every batch of writes (else only on `sync`).
    pub auto_sync: bool,
    pub reads_ready: Vec<(u64, u64)>,
    pub reads_failed: Vec<u64>,
    pub truncations: Vec<u64>,
    /// Every `TrimPrefix` offset performed, and every `ResetLog` start.
    pub trims: Vec<u64>,
    pub resets: Vec<u64>,
}

/// Decides whether to drop a message in flight.
pub type DropFilter = Box<dyn FnMut(&Envelope) -> bool>;

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, SimNode>,
    pub queue: VecDeque<Envelope>,
    /// Links `(from, to)` that lose every message.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    pub drop_filter: Option<DropFilter>,
    /// Every message delivered, for tests that count them.
    pub delivered: Vec<Envelope>,
    pub leaders_by_term: BTreeMap<Term, NodeId>,
    /// The longest committed prefix any node has reported.
    pub committed: Vec<u8>,
    pub tweak: fn(&mut Config),
}

impl Cluster {
    pub fn new(voters: &[NodeId]) -> Cluster {
        Cluster::with_config(voters, |_| {})
    }

    pub fn with_config(voters: &[NodeId], tweak: fn(&mut Config)) -> Cluster {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            blocked: BTreeSet::new(),
            drop_filter: None,
            delivered: Vec::new(),
            leaders_by_term: BTreeMap::new(),
            committed: Vec::new(),
            tweak,
        };
        let membership = Membership::with_voters(voters.iter().copied());
        for &id in voters {
            cluster.add_node(id, membership.clone());
        }
        cluster
    }

    /// Boots a node with an empty log and `bootstrap` as its configuration.
    pub fn add_node(&mut self, id: NodeId, bootstrap: Membership) {
        let mut config = Config::new(id, 0x5eed ^ id.wrapping_mul(0x9e37_79b9));
        config.election_ticks = 10;
        config.heartbeat_ticks = 2;
        (self.tweak)(&mut config);
        let checkpoint = Checkpoint::bootstrap(bootstrap);
        let raft = RaftNode::new(
            config.clone(),
            HardState::default(),
            LogScan::new(checkpoint.clone()).finish(),
        )
        .expect("valid start");
        self.nodes.insert(
            id,
            SimNode {
                raft,
                config,
                log: MemLog(Vec::new(), 0),
                durable_log: Vec::new(),
                hard_state: HardState::default(),
                checkpoint,
                last_write: 0,
                synced_write: 0,
                up: true,
                auto_sync: true,
                reads_ready: Vec::new(),
                reads_failed: Vec::new(),
                truncations: Vec::new(),
                trims: Vec::new(),
                resets: Vec::new(),
            },
        );
    }

    pub fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id].raft
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut RaftNode {
        &mut self.nodes.get_mut(&id).expect("known node").raft
    }

    pub fn log(&self, id: NodeId) -> &[u8] {
        &self.nodes[&id].log.0
    }

    /// Takes and performs a node's actions until it has none left.
    pub fn run(&mut self, id: NodeId) {
        loop {
            let node = self.nodes.get_mut(&id).expect("known node");
            if !node.up {
                return;
            }
            let actions = node.raft.take_actions(&node.log);
            if actions.is_empty() {
                if node.auto_sync && node.synced_write < node.last_write {
                    self.sync(id);
                    continue;
                }
                break;
            }
            for action in actions {
                self.perform(id, action);
            }
        }
        self.check_safety(id);
    }

    fn perform(&mut self, id: NodeId, action: Action) {
        let node = self.nodes.get_mut(&id).expect("known node");
        match action {
            Action::PersistHardState(state) => {
                assert!(
                    state.term >= node.hard_state.term,
                    "persisted term went back"
                );
                node.hard_state = state;
            }
            Action::Append {
                write_id,
                offset,
                bytes,
            } => {
                assert_eq!(offset, node.log.0.len() as u64, "append at the end");
                assert_eq!(write_id, node.last_write + 1, "write ids are dense");
                node.log.0.extend_from_slice(&bytes);
                node.last_write = write_id;
            }
            Action::Truncate { write_id, offset } => {
                assert!(offset < node.log.0.len() as u64);
                assert_eq!(write_id, node.last_write + 1, "write ids are dense");
                node.log.0.truncate(offset as usize);
                node.last_write = write_id;
                node.truncations.push(offset);
            }
            Action::Send(envelope) => {
                assert_eq!(envelope.from, id);
                // Through the codec, as on a real network.
                let mut bytes = Vec::new();
                envelope.encode(&mut bytes);
                let decoded =
                    Envelope::decode(&Bytes::from(bytes), 1 << 30).expect("own encoding decodes");
                assert_eq!(decoded, envelope);
                self.queue.push_back(decoded);
            }
            Action::CommitAdvanced { commit_offset } => {
                assert_eq!(commit_offset, node.raft.commit_offset().min(commit_offset));
                node.checkpoint = node.raft.checkpoint();
                assert!(node.checkpoint.commit_offset >= commit_offset);
            }
            Action::ReadReady { ctx, read_index } => {
                assert!(node.raft.commit_offset() >= read_index);
                node.reads_ready.push((ctx, read_index));
            }
            Action::ReadFailed { ctx, .. } => node.reads_failed.push(ctx),
            Action::TrimPrefix { offset } => {
                assert!(offset <= node.raft.commit_offset(), "trim above commit");
                // Each entry stands for a segment: drop the entries wholly
                // below `offset` (zeros stand for trimmed bytes).
                let mut start = node.log.1;
                for entry in EntryIter::new(&node.log.0[start as usize..], start, u32::MAX) {
                    let entry = entry.expect("own log is intact");
                    if entry.next_offset() > offset {
                        break;
                    }
                    start = entry.next_offset();
                }
                node.log.0[..start as usize].fill(0);
                let durable_len = node.durable_log.len();
                node.durable_log[..(start as usize).min(durable_len)].fill(0);
                node.log.1 = start;
                node.trims.push(offset);
            }
            Action::ResetLog { checkpoint } => {
                let start = checkpoint.commit_offset;
                assert!(
                    start > node.checkpoint.commit_offset,
                    "reset below the checkpoint"
                );
                node.log = MemLog(vec![0; start as usize], start);
                node.durable_log = node.log.0.clone();
                node.checkpoint = checkpoint;
                node.resets.push(start);
            }
            Action::ConflictBelowCommit {
                leader,
                offset,
                commit_offset,
            } => panic!(
                "committed bytes that differ: leader {leader} contradicts node {id} at \
                 {offset}, below its commit offset {commit_offset}"
            ),
            Action::RoleChanged { role, term, .. } => {
                if role == Role::Leader {
                    if let Some(other) = self.leaders_by_term.insert(term, id) {
                        assert_eq!(other, id, "two leaders in term {term}");
                    }
                }
            }
        }
    }

    /// Fsyncs a node's log: every write so far becomes durable.
    pub fn sync(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.durable_log = node.log.0.clone();
        node.synced_write = node.last_write;
        node.raft.storage_synced(node.last_write);
    }

    /// Raft's safety checks: commit only moves up, committed prefixes agree.
    fn check_safety(&mut self, id: NodeId) {
        let node = &self.nodes[&id];
        let commit = node.raft.commit_offset() as usize;
        assert!(commit <= node.log.0.len());
        assert!(
            commit <= node.durable_log.len(),
            "commit beyond the durable log"
        );
        let start = node.log.1 as usize;
        let prefix = &node.log.0[..commit];
        let common = prefix.len().min(self.committed.len());
        assert_eq!(
            &prefix[start.min(common)..common],
            &self.committed[start.min(common)..common],
            "node {id} committed bytes that differ from another node's"
        );
        if prefix.len() > self.committed.len() {
            let known = self.committed.len();
            self.committed
                .extend_from_slice(&prefix[known.max(start)..]);
            assert_eq!(
                self.committed.len(),
                prefix.len(),
                "no gap in the committed log"
            );
        }
    }

    /// Delivers one message; false if the queue is empty.
    pub fn deliver_one(&mut self) -> bool {
        let Some(envelope) = self.queue.pop_front() else {
            return false;
        };
        let dropped = self.blocked.contains(&(envelope.from, envelope.to))
            || self
                .drop_filter
                .as_mut()
                .is_some_and(|filter| filter(&envelope));
        let up = self.nodes.get(&envelope.to).is_some_and(|node| node.up);
        if !dropped && up {
            self.delivered.push(envelope.clone());
            self.node_mut(envelope.to)
                .step(envelope.from, envelope.message);
            self.run(envelope.to);
        }
        true
    }

    pub fn deliver_all(&mut self) {
        for _ in 0..100_000 {
            if !self.deliver_one() {
                return;
            }
        }
        panic!("messages never stop flowing");
    }

    pub fn tick(&mut self, id: NodeId) {
        if self.nodes[&id].up {
            self.node_mut(id).tick();
            self.run(id);
        }
    }

    /// One tick on every live node, then every message delivered.
    pub fn tick_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.tick(id);
        }
        self.deliver_all();
    }

    pub fn ticks(&mut self, count: usize) {
        for _ in 0..count {
            self.tick_all();
        }
    }

    /// Ticks only `id` (others hold still) until it leads.
    pub fn elect(&mut self, id: NodeId) {
        for _ in 0..200 {
            if self.node(id).role() == Role::Leader {
                self.deliver_all();
                return;
            }
            self.tick(id);
            self.deliver_all();
        }
        panic!("node {id} did not become leader");
    }

    /// The live leader of the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, node)| node.up && node.raft.role() == Role::Leader)
            .max_by_key(|(_, node)| node.raft.term())
            .map(|(&id, _)| id)
    }

    pub fn propose(&mut self, id: NodeId, payload: &[u8]) -> u64 {
        let offset = self.node_mut(id).propose(payload).expect("leader accepts");
        self.run(id);
        offset
    }

    /// A membership change through leader `id`, which must accept it.
    pub fn change_membership(&mut self, id: NodeId, change: MembershipChange) {
        self.node_mut(id)
            .propose_membership(change)
            .expect("the leader accepts the change");
        self.run(id);
    }

    /// Cuts `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|&o| o != id).collect();
        for other in others {
            self.blocked.insert((id, other));
            self.blocked.insert((other, id));
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    /// Crash: only the hard state, the durable log and the checkpoint survive.
    /// Wipes a node: same id, empty data directory, booted as a node
    /// joining an existing cluster (empty membership, learns from the log).
    pub fn wipe(&mut self, id: NodeId) {
        self.nodes.remove(&id);
        self.add_node(id, Membership::default());
    }

    pub fn crash(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        node.up = false;
        node.log.0 = node.durable_log.clone();
        node.last_write = 0;
        node.synced_write = 0;
    }

    pub fn restart(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).expect("known node");
        let mut scan = LogScan::new(node.checkpoint.clone());
        let start = scan.next_offset();
        for entry in EntryIter::new(&node.durable_log[start as usize..], start, u32::MAX) {
            scan.observe(&entry.expect("durable log is intact"))
                .expect("scan");
        }
        let mut recovered = scan
            .finish_at(node.durable_log.len() as u64)
            .expect("the scan reached the log's end");
        recovered
            .set_log_start(node.log.1)
            .expect("trims stay below the checkpoint");
        node.raft = RaftNode::new(node.config.clone(), node.hard_state, recovered)
            .expect("restart from persisted state");
        node.log.0 = node.durable_log.clone();
        node.up = true;
        assert!(node.raft.commit_offset() >= node.checkpoint.commit_offset);
    }

    /// Messages of a kind delivered so far.
    pub fn count_delivered(&self, matches: impl Fn(&Message) -> bool) -> usize {
        self.delivered
            .iter()
            .filter(|e| matches(&e.message))
            .count()
    }
}

impl Cluster {
    /// Elects `id` while other nodes still follow a leader: its peers'
    /// leases are expired first by ticking them without heartbeats.
    pub fn elect_among(&mut self, id: NodeId) {
        let current = self.leader();
        if current == Some(id) {
            return;
        }
        if let Some(current) = current {
            self.node_mut(current).transfer_leadership(id).ok();
            self.run(current);
            self.deliver_all();
        }
        if self.node(id).role() != Role::Leader {
            self.elect(id);
        }
    }
}

impl Cluster {
    /// Lets time pass on every node until a leader of a term above every
    /// current one is elected; returns it.
    pub fn elect_new_leader(&mut self) -> NodeId {
        let old_term = self
            .nodes
            .values()
            .map(|node| node.raft.term())
            .max()
            .unwrap_or(0);
        for _ in 0..500 {
            self.tick_all();
            if let Some(leader) = self.leader() {
                if self.node(leader).term() > old_term {
                    return leader;
                }
            }
        }
        panic!("no new leader was elected");
    }
}

impl Cluster {
    /// Boots node `id` from another node's checkpoint, with a log that
    /// starts at the checkpoint's commit offset (the bytes below it are
    /// trimmed): how a node is seeded once the log's start has been trimmed.
    pub fn add_node_from_checkpoint(&mut self, id: NodeId, checkpoint: loglog_raft::Checkpoint) {
        self.add_node(id, Membership::default());
        let start = checkpoint.commit_offset;
        let node = self.nodes.get_mut(&id).expect("just added");
        let mut recovered = LogScan::new(checkpoint.clone())
            .finish_at(start)
            .expect("an empty log from the checkpoint on");
        recovered
            .set_log_start(start)
            .expect("start at the checkpoint");
        // A node that never voted may start at the checkpoint's last term.
        node.hard_state = HardState {
            term: checkpoint.terms.last_term(),
            voted_for: None,
        };
        node.raft = RaftNode::new(node.config.clone(), node.hard_state, recovered)
            .expect("start from a checkpoint");
        node.log = MemLog(vec![0; start as usize], start);
        node.durable_log = node.log.0.clone();
        node.checkpoint = checkpoint;
    }
}
