//! The database behind the admin UI and the REST API: the engine's Postgres (production,
//! `orderflow up`) or the embedded SQLite store (`orderflow dev`). Handlers ask a [`Backend`] and
//! never see which one it is; each method runs the Postgres reads of [`super::query`] unchanged, or their SQLite twins
//! in [`super::sqlite`]. Operator actions go through [`Applier::apply`] on either, since it is
//! generic over the engine's [`Store`].

use chrono::{DateTime, Utc};
use orderflow_core::{Event, RecordedEvent, WorkflowId};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    query::{self, AuditRow, ListFilter, ListRow, StuckFilter, StuckRow, TimerRow},
    sqlite,
};
use crate::{
    apply::{Applier, ApplyError, Outcome, StartError, StartRequest, Started},
    store::{
        backend::Store,
        sqlite::SqliteStore,
        workflows::{self, WorkflowRow},
    },
};

/// Where the admin UI and the API read and write workflows, and the UI keeps sessions.
#[derive(Debug, Clone)]
pub enum Backend {
    /// The engine's Postgres database.
    Postgres(PgPool),
    /// The embedded store of `orderflow dev`.
    Sqlite(SqliteStore),
}

impl From<PgPool> for Backend {
    fn from(pool: PgPool) -> Self {
        Self::Postgres(pool)
    }
}

impl From<SqliteStore> for Backend {
    fn from(store: SqliteStore) -> Self {
        Self::Sqlite(store)
    }
}

impl Backend {
    pub async fn counts(&self) -> sqlx::Result<Vec<(String, i64)>> {
        match self {
            Self::Postgres(pool) => query::counts(&mut *pool.acquire().await?).await,
            Self::Sqlite(store) => sqlite::counts(store.pool()).await,
        }
    }

    pub async fn list(&self, f: &ListFilter) -> sqlx::Result<Vec<ListRow>> {
        match self {
            Self::Postgres(pool) => query::list(&mut *pool.acquire().await?, f).await,
            Self::Sqlite(store) => sqlite::list(store.pool(), f).await,
        }
    }

    pub async fn list_ids(&self, f: &ListFilter) -> sqlx::Result<Vec<Uuid>> {
        match self {
            Self::Postgres(pool) => query::list_ids(&mut *pool.acquire().await?, f).await,
            Self::Sqlite(store) => sqlite::list_ids(store.pool(), f).await,
        }
    }

    pub async fn stuck(&self, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>> {
        match self {
            Self::Postgres(pool) => query::stuck(&mut *pool.acquire().await?, f).await,
            Self::Sqlite(store) => sqlite::stuck(store.pool(), f).await,
        }
    }

    pub async fn stuck_ids(&self, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>> {
        match self {
            Self::Postgres(pool) => query::stuck_ids(&mut *pool.acquire().await?, f).await,
            Self::Sqlite(store) => sqlite::stuck_ids(store.pool(), f).await,
        }
    }

    /// `(needs attention, retrying, overdue)`, as [`query::stuck_counts`].
    pub async fn stuck_counts(
        &self,
        overdue_before: DateTime<Utc>,
    ) -> sqlx::Result<(i64, i64, i64)> {
        match self {
            Self::Postgres(pool) => {
                query::stuck_counts(&mut *pool.acquire().await?, overdue_before).await
            }
            Self::Sqlite(store) => sqlite::stuck_counts(store.pool(), overdue_before).await,
        }
    }

    pub async fn tasks_out(&self) -> sqlx::Result<Vec<(Uuid, Option<String>)>> {
        match self {
            Self::Postgres(pool) => query::tasks_out(&mut *pool.acquire().await?).await,
            Self::Sqlite(store) => sqlite::tasks_out(store.pool()).await,
        }
    }

    pub async fn timers_of(&self, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>> {
        match self {
            Self::Postgres(pool) => query::timers_of(&mut *pool.acquire().await?, ids).await,
            Self::Sqlite(store) => sqlite::timers_of(store.pool(), ids).await,
        }
    }

    pub async fn audit(
        &self,
        before: Option<DateTime<Utc>>,
        limit: i64,
    ) -> sqlx::Result<Vec<AuditRow>> {
        match self {
            Self::Postgres(pool) => query::audit(&mut *pool.acquire().await?, before, limit).await,
            Self::Sqlite(store) => sqlite::audit(store.pool(), before, limit).await,
        }
    }

    /// One workflow and its history, if it exists.
    pub async fn workflow(
        &self,
        id: Uuid,
    ) -> sqlx::Result<Option<(WorkflowRow, Vec<RecordedEvent>)>> {
        async fn on(
            store: &impl Store,
            id: Uuid,
        ) -> sqlx::Result<Option<(WorkflowRow, Vec<RecordedEvent>)>> {
            let Some(row) = store.get(id).await? else {
                return Ok(None);
            };
            Ok(Some((row, store.history(id).await?)))
        }
        match self {
            Self::Postgres(pool) => on(pool, id).await,
            Self::Sqlite(store) => on(store, id).await,
        }
    }

    /// Applies `events` in one transaction, committed only when `keep` approves the outcomes
    /// (a single action keeps nothing that was refused); otherwise rolled back.
    pub async fn apply(
        &self,
        applier: &Applier,
        events: &[(WorkflowId, Event)],
        keep: impl FnOnce(&[Outcome]) -> bool + Send,
    ) -> Result<Vec<Outcome>, ApplyError> {
        async fn on(
            store: &impl Store,
            applier: &Applier,
            events: &[(WorkflowId, Event)],
            keep: impl FnOnce(&[Outcome]) -> bool + Send,
        ) -> Result<Vec<Outcome>, ApplyError> {
            let mut tx = store.begin().await?;
            let outcomes = applier.apply(&mut tx, events, false).await?;
            if keep(&outcomes) {
                store.commit(tx).await?;
            } else {
                store.rollback(tx).await?;
            }
            Ok(outcomes)
        }
        match self {
            Self::Postgres(pool) => on(pool, applier, events, keep).await,
            Self::Sqlite(store) => on(store, applier, events, keep).await,
        }
    }

    /// The live session with this token hash: `(actor, csrf token)`.
    pub async fn session(&self, token_hash: &[u8]) -> sqlx::Result<Option<(String, String)>> {
        match self {
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "select actor, csrf_token from admin_sessions
                     where token_hash = $1 and expires_at > now()",
                )
                .bind(token_hash)
                .fetch_optional(pool)
                .await
            }
            Self::Sqlite(store) => sqlite::session(store.pool(), token_hash).await,
        }
    }

    /// Opens a session for `actor` lasting `ttl`, dropping expired ones on the way.
    pub async fn open_session(
        &self,
        token_hash: &[u8],
        actor: &str,
        csrf: &str,
        ttl: std::time::Duration,
    ) -> sqlx::Result<()> {
        match self {
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Expired sessions go when someone logs in, so the table stays as small as the
                // live ones.
                sqlx::query("delete from admin_sessions where expires_at < now()")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "insert into admin_sessions (token_hash, actor, csrf_token, expires_at)
                     values ($1, $2, $3, now() + $4 * interval '1 second')",
                )
                .bind(token_hash)
                .bind(actor)
                .bind(csrf)
                .bind(ttl.as_secs_f64())
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            }
            Self::Sqlite(store) => {
                let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
                let expires = Utc::now()
                    .checked_add_signed(ttl)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC);
                sqlite::open_session(store.pool(), token_hash, actor, csrf, expires).await
            }
        }
    }

    /// Ends the session with this token hash, on every replica.
    pub async fn close_session(&self, token_hash: &[u8]) -> sqlx::Result<()> {
        match self {
            Self::Postgres(pool) => {
                sqlx::query("delete from admin_sessions where token_hash = $1")
                    .bind(token_hash)
                    .execute(pool)
                    .await?;
                Ok(())
            }
            Self::Sqlite(store) => sqlite::close_session(store.pool(), token_hash).await,
        }
    }
}

/// The REST API's reads and writes ([`crate::api`]).
impl Backend {
    /// Starts a workflow, as [`Applier::start`].
    pub async fn start(&self, applier: &Applier, req: StartRequest) -> Result<Started, StartError> {
        match self {
            Self::Postgres(pool) => applier.start(pool, req).await,
            Self::Sqlite(store) => applier.start(store, req).await,
        }
    }

    pub async fn get(&self, id: Uuid) -> sqlx::Result<Option<WorkflowRow>> {
        match self {
            Self::Postgres(pool) => Store::get(pool, id).await,
            Self::Sqlite(store) => store.get(id).await,
        }
    }

    pub async fn history(&self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
        match self {
            Self::Postgres(pool) => Store::history(pool, id).await,
            Self::Sqlite(store) => Store::history(store, id).await,
        }
    }

    /// The API's list, as [`workflows::list`].
    pub async fn list_workflows(
        &self,
        f: &workflows::ListFilter,
    ) -> sqlx::Result<Vec<WorkflowRow>> {
        match self {
            Self::Postgres(pool) => workflows::list(&mut *pool.acquire().await?, f).await,
            Self::Sqlite(store) => store.list(f).await,
        }
    }

    pub async fn count_by_status(&self) -> sqlx::Result<Vec<(String, i64)>> {
        match self {
            Self::Postgres(pool) => pool.count_by_status().await,
            Self::Sqlite(store) => store.count_by_status().await,
        }
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> bool {
        let answer = match self {
            Self::Postgres(pool) => sqlx::query("select 1").execute(pool).await.map(drop),
            Self::Sqlite(store) => sqlx::query("select 1")
                .execute(store.pool())
                .await
                .map(drop),
        };
        answer.is_ok()
    }
}
