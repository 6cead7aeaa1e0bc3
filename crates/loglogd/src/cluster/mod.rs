//! Replicated mode: the node runs the `loglog-raft` consensus core over its
//! own log and talks to its peers over TCP.
//!
//! ```text
//!  client appends ──(WriterCommand queue)──┐
//!  peer messages ──(bounded event queue)───┼──> raft driver thread ──> LogWriter (pwrite)
//!  read-index, wake-ups ───────────────────┘    owns the RaftNode      ├─> syncer thread (fdatasync,
//!                                                performs its actions   │    reports the write id back)
//!                                                in order               ├─> per-peer outbound queues
//!                                                                       └─> commit watch (answers appends,
//!                                                                           wakes long-poll readers)
//! ```
//!
//! * `driver`: one thread owns the [`loglog_raft::RaftNode`] and the
//!   [`loglog_storage::LogWriter`]; it follows the core's driver contract
//!   (crate docs of `loglog-raft`): hard state durable before anything
//!   after it, appends written in order (consecutive appends coalesced into
//!   one `pwrite`), fsyncs on a separate syncer thread that reports write
//!   ids back (group commit), commit advances published on the node's
//!   commit watch, the checkpoint persisted lazily.
//! * `transport`: a peer listener and one persistent outbound connection
//!   per peer, each opened with a handshake carrying the cluster id and both
//!   node ids; frames are length-prefixed [`loglog_raft::Envelope`]s.
//! * Reads are unchanged from the single node: every node serves its
//!   committed prefix; a linearizable read first confirms leadership with
//!   read-index (a follower answers `NotLeader`).
//!
//! # Configuration
//!
//! `--peers 1=HOST:PEERPORT@HOST:CLIENTPORT,2=...` lists every founding
//! voter, this node included: its id, the address its peers dial, and the
//! address clients use (given to clients in `NotLeader` answers). The
//! cluster id (`--cluster-id`, default derived from the ids and peer
//! addresses of `--peers`) is written into the data directory at bootstrap
//! and checked on every start and every peer handshake.
//!
//! # Membership changes and member addresses
//!
//! Every member's peer and client address lives in the membership config
//! entries (payload version 2, see `loglog_raft::membership`): the founding
//! voters' come from `--peers` (the bootstrap configuration), an added
//! node's from the `add-node` admin request. A node resolves a member's
//! address from its latest configuration first and from `--peers` second,
//! so a node added later is reachable by everyone, also after restarts,
//! without any flag naming it. The driver opens (and closes) one outbound
//! connection per member of its latest configuration as it changes.
//!
//! A node that is not a founding voter starts with `--join`: with an empty
//! data directory it bootstraps with an empty configuration (it never
//! campaigns) and waits for a leader to add it; `--peers` then lists the
//! current members (so it can answer the leader before it has learned the
//! configuration from the log), and `--cluster-id` the cluster's id. The
//! admin request `add-node ID PEERADDR CLIENTADDR` makes the leader propose
//! it as a learner, stream it the log, and promote it to voter once its
//! durable log is within the core's learner lag bound. After that, it
//! restarts with its own flags only (`--id`, `--join`, `--cluster-id`,
//! `--listen`, `--peer-listen`, `--data-dir`): everything else comes from
//! its log.

pub(crate) mod driver;
pub(crate) mod power_cut;
pub(crate) mod synced_hint;
pub(crate) mod transport;
pub mod upload;

use std::net::SocketAddr;
use std::time::Duration;

use loglog_raft::NodeId;

/// Default peer address of `loglogd` (design notes, section 6).
pub const DEFAULT_PEER_LISTEN: &str = "127.0.0.1:19195";
/// Name of the cluster id file inside the data directory.
pub const CLUSTER_ID_FILE: &str = "cluster.id";
/// Name of the consensus checkpoint file inside the data directory.
pub const CHECKPOINT_FILE: &str = "raft.checkpoint";
/// Name of the file holding a lower bound of the synced end (and the
/// lost-tail mark) inside the data directory.
pub const DURABLE_FILE: &str = "raft.durable";
/// Name of the file that records a log reset in progress (the checkpoint
/// the log is being reset to; see `Action::ResetLog`): present only
/// between the intent and the reset's completion, redone at start.
pub const RESET_FILE: &str = "raft.reset";
/// Name of the file in which a joining node keeps the `--peers` it first
/// joined with: until its log holds a configuration (with every member's
/// address) it reaches the members through them, also after a restart
/// without `--peers`.
pub const JOIN_PEERS_FILE: &str = "join.peers";
/// Longest cluster id accepted (bytes).
pub const MAX_CLUSTER_ID_LEN: usize = 128;

/// One member of the cluster as given by `--peers`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    pub id: NodeId,
    /// `host:port` its peers dial (its `--peer-listen`).
    pub peer_addr: String,
    /// `host:port` clients use (its `--listen`), handed out in `NotLeader`.
    pub client_addr: String,
}

/// Replicated-mode settings ([`crate::Config::cluster`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Every founding voter, this node included, sorted by id.
    pub peers: Vec<PeerSpec>,
    /// Address the peer listener binds (port 0 picks a free port).
    pub peer_listen: SocketAddr,
    /// Explicit cluster id; `None` derives it from `peers` (see
    /// [`ClusterConfig::cluster_id`]).
    pub cluster_id: Option<String>,
    /// The consensus core's unit of time.
    pub tick: Duration,
    /// Election timeout in ticks (randomized up to twice this).
    pub election_ticks: u32,
    /// Leader heartbeat interval in ticks.
    pub heartbeat_ticks: u32,
    /// Not a founding voter (`--join`): a new data directory starts with an
    /// empty configuration and waits to be added by a leader; `peers` lists
    /// the current members to reach (this node need not be listed).
    pub join: bool,
    /// Switches for fault-injection tests; all off by default.
    pub test_switches: TestSwitches,
    /// Bounds of the cache of payloads clients upload (`upload`).
    pub upload_cache: upload::UploadLimits,
}

/// Switches for fault-injection tests (`loglog-chaos`); all off by default
/// and hidden from `--help`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TestSwitches {
    /// Emulate a power cut on every kill: the node records its exact synced
    /// end, and the next start drops every log byte past it (see
    /// `power_cut`). Safe: a correct node never promised unsynced bytes.
    pub unsynced_lost_on_kill: bool,
    /// Emulate a slow disk: every fsync round waits this long first (zero:
    /// off). Widens the window between a write and its fsync, where a node
    /// that counts bytes durable too early shows it.
    pub fsync_delay: std::time::Duration,
    /// A deliberate bug, so the fault-injection suite can prove it catches
    /// it: count written bytes durable (and acknowledge them) before their
    /// fsync. Only in builds with the `bug-injection` feature.
    #[cfg(feature = "bug-injection")]
    pub ack_before_fsync: bool,
}

impl ClusterConfig {
    /// Settings with the defaults: 10 ms ticks, elections after 150-300 ms,
    /// heartbeats every 30 ms, peers listened for on 127.0.0.1:19195.
    pub fn new(peers: Vec<PeerSpec>) -> ClusterConfig {
        let mut peers = peers;
        peers.sort_by_key(|peer| peer.id);
        ClusterConfig {
            peers,
            peer_listen: DEFAULT_PEER_LISTEN
                .parse()
                .expect("DEFAULT_PEER_LISTEN is a valid socket address"),
            cluster_id: None,
            tick: Duration::from_millis(10),
            election_ticks: 15,
            heartbeat_ticks: 3,
            join: false,
            test_switches: TestSwitches::default(),
            upload_cache: upload::UploadLimits::default(),
        }
    }

    /// Settings of a node joining an existing cluster (see
    /// [`ClusterConfig::join`]): `peers` are the members to reach.
    pub fn joining(peers: Vec<PeerSpec>, cluster_id: String) -> ClusterConfig {
        let mut config = ClusterConfig::new(peers);
        config.join = true;
        config.cluster_id = Some(cluster_id);
        config
    }

    /// The cluster id: the explicit one, or `fnv-<16 hex digits>`, a hash
    /// of the sorted `id=peer_addr` pairs (the same on every founding node
    /// given the same `--peers`).
    pub fn cluster_id(&self) -> String {
        if let Some(explicit) = &self.cluster_id {
            return explicit.clone();
        }
        let mut pairs: Vec<String> = self
            .peers
            .iter()
            .map(|peer| format!("{}={}", peer.id, peer.peer_addr))
            .collect();
        pairs.sort();
        format!("fnv-{:016x}", fnv1a64(pairs.join(",").as_bytes()))
    }

    pub fn peer(&self, id: NodeId) -> Option<&PeerSpec> {
        self.peers.iter().find(|peer| peer.id == id)
    }

    /// Checks the member list against this node's id and the core's limits.
    pub fn validate(&self, node_id: NodeId) -> Result<(), String> {
        if self.join {
            if self.peers.is_empty() && self.cluster_id.is_none() {
                return Err("--join without --peers needs --cluster-id".to_string());
            }
        } else if self.peers.is_empty() {
            return Err("--peers lists no member".to_string());
        }
        if !self.join && self.peer(node_id).is_none() {
            return Err(format!(
                "--peers must list this node (id {node_id}) too, with its own addresses"
            ));
        }
        for pair in self.peers.windows(2) {
            if pair[0].id == pair[1].id {
                return Err(format!("--peers lists node {} twice", pair[0].id));
            }
        }
        if node_id == 0 || self.peers.iter().any(|peer| peer.id == 0) {
            return Err("node id 0 is reserved".to_string());
        }
        for peer in &self.peers {
            if peer.peer_addr.len() > loglog_raft::MAX_ADDRESS_LEN
                || peer.client_addr.len() > loglog_raft::MAX_ADDRESS_LEN
            {
                return Err(format!(
                    "node {}: an address is longer than 255 bytes",
                    peer.id
                ));
            }
        }
        if self.peers.len() > loglog_raft::MAX_MEMBERS {
            return Err(format!(
                "at most {} voters are supported",
                loglog_raft::MAX_MEMBERS
            ));
        }
        let cluster_id = self.cluster_id();
        if cluster_id.is_empty()
            || cluster_id.len() > MAX_CLUSTER_ID_LEN
            || !cluster_id.bytes().all(|byte| byte.is_ascii_graphic())
        {
            return Err(format!(
                "the cluster id must be 1 to {MAX_CLUSTER_ID_LEN} printable ASCII characters without spaces"
            ));
        }
        if self.tick.is_zero() {
            return Err("the tick must be positive".to_string());
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err("heartbeat ticks must be in 1..election ticks".to_string());
        }
        Ok(())
    }
}

/// Parses `--peers`: `ID=HOST:PEERPORT@HOST:CLIENTPORT` items separated by
/// commas, e.g. `1=10.0.0.1:19195@10.0.0.1:19194,2=10.0.0.2:19195@10.0.0.2:19194`.
pub fn parse_peers(text: &str) -> Result<Vec<PeerSpec>, String> {
    let mut peers = Vec::new();
    for item in text
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let syntax = || {
            format!("bad peer {item:?}: expected ID=HOST:PEERPORT@HOST:CLIENTPORT, e.g. 1=127.0.0.1:19195@127.0.0.1:19194")
        };
        let (id, addresses) = item.split_once('=').ok_or_else(syntax)?;
        let id: NodeId = id.trim().parse().map_err(|_| syntax())?;
        let (peer_addr, client_addr) = addresses.split_once('@').ok_or_else(syntax)?;
        for address in [peer_addr, client_addr] {
            let port = address.rsplit_once(':').map(|(_, port)| port);
            if port.and_then(|port| port.parse::<u16>().ok()).is_none() {
                return Err(syntax());
            }
        }
        peers.push(PeerSpec {
            id,
            peer_addr: peer_addr.trim().to_string(),
            client_addr: client_addr.trim().to_string(),
        });
    }
    if peers.is_empty() {
        return Err("--peers is empty".to_string());
    }
    peers.sort_by_key(|peer| peer.id);
    Ok(peers)
}

/// FNV-1a, 64 bits: a stable hash for the derived cluster id (not for
/// security: an explicit `--cluster-id` is the way to be sure).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_and_errors_are_clear() {
        let peers = parse_peers("2=h2:19195@h2:19194, 1=127.0.0.1:7001@127.0.0.1:7000").unwrap();
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[0].id, 1);
        assert_eq!(peers[0].peer_addr, "127.0.0.1:7001");
        assert_eq!(peers[0].client_addr, "127.0.0.1:7000");
        assert_eq!(peers[1].peer_addr, "h2:19195");
        for bad in ["", "1=a:1", "x=a:1@b:2", "1=a@b:2", "1=a:1@b:99999"] {
            assert!(parse_peers(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cluster_id_is_derived_the_same_way_everywhere() {
        let a = ClusterConfig::new(parse_peers("1=a:1@a:2,2=b:1@b:2").unwrap());
        let b = ClusterConfig::new(parse_peers("2=b:1@b:9,1=a:1@a:8").unwrap());
        assert_eq!(
            a.cluster_id(),
            b.cluster_id(),
            "client addresses do not matter"
        );
        let c = ClusterConfig::new(parse_peers("1=a:1@a:2,2=c:1@b:2").unwrap());
        assert_ne!(a.cluster_id(), c.cluster_id());
        let mut explicit = a.clone();
        explicit.cluster_id = Some("prod-eu".to_string());
        assert_eq!(explicit.cluster_id(), "prod-eu");
        assert!(a.validate(1).is_ok());
        assert!(a.validate(3).is_err(), "this node must be listed");
        explicit.cluster_id = Some("has space".to_string());
        assert!(explicit.validate(1).is_err());
    }

    #[test]
    fn a_joining_node_need_not_be_listed() {
        let joining = ClusterConfig::joining(
            parse_peers("1=a:1@a:2,2=b:1@b:2").unwrap(),
            "prod".to_string(),
        );
        assert!(joining.validate(4).is_ok());
        let alone = ClusterConfig::joining(Vec::new(), "prod".to_string());
        assert!(
            alone.validate(4).is_ok(),
            "a restart learns members from its log"
        );
        let mut no_id = alone.clone();
        no_id.cluster_id = None;
        assert!(no_id.validate(4).is_err());
    }
}
