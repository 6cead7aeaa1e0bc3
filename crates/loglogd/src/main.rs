//! `loglogd`: a LogLog node.
//!
//! With no flags: a single node on 127.0.0.1:19194 with its data in
//! `./loglog-data`. With `--peers`: a member of a replicated cluster (see
//! `loglogd --help`). SIGINT or SIGTERM stops it cleanly (stop accepting,
//! finish in-flight appends, fsync, exit 0); a second signal exits at once.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use loglogd::{parse_byte_size, Config, Fsync, Node};

#[derive(Debug, Parser)]
#[command(
    name = "loglogd",
    version,
    about = "A LogLog node: a single node by default, or a member of a Raft cluster with --peers.",
    after_help = "CLUSTER\n  \
    Every member gets the same --peers list (all founding voters, itself included),\n  \
    its own --id, and listens where the list says:\n\n    \
    loglogd --id 1 --data-dir d1 --listen 127.0.0.1:7001 --peer-listen 127.0.0.1:7101 \\\n      \
    --peers 1=127.0.0.1:7101@127.0.0.1:7001,2=127.0.0.1:7102@127.0.0.1:7002,3=127.0.0.1:7103@127.0.0.1:7003\n\n  \
    --peers items are ID=HOST:PEERPORT@HOST:CLIENTPORT: the address peers dial (that node's\n  \
    --peer-listen) and the address clients are redirected to (that node's --listen).\n  \
    The cluster id (--cluster-id, default derived from the ids and peer addresses) is\n  \
    written into the data directory at bootstrap: a data directory of another cluster or\n  \
    node id refuses to start, and peers of another cluster are refused at the handshake."
)]
struct Args {
    /// Data directory (created if missing).
    #[arg(long, default_value = loglogd::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Client address to listen on (port 0 picks a free port).
    #[arg(long, default_value = loglogd::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Segment file size: bytes, or with a suffix (64MiB, 1GiB).
    #[arg(long, default_value = "64MiB", value_parser = parse_byte_size)]
    segment_size: u64,
    /// Largest entry payload: bytes, or with a suffix (1MiB).
    #[arg(long, default_value = "16777215", value_parser = parse_entry_size)]
    max_entry_size: u32,
    /// `always`: every acknowledged append is fsynced (group commit).
    /// `never`: BENCHMARK ONLY, UNSAFE: acknowledged appends can be lost on
    /// an OS crash or power loss.
    #[arg(long, default_value = "always")]
    fsync: Fsync,
    /// This node's id in the cluster (with --peers).
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// Cluster members: ID=HOST:PEERPORT@HOST:CLIENTPORT,... (every founding
    /// voter, this node included). Without it the node runs alone.
    #[arg(long, value_parser = parse_peer_list)]
    peers: Option<PeerList>,
    /// Address to listen on for peers (with --peers; port 0 picks one).
    #[arg(long, default_value = loglogd::cluster::DEFAULT_PEER_LISTEN, requires = "peers")]
    peer_listen: SocketAddr,
    /// Cluster id fixed at bootstrap (default: derived from --peers).
    #[arg(long, requires = "peers")]
    cluster_id: Option<String>,
}

/// The parsed `--peers` value (one flag, comma-separated members).
#[derive(Clone, Debug)]
struct PeerList(Vec<loglogd::cluster::PeerSpec>);

fn parse_peer_list(text: &str) -> Result<PeerList, String> {
    loglogd::cluster::parse_peers(text).map(PeerList)
}

fn parse_entry_size(text: &str) -> Result<u32, String> {
    let size = parse_byte_size(text)?;
    u32::try_from(size).map_err(|_| format!("{text:?} is larger than 4 GiB"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("loglogd")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(args))
}

fn config_from(args: Args) -> Config {
    let mut config = Config::new(args.data_dir);
    config.listen = Some(args.listen);
    config.segment_size = args.segment_size;
    config.max_entry_size = args.max_entry_size;
    config.fsync = args.fsync;
    config.node_id = args.id;
    if let Some(PeerList(peers)) = args.peers {
        let mut cluster = loglogd::cluster::ClusterConfig::new(peers);
        cluster.peer_listen = args.peer_listen;
        cluster.cluster_id = args.cluster_id;
        config.cluster = Some(cluster);
    }
    config
}

async fn run(args: Args) -> ExitCode {
    let config = config_from(args);
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    if let Err(error) = wait_for_signal().await {
        tracing::error!(%error, "cannot listen for signals; shutting down");
    }
    // A second signal while draining exits at once.
    tokio::spawn(async {
        let _ = wait_for_signal().await;
        tracing::warn!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    node.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_flags_give_the_documented_defaults() {
        let config = config_from(Args::parse_from(["loglogd"]));
        assert_eq!(config, Config::new("loglog-data"));
        assert_eq!(config.listen, Some("127.0.0.1:19194".parse().unwrap()));
        assert_eq!(config.segment_size, loglogd::config::DEFAULT_SEGMENT_SIZE);
    }

    #[test]
    fn flags_set_the_config() {
        let config = config_from(Args::parse_from([
            "loglogd",
            "--data-dir",
            "/d",
            "--listen",
            "0.0.0.0:7000",
            "--segment-size",
            "1GiB",
            "--max-entry-size",
            "1MiB",
            "--fsync",
            "never",
        ]));
        assert_eq!(config.data_dir, PathBuf::from("/d"));
        assert_eq!(config.listen, Some("0.0.0.0:7000".parse().unwrap()));
        assert_eq!(config.segment_size, 1 << 30);
        assert_eq!(config.max_entry_size, 1 << 20);
        assert_eq!(config.fsync, Fsync::Never);
        assert!(Args::try_parse_from(["loglogd", "--max-entry-size", "8GiB"]).is_err());
    }

    #[test]
    fn cluster_flags_set_the_cluster_config() {
        let config = config_from(Args::parse_from([
            "loglogd",
            "--id",
            "2",
            "--peer-listen",
            "127.0.0.1:7102",
            "--peers",
            "1=127.0.0.1:7101@127.0.0.1:7001,2=127.0.0.1:7102@127.0.0.1:7002",
            "--cluster-id",
            "test-cluster",
        ]));
        assert_eq!(config.node_id, 2);
        let cluster = config.cluster.expect("--peers gives a cluster config");
        assert_eq!(cluster.peer_listen, "127.0.0.1:7102".parse().unwrap());
        assert_eq!(cluster.peers.len(), 2);
        assert_eq!(cluster.peers[1].client_addr, "127.0.0.1:7002");
        assert_eq!(cluster.cluster_id(), "test-cluster");
        assert!(Args::try_parse_from(["loglogd", "--peers", "1=nonsense"]).is_err());
        // Cluster-only flags need --peers.
        assert!(Args::try_parse_from(["loglogd", "--cluster-id", "x"]).is_err());
    }
}
