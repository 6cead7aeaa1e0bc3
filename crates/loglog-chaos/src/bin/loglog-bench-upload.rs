//! `loglog-bench-upload`: client-side upload through bandwidth-limited
//! links. Builds a 3-node cluster in network namespaces, limits each node's
//! link (both directions, tc tbf), runs `loglog bench` without and with
//! `--upload`, and prints, per run, the throughput and the leader's peer
//! bytes sent per appended payload byte. Needs root, ip and tc.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use loglog_chaos::bench_upload::{bench_upload, sibling_binary, BenchUploadConfig};
use loglog_chaos::netns;

#[derive(Parser, Debug)]
#[command(about = "Measure client-side upload through bandwidth-limited links (needs root)")]
struct Args {
    /// Each node's link rate in Mbit/s, both directions; 0: no limit.
    #[arg(long, default_value_t = 100)]
    link_mbit: u32,
    /// Entry payload size in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    size: u32,
    /// Concurrent writers of `loglog bench`.
    #[arg(long, default_value_t = 16)]
    writers: u32,
    /// Seconds per bench run.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// The loglogd binary (default: next to this binary).
    #[arg(long)]
    loglogd: Option<PathBuf>,
    /// The loglog CLI binary (default: next to this binary).
    #[arg(long)]
    loglog: Option<PathBuf>,
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    work_dir: PathBuf,
}

fn main() {
    let args = Args::parse();
    if let Err(reason) = netns::capability() {
        eprintln!("loglog-bench-upload: cannot run: {reason}");
        std::process::exit(2);
    }
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("loglog-bench-upload"));
    let config = BenchUploadConfig {
        loglogd: args
            .loglogd
            .unwrap_or_else(|| sibling_binary(&exe, "loglogd")),
        loglog: args
            .loglog
            .unwrap_or_else(|| sibling_binary(&exe, "loglog")),
        link_kbit: (args.link_mbit > 0).then_some(args.link_mbit * 1000),
        entry_size: args.size,
        writers: args.writers,
        duration: Duration::from_secs(args.seconds),
        work_dir: args.work_dir,
    };
    for binary in [&config.loglogd, &config.loglog] {
        if !binary.exists() {
            eprintln!(
                "loglog-bench-upload: no binary at {} (build it, or pass its path)",
                binary.display()
            );
            std::process::exit(2);
        }
    }
    match bench_upload(&config) {
        Ok(runs) => {
            let limit = config.link_kbit.map_or_else(
                || "no limit".to_string(),
                |k| format!("{} Mbit/s", k / 1000),
            );
            println!(
                "3 nodes, links {limit} each way, {} B entries, {} writers, {} s per run",
                config.entry_size,
                config.writers,
                config.duration.as_secs()
            );
            for run in &runs {
                println!(
                    "upload={:<5} appends={} MB/s={:.2} p50_us={} leader_peer_bytes_per_payload_byte={:.4} uploads_skipped={}",
                    run.upload,
                    run.appends,
                    run.mb_per_s,
                    run.p50_us,
                    run.leader_bytes_per_payload_byte(),
                    run.uploads_skipped
                );
            }
            if let [without, with] = &runs[..] {
                println!(
                    "throughput with upload / without: {:.2}x",
                    with.mb_per_s / without.mb_per_s.max(f64::MIN_POSITIVE)
                );
            }
        }
        Err(error) => {
            eprintln!("loglog-bench-upload: {error:#}");
            std::process::exit(1);
        }
    }
}
