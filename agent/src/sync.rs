//! The agent's end of the sync stream.
//!
//! ```text
//!  controllers[i] ──TLS──► Sync stream ──► handle(): snapshot chunks ─► pending View
//!        ▲                      │                      InSync ─► swap into the shared View
//!        │ failover,            │                      Delta  ─► apply to the shared View
//!        │ jittered backoff     │                      Ping   ─► Pong
//!        └──── stream ends ◄────┘
//!  SharedView (snapshots) + watch<SyncState> ──► the apply loop (agent.rs)
//!  watch<Option<NodeStatus>> from the apply loop ──► StatusReport (at most one per
//!                                                    status_interval, the latest)
//! ```
//!
//! The stream is opened through a [`Dial`] (TLS and gRPC; the timer tests give an
//! in-process controller), and every timer runs on tokio's clock: the reconnect backoff
//! (`tern::backoff`), the silence timeout and the pacing of status reports are tested
//! under paused time.
//!
//! The view survives reconnects (fail static): the last applied state stays on the
//! host while the controller is away, and a reconnect names the view's revision so
//! that a controller with enough history sends only the changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tern::backoff::Backoff;
use tern::client::ClientTls;
use tern::model::{Kind, Resource};
use tern::proto::{
    self, agent_message, controller_message, sync_service_client::SyncServiceClient,
};
use tern::view::View;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument as _, debug, info, info_span, warn};

/// The view shared between the sync client (the only writer) and its readers (the
/// apply loop). A reader takes a [`snapshot`](SharedView::snapshot) and computes on it
/// with no lock held; the writer changes the view in place, or a copy of it while a
/// snapshot is still in use (copy on write), so neither ever waits for the other's
/// work.
#[derive(Debug, Clone, Default)]
pub struct SharedView(Arc<RwLock<Arc<View>>>);

impl SharedView {
    /// The view as it is now; it does not change under the caller.
    pub fn snapshot(&self) -> Arc<View> {
        Arc::clone(&self.0.read())
    }

    /// Change the view (the sync client, and tests standing in for it).
    pub(crate) fn update<T>(&self, f: impl FnOnce(&mut View) -> T) -> T {
        let mut current = self.0.write();
        f(Arc::make_mut(&mut current))
    }
}

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
    let dial = Box::new(TlsDial {
        tls: cfg.tls.clone(),
    });
    spawn_with(cfg, dial)
}

/// The messages a controller sends on a stream.
type Inbound = Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::ControllerMessage, tonic::Status>> + Send>,
>;

/// The agent's messages to the controller (the Hello first).
type Outbound = ReceiverStream<proto::AgentMessage>;

/// A stream being opened.
type Dialing<'a> = Pin<Box<dyn Future<Output = Result<Inbound, StreamError>> + Send + 'a>>;

/// Opens a sync stream to one controller: `outbound` carries the agent's messages (the
/// Hello first), the answer the controller's.
trait Dial: Send + Sync + 'static {
    fn dial<'a>(&'a self, addr: &'a str, outbound: Outbound) -> Dialing<'a>;
}

/// The controller over mutual TLS and gRPC.
struct TlsDial {
    tls: ClientTls,
}

impl Dial for TlsDial {
    fn dial<'a>(&'a self, addr: &'a str, outbound: Outbound) -> Dialing<'a> {
        Box::pin(async move {
            let channel = self.tls.connect(addr).await?;
            let mut client =
                SyncServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
            let inbound = client.sync(outbound).await?.into_inner();
            Ok(Box::pin(inbound) as Inbound)
        })
    }
}

fn spawn_with(cfg: SyncConfig, dial: Box<dyn Dial>) -> (SyncHandle, tokio::task::JoinHandle<()>) {
    let view = SharedView::default();
    let (state_tx, state_rx) = watch::channel(SyncState::default());
    let (status_tx, status_rx) = watch::channel(None);
    let client = Client {
        cfg,
        dial,
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
    dial: Box<dyn Dial>,
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

/// A stream that lived this long resets the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(30);

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
        // Jittered, so that agents cut off together do not come back in step.
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
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
            if started.elapsed() > HEALTHY_STREAM {
                backoff.reset();
            }
            idx += 1; // fail over to the next controller
            let wait = backoff.next_delay();
            debug!(?wait, "reconnecting");
            drop(_guard);
            tokio::time::sleep(wait).await;
        }
    }

    async fn stream(&mut self, addr: &str) -> Result<(), StreamError> {
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
        let mut inbound = self.dial.dial(addr, ReceiverStream::new(rx)).await?;
        info!(last_revision, "stream open");

        let mut pending: Option<Pending> = None;
        let mut last_report: Option<Instant> = None;
        let mut report_due = false;
        let mut report_timer = Box::pin(tokio::time::sleep(Duration::from_secs(3600)));
        self.status.mark_changed(); // report once per new stream
        let mut silent_after = Instant::now() + self.cfg.silence_timeout;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(silent_after) => {
                    return Err(StreamError::Silent(self.cfg.silence_timeout));
                }
                m = inbound.next() => {
                    // Only what the controller sends counts against silence.
                    silent_after = Instant::now() + self.cfg.silence_timeout;
                    let Some(m) = m else { return Err(StreamError::Closed) };
                    let m = m?;
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
                    report_timer.as_mut().reset(Instant::now() + wait);
                }
                () = &mut report_timer, if report_due => {
                    report_due = false;
                    last_report = Some(Instant::now());
                    report_timer.as_mut().reset(Instant::now() + Duration::from_secs(3600));
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
                    let n = self.view.update(|view| {
                        *view = p.finish(view, s.revision);
                        view.len()
                    });
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
                self.view.update(|view| {
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
                });
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
    use tern::backoff::jitter_range;

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

    #[test]
    fn a_snapshot_does_not_change_under_its_reader() {
        let shared = SharedView::default();
        shared.update(|v| v.revision = 1);
        let before = shared.snapshot();
        shared.update(|v| v.revision = 2);
        assert_eq!(before.revision, 1, "the snapshot taken before the change");
        assert_eq!(shared.snapshot().revision, 2, "a new snapshot sees it");
        drop(before);
        // With no snapshot in use the view is changed in place.
        let at = Arc::as_ptr(&shared.snapshot());
        shared.update(|v| v.revision = 3);
        assert_eq!(Arc::as_ptr(&shared.snapshot()), at);
    }

    // ---- Timers, under tokio's paused time: an in-process controller ----

    /// One dial as the in-process controller sees it.
    struct Dialed {
        addr: String,
        at: Instant,
        /// The agent's messages (the Hello first).
        from_agent: ReceiverStream<proto::AgentMessage>,
        /// The controller's messages to the agent; dropped by the agent when it leaves.
        to_agent: mpsc::Sender<Result<proto::ControllerMessage, tonic::Status>>,
    }

    /// Hands every dial to the test; refuses the stream unless `accept`.
    struct FakeDial {
        accept: bool,
        dials: mpsc::UnboundedSender<Dialed>,
    }

    impl Dial for FakeDial {
        fn dial<'a>(&'a self, addr: &'a str, outbound: Outbound) -> Dialing<'a> {
            Box::pin(async move {
                let (tx, rx) = mpsc::channel(16);
                let _ = self.dials.send(Dialed {
                    addr: addr.to_string(),
                    at: Instant::now(),
                    from_agent: outbound,
                    to_agent: tx,
                });
                if !self.accept {
                    return Err(StreamError::Status(tonic::Status::unavailable("refused")));
                }
                Ok(Box::pin(ReceiverStream::new(rx)) as Inbound)
            })
        }
    }

    fn start(
        controllers: &[&str],
        accept: bool,
    ) -> (
        SyncHandle,
        tokio::task::JoinHandle<()>,
        mpsc::UnboundedReceiver<Dialed>,
    ) {
        let cfg = SyncConfig::new(
            "node-a".into(),
            controllers.iter().map(|c| c.to_string()).collect(),
            ClientTls::default(),
        );
        let (dials_tx, dials) = mpsc::unbounded_channel();
        let (handle, task) = spawn_with(
            cfg,
            Box::new(FakeDial {
                accept,
                dials: dials_tx,
            }),
        );
        (handle, task, dials)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn msg(m: controller_message::Msg) -> Result<proto::ControllerMessage, tonic::Status> {
        Ok(proto::ControllerMessage { msg: Some(m) })
    }

    async fn next_from_agent(d: &mut Dialed) -> agent_message::Msg {
        d.from_agent
            .next()
            .await
            .and_then(|m| m.msg)
            .expect("the agent sends a message")
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_fail_over_and_back_off() {
        let (_h, task, mut dials) = start(&["a:1", "b:1"], false);
        let mut seen = Vec::new();
        for _ in 0..9 {
            seen.push(dials.recv().await.expect("dialed"));
        }
        task.abort();
        let addrs: Vec<&str> = seen.iter().map(|d| d.addr.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "a:1", "b:1", "a:1", "b:1", "a:1", "b:1", "a:1", "b:1", "a:1"
            ]
        );
        // 200 ms doubling up to the 15 s cap, each within a quarter.
        for (i, base) in [200, 400, 800, 1600, 3200, 6400, 12_800, 15_000]
            .into_iter()
            .enumerate()
        {
            let gap = seen[i + 1].at - seen[i].at;
            assert!(
                jitter_range(ms(base)).contains(&gap),
                "wait {i}: {gap:?}, not around {base} ms"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_a_stream_and_silence_ends_it() {
        let (_h, task, mut dials) = start(&["a:1"], true);
        let mut d = dials.recv().await.expect("dialed");
        assert!(matches!(
            next_from_agent(&mut d).await,
            agent_message::Msg::Hello(_)
        ));
        let to_agent = d.to_agent.clone();
        let opened = Instant::now();
        // A ping every 30 s for five minutes: each answered, the stream kept (the
        // silence timeout is 45 s).
        for nonce in 1..=10u64 {
            tokio::time::sleep(Duration::from_secs(30)).await;
            to_agent
                .send(msg(controller_message::Msg::Ping(proto::Ping { nonce })))
                .await
                .expect("the stream is open");
            match next_from_agent(&mut d).await {
                agent_message::Msg::Pong(p) => assert_eq!(p.nonce, nonce),
                other => panic!("a pong, not {other:?}"),
            }
        }
        assert!(dials.try_recv().is_err(), "the agent dialed again");
        // Then nothing: the agent leaves exactly when the silence timeout has passed.
        let last = Instant::now();
        to_agent.closed().await;
        assert_eq!(last - opened, Duration::from_secs(300));
        assert_eq!(Instant::now() - last, Duration::from_secs(45));
        // The stream lived long: the backoff starts over.
        let again = dials.recv().await.expect("dialed again");
        assert!(jitter_range(ms(200)).contains(&(again.at - last - Duration::from_secs(45))));
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn status_reports_are_paced_and_carry_the_latest() {
        let (h, task, mut dials) = start(&["a:1"], true);
        let status = |e: &str| proto::NodeStatus {
            node: "node-a".into(),
            last_error: e.into(),
            ..proto::NodeStatus::default()
        };
        h.status.send_replace(Some(status("first")));
        let mut d = dials.recv().await.expect("dialed");
        let t0 = d.at;
        // Every report with the time it left.
        let (reports_tx, mut reports) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(m) = d.from_agent.next().await {
                if let Some(agent_message::Msg::Status(r)) = m.msg {
                    let e = r.status.map(|s| s.last_error).unwrap_or_default();
                    let _ = reports_tx.send((Instant::now() - t0, e));
                }
            }
        });
        // A new stream reports at once.
        assert_eq!(reports.recv().await, Some((Duration::ZERO, "first".into())));
        // Three changes within 30 ms: one report, half a second after the last one,
        // with the latest.
        for (i, e) in ["b", "c", "d"].into_iter().enumerate() {
            tokio::time::sleep_until(t0 + ms(10 * (i as u64 + 1))).await;
            h.status.send_replace(Some(status(e)));
        }
        assert_eq!(reports.recv().await, Some((ms(500), "d".into())));
        // Nothing changes: nothing is sent.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(reports.try_recv().is_err());
        // A change long after the last report goes at once.
        let now = Instant::now() - t0;
        h.status.send_replace(Some(status("e")));
        assert_eq!(reports.recv().await, Some((now, "e".into())));
        task.abort();
        reader.abort();
    }
}
