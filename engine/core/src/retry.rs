//! Retry policy and backoff. Jitter is derived from the task id rather than drawn from an RNG so
//! that the decider stays deterministic and replay reproduces the same timer.

use std::time::Duration;

use crate::{ActivityError, TaskId};

/// How a step's attempts are retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub initial_interval: Duration,
    pub multiplier: f64,
    pub max_interval: Duration,
    /// Attempts in all, the first included; 0 means no limit.
    pub max_attempts: u32,
    /// Fraction of the delay (0.0..=1.0) that may be taken off at random.
    pub jitter: f64,
    /// Error codes never retried, whatever the error's own flag says.
    pub non_retryable_codes: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_millis(200),
            multiplier: 2.0,
            max_interval: Duration::from_secs(30),
            max_attempts: 5,
            jitter: 0.2,
            non_retryable_codes: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Whether this error may be retried under this policy.
    pub fn is_retryable(&self, error: &ActivityError) -> bool {
        error.retryable && !self.non_retryable_codes.contains(&error.code)
    }

    /// Whether `attempts` attempts used up the budget.
    pub fn exhausted(&self, attempts: u32) -> bool {
        self.max_attempts != 0 && attempts >= self.max_attempts
    }

    /// The delay after the `attempt`-th attempt (1-based) failed.
    pub fn backoff(&self, attempt: u32, task: TaskId) -> Duration {
        let exp = self
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1).min(64) as i32);
        let raw = self.initial_interval.as_secs_f64() * exp;
        let capped = raw.min(self.max_interval.as_secs_f64());
        let unit = (task.0.as_u128() % 10_000) as f64 / 10_000.0;
        let jittered = capped * (1.0 - self.jitter.clamp(0.0, 1.0) * unit);
        Duration::from_secs_f64(jittered.max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            jitter: 0.0,
            ..RetryPolicy::default()
        };
        let t = TaskId(Uuid::nil());
        assert_eq!(p.backoff(1, t), Duration::from_millis(200));
        assert_eq!(p.backoff(2, t), Duration::from_millis(400));
        assert_eq!(p.backoff(30, t), Duration::from_secs(30));
    }

    #[test]
    fn jitter_only_shortens_and_is_stable() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        let t = TaskId(Uuid::from_u128(7_777));
        let d = p.backoff(1, t);
        assert!(d <= Duration::from_millis(200) && d >= Duration::from_millis(100));
        assert_eq!(d, p.backoff(1, t));
    }

    #[test]
    fn codes_override_the_flag() {
        let p = RetryPolicy {
            non_retryable_codes: vec!["card_declined".into()],
            ..Default::default()
        };
        assert!(!p.is_retryable(&ActivityError::retryable("card_declined", "no")));
        assert!(p.is_retryable(&ActivityError::retryable("timeout", "slow")));
        assert!(!p.is_retryable(&ActivityError::permanent("x", "y")));
    }
}
