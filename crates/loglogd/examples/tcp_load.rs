//! A quick load generator for the server's hot path (not a test; the real
//! benchmark is `loglog bench`): starts a node in a temporary directory and
//! drives it over TCP with hand-built frames, each appender keeping one
//! append waiting for commit at a time.
//!
//! ```text
//! cargo run --release -p loglogd --example tcp_load -- [appenders=64] [connections=64] [payload=128] [seconds=5] [fsync=always]
//! ```
//! Appenders are spread over the connections (pipelined when there are more
//! appenders than connections).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loglog_proto::wire::{FrameHeader, Request, FRAME_HEADER_LEN, STATUS_OK};
use loglogd::{Config, Fsync, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |index: usize, default: u64| -> u64 {
        args.get(index)
            .and_then(|value| value.parse().ok())
            .unwrap_or(default)
    };
    let appenders = arg(0, 64) as usize;
    let connections = (arg(1, 64) as usize).clamp(1, appenders);
    let payload_len = arg(2, 128) as usize;
    let seconds = arg(3, 5);
    let fsync: Fsync = args
        .get(4)
        .map(|text| text.parse())
        .transpose()?
        .unwrap_or(Fsync::Always);

    let dir = tempfile::tempdir_in(std::env::current_dir()?)?;
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse()?);
    config.fsync = fsync;
    let node = Node::start(config).await?;
    let addr = node.local_addr().expect("listening");

    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for connection in 0..connections {
        // This connection's share of the appenders = requests kept in flight.
        let depth = appenders / connections + usize::from(connection < appenders % connections);
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let (mut reader, mut writer) = stream.into_split();
            let payload = vec![0x5au8; payload_len];
            let mut frame = Vec::new();
            Request::Append {
                payload: &payload,
                no_wait: false,
            }
            .encode(0, &mut frame);
            let mut burst = Vec::new();
            for _ in 0..depth {
                burst.extend_from_slice(&frame);
            }
            writer.write_all(&burst).await.expect("write");
            let mut header = [0u8; FRAME_HEADER_LEN];
            let mut body = Vec::new();
            loop {
                reader.read_exact(&mut header).await.expect("read");
                let decoded = FrameHeader::decode(&header, u32::MAX)
                    .expect("valid response")
                    .expect("whole header");
                body.resize(decoded.body_len as usize, 0);
                reader.read_exact(&mut body).await.expect("read body");
                assert_eq!(decoded.aux, STATUS_OK, "append failed");
                done.fetch_add(1, Ordering::Relaxed);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                writer.write_all(&frame).await.expect("write");
            }
        }));
    }
    let started = Instant::now();
    let mut last = 0;
    for second in 1..=seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        println!("{second:>3}s {:>9} appends/s", now - last);
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let total = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    let status = node.status();
    println!(
        "{appenders} appenders on {connections} connections, {payload_len} B, fsync {fsync:?}: \
         {:.0} committed appends/s ({:.1} MB/s of log)",
        total as f64 / elapsed,
        status.commit_offset as f64 / elapsed / 1e6
    );
    let metrics = node.metrics();
    println!(
        "{:.1} entries per write batch, {:.1} entries per fsync",
        metrics.entries_written as f64 / metrics.write_batches.max(1) as f64,
        metrics.entries_written as f64 / metrics.syncs.max(1) as f64
    );
    node.shutdown().await;
    Ok(())
}
