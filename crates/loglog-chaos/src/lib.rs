//! Fault injection on real `loglogd` clusters.
//!
//! One run ([`run_once`]):
//! 1. builds network namespaces ([`netns::Network`]): a hub with a bridge,
//!    one namespace per node, a veth from the root namespace for the client;
//! 2. starts a 3- or 5-node cluster of real `loglogd` processes, one per
//!    namespace ([`cluster::Cluster`]);
//! 3. runs a concurrent workload through the client library
//!    ([`workload`]): appends of unique values, plain reads, linearizable
//!    reads, tail followers, all recorded in `loglog-sim`'s [`History`];
//! 4. meanwhile injects faults on a schedule drawn from the run's seed
//!    ([`faults`]): partitions (one node, the leader, majority/minority,
//!    one way), random loss (iptables `statistic`), SIGKILL and restart,
//!    SIGSTOP/SIGCONT longer than an election timeout, a dead node's tail
//!    segment cut at a random byte before its restart;
//! 5. heals everything, waits until every node reports the same commit
//!    offset, reads every node's committed log through the client and
//!    compares them byte for byte, then checks the history against that log
//!    with `loglog_sim::history::check` (the simulator's checker).
//!
//! A failing run keeps its folder: history, violations, fault schedule,
//! node logs and data directories.

pub mod bench_upload;
pub mod cluster;
pub mod faults;
pub mod netns;
pub mod relay;
pub mod workload;

pub use faults::Fault;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use loglog::{Client, ClientConfig, Role};
use loglog_sim::history::{check, FinalLog, History, Violation};

use crate::cluster::Cluster;
use crate::netns::Network;
use crate::relay::Relays;
use crate::workload::Shared;

/// What one run is asked to do.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub run: u64,
    pub seed: u64,
    pub nodes: usize,
    pub duration: Duration,
    pub loglogd: PathBuf,
    /// Extra arguments for every `loglogd` (e.g. a test-only switch).
    pub loglogd_args: Vec<String>,
    /// The kinds of fault the schedule draws from (not empty).
    pub faults: Vec<Fault>,
    /// Where the run's folder is made.
    pub work_dir: PathBuf,
    /// Self-check of the harness: after the workload, kill every node, cut
    /// every tail segment in its first half and remove the node's records
    /// of its committed and synced ends before the restart (a disk that
    /// silently loses fsynced data everywhere). The run must then report
    /// lost acknowledged appends; a harness that stays green is broken.
    pub lose_every_tail: bool,
    /// Keep the run's folder even when it passed.
    pub keep: bool,
    /// Upload mode: the appenders upload every entry to the other members
    /// (`Client::enable_upload`), so the leader replicates by digest while
    /// the faults lose, delay and cut uploads like any traffic.
    pub upload: bool,
}

/// Counters of one run (or summed over runs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub runs: u64,
    pub ops: u64,
    pub acked: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub stale_reads: u64,
    pub diverged: u64,
    /// Problems that are not history violations (no convergence, a node
    /// that died by itself, a harness error); each fails the run.
    pub other_failures: u64,
}

impl Summary {
    pub fn add(&mut self, other: &Summary) {
        self.runs += other.runs;
        self.ops += other.ops;
        self.acked += other.acked;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.stale_reads += other.stale_reads;
        self.diverged += other.diverged;
        self.other_failures += other.other_failures;
    }

    pub fn violations(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.stale_reads
            + self.diverged
            + self.other_failures
    }

    /// The one summary line.
    pub fn line(&self) -> String {
        format!(
            "runs={} ops={} acked={} lost={} duplicated={} reordered={} stale_reads={} diverged={}",
            self.runs,
            self.ops,
            self.acked,
            self.lost,
            self.duplicated,
            self.reordered,
            self.stale_reads,
            self.diverged
        )
    }

    /// Counts one checker violation under its summary column.
    fn count(&mut self, violation: &Violation) {
        match violation {
            Violation::AcknowledgedAppendLost { .. }
            | Violation::AcknowledgedAtWrongOffset { .. } => self.lost += 1,
            // Values that should not be there at all count with duplicates.
            Violation::DuplicateValue { .. }
            | Violation::UnknownValue { .. }
            | Violation::FailedAppendVisible { .. } => self.duplicated += 1,
            Violation::RealTimeOrder { .. } | Violation::MalformedFinalLog { .. } => {
                self.reordered += 1
            }
            Violation::ReadNotASlice { .. }
            | Violation::ReadBeyondFinalLog { .. }
            | Violation::TrimmedBeyondFinalLog { .. }
            | Violation::StaleLinearizableRead { .. }
            | Violation::LinearizableReadWentBack { .. }
            | Violation::ReadFromTheFuture { .. } => self.stale_reads += 1,
        }
    }
}

/// The outcome of one run: its counters, and the kept folder if it failed.
pub struct RunReport {
    pub summary: Summary,
    /// Operation and fault counts, for the operator.
    pub details: String,
    pub kept: Option<PathBuf>,
    pub problems: Vec<String>,
}

/// Runs one randomized run end to end. Errors are harness failures
/// (namespaces could not be made, and the like).
pub fn run_once(config: &RunConfig) -> Result<RunReport> {
    let folder = config.work_dir.join(format!(
        "loglog-chaos-{}-run{}-seed{}",
        std::process::id(),
        config.run,
        config.seed
    ));
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    std::fs::create_dir_all(&folder)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let network = Network::create(config.nodes)?;
    let relays = Relays::start(
        &(0..config.nodes)
            .map(|index| {
                (
                    network.node_namespace(index).to_string(),
                    network.node_ip(index),
                )
            })
            .collect::<Vec<_>>(),
        cluster::PEER_PORT,
        config.seed,
    )?;
    let mut cluster = Cluster::new(&network, &config.loglogd, &config.loglogd_args, &folder);
    // Owned here, not by `drive`, so a run the harness gives up on still
    // keeps the schedule that led to it.
    let mut fault_log = String::new();
    let outcome = runtime.block_on(drive(
        config,
        &network,
        &relays,
        &mut cluster,
        &folder,
        &mut fault_log,
    ));
    // Stop the nodes before the folder is judged (and maybe removed), and
    // before the namespaces go (drop order: cluster, relays, network).
    drop(cluster);
    drop(relays);
    drop(network);
    let (summary, problems, history_text, details) = match outcome {
        Ok(result) => result,
        Err(error) => {
            let summary = Summary {
                runs: 1,
                other_failures: 1,
                ..Summary::default()
            };
            let problems = vec![format!("harness: {error:#}")];
            (summary, problems, String::new(), String::new())
        }
    };
    let failed = summary.violations() > 0;
    if failed || config.keep {
        std::fs::write(folder.join("history.txt"), history_text)?;
        std::fs::write(folder.join("faults.txt"), fault_log)?;
        std::fs::write(folder.join("violations.txt"), problems.join("\n") + "\n")?;
        Ok(RunReport {
            summary,
            details,
            kept: Some(folder),
            problems,
        })
    } else {
        std::fs::remove_dir_all(&folder)?;
        Ok(RunReport {
            summary,
            details,
            kept: None,
            problems,
        })
    }
}

/// Summary, problems, history text, details.
type Driven = (Summary, Vec<String>, String, String);

async fn drive(
    config: &RunConfig,
    network: &Network,
    relays: &Relays,
    cluster: &mut Cluster,
    folder: &Path,
    fault_log: &mut String,
) -> Result<Driven> {
    for index in 0..cluster.members.len() {
        cluster.start(index)?;
    }
    let nodes = cluster.client_addrs();
    wait_for_leader(&nodes, Duration::from_secs(20))
        .await
        .context("no leader after the start")?;
    let shared = Arc::new(Shared {
        history: Mutex::new(History::new()),
        began: Instant::now(),
        stop: Default::default(),
        nodes: nodes.clone(),
        acked_offsets: Mutex::new(Vec::new()),
        run: config.run,
        upload: config.upload,
    });
    let mut tasks = Vec::new();
    let mut client_id = 0u64;
    let mut next_seed = |kind: u64| {
        client_id += 1;
        (client_id, config.seed ^ (kind << 56) ^ client_id)
    };
    for _ in 0..6 {
        let (id, seed) = next_seed(1);
        tasks.push(tokio::spawn(workload::appender(shared.clone(), id, seed)));
    }
    for _ in 0..2 {
        let (id, seed) = next_seed(2);
        tasks.push(tokio::spawn(workload::plain_reader(
            shared.clone(),
            id,
            seed,
        )));
    }
    for _ in 0..2 {
        let (id, seed) = next_seed(3);
        tasks.push(tokio::spawn(workload::linearizable_reader(
            shared.clone(),
            id,
            seed,
        )));
    }
    {
        let (id, seed) = next_seed(4);
        tasks.push(tokio::spawn(workload::tail_follower(
            shared.clone(),
            id,
            seed,
        )));
    }

    let mut problems = Vec::new();
    let faults_result = faults::inject(
        config.seed,
        config.duration,
        &config.faults,
        network,
        relays,
        cluster,
        &nodes,
        &shared,
        fault_log,
        &mut problems,
    )
    .await;
    // Heal whatever the schedule left, then let the workload see a healthy
    // cluster for a moment so the end of the history is not all failures.
    network.heal()?;
    cluster.revive_all()?;
    let _ = writeln!(
        fault_log,
        "{:>8} ms heal all",
        shared.began.elapsed().as_millis()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.context("a workload task panicked")?;
    }
    // A schedule the harness could not carry out (say, membership not
    // restored in time) fails the run, but the history and the logs are
    // still checked: whatever happened to the cluster must be safe.
    if let Err(error) = faults_result {
        problems.push(format!("harness: {error:#}"));
    }
    if config.lose_every_tail {
        let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(config.seed);
        for index in 0..cluster.members.len() {
            cluster.kill(index);
            let cut = cluster.truncate_tail(index, |written| {
                rand::Rng::gen_range(&mut rng, 0..=written / 2)
            })?;
            // The node's own records of how far its log was committed and
            // synced go too, so it starts (a node that finds its log below
            // them refuses to): the damage is then silent, as on a disk
            // that lies, and only the history can tell.
            for record in ["raft.checkpoint", "raft.durable"] {
                let _ = std::fs::remove_file(cluster.members[index].data_dir.join(record));
            }
            let _ = writeln!(
                fault_log,
                "self-check: node {} {}",
                index + 1,
                cut.description
            );
        }
        cluster.revive_all()?;
    }

    // Nodes that died by themselves during the schedule.
    let mut summary = Summary {
        runs: 1,
        other_failures: problems.len() as u64,
        ..Summary::default()
    };
    for index in 0..cluster.members.len() {
        if let Some(status) = cluster.exited(index) {
            problems.push(format!("node {} exited by itself: {status}", index + 1));
            summary.other_failures += 1;
        }
    }
    cluster.revive_all()?;

    // Convergence: every node reports the same commit offset.
    let logs = match converged_logs(&nodes, Duration::from_secs(30)).await {
        Ok(logs) => logs,
        Err(error) => {
            problems.push(format!("no convergence after healing: {error:#}"));
            summary.other_failures += 1;
            // The history must still be checked: each node's log up to
            // its own commit offset (a node that cannot be read is left
            // out). Committed prefixes must agree where they overlap.
            committed_logs_as_they_are(&nodes).await
        }
    };
    for (index, log) in logs.iter().enumerate() {
        std::fs::write(folder.join(format!("node{}.committed", index + 1)), log)?;
    }
    // Every committed log must be a prefix of the longest (converged, they
    // were all read up to one commit offset, so all are equal).
    if let Some((longest_index, longest)) = logs.iter().enumerate().max_by_key(|(_, log)| log.len())
    {
        for (index, log) in logs.iter().enumerate() {
            let differs = longest.iter().zip(log).position(|(a, b)| a != b);
            if differs.is_some() {
                problems.push(format!(
                    "node {} committed log ({} bytes) differs from node {}'s ({} bytes) at byte {:?}",
                    index + 1,
                    log.len(),
                    longest_index + 1,
                    longest.len(),
                    differs
                ));
                summary.diverged += 1;
            }
        }
    }

    let history = shared
        .history
        .lock()
        .expect("no task panics holding it")
        .clone();
    summary.ops = (history.appends.len() + history.reads.len()) as u64;
    summary.acked = history.acknowledged_appends() as u64;
    if let Some(longest) = logs.iter().max_by_key(|log| log.len()) {
        match FinalLog::from_raw_bytes(longest) {
            Ok(final_log) => {
                for violation in check(&history, &final_log) {
                    summary.count(&violation);
                    problems.push(violation.to_string());
                }
            }
            Err(error) => {
                problems.push(format!("the committed log does not decode: {error}"));
                summary.diverged += 1;
            }
        }
    }
    let details = describe(&history, fault_log);
    Ok((summary, problems, format_history(&history), details))
}

/// Counts of outcomes by kind, and of faults injected.
fn describe(history: &History, fault_log: &str) -> String {
    use loglog_sim::history::{AppendOutcome, ReadKind, ReadOutcome};
    let appends = |wanted: fn(&AppendOutcome) -> bool| {
        history
            .appends
            .iter()
            .filter(|op| wanted(&op.outcome))
            .count()
    };
    let reads = |kind: ReadKind| {
        let ok = history
            .reads
            .iter()
            .filter(|op| op.kind == kind && matches!(op.outcome, ReadOutcome::Ok(_)))
            .count();
        let all = history.reads.iter().filter(|op| op.kind == kind).count();
        format!("{ok}/{all}")
    };
    // Fault lines read "<ms> ms <kind> ...": count them by kind.
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in fault_log.lines() {
        let kind = line
            .split_whitespace()
            .nth(2)
            .unwrap_or("?")
            .trim_end_matches(':');
        if !matches!(kind, "healed" | "heal" | "node") {
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let faults = kinds
        .iter()
        .map(|(kind, count)| format!("{kind}:{count}"))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "appends ok={} failed={} indeterminate={}; plain reads ok {}; linearizable reads ok {}; faults {faults}",
        appends(|o| matches!(o, AppendOutcome::Ok { .. })),
        appends(|o| *o == AppendOutcome::Failed),
        appends(|o| matches!(o, AppendOutcome::Indeterminate | AppendOutcome::Pending)),
        reads(ReadKind::Plain),
        reads(ReadKind::Linearizable),
    )
}

fn format_history(history: &History) -> String {
    let mut text = String::new();
    for (index, op) in history.appends.iter().enumerate() {
        let _ = writeln!(
            text,
            "append #{index} client={} value={} invoked={} completed={:?} outcome={:?}",
            op.client,
            String::from_utf8_lossy(&op.value),
            op.invoked_at,
            op.completed_at,
            op.outcome
        );
    }
    for (index, op) in history.reads.iter().enumerate() {
        let range = match &op.outcome {
            loglog_sim::history::ReadOutcome::Ok(read) => {
                format!(
                    "ok [{}, {}) entries={}",
                    read.start,
                    read.end,
                    read.entries.len()
                )
            }
            other => format!("{other:?}"),
        };
        let _ = writeln!(
            text,
            "read #{index} client={} kind={:?} invoked={} completed={:?} {range}",
            op.client, op.kind, op.invoked_at, op.completed_at
        );
    }
    text
}

fn single_node_config() -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(1),
        max_redirects: 0,
        ..ClientConfig::default()
    }
}

/// The status of one node, or `None` when it does not answer in time.
pub async fn node_status(addr: &str) -> Option<loglog::NodeStatus> {
    let call = async {
        let client = Client::connect_with(&[addr], single_node_config())
            .await
            .ok()?;
        client.status().await.ok()
    };
    tokio::time::timeout(Duration::from_secs(1), call)
        .await
        .ok()?
}

/// Index of the node that is leader and named by every answering node.
pub async fn find_leader(nodes: &[String]) -> Option<usize> {
    let mut leader = None;
    for (index, addr) in nodes.iter().enumerate() {
        if let Some(status) = node_status(addr).await {
            if status.role == Role::Leader {
                if leader.is_some() {
                    return None;
                }
                leader = Some(index);
            }
        }
    }
    leader
}

pub(crate) async fn wait_for_leader(nodes: &[String], limit: Duration) -> Result<usize> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(leader) = find_leader(nodes).await {
            return Ok(leader);
        }
        if Instant::now() > deadline {
            bail!("no single leader within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until there is a leader whose whole log is committed (its end is
/// its commit offset, so its own term's no-op is committed too) and every
/// node reports that commit offset, twice in a row; then reads each node's
/// committed log `[0, commit)`.
async fn converged_logs(nodes: &[String], limit: Duration) -> Result<Vec<Vec<u8>>> {
    let deadline = Instant::now() + limit;
    let mut previous = None;
    let commit = loop {
        let mut statuses = Vec::new();
        for addr in nodes {
            statuses.push(node_status(addr).await);
        }
        let leaders: Vec<_> = statuses
            .iter()
            .flatten()
            .filter(|status| status.role == Role::Leader)
            .collect();
        let settled = match leaders[..] {
            [leader] if leader.end_offset == leader.commit_offset => {
                let commit = leader.commit_offset;
                statuses
                    .iter()
                    .all(|status| status.is_some_and(|s| s.commit_offset == commit))
                    .then_some(commit)
            }
            _ => None,
        };
        match settled {
            Some(commit) if previous == Some(commit) => break commit,
            _ => previous = settled,
        }
        if Instant::now() > deadline {
            let commits: Vec<_> = statuses
                .iter()
                .map(|status| status.map(|s| (s.role, s.commit_offset, s.end_offset)))
                .collect();
            bail!("no settled leader with equal commit offsets after {limit:?}: {commits:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let mut logs = Vec::new();
    for addr in nodes {
        logs.push(read_committed(addr, commit).await?);
    }
    Ok(logs)
}

/// Each node's log up to its own commit offset, read as it is (empty for a
/// node that does not answer).
async fn committed_logs_as_they_are(nodes: &[String]) -> Vec<Vec<u8>> {
    let mut logs = Vec::new();
    for addr in nodes {
        let log = match node_status(addr).await {
            Some(status) => read_committed(addr, status.commit_offset)
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        };
        logs.push(log);
    }
    logs
}

async fn read_committed(addr: &str, commit: u64) -> Result<Vec<u8>> {
    let client = Client::connect_with(&[addr], single_node_config())
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let mut bytes = Vec::new();
    while (bytes.len() as u64) < commit {
        let page = tokio::time::timeout(
            Duration::from_secs(5),
            client.read(bytes.len() as u64, 1 << 20, Duration::ZERO),
        )
        .await
        .with_context(|| format!("read of {addr} timed out"))?
        .with_context(|| format!("read of {addr} failed"))?;
        if page.raw().is_empty() {
            bail!("{addr} returned no bytes at {} below {commit}", bytes.len());
        }
        bytes.extend_from_slice(page.raw());
    }
    bytes.truncate(commit as usize);
    Ok(bytes)
}
