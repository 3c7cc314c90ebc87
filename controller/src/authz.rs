//! Who may call what: the whole authorization policy of the controller, in one place.
//!
//! Identities come from the verified client certificate's URI SAN (see
//! [`tern::pki`]): `spiffe://tern/admin`, `spiffe://tern/viewer`,
//! `spiffe://tern/node/<name>`. The transport layer ([`crate::tls`]) turns a
//! connection into an [`Identity`] and calls [`authorize_method`] for every RPC before
//! the request reaches a handler; handlers call the finer checks below for decisions
//! that depend on the request's contents (the kind being read, the node named in a
//! Hello).

use tern::model::Kind;
pub use tern::pki::Identity;
use tonic::Status;
use tracing::warn;

/// The gRPC methods, grouped by what they do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read resources, nodes, IPAM, reflection.
    Read,
    /// Change resources or IPAM.
    Write,
    /// The agent's sync stream.
    Sync,
    /// IPAM writes a node makes for its own containers (its CNI plugin, with the node's
    /// certificate): `AssignAddress`, `ReleaseAddress`, `ClaimBlock`. Administrators,
    /// and a node for itself (checked by the handler with [`check_ipam_node`]).
    NodeIpamWrite,
    /// IPAM reads a node makes for its own containers: `ListHandles` (a CNI plugin's
    /// garbage collection). Administrators and viewers, and a node for itself.
    NodeIpamRead,
    /// Health checks: open to anyone who completes a TLS handshake.
    Health,
}

/// Every RPC the controller serves (full paths). Metrics label requests with these only,
/// so that arbitrary paths sent by a client cannot grow the label set.
pub const METHODS: &[&str] = &[
    "/tern.v1.ResourceService/Create",
    "/tern.v1.ResourceService/Get",
    "/tern.v1.ResourceService/List",
    "/tern.v1.ResourceService/Update",
    "/tern.v1.ResourceService/Patch",
    "/tern.v1.ResourceService/Delete",
    "/tern.v1.ResourceService/Apply",
    "/tern.v1.ResourceService/Watch",
    "/tern.v1.NodeService/ListNodes",
    "/tern.v1.NodeService/GetNodeStatus",
    "/tern.v1.NodeService/GetVersion",
    "/tern.v1.IpamService/Show",
    "/tern.v1.IpamService/ClaimBlock",
    "/tern.v1.IpamService/AssignAddress",
    "/tern.v1.IpamService/ReleaseAddress",
    "/tern.v1.IpamService/ListHandles",
    "/tern.v1.IpamService/ShowAddress",
    "/tern.v1.IpamService/ShowConfiguration",
    "/tern.v1.IpamService/Check",
    "/tern.v1.IpamService/ReleaseIp",
    "/tern.v1.SyncService/Sync",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The metrics label of a path: the path itself for a known RPC, else `unknown`.
pub fn method_label(path: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == path)
        .copied()
        .unwrap_or("unknown")
}

/// Classify a gRPC path (`/package.Service/Method`). Unknown paths are writes, so
/// anything new is admin-only until it is classified here.
pub fn classify(path: &str) -> Access {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health" => Access::Health,
        "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
            Access::Read
        }
        "tern.v1.SyncService" => Access::Sync,
        "tern.v1.ResourceService" => match method {
            "Get" | "List" | "Watch" => Access::Read,
            _ => Access::Write,
        },
        "tern.v1.NodeService" => Access::Read,
        "tern.v1.IpamService" => match method {
            "Show" | "ShowAddress" | "ShowConfiguration" | "Check" => Access::Read,
            "AssignAddress" | "ReleaseAddress" | "ClaimBlock" => Access::NodeIpamWrite,
            "ListHandles" => Access::NodeIpamRead,
            _ => Access::Write,
        },
        _ => Access::Write,
    }
}

/// Method-level decision for an identity (None: no client certificate).
pub fn authorize_method(identity: Option<&Identity>, path: &str) -> Result<(), Status> {
    let access = classify(path);
    if access == Access::Health {
        return Ok(());
    }
    let Some(id) = identity else {
        warn!(rpc = path, "denied: no client certificate");
        return Err(Status::unauthenticated(
            "a client certificate signed by the cluster CA is required",
        ));
    };
    let allowed = matches!(
        (id, access),
        (Identity::Admin | Identity::Insecure, _)
            | (Identity::Viewer, Access::Read | Access::NodeIpamRead)
            | (
                Identity::Node(_),
                Access::Sync | Access::NodeIpamWrite | Access::NodeIpamRead
            )
    );
    if allowed {
        Ok(())
    } else {
        warn!(identity = %id, rpc = path, "denied: not permitted for this identity");
        Err(Status::permission_denied(format!(
            "{id} may not call {path}"
        )))
    }
}

/// The identity the transport layer attached to a request.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Identity, Status> {
    req.extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no identity on this connection"))
}

/// May `id` read objects of `kind` (with secret values if `show_secrets`)?
/// Viewers never read Secrets; only administrators see secret values.
pub fn check_read(id: &Identity, kind: Option<Kind>, show_secrets: bool) -> Result<(), Status> {
    let admin = matches!(id, Identity::Admin | Identity::Insecure);
    if show_secrets && !admin {
        warn!(identity = %id, "denied: show_secrets requires the admin role");
        return Err(Status::permission_denied(format!(
            "{id} may not read secret values (admin only)"
        )));
    }
    if kind == Some(Kind::Secret) && !admin {
        warn!(identity = %id, "denied: reading Secrets requires the admin role");
        return Err(Status::permission_denied(format!(
            "{id} may not read Secrets (admin only)"
        )));
    }
    Ok(())
}

/// True when `id` may see objects of this kind in a list of every kind.
pub fn may_list_kind(id: &Identity, kind: Kind) -> bool {
    kind != Kind::Secret || matches!(id, Identity::Admin | Identity::Insecure)
}

/// May `id` open the sync stream for `node`? An agent only for the node in its
/// certificate.
pub fn check_node(id: &Identity, node: &str) -> Result<(), Status> {
    match id {
        Identity::Node(n) if n == node => Ok(()),
        Identity::Admin | Identity::Insecure => Ok(()),
        other => {
            warn!(identity = %other, node, "denied: Hello names another node");
            Err(Status::permission_denied(format!(
                "{other} may not sync as node {node:?}"
            )))
        }
    }
}

/// May `id` make an IPAM call about `node`'s addresses? A node only about itself: its
/// CNI plugin holds the node's certificate, so a compromised host can take and free
/// addresses of its own blocks, never another node's. Administrators (and viewers, who
/// only reach the reads) name any node.
pub fn check_ipam_node(id: &Identity, node: &str) -> Result<(), Status> {
    match id {
        Identity::Node(n) if n != node => {
            warn!(identity = %id, node, "denied: IPAM call for another node");
            Err(Status::permission_denied(format!(
                "{id} may only manage IPAM addresses of its own node, not of node {node:?}"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_table() {
        let admin = Identity::Admin;
        let viewer = Identity::Viewer;
        let node = Identity::Node("n1".into());
        let rows: &[(Option<&Identity>, &str, Option<tonic::Code>)] = &[
            (None, "/grpc.health.v1.Health/Check", None),
            (
                None,
                "/tern.v1.ResourceService/Get",
                Some(tonic::Code::Unauthenticated),
            ),
            (Some(&admin), "/tern.v1.ResourceService/Create", None),
            (Some(&admin), "/tern.v1.SyncService/Sync", None),
            (Some(&viewer), "/tern.v1.ResourceService/List", None),
            (Some(&viewer), "/tern.v1.ResourceService/Watch", None),
            (
                Some(&viewer),
                "/tern.v1.ResourceService/Patch",
                Some(tonic::Code::PermissionDenied),
            ),
            (
                Some(&viewer),
                "/tern.v1.IpamService/AssignAddress",
                Some(tonic::Code::PermissionDenied),
            ),
            (Some(&viewer), "/tern.v1.IpamService/Show", None),
            (
                Some(&viewer),
                "/tern.v1.SyncService/Sync",
                Some(tonic::Code::PermissionDenied),
            ),
            (Some(&node), "/tern.v1.SyncService/Sync", None),
            (
                Some(&node),
                "/tern.v1.ResourceService/Get",
                Some(tonic::Code::PermissionDenied),
            ),
            (
                Some(&node),
                "/tern.v1.NodeService/ListNodes",
                Some(tonic::Code::PermissionDenied),
            ),
            (
                Some(&node),
                "/tern.v1.Future/Thing",
                Some(tonic::Code::PermissionDenied),
            ),
            // A node's CNI plugin: its own IPAM writes and handle list, nothing else.
            (Some(&node), "/tern.v1.IpamService/AssignAddress", None),
            (Some(&node), "/tern.v1.IpamService/ReleaseAddress", None),
            (Some(&node), "/tern.v1.IpamService/ClaimBlock", None),
            (Some(&node), "/tern.v1.IpamService/ListHandles", None),
            (
                Some(&node),
                "/tern.v1.IpamService/Show",
                Some(tonic::Code::PermissionDenied),
            ),
            (
                Some(&node),
                "/tern.v1.IpamService/Future",
                Some(tonic::Code::PermissionDenied),
            ),
            (Some(&viewer), "/tern.v1.IpamService/ListHandles", None),
            (
                Some(&viewer),
                "/tern.v1.IpamService/ClaimBlock",
                Some(tonic::Code::PermissionDenied),
            ),
            (
                Some(&viewer),
                "/tern.v1.IpamService/ReleaseAddress",
                Some(tonic::Code::PermissionDenied),
            ),
            (Some(&admin), "/tern.v1.IpamService/AssignAddress", None),
        ];
        for (id, path, want) in rows {
            let got = authorize_method(*id, path).err().map(|s| s.code());
            assert_eq!(got, *want, "{id:?} {path}");
        }
        assert!(check_read(&viewer, Some(Kind::Secret), false).is_err());
        assert!(check_read(&viewer, Some(Kind::IPPool), true).is_err());
        assert!(check_read(&viewer, Some(Kind::IPPool), false).is_ok());
        assert!(check_read(&admin, Some(Kind::Secret), true).is_ok());
        assert!(check_node(&node, "n1").is_ok());
        assert_eq!(
            method_label("/tern.v1.SyncService/Sync"),
            "/tern.v1.SyncService/Sync"
        );
        assert_eq!(method_label("/x1"), "unknown");
        // Every listed method is classified deliberately (none falls to the default).
        for m in METHODS {
            let known = m.starts_with("/tern.v1.") || m.starts_with("/grpc.");
            assert!(known, "{m}");
        }
        assert_eq!(
            check_node(&node, "n2").map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(check_ipam_node(&node, "n1").is_ok());
        assert_eq!(
            check_ipam_node(&node, "n2").map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(check_ipam_node(&admin, "n2").is_ok());
        assert!(check_ipam_node(&viewer, "n2").is_ok());
    }
}
