//! The kernel side of an attachment, with iproute2: the veth pair, addresses, routes
//! and the gateway scheme (Calico's): the container routes everything to 169.254.1.1,
//! which the host answers by proxy ARP on its veth; for IPv6 to the host veth's
//! link-local address `fe80::ecee:eeff:feee:eeee`. The host routes each address (/32,
//! /128) to the veth.
//!
//! Why `ip` and not netlink from this process: the container's side must be configured
//! inside its network namespace, which from Rust means `setns` on a thread (unsafe, or
//! a crate for it) and a netlink library; `ip -batch` does all of one side in one
//! process, reports errors in words an operator knows, and takes the namespace as a
//! path (`ip link add ... netns /run/netns/x`, `ip -n NAME`, `nsenter --net=PATH`). An
//! ADD costs two `ip` runs (host, then container), a DEL one; `tern-bench cni` measures
//! the total.
//!
//! Host-side sysctls are written directly under /proc/sys (they belong to the network
//! namespace of the writing process, the host's).

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use super::spec::{self, CniError, Expected, GATEWAY_V4, HOST_MAC, code};
use crate::exec::{Exec, ExecError};

/// What an ADD asks of the kernel.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Path,
    pub container_mac: [u8; 6],
    pub mtu: Option<u32>,
}

fn kernel(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::KERNEL, format!("cannot {what}"), e.to_string())
}

/// `ip -batch -` on the host.
fn ip_batch(lines: &[String]) -> Result<(), ExecError> {
    Exec::host()
        .run("ip", &["-batch", "-"], Some(&(lines.join("\n") + "\n")))
        .map(|_| ())
}

/// `ip ARGS` inside the namespace at `netns`: `ip -n NAME` for a named namespace
/// (/run/netns/NAME, where podman, containerd and CRI-O put theirs: one process),
/// `nsenter --net=PATH ip` for any other path.
fn ip_in(netns: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, ExecError> {
    let named = netns
        .parent()
        .is_some_and(|d| d == Path::new("/run/netns") || d == Path::new("/var/run/netns"));
    match netns.file_name().and_then(|n| n.to_str()) {
        Some(name) if named => {
            let mut full = vec!["-n", name];
            full.extend_from_slice(args);
            Exec::host().run("ip", &full, stdin).map(|o| o.stdout)
        }
        _ => {
            let ns = format!("--net={}", netns.display());
            let mut full = vec![ns.as_str(), "ip"];
            full.extend_from_slice(args);
            Exec::host().run("nsenter", &full, stdin).map(|o| o.stdout)
        }
    }
}

fn write_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    std::fs::write(path, value).map_err(|e| kernel(&format!("write {path}"), e))
}

/// Step 1 of ADD: the veth pair, the container end already in its namespace under its
/// final name. Fails with code 100 when either name exists (another attachment, or an
/// ADD without DEL): then nothing was made.
pub fn create_pair(p: &Plan<'_>) -> Result<(), CniError> {
    let mut cmd = format!(
        "link add {} address {} ",
        p.host_veth,
        spec::mac_string(&HOST_MAC)
    );
    if let Some(m) = p.mtu {
        cmd.push_str(&format!("mtu {m} "));
    }
    cmd.push_str(&format!(
        "type veth peer name {} address {} ",
        p.ifname,
        spec::mac_string(&p.container_mac)
    ));
    if let Some(m) = p.mtu {
        cmd.push_str(&format!("mtu {m} "));
    }
    cmd.push_str(&format!("netns {}", p.netns.display()));
    match ip_batch(&[cmd]) {
        Ok(()) => Ok(()),
        Err(ExecError::Failed { stderr, .. }) if stderr.contains("File exists") => {
            Err(CniError::new(
                code::ALREADY_EXISTS,
                format!("interface {} already exists", p.ifname),
                format!(
                    "the container already has an interface {:?}, or the host a {:?} \
                     (ADD twice without DEL?): {stderr}",
                    p.ifname, p.host_veth
                ),
            ))
        }
        Err(e) => Err(kernel("create the veth pair", e)),
    }
}

/// Step 2 of ADD: the host end (sysctls, up, a route per address).
pub fn configure_host(p: &Plan<'_>, addresses: &[IpAddr]) -> Result<(), CniError> {
    let v = p.host_veth;
    let has_v6 = addresses.iter().any(IpAddr::is_ipv6);
    // Proxy ARP answers the container's ARP for 169.254.1.1 with the veth's MAC; no
    // delay, so the first packet goes at once.
    write_sysctl(&format!("/proc/sys/net/ipv4/conf/{v}/proxy_arp"), "1")?;
    write_sysctl(&format!("/proc/sys/net/ipv4/neigh/{v}/proxy_delay"), "0")?;
    if has_v6 {
        // The gateway is the veth's link-local address: usable at once, without
        // duplicate address detection.
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{v}/disable_ipv6"), "0")?;
        write_sysctl(&format!("/proc/sys/net/ipv6/conf/{v}/accept_dad"), "0")?;
    }
    let mut lines = vec![format!("link set {v} up")];
    for a in addresses {
        let len = if a.is_ipv4() { 32 } else { 128 };
        lines.push(format!("route replace {a}/{len} dev {v} scope link"));
    }
    ip_batch(&lines).map_err(|e| kernel(&format!("configure {v}"), e))
}

/// Step 3 of ADD: the container end (addresses, up, gateway and default routes).
pub fn configure_container(p: &Plan<'_>, addresses: &[IpAddr]) -> Result<(), CniError> {
    let i = p.ifname;
    let mut lines = Vec::new();
    for a in addresses {
        match a {
            IpAddr::V4(_) => lines.push(format!("addr add {a}/32 dev {i}")),
            IpAddr::V6(_) => lines.push(format!("addr add {a}/128 dev {i} nodad")),
        }
    }
    lines.push(format!("link set {i} up"));
    if addresses.iter().any(IpAddr::is_ipv4) {
        lines.push(format!("route add {GATEWAY_V4} dev {i} scope link"));
        lines.push(format!("route add default via {GATEWAY_V4} dev {i}"));
    }
    if addresses.iter().any(IpAddr::is_ipv6) {
        lines.push(format!("route add ::/0 via {} dev {i}", spec::gateway_v6()));
    }
    ip_in(p.netns, &["-batch", "-"], Some(&(lines.join("\n") + "\n")))
        .map(|_| ())
        .map_err(|e| kernel(&format!("configure {i} in {}", p.netns.display()), e))
}

/// Remove the host end (and with it the container end and the host routes). A veth that
/// is not there is not an error: DEL is idempotent.
pub fn delete_host_veth(name: &str) -> Result<bool, CniError> {
    match Exec::host().run("ip", &["link", "del", name], None) {
        Ok(_) => Ok(true),
        Err(ExecError::Failed { stderr, .. })
            if stderr.contains("Cannot find device") || stderr.contains("does not exist") =>
        {
            Ok(false)
        }
        Err(e) => Err(kernel(&format!("delete {name}"), e)),
    }
}

// ---------------------------------------------------------------- reading back (CHECK)

#[derive(Debug, Deserialize)]
struct IpLink {
    ifname: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    operstate: String,
    #[serde(default)]
    flags: Vec<String>,
    #[serde(default)]
    addr_info: Vec<IpAddrInfo>,
}

#[derive(Debug, Deserialize)]
struct IpAddrInfo {
    local: IpAddr,
    prefixlen: u8,
}

#[derive(Debug, Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    dev: Option<String>,
}

fn parse<T: for<'de> Deserialize<'de>>(what: &str, text: &str) -> Result<T, CniError> {
    serde_json::from_str(text).map_err(|e| kernel(&format!("read {what}"), e))
}

fn drift(what: String) -> CniError {
    CniError::new(code::DRIFT, "the container's network has drifted", what)
}

/// CHECK: the kernel state of an attachment against its expected state. Returns the
/// first difference found (code 101), or code 3 when the namespace is gone.
pub fn check(netns: &Path, want: &Expected) -> Result<(), CniError> {
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("{} is gone", netns.display()),
        ));
    }
    // Host side: the veth is up and routes each address.
    let host = Exec::host()
        .run("ip", &["-j", "link", "show", "dev", &want.host_veth], None)
        .map_err(|_| drift(format!("host interface {} is missing", want.host_veth)))?;
    let links: Vec<IpLink> = parse("the host veth", &host.stdout)?;
    if !links.iter().any(|l| l.flags.iter().any(|f| f == "UP")) {
        return Err(drift(format!("host interface {} is down", want.host_veth)));
    }
    for a in &want.addresses {
        let fam = if a.is_ipv4() { "-4" } else { "-6" };
        let out = Exec::host()
            .run(
                "ip",
                &["-j", fam, "route", "show", "exact", &a.to_string()],
                None,
            )
            .map_err(|e| kernel("read host routes", e))?;
        let routes: Vec<IpRoute> = parse("host routes", &out.stdout)?;
        if !routes
            .iter()
            .any(|r| r.dev.as_deref() == Some(&want.host_veth))
        {
            return Err(drift(format!(
                "the host has no route to {a} through {}",
                want.host_veth
            )));
        }
    }
    // Container side: the interface, its MAC, addresses and default routes.
    let out = ip_in(netns, &["-j", "addr", "show", "dev", &want.ifname], None).map_err(|_| {
        drift(format!(
            "interface {} is missing in {}",
            want.ifname,
            netns.display()
        ))
    })?;
    let links: Vec<IpLink> = parse("the container interface", &out)?;
    let link = links
        .iter()
        .find(|l| l.ifname == want.ifname)
        .ok_or_else(|| drift(format!("interface {} is missing", want.ifname)))?;
    if !want.container_mac.is_empty() && !link.address.eq_ignore_ascii_case(&want.container_mac) {
        return Err(drift(format!(
            "interface {} has MAC {}, the result says {}",
            want.ifname, link.address, want.container_mac
        )));
    }
    if link.operstate == "DOWN" || !link.flags.iter().any(|f| f == "UP") {
        return Err(drift(format!("interface {} is down", want.ifname)));
    }
    for a in &want.addresses {
        let len = if a.is_ipv4() { 32 } else { 128 };
        if !link
            .addr_info
            .iter()
            .any(|i| i.local == *a && i.prefixlen == len)
        {
            return Err(drift(format!(
                "interface {} lacks its address {a}/{len}",
                want.ifname
            )));
        }
    }
    let families = [
        (true, "-4", IpAddr::V4(GATEWAY_V4)),
        (false, "-6", IpAddr::V6(spec::gateway_v6())),
    ];
    for (v4, fam, gw) in families {
        if !want.addresses.iter().any(|a| a.is_ipv4() == v4) {
            continue;
        }
        let out = ip_in(netns, &["-j", fam, "route", "show", "default"], None)
            .map_err(|e| kernel("read the container's routes", e))?;
        let routes: Vec<IpRoute> = parse("container routes", &out)?;
        if !routes
            .iter()
            .any(|r| r.dst == "default" && r.gateway == Some(gw))
        {
            return Err(drift(format!(
                "the container has no default route via {gw} ({fam})"
            )));
        }
    }
    Ok(())
}
