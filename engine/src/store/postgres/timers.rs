//! `timers`: durable wake-ups, created and deleted with their workflow's state changes by
//! [`super::change`] (a fired timer is deleted with the event it became).

use crate::store::DueTimer;
use chrono::{DateTime, Utc};
use sqlx::PgConnection;

/// Timers due at `now`, soonest first.
pub async fn due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<DueTimer>> {
    sqlx::query_as(
        "select workflow_id, id, fire_at from timers where fire_at <= $1
         order by fire_at limit $2",
    )
    .bind(now)
    .bind(limit)
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
