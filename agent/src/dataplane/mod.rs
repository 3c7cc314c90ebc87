//! NAT dataplane drivers. Placeholder: replaced by the NAT work.

use crate::calc::nat::NatState;
use crate::render::RenderDataplane;

/// The ruleset text a driver would program for `state`.
pub fn render_text(_dataplane: RenderDataplane, state: &NatState) -> String {
    format!("{state:?}\n")
}
