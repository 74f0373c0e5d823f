//! The saga decider: folds one event into a [`SagaState`] and says what to do next.
//!
//! Forward steps run one at a time. A permanent failure before the pivot compensates every
//! completed step in reverse order (and the failed step too when one of its attempts timed out,
//! since its effect is then unknown). After the pivot the saga only moves forward. Cancel and the
//! deadline wait for an in-flight task to settle, then compensate the same way.
//!
//! A wait step schedules no task: it starts a timer for its timeout and completes when its signal
//! arrives (or at once, if the signal arrived before the step was reached). The timer firing
//! first fails the step: before the pivot the saga compensates, after it the saga needs an
//! operator. Both the signal and the timer are events, so waiting replays like everything else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    ActivityError, Command, DecideError, Decision, Event, Phase, SagaDefinition, StepKind,
    StepStatus, StepView, TaskId, TaskSpec, TimerId, TimerPurpose, WorkflowDefinition, WorkflowId,
    WorkflowState, WorkflowStatus, WorkflowView, definition::Step,
};

/// The task a saga is waiting on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InFlight {
    pub task_id: TaskId,
    pub step: usize,
    pub phase: Phase,
    pub timeout_timer: TimerId,
}

/// One step's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    /// Attempts before the last operator retry; the retry budget counts from here.
    pub budget_from: u32,
    pub compensation_attempts: u32,
    pub compensation_budget_from: u32,
    pub last_error: Option<ActivityError>,
    pub output: Option<Value>,
    /// An attempt timed out, so the step may have taken effect without us knowing.
    pub outcome_unknown: bool,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// While a wait step waits: when its timeout fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until: Option<DateTime<Utc>>,
}

/// The folded state of one saga; snapshotted after every change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SagaState {
    pub workflow_id: WorkflowId,
    pub workflow_type: String,
    pub version: u32,
    pub input: Value,
    pub status: WorkflowStatus,
    pub reason: Option<String>,
    pub steps: Vec<StepState>,
    /// The step whose task is out or due next.
    pub cursor: usize,
    pub in_flight: Option<InFlight>,
    pub timers: BTreeMap<TimerId, TimerPurpose>,
    pub signals: BTreeMap<String, Value>,
    /// A cancel or the deadline arrived while a forward task was out: undo once it settles.
    pub undo_pending: Option<String>,
    /// The undo was asked for (cancel), so the saga ends `cancelled` rather than `compensated`.
    pub cancelled: bool,
    /// Which phase is stuck while the saga needs attention.
    pub attention: Option<Phase>,
    /// The reason the saga had before it needed attention (why it is compensating, say); an
    /// operator's retry or resolution brings it back so the final reason is not a stale failure.
    #[serde(default)]
    pub reason_before_attention: Option<String>,
}

#[typetag::serde(name = "saga")]
impl WorkflowState for SagaState {
    fn status(&self) -> WorkflowStatus {
        self.status
    }

    fn view(&self) -> WorkflowView {
        WorkflowView {
            status: self.status,
            reason: self.reason.clone(),
            steps: self
                .steps
                .iter()
                .map(|s| StepView {
                    name: s.name.clone(),
                    activity: String::new(),
                    kind: String::new(),
                    status: s.status,
                    attempts: s.attempts,
                    compensation_attempts: s.compensation_attempts,
                    last_error: s.last_error.clone(),
                    output: s.output.clone(),
                    started_at: s.started_at,
                    finished_at: s.finished_at,
                    // The signal's name is the definition's; `describe` fills it in.
                    waiting_for: s.wait_until.map(|until| crate::WaitView {
                        signal: String::new(),
                        until,
                    }),
                })
                .collect(),
        }
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    fn clone_box(&self) -> Box<dyn WorkflowState> {
        Box::new(self.clone())
    }
}

impl WorkflowDefinition for SagaDefinition {
    fn workflow_type(&self) -> &str {
        &self.workflow_type
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn fingerprint(&self) -> String {
        SagaDefinition::fingerprint(self)
    }

    fn nondeterminism_policy(&self) -> crate::NondeterminismPolicy {
        self.nondeterminism
    }

    fn activities(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.kind != StepKind::Wait)
            .flat_map(|s| {
                std::iter::once(s.activity.as_str())
                    .chain(s.compensation.as_ref().map(|c| c.activity.as_str()))
            })
            .collect()
    }

    fn describe(&self, view: &mut WorkflowView) {
        for (step, def) in view.steps.iter_mut().zip(&self.steps) {
            step.activity.clone_from(&def.activity);
            step.kind = def.kind.as_str().to_owned();
            if let (Some(w), Some(view)) = (&def.wait, &mut step.waiting_for) {
                view.signal.clone_from(&w.signal);
            }
        }
    }

    fn validate_input(&self, input: &Value) -> Result<(), DecideError> {
        match self.input_check {
            Some(check) => check(input).map_err(DecideError::InvalidInput),
            None => Ok(()),
        }
    }

    fn start(
        &self,
        id: WorkflowId,
        input: &Value,
        at: DateTime<Utc>,
    ) -> Result<(Box<dyn WorkflowState>, Decision), DecideError> {
        self.validate_input(input)?;
        let mut state = SagaState {
            workflow_id: id,
            workflow_type: self.workflow_type.clone(),
            version: self.version,
            input: input.clone(),
            status: WorkflowStatus::Running,
            reason: None,
            steps: self
                .steps
                .iter()
                .map(|s| StepState {
                    name: s.name.clone(),
                    status: StepStatus::Pending,
                    attempts: 0,
                    budget_from: 0,
                    compensation_attempts: 0,
                    compensation_budget_from: 0,
                    last_error: None,
                    output: None,
                    outcome_unknown: false,
                    started_at: None,
                    finished_at: None,
                    wait_until: None,
                })
                .collect(),
            cursor: 0,
            in_flight: None,
            timers: BTreeMap::new(),
            signals: BTreeMap::new(),
            undo_pending: None,
            cancelled: false,
            attention: None,
            reason_before_attention: None,
        };
        let mut d = Decider {
            def: self,
            s: &mut state,
            at,
            out: Vec::new(),
        };
        if let Some(deadline) = self.deadline {
            let timer_id = TimerId(id.derive("deadline"));
            d.start_timer(timer_id, deadline, TimerPurpose::Deadline);
        }
        d.schedule(0, Phase::Forward);
        let commands = d.out;
        Ok((
            Box::new(state),
            Decision {
                commands,
                ignored: None,
            },
        ))
    }

    fn decide(
        &self,
        state: &mut dyn WorkflowState,
        event: &Event,
        at: DateTime<Utc>,
    ) -> Result<Decision, DecideError> {
        let s = state
            .as_any_mut()
            .downcast_mut::<SagaState>()
            .ok_or_else(|| DecideError::Inconsistent("state is not a saga state".into()))?;
        if s.steps.len() != self.steps.len() {
            return Err(DecideError::Inconsistent(format!(
                "state has {} steps, definition {} v{} has {}",
                s.steps.len(),
                self.workflow_type,
                self.version,
                self.steps.len()
            )));
        }
        let mut d = Decider {
            def: self,
            s,
            at,
            out: Vec::new(),
        };
        let ignored = d.on_event(event)?;
        Ok(Decision {
            commands: d.out,
            ignored,
        })
    }
}

/// One decision in progress: the definition, the state being changed and the commands so far.
struct Decider<'a> {
    def: &'a SagaDefinition,
    s: &'a mut SagaState,
    at: DateTime<Utc>,
    out: Vec<Command>,
}

type Outcome = Result<Option<String>, DecideError>;

fn reject<T>(why: impl Into<String>) -> Result<T, DecideError> {
    Err(DecideError::Rejected(why.into()))
}

impl<'a> Decider<'a> {
    fn on_event(&mut self, event: &Event) -> Outcome {
        let status = self.s.status;
        match event {
            Event::WorkflowStarted { .. } => Err(DecideError::Inconsistent(
                "workflow_started after the start".into(),
            )),
            Event::ActivityCompleted { task_id, output } => match self.take_in_flight(*task_id) {
                Some(f) => {
                    self.succeeded(f, output.clone());
                    Ok(None)
                }
                None => Ok(Some(self.late_completion(*task_id))),
            },
            Event::ActivityFailed { task_id, error } => match self.take_in_flight(*task_id) {
                Some(f) => {
                    self.failed(f, error.clone(), error.outcome_unknown);
                    Ok(None)
                }
                None => Ok(Some(format!("no attempt is waiting for task {task_id}"))),
            },
            Event::TimerFired { timer_id } => self.timer_fired(*timer_id),
            Event::CancelRequested { actor, reason } => {
                self.refuse_if_terminal("cancel")?;
                if let Some(why) = &self.s.undo_pending {
                    return reject(format!("the saga is already being undone: {why}"));
                }
                if status != WorkflowStatus::Running {
                    return reject(format!(
                        "the saga is {status}; only a running saga can be cancelled"
                    ));
                }
                if self.past_pivot() {
                    return reject("the saga is past its pivot and can only move forward");
                }
                self.s.cancelled = true;
                self.undo(format!("cancelled by {actor}: {reason}"));
                Ok(None)
            }
            Event::TerminateRequested { actor, reason } => {
                self.refuse_if_terminal("terminate")?;
                self.s.in_flight = None;
                self.finish(
                    WorkflowStatus::Terminated,
                    format!("terminated by {actor}: {reason}"),
                );
                Ok(None)
            }
            Event::RetryRequested { .. } => self.retry_now(),
            Event::RetryFromStep { step, .. } => self.retry_from(step),
            Event::NondeterminismDetected { detail } => {
                if self.s.status.is_terminal() {
                    return Ok(Some("the workflow had already finished".into()));
                }
                let why = format!("its history no longer replays on this deployment: {detail}");
                match self.def.nondeterminism {
                    crate::NondeterminismPolicy::NeedsAttention => {
                        let phase = self
                            .s
                            .in_flight
                            .as_ref()
                            .map_or(Phase::Forward, |f| f.phase);
                        self.needs_attention(phase, why);
                    }
                    crate::NondeterminismPolicy::Fail => {
                        self.s.in_flight = None;
                        self.finish(WorkflowStatus::Terminated, format!("failed: {why}"));
                    }
                }
                Ok(None)
            }
            Event::SignalReceived { name, payload, .. } => {
                self.refuse_if_terminal("signal")?;
                self.s.signals.insert(name.clone(), payload.clone());
                let idx = self.s.cursor;
                let awaited = self.s.steps[idx].status == StepStatus::Waiting
                    && self
                        .step_def(idx)
                        .wait
                        .as_ref()
                        .is_some_and(|w| w.signal == *name);
                if awaited {
                    self.wait_done(idx, payload.clone());
                }
                Ok(None)
            }
            Event::CompensationResolved {
                step,
                actor,
                reason,
            } => {
                let idx = self.s.cursor;
                if status != WorkflowStatus::NeedsAttention
                    || self.s.attention != Some(Phase::Compensate)
                    || self.s.steps[idx].name != *step
                {
                    return reject(format!(
                        "step `{step}` has no failing compensation to resolve"
                    ));
                }
                let st = &mut self.s.steps[idx];
                st.status = StepStatus::Compensated;
                st.finished_at = Some(self.at);
                self.s.attention = None;
                self.s.status = WorkflowStatus::Compensating;
                let resolved = format!("compensation of `{step}` resolved by {actor}: {reason}");
                self.s.reason = Some(match self.s.reason_before_attention.take() {
                    Some(cause) => format!("{cause}; {resolved}"),
                    None => resolved,
                });
                self.compensate_below(idx);
                Ok(None)
            }
        }
    }

    fn refuse_if_terminal(&self, what: &str) -> Result<(), DecideError> {
        if self.s.status.is_terminal() {
            return reject(format!(
                "cannot {what}: the saga is already {}",
                self.s.status
            ));
        }
        Ok(())
    }

    fn past_pivot(&self) -> bool {
        self.def.steps.iter().zip(&self.s.steps).any(|(d, s)| {
            matches!(d.kind, StepKind::Pivot | StepKind::Retriable)
                && s.status == StepStatus::Completed
        })
    }

    fn take_in_flight(&mut self, task: TaskId) -> Option<InFlight> {
        if self.s.in_flight.as_ref().is_some_and(|f| f.task_id == task) {
            let f = self.s.in_flight.take()?;
            self.cancel_timer(f.timeout_timer);
            Some(f)
        } else {
            None
        }
    }

    fn timer_fired(&mut self, timer: TimerId) -> Outcome {
        let Some(purpose) = self.s.timers.remove(&timer) else {
            return Ok(Some(format!("timer {timer} is no longer wanted")));
        };
        match purpose {
            TimerPurpose::AttemptTimeout { task_id } => {
                match self.s.in_flight.take_if(|f| f.task_id == task_id) {
                    Some(f) => {
                        let secs = self.step_def(f.step).start_to_close.as_secs_f64();
                        let err = ActivityError::retryable(
                            "timeout",
                            format!("no result within the start-to-close timeout of {secs}s"),
                        );
                        self.failed(f, err, true);
                        Ok(None)
                    }
                    None => Ok(Some(format!("task {task_id} already settled"))),
                }
            }
            TimerPurpose::Retry { step, phase } => {
                let idx = self.index_of(&step)?;
                self.schedule(idx, phase);
                Ok(None)
            }
            TimerPurpose::SignalTimeout { step, signal } => {
                let idx = self.index_of(&step)?;
                if self.s.steps[idx].status != StepStatus::Waiting {
                    return Ok(Some(format!("the wait for `{signal}` already ended")));
                }
                self.wait_timed_out(idx, &signal);
                Ok(None)
            }
            TimerPurpose::Deadline => {
                if self.s.status != WorkflowStatus::Running
                    || self.past_pivot()
                    || self.s.undo_pending.is_some()
                {
                    return Ok(Some("deadline passed after the point it matters".into()));
                }
                self.undo("the saga's deadline passed before its pivot".into());
                Ok(None)
            }
        }
    }

    fn retry_now(&mut self) -> Outcome {
        self.refuse_if_terminal("retry")?;
        let idx = self.s.cursor;
        if self.s.status == WorkflowStatus::NeedsAttention {
            let phase = self.s.attention.take().unwrap_or(Phase::Forward);
            self.s.reason = self.s.reason_before_attention.take();
            let st = &mut self.s.steps[idx];
            match phase {
                Phase::Forward => {
                    st.budget_from = st.attempts;
                    self.s.status = WorkflowStatus::Running;
                }
                Phase::Compensate => {
                    st.compensation_budget_from = st.compensation_attempts;
                    self.s.status = WorkflowStatus::Compensating;
                }
            }
            self.schedule(idx, phase);
            return Ok(None);
        }
        let waiting = self
            .s
            .timers
            .iter()
            .find(|(_, p)| matches!(p, TimerPurpose::Retry { .. }))
            .map(|(id, p)| (*id, p.clone()));
        match waiting {
            Some((timer, TimerPurpose::Retry { phase, .. })) => {
                self.cancel_timer(timer);
                self.schedule(idx, phase);
                Ok(None)
            }
            _ => reject(format!(
                "step `{}` is not waiting to retry; nothing to retry now",
                self.s.steps[idx].name
            )),
        }
    }

    /// Runs the forward path again from step `step`: that step and every later one up to the
    /// cursor go back to pending with a fresh retry budget, and `step` is scheduled now.
    ///
    /// Only a saga moving forward with no task out qualifies: a result still on its way would
    /// race the new attempt, and a compensating saga has already decided to undo. It never goes
    /// back over a pivot that succeeded, since the saga then only moves forward. Re-run steps
    /// keep their idempotency keys, so an activity that already took effect (a charge) answers
    /// with its first result instead of doing it twice.
    fn retry_from(&mut self, step: &str) -> Outcome {
        self.refuse_if_terminal("retry from a step")?;
        let Some(idx) = self.def.steps.iter().position(|s| s.name == step) else {
            return reject(format!("the saga has no step `{step}`"));
        };
        let forward = match self.s.status {
            WorkflowStatus::Running => self.s.undo_pending.is_none(),
            WorkflowStatus::NeedsAttention => self.s.attention == Some(Phase::Forward),
            _ => false,
        };
        if !forward {
            return reject(format!(
                "the saga is {} and being undone; retry or resolve its compensation instead",
                self.s.status
            ));
        }
        if let Some(f) = &self.s.in_flight {
            return reject(format!(
                "a task of step `{}` is out with a worker; retry from a step once it settles",
                self.s.steps[f.step].name
            ));
        }
        let cursor = self.s.cursor;
        if idx > cursor {
            return reject(format!(
                "step `{step}` has not been reached yet; the saga is at `{}`",
                self.s.steps[cursor].name
            ));
        }
        if let Some(p) = (idx..=cursor).find(|&j| {
            self.def.steps[j].kind == StepKind::Pivot
                && self.s.steps[j].status == StepStatus::Completed
        }) {
            return reject(format!(
                "the pivot `{}` already succeeded; the saga can only move forward from there",
                self.s.steps[p].name
            ));
        }
        if let Some(timer) = self.retry_timer() {
            self.cancel_timer(timer);
        }
        self.stop_waiting();
        for st in &mut self.s.steps[idx..=cursor] {
            st.status = StepStatus::Pending;
            st.output = None;
            st.finished_at = None;
            st.budget_from = st.attempts;
        }
        if self.s.status == WorkflowStatus::NeedsAttention {
            self.s.attention = None;
            self.s.reason = self.s.reason_before_attention.take();
            self.s.status = WorkflowStatus::Running;
        }
        self.schedule(idx, Phase::Forward);
        Ok(None)
    }

    fn succeeded(&mut self, f: InFlight, output: Value) {
        let at = self.at;
        let st = &mut self.s.steps[f.step];
        st.finished_at = Some(at);
        match f.phase {
            Phase::Compensate => {
                st.status = StepStatus::Compensated;
                self.compensate_below(f.step);
            }
            Phase::Forward => {
                st.status = StepStatus::Completed;
                st.output = Some(output);
                if let Some(why) = self.s.undo_pending.take() {
                    if self.def.steps[f.step].kind == StepKind::Compensatable {
                        return self.begin_compensation(f.step, why);
                    }
                    self.s.cancelled = false;
                    self.s.reason = Some(format!("{why}, but the pivot had already succeeded"));
                }
                self.forward_from(f.step);
            }
        }
    }

    /// Step `done` completed: go on with the next one, or finish.
    fn forward_from(&mut self, done: usize) {
        if done + 1 < self.s.steps.len() {
            self.schedule(done + 1, Phase::Forward);
        } else {
            self.finish(WorkflowStatus::Completed, None);
        }
    }

    /// Reaches wait step `idx`: completes it at once if its signal already arrived, else starts
    /// the timer of its timeout.
    fn begin_wait(&mut self, idx: usize) {
        let def = self.step_def(idx);
        let wait = def.wait.as_ref().expect("a wait step has a wait");
        let wf = self.s.workflow_id;
        let at = self.at;
        let st = &mut self.s.steps[idx];
        st.attempts += 1;
        st.started_at.get_or_insert(at);
        let attempt = st.attempts;
        self.s.cursor = idx;
        if let Some(payload) = self.s.signals.get(&wait.signal).cloned() {
            self.s.steps[idx].status = StepStatus::Waiting;
            return self.wait_done(idx, payload);
        }
        let st = &mut self.s.steps[idx];
        st.status = StepStatus::Waiting;
        st.wait_until = Some(at + wait.timeout);
        let timer = TimerId(wf.derive(&format!("wait/{}/{attempt}", def.name)));
        self.start_timer(
            timer,
            wait.timeout,
            TimerPurpose::SignalTimeout {
                step: def.name.clone(),
                signal: wait.signal.clone(),
            },
        );
    }

    /// The signal wait step `idx` waits for arrived with `payload`: the step's output.
    fn wait_done(&mut self, idx: usize, payload: Value) {
        self.stop_waiting();
        let at = self.at;
        let st = &mut self.s.steps[idx];
        st.status = StepStatus::Completed;
        st.output = Some(payload);
        st.finished_at = Some(at);
        self.forward_from(idx);
    }

    /// Wait step `idx` saw its timeout fire before its signal.
    fn wait_timed_out(&mut self, idx: usize, signal: &str) {
        let def = self.step_def(idx);
        let at = self.at;
        let st = &mut self.s.steps[idx];
        let until = st.wait_until.take().unwrap_or(at);
        let error = ActivityError::permanent(
            "signal_timeout",
            format!("no `{signal}` signal arrived by {}", until.to_rfc3339()),
        );
        st.last_error = Some(error.clone());
        st.status = StepStatus::Failed;
        st.finished_at = Some(at);
        let why = format!("step `{}` failed: {error}", def.name);
        if self.past_pivot() {
            self.needs_attention(Phase::Forward, why);
        } else {
            self.begin_compensation(idx, why);
        }
    }

    /// Ends a wait in progress without its signal (an undo, a retry from an earlier step).
    fn stop_waiting(&mut self) {
        if let Some(t) = self.timer_for(|p| matches!(p, TimerPurpose::SignalTimeout { .. })) {
            self.cancel_timer(t);
        }
        for st in &mut self.s.steps {
            st.wait_until = None;
        }
    }

    fn failed(&mut self, f: InFlight, error: ActivityError, unknown: bool) {
        let idx = f.step;
        let def = self.step_def(idx);
        let st = &mut self.s.steps[idx];
        st.last_error = Some(error.clone());
        match f.phase {
            Phase::Forward => {
                st.outcome_unknown |= unknown;
                if let Some(why) = self.s.undo_pending.take() {
                    st.status = StepStatus::Failed;
                    return self.begin_compensation(idx, why);
                }
                let used = st.attempts - st.budget_from;
                let forever = def.kind == StepKind::Retriable;
                if def.retry.is_retryable(&error) && (forever || !def.retry.exhausted(used)) {
                    st.status = StepStatus::Retrying;
                    let attempt = st.attempts;
                    self.retry_later(idx, Phase::Forward, attempt, f.task_id);
                } else if forever {
                    st.status = StepStatus::Failed;
                    self.needs_attention(
                        Phase::Forward,
                        format!("step `{}` failed after the pivot: {error}", def.name),
                    );
                } else {
                    st.status = StepStatus::Failed;
                    st.finished_at = Some(self.at);
                    self.begin_compensation(idx, format!("step `{}` failed: {error}", def.name));
                }
            }
            Phase::Compensate => {
                let comp = def
                    .compensation
                    .as_ref()
                    .expect("compensating step has a compensation");
                let used = st.compensation_attempts - st.compensation_budget_from;
                if comp.retry.is_retryable(&error) && !comp.retry.exhausted(used) {
                    let attempt = st.compensation_attempts;
                    self.retry_later(idx, Phase::Compensate, attempt, f.task_id);
                } else {
                    self.needs_attention(
                        Phase::Compensate,
                        format!(
                            "compensation `{}` of step `{}` keeps failing: {error}",
                            comp.activity, def.name
                        ),
                    );
                }
            }
        }
    }

    /// Undo what was done: now, or once the in-flight forward task settles.
    fn undo(&mut self, why: String) {
        let idx = self.s.cursor;
        if self.s.in_flight.is_some() {
            self.s.reason = Some(format!("{why}; waiting for the running step to settle"));
            self.s.undo_pending = Some(why);
            return;
        }
        if let Some(timer) = self.retry_timer() {
            self.cancel_timer(timer);
        }
        self.stop_waiting();
        if self.s.steps[idx].status != StepStatus::Completed {
            self.s.steps[idx].status = StepStatus::Failed;
        }
        self.begin_compensation(idx, why);
    }

    fn begin_compensation(&mut self, from: usize, why: String) {
        self.s.status = WorkflowStatus::Compensating;
        self.s.reason = Some(why);
        if let Some(t) = self.timer_for(|p| *p == TimerPurpose::Deadline) {
            self.cancel_timer(t);
        }
        self.compensate_from(Some(from));
    }

    fn compensate_below(&mut self, idx: usize) {
        self.compensate_from(idx.checked_sub(1));
    }

    fn compensate_from(&mut self, from: Option<usize>) {
        // Reverse order from `from`; then any step above it that turned out to have taken effect
        // late (see `late_completion`), so nothing is left behind.
        let below = from.and_then(|from| (0..=from).rev().find(|&i| self.needs_compensation(i)));
        let next = below.or_else(|| {
            (0..self.s.steps.len())
                .rev()
                .find(|&i| self.needs_compensation(i))
        });
        match next {
            Some(i) => self.schedule(i, Phase::Compensate),
            None => self.finish_compensation(),
        }
    }

    /// The step has a compensation, may have taken effect and was not compensated yet.
    fn needs_compensation(&self, i: usize) -> bool {
        let st = &self.s.steps[i];
        self.def.steps[i].compensation.is_some()
            && (st.status == StepStatus::Completed
                || (st.outcome_unknown && st.status != StepStatus::Compensated))
    }

    /// Which step, phase and attempt a task id belongs to (ids are derived, so recompute them).
    fn locate(&self, task: TaskId) -> Option<(usize, Phase, u32)> {
        let wf = self.s.workflow_id;
        self.s.steps.iter().enumerate().find_map(|(i, st)| {
            [
                (Phase::Forward, st.attempts),
                (Phase::Compensate, st.compensation_attempts),
            ]
            .into_iter()
            .find_map(|(phase, n)| {
                (1..=n)
                    .find(|&a| task_id_for(wf, &st.name, phase, a) == task)
                    .map(|a| (i, phase, a))
            })
        })
    }

    /// A completion for an attempt the saga no longer waits for: it timed out, or it failed and
    /// was then redelivered to a worker and succeeded. Either way the step took effect, so a saga
    /// that undoes (or already undid) must compensate it too: no reservation or charge is left
    /// behind. The result itself does not move the saga forward; a running retry completes
    /// idempotently with the same effect.
    fn late_completion(&mut self, task: TaskId) -> String {
        let Some((idx, phase, attempt)) = self.locate(task) else {
            return format!("no attempt is waiting for task {task}");
        };
        let name = self.s.steps[idx].name.clone();
        let st = &mut self.s.steps[idx];
        if phase == Phase::Compensate
            || matches!(st.status, StepStatus::Completed | StepStatus::Compensated)
            || self.def.steps[idx].compensation.is_none()
        {
            return format!(
                "late result of task {task} (attempt {attempt} of `{name}`); the step is settled"
            );
        }
        st.outcome_unknown = true;
        if matches!(
            self.s.status,
            WorkflowStatus::Compensated | WorkflowStatus::Cancelled
        ) {
            let why = self.s.reason.clone().unwrap_or_default();
            self.s.status = WorkflowStatus::Compensating;
            self.s.reason = Some(format!(
                "{why}; step `{name}` took effect late and is undone too"
            ));
            self.schedule(idx, Phase::Compensate);
        }
        format!(
            "late result of attempt {attempt} of `{name}`: it took effect, so undoing the saga compensates it"
        )
    }

    fn finish_compensation(&mut self) {
        let status = if self.s.cancelled {
            WorkflowStatus::Cancelled
        } else {
            WorkflowStatus::Compensated
        };
        let reason = self.s.reason.clone().unwrap_or_default();
        self.finish(status, reason);
    }

    fn finish(&mut self, status: WorkflowStatus, reason: impl Into<Option<String>>) {
        let reason = reason.into();
        let timers: Vec<TimerId> = self.s.timers.keys().copied().collect();
        for t in timers {
            self.cancel_timer(t);
        }
        self.s.status = status;
        if reason.is_some() {
            self.s.reason = reason.clone();
        }
        self.out.push(Command::Finish { status, reason });
    }

    fn needs_attention(&mut self, phase: Phase, why: String) {
        self.s.status = WorkflowStatus::NeedsAttention;
        self.s.attention = Some(phase);
        self.s.reason_before_attention = self.s.reason.replace(why.clone());
        self.out.push(Command::RequireAttention { reason: why });
    }

    fn schedule(&mut self, idx: usize, phase: Phase) {
        let def = self.step_def(idx);
        if def.kind == StepKind::Wait {
            debug_assert_eq!(phase, Phase::Forward, "a wait has nothing to compensate");
            return self.begin_wait(idx);
        }
        let wf = self.s.workflow_id;
        let payload = self.payload();
        let st = &mut self.s.steps[idx];
        let (attempt, activity, timeout, key) = match phase {
            Phase::Forward => {
                st.attempts += 1;
                st.status = StepStatus::Running;
                (
                    st.attempts,
                    &def.activity,
                    def.start_to_close,
                    format!("{wf}/{}", def.name),
                )
            }
            Phase::Compensate => {
                let c = def
                    .compensation
                    .as_ref()
                    .expect("only steps with a compensation compensate");
                st.compensation_attempts += 1;
                st.status = StepStatus::Compensating;
                (
                    st.compensation_attempts,
                    &c.activity,
                    c.start_to_close,
                    format!("{wf}/{}/compensate", def.name),
                )
            }
        };
        st.started_at.get_or_insert(self.at);
        let task_id = task_id_for(wf, &def.name, phase, attempt);
        let timeout_timer = TimerId(wf.derive(&format!("timeout/{task_id}")));
        let deadline = self.at + timeout;
        self.out.push(Command::ScheduleActivity(TaskSpec {
            task_id,
            step: def.name.clone(),
            activity: activity.clone(),
            phase,
            attempt,
            idempotency_key: key,
            deadline,
            payload,
        }));
        self.start_timer(
            timeout_timer,
            timeout,
            TimerPurpose::AttemptTimeout { task_id },
        );
        self.s.cursor = idx;
        self.s.in_flight = Some(InFlight {
            task_id,
            step: idx,
            phase,
            timeout_timer,
        });
    }

    fn retry_later(&mut self, idx: usize, phase: Phase, attempt: u32, task: TaskId) {
        let def = self.step_def(idx);
        let policy = match phase {
            Phase::Forward => &def.retry,
            Phase::Compensate => &def.compensation.as_ref().expect("has compensation").retry,
        };
        let delay = policy.backoff(attempt, task);
        let phase_name = if phase == Phase::Forward {
            "forward"
        } else {
            "compensate"
        };
        let timer = TimerId(
            self.s
                .workflow_id
                .derive(&format!("retry/{}/{phase_name}/{attempt}", def.name)),
        );
        self.start_timer(
            timer,
            delay,
            TimerPurpose::Retry {
                step: def.name.clone(),
                phase,
            },
        );
    }

    fn start_timer(
        &mut self,
        timer_id: TimerId,
        after: std::time::Duration,
        purpose: TimerPurpose,
    ) {
        let fire_at = self.at + after;
        self.s.timers.insert(timer_id, purpose.clone());
        self.out.push(Command::StartTimer {
            timer_id,
            fire_at,
            purpose,
        });
    }

    fn cancel_timer(&mut self, timer_id: TimerId) {
        if self.s.timers.remove(&timer_id).is_some() {
            self.out.push(Command::CancelTimer { timer_id });
        }
    }

    fn timer_for(&self, f: impl Fn(&TimerPurpose) -> bool) -> Option<TimerId> {
        self.s.timers.iter().find(|(_, p)| f(p)).map(|(id, _)| *id)
    }

    fn retry_timer(&self) -> Option<TimerId> {
        self.timer_for(|p| matches!(p, TimerPurpose::Retry { .. }))
    }

    /// What a task sees: the saga input, the outputs of completed steps by step name, and the
    /// latest payload of each signal.
    fn payload(&self) -> Value {
        let results: Map<String, Value> = self
            .s
            .steps
            .iter()
            .filter_map(|s| s.output.clone().map(|o| (s.name.clone(), o)))
            .collect();
        json!({ "input": self.s.input, "results": results, "signals": self.s.signals })
    }

    /// The step's definition, borrowed for the decider's lifetime rather than `self`'s, so the
    /// state can be changed while it is held.
    fn step_def(&self, idx: usize) -> &'a Step {
        let def: &'a SagaDefinition = self.def;
        &def.steps[idx]
    }

    fn index_of(&self, step: &str) -> Result<usize, DecideError> {
        self.def
            .steps
            .iter()
            .position(|s| s.name == step)
            .ok_or_else(|| DecideError::Inconsistent(format!("no step `{step}` in the definition")))
    }
}

/// The id of one attempt's task: derived, so replay and [`Decider::locate`] compute the same one.
fn task_id_for(wf: WorkflowId, step: &str, phase: Phase, attempt: u32) -> TaskId {
    let phase_name = match phase {
        Phase::Forward => "forward",
        Phase::Compensate => "compensate",
    };
    TaskId(wf.derive(&format!("task/{step}/{phase_name}/{attempt}")))
}
