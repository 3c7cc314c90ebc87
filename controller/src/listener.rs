//! The gRPC listener: accepting connections, and the bounds that keep clients which
//! never authenticate, never speak or never leave from holding the replica's file
//! descriptors.
//!
//! ```text
//! TcpListener ─► accept loop ─► Gate::admit (at most max_unauthenticated; a new
//!                    │           connection beyond that closes the oldest of them)
//!                    ▼
//!          handshake task: TLS handshake within handshake_timeout
//!                    │  client chain verified now ─► the connection leaves the gate
//!                    ▼  (no or a bad certificate: it stays in the gate while open)
//!          Guarded<TlsStream> ─► tonic: the HTTP/2 preface within preface_timeout,
//!                                then closed after idle_timeout without an open call
//! ```
//!
//! The certificate check after the handshake only decides whether the connection
//! counts as authenticated; every call is still authenticated by [`crate::tls::AuthLayer`]
//! against the CA of the moment. The [`ConnState`] of a connection travels in its
//! connect info, so the layer can tell the connection when a call starts and ends.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::config::ConnectionLimits;
use crate::metrics::Metrics;
use crate::tls::ReloadingTls;

/// The client's HTTP/2 connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`) is this long.
const PREFACE_LEN: u64 = 24;

/// The live state of one connection, shared with the requests it carries.
#[derive(Debug)]
pub struct ConnState {
    opened: Instant,
    /// Calls in progress on the connection.
    active: AtomicUsize,
    /// When the last call ended (ms after `opened`).
    last_call_end: AtomicU64,
}

impl ConnState {
    fn new() -> Arc<ConnState> {
        Arc::new(ConnState {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            last_call_end: AtomicU64::new(0),
        })
    }

    /// A call starts; the connection is busy until the returned guard is dropped.
    pub fn call(self: &Arc<Self>) -> CallGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// When the connection becomes idle long enough to close: None while a call is open.
    fn idle_deadline(&self, idle: Duration) -> Option<Instant> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.last_call_end.load(Ordering::SeqCst));
        Some(self.opened + since + idle)
    }
}

/// Marks a call open for as long as it lives (it travels with the response body).
#[derive(Debug)]
pub struct CallGuard(Arc<ConnState>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now = self.0.opened.elapsed().as_millis() as u64;
        self.0.last_call_end.fetch_max(now, Ordering::SeqCst);
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The connect info of a guarded connection: the transport's own, and the state.
#[derive(Debug, Clone)]
pub struct ConnInfo<T> {
    pub transport: T,
    pub state: Arc<ConnState>,
}

/// Why the listener closed a connection (the `reason` of
/// `tern_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    HandshakeTimeout,
    HandshakeFailed,
    /// Closed to make room for a newer unauthenticated connection.
    Evicted,
    PrefaceTimeout,
    Idle,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::HandshakeFailed => "handshake_failed",
            CloseReason::Evicted => "evicted",
            CloseReason::PrefaceTimeout => "preface_timeout",
            CloseReason::Idle => "idle",
        }
    }
}

/// The unauthenticated connections: at most `max`, the oldest closed first.
#[derive(Debug)]
struct Gate {
    max: usize,
    inner: parking_lot::Mutex<GateInner>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct GateInner {
    next: u64,
    /// Admission order is age order.
    open: BTreeMap<u64, CancellationToken>,
}

/// A connection's place in the gate; leaving the gate (drop) frees it.
#[derive(Debug)]
struct Admission {
    gate: Arc<Gate>,
    id: u64,
    evicted: CancellationToken,
}

impl Gate {
    fn admit(self: &Arc<Self>) -> Admission {
        let mut g = self.inner.lock();
        while g.open.len() >= self.max {
            let Some((_, oldest)) = g.open.pop_first() else {
                break;
            };
            oldest.cancel();
        }
        let id = g.next;
        g.next += 1;
        let evicted = CancellationToken::new();
        g.open.insert(id, evicted.clone());
        self.metrics
            .connections_unauthenticated
            .set(g.open.len() as i64);
        Admission {
            gate: self.clone(),
            id,
            evicted,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut g = self.gate.inner.lock();
        g.open.remove(&self.id);
        self.gate
            .metrics
            .connections_unauthenticated
            .set(g.open.len() as i64);
    }
}

/// A connection with its bounds: the HTTP/2 preface deadline, the idle deadline and,
/// while unauthenticated, its place in the gate. A bound that passes fails the next
/// read, and the HTTP/2 server closes the connection.
pub struct Guarded<S> {
    inner: S,
    state: Arc<ConnState>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    /// Bytes read so far, up to the preface length.
    read: u64,
    preface: Option<Pin<Box<Sleep>>>,
    idle: Pin<Box<Sleep>>,
    /// Present while the connection is unauthenticated.
    admission: Option<(Admission, Pin<Box<WaitForCancellationFutureOwned>>)>,
    closed: bool,
}

impl<S> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("state", &self.state)
            .field("unauthenticated", &self.admission.is_some())
            .finish()
    }
}

impl<S> Guarded<S> {
    fn new(
        inner: S,
        limits: &ConnectionLimits,
        metrics: Arc<Metrics>,
        admission: Option<Admission>,
    ) -> Self {
        let now = Instant::now();
        Guarded {
            inner,
            state: ConnState::new(),
            limits: limits.clone(),
            metrics,
            read: 0,
            preface: Some(Box::pin(tokio::time::sleep_until(
                now + limits.preface_timeout,
            ))),
            idle: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            admission: admission.map(|a| {
                let wait = Box::pin(a.evicted.clone().cancelled_owned());
                (a, wait)
            }),
            closed: false,
        }
    }

    fn close(&mut self, reason: CloseReason) -> io::Error {
        if !self.closed {
            self.closed = true;
            self.metrics.connection_closed(reason);
            debug!(reason = reason.as_str(), "closing a connection");
        }
        // Leave the gate at once: the socket may take a moment to be dropped.
        self.admission = None;
        let kind = match reason {
            CloseReason::Evicted => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::TimedOut,
        };
        io::Error::new(kind, reason.as_str())
    }

    /// The first bound that has passed, if any. Polling registers the deadlines with
    /// the task, so a connection nobody writes to still wakes up to be closed.
    fn check(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if self.closed {
            return Some(io::Error::new(
                io::ErrorKind::NotConnected,
                "connection closed",
            ));
        }
        if let Some((_, evicted)) = &mut self.admission
            && evicted.as_mut().poll(cx).is_ready()
        {
            return Some(self.close(CloseReason::Evicted));
        }
        if let Some(p) = &mut self.preface
            && p.as_mut().poll(cx).is_ready()
        {
            return Some(self.close(CloseReason::PrefaceTimeout));
        }
        while self.idle.as_mut().poll(cx).is_ready() {
            let next = match self.state.idle_deadline(self.limits.idle_timeout) {
                None => Instant::now() + self.limits.idle_timeout,
                Some(at) if at > Instant::now() => at,
                Some(_) => return Some(self.close(CloseReason::Idle)),
            };
            self.idle.as_mut().reset(next);
        }
        None
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.preface.is_some() && matches!(r, Poll::Ready(Ok(()))) {
            this.read += (buf.filled().len() - before) as u64;
            if this.read >= PREFACE_LEN {
                this.preface = None;
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for Guarded<S> {
    type ConnectInfo = ConnInfo<S::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnInfo {
            transport: self.inner.connect_info(),
            state: self.state.clone(),
        }
    }
}

type Incoming<S> = tokio_stream::wrappers::ReceiverStream<Result<Guarded<S>, io::Error>>;

/// Accept connections until `cancel`, hand each to `prepare` (on a task of its own, so
/// a slow client never blocks the loop), and yield what it returns.
fn accept_loop<S, F, Fut>(
    listener: TcpListener,
    cancel: CancellationToken,
    prepare: F,
) -> Incoming<S>
where
    S: Send + 'static,
    F: Fn(TcpStream, std::net::SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = Option<Guarded<S>>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                // Dropping the listener frees the port.
                () = cancel.cancelled() => break,
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let ready = prepare(tcp, peer);
            let out = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = ready.await {
                    let _ = out.send(Ok(conn)).await;
                }
            });
            if tx.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The TLS listener: handshakes bounded in time and in number, connections bounded by
/// [`Guarded`].
pub fn tls_incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Incoming<TlsStream<TcpStream>> {
    let gate = Arc::new(Gate {
        max: limits.max_unauthenticated.max(1),
        inner: Default::default(),
        metrics: metrics.clone(),
    });
    accept_loop(listener, cancel, move |tcp, peer| {
        let admission = gate.admit();
        let acceptor = tls.acceptor();
        let tls = tls.clone();
        let limits = limits.clone();
        let metrics = metrics.clone();
        async move {
            let evicted = admission.evicted.clone();
            let handshake = tokio::select! {
                r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)) => r,
                () = evicted.cancelled() => {
                    metrics.connection_closed(CloseReason::Evicted);
                    debug!(%peer, "closed during the TLS handshake: too many unauthenticated connections");
                    return None;
                }
            };
            let stream = match handshake {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.connection_closed(CloseReason::HandshakeFailed);
                    debug!(%peer, error = %e, "TLS handshake failed");
                    return None;
                }
                Err(_) => {
                    metrics.connection_closed(CloseReason::HandshakeTimeout);
                    debug!(%peer, "TLS handshake timed out");
                    return None;
                }
            };
            let verified = stream
                .get_ref()
                .1
                .peer_certificates()
                .is_some_and(|certs| tls.authenticate(certs).is_ok());
            let admission = (!verified).then_some(admission);
            Some(Guarded::new(stream, &limits, metrics, admission))
        }
    })
}

/// The plaintext listener of `--insecure` mode (the same preface and idle bounds).
pub fn tcp_incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> Incoming<TcpStream> {
    accept_loop(listener, cancel, move |tcp, _| {
        let conn = Guarded::new(tcp, &limits, metrics.clone(), None);
        async move { Some(conn) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            preface_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            ..ConnectionLimits::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_never_sends_the_preface_is_closed() {
        let (client, server) = tokio::io::duplex(64);
        let mut conn = Guarded::new(server, &limits(), Metrics::new(), None);
        let _client = client;
        let mut buf = [0u8; 8];
        let err = conn.read(&mut buf).await.expect_err("closed");
        assert_eq!(err.to_string(), "preface_timeout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_without_open_calls() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut conn = Guarded::new(server, &limits(), Metrics::new(), None);
        client.write_all(&[0u8; 24]).await.expect("write");
        let mut buf = [0u8; 24];
        conn.read_exact(&mut buf)
            .await
            .expect("the preface arrives");
        let call = conn.state.call();
        // With a call open, the idle deadline passes without effect.
        let read = tokio::time::timeout(Duration::from_secs(600), conn.read(&mut buf)).await;
        assert!(read.is_err(), "still open while a call is");
        drop(call);
        let err = conn.read(&mut buf).await.expect_err("closed when idle");
        assert_eq!(err.to_string(), "idle");
    }

    #[tokio::test]
    async fn the_gate_closes_the_oldest_beyond_its_size() {
        let gate = Arc::new(Gate {
            max: 2,
            inner: Default::default(),
            metrics: Metrics::new(),
        });
        let a = gate.admit();
        let b = gate.admit();
        assert!(!a.evicted.is_cancelled());
        let c = gate.admit();
        assert!(a.evicted.is_cancelled(), "the oldest makes room");
        assert!(!b.evicted.is_cancelled() && !c.evicted.is_cancelled());
        drop(b);
        let d = gate.admit();
        assert!(!c.evicted.is_cancelled() && !d.evicted.is_cancelled());
        assert_eq!(gate.inner.lock().open.len(), 2);
    }
}
