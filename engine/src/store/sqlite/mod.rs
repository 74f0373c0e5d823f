//! The embedded store of `orderflow dev`: the engine's tables in one SQLite file
//! (`<data-dir>/engine.db`, WAL) or in memory. It implements [`Store`] with the same meaning as
//! Postgres; where Postgres writes a state change in one statement of data-modifying CTEs, SQLite
//! (which has none) writes it statement by statement inside one `BEGIN IMMEDIATE` transaction.
//! SQLite has one writer at a time, so that transaction is also the workflows' row lock.
//! Wake-ups are delivered in-process after the commit instead of by `NOTIFY`.

use std::{path::Path, sync::Arc};

use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use orderflow_queue::sqlite_pool;
use sqlx::{
    QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction, migrate::Migrator,
};
use tokio::sync::watch;
use uuid::Uuid;

pub mod reads;

use super::{
    DueTimer, Listener, Locked, OutboxRow, Store, StoreTx, Wakeup, WorkflowRow,
    change::{Change, NewWorkflow},
};

/// The engine's SQLite migrations (`migrations/sqlite/engine/`).
pub fn migrator() -> Migrator {
    sqlx::migrate!("../migrations/sqlite/engine")
}

/// The engine's tables on SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    outbox: Arc<watch::Sender<u64>>,
    timers: Arc<watch::Sender<u64>>,
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
        Self {
            pool,
            outbox: Arc::new(watch::Sender::new(0)),
            timers: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A write transaction and the wake-ups its writes asked for.
#[derive(Debug)]
pub struct SqliteTx {
    tx: Transaction<'static, Sqlite>,
    wake_outbox: bool,
    wake_timers: bool,
}

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

async fn write_rows(conn: &mut SqliteConnection, change: &Change) -> sqlx::Result<()> {
    for u in &change.updates {
        sqlx::query(
            "update workflows set status = ?, reason = ?, state = ?, last_seq = ?, updated_at = ?
             where id = ?",
        )
        .bind(&u.status)
        .bind(&u.reason)
        .bind(&u.state)
        .bind(u.last_seq)
        .bind(micros(u.at))
        .bind(u.id)
        .execute(&mut *conn)
        .await?;
    }
    for h in &change.history {
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
    for o in &change.outbox {
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
    for t in change.timers() {
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
    for id in change.cancelled() {
        sqlx::query("delete from timers where id = ?")
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
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

impl StoreTx for SqliteTx {
    async fn lock(&mut self, ids: &[Uuid], _skip_locked: bool) -> sqlx::Result<Vec<Locked>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::new(
            "select id, workflow_type, version, state, last_seq, business_keys,
                    definition_fingerprint from workflows where id in ",
        );
        push_ids(&mut q, ids);
        q.push(" order by id");
        let rows = q.build().fetch_all(&mut *self.tx).await?;
        rows.iter()
            .map(|r| {
                Ok(Locked {
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

    async fn history(&mut self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
        load_history(&mut self.tx, id).await
    }

    async fn set_fingerprint(&mut self, id: Uuid, fingerprint: &str) -> sqlx::Result<()> {
        sqlx::query("update workflows set definition_fingerprint = ? where id = ?")
            .bind(fingerprint)
            .bind(id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    async fn write(&mut self, change: &Change) -> sqlx::Result<()> {
        write_rows(&mut self.tx, change).await?;
        self.wake_outbox |= !change.outbox.is_empty();
        self.wake_timers |= change.wake_timers;
        Ok(())
    }

    async fn take_outbox(&mut self, limit: i64) -> sqlx::Result<Vec<OutboxRow>> {
        let mut rows: Vec<OutboxRow> = sqlx::query_as(
            "delete from outbox where id in (select id from outbox order by id limit ?)
             returning id, task_id, exchange, queue, body,
                       json_extract(body, '$.traceparent') as traceparent",
        )
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        rows.sort_unstable_by_key(|r| r.id);
        Ok(rows)
    }

    async fn due_workflows(&mut self, now: DateTime<Utc>, limit: i64) -> sqlx::Result<Vec<Uuid>> {
        let rows: Vec<(Uuid,)> = sqlx::query_as(
            "select distinct workflow_id from (
                 select workflow_id from timers where fire_at <= ? order by fire_at limit ?)",
        )
        .bind(micros(now))
        .bind(limit)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn take_due_timers(
        &mut self,
        workflows: &[Uuid],
        now: DateTime<Utc>,
    ) -> sqlx::Result<Vec<DueTimer>> {
        if workflows.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::new("delete from timers where fire_at <= ");
        q.push_bind(micros(now)).push(" and workflow_id in ");
        push_ids(&mut q, workflows);
        q.push(" returning workflow_id, id, fire_at");
        let rows: Vec<(Uuid, Uuid, i64)> = q.build_query_as().fetch_all(&mut *self.tx).await?;
        Ok(rows
            .into_iter()
            .map(|(workflow_id, id, at)| DueTimer {
                workflow_id,
                id,
                fire_at: from_micros(at),
            })
            .collect())
    }
}

/// Waits for the next wake-up sent after it subscribed.
#[derive(Debug)]
pub struct SqliteListener(watch::Receiver<u64>);

impl Listener for SqliteListener {
    async fn recv(&mut self) -> sqlx::Result<()> {
        // The sender lives as long as the store; a closed channel means the store is gone.
        self.0.changed().await.map_err(|_| sqlx::Error::PoolClosed)
    }
}

impl SqliteStore {
    fn wake(&self, outbox: bool, timers: bool) {
        if outbox {
            self.outbox.send_modify(|n| *n += 1);
        }
        if timers {
            self.timers.send_modify(|n| *n += 1);
        }
    }
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

impl Store for SqliteStore {
    type Tx = SqliteTx;
    type Listener = SqliteListener;

    async fn begin(&self) -> sqlx::Result<SqliteTx> {
        // IMMEDIATE takes the write lock now: a deferred transaction that reads first and
        // writes later could fail to upgrade instead of waiting.
        Ok(SqliteTx {
            tx: self.pool.begin_with("BEGIN IMMEDIATE").await?,
            wake_outbox: false,
            wake_timers: false,
        })
    }

    async fn commit(&self, tx: SqliteTx) -> sqlx::Result<()> {
        let (outbox, timers) = (tx.wake_outbox, tx.wake_timers);
        tx.tx.commit().await?;
        self.wake(outbox, timers);
        Ok(())
    }

    async fn rollback(&self, tx: SqliteTx) -> sqlx::Result<()> {
        tx.tx.rollback().await
    }

    async fn create(&self, change: &Change, wf: &NewWorkflow) -> sqlx::Result<bool> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "insert into workflows (id, workflow_type, version, status, reason, state, last_seq,
                                    business_keys, idempotency_key, request_hash, created_at,
                                    updated_at, definition_fingerprint)
             values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             on conflict (idempotency_key) do nothing",
        )
        .bind(wf.id)
        .bind(&wf.workflow_type)
        .bind(wf.version)
        .bind(&wf.status)
        .bind(&wf.reason)
        .bind(&wf.state)
        .bind(wf.last_seq)
        .bind(&wf.business_keys)
        .bind(&wf.idempotency_key)
        .bind(&wf.request_hash)
        .bind(micros(wf.at))
        .bind(micros(wf.at))
        .bind(&wf.fingerprint)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        tx.write(change).await?;
        self.commit(tx).await?;
        Ok(true)
    }

    async fn by_idempotency_key(&self, key: &str) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
        sqlx::query_as("select id, request_hash from workflows where idempotency_key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
    }

    async fn next_due(&self) -> sqlx::Result<Option<DateTime<Utc>>> {
        let row: (Option<i64>,) = sqlx::query_as("select min(fire_at) from timers")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.0.map(from_micros))
    }

    async fn listen(&self, what: Wakeup) -> sqlx::Result<SqliteListener> {
        Ok(SqliteListener(match what {
            Wakeup::Outbox => self.outbox.subscribe(),
            Wakeup::Timers => self.timers.subscribe(),
        }))
    }
}
