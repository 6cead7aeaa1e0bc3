//! `loglog bench`: committed-append throughput and latency, end-to-end
//! latency through tail readers, and whole-log read throughput.
//!
//! K writers, spread over a few connections, each append one entry and wait
//! for its commit before the next, for a fixed duration. Latencies go into
//! one HDR histogram per writer (no shared lock on the hot path), merged at
//! the end. With `--readers R`, R tail readers (each on its own connection)
//! follow the log; every entry then carries a send stamp (this run's id and
//! the send time) in its first 16 payload bytes, and each reader records
//! the time from send to seen. The report is built as a [`Report`] and then
//! printed as text or JSON (and plotted with `--plot`).
//!
//! `--read-all` reads the whole log from its start offset instead.

use std::hash::{BuildHasher, Hasher};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::Args;
use hdrhistogram::Histogram;

use crate::format::parse_duration;

/// Latencies above this (in microseconds) are recorded as this.
const MAX_TRACKED_LATENCY_US: u64 = 60_000_000;
/// Bytes of the send stamp at the start of each record when readers run:
/// 8 bytes of run id, then 8 bytes of send time (nanoseconds since the
/// run's clock origin), little endian.
pub const STAMP_LEN: usize = 16;
/// Bytes each tail reader asks for per read.
const READER_PAGE_BYTES: u32 = 1024 * 1024;
/// How long a tail reader's read waits at the tail for new commits; it
/// bounds how late a reader notices that the writers are done.
const READER_LONG_POLL: Duration = Duration::from_millis(100);
/// How long the readers may take, once the writers stopped, to reach the
/// last acknowledged entry before the bench gives up on them.
const READER_DRAIN: Duration = Duration::from_secs(10);
/// Bytes asked for per read by `--read-all` (the node's default cap on one
/// answer).
const READ_ALL_PAGE_BYTES: u32 = 4 * 1024 * 1024;
/// Points per decade of the percentile axis in `--plot`.
const PLOT_POINTS_PER_DECADE: u32 = 20;
/// The plot's percentile axis ends at 99.9999% (6 nines) at most.
const PLOT_MAX_NINES: f64 = 6.0;

/// Measure committed appends (K concurrent writers, each waiting for its
/// ack; optional tail readers for end-to-end latency), or with --read-all
/// the speed of reading the whole log.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent writers.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    writers: u32,

    /// Payload size of each entry, in bytes (at most 256 MiB; the node's
    /// own limit, 16 MiB - 1 by default, answers TooLarge above it). With
    /// --readers at least 16 (the send stamp).
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

    /// Tail readers, each on its own connection (reader i starts with the
    /// i-th address of --cluster), following the log from its end: each
    /// measures end-to-end latency, from an append's send to its entry seen
    /// by the reader. Each record's first 16 bytes then carry a send stamp
    /// (the size is unchanged).
    #[arg(long, value_name = "R", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1024))]
    readers: u32,

    /// Write a latency-by-percentile plot (SVG) of the appends and, with
    /// --readers, of end-to-end latency.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,

    /// Read the whole log, from its start offset to its commit offset,
    /// instead of appending; reports MB/s (log bytes, headers included) and
    /// data entries/s.
    #[arg(long, conflicts_with_all = ["writers", "size", "duration", "connections", "batch", "readers", "plot"])]
    read_all: bool,

    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,

    /// Upload mode: each writer's client also uploads every entry to the
    /// other members itself, so the leader replicates entries by digest
    /// (see `loglog append --upload`).
    #[arg(long, conflicts_with = "read_all")]
    upload: bool,
}

/// Latency percentiles as reported: `(name, microseconds)`.
pub type Percentiles = [(&'static str, u64); 5];

/// p50, p90, p99, p99.9 and max of a latency histogram (0s when empty).
pub fn percentiles(histogram: &Histogram<u64>) -> Percentiles {
    let at = |quantile: f64| histogram.value_at_quantile(quantile);
    [
        ("p50", at(0.50)),
        ("p90", at(0.90)),
        ("p99", at(0.99)),
        ("p99.9", at(0.999)),
        ("max", histogram.max()),
    ]
}

/// What one append bench run measured.
struct Report {
    writers: u32,
    connections: u32,
    size: u32,
    /// Records per append (`--batch`), `None` for plain entries.
    batch: Option<u32>,
    elapsed: Duration,
    appends: u64,
    latency_us: Histogram<u64>,
    readers: u32,
    /// Send-to-seen latencies of every stamped entry every reader saw
    /// (`None` without readers).
    end_to_end_us: Option<Histogram<u64>>,
    /// Entries of this run seen, summed over the readers (each reader sees
    /// every append, so `readers * appends` when they all caught up).
    entries_seen: u64,
    /// The longest time in which no writer's append was acknowledged (from
    /// the start to the first ack, between acks, from the last ack to the
    /// end): a leader failover shows here.
    longest_ack_gap: Duration,
    /// Upload mode's counters summed over the clients (`None` without
    /// `--upload`).
    upload: Option<loglog::UploadStats>,
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

    fn text(&self) -> String {
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
            percentiles_text(&self.latency_us)
        );
        // Later lines only with their flags: the first three stay as they were.
        let text = match self.batch {
            Some(batch) => format!(
                "{text}\nbatches of {batch}: {} records, {:.0} records/s",
                self.records(),
                self.records_per_second()
            ),
            None => text,
        };
        let text = match &self.end_to_end_us {
            Some(end_to_end) => format!(
                "{text}\nend-to-end us ({} readers, {} entries seen): {}",
                self.readers,
                self.entries_seen,
                percentiles_text(end_to_end)
            ),
            None => text,
        };
        match &self.upload {
            Some(upload) => format!(
                "{text}\nupload: {} sent, {} skipped, {} refused",
                upload.sent, upload.skipped, upload.refused
            ),
            None => text,
        }
    }

    fn json(&self) -> String {
        let end_to_end = self
            .end_to_end_us
            .as_ref()
            .map_or_else(|| "null".to_string(), percentiles_json);
        format!(
            r#"{{"workload":"append","writers":{},"connections":{},"size":{},"duration_s":{:.3},"appends":{},"appends_per_s":{:.1},"mb_per_s":{:.3},"latency_us":{},"batch":{},"records":{},"records_per_s":{:.1},"readers":{},"end_to_end_us":{},"entries_seen":{},"longest_ack_gap_us":{},"upload":{}}}"#,
            self.writers,
            self.connections,
            self.size,
            self.elapsed.as_secs_f64(),
            self.appends,
            self.appends_per_second(),
            self.megabytes_per_second(),
            percentiles_json(&self.latency_us),
            self.batch.unwrap_or(1),
            self.records(),
            self.records_per_second(),
            self.readers,
            end_to_end,
            self.entries_seen,
            self.longest_ack_gap.as_micros(),
            self.upload.map_or_else(
                || "null".to_string(),
                |upload| format!(
                    r#"{{"sent":{},"skipped":{},"refused":{}}}"#,
                    upload.sent, upload.skipped, upload.refused
                )
            )
        )
    }
}

fn percentiles_text(histogram: &Histogram<u64>) -> String {
    percentiles(histogram)
        .iter()
        .map(|(name, value)| format!("{name} {value}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn percentiles_json(histogram: &Histogram<u64>) -> String {
    let fields: Vec<String> = percentiles(histogram)
        .iter()
        .map(|(name, value)| format!(r#""{name}":{value}"#))
        .collect();
    format!("{{{}}}", fields.join(","))
}

/// What `--read-all` measured.
struct ReadAllReport {
    start_offset: u64,
    end_offset: u64,
    /// Log bytes read: entry headers and payloads, entries of every kind.
    bytes: u64,
    /// Data entries read.
    entries: u64,
    elapsed: Duration,
}

impl ReadAllReport {
    fn seconds(&self) -> f64 {
        // A read of an empty log may take no measurable time.
        self.elapsed.as_secs_f64().max(1e-9)
    }

    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds() / 1e6
    }

    fn entries_per_second(&self) -> f64 {
        self.entries as f64 / self.seconds()
    }

    fn text(&self) -> String {
        format!(
            "read-all: offsets {} to {}, {} bytes, {} entries, {:.3} s\n\
             {:.1} MB/s, {:.0} entries/s",
            self.start_offset,
            self.end_offset,
            self.bytes,
            self.entries,
            self.elapsed.as_secs_f64(),
            self.megabytes_per_second(),
            self.entries_per_second()
        )
    }

    fn json(&self) -> String {
        format!(
            r#"{{"workload":"read_all","start_offset":{},"end_offset":{},"bytes":{},"entries":{},"duration_s":{:.3},"mb_per_s":{:.1},"entries_per_s":{:.1}}}"#,
            self.start_offset,
            self.end_offset,
            self.bytes,
            self.entries,
            self.elapsed.as_secs_f64(),
            self.megabytes_per_second(),
            self.entries_per_second()
        )
    }
}

/// The send stamp written into each record when readers run, and read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    /// Random per run: entries of other runs (or other writers) are ignored.
    run_id: u64,
    /// Nanoseconds since the run's clock origin.
    sent_ns: u64,
}

impl Stamp {
    fn write(self, into: &mut [u8]) {
        into[..8].copy_from_slice(&self.run_id.to_le_bytes());
        into[8..STAMP_LEN].copy_from_slice(&self.sent_ns.to_le_bytes());
    }

    fn read(from: &[u8]) -> Option<Stamp> {
        let run_id = u64::from_le_bytes(from.get(..8)?.try_into().ok()?);
        let sent_ns = u64::from_le_bytes(from.get(8..STAMP_LEN)?.try_into().ok()?);
        Some(Stamp { run_id, sent_ns })
    }
}

/// A random run id (std's per-process random hash keys).
fn random_run_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos()),
    );
    hasher.finish()
}

/// The longest interval without an acknowledged append, kept with two
/// atomics per ack (no lock on the writers' path).
#[derive(Default)]
struct AckGaps {
    /// Nanoseconds since the start of the latest ack so far.
    last_ns: AtomicU64,
    longest_ns: AtomicU64,
}

impl AckGaps {
    fn acked(&self, at_ns: u64) {
        let previous = self.last_ns.fetch_max(at_ns, Ordering::Relaxed);
        self.longest_ns
            .fetch_max(at_ns.saturating_sub(previous), Ordering::Relaxed);
    }
}

fn nanos_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn record_latency(histogram: &mut Histogram<u64>, micros: u64) {
    histogram.saturating_record(micros.clamp(1, MAX_TRACKED_LATENCY_US));
}

pub async fn run(cluster: &[String], args: BenchArgs) -> anyhow::Result<()> {
    if args.read_all {
        let report = read_all(cluster).await?;
        println!(
            "{}",
            if args.json {
                report.json()
            } else {
                report.text()
            }
        );
        return Ok(());
    }
    if args.readers > 0 && (args.size as usize) < STAMP_LEN {
        anyhow::bail!(
            "--readers needs --size of at least {STAMP_LEN} bytes: each record carries a \
             {STAMP_LEN}-byte send stamp (run id and send time), got --size {}",
            args.size
        );
    }
    let connections = args.connections.unwrap_or(args.writers.min(4));
    let mut clients = Vec::with_capacity(connections as usize);
    for _ in 0..connections {
        let client = crate::connect(cluster).await?;
        if args.upload {
            client.enable_upload(crate::append::upload_config()).await?;
        }
        clients.push(client);
    }
    let record = vec![b'x'; args.size as usize];
    let (payload, stamp_at) = match args.batch {
        None => (Bytes::from(record), 0),
        Some(batch) => {
            let mut builder = loglog::BatchBuilder::with_capacity(
                (args.size as usize + loglog::batch::SUB_ENTRY_PREFIX_LEN) * batch as usize,
            );
            for _ in 0..batch {
                builder.push(&record)?;
            }
            // The stamp goes into the first record, after the batch header
            // and the record's length prefix.
            (
                builder.finish(),
                loglog::batch::BATCH_HEADER_LEN + loglog::batch::SUB_ENTRY_PREFIX_LEN,
            )
        }
    };
    let stamping = args.readers > 0;
    let run_id = random_run_id();
    let clock = Instant::now();
    let appends_done = Arc::new(AtomicU64::new(0));
    let ack_gaps = Arc::new(AckGaps::default());
    let entries_seen = Arc::new(AtomicU64::new(0));
    // End of the last acknowledged entry, and once the writers are done the
    // offset the readers must reach (u64::MAX while writers run).
    let acked_end = Arc::new(AtomicU64::new(0));
    let readers_target = Arc::new(AtomicU64::new(u64::MAX));
    let stop = Arc::new(AtomicBool::new(false));

    let mut readers = Vec::with_capacity(args.readers as usize);
    for reader in 0..args.readers as usize {
        // Reader i tries the i-th address first, so readers spread over
        // the nodes of a cluster.
        let mut addresses = cluster.to_vec();
        addresses.rotate_left(reader % cluster.len());
        let client = crate::connect(&addresses).await?;
        let from = client.end_offset().await?;
        readers.push(tokio::spawn(tail_reader(
            client,
            from,
            run_id,
            clock,
            stamp_at,
            Arc::clone(&readers_target),
            Arc::clone(&entries_seen),
        )));
    }

    let started = Instant::now();
    let deadline = started + args.duration;
    let mut writers = Vec::with_capacity(args.writers as usize);
    for writer in 0..args.writers {
        let client = clients[writer as usize % clients.len()].clone();
        let template = payload.clone();
        let appends_done = Arc::clone(&appends_done);
        let ack_gaps = Arc::clone(&ack_gaps);
        let acked_end = Arc::clone(&acked_end);
        let stop = Arc::clone(&stop);
        writers.push(tokio::spawn(async move {
            let mut latency_us = new_histogram();
            let entry_len = (loglog_proto::entry::ENTRY_HEADER_LEN + template.len()) as u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let sent = Instant::now();
                let payload = if stamping {
                    let mut stamped = BytesMut::from(&template[..]);
                    let sent_ns =
                        u64::try_from(sent.duration_since(clock).as_nanos()).unwrap_or(u64::MAX);
                    Stamp { run_id, sent_ns }.write(&mut stamped[stamp_at..]);
                    stamped.freeze()
                } else {
                    template.clone()
                };
                let offset = match client.append(payload).await {
                    Ok(offset) => offset,
                    Err(error) => {
                        // Stop the others too: the figures would be meaningless.
                        stop.store(true, Ordering::Relaxed);
                        return Err(error);
                    }
                };
                let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                record_latency(&mut latency_us, micros);
                ack_gaps.acked(nanos_since(started));
                acked_end.fetch_max(offset + entry_len, Ordering::Relaxed);
                appends_done.fetch_add(1, Ordering::Relaxed);
            }
            Ok(latency_us)
        }));
    }

    let progress = std::io::stderr().is_terminal().then(|| {
        tokio::spawn(report_progress(
            Arc::clone(&appends_done),
            Arc::clone(&entries_seen),
            args.readers,
            started,
            deadline,
        ))
    });
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
    ack_gaps.acked(nanos_since(started));
    // The readers stop once they have seen the last acknowledged entry.
    readers_target.store(acked_end.load(Ordering::Relaxed), Ordering::Relaxed);
    let mut end_to_end_us = stamping.then(new_histogram);
    for reader in readers {
        match reader.await? {
            Ok(histogram) => {
                if let Some(end_to_end_us) = end_to_end_us.as_mut() {
                    end_to_end_us.add(&histogram).map_err(|error| {
                        anyhow::anyhow!("cannot merge latency histograms: {error}")
                    })?;
                }
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    if let Some(progress) = progress {
        progress.abort();
        // Clear the progress line.
        eprint!("\r\x1b[2K");
    }
    if let Some(error) = first_error {
        anyhow::bail!("the bench failed: {error}");
    }
    let report = Report {
        writers: args.writers,
        connections,
        size: args.size,
        batch: args.batch,
        elapsed,
        appends: appends_done.load(Ordering::Relaxed),
        latency_us,
        readers: args.readers,
        end_to_end_us,
        entries_seen: entries_seen.load(Ordering::Relaxed),
        longest_ack_gap: Duration::from_nanos(ack_gaps.longest_ns.load(Ordering::Relaxed)),
        upload: args.upload.then(|| {
            let mut total = loglog::UploadStats::default();
            for stats in clients.iter().filter_map(loglog::Client::upload_stats) {
                total.sent += stats.sent;
                total.skipped += stats.skipped;
                total.refused += stats.refused;
            }
            total
        }),
    };
    let expected = report.appends * u64::from(report.readers);
    if report.entries_seen < expected {
        eprintln!(
            "warning: the readers saw {} of {expected} entries within {} s of the writers' end",
            report.entries_seen,
            READER_DRAIN.as_secs()
        );
    }
    if let Some(path) = &args.plot {
        write_plot(path, &report)?;
    }
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

/// Follows the log from `from`, recording send-to-seen latency of every
/// entry stamped by this run, until it reaches `target` (set when the
/// writers are done) or [`READER_DRAIN`] after that.
async fn tail_reader(
    client: loglog::Client,
    from: u64,
    run_id: u64,
    clock: Instant,
    stamp_at: usize,
    target: Arc<AtomicU64>,
    entries_seen: Arc<AtomicU64>,
) -> Result<Histogram<u64>, loglog::Error> {
    let mut latency_us = new_histogram();
    let mut offset = from;
    let mut drain_deadline = None;
    loop {
        let page = client
            .read(offset, READER_PAGE_BYTES, READER_LONG_POLL)
            .await?;
        let seen_ns = nanos_since(clock);
        let mut seen = 0;
        for entry in page.entries() {
            let Some(stamp) = entry.payload.get(stamp_at..).and_then(Stamp::read) else {
                continue;
            };
            if stamp.run_id != run_id {
                continue;
            }
            record_latency(
                &mut latency_us,
                seen_ns.saturating_sub(stamp.sent_ns) / 1000,
            );
            seen += 1;
        }
        entries_seen.fetch_add(seen, Ordering::Relaxed);
        offset = page.next_offset();
        let target = target.load(Ordering::Relaxed);
        if target != u64::MAX {
            if offset >= target {
                return Ok(latency_us);
            }
            let deadline = *drain_deadline.get_or_insert_with(|| Instant::now() + READER_DRAIN);
            if Instant::now() > deadline {
                return Ok(latency_us);
            }
        }
    }
}

/// Reads the log from its start offset to the commit offset found first.
async fn read_all(cluster: &[String]) -> anyhow::Result<ReadAllReport> {
    let client = crate::connect(cluster).await?;
    let status = client.status().await?;
    let (start_offset, end_offset) = (status.start_offset, status.commit_offset);
    let started = Instant::now();
    let mut offset = start_offset;
    let mut bytes = 0u64;
    let mut entries = 0u64;
    while offset < end_offset {
        let page = client
            .read(offset, READ_ALL_PAGE_BYTES, Duration::ZERO)
            .await?;
        if page.is_empty() {
            // The node answered from a shorter committed prefix than its
            // status showed: a different node after a reconnect.
            anyhow::bail!(
                "the node at {} answered no entry at offset {offset}, below the commit offset {end_offset} it reported",
                client.current_address().unwrap_or_default()
            );
        }
        bytes += page.raw().len() as u64;
        entries += page.entries().count() as u64;
        offset = page.next_offset();
    }
    Ok(ReadAllReport {
        start_offset,
        end_offset,
        bytes,
        entries,
        elapsed: started.elapsed(),
    })
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_LATENCY_US, 3)
        .expect("1..60 s at 3 significant digits is a valid histogram range")
}

/// Overwrites one progress line on stderr (a terminal) once a second
/// until the deadline.
async fn report_progress(
    appends_done: Arc<AtomicU64>,
    entries_seen: Arc<AtomicU64>,
    readers: u32,
    started: Instant,
    deadline: Instant,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut previous = 0;
    loop {
        ticker.tick().await;
        if Instant::now() > deadline {
            return;
        }
        let done = appends_done.load(Ordering::Relaxed);
        let mut line = format!(
            "[{:>4.0} s] {:>9} appends/s, {} total",
            started.elapsed().as_secs_f64(),
            done - previous,
            done
        );
        if readers > 0 {
            line.push_str(&format!(
                ", {} seen by {readers} readers",
                entries_seen.load(Ordering::Relaxed)
            ));
        }
        previous = done;
        eprint!("\r\x1b[2K{line}");
    }
}

/// Points of a latency-by-percentile curve: `x` is the number of nines,
/// `-log10(1 - q)` (0 for p0, 1 for p90, 2 for p99, ...), `y` the latency
/// in milliseconds at quantile `q`. The curve stops where the histogram
/// runs out of samples (at `log10(count)` nines, at most
/// [`PLOT_MAX_NINES`]) and ends with the maximum.
pub fn percentile_curve(histogram: &Histogram<u64>, points_per_decade: u32) -> Vec<(f64, f64)> {
    let count = histogram.len();
    if count == 0 {
        return Vec::new();
    }
    let last_nines = (count as f64).log10().min(PLOT_MAX_NINES);
    let steps = (last_nines * f64::from(points_per_decade)).floor() as u32;
    let mut points: Vec<(f64, f64)> = (0..=steps)
        .map(|step| {
            let nines = f64::from(step) / f64::from(points_per_decade);
            let quantile = 1.0 - 10f64.powf(-nines);
            (nines, histogram.value_at_quantile(quantile) as f64 / 1000.0)
        })
        .collect();
    points.push((
        last_nines.max(points[points.len() - 1].0),
        histogram.max() as f64 / 1000.0,
    ));
    points
}

/// The label of `nines` on the percentile axis: 0 is "0%", 1 "90%", 2
/// "99%", 3 "99.9%".
pub fn percentile_label(nines: f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let decimals = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.decimals$}%")
}

fn write_plot(path: &Path, report: &Report) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let plot_error = |error: &dyn std::fmt::Display| {
        anyhow::anyhow!("cannot write the plot {}: {error}", path.display())
    };
    let mut curves = vec![(
        "append (send to commit ack)",
        percentile_curve(&report.latency_us, PLOT_POINTS_PER_DECADE),
        BLUE,
    )];
    if let Some(end_to_end) = &report.end_to_end_us {
        curves.push((
            "end to end (send to seen by a tail reader)",
            percentile_curve(end_to_end, PLOT_POINTS_PER_DECADE),
            RED,
        ));
    }
    let all_points = curves.iter().flat_map(|(_, points, _)| points.iter());
    let x_end = all_points
        .clone()
        .map(|(x, _)| *x)
        .fold(1.0, f64::max)
        .ceil();
    let y_low = all_points
        .clone()
        .map(|(_, y)| *y)
        .fold(f64::MAX, f64::min)
        .min(1.0)
        * 0.8;
    let y_high = all_points.map(|(_, y)| *y).fold(0.001, f64::max) * 1.25;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let title = format!(
        "loglog bench: {} writers, {} B, {:.0} appends/s{}",
        report.writers,
        report.size,
        report.appends_per_second(),
        if report.readers > 0 {
            format!(", {} readers", report.readers)
        } else {
            String::new()
        }
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        // Room for the last percentile label, centred on the right edge.
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_end, (y_low.max(0.0005)..y_high).log_scale())
        .map_err(|e| plot_error(&e))?;
    chart
        .configure_mesh()
        .x_labels(x_end as usize + 1)
        .x_label_formatter(&|nines| percentile_label(*nines))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(|e| plot_error(&e))?;
    for (label, points, color) in curves {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| plot_error(&e))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(&e))?;
    root.present().map_err(|e| plot_error(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram_of(values: impl IntoIterator<Item = u64>) -> Histogram<u64> {
        let mut histogram = new_histogram();
        for value in values {
            record_latency(&mut histogram, value);
        }
        histogram
    }

    /// HDR histograms at 3 significant digits: within 0.1%.
    fn close(actual: u64, expected: u64) -> bool {
        actual.abs_diff(expected) as f64 <= expected as f64 * 0.001 + 1.0
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let histogram = histogram_of(1..=100_000);
        let got = percentiles(&histogram);
        let names: Vec<&str> = got.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["p50", "p90", "p99", "p99.9", "max"]);
        for ((_, actual), expected) in got.iter().zip([50_000, 90_000, 99_000, 99_900, 100_000]) {
            assert!(close(*actual, expected), "{got:?}");
        }
    }

    #[test]
    fn percentiles_see_the_tail() {
        // 999 fast appends and one slow one: p99.9 and max catch it, p99 not.
        let histogram = histogram_of((0..999).map(|_| 200).chain([50_000]));
        let got = percentiles(&histogram);
        assert!(close(got[0].1, 200) && close(got[2].1, 200), "{got:?}");
        assert!(
            close(got[3].1, 200),
            "p99.9 of 1000 values is the 999th: {got:?}"
        );
        assert_eq!(got[4].1, histogram.max());
        assert!(close(got[4].1, 50_000), "{got:?}");
        // Out of range values are clamped, not lost.
        let clamped = histogram_of([0, u64::MAX]);
        assert_eq!(clamped.len(), 2);
        assert_eq!(
            percentiles(&new_histogram()),
            [("p50", 0), ("p90", 0), ("p99", 0), ("p99.9", 0), ("max", 0)]
        );
    }

    #[test]
    fn percentile_curve_is_monotonic_and_ends_at_the_max() {
        let histogram = histogram_of((1..=10_000).map(|v| v * 3));
        let curve = percentile_curve(&histogram, 10);
        assert_eq!(curve[0].0, 0.0);
        // 10,000 samples: 4 nines at most.
        assert!((curve.last().unwrap().0 - 4.0).abs() < 1e-9, "{curve:?}");
        assert_eq!(curve.last().unwrap().1, histogram.max() as f64 / 1000.0);
        for pair in curve.windows(2) {
            assert!(pair[0].0 <= pair[1].0 && pair[0].1 <= pair[1].1, "{pair:?}");
        }
        // The point at 2 nines is p99.
        let p99 = curve
            .iter()
            .find(|(x, _)| (*x - 2.0).abs() < 1e-9)
            .unwrap()
            .1;
        assert!(close((p99 * 1000.0) as u64, 29_700), "{p99}");
        assert!(percentile_curve(&new_histogram(), 10).is_empty());
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }

    #[test]
    fn stamps_round_trip() {
        let stamp = Stamp {
            run_id: 0x0102_0304_0506_0708,
            sent_ns: 987_654_321,
        };
        let mut record = vec![b'x'; 20];
        stamp.write(&mut record);
        assert_eq!(Stamp::read(&record), Some(stamp));
        assert_eq!(&record[STAMP_LEN..], b"xxxx");
        assert_eq!(Stamp::read(&record[..15]), None);
    }

    fn report(readers: u32, batch: Option<u32>) -> Report {
        Report {
            writers: 64,
            connections: 4,
            size: 128,
            batch,
            elapsed: Duration::from_secs(2),
            appends: 1000,
            latency_us: histogram_of(1..=1000),
            readers,
            end_to_end_us: (readers > 0).then(|| histogram_of(500..=1500)),
            entries_seen: 1000 * u64::from(readers),
            longest_ack_gap: Duration::from_millis(420),
            upload: None,
        }
    }

    /// Keys of a JSON object in the order they appear in the text.
    fn keys_in_order(json: &str) -> Vec<String> {
        let value: serde_json::Value = serde_json::from_str(json).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<(usize, String)> = object
            .keys()
            .map(|key| (json.find(&format!("\"{key}\":")).unwrap(), key.clone()))
            .collect();
        keys.sort();
        keys.into_iter().map(|(_, key)| key).collect()
    }

    #[test]
    fn json_keeps_the_existing_fields_in_order_and_adds_readers_at_the_end() {
        let without = report(0, None).json();
        assert_eq!(
            keys_in_order(&without),
            [
                "workload",
                "writers",
                "connections",
                "size",
                "duration_s",
                "appends",
                "appends_per_s",
                "mb_per_s",
                "latency_us",
                "batch",
                "records",
                "records_per_s",
                "readers",
                "end_to_end_us",
                "entries_seen",
                "longest_ack_gap_us",
                "upload"
            ]
        );
        let value: serde_json::Value = serde_json::from_str(&without).unwrap();
        assert_eq!(value["workload"], "append");
        assert_eq!(value["appends_per_s"], 500.0);
        assert_eq!(value["mb_per_s"], 0.064);
        assert_eq!(value["batch"], 1);
        assert_eq!(value["readers"], 0);
        assert!(value["end_to_end_us"].is_null());
        assert_eq!(value["longest_ack_gap_us"], 420_000);
        let latency: Vec<&String> = value["latency_us"].as_object().unwrap().keys().collect();
        assert_eq!(latency.len(), 5);
        assert_eq!(value["latency_us"]["max"], 1000);

        let with = report(2, Some(10)).json();
        let value: serde_json::Value = serde_json::from_str(&with).unwrap();
        assert_eq!(value["readers"], 2);
        assert_eq!(value["entries_seen"], 2000);
        assert_eq!(value["records"], 10_000);
        assert_eq!(value["end_to_end_us"]["max"], 1500);
        for name in ["p50", "p90", "p99", "p99.9", "max"] {
            assert!(value["end_to_end_us"][name].is_u64(), "{with}");
        }
    }

    #[test]
    fn text_gains_a_line_per_option() {
        assert_eq!(report(0, None).text().lines().count(), 3);
        let text = report(2, Some(10)).text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        assert!(lines[3].starts_with("batches of 10: "), "{text}");
        assert!(
            lines[4].starts_with("end-to-end us (2 readers, 2000 entries seen): p50 "),
            "{text}"
        );
    }

    #[test]
    fn read_all_report_shape() {
        let report = ReadAllReport {
            start_offset: 0,
            end_offset: 2_000_000,
            bytes: 2_000_000,
            entries: 10_000,
            elapsed: Duration::from_millis(500),
        };
        let value: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(value["workload"], "read_all");
        assert_eq!(value["mb_per_s"], 4.0);
        assert_eq!(value["entries_per_s"], 20_000.0);
        assert_eq!(
            keys_in_order(&report.json()),
            [
                "workload",
                "start_offset",
                "end_offset",
                "bytes",
                "entries",
                "duration_s",
                "mb_per_s",
                "entries_per_s"
            ]
        );
        assert_eq!(report.text().lines().count(), 2);
    }
}
