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

    // create on an existing object fails with calicoctl's wording.
    let o = tokio::task::block_in_place(|| ternctl(&c, &admin, &["create", "-f", f], None));
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Failed to create 'IPPool' resource: [resource already exists: IPPool(default-ipv4-ippool)]\n"
    );

    // A failure part-way: the first is applied, the second is invalid.
    let partial = "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: ok-one}\nspec: {cidr: 10.20.0.0/16}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: bad-one}\nspec: {cidr: 10.30.0.1/16}\n---\napiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: never}\nspec: {cidr: 10.40.0.0/16}\n";
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["apply", "-f", "-"], Some(partial)));
    assert_eq!(o.code, 1);
    assert_eq!(
        o.stderr,
        "Partial success: applied the first 1 out of 3 'IPPool' resources:\n\
         Hit error: spec.cidr: 10.30.0.1/16 is not a network address; did you mean 10.30.0.0/16?\n"
    );

    // Deletes by name and by file.
    let o =
        tokio::task::block_in_place(|| ternctl(&c, &admin, &["delete", "ippool", "ok-one"], None));
    assert_eq!(
        o.stdout, "Successfully deleted 1 'IPPool' resource(s)\n",
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
