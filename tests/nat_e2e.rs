//! NAT outgoing end to end: intent through the API, a real controller and etcd, an
//! agent programming the real kernel of a host network namespace, and traffic from a
//! pod namespace checked at an external host.
//!
//! ```text
//!   pod 10.244.1.2 ──veth── host (agent's NAT) ──veth── ext 203.0.113.2 (server)
//!                            │
//!   other pool 10.96.5.2 ──veth┘
//! ```

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use common::{Cluster, eventually, res};
use tern::model::DataplaneKind;
use tern::pki::Role;
use tern::proto;
use tern_agent::agent::{Agent, AgentConfig, BgpSettings, NatChoice};
use tern_agent::dataplane::IptablesBackend;
use tern_agent::dataplane::{BgpApplied, BgpDataplane, BgpError};
use tern_agent::exec::Exec;
use tern_agent::sync::SyncConfig;
use tern_testkit::netns::{self, Netns, veth};

#[test]
fn netns_helper() {
    netns::helper_entry();
}

const POD: &str = "10.244.1.2";
const OTHER: &str = "10.96.5.2";
const HOST: &str = "203.0.113.1";
const SNAT: &str = "203.0.113.9";
const EXT: &str = "203.0.113.2";

fn sock(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("constant"), 8080)
}

fn addr(ip: &str) -> IpAddr {
    ip.parse().expect("constant")
}

struct Hosts {
    host: Netns,
    pod: Netns,
    other: Netns,
    ext: Netns,
}

/// The four namespaces. With `routable_pods` the external host can route the pools
/// back (so un-NATed traffic is answered and its source can be seen); without, only
/// NATed traffic gets an answer.
fn hosts(routable_pods: bool) -> anyhow::Result<Hosts> {
    let h = Hosts {
        host: Netns::new("host")?,
        pod: Netns::new("pod")?,
        other: Netns::new("other")?,
        ext: Netns::new("ext")?,
    };
    h.host.sysctl("net.ipv4.ip_forward", "1")?;
    veth(&h.host, "to-pod", &h.pod, "eth0")?;
    h.host.add_addr("to-pod", "10.244.1.1/24")?;
    h.pod.add_addr("eth0", "10.244.1.2/24")?;
    h.pod.route("default", "10.244.1.1")?;
    veth(&h.host, "to-other", &h.other, "eth0")?;
    h.host.add_addr("to-other", "10.96.5.1/24")?;
    h.other.add_addr("eth0", "10.96.5.2/24")?;
    h.other.route("default", "10.96.5.1")?;
    veth(&h.host, "to-ext", &h.ext, "eth0")?;
    h.host.add_addr("to-ext", "203.0.113.1/24")?;
    h.host.add_addr("to-ext", "203.0.113.9/24")?;
    h.ext.add_addr("eth0", "203.0.113.2/24")?;
    if routable_pods {
        h.ext.route("10.244.0.0/16", HOST)?;
        h.ext.route("10.96.0.0/16", HOST)?;
    }
    h.ext.serve_tcp(sock(EXT))?;
    h.other.serve_tcp(sock(OTHER))?;
    Ok(h)
}

async fn seen(h: &Hosts, target: &str) -> anyhow::Result<IpAddr> {
    let t = sock(target);
    // The probe is a blocking subprocess.
    tokio::task::block_in_place(|| h.pod.tcp_probe_ip(t))
}

async fn agent(c: &Cluster, h: &Hosts, kind: DataplaneKind, backend: IptablesBackend) -> Agent {
    agent_with(c, h, Some(kind), backend, None).await
}

/// An agent whose dataplane comes from the flag, else from AgentConfiguration.
async fn agent_with(
    c: &Cluster,
    h: &Hosts,
    kind: Option<DataplaneKind>,
    backend: IptablesBackend,
    bgp: Option<BgpSettings>,
) -> Agent {
    let tls = c.client_tls(&Role::Node("host-1".into()));
    let mut sync = SyncConfig::new("host-1".into(), vec![c.server()], tls);
    sync.registration.ipv4_address = "203.0.113.1/24".into();
    sync.backoff_min = Duration::from_millis(50);
    sync.backoff_max = Duration::from_millis(500);
    let cfg = AgentConfig {
        sync,
        exec: Exec::in_netns(h.host.name()),
        nat: NatChoice::Select {
            flag: kind,
            backend,
        },
        bgp,
        resync_interval: Duration::from_secs(1),
        status_interval: Duration::from_secs(1),
        metrics_listen: None,
    };
    tern_agent::agent::start(cfg).await.expect("agent starts")
}

async fn apply_docs(c: &Cluster, docs: &str) -> i64 {
    let mut api = c.admin().await;
    let mut last = 0;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        let r = api
            .apply(proto::ApplyRequest {
                resource: Some(tern::model::protojson::to_proto(&d, true)),
            })
            .await
            .expect("apply")
            .into_inner();
        last = r
            .resource
            .and_then(|r| r.metadata)
            .map(|m| m.resource_version.parse().unwrap_or(0))
            .unwrap_or(0);
    }
    last
}

async fn set_nat(c: &Cluster, on: bool) -> i64 {
    apply_docs(
        c,
        &format!(
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: pods}}\nspec: {{cidr: 10.244.0.0/16, natOutgoing: {on}}}\n"
        ),
    )
    .await
}

/// Poll until the external host sees `want` as the pod's source (a few seconds).
async fn expect_seen(h: &Hosts, want: &str, why: &str) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let got = seen(h, EXT).await;
        if matches!(&got, Ok(a) if *a == addr(want)) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{why}: the external host saw {got:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scenario(kind: DataplaneKind, backend: IptablesBackend) -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let h = hosts(true)?;
    apply_docs(
        &c,
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: pods}\nspec: {cidr: 10.244.0.0/16, natOutgoing: true}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: other}\nspec: {cidr: 10.96.0.0/16}\n",
    )
    .await;
    // A rule of somebody else's that must survive everything below.
    h.host.run_stdin(
        "nft",
        &["-f", "-"],
        "table ip foreign {\n  chain post {\n    type nat hook postrouting priority 100; policy accept;\n    ip saddr 192.0.2.0/24 masquerade\n  }\n}\n",
    )?;
    expect_seen(&h, POD, "nothing is programmed before the agent syncs").await?;

    let a = agent(&c, &h, kind, backend).await;
    expect_seen(&h, HOST, "natOutgoing: the host's address").await?;
    ensure!(
        seen(&h, OTHER).await? == addr(POD),
        "traffic to another pool keeps the pod source"
    );

    let t = std::time::Instant::now();
    set_nat(&c, false).await;
    expect_seen(&h, POD, "natOutgoing patched to false over the API").await?;
    eprintln!(
        "{kind:?}: natOutgoing off reached the wire in {:?}",
        t.elapsed()
    );
    set_nat(&c, true).await;
    expect_seen(&h, HOST, "natOutgoing back on").await?;

    apply_docs(
        &c,
        "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {natOutgoingAddress: 203.0.113.9}\n",
    )
    .await;
    expect_seen(&h, SNAT, "natOutgoingAddress").await?;

    // Drift: what tern owns deleted by hand comes back, and is counted.
    match kind {
        DataplaneKind::Nftables => {
            h.host.run("nft", &["delete", "table", "inet", "tern"])?;
        }
        _ => {
            let bin = if backend == IptablesBackend::Legacy {
                "iptables-legacy"
            } else {
                "iptables"
            };
            h.host.run(bin, &["-t", "nat", "-F", "TERN-NAT-OUTGOING"])?;
        }
    }
    let mut applied = a.applied.clone();
    let repaired = tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.drift_repairs > 0),
    )
    .await
    .is_ok();
    ensure!(repaired, "the deleted state was repaired and counted");
    expect_seen(&h, SNAT, "after the repair").await?;

    // The status says what was programmed.
    let nodes = c.nodes(&Role::Viewer).await;
    let ok = eventually(10, async || {
        nodes
            .clone()
            .get_node_status(proto::GetNodeStatusRequest {
                node: "host-1".into(),
            })
            .await
            .ok()
            .and_then(|s| s.into_inner().dataplane)
            .is_some_and(|d| {
                d.state == "programmed"
                    && d.nat_pools_v4 == 1
                    && d.all_pools_v4 == 2
                    && d.drift_repairs > 0
            })
    })
    .await;
    ensure!(ok, "status reports the programmed dataplane");

    // Cleanup removes everything of tern's and nothing else.
    a.stop();
    let foreign_before = h.host.run("nft", &["list", "table", "ip", "foreign"])?;
    tern_agent::dataplane::cleanup_all(&Exec::in_netns(h.host.name())).context("cleanup")?;
    let ruleset = h.host.run("nft", &["list", "ruleset"])?;
    ensure!(!ruleset.contains("table inet tern"), "no tern table left");
    for bin in ["iptables-save", "iptables-legacy-save"] {
        let saved = h.host.run(bin, &["-t", "nat"]).unwrap_or_default();
        ensure!(!saved.contains("TERN-"), "no TERN chain left in {bin}");
    }
    ensure!(
        h.host.run("nft", &["list", "table", "ip", "foreign"])? == foreign_before,
        "the foreign table is untouched"
    );
    expect_seen(&h, POD, "after cleanup").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_follows_the_api_with_nftables() -> anyhow::Result<()> {
    scenario(DataplaneKind::Nftables, IptablesBackend::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_follows_the_api_with_iptables_nft() -> anyhow::Result<()> {
    scenario(DataplaneKind::Iptables, IptablesBackend::Default).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_follows_the_api_with_iptables_legacy() -> anyhow::Result<()> {
    scenario(DataplaneKind::Iptables, IptablesBackend::Legacy).await
}

/// Calico's FelixConfiguration drives the real kernel's NAT as AgentConfiguration does,
/// through the one effective model (docs/api.md, "How FelixConfiguration and
/// AgentConfiguration combine"): `default` sets the address and port range, a
/// `node.<name>` interface filter narrows it, and AgentConfiguration at the same scope
/// wins over FelixConfiguration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn felix_configuration_drives_the_kernels_nat() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let h = hosts(true)?;
    set_nat(&c, true).await;
    // As imported from a Calico cluster, before the agent starts.
    apply_docs(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: default}\nspec: {natOutgoingAddress: 203.0.113.9, natPortRange: '40000:40999', logSeverityScreen: Info}\n",
    )
    .await;
    let a = agent(&c, &h, DataplaneKind::Nftables, IptablesBackend::Default).await;
    expect_seen(&h, SNAT, "FelixConfiguration default natOutgoingAddress").await?;
    let port = tokio::task::block_in_place(|| h.pod.tcp_probe(sock(EXT)))?.port();
    ensure!(
        (40000..=40999).contains(&port),
        "natPortRange: the external host saw source port {port}"
    );

    // The node's own FelixConfiguration: NAT only out of eth+ (the way out is to-ext).
    let mut applied = a.applied.clone();
    let rev = apply_docs(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: FelixConfiguration\nmetadata: {name: node.host-1}\nspec: {iptablesNATOutgoingInterfaceFilter: eth+}\n",
    )
    .await;
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.revision >= rev && x.last_error.is_empty()),
    )
    .await
    .context("the node's FelixConfiguration was applied")??;
    expect_seen(
        &h,
        POD,
        "no NAT out of an interface the filter does not match",
    )
    .await?;

    // AgentConfiguration of the same node wins over its FelixConfiguration.
    apply_docs(
        &c,
        "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: node.host-1}\nspec: {natOutgoingInterfaceFilter: to-+}\n",
    )
    .await;
    expect_seen(&h, SNAT, "AgentConfiguration's filter matches to-ext").await?;

    // Without FelixConfiguration default, no fixed address: the host's own.
    c.admin()
        .await
        .delete(proto::DeleteRequest {
            kind: "FelixConfiguration".into(),
            name: "default".into(),
            ..Default::default()
        })
        .await
        .context("delete FelixConfiguration default")?;
    expect_seen(&h, HOST, "FelixConfiguration default deleted").await?;

    a.stop();
    tern_agent::dataplane::cleanup_all(&Exec::in_netns(h.host.name())).context("cleanup")?;
    let ruleset = h.host.run("nft", &["list", "ruleset"])?;
    ensure!(!ruleset.contains("table inet tern"), "no tern table left");
    Ok(())
}

/// The agent restarts while the pod talks to the outside: no packet is lost and every
/// new connection is NATed (the external host cannot route the pod network back, so a
/// single un-NATed packet would go unanswered).
/// AgentConfiguration's `dataplane` moves NAT from nftables to iptables and back: the
/// new driver is programmed before the old one is removed, and traffic stays NATed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dataplane_switches_with_agent_configuration() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let h = hosts(true)?;
    let dataplane = async |kind: &str| {
        apply_docs(
            &c,
            &format!(
                "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {{name: default}}\nspec: {{dataplane: {kind}}}\n"
            ),
        )
        .await
    };
    set_nat(&c, true).await;
    dataplane("nftables").await;
    let a = agent_with(&c, &h, None, IptablesBackend::Default, None).await;
    expect_seen(&h, HOST, "nftables NAT").await?;
    let programmed = |nft: bool| -> anyhow::Result<bool> {
        let ruleset = h.host.run("nft", &["list", "ruleset"])?;
        let saved = h.host.run("iptables-save", &["-t", "nat"])?;
        Ok(ruleset.contains("table inet tern") == nft && saved.contains(":TERN-") != nft)
    };
    ensure!(programmed(true)?, "only the nftables table");

    let mut applied = a.applied.clone();
    let rev = dataplane("iptables").await;
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.revision >= rev && x.last_error.is_empty()),
    )
    .await
    .context("the switch to iptables was applied")??;
    ensure!(programmed(false)?, "only the TERN chains after the switch");
    expect_seen(&h, HOST, "iptables NAT").await?;

    let rev = dataplane("nftables").await;
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.revision >= rev && x.last_error.is_empty()),
    )
    .await
    .context("the switch back was applied")??;
    ensure!(programmed(true)?, "only the nftables table again");
    expect_seen(&h, HOST, "nftables NAT again").await?;
    a.stop();
    tern_agent::dataplane::cleanup_all(&Exec::in_netns(h.host.name())).context("cleanup")?;
    Ok(())
}

/// A BGP dataplane that refuses every configuration (as a BIRD that is down would).
#[derive(Debug)]
struct RefusingBgp;

impl BgpDataplane for RefusingBgp {
    fn apply(&mut self, _: &str) -> Result<BgpApplied, BgpError> {
        Err(BgpError::Unavailable("BIRD is not running".into()))
    }
    fn status(&mut self) -> proto::BgpStatus {
        proto::BgpStatus::default()
    }
    fn cleanup(&mut self) -> Result<(), BgpError> {
        Ok(())
    }
}

/// While BGP keeps failing (and is retried), NAT drift is still repaired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_drift_is_repaired_while_bgp_fails() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let h = hosts(true)?;
    set_nat(&c, true).await;
    let bgp = BgpSettings {
        render: Default::default(),
        dataplane: Box::new(RefusingBgp),
    };
    let a = agent_with(
        &c,
        &h,
        Some(DataplaneKind::Nftables),
        IptablesBackend::Default,
        Some(bgp),
    )
    .await;
    expect_seen(&h, HOST, "NAT is programmed before BGP").await?;
    let mut applied = a.applied.clone();
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.last_error.starts_with("BGP: ")),
    )
    .await
    .context("the BGP error is reported")??;
    h.host.run("nft", &["delete", "table", "inet", "tern"])?;
    tokio::time::timeout(
        Duration::from_secs(10),
        applied.wait_for(|x| x.drift_repairs > 0),
    )
    .await
    .context("the flushed NAT table was repaired while BGP failed")??;
    expect_seen(&h, HOST, "after the repair").await?;
    a.stop();
    tern_agent::dataplane::cleanup_all(&Exec::in_netns(h.host.name())).context("cleanup")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_loss_while_the_agent_restarts() -> anyhow::Result<()> {
    netns::require_root()?;
    let c = Cluster::start().await;
    let h = hosts(false)?;
    set_nat(&c, true).await;
    let a = agent(&c, &h, DataplaneKind::Nftables, IptablesBackend::Default).await;
    expect_seen(&h, HOST, "NAT programmed").await?;

    let pod = h.pod.name().to_string();
    let ping = tokio::task::spawn_blocking(move || {
        std::process::Command::new("ip")
            .args([
                "netns", "exec", &pod, "ping", "-n", "-q", "-i", "0.05", "-c", "100", EXT,
            ])
            .output()
    });
    let mut probes = Vec::new();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        a.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = agent(&c, &h, DataplaneKind::Nftables, IptablesBackend::Default).await;
        b.wait_applied(1, Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        b
    };
    tokio::pin!(restart);
    let b = loop {
        tokio::select! {
            b = &mut restart => break b,
            r = seen(&h, EXT) => probes.push(r.map_err(|e| e.to_string())),
        }
    };
    let out = ping.await??;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(" 0% packet loss"),
        "ping lost packets during the restart: {text}"
    );
    ensure!(
        probes.len() >= 5,
        "enough connections were tried during the restart ({})",
        probes.len()
    );
    let bad: Vec<_> = probes.iter().filter(|p| **p != Ok(addr(HOST))).collect();
    ensure!(
        bad.is_empty(),
        "connections during the restart not NATed: {bad:?}"
    );
    drop(b);
    Ok(())
}

/// Resource helper kept for readability of the YAML above.
#[allow(dead_code)]
fn doc(y: &str) -> proto::Resource {
    res(y)
}
