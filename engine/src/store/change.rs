//! One batch of state changes, as the committer collects them and every store writes them
//! atomically: the workflows it creates, the snapshots it updates, their history events, outbox
//! rows and timers, and the outbox rows whose messages were confirmed since the last batch.
//!
//! Each update is guarded by the workflow's history sequence (DESIGN.md §3.1): it is written only
//! if the stored `last_seq` is still the one the change was decided on, and a workflow's history,
//! outbox rows and timers are written only with its create or update. A workflow another writer
//! moved meanwhile is left out ([`Written`] says which went in), so the committer reloads it and
//! decides again; nothing takes a row lock.
//!
//! [`Change::cancel_timer`] drops a timer started earlier in the same change instead of deleting
//! it afterwards, so a change never both creates and deletes one timer (Postgres writes a change
//! in one statement, whose parts cannot see each other's rows). JSON travels as text: the engine
//! serializes straight to strings and the database parses them once.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A workflow to create.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    /// The snapshot, as JSON text.
    pub state: String,
    pub last_seq: i64,
    /// The business keys, as JSON text (an object of strings).
    pub business_keys: String,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    /// The fingerprint of the definition it starts on (see `migrations/engine/0004_*`).
    pub fingerprint: String,
    pub at: DateTime<Utc>,
}

/// A new snapshot of a workflow, decided on the state at `prev_seq`.
#[derive(Debug, Clone)]
pub struct Update {
    pub id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub state: String,
    pub last_seq: i64,
    /// The sequence the change was decided on: the update is written only if it is still the
    /// stored one.
    pub prev_seq: i64,
    pub at: DateTime<Utc>,
    /// The definition fingerprint the workflow now runs with, when it changed.
    pub fingerprint: Option<String>,
}

/// One history event to append (JSON as text).
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub workflow_id: Uuid,
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub commands: String,
    pub ignored: Option<String>,
}

/// A message to publish after the commit.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub workflow_id: Uuid,
    /// The task id, or for an event a message id derived from the workflow.
    pub task_id: Uuid,
    /// `""` for the default exchange (task queues), else the events exchange.
    pub exchange: String,
    /// The queue, or the routing key when `exchange` is set.
    pub queue: String,
    pub body: String,
    /// For a task message, its attempt's start-to-close deadline: the message is sent
    /// transient, and its sender sends it again if it may have been lost before then.
    /// `None` for a message sent persistently.
    pub deadline: Option<DateTime<Utc>>,
}

/// A timer to create.
#[derive(Debug, Clone)]
pub struct NewTimer {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub fire_at: DateTime<Utc>,
    pub purpose: String,
}

/// Every row one batch writes.
#[derive(Debug, Default)]
pub struct Change {
    pub creates: Vec<NewWorkflow>,
    pub updates: Vec<Update>,
    pub history: Vec<HistoryRow>,
    pub outbox: Vec<NewTask>,
    timers: Vec<NewTimer>,
    /// Timers to delete, with their workflow.
    cancelled: HashMap<Uuid, Uuid>,
    /// Task ids of outbox rows whose messages the queue confirmed: deleted by this batch.
    pub published: Vec<Uuid>,
    /// Timers that fired for a workflow that no longer exists: deleted by this batch.
    pub orphan_timers: Vec<Uuid>,
}

impl Change {
    pub fn start_timer(&mut self, timer: NewTimer) {
        self.timers.push(timer);
    }

    /// Cancels a timer of `workflow`; one started earlier in this change is simply not created.
    pub fn cancel_timer(&mut self, id: Uuid, workflow: Uuid) {
        self.timers.retain(|t| t.id != id);
        self.cancelled.insert(id, workflow);
    }

    /// The timers this change creates.
    pub fn timers(&self) -> &[NewTimer] {
        &self.timers
    }

    /// The timers this change deletes, as `(timer, workflow)`.
    pub fn cancelled(&self) -> impl Iterator<Item = (Uuid, Uuid)> + '_ {
        self.cancelled.iter().map(|(t, w)| (*t, *w))
    }

    pub fn is_empty(&self) -> bool {
        self.creates.is_empty()
            && self.updates.is_empty()
            && self.history.is_empty()
            && self.outbox.is_empty()
            && self.timers.is_empty()
            && self.cancelled.is_empty()
            && self.published.is_empty()
            && self.orphan_timers.is_empty()
    }
}

/// What a [`Change`] wrote: the workflows it created (the rest of its creates found their
/// idempotency key taken) and the workflows whose update held (the rest were moved by another
/// writer since they were loaded).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub created: HashSet<Uuid>,
    pub updated: HashSet<Uuid>,
}

impl Written {
    /// Whether the workflow's rows went in.
    pub fn contains(&self, id: &Uuid) -> bool {
        self.created.contains(id) || self.updated.contains(id)
    }
}
