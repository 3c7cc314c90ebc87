//! Controller configuration: typed, validated before anything binds.
//!
//! Sources, strongest first: command-line flags, `TERN_*` environment variables
//! (both handled by clap in `main.rs`), a YAML config file (`--config`), defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use tern::model::Cidr;

use crate::store::EtcdOptions;
use crate::tls::TlsPaths;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Plain,
    Json,
}

/// Everything the controller needs to start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Prometheus metrics listen address (HTTP), if any.
    pub metrics_listen: Option<SocketAddr>,
    pub etcd: EtcdOptions,
    /// Key prefix in etcd, e.g. `/tern/v1`.
    pub prefix: String,
    /// TLS material; None only with `insecure`.
    pub tls: Option<TlsPaths>,
    pub insecure: bool,
    pub insecure_allow_remote: bool,
    /// How often TLS files are checked for changes.
    pub tls_reload_interval: Duration,
    /// This replica's name in node connection records.
    pub controller_id: String,
    /// Create this IPv4 pool (`default-ipv4-ippool`, natOutgoing) when there is no pool.
    pub default_ipv4_pool: Option<Cidr>,
    pub status_writes_per_sec: u32,
    /// An unchanged status report is rewritten after between half and all of this.
    pub status_heartbeat: Duration,
    pub sync: SyncTuning,
    pub ipam: crate::ipam::IpamTuning,
    pub connections: ConnectionLimits,
    /// Page size of etcd range reads (tests set a small one so paging runs).
    pub store: crate::store::StoreTuning,
    /// Bounds of the Watch RPC.
    pub watch: crate::api::watch::WatchTuning,
}

/// Bounds on the connections of the gRPC listener, so that clients that never
/// authenticate, never speak or never leave cannot hold the replica's file descriptors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections at most in the TLS handshake or established without a verified client
    /// certificate. A new one beyond this closes the oldest of them.
    pub max_unauthenticated: usize,
    /// From accept to the end of the TLS handshake.
    pub handshake_timeout: Duration,
    /// From the end of the TLS handshake to the client's HTTP/2 preface.
    pub preface_timeout: Duration,
    /// A connection without an open call for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 pings to an idle client, and how long an answer may take.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_unauthenticated: 256,
            handshake_timeout: Duration::from_secs(10),
            preface_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
        }
    }
}

/// Knobs of the sync fan-out.
#[derive(Debug, Clone)]
pub struct SyncTuning {
    /// Events kept in memory for agents that reconnect or lag.
    pub history_events: usize,
    /// Bytes of object versions the history may hold (bounds it from the first list).
    pub history_bytes: usize,
    /// Items per snapshot chunk.
    pub snapshot_chunk_items: usize,
    /// Interval between pings on an idle stream.
    pub ping_interval: Duration,
    /// An agent that has not answered a ping for this long is disconnected.
    pub pong_timeout: Duration,
    /// An agent whose stream has not drained for this long is disconnected.
    pub send_timeout: Duration,
    /// The label keys an agent may set on its own Node (see [`label_allowed`]). Empty:
    /// none; node labels are then set by administrators only.
    pub agent_label_keys: Vec<String>,
    /// Hello and registration limits and the address rules of self-registration.
    pub registration: crate::sync::registration::RegistrationLimits,
}

/// Whether `key` matches an entry of `--agent-label-keys`: the key itself, a prefix
/// ending in `/` (e.g. `topology.kubernetes.io/`), or `*` for any key.
pub fn label_allowed(allowed: &[String], key: &str) -> bool {
    allowed
        .iter()
        .any(|a| a == "*" || a == key || (a.ends_with('/') && key.starts_with(a.as_str())))
}

impl Default for SyncTuning {
    fn default() -> Self {
        SyncTuning {
            history_events: 100_000,
            history_bytes: crate::cache::DEFAULT_HISTORY_BYTES,
            snapshot_chunk_items: 500,
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
            agent_label_keys: Vec::new(),
            registration: Default::default(),
        }
    }
}

/// The YAML config file. Every field is optional; flags and environment override it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub etcd_endpoints: Option<Vec<String>>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    pub etcd_username: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub prefix: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure: Option<bool>,
    pub insecure_allow_remote: Option<bool>,
    pub controller_id: Option<String>,
    pub default_ipv4_pool: Option<String>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub status_writes_per_sec: Option<u32>,
    pub status_heartbeat: Option<String>,
    pub ipam_auto_blocks: Option<bool>,
    pub max_watches_per_identity: Option<usize>,
    pub history_bytes: Option<usize>,
    pub agent_label_keys: Option<Vec<String>>,
    pub max_unauthenticated_connections: Option<usize>,
    pub handshake_timeout: Option<String>,
    pub preface_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
    pub hello_burst: Option<u32>,
    pub hello_interval: Option<String>,
    pub registration_interval: Option<String>,
    pub node_address_cidrs: Option<Vec<String>>,
}

/// A configuration error: what is wrong, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
    #[error("config file {path}: {reason}")]
    File { path: String, reason: String },
}

impl FileConfig {
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        tern::manifest::from_str(&text).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    }
}

impl ControllerConfig {
    /// A configuration for tests and embedding: plaintext on loopback port 0.
    pub fn insecure_for_tests(etcd_endpoint: String, prefix: String) -> Self {
        ControllerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_listen: None,
            etcd: EtcdOptions {
                endpoints: vec![etcd_endpoint],
                ..Default::default()
            },
            prefix,
            tls: None,
            insecure: true,
            insecure_allow_remote: false,
            tls_reload_interval: Duration::from_secs(2),
            controller_id: format!("controller-{}", &uuid::Uuid::new_v4().to_string()[..8]),
            default_ipv4_pool: None,
            status_writes_per_sec: 500,
            status_heartbeat: Duration::from_secs(600),
            sync: SyncTuning::default(),
            ipam: crate::ipam::IpamTuning::default(),
            connections: ConnectionLimits::default(),
            store: crate::store::StoreTuning::default(),
            watch: crate::api::watch::WatchTuning::default(),
        }
    }

    /// Check the combination of settings. Called before anything binds.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.etcd.endpoints.is_empty() {
            return bad("no etcd endpoints: give --etcd-endpoints (TERN_ETCD_ENDPOINTS)".into());
        }
        for e in &self.etcd.endpoints {
            let hostport = e.split("://").last().unwrap_or(e);
            if !hostport.contains(':') {
                return bad(format!(
                    "etcd endpoint {e:?} has no port (expected host:port or http(s)://host:port)"
                ));
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 {
            return bad(format!(
                "key prefix {:?} must start with '/' and name a directory, e.g. /tern/v1",
                self.prefix
            ));
        }
        match (&self.tls, self.insecure) {
            (Some(_), true) => {
                return bad("--insecure cannot be combined with --cert/--key/--ca".into());
            }
            (None, false) => {
                return bad(
                    "TLS is required: give --ca, --cert and --key (or --insecure for a \
                     plaintext test setup on loopback)"
                        .into(),
                );
            }
            (None, true) if !self.listen.ip().is_loopback() && !self.insecure_allow_remote => {
                return bad(format!(
                    "refusing plaintext on non-loopback address {}: add --insecure-allow-remote \
                     if you really mean it",
                    self.listen
                ));
            }
            _ => {}
        }
        if let Some(t) = &self.tls {
            for (what, p) in [("--ca", &t.ca), ("--cert", &t.cert), ("--key", &t.key)] {
                if !p.exists() {
                    return bad(format!("{what} {} does not exist", p.display()));
                }
            }
        }
        if self.etcd.cert.is_some() != self.etcd.key.is_some() {
            return bad("--etcd-cert and --etcd-key go together".into());
        }
        if self.etcd.username.is_some() != self.etcd.password.is_some() {
            return bad("--etcd-username needs --etcd-password-file (and vice versa)".into());
        }
        if let Some(c) = &self.default_ipv4_pool
            && (!c.is_ipv4() || !c.is_masked())
        {
            return bad(format!(
                "--default-ipv4-pool {c} must be an IPv4 network address"
            ));
        }
        if self.controller_id.is_empty() {
            return bad("--controller-id must not be empty".into());
        }
        let r = &self.sync.registration;
        if r.hello_burst == 0 {
            return bad("--hello-burst must be at least 1".into());
        }
        if r.hello_interval.is_zero() {
            return bad("--hello-interval must be longer than 0".into());
        }
        let c = &self.connections;
        if c.max_unauthenticated == 0 {
            return bad("--max-unauthenticated-connections must be at least 1".into());
        }
        for (flag, d) in [
            ("--handshake-timeout", c.handshake_timeout),
            ("--preface-timeout", c.preface_timeout),
            ("--idle-timeout", c.idle_timeout),
            ("--http2-keepalive-interval", c.keepalive_interval),
            ("--http2-keepalive-timeout", c.keepalive_timeout),
        ] {
            if d.is_zero() {
                return bad(format!("{flag} must be longer than 0"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::label_allowed;

    #[test]
    fn agent_label_keys_match_keys_prefixes_or_anything() {
        let allowed = ["rack".to_string(), "topology.kubernetes.io/".to_string()];
        assert!(label_allowed(&allowed, "rack"));
        assert!(label_allowed(&allowed, "topology.kubernetes.io/zone"));
        assert!(!label_allowed(&allowed, "rack2"));
        assert!(!label_allowed(&allowed, "rr"));
        assert!(!label_allowed(&allowed, "topology.kubernetes.io"));
        assert!(!label_allowed(&[], "rack"));
        assert!(label_allowed(&["*".to_string()], "anything/at-all"));
    }
}
