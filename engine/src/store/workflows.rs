//! `workflows`: one row per workflow with its snapshot and the columns the API filters on.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, QueryBuilder};
use uuid::Uuid;

/// A workflow loaded under its row lock. The snapshot comes as JSON text, which the applier
/// deserializes straight into the workflow's state type.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Locked {
    pub id: Uuid,
    pub workflow_type: String,
    pub version: i32,
    pub state: String,
    pub last_seq: i64,
    pub business_keys: Value,
    pub definition_fingerprint: Option<String>,
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

/// Locks the given workflows in id order (so concurrent batches cannot deadlock). With
/// `skip_locked`, rows another transaction holds are left out instead of waited for.
pub async fn lock(
    conn: &mut PgConnection,
    ids: &[Uuid],
    skip_locked: bool,
) -> sqlx::Result<Vec<Locked>> {
    let sql = if skip_locked {
        "select id, workflow_type, version, state::text as state, last_seq, business_keys,
                definition_fingerprint
         from workflows where id = any($1) order by id for update skip locked"
    } else {
        "select id, workflow_type, version, state::text as state, last_seq, business_keys,
                definition_fingerprint
         from workflows where id = any($1) order by id for update"
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

/// Records the definition fingerprint a locked workflow now runs with.
pub async fn set_fingerprint(
    conn: &mut PgConnection,
    id: Uuid,
    fingerprint: &str,
) -> sqlx::Result<()> {
    sqlx::query("update workflows set definition_fingerprint = $2 where id = $1")
        .bind(id)
        .bind(fingerprint)
        .execute(conn)
        .await?;
    Ok(())
}
