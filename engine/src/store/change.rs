//! One state change: the new or updated workflow rows, their history events, outbox rows and
//! timers, and whether a poller should be woken, as the applier collects them and every store
//! writes them atomically. [`Change::cancel_timer`] drops a timer started earlier in the same
//! change instead of deleting it afterwards, so a change never both creates and deletes one
//! timer (Postgres writes a change in one statement, whose parts cannot see each other's rows).
//!
//! JSON travels as text: the engine serializes straight to strings and the database parses them
//! once.

use std::collections::HashSet;

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

/// A new snapshot of a workflow the caller has locked.
#[derive(Debug, Clone)]
pub struct Update {
    pub id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub state: String,
    pub last_seq: i64,
    pub at: DateTime<Utc>,
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
}

/// A timer to create.
#[derive(Debug, Clone)]
pub struct NewTimer {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub fire_at: DateTime<Utc>,
    pub purpose: String,
}

/// Every row one transaction writes.
#[derive(Debug, Default)]
pub struct Change {
    pub updates: Vec<Update>,
    pub history: Vec<HistoryRow>,
    pub outbox: Vec<NewTask>,
    timers: Vec<NewTimer>,
    cancelled: HashSet<Uuid>,
    /// Wake the timer poller: a timer of this change is due soon.
    pub wake_timers: bool,
}

impl Change {
    pub fn start_timer(&mut self, timer: NewTimer) {
        self.timers.push(timer);
    }

    /// Cancels a timer; one started earlier in this change is simply not created.
    pub fn cancel_timer(&mut self, id: Uuid) {
        self.timers.retain(|t| t.id != id);
        self.cancelled.insert(id);
    }

    /// The timers this change creates.
    pub fn timers(&self) -> &[NewTimer] {
        &self.timers
    }

    /// The timers this change deletes.
    pub fn cancelled(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.cancelled.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.updates.is_empty()
            && self.history.is_empty()
            && self.outbox.is_empty()
            && self.timers.is_empty()
            && self.cancelled.is_empty()
    }
}
