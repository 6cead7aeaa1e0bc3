//! TLS for the client listener and the peer transport (rustls with the
//! ring provider; certificates and keys in PEM files).
//!
//! * **Peers** authenticate each other by mutual TLS: the peer listener
//!   demands a client certificate issued by the cluster's CA (`ca`), and a
//!   dialing node checks the listener's certificate against the same CA
//!   and presents its own. So every node's certificate serves both ends:
//!   with an extended key usage, it needs both `serverAuth` and
//!   `clientAuth`. A connection with another CA's certificate, or none, is
//!   refused during the handshake and logged (warn, with the peer's
//!   address and rustls' reason). The LogLog peer handshake (cluster id,
//!   node ids) then runs inside the encrypted stream, unchanged, and ties
//!   the node id the dialer claims to its certificate: the certificate must
//!   be valid for the name this node would dial that member by (the host
//!   of its peer address, or `peer_server_name`), as its server
//!   certificate must be for the members that dial it. Otherwise any
//!   holder of a certificate of the CA (a client's, under
//!   [`ClientAuth::Require`]) could speak as a member.
//! * **Clients**: the client listener runs server-authenticated TLS with
//!   the same certificate; with [`ClientAuth::Require`] it also demands a
//!   client certificate from `ca`. The wire protocol inside is unchanged.
//! * Without a `[tls]` configuration everything is plain TCP: the default,
//!   meant for local use (loopback, a trusted network).

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::RootCertStore;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Whether the client listener demands client certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// Server authentication only (clients check the node's certificate).
    #[default]
    None,
    /// Clients must present a certificate issued by the CA (`tls.ca`).
    Require,
}

impl std::str::FromStr for ClientAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<ClientAuth, String> {
        match text {
            "none" => Ok(ClientAuth::None),
            "require" => Ok(ClientAuth::Require),
            other => Err(format!(
                "unknown client auth {other:?}: expected \"none\" or \"require\""
            )),
        }
    }
}

impl ClientAuth {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::None => "none",
            ClientAuth::Require => "require",
        }
    }
}

/// Which listeners use TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsListeners {
    /// The client listener and the peer transport.
    #[default]
    Both,
    /// Only the client listener (peers talk plain TCP).
    Clients,
    /// Only the peer transport (clients talk plain TCP).
    Peers,
}

impl std::str::FromStr for TlsListeners {
    type Err = String;

    fn from_str(text: &str) -> Result<TlsListeners, String> {
        match text {
            "both" => Ok(TlsListeners::Both),
            "clients" => Ok(TlsListeners::Clients),
            "peers" => Ok(TlsListeners::Peers),
            other => Err(format!(
                "unknown TLS listeners {other:?}: expected \"both\", \"clients\" or \"peers\""
            )),
        }
    }
}

impl TlsListeners {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsListeners::Both => "both",
            TlsListeners::Clients => "clients",
            TlsListeners::Peers => "peers",
        }
    }

    pub fn clients(self) -> bool {
        matches!(self, TlsListeners::Both | TlsListeners::Clients)
    }

    pub fn peers(self) -> bool {
        matches!(self, TlsListeners::Both | TlsListeners::Peers)
    }
}

/// A node's TLS settings (`[tls]` in the config file, `--tls-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// This node's certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The cluster's CA certificate(s) (PEM): what peers' certificates
    /// (and client certificates, with [`ClientAuth::Require`]) must chain
    /// to. Required for peers.
    pub ca: Option<PathBuf>,
    pub listeners: TlsListeners,
    pub client_auth: ClientAuth,
    /// The name a dialing node checks a peer's certificate against; `None`:
    /// the host of the peer's address (a DNS name or an IP address, which
    /// the certificate must then list as a subject alternative name).
    pub peer_server_name: Option<String>,
}

impl TlsConfig {
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> TlsConfig {
        TlsConfig {
            cert: cert.into(),
            key: key.into(),
            ca: None,
            listeners: TlsListeners::Both,
            client_auth: ClientAuth::None,
            peer_server_name: None,
        }
    }

    /// Checks that the settings fit together (the files are read at start).
    pub fn validate(&self, clustered: bool) -> Result<(), String> {
        if self.ca.is_none() && self.listeners.peers() && clustered {
            return Err(
                "TLS between peers is mutual and needs the cluster's CA (tls.ca, --tls-ca)"
                    .to_string(),
            );
        }
        if self.ca.is_none() && self.listeners.clients() && self.client_auth == ClientAuth::Require
        {
            return Err(
                "tls.client_auth = \"require\" needs the CA that issues client certificates (tls.ca, --tls-ca)"
                    .to_string(),
            );
        }
        if let Some(name) = &self.peer_server_name {
            ServerName::try_from(name.as_str())
                .map_err(|error| format!("tls.peer_server_name {name:?}: {error}"))?;
        }
        Ok(())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("certificates in {}: {error}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|error| format!("private key in {}: {error}", path.display()))
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|error| format!("CA certificate in {}: {error}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// The TLS acceptor of the client listener, when it uses TLS.
pub(crate) fn client_acceptor(config: &TlsConfig) -> Result<Option<TlsAcceptor>, String> {
    if !config.listeners.clients() {
        return Ok(None);
    }
    let roots = match (config.client_auth, &config.ca) {
        (ClientAuth::Require, Some(ca)) => Some(read_roots(ca)?),
        (ClientAuth::Require, None) => return Err("client auth needs tls.ca".to_string()),
        (ClientAuth::None, _) => None,
    };
    Ok(Some(acceptor(config, roots)?))
}

fn acceptor(config: &TlsConfig, roots: Option<Arc<RootCertStore>>) -> Result<TlsAcceptor, String> {
    let certs = read_certs(&config.cert)?;
    let key = read_key(&config.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|error| format!("client certificate verifier: {error}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|error| format!("{}: {error}", config.cert.display()))?;
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// Mutual TLS between peers: both ends present a certificate of the
/// cluster's CA and check the other's.
pub(crate) struct PeerTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PeerTls {
    pub(crate) fn load(config: &TlsConfig) -> Result<Option<PeerTls>, String> {
        if !config.listeners.peers() {
            return Ok(None);
        }
        let ca = config.ca.as_ref().ok_or("TLS between peers needs tls.ca")?;
        let roots = read_roots(ca)?;
        let acceptor = acceptor(config, Some(roots.clone()))?;
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(read_certs(&config.cert)?, read_key(&config.key)?)
            .map_err(|error| format!("{}: {error}", config.cert.display()))?;
        let server_name = config
            .peer_server_name
            .as_deref()
            .map(|name| {
                ServerName::try_from(name.to_string())
                    .map_err(|error| format!("tls.peer_server_name {name:?}: {error}"))
            })
            .transpose()?;
        Ok(Some(PeerTls {
            acceptor,
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        }))
    }

    /// The TLS handshake of an accepted peer connection.
    pub(crate) async fn accept(&self, stream: TcpStream) -> io::Result<Stream> {
        let stream = self.acceptor.accept(stream).await?;
        Ok(Stream::Tls(Box::new(stream.into())))
    }

    /// Checks that the certificate an accepted peer connection showed is
    /// valid for the name this node would dial that peer by:
    /// `peer_server_name` when set, else the host of one of `addresses`
    /// (the claimed member's peer address; while joining, those of
    /// `--peers`). `Ok` for a plain stream (no TLS, nothing to check).
    pub(crate) fn check_dialer<'a>(
        &self,
        stream: &Stream,
        addresses: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        let Stream::Tls(tls) = stream else {
            return Ok(());
        };
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .ok_or("it showed no certificate")?;
        let leaf = ParsedCertificate::try_from(leaf)
            .map_err(|error| format!("its certificate cannot be parsed: {error}"))?;
        let names: Vec<ServerName<'static>> = match &self.server_name {
            Some(name) => vec![name.clone()],
            None => addresses
                .into_iter()
                .filter_map(|address| server_name_of(address).ok())
                .collect(),
        };
        if names
            .iter()
            .any(|name| rustls::client::verify_server_name(&leaf, name).is_ok())
        {
            return Ok(());
        }
        let names: Vec<String> = names
            .iter()
            .map(|name| name.to_str().into_owned())
            .collect();
        Err(if names.is_empty() {
            "no peer address is known to check its certificate against".to_string()
        } else {
            format!("its certificate is not valid for {}", names.join(" or "))
        })
    }

    /// The TLS handshake of a connection dialed to `peer_addr` ("host:port").
    pub(crate) async fn connect(&self, stream: TcpStream, peer_addr: &str) -> io::Result<Stream> {
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => server_name_of(peer_addr)?,
        };
        let stream = self.connector.connect(name, stream).await?;
        Ok(Stream::Tls(Box::new(stream.into())))
    }
}

/// The host of a "host:port" address (IPv6 in brackets), as a TLS name.
pub(crate) fn server_name_of(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|error| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is not a TLS server name: {error}"),
        )
    })
}

/// A peer connection: plain TCP or TLS over it.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(stream) => stream.is_write_vectored(),
            Stream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            Stream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_address_host() {
        assert_eq!(
            server_name_of("127.0.0.1:7101").unwrap(),
            ServerName::try_from("127.0.0.1").unwrap()
        );
        assert_eq!(
            server_name_of("node1.example:7101").unwrap(),
            ServerName::try_from("node1.example").unwrap()
        );
        assert_eq!(
            server_name_of("[::1]:7101").unwrap(),
            ServerName::try_from("::1").unwrap()
        );
        assert!(server_name_of("bad name:1").is_err());
    }

    #[test]
    fn settings_that_cannot_work_are_rejected() {
        let mut config = TlsConfig::new("cert.pem", "key.pem");
        assert!(config.validate(false).is_ok(), "clients only need a cert");
        assert!(config.validate(true).is_err(), "peers need the CA");
        config.listeners = TlsListeners::Clients;
        assert!(config.validate(true).is_ok());
        config.client_auth = ClientAuth::Require;
        assert!(config.validate(true).is_err(), "client auth needs the CA");
        config.ca = Some("ca.pem".into());
        config.listeners = TlsListeners::Both;
        assert!(config.validate(true).is_ok());
        config.peer_server_name = Some("not a name!".into());
        assert!(config.validate(true).is_err());
        assert_eq!("require".parse(), Ok(ClientAuth::Require));
        assert_eq!("peers".parse(), Ok(TlsListeners::Peers));
        assert!("all".parse::<TlsListeners>().is_err());
    }
}
