//! Deciding and recording, without I/O: a start or an event goes through the workflow's
//! definition, and what the decider answered becomes rows ([`Change`]): the history event, the
//! snapshot, outbox rows for the tasks and the finished event, timers. The committer
//! ([`crate::committer`]) owns the states these work on and writes the rows.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use orderflow_core::{
    Command, DecideError, Decision, Event, History, Registry, StepStatus, TaskMessage,
    WorkflowFinished, WorkflowId, WorkflowState, WorkflowStatus, protocol::finished_routing_key,
    replay,
};
use orderflow_queue::Topology;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    metrics,
    store::change::{Change, HistoryRow, NewTask, NewTimer, NewWorkflow, Update},
};

/// Why applying failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored state of workflow {0} does not load: {1}")]
    CorruptState(Uuid, serde_json::Error),
    #[error("the engine is stopping")]
    Stopped,
}

/// What became of one event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded at `seq`; `ignored` says why when it changed nothing.
    Applied {
        seq: i64,
        status: WorkflowStatus,
        ignored: Option<String>,
    },
    /// The decider refused it; nothing was recorded.
    Rejected(DecideError),
    /// No such workflow.
    NotFound,
}

/// A request to start a workflow.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub workflow_type: String,
    pub input: Value,
    pub business_keys: Value,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
}

/// Why a start was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown workflow type `{0}`")]
    UnknownType(String),
    #[error("{0}")]
    Invalid(DecideError),
    #[error("the Idempotency-Key was already used with a different request")]
    KeyReused,
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A started (or, for a repeated idempotency key, found) workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub id: WorkflowId,
    pub created: bool,
}

/// What the engine runs and where its tasks go: the definitions, and the queue names.
#[derive(Debug, Clone)]
pub struct Applier {
    pub registry: Arc<Registry>,
    pub topology: Topology,
}

/// One workflow as the committer holds it: its state and the sequence it was decided up to.
#[derive(Debug)]
pub struct Entry {
    pub meta: Meta,
    pub version: u32,
    pub state: Box<dyn WorkflowState>,
    /// The stored `last_seq`; decisions of the current batch go above it.
    pub last_seq: i64,
}

impl Clone for Entry {
    fn clone(&self) -> Self {
        Self {
            meta: self.meta.clone(),
            version: self.version,
            state: self.state.clone_box(),
            last_seq: self.last_seq,
        }
    }
}

/// What a workflow's rows name besides its state.
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: Uuid,
    pub workflow_type: String,
    pub business_keys: Value,
}

impl Applier {
    pub fn new(registry: Arc<Registry>, topology: Topology) -> Self {
        Self { registry, topology }
    }

    /// Decides a start: the new workflow and the rows of its first event. Nothing is written.
    pub fn start(
        &self,
        req: &StartRequest,
        at: DateTime<Utc>,
        w: &mut Writes,
    ) -> Result<(Entry, NewWorkflow), StartError> {
        let def = self
            .registry
            .latest(&req.workflow_type)
            .ok_or_else(|| StartError::UnknownType(req.workflow_type.clone()))?;
        def.validate_input(&req.input)
            .map_err(StartError::Invalid)?;
        let id = WorkflowId::new_v7();
        let (state, decision) = def.start(id, &req.input, at).map_err(StartError::Invalid)?;
        let event = Event::WorkflowStarted {
            workflow_type: def.workflow_type().to_owned(),
            version: def.version(),
            input: req.input.clone(),
        };
        let meta = Meta {
            id: id.0,
            workflow_type: def.workflow_type().to_owned(),
            business_keys: req.business_keys.clone(),
        };
        w.record(
            &self.topology,
            &meta,
            1,
            at,
            &event,
            &decision,
            state.as_ref(),
        )?;
        let wf = NewWorkflow {
            id: id.0,
            workflow_type: meta.workflow_type.clone(),
            version: def.version() as i32,
            status: state.status().as_str().to_owned(),
            reason: None,
            state: snapshot(state.as_ref())?,
            last_seq: 1,
            business_keys: req.business_keys.to_string(),
            idempotency_key: req.idempotency_key.clone(),
            request_hash: req.request_hash.clone(),
            fingerprint: def.fingerprint(),
            at,
        };
        let entry = Entry {
            meta,
            version: def.version(),
            state,
            last_seq: 1,
        };
        Ok((entry, wf))
    }

    /// Folds `event` into `entry` (its state and sequence move) and records its rows.
    pub fn decide(
        &self,
        entry: &mut Entry,
        event: &Event,
        at: DateTime<Utc>,
        w: &mut Writes,
    ) -> Result<Outcome, ApplyError> {
        let Some(def) = self.registry.get(&entry.meta.workflow_type, entry.version) else {
            return Ok(Outcome::Rejected(DecideError::Inconsistent(format!(
                "no definition {} v{} is deployed",
                entry.meta.workflow_type, entry.version
            ))));
        };
        match def.decide(entry.state.as_mut(), event, at) {
            Ok(decision) => {
                entry.last_seq += 1;
                w.record(
                    &self.topology,
                    &entry.meta,
                    entry.last_seq,
                    at,
                    event,
                    &decision,
                    entry.state.as_ref(),
                )?;
                if let Event::TimerFired { timer_id } = event {
                    // The fired timer's row goes with the event it became.
                    w.change.cancel_timer(timer_id.0, entry.meta.id);
                }
                Ok(Outcome::Applied {
                    seq: entry.last_seq,
                    status: entry.state.status(),
                    ignored: decision.ignored,
                })
            }
            Err(e) => Ok(Outcome::Rejected(e)),
        }
    }

    /// The new snapshot of a decided workflow, written if its stored sequence is still
    /// `prev_seq`.
    pub fn update(
        &self,
        entry: &Entry,
        prev_seq: i64,
        at: DateTime<Utc>,
        fingerprint: Option<String>,
    ) -> Result<Update, ApplyError> {
        let view = entry.state.view();
        Ok(Update {
            id: entry.meta.id,
            status: view.status.as_str().to_owned(),
            reason: view.reason,
            state: snapshot(entry.state.as_ref())?,
            last_seq: entry.last_seq,
            prev_seq,
            at,
            fingerprint,
        })
    }

    /// A workflow last ran on another build of its definition (a version changed in place, or a
    /// row from before fingerprints): replay its history on this one. If it still replays the
    /// change is adopted and the state re-derived from the history; if not, the mismatch.
    pub fn recheck(&self, history: &History) -> Result<Box<dyn WorkflowState>, String> {
        replay(&self.registry, history).map_err(|e| {
            tracing::error!(workflow_id = %history.workflow_id, error = %e, "history no longer replays");
            e.to_string()
        })
    }
}

/// The engine's clock: the only place that reads the time for events. Truncated to the
/// microseconds Postgres keeps, so the time a history row reads back is the time the decider saw
/// and replay recomputes the same timers.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn snapshot(state: &dyn WorkflowState) -> Result<String, ApplyError> {
    // Serializing our own types cannot fail short of a bug; surface it as corrupt state.
    serde_json::to_string(state).map_err(|e| ApplyError::CorruptState(Uuid::nil(), e))
}

/// Everything one batch writes, and what it reports once written.
#[derive(Debug, Default)]
pub struct Writes {
    pub change: Change,
    /// Workflows the batch finished (or put in `needs_attention`), by type and status.
    pub finished: Vec<(Uuid, String, WorkflowStatus)>,
    /// The soonest timer the batch starts.
    pub soonest_timer: Option<DateTime<Utc>>,
}

impl Writes {
    /// Records one decided event and turns its commands into rows. `state` is the state after
    /// the event, for what a finished event reports.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        topology: &Topology,
        wf: &Meta,
        seq: i64,
        at: DateTime<Utc>,
        event: &Event,
        decision: &Decision,
        state: &dyn WorkflowState,
    ) -> Result<(), ApplyError> {
        let json =
            |v: serde_json::Result<String>| v.map_err(|e| ApplyError::CorruptState(wf.id, e));
        self.change.history.push(HistoryRow {
            workflow_id: wf.id,
            seq,
            at,
            event: json(serde_json::to_string(event))?,
            commands: json(serde_json::to_string(&decision.commands))?,
            ignored: decision.ignored.clone(),
        });
        for command in &decision.commands {
            match command {
                Command::ScheduleActivity(spec) => {
                    let task = TaskMessage {
                        task_id: spec.task_id,
                        workflow_id: WorkflowId(wf.id),
                        workflow_type: wf.workflow_type.clone(),
                        step: spec.step.clone(),
                        activity: spec.activity.clone(),
                        phase: spec.phase,
                        attempt: spec.attempt,
                        idempotency_key: spec.idempotency_key.clone(),
                        deadline: spec.deadline,
                        payload: spec.payload.clone(),
                        // The saga root's context; the publish span becomes its child.
                        traceparent: Some(orderflow_telemetry::root_traceparent(wf.id)),
                    };
                    self.change.outbox.push(NewTask {
                        workflow_id: wf.id,
                        task_id: spec.task_id.0,
                        exchange: String::new(),
                        queue: topology.task_queue(&spec.activity),
                        body: json(serde_json::to_string(&task))?,
                        deadline: Some(spec.deadline),
                    });
                }
                Command::StartTimer {
                    timer_id,
                    fire_at,
                    purpose,
                } => {
                    self.soonest_timer =
                        Some(self.soonest_timer.map_or(*fire_at, |s| s.min(*fire_at)));
                    self.change.start_timer(NewTimer {
                        id: timer_id.0,
                        workflow_id: wf.id,
                        fire_at: *fire_at,
                        purpose: json(serde_json::to_string(purpose))?,
                    });
                }
                Command::CancelTimer { timer_id } => self.change.cancel_timer(timer_id.0, wf.id),
                Command::Finish { status, reason } => {
                    self.finished
                        .push((wf.id, wf.workflow_type.clone(), *status));
                    // Services follow their workflows through this event, published after commit.
                    let cause = state
                        .view()
                        .steps
                        .into_iter()
                        .find(|s| s.status == StepStatus::Failed)
                        .and_then(|s| s.last_error);
                    let finished = WorkflowFinished {
                        workflow_id: WorkflowId(wf.id),
                        workflow_type: wf.workflow_type.clone(),
                        status: *status,
                        reason: reason.clone(),
                        cause,
                        business_keys: wf.business_keys.clone(),
                        at,
                    };
                    self.change.outbox.push(NewTask {
                        workflow_id: wf.id,
                        task_id: WorkflowId(wf.id).derive("finished"),
                        exchange: topology.events_exchange(),
                        queue: finished_routing_key(&wf.workflow_type),
                        body: json(serde_json::to_string(&finished))?,
                        deadline: None,
                    });
                }
                Command::RequireAttention { reason } => {
                    tracing::warn!(workflow_id = %wf.id, %reason, "workflow needs attention");
                    self.finished.push((
                        wf.id,
                        wf.workflow_type.clone(),
                        WorkflowStatus::NeedsAttention,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Counts the workflows this batch finished, of those that were written.
    pub fn count_finished(&self, written: impl Fn(&Uuid) -> bool) {
        for (id, workflow_type, status) in &self.finished {
            if written(id) {
                metrics::WORKFLOWS_FINISHED
                    .with_label_values(&[workflow_type, status.as_str()])
                    .inc();
            }
        }
    }
}
