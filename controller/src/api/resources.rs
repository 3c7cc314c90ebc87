//! `ResourceService`: create, read, update, patch, delete, apply and watch every kind.
//!
//! Every write goes the same way: parse (field paths in errors), normalize (Calico's
//! defaults), validate the object, validate the change against the stored object
//! (immutable fields), then one etcd transaction. A rejected write stores nothing.

use std::pin::Pin;

use etcd_client::{EventType, WatchOptions};
use futures::Stream;
use tern::model::protojson::{from_proto, to_proto};
use tern::model::{FieldError, Kind, Resource};
use tern::patch::{PatchType, apply_patch};
use tern::proto::{self, resource_service_server::ResourceService};
use tern::selector::Selector;
use tern::validate::{check_pool_overlap, validate, validate_update};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, debug, info, info_span};

use super::{invalid, invalid_field};
use crate::authz::{self, caller};
use crate::store::{Store, StoreError, Stored};

/// How often a write retries when another writer changed the object between our read
/// and our compare-and-swap (unconditional updates and patches only).
const MAX_CAS_RETRIES: usize = 8;

/// The resource API over a [`Store`].
#[derive(Debug, Clone)]
pub struct ResourceApi {
    store: Store,
    /// Ends Watch streams when the replica shuts down.
    shutdown: tokio_util::sync::CancellationToken,
}

fn parse_kind(field: &str, s: &str) -> Result<Kind, Status> {
    s.parse::<Kind>().map_err(|e| invalid_field(field, e))
}

fn parse_rv(field: &str, rv: &str) -> Result<Option<i64>, Status> {
    if rv.is_empty() {
        return Ok(None);
    }
    rv.parse::<i64>()
        .map(Some)
        .map_err(|_| invalid_field(field, format!("{rv:?} is not a resourceVersion")))
}

/// Parse, normalize and validate an object from a request.
fn admit(p: Option<proto::Resource>) -> Result<Resource, Status> {
    let p = p.ok_or_else(|| invalid_field("resource", "required"))?;
    let mut r = from_proto(&p).map_err(|e| invalid(&[e]))?;
    r.normalize();
    validate(&r).map_err(|e| invalid(&e.0))?;
    Ok(r)
}

fn admit_value(v: serde_json::Value) -> Result<Resource, Status> {
    let mut r = Resource::from_value(v).map_err(|e| invalid(&[e]))?;
    r.normalize();
    validate(&r).map_err(|e| invalid(&e.0))?;
    Ok(r)
}

/// Keep what the server owns from the stored object (uid, creation time).
fn carry_server_fields(new: &mut Resource, old: &Resource) {
    let (om, nm) = (old.metadata().clone(), new.metadata_mut());
    nm.uid = om.uid;
    nm.creation_timestamp = om.creation_timestamp;
}

impl ResourceApi {
    pub fn new(store: Store) -> Self {
        ResourceApi {
            store,
            shutdown: Default::default(),
        }
    }

    /// Watch streams end when `token` is cancelled.
    pub fn with_shutdown(mut self, token: tokio_util::sync::CancellationToken) -> Self {
        self.shutdown = token;
        self
    }

    /// Create-if-absent with the cross-resource checks.
    pub async fn create_resource(&self, mut r: Resource) -> Result<Resource, StoreError> {
        let meta = r.metadata_mut();
        meta.uid = uuid::Uuid::new_v4().to_string();
        meta.creation_timestamp = tern::util::now_rfc3339();
        meta.resource_version.clear();
        match &r {
            Resource::IPPool(pool) => {
                let pool = pool.clone();
                let check = move |others: &[Stored]| -> Result<(), FieldError> {
                    check_pool_overlap(&pool, others.iter().filter_map(|s| s.resource.as_ippool()))
                };
                self.store.create(&r, Some(&check)).await
            }
            _ => self.store.create(&r, None).await,
        }
    }

    /// Replace with a precondition, or with retries against the latest version.
    async fn replace_resource(
        &self,
        mut new: Resource,
        precondition: Option<i64>,
    ) -> Result<Resource, Status> {
        let (kind, name) = (new.kind(), new.name().to_string());
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.store.get(kind, &name).await?;
            if let Some(rv) = precondition
                && rv != current.mod_revision
            {
                return Err(StoreError::Conflict {
                    kind,
                    name,
                    expected: rv.to_string(),
                    current: current.mod_revision,
                }
                .into());
            }
            validate_update(&current.resource, &new).map_err(|e| invalid(&e.0))?;
            carry_server_fields(&mut new, &current.resource);
            match self.store.replace(&new, current.mod_revision).await {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("{kind}({name})")).into())
    }

    async fn patch_resource(&self, req: proto::PatchRequest) -> Result<Resource, Status> {
        let kind = parse_kind("kind", &req.kind)?;
        let precondition = parse_rv("resourceVersion", &req.resource_version)?;
        let ty = match proto::PatchType::try_from(req.r#type) {
            Ok(proto::PatchType::Json) => PatchType::Json,
            Ok(proto::PatchType::Merge) => PatchType::Merge,
            Err(_) => return Err(invalid_field("type", "unknown patch type")),
        };
        if req.name.is_empty() {
            return Err(invalid_field("name", "required"));
        }
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.store.get(kind, &req.name).await?;
            if let Some(rv) = precondition
                && rv != current.mod_revision
            {
                return Err(StoreError::Conflict {
                    kind,
                    name: req.name.clone(),
                    expected: rv.to_string(),
                    current: current.mod_revision,
                }
                .into());
            }
            let mut doc = current.resource.to_value();
            // The patch sees the object as `get -o json` shows it.
            doc["metadata"]["resourceVersion"] =
                serde_json::Value::String(current.mod_revision.to_string());
            // The patched document is bounded like a request's, while it is being made.
            let patched = apply_patch(&doc, &req.patch, ty, crate::store::MAX_RESOURCE_BYTES)
                .map_err(|e| invalid_field(e.field(), e.reason()))?;
            let mut new = admit_value(patched)?;
            validate_update(&current.resource, &new).map_err(|e| invalid(&e.0))?;
            carry_server_fields(&mut new, &current.resource);
            match self.store.replace(&new, current.mod_revision).await {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("{kind}({})", req.name)).into())
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<proto::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ResourceService for ResourceApi {
    async fn create(
        &self,
        req: Request<proto::CreateRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let r = admit(req.into_inner().resource)?;
        if !r.metadata().resource_version.is_empty() {
            return Err(invalid_field(
                "metadata.resourceVersion",
                "must be empty when creating",
            ));
        }
        let span = info_span!("create", kind = %r.kind(), name = r.name());
        let out = self.create_resource(r).instrument(span.clone()).await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "created"));
        Ok(Response::new(to_proto(&out, false)))
    }

    async fn get(
        &self,
        req: Request<proto::GetRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        let kind = parse_kind("kind", &req.kind)?;
        authz::check_read(&id, Some(kind), req.show_secrets)?;
        if req.name.is_empty() {
            return Err(invalid_field("name", "required"));
        }
        let s = self.store.get(kind, &req.name).await?;
        Ok(Response::new(to_proto(&s.resource, req.show_secrets)))
    }

    async fn list(
        &self,
        req: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        let kind = optional_kind(&req.kind)?;
        authz::check_read(&id, kind, req.show_secrets)?;
        let selector = Selector::parse(&req.label_selector)
            .map_err(|e| invalid_field("labelSelector", e.to_string()))?;
        let (items, revision) = self.store.list(kind).await?;
        let items = items
            .into_iter()
            .filter(|s| authz::may_list_kind(&id, s.resource.kind()))
            .filter(|s| selector.matches(&s.resource.metadata().labels))
            .map(|s| to_proto(&s.resource, req.show_secrets))
            .collect();
        Ok(Response::new(proto::ListResponse { items, revision }))
    }

    async fn update(
        &self,
        req: Request<proto::UpdateRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let r = admit(req.into_inner().resource)?;
        let precondition = parse_rv("metadata.resourceVersion", &r.metadata().resource_version)?;
        let span = info_span!("update", kind = %r.kind(), name = r.name());
        let out = self
            .replace_resource(r, precondition)
            .instrument(span.clone())
            .await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "updated"));
        Ok(Response::new(to_proto(&out, false)))
    }

    async fn patch(
        &self,
        req: Request<proto::PatchRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let req = req.into_inner();
        let span = info_span!("patch", kind = %req.kind, name = %req.name);
        let out = self.patch_resource(req).instrument(span.clone()).await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "patched"));
        Ok(Response::new(to_proto(&out, false)))
    }

    async fn delete(
        &self,
        req: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let req = req.into_inner();
        let kind = parse_kind("kind", &req.kind)?;
        if req.name.is_empty() {
            return Err(invalid_field("name", "required"));
        }
        let precondition = parse_rv("resourceVersion", &req.resource_version)?;
        let out = self.store.delete(kind, &req.name, precondition).await?;
        info!(%kind, name = %req.name, "deleted");
        Ok(Response::new(match out {
            Some(r) => to_proto(&r, false),
            None => proto::Resource {
                api_version: tern::model::API_VERSION.into(),
                kind: kind.as_str().into(),
                metadata: Some(proto::ObjectMeta {
                    name: req.name,
                    ..Default::default()
                }),
                ..Default::default()
            },
        }))
    }

    async fn apply(
        &self,
        req: Request<proto::ApplyRequest>,
    ) -> Result<Response<proto::ApplyResponse>, Status> {
        let r = admit(req.into_inner().resource)?;
        let precondition = parse_rv("metadata.resourceVersion", &r.metadata().resource_version)?;
        let span = info_span!("apply", kind = %r.kind(), name = r.name());
        async {
            for _ in 0..MAX_CAS_RETRIES {
                if self.store.get_opt(r.kind(), r.name()).await?.is_none() {
                    if precondition.is_some() {
                        return Err(StoreError::NotFound {
                            kind: r.kind(),
                            name: r.name().to_string(),
                        }
                        .into());
                    }
                    match self.create_resource(r.clone()).await {
                        Ok(out) => {
                            info!("created");
                            return Ok(Response::new(proto::ApplyResponse {
                                resource: Some(to_proto(&out, false)),
                                created: true,
                            }));
                        }
                        // Someone created it meanwhile: replace instead.
                        Err(StoreError::AlreadyExists { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                match self.replace_resource(r.clone(), precondition).await {
                    Ok(out) => {
                        info!("replaced");
                        return Ok(Response::new(proto::ApplyResponse {
                            resource: Some(to_proto(&out, false)),
                            created: false,
                        }));
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => continue,
                    Err(s) => return Err(s),
                }
            }
            Err(StoreError::Contention(format!("{}({})", r.kind(), r.name())).into())
        }
        .instrument(span)
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = caller(&req)?;
        let req = req.into_inner();
        let kind = optional_kind(&req.kind)?;
        authz::check_read(&id, kind, false)?;
        if req.start_revision < 0 {
            return Err(invalid_field("startRevision", "must not be negative"));
        }
        let (key, get_opts) = self.store.range_of(kind);
        let watch_opts = match kind {
            Some(_) => WatchOptions::new().with_prefix(),
            None => WatchOptions::new().with_range(self.store.resources_range().1),
        };
        let store = self.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut client = store.client();
        let mut initial = Vec::new();
        let start = if req.start_revision == 0 {
            let resp = client
                .kv_client()
                .get(key.clone(), Some(get_opts))
                .await
                .map_err(|e| Status::from(StoreError::from(e)))?;
            for kv in resp.kvs() {
                if store.parse_key(kv.key()).is_some() {
                    initial.push(store.decode(kv)?);
                }
            }
            resp.header().map_or(0, |h| h.revision()) + 1
        } else {
            req.start_revision
        };
        let mut stream = client
            .watch(
                key,
                Some(watch_opts.with_prev_key().with_start_revision(start)),
            )
            .await
            .map_err(|e| Status::from(StoreError::from(e)))?;
        let may_see = move |k: Kind| authz::may_list_kind(&id, k);
        let shutdown = self.shutdown.clone();
        tokio::spawn(
            async move {
                for s in initial {
                    if !may_see(s.resource.kind()) {
                        continue;
                    }
                    let ev = proto::WatchEvent {
                        r#type: proto::EventType::Added as i32,
                        revision: s.mod_revision,
                        resource: Some(to_proto(&s.resource, false)),
                    };
                    if !send_unless_shutdown(&tx, Ok(ev), &shutdown).await {
                        return;
                    }
                }
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        () = tx.closed() => break,
                        () = shutdown.cancelled() => {
                            let _ = tx.try_send(Err(Status::unavailable("controller shutting down")));
                            break;
                        }
                    };
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            send_unless_shutdown(&tx, Err(Status::from(StoreError::from(e))), &shutdown).await;
                            break;
                        }
                    };
                    if resp.canceled() {
                        let reason = if resp.compact_revision() > 0 {
                            Status::out_of_range(format!(
                                "revision {start} has been compacted; the oldest available is {}",
                                resp.compact_revision()
                            ))
                        } else {
                            Status::unavailable(format!("watch canceled: {}", resp.cancel_reason()))
                        };
                        send_unless_shutdown(&tx, Err(reason), &shutdown).await;
                        break;
                    }
                    for ev in resp.events() {
                        let (ty, kv) = match ev.event_type() {
                            EventType::Put => {
                                let Some(kv) = ev.kv() else { continue };
                                let ty = if kv.create_revision() == kv.mod_revision() {
                                    proto::EventType::Added
                                } else {
                                    proto::EventType::Modified
                                };
                                (ty, kv)
                            }
                            EventType::Delete => {
                                let Some(kv) = ev.prev_kv() else { continue };
                                (proto::EventType::Deleted, kv)
                            }
                        };
                        if store.parse_key(kv.key()).is_none() {
                            continue;
                        }
                        let revision = ev.kv().map_or(0, |k| k.mod_revision());
                        let item = match store.decode(kv) {
                            Ok(s) if may_see(s.resource.kind()) => s,
                            Ok(_) => continue,
                            Err(e) => {
                                debug!(error = %e, "skipping unreadable object in watch");
                                continue;
                            }
                        };
                        let ev = proto::WatchEvent {
                            r#type: ty as i32,
                            revision,
                            resource: Some(to_proto(&item.resource, false)),
                        };
                        if !send_unless_shutdown(&tx, Ok(ev), &shutdown).await {
                            return;
                        }
                    }
                }
                // Dropping the etcd watch stream cancels the watch.
            }
            .instrument(info_span!("watch")),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Send to a Watch client unless the replica shuts down first (a client that stops
/// reading must not keep the task and its etcd watch alive). False when not sent.
async fn send_unless_shutdown<T>(
    tx: &tokio::sync::mpsc::Sender<T>,
    item: T,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    tokio::select! {
        r = tx.send(item) => r.is_ok(),
        () = shutdown.cancelled() => false,
    }
}

/// A request's optional `kind`: empty means every kind.
fn optional_kind(kind: &str) -> Result<Option<Kind>, Status> {
    if kind.is_empty() {
        Ok(None)
    } else {
        parse_kind("kind", kind).map(Some)
    }
}
