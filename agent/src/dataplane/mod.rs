//! The dataplane layer: the NAT drivers, which turn a [`NatState`] into kernel objects,
//! and beside them the BGP speaker's trait ([`BgpDataplane`], in `bgp.rs`).
//!
//! ```text
//! NatState ──► NatDriver::apply      (one atomic write per change)
//!          └─► NatDriver::reconcile  (read back, repair drift, count repairs)
//!              NatDriver::cleanup    (remove everything tern created, nothing else)
//!
//! drivers: nft::NftDriver        table inet tern, one transaction per change: one line
//!                                  to a long-lived `nft -j -i` session (nft runs each
//!                                  line as one batch), `nft -f -` when there is no session
//!          iptables::IptablesDriver  TERN-* chains, one `*-restore --noflush` per family
//!          recording::RecordingDriver  applies nothing, records states (tests, benchmarks)
//!
//! rendered BIRD configuration ──► BgpDataplane::apply  (crate::bgp::Bird in production)
//! ```
//!
//! The methods are synchronous (they run `nft` / `iptables-restore`, or talk to the nft
//! session and wait for its answer); the agent gives each driver a thread of its own
//! that makes every call (`crate::agent`'s driver owner). All of them are idempotent: replaying a desired state is
//! always safe, and a driver that lost track of the kernel (a failed write, a restart)
//! reads it back before the next write.

pub mod bgp;
pub mod iptables;
pub mod nft;
pub mod owner;
pub mod recording;

use std::fmt;
use std::time::Duration;

use tern::model::DataplaneKind;

use crate::calc::nat::NatState;
use crate::exec::{Exec, ExecError};

pub use bgp::{BgpApplied, BgpDataplane, BgpError};
pub use iptables::{IptablesBackend, IptablesDriver};
pub use nft::NftDriver;
pub use recording::{Recorded, RecordedOp, RecordingDriver};

/// Why a driver could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// A tool failed (or could not be started).
    #[error("{driver}: {action}: {source}")]
    Exec {
        driver: &'static str,
        action: String,
        #[source]
        source: ExecError,
    },
    /// A tool's output could not be understood.
    #[error("{driver}: cannot understand the output of {what}: {detail}")]
    Parse {
        driver: &'static str,
        what: String,
        detail: String,
    },
    /// JSON from a tool did not parse.
    #[error("{driver}: {what} is not valid JSON: {source}")]
    Json {
        driver: &'static str,
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// No driver can work on this host (or in this network namespace).
    #[error("no usable NAT dataplane: {0}")]
    Unavailable(String),
    /// A failure the recording driver was told to simulate.
    #[error("recording: simulated failure")]
    Simulated,
    /// Cleanup went through every step; these failed.
    #[error("cleanup: {}", join_errors(.0))]
    Cleanup(Vec<DataplaneError>),
}

fn join_errors(errors: &[DataplaneError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What an apply or reconcile did to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApplyOutcome {
    /// The kernel already had the desired state; nothing was written.
    #[default]
    Unchanged,
    /// Set elements (nftables) or one family's chains (iptables) were updated.
    Updated,
    /// Everything tern owns was replaced in one transaction.
    Replaced,
}

/// The result of [`NatDriver::apply`] and [`NatDriver::reconcile`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub outcome: ApplyOutcome,
    /// Differences between the kernel and the desired state found by reading the
    /// kernel back (`reconcile`), each repaired: a table, chain, set, rule or jump
    /// missing or changed by hand, set elements missing or extra. Always 0 for `apply`.
    pub repairs: usize,
    /// Set elements added and removed (nftables), or rules written (iptables).
    pub elements_added: usize,
    pub elements_removed: usize,
    /// Wall time of the call, tools included.
    pub elapsed: Duration,
}

/// A NAT dataplane. One owner (the agent's apply task) calls it; every method is
/// idempotent.
pub trait NatDriver: Send + fmt::Debug {
    /// `nftables`, `iptables`, `iptables-legacy`, `recording`.
    fn name(&self) -> &'static str;

    /// Make the kernel match `desired`, writing only what changed since the last
    /// successful call (the kernel is read back first when that is unknown, e.g. on the
    /// first call after a restart: an existing ruleset is taken over, never deleted
    /// first). One atomic write per change.
    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError>;

    /// Read the kernel back, compare it with `desired`, and repair every difference in
    /// one atomic write; `repairs` counts the differences.
    fn reconcile(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError>;

    /// Remove everything this driver creates, and nothing else. Safe to call when
    /// nothing is there.
    fn cleanup(&mut self) -> Result<(), DataplaneError>;

    /// True when calls block on external tools (the agent then gives the driver a
    /// thread of its own); false for drivers that only touch memory (a task).
    fn blocks(&self) -> bool {
        true
    }
}

/// True when `nft list tables` works where `exec` runs.
pub fn nftables_usable(exec: &Exec) -> bool {
    exec.run("nft", &["list", "tables"], None).is_ok()
}

/// Build the driver for a configured dataplane: `auto` picks nftables when
/// `nft list tables` works there, else iptables with `backend`.
pub fn select(
    kind: DataplaneKind,
    exec: Exec,
    backend: IptablesBackend,
) -> Result<Box<dyn NatDriver>, DataplaneError> {
    let netns = exec.netns().unwrap_or_default().to_string();
    let driver: Box<dyn NatDriver> = match kind {
        DataplaneKind::Nftables => {
            if !nftables_usable(&exec) {
                return Err(DataplaneError::Unavailable(
                    "dataplane: nftables is configured but `nft list tables` fails".into(),
                ));
            }
            Box::new(NftDriver::new(exec))
        }
        DataplaneKind::Iptables => Box::new(IptablesDriver::new(exec, backend)),
        DataplaneKind::Auto => {
            if nftables_usable(&exec) {
                Box::new(NftDriver::new(exec))
            } else if IptablesDriver::usable(&exec, backend) {
                Box::new(IptablesDriver::new(exec, backend))
            } else {
                return Err(DataplaneError::Unavailable(
                    "neither `nft list tables` nor iptables-save works".into(),
                ));
            }
        }
    };
    tracing::info!(
        configured = ?kind,
        driver = driver.name(),
        netns = %netns,
        "NAT dataplane selected"
    );
    Ok(driver)
}

/// Remove what any tern NAT driver may have left where `exec` runs: the nftables
/// table, and the TERN-* chains of both iptables back ends (both families). Tools that
/// are not installed are skipped. Every step runs; the failures are collected.
pub fn cleanup_all(exec: &Exec) -> Result<(), DataplaneError> {
    let mut errors = Vec::new();
    if nftables_usable(exec)
        && let Err(e) = NftDriver::new(exec.clone()).cleanup()
    {
        errors.push(e);
    }
    for backend in [IptablesBackend::Default, IptablesBackend::Legacy] {
        if IptablesDriver::usable(exec, backend)
            && let Err(e) = IptablesDriver::new(exec.clone(), backend).cleanup()
        {
            match e {
                DataplaneError::Cleanup(mut v) => errors.append(&mut v),
                e => errors.push(e),
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DataplaneError::Cleanup(errors))
    }
}

/// Rule identity: `tern:` and a 64-bit FNV-1a hash of the rule's text, as a comment on
/// the rule, so a read-back can tell our rules apart and notice a changed one.
pub(crate) fn rule_id(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("tern:{h:016x}")
}

/// A NAT state for driver unit tests: every CIDR is a pool, those in `nat` with
/// natOutgoing.
#[cfg(test)]
pub(crate) fn test_state(nat: &[&str], other: &[&str]) -> NatState {
    let mut s = NatState::default();
    for c in nat.iter().chain(other) {
        s.add_pool(c.parse().expect("cidr"), nat.contains(c));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_are_stable_and_distinct() {
        assert_eq!(rule_id("a"), rule_id("a"));
        assert_ne!(rule_id("a"), rule_id("b"));
        assert_eq!(rule_id("").len(), "tern:".len() + 16);
    }
}
