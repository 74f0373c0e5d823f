//! A deterministic, in-memory stand-in for the engine, for tests and for recording histories.
//!
//! A [`Driver`] starts one workflow from its definition at a fixed instant and then plays the
//! outside world: it completes or fails the tasks the decider scheduled, fires the timers it
//! started (moving a simulated clock to their due time), and sends operator requests and signals.
//! Every accepted event is recorded into a [`History`] exactly as the engine records it: 1-based
//! `seq`, the instant, the event, the commands the decider answered and why it was ignored, if it
//! was. A refused event (a cancel after the pivot) records nothing, as in the engine.
//!
//! It does no I/O and reads no clock, so a scenario gives the same history every time, which is
//! what lets `workflows/examples/record_histories.rs` write the histories replayed in `cargo test`.
//!
//! ```
//! use std::time::Duration;
//!
//! use orderflow_core::{SagaDefinition, Step, WorkflowStatus, testing::Driver};
//! use serde_json::json;
//!
//! let def = SagaDefinition::builder("demo", 1)
//!     .step(Step::compensatable("reserve", "inventory.reserve").compensate_with("inventory.release"))
//!     .step(Step::pivot("charge", "payment.charge"))
//!     .build()?;
//! // #1 workflow_started: schedules reserve (attempt 1) and its start-to-close timer.
//! let mut run = Driver::builder(def).start(json!({"order": 42}))?;
//! // #2 activity_completed (reserve), 150 ms later: schedules charge.
//! run.advance(Duration::from_millis(150)).complete("reserve", json!({"reservation_id": "r1"}))?;
//! // #3 activity_completed (charge): finishes the saga.
//! run.complete("charge", json!({"payment_id": "p1"}))?;
//! assert_eq!(run.status(), WorkflowStatus::Completed);
//! assert_eq!(run.scheduled_activities(), ["inventory.reserve", "payment.charge"]);
//! assert_eq!(run.history().events.len(), 3);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    ActivityError, Command, DecideError, Decision, Event, History, RecordedEvent, SagaState,
    TaskId, TaskSpec, TimerId, TimerPurpose, WorkflowDefinition, WorkflowId, WorkflowState,
    WorkflowStatus,
};

/// The instant a driven workflow starts at unless told otherwise: 2025-01-01T00:00:00Z.
pub fn epoch() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
        .single()
        .expect("a valid, unambiguous UTC instant")
}

/// The workflow id a driven workflow gets unless told otherwise (a fixed UUIDv7).
pub const DEFAULT_WORKFLOW_ID: WorkflowId =
    WorkflowId(Uuid::from_u128(0x0194_1f29_7c00_7000_8000_0000_0000_0001));

/// Why the driver could not deliver what the test asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveError {
    /// The decider refused the event; nothing was recorded.
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// No task of this step is out waiting for a result.
    #[error("no task of step `{0}` is waiting for a result")]
    NoTask(String),
    /// `fire_next_timer` was asked for with no timer pending.
    #[error("no timer is pending")]
    NoTimer,
    /// The timer is not pending (never started, cancelled or already fired).
    #[error("timer {0} is not pending")]
    UnknownTimer(TimerId),
}

/// A timer the decider started and neither cancelled nor saw fire yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingTimer {
    pub timer_id: TimerId,
    pub fire_at: DateTime<Utc>,
    pub purpose: TimerPurpose,
}

/// Sets up a [`Driver`]: which workflow id and start instant to use.
#[derive(Debug)]
pub struct DriverBuilder {
    def: Arc<dyn WorkflowDefinition>,
    workflow_id: WorkflowId,
    at: DateTime<Utc>,
}

impl DriverBuilder {
    /// The id of the driven workflow; task and timer ids derive from it.
    pub fn workflow_id(mut self, id: WorkflowId) -> Self {
        self.workflow_id = id;
        self
    }

    /// The instant of `workflow_started`; the simulated clock starts there.
    pub fn start_at(mut self, at: DateTime<Utc>) -> Self {
        self.at = at;
        self
    }

    /// Records `workflow_started` (seq 1) with `input` and the commands the definition answers.
    pub fn start(self, input: Value) -> Result<Driver, DecideError> {
        let def = self.def;
        let (state, decision) = def.start(self.workflow_id, &input, self.at)?;
        let event = Event::WorkflowStarted {
            workflow_type: def.workflow_type().to_owned(),
            version: def.version(),
            input,
        };
        let mut driver = Driver {
            history: History {
                workflow_id: self.workflow_id,
                workflow_type: def.workflow_type().to_owned(),
                version: def.version(),
                events: Vec::new(),
            },
            def,
            state,
            now: self.at,
            tasks: Vec::new(),
            timers: Vec::new(),
        };
        driver.record(event, decision);
        Ok(driver)
    }
}

/// One workflow driven by a test: the engine's bookkeeping without its database or broker.
///
/// Methods that deliver an event return the [`RecordedEvent`] they appended, or the reason nothing
/// was recorded. Time only moves when a test says so: [`advance`](Self::advance) moves the clock,
/// [`fire_next_timer`](Self::fire_next_timer) moves it to the timer's due time.
#[derive(Debug)]
pub struct Driver {
    def: Arc<dyn WorkflowDefinition>,
    state: Box<dyn WorkflowState>,
    history: History,
    now: DateTime<Utc>,
    /// Scheduled tasks no result was delivered for yet, oldest first.
    tasks: Vec<TaskSpec>,
    /// Started timers that neither fired nor were cancelled, oldest first.
    timers: Vec<PendingTimer>,
}

impl Driver {
    /// Drives a workflow of `def`, started at [`epoch`] with [`DEFAULT_WORKFLOW_ID`] unless the
    /// builder says otherwise.
    pub fn builder(def: impl WorkflowDefinition + 'static) -> DriverBuilder {
        Self::for_definition(Arc::new(def))
    }

    /// Like [`builder`](Self::builder), for a definition taken from a [`crate::Registry`].
    pub fn for_definition(def: Arc<dyn WorkflowDefinition>) -> DriverBuilder {
        DriverBuilder {
            def,
            workflow_id: DEFAULT_WORKFLOW_ID,
            at: epoch(),
        }
    }

    // ---- the clock ----

    /// The simulated time the next event is stamped with.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Moves the clock forward without firing anything; due timers wait until asked for.
    pub fn advance(&mut self, by: Duration) -> &mut Self {
        self.now += chrono::Duration::from_std(by).expect("a test advances by a sane duration");
        self
    }

    // ---- worker results ----

    /// Completes the newest outstanding task of `step` (forward or compensation) with `output`.
    pub fn complete(&mut self, step: &str, output: Value) -> Result<&RecordedEvent, DriveError> {
        let task_id = self.task_of(step)?;
        self.complete_task(task_id, output)
    }

    /// Fails the newest outstanding task of `step` with `error`.
    pub fn fail(&mut self, step: &str, error: ActivityError) -> Result<&RecordedEvent, DriveError> {
        let task_id = self.task_of(step)?;
        self.fail_task(task_id, error)
    }

    /// Delivers a success for any task id: a late result, a duplicate, or one never scheduled.
    pub fn complete_task(
        &mut self,
        task_id: TaskId,
        output: Value,
    ) -> Result<&RecordedEvent, DriveError> {
        self.tasks.retain(|t| t.task_id != task_id);
        self.deliver(Event::ActivityCompleted { task_id, output })
    }

    /// Delivers a failure for any task id.
    pub fn fail_task(
        &mut self,
        task_id: TaskId,
        error: ActivityError,
    ) -> Result<&RecordedEvent, DriveError> {
        self.tasks.retain(|t| t.task_id != task_id);
        self.deliver(Event::ActivityFailed { task_id, error })
    }

    // ---- timers ----

    /// Fires the pending timer that is due first (the oldest on a tie), moving the clock to its
    /// due time if that is later than now.
    pub fn fire_next_timer(&mut self) -> Result<&RecordedEvent, DriveError> {
        let next = self.next_timer().ok_or(DriveError::NoTimer)?.timer_id;
        self.fire_timer(next)
    }

    /// Fires one pending timer, moving the clock to its due time if that is later than now.
    pub fn fire_timer(&mut self, timer_id: TimerId) -> Result<&RecordedEvent, DriveError> {
        let pos = self
            .timers
            .iter()
            .position(|t| t.timer_id == timer_id)
            .ok_or(DriveError::UnknownTimer(timer_id))?;
        let timer = self.timers.remove(pos);
        self.now = self.now.max(timer.fire_at);
        self.deliver(Event::TimerFired { timer_id })
    }

    // ---- operators and signals ----

    /// A user or operator asks to undo the saga.
    pub fn cancel(&mut self, actor: &str, reason: &str) -> Result<&RecordedEvent, DriveError> {
        self.deliver(Event::CancelRequested {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// An operator stops the saga where it stands.
    pub fn terminate(&mut self, actor: &str, reason: &str) -> Result<&RecordedEvent, DriveError> {
        self.deliver(Event::TerminateRequested {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// An operator retries the waiting or stuck step now.
    pub fn retry(&mut self, actor: &str, reason: &str) -> Result<&RecordedEvent, DriveError> {
        self.deliver(Event::RetryRequested {
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Sends the named signal with `payload`.
    pub fn signal(
        &mut self,
        name: &str,
        payload: Value,
        actor: &str,
    ) -> Result<&RecordedEvent, DriveError> {
        self.deliver(Event::SignalReceived {
            name: name.to_owned(),
            payload,
            actor: actor.to_owned(),
        })
    }

    /// An operator marks the failing compensation of `step` as repaired by hand.
    pub fn resolve_compensation(
        &mut self,
        step: &str,
        actor: &str,
        reason: &str,
    ) -> Result<&RecordedEvent, DriveError> {
        self.deliver(Event::CompensationResolved {
            step: step.to_owned(),
            actor: actor.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Decides any event at the current time and records it, as the engine's apply does.
    pub fn deliver(&mut self, event: Event) -> Result<&RecordedEvent, DriveError> {
        let decision = self.def.decide(self.state.as_mut(), &event, self.now)?;
        Ok(self.record(event, decision))
    }

    // ---- what the engine would hold ----

    /// The history recorded so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn into_history(self) -> History {
        self.history
    }

    /// The event recorded last.
    pub fn last(&self) -> &RecordedEvent {
        self.history
            .events
            .last()
            .expect("a started workflow has recorded workflow_started")
    }

    pub fn state(&self) -> &dyn WorkflowState {
        self.state.as_ref()
    }

    /// The state as a saga's, when the definition is a saga.
    pub fn saga_state(&self) -> Option<&SagaState> {
        self.state.as_any().downcast_ref()
    }

    pub fn status(&self) -> WorkflowStatus {
        self.state.status()
    }

    /// Round-trips the state through its JSON snapshot (`Box<dyn WorkflowState>` via typetag), as
    /// the engine does between two applies.
    pub fn reload_state(&mut self) -> Result<(), serde_json::Error> {
        let json = serde_json::to_string(&self.state)?;
        self.state = serde_json::from_str(&json)?;
        Ok(())
    }

    /// Scheduled tasks no result was delivered for yet, oldest first.
    pub fn pending_tasks(&self) -> &[TaskSpec] {
        &self.tasks
    }

    /// The newest outstanding task of `step`.
    pub fn task(&self, step: &str) -> Option<&TaskSpec> {
        self.tasks.iter().rev().find(|t| t.step == step)
    }

    /// Started timers that neither fired nor were cancelled, oldest first.
    pub fn pending_timers(&self) -> &[PendingTimer] {
        &self.timers
    }

    /// The timer [`fire_next_timer`](Self::fire_next_timer) would fire.
    pub fn next_timer(&self) -> Option<&PendingTimer> {
        // min_by_key keeps the first of equal keys: the oldest timer wins a tie.
        self.timers.iter().min_by_key(|t| t.fire_at)
    }

    /// The activity of every task scheduled so far, in order, forward and compensating.
    pub fn scheduled_activities(&self) -> Vec<&str> {
        self.history
            .events
            .iter()
            .flat_map(|e| &e.commands)
            .filter_map(|c| match c {
                Command::ScheduleActivity(spec) => Some(spec.activity.as_str()),
                _ => None,
            })
            .collect()
    }

    fn task_of(&self, step: &str) -> Result<TaskId, DriveError> {
        self.task(step)
            .map(|t| t.task_id)
            .ok_or_else(|| DriveError::NoTask(step.to_owned()))
    }

    fn record(&mut self, event: Event, decision: Decision) -> &RecordedEvent {
        for command in &decision.commands {
            match command {
                Command::ScheduleActivity(spec) => self.tasks.push(spec.clone()),
                Command::StartTimer {
                    timer_id,
                    fire_at,
                    purpose,
                } => self.timers.push(PendingTimer {
                    timer_id: *timer_id,
                    fire_at: *fire_at,
                    purpose: purpose.clone(),
                }),
                Command::CancelTimer { timer_id } => {
                    self.timers.retain(|t| t.timer_id != *timer_id)
                }
                Command::Finish { .. } | Command::RequireAttention { .. } => {}
            }
        }
        let seq = self.history.events.len() as u64 + 1;
        self.history.events.push(RecordedEvent {
            seq,
            at: self.now,
            event,
            commands: decision.commands,
            ignored: decision.ignored,
        });
        self.last()
    }
}
