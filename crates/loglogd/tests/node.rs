//! Library-level tests of an embedded node: real files, real fsync.

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use loglog_proto::entry::{EntryIter, EntryKind, ENTRY_HEADER_LEN};
use loglog_proto::segment::segment_file_name;
use loglogd::{Config, Node, Role, ServerError, StartError};

fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir.join("data"));
    config.listen = None;
    config
}

/// Every entry of the committed log as (offset, term, kind, payload).
async fn whole_log(node: &Node) -> Vec<(u64, u32, EntryKind, Vec<u8>)> {
    let mut entries = Vec::new();
    let mut offset = node.status().start_offset;
    loop {
        let chunk = node.read(offset, 64 * 1024, Duration::ZERO).await.unwrap();
        if chunk.bytes.is_empty() {
            return entries;
        }
        for entry in EntryIter::new(&chunk.bytes, chunk.offset, u32::MAX) {
            let entry = entry.unwrap();
            entries.push((
                entry.offset,
                entry.header.term,
                entry.header.kind,
                entry.payload.to_vec(),
            ));
        }
        offset = chunk.next_offset();
    }
}

#[tokio::test]
async fn appends_are_read_back_after_the_term_noop() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    // The no-op of term 1 is the first entry, at offset 0.
    let first = node.append(b"one".to_vec()).await.unwrap();
    assert_eq!(first, ENTRY_HEADER_LEN as u64);
    let second = node.append(&b"two"[..]).await.unwrap();
    assert_eq!(second, first + ENTRY_HEADER_LEN as u64 + 3);
    assert_eq!(node.commit_offset(), second + ENTRY_HEADER_LEN as u64 + 3);

    let log = whole_log(&node).await;
    assert_eq!(
        log,
        vec![
            (0, 1, EntryKind::NoOp, vec![]),
            (first, 1, EntryKind::Data, b"one".to_vec()),
            (second, 1, EntryKind::Data, b"two".to_vec()),
        ]
    );
    let chunk = node.read(first, 1, Duration::ZERO).await.unwrap();
    // At least one whole entry even when max_bytes is smaller.
    let data: Vec<_> = chunk.data_entries().collect();
    assert_eq!(data, vec![(first, &b"one"[..])]);
    node.shutdown().await;
}

#[tokio::test]
async fn status_reports_the_single_leader() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    node.append(vec![7u8; 100]).await.unwrap();
    let status = node.status();
    assert_eq!(status.node_id, 1);
    assert_eq!(status.leader_id, 1);
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.term, 1);
    assert_eq!(status.start_offset, 0);
    assert_eq!(status.segment_count, 1);
    assert_eq!(status.commit_offset, 16 + 116);
    assert_eq!(status.end_offset, status.commit_offset);
    let metrics = node.metrics();
    assert_eq!(metrics.entries_written, 1);
    assert_eq!(metrics.write_batches, 1);
    assert!(metrics.syncs >= 1);
    node.shutdown().await;
}

#[tokio::test]
async fn long_poll_wakes_up_on_commit_and_times_out_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let commit = node.commit_offset();

    // Nothing arrives: an empty answer after about the wait.
    let started = Instant::now();
    let chunk = node
        .read(commit, 4096, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(chunk.bytes.is_empty());
    assert_eq!(chunk.commit_offset, commit);
    assert!(started.elapsed() >= Duration::from_millis(190));

    // An append during the wait wakes the reader at once.
    let reader = {
        let node = node.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let chunk = node.read(commit, 4096, Duration::from_secs(20)).await;
            (chunk, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let offset = node.append(b"wake up".to_vec()).await.unwrap();
    assert_eq!(offset, commit);
    let (chunk, waited) = reader.await.unwrap();
    let chunk = chunk.unwrap();
    assert!(waited < Duration::from_secs(10), "woken, not timed out");
    let data: Vec<_> = chunk.data_entries().collect();
    assert_eq!(data, vec![(offset, &b"wake up"[..])]);
    node.shutdown().await;
}

#[tokio::test]
async fn append_nowait_answers_with_the_offset_and_commits_soon() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut offsets = Vec::new();
    for index in 0..50u32 {
        offsets.push(
            node.append_nowait(index.to_le_bytes().to_vec())
                .await
                .unwrap(),
        );
    }
    assert!(offsets.windows(2).all(|pair| pair[1] == pair[0] + 20));
    let end = offsets.last().unwrap() + 20;
    assert_eq!(node.wait_for_commit(end).await, end);
    let log = whole_log(&node).await;
    assert_eq!(log.len(), 51);
    for (index, entry) in log[1..].iter().enumerate() {
        assert_eq!(entry.0, offsets[index]);
        assert_eq!(entry.3, (index as u32).to_le_bytes());
    }
    node.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_the_data_and_bumps_the_term() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let offset = node.append(b"survives".to_vec()).await.unwrap();
    let end = node.commit_offset();
    node.shutdown().await;
    // Appends after shutdown are refused.
    assert_eq!(
        node.append(b"late".to_vec()).await,
        Err(ServerError::ShuttingDown)
    );

    let node = Node::start(config(dir.path())).await.unwrap();
    assert_eq!(node.status().term, 2);
    let log = whole_log(&node).await;
    assert_eq!(log[1], (offset, 1, EntryKind::Data, b"survives".to_vec()));
    // The new term's no-op follows the old log.
    assert_eq!(log[2], (end, 2, EntryKind::NoOp, vec![]));
    let next = node.append(b"term two".to_vec()).await.unwrap();
    node.shutdown().await;

    let node = Node::start(config(dir.path())).await.unwrap();
    assert_eq!(node.status().term, 3);
    let log = whole_log(&node).await;
    assert_eq!(log[3], (next, 2, EntryKind::Data, b"term two".to_vec()));
    assert_eq!(log.len(), 5);
    node.shutdown().await;
}

#[tokio::test]
async fn concurrent_appenders_get_distinct_offsets_in_one_order() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut tasks = Vec::new();
    for task in 0..32u32 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for index in 0..50u32 {
                let mut payload = task.to_le_bytes().to_vec();
                payload.extend_from_slice(&index.to_le_bytes());
                mine.push((node.append(payload.clone()).await.unwrap(), payload));
            }
            mine
        }));
    }
    let mut acknowledged = Vec::new();
    for task in tasks {
        let mine = task.await.unwrap();
        // One appender's entries land in the order it appended them.
        assert!(mine.windows(2).all(|pair| pair[0].0 < pair[1].0));
        acknowledged.extend(mine);
    }
    let log = whole_log(&node).await;
    assert_eq!(log.len(), 1 + 32 * 50);
    let offsets: HashSet<u64> = acknowledged.iter().map(|(offset, _)| *offset).collect();
    assert_eq!(offsets.len(), acknowledged.len());
    for (offset, payload) in &acknowledged {
        let entry = log.iter().find(|entry| entry.0 == *offset).unwrap();
        assert_eq!(&entry.3, payload);
    }
    node.shutdown().await;
}

#[tokio::test]
async fn read_errors_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.segment_size = 4096;
    config.max_entry_size = 1000;
    let node = Node::start(config).await.unwrap();

    assert_eq!(
        node.append(vec![0u8; 1001]).await,
        Err(ServerError::TooLarge { max: 1000 })
    );
    assert_eq!(
        node.append_nowait(vec![0u8; 1001]).await,
        Err(ServerError::TooLarge { max: 1000 })
    );
    let mut last = 0;
    for _ in 0..40 {
        last = node.append(vec![1u8; 1000]).await.unwrap();
    }
    let commit = node.commit_offset();
    assert_eq!(commit, last + 1016);
    assert_eq!(
        node.read(commit + 16, 100, Duration::ZERO).await,
        Err(ServerError::OutOfRange { end: commit })
    );
    assert!(matches!(
        node.read(17, 100, Duration::ZERO).await,
        Err(ServerError::BadRequest { .. })
    ));
    // Trimming never passes the commit offset.
    assert_eq!(
        node.trim_prefix(commit + 1).await,
        Err(ServerError::OutOfRange { end: commit })
    );
    assert!(node.status().segment_count > 2);
    let start = node.trim_prefix(last).await.unwrap();
    assert!(start > 0 && start <= last);
    assert_eq!(node.status().start_offset, start);
    assert_eq!(
        node.read(0, 100, Duration::ZERO).await,
        Err(ServerError::Trimmed { start })
    );
    let chunk = node.read(start, 100, Duration::ZERO).await.unwrap();
    assert_eq!(chunk.offset, start);
    node.shutdown().await;

    // The trim is durable.
    let mut config = self::config(dir.path());
    config.segment_size = 4096;
    config.max_entry_size = 1000;
    let node = Node::start(config).await.unwrap();
    assert_eq!(node.status().start_offset, start);
    node.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    match Node::start(config(dir.path())).await {
        Err(StartError::Locked { .. }) => {}
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("two nodes on one data directory"),
    }
    node.shutdown().await;
    // Released by shutdown.
    let node = Node::start(config(dir.path())).await.unwrap();
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_formats_and_damage_refuse_to_start_and_keep_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    node.append(b"precious".to_vec()).await.unwrap();
    node.shutdown().await;
    let data = dir.path().join("data");
    let state_path = data.join(loglogd::NODE_STATE_FILE);
    let segment_path = data.join(loglogd::LOG_DIR).join(segment_file_name(0));
    let state = std::fs::read(&state_path).unwrap();
    let segment = std::fs::read(&segment_path).unwrap();

    // A segment header of another format version.
    let mut future = segment.clone();
    future[8] = 9;
    let crc = crc32c(&future[..28]);
    future[28..32].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&segment_path, &future).unwrap();
    let error = Node::start(config(dir.path())).await.err().unwrap();
    assert!(matches!(error, StartError::Storage(_)), "{error}");
    assert!(error.to_string().contains("version"), "{error}");
    assert_eq!(std::fs::read(&segment_path).unwrap(), future);

    // A damaged segment header.
    let mut damaged = segment.clone();
    damaged[17] ^= 0xff;
    std::fs::write(&segment_path, &damaged).unwrap();
    let error = Node::start(config(dir.path())).await.err().unwrap();
    assert!(matches!(error, StartError::Storage(_)), "{error}");
    assert_eq!(std::fs::read(&segment_path).unwrap(), damaged);
    std::fs::write(&segment_path, &segment).unwrap();

    // A node state of another version (framed by the state file).
    let mut payload = loglog_storage::state_file::load(&state_path)
        .unwrap()
        .unwrap();
    payload[0] = 2;
    loglog_storage::state_file::save(&state_path, &payload).unwrap();
    let error = Node::start(config(dir.path())).await.err().unwrap();
    assert!(
        matches!(error, StartError::UnsupportedFormat { found: 2, .. }),
        "{error}"
    );

    // Segments without a node state.
    std::fs::remove_file(&state_path).unwrap();
    let error = Node::start(config(dir.path())).await.err().unwrap();
    assert!(matches!(error, StartError::MissingState { .. }), "{error}");

    // Put it back: everything is still there; the term moves on.
    std::fs::write(&state_path, &state).unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    assert_eq!(node.status().term, 2);
    let log = whole_log(&node).await;
    assert_eq!(log[1].3, b"precious");
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_appends() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let mut tasks = Vec::new();
    for index in 0..200u32 {
        let node = node.clone();
        tasks.push(tokio::spawn(async move {
            node.append(index.to_le_bytes().to_vec()).await
        }));
    }
    tokio::task::yield_now().await;
    node.shutdown().await;
    let mut acknowledged = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(offset) => acknowledged.push(offset),
            Err(ServerError::ShuttingDown) => {}
            Err(other) => panic!("unexpected {other}"),
        }
    }
    // Every acknowledged append is there after a restart.
    let node = Node::start(config(dir.path())).await.unwrap();
    let log = whole_log(&node).await;
    let offsets: HashSet<u64> = log.iter().map(|entry| entry.0).collect();
    for offset in acknowledged {
        assert!(offsets.contains(&offset));
    }
    node.shutdown().await;
}

fn crc32c(bytes: &[u8]) -> u32 {
    // CRC32C (Castagnoli), bitwise: test-only, avoids a dependency.
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn a_smaller_max_entry_size_after_restart_keeps_larger_entries() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    let big = node.append(vec![3u8; 10_000]).await.unwrap();
    node.shutdown().await;

    let mut smaller = config(dir.path());
    smaller.max_entry_size = 100;
    let node = Node::start(smaller).await.unwrap();
    let log = whole_log(&node).await;
    let (offset, term, kind, payload) = &log[1];
    assert_eq!((*offset, *term, *kind), (big, 1, EntryKind::Data));
    assert!(payload.len() == 10_000 && payload.iter().all(|byte| *byte == 3));
    assert_eq!(
        node.append(vec![0u8; 101]).await,
        Err(ServerError::TooLarge { max: 100 })
    );
    node.append(vec![0u8; 100]).await.unwrap();
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tailing_reader_sees_the_committed_log_in_order_while_appends_run() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    const APPENDERS: u32 = 8;
    const EACH: u32 = 200;
    let tailer = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut offset = 0;
            while seen.len() < (APPENDERS * EACH) as usize {
                let chunk = node
                    .read(offset, 4096, Duration::from_secs(5))
                    .await
                    .unwrap();
                // Never past the commit offset the node answered with.
                assert!(chunk.next_offset() <= chunk.commit_offset);
                seen.extend(chunk.data_entries().map(|(at, data)| (at, data.to_vec())));
                offset = chunk.next_offset();
            }
            seen
        })
    };
    let mut appenders = Vec::new();
    for task in 0..APPENDERS {
        let node = node.clone();
        appenders.push(tokio::spawn(async move {
            for index in 0..EACH {
                let payload = [task.to_le_bytes(), index.to_le_bytes()].concat();
                if index % 2 == 0 {
                    node.append(payload).await.unwrap();
                } else {
                    node.append_nowait(payload).await.unwrap();
                }
            }
        }));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), tailer)
        .await
        .expect("the tailer saw every entry")
        .unwrap();
    let log: Vec<(u64, Vec<u8>)> = whole_log(&node)
        .await
        .into_iter()
        .filter(|entry| entry.2 == EntryKind::Data)
        .map(|entry| (entry.0, entry.3))
        .collect();
    assert_eq!(seen, log);
    node.shutdown().await;
}
