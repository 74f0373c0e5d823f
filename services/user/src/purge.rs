//! Expired sessions. On Postgres the refresh sessions live in Redis, which drops each at its
//! expiry; on SQLite (`orderflow dev`) they are rows, and a user who never logs in again would
//! leave theirs forever. This deletes the expired ones, [`BATCH`] a transaction.

use chrono::{DateTime, Utc};
use orderflow_service_kit::{
    db::Db,
    purge::{BATCH, Purged, in_batches},
};

/// Deletes the sessions expired before `now`; rows deleted by table.
pub async fn purge_expired_sessions(db: &Db, now: DateTime<Utc>) -> Result<Purged, sqlx::Error> {
    let Db::Sqlite(pool) = db else {
        return Ok(Vec::new());
    };
    let n = in_batches(|| async {
        Ok(sqlx::query(
            "delete from sessions where token_hash in (
                 select token_hash from sessions where expires_at <= ?1 limit ?2)",
        )
        .bind(now.timestamp_micros())
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected())
    })
    .await?;
    Ok(vec![("sessions", n)])
}
