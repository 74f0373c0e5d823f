//! The notification log's retention: messages delivered or refused for good (`sent`, `failed`)
//! before the cutoff are deleted with their attempts and what the outbox provider recorded of
//! them, oldest first, [`BATCH`] a transaction. A `pending` message is never purged: its saga
//! may still retry it, and its row is what dedupes that retry.

use chrono::{DateTime, Utc};
use orderflow_service_kit::{
    db::Db,
    purge::{BATCH, Purged},
};
use uuid::Uuid;

/// Deletes what finished before `cutoff`; rows deleted by table.
pub async fn purge(db: &Db, cutoff: DateTime<Utc>) -> Result<Purged, sqlx::Error> {
    let (mut notifications, mut attempts, mut outbox) = (0, 0, 0);
    loop {
        let (n, a, o) = batch(db, cutoff).await?;
        notifications += n;
        attempts += a;
        outbox += o;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(vec![
        ("notifications", notifications),
        ("notification_attempts", attempts),
        ("outbox_messages", outbox),
    ])
}

/// One batch: (notifications, attempts, outbox messages) deleted.
async fn batch(db: &Db, cutoff: DateTime<Utc>) -> Result<(u64, u64, u64), sqlx::Error> {
    match db {
        Db::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            // Ids are UUIDv7: the oldest first is the primary key's order. Rows a delivery
            // holds are skipped, never waited on.
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "select id from notifications
                 where created_at < $1 and status in ('sent', 'failed')
                 order by id limit $2 for update skip locked",
            )
            .bind(cutoff)
            .bind(BATCH)
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                return Ok((0, 0, 0));
            }
            let a =
                sqlx::query("delete from notification_attempts where notification_id = any($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            let o = sqlx::query("delete from outbox_messages where notification_id = any($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let n = sqlx::query("delete from notifications where id = any($1)")
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok((n, a, o))
        }
        Db::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            // The same batch for the three deletes: one writer holds the file meanwhile.
            let chosen = "select id from notifications
                          where created_at < ?1 and status in ('sent', 'failed')
                          order by id limit ?2";
            let at = cutoff.timestamp_micros();
            let a = sqlx::query(&format!(
                "delete from notification_attempts where notification_id in ({chosen})"
            ))
            .bind(at)
            .bind(BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let o = sqlx::query(&format!(
                "delete from outbox_messages where notification_id in ({chosen})"
            ))
            .bind(at)
            .bind(BATCH)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let n = sqlx::query(&format!("delete from notifications where id in ({chosen})"))
                .bind(at)
                .bind(BATCH)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok((n, a, o))
        }
    }
}
