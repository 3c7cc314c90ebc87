//! A BGP password never appears in any log line, at any level (TRACE included, for
//! every crate: tern, tonic, h2, hyper, rustls, etcd-client), while it travels from
//! the API through etcd and the sync stream into a real BIRD configuration, and while
//! things fail around it.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use common::{Cluster, eventually};
use tern::pki::Role;
use tern::proto;
use tern_agent::agent::{AgentConfig, BgpSettings, NatChoice};
use tern_agent::bgp::{Bird, bird_options};
use tern_agent::exec::Exec;
use tern_agent::sync::SyncConfig;
use tern_testkit::netns::{self, Netns};

const PASSWORD: &str = "Zq7-unlikely-B6P-passw0rd";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn apply(c: &Cluster, docs: &str) {
    let mut api = c.admin().await;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        api.apply(proto::ApplyRequest {
            resource: Some(tern::model::protojson::to_proto(&d, true)),
        })
        .await
        .expect("apply");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bgp_password_never_appears_in_any_log_line() -> anyhow::Result<()> {
    netns::require_root()?;
    let capture = Capture::default();
    let w = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_writer(move || w.clone())
        .with_ansi(false)
        .try_init()
        .map_err(|e| anyhow::anyhow!("the capturing subscriber must be the first: {e}"))?;

    let c = Cluster::start().await;
    let node = Netns::new("pwnode")?;
    node.add_addr("lo", "10.0.0.1/32")?;
    apply(
        &c,
        &format!(
            "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {{name: tor}}\nstringData: {{password: {PASSWORD}}}\n---\n\
             apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {{name: tor}}\n\
             spec: {{peerIP: 10.0.0.254, asNumber: 65001, password: {{secretKeyRef: {{name: tor, key: password}}}}}}\n"
        ),
    )
    .await;
    let dir = tempfile::tempdir()?;
    let exec = Exec::in_netns(node.name());
    let bird = Bird::new(bird_options(
        &exec,
        dir.path(),
        &dir.path().join("bird.ctl"),
        true,
    ))?;
    let mut sync = SyncConfig::new(
        "pw-node".into(),
        vec![c.server()],
        c.client_tls(&Role::Node("pw-node".into())),
    );
    sync.registration.ipv4_address = "10.0.0.1/32".into();
    let agent = tern_agent::agent::start(AgentConfig {
        sync,
        exec,
        nat: NatChoice::Select {
            flag: Some(tern::model::DataplaneKind::Nftables),
            backend: tern_agent::dataplane::IptablesBackend::Default,
        },
        bgp: Some(BgpSettings {
            render: Default::default(),
            dataplane: Box::new(bird),
        }),
        resync_interval: Duration::from_secs(1),
        status_interval: Duration::from_millis(300),
        metrics_listen: None,
    })
    .await?;
    // The password reached BIRD's configuration (so it went all the way).
    let conf = dir.path().join("bird.conf");
    let reached = eventually(15, async || {
        std::fs::read_to_string(&conf).is_ok_and(|s| s.contains(PASSWORD))
    })
    .await;
    anyhow::ensure!(reached, "the password reached BIRD");

    // Things failing around the secret: a password BIRD cannot quote (refused at write
    // time), a viewer asking for it, an admin reading it, a second change.
    let bad = tern::manifest::parse_documents(
        "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: tor}\nstringData: {password: 'bad\"quote'}\n",
    )?;
    let refused = c
        .admin()
        .await
        .apply(proto::ApplyRequest {
            resource: Some(tern::model::protojson::to_proto(&bad[0], true)),
        })
        .await;
    anyhow::ensure!(
        refused.is_err_and(|s| s.code() == tonic::Code::InvalidArgument),
        "a password BIRD cannot carry is refused"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = c
        .resources(&Role::Viewer)
        .await
        .get(proto::GetRequest {
            kind: "secret".into(),
            name: "tor".into(),
            show_secrets: true,
        })
        .await;
    apply(
        &c,
        &format!("apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {{name: tor}}\nstringData: {{password: {PASSWORD}}}\n"),
    )
    .await;
    let _ = c
        .admin()
        .await
        .get(proto::GetRequest {
            kind: "secret".into(),
            name: "tor".into(),
            show_secrets: true,
        })
        .await?;
    let back = eventually(15, async || {
        std::fs::read_to_string(&conf).is_ok_and(|s| s.contains(PASSWORD))
    })
    .await;
    anyhow::ensure!(back, "the password is back in BIRD's configuration");
    tokio::time::sleep(Duration::from_secs(2)).await;
    agent.stop();
    tern_agent::bgp::cleanup(
        &Exec::in_netns(node.name()),
        dir.path(),
        &dir.path().join("bird.ctl"),
        true,
    )
    .map_err(anyhow::Error::msg)?;

    let logs = String::from_utf8_lossy(&capture.0.lock().expect("lock")).into_owned();
    anyhow::ensure!(
        logs.lines().count() > 100,
        "trace logs were captured ({} lines)",
        logs.lines().count()
    );
    anyhow::ensure!(logs.contains("TRACE"), "trace level was on");
    let b64 = base64::engine::general_purpose::STANDARD.encode(PASSWORD);
    for needle in [PASSWORD, b64.as_str(), "bad\"quote", "bad\\\"quote"] {
        if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
            anyhow::bail!("a log line carries the secret: {line}");
        }
    }
    Ok(())
}
