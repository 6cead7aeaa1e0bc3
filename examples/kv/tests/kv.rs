//! Two KV instances against a real node (embedded `loglogd::Node`, real
//! files and fsync, TCP on a free port).

use loglog_kv::{Command, Kv};
use loglogd::{Config, Node};

async fn start_node(dir: &std::path::Path) -> (Node, String) {
    let mut config = Config::new(dir.join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start(config).await.unwrap();
    let addr = node.local_addr().unwrap().to_string();
    (node, addr)
}

#[tokio::test]
async fn two_instances_converge_and_a_restart_resumes_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr) = start_node(dir.path()).await;
    let a = Kv::open(&[&addr], &dir.path().join("a"), 0).await.unwrap();
    let b = Kv::open(&[&addr], &dir.path().join("b"), 0).await.unwrap();

    a.put(b"x", b"1").await.unwrap();
    // b has not applied anything yet: a local read misses it, a
    // linearizable one sees it.
    assert_eq!(b.get(b"x", false).await.unwrap(), None);
    assert_eq!(b.get(b"x", true).await.unwrap().as_deref(), Some(&b"1"[..]));
    // Compare-and-set: the log decides, the same on both.
    assert!(b
        .compare_and_set(b"x", Some(b"1"), Some(b"2"))
        .await
        .unwrap());
    assert!(!a
        .compare_and_set(b"x", Some(b"1"), Some(b"3"))
        .await
        .unwrap());
    assert!(a.compare_and_set(b"y", None, Some(b"new")).await.unwrap());
    assert!(a.delete(b"y").await.unwrap());
    assert!(!b.delete(b"y").await.unwrap());
    // Many commands in one batch entry.
    let outcomes = a
        .write(&[
            Command::Put {
                key: b"k1".to_vec(),
                value: b"v1".to_vec(),
            },
            Command::Put {
                key: b"k2".to_vec(),
                value: b"v2".to_vec(),
            },
            Command::CompareAndSet {
                key: b"k1".to_vec(),
                expected: Some(b"v1".to_vec()),
                new: None,
            },
        ])
        .await
        .unwrap();
    assert_eq!(outcomes, vec![true, true, true]);
    let dump_a = a.dump().await.unwrap();
    let dump_b = b.dump().await.unwrap();
    assert_eq!(dump_a, dump_b);
    assert_eq!(dump_a.len(), 2);
    assert_eq!(a.applied_commands().await, b.applied_commands().await);
    let applied = b.applied_commands().await;

    // b saves a snapshot, then applies more and crashes before the next one.
    b.save_snapshot().await.unwrap();
    let snapshot_at = b.snapshot_position().await;
    a.put(b"z", b"after").await.unwrap();
    b.sync().await.unwrap();
    assert_eq!(b.applied_commands().await, applied + 1);
    drop(b);
    let b = Kv::open(&[&addr], &dir.path().join("b"), 0).await.unwrap();
    assert_eq!(b.position().await, snapshot_at, "resumed from its snapshot");
    assert_eq!(b.applied_commands().await, applied);
    b.sync().await.unwrap();
    // Nothing applied twice, nothing skipped.
    assert_eq!(b.applied_commands().await, applied + 1);
    assert_eq!(b.dump().await.unwrap(), a.dump().await.unwrap());
}
