//! The messages that cross the broker between the engine and workers. They are a durable contract:
//! fields may be added with defaults, never renamed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Phase, TaskId, WorkflowId};

/// The name of the queue that carries results back to the engine (before any test prefix).
pub const RESULTS_QUEUE: &str = "orderflow.results";

/// The queue that carries tasks for `activity` (before any test prefix).
pub fn task_queue(activity: &str) -> String {
    format!("orderflow.task.{activity}")
}

/// One task: run `activity` once for `step` of `workflow_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub task_id: TaskId,
    pub workflow_id: WorkflowId,
    pub workflow_type: String,
    pub step: String,
    pub activity: String,
    pub phase: Phase,
    pub attempt: u32,
    /// Stable across attempts of the same step and phase: activities dedupe on it.
    pub idempotency_key: String,
    /// After this instant the engine treats the attempt as lost and may retry it.
    pub deadline: DateTime<Utc>,
    pub payload: Value,
    /// W3C trace context of the saga, also sent as a message header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What a worker reports for one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResultMessage {
    pub task_id: TaskId,
    pub workflow_id: WorkflowId,
    pub attempt: u32,
    pub outcome: TaskOutcome,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The activity did its work; `output` is handed to later steps.
    Completed { output: Value },
    /// The activity failed; `error.retryable` says whether another attempt may help.
    Failed { error: ActivityError },
}

/// An activity's failure: a stable code, a human message and whether retrying may help.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActivityError {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    /// The attempt may have taken effect although it failed (a payment provider that timed out
    /// after the request left): if the saga gives the step up, it compensates the step too.
    /// Absent from older histories, where it reads as `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome_unknown: bool,
}

impl ActivityError {
    /// A failure that another attempt may fix (a timeout, a 503).
    pub fn retryable(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            outcome_unknown: false,
        }
    }

    /// A failure no retry can fix (card declined, out of stock).
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
            outcome_unknown: false,
        }
    }

    /// Marks the failure as one whose effect is unknown (see [`Self::outcome_unknown`]).
    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }
}

/// Topic exchange (before any prefix) on which the engine publishes workflow lifecycle events,
/// so services can follow the sagas they started without reading the engine's tables.
pub const EVENTS_EXCHANGE: &str = "orderflow.events";

/// Routing key of [`WorkflowFinished`] for a workflow type: `workflow.finished.<type>`.
pub fn finished_routing_key(workflow_type: &str) -> String {
    format!("workflow.finished.{workflow_type}")
}

/// Published (through the outbox, after the commit) when a workflow reaches a terminal status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowFinished {
    pub workflow_id: WorkflowId,
    pub workflow_type: String,
    pub status: crate::WorkflowStatus,
    pub reason: Option<String>,
    /// The error that made the saga compensate, if one did (`out_of_stock`, `card_declined`).
    pub cause: Option<ActivityError>,
    /// The business keys the workflow was started with (`order_id`, `user_id`).
    pub business_keys: Value,
    pub at: DateTime<Utc>,
}
