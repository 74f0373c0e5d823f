//! `workflows`: one row per workflow with its snapshot and the columns the API filters on.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{Loaded, WorkflowRow};

/// Loads workflows to decide on, without a lock.
pub async fn load(conn: &mut PgConnection, ids: &[Uuid]) -> sqlx::Result<Vec<Loaded>> {
    sqlx::query_as(
        "select id, workflow_type, version, state::text as state, last_seq, business_keys,
                definition_fingerprint
         from workflows where id = any($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await
}

pub(crate) const COLUMNS: &str = "id, workflow_type, version, status, reason, state, last_seq, business_keys, \
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
