//! The BGP speaker as the apply loop sees it: BIRD in production ([`crate::bgp::Bird`]),
//! a recording or refusing stand-in in tests and benchmarks.

use std::fmt;

use tern::proto;

use crate::bird::{BirdError, CleanupError};
use crate::exec::ExecError;

/// Why the BGP speaker could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    /// BIRD refused the configuration, did not answer, or could not be started.
    #[error(transparent)]
    Bird(#[from] BirdError),
    /// Removing what BIRD left failed (every step was tried).
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    /// The routes BIRD installed could not be removed.
    #[error("removing BIRD's routes: {0}")]
    Routes(#[source] ExecError),
    /// The speaker is not there to take the configuration (stand-ins in tests).
    #[error("{0}")]
    Unavailable(String),
}

/// What an apply did to the speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BgpApplied {
    /// The speaker already ran this configuration.
    Unchanged,
    /// The configuration was installed and the speaker (re)loaded it.
    Reloaded,
}

/// A BGP speaker. One owner (the agent's driver thread) calls it.
pub trait BgpDataplane: Send + fmt::Debug + 'static {
    /// Install a rendered configuration. A rejected configuration leaves the previous
    /// one in place.
    fn apply(&mut self, config: &str) -> Result<BgpApplied, BgpError>;
    /// Session state, for the status report.
    fn status(&mut self) -> proto::BgpStatus;
    /// A cheap mark that changes whenever a session changes state (polled often; the
    /// full [`status`](Self::status) is read when it moves). `None`: not known.
    fn session_marks(&mut self) -> Option<String> {
        None
    }
    /// Remove what it created (for `tern-agent cleanup`).
    fn cleanup(&mut self) -> Result<(), BgpError>;
    /// True when calls block on external tools (BIRD's): the agent then gives the
    /// speaker a thread of its own; false for stand-ins that only touch memory (a task).
    fn blocks(&self) -> bool {
        true
    }
}
