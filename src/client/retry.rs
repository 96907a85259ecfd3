//! How often and how patiently a request is tried again.

use std::time::Duration;

/// Network errors and 5xx replies are tried again after a delay that doubles each time, up to
/// `max_delay`, `attempts` times in all. Refusals (4xx) are never tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first one included; at least 1.
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 8 tries over about a minute: 0.5 s, 1 s, 2 s, … up to 30 s between them.
    fn default() -> Self {
        Self { attempts: 8, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(30) }
    }
}

impl RetryPolicy {
    /// The wait after `failed` failed tries (1 for the first).
    pub fn delay_after(&self, failed: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed.saturating_sub(1));
        self.first_delay.saturating_mul(factor).min(self.max_delay)
    }

    /// Whether another try follows `failed` failed ones.
    pub fn tries_again_after(&self, failed: u32) -> bool {
        failed < self.attempts.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_tries_are_bounded() {
        let policy =
            RetryPolicy { attempts: 4, first_delay: Duration::from_millis(500), max_delay: Duration::from_secs(3) };
        let delays: Vec<u128> = (1..=5).map(|n| policy.delay_after(n).as_millis()).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 3000, 3000]);
        assert_eq!(policy.delay_after(u32::MAX), Duration::from_secs(3));
        assert!(policy.tries_again_after(3));
        assert!(!policy.tries_again_after(4));
        assert!(!RetryPolicy { attempts: 0, ..policy }.tries_again_after(1), "at least one try, never more");
    }
}
