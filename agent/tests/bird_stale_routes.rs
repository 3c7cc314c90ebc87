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
//! Needs root and BIRD 2 (`bird`, `birdc`): fails loudly without them, never skips.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use tern_agent::bird::stale_routes::{parse_ip_routes, sweep};
use tern_agent::exec::Exec;
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

/// Every `proto bird` destination of the namespace with its metrics, both families.
fn bird_routes(ns: &Netns) -> Result<BTreeMap<String, Vec<u32>>> {
    let mut all: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for fam in ["-4", "-6"] {
        let json = ns.ip(&["-j", fam, "route", "show", "proto", "bird"])?;
        for r in parse_ip_routes(&json)? {
            let m = all.entry(r.dst).or_default();
            m.push(r.metric);
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
