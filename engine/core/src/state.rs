//! The traits the engine drives (a definition decides, a state is snapshotted) and the statuses
//! and views it shows to the API.

use std::{any::Any, fmt};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ActivityError, Decision, Event, WorkflowId};

/// Where a workflow stands. Stored as text; the names are a durable contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Moving forward through its steps.
    Running,
    /// Undoing completed steps after a failure, a cancel or the deadline.
    Compensating,
    /// Every step succeeded.
    Completed,
    /// A step failed for good and every completed step was compensated.
    Compensated,
    /// Stuck until an operator acts (a failing compensation, a permanent error after the pivot).
    NeedsAttention,
    /// Cancelled by a user or operator and compensated.
    Cancelled,
    /// Stopped by an operator without compensation.
    Terminated,
}

impl WorkflowStatus {
    pub const ALL: [WorkflowStatus; 7] = [
        Self::Running,
        Self::Compensating,
        Self::Completed,
        Self::Compensated,
        Self::NeedsAttention,
        Self::Cancelled,
        Self::Terminated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::NeedsAttention => "needs_attention",
            Self::Cancelled => "cancelled",
            Self::Terminated => "terminated",
        }
    }

    /// No event will move it again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Compensated | Self::Cancelled | Self::Terminated
        )
    }
}

impl std::str::FromStr for WorkflowStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown status `{s}`"))
    }
}

impl fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not reached yet.
    Pending,
    /// A task is out with a worker.
    Running,
    /// An attempt failed; the next one waits on a backoff timer.
    Retrying,
    /// A wait step waits for its signal (until [`StepView::waiting_for`]'s instant).
    Waiting,
    /// The step's activity succeeded (or its signal arrived).
    Completed,
    /// The step failed for good.
    Failed,
    /// Its compensation is out with a worker or waiting to retry.
    Compensating,
    /// Its compensation succeeded (or an operator resolved it by hand).
    Compensated,
}

/// One step as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    pub activity: String,
    pub kind: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<ActivityError>,
    pub output: Option<Value>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while a wait step waits: which signal, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitView>,
}

/// What a waiting step waits for, as the API and the admin UI show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitView {
    pub signal: String,
    pub until: DateTime<Utc>,
}

/// A workflow as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowView {
    pub status: WorkflowStatus,
    pub reason: Option<String>,
    pub steps: Vec<StepView>,
}

/// A workflow's folded state, snapshotted as JSON. typetag tags each implementation so a snapshot
/// of any workflow kind loads back into the right type.
#[typetag::serde(tag = "kind")]
pub trait WorkflowState: fmt::Debug + Send + Sync + Any {
    fn status(&self) -> WorkflowStatus;
    fn view(&self) -> WorkflowView;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    fn clone_box(&self) -> Box<dyn WorkflowState>;
}

impl Clone for Box<dyn WorkflowState> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// Why the decider refused an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecideError {
    /// The request does not fit the workflow's state (cancel after the pivot, retry with nothing
    /// to retry). Nothing is recorded; the caller answers 409.
    #[error("{0}")]
    Rejected(String),
    /// The input does not fit the definition; the caller answers 422 naming the field.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The state or history does not belong to this definition (a bug or a corrupt row).
    #[error("inconsistent state: {0}")]
    Inconsistent(String),
}

/// What the engine does with a running workflow whose history no longer replays against the
/// deployed definition of its version (someone changed a version in place).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NondeterminismPolicy {
    /// Stop and wait for an operator, with the mismatch as the reason (the default).
    #[default]
    NeedsAttention,
    /// Fail it: terminated, compensating nothing, with the mismatch as the reason.
    Fail,
}

/// A versioned workflow definition: creates the state from the first event and decides the rest.
pub trait WorkflowDefinition: fmt::Debug + Send + Sync {
    fn workflow_type(&self) -> &str;
    fn version(&self) -> u32;
    /// Changes whenever the definition's behaviour may change. A workflow stores the fingerprint
    /// it last ran with; a different one makes the engine replay its history before going on.
    fn fingerprint(&self) -> String {
        format!("{}@{}", self.workflow_type(), self.version())
    }
    /// What to do when a running workflow's history no longer replays.
    fn nondeterminism_policy(&self) -> NondeterminismPolicy {
        NondeterminismPolicy::NeedsAttention
    }
    /// Every activity it may schedule, forward and compensating: the task queues its workers
    /// consume and the engine watches.
    fn activities(&self) -> Vec<&str>;
    /// Checks a start request's input before anything is stored.
    fn validate_input(&self, input: &Value) -> Result<(), DecideError>;
    /// Folds the first event (`WorkflowStarted`).
    fn start(
        &self,
        id: WorkflowId,
        input: &Value,
        at: DateTime<Utc>,
    ) -> Result<(Box<dyn WorkflowState>, Decision), DecideError>;
    /// Fills in what the state alone does not know (each step's activity and kind).
    fn describe(&self, view: &mut WorkflowView) {
        let _ = view;
    }
    /// Folds any later event into `state`.
    fn decide(
        &self,
        state: &mut dyn WorkflowState,
        event: &Event,
        at: DateTime<Utc>,
    ) -> Result<Decision, DecideError>;
}
