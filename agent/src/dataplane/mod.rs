//! NAT dataplane drivers.
