//! Failure-injection replay: take a recorded history, replay it up to the point where a chosen
//! activity was scheduled, make that task fail, and let the decider run to the end (every later
//! task succeeds, every timer fires when due). It answers "what would this saga have done if
//! `payment.charge` had failed here?" for every history in the corpus, so compensation paths that
//! production rarely walks are tested on real shapes of sagas.

use serde_json::Value;

use crate::{
    ActivityError, Command, DecideError, Event, History, Phase, Registry, ReplayError,
    WorkflowStatus, replay,
    testing::{DriveError, Driver},
};

/// What the saga did after the injected failure.
#[derive(Debug, Clone)]
pub struct Injected {
    pub status: WorkflowStatus,
    /// Activities scheduled after the failure, in order (compensations, retries, later steps).
    pub scheduled_after: Vec<String>,
    /// The whole history: the replayed prefix, the injected failure and what followed.
    pub history: History,
}

/// Why an injection could not run.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error("the history never scheduled `{0}`, so there is nowhere to inject its failure")]
    NotReached(String),
    #[error("driving the decider: {0}")]
    Drive(#[from] DriveError),
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error("the saga did not settle within {0} events after the injected failure")]
    Runaway(usize),
}

/// Most events driven after the failure before giving up (a saga that loops forever).
const MAX_EVENTS: usize = 10_000;

/// Replays `history` until `activity` is first scheduled (forward), fails that task with `error`
/// and drives the saga to a terminal status or `needs_attention`.
pub fn replay_with_failure(
    registry: &Registry,
    history: &History,
    activity: &str,
    error: ActivityError,
) -> Result<Injected, InjectError> {
    // The prefix must be faithful: a history that no longer replays is reported as such.
    replay(registry, history)?;
    let (first, rest) = history
        .events
        .split_first()
        .expect("replay checked the start");
    let Event::WorkflowStarted {
        workflow_type,
        version,
        input,
    } = &first.event
    else {
        unreachable!("replay checked the start")
    };
    let def = registry
        .get(workflow_type, *version)
        .expect("replay found the definition")
        .clone();
    let mut run = Driver::for_definition(def)
        .workflow_id(history.workflow_id)
        .start_at(first.at)
        .start(input.clone())?;
    let target = |run: &Driver| {
        run.pending_tasks()
            .iter()
            .find(|t| t.activity == activity && t.phase == Phase::Forward)
            .map(|t| t.task_id)
    };
    let mut found = target(&run);
    for rec in rest {
        if found.is_some() {
            break;
        }
        if rec.at > run.now() {
            run.advance((rec.at - run.now()).to_std().unwrap_or_default());
        }
        match &rec.event {
            Event::ActivityCompleted { task_id, output } => {
                run.complete_task(*task_id, output.clone())?;
            }
            Event::ActivityFailed { task_id, error } => {
                run.fail_task(*task_id, error.clone())?;
            }
            Event::TimerFired { timer_id } => {
                run.fire_timer(*timer_id)?;
            }
            other => {
                run.deliver(other.clone())?;
            }
        }
        found = target(&run);
    }
    let task = found.ok_or_else(|| InjectError::NotReached(activity.to_owned()))?;
    let mark = run.history().events.len();
    run.fail_task(task, error)?;
    for _ in 0..MAX_EVENTS {
        let status = run.status();
        if status.is_terminal() || status == WorkflowStatus::NeedsAttention {
            let history = run.into_history();
            let scheduled_after = history.events[mark..]
                .iter()
                .flat_map(|e| &e.commands)
                .filter_map(|c| match c {
                    Command::ScheduleActivity(spec) => Some(spec.activity.clone()),
                    _ => None,
                })
                .collect();
            return Ok(Injected {
                status,
                scheduled_after,
                history,
            });
        }
        if let Some(task) = run.pending_tasks().last().map(|t| t.task_id) {
            run.complete_task(task, Value::Object(Default::default()))?;
        } else {
            run.fire_next_timer()?;
        }
    }
    Err(InjectError::Runaway(MAX_EVENTS))
}
