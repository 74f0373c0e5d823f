//! One engine process: its store, its task queue, its committer, and the loops that move
//! workflows between them. The same engine runs on Postgres and RabbitMQ in production and on the
//! embedded store and queue in `orderflow dev`; only the adapters differ (DESIGN.md §5).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use orderflow_core::Registry;
use orderflow_queue::TaskQueue;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{EngineConfig, apply::Applier, committer::Committer, loops::supervise, store::Store};

/// An engine on store `S` and queue `Q`. Clones share the store, the queue and the committer.
#[derive(Debug, Clone)]
pub struct Engine<S, Q> {
    pub(crate) store: S,
    pub(crate) queue: Q,
    pub(crate) committer: Committer,
    pub(crate) config: EngineConfig,
    /// Woken by the committer when it writes a timer due soon.
    pub(crate) timers: Arc<Notify>,
    /// When the committer started: outbox rows older than this are no business of its.
    pub(crate) started: DateTime<Utc>,
}

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// An engine running the definitions of `registry`; tasks go to the queues `queue` names.
    /// Its committer starts now (the API can start workflows before [`Self::run`]); the
    /// metrics' per-type series are created for every type it deploys.
    pub fn new(store: S, queue: Q, registry: Arc<Registry>, config: EngineConfig) -> Self {
        crate::metrics::declare(&registry);
        let applier = Applier::new(registry, queue.topology().clone());
        let timers = Arc::new(Notify::new());
        let started = crate::apply::now();
        let committer = Committer::spawn(store.clone(), queue.clone(), applier, timers.clone());
        Self {
            store,
            queue,
            committer,
            config,
            timers,
            started,
        }
    }

    /// The process's one writer: what the API and the admin UI start and act through.
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn queue(&self) -> &Q {
        &self.queue
    }

    /// Runs the result intake, the timer poller, the outbox relay and the backlog gauges until
    /// `stop`. The relay first publishes whatever an earlier process left in the outbox and the
    /// poller fires what is due, which is how a restarted engine resumes everything in flight
    /// (DESIGN.md §3.6); each loop survives its store or queue going away (it logs, backs off and
    /// starts again).
    ///
    /// A committer that dies (a bug: it panicked) leaves the process unable to write anything;
    /// then `run` cancels `stop`, so the whole process shuts down to be restarted, and answers
    /// [`CommitterDied`].
    pub async fn run(self, stop: CancellationToken) -> Result<(), CommitterDied> {
        let committer = self.committer.clone();
        let mut set = JoinSet::new();
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("relay", &s, || e.relay_loop(&s)).await });
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("timers", &s, || e.timer_loop(&s)).await });
        let (e, s) = (self.clone(), stop.clone());
        set.spawn(async move { supervise("intake", &s, || e.intake_loop(&s)).await });
        let (e, s) = (self, stop.clone());
        set.spawn(async move { e.backlog_loop(&s).await });
        let died = tokio::select! {
            () = committer.ended() => !stop.is_cancelled(),
            () = stop.cancelled() => false,
        };
        if died {
            stop.cancel();
        }
        while set.join_next().await.is_some() {}
        if died { Err(CommitterDied) } else { Ok(()) }
    }
}

/// The engine's committer ended while the engine ran.
#[derive(Debug, thiserror::Error)]
#[error("the engine's committer died; the process must be restarted")]
pub struct CommitterDied;
