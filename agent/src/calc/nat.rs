//! Desired NAT outgoing state (pure).
