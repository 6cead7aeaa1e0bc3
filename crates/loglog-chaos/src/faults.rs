//! The fault schedule: one fault at a time, drawn from the run's seed
//! among: isolate a node (the leader half of the time), majority/minority
//! split, one-way peer loss, random loss on every node (iptables
//! `statistic`), SIGKILL (restart at heal), SIGSTOP (SIGCONT at heal),
//! SIGKILL + the tail segment cut at a random byte + restart, a bandwidth
//! limit (tc tbf), SIGKILL of every node (a power cut: each loses what it
//! had not fsynced), SIGKILL + immediate restart, delayed or duplicated
//! peer messages (the relays), a leadership transfer, a member replaced
//! (removed, wiped, added back empty) under load; a quarter of the time two
//! of them stacked; each
//! held for a random while, then healed, until the run's duration is over.
//! Every step is written to the fault log with its time since the start.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::cluster::Cluster;
use crate::netns::Network;
use crate::relay::Relays;
use crate::workload::Shared;
use loglog::{AdminRequest, Client, ClientConfig, ClusterStatus, MemberStatus, Role};

/// The kinds of fault, by the names `--faults` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Isolate,
    Split,
    OneWay,
    Loss,
    Kill,
    Stop,
    TailCut,
    Bandwidth,
    PowerCut,
    KillRestart,
    Delay,
    Duplicate,
    Transfer,
    Replace,
}

impl Fault {
    pub const ALL: [Fault; 14] = [
        Fault::Isolate,
        Fault::Split,
        Fault::OneWay,
        Fault::Loss,
        Fault::Kill,
        Fault::Stop,
        Fault::TailCut,
        Fault::Bandwidth,
        Fault::PowerCut,
        Fault::KillRestart,
        Fault::Delay,
        Fault::Duplicate,
        Fault::Transfer,
        Fault::Replace,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Isolate => "isolate",
            Fault::Split => "split",
            Fault::OneWay => "one-way",
            Fault::Loss => "loss",
            Fault::Kill => "kill",
            Fault::Stop => "stop",
            Fault::TailCut => "tail-cut",
            Fault::Bandwidth => "bandwidth",
            Fault::PowerCut => "power-cut",
            Fault::KillRestart => "kill-restart",
            Fault::Delay => "delay",
            Fault::Duplicate => "duplicate",
            Fault::Transfer => "transfer",
            Fault::Replace => "replace",
        }
    }

    /// Parses a comma-separated list of names (`all` for every kind).
    pub fn parse_list(text: &str) -> Result<Vec<Fault>, String> {
        if text.trim() == "all" {
            return Ok(Fault::ALL.to_vec());
        }
        text.split(',')
            .map(str::trim)
            .map(|name| {
                Fault::ALL
                    .into_iter()
                    .find(|fault| fault.name() == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                        format!("unknown fault {name:?} (one of: all, {})", names.join(", "))
                    })
            })
            .collect()
    }
}

/// Sends one admin request through any reachable node (followers redirect
/// to the leader); describes how it ended.
async fn admin(nodes: &[String], request: AdminRequest<'_>) -> String {
    let config = ClientConfig {
        leader_wait: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    let attempt = async {
        let client = Client::connect_with(nodes, config).await?;
        client.admin(request).await
    };
    match tokio::time::timeout(ADMIN_TIMEOUT, attempt).await {
        Ok(Ok(_)) => "done".to_string(),
        Ok(Err(error)) => format!("failed: {error}"),
        Err(_) => "timed out".to_string(),
    }
}

/// Removes node `index`; once the removal is committed (and only then: the
/// node's data may be needed until it is), wipes it and adds it back.
async fn replace(cluster: &mut Cluster, nodes: &[String], index: usize) -> String {
    let id = index as u64 + 1;
    let removed = admin(nodes, AdminRequest::RemoveNode { id }).await;
    if removed != "done" {
        // Not known to be committed: leave it; `restore_membership` finds
        // out at the heal.
        return format!("removal {removed}");
    }
    cluster.kill(index);
    if let Err(error) = cluster.wipe(index) {
        return format!("removed; wipe failed: {error:#}");
    }
    cluster.members[index].joined = true;
    if let Err(error) = cluster.start(index) {
        return format!("removed and wiped; restart failed: {error:#}");
    }
    let member = &cluster.members[index];
    // Through the others: the new node knows no leader yet.
    let others: Vec<String> = nodes
        .iter()
        .enumerate()
        .filter(|&(other, _)| other != index)
        .map(|(_, addr)| addr.clone())
        .collect();
    let added = admin(
        &others,
        AdminRequest::AddNode {
            id,
            peer_addr: &member.relay_addr,
            client_addr: &member.client_addr,
        },
    )
    .await;
    format!("removed, wiped, re-added: {added}")
}

/// The members of the latest configuration of the leader of the newest
/// term, if one answers and no node that answers knows a newer term. Only
/// a leader's view will do: a follower that was cut off may not have heard
/// of a removal that committed without it (a removal answered with an
/// error may have committed all the same). And only the newest leader's: a
/// leader just resumed from SIGSTOP still reports itself leader of its old
/// term, with the configuration it knew then (found by seed 113006: a
/// removal that timed out while the old leader was stopped committed under
/// the new one, and the stale leader's answer hid it).
async fn leader_members(nodes: &[String]) -> Option<Vec<MemberStatus>> {
    let mut answers = Vec::new();
    for node in nodes {
        let status = async {
            let client = Client::connect(&[node]).await?;
            client.cluster_status().await
        };
        if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), status).await {
            answers.push(status);
        }
    }
    newest_leader_members(answers)
}

/// See [`leader_members`]: the members a leader of the newest term any
/// answer knows reports, or `None` if no such leader answered.
fn newest_leader_members(answers: Vec<ClusterStatus>) -> Option<Vec<MemberStatus>> {
    let newest_term = answers.iter().map(|status| status.node.term).max()?;
    answers
        .into_iter()
        .find(|status| status.node.role == Role::Leader && status.node.term == newest_term)
        .map(|status| status.members)
}

/// After a heal, every node must be a member again (the end of the run
/// compares every node's log): a node a `replace` left out is removed for
/// sure (idempotent), wiped and added back. Errors if that fails.
async fn restore_membership(
    cluster: &mut Cluster,
    nodes: &[String],
    log: &mut String,
) -> Result<()> {
    let deadline = Instant::now() + RESTORE_TIMEOUT;
    loop {
        let missing: Vec<usize> = match leader_members(nodes).await {
            Some(members) => (0..cluster.members.len())
                .filter(|&index| !members.iter().any(|m| m.id == index as u64 + 1))
                .collect(),
            None => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "no leader's cluster status to restore membership"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if missing.is_empty() {
            return Ok(());
        }
        for index in missing {
            let outcome = replace(cluster, nodes, index).await;
            let _ = writeln!(log, "restore membership: node {}: {outcome}", index + 1);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "membership not restored within {RESTORE_TIMEOUT:?}"
        );
    }
}

/// How long one admin request may take (an add answers once the node
/// caught up and was promoted).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a heal may take to bring every node back into the cluster.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

/// Longer than the default election timeout (150-300 ms) many times over.
const MIN_HOLD_MS: u64 = 800;
const MAX_HOLD_MS: u64 = 4000;

#[allow(clippy::too_many_arguments)]
pub async fn inject(
    seed: u64,
    duration: Duration,
    kinds: &[Fault],
    network: &Network,
    relays: &Relays,
    cluster: &mut Cluster,
    nodes: &[String],
    shared: &Shared,
    log: &mut String,
    problems: &mut Vec<String>,
) -> Result<()> {
    assert!(!kinds.is_empty(), "at least one kind of fault");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let began = Instant::now();
    let count = cluster.members.len();
    let note = |log: &mut String, text: String| {
        let _ = writeln!(log, "{:>8} ms {text}", shared.began.elapsed().as_millis());
    };
    while began.elapsed() < duration {
        let quiet = Duration::from_millis(rng.gen_range(300..1500));
        tokio::time::sleep(quiet).await;
        if began.elapsed() >= duration {
            break;
        }
        // A quarter of the time a second fault joins the first before
        // anything heals (a lagging node when the leader dies, ...).
        let layers = if rng.gen_bool(0.25) { 2 } else { 1 };
        for _ in 0..layers {
            let hold = Duration::from_millis(rng.gen_range(MIN_HOLD_MS..MAX_HOLD_MS));
            let leader = crate::find_leader(nodes).await;
            // Node ids (1-based) for the log.
            let leader_id = leader.map(|index| index + 1);
            // The victim: the leader half of the time when there is one.
            let victim = match leader {
                Some(leader) if rng.gen_bool(0.5) => leader,
                _ => rng.gen_range(0..count),
            };
            let fault = *kinds.choose(&mut rng).expect("kinds is not empty");
            match fault {
                Fault::Isolate => {
                    note(
                        log,
                        format!("isolate node {} (leader {leader_id:?})", victim + 1),
                    );
                    for other in (0..count).filter(|&other| other != victim) {
                        network.cut(victim, other)?;
                    }
                    network.drop_from(victim, network.host_ip())?;
                    network.drop_to(victim, network.host_ip())?;
                }
                Fault::Split => {
                    let mut order: Vec<usize> = (0..count).collect();
                    order.shuffle(&mut rng);
                    let minority = &order[..count / 2];
                    note(
                        log,
                        format!(
                            "split: minority {:?} from the rest",
                            minority.iter().map(|i| i + 1).collect::<Vec<_>>()
                        ),
                    );
                    for &a in minority {
                        for b in (0..count).filter(|b| !minority.contains(b)) {
                            network.cut(a, b)?;
                        }
                    }
                }
                Fault::OneWay => {
                    // One way: the victim hears nobody, but its packets go out
                    // (or the reverse).
                    let inbound = rng.gen_bool(0.5);
                    note(
                        log,
                        format!(
                            "one-way node {} drops all peer traffic {}",
                            victim + 1,
                            if inbound { "in" } else { "out" }
                        ),
                    );
                    for other in (0..count).filter(|&other| other != victim) {
                        if inbound {
                            network.drop_from(victim, network.node_ip(other))?;
                        } else {
                            network.drop_to(victim, network.node_ip(other))?;
                        }
                    }
                }
                Fault::Loss => {
                    let probability = rng.gen_range(0.05..0.35);
                    note(log, format!("random loss {probability:.2} on every node"));
                    for index in 0..count {
                        network.random_loss(index, probability)?;
                    }
                }
                Fault::Kill => {
                    note(
                        log,
                        format!("SIGKILL node {} (leader {leader_id:?})", victim + 1),
                    );
                    cluster.kill(victim);
                }
                Fault::Stop => {
                    note(
                        log,
                        format!("SIGSTOP node {} (leader {leader_id:?})", victim + 1),
                    );
                    cluster.stop(victim)?;
                }
                Fault::TailCut => {
                    cluster.kill(victim);
                    let cut =
                        cluster.truncate_tail(victim, |written| rng.gen_range(0..=written))?;
                    note(
                        log,
                        format!(
                            "tail-cut: SIGKILL node {} and cut its tail: {}",
                            victim + 1,
                            cut.description
                        ),
                    );
                    cluster.start(victim)?;
                    // A cut below what the node knows was committed must make
                    // it refuse to start (never serve a log with a hole); that
                    // is the right answer, and the harness then undoes the cut
                    // (standing in for the operator's re-seed).
                    tokio::time::sleep(Duration::from_millis(1500)).await;
                    if let Some(status) = cluster.exited(victim) {
                        if cluster
                            .log_tail(victim)
                            .contains("committed data is missing")
                        {
                            note(
                                log,
                                format!(
                                    "node {} refused to start ({status}): committed data missing; cut undone",
                                    victim + 1
                                ),
                            );
                            cluster.undo_cut(victim, &cut)?;
                            cluster.start(victim)?;
                        }
                        // Any other exit is caught below as a crash.
                        else {
                            let text = format!(
                                "node {} exited after its tail was cut: {status}",
                                victim + 1
                            );
                            note(log, text.clone());
                            problems.push(text);
                            cluster.start(victim)?;
                        }
                    }
                }
                Fault::PowerCut => {
                    // Every node at once, as in a power cut (the nodes run
                    // with --test-unsynced-lost-on-kill, so what they had not
                    // fsynced is gone at restart, as after a real one).
                    note(
                        log,
                        "power-cut: SIGKILL every node, restart at heal".to_string(),
                    );
                    cluster.kill_all();
                }
                Fault::Bandwidth => {
                    let kbit = rng.gen_range(128..4096);
                    let everyone = rng.gen_bool(0.3);
                    let whom = if everyone {
                        "every node".to_string()
                    } else {
                        format!("node {}", victim + 1)
                    };
                    note(log, format!("bandwidth {kbit} kbit/s out of {whom}"));
                    for index in (0..count).filter(|&index| everyone || index == victim) {
                        network.limit_bandwidth(index, kbit)?;
                    }
                }
                Fault::Delay => {
                    let delay = Duration::from_millis(rng.gen_range(5..400));
                    let everyone = rng.gen_bool(0.3);
                    note(
                        log,
                        format!(
                            "delay {} ms into {}",
                            delay.as_millis(),
                            if everyone {
                                "every node".to_string()
                            } else {
                                format!("node {}", victim + 1)
                            }
                        ),
                    );
                    for index in (0..count).filter(|&index| everyone || index == victim) {
                        relays.node(index).set(delay, 0.0);
                    }
                }
                Fault::Duplicate => {
                    let probability = rng.gen_range(0.05..0.5);
                    note(
                        log,
                        format!("duplicate {probability:.2} of peer messages into every node"),
                    );
                    for index in 0..count {
                        relays.node(index).set(Duration::ZERO, probability);
                    }
                }
                Fault::Transfer => {
                    let target = (victim + 1 + rng.gen_range(0..count - 1)) % count;
                    let outcome = admin(
                        nodes,
                        AdminRequest::TransferLeader {
                            id: target as u64 + 1,
                        },
                    )
                    .await;
                    note(
                        log,
                        format!(
                            "transfer leadership (leader {leader_id:?}) to node {}: {outcome}",
                            target + 1
                        ),
                    );
                }
                Fault::Replace => {
                    // Remove a member (the leader half of the time), and
                    // once its removal is committed, bring it back empty as
                    // a new member: it joins as a learner, catches up from
                    // the others and is promoted, all under load.
                    let outcome = replace(cluster, nodes, victim).await;
                    note(
                        log,
                        format!(
                            "replace node {} (leader {leader_id:?}): {outcome}",
                            victim + 1
                        ),
                    );
                }
                Fault::KillRestart => {
                    note(
                        log,
                        format!(
                            "kill-restart: SIGKILL and restart node {} at once",
                            victim + 1
                        ),
                    );
                    cluster.kill(victim);
                    cluster.start(victim)?;
                }
            }
            tokio::time::sleep(hold).await;
        }
        network.heal()?;
        relays.clear();
        for index in 0..count {
            if let Some(status) = cluster.exited(index) {
                let text = format!("node {} exited by itself: {status}", index + 1);
                note(log, text.clone());
                problems.push(text);
            }
        }
        cluster.revive_all()?;
        restore_membership(cluster, nodes, log).await?;
        note(log, "healed".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use loglog::NodeStatus;

    fn status(node_id: u64, term: u64, role: Role, members: &[u64]) -> ClusterStatus {
        ClusterStatus {
            node: NodeStatus {
                node_id,
                term,
                role,
                segment_count: 1,
                start_offset: 0,
                commit_offset: 0,
                end_offset: 0,
                leader_id: 0,
            },
            peer_bytes_sent: 0,
            members: members
                .iter()
                .map(|&id| MemberStatus {
                    id,
                    voter: true,
                    match_offset: None,
                    last_heard_ms: None,
                    peer_addr: String::new(),
                    client_addr: String::new(),
                })
                .collect(),
        }
    }

    fn ids(members: Option<Vec<MemberStatus>>) -> Option<Vec<u64>> {
        members.map(|members| members.iter().map(|member| member.id).collect())
    }

    #[test]
    fn a_stale_leader_does_not_hide_a_newer_configuration() {
        // Seed 113006: node 3 resumed from SIGSTOP still calls itself the
        // leader of term 12; node 1 leads term 19 and has removed node 2.
        let answers = vec![
            status(3, 12, Role::Leader, &[1, 2, 3]),
            status(1, 19, Role::Leader, &[1, 3]),
            status(2, 19, Role::Follower, &[1, 2, 3]),
        ];
        assert_eq!(ids(newest_leader_members(answers)), Some(vec![1, 3]));
    }

    #[test]
    fn no_answer_from_the_newest_terms_leader_is_no_answer() {
        let answers = vec![
            status(3, 12, Role::Leader, &[1, 2, 3]),
            status(2, 19, Role::Follower, &[1, 3]),
        ];
        assert_eq!(ids(newest_leader_members(answers)), None);
        assert_eq!(ids(newest_leader_members(Vec::new())), None);
        let answers = vec![status(1, 7, Role::Leader, &[1, 2, 3])];
        assert_eq!(ids(newest_leader_members(answers)), Some(vec![1, 2, 3]));
    }
}
