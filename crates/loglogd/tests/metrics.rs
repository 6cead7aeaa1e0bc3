//! The Prometheus endpoint, scraped over real HTTP from a real node that
//! served real appends, reads and errors over TCP.

use std::time::Duration;

use loglog::Client;
use loglog_proto::producer::PRODUCER_ENVELOPE_LEN;
use loglogd::{Config, Node};
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
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
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
