//! Assembling and running a controller replica.
//!
//! ```text
//! start(config)
//!   ├─ validate config, load TLS (errors here: nothing bound yet)
//!   ├─ etcd client (lazy), Store
//!   ├─ bind gRPC listener (and metrics listener)
//!   ├─ spawn: bootstrap (default BGPConfiguration / pool, retried until etcd answers)
//!   ├─ spawn: StatusHub (lease keeper, status flusher), TLS reloader
//!   └─ spawn: tonic server (AuthLayer ─► Resource, Node, Ipam, Sync, health, reflection)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern::model::{BGPConfigurationSpec, IPPoolSpec, Kind, Object, Resource};
use tern::proto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::nodes::NodeApi;
use crate::api::resources::ResourceApi;
use crate::cache::Cache;
use crate::config::{ConfigError, ControllerConfig};
use crate::metrics::Metrics;
use crate::status::StatusHub;
use crate::store::{ConnectError, Store, StoreError};
use crate::sync::SyncApi;
use crate::tls::{AuthLayer, ReloadingTls, TlsError};

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Etcd(#[from] ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Largest gRPC message accepted from clients.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A running controller replica.
#[derive(Debug)]
pub struct Controller {
    addr: SocketAddr,
    id: String,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Controller {
    /// The address the gRPC server listens on (with the real port when 0 was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This replica's metrics (also served on `--metrics-listen`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stop serving: close the listener, end streams, stop background tasks.
    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(mut s) = self.server.take() {
            // Streams that do not end by themselves are cut after a grace period.
            if tokio::time::timeout(Duration::from_secs(5), &mut s)
                .await
                .is_err()
            {
                warn!("server did not stop within 5s; aborting it");
                s.abort();
            }
        }
    }

    /// Wait until the server stops (it runs until shutdown or a fatal error).
    pub async fn wait(mut self) -> Result<(), tonic::transport::Error> {
        if let Some(s) = self.server.take() {
            match s.await {
                Ok(r) => r?,
                Err(e) => warn!(error = %e, "server task failed"),
            }
        }
        Ok(())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}

/// Start a controller replica. Returns once the listener is bound.
pub async fn start(config: ControllerConfig) -> Result<Controller, StartError> {
    config.validate()?;
    let tls = match &config.tls {
        Some(paths) => Some(ReloadingTls::load(paths.clone())?),
        None => None,
    };
    let metrics = Metrics::new();
    let store = Store::new(
        &config.etcd,
        config.prefix.clone(),
        &config.store,
        &metrics.store,
    )?;
    store.check_credentials().await?;

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    if tls.is_none() {
        warn!(%addr, "serving WITHOUT TLS (--insecure): anyone who can reach this address can change NAT and BGP intent");
    }

    let mut tasks = Vec::new();
    let cancel = CancellationToken::new();
    tasks.push(store.spawn_prober());
    if let Some(maddr) = config.metrics_listen {
        let t = crate::metrics::serve(maddr, metrics.clone())
            .await
            .map_err(|source| StartError::Bind {
                addr: maddr,
                source,
            })?;
        tasks.push(t);
    }
    let cache = Cache::with_bounds(crate::cache::Bounds {
        events: config.sync.history_events,
        bytes: config.sync.history_bytes,
    });
    tasks.push(tokio::spawn(cache.clone().run(
        store.clone(),
        metrics.clone(),
        config.controller_id.clone(),
    )));
    let status = StatusHub::new(
        store.clone(),
        config.controller_id.clone(),
        config.status_writes_per_sec,
        config.status_heartbeat,
        metrics.clone(),
    );
    tasks.extend(status.spawn());
    if let Some(t) = &tls {
        tasks.push(t.spawn_reloader(config.tls_reload_interval));
    }
    tasks.push(tokio::spawn(bootstrap(
        store.clone(),
        config.default_ipv4_pool.map(|c| c.to_string()),
    )));
    // ---- IPAM (controller/src/ipam.rs): the block reconcile loop of this replica. ----
    let ipam = crate::ipam::Ipam::new(store.clone());
    tasks.push(crate::ipam::spawn_reconciler(
        ipam.clone(),
        cache.clone(),
        config.ipam.clone(),
    ));
    // ---- end IPAM ----

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::resource_service_server::ResourceServiceServer<ResourceApi>>()
        .await;
    health_reporter
        .set_serving::<proto::node_service_server::NodeServiceServer<NodeApi>>()
        .await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ConfigError::Invalid(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ConfigError::Invalid(format!("reflection: {e}")))?;

    let watches =
        crate::api::watch::Watches::new(cache.clone(), config.watch.clone(), metrics.clone());
    let resources = proto::resource_service_server::ResourceServiceServer::new(
        ResourceApi::new(store.clone())
            .with_watches(watches)
            .with_shutdown(cancel.clone()),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let nodes = proto::node_service_server::NodeServiceServer::new(NodeApi::new(
        store.clone(),
        status.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);

    let sync = SyncApi::new(
        cache.clone(),
        store.clone(),
        status.clone(),
        config.sync.clone(),
        config.controller_id.clone(),
        metrics.clone(),
        cancel.clone(),
    );
    let sync = crate::sync::service::SyncServer::new(sync, MAX_MESSAGE_BYTES);
    health_reporter
        .set_serving::<crate::sync::service::SyncServer>()
        .await;
    // ---- IPAM (controller/src/api/ipam.rs): IpamService. ----
    let ipam = proto::ipam_service_server::IpamServiceServer::new(crate::api::ipam::IpamApi::new(
        ipam,
        config.ipam.clone(),
    ))
    .max_decoding_message_size(MAX_MESSAGE_BYTES);
    health_reporter
        .set_serving::<proto::ipam_service_server::IpamServiceServer<crate::api::ipam::IpamApi>>()
        .await;
    // ---- end IPAM ----

    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(config.connections.keepalive_interval))
        .http2_keepalive_timeout(Some(config.connections.keepalive_timeout))
        .tcp_nodelay(true)
        .layer(AuthLayer::new(tls.clone(), metrics.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(resources)
        .add_service(nodes)
        .add_service(sync)
        .add_service(ipam);

    let (tx, rx) = oneshot::channel::<()>();
    let shutdown = async move {
        let _ = rx.await;
    };
    let server = match tls {
        Some(tls) => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::listener::tls_incoming(
                listener,
                tls,
                config.connections.clone(),
                metrics.clone(),
                cancel.clone(),
            ),
            shutdown,
        )),
        None => tokio::spawn(router.serve_with_incoming_shutdown(
            crate::listener::tcp_incoming(
                listener,
                config.connections.clone(),
                metrics.clone(),
                cancel.clone(),
            ),
            shutdown,
        )),
    };
    info!(%addr, id = %config.controller_id, prefix = %config.prefix, "controller serving");
    Ok(Controller {
        addr,
        id: config.controller_id,
        metrics,
        cancel,
        shutdown: Some(tx),
        server: Some(server),
        tasks,
    })
}

/// Create the default BGPConfiguration, and the default IPv4 pool when asked and no
/// pool exists. Safe with several replicas (create-if-absent); retried until etcd
/// answers.
async fn bootstrap(store: Store, default_pool: Option<String>) {
    let api = ResourceApi::new(store.clone());
    let mut backoff =
        tern::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match bootstrap_once(&store, &api, default_pool.as_deref()).await {
            Ok(()) => return,
            Err(e) => {
                warn!(error = %e, "bootstrap failed; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn bootstrap_once(
    store: &Store,
    api: &ResourceApi,
    default_pool: Option<&str>,
) -> Result<(), StoreError> {
    if store
        .get_opt(Kind::BGPConfiguration, "default")
        .await?
        .is_none()
    {
        let mut r =
            Resource::BGPConfiguration(Object::new("default", BGPConfigurationSpec::default()));
        r.normalize();
        match api.create_resource(r).await {
            Ok(_) => info!("created the default BGPConfiguration"),
            Err(StoreError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(cidr) = default_pool {
        let (pools, _) = store.list(Some(Kind::IPPool)).await?;
        if pools.is_empty() {
            let spec = IPPoolSpec {
                nat_outgoing: true,
                ..IPPoolSpec::new(cidr.parse().map_err(|e: String| {
                    StoreError::Invalid(tern::model::FieldError::new("defaultIPv4Pool", e))
                })?)
            };
            let mut r = Resource::IPPool(Object::new("default-ipv4-ippool", spec));
            r.normalize();
            match api.create_resource(r).await {
                Ok(_) => info!(%cidr, "created the default IPv4 pool default-ipv4-ippool"),
                Err(StoreError::AlreadyExists { .. }) | Err(StoreError::Invalid(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Used by tests: the shared Arc type of the status hub.
pub type SharedStatus = Arc<StatusHub>;
