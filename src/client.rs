//! Connecting to a controller: mutual TLS (or plaintext with `--insecure`) over one
//! tonic channel. Certificates are read from disk on every connect, so a client that
//! reconnects picks up rotated files.

use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Client-side transport settings (`--ca`, `--cert`, `--key`, `--insecure`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Name to verify the server certificate against (default: the host in the address).
    pub server_name: Option<String>,
    /// Plaintext (only for a controller started with `--insecure`).
    pub insecure: bool,
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Config(String),
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
}

fn read(p: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(p).map_err(|source| ClientError::Read {
        path: p.display().to_string(),
        source,
    })
}

impl ClientTls {
    /// Check that the settings make sense (before any connection attempt).
    pub fn check(&self) -> Result<(), ClientError> {
        if self.insecure {
            return Ok(());
        }
        let missing: Vec<&str> = [
            ("--ca", self.ca.is_none()),
            ("--cert", self.cert.is_none()),
            ("--key", self.key.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, m)| m.then_some(n))
        .collect();
        if !missing.is_empty() {
            return Err(ClientError::Config(format!(
                "TLS needs {} (or --insecure for a plaintext controller)",
                missing.join(", ")
            )));
        }
        Ok(())
    }

    /// A tonic endpoint for `addr` (`host:port`, `http://...` or `https://...`).
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        self.check()?;
        let bare = addr
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        let scheme = if self.insecure { "http" } else { "https" };
        let uri = format!("{scheme}://{bare}");
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| ClientError::Config(format!("bad server address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if let (false, Some(ca), Some(cert), Some(key)) =
            (self.insecure, &self.ca, &self.cert, &self.key)
        {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read(ca)?))
                .identity(Identity::from_pem(read(cert)?, read(key)?));
            if let Some(name) = &self.server_name {
                tls = tls.domain_name(name.clone());
            }
            ep = ep
                .tls_config(tls)
                .map_err(|source| ClientError::Connect { addr: uri, source })?;
        }
        Ok(ep)
    }

    /// Connect now (fails fast when the controller is not reachable).
    pub async fn connect(&self, addr: &str) -> Result<Channel, ClientError> {
        let ep = self.endpoint(addr)?;
        ep.connect().await.map_err(|source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        })
    }
}
