//! The Postgres adapter of [`Store`]: one module per table, each a set of functions that take
//! the caller's connection or transaction, so the caller decides what commits together. Batches
//! are written with multi-row `UNNEST` statements; [`change`] writes a whole state change in one
//! statement of data-modifying CTEs. Commits that make work for a poller wake it with `NOTIFY`.

mod change;
pub mod history;
pub mod outbox;
pub mod reads;
pub mod timers;
pub mod workflows;

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use sqlx::{PgConnection, PgPool, Postgres, Transaction, postgres::PgListener};
use uuid::Uuid;

use super::{
    DueTimer, Listener, Locked, OutboxRow, Store, StoreTx, Wakeup,
    change::{Change, NewWorkflow},
};

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
                change::write(self, change).await
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
        change::create(&mut conn, change, wf).await
    }

    async fn by_idempotency_key(&self, key: &str) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
        let mut conn = self.acquire().await?;
        workflows::by_idempotency_key(&mut conn, key).await
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        let mut conn = self.acquire().await?;
        timers::next_due(&mut conn).await
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
