//! Desired NAT outgoing state (pure). Placeholder: replaced by the NAT work.

use tern::view::View;

/// The NAT state a host should have.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatState {}

/// Compute the desired NAT state of `node` from its view.
pub fn desired(_view: &View, _node: &str) -> NatState {
    NatState {}
}
