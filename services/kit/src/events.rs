//! Following the engine's lifecycle events. When a saga ends the engine publishes
//! [`WorkflowFinished`] on the topic exchange; a service binds its own durable queue
//! (`<prefix><service>.workflow-events`) and handles each event, acking only after its handler
//! returned (i.e. after the service's own commit). Delivery is at-least-once, so handlers must be
//! idempotent.

use std::{future::Future, time::Duration};

use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
};
use orderflow_activities::{
    broker::{self, Topology},
    queue::{Consumer as _, Delivery as _, QueueError, TaskQueue},
};
pub use orderflow_core::WorkflowFinished;
use tokio_util::sync::CancellationToken;

/// Unacked events in flight per consumer.
const PREFETCH: u16 = 64;
/// Pause before redelivering an event whose handler failed (its database is down, say), so a
/// failing handler does not spin.
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Pause before reconnecting after the broker went away.
const RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// Where to listen.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub amqp_url: String,
    pub topology: Topology,
    /// The service's name; its queue is `<prefix><service>.workflow-events`.
    pub service: String,
    /// Routing key, e.g. `workflow.finished.order`.
    pub routing_key: String,
}

impl Subscription {
    pub fn queue(&self) -> String {
        format!("{}{}.workflow-events", self.topology.prefix, self.service)
    }

    /// Declares and binds the queue, so events published from now on are kept even before the
    /// consumer runs (tests call this before starting sagas).
    pub async fn declare(&self) -> Result<(), lapin::Error> {
        let conn = broker::connect(&self.amqp_url, crate::config::BROKER_PATIENCE).await?;
        let ch = conn.create_channel().await?;
        self.topology
            .bind_events(&ch, &self.queue(), &self.routing_key)
            .await?;
        conn.close(200, "declared").await.ok();
        Ok(())
    }
}

/// Consumes `sub`'s queue until `stop`, calling `handle` for each event; reconnects when the
/// broker goes away. An event that cannot be decoded is dead-lettered; one whose handler fails is
/// redelivered after a pause.
pub async fn follow<F, Fut, E>(sub: Subscription, handle: F, stop: CancellationToken)
where
    F: Fn(WorkflowFinished) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while !stop.is_cancelled() {
        match consume(&sub, &handle, &stop).await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, queue = %sub.queue(), "event consumer lost the broker")
            }
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

/// [`follow`] on any [`TaskQueue`]: how `orderflow dev` follows events on its embedded queue.
/// The subscription names the queue and routing key; its broker URL is not used.
pub async fn follow_on<Q, F, Fut, E>(
    queue: Q,
    sub: Subscription,
    handle: F,
    stop: CancellationToken,
) where
    Q: TaskQueue,
    F: Fn(WorkflowFinished) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    while !stop.is_cancelled() {
        if let Err(e) = consume_on(&queue, &sub, &handle, &stop).await {
            tracing::warn!(error = %e, queue = %sub.queue(), "event consumer lost its queue");
        }
        tokio::select! {
            () = stop.cancelled() => {}
            () = tokio::time::sleep(RECONNECT_PAUSE) => {}
        }
    }
}

async fn consume_on<Q, F, Fut, E>(
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
    let name = sub.queue();
    queue.declare(&name).await?;
    queue.bind_events(&name, &sub.routing_key).await?;
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

async fn consume<F, Fut, E>(
    sub: &Subscription,
    handle: &F,
    stop: &CancellationToken,
) -> Result<(), lapin::Error>
where
    F: Fn(WorkflowFinished) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let conn = broker::connect(&sub.amqp_url, crate::config::BROKER_PATIENCE).await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
    let queue = sub.queue();
    sub.topology
        .bind_events(&ch, &queue, &sub.routing_key)
        .await?;
    let mut deliveries = ch
        .basic_consume(
            &queue,
            &format!("{}-events", sub.service),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await?;
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            next = deliveries.next() => match next {
                Some(d) => d?,
                None => break,
            },
        };
        let event: WorkflowFinished = match serde_json::from_slice(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, %queue, "undecodable workflow event; dead-lettering it");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            }
        };
        let id = event.workflow_id;
        match handle(event).await {
            Ok(()) => delivery.ack(BasicAckOptions::default()).await?,
            Err(e) => {
                tracing::warn!(error = %e, workflow = %id, "handling a workflow event failed; it will be redelivered");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
    conn.close(200, "stopping").await.ok();
    Ok(())
}
