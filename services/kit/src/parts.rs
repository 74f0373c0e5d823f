//! What a service contributes to a process, built once by the service's crate and assembled by
//! every host: `orderflow up` and `orderflow service` (each service on its port, RabbitMQ),
//! `orderflow worker` (only the activity handlers), `orderflow dev` (every API behind one
//! gateway, the embedded queue), the bench and the test stacks.
//!
//! [`ServiceParts`] lists the parts; [`ServiceParts::run`] runs all of them over a task queue
//! as one: until `stop`, or until one part fails, whereupon the rest are stopped too and the
//! first failure is the outcome.

use std::{any::Any, fmt, future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use futures::future::BoxFuture;
use orderflow_activities::{
    follower::{self, Subscription, WorkflowFinished},
    worker::{Handler, Worker},
};
use orderflow_queue::TaskQueue;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{db::Db, http::Readiness};

/// A handler of finished workflows: idempotent, `Err` to have the event delivered again.
pub type EventHandler =
    Arc<dyn Fn(WorkflowFinished) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// A background loop that runs until its token is cancelled.
pub type Loop = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A follower of finished workflows: what it follows and what it does with each.
#[derive(Clone)]
pub struct Follower {
    pub subscription: Subscription,
    pub handle: EventHandler,
}

impl fmt::Debug for Follower {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Follower")
            .field("subscription", &self.subscription)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// Follows `subscription`, calling `handle` with each event and a clone of `state`.
    pub fn new<T, F, Fut, E>(subscription: Subscription, state: T, handle: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(T, WorkflowFinished) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let handle = Arc::new(handle);
        Self {
            subscription,
            handle: Arc::new(move |event| {
                let fut = handle(state.clone(), event);
                Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
            }),
        }
    }
}

/// Everything one service runs.
pub struct ServiceParts {
    /// The service's name in metrics, logs and queue names.
    pub name: &'static str,
    /// Its REST API, mounted under `/api/v1`.
    pub api: Router,
    /// The first path segments under `/api/v1` its API answers (`orders`, `webhooks`): where a
    /// gateway in front of every service sends a request.
    pub paths: &'static [&'static str],
    /// What its `/ready` checks: its own dependencies (database, Redis); the host adds the task
    /// queue.
    pub ready: Readiness,
    /// Its activity handlers, for a worker.
    pub handlers: Vec<Arc<dyn Handler>>,
    /// Its followers of finished workflows.
    pub followers: Vec<Follower>,
    /// Its background loops (sweepers, retries of work the API started).
    pub loops: Vec<Loop>,
    /// Its database, closed once everything stopped.
    pub db: Option<Db>,
    /// What must live as long as the parts run (a built-in Stripe sandbox).
    pub keep_alive: Vec<Box<dyn Any + Send + Sync>>,
}

impl fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let handlers: Vec<&str> = self.handlers.iter().map(|h| h.activity()).collect();
        f.debug_struct("ServiceParts")
            .field("name", &self.name)
            .field("paths", &self.paths)
            .field("handlers", &handlers)
            .field("followers", &self.followers)
            .field("loops", &self.loops.len())
            .finish_non_exhaustive()
    }
}

/// Where and how a host runs a service's parts.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// Serve the API here (with `/health`, `/ready`, `/metrics`); `None` when another router
    /// (a gateway) mounts it.
    pub bind: Option<SocketAddr>,
    /// Tasks each activity handler runs at once.
    pub concurrency: usize,
    /// Run a worker for the activity handlers; without one, other processes take the tasks.
    pub workers: bool,
}

impl ServiceParts {
    /// Parts with nothing but an API.
    pub fn new(name: &'static str, paths: &'static [&'static str], api: Router) -> Self {
        Self {
            name,
            api,
            paths,
            ready: Readiness::new(),
            handlers: Vec::new(),
            followers: Vec::new(),
            loops: Vec::new(),
            db: None,
            keep_alive: Vec::new(),
        }
    }

    /// The whole HTTP app: the API under `/api/v1` plus `/health`, `/ready` and `/metrics`.
    pub fn app(&self, ready: Readiness) -> Router {
        crate::http::app(self.name, self.api.clone(), ready)
    }

    /// Runs every part over `queue` until `stop`: the API where `placement` says, a worker for
    /// the handlers, the followers and the loops. If one part fails the others are stopped too
    /// and its error is the outcome.
    pub async fn run<Q: TaskQueue>(
        mut self,
        queue: Q,
        placement: Placement,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut sup = Supervisor::new(self.name, &stop);
        if let Some(bind) = placement.bind {
            let ready = self.ready.clone().queue(queue.clone());
            sup.spawn(crate::http::serve(bind, self.app(ready), sup.stop()));
        }
        if !placement.workers {
            self.handlers.clear();
        }
        self.spawn_background(&queue, placement.concurrency, &mut sup);
        let outcome = sup.join().await;
        if let Some(db) = &self.db {
            db.close().await;
        }
        drop(self.keep_alive);
        outcome
    }

    /// Spawns the worker, the followers and the loops on `sup`: everything but the API. The
    /// loops are taken out, so a second call starts none.
    pub fn spawn_background<Q: TaskQueue>(
        &mut self,
        queue: &Q,
        concurrency: usize,
        sup: &mut Supervisor,
    ) {
        if !self.handlers.is_empty() {
            let worker = Worker::builder(queue.clone())
                .handlers(self.handlers.iter().cloned(), concurrency)
                .build();
            sup.spawn_worker(worker);
        }
        for f in &self.followers {
            let (q, sub, handle) = (queue.clone(), f.subscription.clone(), f.handle.clone());
            sup.spawn_infallible(follower::follow(
                q,
                sub,
                move |event| handle(event),
                sup.stop(),
            ));
        }
        for part in std::mem::take(&mut self.loops) {
            sup.spawn_loop(part);
        }
    }
}

/// Long-running parts supervised together.
///
/// ```no_run
/// # async fn demo(stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
/// let mut sup = orderflow_service_kit::parts::Supervisor::new("inventory", &stop);
/// let stop = sup.stop();
/// sup.spawn(async move {
///     stop.cancelled().await;
///     Ok(())
/// });
/// sup.join().await
/// # }
/// ```
#[derive(Debug)]
pub struct Supervisor {
    name: &'static str,
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Supervisor {
    /// Parts that stop when `stop` is cancelled (and, unlike `stop`'s other children, when one
    /// of them fails).
    pub fn new(name: &'static str, stop: &CancellationToken) -> Self {
        Self {
            name,
            stop: stop.child_token(),
            tasks: JoinSet::new(),
        }
    }

    /// The token every part must watch: cancelled at the outer stop or when a part ends.
    pub fn stop(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs one part.
    pub fn spawn(&mut self, part: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        self.tasks.spawn(part);
    }

    /// Runs a part that cannot fail (it logs its own errors and retries).
    pub fn spawn_infallible(&mut self, part: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move {
            part.await;
            Ok(())
        });
    }

    /// Runs a background loop until the parts stop.
    pub fn spawn_loop(&mut self, part: Loop) {
        let stop = self.stop();
        self.spawn_infallible(part(stop));
    }

    /// Runs activity workers until the parts stop.
    pub fn spawn_worker<Q: TaskQueue>(&mut self, worker: Worker<Q>) {
        let (stop, name) = (self.stop(), self.name);
        self.tasks.spawn(async move {
            worker
                .run(stop.cancelled_owned())
                .await
                .with_context(|| format!("{name} worker"))
        });
    }

    /// Waits for every part. The first to end (normally all end together at `stop`) stops the
    /// rest; the first failure, or panic, is returned.
    pub async fn join(mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            self.stop.cancel();
            let result = done
                .with_context(|| format!("a {} part panicked", self.name))
                .and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(
                    part = self.name,
                    error = format!("{e:#}"),
                    "a part failed; stopping"
                );
                if outcome.is_ok() {
                    outcome = Err(e);
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_part_stops_the_others_and_is_the_outcome() {
        let outer = CancellationToken::new();
        let mut sup = Supervisor::new("test", &outer);
        let stop = sup.stop();
        sup.spawn(async move {
            stop.cancelled().await;
            Ok(())
        });
        sup.spawn(async { anyhow::bail!("broken") });
        let err = sup.join().await.unwrap_err();
        assert_eq!(err.to_string(), "broken");
        assert!(
            !outer.is_cancelled(),
            "the caller's token is not ours to cancel"
        );
    }

    #[tokio::test]
    async fn the_outer_stop_ends_every_part_cleanly() {
        let outer = CancellationToken::new();
        let mut sup = Supervisor::new("test", &outer);
        for _ in 0..3 {
            let stop = sup.stop();
            sup.spawn_infallible(async move { stop.cancelled().await });
        }
        outer.cancel();
        sup.join().await.unwrap();
    }
}
