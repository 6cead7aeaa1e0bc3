//! Batches and state-machine followers against a real node (embedded
//! `loglogd::Node` serving TCP on a free port, real files, real fsync).

use std::time::Duration;

use loglog::batch::{self, SubEntry};
use loglog::follower::{ApplyError, Follower, FollowerConfig, FollowerError, StateMachine};
use loglog::{Client, Entry};

mod common;

use common::start_node;

#[tokio::test]
async fn batches_are_one_entry_and_read_back_with_positions() {
    let node = start_node(|_| {}).await;
    let client = Client::connect(&[&node.addr]).await.unwrap();
    let records: Vec<Vec<u8>> = (0..100u32)
        .map(|i| format!("record {i}").into_bytes())
        .chain([Vec::new()])
        .collect();
    let first = client.append_batch(&records).await.unwrap();
    let second = client.append_batch([b"x".as_slice()]).await.unwrap();
    let page = client.read(first, 1 << 20, Duration::ZERO).await.unwrap();
    let entries: Vec<Entry> = page.entries().collect();
    assert_eq!(entries.len(), 2, "one entry per batch");
    assert_eq!(entries[1].offset, second);
    let subs = batch::sub_entries(&entries[0]).unwrap();
    assert_eq!(subs.len(), records.len());
    for (index, (sub, record)) in subs.iter().zip(&records).enumerate() {
        assert_eq!(sub.offset, first);
        assert_eq!(sub.index, index as u32);
        assert_eq!(&sub.payload[..], &record[..]);
    }
    assert_eq!(
        batch::sub_entries(&entries[1]).unwrap(),
        vec![SubEntry {
            offset: second,
            index: 0,
            payload: bytes::Bytes::from_static(b"x")
        }]
    );
    // A plain entry is not a batch: a typed error, not a panic.
    let plain = client.append(&b"plain"[..]).await.unwrap();
    let page = client.read(plain, 1 << 20, Duration::ZERO).await.unwrap();
    let entry = page.entries().next().unwrap();
    assert!(matches!(
        batch::sub_entries(&entry),
        Err(loglog::BatchError::TooShort { len: 5 })
    ));
}

#[tokio::test]
async fn sub_entry_streams_follow_the_log_and_report_non_batches() {
    let node = start_node(|_| {}).await;
    let client = Client::connect(&[&node.addr]).await.unwrap();
    let first = client.append_batch([b"a".as_slice(), b"b"]).await.unwrap();
    let plain = client.append(&b"plain"[..]).await.unwrap();
    let mut stream = client.sub_entries(0);
    let a = stream.next().await.unwrap();
    assert_eq!((a.offset, a.index, &a.payload[..]), (first, 0, &b"a"[..]));
    let b = stream.next().await.unwrap();
    assert_eq!((b.offset, b.index, &b.payload[..]), (first, 1, &b"b"[..]));
    for _ in 0..2 {
        // Stays on the bad entry until told to skip it.
        match stream.next().await {
            Err(loglog::batch::SubEntryError::NotABatch { offset, .. }) => {
                assert_eq!(offset, plain)
            }
            other => panic!("expected NotABatch, got {other:?}"),
        }
    }
    stream.skip_entry();
    let appender = client.clone();
    let later = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        appender.append_batch([b"late".as_slice()]).await.unwrap()
    });
    let late = stream.next().await.unwrap();
    assert_eq!(late.offset, later.await.unwrap());
    assert_eq!((late.index, &late.payload[..]), (0, &b"late"[..]));
}

/// Records every applied offset, in order; the record is its snapshot, so
/// a restored state that applied something twice or skipped something shows.
#[derive(Default)]
struct Recorder {
    applied: Vec<(u64, Vec<u8>)>,
}

impl StateMachine for Recorder {
    fn apply(&mut self, entry: &Entry) -> Result<(), ApplyError> {
        if let Some((last, _)) = self.applied.last() {
            assert!(entry.offset > *last, "entries come in log order, once");
        }
        self.applied.push((entry.offset, entry.payload.to_vec()));
        Ok(())
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (offset, payload) in &self.applied {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
        }
        out
    }

    fn restore(&mut self, mut snapshot: &[u8]) -> Result<(), ApplyError> {
        self.applied.clear();
        while !snapshot.is_empty() {
            if snapshot.len() < 12 {
                return Err("truncated recorder snapshot".into());
            }
            let offset = u64::from_le_bytes(snapshot[..8].try_into()?);
            let len = u32::from_le_bytes(snapshot[8..12].try_into()?) as usize;
            let payload = snapshot
                .get(12..12 + len)
                .ok_or("truncated recorder snapshot")?;
            self.applied.push((offset, payload.to_vec()));
            snapshot = &snapshot[12 + len..];
        }
        Ok(())
    }
}

async fn all_data(client: &Client) -> Vec<(u64, Vec<u8>)> {
    let end = client.end_offset().await.unwrap();
    let mut offset = client.status().await.unwrap().start_offset;
    let mut out = Vec::new();
    while offset < end {
        let page = client.read(offset, 1 << 20, Duration::ZERO).await.unwrap();
        out.extend(page.entries().map(|e| (e.offset, e.payload.to_vec())));
        offset = page.next_offset();
    }
    out
}

fn manual_snapshots() -> FollowerConfig {
    FollowerConfig {
        snapshot_every_entries: 0,
        long_poll: Duration::from_millis(200),
        ..FollowerConfig::default()
    }
}

#[tokio::test]
async fn a_follower_crashing_between_apply_and_snapshot_resumes_exactly_once() {
    let node = start_node(|_| {}).await;
    let client = Client::connect(&[&node.addr]).await.unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    for i in 0..20 {
        client.append(format!("a{i}").into_bytes()).await.unwrap();
    }
    let mut follower =
        Follower::open(state_dir.path(), Recorder::default(), manual_snapshots()).unwrap();
    let end = client.end_offset().await.unwrap();
    follower.catch_up_to(&client, end).await.unwrap();
    assert_eq!(follower.state().applied.len(), 20);
    follower.save_snapshot().unwrap();
    let snapshot_at = follower.position();
    // More entries applied, then a crash before the next snapshot.
    for i in 0..15 {
        client.append(format!("b{i}").into_bytes()).await.unwrap();
    }
    follower
        .catch_up_to(&client, client.end_offset().await.unwrap())
        .await
        .unwrap();
    assert_eq!(follower.state().applied.len(), 35);
    drop(follower);

    let mut follower =
        Follower::open(state_dir.path(), Recorder::default(), manual_snapshots()).unwrap();
    assert_eq!(follower.position(), snapshot_at);
    assert_eq!(
        follower.state().applied.len(),
        20,
        "restored from the snapshot"
    );
    for i in 0..5 {
        client.append(format!("c{i}").into_bytes()).await.unwrap();
    }
    follower
        .catch_up_to(&client, client.end_offset().await.unwrap())
        .await
        .unwrap();
    // Exactly the log's data entries, each once, in order.
    assert_eq!(follower.state().applied, all_data(&client).await);
    assert_eq!(follower.state().applied.len(), 40);
}

#[tokio::test]
async fn periodic_snapshots_and_long_poll_follow_the_tail() {
    let node = start_node(|_| {}).await;
    let client = Client::connect(&[&node.addr]).await.unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let config = FollowerConfig {
        snapshot_every_entries: 3,
        long_poll: Duration::from_secs(5),
        ..FollowerConfig::default()
    };
    let mut follower = Follower::open(state_dir.path(), Recorder::default(), config).unwrap();
    let appender = client.clone();
    let writes = tokio::spawn(async move {
        for i in 0..10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            appender.append(format!("t{i}").into_bytes()).await.unwrap();
        }
    });
    while follower.state().applied.len() < 10 {
        follower
            .poll(&client, Duration::from_secs(5))
            .await
            .unwrap();
    }
    writes.await.unwrap();
    assert!(follower.snapshot_position() > 0, "a snapshot was taken");
    let reopened = Follower::open(
        state_dir.path(),
        Recorder::default(),
        FollowerConfig::default(),
    )
    .unwrap();
    assert_eq!(reopened.position(), follower.snapshot_position());
}

#[tokio::test]
async fn a_trim_below_the_snapshot_is_survived_and_above_it_is_a_typed_error() {
    let node = start_node(|config| config.segment_size = 4096).await;
    let client = Client::connect(&[&node.addr]).await.unwrap();
    let snapshotted = tempfile::tempdir().unwrap();
    let fresh = tempfile::tempdir().unwrap();
    for i in 0..200 {
        client.append(vec![i as u8; 100]).await.unwrap();
    }
    let mut follower =
        Follower::open(snapshotted.path(), Recorder::default(), manual_snapshots()).unwrap();
    follower
        .catch_up_to(&client, client.end_offset().await.unwrap())
        .await
        .unwrap();
    follower.save_snapshot().unwrap();
    let position = follower.position();
    drop(follower);
    let start = node.node.trim_prefix(position).await.unwrap();
    assert!(start > 0 && start <= position, "trimmed to {start}");
    for i in 0..10 {
        client
            .append(format!("after{i}").into_bytes())
            .await
            .unwrap();
    }
    // Restarted from its snapshot: the trim is below it.
    let mut follower =
        Follower::open(snapshotted.path(), Recorder::default(), manual_snapshots()).unwrap();
    follower
        .catch_up_to(&client, client.end_offset().await.unwrap())
        .await
        .unwrap();
    assert_eq!(follower.state().applied.len(), 210);
    // A follower starting from 0 fell below the log's start.
    let mut behind = Follower::open(fresh.path(), Recorder::default(), manual_snapshots()).unwrap();
    match behind.poll(&client, Duration::ZERO).await {
        Err(FollowerError::Trimmed {
            position: 0,
            start: got,
        }) => assert_eq!(got, start),
        other => panic!("expected Trimmed, got {other:?}"),
    }
}
