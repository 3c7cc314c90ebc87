//! Calico drop-in: tern's corpus of Calico manifests (tests/manifests) applied with
//! ternctl as an operator would, a Calico export imported and its sessions rendered,
//! calicoctl's habits (label, validate, version), reverse peerIP peerings, and
//! FelixConfiguration driving an agent's NAT. ternctl runs as a subprocess against a
//! live controller over mTLS; agents run in-process against it.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{Cluster, Out, recording_agent, ternctl};
use tern::pki::Role;

fn manifests(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/manifests")
        .join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("manifest directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}", root.display());
    files
}

/// The `# <tag>: ` lines at the top of a manifest.
fn header(path: &Path, tag: &str) -> BTreeSet<String> {
    let prefix = format!("# {tag}: ");
    std::fs::read_to_string(path)
        .expect("read manifest")
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
        .collect()
}

/// The warnings a ternctl run printed (without the `Warning: ` prefix).
fn warnings(o: &Out) -> BTreeSet<String> {
    o.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("Warning: ").map(str::to_string))
        .collect()
}

fn run(c: &Cluster, args: &[&str]) -> Out {
    tokio::task::block_in_place(|| ternctl(c, &Role::Admin, args, None))
}

/// `ternctl apply -f -` of `docs`, as the administrator.
fn apply(c: &Cluster, docs: &str) -> Out {
    tokio::task::block_in_place(|| ternctl(c, &Role::Admin, &["apply", "-f", "-"], Some(docs)))
}

/// Assert that a successful run printed `text` on stdout.
fn says(o: &Out, text: &str) {
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains(text), "{text:?} in:\n{}", o.stdout);
}

/// Assert that a successful run printed every line of `lines` (each a line's start).
fn says_lines(o: &Out, lines: &[&str]) {
    assert_eq!(o.code, 0, "{}", o.stderr);
    for line in lines {
        assert!(
            o.stdout.lines().any(|l| l.starts_with(line)),
            "{line:?} in:\n{}",
            o.stdout
        );
    }
}

/// A BIRD configuration or a NAT ruleset rendered offline for `node`; a BIRD
/// configuration must pass `bird -p -c`.
fn render(docs: &str, node: &str, what: tern_agent::render::What) -> String {
    let bird = matches!(what, tern_agent::render::What::Bird);
    let text = tern_agent::render::render_offline(
        docs,
        node,
        what,
        Default::default(),
        &Default::default(),
    )
    .expect("renders");
    if bird {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("bird.conf");
        std::fs::write(&path, &text).expect("write the configuration");
        let out = std::process::Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("run `bird -p` (install bird2: tests/run does)");
        assert!(
            out.status.success(),
            "BIRD rejects the rendered configuration: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    text
}

/// `ternctl ipam check --show-problem-ips -o FILE`: its output, the report's path and
/// the directory holding it (removed when dropped).
fn check_with_report(c: &Cluster) -> (Out, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let rp = report.to_str().expect("utf8 path");
    let o = run(c, &["ipam", "check", "--show-problem-ips", "-o", rp]);
    (o, report, dir)
}

/// `ternctl ipam assign` of one address to `handle` on `node` from `pool`.
fn assign(c: &Cluster, node: &str, handle: &str, pool: &str) -> Out {
    run(
        c,
        &[
            "ipam", "assign", "--node", node, "--handle", handle, "--pool", pool,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_applies_with_exactly_its_warnings_and_refusals_change_nothing() {
    let c = Cluster::start().await;
    for file in manifests("valid") {
        let f = file.to_str().expect("utf8 path");
        let want = header(&file, "warning");
        // Offline first: the same validator, no server.
        let o = run(&c, &["validate", "-f", f]);
        assert_eq!(o.code, 0, "{f}: validate: {}", o.stderr);
        assert_eq!(warnings(&o), want, "{f}: validate warnings");
        let o = run(&c, &["apply", "-f", f]);
        assert_eq!(o.code, 0, "{f}: apply: {}", o.stderr);
        assert!(
            o.stdout.starts_with("Successfully applied"),
            "{f}: {}",
            o.stdout
        );
        assert_eq!(warnings(&o), want, "{f}: apply warnings");
    }

    // Field names in any case are stored in Calico's spelling.
    let o = run(
        &c,
        &["get", "bgpfilter", "export-only-blocks", "-o", "json"],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(
        v["spec"]["exportV4"][0]["communities"]["values"][0],
        "64512:100"
    );
    assert!(v["spec"].get("exportv4").is_none());
    let o = run(&c, &["get", "ippool", "pool-team-a", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["spec"]["blockSize"], 24);
    assert_eq!(v["spec"]["nodeSelector"], "rack == 'r1'");
    let o = run(&c, &["get", "felixconfig", "default", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["spec"]["logSeverityScreen"], "Info");
    assert_eq!(v["spec"]["iptablesMarkMask"], 4_294_901_760u64);
    assert_eq!(v["spec"]["natPortRange"], "32768:65535");
    let o = run(&c, &["get", "bgpconfig", "default", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["spec"]["asNumber"], 64512, "0xfc00, YAML's hex");
    let o = run(&c, &["get", "nodes", "kube-node-1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(
        v["metadata"]["labels"]["route-reflector"], "true",
        "YAML 1.1 yes"
    );
    assert!(v.get("status").is_none(), "Calico's status is dropped");

    // IPAM claims blocks for the Nodes applied above in the background; let it finish
    // so the dumps below see only what a refused apply might have written.
    assert!(
        c.etcd_settled(std::time::Duration::from_millis(1500), 60)
            .await,
        "etcd never went quiet after the valid corpus"
    );
    for file in manifests("invalid") {
        let f = file.to_str().expect("utf8 path");
        let field = header(&file, "error");
        let field = field.iter().next().expect("an error line");
        let before = c.etcd_dump().await;
        let o = run(&c, &["apply", "-f", f]);
        assert_ne!(o.code, 0, "{f}: refused");
        assert!(
            o.stderr.contains(&format!("{field}: ")),
            "{f}: the error names {field}: {}",
            o.stderr
        );
        assert_eq!(c.etcd_dump().await, before, "{f}: etcd unchanged");
        let o = run(&c, &["validate", "-f", f]);
        assert_ne!(o.code, 0, "{f}: validate refuses too");
        assert!(
            o.stderr.contains(&format!("{field}: ")),
            "{f}: {}",
            o.stderr
        );
    }
}

/// `create` and `replace` print one warning per stored-only field, as `apply` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_replace_print_one_warning_per_stored_only_field() {
    let c = Cluster::start().await;
    let write = |verb: &str, spec: &str| {
        let doc = format!(
            "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {{name: p}}\nspec: {spec}\n"
        );
        tokio::task::block_in_place(|| ternctl(&c, &Role::Admin, &[verb, "-f", "-"], Some(&doc)))
    };
    let ipip = "IPPool(p): spec.ipipMode: stored; tern builds no IPIP tunnels";
    let o = write(
        "create",
        "{cidr: 10.80.0.0/16, ipipMode: CrossSubnet, vxlanMode: Never}",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(warnings(&o), [ipip.to_string()].into());
    let o = write(
        "replace",
        "{cidr: 10.80.0.0/16, ipipMode: CrossSubnet, namespaceSelector: team == 'a'}",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        warnings(&o),
        [
            ipip.to_string(),
            "IPPool(p): spec.namespaceSelector: stored; tern knows no namespaces: the pool serves every workload its nodeSelector allows".to_string(),
        ]
        .into()
    );
    let lines = o.stderr.lines().filter(|l| l.starts_with("Warning: "));
    assert_eq!(lines.count(), 2, "one line per field: {}", o.stderr);
    let o = write("replace", "{cidr: 10.80.0.0/16}");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(warnings(&o).is_empty(), "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_bird_cannot_carry_is_refused_on_the_peer_that_names_it() {
    let c = Cluster::start().await;
    // What the controller writes at start (its default BGPConfiguration, its cache
    // marker) is there before the comparison below.
    let settled = common::eventually(10, async || {
        let (keys, _) = c.etcd_dump().await;
        keys.keys()
            .any(|k| k.ends_with("/bgpconfiguration/default"))
            && keys.keys().any(|k| k.contains("marker"))
    })
    .await;
    assert!(settled);
    // A Secret holding such a value cannot be written through the API any more; one
    // left from before (written straight into etcd here) makes peerings naming it fail.
    let bad = tern::manifest::parse_documents(
        "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: old}\nstringData: {pw: 'a\"b'}\n",
    )
    .expect("secret")
    .remove(0);
    let mut etcd = c.etcd.client().await.expect("etcd client");
    etcd.put(
        tern::model::resource_key(&c.prefix, tern::model::Kind::Secret, "old"),
        bad.to_json_bytes(),
        None,
    )
    .await
    .expect("put");
    let before = c.etcd_dump().await;
    for doc in [
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, password: {secretKeyRef: {name: old, key: pw}}}\n",
        "apiVersion: projectcalico.org/v3\nkind: BGPConfiguration\nmetadata: {name: default}\nspec: {nodeMeshPassword: {secretKeyRef: {name: old, key: pw}}}\n",
    ] {
        let o = apply(&c, doc);
        assert_ne!(o.code, 0);
        assert!(
            o.stderr
                .contains("secretKeyRef: key pw of Secret old holds a character BIRD cannot carry"),
            "{}",
            o.stderr
        );
        assert!(!o.stderr.contains("a\"b"), "the value is never shown");
    }
    assert_eq!(c.etcd_dump().await, before);
    // Another key of the same Secret, or a Secret not written yet, is fine.
    let o = apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: p}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, password: {secretKeyRef: {name: later, key: pw}}}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternctl_label_version_and_validate_work_as_calicoctl_does() {
    let c = Cluster::start().await;
    let o = apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {bgp: {ipv4Address: 10.0.0.1/24}}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);

    let o = run(&c, &["label", "nodes", "n1", "rack=r1"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "Successfully set label rack on node n1\n"),
        "{}",
        o.stderr
    );
    let o = run(&c, &["label", "nodes", "n1", "rack=r2"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr
            .contains("key rack is already present with value r1; use --overwrite"),
        "{}",
        o.stderr
    );
    let o = run(&c, &["label", "nodes", "n1", "rack=r2", "--overwrite"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = run(&c, &["get", "nodes", "n1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["metadata"]["labels"]["rack"], "r2");
    let o = run(&c, &["label", "nodes", "n1", "rack", "--remove"]);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "Successfully removed label rack from node n1\n"),
        "{}",
        o.stderr
    );
    let o = run(&c, &["label", "nodes", "n1", "rack", "--remove"]);
    assert_ne!(o.code, 0, "nothing to remove");
    let o = run(&c, &["label", "nodes", "n1", "Bad Key=x"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("metadata.labels"), "{}", o.stderr);
    let o = run(&c, &["label", "nodes", "nope", "a=b"]);
    assert_ne!(o.code, 0);
    // A viewer may not label.
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &Role::Viewer, &["label", "nodes", "n1", "a=b"], None)
    });
    assert_ne!(o.code, 0);

    let o = run(&c, &["version"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = env!("CARGO_PKG_VERSION");
    assert_eq!(
        o.stdout,
        format!("Client Version:     {v}\nController Version: {v}\n")
    );

    // validate needs no server at all.
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pools.yaml");
    std::fs::write(
        &f,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.0.0.0/16}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: b}\nspec: {cidr: 10.0.128.0/17}\n",
    )
    .expect("write");
    let o = tokio::task::block_in_place(|| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ternctl"));
        cmd.args(["--server", "127.0.0.1:1", "validate", "-f"])
            .arg(&f);
        cmd.output().expect("ternctl runs")
    });
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        stderr.contains("document 2: spec.cidr: 10.0.128.0/17 overlaps IPPool \"a\""),
        "{stderr}"
    );
}

/// The sessions (BIRD protocol names) a rendered configuration holds.
fn sessions(bird: &str) -> BTreeSet<String> {
    bird.lines()
        .filter_map(|l| l.trim().strip_prefix("protocol bgp "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calico_export_imports_and_renders_the_clusters_sessions() {
    let c = Cluster::start().await;
    let export =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/export/calico-export.yaml");
    let f = export.to_str().expect("utf8 path");
    let o = run(&c, &["datastore", "import", "-f", f]);
    assert_eq!(o.code, 0, "{}\n{}", o.stdout, o.stderr);
    let table: Vec<&str> = o
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("skipped"))
        .collect();
    let normalized: Vec<String> = table
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        normalized,
        [
            "KIND CREATED REPLACED SKIPPED REFUSED",
            // The controller wrote its default BGPConfiguration at start.
            "BGPConfiguration 0 1 0 0",
            "BGPPeer 2 0 0 0",
            "BlockAffinity 1 0 0 0",
            "ClusterInformation 0 0 1 0",
            "FelixConfiguration 1 0 0 0",
            "GlobalNetworkPolicy 0 0 1 0",
            "IPPool 1 0 0 0",
            "Node 3 0 0 0",
            "Secret 1 0 0 0",
        ]
    );
    says(
        &o,
        "skipped GlobalNetworkPolicy(default.allow-dns): network policy is not tern's job",
    );
    assert!(
        o.stdout
            .contains("skipped ClusterInformation(default): Calico's own bookkeeping")
    );
    assert!(
        o.stderr.contains("Warning: IPPool(default-ipv4-ippool): spec.ipipMode: stored; tern builds no IPIP tunnels"),
        "{}",
        o.stderr
    );
    // Server metadata was dropped: the controller set its own.
    let got = run(&c, &["get", "bgppeer", "rack2-tor", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&got.stdout).expect("json");
    assert_ne!(v["metadata"]["uid"], "1a2b3c4d-5e6f-4a8b-9c0d-1e2f3a4b5c6d");
    // Importing again replaces.
    let o = run(&c, &["datastore", "import", "-f", f]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Node", "0", "3", "0", "0"]),
        "{}",
        o.stdout
    );

    // What tern now holds, as the migration guide reads it back, renders the sessions
    // Calico's confd gave kube-node-2: the mesh, the global peer and its own peer, with
    // Calico's names.
    let mut all = String::new();
    for kind in [
        "nodes",
        "bgpconfigs",
        "bgppeers",
        "ippools",
        "blockaffinities",
        "felixconfigs",
        "secrets",
    ] {
        let o = run(&c, &["get", kind, "-o", "yaml", "--show-secrets"]);
        assert_eq!(o.code, 0, "{kind}: {}", o.stderr);
        all.push_str(&o.stdout);
        all.push_str("---\n");
    }
    let bird = render(&all, "kube-node-2", tern_agent::render::What::Bird);
    assert_eq!(
        sessions(&bird),
        [
            "Global_10_0_0_1",
            "Mesh_10_0_0_10",
            "Mesh_10_0_0_11",
            "Node_10_0_0_2"
        ]
        .map(String::from)
        .into()
    );
    assert!(
        bird.contains("password \"rack2-tor-Pa55\""),
        "the imported Secret's password"
    );
    assert!(
        bird.contains("192.168.12.0/26"),
        "the imported block is advertised"
    );
    // FelixConfiguration's natOutgoingExclusions reached the NAT calculation.
    let nat = render(&all, "kube-node-2", tern_agent::render::What::Nat);
    assert!(
        nat.contains("10.0.0.10"),
        "host addresses are excluded: {nat}"
    );
}

/// As in Calico (and as docs/api.md says), a BGPPeer with a peerIP and no asNumber is
/// accepted; its session takes the AS of the node owning the address, else the
/// cluster's AS (an iBGP session).
#[test]
fn a_peer_ip_without_as_number_takes_the_nodes_or_the_clusters_as() {
    let docs = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false, asNumber: 64513}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n2}
spec: {bgp: {ipv4Address: 10.0.0.2/24, asNumber: 65099}}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: to-n2}
spec: {node: n1, peerIP: 10.0.0.2}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1}
";
    let parsed = tern::manifest::parse_documents(docs).expect("parses");
    for r in &parsed {
        tern::validate::validate(r).unwrap_or_else(|e| panic!("{}: {e:?}", r.name()));
    }
    let bird = render(docs, "n1", tern_agent::render::What::Bird);
    assert_eq!(
        sessions(&bird),
        ["Global_192_0_2_1", "Node_10_0_0_2"]
            .map(String::from)
            .into()
    );
    assert!(
        bird.contains("neighbor 10.0.0.2 as 65099;"),
        "n2's AS: {bird}"
    );
    assert!(
        bird.contains("neighbor 192.0.2.1 as 64513;"),
        "the cluster's AS: {bird}"
    );
}

/// An import goes on past what the controller refuses, reports it per kind with the
/// field and the reason, and exits non-zero; what it refused is not stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_datastore_import_reports_what_it_refused_and_goes_on() {
    let c = Cluster::start().await;
    let export = "\
apiVersion: projectcalico.org/v3
kind: IPPoolList
items:
- metadata: {name: good, resourceVersion: '41', uid: 0c1d}
  spec: {cidr: 10.70.0.0/16}
  apiVersion: projectcalico.org/v3
  kind: IPPool
- apiVersion: projectcalico.org/v3
  kind: IPPool
  metadata: {name: host-bits}
  spec: {cidr: 10.71.0.1/16}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: tor}
spec: {peerIP: 192.0.2.1, asNumber: 65001}
---
apiVersion: projectcalico.org/v3
kind: BGPFilter
metadata: {name: reject-with-operations}
spec: {exportV4: [{action: Reject, cidr: 10.0.0.0/8, matchOperator: In, operations: [{setPriority: {value: 10}}]}]}
---
apiVersion: projectcalico.org/v3
kind: Gadget
metadata: {name: g}
";
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Admin,
            &["datastore", "import", "-f", "-"],
            Some(export),
        )
    });
    assert_eq!(o.code, 1, "{}\n{}", o.stdout, o.stderr);
    let rows: Vec<String> = o
        .stdout
        .lines()
        .take_while(|l| !l.starts_with("skipped") && !l.starts_with("refused"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        rows,
        [
            "KIND CREATED REPLACED SKIPPED REFUSED",
            "BGPFilter 0 0 0 1",
            "BGPPeer 1 0 0 0",
            "Gadget 0 0 1 0",
            "IPPool 1 0 0 1",
        ]
    );
    for note in [
        "skipped Gadget(g): not a kind tern knows",
        "refused IPPool(host-bits): spec.cidr: ",
        "refused BGPFilter(reject-with-operations): spec.exportV4[0].operations: ",
    ] {
        assert!(
            o.stdout.lines().any(|l| l.starts_with(note)),
            "{note:?} in:\n{}",
            o.stdout
        );
    }
    for (kind, name, stored) in [
        ("ippool", "good", true),
        ("bgppeer", "tor", true),
        ("ippool", "host-bits", false),
        ("bgpfilter", "reject-with-operations", false),
    ] {
        let o = run(&c, &["get", kind, name]);
        assert_eq!(o.code == 0, stored, "{kind} {name}: {}", o.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_ip_peering_reaches_the_node_it_names() {
    let c = Cluster::start().await;
    let docs = "\
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata: {name: default}
spec: {nodeToNodeMeshEnabled: false}
---
apiVersion: v1
kind: Secret
metadata: {name: pair}
stringData: {pw: pair-Pa55}
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata: {name: n1-to-n2}
spec: {node: n1, peerIP: 10.0.0.2, asNumber: 64512, password: {secretKeyRef: {name: pair, key: pw}}}
";
    // The nodes register first (an address that is already some BGPPeer's peerIP is
    // not one an agent may register for itself; an administrator may).
    let (a1, _) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let (a2, _) = recording_agent(&c, "n2", "10.0.0.2/24", vec![c.server()]).await;
    let o = apply(&c, docs);
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Both views, each with what its renderer needs: n1 its own Node and the peering,
    // n2 the peering, n1's Node and the Secret (the objects arrive in any order).
    let both = common::eventually(15, async || {
        let v1 = a1.sync.view.snapshot();
        let v2 = a2.sync.view.snapshot();
        v1.peers.contains_key("n1-to-n2")
            && v1.nodes.contains_key("n1")
            && v2.peers.contains_key("n1-to-n2")
            && v2.nodes.contains_key("n1")
            && v2.secret_value("pair", "pw").is_some()
    })
    .await;
    assert!(
        both,
        "the peering reaches n1 and n2, n1's Node and the Secret reach n2"
    );
    let v1 = a1.sync.view.snapshot();
    let v2 = a2.sync.view.snapshot();
    assert_eq!(v2.secret_value("pair", "pw"), Some("pair-Pa55"));
    // Each side's renderer configures its end of the one session.
    let opts = Default::default();
    let b1 = tern_agent::calc::bird::render(&v1, "n1", &opts).expect("n1 renders");
    let b2 = tern_agent::calc::bird::render(&v2, "n2", &opts).expect("n2 renders");
    assert!(sessions(&b1).contains("Node_10_0_0_2"), "{b1}");
    assert!(sessions(&b2).contains("Node_10_0_0_1"), "{b2}");
    assert!(b2.contains("password \"pair-Pa55\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn felix_configuration_drives_an_agents_nat() {
    let c = Cluster::start().await;
    let docs = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: default}
spec: {natOutgoingAddress: 203.0.113.7, natPortRange: '32768:60999', iptablesNATOutgoingInterfaceFilter: eth+, logSeverityScreen: Info}
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: {name: node.n1}
spec: {natPortRange: '40000:50000'}
";
    let o = apply(&c, docs);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (agent, driver) = recording_agent(&c, "n1", "10.0.0.1/24", vec![c.server()]).await;
    let programmed = common::eventually(15, async || {
        driver
            .current()
            .is_some_and(|s| s.v4.snat_address.is_some())
    })
    .await;
    assert!(programmed, "the NAT state was programmed");
    let s = driver.current().expect("a state");
    assert_eq!(s.v4.snat_address, Some("203.0.113.7".parse().expect("ip")));
    assert_eq!(
        s.port_range.map(|p| p.to_string()).as_deref(),
        Some("40000:50000"),
        "node.n1 wins"
    );
    assert_eq!(s.interface_filter.map(|f| f.nft()).as_deref(), Some("eth*"));
    // AgentConfiguration at the same scope wins over FelixConfiguration.
    let o = apply(
        &c,
        "apiVersion: tern.dev/v1\nkind: AgentConfiguration\nmetadata: {name: default}\nspec: {natOutgoingAddress: 203.0.113.8}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let moved = common::eventually(15, async || {
        driver
            .current()
            .is_some_and(|s| s.v4.snat_address == Some("203.0.113.8".parse().expect("ip")))
    })
    .await;
    assert!(moved);
    drop(agent);
}

/// Put a handle record straight into etcd (damage only a hand or a bug could do).
async fn put_handle(c: &Cluster, node: &str, handle: &str, address: &str, block: &str) {
    let mut etcd = c.etcd.client().await.expect("etcd client");
    etcd.put(
        format!("{}/_ipam/handles/{node}/4/{handle}", c.prefix),
        serde_json::json!({"address": address, "block": block}).to_string(),
        None,
    )
    .await
    .expect("put handle");
}

async fn delete_handle(c: &Cluster, node: &str, handle: &str) {
    let mut etcd = c.etcd.client().await.expect("etcd client");
    let r = etcd
        .delete(
            format!("{}/_ipam/handles/{node}/4/{handle}", c.prefix),
            None,
        )
        .await
        .expect("delete handle");
    assert_eq!(r.deleted(), 1, "{node}/{handle}");
}

/// calicoctl's IPAM habits: `ipam show --ip | --show-borrowed | --show-configuration`,
/// `ipam check [--show-problem-ips] [-o report.json]` and `ipam release --ip |
/// --from-report`, against records damaged in etcd on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternctl_ipam_show_check_and_release() {
    let c = Cluster::start().await;
    let o = apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.60.0.0/16, blockSize: 29}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n2}\nspec: {}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    for (h, want) in [
        ("a", "10.60.0.0"),
        ("b", "10.60.0.1"),
        ("c", "10.60.0.2"),
        ("d", "10.60.0.3"),
    ] {
        let o = assign(&c, "n1", h, "p");
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert!(
            o.stdout
                .starts_with(&format!("{want} (block 10.60.0.0/29)")),
            "{}",
            o.stdout
        );
    }
    let o = run(&c, &["ipam", "check"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    says(&o, "Check complete; found 0 problems.");

    // A reservation after the fact; a leaked address (its handle record gone); a handle
    // with no owner (its block does not hold the address); a borrowed address (its
    // handle record moved to another node).
    let o = apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: IPReservation\nmetadata: {name: late}\nspec: {reservedCIDRs: [10.60.0.3]}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    delete_handle(&c, "n1", "a").await;
    put_handle(&c, "n1", "ghost", "10.60.0.5", "10.60.0.0/29").await;
    delete_handle(&c, "n1", "c").await;
    put_handle(&c, "n2", "c", "10.60.0.2", "10.60.0.0/29").await;

    let o = run(&c, &["ipam", "show", "--ip", "10.60.0.1"]);
    assert_eq!(
        o.stdout,
        "IP 10.60.0.1 is in use\n  handle: b\n  pool:   p\n  block:  10.60.0.0/29 (node n1)\n"
    );
    let o = run(&c, &["ipam", "show", "--ip", "10.60.0.3"]);
    says(&o, "reserved by IPReservation late");
    let o = run(&c, &["ipam", "show", "--ip", "10.60.0.6"]);
    assert!(
        o.stdout.starts_with("IP 10.60.0.6 is not assigned\n"),
        "{}",
        o.stdout
    );
    let o = run(&c, &["ipam", "show", "--ip", "192.0.2.1"]);
    assert_eq!(o.stdout, "IP 192.0.2.1 is not in any IP pool\n");
    let o = run(&c, &["ipam", "show", "--ip", "nope"]);
    assert_ne!(o.code, 0);
    assert!(
        o.stderr.contains("address: \"nope\" is not an IP address"),
        "{}",
        o.stderr
    );

    let o = run(&c, &["ipam", "show", "--show-borrowed"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let row = o
        .stdout
        .lines()
        .find(|l| l.contains("10.60.0.2"))
        .expect("a row");
    let cells: Vec<&str> = row
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        cells,
        ["10.60.0.2", "n2", "10.60.0.0/29", "n1", "c"],
        "{}",
        o.stdout
    );
    let o = run(&c, &["ipam", "show", "--show-configuration"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    for (k, v) in [
        ("StrictAffinity", "true"),
        ("AutoAllocateBlocks", "true"),
        ("MaxBlocksPerHost", "0"),
    ] {
        assert!(
            o.stdout.lines().any(|l| l.contains(k) && l.contains(v)),
            "{k}: {}",
            o.stdout
        );
    }

    let (o, report, _dir) = check_with_report(&c);
    let rp = report.to_str().expect("utf8 path");
    says_lines(
        &o,
        &[
            "Found 1 leaked address.",
            "  10.60.0.0 block 10.60.0.0/29 node n1 handle a: allocated, but no handle record points at it",
            "Found 1 handle with no owner.",
            "  10.60.0.5 block 10.60.0.0/29 node n1 handle ghost: block 10.60.0.0/29 does not hold 10.60.0.5 for it",
            "Found 0 blocks of deleted nodes or pools.",
            "Found 1 borrowed address.",
            "Found 1 reserved address in use.",
            "Check complete; found 4 problems.",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["leaked"][0]["address"], "10.60.0.0");
    assert_eq!(json["orphanHandles"][0]["handle"], "ghost");
    assert_eq!(json["reservedInUse"][0]["address"], "10.60.0.3");

    // A viewer may check but not release.
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Viewer,
            &["ipam", "release", "--from-report", rp],
            None,
        )
    });
    assert_ne!(o.code, 0);
    let before = c.etcd_dump().await;
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Viewer,
            &["ipam", "release", "--ip", "10.60.0.1"],
            None,
        )
    });
    assert_ne!(o.code, 0);
    assert_eq!(
        c.etcd_dump().await,
        before,
        "a refused release changes nothing"
    );

    let o = run(&c, &["ipam", "release", "--from-report", rp]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    says(&o, "Released 2 problems; skipped 0.");
    let o = run(&c, &["ipam", "check"]);
    says(&o, "Found 0 leaked addresses.");
    says(&o, "Found 0 handles with no owner.");
    says(&o, "found 2 problems");
    // The same report again: nothing left to do.
    let o = run(&c, &["ipam", "release", "--from-report", rp]);
    says(&o, "Released 0 problems; skipped 2.");
    // The released address is handed out again (it is free, not reserved).
    let o = run(&c, &["ipam", "show", "--ip", "10.60.0.0"]);
    assert!(
        o.stdout.starts_with("IP 10.60.0.0 is not assigned"),
        "{}",
        o.stdout
    );

    let o = run(&c, &["ipam", "release", "--ip", "10.60.0.3"]);
    assert_eq!(
        o.stdout, "Released 10.60.0.3 (handle d, block 10.60.0.0/29, node n1)\n",
        "{}",
        o.stderr
    );
    let o = run(&c, &["ipam", "release", "--ip", "10.60.0.3"]);
    assert_eq!(o.stdout, "IP 10.60.0.3 is not assigned\n");
    // Its handle is gone with it: releasing the handle finds nothing.
    let o = run(&c, &["ipam", "release", "--node", "n1", "--handle", "d"]);
    assert_eq!(o.stdout, "Handle d holds no address\n");
    let o = run(
        &c,
        &["ipam", "release", "--ip", "10.60.0.1", "--node", "n1"],
    );
    assert_ne!(o.code, 0, "--ip and --node do not go together");
    let o = run(&c, &["ipam", "check"]);
    assert!(
        o.stdout.contains("found 1 problem"),
        "the borrowed one: {}",
        o.stdout
    );
}

/// `ipam check` reports blocks of deleted nodes or pools (and the handles of a deleted
/// node). The controller here waits an hour before a reconcile pass, so the blocks stay
/// for the check to find; `release --from-report` leaves them to that pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ternctl_ipam_check_reports_blocks_of_deleted_nodes_and_pools() {
    let mut c = Cluster::without_controller();
    let mut cfg = c.controller_config();
    cfg.ipam.auto_blocks = false;
    cfg.ipam.debounce = std::time::Duration::from_secs(3600);
    cfg.ipam.resync = std::time::Duration::from_secs(3600);
    c.add_controller_with(cfg).await;
    let o = apply(
        &c,
        "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.61.0.0/16, blockSize: 29}\n---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: q}\nspec: {cidr: 10.62.0.0/16, blockSize: 29}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n1}\nspec: {}\n---\napiVersion: projectcalico.org/v3\nkind: Node\nmetadata: {name: n2}\nspec: {}\n",
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    for (node, handle, pool) in [("n1", "a", "p"), ("n2", "b", "q")] {
        let o = assign(&c, node, handle, pool);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }
    let o = run(&c, &["ipam", "check"]);
    says(&o, "Check complete; found 0 problems.");
    for (kind, name) in [("node", "n1"), ("ippool", "q")] {
        let o = run(&c, &["delete", kind, name]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }

    let (o, report, _dir) = check_with_report(&c);
    let rp = report.to_str().expect("utf8 path");
    says_lines(
        &o,
        &[
            "Found 0 leaked addresses.",
            "Found 1 handle with no owner.",
            "  10.61.0.0 block 10.61.0.0/29 node n1 handle a: its node is deleted",
            "Found 2 blocks of deleted nodes or pools.",
            "  block 10.61.0.0/29 node n1: its node is deleted",
            "  block 10.62.0.0/29 node n2: its pool is deleted",
            "Check complete; found 3 problems.",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    assert_eq!(json["staleBlocks"][1]["pool"], "q");

    // The handle is released by hand; the blocks are the reconcile loop's.
    let o = run(&c, &["ipam", "release", "--from-report", rp]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    says(
        &o,
        "2 blocks of deleted nodes or pools: the controller's reconcile loop releases them",
    );
    says(&o, "Released 1 problem; skipped 0.");
    let o = run(&c, &["ipam", "check"]);
    says(&o, "Found 0 handles with no owner.");
}

/// Every key of a JSON value, at any depth (inside lists too), in lowercase.
fn keys_of(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                out.insert(k.to_ascii_lowercase());
                keys_of(v, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| keys_of(v, out)),
        _ => {}
    }
}

/// The corpus sets every field docs/api.md lists for Calico's kinds (tern's own
/// additions aside), so a field the model drops or the validator refuses shows up in
/// the corpus test above.
#[test]
fn the_corpus_sets_every_field_of_calicos_kinds() {
    // Fields docs/api.md lists that Calico's kinds do not have.
    let terns_own: BTreeSet<&str> = [
        "BGPPeer.bfdProfile",
        "BGPPeer.connectRetryTime",
        "BGPPeer.holdTime",
        "BGPPeer.longLivedStaleTime",
        "BGPConfiguration.nodeMeshBFDProfile",
        "BGPConfiguration.nodeMeshConnectRetryTime",
        "BGPConfiguration.nodeMeshHoldTime",
        "BGPConfiguration.nodeMeshKeepaliveTime",
        "BGPConfiguration.nodeMeshLongLivedStaleTime",
        "BGPConfiguration.routeReflectorClients",
        "BlockAffinity.pool",
    ]
    .into();
    let mut set: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for file in manifests("valid") {
        let text = std::fs::read_to_string(&file).expect("read manifest");
        for r in tern::manifest::parse_documents(&text).expect("the corpus parses") {
            let v = r.to_value();
            keys_of(
                v.get("spec").unwrap_or(&serde_json::Value::Null),
                set.entry(r.kind().as_str().to_string()).or_default(),
            );
        }
    }
    let docs = include_str!("../docs/api.md");
    let mut missing = Vec::new();
    for kind in [
        "IPPool",
        "IPReservation",
        "BGPPeer",
        "BGPConfiguration",
        "BGPFilter",
        "Node",
        "BlockAffinity",
        "FelixConfiguration",
    ] {
        let section = docs
            .split("\n## ")
            .find(|s| s.starts_with(&format!("{kind}\n")))
            .unwrap_or_else(|| panic!("docs/api.md has a section {kind}"));
        let corpus = set.get(kind).cloned().unwrap_or_default();
        let mut fields = 0;
        for row in section.lines().filter(|l| l.starts_with("| `")) {
            let first = row.split(" | ").next().unwrap_or_default();
            for name in first.split('`').skip(1).step_by(2) {
                fields += 1;
                let leaf = name.rsplit('.').next().unwrap_or(name);
                if !terns_own.contains(format!("{kind}.{leaf}").as_str())
                    && !corpus.contains(&leaf.to_ascii_lowercase())
                {
                    missing.push(format!("{kind}.{name}"));
                }
            }
        }
        assert!(fields > 0, "{kind}: no field rows in docs/api.md");
    }
    assert!(
        missing.is_empty(),
        "not set in tests/manifests/valid: {missing:?}"
    );
}
