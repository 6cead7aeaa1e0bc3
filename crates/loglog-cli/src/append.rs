//! `loglog append`: appends entries and prints their offsets, in order.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, Read, Write};

use bytes::Bytes;
use clap::Args;
use loglog::{Client, PendingAppend};
use tokio::sync::mpsc;

/// Appends sent ahead of the oldest unanswered one. Appends are pipelined
/// for speed but their offsets are printed in input order. All that a
/// client may keep unfinished: a larger window would wait for itself.
const APPEND_WINDOW: usize = loglog::MAX_SEQUENCE_SPAN as usize;
/// Lines read from stdin ahead of the appends.
const STDIN_QUEUE: usize = 1024;

/// Append entries; print the offset of each committed entry, one per line, in order.
///
/// Each DATA argument is one entry. With no argument, stdin is read: all of
/// it is one entry, or with --lines each line is one (without its newline).
#[derive(Args, Debug)]
pub struct AppendArgs {
    /// Entries to append (bytes as given).
    #[arg(value_name = "DATA", value_parser = clap::value_parser!(OsString))]
    data: Vec<OsString>,

    /// Read stdin as one entry per line.
    #[arg(long)]
    lines: bool,

    /// Upload mode: also send every entry to the other members directly,
    /// so the leader replicates it as header and digest only (its network
    /// carries the entry once instead of once per follower). Uploads are
    /// never waited for; a member that misses one gets the leader's bytes.
    #[arg(long)]
    upload: bool,
}

/// Upload settings of `--upload`: every entry, whatever its size.
pub fn upload_config() -> loglog::UploadConfig {
    loglog::UploadConfig {
        min_payload: 0,
        ..loglog::UploadConfig::default()
    }
}

pub async fn run(cluster: &[String], args: AppendArgs) -> anyhow::Result<()> {
    if args.lines && !args.data.is_empty() {
        anyhow::bail!("--lines reads stdin: give either DATA arguments or --lines, not both");
    }
    let client = crate::connect(cluster).await?;
    if args.upload {
        client.enable_upload(upload_config()).await?;
    }
    let mut appender = OrderedAppender::new(client);
    if !args.data.is_empty() {
        for data in args.data {
            appender.push(Bytes::from(os_bytes(data))).await?;
        }
    } else if args.lines {
        let mut lines = stdin_lines();
        while let Some(line) = lines.recv().await {
            appender.push(Bytes::from(line?)).await?;
        }
    } else {
        let mut all = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut all)
            .map_err(|error| anyhow::anyhow!("cannot read stdin: {error}"))?;
        appender.push(Bytes::from(all)).await?;
    }
    appender.finish().await
}

/// Pipelines appends on one connection and prints offsets in input order.
struct OrderedAppender {
    client: Client,
    in_flight: VecDeque<PendingAppend>,
    stdout: std::io::Stdout,
}

impl OrderedAppender {
    fn new(client: Client) -> OrderedAppender {
        OrderedAppender {
            client,
            in_flight: VecDeque::with_capacity(APPEND_WINDOW),
            stdout: std::io::stdout(),
        }
    }

    async fn push(&mut self, payload: Bytes) -> anyhow::Result<()> {
        if self.in_flight.len() >= APPEND_WINDOW {
            self.print_oldest().await?;
        }
        let pending = self.client.submit_append(payload, false).await?;
        self.in_flight.push_back(pending);
        Ok(())
    }

    async fn print_oldest(&mut self) -> anyhow::Result<()> {
        let pending = self
            .in_flight
            .pop_front()
            .expect("callers check that an append is in flight");
        let offset = pending.wait().await?;
        // Flushed at once: whoever reads our output learns of each commit.
        let mut stdout = self.stdout.lock();
        writeln!(stdout, "{offset}")?;
        stdout.flush()?;
        Ok(())
    }

    async fn finish(mut self) -> anyhow::Result<()> {
        while !self.in_flight.is_empty() {
            self.print_oldest().await?;
        }
        Ok(())
    }
}

#[cfg(unix)]
fn os_bytes(text: OsString) -> Vec<u8> {
    use std::os::unix::ffi::OsStringExt;
    text.into_vec()
}

#[cfg(not(unix))]
fn os_bytes(text: OsString) -> Vec<u8> {
    text.to_string_lossy().into_owned().into_bytes()
}

/// Reads stdin line by line on a blocking thread; each line comes without
/// its trailing `\n`. The queue is bounded: reading waits for the appends.
fn stdin_lines() -> mpsc::Receiver<anyhow::Result<Vec<u8>>> {
    let (lines, received) = mpsc::channel(STDIN_QUEUE);
    tokio::task::spawn_blocking(move || {
        let mut stdin = std::io::stdin().lock();
        loop {
            let mut line = Vec::new();
            match stdin.read_until(b'\n', &mut line) {
                Ok(0) => return,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    if lines.blocking_send(Ok(line)).is_err() {
                        return;
                    }
                }
                Err(error) => {
                    let _ = lines.blocking_send(Err(anyhow::anyhow!("cannot read stdin: {error}")));
                    return;
                }
            }
        }
    });
    received
}
