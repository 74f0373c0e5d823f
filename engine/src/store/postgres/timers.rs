//! `timers`: durable wake-ups. Rows are only written or deleted under their workflow's row lock,
//! created and cancelled by [`super::change`].

use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// Workflows with a due timer, soonest first (no lock: the caller locks the workflows next).
pub async fn due_workflows(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<Uuid>> {
    let rows: Vec<(Uuid,)> = sqlx::query_as(
        "select distinct workflow_id from (
             select workflow_id from timers where fire_at <= $1 order by fire_at limit $2
         ) due",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Deletes and returns the due timers of workflows the caller has locked.
pub async fn take_due(
    conn: &mut PgConnection,
    workflows: &[Uuid],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<crate::store::DueTimer>> {
    sqlx::query_as(
        "delete from timers where workflow_id = any($1) and fire_at <= $2
         returning workflow_id, id, fire_at",
    )
    .bind(workflows)
    .bind(now)
    .fetch_all(conn)
    .await
}

/// When the next timer is due, if any.
pub async fn next_due(conn: &mut PgConnection) -> sqlx::Result<Option<DateTime<Utc>>> {
    let row: (Option<DateTime<Utc>>,) = sqlx::query_as("select min(fire_at) from timers")
        .fetch_one(conn)
        .await?;
    Ok(row.0)
}
