//! Fires due durable timers: finds them and hands each to the committer as a `TimerFired`
//! event; the committer deletes the timer's row with the event it became. Two pollers (two
//! replicas) that fire one timer cannot both write it: the second finds the sequence moved, and
//! its decider then finds the timer no longer wanted.
//!
//! `orderflow_timers_fired_total` counts the timers fired and `orderflow_timer_lateness_seconds`
//! how late the oldest timer of each round was: a poller that falls behind shows there before
//! sagas show as overdue (`orderflow_workflows_stuck{reason="overdue"}`).

use orderflow_core::{Event, TimerId, WorkflowId};
use orderflow_queue::TaskQueue;
use orderflow_telemetry as telemetry;
use tokio_util::sync::CancellationToken;

use super::LoopError;
use crate::{Engine, apply::now, metrics, store::Store};

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// Fires up to `timer_batch` due timers; returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, LoopError> {
        let at = now();
        let due = self.store.due_timers(at, self.config.timer_batch).await?;
        if due.is_empty() {
            return Ok(0);
        }
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
        let n = events.len();
        self.committer.apply(events, None).await?;
        drop(spans);
        if let Some(oldest) = due.iter().map(|t| t.fire_at).min() {
            let late = (at - oldest).to_std().unwrap_or_default();
            metrics::TIMER_LATENESS.observe(late.as_secs_f64());
        }
        metrics::TIMERS_FIRED.inc_by(n as u64);
        metrics::BATCH_SIZE
            .with_label_values(&["timers"])
            .observe(n as f64);
        Ok(n)
    }

    /// Fires timers until `stop`: a full round goes straight on, otherwise it sleeps until the
    /// next timer is due (at most the fallback poll), or until the committer writes a timer due
    /// soon.
    pub(crate) async fn timer_loop(&self, stop: &CancellationToken) -> Result<(), LoopError> {
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
                () = self.timers.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
