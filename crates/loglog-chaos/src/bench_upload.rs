//! Client-side upload measured through real links: a 3-node cluster in
//! network namespaces ([`crate::netns`]), each node's link limited to the
//! same rate in both directions (tc tbf), and `loglog bench` run from the
//! root namespace twice, without and with `--upload`. Reports each run's
//! throughput and the leader's peer bytes sent per appended payload byte
//! (from cluster status). Without upload the leader's link carries every
//! payload once in and twice out, so it is the bottleneck; with upload it
//! carries each payload once in and headers out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::cluster::{self, Cluster};
use crate::netns::Network;
use crate::relay::Relays;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchUploadConfig {
    pub loglogd: PathBuf,
    /// The `loglog` CLI binary (runs the bench).
    pub loglog: PathBuf,
    /// Each node's link rate, both directions; `None`: no limit.
    pub link_kbit: Option<u32>,
    pub entry_size: u32,
    pub writers: u32,
    pub duration: Duration,
    /// Where the nodes' data and logs go (removed after).
    pub work_dir: PathBuf,
}

/// One bench run, without or with upload.
#[derive(Clone, Debug)]
pub struct BenchUploadRun {
    pub upload: bool,
    pub appends: u64,
    pub mb_per_s: f64,
    pub p50_us: u64,
    pub leader_peer_bytes: u64,
    pub payload_bytes: u64,
    /// Uploads the clients skipped (a member's bound reached, or
    /// unreachable); 0 without upload.
    pub uploads_skipped: u64,
}

impl BenchUploadRun {
    /// The leader's peer bytes sent per appended payload byte.
    pub fn leader_bytes_per_payload_byte(&self) -> f64 {
        self.leader_peer_bytes as f64 / self.payload_bytes.max(1) as f64
    }
}

/// Builds the namespaces and the cluster, runs the bench without and with
/// upload, and tears everything down.
pub fn bench_upload(config: &BenchUploadConfig) -> Result<Vec<BenchUploadRun>> {
    let folder = config
        .work_dir
        .join(format!("loglog-bench-upload-{}", std::process::id()));
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    std::fs::create_dir_all(&folder)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let nodes = 3;
    let network = Network::create(nodes)?;
    let relays = Relays::start(
        &(0..nodes)
            .map(|index| {
                (
                    network.node_namespace(index).to_string(),
                    network.node_ip(index),
                )
            })
            .collect::<Vec<_>>(),
        cluster::PEER_PORT,
        1,
    )?;
    let mut cluster = Cluster::new(&network, &config.loglogd, &[], &folder);
    let outcome = (|| -> Result<Vec<BenchUploadRun>> {
        for index in 0..nodes {
            cluster.start(index)?;
        }
        let addrs = cluster.client_addrs();
        runtime.block_on(crate::wait_for_leader(&addrs, Duration::from_secs(20)))?;
        if let Some(kbit) = config.link_kbit {
            for index in 0..nodes {
                network.limit_link(index, kbit)?;
            }
        }
        let mut runs = Vec::new();
        for upload in [false, true] {
            runs.push(run_bench(config, &runtime, &addrs, upload)?);
        }
        Ok(runs)
    })();
    drop(cluster);
    drop(relays);
    drop(network);
    if outcome.is_ok() {
        std::fs::remove_dir_all(&folder)?;
    } else {
        eprintln!("kept {}", folder.display());
    }
    outcome
}

fn run_bench(
    config: &BenchUploadConfig,
    runtime: &tokio::runtime::Runtime,
    addrs: &[String],
    upload: bool,
) -> Result<BenchUploadRun> {
    let leader_before = runtime
        .block_on(crate::find_leader(addrs))
        .context("no leader before the bench")?;
    let sent_before = runtime.block_on(peer_bytes_sent(&addrs[leader_before]))?;
    let cluster_flag = addrs.join(",");
    let mut command = Command::new(&config.loglog);
    command
        .args(["--cluster", &cluster_flag, "bench", "--json"])
        .args(["--size", &config.entry_size.to_string()])
        .args(["--writers", &config.writers.to_string()])
        .args(["--duration", &format!("{}ms", config.duration.as_millis())]);
    if upload {
        command.arg("--upload");
    }
    let output = command.output().context("cannot run loglog bench")?;
    if !output.status.success() {
        bail!(
            "loglog bench failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let leader_after = runtime
        .block_on(crate::find_leader(addrs))
        .context("no leader after the bench")?;
    if leader_after != leader_before {
        bail!("the leader changed during the bench: the peer bytes would not add up");
    }
    let sent_after = runtime.block_on(peer_bytes_sent(&addrs[leader_after]))?;
    let json = String::from_utf8_lossy(&output.stdout);
    let appends = json_number(&json, "appends").context("bench JSON without appends")? as u64;
    Ok(BenchUploadRun {
        upload,
        appends,
        mb_per_s: json_number(&json, "mb_per_s").context("bench JSON without mb_per_s")?,
        p50_us: json_number(&json, "p50").unwrap_or(0.0) as u64,
        leader_peer_bytes: sent_after - sent_before,
        payload_bytes: appends * u64::from(config.entry_size),
        uploads_skipped: json_number(&json, "skipped").unwrap_or(0.0) as u64,
    })
}

async fn peer_bytes_sent(addr: &str) -> Result<u64> {
    let client = loglog::Client::connect(&[addr]).await?;
    Ok(client.cluster_status().await?.peer_bytes_sent)
}

/// The number after `"key":` in a flat JSON text (the bench's own output).
fn json_number(json: &str, key: &str) -> Option<f64> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &json[at..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The `loglog` binary next to `exe` (the same target directory).
pub fn sibling_binary(exe: &Path, name: &str) -> PathBuf {
    exe.parent()
        .map(|dir| dir.join(name))
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    #[test]
    fn numbers_are_read_from_the_bench_json() {
        let json =
            r#"{"workload":"append","appends":1234,"mb_per_s":56.5,"latency_us":{"p50":700}}"#;
        assert_eq!(super::json_number(json, "appends"), Some(1234.0));
        assert_eq!(super::json_number(json, "mb_per_s"), Some(56.5));
        assert_eq!(super::json_number(json, "p50"), Some(700.0));
        assert_eq!(super::json_number(json, "readers"), None);
    }
}
