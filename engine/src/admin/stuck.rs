//! Why a saga is stuck, in one line, and which activity queues have no worker.
//!
//! A saga is stuck when it needs attention, waits to retry a failed attempt (forward or
//! compensation), has a task out on a queue that no worker consumes, or has a timer that came due
//! and did not fire (the start-to-close timeout or the deadline passed and no engine reacted).
//! [`why`] reads one saga's state, timers and latest task and says which, with the numbers an
//! operator needs: the attempt, the last error, the queue, how late.
//!
//! A saga whose wait step waits for its signal before the wait's timeout is not stuck: [`why`]
//! says what it waits for and until when, with no stuck kind. Once that timeout is overdue and
//! has not fired, it is stuck like any other overdue timer.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use orderflow_core::{Phase, SagaState, StepStatus, TaskSpec, WorkflowStatus};
use orderflow_queue::{QueueStats, QueueView};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::store::{
    Reads,
    reads::{StuckKind, StuckRow, TimerRow},
};

/// What the probe saw at one moment.
#[derive(Debug, Clone, Default)]
pub struct ProbeResult {
    /// By activity, for every activity a task is out on.
    pub queues: BTreeMap<String, QueueStats>,
    /// Workflows whose task is out on a queue with no worker, with the activity.
    pub no_worker: Vec<(Uuid, String)>,
    /// Why the queue could not be asked, if it could not.
    pub error: Option<String>,
    /// The queue cannot count its consumers, so which queues have a worker is unknown and
    /// nothing is reported as waiting on one without.
    pub no_broker: bool,
}

impl ProbeResult {
    pub fn no_worker_ids(&self) -> Vec<Uuid> {
        self.no_worker.iter().map(|(id, _)| *id).collect()
    }
}

fn has_worker(q: &QueueStats) -> bool {
    q.consumers.is_none_or(|n| n > 0)
}

/// Asks the task queue about the queues that tasks are out on: how many tasks wait and how many
/// workers consume. The answer is reused for a few seconds, so a page that refreshes itself, or
/// many operators, cost the queue and the database one look per interval.
#[derive(Debug)]
pub struct QueueProbe {
    queue: Arc<dyn QueueView>,
    ttl: Duration,
    last: Mutex<Option<(Instant, Arc<ProbeResult>)>>,
}

impl QueueProbe {
    pub fn new(queue: Arc<dyn QueueView>, ttl: Duration) -> Self {
        Self {
            queue,
            ttl,
            last: Mutex::new(None),
        }
    }

    /// The latest answer, asking again when it is older than the probe's TTL.
    pub async fn check(&self, db: &dyn Reads) -> Result<Arc<ProbeResult>, sqlx::Error> {
        let mut last = self.last.lock().await;
        if let Some((at, r)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return Ok(r.clone());
        }
        let out = db.tasks_out().await?;
        let activities: BTreeSet<String> = out.iter().filter_map(|(_, a)| a.clone()).collect();
        let mut result = ProbeResult::default();
        for activity in activities {
            let name = self.queue.topology().task_queue(&activity);
            match self.queue.inspect(&name).await {
                Ok(stats) => {
                    result.no_broker |= stats.consumers.is_none();
                    result.queues.insert(activity, stats);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "admin: cannot ask the task queue about consumers");
                    result.error = Some(e.to_string());
                    break;
                }
            }
        }
        result.no_worker = out
            .into_iter()
            .filter_map(|(id, a)| a.map(|a| (id, a)))
            .filter(|(_, a)| result.queues.get(a).is_some_and(|q| !has_worker(q)))
            .collect();
        let result = Arc::new(result);
        *last = Some((Instant::now(), result.clone()));
        Ok(result)
    }
}

/// Why one saga is stuck.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub kind: Option<StuckKind>,
    pub line: String,
    /// The activity it is stuck on, if one.
    pub activity: Option<String>,
}

/// Says why `row` is stuck, from its state, its pending timers, its latest task and what the
/// probe saw. Checked from the most to the least specific cause.
pub fn why(
    row: &StuckRow,
    timers: &[&TimerRow],
    probe: &ProbeResult,
    now: DateTime<Utc>,
    grace: Duration,
) -> Why {
    let task: Option<TaskSpec> = row
        .last_task
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok());
    let activity = task.as_ref().map(|t| t.activity.clone());
    let state: Option<SagaState> = (row.state.get("kind").and_then(|k| k.as_str()) == Some("saga"))
        .then(|| serde_json::from_value(row.state.clone()).ok())
        .flatten();
    let why = |kind, line: String| Why {
        kind: Some(kind),
        line,
        activity: activity.clone(),
    };
    if row.status == WorkflowStatus::NeedsAttention.as_str() {
        let reason = row.reason.as_deref().unwrap_or("no reason recorded");
        return why(StuckKind::Attention, format!("Needs attention: {reason}"));
    }
    let late = chrono::Duration::from_std(grace).unwrap_or_default();
    if let Some(t) = timers.iter().find(|t| t.fire_at + late < now) {
        let what = match t.purpose.get("purpose").and_then(|p| p.as_str()) {
            Some("attempt_timeout") => match &task {
                Some(t) => format!(
                    "the start-to-close timeout of `{}` attempt {}",
                    t.activity, t.attempt
                ),
                None => "a start-to-close timeout".to_owned(),
            },
            Some("retry") => format!(
                "the backoff before retrying `{}`",
                t.purpose
                    .get("step")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?")
            ),
            Some("deadline") => "the saga's deadline".to_owned(),
            Some("signal_timeout") => format!(
                "the end of the wait for signal `{}`",
                t.purpose
                    .get("signal")
                    .and_then(|s| s.as_str())
                    .unwrap_or("?")
            ),
            _ => "a timer".to_owned(),
        };
        return why(
            StuckKind::Overdue,
            format!(
                "Timer overdue: {what} came due {} ago and has not fired; is an engine running?",
                human(now - t.fire_at)
            ),
        );
    }
    let out = state.as_ref().and_then(|s| s.in_flight.as_ref());
    if let (Some(_), Some(task)) = (out, &task)
        && let Some(q) = probe.queues.get(&task.activity)
        && !has_worker(q)
    {
        let queue_says = format!("{} tasks waiting", q.depth);
        return why(
            StuckKind::NoWorker,
            format!(
                "No worker: `{}` attempt {} waits on a queue that no worker consumes ({queue_says})",
                task.activity, task.attempt
            ),
        );
    }
    let retry = timers
        .iter()
        .find(|t| t.purpose.get("purpose").and_then(|p| p.as_str()) == Some("retry"));
    if let (Some(timer), Some(s)) = (retry, &state) {
        let step_name = timer
            .purpose
            .get("step")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let phase = timer
            .purpose
            .get("phase")
            .and_then(|v| serde_json::from_value::<Phase>(v.clone()).ok())
            .unwrap_or(Phase::Forward);
        let step = s.steps.iter().find(|st| st.name == step_name);
        let error = step.and_then(|st| st.last_error.as_ref()).map_or_else(
            || "an error".to_owned(),
            |e| format!("{}: {}", e.code, e.message),
        );
        let next = if timer.fire_at > now {
            format!("next attempt in {}", human(timer.fire_at - now))
        } else {
            "next attempt due now".to_owned()
        };
        let what = task.as_ref().map_or_else(
            || format!("step `{step_name}`"),
            |t| format!("`{}`", t.activity),
        );
        let line = match phase {
            Phase::Forward => format!(
                "Retrying {what}: attempt {} failed with {error}; {next}",
                step.map_or(0, |st| st.attempts)
            ),
            Phase::Compensate => format!(
                "Compensation failing: {what} of step `{step_name}` attempt {} failed with {error}; {next}",
                step.map_or(0, |st| st.compensation_attempts)
            ),
        };
        return why(StuckKind::Retrying, line);
    }
    let waiting = state
        .as_ref()
        .and_then(|s| s.steps.iter().find(|st| st.status == StepStatus::Waiting));
    let line = match (&state, waiting) {
        (_, Some(st)) => {
            let until = st.wait_until.unwrap_or(now);
            let signal = timers
                .iter()
                .find_map(|t| {
                    (t.purpose.get("purpose").and_then(|p| p.as_str()) == Some("signal_timeout"))
                        .then(|| t.purpose.get("signal").and_then(|v| v.as_str()))
                        .flatten()
                })
                .unwrap_or("its signal");
            format!(
                "Waiting for signal `{signal}` (step `{}`) until {} ({} from now); not stuck",
                st.name,
                until.format("%Y-%m-%d %H:%M UTC"),
                human(until - now)
            )
        }
        (Some(s), None) if s.undo_pending.is_some() => format!(
            "Waiting for the running step to settle before undoing: {}",
            s.undo_pending.as_deref().unwrap_or_default()
        ),
        (Some(s), None) if s.steps.iter().any(|st| st.status == StepStatus::Running) => {
            "Running; no longer stuck".to_owned()
        }
        _ => "No longer stuck".to_owned(),
    };
    Why {
        kind: None,
        line,
        activity,
    }
}

/// A duration as people say it: `42 s`, `3 min`, `2 h 5 min`, `3 d`.
pub fn human(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn row(
        status: &str,
        state: serde_json::Value,
        last_task: Option<serde_json::Value>,
    ) -> StuckRow {
        StuckRow {
            id: Uuid::nil(),
            workflow_type: "order".into(),
            version: 1,
            status: status.into(),
            reason: Some("compensation `payment.refund` of step `charge` keeps failing".into()),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            state,
            last_task,
            last_task_at: None,
        }
    }

    #[test]
    fn needs_attention_says_the_reason() {
        let r = row("needs_attention", json!({}), None);
        let w = why(
            &r,
            &[],
            &ProbeResult::default(),
            Utc::now(),
            Duration::from_secs(10),
        );
        assert_eq!(w.kind, Some(StuckKind::Attention));
        assert!(w.line.contains("payment.refund"), "{}", w.line);
    }

    #[test]
    fn an_overdue_timer_is_named() {
        let now = Utc::now();
        let r = row("running", json!({}), None);
        let t = TimerRow {
            workflow_id: Uuid::nil(),
            id: Uuid::nil(),
            fire_at: now - chrono::Duration::seconds(90),
            purpose: json!({"purpose": "deadline"}),
        };
        let w = why(
            &r,
            &[&t],
            &ProbeResult::default(),
            now,
            Duration::from_secs(10),
        );
        assert_eq!(w.kind, Some(StuckKind::Overdue));
        assert!(w.line.contains("deadline came due 1 min ago"), "{}", w.line);
    }

    #[test]
    fn durations_read_like_people_say_them() {
        assert_eq!(human(chrono::Duration::seconds(42)), "42 s");
        assert_eq!(human(chrono::Duration::seconds(7500)), "2 h 5 min");
        assert_eq!(human(chrono::Duration::seconds(-3)), "0 s");
    }

    /// A saga driven to its wait step, as its stuck row and timer rows would show it.
    fn waiting_saga() -> (StuckRow, TimerRow) {
        use orderflow_core::{SagaDefinition, Step, testing::Driver};
        let def = SagaDefinition::builder("return", 1)
            .step(Step::wait(
                "await_parcel",
                "parcel_received",
                Duration::from_secs(14 * 86400),
            ))
            .step(Step::pivot("refund", "payment.refund"))
            .build()
            .unwrap();
        let run = Driver::builder(def).start(json!({})).unwrap();
        let timer = run.next_timer().unwrap();
        let state = serde_json::to_value(run.state() as &dyn orderflow_core::WorkflowState);
        let t = TimerRow {
            workflow_id: Uuid::nil(),
            id: timer.timer_id.0,
            fire_at: timer.fire_at,
            purpose: serde_json::to_value(&timer.purpose).unwrap(),
        };
        (row("running", state.unwrap(), None), t)
    }

    #[test]
    fn a_saga_waiting_for_its_signal_is_told_apart_from_a_stuck_one() {
        let (r, t) = waiting_saga();
        let now = t.fire_at - chrono::Duration::days(3);
        let w = why(
            &r,
            &[&t],
            &ProbeResult::default(),
            now,
            Duration::from_secs(10),
        );
        assert_eq!(w.kind, None, "{}", w.line);
        assert!(
            w.line
                .starts_with("Waiting for signal `parcel_received` (step `await_parcel`) until ")
                && w.line.contains("(3 d from now); not stuck"),
            "{}",
            w.line
        );
        // Past its timeout with no engine firing it: stuck, and the line says which wait.
        let late = t.fire_at + chrono::Duration::minutes(5);
        let w = why(
            &r,
            &[&t],
            &ProbeResult::default(),
            late,
            Duration::from_secs(10),
        );
        assert_eq!(w.kind, Some(StuckKind::Overdue));
        assert!(
            w.line
                .contains("the end of the wait for signal `parcel_received` came due 5 min ago"),
            "{}",
            w.line
        );
    }
}
