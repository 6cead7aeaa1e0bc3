//! TLS to the nodes' client listener (rustls with the ring provider).
//!
//! Plain TCP is the default (local use). With [`ClientTls`] in
//! [`crate::ClientConfig::tls`], every connection is TLS: the node's
//! certificate must chain to the given CA and name the server: by default
//! the host of the address being dialed (a DNS name, or an IP address the
//! certificate lists), or one fixed name for every node. Optionally the
//! client presents its own certificate (nodes run with
//! `tls.client_auth = "require"`).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;

use crate::error::Error;

/// How a client connects with TLS. Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

fn invalid(message: String) -> Error {
    Error::InvalidArgument(message)
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|error| invalid(format!("certificates in {}: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

impl ClientTls {
    /// Trusts the CA certificate(s) in `ca_file` (PEM) and checks each
    /// node's certificate against the host of its address.
    pub fn from_ca_file(ca_file: impl AsRef<Path>) -> Result<ClientTls, Error> {
        ClientTls::from_files(ca_file, None::<(&Path, &Path)>)
    }

    /// [`from_ca_file`](Self::from_ca_file), also presenting a client
    /// certificate chain and its key (PEM files) to nodes that demand one.
    pub fn from_files(
        ca_file: impl AsRef<Path>,
        client_cert: Option<(impl AsRef<Path>, impl AsRef<Path>)>,
    ) -> Result<ClientTls, Error> {
        let ca_file = ca_file.as_ref();
        let mut roots = RootCertStore::empty();
        for cert in read_certs(ca_file)? {
            roots.add(cert).map_err(|error| {
                invalid(format!("CA certificate in {}: {error}", ca_file.display()))
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid(error.to_string()))?
        .with_root_certificates(roots);
        let config = match client_cert {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let (cert, key) = (cert.as_ref(), key.as_ref());
                let key = PrivateKeyDer::from_pem_file(key).map_err(|error| {
                    invalid(format!("private key in {}: {error}", key.display()))
                })?;
                builder
                    .with_client_auth_cert(read_certs(cert)?, key)
                    .map_err(|error| invalid(format!("{}: {error}", cert.display())))?
            }
        };
        Ok(ClientTls::from_rustls(Arc::new(config)))
    }

    /// Any rustls client configuration (its own roots, client certificates).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    /// Checks every node's certificate against `name` instead of the host
    /// of the address dialed.
    pub fn with_server_name(mut self, name: &str) -> Result<ClientTls, Error> {
        let name = ServerName::try_from(name.to_string())
            .map_err(|error| invalid(format!("TLS server name {name:?}: {error}")))?;
        self.server_name = Some(name);
        Ok(self)
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
    }

    /// The name `addr`'s certificate must carry.
    pub(crate) fn server_name_for(&self, addr: &str) -> std::io::Result<ServerName<'static>> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|error| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host:?} is not a TLS server name ({error}); set one (--tls-server-name)"),
            )
        })
    }
}
