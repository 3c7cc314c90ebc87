//! Shared harness of the integration tests: a real etcd, a throwaway PKI, and
//! controllers started in-process with mutual TLS on loopback port 0.
#![allow(dead_code)]

pub mod bgp;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use tern::client::ClientTls;
use tern::pki::{Pki, Role};
use tern::proto::{
    ipam_service_client::IpamServiceClient, node_service_client::NodeServiceClient,
    resource_service_client::ResourceServiceClient,
};
use tern_controller::config::{ControllerConfig, SyncTuning};
use tern_controller::tls::TlsPaths;
use tern_controller::{Controller, start};
use tern_testkit::etcd::Etcd;
use tonic::transport::Channel;

/// etcd + PKI + controllers. Everything is removed on drop.
pub struct Cluster {
    // Fields drop in order: controllers before the etcd they use.
    pub controllers: Vec<Controller>,
    pub etcd: Etcd,
    pub pki: Pki,
    pub dir: tempfile::TempDir,
    pub prefix: String,
}

pub fn init_logs() {
    let _ = tern::logging::init(
        &std::env::var("TERN_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        tern::logging::Format::Plain,
    );
}

impl Cluster {
    /// etcd, a CA with controller/admin/viewer certificates, and one controller.
    pub async fn start() -> Cluster {
        let mut c = Cluster::without_controller();
        c.add_controller().await;
        c
    }

    /// etcd and the PKI only.
    pub fn without_controller() -> Cluster {
        init_logs();
        let etcd = Etcd::start().expect("etcd starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::init(dir.path().join("pki"), 30).expect("CA");
        pki.issue(
            &Role::Controller {
                sans: vec!["localhost".into(), "127.0.0.1".into()],
            },
            30,
        )
        .expect("controller certificate");
        pki.issue(&Role::Admin, 30).expect("admin certificate");
        pki.issue(&Role::Viewer, 30).expect("viewer certificate");
        Cluster {
            etcd,
            pki,
            dir,
            prefix: "/tern/v1".into(),
            controllers: Vec::new(),
        }
    }

    pub fn tls_paths(&self) -> TlsPaths {
        let f = self.pki.files(&Role::Controller { sans: vec![] });
        TlsPaths {
            ca: self.pki.ca_cert(),
            cert: f.cert,
            key: f.key,
        }
    }

    pub fn controller_config(&self) -> ControllerConfig {
        let mut cfg =
            ControllerConfig::insecure_for_tests(self.etcd.endpoint(), self.prefix.clone());
        cfg.insecure = false;
        cfg.tls = Some(self.tls_paths());
        cfg.tls_reload_interval = std::time::Duration::from_millis(200);
        cfg.sync = SyncTuning::default();
        cfg
    }

    /// Start one more controller replica; returns its address.
    pub async fn add_controller(&mut self) -> SocketAddr {
        let cfg = self.controller_config();
        self.add_controller_with(cfg).await
    }

    pub async fn add_controller_with(&mut self, cfg: ControllerConfig) -> SocketAddr {
        let c = start(cfg).await.expect("controller starts");
        let addr = c.addr();
        self.controllers.push(c);
        addr
    }

    pub fn addr(&self) -> SocketAddr {
        self.controllers[0].addr()
    }

    /// The server address as clients give it.
    pub fn server(&self) -> String {
        self.addr().to_string()
    }

    /// Client TLS settings for a role (issuing its certificate on first use).
    pub fn client_tls(&self, role: &Role) -> ClientTls {
        let files = self.pki.issue_once(role, 30).expect("issue");
        ClientTls {
            ca: Some(self.pki.ca_cert()),
            cert: Some(files.cert),
            key: Some(files.key),
            server_name: None,
            insecure: false,
        }
    }

    pub async fn channel(&self, role: &Role) -> Channel {
        self.client_tls(role)
            .connect(&self.server())
            .await
            .expect("connect")
    }

    pub async fn resources(&self, role: &Role) -> ResourceServiceClient<Channel> {
        ResourceServiceClient::new(self.channel(role).await)
    }

    pub async fn admin(&self) -> ResourceServiceClient<Channel> {
        self.resources(&Role::Admin).await
    }

    pub async fn nodes(&self, role: &Role) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel(role).await)
    }

    pub async fn ipam(&self, role: &Role) -> IpamServiceClient<Channel> {
        IpamServiceClient::new(self.channel(role).await)
    }

    /// Every key under the prefix with its mod revision, and the store revision: to
    /// check that a rejected write changed nothing.
    pub async fn etcd_dump(&self) -> (BTreeMap<String, (i64, Vec<u8>)>, i64) {
        let mut c = self.etcd.client().await.expect("etcd client");
        let resp = c
            .get(
                self.prefix.clone(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .expect("etcd get");
        let rev = resp.header().map_or(0, |h| h.revision());
        let kvs = resp
            .kvs()
            .iter()
            .filter(|kv| !kv.key_str().unwrap_or("").contains("/_"))
            .map(|kv| {
                (
                    kv.key_str().unwrap_or_default().to_string(),
                    (kv.mod_revision(), kv.value().to_vec()),
                )
            })
            .collect();
        (kvs, rev)
    }

    /// Wait until nothing writes to etcd for `quiet` (the IPAM reconciler and the
    /// controller's own records settle after a burst of writes), at most `secs`; whether
    /// it settled. A check that a refused write changed nothing compares dumps taken
    /// after this, so a write of the controller's own cannot pass for the refused one.
    pub async fn etcd_settled(&self, quiet: std::time::Duration, secs: u64) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        let (_, mut rev) = self.etcd_dump().await;
        while std::time::Instant::now() < deadline {
            tokio::time::sleep(quiet).await;
            let (_, now) = self.etcd_dump().await;
            if now == rev {
                return true;
            }
            rev = now;
        }
        false
    }

    pub fn ternctl_env(&self, role: &Role) -> Vec<(String, String)> {
        let t = self.client_tls(role);
        let p = |o: Option<PathBuf>| o.expect("set").display().to_string();
        vec![
            ("TERN_SERVER".into(), self.server()),
            ("TERN_CA".into(), p(t.ca)),
            ("TERN_CERT".into(), p(t.cert)),
            ("TERN_KEY".into(), p(t.key)),
        ]
    }
}

/// Parse one YAML document into a protobuf resource.
pub fn res(yaml: &str) -> tern::proto::Resource {
    let r = tern::manifest::parse_documents(yaml)
        .expect("test manifest parses")
        .remove(0);
    tern::model::protojson::to_proto(&r, true)
}

/// A raw protobuf resource from YAML, without client-side parsing (for bad input).
pub fn raw(yaml: &str) -> tern::proto::Resource {
    let v: serde_json::Value = tern::manifest::from_str(yaml).expect("yaml");
    let mut meta = tern::proto::ObjectMeta::default();
    if let Some(m) = v.get("metadata") {
        meta.name = m["name"].as_str().unwrap_or_default().to_string();
        meta.resource_version = m["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    let spec = v
        .get("spec")
        .and_then(|s| s.as_object())
        .map(tern::model::protojson::json_map_to_struct);
    tern::proto::Resource {
        api_version: v["apiVersion"]
            .as_str()
            .unwrap_or("tern.dev/v1")
            .to_string(),
        kind: v["kind"].as_str().unwrap_or_default().to_string(),
        metadata: Some(meta),
        spec,
        data: Default::default(),
        warnings: Vec::new(),
    }
}

pub fn pool(name: &str, cidr: &str) -> tern::proto::Resource {
    res(&format!(
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {{name: {name}}}\nspec: {{cidr: '{cidr}'}}\n"
    ))
}

/// An in-process agent with the recording NAT driver (no BGP), registering `node`
/// with an address, connected to `controllers` with its own node certificate.
pub async fn recording_agent(
    c: &Cluster,
    node: &str,
    address: &str,
    controllers: Vec<String>,
) -> (
    tern_agent::agent::Agent,
    tern_agent::dataplane::RecordingDriver,
) {
    recording_agent_with(c, node, address, controllers, |_| {}).await
}

/// Like [`recording_agent`], with the agent's configuration adjusted by `tune`.
pub async fn recording_agent_with(
    c: &Cluster,
    node: &str,
    address: &str,
    controllers: Vec<String>,
    tune: impl FnOnce(&mut tern_agent::agent::AgentConfig),
) -> (
    tern_agent::agent::Agent,
    tern_agent::dataplane::RecordingDriver,
) {
    let tls = c.client_tls(&Role::Node(node.to_string()));
    let mut sync = tern_agent::sync::SyncConfig::new(node.to_string(), controllers, tls);
    sync.registration.ipv4_address = address.to_string();
    sync.backoff_min = std::time::Duration::from_millis(50);
    sync.backoff_max = std::time::Duration::from_millis(500);
    sync.status_interval = std::time::Duration::from_millis(100);
    let driver = tern_agent::dataplane::RecordingDriver::new();
    let cfg = tern_agent::agent::AgentConfig {
        sync,
        exec: tern_agent::exec::Exec::host(),
        nat: tern_agent::agent::NatChoice::Driver(Box::new(driver.clone())),
        bgp: None,
        resync_interval: std::time::Duration::from_secs(3600),
        status_interval: std::time::Duration::from_secs(1),
        metrics_listen: None,
    };
    let mut cfg = cfg;
    tune(&mut cfg);
    let agent = tern_agent::agent::start(cfg).await.expect("agent starts");
    (agent, driver)
}

/// `GET /metrics` over plain HTTP: the whole answer, headers and body.
pub fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s, &mut out).expect("read");
    out
}

/// Poll `f` until it returns true or `secs` pass.
pub async fn eventually(secs: u64, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// `podman ARGS` in the network namespace `netns` (only the network namespace changes,
/// so podman's mounts are the machine's and every call sees the same containers), with
/// the storage, run-time state and containers.conf under `dir`; its stdout, trimmed.
pub fn podman(netns: &str, dir: &std::path::Path, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg("podman")
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .args(["--storage-driver", "vfs"])
        .args(args)
        .env("CONTAINERS_CONF", dir.join("containers.conf"))
        .stdin(std::process::Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "podman {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// What a ternctl run printed and its exit code.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Run ternctl as a subprocess against the cluster, as `role`.
pub fn ternctl(c: &Cluster, role: &Role, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ternctl"));
    cmd.args(args)
        .envs(c.ternctl_env(role))
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("ternctl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    let o = child.wait_with_output().expect("ternctl finishes");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}
