//! `loglog status`: the state of every node of the cluster.

use std::collections::{BTreeMap, BTreeSet};

use clap::Args;
use loglog::{ClusterStatus, MemberStatus, NodeStatus, Role};

use crate::format::json_string;

/// Show each node's start, end and commit offsets, segment count, term and
/// role; for cluster members also its addresses and the leader's view of
/// its replication.
///
/// Every address of `--cluster` is asked, then every member those nodes
/// know of that was not asked yet (so a node added later is listed too).
///
/// Text: one line per node, `ADDR node_id=.. role=.. term=.. start=.. end=..
/// commit=.. segments=.. leader_id=..`, followed for a cluster member by
/// `peer_addr=.. voter=.. lag=.. last_contact_ms=.. peer_bytes_sent=..`
/// (`lag` and `last_contact_ms` are the leader's view, `-` when unknown),
/// or `ADDR unreachable: REASON`. JSON: an array with one object per node.
/// Fails only when no node answers.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print a JSON array instead of text.
    #[arg(long)]
    json: bool,
}

/// What one node answered.
struct Answer {
    status: NodeStatus,
    /// `None` from a node that does not know cluster status requests.
    cluster: Option<ClusterStatus>,
}

type Outcome = (String, Result<Answer, loglog::Error>);

async fn ask(addrs: Vec<String>) -> anyhow::Result<Vec<Outcome>> {
    // Each node is asked on its own connection, all at once.
    let queries: Vec<_> = addrs
        .into_iter()
        .map(|addr| {
            tokio::spawn(async move {
                let answer = async {
                    let client =
                        loglog::Client::connect_with(&[&addr], crate::client_config()).await?;
                    match client.cluster_status().await {
                        Ok(cluster) => Ok(Answer {
                            status: cluster.node,
                            cluster: Some(cluster),
                        }),
                        Err(loglog::Error::Server {
                            source: loglog::ServerError::BadRequest { .. },
                            ..
                        }) => Ok(Answer {
                            status: client.status().await?,
                            cluster: None,
                        }),
                        Err(error) => Err(error),
                    }
                }
                .await;
                (addr, answer)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(queries.len());
    for query in queries {
        results.push(query.await?);
    }
    Ok(results)
}

/// The members the answers name, with the best-informed view of each: the
/// leader's (highest term) if one answered.
struct View {
    members: BTreeMap<u64, MemberStatus>,
    /// The answering leader's end offset, the base of replication lag.
    leader_end: Option<u64>,
}

fn view(results: &[Outcome]) -> View {
    let mut answers: Vec<&ClusterStatus> = results
        .iter()
        .filter_map(|(_, answer)| answer.as_ref().ok()?.cluster.as_ref())
        .collect();
    // Leaders first (highest term first), then the others.
    answers.sort_by_key(|answer| {
        (
            answer.node.role != Role::Leader,
            std::cmp::Reverse(answer.node.term),
        )
    });
    let leader_end = answers
        .first()
        .filter(|answer| answer.node.role == Role::Leader)
        .map(|answer| answer.node.end_offset);
    let mut members = BTreeMap::new();
    for answer in answers {
        for member in &answer.members {
            members.entry(member.id).or_insert_with(|| member.clone());
        }
    }
    View {
        members,
        leader_end,
    }
}

pub async fn run(cluster: &[String], args: StatusArgs) -> anyhow::Result<()> {
    let mut results = ask(cluster.to_vec()).await?;
    // Then the members nobody was asked about.
    let first = view(&results);
    let asked: BTreeSet<&str> = results.iter().map(|(addr, _)| addr.as_str()).collect();
    let answered: BTreeSet<u64> = results
        .iter()
        .filter_map(|(_, answer)| Some(answer.as_ref().ok()?.status.node_id))
        .collect();
    let more: Vec<String> = first
        .members
        .values()
        .filter(|member| !answered.contains(&member.id) && !member.client_addr.is_empty())
        .map(|member| member.client_addr.clone())
        .filter(|addr| !asked.contains(addr.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !more.is_empty() {
        results.extend(ask(more).await?);
    }
    let view = view(&results);

    let lines: Vec<String> = results
        .iter()
        .map(|(addr, answer)| match (answer, args.json) {
            (Ok(answer), false) => text_line(addr, answer, &view),
            (Err(error), false) => format!("{addr} unreachable: {error}"),
            (Ok(answer), true) => json_object(addr, answer, &view),
            (Err(error), true) => format!(
                r#"{{"address":{},"error":{}}}"#,
                json_string(addr),
                json_string(&error.to_string())
            ),
        })
        .collect();
    if args.json {
        println!("[{}]", lines.join(","));
    } else {
        for line in &lines {
            println!("{line}");
        }
    }
    if results.iter().all(|(_, answer)| answer.is_err()) {
        let reason = results
            .iter()
            .find_map(|(_, answer)| answer.as_ref().err())
            .map_or_else(
                || "the cluster list is empty".to_string(),
                ToString::to_string,
            );
        anyhow::bail!("no node answered: {reason}");
    }
    Ok(())
}

/// The cluster fields of a member (absent for a single node).
struct MemberFields {
    peer_addr: String,
    voter: bool,
    lag: Option<u64>,
    last_contact_ms: Option<u64>,
    peer_bytes_sent: u64,
}

fn member_fields(answer: &Answer, view: &View) -> Option<MemberFields> {
    let cluster = answer
        .cluster
        .as_ref()
        .filter(|cluster| !cluster.members.is_empty() || answer.status.role == Role::Learner)?;
    let id = answer.status.node_id;
    let member = view.members.get(&id);
    let leader = answer.status.role == Role::Leader;
    Some(MemberFields {
        peer_addr: member
            .map(|member| member.peer_addr.clone())
            .unwrap_or_default(),
        voter: member.is_some_and(|member| member.voter),
        lag: if leader {
            Some(0)
        } else {
            let matched = member.and_then(|member| member.match_offset);
            view.leader_end
                .zip(matched)
                .map(|(end, matched)| end.saturating_sub(matched))
        },
        last_contact_ms: member.and_then(|member| member.last_heard_ms),
        peer_bytes_sent: cluster.peer_bytes_sent,
    })
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

fn or_null(value: Option<u64>) -> String {
    value.map_or_else(|| "null".to_string(), |value| value.to_string())
}

fn text_line(addr: &str, answer: &Answer, view: &View) -> String {
    let status = &answer.status;
    let mut line = format!(
        "{addr} node_id={} role={} term={} start={} end={} commit={} segments={} leader_id={}",
        status.node_id,
        status.role,
        status.term,
        status.start_offset,
        status.end_offset,
        status.commit_offset,
        status.segment_count,
        status.leader_id
    );
    if let Some(fields) = member_fields(answer, view) {
        line.push_str(&format!(
            " peer_addr={} voter={} lag={} last_contact_ms={} peer_bytes_sent={}",
            if fields.peer_addr.is_empty() {
                "-"
            } else {
                &fields.peer_addr
            },
            fields.voter,
            or_dash(fields.lag),
            or_dash(fields.last_contact_ms),
            fields.peer_bytes_sent
        ));
    }
    line
}

fn json_object(addr: &str, answer: &Answer, view: &View) -> String {
    let status = &answer.status;
    let mut object = format!(
        r#"{{"address":{},"node_id":{},"role":{},"term":{},"start_offset":{},"end_offset":{},"commit_offset":{},"segment_count":{},"leader_id":{}"#,
        json_string(addr),
        status.node_id,
        json_string(&status.role.to_string()),
        status.term,
        status.start_offset,
        status.end_offset,
        status.commit_offset,
        status.segment_count,
        status.leader_id
    );
    if let Some(fields) = member_fields(answer, view) {
        object.push_str(&format!(
            r#","peer_address":{},"voter":{},"replication_lag_bytes":{},"last_contact_ms":{},"peer_bytes_sent":{}"#,
            json_string(&fields.peer_addr),
            fields.voter,
            or_null(fields.lag),
            or_null(fields.last_contact_ms),
            fields.peer_bytes_sent
        ));
    }
    object.push('}');
    object
}
