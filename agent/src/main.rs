//! `tern-agent`: the per-host agent of tern. A thin shell over the library.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tern::client::ClientTls;
use tern::model::{DataplaneKind, Family, IfAddr};
use tern::proto;
use tern_agent::agent::{AgentConfig, NatChoice};
use tern_agent::calc::bird::{RenderOptions, RouterId};
use tern_agent::dataplane::IptablesBackend;
use tern_agent::exec::Exec;
use tern_agent::render::{RenderDataplane, What};
use tern_agent::sync::SyncConfig;

#[derive(Debug, Parser)]
#[command(
    name = "tern-agent",
    version,
    about = "tern agent: NAT outgoing and BGP on every host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataplaneFlag {
    Auto,
    Nftables,
    Iptables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendFlag {
    /// The distribution's `iptables` (iptables-nft on Debian 12).
    Default,
    /// `iptables-legacy`.
    Legacy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BirdMode {
    /// The agent starts BIRD and restarts it when it dies.
    Managed,
    /// BIRD runs under another supervisor; the agent writes the config and reloads it.
    External,
    /// No BGP on this host.
    Disabled,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// This node's name [default: the host name]
    #[arg(long, env = "TERN_NODE_NAME")]
    node_name: Option<String>,
    /// Controller addresses (host:port), comma separated; the agent fails over between them.
    #[arg(long, env = "TERN_CONTROLLERS", value_delimiter = ',', required = true)]
    controllers: Vec<String>,
    #[arg(long, env = "TERN_CA")]
    ca: Option<PathBuf>,
    /// This agent's certificate (spiffe://tern/node/<name>).
    #[arg(long, env = "TERN_CERT")]
    cert: Option<PathBuf>,
    #[arg(long, env = "TERN_KEY")]
    key: Option<PathBuf>,
    /// Name to verify the controller certificate against.
    #[arg(long, env = "TERN_SERVER_NAME")]
    server_name: Option<String>,
    /// Plaintext to a controller started with --insecure.
    #[arg(long, env = "TERN_INSECURE")]
    insecure: bool,
    /// The node's IPv4 address in CIDR form, `auto` (detect) or `none`.
    #[arg(long, env = "TERN_IPV4_ADDRESS", default_value = "auto")]
    ipv4_address: String,
    /// The node's IPv6 address in CIDR form, `auto` (detect) or `none`.
    #[arg(long, env = "TERN_IPV6_ADDRESS", default_value = "none")]
    ipv6_address: String,
    /// Labels to register on the Node, key=value (repeat, or comma separated).
    #[arg(long = "label", env = "TERN_LABELS", value_delimiter = ',')]
    labels: Vec<String>,
    /// NAT dataplane; overrides AgentConfiguration `dataplane` when given.
    #[arg(long, env = "TERN_DATAPLANE", value_enum)]
    dataplane: Option<DataplaneFlag>,
    /// iptables flavour for the iptables dataplane.
    #[arg(
        long,
        env = "TERN_IPTABLES_BACKEND",
        value_enum,
        default_value = "default"
    )]
    iptables_backend: BackendFlag,
    /// How BIRD runs on this host.
    #[arg(long, env = "TERN_BIRD", value_enum, default_value = "managed")]
    bird: BirdMode,
    /// Directory for the BIRD configuration and other state.
    #[arg(long, env = "TERN_STATE_DIR", default_value = "/var/lib/tern")]
    state_dir: PathBuf,
    /// BIRD's control socket.
    #[arg(long, env = "TERN_BIRD_SOCKET", default_value = "/run/tern/bird.ctl")]
    bird_socket: PathBuf,
    /// BGP router id: an IPv4 address or "hash" [default: the node's IPv4 address]
    #[arg(long, env = "TERN_ROUTER_ID", default_value = "")]
    router_id: RouterId,
    /// How often the NAT state is read back and repaired, e.g. 30s.
    #[arg(long, env = "TERN_RESYNC_INTERVAL", default_value = "30s")]
    resync_interval: String,
    /// Prometheus metrics listen address, e.g. 127.0.0.1:9444.
    #[arg(long, env = "TERN_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Run the host tools (nft, iptables, ip, bird, birdc) inside this named network
    /// namespace (`ip netns exec`) while the agent itself stays where it is: one
    /// machine can play several hosts (tests, labs).
    #[arg(long, env = "TERN_NETNS")]
    netns: Option<String>,
    /// Serve tern's CNI plugin on this unix socket (`none`: not at all): the plugin
    /// hands its requests to the agent, which assigns addresses over its own channel
    /// to the controller and makes the veths. The socket is root's only (0600). Deploy
    /// files set /run/tern/cni.sock, where the plugin looks by default.
    #[arg(long, env = "TERN_CNI_SOCKET", default_value = "none")]
    cni_socket: String,
    /// Log filter [default: info]
    #[arg(long, env = "TERN_LOG", default_value = "info")]
    log_level: String,
    #[arg(long, env = "TERN_LOG_FORMAT", value_enum, default_value = "plain")]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run(Box<RunArgs>),
    /// Remove everything tern created on this host (NAT tables and chains, the BIRD
    /// configuration it wrote), and nothing else.
    Cleanup {
        #[arg(long, env = "TERN_STATE_DIR", default_value = "/var/lib/tern")]
        state_dir: PathBuf,
        #[arg(long, env = "TERN_BIRD_SOCKET", default_value = "/run/tern/bird.ctl")]
        bird_socket: PathBuf,
        /// How BIRD ran: managed (stopped and its files removed), external (left alone).
        #[arg(long, env = "TERN_BIRD", value_enum, default_value = "managed")]
        bird: BirdMode,
    },
    /// Print what the agent would program for a node, from a file of resources.
    Render {
        /// YAML or JSON file of resources (tern or Calico v3 manifests); `-` for stdin.
        #[arg(long, short = 'i')]
        input: PathBuf,
        /// The node to render for.
        #[arg(long)]
        node: String,
        /// What to print.
        #[arg(long, value_enum, default_value = "bird")]
        what: What,
        /// NAT ruleset syntax.
        #[arg(long, value_enum, default_value = "nftables")]
        dataplane: RenderDataplane,
        /// BGP router id: an IPv4 address or "hash" (default: the node's IPv4 address).
        #[arg(long, env = "TERN_ROUTER_ID", default_value = "")]
        router_id: RouterId,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Render {
            input,
            node,
            what,
            dataplane,
            router_id,
        } => render(input, &node, what, dataplane, router_id),
        Command::Cleanup {
            state_dir,
            bird_socket,
            bird,
        } => cleanup(&state_dir, &bird_socket, bird),
        Command::Run(args) => run(*args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tern-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn render(
    input: PathBuf,
    node: &str,
    what: What,
    dataplane: RenderDataplane,
    router_id: RouterId,
) -> anyhow::Result<()> {
    let text = if input.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading stdin")?
    } else {
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?
    };
    let opts = RenderOptions { router_id };
    let out = tern_agent::render::render_offline(&text, node, what, dataplane, &opts)?;
    print!("{out}");
    Ok(())
}

fn cleanup(
    state_dir: &std::path::Path,
    bird_socket: &std::path::Path,
    bird: BirdMode,
) -> anyhow::Result<()> {
    let exec = Exec::host();
    let mut errors = Vec::new();
    if let Err(e) = tern_agent::dataplane::cleanup_all(&exec) {
        errors.push(e.to_string());
    }
    if bird != BirdMode::Disabled
        && let Err(e) =
            tern_agent::bgp::cleanup(&exec, state_dir, bird_socket, bird == BirdMode::Managed)
    {
        errors.push(e);
    }
    if errors.is_empty() {
        println!("Removed tern's NAT tables and chains and its BIRD configuration.");
        Ok(())
    } else {
        bail!("cleanup finished with errors: {}", errors.join("; "))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn address(flag: &str, family: Family, exec: &Exec) -> anyhow::Result<String> {
    match flag {
        "none" | "" => Ok(String::new()),
        "auto" => Ok(tern_agent::detect::detect(exec, family)
            .map(|a| a.to_string())
            .unwrap_or_default()),
        cidr => {
            let a: IfAddr = cidr.parse().map_err(|e: String| anyhow!(e))?;
            if Family::of_addr(&a.addr()) != family {
                bail!("{cidr} is not an IPv{} address", family.number());
            }
            Ok(a.to_string())
        }
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let fmt = match a.log_format {
        LogFormat::Plain => tern::logging::Format::Plain,
        LogFormat::Json => tern::logging::Format::Json,
    };
    tern::logging::init(&a.log_level, fmt).map_err(|e| anyhow!(e))?;
    let node = a.node_name.clone().unwrap_or_else(hostname);
    tern::model::check_name(&node).map_err(|e| anyhow!("--node-name: {e}"))?;
    let tls = ClientTls {
        ca: a.ca.clone(),
        cert: a.cert.clone(),
        key: a.key.clone(),
        server_name: a.server_name.clone(),
        insecure: a.insecure,
    };
    tls.check()?;
    let resync: tern::model::GoDuration = a
        .resync_interval
        .parse()
        .map_err(|e: String| anyhow!("--resync-interval: {e}"))?;
    let exec = match &a.netns {
        Some(ns) => Exec::in_netns(ns),
        None => Exec::host(),
    };
    let mut labels = HashMap::new();
    for l in &a.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {l:?}: expected key=value"))?;
        labels.insert(k.trim().to_string(), v.trim().to_string());
    }
    let registration = proto::NodeRegistration {
        ipv4_address: address(&a.ipv4_address, Family::V4, &exec)?,
        ipv6_address: address(&a.ipv6_address, Family::V6, &exec)?,
        labels,
    };
    let mut sync = SyncConfig::new(node.clone(), a.controllers.clone(), tls);
    sync.registration = registration;
    let nat = NatChoice::Select {
        flag: a.dataplane.map(|d| match d {
            DataplaneFlag::Auto => DataplaneKind::Auto,
            DataplaneFlag::Nftables => DataplaneKind::Nftables,
            DataplaneFlag::Iptables => DataplaneKind::Iptables,
        }),
        backend: match a.iptables_backend {
            BackendFlag::Default => IptablesBackend::Default,
            BackendFlag::Legacy => IptablesBackend::Legacy,
        },
    };
    let bgp = match a.bird {
        BirdMode::Disabled => None,
        mode => Some(tern_agent::bgp::settings(
            &exec,
            &a.state_dir,
            &a.bird_socket,
            mode == BirdMode::Managed,
            RenderOptions {
                router_id: a.router_id,
            },
        )?),
    };
    let cni = match a.cni_socket.as_str() {
        "none" | "" => None,
        path if !path.starts_with('/') => bail!("--cni-socket {path:?}: not an absolute path"),
        path => Some(tern_agent::cni::server::CniServerConfig {
            socket: PathBuf::from(path),
            node: node.clone(),
            controllers: a.controllers.clone(),
            tls: sync.tls.clone(),
            host: exec.clone(),
            timeout: Duration::from_secs(10),
        }),
    };
    let cfg = AgentConfig {
        sync,
        exec,
        nat,
        bgp,
        resync_interval: resync.0.max(Duration::from_secs(1)),
        status_interval: Duration::from_secs(5),
        metrics_listen: a.metrics_listen,
    };
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let cni = match cni {
            Some(c) => Some(tern_agent::cni::server::serve(c).await.context("--cni-socket")?),
            None => None,
        };
        let mut agent = tern_agent::agent::start(cfg).await?;
        tracing::info!(node = %node, controllers = ?a.controllers, "agent started");
        tokio::select! {
            r = tern::util::shutdown_signal() => r?,
            why = agent.ended() => {
                tracing::error!(reason = %why, "exiting so that the agent is restarted; the host keeps its NAT and BGP state");
                anyhow::bail!("{why}");
            }
        }
        tracing::info!(
            "stopping; the host keeps its NAT and BGP state (run `tern-agent cleanup` to remove it)"
        );
        agent.stop();
        if let Some(c) = cni {
            c.abort();
        }
        Ok(())
    })
}
