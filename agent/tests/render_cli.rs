//! `tern-agent render`: what the agent would program, printed offline.

use std::io::Write as _;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_tern-agent");

const VIEW: &str = "\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pods}
spec: {cidr: 10.244.0.0/16, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: other}
spec: {cidr: 10.96.0.0/16}
---
apiVersion: projectcalico.org/v3
kind: Node
metadata: {name: n1}
spec: {bgp: {ipv4Address: 10.0.0.1/24}}
---
apiVersion: projectcalico.org/v3
kind: BlockAffinity
metadata: {name: n1-10-244-0-0-26}
spec: {node: n1, cidr: 10.244.0.0/26, state: confirmed}
";

fn render(args: &[&str], input: &str) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .arg("render")
        .args(["--input", "-"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let o = child.wait_with_output().expect("finishes");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn prints_the_nat_ruleset_and_the_bird_config() {
    let (code, out, err) = render(&["--node", "n1", "--what", "nat"], VIEW);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("table inet tern"), "{out}");
    assert!(
        out.contains("10.244.0.0/16") && out.contains("10.96.0.0/16"),
        "{out}"
    );
    assert!(out.contains("masquerade"), "{out}");
    let (code, out, err) = render(
        &["--node", "n1", "--what", "nat", "--dataplane", "iptables"],
        VIEW,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("*nat") && out.contains("TERN-NAT-OUTGOING") && out.contains("COMMIT"),
        "{out}"
    );
    let (code, out, err) = render(&["--node", "n1", "--what", "bird"], VIEW);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("router id 10.0.0.1;"), "{out}");
    assert!(out.contains("route 10.244.0.0/26 blackhole;"), "{out}");
    let (code, out, _) = render(
        &["--node", "n1", "--what", "bird", "--router-id", "hash"],
        VIEW,
    );
    assert_eq!(code, 0);
    assert!(!out.contains("router id 10.0.0.1;"), "hash router id");
}

#[test]
fn bad_input_is_a_precise_error() {
    let (code, _, err) = render(&["--node", "ghost", "--what", "bird"], VIEW);
    assert_eq!(code, 1);
    assert!(err.contains("\"ghost\""), "{err}");
    let bad =
        "apiVersion: tern.dev/v1\nkind: IPPool\nmetadata: {name: p}\nspec: {cidr: 10.0.0.0/33}\n";
    let (code, _, err) = render(
        &["--node", "n1", "--what", "nat"],
        &format!("{VIEW}---\n{bad}"),
    );
    assert_eq!(code, 1);
    assert!(err.contains("document 5: spec.cidr:"), "{err}");
}
