//! Prometheus metrics (`--metrics-listen`): counters and histograms updated
//! on the request and sync paths, gauges read from the node at scrape time,
//! served as the text exposition format over HTTP/1.1 (`GET /metrics`).
//!
//! Hot-path updates are single relaxed atomic operations (prometheus-client
//! metrics are atomics behind an `Arc`); nothing is locked per request.

use std::sync::atomic::Ordering;
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

use loglog_proto::wire::MemberStatus;

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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: u64,
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
    /// Upload cache hits and misses (module `cluster::upload`), copied from
    /// the node's own counters at scrape time.
    upload_rebuilt_entries: Counter,
    upload_missed_messages: Counter,
    /// On the leader only: its log end minus each follower's match offset.
    follower_lag_bytes: Family<FollowerLabels, Gauge>,
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
        let upload_rebuilt_entries = Counter::default();
        let upload_missed_messages = Counter::default();
        let follower_lag_bytes = Family::default();
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
        registry.register(
            "upload_rebuilt_entries",
            "Entries rebuilt from client uploads (upload cache hits)",
            upload_rebuilt_entries.clone(),
        );
        registry.register(
            "upload_missed_messages",
            "Messages by digest not rebuilt from uploads, asked of the leader instead (upload cache misses)",
            upload_missed_messages.clone(),
        );
        registry.register(
            "follower_lag_bytes",
            "On the leader, per follower: the leader's log end minus the follower's match offset",
            follower_lag_bytes.clone(),
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
            upload_rebuilt_entries,
            upload_missed_messages,
            follower_lag_bytes,
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
    /// `members` is the node's view of the cluster (empty on a single node
    /// or when the driver did not answer in time); only a leader knows its
    /// followers' match offsets, so only a leader reports lag.
    pub(crate) fn render(&self, node: &Node, members: &[MemberStatus]) -> String {
        // Read after `members`: the end only grows, so it is at least every
        // match offset reported (a follower never holds more than the leader).
        let status = node.status();
        self.term.set(status.term as i64);
        let (rebuilt, missed) = node.upload_counters();
        self.upload_rebuilt_entries
            .inner()
            .store(rebuilt, Ordering::Relaxed);
        self.upload_missed_messages
            .inner()
            .store(missed, Ordering::Relaxed);
        for role in ["leader", "follower", "candidate", "learner", "removed"] {
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
        // Rebuilt each scrape: a removed follower, or a leader that stepped
        // down, leaves no stale series behind.
        self.follower_lag_bytes.clear();
        if status.role == loglog_proto::wire::Role::Leader {
            let followers = members.iter().filter(|member| member.id != status.node_id);
            for member in followers {
                if let Some(match_offset) = member.match_offset {
                    let lag = status.end_offset.saturating_sub(match_offset);
                    self.follower_lag_bytes
                        .get_or_create(&FollowerLabels {
                            follower: member.id,
                        })
                        .set(i64::try_from(lag).unwrap_or(i64::MAX));
                }
            }
        }
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
        Role::Removed => "removed",
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
                async move { Ok::<_, std::convert::Infallible>(answer(&node, &request).await) }
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

async fn answer(node: &Node, request: &Request<Incoming>) -> Response<Full<Bytes>> {
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
            node.render_metrics().await,
        )
    };
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a response of valid parts")
}
