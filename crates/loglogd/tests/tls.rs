//! TLS on real `loglogd` processes, with certificates made at test time
//! (rcgen): a 3-node cluster with mutual TLS between peers and TLS clients
//! replicates identical logs; a peer with a certificate of another CA, or
//! none, is refused and logged, and so is one whose certificate of the
//! cluster's CA is not valid for the member it claims to be; a client trusting another CA fails with a
//! clear error (library and CLI); client certificates when demanded; and
//! plain TCP (the default, with zero-copy reads) answers the same bytes as
//! TLS.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loglog::blocking::Client;
use loglog::{ClientConfig, ClientTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

mod common;
use common::free_addr;

/// A certificate authority made for the test.
struct Authority {
    cert: rcgen::Certificate,
    key: KeyPair,
    pem: PathBuf,
}

impl Authority {
    fn new(dir: &Path, name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Authority { cert, key, pem }
    }

    /// A certificate for 127.0.0.1 and localhost, for servers and clients
    /// (a node's certificate serves both ends of peer connections).
    /// Returns (certificate file, key file).
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(dir, name, params)
    }

    /// A client's certificate: valid for the DNS name `name`, client
    /// authentication only. Returns (certificate file, key file).
    fn issue_client(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(dir, name, params)
    }

    fn sign(&self, dir: &Path, name: &str, mut params: CertificateParams) -> (PathBuf, PathBuf) {
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_file, key_file) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}

/// One `loglogd` process, killed when dropped.
struct Process {
    child: Option<Child>,
    log: PathBuf,
}

impl Process {
    fn start(log: PathBuf, args: &[String]) -> Process {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("LOGLOG_TLS_CA")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Process {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        let stopped = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(stopped.success());
        let status = child.wait().unwrap();
        assert!(status.success(), "loglogd exited with {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            drop(child.kill());
            drop(child.wait());
        }
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn tls_config(ca: &Path) -> ClientConfig {
    ClientConfig {
        tls: Some(ClientTls::from_ca_file(ca).unwrap()),
        ..ClientConfig::default()
    }
}

/// Connects once a node of `addrs` listens (20 s at most).
fn connect_when_up<A: AsRef<str>>(
    addrs: &[A],
    config: ClientConfig,
    logs: impl Fn() -> String,
) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match Client::connect_with(addrs, config.clone()) {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(error) => panic!("cannot connect: {error}\n{}", logs()),
        }
    }
}

/// Waits until `condition` holds, failing with `what` (and `context()`).
fn wait_until(what: &str, mut condition: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !condition() {
        assert!(Instant::now() < deadline, "{what}\n{}", context());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node's committed log from offset 0 up to at least `at_least`, as raw
/// bytes, read `max_bytes` at a time.
fn committed_log(client: &Client, at_least: u64, max_bytes: u32) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut log = Vec::new();
    loop {
        let page = client
            .read(log.len() as u64, max_bytes, Duration::from_millis(100))
            .unwrap();
        log.extend_from_slice(page.raw());
        if log.len() as u64 >= at_least && log.len() as u64 == page.commit_offset() {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "the node's commit stays below {at_least}"
        );
    }
}

/// Payloads of several sizes: small, around 16 KiB (the server's copy
/// threshold) and larger than a 64 KiB read.
fn payload(index: usize) -> Vec<u8> {
    let len = [10, 300, 16 * 1024 - 16, 16 * 1024 + 5, 100_000, 7][index % 6];
    vec![b'a' + (index % 26) as u8; len]
}

#[test]
fn a_mutual_tls_cluster_replicates_and_refuses_peers_of_another_ca() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = Authority::new(root, "cluster-ca");
    let other_ca = Authority::new(root, "other-ca");
    let ids = [1u64, 2, 3];
    let clients: Vec<SocketAddr> = ids.iter().map(|_| free_addr()).collect();
    let peers: Vec<SocketAddr> = ids.iter().map(|_| free_addr()).collect();
    let peers_flag = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{id}={}@{}", peers[i], clients[i]))
        .collect::<Vec<_>>()
        .join(",");
    let node_args = |i: usize, cert: &Path, key: &Path, ca: &Path, data: &str| {
        let mut list = args(&[
            "--id",
            &ids[i].to_string(),
            "--data-dir",
            root.join(data).to_str().unwrap(),
            "--listen",
            &clients[i].to_string(),
            "--peer-listen",
            &peers[i].to_string(),
            "--peers",
            &peers_flag,
        ]);
        list.extend(args(&[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-ca",
            ca.to_str().unwrap(),
        ]));
        list
    };
    let mut nodes: Vec<Process> = (0..3)
        .map(|i| {
            let (cert, key) = ca.issue(root, &format!("node{}", ids[i]));
            Process::start(
                root.join(format!("node{}.log", ids[i])),
                &node_args(i, &cert, &key, &ca.pem, &format!("node{}", ids[i])),
            )
        })
        .collect();
    let logs = |nodes: &[Process]| {
        nodes
            .iter()
            .map(|node| format!("----- {} -----\n{}", node.log.display(), node.log()))
            .collect::<String>()
    };

    // TLS clients append through whichever node leads.
    let addrs: Vec<String> = clients.iter().map(ToString::to_string).collect();
    let client = connect_when_up(&addrs, tls_config(&ca.pem), || logs(&nodes));
    let mut last = 0;
    for index in 0..60 {
        last = client.append(payload(index)).unwrap();
    }
    let end = last + 16 + payload(59).len() as u64;

    // Every node's committed log, read over TLS, is the same bytes.
    let read_from = |i: usize| {
        let node = Client::connect_with(&[addrs[i].clone()], tls_config(&ca.pem)).unwrap();
        committed_log(&node, end, 64 * 1024)
    };
    let first = read_from(0);
    assert!(first.len() as u64 >= end);
    for i in 1..3 {
        assert!(read_from(i) == first, "node {} differs from node 1", i + 1);
    }

    // A node with a certificate of another CA (a stranger's cluster, or a
    // forged member) dials the members' peer listeners: refused, logged.
    let (cert, key) = other_ca.issue(root, "intruder");
    let intruder_client = free_addr();
    let intruder = Process::start(
        root.join("intruder.log"),
        &args(&[
            "--id",
            "4",
            "--join",
            "--data-dir",
            root.join("intruder").to_str().unwrap(),
            "--listen",
            &intruder_client.to_string(),
            "--peer-listen",
            &free_addr().to_string(),
            "--peers",
            &peers_flag,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-ca",
            other_ca.pem.to_str().unwrap(),
        ]),
    );
    wait_until(
        "the members log the refused intruder",
        || {
            nodes
                .iter()
                .any(|node| node.log().contains("refusing peer: TLS handshake failed"))
                && intruder
                    .log()
                    .contains("refusing peer: TLS handshake failed")
        },
        || format!("{}\n----- intruder -----\n{}", logs(&nodes), intruder.log()),
    );
    // The intruder's certificate check fails on its side (the members'
    // certificates are not from its CA) as on theirs.
    assert!(
        intruder.log().contains("UnknownIssuer"),
        "{}",
        intruder.log()
    );

    // A client of the peer listener that trusts the cluster's CA but shows
    // another CA's certificate, or none: refused by the member, logged
    // with its address and the reason.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (stranger_cert, stranger_key) = other_ca.issue(root, "stranger");
    for client_cert in [Some((stranger_cert, stranger_key)), None] {
        let shown = client_cert.is_some();
        let hello = PeerHello {
            from: 9,
            to: 1,
            cluster_id: "x".to_string(),
        };
        let (local, answer) =
            runtime.block_on(peer_handshake(peers[0], &ca.pem, client_cert, &hello));
        assert_eq!(answer, None, "the peer listener accepted a stranger");
        let expected_reason = if shown {
            "UnknownIssuer"
        } else {
            "certificate"
        };
        wait_until(
            "node 1 logs the refused peer with its address and the reason",
            || {
                nodes[0].log().lines().any(|line| {
                    line.contains("WARN")
                        && line.contains("refusing peer: TLS handshake failed")
                        && line.contains(&local.to_string())
                        && line.contains(expected_reason)
                })
            },
            || logs(&nodes),
        );
    }

    // A certificate of the cluster's CA that is not a member's (a client's,
    // valid for another name) claims to be node 2, with the right cluster
    // id: the TLS handshake passes, the peer handshake is refused (answer
    // 5) and logged. Node 2's own certificate, valid for the host of node
    // 2's peer address, is admitted: the check refuses by name, not all.
    let cluster_id = read_cluster_id(&root.join("node1"));
    let as_node_2 = PeerHello {
        from: 2,
        to: 1,
        cluster_id,
    };
    let client_cert = ca.issue_client(root, "client.example");
    let (_, answer) = runtime.block_on(peer_handshake(
        peers[0],
        &ca.pem,
        Some(client_cert),
        &as_node_2,
    ));
    assert_eq!(answer, Some(5), "{}", logs(&nodes));
    wait_until(
        "node 1 logs the certificate that is not node 2's",
        || {
            nodes[0].log().lines().any(|line| {
                line.contains("peer handshake refused")
                    && line.contains("node 2's certificate does not belong to it")
                    && line.contains("not valid for 127.0.0.1")
            })
        },
        || logs(&nodes),
    );
    let node_2_cert = (root.join("node2.pem"), root.join("node2.key"));
    let (_, answer) = runtime.block_on(peer_handshake(
        peers[0],
        &ca.pem,
        Some(node_2_cert),
        &as_node_2,
    ));
    assert_eq!(answer, Some(0), "{}", logs(&nodes));

    // The cluster goes on without the intruder, which learned nothing.
    let after = client.append(&b"after the intruder"[..]).unwrap();
    assert!(after > last);
    let intruder_reader = connect_when_up(
        &[intruder_client.to_string()],
        tls_config(&other_ca.pem),
        || intruder.log(),
    );
    assert!(intruder_reader.status().unwrap().commit_offset < last);
    drop(intruder);

    // A node with a certificate of the cluster's CA joins: with no
    // configuration yet, it admits the leader's connection because the
    // leader's certificate is valid for a host of its --peers, and then
    // it holds the whole committed log.
    let (cert, key) = ca.issue(root, "node5");
    let (joiner_client, joiner_peer) = (free_addr(), free_addr());
    let mut join_args = node_args(0, &cert, &key, &ca.pem, "node5");
    let replace = |list: &mut Vec<String>, flag: &str, value: String| {
        let at = list.iter().position(|arg| arg == flag).unwrap();
        list[at + 1] = value;
    };
    replace(&mut join_args, "--id", "5".to_string());
    replace(&mut join_args, "--listen", joiner_client.to_string());
    replace(&mut join_args, "--peer-listen", joiner_peer.to_string());
    join_args.push("--join".to_string());
    nodes.push(Process::start(root.join("node5.log"), &join_args));
    client
        .admin(loglog::AdminRequest::AddNode {
            id: 5,
            peer_addr: &joiner_peer.to_string(),
            client_addr: &joiner_client.to_string(),
        })
        .unwrap_or_else(|error| panic!("add node 5: {error}\n{}", logs(&nodes)));
    let joiner = connect_when_up(&[joiner_client.to_string()], tls_config(&ca.pem), || {
        logs(&nodes)
    });
    wait_until(
        "node 5 holds the committed log",
        || {
            joiner
                .status()
                .is_ok_and(|status| status.commit_offset > after)
        },
        || logs(&nodes),
    );
    for node in &mut nodes {
        node.stop();
    }
}

/// The LogLog peer handshake a test sends (see `cluster/transport.rs`).
struct PeerHello {
    from: u64,
    to: u64,
    cluster_id: String,
}

/// The cluster id a founder derived, from its data dir (`cluster.id`: a
/// state file of a 16-byte prefix, a 4-byte version, the id, a 4-byte CRC;
/// docs/FORMAT.md).
fn read_cluster_id(data_dir: &Path) -> String {
    let bytes = std::fs::read(data_dir.join("cluster.id")).unwrap();
    String::from_utf8(bytes[16 + 4..bytes.len() - 4].to_vec()).unwrap()
}

/// Opens a TLS connection to a peer listener trusting `ca`, with or
/// without a client certificate, and sends `hello`. Returns the local
/// address and the listener's answer byte (`None`: the TLS handshake was
/// refused, or the connection closed without an answer).
async fn peer_handshake(
    peer: SocketAddr,
    ca: &Path,
    client_cert: Option<(PathBuf, PathBuf)>,
    hello: &PeerHello,
) -> (SocketAddr, Option<u8>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let stream = tokio::net::TcpStream::connect(peer).await.unwrap();
    let local = stream.local_addr().unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // TLS 1.3: the client may finish before the server has checked its
    // certificate; the refusal then shows on the first read.
    let answer = match connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), stream)
        .await
    {
        Err(_) => None,
        Ok(mut stream) => {
            let mut bytes = b"LLPEER01".to_vec();
            bytes.extend_from_slice(&hello.from.to_le_bytes());
            bytes.extend_from_slice(&hello.to.to_le_bytes());
            bytes.extend_from_slice(&(hello.cluster_id.len() as u16).to_le_bytes());
            bytes.extend_from_slice(hello.cluster_id.as_bytes());
            let _ = stream.write_all(&bytes).await;
            let _ = stream.flush().await;
            let mut answer = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut answer))
                .await
                .expect("the listener answers or closes the connection")
                .ok()
                .map(|_| answer[0])
        }
    };
    (local, answer)
}

#[test]
fn a_client_trusting_another_ca_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = Authority::new(root, "cluster-ca");
    let other_ca = Authority::new(root, "other-ca");
    let (cert, key) = ca.issue(root, "node1");
    let listen = free_addr();
    let tls_args = |listen: SocketAddr, data: &str| {
        args(&[
            "--data-dir",
            root.join(data).to_str().unwrap(),
            "--listen",
            &listen.to_string(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
    };
    let node = Process::start(root.join("node1.log"), &tls_args(listen, "node1"));
    let addr = listen.to_string();
    let connect = |config: ClientConfig| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect_with(&[&addr], config.clone()) {
                // Not listening yet.
                Err(loglog::Error::Connect { ref source, .. })
                    if source.kind() == std::io::ErrorKind::ConnectionRefused
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    };
    let trusted = connect(tls_config(&ca.pem)).unwrap();
    let offset = trusted.append(&b"over TLS"[..]).unwrap();

    // The library: a typed connect error that says why.
    let error = connect(tls_config(&other_ca.pem)).err().expect("refused");
    let message = error.to_string();
    assert!(
        matches!(error, loglog::Error::Connect { .. })
            && message.contains("TLS handshake failed")
            && message.contains("invalid peer certificate"),
        "{message}"
    );
    // A plain TCP client gets no answer from a TLS listener.
    assert!(connect(ClientConfig::default())
        .and_then(|plain| plain.status())
        .is_err());

    // The command line: --tls-ca or LOGLOG_TLS_CA.
    let loglog = |extra: &[&str], env_ca: Option<&Path>| {
        let mut command = Command::new(common::loglog_binary());
        command.args(["--cluster", &addr]).args(extra);
        command.env_remove("LOGLOG_TLS_CA");
        if let Some(ca) = env_ca {
            command.env("LOGLOG_TLS_CA", ca);
        }
        command.output().unwrap()
    };
    let refused = loglog(
        &["--tls-ca", other_ca.pem.to_str().unwrap(), "append", "x"],
        None,
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to")
            && stderr.contains("TLS handshake failed: invalid peer certificate: UnknownIssuer"),
        "{stderr}"
    );
    let read = loglog(
        &["read", "--from", &offset.to_string(), "--format", "text"],
        Some(&ca.pem),
    );
    assert!(read.status.success(), "{read:?}");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "over TLS");
    let appended = loglog(
        &[
            "--tls-ca",
            ca.pem.to_str().unwrap(),
            "--tls-server-name",
            "localhost",
            "append",
            "named",
        ],
        None,
    );
    assert!(appended.status.success(), "{appended:?}");

    // A node that demands client certificates: refused without one (and
    // logged), served with one from its CA.
    let (client_cert, client_key) = ca.issue(root, "client");
    let strict_listen = free_addr();
    let mut strict_args = tls_args(strict_listen, "strict");
    strict_args.extend(args(&[
        "--tls-ca",
        ca.pem.to_str().unwrap(),
        "--tls-client-auth",
        "require",
    ]));
    let strict = Process::start(root.join("strict.log"), &strict_args);
    let strict_addr = strict_listen.to_string();
    let with_cert = ClientConfig {
        tls: Some(ClientTls::from_files(&ca.pem, Some((&client_cert, &client_key))).unwrap()),
        ..ClientConfig::default()
    };
    let served = connect_when_up(&[&strict_addr], with_cert, || strict.log());
    served.append(&b"with a client certificate"[..]).unwrap();
    let without = Client::connect_with(&[&strict_addr], tls_config(&ca.pem))
        .and_then(|client| client.status());
    assert!(without.is_err(), "served a client without a certificate");
    wait_until(
        "the node logs the refused client",
        || {
            strict
                .log()
                .contains("refusing client: TLS handshake failed")
        },
        || strict.log(),
    );
    drop(node);
    drop(strict);
}

#[test]
fn plain_tcp_is_the_default_and_answers_the_same_bytes_as_tls() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ca = Authority::new(root, "ca");
    let (cert, key) = ca.issue(root, "node1");
    let listen = free_addr();
    let addr = listen.to_string();
    let data = root.join("data");
    let plain_args = args(&[
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &addr,
        "--segment-size",
        "1MiB",
    ]);
    let mut node = Process::start(root.join("plain.log"), &plain_args);
    let client = connect_when_up(&[&addr], ClientConfig::default(), || node.log());
    let mut last = 0;
    for index in 0..120 {
        last = client.append(payload(index)).unwrap();
    }
    let end = last + 16 + payload(119).len() as u64;
    // Reads of several sizes: answers copied (small) and sent from the
    // segment files (sendfile), across segment ends.
    let reads: Vec<Vec<u8>> = [1u32, 20_000, 100_000, 4 << 20]
        .iter()
        .map(|&max_bytes| committed_log(&client, end, max_bytes))
        .collect();
    for read in &reads[1..] {
        assert!(*read == reads[0], "reads of other sizes differ");
    }
    drop(client);
    node.stop();

    // The same data directory behind TLS: the same bytes. One connection
    // at most, so that a second is refused (inside TLS, typed Busy).
    let mut tls_args = plain_args.clone();
    tls_args.extend(args(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--max-connections",
        "1",
    ]));
    let mut node = Process::start(root.join("tls.log"), &tls_args);
    let client = connect_when_up(&[&addr], tls_config(&ca.pem), || node.log());
    for max_bytes in [20_000u32, 4 << 20] {
        let over_tls = committed_log(&client, end, max_bytes);
        assert!(
            over_tls[..reads[0].len()] == reads[0][..],
            "TLS reads differ from plain reads"
        );
    }
    let refused = Client::connect_with(&[&addr], tls_config(&ca.pem))
        .and_then(|second| second.status())
        .expect_err("a second connection past --max-connections 1");
    assert_eq!(
        refused.server_error(),
        Some(&loglog::ServerError::Busy),
        "{refused}"
    );
    drop(client);
    node.stop();
}
