//! Fires due durable timers. The poller finds workflows with a due timer, locks those workflows
//! (skipping any another transaction holds), then takes their due timers and applies a
//! `TimerFired` event for each, all in one transaction. Locking the workflow before the timer
//! rows is the same order every other writer uses, so pollers and result batches cannot deadlock.
//!
//! `orderflow_timers_fired_total` counts the timers fired and `orderflow_timer_lateness_seconds`
//! how late the oldest due timer was at each firing round: a poller that falls behind shows there
//! before sagas show as overdue (`orderflow_workflows_stuck{reason="overdue"}`).

use orderflow_core::{Event, TimerId, WorkflowId};
use orderflow_telemetry as telemetry;
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
    // The oldest due timer says how far behind the pollers are.
    let oldest = timers::next_due(&mut tx).await?;
    let due = timers::take_due(&mut tx, &ids, at).await?;
    // One span per timer, ending when its firing is committed: retries after a backoff and
    // attempts that timed out show in the saga's trace.
    let spans: Vec<_> = due
        .iter()
        .map(|(wf, timer)| {
            let span = tracing::info_span!("timer.fire", workflow_id = %wf, timer_id = %timer);
            telemetry::set_parent(&span, None, *wf);
            span
        })
        .collect();
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
    drop(spans);
    if let Some(oldest) = oldest {
        let late = (at - oldest).to_std().unwrap_or_default();
        metrics::TIMER_LATENESS.observe(late.as_secs_f64());
    }
    metrics::TIMERS_FIRED.inc_by(events.len() as u64);
    metrics::BATCH_SIZE
        .with_label_values(&["timers"])
        .observe(events.len() as f64);
    Ok(events.len())
}
