//! A driver that programs nothing and records every call with its desired state and a
//! timestamp: for tests (what would the agent have programmed, and when) and for
//! benchmarks of everything above the kernel.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;
use tokio::sync::watch;

use super::{ApplyOutcome, ApplyReport, DataplaneError, NatDriver};
use crate::calc::nat::NatState;

/// Which method was called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedOp {
    Apply,
    Reconcile,
    Cleanup,
}

/// One call of the driver.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub op: RecordedOp,
    /// The desired state (None for cleanup).
    pub state: Option<NatState>,
    pub at: Instant,
    pub wall: SystemTime,
    /// False when the call returned a simulated failure.
    pub ok: bool,
}

#[derive(Debug)]
struct Inner {
    log: Mutex<Vec<Recorded>>,
    /// Keep at most this many records (benchmarks run many agents for long).
    limit: Option<usize>,
    /// How many of the next calls fail.
    fail_next: Mutex<usize>,
    /// The last state successfully applied (None before the first, and after cleanup).
    current: watch::Sender<Option<NatState>>,
}

/// The recording driver. Clones share the same log, so a test keeps one clone and gives
/// another (boxed) to the agent.
#[derive(Debug, Clone)]
pub struct RecordingDriver {
    inner: Arc<Inner>,
}

impl Default for RecordingDriver {
    fn default() -> Self {
        RecordingDriver::new()
    }
}

impl RecordingDriver {
    pub fn new() -> RecordingDriver {
        Self::with_limit(None)
    }

    /// A driver that keeps only the last `limit` records.
    pub fn bounded(limit: usize) -> RecordingDriver {
        Self::with_limit(Some(limit.max(1)))
    }

    fn with_limit(limit: Option<usize>) -> RecordingDriver {
        let (current, _) = watch::channel(None);
        RecordingDriver {
            inner: Arc::new(Inner {
                limit,
                log: Mutex::new(Vec::new()),
                fail_next: Mutex::new(0),
                current,
            }),
        }
    }

    /// Every call so far, oldest first.
    pub fn records(&self) -> Vec<Recorded> {
        self.inner.log.lock().clone()
    }

    /// The states of the successful applies and reconciles, oldest first.
    pub fn applied_states(&self) -> Vec<NatState> {
        self.inner
            .log
            .lock()
            .iter()
            .filter(|r| r.ok)
            .filter_map(|r| r.state.clone())
            .collect()
    }

    /// The last successfully applied state.
    pub fn current(&self) -> Option<NatState> {
        self.inner.current.borrow().clone()
    }

    /// Watch the last successfully applied state change.
    pub fn subscribe(&self) -> watch::Receiver<Option<NatState>> {
        self.inner.current.subscribe()
    }

    /// Make the next `n` calls fail with [`DataplaneError::Simulated`] (they are still
    /// recorded, with `ok: false`).
    pub fn fail_next(&self, n: usize) {
        *self.inner.fail_next.lock() = n;
    }

    fn record(&self, op: RecordedOp, state: Option<&NatState>) -> Result<(), DataplaneError> {
        let fail = {
            let mut f = self.inner.fail_next.lock();
            let fail = *f > 0;
            *f = f.saturating_sub(1);
            fail
        };
        {
            let mut log = self.inner.log.lock();
            if let Some(limit) = self.inner.limit
                && log.len() >= limit
            {
                let excess = log.len() + 1 - limit;
                log.drain(..excess);
            }
            log.push(Recorded {
                op,
                state: state.cloned(),
                at: Instant::now(),
                wall: SystemTime::now(),
                ok: !fail,
            });
        }
        if fail {
            return Err(DataplaneError::Simulated);
        }
        let new = state.cloned();
        self.inner.current.send_if_modified(|cur| {
            let changed = *cur != new;
            *cur = new;
            changed
        });
        Ok(())
    }

    fn report(start: Instant) -> ApplyReport {
        ApplyReport {
            outcome: ApplyOutcome::Updated,
            elapsed: start.elapsed(),
            ..ApplyReport::default()
        }
    }
}

impl NatDriver for RecordingDriver {
    fn blocks(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        "recording"
    }

    fn apply(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        self.record(RecordedOp::Apply, Some(desired))?;
        Ok(Self::report(start))
    }

    fn reconcile(&mut self, desired: &NatState) -> Result<ApplyReport, DataplaneError> {
        let start = Instant::now();
        self.record(RecordedOp::Reconcile, Some(desired))?;
        Ok(Self::report(start))
    }

    fn cleanup(&mut self) -> Result<(), DataplaneError> {
        self.record(RecordedOp::Cleanup, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_states_and_failures() {
        let rec = RecordingDriver::new();
        let mut boxed: Box<dyn NatDriver> = Box::new(rec.clone());
        let rx = rec.subscribe();
        let mut s = NatState::default();
        boxed.apply(&s).expect("apply");
        s.v4.nat_pools.insert("10.0.0.0/16".parse().expect("cidr"));
        rec.fail_next(1);
        assert!(matches!(boxed.apply(&s), Err(DataplaneError::Simulated)));
        assert_eq!(rec.current(), Some(NatState::default()));
        boxed.reconcile(&s).expect("reconcile");
        assert_eq!(rec.current(), Some(s.clone()));
        assert!(rx.has_changed().expect("sender alive"));
        boxed.cleanup().expect("cleanup");
        assert_eq!(rec.current(), None);
        let ops: Vec<(RecordedOp, bool)> = rec.records().iter().map(|r| (r.op, r.ok)).collect();
        assert_eq!(
            ops,
            vec![
                (RecordedOp::Apply, true),
                (RecordedOp::Apply, false),
                (RecordedOp::Reconcile, true),
                (RecordedOp::Cleanup, true)
            ]
        );
        assert_eq!(rec.applied_states().len(), 2);
        let small = RecordingDriver::bounded(2);
        let mut b: Box<dyn NatDriver> = Box::new(small.clone());
        for _ in 0..5 {
            b.apply(&s).expect("apply");
        }
        assert_eq!(small.records().len(), 2);
        let at: Vec<Instant> = rec.records().iter().map(|r| r.at).collect();
        assert!(at.windows(2).all(|w| w[0] <= w[1]));
    }
}
