//! `workflows`: one row per workflow with its snapshot and the columns the API filters on.

use sqlx::PgConnection;
use uuid::Uuid;

use crate::store::{Locked, WorkflowRow};

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
