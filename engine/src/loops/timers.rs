//! Fires due durable timers. A round finds workflows with a due timer, locks those workflows
//! (skipping any another transaction holds), then takes their due timers and applies a
//! `TimerFired` event for each, all in one transaction. Locking the workflow before the timer
//! rows is the order every other writer uses, so pollers and result batches cannot deadlock.
//!
//! `orderflow_timers_fired_total` counts the timers fired and `orderflow_timer_lateness_seconds`
//! how late the oldest timer of each round was: a poller that falls behind shows there before
//! sagas show as overdue (`orderflow_workflows_stuck{reason="overdue"}`).

use orderflow_core::{Event, TimerId, WorkflowId};
use orderflow_queue::TaskQueue;
use orderflow_telemetry as telemetry;
use tokio_util::sync::CancellationToken;

use super::LoopError;
use crate::{
    Engine,
    apply::now,
    metrics,
    store::{Listener, Store, StoreTx, Wakeup},
};

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
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
        // One span per timer, ending when its firing is committed: retries after a backoff and
        // attempts that timed out show in the saga's trace.
        let spans: Vec<_> = due
            .iter()
            .map(|t| {
                let span =
                    tracing::info_span!("timer.fire", workflow_id = %t.workflow_id, timer_id = %t.id);
                telemetry::set_parent(&span, None, t.workflow_id);
                span
            })
            .collect();
        let events: Vec<(WorkflowId, Event)> = due
            .iter()
            .map(|t| {
                let timer_id = TimerId(t.id);
                (WorkflowId(t.workflow_id), Event::TimerFired { timer_id })
            })
            .collect();
        self.applier.apply(&mut tx, &events, false).await?;
        self.store.commit(tx).await?;
        drop(spans);
        if let Some(oldest) = due.iter().map(|t| t.fire_at).min() {
            let late = (at - oldest).to_std().unwrap_or_default();
            metrics::TIMER_LATENESS.observe(late.as_secs_f64());
        }
        metrics::TIMERS_FIRED.inc_by(events.len() as u64);
        metrics::BATCH_SIZE
            .with_label_values(&["timers"])
            .observe(events.len() as f64);
        Ok(events.len())
    }

    /// Fires timers until `stop`: a full round goes straight on, otherwise it sleeps until the
    /// next timer is due (at most the fallback poll), or until a commit with a timer due soon
    /// wakes it.
    pub(crate) async fn timer_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
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
}
