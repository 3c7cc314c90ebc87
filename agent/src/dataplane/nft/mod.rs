//! The nftables driver (the default): everything lives in one table, `inet tern`.
//!
//! ```text
//! table inet tern
//!   set nat-pools-v4 / other-pools-v4 / hosts-v4   (ipv4_addr, flags interval)
//!   set nat-pools-v6 / other-pools-v6 / hosts-v6   (ipv6_addr, flags interval)
//!   chain postrouting  (type nat hook postrouting priority srcnat + 10: after kube-proxy)
//!     ip saddr @nat-pools-v4 ip daddr != @nat-pools-v4 ip daddr != @other-pools-v4
//!        ip daddr != @hosts-v4 masquerade fully-random
//!     ip6 ...
//! ```
//!
//! Each pool CIDR is in exactly one set of its family: `nat-pools` (natOutgoing) or
//! `other-pools` (every other pool, disabled ones included). "Destination in no pool" is
//! "in neither set", so the kernel stores and nft parses each pool once (a set of all
//! pools next to the NAT pools held every NAT pool twice). Each set's elements are its
//! own CIDRs merged into disjoint ranges ([`layout`]): pools that touch merge only
//! with pools of the same set, and a pool nested in one of the other set (possible in
//! files `render` reads, never in a validated store) stays in its own set, which the
//! rule reads the same way. A pool whose natOutgoing flips leaves one set and joins the
//! other in one transaction. A table of an older layout (with `all-pools-*`) differs in
//! its sets and rules, so the first apply after an upgrade replaces it in one
//! transaction, like any structural difference.
//!
//! The rules depend only on the AgentConfiguration (SNAT address, port range, interface
//! filter); pools and host addresses are set elements. So a pool change is a set
//! element change, and anything else replaces the table. Every write is one nft
//! transaction: an element change is `delete element ...; add element ...` (only
//! additions: `add set <name> { ...; elements = { ... } }`, which nft 1.0.6 runs without
//! first dumping every interval set of the host), a replacement is
//! `add table; delete table; table inet tern { ... }`, so the kernel never sees a
//! half-written table nor a moment without one.
//!
//! The parts:
//!
//! ```text
//! layout     NatState ─► the table tern wants, and the text of each transaction
//! readback   nft -j list table ─► Observed (typed JSON) ─► diff against the layout
//! transport  a transaction or read-back ─► nft -j -i session | included file | nft -f
//! session    the long-lived nft -j -i process
//! (here)     NftDriver: what was last written, apply / reconcile / cleanup, and the
//!            fallback when the session breaks under a call
//! ```
//!
//! The driver remembers what it last wrote. When it does not know (first call,
//! failed write, broken session) and on `reconcile`, it reads the table back
//! and compares sets (as address ranges), the chain's hook and priority, and the
//! rules' identities (`comment "tern:<hash>"`). A session that breaks with a call in
//! flight leaves the kernel unknown: the call reads the table back and finishes with
//! one-shot `nft -f -`.

mod layout;
mod readback;
pub mod session;
mod transport;

use std::time::{Duration, Instant};

use super::{ApplyOutcome, ApplyReport, DataplaneError, NatDriver};
use crate::calc::nat::NatState;
use crate::exec::Exec;
use layout::{Layout, Txn};
use readback::{Diff, Observed, diff};
use transport::{Failure, Transport, session_error};

pub use layout::render;
pub use readback::differences;
pub use transport::DEFAULT_SESSION_TIMEOUT;

/// The table tern owns (family and name).
pub const TABLE_FAMILY: &str = "inet";
pub const TABLE_NAME: &str = "tern";
/// The NAT chain and its priority: srcnat (100) + 10, after kube-proxy's.
pub const CHAIN: &str = "postrouting";
pub const CHAIN_PRIORITY: i64 = 110;

const DRIVER: &str = "nftables";

/// The nftables NAT driver.
#[derive(Debug)]
pub struct NftDriver {
    /// What the kernel holds since our last successful write; None when unknown.
    programmed: Option<Layout>,
    transport: Transport,
}

impl NftDriver {
    /// The driver, with an nft -i session started on first use.
    pub fn new(exec: Exec) -> NftDriver {
        NftDriver {
            programmed: None,
            transport: Transport::new(exec, true),
        }
    }

    /// The driver without a session: one `nft -f -` per transaction, one `nft -j list`
    /// per read-back (for comparison, and hosts where nft has no interactive mode).
    pub fn without_session(exec: Exec) -> NftDriver {
        NftDriver {
            programmed: None,
            transport: Transport::new(exec, false),
        }
    }

    /// How long the session may take for a transaction (plus 1 ms per 100 bytes of it);
    /// a session that takes longer is killed. [`DEFAULT_SESSION_TIMEOUT`] by default.
    pub fn set_session_timeout(&mut self, timeout: Duration) {
        self.transport.timeout = timeout;
    }

    /// The process id of the running nft -i session, if any (diagnostics, tests).
    pub fn session_pid(&self) -> Option<u32> {
        self.transport.session_pid()
    }

    /// False once the session could not include a temporary file that nft -f could
    /// run (long transactions then go through nft -f); diagnostics, tests.
    pub fn includes_files(&self) -> bool {
        self.transport.include_ok
    }

    /// Run `f`; when the session broke under it, forget what the kernel holds and run
    /// `f` again with one-shot nft (it then reads the kernel back first).
    fn with_fallback<T>(
        &mut self,
        mut f: impl FnMut(&mut NftDriver) -> Result<T, Failure>,
    ) -> Result<T, DataplaneError> {
        match f(self) {
            Ok(t) => Ok(t),
            Err(Failure::Refused(e)) => Err(e),
            Err(Failure::Broken(e)) => {
                tracing::warn!(
                    driver = DRIVER,
                    error = %e,
                    "nft -i session broke during a call; reading the table back and using nft -f"
                );
                self.programmed = None;
                self.transport.oneshot_only = true;
                let r = f(self);
                self.transport.oneshot_only = false;
                r.map_err(|f| match f {
                    Failure::Refused(e) => e,
                    Failure::Broken(e) => session_error("retry with nft -f", e),
                })
            }
        }
    }

    /// Write what `d` says is missing, in one transaction.
    fn write(&mut self, l: &Layout, d: &Diff) -> Result<ApplyReport, Failure> {
        let mut report = ApplyReport::default();
        if d.is_empty() {
            self.programmed = Some(l.clone());
            return Ok(report);
        }
        let (added, removed) = d.counts();
        if d.structural.is_empty() {
            let txn = Txn::Elements {
                l,
                changes: &d.elements,
            };
            match self.transport.transact("update set elements", txn) {
                Ok(()) => {
                    report.outcome = ApplyOutcome::Updated;
                    report.elements_added = added;
                    report.elements_removed = removed;
                    self.programmed = Some(l.clone());
                    return Ok(report);
                }
                Err(Failure::Refused(e)) => {
                    // The kernel is not what we thought; replace the table instead.
                    tracing::warn!(driver = DRIVER, error = %e, "element update failed, replacing the table");
                }
                Err(broken) => {
                    self.programmed = None;
                    return Err(broken);
                }
            }
        }
        self.programmed = None;
        let txn = Txn::Full {
            l,
            replace: d.table_present,
        };
        self.transport.transact("replace table inet tern", txn)?;
        report.outcome = ApplyOutcome::Replaced;
        report.elements_added = l.sets.iter().map(|s| s.elements.len()).sum();
        report.elements_removed = removed;
        self.programmed = Some(l.clone());
        Ok(report)
    }
}

impl NatDriver for NftDriver {
    fn name(&self) -> &'static str {
        DRIVER
    }

    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        if self.programmed.is_none() {
            // The kernel is read back first: nft -i starts (~3 ms) while the layout is
            // computed.
            let _ = self.transport.session();
        }
        let l = layout::layout(desired);
        if self.programmed.as_ref() == Some(&l) {
            return Ok(ApplyReport {
                elapsed: start.elapsed(),
                ..ApplyReport::default()
            });
        }
        let mut report = self.with_fallback(|d| {
            let observed = match &d.programmed {
                Some(p) => Observed::of_layout(p),
                None => d.transport.read_back()?,
            };
            let diff = diff(&l, &observed);
            d.write(&l, &diff)
        })?;
        report.elapsed = start.elapsed();
        tracing::info!(
            driver = DRIVER,
            outcome = ?report.outcome,
            pools = desired.pool_count(),
            nat_pools = desired.nat_pool_count(),
            added = report.elements_added,
            removed = report.elements_removed,
            elapsed_us = u64::try_from(report.elapsed.as_micros()).unwrap_or(u64::MAX),
            "NAT applied"
        );
        Ok(report)
    }

    fn reconcile(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        let _ = self.transport.session();
        let l = layout::layout(desired);
        let result = self.with_fallback(|d| {
            let observed = d.transport.read_back()?;
            let diff = diff(&l, &observed);
            let repairs = diff.structural.len() + diff.elements.len();
            for finding in &diff.structural {
                tracing::warn!(driver = DRIVER, drift = %finding, "repairing NAT drift");
            }
            for c in &diff.elements {
                tracing::warn!(
                    driver = DRIVER,
                    set = %l.sets[c.set].name,
                    missing = c.add.len(),
                    extra = c.del.len(),
                    "repairing NAT drift in set elements"
                );
            }
            let mut report = d.write(&l, &diff)?;
            report.repairs = repairs;
            Ok(report)
        });
        let mut report = match result {
            Ok(r) => r,
            Err(e) => {
                self.programmed = None;
                return Err(e);
            }
        };
        report.elapsed = start.elapsed();
        if report.repairs > 0 {
            tracing::info!(driver = DRIVER, repairs = report.repairs, outcome = ?report.outcome, "NAT drift repaired");
        }
        Ok(report)
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.programmed = None;
        // A fresh driver (the usual case) has no session, and one transaction does not
        // pay for starting one.
        if self.session_pid().is_some() {
            self.with_fallback(|d| {
                d.transport
                    .transact("delete table inet tern", Txn::DeleteTable)
            })?;
        } else {
            self.transport
                .oneshot("delete table inet tern", &Txn::DeleteTable.script())?;
        }
        tracing::info!(driver = DRIVER, "NAT table removed");
        Ok(())
    }
}
