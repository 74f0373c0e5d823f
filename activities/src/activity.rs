//! The trait a service implements for each activity, and what one task tells it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orderflow_core::{ActivityError, Phase, TaskId, TaskMessage, WorkflowId};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

/// What a running activity knows about its task.
#[derive(Clone, Debug)]
pub struct TaskContext {
    pub task_id: TaskId,
    pub workflow_id: WorkflowId,
    pub step: String,
    pub phase: Phase,
    pub attempt: u32,
    /// Stable across attempts: the activity must do its effect at most once per key.
    pub idempotency_key: String,
    /// After this the engine counts the attempt as lost; the runtime cancels the activity then.
    pub deadline: DateTime<Utc>,
    /// Outputs of the saga's completed steps, by step name.
    pub results: Map<String, Value>,
    /// The latest payload of each signal sent to the workflow.
    pub signals: Map<String, Value>,
}

impl TaskContext {
    /// The first attempt of `step` of `workflow` in `phase`, due in 30 s, with the idempotency
    /// key the engine gives it (`<workflow>/<step>`, `<workflow>/<step>/compensate`): what a
    /// service's tests hand its handlers.
    pub fn first_attempt(workflow: uuid::Uuid, step: &str, phase: Phase) -> Self {
        let idempotency_key = match phase {
            Phase::Forward => format!("{workflow}/{step}"),
            Phase::Compensate => format!("{workflow}/{step}/compensate"),
        };
        Self {
            task_id: TaskId(uuid::Uuid::now_v7()),
            workflow_id: WorkflowId(workflow),
            step: step.to_owned(),
            phase,
            attempt: 1,
            idempotency_key,
            deadline: Utc::now() + chrono::Duration::seconds(30),
            results: Map::new(),
            signals: Map::new(),
        }
    }

    /// Splits a task into its context and the saga input.
    pub fn from_task(task: &TaskMessage) -> (Self, Value) {
        let field = |name: &str| task.payload.get(name).and_then(Value::as_object).cloned();
        let ctx = Self {
            task_id: task.task_id,
            workflow_id: task.workflow_id,
            step: task.step.clone(),
            phase: task.phase,
            attempt: task.attempt,
            idempotency_key: task.idempotency_key.clone(),
            deadline: task.deadline,
            results: field("results").unwrap_or_default(),
            signals: field("signals").unwrap_or_default(),
        };
        (
            ctx,
            task.payload.get("input").cloned().unwrap_or(Value::Null),
        )
    }

    /// The typed output of an earlier step.
    pub fn result<T: DeserializeOwned>(&self, step: &str) -> Result<T, ActivityError> {
        let v = self.results.get(step).ok_or_else(|| {
            ActivityError::permanent("missing_result", format!("no output of step `{step}`"))
        })?;
        T::deserialize(v).map_err(|e| {
            ActivityError::permanent("bad_result", format!("output of step `{step}`: {e}"))
        })
    }
}

/// One kind of work a worker can do. `NAME` is its durable activity name.
#[async_trait]
pub trait Activity: Send + Sync + 'static {
    const NAME: &'static str;
    type Input: DeserializeOwned + Send;
    type Output: Serialize + Send;

    /// Does the work at most once per `ctx.idempotency_key`; a repeat returns the first outcome.
    async fn run(
        &self,
        ctx: &TaskContext,
        input: Self::Input,
    ) -> Result<Self::Output, ActivityError>;
}
