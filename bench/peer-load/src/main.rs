//! `peer-load`: the load generator `bench/peers.sh` runs against etcd and
//! NATS JetStream, shaped like `loglog bench` so the figures compare.
//!
//! K writers, spread over C connections, each send one write and await its
//! acknowledgement (etcd: the put's response, after quorum commit and apply;
//! JetStream: the PubAck, after the stream stored it on a majority) before
//! the next, for a fixed duration. Latencies go into one HDR histogram per
//! writer, merged at the end. The result is one JSON object on stdout with
//! the fields of `loglog bench --json` (`ops` where it says `appends`):
//! `{"system","leader","writers","connections","size","duration_s","ops","ops_per_s",
//! "mb_per_s","latency_us":{"p50","p90","p99","p99.9","max"}}`
//! (MB = 10^6 payload bytes).
//!
//! Writes go to the leader (etcd) or the stream leader's server (NATS), found
//! here, so a follower's forwarding hop is not measured.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;

/// Latencies above this (microseconds) are recorded as this.
const MAX_TRACKED_LATENCY_US: u64 = 60_000_000;

/// How long to wait for a freshly started cluster to elect a leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Pause between readiness probes.
const READY_RETRY: Duration = Duration::from_millis(200);

#[derive(Parser, Debug)]
#[command(about = "Acknowledged-write load on etcd or NATS JetStream (for bench/peers.sh)")]
struct Cli {
    #[command(subcommand)]
    system: System,
}

#[derive(Subcommand, Debug)]
enum System {
    /// Puts to etcd's leader: each writer puts fresh keys `peer-load/W/N`.
    Etcd {
        /// Client URLs of every member, comma separated (http://127.0.0.1:2379,...).
        #[arg(long, value_delimiter = ',', required = true)]
        endpoints: Vec<String>,
        #[command(flatten)]
        load: LoadArgs,
    },
    /// Acked publishes to a JetStream file-storage stream (created if missing).
    Nats {
        /// Server URLs of every cluster member, comma separated (nats://127.0.0.1:4222,...).
        #[arg(long, value_delimiter = ',', required = true)]
        servers: Vec<String>,
        /// Stream replicas (1 or 3).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
        replicas: u8,
        /// Stream name; its subject is `NAME.data`.
        #[arg(long, default_value = "PEERLOAD")]
        stream: String,
        #[command(flatten)]
        load: LoadArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// Concurrent writers, each awaiting its ack before the next write.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    writers: u32,
    /// Payload (value / message) size in bytes.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1024 * 1024))]
    size: u32,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections the writers are spread over (default: min(writers, 4)).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: Option<u32>,
}

/// One writer's tally.
struct WriterResult {
    ops: u64,
    latency_us: Histogram<u64>,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_max(MAX_TRACKED_LATENCY_US, 3)
        .expect("3 significant digits up to 60 s is a valid HDR histogram")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One client thread, like `loglog bench`'s default: the other core is
    // left to the servers under test.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (system, load, leader, (results, elapsed)) = runtime.block_on(async {
        match cli.system {
            System::Etcd { endpoints, load } => {
                let leader = etcd_leader(&endpoints).await?;
                let measured = etcd_load(&leader, &load).await?;
                anyhow::Ok(("etcd", load, leader, measured))
            }
            System::Nats {
                servers,
                replicas,
                stream,
                load,
            } => {
                let leader = nats_stream_leader(&servers, replicas, &stream).await?;
                let measured = nats_load(&leader, &stream, &load).await?;
                anyhow::Ok(("nats", load, leader, measured))
            }
        }
    })?;
    println!("{}", report_json(system, &leader, &load, &results, elapsed));
    Ok(())
}

fn connections(load: &LoadArgs) -> u32 {
    load.connections.unwrap_or(load.writers.min(4))
}

fn report_json(
    system: &str,
    leader: &str,
    load: &LoadArgs,
    results: &[WriterResult],
    elapsed: Duration,
) -> String {
    let mut latency_us = new_histogram();
    let mut ops = 0u64;
    for result in results {
        ops += result.ops;
        latency_us
            .add(&result.latency_us)
            .expect("histograms built by new_histogram have equal bounds");
    }
    let seconds = elapsed.as_secs_f64();
    let ops_per_s = ops as f64 / seconds;
    let mb_per_s = ops_per_s * f64::from(load.size) / 1e6;
    serde_json::json!({
        "system": system,
        "leader": leader,
        "writers": load.writers,
        "connections": connections(load),
        "size": load.size,
        "duration_s": seconds,
        "ops": ops,
        "ops_per_s": ops_per_s,
        "mb_per_s": mb_per_s,
        "latency_us": {
            "p50": latency_us.value_at_quantile(0.50),
            "p90": latency_us.value_at_quantile(0.90),
            "p99": latency_us.value_at_quantile(0.99),
            "p99.9": latency_us.value_at_quantile(0.999),
            "max": latency_us.max(),
        }
    })
    .to_string()
}

/// Runs `writers` copies of `write_once` until the duration is up; each
/// awaits its write before the next. Returns per-writer tallies and the
/// time from start until the last writer stopped.
async fn drive<F, Fut>(
    load: &LoadArgs,
    write_once: F,
) -> anyhow::Result<(Vec<WriterResult>, Duration)>
where
    F: Fn(u32, u64) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let duration = Duration::from_secs_f64(load.duration.max(0.001));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stopper = {
        let stop = stop.clone();
        async move {
            tokio::time::sleep(duration).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    let writers = (0..load.writers).map(|writer| {
        let stop = stop.clone();
        let write_once = &write_once;
        async move {
            let mut result = WriterResult {
                ops: 0,
                latency_us: new_histogram(),
            };
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                write_once(writer, result.ops).await?;
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                result
                    .latency_us
                    .saturating_record(micros.min(MAX_TRACKED_LATENCY_US));
                result.ops += 1;
            }
            anyhow::Ok(result)
        }
    });
    let (_, results) = tokio::join!(stopper, futures::future::try_join_all(writers));
    Ok((results?, started.elapsed()))
}

// ---------------------------------------------------------------- etcd

/// Finds the leader's endpoint: the member whose own id is the leader id
/// its status reports. Retries until a leader is elected.
async fn etcd_leader(endpoints: &[String]) -> anyhow::Result<String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let mut last_error = String::from("no leader elected yet");
        for endpoint in endpoints {
            let probe = async {
                let mut client = etcd_client::Client::connect([endpoint.as_str()], None).await?;
                let status = client.status().await?;
                let member_id = status.header().map(|header| header.member_id());
                anyhow::Ok(status.leader() != 0 && member_id == Some(status.leader()))
            };
            match tokio::time::timeout(Duration::from_secs(2), probe).await {
                Ok(Ok(true)) => return Ok(endpoint.clone()),
                Ok(Ok(false)) => {}
                Ok(Err(error)) => last_error = format!("{endpoint}: {error:#}"),
                Err(_) => last_error = format!("{endpoint}: status timed out"),
            }
        }
        if Instant::now() > deadline {
            bail!("etcd: no leader among {endpoints:?} after {READY_TIMEOUT:?}: {last_error}");
        }
        tokio::time::sleep(READY_RETRY).await;
    }
}

async fn etcd_load(leader: &str, load: &LoadArgs) -> anyhow::Result<(Vec<WriterResult>, Duration)> {
    let mut kv_clients = Vec::new();
    for _ in 0..connections(load) {
        let client = etcd_client::Client::connect([leader], None)
            .await
            .with_context(|| format!("connecting to etcd leader {leader}"))?;
        kv_clients.push(client.kv_client());
    }
    let value = Bytes::from(vec![b'x'; load.size as usize]);
    // One warm-up put per connection, so connection setup is not measured.
    for kv in &mut kv_clients {
        kv.put("peer-load/warmup", value.to_vec(), None).await?;
    }
    drive(load, |writer, seq| {
        let mut kv = kv_clients[writer as usize % kv_clients.len()].clone();
        let value = value.to_vec();
        async move {
            kv.put(format!("peer-load/{writer}/{seq}"), value, None)
                .await
                .context("etcd put")?;
            Ok(())
        }
    })
    .await
}

// ---------------------------------------------------------------- NATS

async fn nats_connect(url: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))
}

/// Creates the stream (retrying while JetStream elects its meta leader) and
/// returns the URL of the server that leads it.
async fn nats_stream_leader(
    servers: &[String],
    replicas: u8,
    stream: &str,
) -> anyhow::Result<String> {
    use async_nats::jetstream::stream::{Config, StorageType};
    let deadline = Instant::now() + READY_TIMEOUT;
    let leader_name = loop {
        let attempt = async {
            let client = nats_connect(&servers[0]).await?;
            let jetstream = async_nats::jetstream::new(client);
            let mut created = jetstream
                .get_or_create_stream(Config {
                    name: stream.to_string(),
                    subjects: vec![format!("{stream}.data")],
                    storage: StorageType::File,
                    num_replicas: usize::from(replicas),
                    ..Default::default()
                })
                .await
                .map_err(|error| anyhow::anyhow!("creating stream {stream}: {error}"))?;
            let info = created
                .info()
                .await
                .map_err(|error| anyhow::anyhow!("stream info: {error}"))?;
            let leader = info
                .cluster
                .as_ref()
                .and_then(|cluster| cluster.leader.clone());
            anyhow::Ok(leader)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(Some(leader))) => break leader,
            Ok(Ok(None)) if replicas == 1 && servers.len() == 1 => {
                return Ok(servers[0].clone());
            }
            result => {
                if Instant::now() > deadline {
                    bail!(
                        "NATS: stream {stream} has no leader after {READY_TIMEOUT:?}: {result:?}"
                    );
                }
            }
        }
        tokio::time::sleep(READY_RETRY).await;
    };
    for url in servers {
        let client = nats_connect(url).await?;
        if client.server_info().server_name == leader_name {
            return Ok(url.clone());
        }
    }
    // A standalone server without `server_name` reports its generated id.
    if servers.len() == 1 {
        return Ok(servers[0].clone());
    }
    bail!("NATS: stream leader {leader_name} is none of {servers:?}")
}

async fn nats_load(
    leader: &str,
    stream: &str,
    load: &LoadArgs,
) -> anyhow::Result<(Vec<WriterResult>, Duration)> {
    let mut contexts = Vec::new();
    for _ in 0..connections(load) {
        contexts.push(async_nats::jetstream::new(nats_connect(leader).await?));
    }
    let subject = format!("{stream}.data");
    let payload = Bytes::from(vec![b'x'; load.size as usize]);
    // One warm-up publish per connection, so connection setup is not measured.
    for jetstream in &contexts {
        jetstream
            .publish(subject.clone(), payload.clone())
            .await
            .map_err(|error| anyhow::anyhow!("publish: {error}"))?
            .await
            .map_err(|error| anyhow::anyhow!("PubAck: {error}"))?;
    }
    drive(load, |writer, _seq| {
        let jetstream = &contexts[writer as usize % contexts.len()];
        let subject = subject.clone();
        let payload = payload.clone();
        async move {
            jetstream
                .publish(subject, payload)
                .await
                .map_err(|error| anyhow::anyhow!("publish: {error}"))?
                .await
                .map_err(|error| anyhow::anyhow!("PubAck: {error}"))?;
            Ok(())
        }
    })
    .await
}
