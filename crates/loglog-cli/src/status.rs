//! `loglog status`: the state of every node of the cluster list.

use clap::Args;
use loglog::NodeStatus;

use crate::format::json_string;

/// Show each node's start, end and commit offsets, segment count, term and role.
///
/// Text: one line per node, `ADDR node_id=.. role=.. term=.. start=.. end=..
/// commit=.. segments=.. leader_id=..`, or `ADDR unreachable: REASON`.
/// JSON: an array with one object per node. Fails only when no node answers.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print a JSON array instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(cluster: &[String], args: StatusArgs) -> anyhow::Result<()> {
    // Each node is asked on its own connection, all at once.
    let queries: Vec<_> = cluster
        .iter()
        .map(|addr| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let status = async {
                    let client = loglog::Client::connect(&[&addr]).await?;
                    client.status().await
                }
                .await;
                (addr, status)
            })
        })
        .collect();
    let mut results = Vec::with_capacity(queries.len());
    for query in queries {
        results.push(query.await?);
    }
    let lines: Vec<String> = results
        .iter()
        .map(|(addr, status)| match (status, args.json) {
            (Ok(status), false) => text_line(addr, status),
            (Err(error), false) => format!("{addr} unreachable: {error}"),
            (Ok(status), true) => json_object(addr, status),
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
    if results.iter().all(|(_, status)| status.is_err()) {
        let reason = results
            .iter()
            .find_map(|(_, status)| status.as_ref().err())
            .map_or_else(
                || "the cluster list is empty".to_string(),
                ToString::to_string,
            );
        anyhow::bail!("no node answered: {reason}");
    }
    Ok(())
}

fn text_line(addr: &str, status: &NodeStatus) -> String {
    format!(
        "{addr} node_id={} role={} term={} start={} end={} commit={} segments={} leader_id={}",
        status.node_id,
        status.role,
        status.term,
        status.start_offset,
        status.end_offset,
        status.commit_offset,
        status.segment_count,
        status.leader_id
    )
}

fn json_object(addr: &str, status: &NodeStatus) -> String {
    format!(
        r#"{{"address":{},"node_id":{},"role":{},"term":{},"start_offset":{},"end_offset":{},"commit_offset":{},"segment_count":{},"leader_id":{}}}"#,
        json_string(addr),
        status.node_id,
        json_string(&status.role.to_string()),
        status.term,
        status.start_offset,
        status.end_offset,
        status.commit_offset,
        status.segment_count,
        status.leader_id
    )
}
