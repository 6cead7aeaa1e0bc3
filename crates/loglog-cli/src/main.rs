//! `loglog`: the LogLog command line.
//!
//! Flags and output formats are public contracts (scripts parse them):
//! change them only deliberately, in the docs and here together.
//!
//! Every command exits 0 on success; on failure it prints one line
//! `error: ...` on stderr and exits 1 (2 for usage errors, from clap).

mod admin;
mod append;
mod bench;
mod dev_cluster;
mod format;
mod read;
mod status;
mod tls;
mod token;

use std::process::ExitCode;
use std::sync::OnceLock;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "loglog",
    version,
    about = "LogLog command line: append, read, tail, status, bench, dev-cluster, admin"
)]
struct Cli {
    /// Nodes of the cluster, tried in order.
    #[arg(
        long,
        global = true,
        env = "LOGLOG_CLUSTER",
        value_name = "HOST:PORT[,HOST:PORT...]",
        value_delimiter = ',',
        default_value = loglog::DEFAULT_CLUSTER
    )]
    cluster: Vec<String>,

    #[command(flatten)]
    tls: tls::TlsArgs,
    /// Token for nodes with authentication on (`loglog token new` makes
    /// one); sent on every connection. Without it such nodes answer every
    /// request `unauthorized`.
    #[arg(
        long,
        global = true,
        env = "LOGLOG_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    token: Option<loglog::AuthToken>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Append(append::AppendArgs),
    Read(read::ReadArgs),
    Tail(read::TailArgs),
    Status(status::StatusArgs),
    Bench(bench::BenchArgs),
    DevCluster(dev_cluster::DevClusterArgs),
    Admin(admin::AdminArgs),
    Token(token::TokenArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match &cli.command {
        Command::Bench(args) if args.threads > 1 => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(args.threads))
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => return fail(&anyhow::anyhow!("cannot start the async runtime: {error}")),
    };
    let cluster: Vec<String> = cli
        .cluster
        .iter()
        .map(|addr| addr.trim().to_string())
        .filter(|addr| !addr.is_empty())
        .collect();
    if cluster.is_empty() {
        return fail(&anyhow::anyhow!("--cluster names no address"));
    }
    if let Err(error) = cli.tls.install() {
        return fail(&error);
    }
    if let Some(token) = cli.token.clone() {
        TOKEN.get_or_init(|| token);
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Append(args) => append::run(&cluster, args).await,
            Command::Read(args) => read::run(&cluster, args).await,
            Command::Tail(args) => read::run_tail(&cluster, args).await,
            Command::Status(args) => status::run(&cluster, args).await,
            Command::Bench(args) => bench::run(&cluster, args).await,
            Command::DevCluster(args) => dev_cluster::run(args).await,
            Command::Admin(args) => admin::run(&cluster, args).await,
            Command::Token(args) => token::run(args),
        }
    });
    // A thread blocked on stdin must not keep the process alive.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    // Our errors carry their causes in their own message: print the
    // outermost only, on one line.
    let message = error.to_string().replace('\n', " ");
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

/// A reader that closed our stdout (`loglog read ... | head`) is not an error.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
}

/// The global `--token` (or `LOGLOG_TOKEN`), set once in `main`.
static TOKEN: OnceLock<loglog::AuthToken> = OnceLock::new();

/// The client configuration of every command that talks to a node: the
/// defaults, with the global options (`--token`, the TLS options) applied.
fn client_config() -> loglog::ClientConfig {
    loglog::ClientConfig {
        token: TOKEN.get().cloned(),
        tls: tls::client_tls(),
        ..loglog::ClientConfig::default()
    }
}

/// Connects with the client configuration of the global options.
async fn connect<A: AsRef<str>>(cluster: &[A]) -> anyhow::Result<loglog::Client> {
    Ok(loglog::Client::connect_with(cluster, client_config()).await?)
}
