//! Transport security of the controller: rustls with client certificates, reloaded
//! from disk when the files change, and the layer that turns every request into an
//! authenticated [`Identity`] and applies the method-level policy of [`crate::authz`].
//!
//! ```text
//! TcpListener ─► accept task ─► TLS handshake (crate::listener: bounded in time and number)
//!                                    │ (client chain checked later, per request)
//!                                    ▼
//!                  tonic Server ─► AuthLayer: verify chain against the current CA,
//!                                  Identity from the URI SAN, authorize_method()
//!                                    ▼
//!                                  handlers (finer checks in authz)
//! ```
//!
//! The handshake accepts any client certificate whose key signs the handshake and
//! leaves the chain check to [`AuthLayer`], so that a missing, foreign or expired
//! certificate gets a gRPC `UNAUTHENTICATED` with a reason instead of a TLS alert.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tern::pki::{Identity, read_certs, read_key};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tracing::{info, warn};

use crate::authz;
use crate::listener::{CallGuard, ConnInfo};
use crate::metrics::Metrics;

/// Where the controller's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The controller's certificate (chain) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Errors loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pki(#[from] tern::pki::PkiError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA: {0}")]
    Verifier(String),
}

struct Loaded {
    config: Arc<rustls::ServerConfig>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The file contents this was built from, to notice changes.
    source: Vec<Vec<u8>>,
}

/// Server TLS that follows its files: a changed certificate, key or CA is picked up
/// within the reload interval, for new connections; established streams continue.
pub struct ReloadingTls {
    paths: TlsPaths,
    current: ArcSwap<Loaded>,
    /// The last file contents that failed to load (warned about once).
    rejected: parking_lot::Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("paths", &self.paths)
            .finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_sources(paths: &TlsPaths) -> Vec<Vec<u8>> {
    [&paths.ca, &paths.cert, &paths.key]
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_default())
        .collect()
}

fn load(paths: &TlsPaths) -> Result<Loaded, TlsError> {
    let source = read_sources(paths);
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&paths.ca)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::Verifier(format!("{}: {e}", paths.ca.display())))?;
    }
    let webpki = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let verifier: Arc<dyn ClientCertVerifier> = webpki;
    let deferred = Arc::new(DeferredClientVerifier {
        inner: verifier.clone(),
    });
    let certs = read_certs(&paths.cert)?;
    let key = read_key(&paths.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(deferred)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded {
        config: Arc::new(config),
        verifier,
        source,
    })
}

impl ReloadingTls {
    /// Load the files now; an error here stops the controller before it binds.
    pub fn load(paths: TlsPaths) -> Result<Arc<ReloadingTls>, TlsError> {
        let loaded = load(&paths)?;
        Ok(Arc::new(ReloadingTls {
            paths,
            current: ArcSwap::from_pointee(loaded),
            rejected: parking_lot::Mutex::new(Vec::new()),
        }))
    }

    /// Reload if the files changed. Returns true when new material was installed.
    /// Bad new material is logged and ignored: the last good configuration stays.
    pub fn reload_if_changed(&self) -> bool {
        let source = read_sources(&self.paths);
        if source == self.current.load().source || *self.rejected.lock() == source {
            return false;
        }
        match load(&self.paths) {
            Ok(l) => {
                self.current.store(Arc::new(l));
                info!(cert = %self.paths.cert.display(), "TLS certificate, key or CA reloaded");
                true
            }
            Err(e) => {
                warn!(error = %e, "new TLS files are not usable; keeping the previous ones");
                *self.rejected.lock() = source;
                false
            }
        }
    }

    /// Poll the files every `interval` until the returned task is aborted.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.reload_if_changed();
            }
        })
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.load().config.clone())
    }

    /// Check a client chain against the current CA and read its identity.
    pub fn authenticate(&self, certs: &[CertificateDer<'static>]) -> Result<Identity, String> {
        let Some((end, intermediates)) = certs.split_first() else {
            return Err("no client certificate".into());
        };
        self.current
            .load()
            .verifier
            .verify_client_cert(end, intermediates, UnixTime::now())
            .map_err(|e| format!("client certificate rejected: {e}"))?;
        Identity::from_der(end)
    }
}

/// Handshake-time verifier: proves the client holds the key of the certificate it
/// sent, and defers the chain check to [`ReloadingTls::authenticate`].
#[derive(Debug)]
struct DeferredClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// True for loopback listen addresses (plaintext is allowed there with `--insecure`).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// The tower layer that authenticates and authorizes every request.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    /// None: plaintext `--insecure` mode, where every caller is [`Identity::Insecure`].
    tls: Option<Arc<ReloadingTls>>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(tls: Option<Arc<ReloadingTls>>, metrics: Arc<Metrics>) -> Self {
        AuthLayer { tls, metrics }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            tls: self.tls.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    tls: Option<Arc<ReloadingTls>>,
    metrics: Arc<Metrics>,
}

/// The gRPC status code of a response whose status is in its headers (errors are
/// sent trailers-only); "0" (OK) otherwise.
fn header_code<B>(resp: &http::Response<B>) -> String {
    resp.headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0")
        .to_string()
}

/// A response body that keeps its call open (see [`CallGuard`]) until it is done.
struct Tracked {
    inner: tonic::body::Body,
    _call: CallGuard,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn tracked(
    resp: http::Response<tonic::body::Body>,
    call: Option<CallGuard>,
) -> http::Response<tonic::body::Body> {
    match call {
        Some(call) => resp.map(|inner| tonic::body::Body::new(Tracked { inner, _call: call })),
        None => resp,
    }
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        // The connection counts as busy (not idle) until the response is done.
        let ext = req.extensions();
        let call = ext
            .get::<ConnInfo<TlsConnectInfo<TcpConnectInfo>>>()
            .map(|i| i.state.call())
            .or_else(|| {
                ext.get::<ConnInfo<TcpConnectInfo>>()
                    .map(|i| i.state.call())
            });
        let identity: Result<Option<Identity>, String> = match &self.tls {
            None => Ok(Some(Identity::Insecure)),
            Some(tls) => match req
                .extensions()
                .get::<ConnInfo<TlsConnectInfo<TcpConnectInfo>>>()
                .and_then(|i| i.transport.peer_certs())
            {
                Some(certs) if !certs.is_empty() => tls.authenticate(&certs).map(Some),
                _ => Ok(None),
            },
        };
        let decision = match identity {
            Err(reason) => {
                if authz::classify(&path) == authz::Access::Health {
                    Ok(None)
                } else {
                    warn!(rpc = %path, %reason, "denied: unauthenticated");
                    Err(tonic::Status::unauthenticated(reason))
                }
            }
            Ok(id) => authz::authorize_method(id.as_ref(), &path).map(|_| id),
        };
        match decision {
            Ok(id) => {
                if let Some(id) = id {
                    req.extensions_mut().insert(id);
                }
                // The standard tower dance: call the clone that was made ready.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let metrics = self.metrics.clone();
                Box::pin(async move {
                    let resp = inner.call(req).await;
                    if let Ok(r) = &resp {
                        metrics.request(authz::method_label(&path), &header_code(r));
                    }
                    resp.map(|r| tracked(r, call))
                })
            }
            Err(status) => {
                let resp = status.into_http();
                self.metrics
                    .request(authz::method_label(&path), &header_code(&resp));
                Box::pin(async move { Ok(tracked(resp, call)) })
            }
        }
    }
}
