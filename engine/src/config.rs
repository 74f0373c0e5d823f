//! What an engine process needs to know.

use std::time::Duration;

use orderflow_activities::broker::Topology;

/// Engine settings; the binary fills them from flags and the environment.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub amqp_url: String,
    pub topology: Topology,
    /// Most outbox rows published per round.
    pub relay_batch: i64,
    /// Most results applied per transaction.
    pub intake_batch: usize,
    /// Most timers fired per round.
    pub timer_batch: i64,
    /// How long pollers wait for a `NOTIFY` before looking anyway.
    pub poll_fallback: Duration,
}

impl EngineConfig {
    pub fn new(amqp_url: impl Into<String>, topology: Topology) -> Self {
        Self {
            amqp_url: amqp_url.into(),
            topology,
            relay_batch: 500,
            intake_batch: 512,
            timer_batch: 500,
            poll_fallback: Duration::from_secs(1),
        }
    }
}
