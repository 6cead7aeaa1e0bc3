//! The node-wide memory budgets over real sockets: many connections with
//! large appends and reads of large entries, against budgets far smaller
//! than what the clients offer. Nothing may exceed a budget, every request
//! must be answered, and every acknowledged entry must be intact.

use std::collections::HashMap;
use std::time::Duration;

use loglog_proto::entry::{EntryIter, EntryKind};
use loglog_proto::wire::{FrameHeader, Request, ServerError, FRAME_HEADER_LEN, STATUS_OK};
use loglogd::{Config, Node, REQUEST_OVERHEAD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 32;
const APPENDS_PER_CONNECTION: usize = 8;
const PAYLOAD: usize = 200_000;
const NODE_REQUEST_BYTES: usize = 1024 * 1024;
/// Smaller than one entry: every read of an entry needs the whole budget.
const NODE_READ_BYTES: usize = 128 * 1024;
const MAX_READ_BYTES: u32 = 64 * 1024;

/// A payload that names its writer and sequence number in every byte.
fn payload(connection: usize, sequence: usize) -> Vec<u8> {
    let seed = (connection * 31 + sequence * 7) as u8;
    let mut payload: Vec<u8> = (0..PAYLOAD).map(|i| seed.wrapping_add(i as u8)).collect();
    payload[..4].copy_from_slice(&(connection as u16).to_le_bytes().repeat(2));
    payload[4..8].copy_from_slice(&(sequence as u32).to_le_bytes());
    payload
}

/// One response: its request id and body (or the error it carries).
async fn read_response(reader: &mut OwnedReadHalf) -> (u64, Result<Vec<u8>, ServerError>) {
    let mut header = [0u8; FRAME_HEADER_LEN];
    tokio::time::timeout(Duration::from_secs(60), reader.read_exact(&mut header))
        .await
        .expect("every request is answered (no answer within 60 s)")
        .expect("the connection stays open");
    let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    reader.read_exact(&mut body).await.unwrap();
    let result = if header.aux == STATUS_OK {
        Ok(body)
    } else {
        Err(ServerError::decode(header.aux, &body))
    };
    (header.request_id, result)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_with_large_requests_stay_within_the_node_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.max_entry_size = 256 * 1024;
    config.limits.max_in_flight_bytes = 4 * 1024 * 1024;
    config.limits.max_node_request_bytes = NODE_REQUEST_BYTES;
    config.limits.max_node_read_bytes = NODE_READ_BYTES;
    config.limits.max_read_bytes = MAX_READ_BYTES;
    config.limits.max_pending_append_bytes = 1024 * 1024;
    let node = Node::start(config).await.unwrap();
    let addr = node.local_addr().unwrap();

    // Writers: every connection sends all its appends at once (51 MiB
    // offered in all, against a 1 MiB budget) and reads answers meanwhile.
    let mut writers = Vec::new();
    for connection in 0..CONNECTIONS {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        writers.push(tokio::spawn(async move {
            let send = tokio::spawn(async move {
                for sequence in 0..APPENDS_PER_CONNECTION {
                    let mut frame = Vec::new();
                    Request::Append {
                        payload: &payload(connection, sequence),
                        no_wait: false,
                    }
                    .encode(sequence as u64, &mut frame);
                    writer.write_all(&frame).await.unwrap();
                }
                writer
            });
            let mut acknowledged = Vec::new();
            for _ in 0..APPENDS_PER_CONNECTION {
                let (sequence, result) = read_response(&mut reader).await;
                let body = result.expect("the append succeeds");
                let offset = u64::from_le_bytes(body.try_into().unwrap());
                acknowledged.push((offset, connection, sequence as usize));
            }
            drop(send.await.unwrap());
            acknowledged
        }));
    }

    // Readers meanwhile: every entry is larger than a read may answer and
    // than the whole read budget, so each read is charged in full, alone.
    let mut readers = Vec::new();
    for _ in 0..4 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        readers.push(tokio::spawn(async move {
            let mut offset = 0u64;
            let mut entries = 0;
            let mut request_id = 0;
            while entries < 20 {
                let mut frame = Vec::new();
                Request::Read {
                    offset,
                    max_bytes: MAX_READ_BYTES,
                    wait_ms: 1000,
                    linearizable: false,
                }
                .encode(request_id, &mut frame);
                writer.write_all(&frame).await.unwrap();
                let (id, result) = read_response(&mut reader).await;
                assert_eq!(id, request_id);
                request_id += 1;
                let body = result.expect("the read succeeds");
                let bytes = &body[8..];
                for entry in EntryIter::new(bytes, offset, u32::MAX) {
                    let entry = entry.expect("entries read are whole and valid");
                    if entry.header.kind == EntryKind::Data {
                        assert_eq!(entry.payload.len(), PAYLOAD);
                        entries += 1;
                    }
                }
                offset += bytes.len() as u64;
            }
        }));
    }

    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.unwrap());
    }
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(acknowledged.len(), CONNECTIONS * APPENDS_PER_CONNECTION);

    // Every acknowledged entry is in the log, intact, exactly once.
    let mut log = HashMap::new();
    let mut offset = 0;
    while offset < node.commit_offset() {
        let chunk = node.read(offset, 1 << 20, Duration::ZERO).await.unwrap();
        for (at, payload) in chunk.data_entries() {
            log.insert(at, payload.to_vec());
        }
        offset = chunk.next_offset();
    }
    assert_eq!(log.len(), acknowledged.len());
    for (offset, connection, sequence) in acknowledged {
        assert!(
            log.get(&offset) == Some(&payload(connection, sequence)),
            "entry {connection}/{sequence} at {offset} is intact"
        );
    }

    // The budgets held: never more than allowed, and really contended.
    let metrics = node.metrics();
    let largest_request = FRAME_HEADER_LEN + PAYLOAD + REQUEST_OVERHEAD;
    assert!(
        metrics.peak_request_bytes <= NODE_REQUEST_BYTES as u64,
        "{metrics:?}"
    );
    assert!(
        metrics.peak_request_bytes > (NODE_REQUEST_BYTES - largest_request) as u64 / 2,
        "the request budget was the bound: {metrics:?}"
    );
    assert_eq!(
        metrics.peak_read_bytes, NODE_READ_BYTES as u64,
        "an entry larger than the read budget holds all of it: {metrics:?}"
    );
    node.shutdown().await;
}

/// A client that stops taking its answers holds part of the read budget
/// (answers queued behind a full socket); after the stall timeout it is
/// disconnected and the others' reads go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_frees_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.max_entry_size = 256 * 1024;
    config.limits.max_in_flight_bytes = 16 * 1024 * 1024;
    config.limits.max_node_read_bytes = 1024 * 1024;
    config.limits.max_read_bytes = 256 * 1024;
    config.limits.client_stall_timeout = Duration::from_millis(300);
    let node = Node::start(config).await.unwrap();
    let big = node.append(vec![7u8; 256 * 1024]).await.unwrap();

    // The stalled client: 128 reads of the big entry (32 MiB of answers,
    // far more than the socket buffers hold), and it never reads.
    let mut stalled = TcpStream::connect(node.local_addr().unwrap())
        .await
        .unwrap();
    let mut frames = Vec::new();
    for request_id in 0..128 {
        Request::Read {
            offset: big,
            max_bytes: 256 * 1024,
            wait_ms: 0,
            linearizable: false,
        }
        .encode(request_id, &mut frames);
    }
    stalled.write_all(&frames).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Another client's read is answered all the same, within a few stall
    // timeouts.
    let (mut reader, mut writer) = TcpStream::connect(node.local_addr().unwrap())
        .await
        .unwrap()
        .into_split();
    let mut frame = Vec::new();
    Request::Read {
        offset: big,
        max_bytes: 256 * 1024,
        wait_ms: 0,
        linearizable: false,
    }
    .encode(1, &mut frame);
    writer.write_all(&frame).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
        .await
        .expect("the read is answered once the stalled client is gone");
    let (id, result) = answered;
    assert_eq!(id, 1);
    assert_eq!(result.unwrap().len(), 8 + 16 + 256 * 1024);

    // The stalled client was disconnected: it finds the end of the stream
    // after what was already in its socket.
    let mut sink = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled client was disconnected");
    node.shutdown().await;
}

/// A client that stops in the middle of a large frame holds its charge of
/// the request budget; after the stall timeout it is disconnected and the
/// others' appends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalled_mid_frame_is_disconnected_and_frees_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.max_entry_size = 256 * 1024;
    config.limits.max_in_flight_bytes = 1024 * 1024;
    // Room for one largest request: a second waits for the first.
    config.limits.max_node_request_bytes = 256 * 1024 + 2048 + REQUEST_OVERHEAD;
    config.limits.max_pending_append_bytes = 1024 * 1024;
    config.limits.client_stall_timeout = Duration::from_millis(300);
    let node = Node::start(config).await.unwrap();

    let mut frame = Vec::new();
    Request::Append {
        payload: &vec![1u8; 256 * 1024],
        no_wait: false,
    }
    .encode(1, &mut frame);
    let mut stalled = TcpStream::connect(node.local_addr().unwrap())
        .await
        .unwrap();
    stalled.write_all(&frame[..1000]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let (mut reader, mut writer) = TcpStream::connect(node.local_addr().unwrap())
        .await
        .unwrap()
        .into_split();
    writer.write_all(&frame).await.unwrap();
    let (id, result) = tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
        .await
        .expect("the append is answered once the stalled client is gone");
    assert_eq!(id, 1);
    let offset = u64::from_le_bytes(result.unwrap().try_into().unwrap());
    let chunk = node.read(offset, 1 << 20, Duration::ZERO).await.unwrap();
    let entries: Vec<_> = chunk.data_entries().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1, &vec![1u8; 256 * 1024][..]);

    // The stalled client was disconnected.
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    node.shutdown().await;
}
