//! `loglog bench`: committed-append throughput and latency.
//!
//! K writers, spread over a few connections, each append one entry and wait
//! for its commit before the next, for a fixed duration. Latencies go into
//! one HDR histogram per writer (no shared lock on the hot path), merged at
//! the end. The report is built as a [`Report`] and then printed as text or
//! JSON, so later workloads (readers, mixed) can add fields in one place.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;

use crate::format::parse_duration;

/// Latencies above this (in microseconds) are recorded as this.
const MAX_TRACKED_LATENCY_US: u64 = 60_000_000;

/// Measure committed appends: K concurrent writers, each waiting for its ack.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    writers: u32,

    /// Payload size of each entry, in bytes (at most 256 MiB; the node's
    /// own limit, 16 MiB - 1 by default, answers TooLarge above it).
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=256 * 1024 * 1024))]
    size: u32,

    /// How long to run (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,

    /// Connections the writers are spread over (default: min(writers, 4)).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    connections: Option<u32>,

    /// Client runtime threads. One thread drives 64 writers at well over
    /// 100,000 appends/s and leaves the other cores to the node.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,

    /// Append batches of N records each (docs/FORMAT.md, section 4): every
    /// append is one entry holding N sub-entries of --size bytes, so one
    /// commit carries N records. Without it, each record is its own entry.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    batch: Option<u32>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// What one bench run measured.
struct Report {
    writers: u32,
    connections: u32,
    size: u32,
    /// Records per append (`--batch`), `None` for plain entries.
    batch: Option<u32>,
    elapsed: Duration,
    appends: u64,
    latency_us: Histogram<u64>,
}

impl Report {
    fn appends_per_second(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }

    fn records(&self) -> u64 {
        self.appends * u64::from(self.batch.unwrap_or(1))
    }

    fn records_per_second(&self) -> f64 {
        self.records() as f64 / self.elapsed.as_secs_f64()
    }

    /// Record payload megabytes (10^6 bytes) per second (batch framing
    /// not counted).
    fn megabytes_per_second(&self) -> f64 {
        self.records_per_second() * f64::from(self.size) / 1e6
    }

    fn percentiles(&self) -> [(&'static str, u64); 5] {
        let at = |quantile: f64| self.latency_us.value_at_quantile(quantile);
        [
            ("p50", at(0.50)),
            ("p90", at(0.90)),
            ("p99", at(0.99)),
            ("p99.9", at(0.999)),
            ("max", self.latency_us.max()),
        ]
    }

    fn text(&self) -> String {
        let latencies: Vec<String> = self
            .percentiles()
            .iter()
            .map(|(name, value)| format!("{name} {value}"))
            .collect();
        let text = format!(
            "append: {} writers on {} connections, {} B entries, {:.1} s\n\
             {} appends, {:.0} appends/s, {:.2} MB/s\n\
             latency us: {}",
            self.writers,
            self.connections,
            self.size,
            self.elapsed.as_secs_f64(),
            self.appends,
            self.appends_per_second(),
            self.megabytes_per_second(),
            latencies.join(", ")
        );
        match self.batch {
            // A fourth line only with --batch: the three lines stay as they were.
            Some(batch) => format!(
                "{text}\nbatches of {batch}: {} records, {:.0} records/s",
                self.records(),
                self.records_per_second()
            ),
            None => text,
        }
    }

    fn json(&self) -> String {
        let latencies: Vec<String> = self
            .percentiles()
            .iter()
            .map(|(name, value)| format!(r#""{name}":{value}"#))
            .collect();
        format!(
            r#"{{"workload":"append","writers":{},"connections":{},"size":{},"duration_s":{:.3},"appends":{},"appends_per_s":{:.1},"mb_per_s":{:.3},"latency_us":{{{}}},"batch":{},"records":{},"records_per_s":{:.1}}}"#,
            self.writers,
            self.connections,
            self.size,
            self.elapsed.as_secs_f64(),
            self.appends,
            self.appends_per_second(),
            self.megabytes_per_second(),
            latencies.join(","),
            self.batch.unwrap_or(1),
            self.records(),
            self.records_per_second()
        )
    }
}

pub async fn run(cluster: &[String], args: BenchArgs) -> anyhow::Result<()> {
    let connections = args.connections.unwrap_or(args.writers.min(4));
    let mut clients = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        clients.push(crate::connect(cluster).await?);
    }
    let record = vec![b'x'; args.size as usize];
    let payload = match args.batch {
        None => Bytes::from(record),
        Some(batch) => {
            let mut builder = loglog::BatchBuilder::with_capacity(
                (args.size as usize + loglog::batch::SUB_ENTRY_PREFIX_LEN) * batch as usize,
            );
            for _ in 0..batch {
                builder.push(&record)?;
            }
            builder.finish()
        }
    };
    let appends_done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + args.duration;

    let mut writers = Vec::with_capacity(args.writers as usize);
    for writer in 0..args.writers {
        let client = clients[writer as usize % clients.len()].clone();
        let payload = payload.clone();
        let appends_done = Arc::clone(&appends_done);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut latency_us = new_histogram();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                let result = client.append(payload.clone()).await;
                if let Err(error) = result {
                    // Stop the others too: the figures would be meaningless.
                    stop.store(true, Ordering::Relaxed);
                    return Err(error);
                }
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                latency_us.saturating_record(micros.clamp(1, MAX_TRACKED_LATENCY_US));
                appends_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(latency_us)
        }));
    }

    let progress = tokio::spawn(report_progress(
        Arc::clone(&appends_done),
        started,
        deadline,
    ));
    let mut latency_us = new_histogram();
    let mut first_error = None;
    for writer in writers {
        match writer.await? {
            Ok(histogram) => latency_us
                .add(&histogram)
                .map_err(|error| anyhow::anyhow!("cannot merge latency histograms: {error}"))?,
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    let elapsed = started.elapsed();
    progress.abort();
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    if let Some(error) = first_error {
        anyhow::bail!("append failed during the bench: {error}");
    }
    let report = Report {
        writers: args.writers,
        connections,
        size: args.size,
        batch: args.batch,
        elapsed,
        appends: appends_done.load(Ordering::Relaxed),
        latency_us,
    };
    println!(
        "{}",
        if args.json {
            report.json()
        } else {
            report.text()
        }
    );
    Ok(())
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, 3)
        .expect("1..60 s at 3 significant digits is a valid histogram range")
}

/// Prints the throughput of each past second on stderr until the deadline.
async fn report_progress(appends_done: Arc<AtomicU64>, started: Instant, deadline: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut previous = 0;
    loop {
        ticker.tick().await;
        if Instant::now() > deadline {
            return;
        }
        let done = appends_done.load(Ordering::Relaxed);
        let line = format!(
            "[{:>4.0} s] {:>9} appends/s, {} total",
            started.elapsed().as_secs_f64(),
            done - previous,
            done
        );
        previous = done;
        if terminal {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
