//! ternctl as a subprocess against a live controller (mTLS), checking calicoctl's
//! exact wording.

mod common;

use std::process::Command;

use common::{Cluster, ternctl};
use tern::pki::Role;

const POOLS: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata:
  name: default-ipv4-ippool
spec:
  cidr: 192.168.0.0/16
  ipipMode: Always
  natOutgoing: true
---
apiVersion: tern.dev/v1
kind: IPPool
metadata:
  name: no-nat
spec:
  cidr: 10.10.0.0/16
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calicoctl_wording_and_tables() {
    let c = Cluster::start().await;
    let admin = Role::Admin;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("pools.yaml");
    std::fs::write(&file, POOLS).expect("write");
    let f = file.to_str().expect("utf8 path");

    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["apply", "-f", f], None));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "Successfully applied 2 'IPPool' resource(s)\n");

    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &admin,
            &[
                "patch",
                "ippool",
                "default-ipv4-ippool",
                "--patch",
                r#"{"spec":{"natOutgoing": false}}"#,
            ],
            None,
        )
    });
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "Successfully patched 1 'IPPool' resource\n");

    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "ippools"], None));
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.stdout,
        "NAME                  CIDR             SELECTOR\n\
         default-ipv4-ippool   192.168.0.0/16   all()\n\
         no-nat                10.10.0.0/16     all()\n"
    );
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "pool", "-o", "wide"], None));
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME",
            "CIDR",
            "NAT",
            "IPIPMODE",
            "VXLANMODE",
            "DISABLED",
            "DISABLEBGPEXPORT",
            "SELECTOR"
        ]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "default-ipv4-ippool",
            "192.168.0.0/16",
            "false",
            "Always",
            "Never",
            "false",
            "false",
            "all()"
        ]
    );

    // -o yaml of one object round-trips through apply from stdin.
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &admin, &["get", "ippool", "no-nat", "-o", "yaml"], None)
    });
    assert_eq!(o.code, 0, "{}", o.stderr);
    let doc: serde_json::Value = tern::manifest::from_str(&o.stdout).expect("yaml");
    assert_eq!(doc["kind"], "IPPool");
    assert_eq!(doc["spec"]["blockSize"], 26);
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["apply", "-f", "-"], Some(&o.stdout)));
    assert_eq!(
        o.stdout, "Successfully applied 1 'IPPool' resource(s)\n",
        "{}",
        o.stderr
    );
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "ippool", "-o", "json"], None));
    let doc: serde_json::Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(doc["kind"], "IPPoolList");
    assert_eq!(doc["items"].as_array().map(Vec::len), Some(2));

    // create on existing objects fails with calicoctl's wording, for each of them.
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["create", "-f", f], None));
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Failed to create any 'IPPool' resources:\n\
         Hit error: resource already exists: IPPool(default-ipv4-ippool)\n\
         Hit error: resource already exists: IPPool(no-nat)\n"
    );
    let one = POOLS.split("---\n").nth(1).expect("two documents");
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["create", "-f", "-"], Some(one)));
    assert_eq!(
        o.stderr,
        "Failed to create 'IPPool' resource: [resource already exists: IPPool(no-nat)]\n"
    );

    // A failure part-way: every object gets its own outcome, as calicoctl reports it.
    let partial = "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: ok-one}\nspec: {cidr: 10.20.0.0/16}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: bad-one}\nspec: {cidr: 10.30.0.1/16}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: ok-two}\nspec: {cidr: 10.40.0.0/16}\n";
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["apply", "-f", "-"], Some(partial)));
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Partial success: applied 2 out of 3 'IPPool' resources:\n\
         Hit error: IPPool(bad-one): spec.cidr: 10.30.0.1/16 is not a network address; did you mean 10.30.0.0/16?\n"
    );

    // Deletes by name and by file.
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &admin, &["delete", "ippool", "ok-one", "ok-two"], None)
    });
    assert_eq!(
        o.stdout, "Successfully deleted 2 'IPPool' resource(s)\n",
        "{}",
        o.stderr
    );
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["delete", "-f", f], None));
    assert_eq!(
        o.stdout, "Successfully deleted 2 'IPPool' resource(s)\n",
        "{}",
        o.stderr
    );
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "ippool", "gone"], None));
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Failed to get resources: resource does not exist: IPPool(gone)\n"
    );

    // Other kinds' tables.
    let peers = "apiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.254, asNumber: 65000}\n---\napiVersion: tern.dev/v1\nkind: BGPPeer\nmetadata: {name: rack1}\nspec: {peerIP: 10.0.1.254, asNumber: 65001, nodeSelector: \"rack == 'r1'\"}\n";
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["create", "-f", "-"], Some(peers)));
    assert_eq!(
        o.stdout, "Successfully created 2 'BGPPeer' resource(s)\n",
        "{}",
        o.stderr
    );
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "bgppeers"], None));
    assert_eq!(
        o.stdout,
        "NAME    PEERIP       NODE           ASN\n\
         rack1   10.0.1.254   rack == 'r1'   65001\n\
         tor     10.0.0.254   (global)       65000\n"
    );
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["get", "bgpconfig"], None));
    assert_eq!(
        o.stdout,
        "NAME      LOGSEVERITY   MESHENABLED   ASNUMBER\ndefault   Info          true          64512\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_roles_through_ternctl() {
    let c = Cluster::start().await;
    let secret = "apiVersion: tern.dev/v1\nkind: Secret\nmetadata: {name: bgp}\nstringData: {password: s3cret-value}\n";
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &Role::Admin, &["apply", "-f", "-"], Some(secret))
    });
    assert_eq!(
        o.stdout, "Successfully applied 1 'Secret' resource(s)\n",
        "{}",
        o.stderr
    );
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Admin,
            &["get", "secret", "bgp", "-o", "yaml"],
            None,
        )
    });
    assert!(o.stdout.contains("password: <redacted>"), "{}", o.stdout);
    assert!(!o.stdout.contains("s3cret-value"));
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Admin,
            &["get", "secret", "bgp", "-o", "yaml", "--show-secrets"],
            None,
        )
    });
    // Kubernetes style: base64 in data.
    assert!(
        o.stdout.contains("password: czNjcmV0LXZhbHVl"),
        "{}",
        o.stdout
    );
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &Role::Viewer, &["get", "secret", "bgp"], None));
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("may not read Secrets"), "{}", o.stderr);
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &Role::Viewer, &["delete", "secret", "bgp"], None)
    });
    assert_eq!(o.code, 1);
    assert!(
        o.stderr
            .contains("viewer may not call /tern.v1.ResourceService/Delete"),
        "{}",
        o.stderr
    );
}

/// A Node as ternctl reads it; `bad` gives it an address that is not one.
fn node_doc(i: usize, bad: bool) -> String {
    let addr = if bad {
        format!("10.1.{i}.300/16")
    } else {
        format!("10.1.{}.{}/16", i / 250, 1 + i % 250)
    };
    format!(
        "apiVersion: projectcalico.org/v3\nkind: Node\nmetadata:\n  name: node-{i:04}\nspec:\n  bgp:\n    ipv4Address: {addr}\n"
    )
}

/// Many objects in one file, a few of them invalid: every valid one is stored, and
/// the report names each failure, with its reason, in input order (the requests are
/// pipelined, the report is not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_of_many_objects_reports_each_failure_in_order() {
    let c = Cluster::start().await;
    let n = 400;
    let bad = [3, 150, 151, 399];
    let docs: Vec<String> = (0..n).map(|i| node_doc(i, bad.contains(&i))).collect();
    let file = docs.join("---\n");
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &Role::Admin, &["apply", "-f", "-"], Some(&file))
    });
    assert_eq!(o.code, 1);
    assert_eq!(o.stdout, "");
    let mut want = format!(
        "Partial success: applied {} out of {n} 'Node' resources:\n",
        n - bad.len()
    );
    for i in bad {
        want += &format!(
            "Hit error: Node(node-{i:04}): spec.bgp.ipv4Address: \"10.1.{i}.300/16\" is not an \
             address in CIDR form (for example 10.0.0.2/24)\n"
        );
    }
    assert_eq!(o.stderr, want);
    // Exactly the valid ones are stored.
    let listed = c
        .admin()
        .await
        .list(tern::proto::ListRequest {
            kind: "node".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let names: std::collections::BTreeSet<String> = listed
        .items
        .iter()
        .filter_map(|r| r.metadata.as_ref().map(|m| m.name.clone()))
        .collect();
    let want: std::collections::BTreeSet<String> = (0..n)
        .filter(|i| !bad.contains(i))
        .map(|i| format!("node-{i:04}"))
        .collect();
    assert_eq!(names, want);

    // Deleted by file: the ones that were never stored fail as not found, in order.
    let o = tokio::task::block_in_place(|| {
        ternctl(&c, &Role::Admin, &["delete", "-f", "-"], Some(&file))
    });
    let mut want = format!(
        "Partial success: deleted {} out of {n} 'Node' resources:\n",
        n - bad.len()
    );
    for i in bad {
        want += &format!("Hit error: resource does not exist: Node(node-{i:04})\n");
    }
    assert_eq!(o.stderr, want);
    let o = tokio::task::block_in_place(|| {
        ternctl(
            &c,
            &Role::Admin,
            &["apply", "-f", "-"],
            Some(&docs[..3].join("---\n")),
        )
    });
    assert_eq!(
        o.stdout, "Successfully applied 3 'Node' resource(s)\n",
        "{}",
        o.stderr
    );
}

#[test]
fn completion_and_certs_tooling() {
    let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(["completion", "bash"])
        .output()
        .expect("runs");
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("_ternctl()"));

    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf8");
    let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args([
            "certs",
            "init",
            "--dir",
            d,
            "--san",
            "controller.example",
            "--san",
            "10.0.0.1",
        ])
        .output()
        .expect("runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "ca.pem",
        "ca-key.pem",
        "controller.pem",
        "controller-key.pem",
        "admin.pem",
        "admin-key.pem",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    for args in [vec!["node", "worker-1"], vec!["viewer"], vec!["admin"]] {
        let mut a = vec!["certs", "issue"];
        a.extend(args.iter().copied());
        a.extend(["--dir", d]);
        let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
            .args(&a)
            .output()
            .expect("runs");
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let cert = tern::pki::read_certs(&dir.path().join("node-worker-1.pem")).expect("cert");
    assert_eq!(
        tern::pki::Identity::from_der(&cert[0]),
        Ok(tern::pki::Identity::Node("worker-1".into()))
    );
    // Refuses to overwrite a CA.
    let o = Command::new(env!("CARGO_BIN_EXE_ternctl"))
        .args(["certs", "init", "--dir", d])
        .output()
        .expect("runs");
    assert!(!o.status.success());
}
