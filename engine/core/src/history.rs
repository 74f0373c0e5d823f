//! The replay format: a workflow's events with the commands each one produced. It is what
//! `orderflow history export` prints and what `workflows/tests/histories/` holds.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Command, Event, WorkflowId};

/// One event as recorded, with what the decider answered at the time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// 1-based position in the history.
    pub seq: u64,
    pub at: DateTime<Utc>,
    pub event: Event,
    pub commands: Vec<Command>,
    /// Set when the event changed nothing, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

/// A workflow's whole history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub workflow_id: WorkflowId,
    pub workflow_type: String,
    pub version: u32,
    pub events: Vec<RecordedEvent>,
}
