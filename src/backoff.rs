//! Jittered exponential backoff, for every loop that retries after a failure (the
//! controller's cache watch, bootstrap and IPAM reconciler; usable by the agent's
//! loops too).
//!
//! The n-th consecutive failure waits `min * 2^n`, capped at `max`, then spread by
//! ±25 % so that replicas (or agents) that failed together do not retry in step. A
//! success resets it.

use std::time::Duration;

/// The state of one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    /// Waits from about `min` after the first failure up to about `max`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forget the failures (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Count a failure and return how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(30);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .min
            .checked_mul(1u32 << exp)
            .map_or(self.max, |d| d.min(self.max));
        jittered(base)
    }

    /// Count a failure and sleep for the delay.
    pub async fn wait(&mut self) {
        let d = self.next_delay();
        tokio::time::sleep(d).await;
    }
}

/// `d` plus or minus up to a quarter of it: somewhere in [`jitter_range`]`(d)`.
pub fn jittered(d: Duration) -> Duration {
    let range = jitter_range(d);
    let width = u64::try_from((*range.end() - *range.start()).as_nanos()).unwrap_or(u64::MAX);
    if width == 0 {
        return d;
    }
    *range.start() + Duration::from_nanos(rand::random_range(0..=width))
}

/// Every delay [`jittered`] may give for `d` (and so a backoff for a base delay `d`).
pub fn jitter_range(d: Duration) -> std::ops::RangeInclusive<Duration> {
    let quarter = d / 4;
    (d - quarter)..=(d + quarter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn within(d: Duration, base_ms: u64) -> bool {
        jitter_range(Duration::from_millis(base_ms)).contains(&d)
    }

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for base in [100, 200, 400, 800, 1000, 1000] {
            let d = b.next_delay();
            assert!(within(d, base), "{d:?} not around {base} ms");
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert!(within(b.next_delay(), 100));
    }

    #[test]
    fn many_failures_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..200 {
            assert!(b.next_delay() <= Duration::from_millis(37_500));
        }
    }

    #[test]
    fn jitter_spreads_within_a_quarter() {
        let d = Duration::from_millis(400);
        let samples: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(samples.iter().all(|s| within(*s, 400)));
        assert!(samples.iter().any(|s| *s != samples[0]), "not all equal");
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_growing_delay() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let t0 = tokio::time::Instant::now();
        b.wait().await;
        let first = t0.elapsed();
        assert!(within(first, 100), "{first:?}");
        let t1 = tokio::time::Instant::now();
        b.wait().await;
        b.wait().await;
        let next_two = t1.elapsed();
        // 200 + 400 ms, each within a quarter.
        assert!(next_two >= Duration::from_millis(450) && next_two <= Duration::from_millis(750));
    }
}
