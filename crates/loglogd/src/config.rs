//! A node's configuration: where it keeps its data, where it listens, and
//! the explicit bound of every queue and buffer it owns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use loglog_proto::entry::{DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_LIMIT};

/// Default client address of `loglogd` (design notes, section 6).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:19194";
/// Default data directory of the `loglogd` binary, relative to its cwd.
pub const DEFAULT_DATA_DIR: &str = "loglog-data";
/// Default segment size: a new segment starts once the current one passes it.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;

/// When entries are made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// Every acknowledged append is on disk (fdatasync, group commit).
    Always,
    /// BENCHMARK ONLY, UNSAFE: never fsync; the commit offset is the written
    /// end, so an OS crash or power loss can lose acknowledged appends.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(text: &str) -> Result<Fsync, String> {
        match text {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => Err(format!(
                "unknown fsync policy {other:?}: expected \"always\" or \"never\""
            )),
        }
    }
}

/// Explicit bounds of everything a node queues or buffers.
///
/// # Memory
///
/// Request and response memory is bounded node-wide, whatever the number of
/// connections:
///
/// * **Requests** (`max_node_request_bytes`): every request read from a
///   client is charged its frame's bytes plus [`REQUEST_OVERHEAD`] (its
///   task, queue entries and answer) as soon as its header arrives, before
///   its body is buffered, and holds the charge until its response is
///   written out. With the budget exhausted the node stops reading from the
///   sockets that need more (TCP backpressure), so a frame's body is never
///   buffered uncharged. Appends queued for the writer are covered by it
///   (their payloads are the charged frame bytes).
/// * **Read answers** (`max_node_read_bytes`): a read is charged the bytes
///   it may answer (what it asks for, at most `max_read_bytes`) once its
///   long-poll wait is over, before the log is read, until its response is
///   written out. An answer larger than that (a single entry larger than
///   asked) is charged its full length before it is read; an entry larger
///   than the whole budget waits until it can hold all of it.
/// * **Per connection**, on top of these: `max_in_flight_requests` and
///   `max_in_flight_bytes` (requests plus the answers they ask for) keep one
///   client from taking the whole node budget, and each connection has a
///   read buffer and a write buffer of at most [`CONNECTION_BUFFER_BYTES`]
///   together, outside the budgets.
/// * **Stalled clients**: one that stops taking its answers, or stops
///   in the middle of a frame, is disconnected after
///   `client_stall_timeout`, which returns its share of the budgets.
/// * **Embedded appends** ([`crate::Node::append`]) queue for the writer
///   within `max_pending_append_bytes` (TCP appends count there too, but
///   are already charged as requests).
///
/// So the worst case of the node's buffered request and response memory
/// ([`Limits::worst_case_buffered_bytes`]) is
///
/// ```text
/// max_node_request_bytes + max_node_read_bytes + max_pending_append_bytes
///     + max_connections * CONNECTION_BUFFER_BYTES
/// defaults: 128 MiB + 128 MiB + 64 MiB + 1024 * 160 KiB = 480 MiB
/// ```
/// (one largest entry, 16 MiB - 1 by default, fits every budget). One
/// exception: a single entry larger than the read budget (appended under a
/// larger limit) is read alone, holding the whole budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections; one more is answered `Busy` and closed.
    pub max_connections: usize,
    /// Requests read from one connection and not yet answered; at the bound
    /// the node stops reading that socket (backpressure).
    pub max_in_flight_requests: usize,
    /// Bytes of requests (and of the reads they ask for) in flight on one
    /// connection; at the bound the node stops reading that socket.
    pub max_in_flight_bytes: usize,
    /// Bytes of requests in flight across all connections (frames plus
    /// [`REQUEST_OVERHEAD`] each); at the bound the node stops reading the
    /// sockets that need more.
    pub max_node_request_bytes: usize,
    /// Bytes of read answers being read or waiting to be sent, across all
    /// connections; at the bound reads wait before reading the log.
    pub max_node_read_bytes: usize,
    /// Appends queued for the writer thread, node-wide; callers wait
    /// (backpressure) when it is full.
    pub max_pending_appends: usize,
    /// Payload bytes queued for the writer thread, node-wide.
    pub max_pending_append_bytes: usize,
    /// Bytes the writer thread encodes into one write (it always takes at
    /// least one entry).
    pub max_write_batch_bytes: usize,
    /// Largest read answer, whatever the client asks (at least one entry is
    /// always returned, even if it is larger).
    pub max_read_bytes: u32,
    /// Longest a read may wait for the commit offset to pass it.
    pub max_long_poll_wait: Duration,
    /// A client that takes none of its answers for this long (while the
    /// node has some to send), or sends none of a frame it has begun, is
    /// disconnected: a stalled client must not hold its share of the node's
    /// budgets forever.
    pub client_stall_timeout: Duration,
    /// Longest an append waits for its commit in a replicated cluster; then
    /// it is answered `TimedOut`, which is indeterminate: the entry may
    /// still commit (clients with a producer id retry it without a second
    /// copy). Keeps clients from waiting forever when no majority can store
    /// entries (full disks, followers that answer but cannot write).
    pub max_commit_wait: Duration,
    /// With client tokens configured, a connection that holds no role this
    /// long after it was accepted (no AUTH, or only unknown tokens) is
    /// closed: strangers cannot keep connection slots from real clients.
    pub auth_timeout: Duration,
}

/// What a request costs in memory besides its frame (its task or queue
/// entries, its response), charged to [`Limits::max_node_request_bytes`].
pub const REQUEST_OVERHEAD: usize = 1024;

/// Most memory one connection's read and write buffers hold outside the
/// request and answer budgets (see [`Limits`]).
pub const CONNECTION_BUFFER_BYTES: usize = 160 * 1024;

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_in_flight_requests: 1024,
            max_in_flight_bytes: 32 * 1024 * 1024,
            max_node_request_bytes: 128 * 1024 * 1024,
            max_node_read_bytes: 128 * 1024 * 1024,
            max_pending_appends: 16 * 1024,
            max_pending_append_bytes: 64 * 1024 * 1024,
            max_write_batch_bytes: 1024 * 1024,
            max_read_bytes: 4 * 1024 * 1024,
            max_long_poll_wait: Duration::from_secs(60),
            client_stall_timeout: Duration::from_secs(30),
            max_commit_wait: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The worst case of the node's buffered request and response memory
    /// (see the type's docs).
    pub fn worst_case_buffered_bytes(&self) -> usize {
        self.max_node_request_bytes
            .saturating_add(self.max_node_read_bytes)
            .saturating_add(self.max_pending_append_bytes)
            .saturating_add(self.max_connections.saturating_mul(CONNECTION_BUFFER_BYTES))
    }
}

/// Everything [`crate::Node::start`] needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Data directory; see the crate documentation for its layout.
    pub data_dir: PathBuf,
    /// Client address to listen on; `None` runs the node embedded only, with
    /// no TCP server. Port 0 picks a free port ([`crate::Node::local_addr`]).
    pub listen: Option<SocketAddr>,
    /// Address of the Prometheus endpoint (`GET /metrics`); `None`: off.
    pub metrics_listen: Option<SocketAddr>,
    /// This node's id, reported by status (1 for a single node).
    pub node_id: u64,
    /// A new segment file starts once the current one passes this size.
    pub segment_size: u64,
    /// Largest entry payload accepted, in bytes.
    pub max_entry_size: u32,
    pub fsync: Fsync,
    pub limits: Limits,
    /// Replicated mode (`--peers`): `None` runs a single node, which is
    /// its own leader.
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// TLS on the client listener and between peers; `None` (the default):
    /// plain TCP, for local use.
    pub tls: Option<crate::tls::TlsConfig>,
    /// Client tokens and their roles; none (the default): authentication
    /// is off and every client may do everything.
    pub auth: crate::auth::AuthConfig,
    /// Automatic trimming of old segments (off by default).
    pub retention: crate::retention::Retention,
}

impl Config {
    /// Defaults of the `loglogd` binary run without flags: data in
    /// `./loglog-data`, listening on `127.0.0.1:19194`, fsync always.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: Some(
                DEFAULT_LISTEN
                    .parse()
                    .expect("DEFAULT_LISTEN is a valid socket address"),
            ),
            metrics_listen: None,
            node_id: 1,
            segment_size: DEFAULT_SEGMENT_SIZE,
            max_entry_size: DEFAULT_MAX_PAYLOAD,
            fsync: Fsync::Always,
            limits: Limits::default(),
            cluster: None,
            tls: None,
            auth: crate::auth::AuthConfig::default(),
            retention: crate::retention::Retention::default(),
        }
    }

    /// Checks that the bounds are consistent with each other.
    pub fn validate(&self) -> Result<(), String> {
        let limits = &self.limits;
        if self.max_entry_size > MAX_PAYLOAD_LIMIT {
            return Err(format!(
                "max entry size {} exceeds the format's limit {MAX_PAYLOAD_LIMIT}",
                self.max_entry_size
            ));
        }
        if self.segment_size < 4096 {
            return Err(format!(
                "segment size {} is too small (at least 4096 bytes)",
                self.segment_size
            ));
        }
        self.auth.validate()?;
        if self.node_id == 0 {
            return Err("node id 0 is reserved for \"unknown\"".to_string());
        }
        self.retention.validate()?;
        let zero_bound = [
            ("max connections", limits.max_connections),
            ("max in-flight requests", limits.max_in_flight_requests),
            ("max pending appends", limits.max_pending_appends),
            ("max write batch bytes", limits.max_write_batch_bytes),
            ("max read bytes", limits.max_read_bytes as usize),
        ];
        for (name, value) in zero_bound {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate(self.cluster.is_some())?;
        }
        if limits.client_stall_timeout.is_zero() {
            return Err("the client stall timeout must not be zero".to_string());
        }
        if limits.max_commit_wait.is_zero() {
            return Err("the longest commit wait must not be zero".to_string());
        }
        if limits.auth_timeout.is_zero() {
            return Err("the auth timeout must not be zero".to_string());
        }
        // One whole entry must always fit the byte bounds, or it could never pass.
        let largest_frame = self.max_entry_size as usize + FRAME_SLACK as usize;
        if limits.max_in_flight_bytes < largest_frame {
            return Err(format!(
                "max in-flight bytes per connection ({}) must hold one largest entry ({largest_frame})",
                limits.max_in_flight_bytes
            ));
        }
        if limits.max_node_request_bytes < largest_frame + REQUEST_OVERHEAD {
            return Err(format!(
                "max node request bytes ({}) must hold one largest request ({})",
                limits.max_node_request_bytes,
                largest_frame + REQUEST_OVERHEAD
            ));
        }
        if limits.max_node_read_bytes < limits.max_read_bytes as usize {
            return Err(format!(
                "max node read bytes ({}) must hold one largest read ({})",
                limits.max_node_read_bytes, limits.max_read_bytes
            ));
        }
        if limits.max_pending_append_bytes < self.max_entry_size as usize {
            return Err(format!(
                "max pending append bytes ({}) must hold one largest entry ({})",
                limits.max_pending_append_bytes, self.max_entry_size
            ));
        }
        let byte_bounds = [
            limits.max_pending_append_bytes,
            limits.max_in_flight_bytes,
            limits.max_node_request_bytes,
            limits.max_node_read_bytes,
        ];
        if byte_bounds
            .iter()
            .any(|&bound| bound > tokio::sync::Semaphore::MAX_PERMITS)
        {
            return Err("byte bounds are too large".to_string());
        }
        Ok(())
    }

    /// Largest frame body the TCP server accepts: one largest entry plus a
    /// little room, so a slightly oversize append is answered `TooLarge` and
    /// the connection goes on.
    pub fn max_frame_body(&self) -> u32 {
        self.max_entry_size.saturating_add(FRAME_SLACK)
    }
}

/// Room above the largest entry in a frame body (see [`Config::max_frame_body`]).
pub const FRAME_SLACK: u32 = 1024;

/// Parses a byte size: a plain number, or a number with a suffix among
/// `B`, `K`/`KB`/`KiB`, `M`/`MB`/`MiB`, `G`/`GB`/`GiB` (all binary: powers
/// of 1024, case-insensitive).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err(format!("{text:?} is not a byte size (e.g. 1048576, 64MiB)"));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size"))?;
    let multiplier: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size suffix {other:?} in {text:?}")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration: a number with a unit among `ms`, `s`, `m`, `h`
/// (`500ms`, `30s`, `2m`); a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 30s, 2m)"))?;
    let millis = match unit.trim() {
        "ms" => Some(number),
        "" | "s" => number.checked_mul(1000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (ms, s, m, h)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("2 weeks").is_err());
        assert!(parse_duration("s").is_err());
        for text in ["1500ms", "60s", "0s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let config = Config::new(DEFAULT_DATA_DIR);
        assert_eq!(config.listen, Some("127.0.0.1:19194".parse().unwrap()));
        assert_eq!(config.data_dir, PathBuf::from("loglog-data"));
        assert_eq!(config.max_entry_size, 16 * 1024 * 1024 - 1);
        assert_eq!(config.fsync, Fsync::Always);
        assert_eq!(config.node_id, 1);
        config.validate().unwrap();
        // Well under 1 GiB, as documented on `Limits`.
        assert_eq!(config.limits.worst_case_buffered_bytes(), 480 << 20);
    }

    #[test]
    fn byte_sizes_parse() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1G"), Ok(1 << 30));
        assert_eq!(parse_byte_size("8 KiB"), Ok(8 << 10));
        assert_eq!(parse_byte_size("1_000"), Ok(1000));
        assert!(parse_byte_size("MiB").is_err());
        assert!(parse_byte_size("12XB").is_err());
        assert!(parse_byte_size("99999999999999999999G").is_err());
    }

    #[test]
    fn inconsistent_bounds_are_rejected() {
        let mut config = Config::new("x");
        config.limits.max_in_flight_bytes = 1024;
        assert!(config.validate().is_err());
        let mut config = Config::new("x");
        config.limits.max_connections = 0;
        assert!(config.validate().is_err());
        let mut config = Config::new("x");
        config.segment_size = 10;
        assert!(config.validate().is_err());
        let mut config = Config::new("x");
        config.limits.max_node_request_bytes = config.max_entry_size as usize;
        assert!(config.validate().is_err());
        let mut config = Config::new("x");
        config.limits.max_node_read_bytes = 1024;
        assert!(config.validate().is_err());
    }

    #[test]
    fn fsync_parses() {
        assert_eq!("always".parse(), Ok(Fsync::Always));
        assert_eq!("never".parse(), Ok(Fsync::Never));
        assert!("sometimes".parse::<Fsync>().is_err());
    }
}
