//! One engine process: its store, its task queue, and the loops that move workflows between
//! them. The same engine runs on Postgres and RabbitMQ in production and on the embedded store
//! and queue in `orderflow dev`; only the adapters differ (DESIGN.md §5).

use std::sync::Arc;

use orderflow_core::Registry;
use orderflow_queue::TaskQueue;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{EngineConfig, apply::Applier, loops::supervise, store::Store};

/// An engine on store `S` and queue `Q`. Clones share the store and queue.
#[derive(Debug, Clone)]
pub struct Engine<S, Q> {
    pub(crate) store: S,
    pub(crate) queue: Q,
    pub(crate) applier: Applier,
    pub(crate) config: EngineConfig,
}

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// An engine running the definitions of `registry`; tasks go to the queues `queue` names.
    /// The metrics' per-type series are created for every type it deploys.
    pub fn new(store: S, queue: Q, registry: Arc<Registry>, config: EngineConfig) -> Self {
        crate::metrics::declare(&registry);
        let applier = Applier::new(registry, queue.topology().clone());
        Self {
            store,
            queue,
            applier,
            config,
        }
    }

    /// Folds events and writes their effects; what the API and the admin UI start and act
    /// through.
    pub fn applier(&self) -> &Applier {
        &self.applier
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Runs the outbox relay, the timer poller, the result intake and the backlog gauges until
    /// `stop`. Each loop first does whatever is pending (unsent outbox rows are published, due
    /// timers fire), which is how a restarted engine resumes everything in flight (DESIGN.md
    /// §3.6); each survives its store or queue going away (it logs, backs off and starts again).
    pub async fn run(self, stop: CancellationToken) {
        let mut set = JoinSet::new();
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("relay", &s, || e.relay_loop(&s)).await });
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("timers", &s, || e.timer_loop(&s)).await });
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("intake", &s, || e.intake_loop(&s)).await });
        let (e, s) = (self, stop);
        set.spawn(async move { e.backlog_loop(&s).await });
        while set.join_next().await.is_some() {}
    }
}
