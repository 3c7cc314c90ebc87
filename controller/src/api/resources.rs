//! `ResourceService`: create, read, update, patch, delete, apply and watch every kind.
//!
//! Every write goes the same way: parse (field paths in errors), normalize (Calico's
//! defaults), validate the object, validate the change against the stored object
//! (immutable fields), then one etcd transaction. A rejected write stores nothing.

use std::pin::Pin;

use futures::Stream;
use tern::model::protojson::{from_proto, to_proto, written};
use tern::model::{FieldError, Kind, Resource};
use tern::patch::{PatchType, apply_patch};
use tern::proto::{self, resource_service_server::ResourceService};
use tern::selector::Selector;
use tern::validate::{check_pool_overlap, validate, validate_update};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, info, info_span};

use super::watch::Watches;
use super::{invalid, invalid_field};
use crate::authz::{self, caller};
use crate::store::{Store, StoreError, Stored};

/// How often a write retries when another writer changed the object between our read
/// and our compare-and-swap (writes without a resourceVersion precondition).
const MAX_CAS_RETRIES: usize = 8;

/// What a read-modify-write decides from the object it read.
#[derive(Debug)]
pub enum Change {
    /// The object is absent: create this.
    Create(Resource),
    /// Replace the object read with this.
    Replace(Resource),
    /// Nothing to write.
    Keep,
}

/// The resource API over a [`Store`].
#[derive(Debug, Clone)]
pub struct ResourceApi {
    store: Store,
    /// Watch streams, served from the cache (None: Watch is UNAVAILABLE).
    watches: Option<Watches>,
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

/// The password reference of a BGPPeer or BGPConfiguration, with its field.
fn password_ref(r: &Resource) -> Option<(&'static str, &tern::model::SecretKeyRef)> {
    match r {
        Resource::BGPPeer(p) => p
            .spec
            .secret_ref()
            .map(|s| ("spec.password.secretKeyRef", s)),
        Resource::BGPConfiguration(c) => c
            .spec
            .mesh_secret_ref()
            .map(|s| ("spec.nodeMeshPassword.secretKeyRef", s)),
        _ => None,
    }
}

/// A BGP password a peering names must be one BIRD can carry: a BGPPeer or a
/// BGPConfiguration whose Secret key holds a value BIRD cannot quote is refused, naming
/// the field (as a Secret holding such a value is). A Secret or key that does not exist
/// yet is fine: the agents go on without a password until it does.
fn check_password_ref(r: &Resource, secrets: &[Resource]) -> Result<(), Status> {
    let Some((field, secret_ref)) = password_ref(r) else {
        return Ok(());
    };
    let value = secrets.iter().find_map(|s| match s {
        Resource::Secret(sec) if sec.name() == secret_ref.name => sec.spec.get(&secret_ref.key),
        _ => None,
    });
    if let Some(value) = value
        && let Err(reason) = tern::validate::bird_password(value.expose())
    {
        return Err(invalid_field(
            field,
            format!(
                "key {} of Secret {} {reason}; change the Secret first",
                secret_ref.key, secret_ref.name
            ),
        ));
    }
    Ok(())
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
            watches: None,
            shutdown: Default::default(),
        }
    }

    /// Serve Watch from these streams (over the replica's cache).
    pub fn with_watches(mut self, watches: Watches) -> Self {
        self.watches = Some(watches);
        self
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

    /// The Secrets a write of `kind` may name for a BGP password (BGPPeer and
    /// BGPConfiguration only): `name` alone when known, else all of them.
    async fn password_secrets(
        &self,
        kind: Kind,
        name: Option<&str>,
    ) -> Result<Vec<Resource>, Status> {
        if !matches!(kind, Kind::BGPPeer | Kind::BGPConfiguration) {
            return Ok(Vec::new());
        }
        Ok(match name {
            Some(n) => self
                .store
                .get_opt(Kind::Secret, n)
                .await?
                .map(|s| s.resource)
                .into_iter()
                .collect(),
            None => {
                let (all, _) = self.store.list(Some(Kind::Secret)).await?;
                all.into_iter().map(|s| s.resource).collect()
            }
        })
    }

    /// [`check_password_ref`] for an object known before the write.
    async fn check_password_refs(&self, r: &Resource) -> Result<(), Status> {
        let secrets = self
            .password_secrets(r.kind(), password_ref(r).map(|(_, s)| s.name.as_str()))
            .await?;
        check_password_ref(r, &secrets)
    }

    /// Read the object, decide, and write with a compare-and-swap on what was read;
    /// when another writer came first, read again and decide again (up to
    /// [`MAX_CAS_RETRIES`] times). With a `precondition`, the object must be at that
    /// resourceVersion and a lost race is a conflict (ABORTED), not a retry. Returns
    /// the object as written (or as read, for [`Change::Keep`]).
    pub async fn read_modify_write(
        &self,
        kind: Kind,
        name: &str,
        precondition: Option<i64>,
        mut decide: impl FnMut(Option<&Stored>) -> Result<Change, Status>,
    ) -> Result<Resource, Status> {
        for _ in 0..MAX_CAS_RETRIES {
            let current = self.store.get_opt(kind, name).await?;
            if let Some(rv) = precondition {
                match &current {
                    None => {
                        return Err(StoreError::NotFound {
                            kind,
                            name: name.to_string(),
                        }
                        .into());
                    }
                    Some(c) if c.mod_revision != rv => {
                        return Err(StoreError::Conflict {
                            kind,
                            name: name.to_string(),
                            expected: rv.to_string(),
                            current: c.mod_revision,
                        }
                        .into());
                    }
                    Some(_) => {}
                }
            }
            let result = match (decide(current.as_ref())?, &current) {
                (Change::Keep, Some(c)) => return Ok(c.resource.clone()),
                (Change::Keep, None) => {
                    return Err(StoreError::NotFound {
                        kind,
                        name: name.to_string(),
                    }
                    .into());
                }
                (Change::Create(r), _) => self.create_resource(r).await,
                (Change::Replace(mut r), Some(c)) => {
                    carry_server_fields(&mut r, &c.resource);
                    self.store.replace(&r, c.mod_revision).await
                }
                (Change::Replace(_), None) => Err(StoreError::NotFound {
                    kind,
                    name: name.to_string(),
                }),
            };
            match result {
                Ok(r) => return Ok(r),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. })
                    if precondition.is_none() => {}
                Err(StoreError::NotFound { .. }) if precondition.is_none() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Contention(format!("{kind}({name})")).into())
    }

    /// Replace with a precondition, or with retries against the latest version.
    async fn replace_resource(
        &self,
        new: Resource,
        precondition: Option<i64>,
    ) -> Result<Resource, Status> {
        let (kind, name) = (new.kind(), new.name().to_string());
        self.read_modify_write(kind, &name, precondition, |current| {
            let Some(current) = current else {
                return Err(StoreError::NotFound {
                    kind,
                    name: name.clone(),
                }
                .into());
            };
            validate_update(&current.resource, &new).map_err(|e| invalid(&e.0))?;
            Ok(Change::Replace(new.clone()))
        })
        .await
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
        // The patch may name any Secret: the check runs on the patched object.
        let secrets = self.password_secrets(kind, None).await?;
        self.read_modify_write(kind, &req.name, precondition, |current| {
            let Some(current) = current else {
                return Err(StoreError::NotFound {
                    kind,
                    name: req.name.clone(),
                }
                .into());
            };
            let mut doc = current.resource.to_value();
            // The patch sees the object as `get -o json` shows it.
            doc["metadata"]["resourceVersion"] =
                serde_json::Value::String(current.mod_revision.to_string());
            // The patched document is bounded like a request's, while it is being made.
            let patched = apply_patch(&doc, &req.patch, ty, crate::store::MAX_RESOURCE_BYTES)
                .map_err(|e| invalid_field(e.field(), e.reason()))?;
            let new = admit_value(patched)?;
            validate_update(&current.resource, &new).map_err(|e| invalid(&e.0))?;
            check_password_ref(&new, &secrets)?;
            Ok(Change::Replace(new))
        })
        .await
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
        self.check_password_refs(&r).await?;
        let span = info_span!("create", kind = %r.kind(), name = r.name());
        let out = self.create_resource(r).instrument(span.clone()).await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "created"));
        Ok(Response::new(written(&out)))
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
        self.check_password_refs(&r).await?;
        let span = info_span!("update", kind = %r.kind(), name = r.name());
        let out = self
            .replace_resource(r, precondition)
            .instrument(span.clone())
            .await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "updated"));
        Ok(Response::new(written(&out)))
    }

    async fn patch(
        &self,
        req: Request<proto::PatchRequest>,
    ) -> Result<Response<proto::Resource>, Status> {
        let req = req.into_inner();
        let span = info_span!("patch", kind = %req.kind, name = %req.name);
        let out = self.patch_resource(req).instrument(span.clone()).await?;
        span.in_scope(|| info!(rv = %out.metadata().resource_version, "patched"));
        Ok(Response::new(written(&out)))
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
        self.check_password_refs(&r).await?;
        let span = info_span!("apply", kind = %r.kind(), name = r.name());
        let mut created = false;
        let out = self
            .read_modify_write(r.kind(), r.name(), precondition, |current| {
                created = current.is_none();
                match current {
                    None => Ok(Change::Create(r.clone())),
                    Some(c) => {
                        validate_update(&c.resource, &r).map_err(|e| invalid(&e.0))?;
                        Ok(Change::Replace(r.clone()))
                    }
                }
            })
            .instrument(span.clone())
            .await?;
        span.in_scope(|| info!(created, "applied"));
        Ok(Response::new(proto::ApplyResponse {
            resource: Some(written(&out)),
            created,
        }))
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
        let Some(watches) = &self.watches else {
            return Err(Status::unavailable("Watch is not served by this replica"));
        };
        let rx = watches
            .open(id, kind, req.start_revision, self.shutdown.clone())
            .await?;
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
