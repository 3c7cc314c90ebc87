//! Kernel routes BIRD left behind at a metric it no longer uses, and their removal.
//!
//! The kernel metric of a route BIRD writes is its priority (`krt_metric`: the normal
//! route priority, or one carried over BGP). When it changes, BIRD 2 does not move
//! the kernel route, it adds a second one:
//! - an update is written as a netlink *replace* keyed by the new metric (always for
//!   IPv4; for IPv6 whenever the route has a gateway), and the kernel replaces only a
//!   route with the same metric, so the route at the old metric stays;
//! - BIRD's periodic scan meets both kernel routes of the prefix, takes the first as
//!   its own (it compares next hops, not metrics) and skips the second as "already
//!   seen", so nothing ever removes it.
//!
//! The same happens after a restart with a changed priority: the routes `persist`
//! kept at the old metric get a twin at the new one. When the old metric is the lower
//! one, the stale route keeps winning.
//!
//! BIRD's kernel protocol never writes two routes for one prefix into one table, so
//! two metrics for a prefix among the `proto bird` routes mean that one is stale.
//! [`sweep`] finds them, asks BIRD which metric it exports for the prefix (`show route
//! export kernel_vN <prefix> all` runs the current filters) and deletes the others,
//! only once the wanted one is in the kernel: traffic always has a route.
//!
//! ```text
//! ip -j route show proto bird ──► prefixes with two metrics? ──no──► done
//!        │ yes
//!        ▼
//! show route export kernel_vN <prefix> all ──► wanted metric in the kernel? ──no──► next time
//!        │ yes
//!        ▼
//! ip route del <prefix> proto bird metric <other>
//! ```
//!
//! A route removed by mistake (BIRD changed its mind between the question and the
//! delete) is put back by BIRD's next scan (`scan time 2`): BIRD sees its route
//! missing and installs it again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Deserialize;

use crate::exec::Exec;

/// How often at most [`StaleRoutes::poll`] looks: BIRD's own kernel scan period.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// An address family as `ip` and tern's BIRD configuration name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn ip_flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The kernel protocol of the rendered configuration (`protocol kernel kernel_v4`).
    fn kernel_protocol(self) -> &'static str {
        match self {
            Family::V4 => "kernel_v4",
            Family::V6 => "kernel_v6",
        }
    }

    /// The metric the kernel gives a route written without one.
    fn default_metric(self) -> u32 {
        match self {
            Family::V4 => 0,
            Family::V6 => 1024,
        }
    }

    fn host_len(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// A kernel route as `ip route` names it: its destination as `ip` printed it (to be
/// handed back to `ip route del`) and its metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: String,
    pub metric: u32,
}

/// Why a sweep could not look or clean.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("listing BIRD's kernel routes: {0}")]
    List(#[source] crate::exec::ExecError),
    #[error("reading `ip -j route` output: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("removing the stale route {dst} metric {metric}: {source}")]
    Delete {
        dst: String,
        metric: u32,
        #[source]
        source: crate::exec::ExecError,
    },
}

#[derive(Deserialize)]
struct IpRoute {
    dst: String,
    #[serde(default)]
    metric: u32,
}

/// The routes of `ip -j route show ...` (one entry per route; a multipath route is one).
pub fn parse_ip_routes(json: &str) -> Result<Vec<KernelRoute>, serde_json::Error> {
    let text = json.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let routes: Vec<IpRoute> = serde_json::from_str(text)?;
    Ok(routes
        .into_iter()
        .map(|r| KernelRoute {
            dst: r.dst,
            metric: r.metric,
        })
        .collect())
}

/// The prefix `ip` printed as `dst` (`default`, a bare address for a host route),
/// as a network; `None` for anything else.
pub fn prefix_of(dst: &str, family: Family) -> Option<IpNet> {
    let net: IpNet = if dst == "default" {
        match family {
            Family::V4 => "0.0.0.0/0".parse().ok()?,
            Family::V6 => "::/0".parse().ok()?,
        }
    } else if dst.contains('/') {
        dst.parse().ok()?
    } else {
        IpNet::new(dst.parse().ok()?, family.host_len()).ok()?
    };
    let ok = matches!(
        (family, net),
        (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
    );
    ok.then_some(net)
}

/// The destinations that have routes at more than one metric, with those metrics.
pub fn duplicated(routes: &[KernelRoute]) -> BTreeMap<&str, Vec<u32>> {
    let mut by_dst: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for r in routes {
        let metrics = by_dst.entry(r.dst.as_str()).or_default();
        if !metrics.contains(&r.metric) {
            metrics.push(r.metric);
        }
    }
    by_dst.retain(|_, m| m.len() > 1);
    by_dst
}

/// The metric BIRD exports a prefix with, from its reply to `show route export
/// <kernel protocol> <prefix> all`. `None` when it exports nothing for it (an error
/// reply, an unknown network, a route the filter rejects): then BIRD's own scan
/// removes what it does not want, one route per scan.
pub fn exported_metric(reply: &str, family: Family) -> Option<u32> {
    // A route starts with its network in the first column (`Table master4:` heads
    // the list); its attributes follow indented.
    let route = reply.lines().any(|l| {
        !l.starts_with(char::is_whitespace)
            && l.split_whitespace()
                .next()
                .is_some_and(|first| first.parse::<IpNet>().is_ok())
    });
    if !route {
        return None;
    }
    let metric = reply
        .lines()
        .find_map(|l| l.trim().strip_prefix("Kernel.metric:"))
        .and_then(|m| m.trim().parse().ok());
    Some(metric.unwrap_or(family.default_metric()))
}

/// The routes of a duplicated destination to delete, given the metric BIRD wants for
/// it: every other one, provided a route at the wanted metric is already there.
pub fn stale(dst: &str, metrics: &[u32], wanted: Option<u32>) -> Vec<KernelRoute> {
    match wanted {
        Some(w) if metrics.contains(&w) => metrics
            .iter()
            .filter(|m| **m != w)
            .map(|m| KernelRoute {
                dst: dst.to_string(),
                metric: *m,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Find and delete the stale BIRD routes of one family (main table). `ask` puts one
/// command to BIRD's control socket. Returns the routes deleted.
pub fn sweep_family(
    exec: &Exec,
    family: Family,
    mut ask: impl FnMut(&str) -> Option<String>,
) -> Result<Vec<KernelRoute>, SweepError> {
    let out = exec
        .run(
            "ip",
            &["-j", family.ip_flag(), "route", "show", "proto", "bird"],
            None,
        )
        .map_err(SweepError::List)?;
    let routes = parse_ip_routes(&out.stdout).map_err(SweepError::Parse)?;
    let mut removed = Vec::new();
    for (dst, metrics) in duplicated(&routes) {
        let Some(net) = prefix_of(dst, family) else {
            continue;
        };
        let wanted = ask(&format!(
            "show route export {} {net} all",
            family.kernel_protocol()
        ))
        .and_then(|reply| exported_metric(&reply, family));
        for r in stale(dst, &metrics, wanted) {
            let metric = r.metric.to_string();
            exec.run(
                "ip",
                &[
                    family.ip_flag(),
                    "route",
                    "del",
                    &r.dst,
                    "proto",
                    "bird",
                    "metric",
                    &metric,
                ],
                None,
            )
            .map_err(|source| SweepError::Delete {
                dst: r.dst.clone(),
                metric: r.metric,
                source,
            })?;
            tracing::info!(
                dst = %r.dst,
                stale_metric = r.metric,
                metric = wanted.unwrap_or_default(),
                "removed a kernel route BIRD left at a metric it no longer uses"
            );
            removed.push(r);
        }
    }
    Ok(removed)
}

/// [`sweep_family`] for both families, asking the BIRD on `socket`.
pub fn sweep(exec: &Exec, socket: &Path, timeout: Duration) -> Result<usize, SweepError> {
    let mut removed = 0;
    for family in Family::BOTH {
        removed += sweep_family(exec, family, |cmd| {
            super::control::query(socket, cmd, timeout).ok()
        })?
        .len();
    }
    Ok(removed)
}

/// Runs [`sweep`] from a periodic poll, at most every [`SWEEP_INTERVAL`]; a failure is
/// logged when it differs from the previous one.
#[derive(Debug, Default)]
pub struct StaleRoutes {
    last: Option<Instant>,
    last_error: Option<String>,
}

impl StaleRoutes {
    pub fn poll(&mut self, exec: &Exec, socket: &Path, timeout: Duration) {
        if self.last.is_some_and(|t| t.elapsed() < SWEEP_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        match sweep(exec, socket, timeout) {
            Ok(_) => self.last_error = None,
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_ref() != Some(&msg) {
                    tracing::warn!(error = %msg, "checking BIRD's kernel routes for stale metrics failed");
                }
                self.last_error = Some(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dst: &str, metric: u32) -> KernelRoute {
        KernelRoute {
            dst: dst.into(),
            metric,
        }
    }

    #[test]
    fn ip_json_reads_into_routes() {
        // As `ip -j -4 route show proto bird` prints it (no metric: 0), multipath as one.
        let json = r#"[{"dst":"10.9.0.0/24","gateway":"10.1.0.2","dev":"d0","metric":1500,"flags":[]},
            {"dst":"10.9.0.0/24","gateway":"10.1.0.2","dev":"d0","metric":1024,"flags":[]},
            {"type":"blackhole","dst":"10.9.5.0/26","flags":[]},
            {"dst":"10.9.7.0/24","metric":1024,"flags":[],"nexthops":[{"gateway":"10.1.0.2","dev":"d0","weight":1,"flags":[]},{"gateway":"10.1.0.3","dev":"d0","weight":1,"flags":[]}]}]
"#;
        assert_eq!(
            parse_ip_routes(json).expect("valid"),
            vec![
                r("10.9.0.0/24", 1500),
                r("10.9.0.0/24", 1024),
                r("10.9.5.0/26", 0),
                r("10.9.7.0/24", 1024)
            ]
        );
        assert_eq!(parse_ip_routes("").expect("no routes"), vec![]);
        assert_eq!(parse_ip_routes("[]\n").expect("no routes"), vec![]);
        assert!(parse_ip_routes("[{\"metric\":1}]").is_err());
    }

    #[test]
    fn ip_destinations_become_prefixes() {
        let p = |d, f| prefix_of(d, f).map(|n| n.to_string());
        assert_eq!(p("10.9.0.0/24", Family::V4).as_deref(), Some("10.9.0.0/24"));
        assert_eq!(p("10.9.0.7", Family::V4).as_deref(), Some("10.9.0.7/32"));
        assert_eq!(p("default", Family::V4).as_deref(), Some("0.0.0.0/0"));
        assert_eq!(p("default", Family::V6).as_deref(), Some("::/0"));
        assert_eq!(p("fd00:9::/64", Family::V6).as_deref(), Some("fd00:9::/64"));
        assert_eq!(p("fd00:9::1", Family::V6).as_deref(), Some("fd00:9::1/128"));
        // The wrong family, or anything that is not a prefix, is left alone.
        assert_eq!(p("fd00:9::/64", Family::V4), None);
        assert_eq!(p("10.9.0.0/24", Family::V6), None);
        assert_eq!(p("10.9.0.0/24 all", Family::V4), None);
        assert_eq!(p("", Family::V4), None);
    }

    #[test]
    fn only_destinations_at_two_metrics_are_duplicated() {
        let routes = [
            r("10.9.0.0/24", 1024),
            r("10.9.1.0/24", 1024),
            r("10.9.0.0/24", 1500),
            // Old kernels list the next hops of an IPv6 multipath route one by one.
            r("fd00:9::/64", 1024),
            r("fd00:9::/64", 1024),
            r("10.9.2.0/24", 5),
            r("10.9.2.0/24", 1024),
            r("10.9.2.0/24", 1500),
        ];
        let d = duplicated(&routes);
        assert_eq!(
            d.into_iter().collect::<Vec<_>>(),
            vec![
                ("10.9.0.0/24", vec![1024, 1500]),
                ("10.9.2.0/24", vec![5, 1024, 1500])
            ]
        );
    }

    #[test]
    fn the_exported_metric_is_read_from_birds_reply() {
        let reply = "Table master4:\n10.9.0.0/24          unicast [s4 09:08:57.619] * (200)\n\
                     \tvia 10.1.0.2 on d0\n\tType: static univ\n\tKernel.metric: 1500\n";
        assert_eq!(exported_metric(reply, Family::V4), Some(1500));
        let v6 = "Table master6:\nfd00:9::/64          unicast [s6 09:08:57.619] * (200)\n\
                  \tvia fd00:1::2 on d0\n\tType: static univ\n\tKernel.metric: 800\n";
        assert_eq!(exported_metric(v6, Family::V6), Some(800));
        // Exported without a metric: the kernel's default for the family.
        let bare = "Table master4:\n10.9.0.0/24          unicast [s4 09:08:57.619] * (200)\n\tvia 10.1.0.2 on d0\n";
        assert_eq!(exported_metric(bare, Family::V4), Some(0));
        let bare6 = "Table master6:\nfd00:9::/64          unicast [s6 09:08:57.619] * (200)\n\tvia fd00:1::2 on d0\n";
        assert_eq!(exported_metric(bare6, Family::V6), Some(1024));
        // Nothing exported: rejected by the filter, unknown network, an error.
        assert_eq!(exported_metric("Table master4:\n", Family::V4), None);
        assert_eq!(exported_metric("Network not found\n", Family::V4), None);
        assert_eq!(
            exported_metric(
                "syntax error, unexpected CF_SYM_UNDEFINED, expecting CF_SYM_KNOWN or TABLE\n",
                Family::V6
            ),
            None
        );
        assert_eq!(exported_metric("", Family::V4), None);
    }

    #[test]
    fn stale_routes_go_only_once_the_wanted_one_is_in_place() {
        let dst = "10.9.0.0/24";
        // A raised priority (1024 -> 1500) and a lowered one (1500 -> 800).
        assert_eq!(stale(dst, &[1024, 1500], Some(1500)), vec![r(dst, 1024)]);
        assert_eq!(stale(dst, &[1500, 800], Some(800)), vec![r(dst, 1500)]);
        // Three metrics after two changes: both old ones go.
        assert_eq!(
            stale(dst, &[5, 1024, 1500], Some(5)),
            vec![r(dst, 1024), r(dst, 1500)]
        );
        // BIRD has not written the wanted route yet: keep both for now.
        assert_eq!(stale(dst, &[1024, 1500], Some(1800)), vec![]);
        // BIRD exports nothing for it (or did not answer): its own scan decides.
        assert_eq!(stale(dst, &[1024, 1500], None), vec![]);
    }

    #[test]
    fn the_poll_waits_for_the_interval() {
        let mut s = StaleRoutes::default();
        // A namespace that does not exist: the sweep fails, is logged, and is not
        // retried before the interval is over.
        let exec = Exec::in_netns("tern-no-such-netns");
        s.poll(
            &exec,
            Path::new("/nonexistent/bird.ctl"),
            Duration::from_millis(10),
        );
        let first = s.last.expect("polled");
        assert!(s.last_error.is_some());
        s.poll(
            &exec,
            Path::new("/nonexistent/bird.ctl"),
            Duration::from_millis(10),
        );
        assert_eq!(s.last, Some(first));
    }
}
