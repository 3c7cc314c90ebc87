//! BIRD configuration rendering (pure): a node's view in, its whole BIRD 2
//! configuration out, with Calico's semantics and session names.
//!
//! ```text
//! View ──► plan::build ──► Plan (what to say: sessions, blocks, pools, filters)
//!              │                 └──► text::write ──► BIRD 2 configuration (how to say it)
//!              ├── peers    mesh, global / node / selected peers, reverse peerings
//!              └── filters  BGPFilter rules as BIRD functions
//! ```
//!
//! One file holds IPv4 and IPv6: protocols carry `ipv4`/`ipv6` channels and the
//! per-family functions are suffixed `_v4`/`_v6`. What differs from Calico's confd
//! output is only what BIRD 2 needs: next hop options live in the session's channel,
//! the listen port and bind address are `local port` / `local <ip>` + `strict bind`
//! in the BGP template (BIRD 2 has no `listen bgp`), and Calico's BIRD-fork-only
//! features (`krt_tunnel`) are not used.
//!
//! The output is deterministic (everything sorted) and carries passwords: the file
//! must be written with mode 0600. Errors never contain a secret.

mod filters;
mod peers;
mod plan;
mod text;

use std::net::Ipv4Addr;

use tern::view::View;

/// Where the BGP router id comes from (`tern-agent --router-id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouterId {
    /// The node's IPv4 address (Calico's default).
    #[default]
    NodeAddress,
    /// An explicit address.
    Explicit(Ipv4Addr),
    /// A stable hash of the node name (Calico's `CALICO_ROUTER_ID=hash`: the first four
    /// bytes of the SHA-256 of the name).
    Hash,
}

impl std::str::FromStr for RouterId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hash" => Ok(RouterId::Hash),
            "" => Ok(RouterId::NodeAddress),
            other => other
                .parse()
                .map(RouterId::Explicit)
                .map_err(|_| format!("{other:?} is not an IPv4 address or \"hash\"")),
        }
    }
}

/// Options of the renderer that do not come from the view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenderOptions {
    pub router_id: RouterId,
}

/// Why a configuration cannot be rendered. Messages name resources and fields, never
/// a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("node {0:?} is not in the view")]
    UnknownNode(String),
    #[error(
        "node {node:?} has no IPv4 address to use as BGP router id: \
         give --router-id an IPv4 address or \"hash\""
    )]
    NoRouterId { node: String },
    #[error(
        "{what}: the password cannot be written into BIRD's configuration \
         (it contains a double quote, a backslash or a line break)"
    )]
    UnquotablePassword { what: String },
    #[error("BGPFilter {filter:?} {field}: {reason}")]
    Filter {
        filter: String,
        field: String,
        reason: String,
    },
    #[error(
        "{context}: {value:?} is not a BGP community \
         (aa:nn with numbers up to 65535, or aa:nn:mm with numbers up to 4294967295)"
    )]
    Community { context: String, value: String },
    #[error(
        "{context}: {value:?} cannot be written into BIRD's configuration \
         (double quotes, backslashes and line breaks are not allowed)"
    )]
    Unquotable { context: String, value: String },
    #[error(
        "node {node:?}: routeReflectorClusterID {value} is not an IPv4 address, \
         which BIRD needs for a cluster id"
    )]
    ClusterId { node: String, value: String },
}

/// Render the whole BIRD 2 configuration of `node`.
pub fn render(view: &View, node: &str, opts: &RenderOptions) -> Result<String, RenderError> {
    let plan = plan::build(view, node, opts)?;
    Ok(text::write(&plan))
}

#[cfg(test)]
mod tests;
