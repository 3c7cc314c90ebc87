//! The kernel side of an attachment: the veth pair, addresses, routes and the gateway
//! scheme (Calico's): the container routes everything to 169.254.1.1, which the host
//! answers by proxy ARP on its veth; for IPv6 to the host veth's link-local address
//! `fe80::ecee:eeff:feee:eeee`. The host routes each address (/32, /128) to the veth.
//!
//! ADD and DEL speak rtnetlink from this process ([`crate::netlink`]): a burst of
//! containers on a node would otherwise start three `ip` processes each, which costs
//! more than everything else an ADD does. The veth is created with its peer already
//! in the container's namespace, under its final name; the container's side is then
//! configured through a netlink socket opened inside that namespace. CHECK, which is
//! rare, reads the state back with `ip -j` (JSON).
//!
//! Host-side sysctls are written under /proc/sys, which shows the network namespace
//! of the thread that opens the file: the host's, or, for an agent given `--netns`,
//! that namespace's (entered by a short-lived thread, as for the netlink socket).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use super::spec::{self, CniError, Expected, GATEWAY_V4, HOST_MAC, code};
use crate::exec::Exec;
use crate::netlink::{Netlink, Route, Veth};

/// What an ADD asks of the kernel.
#[derive(Debug, Clone)]
pub struct Plan<'a> {
    /// Where the host side is (the host, or the agent's --netns).
    pub host: &'a Exec,
    pub host_veth: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Path,
    pub container_mac: [u8; 6],
    pub mtu: Option<u32>,
}

fn kernel(what: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(code::KERNEL, format!("cannot {what}"), e.to_string())
}

/// Run `f` in the host's network namespace: here, or on a thread that enters the
/// agent's `--netns` first.
fn on_host<T: Send>(host: &Exec, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(path) = host.netns_path() else {
        return f();
    };
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
    })
}

/// `ip ARGS` inside the namespace at `netns` (CHECK): `ip -n NAME` for a named
/// namespace (/run/netns/NAME, where podman, containerd and CRI-O put theirs: one
/// process), `nsenter --net=PATH ip` for any other path.
fn ip_in(netns: &Path, args: &[&str]) -> Result<String, crate::exec::ExecError> {
    let named = netns
        .parent()
        .is_some_and(|d| d == Path::new("/run/netns") || d == Path::new("/var/run/netns"));
    match netns.file_name().and_then(|n| n.to_str()) {
        Some(name) if named => {
            let mut full = vec!["-n", name];
            full.extend_from_slice(args);
            Exec::host().run("ip", &full, None).map(|o| o.stdout)
        }
        _ => {
            let ns = format!("--net={}", netns.display());
            let mut full = vec![ns.as_str(), "ip"];
            full.extend_from_slice(args);
            Exec::host().run("nsenter", &full, None).map(|o| o.stdout)
        }
    }
}

/// Step 1 of ADD: the veth pair (down), the container end already in its
/// namespace under its final name. Fails with code 100 when either name exists
/// (another attachment, or an ADD without DEL): then nothing was made.
pub fn create_pair(p: &Plan<'_>) -> Result<(), CniError> {
    let peer_netns = File::open(p.netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace cannot be opened",
            format!("{}: {e}", p.netns.display()),
        )
    })?;
    let veth = Veth {
        name: p.host_veth,
        mac: HOST_MAC,
        peer_name: p.ifname,
        peer_mac: p.container_mac,
        peer_netns: &peer_netns,
        mtu: p.mtu,
        // Up once its sysctls are set (IPv6: no duplicate address detection on the
        // gateway address).
        up: false,
    };
    match on_host(p.host, || Netlink::open()?.add_veth(&veth)) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EEXIST) => Err(CniError::new(
            code::ALREADY_EXISTS,
            format!("interface {} already exists", p.ifname),
            format!(
                "the container already has an interface {:?}, or the host a {:?} \
                 (ADD twice without DEL?): {e}",
                p.ifname, p.host_veth
            ),
        )),
        Err(e) => Err(kernel("create the veth pair", e)),
    }
}

/// Step 2 of ADD: the host end (sysctls, up, a route per address).
pub fn configure_host(p: &Plan<'_>, addresses: &[IpAddr]) -> Result<(), CniError> {
    let v = p.host_veth;
    let has_v6 = addresses.iter().any(IpAddr::is_ipv6);
    // Proxy ARP answers the container's ARP for 169.254.1.1 with the veth's MAC; no
    // delay, so the first packet goes at once.
    let mut settings = vec![
        (format!("net/ipv4/conf/{v}/proxy_arp"), "1"),
        (format!("net/ipv4/neigh/{v}/proxy_delay"), "0"),
    ];
    if has_v6 {
        // The gateway is the veth's link-local address: usable at once, without
        // duplicate address detection.
        settings.push((format!("net/ipv6/conf/{v}/disable_ipv6"), "0"));
        settings.push((format!("net/ipv6/conf/{v}/accept_dad"), "0"));
    }
    on_host(p.host, || {
        for (key, value) in &settings {
            let path = format!("/proc/sys/{key}");
            std::fs::write(&path, value)
                .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}")))?;
        }
        let mut nl = Netlink::open()?;
        let index = nl.index(v)?;
        nl.set_up(index)?;
        for a in addresses {
            let len = if a.is_ipv4() { 32 } else { 128 };
            nl.add_route(&Route {
                dst: Some((*a, len)),
                gateway: None,
                oif: index,
                replace: true,
            })?;
        }
        Ok(())
    })
    .map_err(|e| kernel(&format!("configure {v}"), e))
}

/// Step 3 of ADD: the container end (addresses, up, gateway and default routes).
pub fn configure_container(p: &Plan<'_>, addresses: &[IpAddr]) -> Result<(), CniError> {
    let i = p.ifname;
    let configure = || -> io::Result<()> {
        let mut nl = Netlink::open_in(p.netns)?;
        let index = nl.index(i)?;
        for a in addresses {
            let len = if a.is_ipv4() { 32 } else { 128 };
            nl.add_address(index, *a, len)?;
        }
        nl.set_up(index)?;
        if addresses.iter().any(IpAddr::is_ipv4) {
            let gw = IpAddr::V4(GATEWAY_V4);
            nl.add_route(&Route {
                dst: Some((gw, 32)),
                gateway: None,
                oif: index,
                replace: false,
            })?;
            nl.add_route(&Route {
                dst: None,
                gateway: Some(gw),
                oif: index,
                replace: false,
            })?;
        }
        if addresses.iter().any(IpAddr::is_ipv6) {
            nl.add_route(&Route {
                dst: Some((IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0)),
                gateway: Some(IpAddr::V6(spec::gateway_v6())),
                oif: index,
                replace: false,
            })?;
        }
        Ok(())
    };
    configure().map_err(|e| kernel(&format!("configure {i} in {}", p.netns.display()), e))
}

/// Remove the host end (and with it the container end and the host routes). A veth that
/// is not there is not an error: DEL is idempotent.
pub fn delete_host_veth(host: &Exec, name: &str) -> Result<bool, CniError> {
    on_host(host, || Netlink::open()?.delete_link(name))
        .map_err(|e| kernel(&format!("delete {name}"), e))
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
pub fn check(host: &Exec, netns: &Path, want: &Expected) -> Result<(), CniError> {
    if !netns.exists() {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace does not exist",
            format!("{} is gone", netns.display()),
        ));
    }
    // Host side: the veth is up and routes each address.
    let links = host
        .run("ip", &["-j", "link", "show", "dev", &want.host_veth], None)
        .map_err(|_| drift(format!("host interface {} is missing", want.host_veth)))?;
    let links: Vec<IpLink> = parse("the host veth", &links.stdout)?;
    if !links.iter().any(|l| l.flags.iter().any(|f| f == "UP")) {
        return Err(drift(format!("host interface {} is down", want.host_veth)));
    }
    for a in &want.addresses {
        let fam = if a.is_ipv4() { "-4" } else { "-6" };
        let out = host
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
    let out = ip_in(netns, &["-j", "addr", "show", "dev", &want.ifname]).map_err(|_| {
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
        let out = ip_in(netns, &["-j", fam, "route", "show", "default"])
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
