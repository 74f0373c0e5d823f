//! The engine's database: the [`Store`] port and its two adapters.
//!
//! - [`Store`] (a database of workflows) and [`StoreTx`] (one write transaction on it) are what
//!   the engine's loops and the applier write through; methods return `impl Future + Send`, so
//!   the engine is generic over the store with static dispatch.
//! - [`reads`]: the read seam of the API and the admin UI ([`reads::Reads`]), and their actions
//!   ([`reads::Actions`]), object-safe.
//! - [`change`]: the rows one state change writes, whatever the database.
//! - [`postgres`]: production; one module per table, each taking the caller's transaction,
//!   batches written with multi-row statements, wake-ups by `LISTEN/NOTIFY`.
//! - [`sqlite`]: the embedded store of `orderflow dev`; one `BEGIN IMMEDIATE` transaction per
//!   write, wake-ups in the process.
//!
//! `engine/tests/conformance.rs` holds both adapters to one suite.

pub mod change;
pub mod postgres;
pub mod reads;
pub mod sqlite;

use std::future::Future;

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use serde_json::Value;
use uuid::Uuid;

pub use reads::{Actions, Database, Reads};

use change::{Change, NewWorkflow};

/// A workflow loaded under its row lock. The snapshot comes as JSON text, which the applier
/// deserializes straight into the workflow's state type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub state: String,
    pub last_seq: i64,
    pub business_keys: Value,
    pub definition_fingerprint: Option<String>,
}

/// A workflow as the API reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub state: Value,
    pub last_seq: i64,
    pub business_keys: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An outbox row taken for publishing. The body comes as the JSON text it is sent as, so the
/// relay neither parses nor re-serializes it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub task_id: Uuid,
    pub exchange: String,
    pub queue: String,
    pub body: String,
    pub traceparent: Option<String>,
}

/// One write transaction. Everything written through it commits together or not at all
/// ([`Store::commit`]); dropping it rolls back.
pub trait StoreTx: Send {
    /// Locks the given workflows in id order; with `skip_locked` rows another transaction holds
    /// are left out instead of waited for.
    fn lock(
        &mut self,
        ids: &[Uuid],
        skip_locked: bool,
    ) -> impl Future<Output = sqlx::Result<Vec<Locked>>> + Send;

    /// A locked workflow's events in order.
    fn history(
        &mut self,
        id: Uuid,
    ) -> impl Future<Output = sqlx::Result<Vec<RecordedEvent>>> + Send;

    /// Records the definition fingerprint a locked workflow now runs with.
    fn set_fingerprint(
        &mut self,
        id: Uuid,
        fingerprint: &str,
    ) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Writes a state change of locked workflows (history, snapshots, outbox rows, timers).
    fn write(&mut self, change: &Change) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Takes (deletes, effective on commit) up to `limit` outbox rows, oldest first.
    fn take_outbox(
        &mut self,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<OutboxRow>>> + Send;

    /// Workflows with a timer due at `now`, soonest first (not locked).
    fn due_workflows(
        &mut self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<Uuid>>> + Send;

    /// Deletes and returns the due timers of locked workflows.
    fn take_due_timers(
        &mut self,
        workflows: &[Uuid],
        now: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<Vec<DueTimer>>> + Send;
}

/// A due timer, taken for firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DueTimer {
    pub workflow_id: Uuid,
    pub id: Uuid,
    pub fire_at: DateTime<Utc>,
}

/// What a store wakes its pollers for, after a commit that made work for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wakeup {
    /// New outbox rows were committed.
    Outbox,
    /// A timer due soon was committed.
    Timers,
}

/// Waits for a [`Wakeup`]; the pollers fall back to a timeout, so a missed one only delays.
pub trait Listener: Send {
    fn recv(&mut self) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// A database holding workflows, their history, outbox and timers: what the engine's loops and
/// the applier write through. Its reads are the [`Reads`] of the API and the admin UI.
pub trait Store: Reads + Clone + Send + Sync + 'static {
    type Tx: StoreTx + Send;
    type Listener: Listener;

    /// Starts a write transaction.
    fn begin(&self) -> impl Future<Output = sqlx::Result<Self::Tx>> + Send;

    /// Commits `tx` and delivers the wake-ups its change asked for.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Rolls `tx` back and waits until it is: a dropped transaction is only rolled back when
    /// its connection is next used, so its row locks can outlive the drop for a while.
    fn rollback(&self, tx: Self::Tx) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Creates `wf` with `change` (its first event) atomically, unless its idempotency key is
    /// taken: then nothing is written and this answers `false`.
    fn create(
        &self,
        change: &Change,
        wf: &NewWorkflow,
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;

    /// The workflow started with this idempotency key, and its request hash.
    fn by_idempotency_key(
        &self,
        key: &str,
    ) -> impl Future<Output = sqlx::Result<Option<(Uuid, Option<String>)>>> + Send;

    /// When the next timer is due, if any.
    fn next_due(&self) -> impl Future<Output = sqlx::Result<Option<DateTime<Utc>>>> + Send;

    /// Subscribes to one kind of wake-up.
    fn listen(&self, what: Wakeup) -> impl Future<Output = sqlx::Result<Self::Listener>> + Send;
}
