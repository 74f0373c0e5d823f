//! The embedded store of `orderflow dev`: the engine's tables in one SQLite file
//! (`<data-dir>/engine.db`, WAL) or in memory. It implements [`Store`] with the same meaning as
//! Postgres; where Postgres writes a batch in one statement of data-modifying CTEs, SQLite (which
//! has none) writes it statement by statement inside one `BEGIN IMMEDIATE` transaction, checking
//! each guarded update's row count.

use std::path::Path;

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use orderflow_queue::sqlite_pool;
use sqlx::{
    QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction, migrate::Migrator,
};
use uuid::Uuid;

pub mod reads;
pub mod retention;

use super::{
    DueTimer, Loaded, OutboxRow, Store, StoreTx, WorkflowRow,
    change::{Change, Written},
};

/// The engine's SQLite migrations (`migrations/sqlite/engine/`).
pub fn migrator() -> Migrator {
    sqlx::migrate!("../migrations/sqlite/engine")
}

/// The engine's tables on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating and migrating) the store in `file`, or in memory when `None`.
    pub async fn open(file: Option<&Path>) -> Result<Self, sqlx::migrate::MigrateError> {
        let pool = sqlite_pool(file).await?;
        migrator().run(&pool).await?;
        Ok(Self::new(pool))
    }

    /// A store on an already migrated pool.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// The relay's transaction.
#[derive(Debug)]
pub struct SqliteTx(Transaction<'static, Sqlite>);

/// How times are stored: integer microseconds since the epoch (see the migration).
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(text: &str) -> sqlx::Result<T> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::Decode(e.into()))
}

/// `(a, b, c)` placeholders for an `in` list.
pub(crate) fn push_ids(q: &mut QueryBuilder<'_, Sqlite>, ids: &[Uuid]) {
    q.push("(");
    let mut list = q.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    q.push(")");
}

/// Writes `change` inside the caller's transaction: creates and guarded updates first, then the
/// rows of the workflows that went in.
async fn write_rows(conn: &mut SqliteConnection, change: &Change) -> sqlx::Result<Written> {
    let mut written = Written::default();
    for c in &change.creates {
        let inserted = sqlx::query(
            "insert into workflows (id, workflow_type, version, status, reason, state, last_seq,
                                    business_keys, idempotency_key, request_hash, created_at,
                                    updated_at, definition_fingerprint)
             values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             on conflict (idempotency_key) do nothing",
        )
        .bind(c.id)
        .bind(&c.workflow_type)
        .bind(c.version)
        .bind(&c.status)
        .bind(&c.reason)
        .bind(&c.state)
        .bind(c.last_seq)
        .bind(&c.business_keys)
        .bind(&c.idempotency_key)
        .bind(&c.request_hash)
        .bind(micros(c.at))
        .bind(micros(c.at))
        .bind(&c.fingerprint)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 1 {
            written.created.insert(c.id);
        }
    }
    for u in &change.updates {
        let updated = sqlx::query(
            "update workflows set status = ?, reason = ?, state = ?, last_seq = ?, updated_at = ?,
                                  definition_fingerprint = coalesce(?, definition_fingerprint)
             where id = ? and last_seq = ?",
        )
        .bind(&u.status)
        .bind(&u.reason)
        .bind(&u.state)
        .bind(u.last_seq)
        .bind(micros(u.at))
        .bind(&u.fingerprint)
        .bind(u.id)
        .bind(u.prev_seq)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if updated == 1 {
            written.updated.insert(u.id);
        }
    }
    for h in change
        .history
        .iter()
        .filter(|h| written.contains(&h.workflow_id))
    {
        sqlx::query(
            "insert into history (workflow_id, seq, at, event, commands, ignored)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(h.workflow_id)
        .bind(h.seq)
        .bind(micros(h.at))
        .bind(&h.event)
        .bind(&h.commands)
        .bind(&h.ignored)
        .execute(&mut *conn)
        .await?;
    }
    let now = micros(Utc::now());
    for o in change
        .outbox
        .iter()
        .filter(|o| written.contains(&o.workflow_id))
    {
        sqlx::query(
            "insert into outbox (workflow_id, task_id, exchange, queue, body, created_at)
             values (?, ?, ?, ?, ?, ?)",
        )
        .bind(o.workflow_id)
        .bind(o.task_id)
        .bind(&o.exchange)
        .bind(&o.queue)
        .bind(&o.body)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    for t in change
        .timers()
        .iter()
        .filter(|t| written.contains(&t.workflow_id))
    {
        sqlx::query(
            "insert into timers (id, workflow_id, fire_at, purpose) values (?, ?, ?, ?)
             on conflict (id) do nothing",
        )
        .bind(t.id)
        .bind(t.workflow_id)
        .bind(micros(t.fire_at))
        .bind(&t.purpose)
        .execute(&mut *conn)
        .await?;
    }
    for (id, _) in change.cancelled().filter(|(_, wf)| written.contains(wf)) {
        sqlx::query("delete from timers where id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    if !change.published.is_empty() {
        let mut q = QueryBuilder::new("delete from outbox where task_id in ");
        push_ids(&mut q, &change.published);
        q.build().execute(&mut *conn).await?;
    }
    if !change.orphan_timers.is_empty() {
        let mut q = QueryBuilder::new("delete from timers where id in ");
        push_ids(&mut q, &change.orphan_timers);
        q.build().execute(&mut *conn).await?;
    }
    Ok(written)
}

pub(crate) async fn load_history(
    conn: &mut SqliteConnection,
    id: Uuid,
) -> sqlx::Result<Vec<RecordedEvent>> {
    let rows = sqlx::query(
        "select seq, at, event, commands, ignored from history where workflow_id = ? order by seq",
    )
    .bind(id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RecordedEvent {
                seq: r.try_get::<i64, _>("seq")? as u64,
                at: from_micros(r.try_get("at")?),
                event: decode(r.try_get("event")?)?,
                commands: decode(r.try_get("commands")?)?,
                ignored: r.try_get("ignored")?,
            })
        })
        .collect()
}

pub(crate) const WORKFLOW_COLUMNS: &str = "id, workflow_type, version, status, reason, state, last_seq, \
                                business_keys, created_at, updated_at";

pub(crate) fn workflow_row(r: &sqlx::sqlite::SqliteRow) -> sqlx::Result<WorkflowRow> {
    Ok(WorkflowRow {
        id: r.try_get("id")?,
        workflow_type: r.try_get("workflow_type")?,
        version: r.try_get("version")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        state: decode(r.try_get("state")?)?,
        last_seq: r.try_get("last_seq")?,
        business_keys: decode(r.try_get("business_keys")?)?,
        created_at: from_micros(r.try_get("created_at")?),
        updated_at: from_micros(r.try_get("updated_at")?),
    })
}

impl StoreTx for SqliteTx {
    async fn take_outbox(
        &mut self,
        limit: i64,
        before: DateTime<Utc>,
    ) -> sqlx::Result<Vec<OutboxRow>> {
        let mut rows: Vec<OutboxRow> = sqlx::query_as(
            "delete from outbox where id in (
                 select id from outbox where created_at < ? order by id limit ?)
             returning id, task_id, exchange, queue, body,
                       json_extract(body, '$.traceparent') as traceparent",
        )
        .bind(micros(before))
        .bind(limit)
        .fetch_all(&mut *self.0)
        .await?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }
}

impl Store for SqliteStore {
    type Tx = SqliteTx;

    async fn load(&self, ids: &[Uuid]) -> sqlx::Result<Vec<Loaded>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::new(
            "select id, workflow_type, version, state, last_seq, business_keys,
                    definition_fingerprint from workflows where id in ",
        );
        push_ids(&mut q, ids);
        let rows = q.build().fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(Loaded {
                    id: r.try_get("id")?,
                    workflow_type: r.try_get("workflow_type")?,
                    version: r.try_get("version")?,
                    state: r.try_get("state")?,
                    last_seq: r.try_get("last_seq")?,
                    business_keys: decode(r.try_get("business_keys")?)?,
                    definition_fingerprint: r.try_get("definition_fingerprint")?,
                })
            })
            .collect()
    }

    async fn write(&self, change: &Change) -> sqlx::Result<Written> {
        if change.is_empty() {
            return Ok(Written::default());
        }
        // IMMEDIATE takes the write lock now: a deferred transaction that reads first and
        // writes later could fail to upgrade instead of waiting.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let written = write_rows(&mut tx, change).await?;
        tx.commit().await?;
        Ok(written)
    }

    async fn by_idempotency_key(&self, key: &str) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
        sqlx::query_as("select id, request_hash from workflows where idempotency_key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    async fn due_timers(&self, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<DueTimer>> {
        let rows: Vec<(Uuid, Uuid, i64)> = sqlx::query_as(
            "select workflow_id, id, fire_at from timers where fire_at <= ?
             order by fire_at limit ?",
        )
        .bind(micros(now))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(workflow_id, id, at)| DueTimer {
                workflow_id,
                id,
                fire_at: from_micros(at),
            })
            .collect())
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        let row: (Option<i64>,) = sqlx::query_as("select min(fire_at) from timers")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.0.map(from_micros))
    }

    async fn begin(&self) -> sqlx::Result<SqliteTx> {
        Ok(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?))
    }

    async fn commit(&self, tx: SqliteTx) -> sqlx::Result<()> {
        tx.0.commit().await
    }
}
