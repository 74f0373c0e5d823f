//! A worker over any [`TaskQueue`]: the embedded queue's counterpart of [`crate::worker`], with
//! the same rule (DESIGN.md §3.3): a task is acked only after its result is durably published,
//! so a worker that dies or cannot publish leaves the task to be redelivered.

use std::{sync::Arc, time::Duration};

use orderflow_core::{ResultMessage, TaskMessage};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Consumer, Delivery, Outgoing, QueueError, TaskQueue};
use crate::{
    broker::Topology,
    worker::{Handler, execute},
};

/// Runs handlers on tasks from a [`TaskQueue`] until stopped.
#[derive(Clone)]
pub struct QueueWorker<Q> {
    queue: Q,
    topology: Topology,
    lanes: Vec<(Arc<dyn Handler>, u16)>,
}

impl<Q: std::fmt::Debug> std::fmt::Debug for QueueWorker<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.lanes.iter().map(|(h, _)| h.activity()).collect();
        f.debug_struct("QueueWorker")
            .field("queue", &self.queue)
            .field("activities", &names)
            .finish()
    }
}

impl<Q: TaskQueue> QueueWorker<Q> {
    pub fn new(queue: Q, topology: Topology) -> Self {
        Self {
            queue,
            topology,
            lanes: Vec::new(),
        }
    }

    /// Runs `handler` with at most `concurrency` tasks at once.
    pub fn handler(mut self, handler: Arc<dyn Handler>, concurrency: u16) -> Self {
        self.lanes.push((handler, concurrency.max(1)));
        self
    }

    /// Runs every lane until `stop`, then waits for the tasks in flight to publish and ack.
    pub async fn run(self, stop: CancellationToken) {
        let mut lanes = JoinSet::new();
        for (handler, concurrency) in &self.lanes {
            let (w, h, s, c) = (self.clone(), handler.clone(), stop.clone(), *concurrency);
            lanes.spawn(async move { w.lane(h, c, s).await });
        }
        while lanes.join_next().await.is_some() {}
    }

    /// One activity's lane; a queue failure restarts it after a pause.
    async fn lane(&self, handler: Arc<dyn Handler>, concurrency: u16, stop: CancellationToken) {
        let queue = self.topology.task_queue(handler.activity());
        let mut tasks = JoinSet::new();
        while !stop.is_cancelled() {
            let result = async {
                let mut consumer = self.queue.consume(&queue, concurrency).await?;
                loop {
                    let delivery = tokio::select! {
                        () = stop.cancelled() => return Ok::<_, QueueError>(()),
                        d = consumer.next() => d?,
                    };
                    while tasks.try_join_next().is_some() {}
                    let (q, h, results) = (
                        self.queue.clone(),
                        handler.clone(),
                        self.topology.results_queue(),
                    );
                    tasks.spawn(async move { process(q, h, delivery, results).await });
                }
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(%queue, error = %e, "task queue failed; consuming again shortly");
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Decodes, runs, publishes the result, then acks. Any failure before the ack leaves the task
/// to be redelivered.
async fn process<Q: TaskQueue>(
    queue: Q,
    handler: Arc<dyn Handler>,
    delivery: <Q::Consumer as Consumer>::Delivery,
    results: String,
) {
    let task: TaskMessage = match serde_json::from_slice(delivery.body()) {
        Ok(task) => task,
        Err(e) => {
            tracing::error!(activity = handler.activity(), error = %e, "undecodable task; dead-lettering it");
            if let Err(e) = delivery.nack(false).await {
                tracing::warn!(error = %e, "dead-lettering a task");
            }
            return;
        }
    };
    let span = tracing::info_span!(
        "task",
        workflow_id = %task.workflow_id,
        task_id = %task.task_id,
        activity = %task.activity,
        attempt = task.attempt,
    );
    async move {
        let outcome = execute(handler.as_ref(), &task).await;
        let result = ResultMessage {
            task_id: task.task_id,
            workflow_id: task.workflow_id,
            attempt: task.attempt,
            outcome,
        };
        let body = serde_json::to_vec(&result).expect("a result message always serializes");
        let traceparent = task.traceparent.clone().or_else(|| delivery.traceparent());
        let msg = Outgoing {
            exchange: "",
            queue: &results,
            body: &body,
            message_id: task.task_id.to_string(),
            traceparent: traceparent.as_deref(),
        };
        match queue.publish(&[msg]).await {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(error = %e, "ack failed; the task will be redelivered");
                }
            }
            // Dropping the delivery returns it to the queue.
            Err(e) => {
                tracing::error!(error = %e, "result not published; the task will be redelivered")
            }
        }
    }
    .instrument(span)
    .await
}
