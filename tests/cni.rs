//! The CNI plugin `tern-cni`, driven as a runtime drives it: the `CNI_*` variables and
//! the configuration on stdin, the binary run inside a host network namespace the test
//! makes, against a real controller and etcd over mutual TLS with the node's own
//! certificate. Every verb, every error path, "nothing left half-made", GC, chaining
//! with the reference plugins (portmap, bandwidth, tuning), and podman with its CNI
//! backend running a container on a tern network.
//!
//! ```text
//!   controller (this process, 127.0.0.1:port) ◄── unix socket ◄── socat 127.0.0.1:5443
//!                                                                  │ (host namespace)
//!   tern-cni (in the host namespace) ──veth cali…── container namespaces
//! ```
//!
//! The host namespace reaches the controller through a unix socket (a path is visible
//! in every network namespace), so nothing is added to the machine's own namespace.
//! Needs root, socat, iproute2, util-linux (nsenter), containernetworking-plugins,
//! podman, runc and busybox-static (tests/run installs them), and the workspace's
//! `tern-cni` binary next to the test's `ternctl` (`cargo nextest run --workspace`
//! builds both).

mod common;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use common::{Cluster, res};
use serde_json::{Value, json};
use tern::pki::Role;
use tern::proto::{self, ipam_service_client::IpamServiceClient};
use tern_testkit::netns::Netns;

#[test]
fn netns_helper() {
    tern_testkit::netns::helper_entry();
}

/// The workspace's `tern-cni`, next to this package's `ternctl`.
fn plugin_path() -> anyhow::Result<PathBuf> {
    let ternctl = PathBuf::from(env!("CARGO_BIN_EXE_ternctl"));
    let p = ternctl.with_file_name("tern-cni");
    ensure!(
        p.exists(),
        "{} is missing: build the workspace (`cargo build -p tern-agent`, or \
         `cargo nextest run --workspace`)",
        p.display()
    );
    Ok(p)
}

/// The controller as the host namespace sees it.
const CONTROLLER: &str = "127.0.0.1:5443";
const NODE: &str = "cni-node";

/// A controller and etcd, a host namespace that reaches the controller, and the node's
/// certificate.
struct Host {
    c: Cluster,
    ns: Netns,
    plugin: PathBuf,
    _dir: tempfile::TempDir,
    _forward: tokio::task::JoinHandle<()>,
}

/// Forward connections on a unix socket to the controller (in this namespace).
async fn forward_unix(path: &Path, to: std::net::SocketAddr) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::UnixListener::bind(path).expect("bind the unix socket");
    tokio::spawn(async move {
        while let Ok((mut unix, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut tcp) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut unix, &mut tcp).await;
                }
            });
        }
    })
}

impl Host {
    async fn start() -> anyhow::Result<Host> {
        let c = Cluster::start().await;
        let plugin = plugin_path()?;
        let ns = Netns::new("cnihost")?;
        let conf_dir = tempfile::tempdir()?;
        let sock = conf_dir.path().join("controller.sock");
        let forward = forward_unix(&sock, c.addr()).await;
        // socat in the host namespace: 127.0.0.1:5443 -> the unix socket. It goes with
        // the namespace.
        Command::new("ip")
            .args(["netns", "exec", ns.name(), "socat"])
            .arg(format!(
                "TCP-LISTEN:{},bind=127.0.0.1,fork,reuseaddr",
                CONTROLLER.rsplit(':').next().unwrap_or("5443")
            ))
            .arg(format!("UNIX-CONNECT:{}", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("socat (apt-get install socat)")?;
        // The node the plugin acts for, a pool per family, and the node's certificate.
        let mut admin = c.admin().await;
        for r in [
            format!("apiVersion: tern.dev/v1\nkind: Node\nmetadata: {{name: {NODE}}}\nspec: {{}}\n"),
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: v4}\nspec: {cidr: 10.60.0.0/24, blockSize: 28, natOutgoing: true}\n".to_string(),
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: v6}\nspec: {cidr: 'fd00:60::/120', blockSize: 124}\n".to_string(),
            // A pool of one address, for exhaustion.
            "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: tiny}\nspec: {cidr: 10.61.0.0/32, blockSize: 32}\n".to_string(),
        ] {
            admin
                .create(proto::CreateRequest {
                    resource: Some(res(&r)),
                })
                .await
                .context("seed")?;
        }
        c.client_tls(&Role::Node(NODE.into()));
        c.client_tls(&Role::Node("other-node".into()));
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        // The host's own addresses (a node has some): the source of its pings.
        // (A veth pair inside the namespace: this kernel has no dummy links.)
        ns.ip(&[
            "link",
            "add",
            "uplink",
            "type",
            "veth",
            "peer",
            "name",
            "uplink-peer",
        ])?;
        ns.ip(&["link", "set", "uplink-peer", "up"])?;
        ns.add_addr("uplink", "192.0.2.1/32")?;
        ns.add_addr("uplink", "fd00:99::1/128")?;
        // Proxy ARP answers for 169.254.1.1 only when the host routes it elsewhere: a
        // node has a default route.
        ns.ip(&["route", "add", "default", "dev", "uplink"])?;
        ns.ip(&["-6", "route", "add", "default", "dev", "uplink"])?;
        let h = Host {
            c,
            ns,
            plugin,
            _dir: conf_dir,
            _forward: forward,
        };
        // The socat listener is up when STATUS answers.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let r = h.cni("STATUS", None, &h.conf("1.1.0", json!({})))?;
            if r.ok() {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "STATUS never succeeded: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(h)
    }

    /// The network configuration, with `extra` keys laid over the defaults.
    fn conf(&self, version: &str, extra: Value) -> Value {
        self.conf_for(NODE, version, extra)
    }

    fn conf_for(&self, node_cert: &str, version: &str, extra: Value) -> Value {
        let files = self.c.pki.files(&Role::Node(node_cert.into()));
        let mut v = json!({
            "cniVersion": version,
            "name": "tern-test",
            "type": "tern",
            "nodeName": NODE,
            "controllers": [CONTROLLER],
            "tls": {
                "ca": self.c.pki.ca_cert(),
                "cert": files.cert,
                "key": files.key,
            },
            "ipam": {"assign_ipv4": true, "assign_ipv6": true, "ipv4_pools": ["v4"]},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// Run the plugin in the host namespace with VERB and the attachment (container
    /// id, ifname, netns path).
    fn cni(
        &self,
        verb: &str,
        att: Option<(&str, &str, &str)>,
        conf: &Value,
    ) -> anyhow::Result<Run> {
        let mut env: Vec<(&str, String)> = vec![("CNI_COMMAND", verb.into())];
        if let Some((id, ifname, netns)) = att {
            env.push(("CNI_CONTAINERID", id.into()));
            env.push(("CNI_IFNAME", ifname.into()));
            if !netns.is_empty() {
                env.push(("CNI_NETNS", netns.into()));
            }
        }
        env.push(("CNI_PATH", "/usr/lib/cni".into()));
        self.exec(&self.plugin, &env, &conf.to_string())
    }

    /// Run a plugin binary in the host namespace with exactly `env` and `stdin`.
    fn exec(&self, bin: &Path, env: &[(&str, String)], stdin: &str) -> anyhow::Result<Run> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    async fn ipam(&self) -> IpamServiceClient<tonic::transport::Channel> {
        self.c.ipam(&Role::Admin).await
    }

    /// The handles of the node (all of them), as the controller has them.
    async fn handles(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let r = self
            .ipam()
            .await
            .list_handles(proto::ListHandlesRequest {
                node: NODE.into(),
                prefix: String::new(),
            })
            .await?
            .into_inner();
        Ok(r.handles
            .into_iter()
            .map(|h| (h.handle, h.addresses))
            .collect())
    }

    /// The `cali*` links of the host namespace.
    fn host_veths(&self) -> anyhow::Result<BTreeSet<String>> {
        let out = self.ns.ip(&["-br", "link"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .filter(|n| n.starts_with("cali"))
            .collect())
    }
}

#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self) -> bool {
        self.code == 0
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not JSON: {:?} (stderr: {})",
                self.stdout, self.stderr
            )
        })
    }

    /// Success; the result document (or Null when there is none).
    fn expect_ok(&self, what: &str) -> anyhow::Result<Value> {
        ensure!(self.ok(), "{what}: {self:?}");
        if self.stdout.trim().is_empty() {
            Ok(Value::Null)
        } else {
            self.json()
        }
    }

    /// A CNI error with `code` whose text names `named`.
    fn expect_err(&self, what: &str, code: u64, named: &str) -> anyhow::Result<Value> {
        ensure!(!self.ok(), "{what}: succeeded: {self:?}");
        let v = self.json()?;
        ensure!(
            v["code"] == code,
            "{what}: code {} (want {code}): {v}",
            v["code"]
        );
        let text = format!("{} {}", v["msg"], v["details"]);
        ensure!(text.contains(named), "{what}: {text:?} names {named:?}");
        ensure!(v["cniVersion"].is_string(), "{what}: cniVersion in {v}");
        Ok(v)
    }
}

fn addresses(result: &Value) -> Vec<IpAddr> {
    result["ips"]
        .as_array()
        .map(|ips| {
            ips.iter()
                .filter_map(|i| i["address"].as_str())
                .filter_map(|a| a.split('/').next()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_verb_and_error_path() -> anyhow::Result<()> {
    let h = Host::start().await?;
    let conf = h.conf("1.0.0", json!({}));

    // VERSION.
    let v = h
        .cni("VERSION", None, &json!({"cniVersion": "1.0.0"}))?
        .expect_ok("VERSION")?;
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"], json!(["1.0.0", "1.1.0"]));

    // ADD: a dual-stack attachment.
    let c1 = Netns::new("c1")?;
    let c1_path = format!("/run/netns/{}", c1.name());
    let att = ("c1-0123456789", "eth0", c1_path.as_str());
    let result = h.cni("ADD", Some(att), &conf)?.expect_ok("ADD")?;
    let addrs = addresses(&result);
    ensure!(addrs.len() == 2, "one address per family: {result}");
    ensure!(
        addrs[0].to_string().starts_with("10.60.0.")
            && addrs[1].to_string().starts_with("fd00:60::"),
        "{addrs:?}"
    );
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    assert_eq!(result["interfaces"][1]["sandbox"], c1_path.as_str());
    assert_eq!(result["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(result["ips"][1]["gateway"], "fe80::ecee:eeff:feee:eeee");
    let veth = result["interfaces"][0]["name"]
        .as_str()
        .context("host veth")?
        .to_string();
    ensure!(veth.starts_with("cali") && veth.len() == 15, "{veth}");
    // The kernel: the host routes each address to the veth; the container has its
    // addresses and default routes; traffic flows both ways in both families.
    let routes = h.ns.ip(&["route", "show", "dev", &veth])?;
    ensure!(routes.contains(&addrs[0].to_string()), "{routes}");
    let routes6 = h.ns.ip(&["-6", "route", "show", "dev", &veth])?;
    ensure!(routes6.contains(&addrs[1].to_string()), "{routes6}");
    let inside = c1.ip(&["addr", "show", "dev", "eth0"])?;
    ensure!(
        inside.contains(&format!("{}/32", addrs[0]))
            && inside.contains(&format!("{}/128", addrs[1])),
        "{inside}"
    );
    let def = c1.ip(&["route", "show", "default"])?;
    ensure!(def.contains("via 169.254.1.1 dev eth0"), "{def}");
    h.ns.run("ping", &["-c", "1", "-W", "2", &addrs[0].to_string()])
        .context("host -> container (IPv4)")?;
    h.ns.run("ping", &["-c", "1", "-W", "2", &addrs[1].to_string()])
        .context("host -> container (IPv6)")?;
    // IPAM holds both under the attachment's handle.
    let handles = h.handles().await?;
    let handle = "cni/tern-test/c1-0123456789/eth0";
    let held = handles
        .iter()
        .find(|(n, _)| n == handle)
        .context("the handle")?;
    let want: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    assert_eq!(held.1, want);

    // CHECK with the result: fine.
    let mut with_prev = conf.clone();
    with_prev["prevResult"] = result.clone();
    let r = h.cni("CHECK", Some(att), &with_prev)?;
    ensure!(r.ok() && r.stdout.trim().is_empty(), "CHECK: {r:?}");
    // CHECK without prevResult: invalid configuration.
    h.cni("CHECK", Some(att), &conf)?
        .expect_err("CHECK without prevResult", 7, "prevResult")?;

    // ADD again for the same attachment: refused, and nothing changes.
    h.cni("ADD", Some(att), &conf)?
        .expect_err("ADD twice", 100, "already exists")?;
    ensure!(
        h.host_veths()?.contains(&veth),
        "the first ADD's veth stays"
    );
    assert_eq!(h.handles().await?, handles, "IPAM unchanged");
    h.cni("CHECK", Some(att), &with_prev)?
        .expect_ok("CHECK after a refused ADD")?;

    // Drift: each found by CHECK (code 101) and named.
    c1.ip(&["route", "del", "default"])?;
    h.cni("CHECK", Some(att), &with_prev)?.expect_err(
        "CHECK without the default route",
        101,
        "default route",
    )?;
    c1.ip(&[
        "route",
        "add",
        "default",
        "via",
        "169.254.1.1",
        "dev",
        "eth0",
    ])?;
    c1.ip(&["addr", "del", &format!("{}/128", addrs[1]), "dev", "eth0"])?;
    h.cni("CHECK", Some(att), &with_prev)?.expect_err(
        "CHECK without an address",
        101,
        &addrs[1].to_string(),
    )?;
    c1.ip(&[
        "addr",
        "add",
        &format!("{}/128", addrs[1]),
        "dev",
        "eth0",
        "nodad",
    ])?;
    h.ns.ip(&["route", "del", &format!("{}/32", addrs[0])])?;
    h.cni("CHECK", Some(att), &with_prev)?.expect_err(
        "CHECK without the host route",
        101,
        "no route",
    )?;
    h.ns.ip(&["route", "add", &format!("{}/32", addrs[0]), "dev", &veth])?;
    h.cni("CHECK", Some(att), &with_prev)?
        .expect_ok("CHECK repaired")?;
    h.ipam()
        .await
        .release_address(proto::ReleaseAddressRequest {
            node: NODE.into(),
            handle: handle.into(),
        })
        .await?;
    h.cni("CHECK", Some(att), &with_prev)?.expect_err(
        "CHECK after IPAM lost the address",
        101,
        "IPAM no longer holds",
    )?;

    // DEL: the veth and the handle go; again is fine, and so is a DEL without the
    // namespace.
    h.cni("DEL", Some(att), &conf)?.expect_ok("DEL")?;
    ensure!(!h.host_veths()?.contains(&veth), "veth removed");
    ensure!(
        !h.handles().await?.iter().any(|(n, _)| n == handle),
        "handle released"
    );
    h.cni("DEL", Some(att), &conf)?.expect_ok("DEL again")?;
    h.cni("DEL", Some(("c1-0123456789", "eth0", "")), &conf)?
        .expect_ok("DEL without CNI_NETNS")?;

    // Errors of the environment and the configuration: the code, the thing named.
    let netns_of = |n: &Netns| format!("/run/netns/{}", n.name());
    let c2 = Netns::new("c2")?;
    let c2_path = netns_of(&c2);
    let a2 = ("c2", "eth0", c2_path.as_str());
    for (missing, vars) in [
        ("CNI_CONTAINERID", ("", "eth0", c2_path.as_str())),
        ("CNI_IFNAME", ("c2", "", c2_path.as_str())),
        ("CNI_NETNS", ("c2", "eth0", "")),
    ] {
        h.cni("ADD", Some(vars), &conf)?.expect_err(
            &format!("ADD without {missing}"),
            4,
            missing,
        )?;
    }
    h.cni("BOGUS", Some(a2), &conf)?
        .expect_err("unknown verb", 4, "CNI_COMMAND")?;
    let r = h.exec(&h.plugin, &[("CNI_COMMAND", "ADD".into())], "{not json")?;
    r.expect_err("bad JSON", 4, "CNI_CONTAINERID")?;
    let r = h.exec(
        &h.plugin,
        &[
            ("CNI_COMMAND", "ADD".into()),
            ("CNI_CONTAINERID", "c2".into()),
            ("CNI_IFNAME", "eth0".into()),
            ("CNI_NETNS", c2_path.clone()),
        ],
        "{not json",
    )?;
    r.expect_err("bad JSON", 6, "")?;
    h.cni("ADD", Some(a2), &h.conf("1.0.0", json!({"bridge": "cni0"})))?
        .expect_err("unknown key", 2, "bridge")?;
    h.cni("ADD", Some(a2), &h.conf("0.4.0", json!({})))?
        .expect_err("old version", 1, "0.4.0")?;
    h.cni(
        "GC",
        None,
        &h.conf("1.0.0", json!({"cni.dev/valid-attachments": []})),
    )?
    .expect_err("GC with a 1.0.0 configuration", 1, "1.1.0")?;
    h.cni("ADD", Some(("c2", "eth0", "/run/netns/no-such-ns")), &conf)?
        .expect_err("a namespace that does not exist", 3, "no-such-ns")?;
    let missing_cert = h.conf("1.0.0", json!({"tls": {"ca": "/nonexistent/ca.pem"}}));
    h.cni("ADD", Some(a2), &missing_cert)?.expect_err(
        "unreadable certificate",
        7,
        "/nonexistent/ca.pem",
    )?;

    // Failures after the start leave nothing behind: no veth, no handle.
    let before = (h.host_veths()?, h.handles().await?);
    let unreachable = h.conf(
        "1.0.0",
        json!({"controllers": ["127.0.0.1:1"], "timeoutSeconds": 2}),
    );
    h.cni("ADD", Some(a2), &unreachable)?
        .expect_err("controller down", 11, "127.0.0.1:1")?;
    let exhausted = h.conf("1.0.0", json!({"ipam": {"ipv4_pools": ["tiny"]}}));
    // The pool's only address goes to c3, then c2 finds none.
    let c3 = Netns::new("c3")?;
    let c3_path = netns_of(&c3);
    let a3 = ("c3", "eth0", c3_path.as_str());
    let r3 = h
        .cni("ADD", Some(a3), &exhausted)?
        .expect_ok("ADD from tiny")?;
    assert_eq!(addresses(&r3), vec!["10.61.0.0".parse::<IpAddr>()?]);
    let mid = (h.host_veths()?, h.handles().await?);
    h.cni("ADD", Some(a2), &exhausted)?
        .expect_err("pool exhausted", 103, "tiny")?;
    // Dual stack where IPv6 fails after IPv4 was assigned: both undone.
    let no_v6 = h.conf(
        "1.0.0",
        json!({"ipam": {"assign_ipv6": true, "ipv6_pools": ["v4"]}}),
    );
    h.cni("ADD", Some(a2), &no_v6)?
        .expect_err("IPv6 from an IPv4 pool", 103, "IPv6")?;
    // Another node's name with this node's certificate: refused by the controller.
    let foreign = h.conf("1.0.0", json!({"nodeName": "other-node"}));
    h.cni("ADD", Some(a2), &foreign)?
        .expect_err("another node", 103, "PermissionDenied")?;
    ensure!(
        (h.host_veths()?, h.handles().await?) == mid,
        "failed ADDs left something behind"
    );
    h.cni("DEL", Some(a3), &exhausted)?.expect_ok("DEL c3")?;
    ensure!(
        (h.host_veths()?, h.handles().await?) == before,
        "back to where we were"
    );

    // STATUS: fine, or 50 naming the controller.
    h.cni("STATUS", None, &h.conf("1.1.0", json!({})))?
        .expect_ok("STATUS")?;
    h.cni(
        "STATUS",
        None,
        &h.conf(
            "1.1.0",
            json!({"controllers": ["127.0.0.1:1"], "timeoutSeconds": 1}),
        ),
    )?
    .expect_err("STATUS, controller down", 50, "127.0.0.1:1")?;

    // GC: attachments the runtime no longer lists are released (veth and handle);
    // listed ones and handles that are not this network's are kept.
    let c4 = Netns::new("c4")?;
    let c4_path = netns_of(&c4);
    let conf11 = h.conf("1.1.0", json!({"mtu": 1400}));
    let r2 = h.cni("ADD", Some(a2), &conf11)?.expect_ok("ADD c2")?;
    assert_eq!(
        r2["interfaces"][1]["mtu"], 1400,
        "1.1 results carry the MTU"
    );
    let r4 = h
        .cni("ADD", Some(("c4", "eth0", c4_path.as_str())), &conf11)?
        .expect_ok("ADD c4")?;
    let veth4 = r4["interfaces"][0]["name"]
        .as_str()
        .context("veth")?
        .to_string();
    h.ipam()
        .await
        .assign_address(proto::AssignAddressRequest {
            node: NODE.into(),
            handle: "somebody-else".into(),
            family: 4,
            pool: String::new(),
        })
        .await?;
    let mut gc = h.conf("1.1.0", json!({}));
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c2", "ifname": "eth0"}]);
    h.cni("GC", None, &gc)?.expect_ok("GC")?;
    let left: BTreeSet<String> = h.handles().await?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        left,
        BTreeSet::from([
            "cni/tern-test/c2/eth0".to_string(),
            "somebody-else".to_string()
        ])
    );
    ensure!(
        !h.host_veths()?.contains(&veth4),
        "GC removed the stale veth"
    );
    let r = h.cni("DEL", Some(a2), &conf11)?;
    r.expect_ok("DEL c2")?;
    ensure!(
        h.host_veths()?.is_empty(),
        "no veth left: {:?}",
        h.host_veths()?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_adds_never_share_an_address() -> anyhow::Result<()> {
    let h = Host::start().await?;
    let conf = h.conf("1.0.0", json!({"ipam": {"ipv4_pools": ["v4"]}}));
    let nss: Vec<Netns> = (0..8)
        .map(|i| Netns::new(&format!("p{i}")))
        .collect::<Result<_, _>>()?;
    let mut all = BTreeSet::new();
    for r in h.burst("ADD", &nss, &conf) {
        for a in addresses(&r?.expect_ok("parallel ADD")?) {
            ensure!(all.insert(a), "{a} given twice");
        }
    }
    assert_eq!(all.len(), 8);
    for i in 0..8 {
        h.cni("DEL", Some((&format!("c{i}"), "eth0", "")), &conf)?
            .expect_ok("DEL")?;
    }
    ensure!(h.handles().await?.is_empty(), "every address released");
    Ok(())
}

/// The node's `tern-agent` (the workspace binary) in the host namespace, serving its
/// CNI socket with the node's certificate; killed on drop.
struct Agent {
    child: std::process::Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Host {
    fn start_agent(&self) -> anyhow::Result<Agent> {
        let bin = self.plugin.with_file_name("tern-agent");
        let dir = tempfile::tempdir()?;
        let socket = dir.path().join("cni.sock");
        let files = self.c.pki.files(&Role::Node(NODE.into()));
        let agent_args = tern_testkit::agent::CniAgent {
            node: NODE,
            controllers: CONTROLLER,
            ca: &self.c.pki.ca_cert(),
            cert: &files.cert,
            key: &files.key,
            ipv4_address: "192.0.2.1/32",
            state_dir: dir.path(),
            socket: &socket,
        }
        .args();
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns.name()])
            .arg(&bin)
            .args(agent_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let agent = Agent {
            child,
            socket,
            _dir: dir,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !agent.socket.exists() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the agent's CNI socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(agent)
    }

    /// A configuration for the agent at `socket` (no controllers, no TLS files).
    fn agent_conf(&self, socket: &Path, version: &str, extra: Value) -> Value {
        let mut v = json!({
            "cniVersion": version,
            "name": "tern-test",
            "type": "tern",
            "agentSocket": socket,
            "ipam": {"ipv4_pools": ["v4"]},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        v
    }

    /// `verb` for every container `c{i}` of `nss` at once.
    fn burst(&self, verb: &str, nss: &[Netns], conf: &Value) -> Vec<anyhow::Result<Run>> {
        std::thread::scope(|s| {
            let joins: Vec<_> = nss
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    s.spawn(move || {
                        let path = format!("/run/netns/{}", n.name());
                        self.cni(verb, Some((&format!("c{i}"), "eth0", &path)), conf)
                    })
                })
                .collect();
            joins
                .into_iter()
                .map(|j| j.join().unwrap_or_else(|_| bail!("thread panicked")))
                .collect()
        })
    }
}

/// The plugin hands its requests to the node's agent over the agent's unix socket:
/// parallel ADDs get distinct addresses, each recorded in etcd under its container's
/// handle before the ADD answers, with working veths and routes (CHECK); DEL releases
/// them and is idempotent; the agent refuses a configuration for another node; an
/// agent that is gone is a retryable error naming its socket and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_serves_the_plugin_over_its_socket() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Host::start().await?;
    let agent = h.start_agent()?;
    let mode = std::fs::metadata(&agent.socket)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "the socket is root's only: {mode:o}");
    let conf = h.agent_conf(&agent.socket, "1.0.0", json!({}));
    h.cni(
        "STATUS",
        None,
        &h.agent_conf(&agent.socket, "1.1.0", json!({})),
    )?
    .expect_ok("STATUS through the agent")?;

    let nss: Vec<Netns> = (0..8)
        .map(|i| Netns::new(&format!("a{i}")))
        .collect::<Result<_, _>>()?;
    let mut given = BTreeSet::new();
    let mut results = Vec::new();
    for r in h.burst("ADD", &nss, &conf) {
        let v = r?.expect_ok("parallel ADD through the agent")?;
        let a = addresses(&v);
        ensure!(a.len() == 1, "one IPv4 address: {v}");
        ensure!(given.insert(a[0]), "{} given twice", a[0]);
        results.push(v);
    }
    // Recorded in etcd under each container's handle.
    let handles = h.handles().await?;
    let recorded: BTreeSet<(String, IpAddr)> = handles
        .iter()
        .flat_map(|(h, addrs)| {
            addrs
                .iter()
                .map(move |a| (h.clone(), a.parse().expect("an address")))
        })
        .collect();
    let want: BTreeSet<(String, IpAddr)> = results
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("cni/tern-test/c{i}/eth0"), addresses(v)[0]))
        .collect();
    ensure!(
        recorded == want,
        "etcd holds {recorded:?}, the results {want:?}"
    );
    ensure!(h.host_veths()?.len() == 8, "a veth per container");
    // The kernel state matches each result.
    for (i, (n, v)) in nss.iter().zip(&results).enumerate() {
        let mut c = conf.clone();
        c["prevResult"] = v.clone();
        let path = format!("/run/netns/{}", n.name());
        h.cni("CHECK", Some((&format!("c{i}"), "eth0", &path)), &c)?
            .expect_ok("CHECK through the agent")?;
    }
    // The agent acts for its own node only.
    let other = h.agent_conf(&agent.socket, "1.0.0", json!({"nodeName": "other-node"}));
    let x = Netns::new("ax")?;
    let xpath = format!("/run/netns/{}", x.name());
    h.cni("ADD", Some(("cx", "eth0", &xpath)), &other)?
        .expect_err("another node's name", 7, "serves node")?;

    for r in h.burst("DEL", &nss, &conf) {
        r?.expect_ok("parallel DEL through the agent")?;
    }
    ensure!(h.handles().await?.is_empty(), "every address released");
    ensure!(h.host_veths()?.is_empty(), "every veth removed");
    h.cni("DEL", Some(("c0", "eth0", "")), &conf)?
        .expect_ok("DEL again")?;

    // No agent: a retryable error naming the socket; nothing made.
    let socket = agent.socket.clone();
    drop(agent);
    let r = h.cni("ADD", Some(("cx", "eth0", &xpath)), &conf)?;
    r.expect_err("no agent", 11, &socket.display().to_string())?;
    ensure!(
        h.handles().await?.is_empty(),
        "nothing assigned without the agent"
    );
    ensure!(h.host_veths()?.is_empty(), "no veth without the agent");
    Ok(())
}

/// tern first in a chain with Debian's reference plugins, as libcni runs a conflist:
/// each plugin gets the previous result as `prevResult`; CHECK and DEL (in reverse)
/// go through all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_with_portmap_bandwidth_and_tuning() -> anyhow::Result<()> {
    let h = Host::start().await?;
    let c = Netns::new("chain")?;
    let path = format!("/run/netns/{}", c.name());
    let att = ("chain-1", "eth0", path.as_str());
    let plugins = [
        h.conf("1.0.0", json!({})),
        json!({"type": "portmap", "capabilities": {"portMappings": true},
               "runtimeConfig": {"portMappings": [
                   {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}}),
        // Ingress only: egress shaping needs the ifb module.
        json!({"type": "bandwidth", "ingressRate": 8_000_000, "ingressBurst": 80_000}),
        json!({"type": "tuning", "mtu": 1300, "sysctl": {"net.core.somaxconn": "512"}}),
    ];
    let with_common = |p: &Value, prev: Option<&Value>| {
        let mut p = p.clone();
        p["cniVersion"] = json!("1.0.0");
        p["name"] = json!("tern-test");
        if let Some(prev) = prev {
            p["prevResult"] = prev.clone();
        }
        p
    };
    let run = |verb: &str, p: &Value, prev: Option<&Value>| -> anyhow::Result<Run> {
        let ty = p["type"].as_str().context("type")?.to_string();
        let conf = with_common(p, prev);
        if ty == "tern" {
            return h.cni(verb, Some(att), &conf);
        }
        let env = vec![
            ("CNI_COMMAND", verb.to_string()),
            ("CNI_CONTAINERID", att.0.to_string()),
            ("CNI_IFNAME", att.1.to_string()),
            ("CNI_NETNS", att.2.to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ];
        h.exec(
            &Path::new("/usr/lib/cni").join(&ty),
            &env,
            &conf.to_string(),
        )
    };
    let mut result: Option<Value> = None;
    for p in &plugins {
        let r = run("ADD", p, result.as_ref())?;
        result = Some(r.expect_ok(&format!("ADD {}", p["type"]))?);
    }
    let result = result.context("a result")?;
    let addr = addresses(&result).first().copied().context("an address")?;
    // The chain's result is tern's, passed through.
    assert_eq!(result["interfaces"][1]["name"], "eth0");
    let veth = result["interfaces"][0]["name"]
        .as_str()
        .context("veth")?
        .to_string();

    // portmap: the host's port 8080 reaches the container's port 80.
    c.serve_tcp(std::net::SocketAddr::new(addr, 80))?;
    let seen =
        h.ns.tcp_probe(std::net::SocketAddr::new("192.0.2.1".parse()?, 8080))
            .context("host:8080 -> container:80 through portmap")?;
    eprintln!("through portmap the container saw {seen}");
    // bandwidth: a token bucket on the host veth.
    let qdisc = h.ns.run("tc", &["qdisc", "show", "dev", &veth])?;
    ensure!(qdisc.contains("tbf"), "bandwidth shapes {veth}: {qdisc}");
    // tuning: the container's MTU and sysctl.
    let link = c.ip(&["link", "show", "dev", "eth0"])?;
    ensure!(link.contains("mtu 1300"), "{link}");
    let somaxconn = c.run("cat", &["/proc/sys/net/core/somaxconn"])?;
    assert_eq!(somaxconn.trim(), "512");

    // CHECK through the chain (tern allows the later plugins' changes). Debian 12's
    // portmap fails its own CHECK (it looks for its IPv4 rules among the IPv6 ones:
    // containernetworking/plugins#819), so it is left out.
    for p in plugins.iter().filter(|p| p["type"] != "portmap") {
        run("CHECK", p, Some(&result))?.expect_ok(&format!("CHECK {}", p["type"]))?;
    }
    // DEL in reverse: every plugin's leftovers go.
    for p in plugins.iter().rev() {
        run("DEL", p, Some(&result))?.expect_ok(&format!("DEL {}", p["type"]))?;
    }
    ensure!(h.host_veths()?.is_empty(), "veth removed");
    let nat = h.ns.run("iptables-save", &["-t", "nat"])?;
    ensure!(
        !nat.contains(&addr.to_string()),
        "portmap's rules removed: {nat}"
    );
    ensure!(h.handles().await?.is_empty(), "address released");
    Ok(())
}

/// Podman (Debian 12's 4.3, CNI backend) in the test's host namespace, with its own
/// storage, configuration and image, removed at the end.
struct Podman<'a> {
    h: &'a Host,
    dir: tempfile::TempDir,
}

impl<'a> Podman<'a> {
    /// The conflist `tern` (tern alone), a plugin directory holding `tern`, a
    /// containers.conf selecting the CNI backend, and an image imported from a tarball
    /// of busybox and its links (there is no registry to pull from).
    fn new(h: &'a Host) -> anyhow::Result<Podman<'a>> {
        let dir = tempfile::tempdir()?;
        let d = dir.path().to_path_buf();
        for sub in ["cni-bin", "cni-conf", "root", "runroot", "tmp", "image/bin"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        std::os::unix::fs::symlink(&h.plugin, d.join("cni-bin/tern"))?;
        let mut plugin = h.conf("1.0.0", json!({}));
        let obj = plugin.as_object_mut().context("object")?;
        obj.remove("cniVersion");
        obj.remove("name");
        let conflist = json!({"cniVersion": "1.0.0", "name": "tern", "plugins": [plugin]});
        std::fs::write(d.join("cni-conf/tern.conflist"), conflist.to_string())?;
        std::fs::write(
            d.join("containers.conf"),
            format!(
                "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{bin}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{conf}\"\n[engine]\nruntime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{events}\"\ntmp_dir = \"{tmp}\"\n",
                bin = d.join("cni-bin").display(),
                conf = d.join("cni-conf").display(),
                events = d.join("events.log").display(),
                tmp = d.join("tmp").display(),
            ),
        )?;
        std::fs::copy("/bin/busybox", d.join("image/bin/busybox")).context("busybox-static")?;
        let applets = Command::new("/bin/busybox").arg("--list").output()?;
        for a in String::from_utf8_lossy(&applets.stdout).lines() {
            if a != "busybox" {
                std::os::unix::fs::symlink("busybox", d.join("image/bin").join(a))?;
            }
        }
        let p = Podman { h, dir };
        let tar = d.join("busybox.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(d.join("image"))
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()?;
        ensure!(out.status.success(), "tar: {out:?}");
        p.run(&[
            "import",
            &tar.display().to_string(),
            "localhost/tern-busybox",
        ])?;
        Ok(p)
    }

    /// `podman ARGS` in the host namespace (only the network namespace changes, so
    /// podman's mounts are the machine's and every call sees the same containers).
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        common::podman(self.h.ns.name(), self.dir.path(), args)
    }

    /// `podman run -d --network tern NAME CMD...`: the container id.
    fn start(&self, name: &str, cmd: &[&str]) -> anyhow::Result<String> {
        // crun fails on this kernel's cgroups: runc and cgroupfs (containers.conf).
        // `--ulimit host` asks runc for nofile=1048576, which a host without
        // CAP_SYS_RESOURCE refuses: fixed limits below the hard ones instead.
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "tern",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "localhost/tern-busybox",
        ];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    fn address(&self, name: &str) -> anyhow::Result<IpAddr> {
        let v: Value = serde_json::from_str(&self.run(&[
            "inspect",
            name,
            "--format",
            "{{json .NetworkSettings.Networks}}",
        ])?)?;
        let a = v["tern"]["IPAddress"].as_str().unwrap_or_default();
        a.parse().with_context(|| {
            let state = self.run(&["ps", "-a"]).unwrap_or_default();
            let logs = self.run(&["logs", name]).unwrap_or_default();
            format!("{name}'s address in {v}; podman ps -a:\n{state}\nlogs: {logs}")
        })
    }
}

impl Drop for Podman<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.run(&["rm", "-af", "-t", "0"]) {
            eprintln!("podman cleanup: {e:#}");
        }
        // A failed test can leave a container's mounts: none may outlive the test.
        let dir = self.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for m in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
            if m.starts_with(&dir) {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
    }
}

/// `ternctl ipam show`: the addresses in use of pool `cidr`.
fn in_use(h: &Host, cidr: &str) -> anyhow::Result<u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(["ipam", "show"])
        .envs(h.c.ternctl_env(&Role::Admin))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!(" {cidr} ")))
        .with_context(|| format!("ipam show has {cidr}:\n{text}"))?;
    // "... | IN USE (x%) |": the number before the percentage.
    let n = line
        .split('|')
        .filter_map(|f| {
            f.trim()
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
                .filter(|_| f.contains('('))
        })
        .next()
        .with_context(|| format!("in-use count in {line:?}"))?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_runs_containers_on_a_tern_network() -> anyhow::Result<()> {
    let h = Host::start().await?;
    let p = Podman::new(&h)?;
    let base = in_use(&h, "10.60.0.0/24")?;

    // A container on the tern network: a tern IPAM address, a web server the host
    // reaches.
    let id = p.start(
        "web",
        &["sh", "-c", "mkdir -p /www && echo hello from tern > /www/index.html && exec httpd -f -p 8080 -h /www"],
    )?;
    let addr = p.address("web")?;
    ensure!(
        addr.to_string().starts_with("10.60.0."),
        "{addr} from pool v4"
    );
    let handle = format!("cni/tern/{id}/eth0");
    let handles = h.handles().await?;
    ensure!(
        handles
            .iter()
            .any(|(n, a)| n == &handle && a.contains(&addr.to_string())),
        "IPAM holds {addr} under {handle}: {handles:?}"
    );
    assert_eq!(
        in_use(&h, "10.60.0.0/24")?,
        base + 1,
        "ternctl ipam show counts it"
    );
    let get = format!(
        "exec 3<>/dev/tcp/{addr}/8080 && printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
    );
    let mut got = Err(anyhow::anyhow!("not tried"));
    for _ in 0..50 {
        got = h.ns.run("timeout", &["3", "bash", "-c", &get]);
        if got.is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let page = got.with_context(|| {
        format!(
            "the host reaches the container: podman ps -a:\n{}\nlogs: {}\nroutes: {}",
            p.run(&["ps", "-a"]).unwrap_or_default(),
            p.run(&["logs", "web"]).unwrap_or_default(),
            h.ns.ip(&["route"]).unwrap_or_default()
        )
    })?;
    ensure!(page.contains("hello from tern"), "{page}");

    // podman rm releases the address.
    p.run(&["rm", "-f", "-t", "0", "web"])?;
    ensure!(
        !h.handles().await?.iter().any(|(n, _)| n == &handle),
        "released on rm"
    );
    assert_eq!(
        in_use(&h, "10.60.0.0/24")?,
        base,
        "ternctl ipam show counts the release"
    );
    ensure!(h.host_veths()?.is_empty(), "veth removed");

    // An unclean stop, as a crashed host has one: the containers' processes and
    // network namespaces gone and podman's run-time state lost, so no DEL was ever
    // made. Their addresses leak until GC, given what the runtime runs after the
    // restart, releases them.
    let before_crash = [
        p.start("keep", &["sleep", "600"])?,
        p.start("leak", &["sleep", "600"])?,
    ];
    for name in ["keep", "leak"] {
        let st = p.run(&[
            "inspect",
            name,
            "--format",
            "{{.State.ConmonPid}} {{.State.Pid}} {{.NetworkSettings.SandboxKey}}",
        ])?;
        let f: Vec<&str> = st.split_whitespace().collect();
        ensure!(f.len() == 3, "inspect {name}: {st:?}");
        for pid in &f[..2] {
            Command::new("kill").args(["-9", pid]).status()?;
        }
        let ns = Path::new(f[2]).file_name().context("netns name")?;
        Command::new("ip")
            .arg("netns")
            .arg("del")
            .arg(ns)
            .status()?;
    }
    // What a reboot also takes: the containers' /dev/shm mounts.
    for id in &before_crash {
        let shm = p
            .dir
            .path()
            .join(format!("root/vfs-containers/{id}/userdata/shm"));
        Command::new("umount").arg("-l").arg(&shm).status()?;
    }
    for dir in ["runroot", "tmp"] {
        let d = p.dir.path().join(dir);
        std::fs::remove_dir_all(&d)?;
        std::fs::create_dir(&d)?;
    }
    let leaked: BTreeSet<String> = before_crash
        .iter()
        .map(|id| format!("cni/tern/{id}/eth0"))
        .collect();
    let held: BTreeSet<String> = h.handles().await?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        held, leaked,
        "the crashed containers still hold their addresses"
    );
    // After the restart podman runs a new container, and GC is given its list.
    let fresh = p.start("fresh", &["sleep", "600"])?;
    let running = p.run(&["ps", "--no-trunc", "--format", "{{.ID}}"])?;
    assert_eq!(running, fresh, "only the new container runs");
    let mut gc = h.conf("1.1.0", json!({}));
    gc["name"] = json!("tern");
    gc["cni.dev/valid-attachments"] = json!([{"containerID": fresh, "ifname": "eth0"}]);
    h.cni("GC", None, &gc)?.expect_ok("GC")?;
    let left: Vec<String> = h.handles().await?.into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        left,
        vec![format!("cni/tern/{fresh}/eth0")],
        "GC released the leak"
    );
    assert_eq!(in_use(&h, "10.60.0.0/24")?, base + 1);
    // podman's own cleanup later (a DEL finding nothing left) is fine.
    p.run(&["rm", "-f", "-t", "0", "leak", "keep", "fresh"])?;
    ensure!(h.handles().await?.is_empty(), "all released");
    ensure!(h.host_veths()?.is_empty(), "no veth left");
    Ok(())
}
