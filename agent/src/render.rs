//! `tern-agent render`: print what the agent would program for a node, from a file
//! of resources, without touching the host.

use tern::view::View;

use crate::calc::{self, nat::NatState};
use crate::dataplane;

/// What to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// The NAT ruleset (nftables script, or iptables-restore input with --dataplane iptables).
    Nat,
    /// The BIRD configuration.
    Bird,
}

/// Which NAT ruleset syntax to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum RenderDataplane {
    #[default]
    Nftables,
    Iptables,
}

/// Render `what` for `node` from the YAML/JSON text of resources.
pub fn render_offline(
    input: &str,
    node: &str,
    what: What,
    dataplane: RenderDataplane,
    bird: &calc::bird::RenderOptions,
) -> anyhow::Result<String> {
    let view = View::from_yaml(input)?;
    match what {
        What::Bird => Ok(calc::bird::render(&view, node, bird)?),
        What::Nat => Ok(render_text(dataplane, &calc::nat::desired(&view, node))),
    }
}

/// The ruleset text a driver would program for `state` on a host that has none yet:
/// the `nft -f` script, or the `iptables-restore --noflush` input of both families.
pub fn render_text(dataplane: RenderDataplane, state: &NatState) -> String {
    match dataplane {
        RenderDataplane::Nftables => dataplane::nft::render(state),
        RenderDataplane::Iptables => dataplane::iptables::render(state),
    }
}
