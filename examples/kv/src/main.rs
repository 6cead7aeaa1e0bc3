//! `loglog-kv`: one instance of the replicated key-value store per
//! `--dir`. Each command opens the instance (restoring its snapshot),
//! does its work against the cluster, and saves its snapshot on the way out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use loglog_kv::Kv;

#[derive(Parser, Debug)]
#[command(
    name = "loglog-kv",
    about = "A replicated key-value store on a LogLog cluster"
)]
struct Cli {
    /// Nodes of the cluster, tried in order.
    #[arg(
        long,
        env = "LOGLOG_CLUSTER",
        value_delimiter = ',',
        default_value = loglog::DEFAULT_CLUSTER
    )]
    cluster: Vec<String>,

    /// This instance's state directory (its snapshot file).
    #[arg(long, default_value = "kv-state")]
    dir: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sets KEY to VALUE.
    Put { key: String, value: String },
    /// Prints KEY's value (exit 1 when absent).
    Get {
        key: String,
        /// Read the local state as it is, without read-index.
        #[arg(long)]
        local: bool,
    },
    /// Deletes KEY; prints `deleted` or `absent`.
    Delete { key: String },
    /// Sets KEY to NEW if its value is EXPECTED; prints `ok` or `failed`.
    Cas {
        key: String,
        /// Expected value; absent when not given.
        #[arg(long)]
        expect: Option<String>,
        /// New value; deletes the key when not given.
        #[arg(long)]
        new: Option<String>,
    },
    /// Prints every pair as KEY=VALUE, sorted, after a linearizable sync,
    /// then `# position=P applied_commands=N`.
    Dump,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", error.to_string().replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let kv = Kv::open(&cli.cluster, &cli.dir, 1000).await?;
    let mut code = ExitCode::SUCCESS;
    match cli.command {
        Command::Put { key, value } => kv.put(key.as_bytes(), value.as_bytes()).await?,
        Command::Get { key, local } => match kv.get(key.as_bytes(), !local).await? {
            Some(value) => println!("{}", String::from_utf8_lossy(&value)),
            None => code = ExitCode::FAILURE,
        },
        Command::Delete { key } => {
            let deleted = kv.delete(key.as_bytes()).await?;
            println!("{}", if deleted { "deleted" } else { "absent" });
        }
        Command::Cas { key, expect, new } => {
            let done = kv
                .compare_and_set(
                    key.as_bytes(),
                    expect.as_deref().map(str::as_bytes),
                    new.as_deref().map(str::as_bytes),
                )
                .await?;
            println!("{}", if done { "ok" } else { "failed" });
        }
        Command::Dump => {
            for (key, value) in kv.dump().await? {
                println!(
                    "{}={}",
                    String::from_utf8_lossy(&key),
                    String::from_utf8_lossy(&value)
                );
            }
            println!(
                "# position={} applied_commands={}",
                kv.position().await,
                kv.applied_commands().await
            );
        }
    }
    kv.save_snapshot().await?;
    Ok(code)
}
