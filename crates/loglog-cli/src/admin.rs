//! `loglog admin`: membership, leadership and trim requests, sent to the
//! leader (the client follows `NotLeader` answers).

use clap::{Args, Subcommand};
use loglog::AdminRequest;

/// Change the cluster: add or remove a node, move the leadership, trim.
///
/// Each command waits until the change is done and prints one line:
/// `added node ID (commit offset N)`, `removed node ID (commit offset N)`,
/// `leader is node ID`, `log starts at OFFSET`.
#[derive(Args, Debug)]
pub struct AdminArgs {
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Add a node (started with `loglogd --join`): it joins as a learner,
    /// catches up from the log, and is promoted to voter.
    AddNode {
        /// Its node id.
        id: u64,
        /// The address its peers dial (its --peer-listen).
        peer_addr: String,
        /// The address clients use (its --listen).
        client_addr: String,
    },
    /// Remove a node (voter or learner); the leader may remove itself.
    RemoveNode { id: u64 },
    /// Hand the leadership to a voter.
    TransferLeader { id: u64 },
    /// Delete whole segments below OFFSET (never at or above the commit
    /// offset).
    Trim { offset: u64 },
}

pub async fn run(cluster: &[String], args: AdminArgs) -> anyhow::Result<()> {
    let client = crate::connect(cluster).await?;
    let line = match &args.command {
        AdminCommand::AddNode {
            id,
            peer_addr,
            client_addr,
        } => {
            let commit = client
                .admin(AdminRequest::AddNode {
                    id: *id,
                    peer_addr,
                    client_addr,
                })
                .await?;
            format!("added node {id} (commit offset {commit})")
        }
        AdminCommand::RemoveNode { id } => {
            let commit = client.admin(AdminRequest::RemoveNode { id: *id }).await?;
            format!("removed node {id} (commit offset {commit})")
        }
        AdminCommand::TransferLeader { id } => {
            let leader = client
                .admin(AdminRequest::TransferLeader { id: *id })
                .await?;
            format!("leader is node {leader}")
        }
        AdminCommand::Trim { offset } => {
            let start = client.admin(AdminRequest::Trim { offset: *offset }).await?;
            format!("log starts at {start}")
        }
    };
    println!("{line}");
    Ok(())
}
