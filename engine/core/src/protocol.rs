//! The messages that cross the broker between the engine and workers. They are a durable contract:
//! fields may be added with defaults, never renamed. Their JSON Schemas ([`json_schemas`]) are
//! derived from these types and checked in under `protocol/schemas/`, with the AMQP envelope
//! around them (`orderflow_queue::wire`); `docs/protocol.md` explains the rules a worker in any
//! language follows. Every doc comment of a field below is its description in those schemas.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Phase, TaskId, WorkflowId, WorkflowStatus};

/// The name of the queue that carries results back to the engine (before any test prefix).
pub const RESULTS_QUEUE: &str = "orderflow.results";

/// The queue that carries tasks for `activity` (before any test prefix).
pub fn task_queue(activity: &str) -> String {
    format!("orderflow.task.{activity}")
}

/// One task: run `activity` once for `step` of `workflow_id`. Published by the engine on the
/// activity's task queue; a worker answers it with one result message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskMessage {
    /// This attempt's id: copy it into the result. Also the AMQP `message_id`.
    pub task_id: TaskId,
    /// The workflow the task belongs to: copy it into the result.
    pub workflow_id: WorkflowId,
    /// The workflow's registered type (`order`).
    pub workflow_type: String,
    /// The step of the workflow's definition this task does or undoes (`charge`).
    pub step: String,
    /// The activity to run (`payment.charge`); the task queue is named after it.
    pub activity: String,
    /// Whether the task does the step (`forward`) or undoes it (`compensate`).
    pub phase: Phase,
    /// 1 for the first attempt of this step and phase, then 2, 3, ...: copy it into the result.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// Stable across attempts of the same step and phase (`<workflow_id>/<step>`, or
    /// `<workflow_id>/<step>/compensate`): the activity does its effect at most once per key and
    /// answers a repeat with the first outcome.
    pub idempotency_key: String,
    /// After this instant the engine treats the attempt as lost and may retry it; a worker stops
    /// working on it then (and one that starts after it answers a retryable `timeout`).
    pub deadline: DateTime<Utc>,
    /// What the activity works on.
    #[schemars(schema_with = "saga_payload")]
    pub payload: Value,
    /// W3C trace context of the saga, also sent as a message header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// What a worker reports for one task, on the results queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResultMessage {
    /// The task's `task_id`.
    pub task_id: TaskId,
    /// The task's `workflow_id`.
    pub workflow_id: WorkflowId,
    /// The task's `attempt`.
    #[schemars(range(min = 1))]
    pub attempt: u32,
    /// How the attempt ended.
    pub outcome: TaskOutcome,
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The activity did its work; `output` is handed to later steps.
    Completed {
        /// The step's output (any JSON), handed to later steps under `payload.results.<step>`.
        output: Value,
    },
    /// The activity failed; `error.retryable` says whether another attempt may help.
    Failed {
        /// Why it failed.
        error: ActivityError,
    },
}

/// An activity's failure: a stable code, a human message and whether retrying may help.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ActivityError {
    /// A stable, machine-readable code (`card_declined`, `out_of_stock`, `timeout`). A step's
    /// retry policy may list codes it never retries.
    pub code: String,
    /// For people: what went wrong.
    pub message: String,
    /// Whether another attempt may succeed (a timeout, a 503). `false` fails the step for good
    /// (a declined card): the saga compensates, or needs attention after its pivot.
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowFinished {
    /// The workflow that finished.
    pub workflow_id: WorkflowId,
    /// Its registered type; also the last part of the routing key.
    pub workflow_type: String,
    /// How it ended.
    pub status: WorkflowStatus,
    /// Why it ended so, when it did not simply complete (a cancel's reason, a failed step).
    pub reason: Option<String>,
    /// The error that made the saga compensate, if one did (`out_of_stock`, `card_declined`).
    pub cause: Option<ActivityError>,
    /// The business keys the workflow was started with (`order_id`, `user_id`).
    #[schemars(schema_with = "business_keys")]
    pub business_keys: Value,
    /// When the engine recorded the end.
    pub at: DateTime<Utc>,
}

/// The file under `protocol/schemas/` and the JSON Schema (2020-12) of each message: the task,
/// the result and the finished event. Pure: the AMQP envelope is added by
/// `orderflow_queue::wire`, which writes and checks the files.
pub fn json_schemas() -> Vec<(&'static str, Value)> {
    fn root<T: JsonSchema>() -> Value {
        let mut schema = schemars::generate::SchemaSettings::draft2020_12()
            .into_generator()
            .into_root_schema_for::<T>()
            .to_value();
        one_line_descriptions(&mut schema);
        schema
    }
    /// Doc comments are wrapped at 100 columns; a description reads better as one line.
    fn one_line_descriptions(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    match v {
                        Value::String(s) if k == "description" => *s = s.replace('\n', " "),
                        v => one_line_descriptions(v),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(one_line_descriptions),
            _ => {}
        }
    }
    vec![
        ("task.json", root::<TaskMessage>()),
        ("result.json", root::<ResultMessage>()),
        ("finished.json", root::<WorkflowFinished>()),
    ]
}

/// A task's `payload` as saga definitions fill it. Other definitions may send other objects,
/// so nothing in it is required and more may come.
fn saga_payload(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "What the activity works on. Saga definitions send `input` (the \
            workflow's input), `results` (the output of each completed step, by step name) and \
            `signals` (the latest payload of each signal sent to the workflow, by name).",
        "type": "object",
        "properties": {
            "input": { "description": "The workflow's input, as it was started." },
            "results": {
                "description": "The output of each completed step, by step name.",
                "type": "object",
            },
            "signals": {
                "description": "The latest payload of each signal, by signal name.",
                "type": "object",
            },
        },
    })
}

fn business_keys(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "The business keys the workflow was started with, by name \
            (`order_id`, `user_id`).",
        "type": "object",
    })
}

// `Phase` and `WorkflowStatus` are stored names defined with the decider; their schemas are
// written here, listing the names serde gives each variant, so they cannot differ from the wire.

/// Every phase. The match fails to compile when a phase is added, until it is listed here.
fn all_phases() -> [Phase; 2] {
    let all = [Phase::Forward, Phase::Compensate];
    for p in all {
        match p {
            Phase::Forward | Phase::Compensate => {}
        }
    }
    all
}

fn wire_names<T: Serialize>(all: impl IntoIterator<Item = T>) -> Vec<Value> {
    all.into_iter()
        .map(|v| serde_json::to_value(v).expect("a unit variant serializes to its name"))
        .collect()
}

impl JsonSchema for Phase {
    fn schema_name() -> Cow<'static, str> {
        "Phase".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "orderflow_core::Phase".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "`forward` runs the step's activity; `compensate` runs the activity \
                that undoes it.",
            "type": "string",
            "enum": wire_names(all_phases()),
        })
    }
}

impl JsonSchema for WorkflowStatus {
    fn schema_name() -> Cow<'static, str> {
        "WorkflowStatus".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "orderflow_core::WorkflowStatus".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "Where a workflow stands: `completed` (every step succeeded), \
                `compensated` (a step failed for good and the completed ones were undone), \
                `cancelled` (cancelled and compensated), `terminated` (stopped by an operator \
                without compensation), `needs_attention` (stuck until an operator acts), or \
                `running` / `compensating` while it moves.",
            "type": "string",
            "enum": wire_names(WorkflowStatus::ALL),
        })
    }
}
