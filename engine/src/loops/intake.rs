//! Applies workers' results in batches: whatever is ready (up to the batch size) goes into one
//! transaction, and the deliveries are acked only after it commits. A crash before the ack
//! delivers them again; the decider then records them as ignored duplicates (DESIGN.md §3.3).
//!
//! Up to [`PIPELINE`] batches are applied at once, each in its own transaction, so while one
//! commits the next is decided and the store and the engine's CPU work side by side. Acks go
//! out strictly in delivery order: a batch is acked (one multiple-ack where the queue allows)
//! only once it and every batch before it committed, so an ack never covers an uncommitted
//! result. Two batches holding results of one workflow serialize on its row lock (taken in id
//! order, so they cannot deadlock); a result that overtakes another is applied by the decider
//! like any late result.

use std::{collections::VecDeque, time::Duration};

use orderflow_core::{Event, ResultMessage, TaskOutcome, WorkflowId};
use orderflow_queue::{Consumer, Delivery, TaskQueue};
use orderflow_telemetry as telemetry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::LoopError;
use crate::{
    Engine,
    apply::{Applier, Outcome},
    metrics,
    store::Store,
};

/// Batches applied at once.
pub const PIPELINE: usize = 2;

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
            let (store, applier, stop) = (self.store.clone(), self.applier.clone(), stop.clone());
            let applied = tokio::spawn(async move {
                let applied = apply_until_committed(&store, &applier, &events, &stop).await;
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

/// Keeps trying while the store is away: the results stay unacked meanwhile, so nothing is
/// lost if this process dies instead. `false` if it gave up uncommitted because of `stop`.
async fn apply_until_committed<S: Store>(
    store: &S,
    applier: &Applier,
    events: &[(WorkflowId, Event)],
    stop: &CancellationToken,
) -> bool {
    let mut delay = Duration::from_millis(50);
    loop {
        let attempt = async {
            let mut tx = store.begin().await?;
            let outcomes = applier.apply(&mut tx, events, false).await?;
            store.commit(tx).await?;
            Ok::<_, crate::apply::ApplyError>(outcomes)
        };
        match attempt.await {
            Ok(outcomes) => {
                log_outcomes(events, outcomes);
                return true;
            }
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "applying results failed");
                tokio::select! {
                    () = stop.cancelled() => return false,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn log_outcomes(events: &[(WorkflowId, Event)], outcomes: Vec<Outcome>) {
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
            } => tracing::debug!(workflow_id = %id, %why, "result ignored"),
            Outcome::Applied { .. } => {}
        }
    }
}
