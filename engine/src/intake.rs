//! Consumes worker results and applies them in batches: whatever is ready (up to the batch size)
//! goes into one transaction, and the deliveries are acked only after it commits. A crash before
//! the ack redelivers them; the decider then records them as ignored duplicates.

use std::time::Duration;

use futures::StreamExt;
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use orderflow_activities::broker::Topology;
use orderflow_core::{Event, ResultMessage, TaskOutcome, WorkflowId};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    apply::{Applier, Outcome},
    metrics,
};

/// Why the intake stopped; the runtime reconnects.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the results consumer ended")]
    Ended,
}

/// The event a result becomes.
pub fn to_event(result: ResultMessage) -> (WorkflowId, Event) {
    let event = match result.outcome {
        TaskOutcome::Completed { output } => Event::ActivityCompleted {
            task_id: result.task_id,
            output,
        },
        TaskOutcome::Failed { error } => Event::ActivityFailed {
            task_id: result.task_id,
            error,
        },
    };
    (result.workflow_id, event)
}

/// Runs until `stop` is cancelled or the channel fails.
pub async fn run(
    pool: &PgPool,
    applier: &Applier,
    channel: &Channel,
    topology: &Topology,
    batch: usize,
    stop: &CancellationToken,
) -> Result<(), IntakeError> {
    let queue = topology.results_queue();
    topology.declare_queue(channel, &queue).await?;
    channel
        .basic_qos(
            (batch * 2).min(u16::MAX as usize) as u16,
            BasicQosOptions::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            &queue,
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut chunks = consumer.ready_chunks(batch);
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            chunk = chunks.next() => chunk.ok_or(IntakeError::Ended)?,
        };
        let mut events = Vec::with_capacity(chunk.len());
        let mut spans = Vec::with_capacity(chunk.len());
        let mut last = None;
        for delivery in chunk {
            let delivery = delivery?;
            match serde_json::from_slice::<ResultMessage>(&delivery.data) {
                Ok(result) => {
                    spans.push(apply_span(&result, &delivery));
                    events.push(to_event(result));
                    last = Some(delivery);
                }
                Err(e) => {
                    tracing::error!(error = %e, "undecodable result; dead-lettering it");
                    delivery
                        .acker
                        .nack(BasicNackOptions {
                            requeue: false,
                            multiple: false,
                        })
                        .await?;
                }
            }
        }
        let Some(last) = last else { continue };
        apply_until_committed(pool, applier, &events, stop).await;
        // Every earlier delivery on this channel is settled by now, so one multiple-ack covers
        // the batch.
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        metrics::RESULTS_APPLIED.inc_by(events.len() as u64);
        metrics::BATCH_SIZE
            .with_label_values(&["intake"])
            .observe(events.len() as f64);
    }
}

/// The span of applying one result: a child of the worker's activity span, whose context the
/// result carries in its `traceparent` header. It ends once the result's batch is committed.
fn apply_span(result: &ResultMessage, delivery: &lapin::message::Delivery) -> tracing::Span {
    let span = tracing::info_span!(
        "result.apply",
        otel.kind = "consumer",
        workflow_id = %result.workflow_id,
        task_id = %result.task_id,
        attempt = result.attempt,
    );
    let traceparent = orderflow_activities::broker::traceparent(delivery);
    orderflow_activities::telemetry::set_parent(
        &span,
        traceparent.as_deref(),
        result.workflow_id.0,
    );
    span
}

/// Keeps trying while the database is away: the results stay unacked meanwhile, so nothing is
/// lost if this process dies instead.
async fn apply_until_committed(
    pool: &PgPool,
    applier: &Applier,
    events: &[(WorkflowId, Event)],
    stop: &CancellationToken,
) {
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut tx = pool.begin().await?;
            let outcomes = applier.apply(&mut tx, events, false).await?;
            tx.commit().await?;
            Ok::<_, crate::apply::ApplyError>(outcomes)
        };
        match attempt.await {
            Ok(outcomes) => {
                for ((id, _), outcome) in events.iter().zip(outcomes) {
                    match outcome {
                        Outcome::NotFound => {
                            tracing::warn!(workflow_id = %id, "result for an unknown workflow")
                        }
                        Outcome::Rejected(e) => {
                            tracing::error!(workflow_id = %id, error = %e, "result refused")
                        }
                        Outcome::Applied {
                            ignored: Some(why), ..
                        } => {
                            tracing::debug!(workflow_id = %id, %why, "result ignored")
                        }
                        Outcome::Applied { .. } => {}
                    }
                }
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "applying results failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
