//! tern's BGP beyond Calico: the `BFDProfile` kind, and the session options that
//! BGPPeer and BGPConfiguration carry on top of Calico's fields (BFD, hold and connect
//! retry timers, long-lived graceful restart, dynamic route reflector clients).
//!
//! Calico has none of these; they keep to its style (camelCase, durations as Go
//! durations) and are all optional, so a Calico manifest means what it meant.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::types::GoDuration;

/// Receive and transmit interval of a BFDProfile when not given (as FRR's bfdd).
pub const DEFAULT_BFD_INTERVAL: Duration = Duration::from_millis(300);
/// Transmit interval while the BFD session is down, when not given (BIRD's own).
pub const DEFAULT_BFD_IDLE_INTERVAL: Duration = Duration::from_secs(1);
/// Detection multiplier when not given.
pub const DEFAULT_BFD_MULTIPLIER: u32 = 3;

/// How fast BFD (RFC 5880) declares a BGP neighbour gone. A BGPPeer names a profile
/// in `bfdProfile`; the node-to-node mesh in BGPConfiguration `nodeMeshBFDProfile`.
///
/// BIRD runs BFD without echo mode (it does not implement it), so a profile has no
/// echo settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BFDProfileSpec {
    /// The shortest interval at which this end wants control packets (BIRD's
    /// `min rx interval`). Default 300ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_interval: Option<GoDuration>,
    /// The shortest interval at which this end sends control packets while the session
    /// is up (`min tx interval`). Default 300ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_interval: Option<GoDuration>,
    /// The interval of control packets while the session is down (`idle tx interval`).
    /// Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_transmit_interval: Option<GoDuration>,
    /// Control packets missed in a row before the neighbour is declared down (1-255).
    /// Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiplier: Option<u32>,
    /// Wait for the neighbour's first control packet instead of sending first.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub passive: bool,
}

impl BFDProfileSpec {
    pub fn receive_interval(&self) -> Duration {
        self.receive_interval.map_or(DEFAULT_BFD_INTERVAL, |d| d.0)
    }
    pub fn transmit_interval(&self) -> Duration {
        self.transmit_interval.map_or(DEFAULT_BFD_INTERVAL, |d| d.0)
    }
    pub fn idle_transmit_interval(&self) -> Duration {
        self.idle_transmit_interval
            .map_or(DEFAULT_BFD_IDLE_INTERVAL, |d| d.0)
    }
    pub fn multiplier(&self) -> u32 {
        self.multiplier.unwrap_or(DEFAULT_BFD_MULTIPLIER)
    }

    /// Fill in the defaults, so a stored profile shows every value it runs with.
    pub fn normalize(&mut self) {
        self.receive_interval
            .get_or_insert(GoDuration(DEFAULT_BFD_INTERVAL));
        self.transmit_interval
            .get_or_insert(GoDuration(DEFAULT_BFD_INTERVAL));
        self.idle_transmit_interval
            .get_or_insert(GoDuration(DEFAULT_BFD_IDLE_INTERVAL));
        self.multiplier.get_or_insert(DEFAULT_BFD_MULTIPLIER);
    }
}

/// How a route reflector takes its clients (BGPConfiguration `routeReflectorClients`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RouteReflectorClients {
    /// One session per client node, as Calico renders them (the default): the
    /// reflector's configuration grows, and changes, with every client.
    #[default]
    Explicit,
    /// One dynamic BGP protocol per client address range (BIRD's `neighbor range`):
    /// clients keep their explicit sessions to the reflector, which accepts any of them
    /// from the range. Its configuration neither grows nor changes when clients come
    /// and go.
    Dynamic,
}

/// Session options that a BGPPeer sets for its sessions and a BGPConfiguration for the
/// node-to-node mesh (there prefixed `nodeMesh`). One type, so both are validated and
/// rendered the same way.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionOptions<'a> {
    pub bfd_profile: Option<&'a str>,
    pub hold_time: Option<GoDuration>,
    pub keepalive_time: Option<GoDuration>,
    pub connect_retry_time: Option<GoDuration>,
    pub long_lived_stale_time: Option<GoDuration>,
}
