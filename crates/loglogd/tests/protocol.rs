//! Protocol-level tests over real TCP sockets with hand-built frames.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use loglog_proto::entry::{EntryIter, EntryKind};
use loglog_proto::producer::{ProducerTag, ENTRY_FLAG_PRODUCER};
use loglog_proto::wire::{
    opcode, FrameHeader, NodeStatus, Request, ServerError, FRAME_HEADER_LEN,
    READ_RESPONSE_PREFIX_LEN, STATUS_OK,
};
use loglogd::{Config, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_ENTRY: u32 = 4096;

async fn start(dir: &Path, tune: impl FnOnce(&mut Config)) -> Node {
    let mut config = Config::new(dir.join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.max_entry_size = MAX_ENTRY;
    tune(&mut config);
    Node::start(config).await.unwrap()
}

async fn connect(node: &Node) -> TcpStream {
    TcpStream::connect(node.local_addr().unwrap())
        .await
        .unwrap()
}

#[derive(Debug)]
struct Response {
    header: FrameHeader,
    body: Vec<u8>,
}

impl Response {
    fn result(&self) -> Result<&[u8], ServerError> {
        if self.header.aux == STATUS_OK {
            Ok(&self.body)
        } else {
            Err(ServerError::decode(self.header.aux, &self.body))
        }
    }

    fn offset(&self) -> u64 {
        let body = self.result().unwrap();
        u64::from_le_bytes(body.try_into().unwrap())
    }
}

/// Reads one response; `None` at a clean end of stream.
async fn read_response(stream: &mut TcpStream) -> Option<Response> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    match tokio::time::timeout(Duration::from_secs(20), stream.read_exact(&mut header)).await {
        Ok(Ok(_)) => {}
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => return None,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => return None,
        Ok(Err(error)) => panic!("read failed: {error}"),
        Err(_) => panic!("no response within 20 s"),
    }
    let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).await.unwrap();
    Some(Response { header, body })
}

fn frame(request: Request<'_>, request_id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(request_id, &mut out);
    out
}

fn append(payload: &[u8], request_id: u64) -> Vec<u8> {
    frame(
        Request::Append {
            payload,
            no_wait: false,
        },
        request_id,
    )
}

fn read(offset: u64, max_bytes: u32, wait_ms: u32, request_id: u64) -> Vec<u8> {
    frame(
        Request::Read {
            offset,
            max_bytes,
            wait_ms,
            linearizable: false,
        },
        request_id,
    )
}

async fn status(stream: &mut TcpStream, request_id: u64) -> NodeStatus {
    stream
        .write_all(&frame(Request::Status, request_id))
        .await
        .unwrap();
    let response = read_response(stream).await.unwrap();
    assert_eq!(response.header.request_id, request_id);
    assert_eq!(response.header.opcode, opcode::STATUS);
    NodeStatus::decode(response.result().unwrap()).unwrap()
}

/// The commit offset of a successful read response and the length of its entries.
fn read_payloads(response: &Response) -> (u64, u64) {
    let body = response.result().unwrap();
    let commit = u64::from_le_bytes(body[..8].try_into().unwrap());
    (commit, (body.len() - READ_RESPONSE_PREFIX_LEN) as u64)
}

fn data_entries(offset: u64, response: &Response) -> Vec<(u64, Vec<u8>)> {
    let body = response.result().unwrap();
    EntryIter::new(&body[READ_RESPONSE_PREFIX_LEN..], offset, u32::MAX)
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.header.kind == EntryKind::Data)
        .map(|entry| (entry.offset, entry.payload.to_vec()))
        .collect()
}

#[tokio::test]
async fn pipelined_requests_are_answered_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let mut stream = connect(&node).await;
    let commit = node.commit_offset();

    // 100 appends, a status and a long-poll read in one write.
    let mut batch = read(commit, 1 << 20, 5_000, 1_000);
    for index in 0..100u64 {
        batch.extend(append(&index.to_le_bytes(), index));
    }
    batch.extend(frame(Request::Status, 2_000));
    stream.write_all(&batch).await.unwrap();

    let mut responses = HashMap::new();
    while responses.len() < 102 {
        let response = read_response(&mut stream).await.unwrap();
        let previous = responses.insert(response.header.request_id, response);
        assert!(previous.is_none(), "one answer per request");
    }
    let mut offsets = Vec::new();
    for index in 0..100u64 {
        let response = &responses[&index];
        assert_eq!(response.header.opcode, opcode::APPEND);
        offsets.push(response.offset());
    }
    // One connection's appends keep their order.
    assert_eq!(offsets[0], commit);
    assert!(offsets.windows(2).all(|pair| pair[1] == pair[0] + 24));
    let status = NodeStatus::decode(responses[&2_000].result().unwrap()).unwrap();
    assert_eq!(status.term, 1);
    // The long-poll read was woken by the first commit.
    let woken = &responses[&1_000];
    let entries = data_entries(commit, woken);
    assert!(!entries.is_empty());
    assert_eq!(entries[0], (commit, 0u64.to_le_bytes().to_vec()));
    let (read_commit, _) = read_payloads(woken);
    assert!(read_commit > commit);

    // Read everything back over the wire.
    let end = offsets[99] + 24;
    let mut offset = commit;
    let mut payloads = Vec::new();
    while offset < end {
        stream.write_all(&read(offset, 512, 0, 7)).await.unwrap();
        let response = read_response(&mut stream).await.unwrap();
        let entries = data_entries(offset, &response);
        let (_, len) = read_payloads(&response);
        assert!(len <= 512);
        offset += len;
        payloads.extend(entries.into_iter().map(|(_, payload)| payload));
    }
    let expected: Vec<Vec<u8>> = (0..100u64).map(|i| i.to_le_bytes().to_vec()).collect();
    assert_eq!(payloads, expected);
    node.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_answered_and_the_connection_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let mut stream = connect(&node).await;

    // Unknown opcode.
    let unknown = FrameHeader {
        body_len: 3,
        opcode: 99,
        aux: 0,
        request_id: 41,
    };
    let mut bytes = unknown.encode().to_vec();
    bytes.extend_from_slice(b"abc");
    // A read with a short body, an append with unknown flags.
    let short_read = FrameHeader {
        body_len: 4,
        opcode: opcode::READ,
        aux: 0,
        request_id: 42,
    };
    bytes.extend_from_slice(&short_read.encode());
    bytes.extend_from_slice(&[0; 4]);
    let odd_append = FrameHeader {
        body_len: 1,
        opcode: opcode::APPEND,
        aux: 0x80,
        request_id: 43,
    };
    bytes.extend_from_slice(&odd_append.encode());
    bytes.push(1);
    // An entry one byte too large (the frame itself is acceptable).
    bytes.extend(append(&vec![5u8; MAX_ENTRY as usize + 1], 44));
    stream.write_all(&bytes).await.unwrap();
    let mut answers = HashMap::new();
    for _ in 0..4 {
        let response = read_response(&mut stream).await.unwrap();
        answers.insert(response.header.request_id, response);
    }
    assert_eq!(answers[&41].header.opcode, 99);
    for id in [41, 42, 43] {
        assert!(
            matches!(answers[&id].result(), Err(ServerError::BadRequest { .. })),
            "{id}: {:?}",
            answers[&id].result()
        );
    }
    assert_eq!(
        answers[&44].result(),
        Err(ServerError::TooLarge { max: MAX_ENTRY })
    );

    // Still usable.
    stream.write_all(&append(b"fine", 45)).await.unwrap();
    let response = read_response(&mut stream).await.unwrap();
    assert_eq!(response.header.request_id, 45);
    let offset = response.offset();

    // Typed read errors.
    let commit = node.commit_offset();
    stream
        .write_all(&read(commit + 100, 100, 0, 46))
        .await
        .unwrap();
    let response = read_response(&mut stream).await.unwrap();
    assert_eq!(
        response.result(),
        Err(ServerError::OutOfRange { end: commit })
    );
    stream.write_all(&read(offset, 100, 0, 47)).await.unwrap();
    let response = read_response(&mut stream).await.unwrap();
    assert_eq!(
        data_entries(offset, &response),
        vec![(offset, b"fine".to_vec())]
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_malformed_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let mut healthy = connect(&node).await;
    status(&mut healthy, 1).await;

    // Non-zero reserved bytes: answered BadRequest, then closed.
    let mut garbage = connect(&node).await;
    let mut header = frame(Request::Status, 77);
    header[6] = 0xff;
    garbage.write_all(&header).await.unwrap();
    let response = read_response(&mut garbage).await.unwrap();
    assert_eq!(response.header.request_id, 77);
    assert!(matches!(
        response.result(),
        Err(ServerError::BadRequest { .. })
    ));
    assert!(read_response(&mut garbage).await.is_none(), "closed");

    // An oversize append frame: TooLarge, then closed.
    let mut oversize = connect(&node).await;
    let huge = FrameHeader {
        body_len: 1 << 30,
        opcode: opcode::APPEND,
        aux: 0,
        request_id: 78,
    };
    oversize.write_all(&huge.encode()).await.unwrap();
    let response = read_response(&mut oversize).await.unwrap();
    assert_eq!(response.header.request_id, 78);
    assert_eq!(
        response.result(),
        Err(ServerError::TooLarge { max: MAX_ENTRY })
    );
    assert!(read_response(&mut oversize).await.is_none(), "closed");

    // Random bytes.
    let mut noise = connect(&node).await;
    noise.write_all(&[0xa5; 64]).await.unwrap();
    let response = read_response(&mut noise).await.unwrap();
    assert!(response.result().is_err());
    assert!(read_response(&mut noise).await.is_none(), "closed");

    // The healthy connection never noticed.
    healthy.write_all(&append(b"still here", 2)).await.unwrap();
    let response = read_response(&mut healthy).await.unwrap();
    assert_eq!(response.header.request_id, 2);
    response.offset();
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_frame_harms_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let mut other = connect(&node).await;
    for _ in 0..20 {
        let mut vanishing = connect(&node).await;
        let whole = append(&[9u8; 1000], 5);
        vanishing.write_all(&whole[..500]).await.unwrap();
        drop(vanishing);
        // Half a header, too.
        let mut vanishing = connect(&node).await;
        vanishing.write_all(&whole[..7]).await.unwrap();
        drop(vanishing);
        // And a client that leaves with appends and a long-poll in flight.
        let mut leaving = connect(&node).await;
        let mut bytes = read(node.commit_offset(), 100, 10_000, 1);
        bytes.extend(append(b"left", 2));
        leaving.write_all(&bytes).await.unwrap();
        drop(leaving);
    }
    let before = status(&mut other, 1).await;
    other.write_all(&append(b"ok", 2)).await.unwrap();
    let response = read_response(&mut other).await.unwrap();
    // Appends of the leaving clients may still land around it.
    assert!(response.offset() >= before.commit_offset);
    // No data from the half-sent frames.
    let mut offset = 0;
    let mut payloads = Vec::new();
    while offset < node.commit_offset() {
        other.write_all(&read(offset, 1 << 16, 0, 3)).await.unwrap();
        let response = read_response(&mut other).await.unwrap();
        payloads.extend(data_entries(offset, &response));
        offset += read_payloads(&response).1;
    }
    assert!(payloads
        .iter()
        .all(|(_, payload)| payload == b"left" || payload == b"ok"));
    assert_eq!(
        payloads
            .iter()
            .filter(|(_, payload)| payload == b"ok")
            .count(),
        1
    );
    node.shutdown().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_politely() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |config| config.limits.max_connections = 2).await;
    let mut first = connect(&node).await;
    let mut second = connect(&node).await;
    status(&mut first, 1).await;
    status(&mut second, 1).await;
    let mut third = connect(&node).await;
    let response = read_response(&mut third).await.unwrap();
    assert_eq!(response.header.request_id, 0);
    assert_eq!(response.result(), Err(ServerError::Busy));
    assert!(read_response(&mut third).await.is_none());
    // A slot frees when a connection closes.
    drop(first);
    let mut retry = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut stream = connect(&node).await;
        stream.write_all(&frame(Request::Status, 9)).await.unwrap();
        let response = read_response(&mut stream).await.unwrap();
        if response.result().is_ok() {
            retry = Some(stream);
            break;
        }
    }
    assert!(retry.is_some(), "a freed slot is reused");
    node.shutdown().await;
}

#[tokio::test]
async fn in_flight_bounds_apply_backpressure_without_losing_answers() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |config| {
        config.limits.max_in_flight_requests = 4;
        config.limits.max_pending_appends = 8;
    })
    .await;
    let mut stream = connect(&node).await;
    let mut bytes = Vec::new();
    for index in 0..500u64 {
        bytes.extend(append(&index.to_le_bytes(), index));
    }
    let (mut reader, mut writer) = stream.split();
    let send = async {
        writer.write_all(&bytes).await.unwrap();
    };
    let receive = async {
        let mut seen = 0;
        let mut last = 0;
        while seen < 500 {
            let mut header = [0u8; FRAME_HEADER_LEN];
            reader.read_exact(&mut header).await.unwrap();
            let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
            let mut body = vec![0u8; header.body_len as usize];
            reader.read_exact(&mut body).await.unwrap();
            assert_eq!(header.aux, STATUS_OK);
            let offset = u64::from_le_bytes(body.try_into().unwrap());
            assert!(offset > last);
            last = offset;
            seen += 1;
        }
    };
    tokio::join!(send, receive);
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_answers_in_flight_appends_then_closes() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    let mut stream = connect(&node).await;
    let mut bytes = Vec::new();
    for index in 0..50u64 {
        bytes.extend(append(&index.to_le_bytes(), index));
    }
    stream.write_all(&bytes).await.unwrap();
    // Wait until all are read (the first answer proves the reader runs).
    let first = read_response(&mut stream).await.unwrap();
    first.result().unwrap();
    node.shutdown().await;
    let mut answered = 1;
    while let Some(response) = read_response(&mut stream).await {
        match response.result() {
            Ok(_) | Err(ServerError::ShuttingDown) => answered += 1,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert!(answered >= 1);
    assert!(TcpStream::connect(node.local_addr().unwrap())
        .await
        .is_err());
}

#[tokio::test]
async fn random_frames_never_hurt_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), |_| {}).await;
    // A fixed-seed xorshift: reproducible, no dependency.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..60 {
        let mut stream = connect(&node).await;
        let mut bytes = Vec::new();
        for _ in 0..(next() % 4 + 1) {
            let body_len = (next() % u64::from(MAX_ENTRY * 2)) as u32;
            let mut header = FrameHeader {
                body_len: if next() % 4 == 0 {
                    body_len
                } else {
                    body_len % 64
                },
                opcode: (next() % 6) as u8,
                aux: (next() % 3) as u8,
                request_id: next(),
            }
            .encode();
            if next() % 8 == 0 {
                header[6] = next() as u8 | 1;
            }
            bytes.extend_from_slice(&header);
            let body_len = u32::from_le_bytes(header[0..4].try_into().unwrap());
            let sent = (body_len as u64).min(next() % 8192);
            bytes.extend((0..sent).map(|_| next() as u8));
        }
        let _ = stream.write_all(&bytes).await;
        if next() % 2 == 0 {
            // Read whatever comes back until the node closes or goes quiet.
            let mut sink = vec![0u8; 65536];
            loop {
                match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut sink)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
            }
        }
    }
    let mut healthy = connect(&node).await;
    let before = status(&mut healthy, 1).await;
    healthy.write_all(&append(b"alive", 2)).await.unwrap();
    let response = read_response(&mut healthy).await.unwrap();
    assert!(response.offset() >= before.commit_offset);
    node.shutdown().await;
}

fn append_once(tag: ProducerTag, retry: bool, payload: &[u8], request_id: u64) -> Vec<u8> {
    frame(
        Request::AppendOnce {
            producer: tag,
            retry,
            payload,
            no_wait: false,
        },
        request_id,
    )
}

/// The same (producer, sequence) sent again, in the same write batch or
/// later, after a restart too, is answered with the first copy's offset and
/// appended once; the stored entry carries the envelope and the flag.
#[tokio::test]
async fn a_producer_sequence_is_appended_once_even_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let tag = ProducerTag {
        producer_id: 0xfeed,
        sequence: 1,
    };
    let node = start(dir.path(), |_| {}).await;
    let mut stream = connect(&node).await;
    // Pipelined: both are likely in one write batch.
    let mut frames = append_once(tag, false, b"once", 1);
    frames.extend(append_once(tag, true, b"once", 2));
    stream.write_all(&frames).await.unwrap();
    let first = read_response(&mut stream).await.unwrap().offset();
    let second = read_response(&mut stream).await.unwrap().offset();
    assert_eq!(first, second, "the retry got the first copy's offset");
    // A retry of a sequence this producer never sent is appended: the table
    // has seen the whole log, so it knows there is no copy.
    let other = ProducerTag { sequence: 2, ..tag };
    stream
        .write_all(&append_once(other, true, b"twice?", 3))
        .await
        .unwrap();
    let other_offset = read_response(&mut stream).await.unwrap().offset();
    assert!(other_offset > first);

    node.shutdown().await;
    let node = start(dir.path(), |_| {}).await;
    let mut stream = connect(&node).await;
    // Rebuilt from the log at restart.
    stream
        .write_all(&append_once(tag, true, b"once", 4))
        .await
        .unwrap();
    assert_eq!(read_response(&mut stream).await.unwrap().offset(), first);
    stream.write_all(&read(0, 1 << 20, 0, 5)).await.unwrap();
    let response = read_response(&mut stream).await.unwrap();
    let body = &response.result().unwrap()[READ_RESPONSE_PREFIX_LEN..];
    let mut tags = Vec::new();
    for entry in EntryIter::new(body, 0, u32::MAX) {
        let entry = entry.unwrap();
        if entry.header.kind != EntryKind::Data {
            continue;
        }
        // What a raw reader sees: flag bit 0, and the envelope first.
        assert_eq!(entry.header.flags, ENTRY_FLAG_PRODUCER);
        let (found, user) = ProducerTag::split(entry.payload).unwrap();
        tags.push((entry.offset, found, user.to_vec()));
    }
    assert_eq!(
        tags,
        [
            (first, tag, b"once".to_vec()),
            (other_offset, other, b"twice?".to_vec())
        ]
    );
    node.shutdown().await;
}
