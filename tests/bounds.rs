//! Bounds against abusive clients: each bound is hit for real (real etcd, TLS over
//! loopback, the controller in-process) and answered precisely, and what a refused
//! write would have touched is unchanged in etcd.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Cluster;
use tern::pki::Role;
use tern::proto;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// Wait until the peer closes `s` (end of file or an error). False when it is still
/// open after the fail-safe `secs`.
async fn closed_by_peer<S: tokio::io::AsyncRead + Unpin>(s: &mut S, secs: u64) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .is_ok()
}

/// A TLS client (rustls) that trusts the cluster CA and presents the admin certificate.
fn tls_connector(c: &Cluster) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in tern::pki::read_certs(&c.pki.ca_cert()).expect("CA") {
        roots.add(ca).expect("CA certificate");
    }
    let files = c.pki.files(&Role::Admin);
    let certs = tern::pki::read_certs(&files.cert).expect("admin certificate");
    let key = tern::pki::read_key(&files.key).expect("admin key");
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(certs, key)
    .expect("client certificate");
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A channel that trusts the CA but presents no client certificate: it completes the
/// TLS handshake and stays unauthenticated.
async fn channel_without_certificate(c: &Cluster) -> tonic::transport::Channel {
    let ca = std::fs::read(c.pki.ca_cert()).expect("CA");
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    tonic::transport::Endpoint::from_shared(format!("https://{}", c.server()))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("the TLS handshake completes without a client certificate")
}

async fn list_pools(
    client: &mut proto::resource_service_client::ResourceServiceClient<tonic::transport::Channel>,
) -> Result<(), tonic::Status> {
    client
        .list(proto::ListRequest {
            kind: "IPPool".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_connections_leaves_authenticated_clients_served() {
    const CAP: usize = 16;
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.connections.max_unauthenticated = CAP;
    // The flood would hold its handshakes for as long as this: only the cap bounds it.
    cfg.connections.handshake_timeout = Duration::from_secs(3600);
    c.add_controller_with(cfg).await;
    let mut before = c.admin().await;
    list_pools(&mut before)
        .await
        .expect("an authenticated client is served");

    // Far more connections than the cap: some never start the TLS handshake, the
    // later ones complete it without a client certificate and keep HTTP/2 open.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(c.addr()).await.expect("connect"));
    }
    let mut no_certificate = Vec::new();
    for _ in 0..40 {
        no_certificate.push(channel_without_certificate(&c).await);
    }
    let denied = proto::resource_service_client::ResourceServiceClient::new(
        no_certificate.last().expect("one").clone(),
    )
    .list(proto::ListRequest::default())
    .await
    .expect_err("no certificate, no call");
    assert_eq!(denied.code(), tonic::Code::Unauthenticated, "{denied:?}");

    // Both the client connected before the flood and a new one are served.
    list_pools(&mut before)
        .await
        .expect("an established authenticated connection is untouched");
    let mut after = c.admin().await;
    list_pools(&mut after)
        .await
        .expect("a new authenticated client is served during the flood");

    // The oldest unauthenticated connections made room: every silent one is closed.
    for (i, s) in silent.iter_mut().enumerate() {
        assert!(
            closed_by_peer(s, 30).await,
            "silent connection {i} is still open"
        );
    }
    let metrics = c.controllers[0].metrics().encode();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tern_connections_unauthenticated "))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .expect("the gauge of unauthenticated connections");
    assert!(gauge <= CAP, "{gauge} unauthenticated connections held");
    assert!(
        metrics.contains("tern_connections_closed_total{reason=\"evicted\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_handshake_or_never_speak_http2_are_closed() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.connections.handshake_timeout = Duration::from_millis(500);
    cfg.connections.preface_timeout = Duration::from_millis(500);
    c.add_controller_with(cfg).await;

    // No TLS handshake at all.
    let mut silent = TcpStream::connect(c.addr()).await.expect("connect");
    assert!(
        closed_by_peer(&mut silent, 60).await,
        "a connection without a handshake is closed"
    );

    // A complete mutual-TLS handshake (an authenticated connection), then nothing.
    let tcp = TcpStream::connect(c.addr()).await.expect("connect");
    let server_name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tls_connector(&c)
        .connect(server_name, tcp)
        .await
        .expect("TLS handshake");
    assert!(
        closed_by_peer(&mut tls, 60).await,
        "a connection without the HTTP/2 preface is closed"
    );

    let metrics = c.controllers[0].metrics().encode();
    for reason in ["handshake_timeout", "preface_timeout"] {
        assert!(
            metrics.contains(&format!(
                "tern_connections_closed_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    // A client that speaks is still served.
    list_pools(&mut c.admin().await)
        .await
        .expect("an authenticated client is served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.connections.idle_timeout = Duration::from_millis(300);
    c.add_controller_with(cfg).await;
    // A Watch open for longer than the idle timeout keeps its connection.
    let mut admin = c.admin().await;
    let mut watch = admin
        .watch(proto::WatchRequest {
            kind: "IPPool".into(),
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    tokio::time::sleep(Duration::from_secs(2)).await;
    admin
        .create(proto::CreateRequest {
            resource: Some(common::pool("p1", "10.10.0.0/16")),
        })
        .await
        .expect("create");
    let mut seen = false;
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("the watch is alive")
    {
        if ev
            .resource
            .is_some_and(|r| r.metadata.is_some_and(|m| m.name == "p1"))
        {
            seen = true;
            break;
        }
    }
    assert!(seen, "the watch outlived the idle timeout");
    drop(watch);
    // Without a call, the connection is closed; the channel reconnects by itself.
    assert!(
        common::eventually(60, async || {
            c.controllers[0]
                .metrics()
                .encode()
                .contains("tern_connections_closed_total{reason=\"idle\"}")
        })
        .await,
        "an idle connection is closed"
    );
    list_pools(&mut admin)
        .await
        .expect("the client reconnects after an idle close");
}

/// Every key under the prefix with its mod revision and value, but the replica's cache
/// marker (written by the cache on its own schedule).
async fn etcd_keys(c: &Cluster) -> std::collections::BTreeMap<String, (i64, Vec<u8>)> {
    let (mut kvs, _) = c.etcd_dump().await;
    kvs.retain(|k, _| !k.contains("/zz-cache-marker/"));
    kvs
}

/// The process's peak resident memory so far (kB), from /proc.
fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

async fn patch_pool(
    admin: &mut proto::resource_service_client::ResourceServiceClient<tonic::transport::Channel>,
    ty: proto::PatchType,
    patch: String,
) -> Result<tonic::Response<proto::Resource>, tonic::Status> {
    admin
        .patch(proto::PatchRequest {
            kind: "IPPool".into(),
            name: "bomb".into(),
            r#type: ty as i32,
            patch,
            resource_version: String::new(),
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patch_bomb_is_refused_before_it_grows() {
    let c = Cluster::start().await;
    let mut admin = c.admin().await;
    admin
        .create(proto::CreateRequest {
            resource: Some(common::pool("bomb", "10.20.0.0/16")),
        })
        .await
        .expect("create");
    let before = etcd_keys(&c).await;
    let peak_before = peak_rss_kb();
    // 2 KB of `copy` operations, each doubling the spec: 2^40 times its size if run.
    let ops: Vec<String> = (0..40)
        .map(|i| format!(r#"{{"op":"copy","from":"/spec","path":"/spec/c{i}"}}"#))
        .collect();
    let bomb = format!("[{}]", ops.join(","));
    assert!(bomb.len() < 2100, "{}", bomb.len());
    let err = patch_pool(&mut admin, proto::PatchType::Json, bomb)
        .await
        .expect_err("the bomb is refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let limit = tern_controller::store::MAX_RESOURCE_BYTES;
    assert!(
        err.message().starts_with("patch: operation ")
            && err.message().contains("(copy /spec/c")
            && err
                .message()
                .ends_with(&format!("; the limit is {limit} bytes")),
        "{}",
        err.message()
    );
    let grown_mib = (peak_rss_kb().saturating_sub(peak_before)) / 1024;
    assert!(
        grown_mib < 64,
        "the replica's peak memory grew by {grown_mib} MiB"
    );
    assert_eq!(
        etcd_keys(&c).await,
        before,
        "a refused patch changes nothing"
    );

    // A merge patch whose result is too large is refused the same way.
    let big = format!(
        r#"{{"metadata":{{"annotations":{{"a":"{}"}}}}}}"#,
        "x".repeat(limit)
    );
    let err = patch_pool(&mut admin, proto::PatchType::Merge, big)
        .await
        .expect_err("too large");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message()
            .ends_with(&format!("; the limit is {limit} bytes")),
        "{}",
        err.message()
    );
    assert_eq!(
        etcd_keys(&c).await,
        before,
        "a refused patch changes nothing"
    );
}

/// Open a Sync stream as `node`, registering `address` (IPv4 or IPv6), and wait for the
/// controller's first message.
async fn hello(c: &Cluster, node: &str, address: &str) -> Result<(), tonic::Status> {
    let ch = c.channel(&Role::Node(node.to_string())).await;
    let mut registration = proto::NodeRegistration::default();
    if address.contains(':') {
        registration.ipv6_address = address.to_string();
    } else {
        registration.ipv4_address = address.to_string();
    }
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(proto::AgentMessage {
        msg: Some(proto::agent_message::Msg::Hello(proto::Hello {
            node_name: node.to_string(),
            agent_version: "test".into(),
            last_revision: 0,
            registration: Some(registration),
        })),
    })
    .await
    .expect("queue the Hello");
    let mut stream = proto::sync_service_client::SyncServiceClient::new(ch)
        .sync(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    stream.message().await?;
    Ok(())
}

/// The Node's mod revision in etcd.
async fn node_revision(c: &Cluster, node: &str) -> Option<i64> {
    etcd_keys(c)
        .await
        .get(&format!("{}/node/{node}", c.prefix))
        .map(|(rev, _)| *rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_flood_is_rate_limited_and_writes_the_node_once() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.registration.hello_burst = 6;
    cfg.sync.registration.hello_interval = Duration::from_secs(3600);
    cfg.sync.registration.registration_interval = Duration::from_secs(3600);
    c.add_controller_with(cfg).await;

    hello(&c, "n1", "10.0.0.11/24").await.expect("registers");
    let created = node_revision(&c, "n1").await.expect("the Node exists");
    // Hellos that change nothing write nothing.
    for _ in 0..3 {
        hello(&c, "n1", "10.0.0.11/24").await.expect("served");
    }
    assert_eq!(node_revision(&c, "n1").await, Some(created));
    let before = etcd_keys(&c).await;

    // A change right after the registration waits for the interval.
    let e = hello(&c, "n1", "10.0.0.12/24")
        .await
        .expect_err("a second rewrite within the interval");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("once every 3600s"), "{}", e.message());

    // 300 Hellos alternating the address: the burst runs out, none writes the Node.
    let mut exhausted = 0;
    for i in 0..300 {
        let addr = if i % 2 == 0 {
            "10.0.0.12/24"
        } else {
            "10.0.0.11/24"
        };
        match hello(&c, "n1", addr).await {
            Ok(()) => {}
            Err(e) if e.code() == tonic::Code::ResourceExhausted => exhausted += 1,
            Err(e) => panic!("unexpected refusal: {e:?}"),
        }
    }
    assert!(exhausted >= 298, "{exhausted} of 300 Hellos refused");
    let e = hello(&c, "n1", "10.0.0.11/24")
        .await
        .expect_err("the burst is spent");
    assert!(
        e.message().contains("said Hello more often"),
        "{}",
        e.message()
    );
    assert_eq!(
        etcd_keys(&c).await,
        before,
        "the Node was written once, at registration"
    );
    // Another node is not affected.
    hello(&c, "n2", "10.0.0.21/24")
        .await
        .expect("another node registers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_theft_is_refused_and_changes_nothing() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.sync.registration.hello_burst = 1000;
    // Every refusal below is for the address: no interval between rewrites.
    cfg.sync.registration.registration_interval = Duration::ZERO;
    cfg.sync.registration.node_address_cidrs = vec![
        "10.0.0.0/24".parse().expect("cidr"),
        "fd00::/64".parse().expect("cidr"),
    ];
    c.add_controller_with(cfg).await;
    let mut admin = c.admin().await;
    admin
        .create(proto::CreateRequest {
            resource: Some(common::res(
                "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\n\
                 spec: {peerIP: 10.0.0.254, asNumber: 64512}\n",
            )),
        })
        .await
        .expect("create the peer");
    hello(&c, "n1", "10.0.0.1/24").await.expect("n1 registers");
    hello(&c, "n1", "fd00::1/64")
        .await
        .expect("n1 adds its IPv6 address");
    hello(&c, "n3", "10.0.0.3/24").await.expect("n3 registers");
    let before = etcd_keys(&c).await;

    use tonic::Code::{InvalidArgument, PermissionDenied};
    let cases = [
        // (node, address, code, the reason in the message)
        (
            "n2",
            "10.0.0.1/24",
            PermissionDenied,
            "is the address of Node n1",
        ),
        (
            "n3",
            "10.0.0.1/24",
            PermissionDenied,
            "is the address of Node n1",
        ),
        (
            "n2",
            "fd00::1/64",
            PermissionDenied,
            "is the address of Node n1",
        ),
        (
            "n2",
            "10.0.0.254/24",
            PermissionDenied,
            "the peerIP of BGPPeer tor",
        ),
        (
            "n3",
            "10.0.0.254/24",
            PermissionDenied,
            "the peerIP of BGPPeer tor",
        ),
        ("n2", "127.0.0.1/8", InvalidArgument, "a loopback address"),
        ("n2", "::1/128", InvalidArgument, "a loopback address"),
        (
            "n2",
            "255.255.255.255/32",
            InvalidArgument,
            "the broadcast address",
        ),
        (
            "n3",
            "10.0.0.255/24",
            InvalidArgument,
            "the broadcast address of 10.0.0.0/24",
        ),
        (
            "n2",
            "169.254.0.7/16",
            InvalidArgument,
            "a link-local address",
        ),
        ("n2", "fe80::7/64", InvalidArgument, "a link-local address"),
        ("n2", "224.0.0.5/32", InvalidArgument, "a multicast address"),
        (
            "n2",
            "0.0.0.0/0",
            InvalidArgument,
            "the unspecified address",
        ),
        (
            "n2",
            "10.9.0.1/24",
            PermissionDenied,
            "is outside the networks",
        ),
        (
            "n3",
            "fd01::3/64",
            PermissionDenied,
            "is outside the networks",
        ),
    ];
    for (node, addr, code, reason) in cases {
        let e = hello(&c, node, addr)
            .await
            .expect_err(&format!("{node} registering {addr}"));
        assert_eq!(e.code(), code, "{node} {addr}: {e:?}");
        assert!(
            e.message().contains(addr) && e.message().contains(reason),
            "{node} {addr}: {}",
            e.message()
        );
    }
    assert_eq!(
        etcd_keys(&c).await,
        before,
        "a refused Hello changes nothing"
    );
    hello(&c, "n2", "10.0.0.2/24")
        .await
        .expect("an address of its own inside the networks is fine");
}

/// A value of the first replica's metrics (0 when absent).
fn metric(c: &Cluster, name: &str) -> f64 {
    c.controllers[0]
        .metrics()
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The stored status report of a node and the mod revision of its key.
async fn stored_status(c: &Cluster, node: &str) -> Option<(proto::NodeStatus, i64)> {
    let mut etcd = c.etcd.client().await.expect("etcd client");
    let resp = etcd
        .get(format!("{}/_status/{node}", c.prefix), None)
        .await
        .expect("etcd get");
    let kv = resp.kvs().first()?;
    let status = prost::Message::decode(kv.value()).expect("a stored report");
    Some((status, kv.mod_revision()))
}

/// An agent that resends its status report (unchanged) every 100 ms, and the revision
/// of its report once the report says its dataplane is programmed.
async fn chatty_agent(c: &Cluster) -> (tern_agent::agent::Agent, i64) {
    let (agent, _) =
        common::recording_agent_with(c, "n1", "10.0.0.1/24", vec![c.server()], |cfg| {
            cfg.resync_interval = Duration::from_millis(100);
        })
        .await;
    let mut rev = 0;
    assert!(
        common::eventually(30, async || {
            match stored_status(c, "n1").await {
                Some((s, r))
                    if s.dataplane
                        .as_ref()
                        .is_some_and(|d| d.state == "programmed") =>
                {
                    rev = r;
                    true
                }
                _ => false,
            }
        })
        .await,
        "the agent's report is stored"
    );
    (agent, rev)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_status_report_is_not_written_again() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.status_heartbeat = Duration::from_secs(3600);
    c.add_controller_with(cfg).await;
    let (_agent, rev) = chatty_agent(&c).await;
    // The stored report can be read before the writer has counted its write: wait for
    // the count, so the write seen above is not taken for a second one below.
    assert!(
        common::eventually(30, async || metric(&c, "tern_status_writes_total") >= 1.0).await,
        "the stored report is counted"
    );
    let writes = metric(&c, "tern_status_writes_total");
    let unchanged = metric(&c, "tern_status_reports_unchanged_total");
    assert!(
        common::eventually(30, async || {
            metric(&c, "tern_status_reports_unchanged_total") >= unchanged + 20.0
        })
        .await,
        "the agent resends its report"
    );
    assert_eq!(metric(&c, "tern_status_writes_total"), writes);
    assert_eq!(stored_status(&c, "n1").await.map(|s| s.1), Some(rev));

    // A change of the report is written.
    let mut admin = c.admin().await;
    admin
        .create(proto::CreateRequest {
            resource: Some(common::pool("p1", "10.30.0.0/16")),
        })
        .await
        .expect("create");
    assert!(
        common::eventually(30, async || {
            stored_status(&c, "n1")
                .await
                .is_some_and(|(s, r)| r > rev && s.dataplane.is_some_and(|d| d.all_pools_v4 == 1))
        })
        .await,
        "the changed report is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_status_report_is_rewritten_after_the_heartbeat() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.status_heartbeat = Duration::from_millis(400);
    c.add_controller_with(cfg).await;
    let (_agent, rev) = chatty_agent(&c).await;
    let writes = metric(&c, "tern_status_writes_total");
    assert!(
        common::eventually(30, async || {
            metric(&c, "tern_status_writes_total") >= writes + 3.0
        })
        .await,
        "the heartbeat rewrites the unchanged report"
    );
    let (status, now) = stored_status(&c, "n1").await.expect("stored");
    assert!(now > rev, "the key was rewritten");
    assert!(!status.reported_at.is_empty());
    // Still far fewer writes than reports.
    assert!(
        metric(&c, "tern_status_reports_unchanged_total") > 0.0,
        "most resent reports are not written"
    );
}

/// An HTTP/2 client over an authenticated TLS connection that sends the preface and
/// acknowledges the server's settings, then only reads: it answers the server's PINGs
/// when `answer` is set. Counts the PINGs it saw; ends when the server closes the
/// connection (true) or when `stop` completes (false).
async fn h2_client(
    c: &Cluster,
    answer: bool,
    pings: Arc<std::sync::atomic::AtomicUsize>,
    stop: impl std::future::Future<Output = ()>,
) -> bool {
    use tokio::io::AsyncWriteExt as _;
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const ACK: u8 = 0x1;
    let frame = |ty: u8, flags: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len())
            .expect("a small frame")
            .to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], ty, flags, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    };
    let tcp = TcpStream::connect(c.addr()).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = tls_connector(c)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, &[]));
    tls.write_all(&hello).await.expect("preface");
    let read = async {
        loop {
            let mut head = [0u8; 9];
            if tls.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            if tls.read_exact(&mut payload).await.is_err() {
                return;
            }
            let reply = match (head[3], head[4] & ACK) {
                (SETTINGS, 0) => Some(frame(SETTINGS, ACK, &[])),
                (PING, 0) => {
                    pings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    answer.then(|| frame(PING, ACK, &payload))
                }
                _ => None,
            };
            if let Some(r) = reply
                && tls.write_all(&r).await.is_err()
            {
                return;
            }
        }
    };
    tokio::select! {
        () = read => true,
        () = stop => false,
    }
}

/// HTTP/2 keepalive: the replica pings a connection that has gone quiet and closes it
/// when the ping is not answered (a peer that vanished without closing), while a quiet
/// peer that answers keeps its connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_answer_keepalive_pings_is_dropped() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.connections.keepalive_interval = Duration::from_millis(300);
    cfg.connections.keepalive_timeout = Duration::from_millis(300);
    // Neither connection carries a call: only the keepalive may close them.
    cfg.connections.idle_timeout = Duration::from_secs(3600);
    c.add_controller_with(cfg).await;
    let c = Arc::new(c);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let silent_pings = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(AtomicUsize::new(0));
    let answering = tokio::spawn({
        let (c, answered) = (c.clone(), answered.clone());
        async move {
            h2_client(&c, true, answered, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    let silent = tokio::time::timeout(
        Duration::from_secs(60),
        h2_client(&c, false, silent_pings.clone(), std::future::pending()),
    )
    .await
    .expect("the peer that does not answer is closed");
    assert!(silent, "closed by the replica");
    assert!(
        silent_pings.load(Ordering::SeqCst) >= 1,
        "the replica pinged before it closed the connection"
    );
    // The peer that answers keeps its connection through more pings than the silent
    // one was allowed.
    let seen = answered.load(Ordering::SeqCst);
    assert!(
        common::eventually(60, async || answered.load(Ordering::SeqCst) >= seen + 3).await,
        "the replica keeps pinging the answering peer"
    );
    assert!(!answering.is_finished(), "the answering peer was closed");
    let _ = stop.send(());
    assert!(
        !answering.await.expect("the client task"),
        "the answering peer's connection stayed open"
    );
}
