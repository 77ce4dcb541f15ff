//! The EC2 client's own budget: a token bucket per API action (the shape of EC2's own
//! throttling, "Request throttling for the Amazon EC2 API": per account and Region, per
//! action, a bucket refilled at a fixed rate), and the jittered exponential backoff of a
//! call EC2 throttled or failed to answer.
//!
//! EC2's bucket for non-mutating actions holds 100 tokens refilled at 20 per second, and it
//! is shared with the VPC CNI's ipamd and the VPC resource controller (which attaches the
//! branch ENIs): sgpath's default, 1 call per second per action with a burst of 10, leaves
//! them 95 % of it however many addresses sgpath is asked about.
//!
//! Side effects: none but waiting on tokio's clock.

use std::{collections::BTreeMap, time::Duration};

use tokio::time::Instant;

/// Default sustained calls per second per action (`--ec2-calls-per-second`).
pub const DEFAULT_CALLS_PER_SECOND: f64 = 1.0;
/// Default burst per action (`--ec2-burst`).
pub const DEFAULT_BURST: u32 = 10;

/// How many calls per action, sustained and at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Tokens refilled per second.
    pub per_second: f64,
    /// The bucket's size: calls that may go at once after a quiet spell.
    pub burst: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            per_second: DEFAULT_CALLS_PER_SECOND,
            burst: DEFAULT_BURST,
        }
    }
}

/// One bucket per action. Taking a token reserves it even when the bucket is empty (the
/// level goes below zero) and waits until the refill covers it: waiting callers are served
/// in the order they asked, and none is starved.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    buckets: BTreeMap<&'static str, Bucket>,
    /// Calls let through per action since the start (retries included).
    calls: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Bucket {
    /// May be negative: tokens reserved ahead of the refill.
    level: f64,
    at: Instant,
}

impl Budget {
    pub fn new(limits: Limits) -> Budget {
        Budget {
            limits: Limits {
                per_second: limits.per_second.max(f64::MIN_POSITIVE),
                burst: limits.burst.max(1),
            },
            buckets: BTreeMap::new(),
            calls: BTreeMap::new(),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Reserves one call of `action` now and says how long to wait before making it.
    pub fn reserve(&mut self, action: &'static str, now: Instant) -> Duration {
        let Limits { per_second, burst } = self.limits;
        let burst = f64::from(burst);
        let b = self.buckets.entry(action).or_insert(Bucket {
            level: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_second;
        b.level = (b.level + refill).min(burst) - 1.0;
        b.at = now;
        *self.calls.entry(action).or_default() += 1;
        if b.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.level / per_second)
        }
    }

    /// Waits for a token of `action`.
    pub async fn take(&mut self, action: &'static str) {
        let wait = self.reserve(action, Instant::now());
        if !wait.is_zero() {
            tracing::debug!(
                event = "ec2-budget-wait",
                action,
                wait_ms = wait.as_millis() as u64,
                "waiting for the EC2 budget"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Calls let through per action since the start (retries count: each is a call EC2
    /// charges).
    pub fn calls(&self) -> &BTreeMap<&'static str, u64> {
        &self.calls
    }
}

/// Exponential backoff with "equal jitter": the n-th wait is half of `base * 2^n` (capped at
/// `cap`) plus a random share of the other half, so a fleet throttled at once does not
/// retry at once, and every wait is at least half the nominal one.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The wait before retry `attempt` (0 for the first retry).
    pub fn wait(self, attempt: u32) -> Duration {
        self.wait_with(attempt, random_unit())
    }

    /// As [`Backoff::wait`] with the random share given (`0.0..1.0`).
    pub fn wait_with(self, attempt: u32, unit: f64) -> Duration {
        let nominal = self
            .base
            .checked_mul(1u32.checked_shl(attempt.min(30)).unwrap_or(u32::MAX))
            .unwrap_or(self.cap)
            .min(self.cap);
        let half = nominal / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniform number in `0.0..1.0` from the standard library's randomly keyed hasher (no
/// RNG crate for one number per retry).
fn random_unit() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of 10 goes at once; then one call per second; a quiet spell refills the
    /// bucket up to the burst, never beyond; another action has its own bucket.
    #[tokio::test(start_paused = true)]
    async fn the_bucket_lets_a_burst_through_then_one_per_second() {
        let mut b = Budget::new(Limits::default());
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..15 {
            b.take("DescribeNetworkInterfaces").await;
            at.push(start.elapsed());
        }
        assert!(at[..10].iter().all(|d| d.is_zero()), "{at:?}");
        let secs: Vec<u64> = at[10..].iter().map(|d| d.as_millis() as u64).collect();
        assert_eq!(secs, [1000, 2000, 3000, 4000, 5000]);
        // Another action is not slowed by this one.
        let t = Instant::now();
        b.take("DescribeSecurityGroups").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
        // An hour of quiet refills 10 tokens, not 3600.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        let t = Instant::now();
        for _ in 0..11 {
            b.take("DescribeNetworkInterfaces").await;
        }
        assert_eq!(t.elapsed(), Duration::from_secs(1));
        assert_eq!(b.calls()["DescribeNetworkInterfaces"], 26);
        assert_eq!(b.calls()["DescribeSecurityGroups"], 1);
    }

    /// Sustained demand of 5 calls a second for a minute gets 1 a second (after the burst):
    /// the budget, not the caller, sets the rate EC2 sees.
    #[tokio::test(start_paused = true)]
    async fn sustained_demand_is_held_to_the_rate() {
        let mut b = Budget::new(Limits {
            per_second: 1.0,
            burst: 10,
        });
        let start = Instant::now();
        let mut done = 0u32;
        while start.elapsed() < Duration::from_secs(60) {
            b.take("DescribeSecurityGroups").await;
            done += 1;
        }
        // 10 at once, then one per second up to the minute (the last at 60 s).
        assert_eq!(done, 10 + 60, "{done}");
    }

    /// `--ec2-calls-per-second 0.5 --ec2-burst 1`: one call, then one every 2 s.
    #[tokio::test(start_paused = true)]
    async fn a_slower_rate_and_no_burst() {
        let mut b = Budget::new(Limits {
            per_second: 0.5,
            burst: 1,
        });
        let start = Instant::now();
        for expected in [0, 2, 4, 6] {
            b.take("GetManagedPrefixListEntries").await;
            assert_eq!(start.elapsed(), Duration::from_secs(expected));
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(5),
        };
        assert_eq!(b.wait_with(0, 0.0), Duration::from_millis(100));
        assert_eq!(b.wait_with(0, 1.0), Duration::from_millis(200));
        assert_eq!(b.wait_with(3, 0.5), Duration::from_millis(1200));
        assert_eq!(b.wait_with(10, 1.0), Duration::from_secs(5));
        assert_eq!(b.wait_with(u32::MAX, 0.0), Duration::from_millis(2500));
        let waits: std::collections::BTreeSet<Duration> = (0..20).map(|_| b.wait(4)).collect();
        assert!(waits.len() > 1, "no jitter: {waits:?}");
        assert!(
            waits
                .iter()
                .all(|w| (Duration::from_millis(1600)..=Duration::from_millis(3200)).contains(w)),
            "{waits:?}"
        );
    }
}
