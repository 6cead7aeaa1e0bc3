//! The Prometheus endpoint, scraped over real HTTP from a real node that
//! served real appends, reads and errors over TCP.

mod common;

use std::time::{Duration, Instant};

use common::free_addr;
use loglog::Client;
use loglog_proto::producer::PRODUCER_ENVELOPE_LEN;
use loglogd::{Config, Node, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn scrape(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.to_string(), body.to_string())
}

/// The value of the sample line that starts with `series ` (exact name and
/// labels).
fn sample(text: &str, series: &str) -> f64 {
    find_sample(text, series).unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

fn find_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test]
async fn metrics_endpoint_reports_the_node_s_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let node = Node::start(config).await.unwrap();
    let metrics_addr = node.metrics_addr().expect("metrics are on");
    let client = Client::connect(&[node.local_addr().unwrap().to_string()])
        .await
        .unwrap();

    for index in 0..20u32 {
        client
            .append(format!("entry {index}").into_bytes())
            .await
            .unwrap();
    }
    let page = client.read(0, 1024 * 1024, Duration::ZERO).await.unwrap();
    assert!(page.entries().count() > 0);
    // Past the commit offset: an OutOfRange error answer.
    assert!(client.read(1 << 40, 1024, Duration::ZERO).await.is_err());

    let (head, text) = scrape(metrics_addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: application/openmetrics-text"));
    assert_eq!(sample(&text, "loglog_appends_total"), 20.0);
    // Payload bytes as stored: the client's 16-byte producer envelope too.
    assert_eq!(
        sample(&text, "loglog_append_bytes_total"),
        (0..20)
            .map(|i: u32| (PRODUCER_ENVELOPE_LEN + format!("entry {i}").len()) as f64)
            .sum::<f64>()
    );
    assert_eq!(sample(&text, "loglog_reads_total"), 1.0);
    assert!(sample(&text, "loglog_read_bytes_total") > 0.0);
    assert_eq!(
        sample(&text, "loglog_errors_total{error=\"out_of_range\"}"),
        1.0
    );
    assert_eq!(sample(&text, "loglog_connections"), 1.0);
    assert_eq!(sample(&text, "loglog_commit_latency_seconds_count"), 20.0);
    assert!(sample(&text, "loglog_commit_latency_seconds_sum") > 0.0);
    let syncs = sample(&text, "loglog_fsync_latency_seconds_count");
    assert!((1.0..=21.0).contains(&syncs), "{syncs} fsyncs");
    assert_eq!(sample(&text, "loglog_role{role=\"leader\"}"), 1.0);
    assert_eq!(sample(&text, "loglog_role{role=\"follower\"}"), 0.0);
    let status = node.status();
    assert_eq!(sample(&text, "loglog_term"), status.term as f64);
    assert_eq!(
        sample(&text, "loglog_commit_offset"),
        status.commit_offset as f64
    );
    assert_eq!(sample(&text, "loglog_end_offset"), status.end_offset as f64);
    assert_eq!(sample(&text, "loglog_start_offset"), 0.0);
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );

    let (head, _) = scrape(metrics_addr, "/other").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    node.shutdown().await;
}

#[tokio::test]
async fn metrics_are_off_unless_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::new(dir.path().join("data"));
    config.listen = None;
    let node = Node::start(config).await.unwrap();
    assert_eq!(node.metrics_addr(), None);
    node.shutdown().await;
}

fn lag_series(follower: u64) -> String {
    format!("loglog_follower_lag_bytes{{follower=\"{follower}\"}}")
}

/// A 3-node cluster: the leader's endpoint has one lag series per follower
/// (none for itself), followers have none; a caught-up follower's lag drops
/// to 0 and a stopped one's covers at least every byte appended since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_each_follower_s_replication_lag() {
    let root = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for mut config in common::embedded_cluster_configs(root.path(), 3) {
        config.metrics_listen = Some(free_addr());
        nodes.push(Node::start(config).await.unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        if let Some(leader) = nodes.iter().position(|n| n.status().role == Role::Leader) {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let leader_id = nodes[leader].status().node_id;
    let (kept, stopped) = ((leader + 1) % 3, (leader + 2) % 3);
    let (kept_id, stopped_id) = (
        nodes[kept].status().node_id,
        nodes[stopped].status().node_id,
    );
    let leader_metrics = nodes[leader].metrics_addr().unwrap();

    for index in 0..50u32 {
        nodes[leader]
            .append(format!("entry {index}").into_bytes())
            .await
            .unwrap();
    }
    let end = nodes[leader].status().end_offset;
    for node in &nodes {
        assert!(node.wait_for_commit(end).await >= end);
    }
    // Replication is quiet now: each follower's ack of the last entry
    // reaches the leader and its lag drops to 0.
    loop {
        let (_, text) = scrape(leader_metrics, "/metrics").await;
        assert_eq!(find_sample(&text, &lag_series(leader_id)), None, "{text}");
        let lags = [kept_id, stopped_id].map(|id| sample(&text, &lag_series(id)));
        for lag in lags {
            assert!((0.0..=end as f64).contains(&lag), "lag {lag}, end {end}");
        }
        if lags == [0.0, 0.0] {
            break;
        }
        assert!(Instant::now() < deadline, "lags stay {lags:?}:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for follower in [kept, stopped] {
        let metrics = nodes[follower].metrics_addr().unwrap();
        let (_, text) = scrape(metrics, "/metrics").await;
        assert!(!text.contains("loglog_follower_lag_bytes{"), "{text}");
        assert_eq!(sample(&text, "loglog_role{role=\"follower\"}"), 1.0);
    }

    nodes[stopped].shutdown().await;
    let mut appended = 0u64;
    for index in 0..50u32 {
        let payload = format!("after the stop {index}").into_bytes();
        appended += 16 + payload.len() as u64;
        nodes[leader].append(payload).await.unwrap();
    }
    let end = nodes[leader].status().end_offset;
    assert!(nodes[kept].wait_for_commit(end).await >= end);
    loop {
        let (_, text) = scrape(leader_metrics, "/metrics").await;
        let stopped_lag = sample(&text, &lag_series(stopped_id));
        assert!(
            (appended as f64..=end as f64).contains(&stopped_lag),
            "stopped follower's lag {stopped_lag}: appended {appended}, end {end}"
        );
        let kept_lag = sample(&text, &lag_series(kept_id));
        if kept_lag == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lag of the running follower stays {kept_lag}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in &nodes {
        node.shutdown().await;
    }
}
