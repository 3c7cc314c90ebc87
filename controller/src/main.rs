//! `tern-controller`: a thin shell over `tern_controller::start`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use tern::model::{Cidr, GoDuration};
use tern_controller::config::{
    ConnectionLimits, ControllerConfig, FileConfig, LogFormat, SyncTuning,
};
use tern_controller::store::EtcdOptions;
use tern_controller::sync::registration::RegistrationLimits;
use tern_controller::tls::TlsPaths;

#[derive(Debug, Parser)]
#[command(
    name = "tern-controller",
    version,
    about = "tern controller: intent in etcd, resource API, sync to agents, IPAM"
)]
struct Cli {
    /// YAML config file; flags and TERN_* environment variables override it.
    #[arg(long, env = "TERN_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:5443]
    #[arg(long, env = "TERN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Prometheus metrics listen address (HTTP), e.g. 127.0.0.1:9443.
    #[arg(long, env = "TERN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// etcd endpoints, comma separated (host:port or http(s)://host:port).
    #[arg(long, env = "TERN_ETCD_ENDPOINTS", value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// CA that signed etcd's server certificate.
    #[arg(long, env = "TERN_ETCD_CA")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, env = "TERN_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, env = "TERN_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// etcd user (role-based access); the password is read from --etcd-password-file.
    #[arg(long, env = "TERN_ETCD_USERNAME")]
    etcd_username: Option<String>,
    /// File holding the etcd password (never logged).
    #[arg(long, env = "TERN_ETCD_PASSWORD_FILE")]
    etcd_password_file: Option<PathBuf>,
    /// Key prefix in etcd [default: /tern/v1]
    #[arg(long, env = "TERN_PREFIX")]
    prefix: Option<String>,
    /// CA that client certificates must chain to.
    #[arg(long, env = "TERN_CA")]
    ca: Option<PathBuf>,
    /// The controller's TLS certificate.
    #[arg(long, env = "TERN_CERT")]
    cert: Option<PathBuf>,
    /// The controller's TLS key.
    #[arg(long, env = "TERN_KEY")]
    key: Option<PathBuf>,
    /// Serve plaintext without authentication (loopback only, for tests).
    #[arg(long, env = "TERN_INSECURE")]
    insecure: bool,
    /// Allow --insecure on a non-loopback address.
    #[arg(long, env = "TERN_INSECURE_ALLOW_REMOTE")]
    insecure_allow_remote: bool,
    /// This replica's name [default: <hostname>-<random>]
    #[arg(long, env = "TERN_CONTROLLER_ID")]
    controller_id: Option<String>,
    /// Create `default-ipv4-ippool` with this CIDR (natOutgoing) when no pool exists.
    #[arg(long, env = "TERN_DEFAULT_IPV4_POOL")]
    default_ipv4_pool: Option<String>,
    /// Log filter, e.g. info or debug,tern_controller=trace [default: info]
    #[arg(long, env = "TERN_LOG")]
    log_level: Option<String>,
    /// Log format [default: plain]
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Upper bound on agent status writes to etcd per second [default: 500]
    #[arg(long, env = "TERN_STATUS_WRITES_PER_SEC")]
    status_writes_per_sec: Option<u32>,
    /// An agent's status is written to etcd when it changes, and an unchanged one again
    /// after between half and all of this [default: 10m]
    #[arg(long, env = "TERN_STATUS_HEARTBEAT")]
    status_heartbeat: Option<GoDuration>,
    /// Open ResourceService.Watch streams one identity may hold [default: 32]
    #[arg(long, env = "TERN_MAX_WATCHES_PER_IDENTITY")]
    max_watches_per_identity: Option<usize>,
    /// Bytes of object versions the replica's history may hold, from its first list
    /// on [default: 268435456 (256 MiB)]
    #[arg(long, env = "TERN_HISTORY_BYTES")]
    history_bytes: Option<usize>,
    /// Give every node a block of every pool that selects it without being asked
    /// [default: true]
    #[arg(long, env = "TERN_IPAM_AUTO_BLOCKS")]
    ipam_auto_blocks: Option<bool>,
    /// Label keys agents may set on their own Node (--labels), comma separated: a key,
    /// a prefix ending in `/`, or `*` for any. Other labels are an administrator's, and a
    /// Hello that sets one is refused [default: none]
    #[arg(long, env = "TERN_AGENT_LABEL_KEYS", value_delimiter = ',')]
    agent_label_keys: Vec<String>,
    /// Connections at most in the TLS handshake or without a verified client
    /// certificate; a new one beyond this closes the oldest of them [default: 256]
    #[arg(long, env = "TERN_MAX_UNAUTHENTICATED_CONNECTIONS")]
    max_unauthenticated_connections: Option<usize>,
    /// Time a client has to complete the TLS handshake [default: 10s]
    #[arg(long, env = "TERN_HANDSHAKE_TIMEOUT")]
    handshake_timeout: Option<GoDuration>,
    /// Time a client has, after the TLS handshake, to send the HTTP/2 preface
    /// [default: 10s]
    #[arg(long, env = "TERN_PREFACE_TIMEOUT")]
    preface_timeout: Option<GoDuration>,
    /// A connection without an open call for this long is closed [default: 5m]
    #[arg(long, env = "TERN_IDLE_TIMEOUT")]
    idle_timeout: Option<GoDuration>,
    /// Interval of HTTP/2 pings to a client that sends nothing [default: 30s]
    #[arg(long, env = "TERN_HTTP2_KEEPALIVE_INTERVAL")]
    http2_keepalive_interval: Option<GoDuration>,
    /// A client that does not answer a ping within this is disconnected [default: 10s]
    #[arg(long, env = "TERN_HTTP2_KEEPALIVE_TIMEOUT")]
    http2_keepalive_timeout: Option<GoDuration>,
    /// Hellos a node may send in a row before they are limited to one per
    /// --hello-interval; more get RESOURCE_EXHAUSTED [default: 10]
    #[arg(long, env = "TERN_HELLO_BURST")]
    hello_burst: Option<u32>,
    /// Once its burst is spent, a node may say Hello once per this [default: 5s]
    #[arg(long, env = "TERN_HELLO_INTERVAL")]
    hello_interval: Option<GoDuration>,
    /// A node's Hellos rewrite its Node at most once per this; a Hello that would change
    /// it sooner gets RESOURCE_EXHAUSTED [default: 30s]
    #[arg(long, env = "TERN_REGISTRATION_INTERVAL")]
    registration_interval: Option<GoDuration>,
    /// Networks agents may register their Node's addresses in, comma separated (a family
    /// with no network here is not constrained) [default: any]
    #[arg(long, env = "TERN_NODE_ADDRESS_CIDRS", value_delimiter = ',')]
    node_address_cidrs: Vec<String>,
}

/// A duration from a flag, else from the config file, else the default.
fn duration(
    flag: Option<GoDuration>,
    file: Option<String>,
    name: &str,
    default: Duration,
) -> anyhow::Result<Duration> {
    match (flag, file) {
        (Some(d), _) => Ok(d.0),
        (None, Some(s)) => s
            .parse::<GoDuration>()
            .map(|d| d.0)
            .map_err(|e| anyhow::anyhow!("{name}: {e}")),
        (None, None) => Ok(default),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "controller".into())
}

fn build_config(cli: Cli) -> anyhow::Result<(ControllerConfig, String, LogFormat)> {
    let file = match &cli.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let password_file = cli.etcd_password_file.or(file.etcd_password_file);
    let password = match &password_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the etcd password file {}", p.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        None => None,
    };
    let endpoints = if cli.etcd_endpoints.is_empty() {
        file.etcd_endpoints.unwrap_or_default()
    } else {
        cli.etcd_endpoints
    };
    let ca = cli.ca.or(file.ca);
    let cert = cli.cert.or(file.cert);
    let key = cli.key.or(file.key);
    let insecure = cli.insecure || file.insecure.unwrap_or(false);
    let tls = match (ca, cert, key) {
        (Some(ca), Some(cert), Some(key)) => Some(TlsPaths { ca, cert, key }),
        (None, None, None) => None,
        _ => anyhow::bail!("--ca, --cert and --key go together"),
    };
    let default_ipv4_pool = match cli.default_ipv4_pool.or(file.default_ipv4_pool) {
        Some(s) => Some(
            s.parse()
                .map_err(|e: String| anyhow::anyhow!("--default-ipv4-pool: {e}"))?,
        ),
        None => None,
    };
    let reg_defaults = RegistrationLimits::default();
    let node_address_cidrs = if cli.node_address_cidrs.is_empty() {
        file.node_address_cidrs.unwrap_or_default()
    } else {
        cli.node_address_cidrs
    }
    .iter()
    .map(|c| c.trim())
    .filter(|c| !c.is_empty())
    .map(|c| {
        c.parse::<Cidr>()
            .map_err(|e| anyhow::anyhow!("--node-address-cidrs: {e}"))
    })
    .collect::<anyhow::Result<Vec<_>>>()?;
    let registration = RegistrationLimits {
        hello_burst: cli
            .hello_burst
            .or(file.hello_burst)
            .unwrap_or(reg_defaults.hello_burst),
        hello_interval: duration(
            cli.hello_interval,
            file.hello_interval,
            "helloInterval",
            reg_defaults.hello_interval,
        )?,
        registration_interval: duration(
            cli.registration_interval,
            file.registration_interval,
            "registrationInterval",
            reg_defaults.registration_interval,
        )?,
        node_address_cidrs,
    };
    let defaults = ConnectionLimits::default();
    let connections = ConnectionLimits {
        max_unauthenticated: cli
            .max_unauthenticated_connections
            .or(file.max_unauthenticated_connections)
            .unwrap_or(defaults.max_unauthenticated),
        handshake_timeout: duration(
            cli.handshake_timeout,
            file.handshake_timeout,
            "handshakeTimeout",
            defaults.handshake_timeout,
        )?,
        preface_timeout: duration(
            cli.preface_timeout,
            file.preface_timeout,
            "prefaceTimeout",
            defaults.preface_timeout,
        )?,
        idle_timeout: duration(
            cli.idle_timeout,
            file.idle_timeout,
            "idleTimeout",
            defaults.idle_timeout,
        )?,
        keepalive_interval: duration(
            cli.http2_keepalive_interval,
            file.http2_keepalive_interval,
            "http2KeepaliveInterval",
            defaults.keepalive_interval,
        )?,
        keepalive_timeout: duration(
            cli.http2_keepalive_timeout,
            file.http2_keepalive_timeout,
            "http2KeepaliveTimeout",
            defaults.keepalive_timeout,
        )?,
    };
    let config = ControllerConfig {
        listen: cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 5443))),
        metrics_listen: cli.metrics_listen.or(file.metrics_listen),
        etcd: EtcdOptions {
            endpoints,
            ca: cli.etcd_ca.or(file.etcd_ca),
            cert: cli.etcd_cert.or(file.etcd_cert),
            key: cli.etcd_key.or(file.etcd_key),
            username: cli.etcd_username.or(file.etcd_username),
            password,
            request_timeout: None,
        },
        prefix: cli
            .prefix
            .or(file.prefix)
            .unwrap_or_else(|| "/tern/v1".into()),
        tls,
        insecure,
        insecure_allow_remote: cli.insecure_allow_remote
            || file.insecure_allow_remote.unwrap_or(false),
        tls_reload_interval: Duration::from_secs(5),
        controller_id: cli
            .controller_id
            .or(file.controller_id)
            .unwrap_or_else(|| format!("{}-{}", hostname(), &uuid_suffix())),
        default_ipv4_pool,
        status_writes_per_sec: cli
            .status_writes_per_sec
            .or(file.status_writes_per_sec)
            .unwrap_or(500),
        status_heartbeat: duration(
            cli.status_heartbeat,
            file.status_heartbeat,
            "statusHeartbeat",
            Duration::from_secs(600),
        )?,
        sync: SyncTuning {
            history_bytes: cli
                .history_bytes
                .or(file.history_bytes)
                .unwrap_or(tern_controller::cache::DEFAULT_HISTORY_BYTES),
            agent_label_keys: if cli.agent_label_keys.is_empty() {
                file.agent_label_keys.unwrap_or_default()
            } else {
                cli.agent_label_keys
            }
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty())
            .collect(),
            registration,
            ..SyncTuning::default()
        },
        ipam: tern_controller::ipam::IpamTuning {
            auto_blocks: cli
                .ipam_auto_blocks
                .or(file.ipam_auto_blocks)
                .unwrap_or(true),
            ..Default::default()
        },
        connections,
        store: Default::default(),
        watch: tern_controller::api::watch::WatchTuning {
            max_per_identity: cli
                .max_watches_per_identity
                .or(file.max_watches_per_identity)
                .unwrap_or(32),
            ..Default::default()
        },
    };
    let level = cli
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".into());
    let format = cli.log_format.or(file.log_format).unwrap_or_default();
    Ok((config, level, format))
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:06x}", (nanos ^ std::process::id()) & 0xff_ffff)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, level, format) = match build_config(cli) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("tern-controller: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("tern-controller: {e}");
        return ExitCode::from(2);
    }
    let fmt = match format {
        LogFormat::Plain => tern::logging::Format::Plain,
        LogFormat::Json => tern::logging::Format::Json,
    };
    if let Err(e) = tern::logging::init(&level, fmt) {
        eprintln!("tern-controller: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern-controller: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let controller = match tern_controller::start(config).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tern-controller: {e}");
                return ExitCode::from(2);
            }
        };
        tokio::select! {
            r = tern::util::shutdown_signal() => {
                if let Err(e) = r {
                    tracing::error!(error = %e, "signal handling failed");
                }
                tracing::info!("shutting down");
                controller.shutdown().await;
                ExitCode::SUCCESS
            }
        }
    })
}
