//! `workflows`: one row per workflow with its snapshot and the columns the API filters on.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

/// A workflow to create.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub state: Value,
    pub last_seq: i64,
    pub business_keys: Value,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub at: DateTime<Utc>,
}

/// A new snapshot of a locked workflow.
#[derive(Debug, Clone)]
pub struct Update {
    pub id: Uuid,
    pub status: String,
    pub reason: Option<String>,
    pub state: Value,
    pub last_seq: i64,
    pub at: DateTime<Utc>,
}

/// A workflow loaded under its row lock.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub state: Value,
    pub last_seq: i64,
    pub business_keys: Value,
}

/// A workflow as the API reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkflowRow {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub status: String,
    pub reason: Option<String>,
    pub state: Value,
    pub last_seq: i64,
    pub business_keys: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Inserts workflows; a row whose idempotency key already exists is skipped. Returns the ids
/// actually inserted.
pub async fn insert_many(conn: &mut PgConnection, rows: &[NewWorkflow]) -> sqlx::Result<Vec<Uuid>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let col = |f: fn(&NewWorkflow) -> Value| rows.iter().map(f).collect::<Vec<Value>>();
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let types: Vec<&str> = rows.iter().map(|r| r.workflow_type.as_str()).collect();
    let versions: Vec<i32> = rows.iter().map(|r| r.version).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.last_seq).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.idempotency_key.as_deref()).collect();
    let hashes: Vec<Option<&str>> = rows.iter().map(|r| r.request_hash.as_deref()).collect();
    let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let inserted: Vec<(Uuid,)> = sqlx::query_as(
        "insert into workflows (id, workflow_type, version, status, reason, state, last_seq,
                                business_keys, business_key_values, idempotency_key, request_hash,
                                created_at, updated_at)
         select u.id, u.t, u.v, u.s, u.r, u.st, u.seq, u.bk,
                array(select value from jsonb_each_text(u.bk)), u.k, u.h, u.at, u.at
         from unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[], $6::jsonb[],
                     $7::int8[], $8::jsonb[], $9::text[], $10::text[], $11::timestamptz[])
              as u(id, t, v, s, r, st, seq, bk, k, h, at)
         on conflict (idempotency_key) do nothing
         returning id",
    )
    .bind(ids)
    .bind(types)
    .bind(versions)
    .bind(statuses)
    .bind(reasons)
    .bind(col(|r| r.state.clone()))
    .bind(seqs)
    .bind(col(|r| r.business_keys.clone()))
    .bind(keys)
    .bind(hashes)
    .bind(ats)
    .fetch_all(conn)
    .await?;
    Ok(inserted.into_iter().map(|r| r.0).collect())
}

/// Rewrites the snapshots of workflows the caller has locked.
pub async fn update_many(conn: &mut PgConnection, rows: &[Update]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
    let states: Vec<&Value> = rows.iter().map(|r| &r.state).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.last_seq).collect();
    let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    sqlx::query(
        "update workflows w set status = u.s, reason = u.r, state = u.st, last_seq = u.seq,
                                updated_at = u.at
         from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int8[], $6::timestamptz[])
              as u(id, s, r, st, seq, at)
         where w.id = u.id",
    )
    .bind(ids)
    .bind(statuses)
    .bind(reasons)
    .bind(states)
    .bind(seqs)
    .bind(ats)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the given workflows in id order (so concurrent batches cannot deadlock). With
/// `skip_locked`, rows another transaction holds are left out instead of waited for.
pub async fn lock(
    conn: &mut PgConnection,
    ids: &[Uuid],
    skip_locked: bool,
) -> sqlx::Result<Vec<Locked>> {
    let sql = if skip_locked {
        "select id, workflow_type, version, state, last_seq, business_keys from workflows
         where id = any($1) order by id for update skip locked"
    } else {
        "select id, workflow_type, version, state, last_seq, business_keys from workflows
         where id = any($1) order by id for update"
    };
    sqlx::query_as(sql).bind(ids).fetch_all(conn).await
}

const COLUMNS: &str = "id, workflow_type, version, status, reason, state, last_seq, business_keys, \
                       created_at, updated_at";

pub async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<WorkflowRow>> {
    sqlx::query_as(&format!("select {COLUMNS} from workflows where id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await
}

/// The workflow started with this idempotency key, and the hash of the request that started it.
pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    key: &str,
) -> sqlx::Result<Option<(Uuid, Option<String>)>> {
    sqlx::query_as("select id, request_hash from workflows where idempotency_key = $1")
        .bind(key)
        .fetch_optional(conn)
        .await
}

/// Filters for listing workflows. Every field is optional.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<String>,
    pub workflow_type: Option<String>,
    pub business_key: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only workflows with an id below this one (the cursor: ids sort by creation time).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// Newest first; all values are bound parameters.
pub async fn list(conn: &mut PgConnection, f: &ListFilter) -> sqlx::Result<Vec<WorkflowRow>> {
    let mut q = QueryBuilder::new(format!("select {COLUMNS} from workflows where true"));
    if let Some(s) = &f.status {
        q.push(" and status = ").push_bind(s.clone());
    }
    if let Some(t) = &f.workflow_type {
        q.push(" and workflow_type = ").push_bind(t.clone());
    }
    if let Some(k) = &f.business_key {
        q.push(" and business_key_values @> array[")
            .push_bind(k.clone())
            .push("]::text[]");
    }
    if let Some(a) = f.created_after {
        q.push(" and created_at >= ").push_bind(a);
    }
    if let Some(b) = f.created_before {
        q.push(" and created_at < ").push_bind(b);
    }
    if let Some(c) = f.before_id {
        q.push(" and id < ").push_bind(c);
    }
    q.push(" order by id desc limit ").push_bind(f.limit);
    q.build_query_as().fetch_all(conn).await
}

/// How many workflows are in each status.
pub async fn count_by_status(conn: &mut PgConnection) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("select status, count(*) from workflows group by status order by status")
        .fetch_all(conn)
        .await
}
