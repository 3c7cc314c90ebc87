//! Prometheus metrics of a controller replica, served at `/metrics` on
//! `--metrics-listen`.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

/// Labels of API request counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub code: String,
}

/// Labels of the connections closed by the listener's bounds.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub reason: &'static str,
}

/// Every metric of the controller.
#[derive(Debug)]
pub struct Metrics {
    pub agents_connected: Gauge,
    pub sync_snapshots: Counter,
    pub sync_resumes: Counter,
    pub sync_items_sent: Counter,
    pub sync_disconnects_slow: Counter,
    pub sync_delta_lag_seconds: Histogram,
    pub cache_revision: Gauge,
    pub cache_objects: Gauge,
    pub etcd_watch_healthy: Gauge,
    pub cache_relists: Counter,
    pub cache_watch_resumes: Counter,
    /// Per etcd member health, and pages split for size.
    pub store: crate::store::StoreMetrics,
    pub api_requests: Family<RequestLabels, Counter>,
    pub connections_unauthenticated: Gauge,
    pub connections_closed: Family<CloseLabels, Counter>,
    pub watch_streams: Gauge,
    pub watch_disconnects_slow: Counter,
    pub status_writes: Counter,
    pub status_reports_unchanged: Counter,
    registry: parking_lot::Mutex<Registry>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let m = Metrics {
            agents_connected: Gauge::default(),
            sync_snapshots: Counter::default(),
            sync_resumes: Counter::default(),
            sync_items_sent: Counter::default(),
            sync_disconnects_slow: Counter::default(),
            sync_delta_lag_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            cache_revision: Gauge::default(),
            cache_objects: Gauge::default(),
            etcd_watch_healthy: Gauge::default(),
            cache_relists: Counter::default(),
            cache_watch_resumes: Counter::default(),
            store: Default::default(),
            api_requests: Family::default(),
            connections_unauthenticated: Gauge::default(),
            connections_closed: Family::default(),
            watch_streams: Gauge::default(),
            watch_disconnects_slow: Counter::default(),
            status_writes: Counter::default(),
            status_reports_unchanged: Counter::default(),
            registry: parking_lot::Mutex::new(Registry::with_prefix("tern")),
        };
        {
            let mut r = m.registry.lock();
            r.register(
                "agents_connected",
                "Agents with an open sync stream to this replica",
                m.agents_connected.clone(),
            );
            r.register(
                "sync_snapshots",
                "Full snapshots sent to agents",
                m.sync_snapshots.clone(),
            );
            r.register(
                "sync_resumes",
                "Agent reconnects served from the history without a snapshot",
                m.sync_resumes.clone(),
            );
            r.register(
                "sync_items_sent",
                "Resource changes sent to agents",
                m.sync_items_sent.clone(),
            );
            r.register(
                "sync_disconnects_slow",
                "Agents disconnected for falling behind",
                m.sync_disconnects_slow.clone(),
            );
            r.register(
                "sync_delta_lag_seconds",
                "Time from a change entering the cache to its delta being queued for an agent",
                m.sync_delta_lag_seconds.clone(),
            );
            r.register(
                "cache_revision",
                "etcd revision the cache has applied",
                m.cache_revision.clone(),
            );
            r.register(
                "cache_objects",
                "Resources in the cache",
                m.cache_objects.clone(),
            );
            r.register(
                "etcd_watch_healthy",
                "1 while the cache's etcd watch is established",
                m.etcd_watch_healthy.clone(),
            );
            r.register(
                "cache_relists",
                "Times the cache relisted after a lost or compacted watch",
                m.cache_relists.clone(),
            );
            r.register(
                "cache_watch_resumes",
                "Times the cache's etcd watch was lost and resumed from its revision (no relist)",
                m.cache_watch_resumes.clone(),
            );
            r.register(
                "etcd_endpoint_healthy",
                "1 while requests reach the etcd member, 0 while it is skipped as unhealthy",
                m.store.endpoint_healthy.clone(),
            );
            r.register(
                "etcd_pages_split",
                "etcd range pages read again as smaller pages for exceeding the decode limit",
                m.store.pages_split.clone(),
            );
            r.register(
                "watch_streams",
                "Open ResourceService.Watch streams",
                m.watch_streams.clone(),
            );
            r.register(
                "watch_disconnects_slow",
                "Watch streams cut off for not taking events in time or falling out of the history",
                m.watch_disconnects_slow.clone(),
            );
            r.register(
                "api_requests",
                "gRPC requests by method and status code",
                m.api_requests.clone(),
            );
            r.register(
                "connections_unauthenticated",
                "Connections in the TLS handshake or without a verified client certificate",
                m.connections_unauthenticated.clone(),
            );
            r.register(
                "connections_closed",
                "Connections the listener closed, by reason (handshake_timeout, \
                 handshake_failed, evicted, preface_timeout, idle)",
                m.connections_closed.clone(),
            );
            r.register(
                "status_writes",
                "Agent status reports written to etcd",
                m.status_writes.clone(),
            );
            r.register(
                "status_reports_unchanged",
                "Agent status reports not written: the same as the stored one",
                m.status_reports_unchanged.clone(),
            );
        }
        Arc::new(m)
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry.lock()) {
            warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Count one request.
    pub fn request(&self, method: &str, code: &str) {
        self.api_requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
    }
}

impl Metrics {
    /// Count a connection the listener closed.
    pub fn connection_closed(&self, reason: crate::listener::CloseReason) {
        self.connections_closed
            .get_or_create(&CloseLabels {
                reason: reason.as_str(),
            })
            .inc();
    }
}

/// Serve `/metrics` until the task is aborted.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    tern::util::serve_metrics(addr, Arc::new(move || metrics.encode())).await
}
