//! The engine's database: the [`Store`] port and its two adapters.
//!
//! - [`Store`] (a database of workflows) is what the engine's committer and loops write
//!   through; methods return `impl Future + Send`, so the engine is generic over the store with
//!   static dispatch. [`StoreTx`] is the outbox relay's transaction.
//! - [`reads`]: the read seam of the API and the admin UI ([`reads::Reads`]), object-safe.
//! - [`change`]: the rows one state change writes, whatever the database.
//! - [`retention`]: what archiving and deleting finished workflows asks of the database
//!   ([`retention::RetentionStore`]).
//! - [`postgres`]: production; one module per table, each taking the caller's connection, a
//!   batch written in one statement.
//! - [`sqlite`]: the embedded store of `orderflow dev`; a batch written in one `BEGIN
//!   IMMEDIATE` transaction.
//!
//! `engine/tests/conformance.rs` holds both adapters to one suite.

pub mod change;
pub mod postgres;
pub mod reads;
pub mod retention;
pub mod sqlite;

use std::future::Future;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

pub use reads::Reads;

use change::{Change, Written};

/// A workflow as the committer loads it to decide on. The snapshot comes as JSON text, which
/// the committer deserializes straight into the workflow's state type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Loaded {
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

/// The relay's transaction: outbox rows it takes are gone only if it commits
/// ([`Store::commit`]); dropping it rolls back.
pub trait StoreTx: Send {
    /// Takes (deletes, effective on commit) up to `limit` outbox rows committed before
    /// `before`, oldest first, skipping rows another relay holds.
    fn take_outbox(
        &mut self,
        limit: i64,
        before: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<Vec<OutboxRow>>> + Send;
}

/// A due timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct DueTimer {
    pub workflow_id: Uuid,
    pub id: Uuid,
    pub fire_at: DateTime<Utc>,
}

/// A database holding workflows, their history, outbox and timers: what the engine's committer
/// and loops write through. Its reads are the [`Reads`] of the API and the admin UI.
pub trait Store: Reads + Clone + Send + Sync + 'static {
    type Tx: StoreTx + Send;

    /// Loads workflows to decide on (no lock: the write of what is decided is guarded by their
    /// history sequence). Unknown ids are left out.
    fn load(&self, ids: &[Uuid]) -> impl Future<Output = sqlx::Result<Vec<Loaded>>> + Send;

    /// Writes a batch atomically and answers which workflows went in (see [`change`]).
    fn write(&self, change: &Change) -> impl Future<Output = sqlx::Result<Written>> + Send;

    /// The workflow started with this idempotency key, and its request hash.
    fn by_idempotency_key(
        &self,
        key: &str,
    ) -> impl Future<Output = sqlx::Result<Option<(Uuid, Option<String>)>>> + Send;

    /// Timers due at `now`, soonest first.
    fn due_timers(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Vec<DueTimer>>> + Send;

    /// When the next timer is due, if any.
    fn next_due(&self) -> impl Future<Output = sqlx::Result<Option<DateTime<Utc>>>> + Send;

    /// Starts a relay transaction.
    fn begin(&self) -> impl Future<Output = sqlx::Result<Self::Tx>> + Send;

    /// Commits a relay transaction.
    fn commit(&self, tx: Self::Tx) -> impl Future<Output = sqlx::Result<()>> + Send;
}
