//! The tern-controller binary: configuration checked before anything binds, first-start
//! defaults, metrics over HTTP.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tern_testkit::etcd::{Etcd, free_port};

const BIN: &str = env!("CARGO_BIN_EXE_tern-controller");

fn run(args: &[&str]) -> (i32, String) {
    let o = Command::new(BIN).args(args).output().expect("runs");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_before_anything_binds() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let bad_yaml = dir.path().join("c.yaml");
    std::fs::write(
        &bad_yaml,
        "etcdEndpoints: [127.0.0.1:2379]\nlistn: 0.0.0.0:1\n",
    )
    .expect("write");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--listen".into(), listen.clone(), "--insecure".into()],
            "no etcd endpoints",
        ),
        (
            vec![
                "--listen".into(),
                listen.clone(),
                "--etcd-endpoints".into(),
                "127.0.0.1:2379".into(),
            ],
            "TLS is required",
        ),
        (
            vec![
                "--listen".into(),
                format!("0.0.0.0:{port}"),
                "--etcd-endpoints".into(),
                "127.0.0.1:2379".into(),
                "--insecure".into(),
            ],
            "--insecure-allow-remote",
        ),
        (
            vec![
                "--listen".into(),
                listen.clone(),
                "--etcd-endpoints".into(),
                "127.0.0.1:2379".into(),
                "--ca".into(),
                "/nonexistent/ca.pem".into(),
                "--cert".into(),
                "/nonexistent/c.pem".into(),
                "--key".into(),
                "/nonexistent/k.pem".into(),
            ],
            "does not exist",
        ),
        (
            vec![
                "--listen".into(),
                listen.clone(),
                "--etcd-endpoints".into(),
                "noport".into(),
                "--insecure".into(),
            ],
            "has no port",
        ),
        (
            vec!["--config".into(), bad_yaml.display().to_string()],
            "unknown field `listn`",
        ),
        (
            vec![
                "--listen".into(),
                listen.clone(),
                "--etcd-endpoints".into(),
                "127.0.0.1:2379".into(),
                "--insecure".into(),
                "--default-ipv4-pool".into(),
                "10.0.0.1/8".into(),
            ],
            "must be an IPv4 network address",
        ),
    ];
    for (args, want) in cases {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, err) = run(&a);
        assert_eq!(code, 2, "{a:?}: {err}");
        assert!(err.contains(want), "{a:?}: {err}");
        assert!(
            TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "{a:?}: nothing bound"
        );
    }
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

fn wait_port(addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_creates_defaults_and_serves_metrics() {
    let etcd = Etcd::start().expect("etcd");
    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let child = Command::new(BIN)
        .args([
            "--etcd-endpoints",
            &etcd.endpoint(),
            "--listen",
            &listen,
            "--insecure",
            "--default-ipv4-pool",
            "192.168.0.0/16",
            "--metrics-listen",
            &metrics,
            "--log-format",
            "json",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    let mut p = Proc(child);
    wait_port(&listen);
    let mut kv = etcd.client().await.expect("etcd client");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pool = loop {
        let r = kv
            .get("/tern/v1/ippool/default-ipv4-ippool", None)
            .await
            .expect("get");
        if let Some(kv) = r.kvs().first() {
            break serde_json::from_slice::<serde_json::Value>(kv.value()).expect("json");
        }
        assert!(Instant::now() < deadline, "no default pool");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(pool["spec"]["cidr"], "192.168.0.0/16");
    assert_eq!(pool["spec"]["natOutgoing"], true);
    assert_eq!(pool["spec"]["blockSize"], 26);
    let cfg = kv
        .get("/tern/v1/bgpconfiguration/default", None)
        .await
        .expect("get");
    let cfg: serde_json::Value = serde_json::from_slice(cfg.kvs()[0].value()).expect("json");
    assert_eq!(cfg["spec"]["asNumber"], 64512);
    assert_eq!(cfg["spec"]["nodeToNodeMeshEnabled"], true);
    let body = tokio::task::block_in_place(|| http_get(&metrics, "/metrics"));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for m in [
        "tern_agents_connected",
        "tern_cache_revision",
        "tern_etcd_watch_healthy 1",
        "tern_sync_snapshots_total",
    ] {
        assert!(body.contains(m), "{m} in {body}");
    }
    // JSON logs, with the warning about plaintext.
    let _ = p.0.kill();
    let _ = p.0.wait();
    let mut err = String::new();
    p.0.stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let first = err.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first).expect("JSON log lines");
    assert_eq!(line["level"], "WARN");
    assert!(err.contains("WITHOUT TLS"), "{err}");
}
