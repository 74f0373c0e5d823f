//! [`Reads`] on the embedded store of `orderflow dev`. Each answers what its Postgres twin
//! ([`crate::store::postgres::reads`]) answers; where the dialects differ:
//!
//! - JSON is text: `json_extract` and `json_each` stand for `->>` and `jsonb_array_elements`;
//! - there is no lateral join, so a stuck row's latest task is a correlated subquery;
//! - there are no arrays, so business keys are matched with `json_each` and id sets are `in`
//!   lists;
//! - times are integer microseconds, and "now" is bound from the clock instead of `now()`.
//!
//! Dev data is small, so these are shaped for clarity rather than for 100,000s of rows.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use orderflow_core::RecordedEvent;
use serde_json::Value;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool, sqlite::SqliteRow};
use uuid::Uuid;

use super::{
    SqliteStore, WORKFLOW_COLUMNS, decode, from_micros, load_history, micros, push_ids,
    workflow_row,
};
use crate::store::{
    WorkflowRow,
    reads::{
        AuditRow, ListFilter, ListRow, Reads, Session, StuckFilter, StuckKind, StuckRow, TimerRow,
        v7_floor,
    },
};

/// The types of the operator's events, which the audit view lists.
const OPERATOR_EVENTS: &str = "('cancel_requested', 'terminate_requested', 'retry_requested', \
                               'retry_from_step', 'signal_received', 'compensation_resolved')";

/// The latest `schedule_activity` command of workflow `w` (its `TaskSpec`), `{col}` of it.
fn last_task(col: &str) -> String {
    format!(
        "(select {col} from history h, json_each(h.commands) c
          where h.workflow_id = w.id and json_extract(c.value, '$.type') = 'schedule_activity'
          order by h.seq desc limit 1)"
    )
}

fn json_opt(r: &SqliteRow, col: &str) -> sqlx::Result<Option<Value>> {
    r.try_get::<Option<String>, _>(col)?
        .map(|t| decode(&t))
        .transpose()
}

fn push_list_where(q: &mut QueryBuilder<'_, Sqlite>, f: &ListFilter) {
    if let Some(s) = &f.status {
        q.push(" and w.status = ").push_bind(s.clone());
    }
    if let Some(t) = &f.workflow_type {
        q.push(" and w.workflow_type = ").push_bind(t.clone());
    }
    if let Some(k) = &f.business_key {
        q.push(" and w.id in (select k.id from workflows k, json_each(k.business_keys) v where v.value = ")
            .push_bind(k.clone())
            .push(
                " union select workflow_id from history
                  where json_extract(event, '$.type') = 'activity_completed'
                    and json_extract(event, '$.output.payment_intent_id') = ",
            )
            .push_bind(k.clone())
            .push(")");
    }
    if let Some(id) = f.id {
        q.push(" and w.id = ").push_bind(id);
    }
    if let Some(a) = f.created_after {
        q.push(" and w.created_at >= ").push_bind(micros(a));
        q.push(" and w.id >= ")
            .push_bind(v7_floor(a - chrono::Duration::milliseconds(1)));
    }
    if let Some(b) = f.created_before {
        q.push(" and w.created_at < ").push_bind(micros(b));
        q.push(" and w.id < ")
            .push_bind(v7_floor(b + chrono::Duration::milliseconds(2)));
    }
    if let Some(c) = f.before_id {
        q.push(" and w.id < ").push_bind(c);
    }
    if let Some(c) = f.upto_id {
        q.push(" and w.id <= ").push_bind(c);
    }
}

/// [`crate::store::postgres::reads::list`].
pub async fn list(pool: &SqlitePool, f: &ListFilter) -> sqlx::Result<Vec<ListRow>> {
    let mut q = QueryBuilder::new(
        "select w.id, w.workflow_type, w.version, w.status, w.reason, w.business_keys,
                w.created_at, w.updated_at,
                json_extract(w.state,
                    '$.steps[' || json_extract(w.state, '$.cursor') || ']') as current
         from workflows w where 1",
    );
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(ListRow {
                id: r.try_get("id")?,
                workflow_type: r.try_get("workflow_type")?,
                version: r.try_get("version")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                business_keys: decode(r.try_get("business_keys")?)?,
                created_at: from_micros(r.try_get("created_at")?),
                updated_at: from_micros(r.try_get("updated_at")?),
                current: json_opt(r, "current")?,
            })
        })
        .collect()
}

/// The API's list: whole rows.
pub async fn list_workflows(pool: &SqlitePool, f: &ListFilter) -> sqlx::Result<Vec<WorkflowRow>> {
    let columns = WORKFLOW_COLUMNS
        .split(", ")
        .map(|c| format!("w.{c}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut q = QueryBuilder::new(format!("select {columns} from workflows w where 1"));
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter().map(workflow_row).collect()
}

/// [`crate::store::postgres::reads::list_ids`].
pub async fn list_ids(pool: &SqlitePool, f: &ListFilter) -> sqlx::Result<Vec<Uuid>> {
    let mut q = QueryBuilder::new("select w.id from workflows w where 1");
    push_list_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows: Vec<(Uuid,)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// [`crate::store::postgres::reads::counts`].
pub async fn counts(pool: &SqlitePool) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select status, count(*) from workflows group by status order by status")
        .fetch_all(pool)
        .await
}

fn push_stuck_set(q: &mut QueryBuilder<'_, Sqlite>, f: &StuckFilter) {
    let wanted = |k: StuckKind| f.kind.is_none_or(|only| only == k);
    let mut parts = 0;
    let mut union = |q: &mut QueryBuilder<'_, Sqlite>| {
        if parts > 0 {
            q.push(" union ");
        }
        parts += 1;
    };
    q.push("(");
    if wanted(StuckKind::Attention) {
        union(q);
        q.push("select id from workflows where status = 'needs_attention'");
    }
    if wanted(StuckKind::Retrying) {
        union(q);
        q.push(
            "select workflow_id as id from timers
             where json_extract(purpose, '$.purpose') = 'retry'",
        );
    }
    if wanted(StuckKind::Overdue) {
        union(q);
        q.push("select workflow_id as id from timers where fire_at < ")
            .push_bind(micros(f.overdue_before));
    }
    if wanted(StuckKind::NoWorker) && !f.no_worker.is_empty() {
        union(q);
        q.push("select id from workflows where id in ");
        push_ids(q, &f.no_worker);
    }
    if parts == 0 {
        q.push("select null as id where 0");
    }
    q.push(")");
}

fn push_stuck_where(q: &mut QueryBuilder<'_, Sqlite>, f: &StuckFilter) {
    q.push(" where w.status in ('running', 'compensating', 'needs_attention')");
    if let Some(a) = &f.activity {
        q.push(format!(
            " and json_extract({}, '$.activity') = ",
            last_task("c.value")
        ))
        .push_bind(a.clone());
    }
    if let Some(t) = &f.workflow_type {
        q.push(" and w.workflow_type = ").push_bind(t.clone());
    }
    if let Some(a) = f.created_after {
        q.push(" and w.created_at >= ").push_bind(micros(a));
    }
    if let Some(b) = f.created_before {
        q.push(" and w.created_at < ").push_bind(micros(b));
    }
    if let Some(c) = f.before_id {
        q.push(" and w.id < ").push_bind(c);
    }
    if let Some(c) = f.upto_id {
        q.push(" and w.id <= ").push_bind(c);
    }
}

/// [`crate::store::postgres::reads::stuck`].
pub async fn stuck(pool: &SqlitePool, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>> {
    let mut q = QueryBuilder::new(format!(
        "select w.id, w.workflow_type, w.version, w.status, w.reason, w.created_at,
                w.updated_at, w.state, {} as last_task, {} as last_task_at
         from workflows w where w.id in (select w.id from ",
        last_task("c.value"),
        last_task("h.at"),
    ));
    push_stuck_set(&mut q, f);
    q.push(" s join workflows w on w.id = s.id");
    push_stuck_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    q.push(") order by w.id desc");
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(StuckRow {
                id: r.try_get("id")?,
                workflow_type: r.try_get("workflow_type")?,
                version: r.try_get("version")?,
                status: r.try_get("status")?,
                reason: r.try_get("reason")?,
                created_at: from_micros(r.try_get("created_at")?),
                updated_at: from_micros(r.try_get("updated_at")?),
                state: decode(r.try_get("state")?)?,
                last_task: json_opt(r, "last_task")?,
                last_task_at: r
                    .try_get::<Option<i64>, _>("last_task_at")?
                    .map(from_micros),
            })
        })
        .collect()
}

/// [`crate::store::postgres::reads::stuck_ids`].
pub async fn stuck_ids(pool: &SqlitePool, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>> {
    let mut q = QueryBuilder::new("select w.id from ");
    push_stuck_set(&mut q, f);
    q.push(" s join workflows w on w.id = s.id");
    push_stuck_where(&mut q, f);
    q.push(" order by w.id desc limit ").push_bind(f.limit);
    let rows: Vec<(Uuid,)> = q.build_query_as().fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// [`crate::store::postgres::reads::stuck_counts`].
pub async fn stuck_counts(
    pool: &SqlitePool,
    overdue_before: DateTime<Utc>,
) -> sqlx::Result<(i64, i64, i64)> {
    sqlx::query_as(
        "select (select count(*) from workflows where status = 'needs_attention'),
                (select count(distinct workflow_id) from timers
                 where json_extract(purpose, '$.purpose') = 'retry'),
                (select count(distinct workflow_id) from timers where fire_at < ?)",
    )
    .bind(micros(overdue_before))
    .fetch_one(pool)
    .await
}

/// [`crate::store::postgres::reads::tasks_out`].
pub async fn tasks_out(pool: &SqlitePool) -> sqlx::Result<Vec<(Uuid, Option<String>)>> {
    sqlx::query_as(&format!(
        "select w.id, json_extract({}, '$.activity')
         from (select distinct workflow_id as id from timers
               where json_extract(purpose, '$.purpose') = 'attempt_timeout') w",
        last_task("c.value")
    ))
    .fetch_all(pool)
    .await
}

/// [`crate::store::postgres::reads::tasks_out_by_activity`]; SQLite has no lateral join, so the
/// activity and the instant are two lookups of the same latest task.
pub async fn tasks_out_by_activity(
    pool: &SqlitePool,
) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "select activity, count(*), min(at) from (
             select json_extract({}, '$.activity') as activity, {} as at
             from (select distinct workflow_id as id from timers
                   where json_extract(purpose, '$.purpose') = 'attempt_timeout') w)
         where activity is not null and at is not null
         group by activity",
        last_task("c.value"),
        last_task("h.at")
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(activity, n, at)| (activity, n, from_micros(at)))
        .collect())
}

/// [`crate::store::postgres::reads::timers_of`].
pub async fn timers_of(pool: &SqlitePool, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::new(
        "select workflow_id, id, fire_at, purpose from timers where workflow_id in ",
    );
    push_ids(&mut q, ids);
    q.push(" order by fire_at");
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(TimerRow {
                workflow_id: r.try_get("workflow_id")?,
                id: r.try_get("id")?,
                fire_at: from_micros(r.try_get("fire_at")?),
                purpose: decode(r.try_get("purpose")?)?,
            })
        })
        .collect()
}

/// [`crate::store::postgres::reads::audit`].
pub async fn audit(
    pool: &SqlitePool,
    before: Option<DateTime<Utc>>,
    limit: i64,
) -> sqlx::Result<Vec<AuditRow>> {
    let mut q = QueryBuilder::new(format!(
        "select h.workflow_id, h.seq, h.at, h.event, w.workflow_type, w.status
         from history h left join workflows w on w.id = h.workflow_id
         where json_extract(h.event, '$.type') in {OPERATOR_EVENTS}"
    ));
    if let Some(b) = before {
        q.push(" and h.at < ").push_bind(micros(b));
    }
    q.push(" order by h.at desc limit ").push_bind(limit);
    let rows = q.build().fetch_all(pool).await?;
    rows.iter()
        .map(|r| {
            Ok(AuditRow {
                workflow_id: r.try_get("workflow_id")?,
                seq: r.try_get("seq")?,
                at: from_micros(r.try_get("at")?),
                event: decode(r.try_get("event")?)?,
                workflow_type: r.try_get("workflow_type")?,
                status: r.try_get("status")?,
            })
        })
        .collect()
}

/// The live session with this token hash.
pub async fn session(pool: &SqlitePool, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
    sqlx::query_as(
        "select actor, csrf_token from admin_sessions where token_hash = ? and expires_at > ?",
    )
    .bind(token_hash)
    .bind(micros(Utc::now()))
    .fetch_optional(pool)
    .await
}

/// Opens a session until `expires_at`, dropping the expired ones on the way.
pub async fn open_session(
    pool: &SqlitePool,
    token_hash: &[u8],
    actor: &str,
    csrf: &str,
    expires_at: DateTime<Utc>,
) -> sqlx::Result<()> {
    let now = micros(Utc::now());
    // It writes twice: IMMEDIATE takes the write lock up front instead of failing to upgrade.
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::query("delete from admin_sessions where expires_at < ?")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "insert into admin_sessions (token_hash, actor, csrf_token, created_at, expires_at)
         values (?, ?, ?, ?, ?)",
    )
    .bind(token_hash)
    .bind(actor)
    .bind(csrf)
    .bind(now)
    .bind(micros(expires_at))
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// Ends the session with this token hash.
pub async fn close_session(pool: &SqlitePool, token_hash: &[u8]) -> sqlx::Result<()> {
    sqlx::query("delete from admin_sessions where token_hash = ?")
        .bind(token_hash)
        .execute(pool)
        .await?;
    Ok(())
}

#[async_trait]
impl Reads for SqliteStore {
    async fn get(&self, id: Uuid) -> sqlx::Result<Option<WorkflowRow>> {
        let row = sqlx::query(&format!(
            "select {WORKFLOW_COLUMNS} from workflows where id = ?"
        ))
        .bind(id)
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(workflow_row).transpose()
    }

    async fn history(&self, id: Uuid) -> sqlx::Result<Vec<RecordedEvent>> {
        load_history(&mut *self.pool().acquire().await?, id).await
    }

    async fn counts(&self) -> sqlx::Result<Vec<(String, i64)>> {
        counts(self.pool()).await
    }

    async fn list(&self, f: &ListFilter) -> sqlx::Result<Vec<ListRow>> {
        list(self.pool(), f).await
    }

    async fn list_ids(&self, f: &ListFilter) -> sqlx::Result<Vec<Uuid>> {
        list_ids(self.pool(), f).await
    }

    async fn list_workflows(&self, f: &ListFilter) -> sqlx::Result<Vec<WorkflowRow>> {
        list_workflows(self.pool(), f).await
    }

    async fn stuck(&self, f: &StuckFilter) -> sqlx::Result<Vec<StuckRow>> {
        stuck(self.pool(), f).await
    }

    async fn stuck_ids(&self, f: &StuckFilter) -> sqlx::Result<Vec<Uuid>> {
        stuck_ids(self.pool(), f).await
    }

    async fn stuck_counts(&self, overdue_before: DateTime<Utc>) -> sqlx::Result<(i64, i64, i64)> {
        stuck_counts(self.pool(), overdue_before).await
    }

    async fn tasks_out(&self) -> sqlx::Result<Vec<(Uuid, Option<String>)>> {
        tasks_out(self.pool()).await
    }

    async fn tasks_out_by_activity(&self) -> sqlx::Result<Vec<(String, i64, DateTime<Utc>)>> {
        tasks_out_by_activity(self.pool()).await
    }

    async fn timers_of(&self, ids: &[Uuid]) -> sqlx::Result<Vec<TimerRow>> {
        timers_of(self.pool(), ids).await
    }

    async fn audit(
        &self,
        before: Option<DateTime<Utc>>,
        limit: i64,
    ) -> sqlx::Result<Vec<AuditRow>> {
        audit(self.pool(), before, limit).await
    }

    async fn outbox_lag(&self) -> sqlx::Result<(i64, f64)> {
        let (rows, oldest): (i64, Option<i64>) =
            sqlx::query_as("select count(*), min(created_at) from outbox")
                .fetch_one(self.pool())
                .await?;
        let lag = oldest.map_or(0.0, |t| {
            (Utc::now() - from_micros(t))
                .num_microseconds()
                .unwrap_or(0) as f64
                / 1e6
        });
        Ok((rows, lag.max(0.0)))
    }

    async fn session(&self, token_hash: &[u8]) -> sqlx::Result<Option<Session>> {
        session(self.pool(), token_hash).await
    }

    async fn open_session(
        &self,
        token_hash: &[u8],
        actor: &str,
        csrf: &str,
        ttl: Duration,
    ) -> sqlx::Result<()> {
        let ttl = chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let expires = Utc::now()
            .checked_add_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        open_session(self.pool(), token_hash, actor, csrf, expires).await
    }

    async fn close_session(&self, token_hash: &[u8]) -> sqlx::Result<()> {
        close_session(self.pool(), token_hash).await
    }

    async fn archived(
        &self,
        id: Uuid,
    ) -> sqlx::Result<Option<crate::store::retention::ArchivedAt>> {
        super::retention::archived(self, id).await
    }

    async fn ping(&self) -> bool {
        sqlx::query("select 1").execute(self.pool()).await.is_ok()
    }
}
