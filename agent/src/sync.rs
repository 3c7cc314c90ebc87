//! The agent's end of the sync stream.
//!
//! ```text
//!  controllers[i] ──TLS──► Sync stream ──► handle(): snapshot chunks ─► pending View
//!        ▲                      │                      InSync ─► swap into the shared View
//!        │ failover,            │                      Delta  ─► apply to the shared View
//!        │ jittered backoff     │                      Ping   ─► Pong
//!        └──── stream ends ◄────┘
//!  shared View (RwLock) + watch<SyncState>  ──► the apply loop (run.rs)
//!  watch<Option<NodeStatus>> from the apply loop ──► StatusReport (at most 1/s)
//! ```
//!
//! The view survives reconnects (fail static): the last applied state stays on the
//! host while the controller is away, and a reconnect names the view's revision so
//! that a controller with enough history sends only the changes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use rand::Rng as _;
use tern::client::ClientTls;
use tern::model::{Kind, Resource};
use tern::proto::{
    self, agent_message, controller_message, sync_service_client::SyncServiceClient,
};
use tern::view::View;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument as _, debug, info, info_span, warn};

/// The view shared between the sync client (writer) and the apply loop (reader).
pub type SharedView = Arc<RwLock<View>>;

/// What the apply loop needs to know about the sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Revision the shared view is consistent at.
    pub revision: i64,
    /// True once a first InSync has been received (never reset: fail static).
    pub synced: bool,
    /// A stream is open right now.
    pub connected: bool,
    /// The replica serving the stream.
    pub controller: String,
    /// Bumped on every change of the view.
    pub generation: u64,
    /// Items that could not be read (version skew); kept for the status report.
    pub bad_items: u64,
}

/// How to reach the controllers and who we are.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    pub node: String,
    pub agent_version: String,
    /// Controller addresses, tried in turn.
    pub controllers: Vec<String>,
    pub tls: ClientTls,
    pub registration: proto::NodeRegistration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Reconnect when nothing (not even a ping) arrived for this long.
    pub silence_timeout: Duration,
    /// At most one status report per this interval. Half a second, so that a BGP
    /// session change (noticed within 250 ms) is reported within a second.
    pub status_interval: Duration,
}

impl SyncConfig {
    pub fn new(node: String, controllers: Vec<String>, tls: ClientTls) -> Self {
        SyncConfig {
            node,
            agent_version: tern::VERSION.to_string(),
            controllers,
            tls,
            registration: proto::NodeRegistration::default(),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(15),
            silence_timeout: Duration::from_secs(45),
            status_interval: Duration::from_millis(500),
        }
    }
}

/// Handles to a running sync client.
#[derive(Debug, Clone)]
pub struct SyncHandle {
    pub view: SharedView,
    pub state: watch::Receiver<SyncState>,
    /// Publish the node's status here; it is sent to the controller.
    pub status: watch::Sender<Option<proto::NodeStatus>>,
}

/// Start the client task. It runs until the returned handle's task is aborted.
pub fn spawn(cfg: SyncConfig) -> (SyncHandle, tokio::task::JoinHandle<()>) {
    let view: SharedView = Arc::new(RwLock::new(View::default()));
    let (state_tx, state_rx) = watch::channel(SyncState::default());
    let (status_tx, status_rx) = watch::channel(None);
    let client = Client {
        cfg,
        view: view.clone(),
        state: state_tx,
        status: status_rx,
    };
    let task = tokio::spawn(client.run());
    (
        SyncHandle {
            view,
            state: state_rx,
            status: status_tx,
        },
        task,
    )
}

/// A snapshot being received: the view so far and the items that could not be read.
#[derive(Debug, Default)]
struct Pending {
    view: View,
    unreadable: Vec<(Kind, String)>,
}

impl Pending {
    /// The view that replaces `old` at InSync. An item this agent cannot read (e.g. a
    /// newer controller's field) keeps the version the agent had, as a delta does: a
    /// snapshot after a reconnect must not drop the NAT or sessions it stands for.
    fn finish(self, old: &View, revision: i64) -> View {
        let mut fresh = self.view;
        for (kind, name) in self.unreadable {
            if let Some(r) = old.get(kind, &name) {
                fresh.upsert(r);
            }
        }
        fresh.revision = revision;
        fresh
    }
}

struct Client {
    cfg: SyncConfig,
    view: SharedView,
    state: watch::Sender<SyncState>,
    status: watch::Receiver<Option<proto::NodeStatus>>,
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum StreamError {
    #[error("{0}")]
    Connect(#[from] tern::client::ClientError),
    #[error("controller refused the stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("no message from the controller for {0:?}")]
    Silent(Duration),
    #[error("the controller closed the stream")]
    Closed,
    #[error("protocol: {0}")]
    Protocol(String),
}

fn jitter(d: Duration) -> Duration {
    // Full jitter between d/2 and d, so reconnect storms spread out.
    let f: f64 = rand::rng().random_range(0.5..=1.0);
    d.mul_f64(f)
}

fn decode(item: &proto::Item) -> Result<Resource, String> {
    let mut r = Resource::from_json_bytes(&item.value).map_err(|e| e.to_string())?;
    if r.kind().as_str() != item.kind || r.name() != item.name {
        return Err(format!(
            "item {}/{} holds {}/{}",
            item.kind,
            item.name,
            r.kind(),
            r.name()
        ));
    }
    r.metadata_mut().resource_version = item.revision.to_string();
    Ok(r)
}

impl Client {
    async fn run(mut self) {
        let mut backoff = self.cfg.backoff_min;
        let mut idx = 0usize;
        loop {
            let n = self.cfg.controllers.len().max(1);
            let Some(addr) = self.cfg.controllers.get(idx % n).cloned() else {
                tracing::error!("no controller address configured; not syncing");
                return;
            };
            let span = info_span!("sync", controller = %addr, node = %self.cfg.node);
            let started = Instant::now();
            let result = self.stream(&addr).instrument(span.clone()).await;
            self.state.send_modify(|s| {
                s.connected = false;
                s.controller.clear();
            });
            let _guard = span.enter();
            match &result {
                Err(StreamError::Status(s))
                    if s.code() == tonic::Code::PermissionDenied
                        || s.code() == tonic::Code::Unauthenticated =>
                {
                    warn!(code = ?s.code(), message = s.message(), "controller refused us");
                }
                Err(e) => warn!(error = %e, "sync stream ended"),
                Ok(()) => {}
            }
            // A stream that lived a while resets the backoff.
            if started.elapsed() > Duration::from_secs(30) {
                backoff = self.cfg.backoff_min;
            }
            idx += 1; // fail over to the next controller
            let wait = jitter(backoff);
            debug!(?wait, "reconnecting");
            drop(_guard);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }

    async fn stream(&mut self, addr: &str) -> Result<(), StreamError> {
        let channel = self.cfg.tls.connect(addr).await?;
        let mut client =
            SyncServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<proto::AgentMessage>(16);
        let last_revision = {
            let st = self.state.borrow();
            if st.synced { st.revision } else { 0 }
        };
        let hello = proto::AgentMessage {
            msg: Some(agent_message::Msg::Hello(proto::Hello {
                node_name: self.cfg.node.clone(),
                agent_version: self.cfg.agent_version.clone(),
                last_revision,
                registration: Some(self.cfg.registration.clone()),
            })),
        };
        tx.send(hello)
            .await
            .map_err(|_| StreamError::Protocol("outbound closed".into()))?;
        let mut inbound = client.sync(ReceiverStream::new(rx)).await?.into_inner();
        info!(last_revision, "stream open");

        let mut pending: Option<Pending> = None;
        let mut last_report: Option<Instant> = None;
        let mut report_due = false;
        let mut report_timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        self.status.mark_changed(); // report once per new stream
        let mut silent_after = tokio::time::Instant::now() + self.cfg.silence_timeout;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(silent_after) => {
                    return Err(StreamError::Silent(self.cfg.silence_timeout));
                }
                m = inbound.message() => {
                    // Only what the controller sends counts against silence.
                    silent_after = tokio::time::Instant::now() + self.cfg.silence_timeout;
                    let m = m?;
                    let Some(m) = m else { return Err(StreamError::Closed) };
                    self.handle(m, &mut pending, &tx).await?;
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        // The apply loop is gone: nothing more to report.
                        return Ok(());
                    }
                    report_due = true;
                    let wait = last_report
                        .map(|t| self.cfg.status_interval.saturating_sub(t.elapsed()))
                        .unwrap_or_default();
                    report_timer.as_mut().reset(tokio::time::Instant::now() + wait);
                }
                () = &mut report_timer, if report_due => {
                    report_due = false;
                    last_report = Some(Instant::now());
                    report_timer.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(3600));
                    let status = self.status.borrow().clone();
                    if let Some(status) = status {
                        let m = proto::AgentMessage {
                            msg: Some(agent_message::Msg::Status(proto::StatusReport { status: Some(status) })),
                        };
                        self.send(&tx, m).await?;
                    }
                }
            }
        }
    }

    async fn handle(
        &mut self,
        m: proto::ControllerMessage,
        pending: &mut Option<Pending>,
        tx: &mpsc::Sender<proto::AgentMessage>,
    ) -> Result<(), StreamError> {
        let Some(m) = m.msg else { return Ok(()) };
        match m {
            controller_message::Msg::Snapshot(chunk) => {
                if chunk.first {
                    *pending = Some(Pending::default());
                }
                let Some(p) = pending.as_mut() else {
                    return Err(StreamError::Protocol(
                        "snapshot chunk without a first chunk".into(),
                    ));
                };
                let mut bad = 0;
                for item in &chunk.items {
                    match decode(item) {
                        Ok(r) => p.view.upsert(r),
                        Err(e) => {
                            bad += 1;
                            warn!(kind = %item.kind, name = %item.name, error = %e, "cannot read an item of the view; keeping the previous version");
                            if let Ok(kind) = item.kind.parse::<Kind>() {
                                p.unreadable.push((kind, item.name.clone()));
                            }
                        }
                    }
                }
                p.view.revision = chunk.revision;
                if bad > 0 {
                    self.state.send_modify(|s| s.bad_items += bad);
                }
            }
            controller_message::Msg::InSync(s) => {
                if let Some(p) = pending.take() {
                    let mut view = self.view.write();
                    let fresh = p.finish(&view, s.revision);
                    let n = fresh.len();
                    *view = fresh;
                    drop(view);
                    info!(revision = s.revision, resources = n, controller = %s.controller, "in sync (snapshot)");
                } else {
                    info!(revision = s.revision, controller = %s.controller, "in sync (resumed)");
                }
                self.state.send_modify(|st| {
                    st.revision = s.revision;
                    st.synced = true;
                    st.connected = true;
                    st.controller = s.controller.clone();
                    st.generation += 1;
                });
            }
            controller_message::Msg::Delta(d) => {
                if pending.is_some() {
                    return Err(StreamError::Protocol("delta during a snapshot".into()));
                }
                let mut bad = 0;
                {
                    let mut view = self.view.write();
                    for item in &d.items {
                        if item.value.is_empty() {
                            if let Ok(kind) = item.kind.parse::<Kind>() {
                                view.remove(kind, &item.name);
                            }
                            continue;
                        }
                        match decode(item) {
                            Ok(r) => view.upsert(r),
                            Err(e) => {
                                bad += 1;
                                warn!(kind = %item.kind, name = %item.name, error = %e, "cannot read an item of the view; keeping the previous version");
                            }
                        }
                    }
                    view.revision = d.revision;
                }
                let changed = !d.items.is_empty();
                self.state.send_modify(|st| {
                    st.revision = d.revision;
                    st.bad_items += bad;
                    if changed {
                        st.generation += 1;
                    }
                });
            }
            controller_message::Msg::Ping(p) => {
                let pong = proto::AgentMessage {
                    msg: Some(agent_message::Msg::Pong(proto::Pong { nonce: p.nonce })),
                };
                self.send(tx, pong).await?;
            }
        }
        Ok(())
    }

    /// Send to the controller. A controller that keeps the connection but stops reading
    /// would block this forever (and with it the silence timer): after the silence
    /// timeout the stream is given up, as for a silent controller.
    async fn send(
        &self,
        tx: &mpsc::Sender<proto::AgentMessage>,
        m: proto::AgentMessage,
    ) -> Result<(), StreamError> {
        match tokio::time::timeout(self.cfg.silence_timeout, tx.send(m)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(StreamError::Closed),
            Err(_) => Err(StreamError::Silent(self.cfg.silence_timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: &str, name: &str, json: &str) -> proto::Item {
        proto::Item {
            kind: kind.into(),
            name: name.into(),
            value: json.as_bytes().to_vec().into(),
            revision: 7,
        }
    }

    #[test]
    fn an_unreadable_snapshot_item_keeps_the_version_the_agent_had() {
        let pool = |name: &str, cidr: &str, extra: &str| {
            format!(
                r#"{{"apiVersion":"tern.dev/v1","kind":"IPPool","metadata":{{"name":"{name}"}},"spec":{{"cidr":"{cidr}","natOutgoing":true{extra}}}}}"#
            )
        };
        let old = View::from_resources([
            decode(&item("IPPool", "a", &pool("a", "10.1.0.0/16", ""))).expect("readable"),
            decode(&item("IPPool", "gone", &pool("gone", "10.3.0.0/16", ""))).expect("readable"),
        ]);
        let mut p = Pending::default();
        for it in [
            // A newer controller added a field this agent does not know.
            item(
                "IPPool",
                "a",
                &pool("a", "10.1.0.0/16", r#","futureField":1"#),
            ),
            item("IPPool", "b", &pool("b", "10.2.0.0/16", "")),
            item(
                "IPPool",
                "c",
                &pool("c", "10.4.0.0/16", r#","futureField":1"#),
            ),
        ] {
            match decode(&it) {
                Ok(r) => p.view.upsert(r),
                Err(_) => p.unreadable.push((Kind::IPPool, it.name.clone())),
            }
        }
        assert_eq!(p.unreadable.len(), 2);
        let v = p.finish(&old, 9);
        assert_eq!(v.revision, 9);
        assert_eq!(
            v.pools.keys().map(String::as_str).collect::<Vec<_>>(),
            ["a", "b"],
            "a kept from before, b new, c unknown before and unreadable now, gone deleted"
        );
    }
}
