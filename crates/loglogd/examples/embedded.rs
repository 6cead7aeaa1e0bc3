//! A node embedded in a program: start it in a temporary directory, append
//! a few entries (each durable when `append` returns), read them back, shut
//! down. Run with `cargo run -p loglogd --example embedded`.

use std::time::Duration;

use loglogd::{Config, Node};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::new(dir.path().join("data"));
    // Embedded only; set `Some("127.0.0.1:0".parse()?)` to also serve TCP.
    config.listen = None;
    let node = Node::start(config).await?;

    let mut first = None;
    for text in ["hello", "embedded", "log"] {
        let offset = node.append(text.as_bytes().to_vec()).await?;
        println!("appended {text:?} at offset {offset}");
        first.get_or_insert(offset);
    }

    // Reads return whole entries up to the commit offset; skip no-ops.
    let mut offset = first.expect("three appends");
    loop {
        let chunk = node.read(offset, 64 * 1024, Duration::ZERO).await?;
        if chunk.bytes.is_empty() {
            break;
        }
        for (at, payload) in chunk.data_entries() {
            println!("read {:?} at offset {at}", String::from_utf8_lossy(payload));
        }
        offset = chunk.next_offset();
    }

    let status = node.status();
    println!(
        "term {}, commit offset {}, {} segment(s)",
        status.term, status.commit_offset, status.segment_count
    );
    node.shutdown().await;
    Ok(())
}
