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
    /// Offset of the first entry to read (an entry boundary, e.g. one that
    /// `loglog append` printed, or 0).
    #[arg(long, value_name = "OFFSET")]
    from: u64,

    /// Stop before the first entry at or past this offset.
    #[arg(long, value_name = "OFFSET")]
    to: Option<u64>,

    /// Keep waiting for new entries (long-poll) instead of exiting at the end.
    #[arg(long)]
    follow: bool,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
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
    let client = crate::connect(cluster).await?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let to = args.to.unwrap_or(u64::MAX);
    let mut offset = args.from;
    // Without --follow: where to stop, fixed by the first answer so a busy
    // log cannot keep the command running.
    let mut stop_at: Option<u64> = None;
    while offset < to {
        if stop_at.is_some_and(|stop| offset >= stop) {
            break;
        }
        let wait = if args.follow {
            LONG_POLL
        } else {
            Duration::ZERO
        };
        let page = client.read(offset, PAGE_BYTES, wait).await?;
        if !args.follow && stop_at.is_none() {
            stop_at = Some(page.commit_offset());
        }
        write_page(&mut out, &page, to, args.format)?;
        if args.follow || page.is_empty() {
            // Whoever follows the log sees each page as it comes.
            out.flush()?;
        }
        if page.is_empty() && !args.follow {
            break;
        }
        offset = page.next_offset();
    }
    out.flush()?;
    Ok(())
}

/// Writes the page's entries that start before `to`.
fn write_page(
    out: &mut impl Write,
    page: &ReadPage,
    to: u64,
    format: Format,
) -> std::io::Result<()> {
    if format == Format::Raw {
        // Whole entries only: cut at the end of the last entry before `to`.
        let end = page
            .all_entries()
            .take_while(|entry| entry.offset < to)
            .last()
            .map_or(page.offset(), |entry| entry.next_offset());
        let len = (end - page.offset()) as usize;
        return out.write_all(&page.raw()[..len]);
    }
    for entry in page.entries().take_while(|entry| entry.offset < to) {
        write_entry(out, &entry, format)?;
    }
    Ok(())
}

fn write_entry(out: &mut impl Write, entry: &Entry, format: Format) -> std::io::Result<()> {
    match format {
        Format::Text => {
            out.write_all(&entry.payload)?;
            out.write_all(b"\n")
        }
        Format::Hex => writeln!(out, "{}", hex(&entry.payload)),
        Format::Json => writeln!(
            out,
            r#"{{"offset":{},"term":{},"len":{},"data_b64":"{}"}}"#,
            entry.offset,
            entry.term,
            entry.payload.len(),
            base64::engine::general_purpose::STANDARD.encode(&entry.payload)
        ),
        Format::Raw => unreachable!("raw pages are written whole by write_page"),
    }
}
