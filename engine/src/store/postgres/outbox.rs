//! `outbox`: messages committed with their state change (by [`super::change`]) until the queue
//! confirmed them. The committer publishes them right after its commit and deletes them in its
//! next batch; the relay publishes what is left behind (an engine died, the broker was away).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::store::OutboxRow;

/// Deletes up to `limit` rows committed before `before` that no other relay holds,
/// oldest first, and returns them in id order. The delete only takes effect when the caller
/// commits, which the relay does after the broker confirmed every message; a rollback (or a
/// crash) puts the rows back for the next round.
pub async fn take(
    conn: &mut PgConnection,
    limit: i64,
    before: DateTime<Utc>,
) -> sqlx::Result<Vec<OutboxRow>> {
    let mut rows: Vec<OutboxRow> = sqlx::query_as(
        "delete from outbox where id in (
             select id from outbox where created_at < $2
             order by id limit $1 for update skip locked)
         returning id, task_id, exchange, queue, body::text as body,
                   body->>'traceparent' as traceparent",
    )
    .bind(limit)
    .bind(before)
    .fetch_all(conn)
    .await?;
    rows.sort_unstable_by_key(|r| r.id);
    Ok(rows)
}

/// Rows waiting and the age in seconds of the oldest (outbox lag).
pub async fn lag(conn: &mut PgConnection) -> sqlx::Result<(i64, f64)> {
    sqlx::query_as(
        "select count(*), coalesce(extract(epoch from now() - min(created_at))::float8, 0) from outbox",
    )
    .fetch_one(conn)
    .await
}
