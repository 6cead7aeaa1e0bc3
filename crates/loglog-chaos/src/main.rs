//! `loglog-chaos`: randomized fault-injection runs against real `loglogd`
//! clusters in network namespaces. Prints one summary line and exits
//! non-zero on any violation, naming the folder of each failing run.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use loglog_chaos::{netns, run_once, Fault, RunConfig, Summary};

#[derive(Parser, Debug)]
#[command(about = "Fault injection on real loglogd clusters (needs root, ip, iptables)")]
struct Args {
    /// Number of runs.
    #[arg(long, default_value_t = 1)]
    runs: u64,
    /// Length of each run's fault schedule, e.g. 60s, 2m, 30m.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    nodes: u8,
    /// Seed of the first run (run i uses seed + i); default: from the clock.
    #[arg(long)]
    seed: Option<u64>,
    /// The loglogd binary (default: next to this binary).
    #[arg(long)]
    loglogd: Option<PathBuf>,
    /// An extra argument for every loglogd (repeatable), e.g.
    /// `--loglogd-arg=--fsync --loglogd-arg=never`.
    #[arg(long = "loglogd-arg", allow_hyphen_values = true)]
    loglogd_args: Vec<String>,
    /// The kinds of fault to inject, comma-separated: isolate, split,
    /// one-way, loss, kill, stop, tail-cut, bandwidth, power-cut,
    /// kill-restart, delay, duplicate; or all.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Where run folders are made (failing ones are kept).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
    /// Self-check: after each run's workload, cut the tail segment of EVERY
    /// node (unsafe on purpose). The runs must then FAIL with lost appends.
    #[arg(long)]
    self_check_lose_every_tail: bool,
    /// Keep every run's folder (history, faults, node logs), not only
    /// failing ones.
    #[arg(long)]
    keep: bool,
    /// Upload mode: appenders upload every entry to the other members, the
    /// leader replicates by digest (falls back to raw bytes on any miss).
    #[arg(long)]
    upload: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number * 60,
        "h" => number * 3600,
        "ms" => return Ok(Duration::from_millis(number)),
        _ => return Err(format!("bad duration unit in {text:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs(seconds))
}

fn main() {
    let args = Args::parse();
    if args.nodes != 3 && args.nodes != 5 {
        eprintln!("loglog-chaos: --nodes must be 3 or 5");
        std::process::exit(2);
    }
    if let Err(reason) = netns::capability() {
        eprintln!("loglog-chaos: cannot run: {reason}");
        std::process::exit(2);
    }
    // Drop guards do not run when the process is killed by a signal: on
    // SIGINT or SIGTERM, remove this run's namespaces and nodes, then exit.
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("loglog-chaos: interrupted; removing this run's namespaces and nodes");
            netns::clean_own();
            std::process::exit(130);
        });
    });
    let loglogd = args.loglogd.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("loglogd")))
            .unwrap_or_else(|| PathBuf::from("loglogd"))
    });
    if !loglogd.exists() {
        eprintln!(
            "loglog-chaos: no loglogd binary at {} (build it, or pass --loglogd)",
            loglogd.display()
        );
        std::process::exit(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1)
    });
    let faults = match Fault::parse_list(&args.faults) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!("loglog-chaos: --faults: {error}");
            std::process::exit(2);
        }
    };
    let mut total = Summary::default();
    let mut kept = Vec::new();
    for run in 0..args.runs {
        let config = RunConfig {
            run,
            seed: seed.wrapping_add(run),
            nodes: usize::from(args.nodes),
            duration: args.duration,
            loglogd: loglogd.clone(),
            loglogd_args: args.loglogd_args.clone(),
            faults: faults.clone(),
            work_dir: args.work_dir.clone(),
            lose_every_tail: args.self_check_lose_every_tail,
            keep: args.keep,
            upload: args.upload,
        };
        match run_once(&config) {
            Ok(report) => {
                eprintln!(
                    "run {run} seed {}: {}{}",
                    config.seed,
                    report.summary.line(),
                    match &report.kept {
                        Some(folder) if report.summary.violations() > 0 => {
                            format!(" FAILED, kept {}", folder.display())
                        }
                        Some(folder) => format!(" kept {}", folder.display()),
                        None => String::new(),
                    }
                );
                eprintln!("  {}", report.details);
                for problem in report.problems.iter().take(10) {
                    eprintln!("  {problem}");
                }
                if let (Some(folder), true) = (report.kept, report.summary.violations() > 0) {
                    kept.push(folder);
                }
                total.add(&report.summary);
            }
            Err(error) => {
                eprintln!("run {run} seed {}: harness error: {error:#}", config.seed);
                total.add(&Summary {
                    runs: 1,
                    other_failures: 1,
                    ..Summary::default()
                });
            }
        }
    }
    println!("{}", total.line());
    for folder in &kept {
        eprintln!("failing run kept in {}", folder.display());
    }
    if total.violations() > 0 {
        std::process::exit(1);
    }
}
