//! The retention seam: what `crate::retention` asks of the engine's database to archive
//! finished workflows and delete them. Postgres ([`super::postgres::retention`]) and SQLite
//! ([`super::sqlite::retention`]) implement [`RetentionStore`] in their own dialects.
//!
//! The protocol (`migrations/engine/0030_retention.sql`): [`RetentionStore::claim`] records a
//! batch and its workflows in one short transaction; the caller writes the batch's object;
//! [`RetentionStore::finish`] deletes the workflows, their history and timers and marks the batch
//! archived in one transaction, only if every workflow is still at the sequence that was
//! written. Nothing here holds a lock while the object is written.

use std::future::Future;

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use uuid::Uuid;

use super::{Store, WorkflowRow};

/// The statuses retention may delete: those no event moves again. `needs_attention` is not one.
pub const FINISHED: [&str; 4] = ["completed", "compensated", "cancelled", "terminated"];

/// Which workflow types a selection covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Types {
    /// One type with its own policy.
    Only(String),
    /// Every type but these (the ones with their own policy): the default policy.
    AllBut(Vec<String>),
}

/// Finished workflows of some types that finished before an instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub types: Types,
    pub finished_before: DateTime<Utc>,
}

/// A claimed batch: its object key and its workflows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub id: i64,
    pub object_key: String,
    pub ids: Vec<Uuid>,
}

/// Where an id that the database no longer holds went.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ArchivedAt {
    pub workflow_type: String,
    pub object_key: String,
    /// When its batch was deleted; `None` while the batch is pending (the workflow is still in
    /// the database then).
    pub archived_at: Option<DateTime<Utc>>,
}

/// The object key of batch `id` claimed at `at`: a day's folder, the batch number zero-padded
/// so keys list in claim order.
pub fn object_key(id: i64, at: DateTime<Utc>) -> String {
    format!("workflows/{}/{id:012}.jsonl.gz", at.format("%Y/%m/%d"))
}

/// What retention needs of a store.
pub trait RetentionStore: Store {
    /// Claims up to `limit` workflows of `sel`, oldest ids first, skipping rows another
    /// transaction holds and workflows another batch claimed; `None` when there are none.
    fn claim(
        &self,
        sel: &Selection,
        limit: i64,
    ) -> impl Future<Output = sqlx::Result<Option<Batch>>> + Send;

    /// Batches claimed and not yet deleted (left by a crash or a failed write), oldest first.
    fn pending(&self) -> impl Future<Output = sqlx::Result<Vec<Batch>>> + Send;

    /// The workflows among `ids` that still exist, each with its history.
    fn read(
        &self,
        ids: &[Uuid],
    ) -> impl Future<Output = sqlx::Result<Vec<(WorkflowRow, Vec<RecordedEvent>)>>> + Send;

    /// Deletes the workflows `written` (id, last_seq as written to the object) with their
    /// history and timers, and marks `batch` archived, in one transaction: only if every one is
    /// still at that sequence (else nothing changes and the answer is `false`). Claims of
    /// batch workflows not in `written` (gone meanwhile) are dropped.
    fn finish(
        &self,
        batch: i64,
        written: &[(Uuid, i64)],
    ) -> impl Future<Output = sqlx::Result<bool>> + Send;

    /// When the oldest workflow of `sel` finished, if any is due: how far retention lags.
    fn oldest_due(
        &self,
        sel: &Selection,
    ) -> impl Future<Output = sqlx::Result<Option<DateTime<Utc>>>> + Send;
}
