//! The seam between the engine and its database: [`Store`] (a database of workflows) and
//! [`StoreTx`] (one write transaction on it). There are two real implementations: Postgres
//! (`PgPool`, production; each method is the module-per-table function it always was, so the
//! trait adds no work) and SQLite ([`super::sqlite::SqliteStore`], the embedded store of
//! `orderflow dev`). `engine/tests/conformance.rs` runs one suite against both.
//!
//! Methods return `impl Future + Send` so callers are generic over the store with static
//! dispatch: nothing is boxed on the production path.

use std::future::Future;

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use sqlx::{PgConnection, PgPool, Postgres, Transaction, postgres::PgListener};
use uuid::Uuid;

use super::{
    change::{Change, NewWorkflow},
    history,
    outbox::{self, OutboxRow},
    timers,
    workflows::{self, Locked, WorkflowRow},
};

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

/// A database holding workflows, their history, outbox and timers.
pub trait Store: Clone + Send + Sync + 'static {
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

    fn get(&self, id: Uuid) -> impl Future<Output = sqlx::Result<Option<WorkflowRow>>> + Send;

    fn history(&self, id: Uuid) -> impl Future<Output = sqlx::Result<Vec<RecordedEvent>>> + Send;

    /// When the next timer is due, if any.
    fn next_due(&self) -> impl Future<Output = sqlx::Result<Option<DateTime<Utc>>>> + Send;

    /// How many workflows are in each status.
    fn count_by_status(&self) -> impl Future<Output = sqlx::Result<Vec<(String, i64)>>> + Send;

    /// Outbox rows waiting, and the age in seconds of the oldest.
    fn outbox_lag(&self) -> impl Future<Output = sqlx::Result<(i64, f64)>> + Send;

    /// `(needs attention, retrying, overdue)`: workflows in `needs_attention`, waiting on a
    /// retry timer, and with a timer due before `overdue_before`.
    fn stuck_counts(
        &self,
        overdue_before: DateTime<Utc>,
    ) -> impl Future<Output = sqlx::Result<(i64, i64, i64)>> + Send;

    /// Subscribes to one kind of wake-up.
    fn listen(&self, what: Wakeup) -> impl Future<Output = sqlx::Result<Self::Listener>> + Send;
}

/// The Postgres transaction methods are the store modules' functions; implemented for the
/// connection and the transaction types callers hold, so `apply(&mut tx, ..)` keeps working.
macro_rules! pg_tx {
    ($(<$($l:lifetime),*> $t:ty),*) => {$(
        impl<$($l),*> StoreTx for $t {
            async fn lock(&mut self, ids: &[Uuid], skip_locked: bool) -> sqlx::Result<Vec<Locked>> {
                workflows::lock(self, ids, skip_locked).await
            }
            async fn history(&mut self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
                history::load(self, id).await
            }
            async fn set_fingerprint(&mut self, id: Uuid, fingerprint: &str) -> sqlx::Result<()> {
                workflows::set_fingerprint(self, id, fingerprint).await
            }
            async fn write(&mut self, change: &Change) -> sqlx::Result<()> {
                change.write(self).await
            }
            async fn take_outbox(&mut self, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
                outbox::take(self, limit).await
            }
            async fn due_workflows(
                &mut self,
                now: DateTime<Utc>,
                limit: i64,
            ) -> sqlx::Result<Vec<Uuid>> {
                timers::due_workflows(self, now, limit).await
            }
            async fn take_due_timers(
                &mut self,
                workflows: &[Uuid],
                now: DateTime<Utc>,
            ) -> sqlx::Result<Vec<DueTimer>> {
                timers::take_due(self, workflows, now).await
            }
        }
    )*};
}

pg_tx!(<> PgConnection, <'c> Transaction<'c, Postgres>);

/// Postgres delivers wake-ups with `NOTIFY` on commit (see [`super::change`]).
impl Store for PgPool {
    type Tx = Transaction<'static, Postgres>;
    type Listener = PgListener;

    async fn begin(&self) -> sqlx::Result<Self::Tx> {
        PgPool::begin(self).await
    }

    async fn commit(&self, tx: Self::Tx) -> sqlx::Result<()> {
        tx.commit().await
    }

    async fn rollback(&self, tx: Self::Tx) -> sqlx::Result<()> {
        tx.rollback().await
    }

    async fn create(&self, change: &Change, wf: &NewWorkflow) -> sqlx::Result<bool> {
        let mut conn = self.acquire().await?;
        change.create(&mut conn, wf).await
    }

    async fn by_idempotency_key(&self, key: &str) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
        let mut conn = self.acquire().await?;
        workflows::by_idempotency_key(&mut conn, key).await
    }

    async fn get(&self, id: Uuid) -> sqlx::Result<Option<WorkflowRow>> {
        let mut conn = self.acquire().await?;
        workflows::get(&mut conn, id).await
    }

    async fn history(&self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
        let mut conn = self.acquire().await?;
        history::load(&mut conn, id).await
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        let mut conn = self.acquire().await?;
        timers::next_due(&mut conn).await
    }

    async fn count_by_status(&self) -> sqlx::Result<Vec<(String, i64)>> {
        let mut conn = self.acquire().await?;
        workflows::count_by_status(&mut conn).await
    }

    async fn outbox_lag(&self) -> sqlx::Result<(i64, f64)> {
        let mut conn = self.acquire().await?;
        outbox::lag(&mut conn).await
    }

    async fn stuck_counts(&self, overdue_before: DateTime<Utc>) -> sqlx::Result<(i64, i64, i64)> {
        let mut conn = self.acquire().await?;
        crate::admin::query::stuck_counts(&mut conn, overdue_before).await
    }

    async fn listen(&self, what: Wakeup) -> sqlx::Result<PgListener> {
        let mut listener = PgListener::connect_with(self).await?;
        listener
            .listen(match what {
                Wakeup::Outbox => crate::channels::OUTBOX,
                Wakeup::Timers => crate::channels::TIMERS,
            })
            .await?;
        Ok(listener)
    }
}

impl Listener for PgListener {
    async fn recv(&mut self) -> sqlx::Result<()> {
        PgListener::recv(self).await.map(drop)
    }
}
