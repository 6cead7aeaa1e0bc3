//! The global TLS options: how every command connects (plain TCP unless
//! `--tls-ca` is given).

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::Context;
use loglog::ClientTls;

#[derive(clap::Args, Debug)]
pub(crate) struct TlsArgs {
    /// Connect with TLS, trusting this CA certificate (PEM). Without it:
    /// plain TCP (the default, for local use).
    #[arg(long, global = true, env = "LOGLOG_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// The name every node's certificate must carry [default: the host of
    /// each address, a DNS name or an IP address].
    #[arg(
        long,
        global = true,
        env = "LOGLOG_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,
    /// Present this client certificate (PEM) to nodes that demand one.
    #[arg(
        long,
        global = true,
        env = "LOGLOG_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires_all = ["tls_ca", "tls_client_key"]
    )]
    tls_client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "LOGLOG_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_client_cert"
    )]
    tls_client_key: Option<PathBuf>,
}

/// What every connection of this process uses (set once by `main`).
static CLIENT_TLS: OnceLock<Option<ClientTls>> = OnceLock::new();

impl TlsArgs {
    /// Reads the files and keeps the result for [`client_config`].
    pub(crate) fn install(&self) -> anyhow::Result<()> {
        let tls = match &self.tls_ca {
            None => None,
            Some(ca) => {
                let client_cert = self
                    .tls_client_cert
                    .as_ref()
                    .zip(self.tls_client_key.as_ref());
                let mut tls =
                    ClientTls::from_files(ca, client_cert).with_context(|| "cannot set up TLS")?;
                if let Some(name) = &self.tls_server_name {
                    tls = tls.with_server_name(name)?;
                }
                Some(tls)
            }
        };
        // Set once, before any connection.
        let _ = CLIENT_TLS.set(tls);
        Ok(())
    }
}

/// The TLS every connection of this process uses (`None`: plain TCP).
pub(crate) fn client_tls() -> Option<ClientTls> {
    CLIENT_TLS.get().cloned().flatten()
}
