//! The engine's loops over the [`Store`] and [`TaskQueue`] interfaces: the outbox relay, the
//! timer poller and the result intake of [`crate::runtime`], written once for any store and
//! queue. `orderflow dev` runs them on SQLite and the in-process queue; the conformance suite
//! runs them on Postgres and RabbitMQ too, so both pairs are held to the same saga outcomes.
//! The production engine ([`crate::Engine`]) keeps its Postgres- and RabbitMQ-specific loops
//! (`LISTEN` on a dedicated connection, multiple-acks per batch), which this does not replace.
//!
//! The invariants are the same: rows leave the outbox only in the transaction that commits after
//! the queue took every message; results are acked only after the transaction applying them
//! committed; timers fire under the same transaction as their events.

use std::{future::Future, sync::Arc, time::Duration};

use orderflow_activities::queue::{Consumer, Delivery, Outgoing, QueueError, TaskQueue};
use orderflow_core::{Event, Registry, ResultMessage, TimerId, WorkflowId};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    EngineConfig,
    apply::{Applier, ApplyError, now},
    intake::to_event,
    metrics,
    store::backend::{Listener, Store, StoreTx, Wakeup},
};

/// Why one round of a loop failed; the loop backs off and tries again.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("applying: {0}")]
    Apply(#[from] ApplyError),
    #[error("queue: {0}")]
    Queue(#[from] QueueError),
    #[error("the queue did not confirm within 30 s")]
    PublishTimeout,
}

/// An engine on any store and queue.
#[derive(Debug, Clone)]
pub struct PortableEngine<S, Q> {
    pub store: S,
    pub queue: Q,
    pub applier: Applier,
    pub config: EngineConfig,
}

impl<S: Store, Q: TaskQueue> PortableEngine<S, Q> {
    pub fn new(store: S, queue: Q, registry: Arc<Registry>, config: EngineConfig) -> Self {
        let applier = Applier::new(registry, config.topology.clone());
        Self {
            store,
            queue,
            applier,
            config,
        }
    }

    /// Runs the relay, the timer poller and the intake until `stop`. Each first does what is
    /// pending, which is how a restarted engine resumes everything in flight.
    pub async fn run(self, stop: CancellationToken) {
        let mut set = JoinSet::new();
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { supervise("relay", &s, || e.relay_loop(&s)).await });
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { supervise("timers", &s, || e.timer_loop(&s)).await });
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { supervise("intake", &s, || e.intake_loop(&s)).await });
        while set.join_next().await.is_some() {}
    }

    /// Publishes up to `relay_batch` outbox rows; returns how many went out.
    pub async fn relay_once(&self) -> Result<usize, LoopError> {
        let mut tx = self.store.begin().await?;
        let rows = tx.take_outbox(self.config.relay_batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let msgs: Vec<Outgoing<'_>> = rows
            .iter()
            .map(|r| Outgoing {
                exchange: &r.exchange,
                queue: &r.queue,
                body: r.body.as_bytes(),
                message_id: r.task_id.to_string(),
                traceparent: r.traceparent.as_deref(),
            })
            .collect();
        // Bounded: a queue that stops confirming must not hold the transaction forever.
        tokio::time::timeout(Duration::from_secs(30), self.queue.publish(&msgs))
            .await
            .map_err(|_| LoopError::PublishTimeout)??;
        self.store.commit(tx).await?;
        metrics::TASKS_PUBLISHED.inc_by(rows.len() as u64);
        Ok(rows.len())
    }

    /// Fires up to `timer_batch` due timers; returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, LoopError> {
        let at = now();
        let mut tx = self.store.begin().await?;
        let candidates = tx.due_workflows(at, self.config.timer_batch).await?;
        if candidates.is_empty() {
            return Ok(0);
        }
        let locked = tx.lock(&candidates, true).await?;
        let ids: Vec<_> = locked.iter().map(|w| w.id).collect();
        let due = tx.take_due_timers(&ids, at).await?;
        let events: Vec<(WorkflowId, Event)> = due
            .iter()
            .map(|(wf, timer)| {
                let timer_id = TimerId(*timer);
                (WorkflowId(*wf), Event::TimerFired { timer_id })
            })
            .collect();
        self.applier.apply(&mut tx, &events, false).await?;
        self.store.commit(tx).await?;
        metrics::TIMERS_FIRED.inc_by(events.len() as u64);
        Ok(events.len())
    }

    async fn relay_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
        let mut listener = self.store.listen(Wakeup::Outbox).await?;
        loop {
            let n = self.relay_once().await?;
            if n as i64 >= self.config.relay_batch {
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = listener.recv() => r?,
                () = tokio::time::sleep(self.config.poll_fallback) => {}
            }
        }
    }

    async fn timer_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
        let mut listener = self.store.listen(Wakeup::Timers).await?;
        loop {
            let n = self.fire_due().await?;
            if n as i64 >= self.config.timer_batch {
                continue;
            }
            let next = self.store.next_due().await?;
            let wait = next
                .map(|t| (t - now()).to_std().unwrap_or_default())
                .unwrap_or(self.config.poll_fallback)
                .min(self.config.poll_fallback);
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = listener.recv() => r?,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Applies whatever results are ready in one transaction, then acks them.
    async fn intake_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
        let batch = self.config.intake_batch.max(1);
        let prefetch = (batch * 2).min(u16::MAX as usize) as u16;
        let mut consumer = self
            .queue
            .consume(&self.config.topology.results_queue(), prefetch)
            .await?;
        loop {
            let deliveries = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                d = consumer.next_batch(batch) => d?,
            };
            let mut events = Vec::with_capacity(deliveries.len());
            let mut settled = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                match serde_json::from_slice::<ResultMessage>(d.body()) {
                    Ok(result) => {
                        events.push(to_event(result));
                        settled.push(d);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable result; dead-lettering it");
                        d.nack(false).await?;
                    }
                }
            }
            if events.is_empty() {
                continue;
            }
            // Unacked until committed: a crash before the ack redelivers them, and the decider
            // records the repeats as ignored.
            let mut delay = Duration::from_millis(50);
            loop {
                let attempt = async {
                    let mut tx = self.store.begin().await?;
                    self.applier.apply(&mut tx, &events, false).await?;
                    self.store.commit(tx).await?;
                    Ok::<_, LoopError>(())
                };
                match attempt.await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?delay, "applying results failed");
                        tokio::select! {
                            () = stop.cancelled() => return Ok(()),
                            () = tokio::time::sleep(delay) => {}
                        }
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            for d in settled {
                d.ack().await?;
            }
            metrics::RESULTS_APPLIED.inc_by(events.len() as u64);
        }
    }
}

/// Runs `body` again after each failure, with capped backoff, until `stop`.
async fn supervise<F, Fut>(name: &str, stop: &CancellationToken, body: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), LoopError>>,
{
    let mut delay = Duration::from_millis(100);
    while !stop.is_cancelled() {
        match body().await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(loop_name = name, error = %e, retry_in = ?delay, "engine loop failed");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
