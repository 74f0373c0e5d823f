//! The Postgres adapter of [`Store`]: one module per table, each a set of functions that take
//! the caller's connection or transaction, so the caller decides what commits together. Batches
//! are written with multi-row `UNNEST` statements; [`change`] writes a whole state change in one
//! statement of data-modifying CTEs.

mod change;
pub mod history;
pub mod outbox;
pub mod reads;
pub mod retention;
pub mod timers;
pub mod workflows;

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    DueTimer, Loaded, OutboxRow, Store, StoreTx,
    change::{Change, Written},
};

impl StoreTx for Transaction<'static, Postgres> {
    async fn take_outbox(
        &mut self,
        limit: i64,
        before: DateTime<Utc>,
    ) -> sqlx::Result<Vec<OutboxRow>> {
        outbox::take(self, limit, before).await
    }
}

impl Store for PgPool {
    type Tx = Transaction<'static, Postgres>;

    async fn load(&self, ids: &[Uuid]) -> sqlx::Result<Vec<Loaded>> {
        workflows::load(&mut *self.acquire().await?, ids).await
    }

    async fn write(&self, change: &Change) -> sqlx::Result<Written> {
        change::write(&mut *self.acquire().await?, change).await
    }

    async fn by_idempotency_key(&self, key: &str) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
        workflows::by_idempotency_key(&mut *self.acquire().await?, key).await
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<DueTimer>> {
        timers::due(&mut *self.acquire().await?, now, limit).await
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        timers::next_due(&mut *self.acquire().await?).await
    }

    async fn begin(&self) -> sqlx::Result<Self::Tx> {
        PgPool::begin(self).await
    }

    async fn commit(&self, tx: Self::Tx) -> sqlx::Result<()> {
        tx.commit().await
    }
}
