//! The pure heart of OrderFlow: what a saga is and how it moves. No I/O, no clock, no randomness;
//! time and ids arrive inside events, so folding a history always gives the same state and the
//! same commands. The engine crate persists and executes what this crate decides.
//!
//! # Glossary
//! - **workflow**: one durable instance of a definition (an order saga for order 42), id [`WorkflowId`].
//! - **definition**: the versioned shape of a workflow type: its steps and policies ([`SagaDefinition`]).
//! - **step**: one position in a saga's forward path, done by an activity; kind compensatable, pivot
//!   or retriable ([`StepKind`]).
//! - **activity**: named unit of work done by a worker outside the engine (`payment.charge`).
//! - **task**: one message asking a worker to run one activity once, id [`TaskId`].
//! - **attempt**: the n-th task for the same step and phase; attempts share an idempotency key.
//! - **event**: an input the workflow reacted to, appended to its history ([`Event`]).
//! - **command**: what the decider asks the engine to do in reaction ([`Command`]).
//! - **outbox row**: a task committed with the state change, published to the broker after commit.
//! - **timer**: a durable wake-up (backoff, start-to-close timeout, deadline), id [`TimerId`].
//! - **compensation**: the activity that semantically undoes a completed step.
//! - **pivot**: the step after whose success the saga only moves forward.
//! - **signal**: a named message with a payload sent to a running workflow from outside (a
//!   warehouse scanned the parcel); recorded as an event.
//! - **wait**: a step that runs no activity and completes when its signal arrives, or fails when
//!   its timeout timer fires first ([`Wait`]).
//!
//! # Map
//! [`ids`] and [`protocol`] are the durable vocabulary; [`definition`] builds and checks sagas;
//! [`saga`] is the decider; [`history`] and [`replay`] record and re-check decisions;
//! [`registry`] finds the definition of a running workflow by type and version.

pub mod definition;
pub mod event;
pub mod history;
pub mod ids;
pub mod inject;
pub mod json_body;
pub mod protocol;
pub mod registry;
pub mod replay;
pub mod retry;
pub mod saga;
pub mod state;
pub mod testing;

pub use definition::{DefinitionError, SagaDefinition, Step, StepKind, Wait};
pub use event::{Command, Decision, Event, Phase, TaskSpec, TimerPurpose};
pub use history::{History, RecordedEvent};
pub use ids::{TaskId, TimerId, WorkflowId};
pub use protocol::{ActivityError, ResultMessage, TaskMessage, TaskOutcome, WorkflowFinished};
pub use registry::Registry;
pub use replay::{ReplayError, replay};
pub use retry::RetryPolicy;
pub use saga::SagaState;
pub use state::{
    DecideError, NondeterminismPolicy, StepStatus, StepView, WaitView, WorkflowDefinition,
    WorkflowState, WorkflowStatus, WorkflowView,
};
