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
//! The kernel is read and changed over netlink ([`crate::netlink`]), not by `ip`
//! processes: a route dump per family, kept to what `ip route show proto bird` lists
//! (protocol bird, main table), and a delete that names prefix, table, protocol and
//! metric. The socket is opened for each sweep in the namespace the agent's [`Exec`]
//! runs BIRD in (`--netns NAME`: /run/netns/NAME, as `ip netns exec` enters it).
//!
//! ```text
//! route dump, proto bird, main table ──► prefixes with two metrics? ──no──► done
//!        │ yes
//!        ▼
//! show route export kernel_vN <prefix> all ──► wanted metric in the kernel? ──no──► next time
//!        │ yes
//!        ▼
//! delete <prefix> table main proto bird metric <other>
//! ```
//!
//! A route removed by mistake (BIRD changed its mind between the question and the
//! delete) is put back by BIRD's next scan (`scan time 2`): BIRD sees its route
//! missing and installs it again.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::exec::Exec;
use crate::netlink::{IpFamily, Netlink, RT_TABLE_MAIN, RTPROT_BIRD, RouteEntry, RouteKey};

/// How often at most [`StaleRoutes::poll`] looks: BIRD's own kernel scan period.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// An address family as tern's BIRD configuration names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    fn ip(self) -> IpFamily {
        match self {
            Family::V4 => IpFamily::V4,
            Family::V6 => IpFamily::V6,
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

    fn holds(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

/// A kernel route BIRD wrote: its destination and its metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpNet,
    pub metric: u32,
}

/// Why a sweep could not look or clean.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("opening a netlink socket in {place}: {source}")]
    Open {
        place: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing BIRD's kernel routes: {0}")]
    List(#[source] std::io::Error),
    #[error("removing the stale route {dst} metric {metric}: {source}")]
    Delete {
        dst: IpNet,
        metric: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The routes `ip route show proto bird` lists among a dump of `family`: BIRD's, in
/// the main table, not cached clones; one per route (a multipath route is one).
pub fn bird_routes(dump: &[RouteEntry], family: Family) -> Vec<KernelRoute> {
    dump.iter()
        .filter(|r| {
            r.protocol == RTPROT_BIRD
                && r.table == u32::from(RT_TABLE_MAIN)
                && !r.cloned
                && family.holds(&r.dst)
        })
        .map(|r| KernelRoute {
            dst: r.dst,
            metric: r.metric,
        })
        .collect()
}

/// BIRD's routes of `family` in the main table of `nl`'s namespace.
pub fn list(nl: &mut Netlink, family: Family) -> std::io::Result<Vec<KernelRoute>> {
    Ok(bird_routes(&nl.routes(family.ip())?, family))
}

/// Delete BIRD's route to `dst` at `metric` from the main table, and no other.
pub fn delete(nl: &mut Netlink, dst: IpNet, metric: u32) -> std::io::Result<()> {
    nl.delete_route(&RouteKey {
        dst,
        table: u32::from(RT_TABLE_MAIN),
        protocol: RTPROT_BIRD,
        metric,
    })
}

/// The destinations that have routes at more than one metric, with those metrics.
pub fn duplicated(routes: &[KernelRoute]) -> BTreeMap<IpNet, Vec<u32>> {
    let mut by_dst: BTreeMap<IpNet, Vec<u32>> = BTreeMap::new();
    for r in routes {
        let metrics = by_dst.entry(r.dst).or_default();
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
pub fn stale(dst: IpNet, metrics: &[u32], wanted: Option<u32>) -> Vec<KernelRoute> {
    match wanted {
        Some(w) if metrics.contains(&w) => metrics
            .iter()
            .filter(|m| **m != w)
            .map(|m| KernelRoute { dst, metric: *m })
            .collect(),
        _ => Vec::new(),
    }
}

/// Find and delete the stale BIRD routes of one family (main table) in `nl`'s
/// namespace. `ask` puts one command to BIRD's control socket. Returns the routes
/// deleted.
pub fn sweep_family(
    nl: &mut Netlink,
    family: Family,
    mut ask: impl FnMut(&str) -> Option<String>,
) -> Result<Vec<KernelRoute>, SweepError> {
    let routes = list(nl, family).map_err(SweepError::List)?;
    let mut removed = Vec::new();
    for (dst, metrics) in duplicated(&routes) {
        let wanted = ask(&format!(
            "show route export {} {dst} all",
            family.kernel_protocol()
        ))
        .and_then(|reply| exported_metric(&reply, family));
        for r in stale(dst, &metrics, wanted) {
            delete(nl, r.dst, r.metric).map_err(|source| SweepError::Delete {
                dst: r.dst,
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

/// [`sweep_family`] for both families in the namespace `exec` runs BIRD in, asking
/// the BIRD on `socket`.
pub fn sweep(exec: &Exec, socket: &Path, timeout: Duration) -> Result<usize, SweepError> {
    let mut nl = Netlink::open_for(exec).map_err(|source| SweepError::Open {
        place: match exec.netns() {
            Some(ns) => format!("netns {ns}"),
            None => "the agent's network namespace".into(),
        },
        source,
    })?;
    let mut removed = 0;
    for family in Family::BOTH {
        removed += sweep_family(&mut nl, family, |cmd| {
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

    fn net(dst: &str) -> IpNet {
        dst.parse().expect("a test prefix")
    }

    fn r(dst: &str, metric: u32) -> KernelRoute {
        KernelRoute {
            dst: net(dst),
            metric,
        }
    }

    fn entry(dst: &str, table: u32, protocol: u8, metric: u32) -> RouteEntry {
        RouteEntry {
            dst: net(dst),
            table,
            protocol,
            kind: 1,
            metric,
            cloned: false,
            nexthops: 0,
        }
    }

    #[test]
    fn only_birds_routes_of_the_main_table_count() {
        let main = u32::from(RT_TABLE_MAIN);
        let multipath = RouteEntry {
            nexthops: 2,
            ..entry("10.9.7.0/24", main, RTPROT_BIRD, 1024)
        };
        let blackhole = RouteEntry {
            kind: 6,
            ..entry("10.9.5.0/26", main, RTPROT_BIRD, 0)
        };
        let cloned = RouteEntry {
            cloned: true,
            ..entry("fd00:9::7/128", main, RTPROT_BIRD, 1024)
        };
        let dump = [
            entry("10.9.0.0/24", main, RTPROT_BIRD, 1500),
            entry("10.9.0.0/24", main, RTPROT_BIRD, 1024),
            // Another protocol, another table, a cached clone: not BIRD's kernel routes.
            entry("10.9.0.0/24", main, 4, 700),
            entry("10.9.0.0/24", 100, RTPROT_BIRD, 900),
            entry("10.9.1.0/24", 255, RTPROT_BIRD, 0),
            cloned,
            blackhole,
            multipath,
            entry("0.0.0.0/0", main, RTPROT_BIRD, 300),
            entry("fd00:9::/64", main, RTPROT_BIRD, 1024),
        ];
        assert_eq!(
            bird_routes(&dump, Family::V4),
            vec![
                r("10.9.0.0/24", 1500),
                r("10.9.0.0/24", 1024),
                r("10.9.5.0/26", 0),
                r("10.9.7.0/24", 1024),
                r("0.0.0.0/0", 300),
            ]
        );
        assert_eq!(bird_routes(&dump, Family::V6), vec![r("fd00:9::/64", 1024)]);
        assert_eq!(bird_routes(&[], Family::V4), vec![]);
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
                (net("10.9.0.0/24"), vec![1024, 1500]),
                (net("10.9.2.0/24"), vec![5, 1024, 1500])
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
        let dst = net("10.9.0.0/24");
        let r = |m| KernelRoute { dst, metric: m };
        // A raised priority (1024 -> 1500) and a lowered one (1500 -> 800).
        assert_eq!(stale(dst, &[1024, 1500], Some(1500)), vec![r(1024)]);
        assert_eq!(stale(dst, &[1500, 800], Some(800)), vec![r(1500)]);
        // Three metrics after two changes: both old ones go.
        assert_eq!(
            stale(dst, &[5, 1024, 1500], Some(5)),
            vec![r(1024), r(1500)]
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
