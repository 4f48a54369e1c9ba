//! The retry schedule for TEMPORARILY_FAILED jobs: exponential backoff with a cap and jitter,
//! and the point where retries are used up.

use std::time::Duration;

/// How a callback's failed runs are retried (`[retry]` in the config).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Delay after the first failed attempt.
    pub delay: Duration,
    /// Each next delay is the previous one times this (at least 1).
    pub multiplier: f64,
    /// No delay exceeds this.
    pub max_delay: Duration,
    /// Fraction (0 to 1) by which a delay is randomly stretched or shrunk.
    pub jitter: f64,
    /// After this many counted attempts a failing job becomes PERMANENTLY_FAILED.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            delay: Duration::from_secs(60),
            multiplier: 2.0,
            max_delay: Duration::from_secs(6 * 3600),
            jitter: 0.1,
            max_attempts: 25,
        }
    }
}

/// What happens to a job after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Run again once this delay has passed.
    After(Duration),
    /// Retries are used up.
    GiveUp,
}

impl RetryPolicy {
    /// The decision after `attempts` counted attempts (1 after the first run) all failed.
    ///
    /// `spread` is a number in [-1, 1] that picks where in the jitter band the delay falls;
    /// callers pass a random one, tests a fixed one.
    pub fn after_failure(&self, attempts: u32, spread: f64) -> Retry {
        if attempts >= self.max_attempts {
            return Retry::GiveUp;
        }
        let exponent = i32::try_from(attempts.saturating_sub(1)).unwrap_or(i32::MAX);
        let max = self.max_delay.as_secs_f64();
        let base = (self.delay.as_secs_f64() * self.multiplier.powi(exponent)).min(max);
        let jittered = base * (1.0 + self.jitter * spread.clamp(-1.0, 1.0));
        // Jitter may not push a delay past the cap, nor below zero.
        Retry::After(Duration::from_secs_f64(jittered.clamp(0.0, max.max(0.0))))
    }
}

/// A number in [-1, 1] that differs between jobs and calls, for spreading retries of many jobs.
pub fn random_spread(job_id: i64) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    // splitmix64: a well-mixed 64-bit value from the job id and the clock.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mut z = (nanos as u64) ^ (job_id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    #[allow(clippy::cast_precision_loss)]
    let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(policy: &RetryPolicy, attempts: u32) -> Duration {
        match policy.after_failure(attempts, 0.0) {
            Retry::After(delay) => delay,
            Retry::GiveUp => panic!("gave up after {attempts}"),
        }
    }

    #[test]
    fn doubles_from_the_first_delay_up_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(after(&policy, 1), Duration::from_secs(60));
        assert_eq!(after(&policy, 2), Duration::from_secs(120));
        assert_eq!(after(&policy, 3), Duration::from_secs(240));
        assert_eq!(after(&policy, 9), Duration::from_secs(256 * 60));
        assert_eq!(after(&policy, 10), Duration::from_secs(6 * 3600));
        assert_eq!(after(&policy, 24), Duration::from_secs(6 * 3600));
    }

    #[test]
    fn gives_up_at_max_attempts() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.after_failure(25, 0.0), Retry::GiveUp);
        assert_eq!(policy.after_failure(26, 0.0), Retry::GiveUp);
        let once = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        assert_eq!(once.after_failure(1, 0.0), Retry::GiveUp);
    }

    #[test]
    fn default_schedule_spans_about_four_days() {
        let policy = RetryPolicy::default();
        let total: Duration = (1..25).map(|attempt| after(&policy, attempt)).sum();
        let days = total.as_secs_f64() / 86_400.0;
        assert!((4.0..4.6).contains(&days), "{days}");
    }

    #[test]
    fn jitter_stays_within_its_band_and_under_the_cap() {
        let policy = RetryPolicy::default();
        let low = policy.after_failure(1, -1.0);
        let high = policy.after_failure(1, 1.0);
        assert_eq!(low, Retry::After(Duration::from_secs(54)));
        assert_eq!(high, Retry::After(Duration::from_secs(66)));
        assert_eq!(
            policy.after_failure(20, 1.0),
            Retry::After(Duration::from_secs(6 * 3600))
        );
    }

    #[test]
    fn zero_delay_retries_at_once() {
        let policy = RetryPolicy {
            delay: Duration::ZERO,
            ..RetryPolicy::default()
        };
        assert_eq!(policy.after_failure(3, 1.0), Retry::After(Duration::ZERO));
    }

    #[test]
    fn random_spread_stays_in_range() {
        for id in 0..1000 {
            let spread = random_spread(id);
            assert!((-1.0..=1.0).contains(&spread), "{spread}");
        }
    }
}
