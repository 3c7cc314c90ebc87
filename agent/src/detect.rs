//! Detecting the host's addresses for node registration (like Calico's autodetection):
//! the source address of the route towards the outside, in CIDR form with the prefix
//! length of the interface it belongs to.

use std::net::IpAddr;

use serde::Deserialize;
use tern::model::{Family, IfAddr};

use crate::exec::Exec;

#[derive(Debug, Deserialize)]
struct Route {
    #[serde(default)]
    prefsrc: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    addr_info: Vec<AddrInfo>,
}

#[derive(Debug, Deserialize)]
struct AddrInfo {
    local: String,
    prefixlen: u8,
    #[serde(default)]
    scope: String,
}

/// Where probes for the outside point (any public address works: nothing is sent).
fn probe(family: Family) -> &'static str {
    match family {
        Family::V4 => "192.0.2.1",
        Family::V6 => "2001:db8::1",
    }
}

fn flag(family: Family) -> &'static str {
    match family {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// The host's address of `family`, or None when it has none usable.
pub fn detect(exec: &Exec, family: Family) -> Option<IfAddr> {
    let links: Vec<Link> = exec
        .run("ip", &["-j", flag(family), "addr", "show"], None)
        .ok()
        .and_then(|o| serde_json::from_str(&o.stdout).ok())?;
    let with_prefix = |ip: IpAddr| -> Option<IfAddr> {
        links
            .iter()
            .flat_map(|l| l.addr_info.iter())
            .find(|a| a.local.parse::<IpAddr>().ok() == Some(ip))
            .and_then(|a| format!("{}/{}", a.local, a.prefixlen).parse().ok())
    };
    // The source address the kernel would use towards the outside.
    if let Some(src) = exec
        .run(
            "ip",
            &["-j", flag(family), "route", "get", probe(family)],
            None,
        )
        .ok()
        .and_then(|o| serde_json::from_str::<Vec<Route>>(&o.stdout).ok())
        .and_then(|r| r.into_iter().next())
        .and_then(|r| r.prefsrc)
        .and_then(|s| s.parse::<IpAddr>().ok())
        && let Some(a) = with_prefix(src)
    {
        return Some(a);
    }
    // Else the first global address of an ordinary interface.
    links
        .iter()
        .filter(|l| {
            l.ifname != "lo" && !l.ifname.starts_with("cali") && !l.ifname.starts_with("tern")
        })
        .flat_map(|l| l.addr_info.iter())
        .find(|a| a.scope == "global")
        .and_then(|a| format!("{}/{}", a.local, a.prefixlen).parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iproute2_json() {
        let links: Vec<Link> = serde_json::from_str(
            r#"[{"ifindex":1,"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
                {"ifindex":2,"ifname":"eth0","addr_info":[{"family":"inet","local":"10.0.0.2","prefixlen":24,"scope":"global"}]}]"#,
        )
        .expect("iproute2 json");
        assert_eq!(links[1].addr_info[0].prefixlen, 24);
        let r: Vec<Route> =
            serde_json::from_str(r#"[{"dst":"192.0.2.1","gateway":"10.0.0.1","dev":"eth0","prefsrc":"10.0.0.2","flags":[],"uid":0,"cache":[]}]"#)
                .expect("route json");
        assert_eq!(r[0].prefsrc.as_deref(), Some("10.0.0.2"));
    }
}
