//! Following the engine's lifecycle events. When a workflow ends the engine publishes
//! [`WorkflowFinished`] on the events exchange; a service binds its own durable queue
//! (`<prefix><service>.workflow-events`) and handles each event, acking only after its handler
//! returned (that is, after the service's own commit). Delivery is at-least-once, so handlers
//! must be idempotent. The same follower runs on RabbitMQ and on the embedded queue.

use std::{future::Future, time::Duration};

pub use orderflow_core::WorkflowFinished;
use orderflow_queue::{Consumer as _, Delivery as _, QueueError, TaskQueue};
use tokio_util::sync::CancellationToken;

/// Unacked events in flight per follower.
const PREFETCH: u16 = 64;
/// Pause before redelivering an event whose handler failed (its database is down, say), so a
/// failing handler does not spin.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pause before consuming again after the queue went away.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// What a service follows.
#[derive(Clone, Debug)]
pub struct Subscription {
    /// The service's name; its queue is `<prefix><service>.workflow-events`.
    pub service: String,
    /// Routing key, e.g. `workflow.finished.order`.
    pub routing_key: String,
}

impl Subscription {
    pub fn new(service: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            routing_key: routing_key.into(),
        }
    }

    /// The service's queue on `queue`'s topology.
    pub fn queue_name<Q: TaskQueue>(&self, queue: &Q) -> String {
        queue.topology().events_queue(&self.service)
    }

    /// Declares and binds the queue, so events published from now on are kept even before the
    /// follower runs (tests call this before starting workflows).
    pub async fn declare<Q: TaskQueue>(&self, queue: &Q) -> Result<(), QueueError> {
        let name = self.queue_name(queue);
        queue.declare(&name).await?;
        queue.bind_events(&name, &self.routing_key).await
    }
}

/// Consumes `sub`'s queue until `stop`, calling `handle` for each event; consumes again when
/// the queue goes away. An event that cannot be decoded is dead-lettered; one whose handler
/// fails is redelivered after a pause.
pub async fn follow<Q, F, Fut, E>(queue: Q, sub: Subscription, handle: F, stop: CancellationToken)
where
    Q: TaskQueue,
    F: Fn(WorkflowFinished) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while !stop.is_cancelled() {
        if let Err(e) = consume(&queue, &sub, &handle, &stop).await {
            tracing::warn!(error = %e, service = %sub.service, "event follower lost its queue");
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

async fn consume<Q, F, Fut, E>(
    queue: &Q,
    sub: &Subscription,
    handle: &F,
    stop: &CancellationToken,
) -> Result<(), QueueError>
where
    Q: TaskQueue,
    F: Fn(WorkflowFinished) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    sub.declare(queue).await?;
    let name = sub.queue_name(queue);
    let mut deliveries = queue.consume(&name, PREFETCH).await?;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            next = deliveries.next() => next?,
        };
        let event: WorkflowFinished = match serde_json::from_slice(delivery.body()) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, queue = %name, "undecodable workflow event; dead-lettering it");
                delivery.nack(false).await?;
                continue;
            }
        };
        let id = event.workflow_id;
        match handle(event).await {
            Ok(()) => delivery.ack().await?,
            Err(e) => {
                tracing::warn!(error = %e, workflow = %id, "handling a workflow event failed; it will be redelivered");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
                delivery.nack(true).await?;
            }
        }
    }
}
