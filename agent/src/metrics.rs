//! Prometheus metrics of the agent, served at `/metrics` on `--metrics-listen`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tern::proto;
use tracing::warn;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub state: String,
}

/// One session's routes in one direction.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub session: String,
    pub peer: String,
    /// `imported`, `exported` or `filtered` (import updates a filter rejected).
    pub direction: String,
}

/// One session that runs BFD.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BfdLabels {
    pub session: String,
    pub peer: String,
    /// BFD's state: Up, Down, Init, AdminDown.
    pub state: String,
}

/// Every metric of the agent.
#[derive(Debug)]
pub struct Metrics {
    pub nat_applies: Counter,
    pub apply_errors: Counter,
    pub drift_repairs: Counter,
    pub bird_reloads: Counter,
    pub applied_revision: Gauge,
    pub nat_apply_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub bgp_sessions: Family<SessionLabels, Gauge>,
    pub bgp_session_routes: Family<RouteLabels, Gauge>,
    pub bgp_session_bfd: Family<BfdLabels, Gauge>,
    registry: parking_lot::Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            nat_applies: Counter::default(),
            apply_errors: Counter::default(),
            drift_repairs: Counter::default(),
            bird_reloads: Counter::default(),
            applied_revision: Gauge::default(),
            nat_apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            apply_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            bgp_sessions: Family::default(),
            bgp_session_routes: Family::default(),
            bgp_session_bfd: Family::default(),
            registry: parking_lot::Mutex::new(Registry::with_prefix("tern_agent")),
        };
        {
            let mut r = m.registry.lock();
            r.register("nat_applies", "NAT states applied", m.nat_applies.clone());
            r.register(
                "apply_errors",
                "Failed applies (retried with backoff)",
                m.apply_errors.clone(),
            );
            r.register(
                "drift_repairs",
                "Differences between the kernel and the desired NAT state found and repaired",
                m.drift_repairs.clone(),
            );
            r.register(
                "bird_reloads",
                "BIRD configuration reloads",
                m.bird_reloads.clone(),
            );
            r.register(
                "applied_revision",
                "etcd revision of the last fully applied view",
                m.applied_revision.clone(),
            );
            r.register(
                "nat_apply_seconds",
                "Time to apply the NAT state",
                m.nat_apply_seconds.clone(),
            );
            r.register(
                "apply_seconds",
                "Time to apply a view (NAT and BGP)",
                m.apply_seconds.clone(),
            );
            r.register(
                "bgp_sessions",
                "BGP sessions by state",
                m.bgp_sessions.clone(),
            );
            r.register(
                "bgp_session_routes",
                "Routes per BGP session: imported and exported now, and import updates \
                 filtered since the session came up",
                m.bgp_session_routes.clone(),
            );
            r.register(
                "bgp_session_bfd",
                "BFD state of the BGP sessions that run BFD (1 for the state the session is in)",
                m.bgp_session_bfd.clone(),
            );
        }
        Arc::new(m)
    }

    /// Count sessions by BIRD state; routes and BFD state per session.
    pub fn set_bgp_sessions(&self, sessions: &[proto::BgpSession]) {
        self.bgp_sessions.clear();
        self.bgp_session_routes.clear();
        self.bgp_session_bfd.clear();
        for s in sessions {
            for (direction, n) in [
                ("imported", s.routes_imported),
                ("exported", s.routes_exported),
                ("filtered", s.routes_filtered),
            ] {
                self.bgp_session_routes
                    .get_or_create(&RouteLabels {
                        session: s.name.clone(),
                        peer: s.peer_address.clone(),
                        direction: direction.into(),
                    })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if !s.bfd_state.is_empty() {
                self.bgp_session_bfd
                    .get_or_create(&BfdLabels {
                        session: s.name.clone(),
                        peer: s.peer_address.clone(),
                        state: s.bfd_state.clone(),
                    })
                    .set(1);
            }
        }
        for s in sessions {
            let state = if s.info.starts_with("Established") {
                "established".to_string()
            } else {
                s.state.to_lowercase()
            };
            self.bgp_sessions
                .get_or_create(&SessionLabels { state })
                .inc();
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}

/// Serve `/metrics` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    tern::util::serve_metrics(addr, Arc::new(move || metrics.encode())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_give_routes_and_bfd_state_per_session() {
        let m = Metrics::new();
        let tor = proto::BgpSession {
            name: "Global_192_0_2_1".into(),
            peer_address: "192.0.2.1".into(),
            info: "Established".into(),
            routes_imported: 3,
            routes_exported: 2,
            routes_filtered: 1,
            bfd_state: "Up".into(),
            ..Default::default()
        };
        let mesh = proto::BgpSession {
            name: "Mesh_10_0_0_2".into(),
            peer_address: "10.0.0.2".into(),
            state: "start".into(),
            ..Default::default()
        };
        m.set_bgp_sessions(&[tor, mesh.clone()]);
        let text = m.encode();
        for line in [
            "tern_agent_bgp_session_routes{session=\"Global_192_0_2_1\",peer=\"192.0.2.1\",direction=\"imported\"} 3",
            "tern_agent_bgp_session_routes{session=\"Global_192_0_2_1\",peer=\"192.0.2.1\",direction=\"exported\"} 2",
            "tern_agent_bgp_session_routes{session=\"Global_192_0_2_1\",peer=\"192.0.2.1\",direction=\"filtered\"} 1",
            "tern_agent_bgp_session_bfd{session=\"Global_192_0_2_1\",peer=\"192.0.2.1\",state=\"Up\"} 1",
            "tern_agent_bgp_sessions{state=\"established\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        // No BFD on the mesh session: no BFD series for it.
        assert!(!text.contains("bgp_session_bfd{session=\"Mesh_10_0_0_2\""));
        // A session that goes away takes its series with it.
        m.set_bgp_sessions(&[mesh]);
        assert!(!m.encode().contains("Global_192_0_2_1"));
    }
}
