//! Kernel routes BIRD leaves at an old metric, against real BIRD 2 and real kernel
//! routes in a throwaway network namespace: a changed `krt_metric` (a live
//! `configure`, then a restart with another metric over the routes `persist` kept)
//! leaves every prefix at two metrics, IPv4 and IPv6; the sweep removes the stale ones
//! and BIRD's next scans keep the result.
//!
//! The kernel protocols are configured as tern renders them (`persist`, `scan time 2`,
//! `merge paths on`, `metric 0`, the priority as `krt_metric` in the export filter);
//! the routes come from static protocols.
//!
//! The sweep's own view of the kernel (a netlink route dump and an exact delete) is
//! checked against `ip`'s on routes the test writes: several prefixes at two metrics,
//! multipath routes, routes of other protocols and another table, both families.
//!
//! The kernel's state is always read back with `ip -j route show`, independently of
//! the netlink code under test.
//!
//! Needs root and BIRD 2 (`bird`, `birdc`): fails loudly without them, never skips.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;
use tern_agent::bird::stale_routes::{self, Family, KernelRoute, sweep, sweep_family};
use tern_agent::exec::Exec;
use tern_agent::netlink::Netlink;
use tern_testkit::netns::Netns;
use tern_testkit::routers::{birdc, start_bird};

const V4: [&str; 2] = ["10.9.0.0/24", "10.9.1.0/24"];
const V6: &str = "fd00:9::/64";

fn config(metric: u32) -> String {
    let kernel = |fam: &str| {
        format!(
            "protocol kernel kernel_{fam} {{\n  ip{fam} {{ import all; export filter tern_kernel; }};\n  \
             learn;\n  persist;\n  scan time 2;\n  graceful restart;\n  merge paths on;\n  metric 0;\n}}\n"
        )
    };
    format!(
        "router id 10.1.0.1;\nprotocol device {{ scan time 2; }}\n\
         protocol static s4 {{ ipv4; route {} via 10.1.0.2; route {} via 10.1.0.2; }}\n\
         protocol static s6 {{ ipv6; route {V6} via fd00:1::2; }}\n\
         filter tern_kernel {{ krt_metric = {metric}; accept; }}\n{}{}",
        V4[0],
        V4[1],
        kernel("v4"),
        kernel("v6"),
    )
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    metric: u32,
}

/// The routes `ip -j FAMILY route show ARGS` prints in the namespace, as (destination
/// as `ip` prints it, metric); one per route, a multipath route is one.
fn ip_routes(ns: &Netns, family: &str, args: &[&str]) -> Result<Vec<(String, u32)>> {
    let mut full = vec!["-j", family, "route", "show"];
    full.extend_from_slice(args);
    let json = ns.ip(&full)?;
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let routes: Vec<IpRoute> = serde_json::from_str(text).context("ip -j route show")?;
    Ok(routes.into_iter().map(|r| (r.dst, r.metric)).collect())
}

/// Every `proto bird` destination of the namespace with its metrics, both families.
fn bird_routes(ns: &Netns) -> Result<BTreeMap<String, Vec<u32>>> {
    let mut all: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for fam in ["-4", "-6"] {
        for (dst, metric) in ip_routes(ns, fam, &["proto", "bird"])? {
            let m = all.entry(dst).or_default();
            m.push(metric);
            m.sort_unstable();
        }
    }
    Ok(all)
}

/// Every test prefix at exactly these metrics.
fn at(metrics: &[u32]) -> BTreeMap<String, Vec<u32>> {
    V4.iter()
        .chain([&V6])
        .map(|d| (d.to_string(), metrics.to_vec()))
        .collect()
}

fn wait_for(ns: &Netns, want: &BTreeMap<String, Vec<u32>>, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = bird_routes(ns)?;
        if &now == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what}: want {want:?}, the kernel has {now:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sweep until the kernel holds `want` (BIRD may still be writing some routes).
fn sweep_until(ns: &Netns, sock: &Path, want: &BTreeMap<String, Vec<u32>>) -> Result<usize> {
    let exec = Exec::in_netns(ns.name());
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut removed = 0;
    loop {
        removed += sweep(&exec, sock, Duration::from_secs(5))?;
        let now = bird_routes(ns)?;
        if &now == want {
            return Ok(removed);
        }
        if Instant::now() > deadline {
            bail!("after sweeping: want {want:?}, the kernel has {now:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The result holds across BIRD's next kernel scans (`scan time 2`): BIRD neither puts
/// a stale route back nor loses the one it wants.
fn stays(ns: &Netns, want: &BTreeMap<String, Vec<u32>>) -> Result<()> {
    std::thread::sleep(Duration::from_millis(4500));
    let now = bird_routes(ns)?;
    ensure!(
        &now == want,
        "two BIRD scans later: want {want:?}, the kernel has {now:?}"
    );
    Ok(())
}

#[test]
fn routes_left_at_an_old_metric_are_removed() -> Result<()> {
    let ns = Netns::new("metric")?;
    let dir = tempfile::tempdir()?;
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
    for dev in ["d0", "d1"] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "d0"])?;
    ns.ip(&["addr", "add", "fd00:1::1/64", "dev", "d0", "nodad"])?;
    let exec = Exec::in_netns(ns.name());

    let sock = start_bird(&ns, dir.path(), "bird", &config(1024))?;
    wait_for(&ns, &at(&[1024]), "BIRD's first routes")?;
    ensure!(
        sweep(&exec, &sock, Duration::from_secs(5))? == 0,
        "nothing to remove while every prefix has one route"
    );

    // A live change: BIRD adds the routes at 1500 beside the ones at 1024.
    std::fs::write(dir.path().join("bird.conf"), config(1500))?;
    let reply = birdc(&sock, &["configure"])?;
    ensure!(reply.contains("Reconfigured"), "birdc configure: {reply}");
    wait_for(
        &ns,
        &at(&[1024, 1500]),
        "BIRD leaves the old routes beside the new",
    )?;
    let removed = sweep_until(&ns, &sock, &at(&[1500]))?;
    ensure!(removed == 3, "removed {removed} routes, want 3");
    stays(&ns, &at(&[1500]))?;

    // A restart with a lower metric: the persisted routes at 1500 get twins at 800,
    // which win at once; the ones at 1500 are still stale.
    for pid in ns.pids() {
        let st = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status()?;
        ensure!(st.success(), "kill {pid}");
    }
    let gone = Instant::now() + Duration::from_secs(10);
    while !ns.pids().is_empty() {
        ensure!(Instant::now() < gone, "BIRD did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for(
        &ns,
        &at(&[1500]),
        "persist keeps the routes of a stopped BIRD",
    )?;
    ensure!(!sock.exists(), "BIRD removes its socket when it stops");
    let sock = start_bird(&ns, dir.path(), "bird", &config(800))?;
    wait_for(
        &ns,
        &at(&[800, 1500]),
        "the restarted BIRD adds routes at 800",
    )?;
    sweep_until(&ns, &sock, &at(&[800]))?;
    stays(&ns, &at(&[800]))?;
    Ok(())
}

/// The names the sweep asks BIRD about are the kernel protocols tern renders.
#[test]
fn the_kernel_protocols_are_named_as_rendered() -> Result<()> {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/golden/bird/mesh-dual-stack/expected.cfg");
    let text = std::fs::read_to_string(&golden).context("the dual-stack golden file")?;
    for fam in ["v4", "v6"] {
        ensure!(
            text.contains(&format!("protocol kernel kernel_{fam} {{")),
            "no kernel_{fam} in {}",
            golden.display()
        );
    }
    Ok(())
}

/// A destination as `ip` prints it: `default`, a bare address for a host route.
fn ip_form(r: &KernelRoute) -> (String, u32) {
    let dst = if r.dst.prefix_len() == 0 {
        "default".to_string()
    } else if r.dst.prefix_len() == r.dst.max_prefix_len() {
        r.dst.addr().to_string()
    } else {
        r.dst.to_string()
    };
    (dst, r.metric)
}

fn sorted(mut v: Vec<(String, u32)>) -> Vec<(String, u32)> {
    v.sort();
    v
}

/// The sweep's listing is `ip route show proto bird`'s, and its delete takes exactly
/// the route it names: real kernel routes in a namespace, no BIRD.
#[test]
fn the_listing_and_the_delete_are_exact() -> Result<()> {
    let ns = Netns::new("nl-routes")?;
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
    for dev in ["d0", "d1"] {
        ns.ip(&["link", "set", dev, "up"])?;
    }
    ns.ip(&["addr", "add", "10.1.0.1/24", "dev", "d0"])?;
    ns.ip(&["addr", "add", "fd00:1::1/64", "dev", "d0", "nodad"])?;
    let add = |args: &str| -> Result<()> {
        let mut full = vec!["route", "add"];
        full.extend(args.split_whitespace());
        ns.ip(&full).map(|_| ())
    };
    for r in [
        // Two prefixes at two metrics, one at one, a host route, a default route.
        "10.9.0.0/24 via 10.1.0.2 proto bird metric 1024",
        "10.9.0.0/24 via 10.1.0.2 proto bird metric 1500",
        "10.9.1.0/24 via 10.1.0.2 proto bird metric 1500",
        "10.9.1.0/24 via 10.1.0.3 proto bird metric 800",
        "10.9.2.0/24 via 10.1.0.2 proto bird",
        "10.9.4.7 via 10.1.0.2 proto bird metric 1024",
        "default via 10.1.0.2 proto bird metric 300",
        "blackhole 10.9.5.0/26 proto bird",
        // A multipath route: one route.
        "10.9.3.0/24 proto bird metric 1024 nexthop via 10.1.0.2 nexthop via 10.1.0.3",
        // Other protocols and another table: none of BIRD's kernel routes.
        "10.9.0.0/24 via 10.1.0.3 proto static metric 700",
        "10.9.6.0/24 via 10.1.0.3 proto boot metric 1024",
        "10.9.0.0/24 via 10.1.0.2 proto bird metric 900 table 100",
        "fd00:9::/64 via fd00:1::2 proto bird metric 1024",
        "fd00:9::/64 via fd00:1::2 proto bird metric 1500",
        "fd00:9:1::/64 via fd00:1::2 proto bird",
        "fd00:9:3::/64 proto bird metric 1024 nexthop via fd00:1::2 nexthop via fd00:1::3",
        "fd00:9::/64 via fd00:1::3 proto static metric 700",
        "fd00:9:2::/64 via fd00:1::3 proto kernel metric 256",
        "fd00:9::/64 via fd00:1::2 proto bird metric 900 table 100",
    ] {
        add(r).with_context(|| format!("ip route add {r}"))?;
    }

    // Opened as the agent opens it: from the Exec the rest of the agent runs `ip` with.
    let mut nl = Netlink::open_for(&Exec::in_netns(ns.name()))?;
    let listing = |nl: &mut Netlink, fam: Family| -> Result<Vec<(String, u32)>> {
        Ok(sorted(
            stale_routes::list(nl, fam)?.iter().map(ip_form).collect(),
        ))
    };
    let own = |v: &[(&str, u32)]| sorted(v.iter().map(|(d, m)| (d.to_string(), *m)).collect());
    let v4 = listing(&mut nl, Family::V4)?;
    ensure!(
        v4 == own(&[
            ("10.9.0.0/24", 1024),
            ("10.9.0.0/24", 1500),
            ("10.9.1.0/24", 800),
            ("10.9.1.0/24", 1500),
            ("10.9.2.0/24", 0),
            ("10.9.3.0/24", 1024),
            ("10.9.4.7", 1024),
            ("10.9.5.0/26", 0),
            ("default", 300),
        ]),
        "IPv4 listing: {v4:?}"
    );
    let v6 = listing(&mut nl, Family::V6)?;
    ensure!(
        v6 == own(&[
            ("fd00:9::/64", 1024),
            ("fd00:9::/64", 1500),
            ("fd00:9:1::/64", 1024),
            ("fd00:9:3::/64", 1024),
        ]),
        "IPv6 listing: {v6:?}"
    );
    for (fam, flag, mine) in [(Family::V4, "-4", &v4), (Family::V6, "-6", &v6)] {
        let ip = sorted(ip_routes(&ns, flag, &["proto", "bird"])?);
        ensure!(&ip == mine, "{fam:?}: ip lists {ip:?}, the sweep {mine:?}");
    }

    // The delete takes the route at that metric and nothing else: not BIRD's route at
    // the other metric, not another protocol's, not another table's. A multipath route
    // goes whole.
    let net = |s: &str| s.parse::<ipnet::IpNet>().expect("a test prefix");
    stale_routes::delete(&mut nl, net("10.9.0.0/24"), 1024)?;
    stale_routes::delete(&mut nl, net("fd00:9::/64"), 1500)?;
    stale_routes::delete(&mut nl, net("10.9.3.0/24"), 1024)?;
    stale_routes::delete(&mut nl, net("fd00:9:3::/64"), 1024)?;
    let prefix = |fam, dst| -> Result<Vec<String>> {
        let mut v = ip_routes(&ns, fam, &["table", "all", dst])?
            .into_iter()
            .map(|(_, m)| m.to_string())
            .collect::<Vec<_>>();
        v.sort();
        Ok(v)
    };
    ensure!(prefix("-4", "10.9.0.0/24")? == ["1500", "700", "900"]);
    ensure!(prefix("-6", "fd00:9::/64")? == ["1024", "700", "900"]);
    ensure!(prefix("-4", "10.9.3.0/24")?.is_empty());
    ensure!(prefix("-6", "fd00:9:3::/64")?.is_empty());
    // A route that is not there (any more, or not BIRD's) is the kernel's ESRCH.
    for (dst, metric) in [
        ("10.9.0.0/24", 1024),
        ("10.9.0.0/24", 700),
        ("10.9.6.0/24", 1024),
    ] {
        let e = stale_routes::delete(&mut nl, net(dst), metric).expect_err("no such route");
        ensure!(e.raw_os_error() == Some(3), "{dst} metric {metric}: {e}");
    }
    ensure!(prefix("-4", "10.9.0.0/24")? == ["1500", "700", "900"]);
    ensure!(prefix("-4", "10.9.6.0/24")? == ["1024"]);

    // The sweep over these routes, BIRD's answers given: it asks about the prefixes at
    // two metrics only and deletes the metric BIRD no longer exports once the one it
    // exports is there.
    let mut asked = Vec::new();
    let removed = sweep_family(&mut nl, Family::V4, |cmd| {
        asked.push(cmd.to_string());
        let metric = if cmd.contains("10.9.1.0/24") { 800 } else { 1 };
        Some(format!(
            "Table master4:\n10.9.1.0/24          unicast [s4 09:08:57.619] * (200)\n\
             \tvia 10.1.0.3 on d0\n\tKernel.metric: {metric}\n"
        ))
    })?;
    ensure!(
        asked == ["show route export kernel_v4 10.9.1.0/24 all"],
        "asked {asked:?}"
    );
    ensure!(
        removed.iter().map(ip_form).collect::<Vec<_>>() == own(&[("10.9.1.0/24", 1500)]),
        "removed {removed:?}"
    );
    ensure!(prefix("-4", "10.9.1.0/24")? == ["800"]);
    Ok(())
}
