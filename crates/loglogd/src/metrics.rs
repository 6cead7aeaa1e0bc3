//! Prometheus metrics (`--metrics-listen`): counters and histograms updated
//! on the request and sync paths, gauges read from the node at scrape time,
//! served as the text exposition format over HTTP/1.1 (`GET /metrics`).
//!
//! Hot-path updates are single relaxed atomic operations (prometheus-client
//! metrics are atomics behind an `Arc`); nothing is locked per request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::server::until_true;
use crate::Node;

/// Scrapes served at once; more wait in the listen backlog.
const MAX_METRICS_CONNECTIONS: usize = 8;
/// A scrape connection is closed after this, whatever it is doing.
const METRICS_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// Every metric of one node. Cloning shares the same series.
#[derive(Clone)]
pub(crate) struct NodeMetrics {
    registry: Arc<Registry>,
    /// Appends acknowledged (committed, or written for no-wait appends).
    pub appends: Counter,
    /// Payload bytes of append requests received.
    pub append_bytes: Counter,
    /// Reads answered with entries (possibly none after a long-poll).
    pub reads: Counter,
    /// Log bytes sent in read answers.
    pub read_bytes: Counter,
    /// Error answers, by error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Client connections open now.
    pub connections: Gauge,
    /// From an append's arrival to its acknowledgement (commit).
    pub commit_latency: Histogram,
    /// One fdatasync round.
    pub fsync_latency: Histogram,
    term: Gauge,
    role: Family<RoleLabels, Gauge>,
    commit_offset: Gauge,
    end_offset: Gauge,
    start_offset: Gauge,
}

impl NodeMetrics {
    pub(crate) fn new() -> NodeMetrics {
        let mut registry = Registry::with_prefix("loglog");
        // 50 us .. ~1.6 s, doubling: group commit lives in the low buckets.
        let latency_buckets = || exponential_buckets(0.000_05, 2.0, 16);
        let appends = Counter::default();
        let append_bytes = Counter::default();
        let reads = Counter::default();
        let read_bytes = Counter::default();
        let errors = Family::default();
        let connections = Gauge::default();
        let commit_latency = Histogram::new(latency_buckets());
        let fsync_latency = Histogram::new(latency_buckets());
        let term = Gauge::default();
        let role = Family::default();
        let commit_offset = Gauge::default();
        let end_offset = Gauge::default();
        let start_offset = Gauge::default();
        registry.register("appends", "Appends acknowledged", appends.clone());
        registry.register(
            "append_bytes",
            "Payload bytes of append requests received",
            append_bytes.clone(),
        );
        registry.register("reads", "Reads answered", reads.clone());
        registry.register(
            "read_bytes",
            "Log bytes sent in read answers",
            read_bytes.clone(),
        );
        registry.register("errors", "Error answers, by error", errors.clone());
        registry.register(
            "connections",
            "Client connections open now",
            connections.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "From an append's arrival to its acknowledgement",
            commit_latency.clone(),
        );
        registry.register(
            "fsync_latency_seconds",
            "One fdatasync round of the log",
            fsync_latency.clone(),
        );
        registry.register("term", "Current Raft term", term.clone());
        registry.register(
            "role",
            "1 for the node's current role (leader, follower, candidate, learner)",
            role.clone(),
        );
        registry.register(
            "commit_offset",
            "Commit offset: readers never pass it",
            commit_offset.clone(),
        );
        registry.register("end_offset", "End of the written log", end_offset.clone());
        registry.register(
            "start_offset",
            "Start of the log (below it: trimmed)",
            start_offset.clone(),
        );
        NodeMetrics {
            registry: Arc::new(registry),
            appends,
            append_bytes,
            reads,
            read_bytes,
            errors,
            connections,
            commit_latency,
            fsync_latency,
            term,
            role,
            commit_offset,
            end_offset,
            start_offset,
        }
    }

    /// Counts one error answer.
    pub(crate) fn error(&self, error: &loglog_proto::wire::ServerError) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.kind_name(),
            })
            .inc();
    }

    /// The exposition text, with the gauges read from `node` now.
    pub(crate) fn render(&self, node: &Node) -> String {
        let status = node.status();
        self.term.set(status.term as i64);
        for role in ["leader", "follower", "candidate", "learner"] {
            self.role.get_or_create(&RoleLabels { role }).set(0);
        }
        self.role
            .get_or_create(&RoleLabels {
                role: role_name(status.role),
            })
            .set(1);
        self.commit_offset.set(status.commit_offset as i64);
        self.end_offset.set(status.end_offset as i64);
        self.start_offset.set(status.start_offset as i64);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

fn role_name(role: loglog_proto::wire::Role) -> &'static str {
    use loglog_proto::wire::Role;
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::Learner => "learner",
        Role::Unknown(_) => "unknown",
    }
}

/// Serves `GET /metrics` until shutdown; other paths answer 404.
pub(crate) async fn serve(listener: TcpListener, node: Node, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = until_true(&mut shutdown) => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "metrics accept failed");
                    continue;
                }
            },
            _ = until_true(&mut shutdown) => return,
        };
        let node = node.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let node = node.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&node, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(METRICS_CONNECTION_TIMEOUT, connection).await {
                Ok(Err(error)) => tracing::debug!(%peer, %error, "metrics connection failed"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
                Ok(Ok(())) => {}
            }
            drop(slot);
        });
    }
}

fn answer(node: &Node, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_string(),
        )
    } else if request.method() != hyper::Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            node.render_metrics(),
        )
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response of valid parts")
}
