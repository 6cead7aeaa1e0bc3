//! The client against a real node (embedded `loglogd::Node` serving TCP on
//! a free port, real files, real fsync).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use loglog::{Client, ClientConfig, EntryKind, Error, ServerError};
use loglog_proto::entry::ENTRY_HEADER_LEN;
use loglog_proto::producer::{ProducerTag, PRODUCER_ENVELOPE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod common;

use common::start_node;

async fn read_all_data(client: &Client) -> Vec<(u64, Vec<u8>)> {
    let end = client.end_offset().await.unwrap();
    let mut offset = 0;
    let mut entries = Vec::new();
    while offset < end {
        let page = client.read(offset, 4096, Duration::ZERO).await.unwrap();
        entries.extend(
            page.entries()
                .map(|entry| (entry.offset, entry.payload.to_vec())),
        );
        offset = page.next_offset();
    }
    entries
}

#[tokio::test]
async fn appends_are_read_back_at_their_offsets_skipping_the_noop() {
    let test = start_node(|_| {}).await;
    let client = Client::connect(&[&test.addr]).await.unwrap();
    let first = client.append(&b"hello"[..]).await.unwrap();
    // Offset 0 holds the node's term no-op, which readers skip.
    assert_eq!(first, ENTRY_HEADER_LEN as u64);
    // Each entry's payload starts with the 16-byte producer envelope.
    let entry_len = (ENTRY_HEADER_LEN + PRODUCER_ENVELOPE_LEN + 5) as u64;
    let second = client.append(b"world".to_vec()).await.unwrap();
    assert_eq!(second, first + entry_len);

    let page = client.read(0, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(page.offset(), 0);
    assert_eq!(page.next_offset(), second + entry_len);
    assert_eq!(page.commit_offset(), page.next_offset());
    let kinds: Vec<EntryKind> = page.all_entries().map(|entry| entry.kind).collect();
    assert_eq!(kinds, [EntryKind::NoOp, EntryKind::Data, EntryKind::Data]);
    let data: Vec<_> = page.entries().collect();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0].offset, &data[0].payload[..]),
        (first, &b"hello"[..])
    );
    assert_eq!(
        (data[1].offset, &data[1].payload[..]),
        (second, &b"world"[..])
    );
    assert_eq!(data[0].term, 1);
    for (sequence, entry) in data.iter().enumerate() {
        let tag = ProducerTag {
            producer_id: client.producer_id(),
            sequence: sequence as u64,
        };
        assert_eq!(entry.producer, Some(tag));
        // A raw reader sees the envelope as the payload's first 16 bytes.
        let at = (entry.offset - page.offset()) as usize + ENTRY_HEADER_LEN;
        assert_eq!(&page.raw()[at..at + PRODUCER_ENVELOPE_LEN], &tag.encode());
    }
    // The raw bytes are the log as stored: they parse again.
    assert_eq!(page.raw().len() as u64, page.next_offset());

    let status = client.status().await.unwrap();
    assert_eq!(status.commit_offset, page.next_offset());
    assert_eq!(status.role, loglog::Role::Leader);
    assert_eq!(client.end_offset().await.unwrap(), page.next_offset());
    test.node.shutdown().await;
}

#[tokio::test]
async fn concurrent_pipelined_appends_each_land_once() {
    let test = start_node(|_| {}).await;
    // A small in-flight bound makes callers wait for permits.
    let config = ClientConfig {
        max_in_flight: 8,
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&[&test.addr], config).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..16u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for seq in 0..50u32 {
                let payload = format!("{task}-{seq}").into_bytes();
                let offset = client.append(payload.clone()).await.unwrap();
                acked.push((offset, payload));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    acked.sort();
    let offsets: HashSet<u64> = acked.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets.len(), 16 * 50);
    assert_eq!(read_all_data(&client).await, acked);
    test.node.shutdown().await;
}

#[tokio::test]
async fn submitted_appends_keep_their_order() {
    let test = start_node(|_| {}).await;
    let client = Client::connect(&[&test.addr]).await.unwrap();
    let mut pending = Vec::new();
    for seq in 0..200u32 {
        pending.push(
            client
                .submit_append(seq.to_le_bytes().to_vec(), false)
                .await
                .unwrap(),
        );
    }
    let mut previous = 0;
    for (seq, append) in pending.into_iter().enumerate() {
        let offset = append.wait().await.unwrap();
        assert!(
            offset > previous,
            "append {seq} at {offset} is not after {previous}"
        );
        previous = offset;
    }
    let nowait = client.append_nowait(&b"quick"[..]).await.unwrap();
    assert!(nowait > previous);
    test.node.wait_for_commit(nowait + 1).await;
    let page = client.read(nowait, 1024, Duration::ZERO).await.unwrap();
    assert_eq!(&page.entries().next().unwrap().payload[..], b"quick");
    test.node.shutdown().await;
}

#[tokio::test]
async fn long_poll_reads_and_streams_follow_the_tail() {
    let test = start_node(|_| {}).await;
    let client = Client::connect(&[&test.addr]).await.unwrap();
    let first = client.append(&b"before"[..]).await.unwrap();
    let tail = client.end_offset().await.unwrap();

    // A read at the tail waits for the next commit, then answers at once.
    let reader = client.clone();
    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let page = reader
            .read(tail, 1024, Duration::from_secs(20))
            .await
            .unwrap();
        (page, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stream = client.entries(first);
    assert_eq!(&stream.next().await.unwrap().payload[..], b"before");
    assert_eq!(stream.position(), tail);
    let appended = client.append(&b"after"[..]).await.unwrap();
    let (page, waited) = waiting.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "the long poll waited {waited:?}"
    );
    assert_eq!(page.entries().next().unwrap().offset, appended);
    let entry = stream.next().await.unwrap();
    assert_eq!(
        (entry.offset, &entry.payload[..]),
        (appended, &b"after"[..])
    );

    // An empty long poll returns an empty page after the wait.
    let end = client.end_offset().await.unwrap();
    let page = client
        .read(end, 1024, Duration::from_millis(50))
        .await
        .unwrap();
    assert!(page.is_empty());
    assert_eq!(page.next_offset(), end);
    test.node.shutdown().await;
}

#[tokio::test]
async fn server_errors_are_typed() {
    let test = start_node(|config| {
        config.max_entry_size = 1000;
        config.segment_size = 4096;
    })
    .await;
    let client = Client::connect(&[&test.addr]).await.unwrap();
    let too_large = client.append(vec![0u8; 1001]).await.unwrap_err();
    assert!(
        matches!(
            too_large.server_error(),
            Some(ServerError::TooLarge { max: 1000 })
        ),
        "{too_large:?}"
    );
    assert!(!too_large.is_indeterminate());
    // The connection is still usable after a refused request.
    let mut last = 0;
    for _ in 0..20 {
        last = client.append(vec![7u8; 900]).await.unwrap();
    }
    let end = client.end_offset().await.unwrap();
    let past = client
        .read(end + 16, 1024, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(past.server_error(), Some(ServerError::OutOfRange { end: at }) if *at == end),
        "{past:?}"
    );
    let inside = client
        .read(last + 1, 1024, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        matches!(inside.server_error(), Some(ServerError::BadRequest { .. })),
        "{inside:?}"
    );
    let start = test.node.trim_prefix(last).await.unwrap();
    assert!(start > 0);
    let trimmed = client.read(0, 1024, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(trimmed.server_error(), Some(ServerError::Trimmed { start: at }) if *at == start),
        "{trimmed:?}"
    );
    assert!(trimmed.to_string().contains(&test.addr), "{trimmed}");
    assert_eq!(client.status().await.unwrap().start_offset, start);
    test.node.shutdown().await;
}

#[tokio::test]
async fn connect_tries_the_cluster_in_order_and_names_the_address() {
    // A port with nothing listening: bind, note the port, close.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let error = Client::connect(&[&dead]).await.err().unwrap();
    assert!(
        matches!(&error, Error::Connect { addr, .. } if *addr == dead),
        "{error:?}"
    );
    assert!(error.to_string().contains(&dead));
    assert!(matches!(
        Client::connect::<&str>(&[]).await,
        Err(Error::InvalidArgument(_))
    ));

    let test = start_node(|_| {}).await;
    let client = Client::connect(&[dead.as_str(), test.addr.as_str()])
        .await
        .unwrap();
    assert_eq!(
        client.current_address().as_deref(),
        Some(test.addr.as_str())
    );
    client.append(&b"x"[..]).await.unwrap();
    test.node.shutdown().await;
}

/// What a [`Proxy`] does with the node's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProxyMode {
    /// Forward (damaging every occurrence of the marker).
    Pass,
    /// Stop forwarding answers (requests still go through).
    Hold,
    /// Close every connection and stop listening.
    Cut,
}

/// A TCP proxy in front of the real node, standing in for a faulty
/// network: it flips the last byte of every occurrence of `marker` in what
/// the node sends back, and can hold answers or cut connections.
struct Proxy {
    addr: String,
    mode: tokio::sync::watch::Sender<ProxyMode>,
}

async fn start_proxy(upstream: String, marker: &'static [u8]) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (mode, mode_rx) = tokio::sync::watch::channel(ProxyMode::Pass);
    let mut accept_mode = mode_rx.clone();
    tokio::spawn(async move {
        loop {
            let client = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((client, _)) => client,
                    Err(_) => return,
                },
                _ = accept_mode.wait_for(|mode| *mode == ProxyMode::Cut) => return,
            };
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let mut requests_mode = mode_rx.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::io::copy(&mut client_read, &mut server_write) => {}
                    _ = requests_mode.wait_for(|mode| *mode == ProxyMode::Cut) => {}
                }
            });
            let mut answers_mode = mode_rx.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut matched = 0;
                loop {
                    if answers_mode
                        .wait_for(|mode| *mode != ProxyMode::Hold)
                        .await
                        .map_or(true, |mode| *mode == ProxyMode::Cut)
                    {
                        return;
                    }
                    let read = tokio::select! {
                        read = server_read.read(&mut buffer) => read,
                        _ = answers_mode.wait_for(|mode| *mode != ProxyMode::Pass) => continue,
                    };
                    let Ok(read @ 1..) = read else { return };
                    for byte in &mut buffer[..read] {
                        matched = if *byte == marker[matched] {
                            matched + 1
                        } else {
                            usize::from(*byte == marker[0])
                        };
                        if matched == marker.len() {
                            *byte ^= 0x01;
                            matched = 0;
                        }
                    }
                    if client_write.write_all(&buffer[..read]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Proxy { addr, mode }
}

#[tokio::test]
async fn corrupt_bytes_from_the_network_are_a_typed_error() {
    let test = start_node(|_| {}).await;
    let proxy = start_proxy(test.addr.clone(), b"CORRUPT-ME").await;
    let client = Client::connect(&[&proxy.addr]).await.unwrap();
    let good = client.append(&b"fine"[..]).await.unwrap();
    let bad = client.append(&b"please CORRUPT-ME now"[..]).await.unwrap();
    let error = client.read(0, 1 << 20, Duration::ZERO).await.unwrap_err();
    match &error {
        Error::Corrupt { offset, addr, .. } => {
            assert_eq!(*offset, bad);
            assert_eq!(addr, &proxy.addr);
        }
        other => panic!("expected a corruption error, got {other:?}"),
    }
    // Entries before the damage read fine on their own.
    let page = client.read(good, 10, Duration::ZERO).await.unwrap();
    assert_eq!(&page.entries().next().unwrap().payload[..], b"fine");
    test.node.shutdown().await;
}

const NO_MARKER: &[u8] = b"\xff\xfe\xfd marker that never occurs";

#[tokio::test]
async fn a_lost_connection_fails_every_pending_request() {
    let test = start_node(|_| {}).await;
    let proxy = start_proxy(test.addr.clone(), NO_MARKER).await;
    let config = ClientConfig {
        leader_wait: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&[&proxy.addr], config).await.unwrap();
    // The appends reach the node, which commits them, but their answers
    // are held back; then the connection is cut.
    proxy.mode.send_replace(ProxyMode::Hold);
    let mut pending = Vec::new();
    for seq in 0..10u8 {
        pending.push(client.submit_append(vec![seq; 3], false).await.unwrap());
    }
    let direct = Client::connect(&[&test.addr]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_all_data(&direct).await.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the appends never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.mode.send_replace(ProxyMode::Cut);
    for append in pending {
        let tag = append.producer_tag();
        let error = append.wait().await.unwrap_err();
        // The client retried (the proxy no longer accepts connections)
        // until leader_wait passed; the node committed it, the client
        // cannot know.
        match &error {
            Error::InDoubt {
                producer_id,
                sequence,
                ..
            } => assert_eq!((*producer_id, *sequence), (tag.producer_id, tag.sequence)),
            other => panic!("expected an append in doubt, got {other:?}"),
        }
        assert!(error.is_indeterminate());
    }
    // The next call opens a new connection, which fails: nothing listens.
    let error = client.status().await.unwrap_err();
    assert!(
        matches!(&error, Error::Connect { addr, .. } if *addr == proxy.addr),
        "{error:?}"
    );
    test.node.shutdown().await;
}

#[tokio::test]
async fn a_node_that_stops_answering_fails_requests_after_the_request_timeout() {
    let test = start_node(|_| {}).await;
    let proxy = start_proxy(test.addr.clone(), NO_MARKER).await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        leader_wait: Duration::from_millis(500),
        ..ClientConfig::default()
    };
    let client = Client::connect_with(&[&proxy.addr], config).await.unwrap();
    // A long-poll read may take its whole wait on top of the timeout.
    let tail = client.end_offset().await.unwrap();
    let started = Instant::now();
    let page = client
        .read(tail, 1024, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(page.entries().count(), 0);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The node's answers stop; its connections stay open (a stopped
    // process, a black-holed link).
    proxy.mode.send_replace(ProxyMode::Hold);
    let started = Instant::now();
    let error = client.status().await.unwrap_err();
    assert!(
        matches!(&error, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{error:?}"
    );
    let error = client.append(&b"unanswered"[..]).await.unwrap_err();
    assert!(
        matches!(error, Error::InDoubt { .. }) && error.is_indeterminate(),
        "{error:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    test.node.shutdown().await;
}

#[tokio::test]
async fn reads_fall_back_to_the_next_node_when_the_connection_is_lost() {
    let test = start_node(|_| {}).await;
    let proxy = start_proxy(test.addr.clone(), NO_MARKER).await;
    let client = Client::connect(&[proxy.addr.as_str(), test.addr.as_str()])
        .await
        .unwrap();
    assert_eq!(
        client.current_address().as_deref(),
        Some(proxy.addr.as_str())
    );
    let tail = client.end_offset().await.unwrap();
    let mut polls = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        polls.push(tokio::spawn(async move {
            client.read(tail, 1024, Duration::from_secs(30)).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The proxy goes away: the reads are sent again, to the next address.
    proxy.mode.send_replace(ProxyMode::Cut);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let appended = test.node.append(&b"news"[..]).await.unwrap();
    for poll in polls {
        let page = poll.await.unwrap().unwrap();
        assert_eq!(page.entries().next().unwrap().offset, appended);
    }
    assert_eq!(
        client.current_address().as_deref(),
        Some(test.addr.as_str())
    );
    test.node.shutdown().await;
}

#[test]
fn the_blocking_client_appends_reads_and_follows() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let test = runtime.block_on(start_node(|_| {}));
    let client = loglog::blocking::Client::connect(&[&test.addr]).unwrap();
    let first = client.append(&b"one"[..]).unwrap();
    let second = client.append_nowait(&b"two"[..]).unwrap();
    assert!(second > first);
    let mut entries = client.entries(0);
    let one = entries.next().unwrap().unwrap();
    assert_eq!((one.offset, &one.payload[..]), (first, &b"one"[..]));
    let two = entries.next().unwrap().unwrap();
    assert_eq!((two.offset, &two.payload[..]), (second, &b"two"[..]));
    let page = client.read(first, 1, Duration::ZERO).unwrap();
    assert_eq!(page.entries().count(), 1);
    assert_eq!(
        client.end_offset().unwrap(),
        client.status().unwrap().commit_offset
    );
    // Another thread appends while this one follows the tail.
    let writer = client.clone();
    let appender = std::thread::spawn(move || writer.append(&b"three"[..]).unwrap());
    let three = entries.next().unwrap().unwrap();
    assert_eq!(three.offset, appender.join().unwrap());
    assert_eq!(&three.payload[..], b"three");
    drop(entries);
    drop(client);
    runtime.block_on(test.node.shutdown());
}

#[tokio::test]
async fn an_append_whose_answer_was_lost_is_retried_and_lands_once() {
    let test = start_node(|_| {}).await;
    let proxy = start_proxy(test.addr.clone(), NO_MARKER).await;
    // The proxy first; the node itself is where the retries go once the
    // proxy is gone.
    let client = Client::connect(&[&proxy.addr, &test.addr]).await.unwrap();
    assert_eq!(client.current_address().as_deref(), Some(&proxy.addr[..]));
    proxy.mode.send_replace(ProxyMode::Hold);
    let mut pending = Vec::new();
    for value in 0..10u8 {
        pending.push((
            value,
            client.submit_append(vec![value; 3], false).await.unwrap(),
        ));
    }
    let direct = Client::connect(&[&test.addr]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while read_all_data(&direct).await.len() < 10 {
        assert!(
            Instant::now() < deadline,
            "the appends never reached the node"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.mode.send_replace(ProxyMode::Cut);
    let mut acknowledged = Vec::new();
    for (value, append) in pending {
        // The answer was lost with the connection; the retry (same
        // producer and sequence) is answered with the first copy's offset.
        let offset = append.wait().await.unwrap();
        acknowledged.push((offset, vec![value; 3]));
    }
    let log = read_all_data(&direct).await;
    assert_eq!(
        log, acknowledged,
        "every value once, at its acknowledged offset"
    );
    test.node.shutdown().await;
}
