//! The reservation statements in Postgres's dialect.
//!
//! Lock order, the same for every writer so that none can deadlock another: a reservation row
//! first, then the products it names in id order. `reserve` inserts its (new) reservation row
//! before locking products, and the settling paths lock the reservation rows they settle before
//! the products.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    Released, Reservation, ReservationRow, ReserveError, ReserveRequest, StepRef, check_stock,
    destination,
};
use crate::model::ReservationStatus;

pub(super) async fn reserve(
    pool: &PgPool,
    req: &ReserveRequest<'_>,
    items: &BTreeMap<String, i32>,
) -> Result<Reservation, ReserveError> {
    let mut tx = pool.begin().await?;
    // The row first: a concurrent duplicate waits here on the unique index until this
    // transaction ends, then finds the row, instead of racing for the stock.
    let inserted: Option<(Uuid,)> = sqlx::query_as(
        "insert into reservations
             (id, workflow_id, step, idempotency_key, order_id, status, expires_at)
         values ($1, $2, $3, $4, $5, 'reserved', now() + make_interval(secs => $6))
         on conflict (workflow_id, step) do nothing
         returning id",
    )
    .bind(Uuid::now_v7())
    .bind(req.step.workflow_id)
    .bind(&req.step.step)
    .bind(req.idempotency_key)
    .bind(req.order_id)
    .bind(req.ttl.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id,)) = inserted else {
        let existing = find(&mut tx, req.step).await?;
        tx.commit().await?;
        return existing.ok_or_else(|| {
            // The unique index just said the row exists and rows are never deleted.
            ReserveError::Database(sqlx::Error::RowNotFound)
        });
    };

    let ids: Vec<String> = items.keys().cloned().collect();
    let on_hand: Vec<(String, i32)> = sqlx::query_as(
        "select id, on_hand from products where id = any($1) order by id for update",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    // Dropping the transaction on a refusal rolls back the reservation row too.
    check_stock(items, &on_hand.into_iter().collect())?;

    let qtys: Vec<i32> = items.values().copied().collect();
    sqlx::query(
        "update products p
         set on_hand = p.on_hand - x.q, reserved = p.reserved + x.q, updated_at = now()
         from unnest($1::text[], $2::int[]) as x(id, q)
         where p.id = x.id",
    )
    .bind(&ids)
    .bind(&qtys)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into reservation_items (reservation_id, product_id, quantity)
         select $1, x.id, x.q from unnest($2::text[], $3::int[]) as x(id, q)",
    )
    .bind(id)
    .bind(&ids)
    .bind(&qtys)
    .execute(&mut *tx)
    .await?;
    let reservation = find(&mut tx, req.step).await?;
    tx.commit().await?;
    reservation.ok_or(ReserveError::Database(sqlx::Error::RowNotFound))
}

pub(super) async fn find(
    conn: &mut PgConnection,
    step: &StepRef,
) -> Result<Option<Reservation>, sqlx::Error> {
    let row: Option<ReservationRow> = sqlx::query_as(
        "select id, workflow_id, step, order_id, status, expires_at, settle_reason
         from reservations where workflow_id = $1 and step = $2",
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
    conn: &mut PgConnection,
    workflow_id: Uuid,
) -> Result<Vec<Reservation>, sqlx::Error> {
    let rows: Vec<ReservationRow> = sqlx::query_as(
        "select id, workflow_id, step, order_id, status, expires_at, settle_reason
         from reservations where workflow_id = $1 order by id",
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
    conn: &mut PgConnection,
    reservation: Uuid,
) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as(
        "select product_id, quantity from reservation_items
         where reservation_id = $1 order by product_id",
    )
    .bind(reservation)
    .fetch_all(conn)
    .await
}

pub(super) async fn release(
    pool: &PgPool,
    step: &StepRef,
    idempotency_key: &str,
    reason: &str,
) -> Result<Released, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let tombstone = sqlx::query(
        "insert into reservations
             (id, workflow_id, step, idempotency_key, status, expires_at, settle_reason, settled_at)
         values ($1, $2, $3, $4, 'released', now(), $5, now())
         on conflict (workflow_id, step) do nothing",
    )
    .bind(Uuid::now_v7())
    .bind(step.workflow_id)
    .bind(&step.step)
    .bind(idempotency_key)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    if tombstone.rows_affected() == 1 {
        tx.commit().await?;
        return Ok(Released::NeverReserved);
    }
    let (id, status): (Uuid, String) = sqlx::query_as(
        "select id, status from reservations where workflow_id = $1 and step = $2 for update",
    )
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
    pool: &PgPool,
    workflow_id: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "select id from reservations
         where workflow_id = $1 and status = 'reserved'
         order by id for update",
    )
    .bind(workflow_id)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = ids.into_iter().map(|r| r.0).collect();
    settle(&mut tx, &ids, to, reason).await?;
    tx.commit().await?;
    Ok(ids.len())
}

pub(super) async fn sweep_expired(pool: &PgPool, batch: i64) -> Result<usize, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ids: Vec<(Uuid,)> = sqlx::query_as(
        "select id from reservations
         where status = 'reserved' and expires_at <= now()
         order by expires_at
         limit $1
         for update skip locked",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = ids.into_iter().map(|r| r.0).collect();
    settle(&mut tx, &ids, ReservationStatus::Released, "expired").await?;
    tx.commit().await?;
    Ok(ids.len())
}

/// Moves the units of `ids` (locked by the caller and all `reserved`) out of `reserved`: back on
/// hand for a release, into `sold` for a commit. One statement per table for the whole batch.
async fn settle(
    tx: &mut PgConnection,
    ids: &[Uuid],
    to: ReservationStatus,
    reason: &str,
) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    let units: Vec<(String, i64)> = sqlx::query_as(
        "select product_id, sum(quantity) from reservation_items
         where reservation_id = any($1) group by product_id order by product_id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    let products: Vec<String> = units.iter().map(|u| u.0.clone()).collect();
    let qtys: Vec<i64> = units.iter().map(|u| u.1).collect();
    sqlx::query("select 1 from products where id = any($1) order by id for update")
        .bind(&products)
        .execute(&mut *tx)
        .await?;
    let (to_on_hand, to_sold) = destination(to);
    sqlx::query(
        "update products p
         set reserved = p.reserved - x.q,
             on_hand = p.on_hand + x.q * $3,
             sold = p.sold + x.q * $4,
             updated_at = now()
         from unnest($1::text[], $2::bigint[]) as x(id, q)
         where p.id = x.id",
    )
    .bind(&products)
    .bind(&qtys)
    .bind(to_on_hand)
    .bind(to_sold)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "update reservations set status = $2, settle_reason = $3, settled_at = now()
         where id = any($1)",
    )
    .bind(ids)
    .bind(to.as_str())
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(super) async fn restock(
    pool: &PgPool,
    order: &StepRef,
    idempotency_key: &str,
    workflow_id: Uuid,
) -> Result<super::Restocked, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let found: Option<(Uuid, String)> = sqlx::query_as(
        "select id, status from reservations where workflow_id = $1 and step = $2 for update",
    )
    .bind(order.workflow_id)
    .bind(&order.step)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, _)) = found.filter(|(_, s)| s == "committed") else {
        return Ok(super::Restocked::NotSold);
    };
    let inserted = sqlx::query(
        "insert into restocks (idempotency_key, reservation_id, workflow_id)
         values ($1, $2, $3) on conflict do nothing",
    )
    .bind(idempotency_key)
    .bind(id)
    .bind(workflow_id)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(super::Restocked::Already);
    }
    let moved: Vec<(i32,)> = sqlx::query_as(
        "update products p set sold = p.sold - i.quantity, on_hand = p.on_hand + i.quantity,
                updated_at = now()
         from reservation_items i
         where i.reservation_id = $1 and p.id = i.product_id
         returning i.quantity",
    )
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(super::Restocked::Now(
        moved.iter().map(|r| i64::from(r.0)).sum(),
    ))
}
