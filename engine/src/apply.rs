//! Apply, commit, then act. Loads workflows under their row locks, folds a batch of events
//! through their definitions, and writes all of it (history, snapshots, outbox rows, timers) in
//! the caller's transaction with one multi-row statement per table. Nothing is published here:
//! the relay publishes outbox rows after the commit (DESIGN.md §3.1).

use std::{collections::HashMap, sync::Arc};

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
    store::{
        Store, StoreTx,
        change::{Change, HistoryRow, NewTask, NewTimer, NewWorkflow, Update},
    },
};

/// Why applying failed as a whole (the transaction must be rolled back).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored state of workflow {0} does not load: {1}")]
    CorruptState(Uuid, serde_json::Error),
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
    /// No such workflow (or, with `skip_locked`, another transaction holds it).
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

/// Folds events and writes their effects; shared by the API, the intake and the timer poller.
#[derive(Debug, Clone)]
pub struct Applier {
    pub registry: Arc<Registry>,
    pub topology: Topology,
}

impl Applier {
    pub fn new(registry: Arc<Registry>, topology: Topology) -> Self {
        Self { registry, topology }
    }

    /// Starts one workflow in its own transaction. A repeated idempotency key with the same
    /// request hash returns the first workflow; with another hash it is refused.
    pub async fn start(
        &self,
        store: &impl Store,
        req: StartRequest,
    ) -> Result<Started, StartError> {
        let def = self
            .registry
            .latest(&req.workflow_type)
            .ok_or_else(|| StartError::UnknownType(req.workflow_type.clone()))?;
        def.validate_input(&req.input)
            .map_err(StartError::Invalid)?;
        let id = WorkflowId::new_v7();
        let at = now();
        let (state, decision) = def.start(id, &req.input, at).map_err(StartError::Invalid)?;
        let event = Event::WorkflowStarted {
            workflow_type: def.workflow_type().to_owned(),
            version: def.version(),
            input: req.input.clone(),
        };
        let mut w = Writes::default();
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
        // One statement on Postgres, so its own transaction: no begin, no commit, one round
        // trip. A taken idempotency key writes nothing; only then is the first workflow looked
        // up, so the common case (a new key, or none) costs no lookup.
        w.change.wake_timers = w.soon_timer();
        let created = store
            .create(&w.change, &wf)
            .await
            .map_err(ApplyError::from)?;
        if !created {
            let key = req.idempotency_key.as_deref().unwrap_or_default();
            return existing(store, key, &req.request_hash)
                .await?
                .ok_or(StartError::KeyReused);
        }
        w.count_finished();
        metrics::WORKFLOWS_STARTED
            .with_label_values(&[&meta.workflow_type])
            .inc();
        Ok(Started { id, created: true })
    }

    /// Applies `events` (in order) to their workflows inside `tx`, locking each workflow first.
    /// The caller commits. With `skip_locked`, workflows held by another transaction are
    /// answered `NotFound` and left for later.
    pub async fn apply(
        &self,
        tx: &mut impl StoreTx,
        events: &[(WorkflowId, Event)],
        skip_locked: bool,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let mut ids: Vec<Uuid> = events.iter().map(|(id, _)| id.0).collect();
        ids.sort_unstable();
        ids.dedup();
        let locked = tx.lock(&ids, skip_locked).await?;
        let mut loaded: HashMap<Uuid, Loaded> = HashMap::with_capacity(locked.len());
        let mut detected = Vec::new();
        for row in locked {
            let mut state: Box<dyn WorkflowState> = serde_json::from_str(&row.state)
                .map_err(|e| ApplyError::CorruptState(row.id, e))?;
            if let Some(def) = self.registry.get(&row.workflow_type, row.version as u32) {
                let current = def.fingerprint();
                if row.definition_fingerprint.as_deref() != Some(current.as_str()) {
                    let history = History {
                        workflow_id: WorkflowId(row.id),
                        workflow_type: row.workflow_type.clone(),
                        version: row.version as u32,
                        events: tx.history(row.id).await?,
                    };
                    match self.recheck(&history) {
                        Ok(replayed) => state = replayed,
                        Err(detail) => detected
                            .push((WorkflowId(row.id), Event::NondeterminismDetected { detail })),
                    }
                    tx.set_fingerprint(row.id, &current).await?;
                }
            }
            loaded.insert(
                row.id,
                Loaded {
                    meta: Meta {
                        id: row.id,
                        workflow_type: row.workflow_type,
                        business_keys: row.business_keys,
                    },
                    version: row.version as u32,
                    state,
                    last_seq: row.last_seq,
                    dirty: false,
                },
            );
        }
        let at = now();
        let mut w = Writes::default();
        let mut outcomes = Vec::with_capacity(events.len());
        // Nondeterminism events go first so the policy applies before anything else; the
        // caller's outcomes are only those of its own events.
        let first = detected.len();
        let all: Vec<(WorkflowId, Event)> =
            detected.into_iter().chain(events.iter().cloned()).collect();
        for (id, event) in &all {
            let Some(wf) = loaded.get_mut(&id.0) else {
                outcomes.push(Outcome::NotFound);
                continue;
            };
            let Some(def) = self.registry.get(&wf.meta.workflow_type, wf.version) else {
                outcomes.push(Outcome::Rejected(DecideError::Inconsistent(format!(
                    "no definition {} v{} is deployed",
                    wf.meta.workflow_type, wf.version
                ))));
                continue;
            };
            match def.decide(wf.state.as_mut(), event, at) {
                Ok(decision) => {
                    wf.last_seq += 1;
                    wf.dirty = true;
                    w.record(
                        &self.topology,
                        &wf.meta,
                        wf.last_seq,
                        at,
                        event,
                        &decision,
                        wf.state.as_ref(),
                    )?;
                    outcomes.push(Outcome::Applied {
                        seq: wf.last_seq,
                        status: wf.state.status(),
                        ignored: decision.ignored,
                    });
                }
                Err(e) => outcomes.push(Outcome::Rejected(e)),
            }
        }
        for wf in loaded.values().filter(|wf| wf.dirty) {
            let view = wf.state.view();
            w.change.updates.push(Update {
                id: wf.meta.id,
                status: view.status.as_str().to_owned(),
                reason: view.reason,
                state: snapshot(wf.state.as_ref())?,
                last_seq: wf.last_seq,
                at,
            });
        }
        w.change.wake_timers = w.soon_timer();
        tx.write(&w.change).await?;
        w.count_finished();
        outcomes.drain(..first);
        Ok(outcomes)
    }

    /// A workflow last ran on another build of its definition (a version changed in place, or a
    /// row from before fingerprints): replay its history on this one. If it still replays the
    /// change is adopted and the state re-derived from the history; if not, the mismatch.
    fn recheck(&self, history: &History) -> Result<Box<dyn WorkflowState>, String> {
        replay(&self.registry, history).map_err(|e| {
            tracing::error!(workflow_id = %history.workflow_id, error = %e, "history no longer replays");
            e.to_string()
        })
    }
}

async fn existing(
    store: &impl Store,
    key: &str,
    hash: &Option<String>,
) -> Result<Option<Started>, StartError> {
    match store
        .by_idempotency_key(key)
        .await
        .map_err(ApplyError::from)?
    {
        Some((id, stored)) if stored == *hash => Ok(Some(Started {
            id: WorkflowId(id),
            created: false,
        })),
        Some(_) => Err(StartError::KeyReused),
        None => Ok(None),
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

#[derive(Debug)]
struct Meta {
    id: Uuid,
    workflow_type: String,
    business_keys: Value,
}

#[derive(Debug)]
struct Loaded {
    meta: Meta,
    version: u32,
    state: Box<dyn WorkflowState>,
    last_seq: i64,
    dirty: bool,
}

/// Everything one transaction writes, and what it reports once written.
#[derive(Debug, Default)]
struct Writes {
    change: Change,
    finished: Vec<(String, WorkflowStatus)>,
    soonest_timer: Option<DateTime<Utc>>,
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
                        // The saga root's context; the relay's publish span becomes its child.
                        traceparent: Some(orderflow_telemetry::root_traceparent(wf.id)),
                    };
                    self.change.outbox.push(NewTask {
                        workflow_id: wf.id,
                        task_id: spec.task_id.0,
                        exchange: String::new(),
                        queue: topology.task_queue(&spec.activity),
                        body: json(serde_json::to_string(&task))?,
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
                Command::CancelTimer { timer_id } => self.change.cancel_timer(timer_id.0),
                Command::Finish { status, reason } => {
                    self.finished.push((wf.workflow_type.clone(), *status));
                    // Services follow their sagas through this event, published after commit.
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
                    });
                }
                Command::RequireAttention { reason } => {
                    tracing::warn!(workflow_id = %wf.id, %reason, "workflow needs attention");
                    self.finished
                        .push((wf.workflow_type.clone(), WorkflowStatus::NeedsAttention));
                }
            }
        }
        Ok(())
    }

    /// Whether a timer of this change is due soon enough to wake the poller; far ones are found
    /// by its fallback poll.
    fn soon_timer(&self) -> bool {
        self.soonest_timer
            .is_some_and(|t| t < now() + chrono::Duration::seconds(1))
    }

    /// Counts the workflows this change finished; called once it is written.
    fn count_finished(&self) {
        for (workflow_type, status) in &self.finished {
            metrics::WORKFLOWS_FINISHED
                .with_label_values(&[workflow_type, status.as_str()])
                .inc();
        }
    }
}
