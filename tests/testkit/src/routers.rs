//! The routers tests and benchmarks peer with, run for real inside a namespace: BIRD,
//! FRR (zebra, bfdd, bgpd) and GoBGP. Their files live in a directory of the caller's
//! (never the machine's /etc); the namespace's drop ends their processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// A BIRD started by the test in `ns` (a router, or a bare client), in the foreground
/// so that the namespace owns it; its control socket.
pub fn start_bird(ns: &Netns, dir: &Path, name: &str, config: &str) -> anyhow::Result<PathBuf> {
    let conf = dir.join(format!("{name}.conf"));
    let sock = dir.join(format!("{name}.ctl"));
    std::fs::write(&conf, config)?;
    Command::new("ip")
        .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
        .arg(&conf)
        .arg("-s")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting BIRD {name}"))?;
    wait_for_file(&sock, &format!("BIRD {name}"))?;
    Ok(sock)
}

fn wait_for_file(path: &Path, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("{what} did not start ({} missing)", path.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `birdc -s SOCKET args`: its output.
pub fn birdc(sock: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("birdc")
        .arg("-s")
        .arg(sock)
        .args(args)
        .output()
        .context("running birdc")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// FRR in a namespace: zebra (routes into the kernel), bfdd and bgpd, with the files,
/// sockets and logs in a directory of the test's, not in the machine's /etc/frr.
#[derive(Debug)]
pub struct Frr {
    dir: PathBuf,
}

impl Frr {
    /// Start the daemons with `config` (frr.conf syntax) and wait for their vty.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Frr> {
        let dir = dir.join("frr");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("frr.conf"), config)?;
        // The daemons drop privileges to FRR's user, which must own their files.
        let status = Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(&dir)
            .status()
            .context("chown (is FRR installed? Debian package frr)")?;
        if !status.success() {
            bail!("chown frr:frr failed (is FRR installed? Debian package frr)");
        }
        let d = dir.display().to_string();
        for daemon in ["zebra", "bfdd", "bgpd"] {
            let mut args = vec![
                "netns".to_string(),
                "exec".into(),
                ns.name().into(),
                format!("/usr/lib/frr/{daemon}"),
                "-d".into(),
                "-f".into(),
                format!("{d}/frr.conf"),
                "-i".into(),
                format!("{d}/{daemon}.pid"),
                "-z".into(),
                format!("{d}/zserv.api"),
                "--vty_socket".into(),
                d.clone(),
                "-A".into(),
                "127.0.0.1".into(),
                "--log".into(),
                format!("file:{d}/{daemon}.log"),
            ];
            if daemon == "bfdd" {
                args.extend(["--bfdctl".into(), format!("{d}/bfdd.sock")]);
            }
            let out = Command::new("ip")
                .args(&args)
                .output()
                .with_context(|| format!("starting FRR's {daemon}"))?;
            if !out.status.success() {
                bail!(
                    "FRR's {daemon} did not start: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            wait_for_file(
                &dir.join(format!("{daemon}.vty")),
                &format!("FRR's {daemon}"),
            )?;
        }
        Ok(Frr { dir })
    }

    /// `vtysh -c` commands; their output.
    pub fn vtysh(&self, commands: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new("vtysh");
        cmd.arg("--vty_socket").arg(&self.dir);
        for c in commands {
            cmd.args(["-c", c]);
        }
        let out = cmd.output().context("running vtysh")?;
        if !out.status.success() {
            bail!(
                "vtysh {commands:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// bgpd's view of the neighbor `addr` (`show bgp neighbors ADDR json`): its
    /// object, with `bgpState`, `neighborCapabilities`, `gracefulRestartInfo`, ...
    pub fn neighbor(&self, addr: &str) -> anyhow::Result<serde_json::Value> {
        let out = self.vtysh(&[&format!("show bgp neighbors {addr} json")])?;
        let mut v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("neighbor {addr}: {out}"))?;
        match v.get_mut(addr) {
            Some(n) => Ok(n.take()),
            None => bail!("bgpd has no neighbor {addr}: {out}"),
        }
    }

    /// The paths bgpd holds for `prefix` (`show bgp ipv4|ipv6 unicast PREFIX json`);
    /// empty when it has none. Each has `stale`, `bestpath`, `community`, `peer`, ...
    pub fn bgp_paths(&self, prefix: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let afi = if prefix.contains(':') { "ipv6" } else { "ipv4" };
        let out = self.vtysh(&[&format!("show bgp {afi} unicast {prefix} json")])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).with_context(|| format!("paths of {prefix}: {out}"))?;
        Ok(v["paths"].as_array().cloned().unwrap_or_default())
    }

    /// BFD peers by address: status (`up`, `down`, `init`).
    pub fn bfd_peers(&self) -> anyhow::Result<Vec<(String, String)>> {
        let v: serde_json::Value = serde_json::from_str(&self.vtysh(&["show bfd peers json"])?)?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .map(|p| {
                        (
                            p["peer"].as_str().unwrap_or_default().to_string(),
                            p["status"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// GoBGP (gobgpd) in a namespace, its gRPC API on the namespace's loopback.
#[derive(Debug)]
pub struct GoBgp {
    ns: String,
}

impl GoBgp {
    pub fn start(ns: &Netns, dir: &Path, toml: &str) -> anyhow::Result<GoBgp> {
        let conf = dir.join("gobgpd.toml");
        std::fs::write(&conf, toml)?;
        let log = std::fs::File::create(dir.join("gobgpd.log"))?;
        Command::new("ip")
            .args(["netns", "exec", ns.name(), "gobgpd", "-t", "toml", "-f"])
            .arg(&conf)
            .args(["--api-hosts", "127.0.0.1:50051", "--log-plain"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting gobgpd (Debian package gobgpd)")?;
        let g = GoBgp {
            ns: ns.name().to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while g.cli(&["global"]).is_err() {
            if Instant::now() > deadline {
                bail!("gobgpd did not answer on its API");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(g)
    }

    /// `gobgp ARGS` against this daemon; its output.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "gobgp",
                "-u",
                "127.0.0.1",
                "-p",
                "50051",
            ])
            .args(args)
            .output()
            .context("running gobgp")?;
        if !out.status.success() {
            bail!(
                "gobgp {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Prefixes in its RIB for `-a ipv4` or `-a ipv6`.
    pub fn rib(&self, family: &str) -> anyhow::Result<Vec<String>> {
        let out = self.cli(&["global", "rib", "-a", family, "-j"])?;
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        Ok(v.as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }
}
