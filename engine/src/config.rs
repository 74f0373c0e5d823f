//! What an engine process needs to know beyond its store and queue.

use std::time::Duration;

/// Engine settings; the binary fills them from flags and the environment.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most outbox rows published per round.
    pub relay_batch: i64,
    /// Most results applied per transaction.
    pub intake_batch: usize,
    /// Most timers fired per round.
    pub timer_batch: i64,
    /// How long pollers wait for a wake-up before looking anyway.
    pub poll_fallback: Duration,
    /// How often the backlog gauges (queue depths, outbox lag, stuck workflows) are sampled.
    pub backlog_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            relay_batch: 500,
            intake_batch: 512,
            timer_batch: 500,
            poll_fallback: Duration::from_secs(1),
            backlog_interval: crate::loops::backlog::INTERVAL,
        }
    }
}
