//! `ternctl`: a calicoctl-style client of the tern controller over gRPC.

mod ipam;
mod pipeline;
mod table;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, anyhow, bail};
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use serde_json::Value;
use tern::client::ClientTls;
use tern::model::protojson::{from_proto, proto_to_display, value_to_proto};
use tern::model::{DEFAULT_AS_NUMBER, Kind, Resource};
use tern::pki::{Pki, Role};
use tern::proto::{
    self, ipam_service_client::IpamServiceClient, node_service_client::NodeServiceClient,
    resource_service_client::ResourceServiceClient,
};
use tonic::transport::Channel;

use table::{boxed, columns};

#[derive(Debug, Parser)]
#[command(
    name = "ternctl",
    version,
    about = "Manage tern: IP pools, NAT outgoing, BGP peers (calicoctl-style)"
)]
struct Cli {
    /// Controller address, host:port.
    #[arg(
        long,
        short = 's',
        env = "TERN_SERVER",
        default_value = "127.0.0.1:5443",
        global = true
    )]
    server: String,
    /// CA that signed the controller's certificate.
    #[arg(long, env = "TERN_CA", global = true)]
    ca: Option<PathBuf>,
    /// Client certificate (admin or viewer).
    #[arg(long, env = "TERN_CERT", global = true)]
    cert: Option<PathBuf>,
    /// Client key.
    #[arg(long, env = "TERN_KEY", global = true)]
    key: Option<PathBuf>,
    /// Name to verify the controller certificate against (default: the server host).
    #[arg(long, env = "TERN_SERVER_NAME", global = true)]
    server_name: Option<String>,
    /// Plaintext, for a controller started with --insecure.
    #[arg(long, env = "TERN_INSECURE", global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Ps,
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PatchKind {
    Merge,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Display resources.
    Get {
        /// Kind: ippool, bgppeer, bgpconfig, bgpfilter, node, blockaffinity, agentconfig, secret.
        kind: String,
        /// Names (all when none).
        names: Vec<String>,
        #[arg(long, short = 'o', value_enum, default_value = "ps")]
        output: Output,
        /// Label selector, e.g. "zone == 'a'".
        #[arg(long, short = 'l', default_value = "")]
        selector: String,
        /// Show Secret values (administrators only).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Create resources from a file (fails if they exist).
    Create {
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// Create or replace resources from a file.
    Apply {
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// Replace existing resources from a file.
    Replace {
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// Delete resources named in a file, or by kind and name.
    Delete {
        kind: Option<String>,
        names: Vec<String>,
        #[arg(long, short = 'f')]
        filename: Option<PathBuf>,
        /// Do not fail for resources that do not exist.
        #[arg(long)]
        skip_not_exists: bool,
    },
    /// Patch a resource (JSON merge patch by default).
    Patch {
        kind: String,
        name: String,
        #[arg(long, short = 'p')]
        patch: String,
        #[arg(long, short = 't', value_enum, default_value = "merge")]
        r#type: PatchKind,
    },
    /// Node commands.
    Node {
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// IP address management.
    Ipam {
        #[command(subcommand)]
        command: ipam::IpamCommand,
    },
    /// Create a CA and certificates for controllers, agents and users.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Check resources from a file offline: parse and validate them as the controller
    /// would (no server is contacted), printing the fields tern would store only.
    Validate {
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
    /// Print ternctl's version and the controller's.
    Version,
    /// Set or remove a label: `ternctl label node n1 rack=r1 [--overwrite]`,
    /// `ternctl label node n1 rack --remove`.
    Label {
        kind: String,
        name: String,
        /// key=value to set, or key with --remove.
        label: String,
        /// Change the value of a label that is already set.
        #[arg(long)]
        overwrite: bool,
        /// Remove the label.
        #[arg(long)]
        remove: bool,
    },
    /// Move data in and out of tern's datastore.
    Datastore {
        #[command(subcommand)]
        command: DatastoreCommand,
    },
    /// Print a shell completion script.
    Completion { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
enum DatastoreCommand {
    /// Apply an export of a Calico cluster (`calicoctl get ... -o yaml`, List documents
    /// included): server metadata is dropped, kinds tern has no use for are skipped,
    /// and a report per kind says what was created, replaced, skipped and refused.
    Import {
        #[arg(long, short = 'f')]
        filename: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// BGP sessions and dataplane state of a node (every node when none is named).
    Status { node: Option<String> },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a CA, a controller certificate and an admin certificate in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// DNS names and IP addresses of the controller (repeat).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Issue another certificate from the CA in DIR.
    Issue {
        #[command(subcommand)]
        role: IssueRole,
        #[arg(long, global = true, default_value = ".")]
        dir: PathBuf,
        #[arg(long, global = true, default_value_t = 365)]
        days: i64,
    },
}

#[derive(Debug, Subcommand)]
enum IssueRole {
    /// An agent certificate: spiffe://tern/node/NAME.
    Node { name: String },
    /// An administrator: spiffe://tern/admin.
    Admin,
    /// A read-only user: spiffe://tern/viewer.
    Viewer,
    /// A controller server certificate.
    Controller {
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1"])]
        sans: Vec<String>,
    },
}

struct Ctx {
    server: String,
    tls: ClientTls,
}

/// Largest answer ternctl reads: a List or ListNodes of a large cluster is more than
/// gRPC's default 4 MiB (10,000 Nodes with their status are tens of MiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

impl Ctx {
    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(self.tls.connect(&self.server).await?)
    }
    async fn resources(&self) -> anyhow::Result<ResourceServiceClient<Channel>> {
        Ok(ResourceServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }
    async fn nodes(&self) -> anyhow::Result<NodeServiceClient<Channel>> {
        Ok(NodeServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }
    async fn ipam(&self) -> anyhow::Result<IpamServiceClient<Channel>> {
        Ok(IpamServiceClient::new(self.channel().await?)
            .max_decoding_message_size(MAX_RESPONSE_BYTES))
    }
}

fn status_msg(s: &tonic::Status) -> String {
    s.message().to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ternctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let ctx = Ctx {
        server: cli.server.clone(),
        tls: ClientTls {
            ca: cli.ca.clone(),
            cert: cli.cert.clone(),
            key: cli.key.clone(),
            server_name: cli.server_name.clone(),
            insecure: cli.insecure,
        },
    };
    match cli.command {
        Command::Get {
            kind,
            names,
            output,
            selector,
            show_secrets,
        } => get(&ctx, &kind, &names, output, &selector, show_secrets).await,
        Command::Create { filename } => write_file(&ctx, &filename, Verb::Create).await,
        Command::Apply { filename } => write_file(&ctx, &filename, Verb::Apply).await,
        Command::Replace { filename } => write_file(&ctx, &filename, Verb::Replace).await,
        Command::Delete {
            kind,
            names,
            filename,
            skip_not_exists,
        } => delete(&ctx, kind, names, filename, skip_not_exists).await,
        Command::Patch {
            kind,
            name,
            patch,
            r#type,
        } => patch_cmd(&ctx, &kind, &name, patch, r#type).await,
        Command::Node {
            command: NodeCommand::Status { node },
        } => node_status(&ctx, node).await,
        Command::Ipam { command } => ipam::run(&ctx, command).await,
        Command::Certs { command } => certs(command),
        Command::Validate { filename } => validate_file(&filename),
        Command::Version => version(&ctx).await,
        Command::Label {
            kind,
            name,
            label,
            overwrite,
            remove,
        } => label_cmd(&ctx, &kind, &name, &label, overwrite, remove).await,
        Command::Datastore {
            command: DatastoreCommand::Import { filename },
        } => datastore_import(&ctx, &filename).await,
        Command::Completion { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "ternctl",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_kind(s: &str) -> anyhow::Result<Kind> {
    s.parse::<Kind>().map_err(|e| anyhow!(e))
}

// ------------------------------------------------------------------------------------
// get

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The column headers of a kind's table.
fn header(kind: Kind, wide: bool) -> Vec<&'static str> {
    match kind {
        Kind::IPPool if wide => vec![
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR",
        ],
        Kind::IPPool => vec!["NAME", "CIDR", "SELECTOR"],
        Kind::BGPPeer if wide => vec!["NAME", "PEERIP", "NODE", "ASN", "PASSWORD", "FILTERS"],
        Kind::BGPPeer => vec!["NAME", "PEERIP", "NODE", "ASN"],
        Kind::BGPConfiguration if wide => vec![
            "NAME",
            "LOGSEVERITY",
            "MESHENABLED",
            "ASNUMBER",
            "LISTENPORT",
        ],
        Kind::BGPConfiguration => vec!["NAME", "LOGSEVERITY", "MESHENABLED", "ASNUMBER"],
        Kind::BGPFilter if wide => vec!["NAME", "EXPORTV4", "IMPORTV4", "EXPORTV6", "IMPORTV6"],
        Kind::BGPFilter => vec!["NAME"],
        Kind::Node => vec!["NAME", "ASN", "IPV4", "IPV6"],
        Kind::BlockAffinity => vec!["NAME", "NODE", "CIDR", "STATE"],
        Kind::AgentConfiguration => vec![
            "NAME",
            "DATAPLANE",
            "NATOUTGOINGADDRESS",
            "NATPORTRANGE",
            "EXCLUSIONS",
        ],
        Kind::FelixConfiguration => vec![
            "NAME",
            "NATOUTGOINGADDRESS",
            "NATPORTRANGE",
            "EXCLUSIONS",
            "INTERFACEFILTER",
        ],
        Kind::IPReservation => vec!["NAME", "CIDRS"],
        Kind::BFDProfile => vec!["NAME", "RECEIVE", "TRANSMIT", "MULTIPLIER", "PASSIVE"],
        Kind::Secret => vec!["NAME", "KEYS"],
    }
}

/// One table row of a resource, from the typed model.
fn row(r: &Resource, wide: bool) -> Vec<String> {
    let name = r.name().to_string();
    match r {
        Resource::IPPool(p) => {
            let s = &p.spec;
            if wide {
                vec![
                    name,
                    s.cidr.to_string(),
                    s.nat_outgoing.to_string(),
                    format!("{:?}", s.ipip_mode()),
                    format!("{:?}", s.vxlan_mode()),
                    s.disabled.to_string(),
                    s.disable_bgp_export.to_string(),
                    s.node_selector.to_string(),
                ]
            } else {
                vec![name, s.cidr.to_string(), s.node_selector.to_string()]
            }
        }
        Resource::BGPPeer(p) => {
            let s = &p.spec;
            let node = if !s.node.is_empty() {
                s.node.clone()
            } else if !s.node_selector.is_empty() {
                s.node_selector.to_string()
            } else {
                "(global)".to_string()
            };
            let peer = match (&s.peer_ip, s.peer_selector.is_empty()) {
                (Some(ip), _) => ip.to_string(),
                (None, false) => format!("selector: {}", s.peer_selector),
                (None, true) if !s.local_workload_selector.is_empty() => {
                    format!("workloads: {}", s.local_workload_selector)
                }
                (None, true) => String::new(),
            };
            let mut out = vec![name, peer, node, opt(s.as_number)];
            if wide {
                out.push(s.password.is_some().to_string());
                out.push(s.filters.join(","));
            }
            out
        }
        Resource::BGPConfiguration(c) => {
            let s = &c.spec;
            let mut out = vec![
                name,
                opt(s.log_severity_screen.map(|l| format!("{l:?}"))),
                opt(s.node_to_node_mesh_enabled),
                opt(s.as_number),
            ];
            if wide {
                out.push(opt(s.listen_port));
            }
            out
        }
        Resource::BGPFilter(f) => {
            let s = &f.spec;
            if wide {
                vec![
                    name,
                    s.export_v4.len().to_string(),
                    s.import_v4.len().to_string(),
                    s.export_v6.len().to_string(),
                    s.import_v6.len().to_string(),
                ]
            } else {
                vec![name]
            }
        }
        Resource::Node(n) => vec![
            name,
            opt(n.spec.as_number()),
            opt(n.spec.ipv4()),
            opt(n.spec.ipv6()),
        ],
        Resource::BlockAffinity(b) => vec![
            name,
            b.spec.node.clone(),
            b.spec.cidr.to_string(),
            serde_json::to_value(b.spec.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        ],
        Resource::AgentConfiguration(c) => {
            let s = &c.spec;
            vec![
                name,
                opt(s.dataplane.map(|d| format!("{d:?}").to_ascii_lowercase())),
                opt(s.nat_outgoing_address),
                opt(s.nat_port_range),
                opt(s.nat_outgoing_exclusions.map(|x| format!("{x:?}"))),
            ]
        }
        Resource::FelixConfiguration(c) => {
            let s = &c.spec;
            vec![
                name,
                opt(s.nat_outgoing_address),
                opt(s.nat_port_range),
                opt(s.nat_outgoing_exclusions.map(|x| format!("{x:?}"))),
                opt(s.iptables_nat_outgoing_interface_filter.as_ref()),
            ]
        }
        Resource::IPReservation(r) => vec![
            name,
            r.spec
                .reserved_cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        ],
        Resource::BFDProfile(p) => vec![
            name,
            opt(p.spec.receive_interval),
            opt(p.spec.transmit_interval),
            opt(p.spec.multiplier),
            p.spec.passive.to_string(),
        ],
        Resource::Secret(sec) => vec![name, sec.spec.keys().cloned().collect::<Vec<_>>().join(",")],
    }
}

/// The typed resource of a protobuf resource the controller sent; a resource this
/// ternctl cannot read (a newer controller's field) shows its name only.
fn typed_row(kind: Kind, r: &proto::Resource, wide: bool) -> Vec<String> {
    match from_proto(r) {
        Ok(res) => row(&res, wide),
        Err(_) => {
            let name = r
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default();
            let mut out = vec![name];
            out.resize(header(kind, wide).len(), String::new());
            out
        }
    }
}

fn print_documents(
    kind: Kind,
    items: &[proto::Resource],
    single: bool,
    output: Output,
    revision: i64,
) -> anyhow::Result<()> {
    let docs: Vec<Value> = items.iter().map(proto_to_display).collect();
    let v = if single && docs.len() == 1 {
        docs.into_iter().next().expect("one document")
    } else {
        serde_json::json!({
            "apiVersion": tern::model::API_VERSION,
            "kind": format!("{}List", kind.as_str()),
            "metadata": {"resourceVersion": revision.to_string()},
            "items": docs,
        })
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&v)?),
        _ => print!("{}", tern::manifest::to_yaml(&v)),
    }
    Ok(())
}

async fn get(
    ctx: &Ctx,
    kind: &str,
    names: &[String],
    output: Output,
    selector: &str,
    show_secrets: bool,
) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(kind)?;
    let mut api = ctx.resources().await?;
    let (items, revision) = if names.is_empty() {
        let l = api
            .list(proto::ListRequest {
                kind: kind.as_str().into(),
                label_selector: selector.into(),
                show_secrets,
            })
            .await
            .map_err(|e| anyhow!("Failed to list resources: {}", status_msg(&e)))?
            .into_inner();
        (l.items, l.revision)
    } else {
        let mut out = Vec::new();
        for n in names {
            let r = api
                .get(proto::GetRequest {
                    kind: kind.as_str().into(),
                    name: n.clone(),
                    show_secrets,
                })
                .await
                .map_err(|e| anyhow!("Failed to get resources: {}", status_msg(&e)))?
                .into_inner();
            out.push(r);
        }
        (out, 0)
    };
    match output {
        Output::Yaml | Output::Json => {
            print_documents(kind, &items, !names.is_empty(), output, revision)?;
        }
        Output::Ps | Output::Wide if kind == Kind::Node => {
            print_nodes(ctx, &items, output == Output::Wide).await?;
        }
        Output::Ps | Output::Wide => {
            let wide = output == Output::Wide;
            let rows: Vec<Vec<String>> = items.iter().map(|r| typed_row(kind, r, wide)).collect();
            print!("{}", columns(&header(kind, wide), &rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Nodes with their connection: which controller serves them, the revision applied.
async fn print_nodes(ctx: &Ctx, items: &[proto::Resource], wide: bool) -> anyhow::Result<()> {
    let mut nodes = ctx.nodes().await?;
    let infos = nodes
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .map_err(|e| anyhow!("Failed to list nodes: {}", status_msg(&e)))?
        .into_inner()
        .nodes;
    let by_name: BTreeMap<String, proto::NodeInfo> = infos
        .into_iter()
        .filter_map(|i| {
            let n = i.node.as_ref()?.metadata.as_ref()?.name.clone();
            Some((n, i))
        })
        .collect();
    // Nodes without an AS of their own use the cluster's, shown in parentheses as
    // calicoctl shows it.
    let default_as = if wide {
        ctx.resources()
            .await?
            .get(proto::GetRequest {
                kind: "BGPConfiguration".into(),
                name: "default".into(),
                show_secrets: false,
            })
            .await
            .ok()
            .and_then(|r| match from_proto(&r.into_inner()) {
                Ok(Resource::BGPConfiguration(c)) => c.spec.as_number.map(|a| a.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| DEFAULT_AS_NUMBER.to_string())
    } else {
        String::new()
    };
    let mut header = vec!["NAME", "CONNECTED", "CONTROLLER", "REVISION"];
    if wide {
        header = vec![
            "NAME",
            "ASN",
            "IPV4",
            "IPV6",
            "CONNECTED",
            "CONTROLLER",
            "REVISION",
            "AGENT",
            "LASTERROR",
        ];
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let base = typed_row(Kind::Node, r, true);
            let info = by_name.get(&base[0]);
            let connected = info.is_some_and(|i| i.connected).to_string();
            let controller = info.map(|i| i.controller.clone()).unwrap_or_default();
            let rev = info
                .map(|i| i.applied_revision)
                .filter(|r| *r > 0)
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            if wide {
                let st = info.and_then(|i| i.status.as_ref());
                let asn = if base[1].is_empty() {
                    format!("({default_as})")
                } else {
                    base[1].clone()
                };
                vec![
                    base[0].clone(),
                    asn,
                    base[2].clone(),
                    base[3].clone(),
                    connected,
                    controller,
                    rev,
                    st.map(|s| s.agent_version.clone()).unwrap_or_default(),
                    st.map(|s| s.last_error.clone()).unwrap_or_default(),
                ]
            } else {
                vec![base[0].clone(), connected, controller, rev]
            }
        })
        .collect();
    print!("{}", columns(&header, &rows));
    Ok(())
}

// ------------------------------------------------------------------------------------
// create / apply / replace / delete

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Create,
    Apply,
    Replace,
    Delete,
}

impl Verb {
    fn past(self) -> &'static str {
        match self {
            Verb::Create => "created",
            Verb::Apply => "applied",
            Verb::Replace => "replaced",
            Verb::Delete => "deleted",
        }
    }
    fn present(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Apply => "apply",
            Verb::Replace => "replace",
            Verb::Delete => "delete",
        }
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// "'IPPool' resource(s)" when every document has one kind, else "resource(s)".
fn kind_phrase(kinds: &[String], plural: &str) -> String {
    let first = kinds.first().cloned().unwrap_or_default();
    if !first.is_empty() && kinds.iter().all(|k| *k == first) {
        format!("'{first}' {plural}")
    } else {
        plural.to_string()
    }
}

/// The outcome of writing every object: one line when all succeeded, else one line
/// per failure, in input order, naming the object and the reason.
fn report(
    verb: Verb,
    kinds: &[String],
    names: &[String],
    results: &[Result<(), tonic::Status>],
) -> ExitCode {
    let done = results.iter().filter(|r| r.is_ok()).count();
    let failures: Vec<String> = results
        .iter()
        .zip(kinds.iter().zip(names))
        .filter_map(|(r, (kind, name))| {
            let reason = status_msg(r.as_ref().err()?);
            let object = format!("{kind}({name})");
            Some(if reason.contains(&object) {
                reason
            } else {
                format!("{object}: {reason}")
            })
        })
        .collect();
    if failures.is_empty() {
        println!(
            "Successfully {} {} {}",
            verb.past(),
            done,
            kind_phrase(kinds, "resource(s)")
        );
        return ExitCode::SUCCESS;
    }
    if results.len() == 1 {
        let one = kind_phrase(kinds, "resource");
        let reason = results[0]
            .as_ref()
            .err()
            .map(status_msg)
            .unwrap_or_default();
        eprintln!("Failed to {} {one}: [{reason}]", verb.present());
        return ExitCode::FAILURE;
    }
    if done == 0 {
        eprintln!(
            "Failed to {} any {}:",
            verb.present(),
            kind_phrase(kinds, "resources")
        );
    } else {
        eprintln!(
            "Partial success: {} {} out of {} {}:",
            verb.past(),
            done,
            kinds.len(),
            kind_phrase(kinds, "resources")
        );
    }
    for f in failures {
        eprintln!("Hit error: {f}");
    }
    ExitCode::FAILURE
}

/// One line on stderr per field the controller stored without acting on it.
fn print_warnings(r: &proto::Resource) {
    let name = r
        .metadata
        .as_ref()
        .map(|m| m.name.as_str())
        .unwrap_or_default();
    for w in &r.warnings {
        eprintln!("Warning: {}({name}): {}: {}", r.kind, w.field, w.message);
    }
}

async fn write_file(ctx: &Ctx, path: &PathBuf, verb: Verb) -> anyhow::Result<ExitCode> {
    let text = read_input(path)?;
    let docs = tern::manifest::parse_documents_raw(&text).map_err(|e| anyhow!("{e}"))?;
    if docs.is_empty() {
        bail!("no resources found in {}", path.display());
    }
    let mut resources = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        resources.push(value_to_proto(d).map_err(|e| anyhow!("document {}: {e}", i + 1))?);
    }
    let kinds: Vec<String> = resources
        .iter()
        .map(|r| {
            parse_kind(&r.kind)
                .map(|k| k.as_str().to_string())
                .unwrap_or(r.kind.clone())
        })
        .collect();
    let names: Vec<String> = resources
        .iter()
        .map(|r| {
            r.metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_default()
        })
        .collect();
    let api = ctx.resources().await?;
    let docs: Vec<(String, String)> = kinds.iter().cloned().zip(names.iter().cloned()).collect();
    let mut pending: Vec<Option<proto::Resource>> = resources.into_iter().map(Some).collect();
    let results = pipeline::run(&pipeline::steps(&docs), |i| {
        let mut api = api.clone();
        let r = pending[i].take().unwrap_or_default();
        async move {
            match verb {
                Verb::Create => api
                    .create(proto::CreateRequest { resource: Some(r) })
                    .await
                    .map(|o| Some(o.into_inner())),
                Verb::Apply => api
                    .apply(proto::ApplyRequest { resource: Some(r) })
                    .await
                    .map(|o| o.into_inner().resource),
                Verb::Replace => api
                    .update(proto::UpdateRequest { resource: Some(r) })
                    .await
                    .map(|o| Some(o.into_inner())),
                Verb::Delete => {
                    let name = r.metadata.map(|m| m.name).unwrap_or_default();
                    api.delete(proto::DeleteRequest {
                        kind: r.kind,
                        name,
                        resource_version: String::new(),
                    })
                    .await
                    .map(|_| None)
                }
            }
        }
    })
    .await;
    // Warnings too in input order, then the outcome.
    let results: Vec<Result<(), tonic::Status>> = results
        .into_iter()
        .map(|r| r.map(|o| o.iter().for_each(print_warnings)))
        .collect();
    Ok(report(verb, &kinds, &names, &results))
}

async fn delete(
    ctx: &Ctx,
    kind: Option<String>,
    names: Vec<String>,
    filename: Option<PathBuf>,
    skip_not_exists: bool,
) -> anyhow::Result<ExitCode> {
    if let Some(f) = filename {
        if kind.is_some() {
            bail!("give either -f FILE or KIND NAME, not both");
        }
        return write_file(ctx, &f, Verb::Delete).await;
    }
    let Some(kind) = kind else {
        bail!("give -f FILE or KIND NAME");
    };
    if names.is_empty() {
        bail!("name the {kind} to delete");
    }
    let kind = parse_kind(&kind)?;
    let kinds: Vec<String> = names.iter().map(|_| kind.as_str().to_string()).collect();
    let api = ctx.resources().await?;
    let docs: Vec<(String, String)> = kinds.iter().cloned().zip(names.iter().cloned()).collect();
    let results = pipeline::run(&pipeline::steps(&docs), |i| {
        let mut api = api.clone();
        let name = names[i].clone();
        async move {
            match api
                .delete(proto::DeleteRequest {
                    kind: kind.as_str().into(),
                    name,
                    resource_version: String::new(),
                })
                .await
            {
                Err(e) if skip_not_exists && e.code() == tonic::Code::NotFound => Ok(()),
                r => r.map(|_| ()),
            }
        }
    })
    .await;
    Ok(report(Verb::Delete, &kinds, &names, &results))
}

async fn patch_cmd(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    patch: String,
    ty: PatchKind,
) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(kind)?;
    let mut api = ctx.resources().await?;
    let r#type = match ty {
        PatchKind::Merge => proto::PatchType::Merge,
        PatchKind::Json => proto::PatchType::Json,
    } as i32;
    match api
        .patch(proto::PatchRequest {
            kind: kind.as_str().into(),
            name: name.into(),
            r#type,
            patch,
            resource_version: String::new(),
        })
        .await
    {
        Ok(o) => {
            print_warnings(&o.into_inner());
            println!("Successfully patched 1 '{kind}' resource");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("Failed to patch '{kind}' resource: [{}]", status_msg(&e));
            Ok(ExitCode::FAILURE)
        }
    }
}

// ------------------------------------------------------------------------------------
// node status

fn session_rows(status: &proto::NodeStatus, family: u32) -> Vec<Vec<String>> {
    status
        .bgp
        .as_ref()
        .map(|b| {
            b.sessions
                .iter()
                .filter(|s| s.family == family)
                .map(|s| {
                    vec![
                        s.peer_address.clone(),
                        s.peer_type.clone(),
                        s.state.clone(),
                        s.since.clone(),
                        s.info.clone(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The detail of each session of a family (tern's, beside calicoctl's table): uptime,
/// the hold and keepalive times in force, BFD, routes, and BIRD's last error.
fn session_detail_rows(
    status: &proto::NodeStatus,
    family: u32,
    now: time::OffsetDateTime,
) -> Vec<Vec<String>> {
    // Uptimes are as of the report (an agent does not report for an uptime alone):
    // add the time since.
    let since_report = tern::util::parse_rfc3339(&status.reported_at)
        .and_then(|at| u64::try_from((now - at).whole_seconds()).ok())
        .unwrap_or(0);
    let secs = |n: u64| {
        if n == 0 {
            "-".to_string()
        } else {
            tern::model::GoDuration(std::time::Duration::from_secs(n)).to_string()
        }
    };
    status
        .bgp
        .iter()
        .flat_map(|b| &b.sessions)
        .filter(|s| s.family == family)
        .map(|s| {
            let timers = if s.hold_time == 0 && s.keepalive_time == 0 {
                "-".to_string()
            } else {
                format!(
                    "{}/{}",
                    secs(u64::from(s.hold_time)),
                    secs(u64::from(s.keepalive_time))
                )
            };
            vec![
                s.peer_address.clone(),
                s.bgp_state.clone(),
                secs(if s.uptime_seconds == 0 {
                    0
                } else {
                    s.uptime_seconds + since_report
                }),
                timers,
                if s.bfd_state.is_empty() {
                    "-".to_string()
                } else {
                    s.bfd_state.clone()
                },
                format!(
                    "{}/{}/{}",
                    s.routes_imported, s.routes_exported, s.routes_filtered
                ),
                s.last_error.clone(),
            ]
        })
        .collect()
}

fn print_status(name: &str, info: Option<&proto::NodeInfo>, status: &proto::NodeStatus) {
    let connected = info.is_some_and(|i| i.connected);
    if connected {
        println!(
            "Node {name}: agent connected to {} (applied revision {}, reported {})",
            info.map(|i| i.controller.as_str()).unwrap_or_default(),
            status.applied_revision,
            if status.reported_at.is_empty() {
                "never"
            } else {
                &status.reported_at
            },
        );
    } else {
        println!(
            "Node {name}: agent not connected (last applied revision {})",
            status.applied_revision
        );
    }
    if let Some(d) = &status.dataplane {
        println!(
            "Dataplane: {} {} ({} IPv4 / {} IPv6 pools, {} / {} with natOutgoing){}",
            d.driver,
            d.state,
            d.all_pools_v4,
            d.all_pools_v6,
            d.nat_pools_v4,
            d.nat_pools_v6,
            if d.error.is_empty() {
                String::new()
            } else {
                format!(": {}", d.error)
            }
        );
    }
    match &status.bgp {
        Some(b) if b.state == "running" => println!("BIRD is running."),
        Some(b) if !b.state.is_empty() => {
            println!(
                "BIRD is {}{}",
                b.state,
                if b.error.is_empty() {
                    ".".to_string()
                } else {
                    format!(": {}", b.error)
                }
            )
        }
        _ => {}
    }
    if !status.last_error.is_empty() {
        println!("Last error: {}", status.last_error);
    }
    let header = ["PEER ADDRESS", "PEER TYPE", "STATE", "SINCE", "INFO"];
    for (fam, label) in [(4, "IPv4"), (6, "IPv6")] {
        println!();
        println!("{label} BGP status");
        let rows = session_rows(status, fam);
        if rows.is_empty() {
            println!("No {label} peers found.");
        } else {
            print!("{}", boxed(&header, &rows, &[]));
            println!("{label} BGP session detail");
            print!(
                "{}",
                boxed(
                    &[
                        "PEER ADDRESS",
                        "BGP STATE",
                        "UPTIME",
                        "HOLD/KEEPALIVE",
                        "BFD",
                        "ROUTES IN/OUT/FILTERED",
                        "LAST ERROR",
                    ],
                    &session_detail_rows(status, fam, time::OffsetDateTime::now_utc()),
                    &[],
                )
            );
        }
    }
}

async fn node_status(ctx: &Ctx, node: Option<String>) -> anyhow::Result<ExitCode> {
    let mut nodes = ctx.nodes().await?;
    let infos = nodes
        .list_nodes(proto::ListNodesRequest::default())
        .await
        .map_err(|e| anyhow!("Failed to read node status: {}", status_msg(&e)))?
        .into_inner()
        .nodes;
    let named = |i: &proto::NodeInfo| {
        i.node
            .as_ref()
            .and_then(|n| n.metadata.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default()
    };
    let selected: Vec<&proto::NodeInfo> = match &node {
        Some(n) => {
            let found: Vec<_> = infos.iter().filter(|i| named(i) == *n).collect();
            if found.is_empty() {
                eprintln!("resource does not exist: Node({n})");
                return Ok(ExitCode::FAILURE);
            }
            found
        }
        None => infos.iter().collect(),
    };
    for (i, info) in selected.iter().enumerate() {
        if i > 0 {
            println!();
        }
        let name = named(info);
        let status = info.status.clone().unwrap_or_default();
        print_status(&name, Some(info), &status);
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------------------------
// validate, version

/// Every document of the file, parsed, normalized and validated as the controller
/// does, and the pools of the file checked against each other. Nothing is sent.
fn validate_file(path: &PathBuf) -> anyhow::Result<ExitCode> {
    let text = read_input(path)?;
    let docs = match tern::manifest::parse_documents_raw(&text) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("Failed to validate: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if docs.is_empty() {
        bail!("no resources found in {}", path.display());
    }
    let total = docs.len();
    let mut failures = 0;
    let mut pools: Vec<tern::model::IPPool> = Vec::new();
    for (i, doc) in docs.into_iter().enumerate() {
        let index = i + 1;
        let checked = Resource::from_value(doc)
            .map_err(tern::validate::ValidationError::from)
            .and_then(|mut r| {
                r.normalize();
                tern::validate::validate(&r)?;
                if let Resource::IPPool(p) = &r {
                    tern::validate::check_pool_overlap(p, &pools)?;
                    pools.push(p.clone());
                }
                Ok(r)
            });
        match checked {
            Ok(r) => {
                for w in tern::model::stored_only(&r) {
                    eprintln!("Warning: {}({}): {w}", r.kind(), r.name());
                }
            }
            Err(e) => {
                failures += 1;
                for fe in e.errors() {
                    eprintln!("document {index}: {fe}");
                }
            }
        }
    }
    if failures > 0 {
        eprintln!("Failed to validate {failures} resource(s)");
        return Ok(ExitCode::FAILURE);
    }
    println!("Successfully validated {total} resource(s)");
    Ok(ExitCode::SUCCESS)
}

async fn version(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    println!("Client Version:     {}", env!("CARGO_PKG_VERSION"));
    let mut nodes = ctx.nodes().await?;
    match nodes.get_version(proto::GetVersionRequest {}).await {
        Ok(v) => {
            println!("Controller Version: {}", v.into_inner().version);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!(
                "Failed to read the controller's version: {}",
                status_msg(&e)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

// ------------------------------------------------------------------------------------
// label

/// How often `label` retries when the object changed between its read and its write.
const LABEL_RETRIES: usize = 5;

async fn label_cmd(
    ctx: &Ctx,
    kind: &str,
    name: &str,
    label: &str,
    overwrite: bool,
    remove: bool,
) -> anyhow::Result<ExitCode> {
    let kind = parse_kind(kind)?;
    let (key, value) = match (label.split_once('='), remove) {
        (Some(_), true) => bail!("--remove takes a label key, not key=value: {label}"),
        (Some((k, v)), false) => (k.to_string(), Some(v.to_string())),
        (None, true) => (label.to_string(), None),
        (None, false) => bail!("give the label as key=value (or key with --remove)"),
    };
    let mut api = ctx.resources().await?;
    let what = format!("{} {name}", kind.as_str().to_ascii_lowercase());
    for _ in 0..LABEL_RETRIES {
        let current = api
            .get(proto::GetRequest {
                kind: kind.as_str().into(),
                name: name.into(),
                show_secrets: false,
            })
            .await
            .map_err(|e| anyhow!("Failed to get resource: {}", status_msg(&e)))?
            .into_inner();
        let meta = current.metadata.unwrap_or_default();
        let existing = meta.labels.get(&key);
        let patch = match &value {
            None if existing.is_none() => {
                eprintln!("Failed to remove label {key} from {what}: the label is not set");
                return Ok(ExitCode::FAILURE);
            }
            None => serde_json::json!({"metadata": {"labels": {&key: null}}}),
            Some(v) if existing.is_some_and(|e| e != v) && !overwrite => {
                eprintln!(
                    "Failed to set label {key} on {what}: key {key} is already present with \
                     value {}; use --overwrite to set a new value",
                    existing.map(String::as_str).unwrap_or_default()
                );
                return Ok(ExitCode::FAILURE);
            }
            Some(v) => serde_json::json!({"metadata": {"labels": {&key: v}}}),
        };
        // The merge patch touches the one label; the precondition makes the check above
        // hold when the write lands.
        match api
            .patch(proto::PatchRequest {
                kind: kind.as_str().into(),
                name: name.into(),
                r#type: proto::PatchType::Merge as i32,
                patch: patch.to_string(),
                resource_version: meta.resource_version.clone(),
            })
            .await
        {
            Ok(_) => {
                match value {
                    Some(_) => println!("Successfully set label {key} on {what}"),
                    None => println!("Successfully removed label {key} from {what}"),
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) if e.code() == tonic::Code::Aborted => continue,
            Err(e) => {
                eprintln!("Failed to update label of {what}: {}", status_msg(&e));
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    eprintln!("Failed to update label of {what}: it kept changing; retry");
    Ok(ExitCode::FAILURE)
}

// ------------------------------------------------------------------------------------
// datastore import

/// Calico's kinds that tern has no use for, and why (what `import` says it skipped).
fn unused_calico_kind(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "GlobalNetworkPolicy"
        | "NetworkPolicy"
        | "StagedGlobalNetworkPolicy"
        | "StagedNetworkPolicy"
        | "StagedKubernetesNetworkPolicy"
        | "Tier"
        | "GlobalNetworkSet"
        | "NetworkSet"
        | "HostEndpoint"
        | "Profile" => "network policy is not tern's job",
        "WorkloadEndpoint" => "tern keeps no workload endpoints",
        "IPAMBlock" | "IPAMHandle" | "IPAMConfig" | "IPAMConfiguration" => {
            "tern's IPAM keeps its own records (BlockAffinities are imported)"
        }
        "ClusterInformation" | "KubeControllersConfiguration" | "CalicoNodeStatus" => {
            "Calico's own bookkeeping"
        }
        _ => return None,
    })
}

/// The order kinds are applied in: what others refer to first.
fn import_rank(kind: Kind) -> u8 {
    match kind {
        Kind::Secret => 0,
        Kind::IPPool => 1,
        Kind::IPReservation => 2,
        Kind::BFDProfile | Kind::BGPFilter => 3,
        Kind::BGPConfiguration | Kind::FelixConfiguration | Kind::AgentConfiguration => 4,
        Kind::Node => 5,
        Kind::BGPPeer => 6,
        Kind::BlockAffinity => 7,
    }
}

/// Drop what a server wrote into an exported object's metadata.
fn strip_server_metadata(doc: &mut Value) {
    if let Some(Value::Object(meta)) = doc.get_mut("metadata") {
        for k in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "ownerReferences",
            "finalizers",
            "namespace",
        ] {
            meta.remove(k);
        }
    }
}

#[derive(Default)]
struct KindReport {
    created: usize,
    replaced: usize,
    skipped: usize,
    refused: usize,
}

async fn datastore_import(ctx: &Ctx, path: &PathBuf) -> anyhow::Result<ExitCode> {
    let text = read_input(path)?;
    let docs = tern::manifest::parse_documents_raw(&text).map_err(|e| anyhow!("{e}"))?;
    let mut report: BTreeMap<String, KindReport> = BTreeMap::new();
    let mut notes: Vec<String> = Vec::new();
    let mut todo: Vec<(Kind, usize, Value)> = Vec::new();
    for (i, mut doc) in docs.into_iter().enumerate() {
        let kind_name = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match Kind::ALL.into_iter().find(|k| k.as_str() == kind_name) {
            Some(kind) => {
                strip_server_metadata(&mut doc);
                todo.push((kind, i, doc));
            }
            None => {
                report.entry(kind_name.clone()).or_default().skipped += 1;
                let why = unused_calico_kind(&kind_name).unwrap_or("not a kind tern knows");
                notes.push(format!("skipped {kind_name}({name}): {why}"));
            }
        }
    }
    todo.sort_by_key(|(kind, i, _)| (import_rank(*kind), *i));
    let mut api = ctx.resources().await?;
    for (kind, _, doc) in todo {
        let entry = report.entry(kind.as_str().to_string()).or_default();
        let name = doc
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let resource = match value_to_proto(&doc) {
            Ok(r) => r,
            Err(e) => {
                entry.refused += 1;
                notes.push(format!("refused {kind}({name}): {e}"));
                continue;
            }
        };
        match api
            .apply(proto::ApplyRequest {
                resource: Some(resource),
            })
            .await
        {
            Ok(o) => {
                let o = o.into_inner();
                if o.created {
                    entry.created += 1;
                } else {
                    entry.replaced += 1;
                }
                if let Some(r) = &o.resource {
                    print_warnings(r);
                }
            }
            Err(e) if e.code() == tonic::Code::InvalidArgument => {
                entry.refused += 1;
                notes.push(format!("refused {kind}({name}): {}", status_msg(&e)));
            }
            Err(e) => bail!("import stopped at {kind}({name}): {}", status_msg(&e)),
        }
    }
    let rows: Vec<Vec<String>> = report
        .iter()
        .map(|(k, r)| {
            vec![
                k.clone(),
                r.created.to_string(),
                r.replaced.to_string(),
                r.skipped.to_string(),
                r.refused.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        columns(
            &["KIND", "CREATED", "REPLACED", "SKIPPED", "REFUSED"],
            &rows
        )
    );
    for n in &notes {
        println!("{n}");
    }
    let refused: usize = report.values().map(|r| r.refused).sum();
    Ok(if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

// ------------------------------------------------------------------------------------
// certs

fn certs(cmd: CertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CertsCommand::Init { dir, sans, days } => {
            let pki = Pki::init(&dir, days.max(1) * 10)?;
            println!("CA: {}", pki.ca_cert().display());
            for role in [Role::Controller { sans }, Role::Admin] {
                let f = pki.issue(&role, days)?;
                println!(
                    "{}: {} {}",
                    role.file_stem(),
                    f.cert.display(),
                    f.key.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        CertsCommand::Issue { role, dir, days } => {
            let pki = Pki::open(&dir)?;
            let role = match role {
                IssueRole::Node { name } => Role::Node(name),
                IssueRole::Admin => Role::Admin,
                IssueRole::Viewer => Role::Viewer,
                IssueRole::Controller { sans } => Role::Controller { sans },
            };
            let f = pki.issue(&role, days)?;
            println!(
                "{}: {} {}",
                role.file_stem(),
                f.cert.display(),
                f.key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uptimes_count_from_the_report() {
        use tern::proto::{BgpSession, BgpStatus, NodeStatus};
        let status = NodeStatus {
            reported_at: "2026-12-05T10:00:00Z".into(),
            bgp: Some(BgpStatus {
                sessions: vec![
                    BgpSession {
                        peer_address: "10.0.0.2".into(),
                        family: 4,
                        uptime_seconds: 60,
                        ..Default::default()
                    },
                    BgpSession {
                        peer_address: "10.0.0.3".into(),
                        family: 4,
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            ..Default::default()
        };
        let now = time::macros::datetime!(2026-12-05 10:00:30 UTC);
        let rows = super::session_detail_rows(&status, 4, now);
        assert_eq!(rows[0][2], "1m30s", "{rows:?}");
        // Not known: stays unknown.
        assert_eq!(rows[1][2], "-", "{rows:?}");
    }
}
