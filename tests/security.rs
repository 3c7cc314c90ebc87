//! Transport security and authorization over a real controller and etcd: who may do
//! what, with the exact status code for each case; certificate rotation; etcd TLS.

mod common;

use std::time::Duration;

use common::{Cluster, eventually, pool, recording_agent};
use tern::client::ClientTls;
use tern::pki::{CertFiles, Pki, Role, Validity};
use tern::proto::{
    self, agent_message, controller_message, ipam_service_client::IpamServiceClient,
    resource_service_client::ResourceServiceClient, sync_service_client::SyncServiceClient,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A channel that trusts the cluster CA and presents `identity` (or nothing).
async fn channel_with(c: &Cluster, identity: Option<(&CertFiles, &std::path::Path)>) -> Channel {
    let ca = std::fs::read(c.pki.ca_cert()).expect("ca");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((files, _)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(&files.cert).expect("cert"),
            std::fs::read(&files.key).expect("key"),
        ));
    }
    Endpoint::from_shared(format!("https://{}", c.server()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS handshake completes; authentication is decided per call")
}

fn hello(node: &str) -> proto::AgentMessage {
    // An address of its own per node: a node may not register another's.
    let host = 10 + node.bytes().map(u32::from).sum::<u32>() % 200;
    proto::AgentMessage {
        msg: Some(agent_message::Msg::Hello(proto::Hello {
            node_name: node.into(),
            agent_version: "test".into(),
            last_revision: 0,
            registration: Some(proto::NodeRegistration {
                ipv4_address: format!("10.0.0.{host}/24"),
                ..Default::default()
            }),
        })),
    }
}

/// Open a sync stream and read it until InSync; returns every message's encoded bytes.
async fn sync_as(ch: Channel, node: &str) -> Result<Vec<u8>, tonic::Status> {
    sync_with(ch, hello(node)).await
}

/// Like [`sync_as`], with a given Hello.
async fn sync_with(ch: Channel, hello: proto::AgentMessage) -> Result<Vec<u8>, tonic::Status> {
    let mut client = SyncServiceClient::new(ch);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello).await.expect("send");
    let mut s = client.sync(ReceiverStream::new(rx)).await?.into_inner();
    let mut bytes = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .expect("in time")?
            .expect("a message");
        bytes.extend(prost::Message::encode_to_vec(&m));
        if matches!(m.msg, Some(controller_message::Msg::InSync(_))) {
            drop(tx);
            return Ok(bytes);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Call {
    CreatePool,
    ListPools,
    GetSecret,
    GetSecretShown,
    DeletePool,
    ListNodes,
    SyncAs(&'static str),
    AssignFor(&'static str),
    ReleaseFor(&'static str),
    ClaimBlockFor(&'static str),
    ListHandlesOf(&'static str),
    IpamShow,
}

async fn call(ch: Channel, what: Call) -> Result<(), tonic::Status> {
    let mut api = ResourceServiceClient::new(ch.clone());
    match what {
        Call::CreatePool => api
            .create(proto::CreateRequest {
                resource: Some(pool("p-new", "10.99.0.0/16")),
            })
            .await
            .map(|_| ()),
        Call::ListPools => api
            .list(proto::ListRequest {
                kind: "ippool".into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        Call::GetSecret | Call::GetSecretShown => api
            .get(proto::GetRequest {
                kind: "secret".into(),
                name: "bgp".into(),
                show_secrets: matches!(what, Call::GetSecretShown),
            })
            .await
            .map(|_| ()),
        Call::DeletePool => api
            .delete(proto::DeleteRequest {
                kind: "ippool".into(),
                name: "p".into(),
                resource_version: String::new(),
            })
            .await
            .map(|_| ()),
        Call::ListNodes => proto::node_service_client::NodeServiceClient::new(ch)
            .list_nodes(proto::ListNodesRequest::default())
            .await
            .map(|_| ()),
        Call::SyncAs(node) => sync_as(ch, node).await.map(|_| ()),
        Call::AssignFor(node) => IpamServiceClient::new(ch)
            .assign_address(proto::AssignAddressRequest {
                node: node.into(),
                handle: "cni/t/c1/eth0".into(),
                family: 4,
                pool: String::new(),
            })
            .await
            .map(|_| ()),
        Call::ReleaseFor(node) => IpamServiceClient::new(ch)
            .release_address(proto::ReleaseAddressRequest {
                node: node.into(),
                handle: "cni/t/c1/eth0".into(),
            })
            .await
            .map(|_| ()),
        Call::ClaimBlockFor(node) => IpamServiceClient::new(ch)
            .claim_block(proto::ClaimBlockRequest {
                node: node.into(),
                pool: "p".into(),
                family: 0,
            })
            .await
            .map(|_| ()),
        Call::ListHandlesOf(node) => IpamServiceClient::new(ch)
            .list_handles(proto::ListHandlesRequest {
                node: node.into(),
                prefix: String::new(),
            })
            .await
            .map(|_| ()),
        Call::IpamShow => IpamServiceClient::new(ch)
            .show(proto::IpamShowRequest::default())
            .await
            .map(|_| ()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_identity_gets_exactly_its_rights() {
    let c = Cluster::start().await;
    let mut admin = c.admin().await;
    admin
        .create(proto::CreateRequest {
            resource: Some(pool("p", "10.1.0.0/16")),
        })
        .await
        .expect("seed");
    let secret = tern::manifest::parse_documents(
        "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: bgp}\nstringData: {pw: top-secret}\n",
    )
    .expect("secret")
    .remove(0);
    admin
        .create(proto::CreateRequest {
            resource: Some(tern::model::protojson::to_proto(&secret, true)),
        })
        .await
        .expect("seed secret");

    // Identities: the cluster's, a foreign CA's, an expired one.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = Pki::init(other_dir.path(), 30).expect("other CA");
    let foreign = other.issue(&Role::Admin, 30).expect("foreign admin");
    let expired = c
        .pki
        .issue_with(
            &Role::Admin,
            Validity {
                not_before: time::OffsetDateTime::now_utc() - time::Duration::days(10),
                not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
            },
            &CertFiles {
                cert: c.dir.path().join("expired.pem"),
                key: c.dir.path().join("expired-key.pem"),
            },
        )
        .expect("expired admin");
    let files = |r: &Role| {
        c.client_tls(r);
        c.pki.files(r)
    };
    let admin_f = files(&Role::Admin);
    let viewer_f = files(&Role::Viewer);
    let node_f = files(&Role::Node("n1".into()));
    let d = c.dir.path();

    use Call::*;
    let rows: Vec<(&str, Option<&CertFiles>, Call, Option<Code>)> = vec![
        (
            "no client certificate",
            None,
            ListPools,
            Some(Code::Unauthenticated),
        ),
        (
            "no client certificate, sync",
            None,
            SyncAs("n1"),
            Some(Code::Unauthenticated),
        ),
        (
            "certificate from another CA",
            Some(&foreign),
            ListPools,
            Some(Code::Unauthenticated),
        ),
        (
            "expired certificate",
            Some(&expired),
            ListPools,
            Some(Code::Unauthenticated),
        ),
        (
            "viewer writing",
            Some(&viewer_f),
            CreatePool,
            Some(Code::PermissionDenied),
        ),
        (
            "viewer deleting",
            Some(&viewer_f),
            DeletePool,
            Some(Code::PermissionDenied),
        ),
        (
            "viewer reading a Secret",
            Some(&viewer_f),
            GetSecret,
            Some(Code::PermissionDenied),
        ),
        (
            "viewer asking for secret values",
            Some(&viewer_f),
            GetSecretShown,
            Some(Code::PermissionDenied),
        ),
        ("viewer reading pools", Some(&viewer_f), ListPools, None),
        ("viewer reading nodes", Some(&viewer_f), ListNodes, None),
        (
            "viewer opening a sync stream",
            Some(&viewer_f),
            SyncAs("n1"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent calling the resource API",
            Some(&node_f),
            ListPools,
            Some(Code::PermissionDenied),
        ),
        (
            "agent writing through the resource API",
            Some(&node_f),
            CreatePool,
            Some(Code::PermissionDenied),
        ),
        (
            "agent reading a Secret",
            Some(&node_f),
            GetSecret,
            Some(Code::PermissionDenied),
        ),
        (
            "agent whose Hello names another node",
            Some(&node_f),
            SyncAs("n2"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent reading its own view",
            Some(&node_f),
            SyncAs("n1"),
            None,
        ),
        // A node's CNI plugin holds the node's certificate: IPAM for its own node
        // (n1 is registered by the row above), nothing for another, no usage reads.
        (
            "agent assigning an address on its own node",
            Some(&node_f),
            AssignFor("n1"),
            None,
        ),
        (
            "agent assigning an address on another node",
            Some(&node_f),
            AssignFor("n2"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent listing its own node's handles",
            Some(&node_f),
            ListHandlesOf("n1"),
            None,
        ),
        (
            "agent listing another node's handles",
            Some(&node_f),
            ListHandlesOf("n2"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent releasing an address of its own node",
            Some(&node_f),
            ReleaseFor("n1"),
            None,
        ),
        (
            "agent releasing an address of another node",
            Some(&node_f),
            ReleaseFor("n2"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent claiming a block for itself",
            Some(&node_f),
            ClaimBlockFor("n1"),
            None,
        ),
        (
            "agent claiming a block for another node",
            Some(&node_f),
            ClaimBlockFor("n2"),
            Some(Code::PermissionDenied),
        ),
        (
            "agent reading IPAM usage",
            Some(&node_f),
            IpamShow,
            Some(Code::PermissionDenied),
        ),
        (
            "viewer assigning an address",
            Some(&viewer_f),
            AssignFor("n1"),
            Some(Code::PermissionDenied),
        ),
        (
            "viewer releasing an address",
            Some(&viewer_f),
            ReleaseFor("n1"),
            Some(Code::PermissionDenied),
        ),
        (
            "viewer listing handles",
            Some(&viewer_f),
            ListHandlesOf("n1"),
            None,
        ),
        ("viewer reading IPAM usage", Some(&viewer_f), IpamShow, None),
        (
            "admin assigning on any node",
            Some(&admin_f),
            AssignFor("n1"),
            None,
        ),
        (
            "admin reading secret values",
            Some(&admin_f),
            GetSecretShown,
            None,
        ),
        ("admin writing", Some(&admin_f), CreatePool, None),
        ("admin listing nodes", Some(&admin_f), ListNodes, None),
        ("admin deleting", Some(&admin_f), DeletePool, None),
    ];
    for (what, id, op, want) in rows {
        let ch = channel_with(&c, id.map(|f| (f, d))).await;
        let got = call(ch, op).await.err().map(|s| s.code());
        assert_eq!(got, want, "{what}");
    }
    let m = c.controllers[0].metrics().encode();
    assert!(
        m.contains("code=\"16\""),
        "unauthenticated calls are counted"
    );
    assert!(m.contains("code=\"7\""), "denied calls are counted");
}

/// Secret values never travel to a node whose sessions do not use them.
/// Node labels choose peerings (and their passwords) and route reflectors, so an agent
/// sets only the label keys the controller allows; the rest are an administrator's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_set_only_the_label_keys_the_controller_allows() {
    let hello_labels = |labels: &[(&str, &str)]| {
        let mut h = hello("n1");
        if let Some(agent_message::Msg::Hello(h)) = h.msg.as_mut() {
            h.registration.as_mut().expect("registration").labels = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        }
        h
    };
    let node_labels = async |c: &Cluster| {
        let r = c
            .admin()
            .await
            .get(proto::GetRequest {
                kind: "Node".into(),
                name: "n1".into(),
                show_secrets: false,
            })
            .await
            .expect("node n1")
            .into_inner();
        r.metadata.expect("metadata").labels
    };

    // By default an agent sets no labels at all.
    let c = Cluster::start().await;
    let e = sync_with(
        c.channel(&Role::Node("n1".into())).await,
        hello_labels(&[("rack", "r1")]),
    )
    .await
    .expect_err("no label keys allowed");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("may not set \"rack\"") && e.message().contains("allowed keys: none"),
        "{e}"
    );
    sync_with(c.channel(&Role::Node("n1".into())).await, hello_labels(&[]))
        .await
        .expect("no labels: registers");
    drop(c);

    // Allowed: a key and a prefix.
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.agent_label_keys = vec!["rack".into(), "topology.kubernetes.io/".into()];
    c.add_controller_with(cfg).await;
    let ch = c.channel(&Role::Node("n1".into())).await;
    sync_with(
        ch.clone(),
        hello_labels(&[("rack", "r1"), ("topology.kubernetes.io/zone", "z1")]),
    )
    .await
    .expect("allowed labels");
    let labels = node_labels(&c).await;
    assert_eq!(labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(
        labels
            .get("topology.kubernetes.io/zone")
            .map(String::as_str),
        Some("z1")
    );
    // A node making itself a route reflector (or joining a peering) is refused, and its
    // Node stays as it was.
    let e = sync_with(ch, hello_labels(&[("rack", "r2"), ("rr", "true")]))
        .await
        .expect_err("rr is not allowed");
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    assert!(e.message().contains("may not set \"rr\""), "{e}");
    assert!(e.message().contains("rack,topology.kubernetes.io/"), "{e}");
    let after = node_labels(&c).await;
    assert_eq!(after, labels, "a refused Hello changes nothing");

    // An administrator's later change to a label the agent sets wins: the agent's next
    // Hello does not revert it.
    c.admin()
        .await
        .patch(proto::PatchRequest {
            kind: "Node".into(),
            name: "n1".into(),
            r#type: proto::PatchType::Merge as i32,
            patch: r#"{"metadata":{"labels":{"rack":"r9"}}}"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("an administrator relabels");
    sync_with(
        c.channel(&Role::Node("n1".into())).await,
        hello_labels(&[("rack", "r1"), ("topology.kubernetes.io/zone", "z1")]),
    )
    .await
    .expect("the agent reconnects");
    let labels = node_labels(&c).await;
    assert_eq!(labels.get("rack").map(String::as_str), Some("r9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_never_reaches_another_nodes_stream() {
    let c = Cluster::start().await;
    let docs = "\
apiVersion: tern.dev/v1
kind: Secret
metadata: {name: tor}
stringData: {pw: n1-only-password}
---
apiVersion: tern.dev/v1
kind: BGPPeer
metadata: {name: tor-n1}
spec: {node: n1, peerIP: 10.0.0.254, asNumber: 65000, password: {secretKeyRef: {name: tor, key: pw}}}
";
    let mut admin = c.admin().await;
    for d in tern::manifest::parse_documents(docs).expect("docs") {
        admin
            .create(proto::CreateRequest {
                resource: Some(tern::model::protojson::to_proto(&d, true)),
            })
            .await
            .expect("create");
    }
    let n1 = sync_as(c.channel(&Role::Node("n1".into())).await, "n1")
        .await
        .expect("n1 syncs");
    let n2 = sync_as(c.channel(&Role::Node("n2".into())).await, "n2")
        .await
        .expect("n2 syncs");
    // Secret values are stored and streamed base64-encoded (as Kubernetes does).
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode("n1-only-password");
    let has = |hay: &[u8]| {
        [b"n1-only-password".as_slice(), b64.as_bytes()]
            .iter()
            .any(|needle| hay.windows(needle.len()).any(|w| w == *needle))
    };
    assert!(has(&n1), "n1's stream carries its own password");
    assert!(!has(&n2), "n2's stream never carries it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_without_a_restart() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.tls_reload_interval = Duration::from_millis(100);
    c.add_controller_with(cfg).await;
    c.admin()
        .await
        .create(proto::CreateRequest {
            resource: Some(pool("a", "10.1.0.0/16")),
        })
        .await
        .expect("seed");
    let (agent, _driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    assert!(agent.wait_applied(1, Duration::from_secs(10)).await);
    let snapshots = c.controllers[0].metrics().sync_snapshots.get();

    // 1. A new server certificate from the same CA, with a name only it carries.
    let rotated = ClientTls {
        server_name: Some("rotated.tern.test".into()),
        ..c.client_tls(&Role::Admin)
    };
    assert!(
        rotated.connect(&c.server()).await.is_err(),
        "the old certificate does not carry the new name"
    );
    c.pki
        .issue(
            &Role::Controller {
                sans: vec!["127.0.0.1".into(), "rotated.tern.test".into()],
            },
            30,
        )
        .expect("rotate");
    assert!(
        eventually(10, async || rotated.connect(&c.server()).await.is_ok()).await,
        "the rotated certificate is served"
    );

    // 2. A new CA next to the old one (the usual rotation): clients of both work.
    let new_dir = tempfile::tempdir().expect("tempdir");
    let new_ca = Pki::init(new_dir.path(), 30).expect("new CA");
    let new_admin = new_ca.issue(&Role::Admin, 30).expect("new admin");
    let bundle = format!(
        "{}{}",
        std::fs::read_to_string(c.pki.ca_cert()).expect("old CA"),
        std::fs::read_to_string(new_ca.ca_cert()).expect("new CA")
    );
    std::fs::write(c.dir.path().join("bundle.pem"), &bundle).expect("bundle");
    std::fs::rename(c.dir.path().join("bundle.pem"), c.pki.ca_cert()).expect("swap CA file");
    let new_client = ClientTls {
        ca: Some(c.pki.ca_cert()),
        cert: Some(new_admin.cert.clone()),
        key: Some(new_admin.key.clone()),
        server_name: None,
        insecure: false,
    };
    assert!(
        eventually(10, async || {
            match new_client.connect(&c.server()).await {
                Ok(ch) => ResourceServiceClient::new(ch)
                    .list(proto::ListRequest::default())
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await,
        "a client of the new CA is accepted"
    );
    c.admin()
        .await
        .list(proto::ListRequest::default())
        .await
        .expect("old clients still work");

    // The agent's stream stayed up through both rotations: no new snapshot.
    let r = c
        .admin()
        .await
        .patch(proto::PatchRequest {
            kind: "ippool".into(),
            name: "a".into(),
            r#type: 0,
            patch: r#"{"spec":{"natOutgoing":true}}"#.into(),
            resource_version: String::new(),
        })
        .await
        .expect("patch")
        .into_inner();
    let r: i64 = r
        .metadata
        .expect("meta")
        .resource_version
        .parse()
        .expect("rev");
    assert!(agent.wait_applied(r, Duration::from_secs(5)).await);
    assert_eq!(
        c.controllers[0].metrics().sync_snapshots.get(),
        snapshots,
        "no reconnect"
    );

    // Broken files are ignored: the last good material stays.
    std::fs::write(
        c.pki.files(&Role::Controller { sans: vec![] }).cert,
        "not a certificate",
    )
    .expect("break");
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.admin()
        .await
        .list(proto::ListRequest::default())
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_needs_explicit_flags() {
    let c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.tls = None;
    cfg.insecure = false;
    let e = tern_controller::start(cfg.clone())
        .await
        .expect_err("TLS is required");
    assert!(e.to_string().contains("TLS is required"), "{e}");
    cfg.insecure = true;
    cfg.listen = "0.0.0.0:0".parse().expect("addr");
    let e = tern_controller::start(cfg.clone())
        .await
        .expect_err("remote plaintext");
    assert!(e.to_string().contains("--insecure-allow-remote"), "{e}");
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    let ctl = tern_controller::start(cfg)
        .await
        .expect("plaintext on loopback with --insecure");
    let insecure = ClientTls {
        insecure: true,
        ..Default::default()
    };
    let ch = insecure
        .connect(&ctl.addr().to_string())
        .await
        .expect("plaintext connects");
    ResourceServiceClient::new(ch)
        .list(proto::ListRequest::default())
        .await
        .expect("insecure mode serves");
}

/// etcd with client TLS and user/password authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_talks_to_etcd_over_tls_with_a_password() {
    common::init_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::init(dir.path().join("etcd-pki"), 30).expect("etcd CA");
    let server = pki
        .issue(
            &Role::Controller {
                sans: vec!["127.0.0.1".into(), "localhost".into()],
            },
            30,
        )
        .expect("etcd server certificate");
    let client = pki
        .issue(&Role::Admin, 30)
        .expect("etcd client certificate");
    let etcd = tern_testkit::etcd::Etcd::start_tls(tern_testkit::etcd::EtcdTls {
        ca: pki.ca_cert(),
        server_cert: server.cert.clone(),
        server_key: server.key.clone(),
    })
    .expect("etcd in TLS mode");
    // Users and roles: root (required to enable auth) and a tern user on the prefix.
    let opts = etcd_client::ConnectOptions::new().with_tls(
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(pki.ca_cert()).expect("ca"),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&client.cert).expect("cert"),
                std::fs::read(&client.key).expect("key"),
            )),
    );
    let mut root = etcd_client::Client::connect([etcd.endpoint()], Some(opts))
        .await
        .expect("etcd client");
    root.user_add("root", "root-pw", None)
        .await
        .expect("root user");
    root.role_add("root").await.ok();
    root.user_grant_role("root", "root")
        .await
        .expect("grant root");
    root.user_add("tern", "tern-pw", None)
        .await
        .expect("tern user");
    root.role_add("tern").await.expect("role");
    root.role_grant_permission(
        "tern",
        etcd_client::Permission::read_write("/tern/").with_prefix(),
    )
    .await
    .expect("grant");
    root.user_grant_role("tern", "tern")
        .await
        .expect("grant tern");
    root.auth_enable().await.expect("auth on");

    let c = Cluster::without_controller();
    let pw = dir.path().join("etcd-password");
    std::fs::write(&pw, "tern-pw\n").expect("password file");
    let mut cfg = c.controller_config();
    cfg.etcd = tern_controller::store::EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ca: Some(pki.ca_cert()),
        cert: Some(client.cert.clone()),
        key: Some(client.key.clone()),
        username: Some("tern".into()),
        password: Some("tern-pw".into()),
        request_timeout: None,
    };
    let ctl = tern_controller::start(cfg)
        .await
        .expect("controller with etcd TLS and auth");
    let ch = c
        .client_tls(&Role::Admin)
        .connect(&ctl.addr().to_string())
        .await
        .expect("connect");
    let mut api = ResourceServiceClient::new(ch);
    api.create(proto::CreateRequest {
        resource: Some(pool("over-tls", "10.7.0.0/16")),
    })
    .await
    .expect("write through TLS etcd");
    let got = api
        .get(proto::GetRequest {
            kind: "ippool".into(),
            name: "over-tls".into(),
            show_secrets: false,
        })
        .await
        .expect("read back");
    assert_eq!(got.into_inner().metadata.expect("meta").name, "over-tls");
    // A wrong password is refused by etcd.
    let mut bad = c.controller_config();
    bad.etcd = tern_controller::store::EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ca: Some(pki.ca_cert()),
        cert: Some(client.cert.clone()),
        key: Some(client.key.clone()),
        username: Some("tern".into()),
        password: Some("wrong".into()),
        request_timeout: None,
    };
    let e = tern_controller::start(bad)
        .await
        .expect_err("wrong etcd password");
    assert!(
        !e.to_string().contains("wrong"),
        "the password is not echoed: {e}"
    );
}
