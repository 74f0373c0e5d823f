//! Events (what happened to a workflow) and commands (what the decider wants done about it).
//! Both are stored in the history, so their tags are a durable contract.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ActivityError, TaskId, TimerId, WorkflowStatus};

/// An input a workflow reacts to. The engine stamps each with the time it was recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The workflow was created with this input; always the first event.
    WorkflowStarted {
        workflow_type: String,
        version: u32,
        input: Value,
    },
    /// A worker reported that a task succeeded.
    ActivityCompleted { task_id: TaskId, output: Value },
    /// A worker reported that a task failed.
    ActivityFailed {
        task_id: TaskId,
        error: ActivityError,
    },
    /// A durable timer came due.
    TimerFired { timer_id: TimerId },
    /// A user or operator asked to undo the saga (compensate completed steps).
    CancelRequested { actor: String, reason: String },
    /// An operator stopped the saga where it stands, compensating nothing.
    TerminateRequested { actor: String, reason: String },
    /// An operator asked to retry the waiting or stuck step now.
    RetryRequested { actor: String, reason: String },
    /// An operator asked to run the forward path again from `step` (at or before the current
    /// one). Re-run steps keep their idempotency keys, so a step that already took effect is not
    /// done twice: its activity answers with the first result.
    RetryFromStep {
        step: String,
        actor: String,
        reason: String,
    },
    /// A named signal with a payload was sent to the running workflow.
    SignalReceived {
        name: String,
        payload: Value,
        actor: String,
    },
    /// An operator repaired a failing compensation by hand; the saga goes on compensating.
    CompensationResolved {
        step: String,
        actor: String,
        reason: String,
    },
    /// The engine found that the workflow's recorded history no longer replays against the
    /// deployed definition of its version; the definition's policy decides what happens.
    NondeterminismDetected { detail: String },
}

impl Event {
    /// The stored name of this event's type.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkflowStarted { .. } => "workflow_started",
            Event::ActivityCompleted { .. } => "activity_completed",
            Event::ActivityFailed { .. } => "activity_failed",
            Event::TimerFired { .. } => "timer_fired",
            Event::CancelRequested { .. } => "cancel_requested",
            Event::TerminateRequested { .. } => "terminate_requested",
            Event::RetryRequested { .. } => "retry_requested",
            Event::RetryFromStep { .. } => "retry_from_step",
            Event::SignalReceived { .. } => "signal_received",
            Event::CompensationResolved { .. } => "compensation_resolved",
            Event::NondeterminismDetected { .. } => "nondeterminism_detected",
        }
    }
}

/// Whether a task moves the saga forward or undoes a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The step's own activity.
    Forward,
    /// The step's compensation.
    Compensate,
}

/// Everything the engine needs to publish one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: TaskId,
    pub step: String,
    pub activity: String,
    pub phase: Phase,
    pub attempt: u32,
    pub idempotency_key: String,
    pub deadline: DateTime<Utc>,
    pub payload: Value,
}

/// Why a timer exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "purpose", rename_all = "snake_case")]
pub enum TimerPurpose {
    /// Backoff before the next attempt of `step` in `phase`.
    Retry { step: String, phase: Phase },
    /// Start-to-close timeout of one task.
    AttemptTimeout { task_id: TaskId },
    /// The workflow-level deadline.
    Deadline,
    /// The end of a wait step's wait for `signal` (started each time the step is reached).
    SignalTimeout { step: String, signal: String },
}

/// What the decider asks the engine to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Publish a task (through the outbox).
    ScheduleActivity(TaskSpec),
    /// Create a durable timer.
    StartTimer {
        timer_id: TimerId,
        fire_at: DateTime<Utc>,
        purpose: TimerPurpose,
    },
    /// Delete a durable timer that is no longer needed.
    CancelTimer { timer_id: TimerId },
    /// The workflow reached a terminal status.
    Finish {
        status: WorkflowStatus,
        reason: Option<String>,
    },
    /// The workflow cannot go on without an operator.
    RequireAttention { reason: String },
}

/// The decider's answer to one event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub commands: Vec<Command>,
    /// Set when the event changed nothing (a duplicate or late result, a stale timer) and why.
    pub ignored: Option<String>,
}

impl Decision {
    pub fn ignore(why: impl Into<String>) -> Self {
        Self {
            commands: Vec::new(),
            ignored: Some(why.into()),
        }
    }
}
