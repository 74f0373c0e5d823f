//! Consumes worker results and applies them in batches: whatever is ready (up to the batch size)
//! goes into one transaction, and the deliveries are acked only after it commits. A crash before
//! the ack redelivers them; the decider then records them as ignored duplicates.

use std::{collections::VecDeque, time::Duration};

use futures::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::FieldTable,
};
use orderflow_activities::broker::Topology;
use orderflow_core::{Event, ResultMessage, TaskOutcome, WorkflowId};
use sqlx::PgPool;
use tokio::task::JoinHandle;
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

/// Batches applied at once: while one commits, the next is decided in its own transaction, so
/// Postgres and the engine's CPU work side by side instead of taking turns.
const PIPELINE: usize = 2;

/// A batch being applied in the background, acked once it committed.
struct InFlight {
    /// `true` once committed; `false` if it gave up because the engine is stopping.
    applied: JoinHandle<bool>,
    last: Delivery,
    len: usize,
}

/// Runs until `stop` is cancelled or the channel fails.
///
/// Up to [`PIPELINE`] batches are applied concurrently, each in its own transaction. Acks go out
/// strictly in delivery order: a batch is acked (one multiple-ack up to its last delivery) only
/// once it and every batch before it committed, so an ack never covers an uncommitted result.
/// Two batches that hold results of one workflow serialize on its row lock (taken in id order,
/// so they cannot deadlock); a result that overtakes another is applied by the decider like any
/// late result.
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
    // Enough unacked deliveries for every batch in flight and the next one forming.
    channel
        .basic_qos(
            (batch * (PIPELINE + 1)).min(u16::MAX as usize) as u16,
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
    let mut in_flight: VecDeque<InFlight> = VecDeque::with_capacity(PIPELINE);
    loop {
        let room = in_flight.len() < PIPELINE;
        let oldest = async {
            match in_flight.front_mut() {
                Some(f) => (&mut f.applied).await,
                None => std::future::pending().await,
            }
        };
        let chunk = tokio::select! {
            _ = stop.cancelled() => break,
            joined = oldest => {
                let done = in_flight.pop_front().expect("awaited the oldest batch");
                if !acknowledge(joined, done).await? {
                    return Ok(());
                }
                continue;
            }
            chunk = chunks.next(), if room => {
                chunk.ok_or(IntakeError::Ended)?
            }
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
        let len = events.len();
        let (pool, applier, stop) = (pool.clone(), applier.clone(), stop.clone());
        let applied = tokio::spawn(async move {
            let applied = apply_until_committed(&pool, &applier, &events, &stop).await;
            // The results' spans end once they are committed.
            drop(spans);
            applied
        });
        in_flight.push_back(InFlight { applied, last, len });
    }
    // Stopping: let the batches already applying commit and ack them, so a graceful stop leaves
    // no duplicates behind. A batch that gave up uncommitted ends the acks: it and everything
    // after it stay unacked and are redelivered.
    while let Some(mut f) = in_flight.pop_front() {
        let joined = (&mut f.applied).await;
        if !acknowledge(joined, f).await? {
            break;
        }
    }
    Ok(())
}

/// Acks a batch whose application ended; `false` if it did not commit (the engine is stopping),
/// and then nothing may be acked after it. Every earlier delivery on this channel is settled by
/// now (earlier batches were acked first, undecodable ones nacked), so one multiple-ack covers
/// the batch. A batch whose task panicked is left unacked: the broker redelivers it once the
/// runtime replaces the channel.
async fn acknowledge(
    joined: Result<bool, tokio::task::JoinError>,
    done: InFlight,
) -> Result<bool, IntakeError> {
    match joined {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) => {
            tracing::error!(error = %e, "applying a batch of results panicked");
            return Err(IntakeError::Ended);
        }
    }
    done.last
        .acker
        .ack(BasicAckOptions { multiple: true })
        .await?;
    metrics::RESULTS_APPLIED.inc_by(done.len as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["intake"])
        .observe(done.len as f64);
    Ok(true)
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
    orderflow_telemetry::set_parent(&span, traceparent.as_deref(), result.workflow_id.0);
    span
}

/// Keeps trying while the database is away: the results stay unacked meanwhile, so nothing is
/// lost if this process dies instead. `false` if it gave up uncommitted because of `stop`.
async fn apply_until_committed(
    pool: &PgPool,
    applier: &Applier,
    events: &[(WorkflowId, Event)],
    stop: &CancellationToken,
) -> bool {
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
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "applying results failed");
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}
