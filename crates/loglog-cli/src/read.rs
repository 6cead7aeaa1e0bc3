//! `loglog read`: prints entries of the log.

use std::io::Write;
use std::time::Duration;

use base64::Engine;
use clap::{Args, ValueEnum};
use loglog::{Entry, ReadPage};

use crate::format::hex;

/// Bytes asked for by each read.
const PAGE_BYTES: u32 = 1024 * 1024;
/// How long each read waits at the tail with --follow.
const LONG_POLL: Duration = Duration::from_secs(10);

/// Read entries from an offset.
///
/// Without --follow, reads up to the node's commit offset as of the first
/// answer (or --to) and exits; with --follow, waits for new entries forever
/// (or until --to). Non-data entries (leader no-ops, configurations) are
/// skipped, except by --format raw.
#[derive(Args, Debug)]
pub struct ReadArgs {
    /// Where to start: an offset (an entry boundary, e.g. one that `loglog
    /// append` printed, or 0); `end` (the commit offset: only new entries);
    /// or `end-N`, the last N data entries (found by scanning the log from
    /// its start offset: the log has no index).
    #[arg(long, value_name = "OFFSET|end|end-N", value_parser = parse_from, required_unless_present = "last", conflicts_with = "last")]
    from: Option<StartAt>,

    /// Start at the last N data entries; the same as --from end-N.
    #[arg(long, value_name = "N")]
    last: Option<u64>,

    /// Stop before the first entry at or past this offset.
    #[arg(long, value_name = "OFFSET")]
    to: Option<u64>,

    /// Keep waiting for new entries (long-poll) instead of exiting at the end.
    #[arg(long)]
    follow: bool,

    /// Ask the leader, which confirms with a quorum first (read-index): the
    /// output includes every append acknowledged before the command
    /// started. A plain read may be answered by a follower whose committed
    /// prefix lags a little.
    #[arg(long)]
    linearizable: bool,

    #[command(flatten)]
    output: OutputArgs,
}

/// `loglog tail`: follow the log from its end, like `tail -f`.
///
/// Prints the last N data entries (default none), then every new entry as it
/// is committed, until interrupted.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Print the last N data entries first (found by scanning the log from
    /// its start offset: the log has no index).
    #[arg(long, short = 'n', value_name = "N", default_value_t = 0)]
    last: u64,

    #[command(flatten)]
    output: OutputArgs,
}

/// How entries are printed; shared by `read` and `tail`.
#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,

    /// Treat every data entry as a batch (docs/FORMAT.md, section 4) and
    /// print one record per sub-entry; with --format json each object gains
    /// "index", the sub-entry's index in its batch. A data entry that is not
    /// a well-formed batch is an error. Not with --format raw.
    #[arg(long)]
    batches: bool,
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Offset(u64),
    /// The last N data entries before the commit offset (0: the commit offset).
    LastEntries(u64),
}

fn parse_from(text: &str) -> Result<StartAt, String> {
    let text = text.trim();
    if text == "end" {
        return Ok(StartAt::LastEntries(0));
    }
    if let Some(count) = text.strip_prefix("end-") {
        return count
            .parse()
            .map(StartAt::LastEntries)
            .map_err(|_| format!("{text:?}: expected end-N with N a number of entries"));
    }
    text.parse()
        .map(StartAt::Offset)
        .map_err(|_| format!("{text:?}: expected an offset, end, or end-N"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Each payload's bytes as they are, followed by a newline.
    Text,
    /// One line per entry: the payload in lowercase hex.
    Hex,
    /// One line per entry: {"offset":N,"term":T,"len":L,"data_b64":"..."}
    /// (standard base64, padded).
    Json,
    /// The log's bytes exactly as stored, entry headers included (every
    /// kind, no-ops too): a dense run of entries, 16-byte header then
    /// payload each (docs/FORMAT.md), starting at --from; parse it again
    /// with loglog_proto::entry::EntryIter.
    Raw,
}

pub async fn run(cluster: &[String], args: ReadArgs) -> anyhow::Result<()> {
    let from = match (args.from, args.last) {
        (Some(from), _) => from,
        (None, Some(last)) => StartAt::LastEntries(last),
        (None, None) => anyhow::bail!("give --from or --last"),
    };
    read_and_print(
        cluster,
        from,
        args.to,
        args.follow,
        args.linearizable,
        args.output,
    )
    .await
}

pub async fn run_tail(cluster: &[String], args: TailArgs) -> anyhow::Result<()> {
    read_and_print(
        cluster,
        StartAt::LastEntries(args.last),
        None,
        true,
        false,
        args.output,
    )
    .await
}

async fn read_and_print(
    cluster: &[String],
    from: StartAt,
    to: Option<u64>,
    follow: bool,
    linearizable: bool,
    output: OutputArgs,
) -> anyhow::Result<()> {
    if output.batches && output.format == Format::Raw {
        anyhow::bail!("--batches expands entries: not with --format raw");
    }
    let client = crate::connect(cluster).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let to = to.unwrap_or(u64::MAX);
    let mut offset = match from {
        StartAt::Offset(offset) => offset,
        StartAt::LastEntries(count) => start_of_last_entries(&client, count).await?,
    };
    // Without --follow: where to stop, fixed by the first answer so a busy
    // log cannot keep the command running.
    let mut stop_at: Option<u64> = None;
    while offset < to {
        if stop_at.is_some_and(|stop| offset >= stop) {
            break;
        }
        let wait = if follow { LONG_POLL } else { Duration::ZERO };
        // Every page, not just the first: after a leader change the client
        // may be moved to a follower that has not caught up yet.
        let page = if linearizable {
            client.read_linearizable(offset, PAGE_BYTES, wait).await?
        } else {
            client.read(offset, PAGE_BYTES, wait).await?
        };
        if !follow && stop_at.is_none() {
            stop_at = Some(page.commit_offset());
        }
        write_page(&mut out, &page, to, output)?;
        if follow || page.is_empty() {
            // Whoever follows the log sees each page as it comes.
            out.flush()?;
        }
        if page.is_empty() && !follow {
            break;
        }
        offset = page.next_offset();
    }
    out.flush()?;
    Ok(())
}

/// Offset of the `count`-th data entry before the commit offset (the
/// commit offset itself for 0, the log's start when it holds fewer). The
/// log has no index: this reads it from its start offset, keeping the
/// offsets of the last `count` data entries (a bounded ring).
async fn start_of_last_entries(client: &loglog::Client, count: u64) -> anyhow::Result<u64> {
    let status = client.status().await?;
    let end = status.commit_offset;
    if count == 0 {
        return Ok(end);
    }
    let ring_len = usize::try_from(count).unwrap_or(usize::MAX).min(1 << 24);
    if u64::try_from(ring_len).unwrap_or(u64::MAX) < count {
        anyhow::bail!("--last {count}: at most {} entries", 1u64 << 24);
    }
    let mut last = std::collections::VecDeque::with_capacity(ring_len.min(4096));
    let mut offset = status.start_offset;
    while offset < end {
        let page = client.read(offset, PAGE_BYTES, Duration::ZERO).await?;
        if page.is_empty() {
            break;
        }
        for entry in page.entries().take_while(|entry| entry.offset < end) {
            if last.len() == ring_len {
                last.pop_front();
            }
            last.push_back(entry.offset);
        }
        offset = page.next_offset();
    }
    Ok(last.front().copied().unwrap_or(offset.min(end)))
}

/// Writes the page's entries that start before `to`.
fn write_page(
    out: &mut impl Write,
    page: &ReadPage,
    to: u64,
    output: OutputArgs,
) -> anyhow::Result<()> {
    if output.format == Format::Raw {
        // Whole entries only: cut at the end of the last entry before `to`.
        let end = page
            .all_entries()
            .take_while(|entry| entry.offset < to)
            .last()
            .map_or(page.offset(), |entry| entry.next_offset());
        let len = (end - page.offset()) as usize;
        return Ok(out.write_all(&page.raw()[..len])?);
    }
    for entry in page.entries().take_while(|entry| entry.offset < to) {
        if output.batches {
            let sub_entries = loglog::batch::sub_entries(&entry).map_err(|error| {
                anyhow::anyhow!("entry at offset {} is not a batch: {error}", entry.offset)
            })?;
            for sub_entry in sub_entries {
                write_record(
                    out,
                    &entry,
                    Some(sub_entry.index),
                    &sub_entry.payload,
                    output.format,
                )?;
            }
        } else {
            write_record(out, &entry, None, &entry.payload, output.format)?;
        }
    }
    Ok(())
}

/// Writes one entry's payload, or one sub-entry (`index`) of a batch entry.
fn write_record(
    out: &mut impl Write,
    entry: &Entry,
    index: Option<u32>,
    payload: &[u8],
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Text => {
            out.write_all(payload)?;
            out.write_all(b"\n")
        }
        Format::Hex => writeln!(out, "{}", hex(payload)),
        Format::Json => {
            let index = index.map_or(String::new(), |index| format!(r#""index":{index},"#));
            writeln!(
                out,
                r#"{{"offset":{},{index}"term":{},"len":{},"data_b64":"{}"}}"#,
                entry.offset,
                entry.term,
                payload.len(),
                base64::engine::general_purpose::STANDARD.encode(payload)
            )
        }
        Format::Raw => unreachable!("raw pages are written whole by write_page"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_offsets_parse() {
        assert_eq!(parse_from("0"), Ok(StartAt::Offset(0)));
        assert_eq!(parse_from("123"), Ok(StartAt::Offset(123)));
        assert_eq!(parse_from("end"), Ok(StartAt::LastEntries(0)));
        assert_eq!(parse_from("end-5"), Ok(StartAt::LastEntries(5)));
        assert!(parse_from("end-").is_err());
        assert!(parse_from("end+1").is_err());
        assert!(parse_from("-3").is_err());
    }
}
