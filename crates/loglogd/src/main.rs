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
    node id refuses to start, and peers of another cluster are refused at the handshake.\n\n\
ADDING A NODE\n  \
    Start it with --join, an empty data directory, and --peers listing the current members\n  \
    (the founders' exact list gives the same derived cluster id; else pass --cluster-id):\n\n    \
    loglogd --id 4 --join --data-dir d4 --listen 127.0.0.1:7004 --peer-listen 127.0.0.1:7104 \\\n      \
    --peers 1=127.0.0.1:7101@127.0.0.1:7001,2=127.0.0.1:7102@127.0.0.1:7002,3=...\n\n  \
    then ask the leader to add it: loglog admin add-node 4 127.0.0.1:7104 127.0.0.1:7004\n  \
    (it becomes a learner, catches up from the log, and is promoted to voter). Members'\n  \
    addresses are kept in the log: every member finds it, and it restarts with --join\n  \
    --cluster-id ID and no --peers (the id is logged at startup as \"cluster\").\n\n\
CONFIG FILE\n  \
    --config FILE reads the same settings from TOML, named like the flags with underscores\n  \
    (id = 1, data_dir = \"d1\", listen = \"127.0.0.1:7001\", peer_listen = ..., peers = \"1=...\",\n  \
    cluster_id, segment_size = \"64MiB\", max_entry_size, fsync); flags on the command line win."
)]
struct Args {
    /// Data directory (created if missing).
    #[arg(long, default_value = loglogd::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Client address to listen on (port 0 picks a free port).
    #[arg(long, default_value = loglogd::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
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
    /// voter, this node included; with --join, the current members). Without
    /// it (and without --join) the node runs alone.
    #[arg(long, value_parser = parse_peer_list)]
    peers: Option<PeerList>,
    /// Address to listen on for peers (with --peers; port 0 picks one).
    #[arg(long, default_value = loglogd::cluster::DEFAULT_PEER_LISTEN)]
    peer_listen: SocketAddr,
    /// Cluster id fixed at bootstrap (default: derived from --peers).
    #[arg(long)]
    cluster_id: Option<String>,
    /// Join an existing cluster instead of founding one: an empty data
    /// directory starts with no configuration and waits for a leader to
    /// add it (`loglog admin add-node`); --peers lists current members.
    #[arg(long)]
    join: bool,
    /// A TOML file with any of these settings under the same names
    /// (data_dir, listen, metrics_listen, segment_size, max_entry_size, fsync, id, peers,
    /// peer_listen, cluster_id, join); flags given on the command line win.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// TEST ONLY (fault injection, with --peers): emulate a power cut on
    /// every kill; the next start drops log bytes that were not fsynced.
    #[arg(long, hide = true)]
    test_unsynced_lost_on_kill: bool,
    /// TEST ONLY, A DELIBERATE BUG (with --peers): acknowledge before fsync.
    #[cfg(feature = "bug-injection")]
    #[arg(long, hide = true)]
    test_ack_before_fsync: bool,
}

/// The settings of a `--config` file: the flags' names with underscores.
/// Sizes are numbers of bytes or strings with a suffix ("64MiB").
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    segment_size: Option<FileSize>,
    max_entry_size: Option<FileSize>,
    fsync: Option<String>,
    id: Option<u64>,
    peers: Option<String>,
    peer_listen: Option<SocketAddr>,
    cluster_id: Option<String>,
    join: Option<bool>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum FileSize {
    Bytes(u64),
    Text(String),
}

impl FileSize {
    fn bytes(&self) -> Result<u64, String> {
        match self {
            FileSize::Bytes(bytes) => Ok(*bytes),
            FileSize::Text(text) => parse_byte_size(text),
        }
    }
}

/// Fills every setting not given on the command line from `--config`.
fn apply_config_file(args: &mut Args, matches: &clap::ArgMatches) -> Result<(), String> {
    let unset =
        |name: &str| matches.value_source(name) != Some(clap::parser::ValueSource::CommandLine);
    if let Some(path) = args.config.clone() {
        read_config_file(args, &path, &unset)?;
    }
    if args.peers.is_none() && !args.join && (args.cluster_id.is_some() || !unset("peer_listen")) {
        return Err("--peer-listen and --cluster-id need --peers or --join".to_string());
    }
    if args.peers.is_none() && !args.join && args.test_unsynced_lost_on_kill {
        return Err("--test-unsynced-lost-on-kill needs --peers".to_string());
    }
    Ok(())
}

fn read_config_file(
    args: &mut Args,
    path: &std::path::Path,
    unset: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    let file: FileConfig =
        toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    let context =
        |name: &'static str| move |error: String| format!("{}: {name}: {error}", path.display());
    if let (true, Some(value)) = (unset("data_dir"), file.data_dir) {
        args.data_dir = value;
    }
    if let (true, Some(value)) = (unset("metrics_listen"), file.metrics_listen) {
        args.metrics_listen = Some(value);
    }
    if let (true, Some(value)) = (unset("listen"), file.listen) {
        args.listen = value;
    }
    if let (true, Some(value)) = (unset("segment_size"), file.segment_size) {
        args.segment_size = value.bytes().map_err(context("segment_size"))?;
    }
    if let (true, Some(value)) = (unset("max_entry_size"), file.max_entry_size) {
        let bytes = value.bytes().map_err(context("max_entry_size"))?;
        args.max_entry_size = u32::try_from(bytes)
            .map_err(|_| format!("{}: max_entry_size is larger than 4 GiB", path.display()))?;
    }
    if let (true, Some(value)) = (unset("fsync"), file.fsync) {
        args.fsync = value.parse().map_err(context("fsync"))?;
    }
    if let (true, Some(value)) = (unset("id"), file.id) {
        args.id = value;
    }
    if let (true, Some(value)) = (unset("peers"), file.peers) {
        args.peers = Some(parse_peer_list(&value).map_err(context("peers"))?);
    }
    if let (true, Some(value)) = (unset("peer_listen"), file.peer_listen) {
        args.peer_listen = value;
    }
    if let (true, Some(value)) = (unset("cluster_id"), file.cluster_id) {
        args.cluster_id = Some(value);
    }
    if let (true, Some(value)) = (unset("join"), file.join) {
        args.join = value;
    }
    Ok(())
}

/// Parses a command line and applies `--config` (what `main` does).
#[cfg(test)]
fn parse_args<I, T>(argv: I) -> Result<Args, String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Args::command()
        .try_get_matches_from(argv)
        .map_err(|error| error.to_string())?;
    let mut args = Args::from_arg_matches(&matches).map_err(|error| error.to_string())?;
    apply_config_file(&mut args, &matches)?;
    Ok(args)
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
    use clap::{CommandFactory, FromArgMatches};
    // Exits on --help, --version and bad flags, as clap does.
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if let Err(message) = apply_config_file(&mut args, &matches) {
        eprintln!("loglogd: {message}");
        return ExitCode::from(2);
    }
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
    config.metrics_listen = args.metrics_listen;
    config.segment_size = args.segment_size;
    config.max_entry_size = args.max_entry_size;
    config.fsync = args.fsync;
    config.node_id = args.id;
    if args.peers.is_some() || args.join {
        let peers = args.peers.map(|PeerList(peers)| peers).unwrap_or_default();
        let mut cluster = loglogd::cluster::ClusterConfig::new(peers);
        cluster.peer_listen = args.peer_listen;
        cluster.cluster_id = args.cluster_id;
        cluster.join = args.join;
        cluster.test_switches.unsynced_lost_on_kill = args.test_unsynced_lost_on_kill;
        #[cfg(feature = "bug-injection")]
        {
            cluster.test_switches.ack_before_fsync = args.test_ack_before_fsync;
        }
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
    fn a_config_file_fills_what_the_flags_do_not_give() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loglogd.toml");
        std::fs::write(
            &path,
            r#"
data_dir = "/from-file"
listen = "127.0.0.1:7001"
segment_size = "1MiB"
max_entry_size = 4096
fsync = "never"
id = 3
peers = "1=h1:7101@h1:7001,3=h3:7103@h3:7003"
peer_listen = "127.0.0.1:7103"
cluster_id = "file-cluster"
"#,
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = config_from(parse_args(["loglogd", "--config", path]).unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/from-file"));
        assert_eq!(config.listen, Some("127.0.0.1:7001".parse().unwrap()));
        assert_eq!(
            (config.segment_size, config.max_entry_size),
            (1 << 20, 4096)
        );
        assert_eq!((config.fsync, config.node_id), (Fsync::Never, 3));
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.cluster_id(), "file-cluster");
        assert_eq!(cluster.peer_listen, "127.0.0.1:7103".parse().unwrap());
        assert_eq!(cluster.peers.len(), 2);
        // Flags win over the file.
        let config = config_from(
            parse_args([
                "loglogd",
                "--config",
                path,
                "--id",
                "1",
                "--data-dir",
                "/flag",
            ])
            .unwrap(),
        );
        assert_eq!(
            (config.node_id, config.data_dir),
            (1, PathBuf::from("/flag"))
        );
        assert_eq!(
            config.segment_size,
            1 << 20,
            "the rest still comes from the file"
        );
        // Unknown keys and bad values are errors that name the file.
        std::fs::write(dir.path().join("bad.toml"), "ids = 3\n").unwrap();
        let bad = dir.path().join("bad.toml");
        let error = parse_args(["loglogd", "--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("bad.toml"), "{error}");
        std::fs::write(&bad, "segment_size = \"12XB\"\n").unwrap();
        assert!(parse_args(["loglogd", "--config", bad.to_str().unwrap()]).is_err());
        assert!(parse_args(["loglogd", "--config", "/no/such/file.toml"]).is_err());
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
        assert!(parse_args(["loglogd", "--cluster-id", "x"]).is_err());
        assert!(parse_args(["loglogd", "--peer-listen", "127.0.0.1:1"]).is_err());
        // A joining node: no --peers needed (on a restart), not listed itself.
        let config = config_from(
            parse_args(["loglogd", "--id", "4", "--join", "--cluster-id", "prod"]).unwrap(),
        );
        let cluster = config.cluster.expect("--join gives a cluster config");
        assert!(cluster.join && cluster.peers.is_empty());
        assert!(cluster.validate(4).is_ok());
    }
}
