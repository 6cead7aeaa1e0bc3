//! Client authentication on real `loglogd` processes: tokens made by
//! `loglog token new`, configured in the node's config file, sent by the
//! client library, the `loglog` command line (`--token`, `LOGLOG_TOKEN`)
//! and raw frames. A request without its role is answered `Unauthorized`
//! (error 12) and changes nothing; with no token configured everything
//! works as before.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog::{AdminRequest, AuthToken, ClientConfig, Error};
use loglog_proto::auth::Roles;
use loglog_proto::wire::{Request, ServerError, STATUS_OK};

mod common;
use common::{exchange, free_addr, loglogd_command, RunningNode};

/// A `loglogd` process, stopped when dropped.
type Node = RunningNode;

/// Starts `loglogd` with `args` on a free port; returns once it listens.
fn start_node(dir: &Path, args: &[&str]) -> Node {
    let addr = free_addr();
    RunningNode::start(
        loglogd_command(&dir.join("data"), addr).args(args),
        addr,
        Duration::from_secs(20),
    )
}

fn cluster_of(node: &Node) -> Vec<String> {
    vec![node.addr.to_string()]
}

/// Runs `loglog` against `node`; returns (success, stdout, stderr).
fn loglog(node: Option<&Node>, env_token: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(common::loglog_binary());
    command.env_remove("LOGLOG_TOKEN");
    if let Some(node) = node {
        command.args(["--cluster", &node.addr.to_string()]);
    }
    if let Some(token) = env_token {
        command.env("LOGLOG_TOKEN", token);
    }
    let output = command.args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// Makes a token with `loglog token new`: (the token, its config entry).
fn new_token(name: &str, roles: &str) -> (String, String) {
    let (ok, stdout, stderr) = loglog(
        None,
        None,
        &["token", "new", "--name", name, "--roles", roles],
    );
    assert!(ok, "loglog token new failed: {stderr}");
    let (token, entry) = stdout.split_once('\n').unwrap();
    assert!(token.starts_with("llt_") && token.len() == 68, "{token}");
    assert!(
        !entry.contains(&token[4..]),
        "the config entry holds the token"
    );
    (token.to_string(), entry.to_string())
}

fn client(node: &Node, token: Option<&str>) -> Result<Client, Error> {
    let config = ClientConfig {
        token: token.map(|token| AuthToken::new(token).unwrap()),
        leader_wait: Duration::from_secs(2),
        ..ClientConfig::default()
    };
    Client::connect_with(&cluster_of(node), config)
}

fn assert_unauthorized<T: std::fmt::Debug>(result: Result<T, Error>) {
    match result {
        Err(Error::Server {
            source: ServerError::Unauthorized { .. },
            ..
        }) => {}
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

/// Sends one request on a raw connection and returns (status byte, body).
fn raw_call(stream: &mut TcpStream, request: Request<'_>, request_id: u64) -> (u8, Vec<u8>) {
    let (header, body) = exchange(stream, request, request_id);
    assert_eq!(header.request_id, request_id);
    (header.aux, body)
}

fn raw_connect(node: &Node) -> TcpStream {
    let stream = TcpStream::connect(node.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
}

const APPEND: Request<'static> = Request::Append {
    payload: b"raw",
    no_wait: false,
};
const READ: Request<'static> = Request::Read {
    offset: 0,
    max_bytes: 1 << 20,
    wait_ms: 0,
    linearizable: false,
};

#[test]
fn tokens_grant_exactly_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, writer_entry) = new_token("writer", "read,append");
    let (reader, reader_entry) = new_token("reader", "read");
    let (ops, ops_entry) = new_token("ops", "admin");
    let config = dir.path().join("loglogd.toml");
    std::fs::write(&config, format!("{writer_entry}{reader_entry}{ops_entry}")).unwrap();
    let metrics = free_addr().to_string();
    let node = start_node(
        dir.path(),
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            &metrics,
        ],
    );

    // An append token appends and reads.
    let writers = client(&node, Some(&writer)).unwrap();
    let first = writers.append(&b"first"[..]).unwrap();
    let second = writers.append(&b"second"[..]).unwrap();
    let before = writers.status().unwrap();
    assert_eq!(before.commit_offset, before.end_offset);

    // A read-only token reads, and its appends are refused: typed, and the
    // log is unchanged.
    let readers = client(&node, Some(&reader)).unwrap();
    let page = readers.read(first, 1 << 20, Duration::ZERO).unwrap();
    let payloads: Vec<Vec<u8>> = page.entries().map(|entry| entry.payload.to_vec()).collect();
    assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
    assert!(second > first);
    assert_unauthorized(readers.append(&b"forbidden"[..]));
    assert_unauthorized(readers.append_nowait(&b"forbidden"[..]));
    assert_unauthorized(readers.admin(AdminRequest::Trim { offset: second }));
    assert_eq!(readers.status().unwrap(), before, "the log is unchanged");

    // No token, or a wrong one: refused. A client with a wrong token fails
    // to connect; one without a token connects and every request fails.
    assert_unauthorized(client(&node, Some("llt_0000")).map(|_| ()));
    let anonymous = client(&node, None).unwrap();
    assert_unauthorized(anonymous.append(&b"anonymous"[..]));
    assert_unauthorized(anonymous.read(0, 1 << 20, Duration::ZERO));
    assert_unauthorized(anonymous.status());
    assert_unauthorized(anonymous.cluster_status());

    // Raw frames: before AUTH every request is refused with code 12; after
    // a wrong AUTH too; a right AUTH answers the token's roles.
    let mut stream = raw_connect(&node);
    for (id, request) in [APPEND, READ, Request::Status].into_iter().enumerate() {
        let (status, body) = raw_call(&mut stream, request, id as u64 + 1);
        assert_eq!(status, 12, "{}", String::from_utf8_lossy(&body));
    }
    let (status, _) = raw_call(
        &mut stream,
        Request::Auth {
            token: b"llt_guess",
        },
        4,
    );
    assert_eq!(status, 12);
    assert_eq!(raw_call(&mut stream, APPEND, 5).0, 12);
    let (status, body) = raw_call(
        &mut stream,
        Request::Auth {
            token: reader.as_bytes(),
        },
        6,
    );
    assert_eq!((status, body), (STATUS_OK, vec![Roles::READ.bits()]));
    assert_eq!(raw_call(&mut stream, READ, 7).0, STATUS_OK);
    assert_eq!(raw_call(&mut stream, APPEND, 8).0, 12);
    // A connection's next AUTH replaces its roles.
    let (status, body) = raw_call(
        &mut stream,
        Request::Auth {
            token: writer.as_bytes(),
        },
        9,
    );
    assert_eq!(
        (status, body),
        (STATUS_OK, vec![Roles::READ.union(Roles::APPEND).bits()])
    );
    assert_eq!(raw_call(&mut stream, APPEND, 10).0, STATUS_OK);
    let after_raw = writers.status().unwrap();
    assert!(after_raw.commit_offset > before.commit_offset);

    // Admin requests need admin: a read/append token is refused, an admin
    // token gets through to the node (a single node trims; it has no
    // membership to change, which is a BadRequest, not Unauthorized).
    assert_unauthorized(writers.admin(AdminRequest::Trim { offset: second }));
    assert_unauthorized(writers.admin(AdminRequest::TransferLeader { id: 1 }));
    assert_unauthorized(writers.admin(AdminRequest::RemoveNode { id: 2 }));
    assert_unauthorized(writers.admin(AdminRequest::AddNode {
        id: 2,
        peer_addr: "127.0.0.1:1",
        client_addr: "127.0.0.1:2",
    }));
    assert_eq!(writers.status().unwrap().start_offset, 0);
    let admins = client(&node, Some(&ops)).unwrap();
    assert!(admins.admin(AdminRequest::Trim { offset: 0 }).is_ok());
    match admins.admin(AdminRequest::RemoveNode { id: 2 }) {
        Err(Error::Server {
            source: ServerError::BadRequest { .. },
            ..
        }) => {}
        other => panic!("a single node's membership request: {other:?}"),
    }
    // Admin does not include read or append.
    assert_unauthorized(admins.status());
    assert_unauthorized(admins.append(&b"ops"[..]));
    assert_eq!(writers.status().unwrap(), after_raw);

    // Refusals are counted by kind; the metrics endpoint needs no token.
    let mut http = TcpStream::connect(&metrics).unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut scraped = String::new();
    http.read_to_string(&mut scraped).unwrap();
    let refused: f64 = scraped
        .lines()
        .find_map(|line| line.strip_prefix("loglog_errors_total{error=\"unauthorized\"} "))
        .unwrap_or_else(|| panic!("no unauthorized count in:\n{scraped}"))
        .trim()
        .parse()
        .unwrap();
    assert!(refused >= 20.0, "{refused} refusals counted");
}

#[test]
fn the_command_line_takes_the_token_from_a_flag_or_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, writer_entry) = new_token("writer", "append,read");
    let (reader, reader_entry) = new_token("reader", "read");
    let config = dir.path().join("loglogd.toml");
    std::fs::write(&config, format!("{writer_entry}{reader_entry}")).unwrap();
    let node = start_node(dir.path(), &["--config", config.to_str().unwrap()]);

    let (ok, stdout, stderr) = loglog(Some(&node), None, &["--token", &writer, "append", "a"]);
    assert!(ok, "{stderr}");
    let offset = stdout.trim().to_string();
    let (ok, _, stderr) = loglog(Some(&node), Some(&writer), &["append", "b"]);
    assert!(ok, "{stderr}");

    for (env_token, args) in [
        (Some(reader.as_str()), vec!["append", "c"]),
        (None, vec!["append", "c"]),
        (None, vec!["read", "--from", "0"]),
        (None, vec!["--token", "llt_wrong", "append", "c"]),
    ] {
        let (ok, _, stderr) = loglog(Some(&node), env_token, &args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stderr.contains("unauthorized"), "{args:?}: {stderr}");
    }
    // The flag wins over the environment.
    let (ok, _, stderr) = loglog(
        Some(&node),
        Some(&reader),
        &["--token", &writer, "append", "d"],
    );
    assert!(ok, "{stderr}");

    let (ok, stdout, stderr) = loglog(Some(&node), Some(&reader), &["read", "--from", &offset]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "a\nb\nd\n");
    let (ok, stdout, stderr) = loglog(Some(&node), Some(&reader), &["status", "--json"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"role\":\"leader\""), "{stdout}");
    // Help shows where the token comes from, never its value.
    let (ok, stdout, _) = loglog(Some(&node), Some(&reader), &["append", "--help"]);
    assert!(ok && stdout.contains("LOGLOG_TOKEN"), "{stdout}");
    assert!(!stdout.contains(&reader[4..]), "{stdout}");
}

#[test]
fn without_tokens_auth_is_off_and_any_token_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), &[]);
    let anonymous = client(&node, None).unwrap();
    let offset = anonymous.append(&b"open"[..]).unwrap();
    assert!(anonymous.admin(AdminRequest::Trim { offset: 0 }).is_ok());
    // A client configured with a token works with such a node too.
    let with_token = client(&node, Some("llt_anything")).unwrap();
    let page = with_token.read(offset, 1 << 20, Duration::ZERO).unwrap();
    assert_eq!(page.entries().count(), 1);
    with_token.append(&b"too"[..]).unwrap();
    let mut stream = raw_connect(&node);
    assert_eq!(raw_call(&mut stream, APPEND, 1).0, STATUS_OK);
    let (status, body) = raw_call(&mut stream, Request::Auth { token: b"x" }, 2);
    assert_eq!((status, body), (STATUS_OK, vec![Roles::ALL.bits()]));
    let (ok, _, stderr) = loglog(Some(&node), None, &["append", "cli"]);
    assert!(ok, "{stderr}");
}

#[test]
fn a_cluster_client_authenticates_again_on_every_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, writer_entry) = new_token("writer", "read,append");
    let (reader, reader_entry) = new_token("reader", "read");
    let config = dir.path().join("loglogd.toml");
    std::fs::write(&config, format!("{writer_entry}{reader_entry}")).unwrap();
    // Peers talk among themselves without tokens: the cluster elects a
    // leader and replicates with authentication on.
    let addrs: Vec<(SocketAddr, SocketAddr)> = (0..3).map(|_| (free_addr(), free_addr())).collect();
    let peers = addrs
        .iter()
        .enumerate()
        .map(|(index, (client, peer))| format!("{}={peer}@{client}", index + 1))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = addrs
        .iter()
        .enumerate()
        .map(|(index, (client, peer))| {
            let node_dir = dir.path().join(format!("node{}", index + 1));
            RunningNode::start(
                loglogd_command(&node_dir, *client)
                    .args(["--config", config.to_str().unwrap()])
                    .args(["--id", &(index + 1).to_string()])
                    .args(["--peer-listen", &peer.to_string()])
                    .args(["--peers", &peers]),
                *client,
                Duration::from_secs(20),
            )
        })
        .collect();
    let config_with = |token: &str| ClientConfig {
        token: Some(AuthToken::new(token).unwrap()),
        leader_wait: Duration::from_secs(20),
        ..ClientConfig::default()
    };
    // Find the leader through a read token, then append through each
    // follower: the client follows NotLeader to the leader and sends its
    // token on that new connection before the append.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let statuses: Vec<_> = nodes
            .iter()
            .filter_map(|node| {
                Client::connect_with(&cluster_of(node), config_with(&reader))
                    .and_then(|client| client.status())
                    .ok()
            })
            .collect();
        if let Some(leader) = statuses
            .iter()
            .find(|status| status.role == loglog::Role::Leader)
        {
            break leader.node_id;
        }
        assert!(Instant::now() < deadline, "no leader: {statuses:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut offsets = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        if index as u64 + 1 == leader {
            continue;
        }
        let writers = Client::connect_with(&cluster_of(node), config_with(&writer)).unwrap();
        offsets.push(writers.append(format!("via node {}", index + 1)).unwrap());
        assert_ne!(
            writers.as_async().current_address(),
            Some(node.addr.to_string())
        );
        let readers = Client::connect_with(&cluster_of(node), config_with(&reader)).unwrap();
        assert_unauthorized(readers.append(&b"refused"[..]));
    }
    assert_eq!(offsets.len(), 2);
    assert!(offsets[1] > offsets[0]);
}

/// Reads until the node closes `stream`; panics if it sends anything else.
fn wait_for_close(stream: &mut TcpStream) {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the node to close the connection, got {other:?}"),
    }
}

#[test]
fn connections_without_a_known_token_are_closed_after_the_auth_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, writer_entry) = new_token("writer", "read,append");
    let config = dir.path().join("loglogd.toml");
    std::fs::write(&config, writer_entry).unwrap();
    let node = start_node(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--auth-timeout", "1s"],
    );
    let accepted = Instant::now();
    let mut silent = raw_connect(&node);
    let mut unknown = raw_connect(&node);
    let (status, _) = raw_call(&mut unknown, Request::Auth { token: b"llt_x" }, 1);
    assert_eq!(status, 12, "an unknown token is refused");
    let mut known = raw_connect(&node);
    let (status, _) = raw_call(
        &mut known,
        Request::Auth {
            token: writer.as_bytes(),
        },
        1,
    );
    assert_eq!(status, STATUS_OK);

    wait_for_close(&mut silent);
    wait_for_close(&mut unknown);
    let waited = accepted.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(15),
        "closed after {waited:?}"
    );
    // The authenticated connection outlives the timeout.
    assert_eq!(raw_call(&mut known, APPEND, 2).0, STATUS_OK);

    // With authentication off the timeout closes nothing.
    let open_dir = tempfile::tempdir().unwrap();
    let open = start_node(open_dir.path(), &["--auth-timeout", "1s"]);
    let mut idle = raw_connect(&open);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(raw_call(&mut idle, APPEND, 1).0, STATUS_OK);
}
