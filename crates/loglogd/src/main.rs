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
use std::time::Duration;

use clap::Parser;
use loglogd::cluster::upload::UploadLimits;
use loglogd::{
    parse_byte_size, parse_duration, ClientAuth, Config, Fsync, Limits, Node, TlsConfig,
    TlsListeners,
};

mod retention_args;

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
    --config FILE reads every setting from TOML, named like the flags with underscores\n  \
    (id = 1, data_dir = \"d1\", listen = \"127.0.0.1:7001\", peers = \"1=...\", segment_size = \"64MiB\",\n  \
    ...; the limits in a [limits] table, retention in a [retention] table). LOGLOG_* environment variables (shown with each\n  \
    flag) win over the file, and flags win over both. --print-config prints the effective\n  \
    configuration in this format.\n\n\
TLS\n  \
    Plain TCP is the default, meant for local use. --tls-cert and --tls-key (PEM) turn on TLS\n  \
    for clients and mutual TLS between peers, whose certificates must come from --tls-ca\n  \
    (the cluster's CA; a node's certificate needs serverAuth and clientAuth, and must be valid\n  \
    for the host of its peer address: a peer is admitted as the member whose id it claims only\n  \
    then). A [tls] table in the config file takes cert, key, ca, listeners, client_auth, peer_server_name.\n\n\
CLIENT TOKENS\n  \
    Off unless the config file lists tokens: then every client request needs a token with\n  \
    its role (read: reads and status; append; admin). Make one with `loglog token new --name\n  \
    NAME --roles read,append` and add the [[auth.tokens]] entry it prints to the file."
)]
struct Args {
    /// Data directory (created if missing).
    #[arg(long, env = "LOGLOG_DATA_DIR", default_value = loglogd::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Client address to listen on (port 0 picks a free port).
    #[arg(long, env = "LOGLOG_LISTEN", default_value = loglogd::config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Serve Prometheus metrics at http://ADDR/metrics (off unless set).
    #[arg(long, env = "LOGLOG_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Segment file size: bytes, or with a suffix (64MiB, 1GiB).
    #[arg(long, env = "LOGLOG_SEGMENT_SIZE", default_value = "64MiB", value_parser = parse_byte_size)]
    segment_size: u64,
    /// Largest entry payload: bytes, or with a suffix (1MiB).
    #[arg(long, env = "LOGLOG_MAX_ENTRY_SIZE", default_value = "16777215", value_parser = parse_entry_size)]
    max_entry_size: u32,
    /// `always`: every acknowledged append is fsynced (group commit).
    /// `never`: BENCHMARK ONLY, UNSAFE: acknowledged appends can be lost on
    /// an OS crash or power loss.
    #[arg(long, env = "LOGLOG_FSYNC", default_value = "always")]
    fsync: Fsync,
    /// This node's id in the cluster (with --peers).
    #[arg(long, env = "LOGLOG_ID", default_value_t = 1)]
    id: u64,
    /// Cluster members: ID=HOST:PEERPORT@HOST:CLIENTPORT,... (every founding
    /// voter, this node included; with --join, the current members). Without
    /// it (and without --join) the node runs alone.
    #[arg(long, env = "LOGLOG_PEERS", value_parser = parse_peer_list)]
    peers: Option<PeerList>,
    /// Address to listen on for peers (with --peers; port 0 picks one).
    #[arg(long, env = "LOGLOG_PEER_LISTEN", default_value = loglogd::cluster::DEFAULT_PEER_LISTEN)]
    peer_listen: SocketAddr,
    /// Cluster id fixed at bootstrap (default: derived from --peers).
    #[arg(long, env = "LOGLOG_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Join an existing cluster instead of founding one: an empty data
    /// directory starts with no configuration and waits for a leader to
    /// add it (`loglog admin add-node`); --peers lists current members.
    #[arg(long)]
    join: bool,
    /// A TOML file with any of these settings under the same names with
    /// underscores (limits in a [limits] table); flags and LOGLOG_*
    /// environment variables win over it. `--print-config` shows one.
    #[arg(long, env = "LOGLOG_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (as a --config file) and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Client tokens, from the config file's `[[auth.tokens]]` only.
    #[arg(skip)]
    auth: loglogd::auth::AuthConfig,
    #[command(flatten)]
    retention: retention_args::RetentionArgs,
    /// TEST ONLY (fault injection, with --peers): emulate a power cut on
    /// every kill; the next start drops log bytes that were not fsynced.
    #[arg(long, hide = true)]
    test_unsynced_lost_on_kill: bool,
    /// TEST ONLY (with --peers): emulate a slow disk, waiting this long
    /// before every fsync (e.g. 20ms).
    #[arg(long, hide = true, value_parser = parse_duration)]
    test_fsync_delay: Option<Duration>,
    /// TEST ONLY, A DELIBERATE BUG (with --peers): acknowledge before fsync.
    #[cfg(feature = "bug-injection")]
    #[arg(long, hide = true)]
    test_ack_before_fsync: bool,
}

/// The settings of a `--config` file: the flags' names with underscores.
/// Sizes are numbers of bytes or strings with a suffix ("64MiB").
/// `--print-config` writes one (every setting, effective values).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    segment_size: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_entry_size: Option<FileSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fsync: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    join: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limits: Option<FileLimits>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<FileTls>,
    /// Client tokens (`[[auth.tokens]]`); only in the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<loglogd::auth::FileAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retention: Option<retention_args::FileRetention>,
}

/// The `[tls]` table of a config file (see `loglogd::TlsConfig`).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    listeners: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_auth: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer_server_name: Option<String>,
}

/// TLS settings (`loglogd::TlsConfig`): each from its flag, its LOGLOG_*
/// variable, the config file's `[tls]` table; off without a certificate.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "TLS (off by default: plain TCP, for local use)")]
struct TlsArgs {
    /// This node's certificate chain (PEM). With --tls-key: TLS on.
    #[arg(long, env = "LOGLOG_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "LOGLOG_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers' certificates (and client
    /// certificates with --tls-client-auth require) must chain to it.
    #[arg(long, env = "LOGLOG_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Which listeners use TLS [default: both].
    #[arg(long, env = "LOGLOG_TLS_LISTENERS", value_name = "both|clients|peers")]
    tls_listeners: Option<TlsListeners>,
    /// Demand client certificates from --tls-ca on the client listener
    /// [default: none].
    #[arg(long, env = "LOGLOG_TLS_CLIENT_AUTH", value_name = "none|require")]
    tls_client_auth: Option<ClientAuth>,
    /// Name peers' certificates are checked against [default: the host
    /// of each peer address, a DNS name or an IP address].
    #[arg(long, env = "LOGLOG_TLS_PEER_SERVER_NAME", value_name = "NAME")]
    tls_peer_server_name: Option<String>,
}

impl TlsArgs {
    /// Fills what no flag or variable gave from the config file's table.
    fn fill_from(&mut self, file: FileTls) -> Result<(), String> {
        fn or<T>(slot: &mut Option<T>, value: Option<T>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        or(&mut self.tls_cert, file.cert);
        or(&mut self.tls_key, file.key);
        or(&mut self.tls_ca, file.ca);
        let listeners = file
            .listeners
            .map(|text| {
                text.parse()
                    .map_err(|error| format!("tls.listeners: {error}"))
            })
            .transpose()?;
        or(&mut self.tls_listeners, listeners);
        let client_auth = file
            .client_auth
            .map(|text| {
                text.parse()
                    .map_err(|error| format!("tls.client_auth: {error}"))
            })
            .transpose()?;
        or(&mut self.tls_client_auth, client_auth);
        or(&mut self.tls_peer_server_name, file.peer_server_name);
        Ok(())
    }

    /// Both files or neither; other TLS settings only with them. The CA
    /// alone from the environment is ignored (LOGLOG_TLS_CA is also the
    /// `loglog` CLI's variable).
    fn check(&mut self, matches: &clap::ArgMatches) -> Result<(), String> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), Some(_)) => Ok(()),
            (Some(_), None) | (None, Some(_)) => {
                Err("--tls-cert and --tls-key go together".to_string())
            }
            (None, None) => {
                let ca_from_env = matches!(
                    matches.value_source("tls_ca"),
                    Some(clap::parser::ValueSource::EnvVariable)
                );
                if ca_from_env {
                    self.tls_ca = None;
                }
                if self.tls_ca.is_some()
                    || self.tls_listeners.is_some()
                    || self.tls_client_auth.is_some()
                    || self.tls_peer_server_name.is_some()
                {
                    return Err("TLS settings need --tls-cert and --tls-key".to_string());
                }
                Ok(())
            }
        }
    }

    fn tls(&self) -> Option<TlsConfig> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        let mut tls = TlsConfig::new(cert, key);
        tls.ca = self.tls_ca.clone();
        tls.listeners = self.tls_listeners.unwrap_or_default();
        tls.client_auth = self.tls_client_auth.unwrap_or_default();
        tls.peer_server_name = self.tls_peer_server_name.clone();
        Some(tls)
    }
}

/// The `[limits]` table of a config file (see `loglogd::Limits`).
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    max_in_flight_requests: Option<usize>,
    max_in_flight_bytes: Option<FileSize>,
    max_node_request_bytes: Option<FileSize>,
    max_node_read_bytes: Option<FileSize>,
    max_pending_appends: Option<usize>,
    max_pending_append_bytes: Option<FileSize>,
    max_write_batch_bytes: Option<FileSize>,
    max_read_bytes: Option<FileSize>,
    max_long_poll_wait: Option<String>,
    client_stall_timeout: Option<String>,
    max_commit_wait: Option<String>,
    auth_timeout: Option<String>,
    max_upload_cache_bytes: Option<FileSize>,
    max_upload_cache_entries: Option<usize>,
    upload_cache_ttl: Option<String>,
}

/// The node's bounds (`loglogd::Limits`): each from its flag, its LOGLOG_*
/// variable, the config file's `[limits]` table, or the default.
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Limits (defaults: see --print-config)")]
struct LimitArgs {
    /// Open client connections; more are answered Busy.
    #[arg(long, env = "LOGLOG_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Requests in flight per connection (then backpressure).
    #[arg(long, env = "LOGLOG_MAX_IN_FLIGHT_REQUESTS", value_name = "N")]
    max_in_flight_requests: Option<usize>,
    /// Request bytes in flight per connection (then backpressure).
    #[arg(long, env = "LOGLOG_MAX_IN_FLIGHT_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_in_flight_bytes: Option<usize>,
    /// Request bytes in flight on the whole node.
    #[arg(long, env = "LOGLOG_MAX_NODE_REQUEST_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_node_request_bytes: Option<usize>,
    /// Read-answer bytes buffered on the whole node.
    #[arg(long, env = "LOGLOG_MAX_NODE_READ_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_node_read_bytes: Option<usize>,
    /// Appends queued for the writer, node-wide.
    #[arg(long, env = "LOGLOG_MAX_PENDING_APPENDS", value_name = "N")]
    max_pending_appends: Option<usize>,
    /// Payload bytes queued for the writer, node-wide.
    #[arg(long, env = "LOGLOG_MAX_PENDING_APPEND_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_pending_append_bytes: Option<usize>,
    /// Bytes encoded into one write.
    #[arg(long, env = "LOGLOG_MAX_WRITE_BATCH_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_write_batch_bytes: Option<usize>,
    /// Largest read answer.
    #[arg(long, env = "LOGLOG_MAX_READ_BYTES", value_name = "SIZE", value_parser = parse_entry_size)]
    max_read_bytes: Option<u32>,
    /// Longest long-poll wait of a read (e.g. 60s, 500ms).
    #[arg(long, env = "LOGLOG_MAX_LONG_POLL_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    max_long_poll_wait: Option<Duration>,
    /// A client that stalls this long is disconnected (e.g. 30s).
    #[arg(long, env = "LOGLOG_CLIENT_STALL_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    client_stall_timeout: Option<Duration>,
    /// Longest an append waits for its commit (replicated mode); then it
    /// is answered TimedOut and may still commit (e.g. 10s).
    #[arg(long, env = "LOGLOG_MAX_COMMIT_WAIT", value_name = "DURATION", value_parser = parse_duration)]
    max_commit_wait: Option<Duration>,
    /// With auth tokens: a connection still without a role this long after
    /// it connected is closed (e.g. 10s).
    #[arg(long, env = "LOGLOG_AUTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    auth_timeout: Option<Duration>,
    /// Cluster, client-side upload: payload bytes of uploads held for the
    /// leader's appends by digest (oldest dropped first; a miss costs the
    /// leader a raw resend, never data).
    #[arg(long, env = "LOGLOG_MAX_UPLOAD_CACHE_BYTES", value_name = "SIZE", value_parser = parse_usize_size)]
    max_upload_cache_bytes: Option<usize>,
    /// Cluster, client-side upload: uploads held at most.
    #[arg(long, env = "LOGLOG_MAX_UPLOAD_CACHE_ENTRIES", value_name = "N")]
    max_upload_cache_entries: Option<usize>,
    /// Cluster, client-side upload: how long an upload is kept (e.g. 30s).
    #[arg(long, env = "LOGLOG_UPLOAD_CACHE_TTL", value_name = "DURATION", value_parser = parse_duration)]
    upload_cache_ttl: Option<Duration>,
}

impl LimitArgs {
    /// Fills what no flag or variable gave from the config file's table.
    fn fill_from(&mut self, file: FileLimits) -> Result<(), String> {
        fn or<T>(slot: &mut Option<T>, value: Option<T>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        let size = |name: &'static str, value: Option<FileSize>| -> Result<Option<usize>, String> {
            value
                .map(|value| {
                    let bytes = value
                        .bytes()
                        .map_err(|error| format!("limits.{name}: {error}"))?;
                    usize::try_from(bytes).map_err(|_| format!("limits.{name}: too large"))
                })
                .transpose()
        };
        let duration = |name: &'static str, value: Option<String>| {
            value
                .map(|text| {
                    parse_duration(&text).map_err(|error| format!("limits.{name}: {error}"))
                })
                .transpose()
        };
        or(&mut self.max_connections, file.max_connections);
        or(
            &mut self.max_in_flight_requests,
            file.max_in_flight_requests,
        );
        or(
            &mut self.max_in_flight_bytes,
            size("max_in_flight_bytes", file.max_in_flight_bytes)?,
        );
        or(
            &mut self.max_node_request_bytes,
            size("max_node_request_bytes", file.max_node_request_bytes)?,
        );
        or(
            &mut self.max_node_read_bytes,
            size("max_node_read_bytes", file.max_node_read_bytes)?,
        );
        or(&mut self.max_pending_appends, file.max_pending_appends);
        or(
            &mut self.max_pending_append_bytes,
            size("max_pending_append_bytes", file.max_pending_append_bytes)?,
        );
        or(
            &mut self.max_write_batch_bytes,
            size("max_write_batch_bytes", file.max_write_batch_bytes)?,
        );
        let read_bytes = size("max_read_bytes", file.max_read_bytes)?
            .map(|bytes| {
                u32::try_from(bytes)
                    .map_err(|_| "limits.max_read_bytes: larger than 4 GiB".to_string())
            })
            .transpose()?;
        or(&mut self.max_read_bytes, read_bytes);
        or(
            &mut self.max_long_poll_wait,
            duration("max_long_poll_wait", file.max_long_poll_wait)?,
        );
        or(
            &mut self.client_stall_timeout,
            duration("client_stall_timeout", file.client_stall_timeout)?,
        );
        or(
            &mut self.max_commit_wait,
            duration("max_commit_wait", file.max_commit_wait)?,
        );
        or(
            &mut self.auth_timeout,
            duration("auth_timeout", file.auth_timeout)?,
        );
        or(
            &mut self.max_upload_cache_bytes,
            size("max_upload_cache_bytes", file.max_upload_cache_bytes)?,
        );
        or(
            &mut self.max_upload_cache_entries,
            file.max_upload_cache_entries,
        );
        or(
            &mut self.upload_cache_ttl,
            duration("upload_cache_ttl", file.upload_cache_ttl)?,
        );
        Ok(())
    }

    /// The upload cache's bounds: the defaults with what was given laid
    /// over them.
    fn upload_limits(&self) -> UploadLimits {
        let defaults = UploadLimits::default();
        UploadLimits {
            max_bytes: self.max_upload_cache_bytes.unwrap_or(defaults.max_bytes),
            max_entries: self
                .max_upload_cache_entries
                .unwrap_or(defaults.max_entries),
            ttl: self.upload_cache_ttl.unwrap_or(defaults.ttl),
        }
    }

    /// The defaults with what was given laid over them.
    fn limits(&self) -> Limits {
        let mut limits = Limits::default();
        macro_rules! given {
            ($($field:ident),*) => {
                $(if let Some(value) = self.$field { limits.$field = value; })*
            };
        }
        given!(
            max_connections,
            max_in_flight_requests,
            max_in_flight_bytes,
            max_node_request_bytes,
            max_node_read_bytes,
            max_pending_appends,
            max_pending_append_bytes,
            max_write_batch_bytes,
            max_read_bytes,
            max_long_poll_wait,
            client_stall_timeout,
            max_commit_wait,
            auth_timeout
        );
        limits
    }
}

fn parse_usize_size(text: &str) -> Result<usize, String> {
    let bytes = parse_byte_size(text)?;
    usize::try_from(bytes).map_err(|_| format!("{text:?} is too large"))
}

#[derive(Debug, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum FileSize {
    Bytes(u64),
    Text(String),
}

impl FileSize {
    pub(crate) fn bytes(&self) -> Result<u64, String> {
        match self {
            FileSize::Bytes(bytes) => Ok(*bytes),
            FileSize::Text(text) => parse_byte_size(text),
        }
    }
}

/// Fills every setting not given on the command line from `--config`.
fn apply_config_file(args: &mut Args, matches: &clap::ArgMatches) -> Result<(), String> {
    // Flags and LOGLOG_* variables win over the file.
    let unset = |name: &str| {
        !matches!(
            matches.value_source(name),
            Some(clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable)
        )
    };
    if let Some(path) = args.config.clone() {
        read_config_file(args, &path, &unset)?;
    }
    if args.peers.is_none() && !args.join && (args.cluster_id.is_some() || !unset("peer_listen")) {
        return Err("--peer-listen and --cluster-id need --peers or --join".to_string());
    }
    args.tls.check(matches)?;
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
    if let Some(auth) = file.auth {
        args.auth = auth
            .to_config()
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    if let Some(limits) = file.limits {
        args.limits
            .fill_from(limits)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    if let Some(tls) = file.tls {
        args.tls
            .fill_from(tls)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    if let Some(retention) = file.retention {
        args.retention
            .fill_from(retention)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    Ok(())
}

/// Parses a command line and applies `--config` (what `main` does).
#[cfg(any(test, fuzzing))]
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

/// The effective configuration as a `--config` file: every setting, with
/// the values flags, variables, the file and the defaults gave.
fn printed_config(config: &Config) -> String {
    let limits = &config.limits;
    let size = |bytes: usize| Some(FileSize::Bytes(bytes as u64));
    let cluster = config.cluster.as_ref();
    let file = FileConfig {
        data_dir: Some(config.data_dir.clone()),
        listen: config.listen,
        metrics_listen: config.metrics_listen,
        segment_size: Some(FileSize::Bytes(config.segment_size)),
        max_entry_size: Some(FileSize::Bytes(u64::from(config.max_entry_size))),
        fsync: Some(
            match config.fsync {
                Fsync::Always => "always",
                Fsync::Never => "never",
            }
            .to_string(),
        ),
        id: Some(config.node_id),
        // A joining node may have no --peers (it learns them from its log).
        peers: cluster
            .filter(|cluster| !cluster.peers.is_empty())
            .map(|cluster| {
                cluster
                    .peers
                    .iter()
                    .map(|peer| format!("{}={}@{}", peer.id, peer.peer_addr, peer.client_addr))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        peer_listen: cluster.map(|cluster| cluster.peer_listen),
        cluster_id: cluster.map(|cluster| cluster.cluster_id()),
        join: cluster.filter(|cluster| cluster.join).map(|_| true),
        limits: Some(FileLimits {
            max_connections: Some(limits.max_connections),
            max_in_flight_requests: Some(limits.max_in_flight_requests),
            max_in_flight_bytes: size(limits.max_in_flight_bytes),
            max_node_request_bytes: size(limits.max_node_request_bytes),
            max_node_read_bytes: size(limits.max_node_read_bytes),
            max_pending_appends: Some(limits.max_pending_appends),
            max_pending_append_bytes: size(limits.max_pending_append_bytes),
            max_write_batch_bytes: size(limits.max_write_batch_bytes),
            max_read_bytes: size(limits.max_read_bytes as usize),
            max_long_poll_wait: Some(loglogd::format_duration(limits.max_long_poll_wait)),
            client_stall_timeout: Some(loglogd::format_duration(limits.client_stall_timeout)),
            max_commit_wait: Some(loglogd::format_duration(limits.max_commit_wait)),
            auth_timeout: Some(loglogd::format_duration(limits.auth_timeout)),
            // Only a cluster node has an upload cache.
            max_upload_cache_bytes: cluster
                .map(|cluster| FileSize::Bytes(cluster.upload_cache.max_bytes as u64)),
            max_upload_cache_entries: cluster.map(|cluster| cluster.upload_cache.max_entries),
            upload_cache_ttl: cluster
                .map(|cluster| loglogd::format_duration(cluster.upload_cache.ttl)),
        }),
        tls: config.tls.as_ref().map(|tls| FileTls {
            cert: Some(tls.cert.clone()),
            key: Some(tls.key.clone()),
            ca: tls.ca.clone(),
            listeners: Some(tls.listeners.as_str().to_string()),
            client_auth: Some(tls.client_auth.as_str().to_string()),
            peer_server_name: tls.peer_server_name.clone(),
        }),
        auth: loglogd::auth::FileAuth::from_config(&config.auth),
        retention: Some(retention_args::printed(&config.retention)),
    };
    toml::to_string(&file).expect("the config serializes to TOML")
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
    if args.print_config {
        print!("{}", printed_config(&config_from(args)));
        return ExitCode::SUCCESS;
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
    config.limits = args.limits.limits();
    config.tls = args.tls.tls();
    config.auth = args.auth;
    config.retention = args.retention.retention();
    if args.peers.is_some() || args.join {
        let peers = args.peers.map(|PeerList(peers)| peers).unwrap_or_default();
        let mut cluster = loglogd::cluster::ClusterConfig::new(peers);
        cluster.peer_listen = args.peer_listen;
        cluster.cluster_id = args.cluster_id;
        cluster.join = args.join;
        cluster.upload_cache = args.limits.upload_limits();
        cluster.test_switches.unsynced_lost_on_kill = args.test_unsynced_lost_on_kill;
        cluster.test_switches.fsync_delay = args.test_fsync_delay.unwrap_or_default();
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
    // Caught before the node serves anyone: a SIGTERM that comes right
    // after the first answer (or during the start) must stop it cleanly,
    // not kill it with the default action.
    let mut signals = match Signals::listen() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot listen for signals");
            return ExitCode::FAILURE;
        }
    };
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    signals.next().await;
    // A second signal while draining exits at once.
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second signal: exiting without a clean shutdown");
        std::process::exit(130);
    });
    node.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, caught from [`Signals::listen`] on.
struct Signals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
        }
    }
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
    fn limits_come_from_flags_over_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loglogd.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_connections = 7\nmax_node_read_bytes = \"3MiB\"\nclient_stall_timeout = \"1500ms\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = config_from(parse_args(["loglogd", "--config", path]).unwrap());
        assert_eq!(config.limits.max_connections, 7);
        assert_eq!(config.limits.max_node_read_bytes, 3 << 20);
        assert_eq!(
            config.limits.client_stall_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            config.limits.max_pending_appends,
            Limits::default().max_pending_appends,
            "unset limits keep their defaults"
        );
        let config = config_from(
            parse_args(["loglogd", "--config", path, "--max-connections", "9"]).unwrap(),
        );
        assert_eq!(config.limits.max_connections, 9, "the flag wins");
        assert_eq!(config.limits.max_node_read_bytes, 3 << 20);
        std::fs::write(
            dir.path().join("bad.toml"),
            "[limits]\nmax_conections = 1\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.toml");
        assert!(parse_args(["loglogd", "--config", bad.to_str().unwrap()]).is_err());
    }

    #[test]
    fn retention_comes_from_flags_over_env_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loglogd.toml");
        std::fs::write(
            &path,
            "[retention]\nmax_bytes = \"10GiB\"\nmax_age = \"2h\"\nmin_bytes = 4096\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = config_from(parse_args(["loglogd", "--config", path]).unwrap());
        assert_eq!(config.retention.max_bytes, Some(10 << 30));
        assert_eq!(config.retention.max_age, Some(Duration::from_secs(7200)));
        assert_eq!(config.retention.min_bytes, 4096);
        assert_eq!(
            config.retention.check_interval,
            loglogd::retention::DEFAULT_CHECK_INTERVAL
        );
        let config = config_from(
            parse_args([
                "loglogd",
                "--config",
                path,
                "--retention-max-age",
                "30s",
                "--retention-check-interval",
                "500ms",
            ])
            .unwrap(),
        );
        assert_eq!(config.retention.max_age, Some(Duration::from_secs(30)));
        assert_eq!(config.retention.check_interval, Duration::from_millis(500));
        assert_eq!(config.retention.max_bytes, Some(10 << 30), "from the file");
        // Printed and read back: the same policy.
        let printed = dir.path().join("printed.toml");
        std::fs::write(&printed, printed_config(&config)).unwrap();
        let reread =
            config_from(parse_args(["loglogd", "--config", printed.to_str().unwrap()]).unwrap());
        assert_eq!(reread.retention, config.retention);
        // Off by default; a bad value names its key.
        assert!(!Config::new("x").retention.is_enabled());
        std::fs::write(
            dir.path().join("bad.toml"),
            "[retention]\nmax_age = \"soon\"\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.toml");
        let error = parse_args(["loglogd", "--config", bad.to_str().unwrap()]).unwrap_err();
        assert!(error.contains("retention.max_age"), "{error}");
    }

    #[test]
    fn upload_cache_bounds_come_from_flags_over_the_file_over_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loglogd.toml");
        std::fs::write(
            &path,
            "peers = \"1=127.0.0.1:7101@127.0.0.1:7001\"\n[limits]\nmax_upload_cache_bytes = \"64MiB\"\nmax_upload_cache_entries = 1000\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let cluster = |argv: &[&str]| {
            let mut all = vec!["loglogd", "--config", path];
            all.extend_from_slice(argv);
            config_from(parse_args(all).unwrap()).cluster.unwrap()
        };
        let from_file = cluster(&[]);
        assert_eq!(from_file.upload_cache.max_bytes, 64 << 20);
        assert_eq!(from_file.upload_cache.max_entries, 1000);
        assert_eq!(
            from_file.upload_cache.ttl,
            UploadLimits::default().ttl,
            "unset bounds keep their defaults"
        );
        let flagged = cluster(&[
            "--max-upload-cache-entries",
            "10",
            "--upload-cache-ttl",
            "2s",
        ]);
        assert_eq!(flagged.upload_cache.max_entries, 10, "the flag wins");
        assert_eq!(flagged.upload_cache.max_bytes, 64 << 20);
        assert_eq!(flagged.upload_cache.ttl, Duration::from_secs(2));
        // A single node has no upload cache, and prints none.
        let single = config_from(parse_args(["loglogd"]).unwrap());
        assert!(!printed_config(&single).contains("upload_cache"));
    }

    #[test]
    fn printed_config_reads_back_to_the_same_config() {
        let dir = tempfile::tempdir().unwrap();
        let config = config_from(
            parse_args([
                "loglogd",
                "--id",
                "2",
                "--peers",
                "1=127.0.0.1:7101@127.0.0.1:7001,2=127.0.0.1:7102@127.0.0.1:7002",
                "--peer-listen",
                "127.0.0.1:7102",
                "--metrics-listen",
                "127.0.0.1:9000",
                "--max-read-bytes",
                "1MiB",
                "--max-long-poll-wait",
                "2500ms",
                "--upload-cache-ttl",
                "5s",
            ])
            .unwrap(),
        );
        let text = printed_config(&config);
        assert!(text.contains("[limits]"), "{text}");
        assert!(text.contains("upload_cache_ttl = \"5s\""), "{text}");
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, &text).unwrap();
        let reread =
            config_from(parse_args(["loglogd", "--config", path.to_str().unwrap()]).unwrap());
        let explicit_id = |mut config: Config| {
            // The printed file names the derived cluster id explicitly.
            if let Some(cluster) = config.cluster.as_mut() {
                cluster.cluster_id = Some(cluster.cluster_id());
            }
            config
        };
        assert_eq!(explicit_id(reread), explicit_id(config));
    }

    #[test]
    fn tls_comes_from_flags_over_the_file_and_prints_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loglogd.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"/etc/loglog/node.pem\"\nkey = \"/etc/loglog/node.key\"\nca = \"/etc/loglog/ca.pem\"\nclient_auth = \"require\"\n",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let config = config_from(parse_args(["loglogd", "--config", path]).unwrap());
        let tls = config.tls.clone().expect("the [tls] table turns TLS on");
        assert_eq!(tls.cert, PathBuf::from("/etc/loglog/node.pem"));
        assert_eq!(tls.ca, Some(PathBuf::from("/etc/loglog/ca.pem")));
        assert_eq!(tls.client_auth, ClientAuth::Require);
        assert_eq!(tls.listeners, TlsListeners::Both);
        let flagged = config_from(
            parse_args([
                "loglogd",
                "--config",
                path,
                "--tls-listeners",
                "clients",
                "--tls-cert",
                "/flag.pem",
            ])
            .unwrap(),
        )
        .tls
        .unwrap();
        assert_eq!(flagged.listeners, TlsListeners::Clients);
        assert_eq!(flagged.cert, PathBuf::from("/flag.pem"), "the flag wins");
        assert_eq!(flagged.key, PathBuf::from("/etc/loglog/node.key"));
        // --print-config shows it, and reads back the same.
        let text = printed_config(&config);
        assert!(text.contains("[tls]"), "{text}");
        let printed = dir.path().join("printed.toml");
        std::fs::write(&printed, &text).unwrap();
        let reread =
            config_from(parse_args(["loglogd", "--config", printed.to_str().unwrap()]).unwrap());
        assert_eq!(reread.tls, config.tls);
        // Off by default; half a key pair or settings without one are errors.
        assert_eq!(config_from(parse_args(["loglogd"]).unwrap()).tls, None);
        assert!(parse_args(["loglogd", "--tls-cert", "/c.pem"]).is_err());
        assert!(parse_args(["loglogd", "--tls-ca", "/ca.pem"]).is_err());
        assert!(parse_args(["loglogd", "--tls-listeners", "all"]).is_err());
    }

    #[test]
    fn auth_tokens_are_stored_hashed_and_round_trip_through_print_config() {
        use loglog_proto::auth::{Roles, TokenHash};
        let dir = tempfile::tempdir().unwrap();
        let token = "llt_5e1f0c3a9b7d2e4f6a8c0b1d3e5f7a9c2b4d6e8f0a1c3e5b7d9f1a3c5e7b9d0f";
        let hash = TokenHash::of(token.as_bytes()).to_hex();
        assert_ne!(hash, token, "the stored form is never the token");
        assert!(!hash.contains(&token[4..]));
        let path = dir.path().join("auth.toml");
        std::fs::write(
            &path,
            format!(
                "[[auth.tokens]]\nname = \"ingest\"\nsha256 = \"{hash}\"\nroles = [\"read\", \"append\"]\n\n\
                 [[auth.tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"admin\"]\n",
                TokenHash::of(b"llt_other").to_hex()
            ),
        )
        .unwrap();
        let config =
            config_from(parse_args(["loglogd", "--config", path.to_str().unwrap()]).unwrap());
        config.validate().unwrap();
        let tokens = &config.auth.tokens;
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].roles, Roles::READ.union(Roles::APPEND));
        assert_eq!(tokens[1].roles, Roles::ADMIN);
        assert_eq!(config.auth.find(token.as_bytes()).unwrap().name, "ingest");
        assert!(config.auth.find(b"llt_guess").is_none());
        let text = printed_config(&config);
        assert!(text.contains("[[auth.tokens]]"), "{text}");
        assert!(text.contains(&hash) && !text.contains(token), "{text}");
        let printed = dir.path().join("printed.toml");
        std::fs::write(&printed, &text).unwrap();
        let reread =
            config_from(parse_args(["loglogd", "--config", printed.to_str().unwrap()]).unwrap());
        assert_eq!(reread.auth, config.auth);
        // No token: auth is off and no token table is printed.
        let off = config_from(parse_args(["loglogd"]).unwrap());
        assert!(!off.auth.is_enabled());
        assert!(!printed_config(&off).contains("[auth"));
        // Bad entries are errors that name the file.
        for bad in [
            "[[auth.tokens]]\nname = \"x\"\nsha256 = \"abc\"\nroles = [\"read\"]\n".to_string(),
            format!("[[auth.tokens]]\nname = \"x\"\nsha256 = \"{hash}\"\nroles = [\"write\"]\n"),
            format!("[[auth.tokens]]\nname = \"x\"\nsha256 = \"{hash}\"\nroles = []\n"),
            format!("[[auth.tokens]]\nname = \"x\"\ntoken = \"{token}\"\nroles = [\"read\"]\n"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let error = parse_args(["loglogd", "--config", path.to_str().unwrap()]).unwrap_err();
            assert!(error.contains("auth.toml"), "{error}");
        }
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

/// The `config_file` fuzz target (`fuzz/`) compiles this file as a module
/// and runs the config file path of `main` through this.
#[cfg(fuzzing)]
pub mod fuzzing {
    /// Parses `loglogd --config <path>` as `main` does, validates the
    /// configuration as `Node::start` does, and prints it as
    /// `--print-config` does.
    pub fn load_config_file(path: &std::path::Path) -> Result<String, String> {
        let args = super::parse_args([
            std::ffi::OsStr::new("loglogd"),
            "--config".as_ref(),
            path.as_os_str(),
        ])?;
        let config = super::config_from(args);
        config.validate()?;
        Ok(super::printed_config(&config))
    }
}
