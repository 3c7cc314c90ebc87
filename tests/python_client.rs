//! The README's Python client (docs/examples/ternclient.py) against a live controller:
//! any language's gRPC client can script tern.

mod common;

use std::process::Command;

use common::Cluster;
use tern::pki::Role;
use tern::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_lists_and_patches_pools() {
    let c = Cluster::start().await;
    c.admin()
        .await
        .create(proto::CreateRequest {
            resource: Some(common::res(
                "apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: default-ipv4-ippool}\nspec: {cidr: 192.168.0.0/16, ipipMode: Always}\n",
            )),
        })
        .await
        .expect("pool");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/examples/ternclient.py");
    let run = |extra: &[&str]| {
        let o = Command::new("/usr/bin/python3")
            .arg(script)
            .args(extra)
            .envs(c.ternctl_env(&Role::Admin))
            .output()
            .expect("python3 runs (the test command installs python3-grpcio python3-grpc-tools)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (out, _) = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(
        out,
        "default-ipv4-ippool\t192.168.0.0/16\tnatOutgoing=false\n"
    );
    let (out, err) = tokio::task::block_in_place(|| run(&["--nat", "on", "default-ipv4-ippool"]));
    assert_eq!(
        out,
        "Successfully patched 1 'IPPool' resource\ndefault-ipv4-ippool\t192.168.0.0/16\tnatOutgoing=true\n"
    );
    // The write's response carries the stored-only field to any gRPC client.
    assert_eq!(
        err,
        "Warning: spec.ipipMode: stored; tern builds no IPIP tunnels\n"
    );
}
