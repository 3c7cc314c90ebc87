//! Small helpers every tern binary uses: timestamps, signals, the metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

/// Now, as RFC 3339 in UTC with whole seconds (`2026-11-24T19:41:35Z`), as Kubernetes
/// writes timestamps.
pub fn now_rfc3339() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A time as RFC 3339 in UTC with whole seconds.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Parse an RFC 3339 time, as [`rfc3339`] writes them.
pub fn parse_rfc3339(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl crate::proto::BgpStatus {
    /// The same state but for what moves with the clock alone: every session's uptime
    /// (it grows with every poll). Two states equal in this form tell nothing new, so
    /// a report for the difference is not worth sending or storing; a reader adds the
    /// time since the report to the uptimes it carries.
    pub fn without_uptimes(&self) -> crate::proto::BgpStatus {
        let mut s = self.clone();
        for x in &mut s.sessions {
            x.uptime_seconds = 0;
        }
        s
    }
}

/// Wait for SIGTERM or SIGINT.
pub async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Serve Prometheus metrics at `http://<addr>/metrics` until the task is aborted;
/// `render` produces the text exposition at each scrape.
pub async fn serve_metrics(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    render(),
                )
            }
        }),
    );
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    }))
}

/// An error and its sources, joined with ": " (for a message that says why, e.g. why a
/// connection failed: "transport error: tcp connect error: Connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_whole_seconds_in_utc() {
        let t = time::macros::datetime!(2026-11-24 19:41:35.123 +02:00);
        assert_eq!(super::rfc3339(t), "2026-11-24T17:41:35Z");
        assert_eq!(
            super::parse_rfc3339("2026-11-24T17:41:35Z"),
            Some(time::macros::datetime!(2026-11-24 17:41:35 UTC))
        );
        assert_eq!(super::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn uptimes_alone_are_no_change() {
        use crate::proto::{BgpSession, BgpStatus};
        let at = |uptime_seconds, bgp_state: &str| BgpStatus {
            state: "running".into(),
            sessions: vec![BgpSession {
                name: "Mesh_10_0_0_2".into(),
                bgp_state: bgp_state.into(),
                uptime_seconds,
                ..Default::default()
            }],
            ..Default::default()
        };
        let a = at(10, "Established");
        assert_eq!(a.without_uptimes(), at(15, "Established").without_uptimes());
        assert_ne!(a.without_uptimes(), at(0, "Active").without_uptimes());
        // The original keeps its uptimes.
        assert_eq!(a.sessions[0].uptime_seconds, 10);
    }
}
