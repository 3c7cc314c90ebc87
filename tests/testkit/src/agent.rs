//! How the tests and the benchmarks start a `tern-agent` process.

use std::ffi::OsString;
use std::path::Path;

/// A `tern-agent run` that serves the CNI plugin on its socket: NAT with nftables, no
/// BIRD, logging warnings only.
#[derive(Debug)]
pub struct CniAgent<'a> {
    pub node: &'a str,
    pub controllers: &'a str,
    pub ca: &'a Path,
    pub cert: &'a Path,
    pub key: &'a Path,
    /// The address the agent registers its Node with.
    pub ipv4_address: &'a str,
    pub state_dir: &'a Path,
    pub socket: &'a Path,
}

impl CniAgent<'_> {
    /// The arguments after the binary.
    pub fn args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = [
            "run",
            "--node-name",
            self.node,
            "--controllers",
            self.controllers,
            "--ipv4-address",
            self.ipv4_address,
            "--bird",
            "disabled",
            "--dataplane",
            "nftables",
            "--log-level",
            "warn",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        for (flag, path) in [
            ("--ca", self.ca),
            ("--cert", self.cert),
            ("--key", self.key),
            ("--state-dir", self.state_dir),
            ("--cni-socket", self.socket),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v
    }
}
