//! The webhook log's retention: Stripe events received before the cutoff are deleted, oldest
//! first, [`BATCH`] a transaction. An event id is kept only to acknowledge Stripe's redeliveries
//! without applying them twice, and Stripe stops redelivering after three days, so a retention
//! of weeks loses nothing. Payments are business records and stay.

use chrono::{DateTime, SecondsFormat, Utc};
use orderflow_service_kit::{
    db::Db,
    purge::{BATCH, Purged, in_batches},
};

/// Deletes the events received before `cutoff`; rows deleted by table.
pub async fn purge(db: &Db, cutoff: DateTime<Utc>) -> Result<Purged, sqlx::Error> {
    let n = in_batches(|| batch(db, cutoff)).await?;
    Ok(vec![("stripe_events", n)])
}

async fn batch(db: &Db, cutoff: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = match db {
        Db::Postgres(pool) => sqlx::query(
            "delete from stripe_events where id in (
                     select id from stripe_events where received_at < $1
                     order by received_at limit $2 for update skip locked)",
        )
        .bind(cutoff)
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected(),
        // Times are stored as RFC 3339 text with microseconds in UTC, which sorts as time.
        Db::Sqlite(pool) => sqlx::query(
            "delete from stripe_events where id in (
                     select id from stripe_events where received_at < ?1
                     order by received_at limit ?2)",
        )
        .bind(cutoff.to_rfc3339_opts(SecondsFormat::Micros, true))
        .bind(BATCH)
        .execute(pool)
        .await?
        .rows_affected(),
    };
    Ok(done)
}
