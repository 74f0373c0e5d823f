//! The read seam: everything the REST API and the admin UI read of the engine's database.
//! Postgres ([`super::postgres::reads`]) and SQLite ([`super::sqlite::reads`]) each implement
//! [`Reads`] in its own dialect. It is object-safe, so the HTTP side holds one `dyn Reads` and is
//! not generic over the store; what the HTTP side changes goes through the committer
//! ([`crate::committer::Committer`]).
//!
//! The reads are shaped so an index answers each with millions of workflows in the table
//! (`engine/benches/admin.rs` measures the Postgres ones): the list walks `workflows` newest
//! first on a key and turns a time range into a range of UUIDv7 ids; the stuck set is a union of
//! small indexed sets and only one page's states are read.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use serde_json::Value;
use uuid::Uuid;

use super::WorkflowRow;
use crate::apply::Outcome;

/// What the list can be filtered by. Every field is optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub workflow_type: Option<String>,
    /// A business key value (order id, user id) or a payment intent id.
    pub business_key: Option<String>,
    pub id: Option<Uuid>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (the next page's cursor).
    pub before_id: Option<Uuid>,
    /// Only ids at or below this one (a bulk action never reaches workflows newer than its
    /// preview).
    pub upto_id: Option<Uuid>,
    pub limit: i64,
}

/// One row of the list.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ListRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub business_keys: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The step at the saga's cursor (name, status, attempts, last error), if it has one.
    pub current: Option<Value>,
}

/// The smallest UUIDv7 of millisecond `ms`: every v7 id minted at or after that millisecond
/// sorts at or above it.
pub fn v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(b)
}

/// Which kind of stuck a view is limited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckKind {
    /// Status `needs_attention`.
    Attention,
    /// Waiting on a backoff timer after a failed attempt (forward or compensation).
    Retrying,
    /// A task is out on a queue that no worker consumes.
    NoWorker,
    /// A timer (start-to-close, backoff, deadline) is due and has not fired.
    Overdue,
}

impl StuckKind {
    pub const ALL: [StuckKind; 4] = [
        Self::Attention,
        Self::Retrying,
        Self::NoWorker,
        Self::Overdue,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Attention => "attention",
            Self::Retrying => "retrying",
            Self::NoWorker => "no_worker",
            Self::Overdue => "overdue",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Attention => "need attention",
            Self::Retrying => "retrying",
            Self::NoWorker => "on a queue with no worker",
            Self::Overdue => "with an overdue timer",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// What the stuck view can be filtered by.
#[derive(Debug, Clone, Default)]
pub struct StuckFilter {
    /// Only this kind of stuck.
    pub kind: Option<StuckKind>,
    /// Only sagas whose latest task is of this activity (`payment.charge`).
    pub activity: Option<String>,
    pub workflow_type: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    pub before_id: Option<Uuid>,
    pub upto_id: Option<Uuid>,
    pub limit: i64,
    /// Timers due before this instant count as overdue.
    pub overdue_before: DateTime<Utc>,
    /// Workflows whose task is out on a queue that no worker consumes (from
    /// `QueueProbe` of the admin UI).
    pub no_worker: Vec<Uuid>,
}

/// A stuck workflow with what is needed to say why.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StuckRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state: Value,
    /// The latest `schedule_activity` command (its `TaskSpec`), and when it was decided.
    pub last_task: Option<Value>,
    pub last_task_at: Option<DateTime<Utc>>,
}

/// A durable timer as the pages show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TimerRow {
    pub workflow_id: Uuid,
    pub id: Uuid,
    pub fire_at: DateTime<Utc>,
    pub purpose: Value,
}

/// One operator action from some workflow's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub workflow_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event: Value,
    pub workflow_type: Option<String>,
    pub status: Option<String>,
}

/// A live operator session: who, and the CSRF token its forms must carry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Session {
    pub actor: String,
    pub csrf_token: String,
}

/// The reads of the API and the admin UI, and the operators' sessions.
#[async_trait]
pub trait Reads: Send + Sync + fmt::Debug {
    /// One workflow.
    async fn get(&self, id: Uuid) -> sqlx::Result<Option<WorkflowRow>>;

    /// A workflow's events in order, in the replay format.
    async fn history(&self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>>;

    /// One workflow and its history, if it exists.
    async fn workflow(&self, id: Uuid) -> sqlx::Result<Option<(WorkflowRow, Vec<RecordedEvent>)>> {
        let Some(row) = self.get(id).await? else {
            return Ok(None);
        };
        Ok(Some((row, self.history(id).await?)))
    }

    /// How many workflows are in each status, by status.
    async fn counts(&self) -> sqlx::Result<Vec<(String, i64)>>;

    /// The admin list: newest first, the current step of each row picked out of its state.
    async fn list(&self, f: &ListFilter) -> sqlx::Result<Vec<ListRow>>;

    /// The ids a list filter matches, newest first, at most `f.limit`.
    async fn list_ids(&self, f: &ListFilter) -> sqlx::Result<Vec<Uuid>>;

    /// The API's list: whole rows, newest first.
    async fn list_workflows(&self, f: &ListFilter) -> sqlx::Result<Vec<WorkflowRow>>;

    /// One page of stuck workflows, newest first.
    async fn stuck(&self, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>>;

    /// The ids a stuck filter matches, newest first, at most `f.limit`.
    async fn stuck_ids(&self, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>>;

    /// `(needs attention, retrying, overdue)`: workflows in `needs_attention`, waiting on a
    /// retry timer, and with a timer due before `overdue_before`. `no_worker` is counted by the
    /// caller, who asks the queue.
    async fn stuck_counts(&self, overdue_before: DateTime<Utc>) -> sqlx::Result<(i64, i64, i64)>;

    /// Every task out with a worker, as (workflow, activity): the workflows with a
    /// start-to-close timer, and the activity of their latest task.
    async fn tasks_out(&self) -> sqlx::Result<Vec<(Uuid, Option<String>)>>;

    /// Per activity, the tasks out with a worker (scheduled, no result applied yet) and when the
    /// oldest of them was scheduled: the instant of the event whose commands scheduled it.
    async fn tasks_out_by_activity(&self) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>>;

    /// The pending timers of some workflows, soonest first.
    async fn timers_of(&self, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>>;

    /// Operator actions across all workflows, newest first, older than `before` if given.
    async fn audit(&self, before: Option<DateTime<Utc>>, limit: i64)
    -> sqlx::Result<Vec<AuditRow>>;

    /// Outbox rows waiting, and the age in seconds of the oldest.
    async fn outbox_lag(&self) -> sqlx::Result<(i64, f64)>;

    /// The live session with this token hash.
    async fn session(&self, token_hash: &[u8]) -> sqlx::Result<Option<Session>>;

    /// Opens a session lasting `ttl`, dropping expired ones on the way (so the table stays as
    /// small as the live ones).
    async fn open_session(
        &self,
        token_hash: &[u8],
        actor: &str,
        csrf: &str,
        ttl: Duration,
    ) -> sqlx::Result<()>;

    /// Ends the session with this token hash, on every replica.
    async fn close_session(&self, token_hash: &[u8]) -> sqlx::Result<()>;

    /// Whether the database answers.
    async fn ping(&self) -> bool;

    /// Where a workflow that retention claimed went: its archive object and when it was
    /// deleted (`crate::retention`). `None` for an id retention never claimed.
    async fn archived(&self, id: Uuid) -> sqlx::Result<Option<super::retention::ArchivedAt>>;
}

/// Whether to keep what a batch of operator actions did: a single action keeps nothing that
/// was refused.
pub type Keep = Box<dyn FnOnce(&[Outcome]) -> bool + Send + Sync>;
