//! `loglog-sim`: runs seeds of the deterministic cluster simulation.
//!
//! ```text
//! cargo run --release -p loglog-sim -- --seeds N [--start S] [--nodes 3|5] [--upload] [--trace]
//! ```
//!
//! Prints one summary line, `seeds=N ok=N violations=0 appends=A faults=F
//! sim_seconds=T`, where `violations` counts the seeds that broke something.
//! For each such seed it first prints what broke and the command that
//! replays it; the exit status is then non-zero. Seeds run on every core;
//! each seed's run is a pure function of the seed (and `--nodes`).

use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use loglog_sim::sim::{self, SimOptions, SimReport, TraceMode};

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of LogLog clusters")]
struct Args {
    /// Number of seeds to run.
    #[arg(long)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Founding voters; when absent each seed picks 3 or 5.
    #[arg(long, value_parser = parse_nodes)]
    nodes: Option<usize>,
    /// Print every seed's event trace (and its hash).
    #[arg(long)]
    trace: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Demonstration of a wrong driver rule: answer "failed" to appends
    /// waiting above a truncation (the checker catches it).
    #[arg(long)]
    truncate_fails_appends: bool,
    /// Client-side upload: clients upload every append to the other nodes
    /// (some uploads lost, late, corrupt, evicted or expired) and leaders
    /// send uploaded entries by digest.
    #[arg(long)]
    upload: bool,
    /// Switch on one of the core's deliberately wrong behaviours:
    /// commit-old-term, forget-vote, ack-before-fsync.
    #[cfg(feature = "bug-injection")]
    #[arg(long)]
    bug: Option<String>,
}

fn parse_nodes(text: &str) -> Result<usize, String> {
    match text {
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err("--nodes must be 3 or 5".to_string()),
    }
}

/// Runs one seed, turning a panic in the core (an assertion of its
/// invariants) into a violation of that seed.
fn run_seed(args: &Args, seed: u64) -> SimReport {
    let (nodes, trace) = (args.nodes, args.trace);
    let mut options = SimOptions::new(seed);
    options.truncate_fails_appends = args.truncate_fails_appends;
    options.upload = args.upload;
    #[cfg(feature = "bug-injection")]
    if let Some(bug) = &args.bug {
        options.bugs = loglog_sim::sim::bugs_named(bug).expect("a known bug name");
    }
    options.nodes = nodes;
    options.trace = if trace {
        TraceMode::Full
    } else {
        TraceMode::Off
    };
    match panic::catch_unwind(AssertUnwindSafe(|| sim::run(&options))) {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            SimReport {
                seed,
                nodes: sim::founding_voters(&options),
                violations: vec![format!("panic: {message}")],
                ..SimReport::default()
            }
        }
    }
}

/// The command that replays one seed of this run, with its trace.
fn replay_command(args: &Args, report: &SimReport) -> String {
    let mut flags = String::new();
    #[cfg(feature = "bug-injection")]
    let features = match &args.bug {
        Some(bug) => {
            flags.push_str(&format!(" --bug {bug}"));
            " --features bug-injection"
        }
        None => "",
    };
    #[cfg(not(feature = "bug-injection"))]
    let features = "";
    if args.upload {
        flags.push_str(" --upload");
    }
    if args.truncate_fails_appends {
        flags.push_str(" --truncate-fails-appends");
    }
    format!(
        "cargo run --release -p loglog-sim{features} -- --seeds 1 --start {} --nodes {}{flags} --trace",
        report.seed, report.nodes
    )
}

fn main() -> ExitCode {
    let args = Args::parse();
    #[cfg(feature = "bug-injection")]
    if let Some(bug) = &args.bug {
        if loglog_sim::sim::bugs_named(bug).is_none() {
            eprintln!("unknown --bug {bug}: use commit-old-term, forget-vote or ack-before-fsync");
            return ExitCode::from(2);
        }
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let began = Instant::now();
    let next = AtomicU64::new(0);
    let reports: Mutex<Vec<Option<SimReport>>> =
        Mutex::new((0..args.seeds).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= args.seeds {
                    break;
                }
                let report = run_seed(&args, args.start + index);
                reports
                    .lock()
                    .expect("no worker panics while holding the lock")[index as usize] =
                    Some(report);
            });
        }
    });
    let elapsed = began.elapsed();
    let reports: Vec<SimReport> = reports
        .into_inner()
        .expect("workers are done")
        .into_iter()
        .map(|report| report.expect("every seed ran"))
        .collect();

    let (mut ok, mut broken, mut appends, mut faults, mut sim_nanos) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut upload = loglog_sim::upload::UploadStats::default();
    for report in &reports {
        if args.trace {
            print!("{}", report.trace);
            println!("seed {} trace hash {:016x}", report.seed, report.trace_hash);
        }
        appends += report.appends_acknowledged;
        faults += report.faults;
        upload.by_digest += report.upload.by_digest;
        upload.rebuilt += report.upload.rebuilt;
        upload.missed += report.upload.missed;
        upload.mismatched += report.upload.mismatched;
        upload.resent += report.upload.resent;
        sim_nanos += report.sim_nanos;
        if report.violations.is_empty() {
            ok += 1;
        } else {
            broken += 1;
            println!("seed {} ({} voters) broke:", report.seed, report.nodes);
            for violation in &report.violations {
                println!("  {violation}");
            }
            println!("  replay: {}", replay_command(&args, report));
        }
    }
    println!(
        "seeds={} ok={ok} violations={broken} appends={appends} faults={faults} sim_seconds={}",
        args.seeds,
        sim_nanos / 1_000_000_000
    );
    if args.upload {
        println!(
            "upload: by_digest={} rebuilt={} missed={} mismatched={} resent={}",
            upload.by_digest, upload.rebuilt, upload.missed, upload.mismatched, upload.resent
        );
    }
    let seconds = elapsed.as_secs_f64();
    let stalled: Vec<u64> = reports
        .iter()
        .filter(|report| report.amnesia_stall)
        .map(|report| report.seed)
        .collect();
    let stalls = format!("{}{:?}", stalled.len(), &stalled[..stalled.len().min(5)]);
    let slowest = reports
        .iter()
        .filter_map(|r| r.recovery_nanos.map(|nanos| (nanos, r.seed)))
        .max()
        .map_or(0, |(_, seed)| seed);
    let mut recoveries: Vec<u64> = reports.iter().filter_map(|r| r.recovery_nanos).collect();
    recoveries.sort_unstable();
    let millis = |at: f64| {
        recoveries
            .get(((recoveries.len() as f64 - 1.0) * at) as usize)
            .map_or(0, |nanos| nanos / 1_000_000)
    };
    eprintln!(
        "elapsed={seconds:.1}s threads={threads} seeds_per_minute={:.0} amnesia_stalls={stalls} \
         heal_to_ack_ms_p50={} p99={} max={} (seed {slowest})",
        args.seeds as f64 * 60.0 / seconds.max(1e-9),
        millis(0.5),
        millis(0.99),
        millis(1.0)
    );
    let sum = |field: fn(&SimReport) -> u64| reports.iter().map(field).sum::<u64>();
    let reseeded = reports.iter().filter(|report| report.resets > 0).count();
    eprintln!(
        "trims_applied={} log_resets={} (in {reseeded} seeds) reads_trimmed={} \
         removals_noticed={}",
        sum(|report| report.trims),
        sum(|report| report.resets),
        sum(|report| report.reads_trimmed),
        sum(|report| report.removals_noticed)
    );
    if broken == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
