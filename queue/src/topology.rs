//! The names the engine, the workers and the services agree on.
//!
//! Each activity has one durable queue, `<prefix>orderflow.task.<activity>`; workers report to
//! `<prefix>orderflow.results`; finished workflows are published on the topic exchange
//! `<prefix>orderflow.events`, where each service that follows them binds its own queue
//! `<prefix><service>.workflow-events`. Messages that cannot be handled (undecodable, or
//! rejected) are dead-lettered to `<prefix>orderflow.dead` instead of blocking their queue.

use orderflow_core::protocol::{EVENTS_EXCHANGE, RESULTS_QUEUE, task_queue};

/// Queue and exchange names, with a prefix so tests (and tenants) can share one broker.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn task_queue(&self, activity: &str) -> String {
        format!("{}{}", self.prefix, task_queue(activity))
    }

    pub fn results_queue(&self) -> String {
        format!("{}{}", self.prefix, RESULTS_QUEUE)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}orderflow.dead", self.prefix)
    }

    /// The topic exchange of workflow lifecycle events.
    pub fn events_exchange(&self) -> String {
        format!("{}{}", self.prefix, EVENTS_EXCHANGE)
    }

    /// The queue on which `service` follows workflow events.
    pub fn events_queue(&self, service: &str) -> String {
        format!("{}{service}.workflow-events", self.prefix)
    }
}
