//! The README's Python client (docs/examples/ternclient.py) against a live controller:
//! any language's gRPC client can script tern.

mod common;

use std::process::Command;

use common::{Cluster, pool};
use tern::pki::Role;
use tern::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_lists_and_patches_pools() {
    let c = Cluster::start().await;
    c.admin()
        .await
        .create(proto::CreateRequest {
            resource: Some(pool("default-ipv4-ippool", "192.168.0.0/16")),
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
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = tokio::task::block_in_place(|| run(&[]));
    assert_eq!(
        out,
        "default-ipv4-ippool\t192.168.0.0/16\tnatOutgoing=false\n"
    );
    let out = tokio::task::block_in_place(|| run(&["--nat", "on", "default-ipv4-ippool"]));
    assert_eq!(
        out,
        "Successfully patched 1 'IPPool' resource\ndefault-ipv4-ippool\t192.168.0.0/16\tnatOutgoing=true\n"
    );
}
