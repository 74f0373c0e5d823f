//! Hands workers' results to the committer in batches: whatever is ready (up to the batch size)
//! goes as one input, and the deliveries are acked only after the committer wrote it. A crash
//! before the ack delivers them again; the decider then records them as ignored duplicates
//! (DESIGN.md §3.3).
//!
//! Up to [`PIPELINE`] batches are with the committer at once, so the next batch gathers while one
//! commits and joins the committer's next cycle. Acks go out strictly in delivery order: a batch
//! is acked (one multiple-ack where the queue allows) only once it and every batch before it
//! committed, so an ack never covers an uncommitted result.

use std::collections::VecDeque;

use orderflow_core::{Event, ResultMessage, TaskOutcome, WorkflowId};
use orderflow_queue::{Consumer, Delivery, TaskQueue};
use orderflow_telemetry as telemetry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::LoopError;
use crate::{Engine, apply::Outcome, metrics, store::Store};

/// Batches with the committer at once.
pub const PIPELINE: usize = 4;

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

/// A batch being applied in the background, acked once it committed.
struct InFlight<D> {
    /// `true` once committed; `false` if it gave up because the engine is stopping.
    applied: JoinHandle<bool>,
    deliveries: Vec<D>,
}

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// Consumes the results queue until `stop` or until the consumer fails, then lets the
    /// batches already applying commit and acks them, so a graceful stop leaves no duplicates
    /// behind. A batch that gave up uncommitted ends the acks: it and everything after it stay
    /// unacked and are delivered again.
    pub(crate) async fn intake_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
        let batch = self.config.intake_batch.max(1);
        // Enough unacked deliveries for every batch in flight and the next one forming.
        let prefetch = (batch * (PIPELINE + 1)).min(u16::MAX as usize) as u16;
        let queue = self.queue.topology().results_queue();
        let mut consumer = self.queue.consume(&queue, prefetch).await?;
        let mut in_flight: VecDeque<InFlight<<Q::Consumer as Consumer>::Delivery>> =
            VecDeque::with_capacity(PIPELINE);
        let failed = loop {
            let room = in_flight.len() < PIPELINE;
            let oldest = async {
                match in_flight.front_mut() {
                    Some(f) => (&mut f.applied).await,
                    None => std::future::pending().await,
                }
            };
            let deliveries = tokio::select! {
                () = stop.cancelled() => break None,
                joined = oldest => {
                    let done = in_flight.pop_front().expect("awaited the oldest batch");
                    if !acknowledge(joined, done).await? {
                        return Ok(());
                    }
                    continue;
                }
                next = consumer.next_batch(batch), if room => match next {
                    Ok(d) => d,
                    Err(e) => break Some(e),
                },
            };
            let mut events = Vec::with_capacity(deliveries.len());
            let mut spans = Vec::with_capacity(deliveries.len());
            let mut settled = Vec::with_capacity(deliveries.len());
            for delivery in deliveries {
                match serde_json::from_slice::<ResultMessage>(delivery.body()) {
                    Ok(result) => {
                        spans.push(apply_span(&result, delivery.traceparent().as_deref()));
                        events.push(to_event(result));
                        settled.push(delivery);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "undecodable result; dead-lettering it");
                        delivery.nack(false).await?;
                    }
                }
            }
            if events.is_empty() {
                continue;
            }
            let committer = self.committer.clone();
            let applied = tokio::spawn(async move {
                let ids: Vec<WorkflowId> = events.iter().map(|(id, _)| *id).collect();
                let applied = match committer.apply(events, None).await {
                    Ok(outcomes) => {
                        log_outcomes(&ids, outcomes);
                        true
                    }
                    // The committer is gone: the engine is stopping.
                    Err(_) => false,
                };
                // The results' spans end once they are committed.
                drop(spans);
                applied
            });
            in_flight.push_back(InFlight {
                applied,
                deliveries: settled,
            });
        };
        while let Some(mut f) = in_flight.pop_front() {
            let joined = (&mut f.applied).await;
            if !acknowledge(joined, f).await? {
                break;
            }
        }
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Acks a batch whose application ended; `false` if it did not commit (the engine is
/// stopping), and then nothing may be acked after it. A batch whose task panicked is left
/// unacked and the loop starts over with a new consumer, so it is delivered again.
async fn acknowledge<D: Delivery>(
    joined: Result<bool, tokio::task::JoinError>,
    done: InFlight<D>,
) -> Result<bool, LoopError> {
    match joined {
        Ok(true) => {}
        Ok(false) => return Ok(false),
        Err(e) => return Err(LoopError::Panicked(e.to_string())),
    }
    let len = done.deliveries.len();
    D::ack_all(done.deliveries).await?;
    metrics::RESULTS_APPLIED.inc_by(len as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["intake"])
        .observe(len as f64);
    Ok(true)
}

/// The span of applying one result: a child of the worker's activity span, whose context the
/// result carries in its `traceparent` header. It ends once the result's batch is committed.
fn apply_span(result: &ResultMessage, traceparent: Option<&str>) -> tracing::Span {
    let span = tracing::info_span!(
        "result.apply",
        otel.kind = "consumer",
        workflow_id = %result.workflow_id,
        task_id = %result.task_id,
        attempt = result.attempt,
    );
    telemetry::set_parent(&span, traceparent, result.workflow_id.0);
    span
}

fn log_outcomes(ids: &[WorkflowId], outcomes: Vec<Outcome>) {
    for (id, outcome) in ids.iter().zip(outcomes) {
        match outcome {
            Outcome::NotFound => {
                tracing::warn!(workflow_id = %id, "result for an unknown workflow")
            }
            Outcome::Rejected(e) => {
                tracing::error!(workflow_id = %id, error = %e, "result refused")
            }
            Outcome::Applied {
                ignored: Some(why), ..
            } => tracing::debug!(workflow_id = %id, %why, "result ignored"),
            Outcome::Applied { .. } => {}
        }
    }
}
