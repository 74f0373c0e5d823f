//! Fires due durable timers. The poller finds workflows with a due timer, locks those workflows
//! (skipping any another transaction holds), then takes their due timers and applies a
//! `TimerFired` event for each, all in one transaction. Locking the workflow before the timer
//! rows is the same order every other writer uses, so pollers and result batches cannot deadlock.

use orderflow_core::{Event, TimerId, WorkflowId};
use sqlx::PgPool;

use crate::{
    apply::{Applier, ApplyError, now},
    metrics,
    store::{timers, workflows},
};

/// Fires up to `limit` due timers; returns how many fired.
pub async fn fire_due(pool: &PgPool, applier: &Applier, limit: i64) -> Result<usize, ApplyError> {
    let at = now();
    let mut tx = pool.begin().await?;
    let candidates = timers::due_workflows(&mut tx, at, limit).await?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let locked = workflows::lock(&mut tx, &candidates, true).await?;
    let ids: Vec<_> = locked.iter().map(|w| w.id).collect();
    let due = timers::take_due(&mut tx, &ids, at).await?;
    let events: Vec<(WorkflowId, Event)> = due
        .iter()
        .map(|(wf, timer)| {
            (
                WorkflowId(*wf),
                Event::TimerFired {
                    timer_id: TimerId(*timer),
                },
            )
        })
        .collect();
    applier.apply(&mut tx, &events, false).await?;
    tx.commit().await?;
    metrics::TIMERS_FIRED.inc_by(events.len() as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["timers"])
        .observe(events.len() as f64);
    Ok(events.len())
}
