//! BIRD configuration rendering (pure). Placeholder: replaced by the BGP work.

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
    /// A stable hash of the node name (Calico's `CALICO_ROUTER_ID=hash`).
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
pub struct BirdOptions {
    pub router_id: RouterId,
}

/// Why a configuration cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("node {0:?} is not in the view")]
    UnknownNode(String),
}

/// Render the whole BIRD 2 configuration of `node`.
pub fn render(view: &View, node: &str, _opts: &BirdOptions) -> Result<String, RenderError> {
    if !view.nodes.contains_key(node) {
        return Err(RenderError::UnknownNode(node.to_string()));
    }
    Ok(String::new())
}
