//! A circuit breaker in front of Stripe, as the platform's policy asks: it opens when at least
//! half of the recent calls failed (5xx, 429, timeouts, no connection), rejects calls at once
//! while open so a Stripe outage costs the saga a fast retryable error instead of a timeout per
//! task, and after the cool-down lets one trial call through (half-open) whose outcome closes or
//! reopens it.
//!
//! The logic takes the time as an argument, so it is tested without waiting; its state is the
//! gauge `payment_stripe_circuit_state` (0 closed, 1 half-open, 2 open).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::metrics;

/// When the breaker opens and for how long.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// How many of the latest calls are judged.
    pub window: usize,
    /// Calls older than this no longer count.
    pub window_age: Duration,
    /// Fewer calls than this in the window never open the breaker: two failures of two calls
    /// are bad luck, not an outage.
    pub min_calls: usize,
    /// The failure share at which it opens.
    pub failure_ratio: f64,
    /// How long it stays open before a trial call is let through.
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            window_age: Duration::from_secs(60),
            min_calls: 10,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// The breaker's state, as the metric reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// One trial call is in flight; others are rejected until it settles.
    HalfOpen,
    /// Calls are rejected until the cool-down ends.
    Open,
}

impl BreakerState {
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::HalfOpen => 1,
            Self::Open => 2,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_in_flight: bool },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    /// `(when, ok)` of the latest calls while closed.
    calls: VecDeque<(Instant, bool)>,
}

/// Refused by the breaker: Stripe is considered down for `retry_in` more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the Stripe circuit breaker is open (next trial in {retry_in:?})")]
pub struct Open {
    pub retry_in: Duration,
}

/// The circuit breaker; cheap to share.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Arc<Mutex<Inner>>,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> Self {
        let breaker = Self {
            config,
            inner: Arc::new(Mutex::new(Inner {
                phase: Phase::Closed,
                calls: VecDeque::new(),
            })),
        };
        // Registered at once so `/metrics` shows the state before the first change; not set,
        // since the gauge is process-wide and another breaker (tests) may be the one open.
        std::sync::LazyLock::force(&metrics::STRIPE_CIRCUIT_STATE);
        breaker
    }

    /// The state at `now` (an open breaker whose cool-down is over reads as half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if now < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`. The permit must be settled with [`Permit::record`]; one
    /// dropped unsettled (the call was cancelled, e.g. by the task deadline) counts as a failure.
    pub fn permit(&self, now: Instant) -> Result<Permit, Open> {
        let mut inner = self.lock();
        match inner.phase {
            Phase::Closed => {}
            Phase::Open { until } if now < until => {
                return Err(Open {
                    retry_in: until - now,
                });
            }
            Phase::Open { .. } => {
                inner.phase = Phase::HalfOpen {
                    trial_in_flight: true,
                };
                drop(inner);
                self.publish(BreakerState::HalfOpen);
                return Ok(self.issue(true));
            }
            Phase::HalfOpen {
                ref mut trial_in_flight,
            } => {
                if *trial_in_flight {
                    return Err(Open {
                        retry_in: Duration::ZERO,
                    });
                }
                *trial_in_flight = true;
                return Ok(self.issue(true));
            }
        }
        Ok(self.issue(false))
    }

    fn issue(&self, trial: bool) -> Permit {
        Permit {
            breaker: self.clone(),
            trial,
            settled: false,
        }
    }

    fn settle(&self, now: Instant, trial: bool, ok: bool) {
        let mut inner = self.lock();
        let next = match (&inner.phase, trial) {
            (Phase::HalfOpen { .. }, true) if ok => {
                inner.phase = Phase::Closed;
                inner.calls.clear();
                Some(BreakerState::Closed)
            }
            (Phase::HalfOpen { .. }, true) => {
                inner.phase = Phase::Open {
                    until: now + self.config.open_for,
                };
                Some(BreakerState::Open)
            }
            (Phase::Closed, false) => {
                inner.calls.push_back((now, ok));
                while inner.calls.len() > self.config.window {
                    inner.calls.pop_front();
                }
                let oldest = now.checked_sub(self.config.window_age);
                while let (Some((at, _)), Some(oldest)) = (inner.calls.front(), oldest) {
                    if *at >= oldest {
                        break;
                    }
                    inner.calls.pop_front();
                }
                let total = inner.calls.len();
                let failed = inner.calls.iter().filter(|(_, ok)| !ok).count();
                if total >= self.config.min_calls
                    && failed as f64 >= self.config.failure_ratio * total as f64
                {
                    inner.phase = Phase::Open {
                        until: now + self.config.open_for,
                    };
                    inner.calls.clear();
                    tracing::warn!(failed, total, "Stripe circuit breaker opened");
                    Some(BreakerState::Open)
                } else {
                    None
                }
            }
            // A call let through before the breaker changed phase: its outcome is stale.
            _ => None,
        };
        drop(inner);
        if let Some(state) = next {
            self.publish(state);
        }
    }

    fn publish(&self, state: BreakerState) {
        metrics::STRIPE_CIRCUIT_STATE.set(state.gauge_value());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is a few plain values, consistent after any panic; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Leave to make one call; report how it went.
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    trial: bool,
    settled: bool,
}

impl Permit {
    /// `ok`: Stripe answered as a healthy Stripe does (success, or a 4xx about the request).
    pub fn record(mut self, now: Instant, ok: bool) {
        self.settled = true;
        self.breaker.settle(now, self.trial, ok);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.settle(Instant::now(), self.trial, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            window: 10,
            window_age: Duration::from_secs(60),
            min_calls: 4,
            failure_ratio: 0.5,
            open_for: Duration::from_secs(30),
        })
    }

    fn call(b: &CircuitBreaker, now: Instant, ok: bool) -> Result<(), Open> {
        b.permit(now)?.record(now, ok);
        Ok(())
    }

    #[test]
    fn opens_at_half_failures_once_enough_calls_were_seen() {
        let b = breaker();
        let t = Instant::now();
        call(&b, t, false).unwrap();
        call(&b, t, false).unwrap();
        call(&b, t, false).unwrap();
        // Three failures of three calls: below `min_calls`, still closed.
        assert_eq!(b.state(t), BreakerState::Closed);
        call(&b, t, true).unwrap();
        // 3 of 4 failed.
        assert_eq!(b.state(t), BreakerState::Open);
        assert_eq!(
            call(&b, t + Duration::from_secs(10), true),
            Err(Open {
                retry_in: Duration::from_secs(20)
            })
        );
    }

    #[test]
    fn stays_closed_below_the_ratio_and_forgets_old_calls() {
        let b = breaker();
        let t = Instant::now();
        for ok in [true, false, true, true, false, true] {
            call(&b, t, ok).unwrap();
        }
        assert_eq!(b.state(t), BreakerState::Closed);
        // Failures long ago do not count against a fresh window.
        let later = t + Duration::from_secs(120);
        call(&b, later, false).unwrap();
        call(&b, later, true).unwrap();
        call(&b, later, true).unwrap();
        call(&b, later, true).unwrap();
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[test]
    fn half_opens_after_the_cool_down_with_one_trial() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            call(&b, t, false).unwrap();
        }
        let after = t + Duration::from_secs(30);
        assert_eq!(b.state(after), BreakerState::HalfOpen);
        let trial = b.permit(after).unwrap();
        assert!(b.permit(after).is_err(), "only one trial at a time");
        trial.record(after, false);
        assert_eq!(b.state(after), BreakerState::Open);

        let again = after + Duration::from_secs(30);
        b.permit(again).unwrap().record(again, true);
        assert_eq!(b.state(again), BreakerState::Closed);
        call(&b, again, true).unwrap();
    }

    #[test]
    fn a_cancelled_call_counts_as_a_failure() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            drop(b.permit(t).unwrap());
        }
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
    }
}
