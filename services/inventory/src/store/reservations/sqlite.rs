//! The reservation statements in SQLite's dialect.
//!
//! SQLite has one writer at a time and no row locks. Every transaction here that reads rows and
//! then changes them begins `IMMEDIATE`, taking the write lock before its first read: the stock
//! it checks cannot change before it writes, and a concurrent duplicate reserve waits for it and
//! then finds its reservation. (A deferred transaction would read first and then fail with
//! SQLITE_BUSY when it tried to become the writer.)

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, TimeDelta, Utc};
use sqlx::{SqliteConnection, SqlitePool};
use uuid::Uuid;

use super::{
    Released, Reservation, ReservationRow, ReserveError, ReserveRequest, StepRef, check_stock,
    destination,
};
use crate::{model::ReservationStatus, store::placeholders};

pub(super) async fn reserve(
    pool: &SqlitePool,
    req: &ReserveRequest<'_>,
    items: &BTreeMap<String, i32>,
) -> Result<Reservation, ReserveError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = Utc::now();
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        "insert into reservations
             (id, workflow_id, step, idempotency_key, order_id, status, expires_at, created_at)
         values (?1, ?2, ?3, ?4, ?5, 'reserved', ?6, ?7)
         on conflict (workflow_id, step) do nothing
         returning id",
    )
    .bind(Uuid::now_v7())
    .bind(req.step.workflow_id)
    .bind(&req.step.step)
    .bind(req.idempotency_key)
    .bind(req.order_id)
    .bind(expiry(now, req.ttl))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id,)) = inserted else {
        let existing = find(&mut tx, req.step).await?;
        tx.commit().await?;
        // The unique index just said the row exists and rows are never deleted.
        return existing.ok_or(ReserveError::Database(sqlx::Error::RowNotFound));
    };

    let sql = format!(
        "select id, on_hand from products where id in ({})",
        placeholders(items.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in items.keys() {
        query = query.bind(id);
    }
    let on_hand: Vec<(String, i32)> = query.fetch_all(&mut *tx).await?;
    // Dropping the transaction on a refusal rolls back the reservation row too.
    check_stock(items, &on_hand.into_iter().collect())?;

    for (product, q) in items {
        sqlx::query(
            "update products set on_hand = on_hand - ?2, reserved = reserved + ?2, updated_at = ?3
             where id = ?1",
        )
        .bind(product)
        .bind(q)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let sql = format!(
        "insert into reservation_items (reservation_id, product_id, quantity) values {}",
        vec!["(?, ?, ?)"; items.len()].join(", ")
    );
    let mut insert = sqlx::query(&sql);
    for (product, q) in items {
        insert = insert.bind(id).bind(product).bind(q);
    }
    insert.execute(&mut *tx).await?;
    let reservation = find(&mut tx, req.step).await?;
    tx.commit().await?;
    reservation.ok_or(ReserveError::Database(sqlx::Error::RowNotFound))
}

/// `now + ttl`, at most the last second of 9999: beyond four-digit years RFC 3339 text no longer
/// sorts like time, and the sweep compares the text.
fn expiry(now: DateTime<Utc>, ttl: Duration) -> DateTime<Utc> {
    let last =
        DateTime::<Utc>::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC);
    TimeDelta::from_std(ttl)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map_or(last, |t| t.min(last))
}

pub(super) async fn find(
    conn: &mut SqliteConnection,
    step: &StepRef,
) -> Result<Option<Reservation>, sqlx::Error> {
    let row: Option<ReservationRow> = sqlx::query_as(
        "select id, workflow_id, step, order_id, status, expires_at, settle_reason
         from reservations where workflow_id = ?1 and step = ?2",
    )
    .bind(step.workflow_id)
    .bind(&step.step)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let items = items_of(conn, row.id).await?;
            Ok(Some(row.into_reservation(items)))
        }
    }
}

pub(super) async fn for_workflow(
    conn: &mut SqliteConnection,
    workflow_id: Uuid,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows: Vec<ReservationRow> = sqlx::query_as(
        "select id, workflow_id, step, order_id, status, expires_at, settle_reason
         from reservations where workflow_id = ?1 order by id",
    )
    .bind(workflow_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let items = items_of(conn, row.id).await?;
        out.push(row.into_reservation(items));
    }
    Ok(out)
}

async fn items_of(
    conn: &mut SqliteConnection,
    reservation: Uuid,
) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as(
        "select product_id, quantity from reservation_items
         where reservation_id = ?1 order by product_id",
    )
    .bind(reservation)
    .fetch_all(conn)
    .await
}

pub(super) async fn release(
    pool: &SqlitePool,
    step: &StepRef,
    idempotency_key: &str,
    reason: &str,
) -> Result<Released, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = Utc::now();
    let tombstone = sqlx::query(
        "insert into reservations
             (id, workflow_id, step, idempotency_key, status, expires_at, settle_reason,
              created_at, settled_at)
         values (?1, ?2, ?3, ?4, 'released', ?6, ?5, ?6, ?6)
         on conflict (workflow_id, step) do nothing",
    )
    .bind(Uuid::now_v7())
    .bind(step.workflow_id)
    .bind(&step.step)
    .bind(idempotency_key)
    .bind(reason)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if tombstone.rows_affected() == 1 {
        tx.commit().await?;
        return Ok(Released::NeverReserved);
    }
    let (id, status): (Uuid, String) =
        sqlx::query_as("select id, status from reservations where workflow_id = ?1 and step = ?2")
            .bind(step.workflow_id)
            .bind(&step.step)
            .fetch_one(&mut *tx)
            .await?;
    let status = ReservationStatus::parse(&status).unwrap_or(ReservationStatus::Released);
    if status != ReservationStatus::Reserved {
        tx.commit().await?;
        return Ok(Released::AlreadySettled(status));
    }
    settle(&mut tx, &[id], ReservationStatus::Released, reason).await?;
    tx.commit().await?;
    Ok(Released::Now)
}

pub(super) async fn settle_workflow(
    pool: &SqlitePool,
    workflow_id: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "select id from reservations where workflow_id = ?1 and status = 'reserved' order by id",
    )
    .bind(workflow_id)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = ids.into_iter().map(|r| r.0).collect();
    settle(&mut tx, &ids, to, reason).await?;
    tx.commit().await?;
    Ok(ids.len())
}

pub(super) async fn sweep_expired(pool: &SqlitePool, batch: i64) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "select id from reservations
         where status = 'reserved' and expires_at <= ?1
         order by expires_at
         limit ?2",
    )
    .bind(Utc::now())
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = ids.into_iter().map(|r| r.0).collect();
    settle(&mut tx, &ids, ReservationStatus::Released, "expired").await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Moves the units of `ids` (all `reserved`, read in the caller's write transaction) out of
/// `reserved`: back on hand for a release, into `sold` for a commit.
async fn settle(
    tx: &mut SqliteConnection,
    ids: &[Uuid],
    to: ReservationStatus,
    reason: &str,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let sql = format!(
        "select product_id, sum(quantity) from reservation_items
         where reservation_id in ({}) group by product_id order by product_id",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in ids {
        query = query.bind(id);
    }
    let units: Vec<(String, i64)> = query.fetch_all(&mut *tx).await?;
    let (to_on_hand, to_sold) = destination(to);
    for (product, q) in &units {
        sqlx::query(
            "update products
             set reserved = reserved - ?2,
                 on_hand = on_hand + ?2 * ?3,
                 sold = sold + ?2 * ?4,
                 updated_at = ?5
             where id = ?1",
        )
        .bind(product)
        .bind(q)
        .bind(to_on_hand)
        .bind(to_sold)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    let sql = format!(
        "update reservations set status = ?, settle_reason = ?, settled_at = ?
         where id in ({})",
        placeholders(ids.len())
    );
    let mut update = sqlx::query(&sql).bind(to.as_str()).bind(reason).bind(now);
    for id in ids {
        update = update.bind(id);
    }
    update.execute(&mut *tx).await?;
    Ok(())
}

pub(super) async fn restock(
    pool: &SqlitePool,
    order: &StepRef,
    idempotency_key: &str,
    workflow_id: Uuid,
) -> Result<super::Restocked, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let now = Utc::now();
    let found: Option<(Uuid, String)> =
        sqlx::query_as("select id, status from reservations where workflow_id = ?1 and step = ?2")
            .bind(order.workflow_id)
            .bind(&order.step)
            .fetch_optional(&mut *tx)
            .await?;
    let Some((id, _)) = found.filter(|(_, s)| s == "committed") else {
        return Ok(super::Restocked::NotSold);
    };
    let inserted = sqlx::query(
        "insert into restocks (idempotency_key, reservation_id, workflow_id, created_at)
         values (?1, ?2, ?3, ?4) on conflict do nothing",
    )
    .bind(idempotency_key)
    .bind(id)
    .bind(workflow_id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(super::Restocked::Already);
    }
    let items: Vec<(String, i64)> = sqlx::query_as(
        "select product_id, quantity from reservation_items where reservation_id = ?1",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    for (product, q) in &items {
        sqlx::query(
            "update products set sold = sold - ?2, on_hand = on_hand + ?2, updated_at = ?3
             where id = ?1",
        )
        .bind(product)
        .bind(q)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(super::Restocked::Now(items.iter().map(|i| i.1).sum()))
}
