//! The order tables in SQLite's dialect (`orderflow dev`), row for row what [`super::postgres`]
//! does. There are no row locks: callers hold a `BEGIN IMMEDIATE` transaction ([`super::Tx`]),
//! which owns the database's only write lock, where Postgres locks a row. Times are integer
//! microseconds and the clock is read by the caller, since SQLite has no `now()` of that
//! precision (see `migrations/sqlite/order/`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{SqliteConnection, SqliteExecutor, prelude::FromRow, types::Json};
use uuid::Uuid;

use super::{COLUMNS, Change, ConfirmRow, NewOrderRow, Order, PricedLine};
use crate::model::{CancelCode, OrderStatus, ShippingAddress};

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(v).unwrap_or_default()
}

/// An `orders` row as SQLite holds it: [`Order`] with its times as microseconds.
#[derive(Debug, FromRow)]
struct Row {
    id: Uuid,
    user_id: Uuid,
    status: OrderStatus,
    items: Json<Vec<PricedLine>>,
    total_minor: i64,
    currency: String,
    shipping_address: Option<Json<ShippingAddress>>,
    email: String,
    payment_method: String,
    workflow_id: Option<Uuid>,
    saga_status: Option<String>,
    cancel_code: Option<CancelCode>,
    cancel_reason: Option<String>,
    cancel_requested_at: Option<i64>,
    request_hash: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl From<Row> for Order {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            user_id: r.user_id,
            status: r.status,
            items: r.items,
            total_minor: r.total_minor,
            currency: r.currency,
            shipping_address: r.shipping_address,
            email: r.email,
            payment_method: r.payment_method,
            workflow_id: r.workflow_id,
            saga_status: r.saga_status,
            cancel_code: r.cancel_code,
            cancel_reason: r.cancel_reason,
            cancel_requested_at: r.cancel_requested_at.map(from_micros),
            request_hash: r.request_hash,
            created_at: from_micros(r.created_at),
            updated_at: from_micros(r.updated_at),
        }
    }
}

pub(super) async fn insert_with_intent(
    tx: &mut SqliteConnection,
    o: &NewOrderRow<'_>,
    now: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "insert into orders (id, user_id, items, total_minor, currency, shipping_address, email,
                             payment_method, idempotency_key, request_hash, created_at,
                             updated_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
         on conflict (user_id, idempotency_key) do nothing
         returning id",
    )
    .bind(o.id)
    .bind(o.user_id)
    .bind(Json(o.items))
    .bind(o.total_minor)
    .bind(o.currency)
    .bind(Json(o.shipping_address))
    .bind(o.email)
    .bind(o.payment_method)
    .bind(o.idempotency_key)
    .bind(o.request_hash)
    .bind(micros(now))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("insert into saga_starts (order_id, next_attempt_at) values ($1, $2)")
            .bind(id)
            .bind(micros(now))
            .execute(&mut *tx)
            .await?;
    }
    Ok(id)
}

pub(super) async fn by_key(
    db: impl SqliteExecutor<'_>,
    user: Uuid,
    key: &str,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "select {COLUMNS} from orders o where o.user_id = $1 and o.idempotency_key = $2"
    ))
    .bind(user)
    .bind(key)
    .fetch_optional(db)
    .await?;
    Ok(row.map(Order::from))
}

pub(super) async fn get(
    db: impl SqliteExecutor<'_>,
    id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    let row: Option<Row> =
        sqlx::query_as(&format!("select {COLUMNS} from orders o where o.id = $1"))
            .bind(id)
            .fetch_optional(db)
            .await?;
    Ok(row.map(Order::from))
}

pub(super) async fn list_for_user(
    db: impl SqliteExecutor<'_>,
    user: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    // Blobs compare bytewise, which for UUIDv7 is creation order, as `uuid < uuid` is in Postgres.
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "select {COLUMNS} from orders o
         where o.user_id = $1 and ($2 is null or o.id < $2)
         order by o.id desc limit $3"
    ))
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(Order::from).collect())
}

/// The caller's `BEGIN IMMEDIATE` transaction is the claim: no other starter can read the intent
/// until it commits, and by then the intent is gone or not due any more.
pub(super) async fn claim_start(
    tx: &mut SqliteConnection,
    only: Option<Uuid>,
    now: DateTime<Utc>,
) -> Result<Option<(Order, i32)>, sqlx::Error> {
    let claimed: Option<(Uuid, i32)> = sqlx::query_as(
        "select order_id, attempts from saga_starts
         where next_attempt_at <= $1 and ($2 is null or order_id = $2)
         order by next_attempt_at limit 1",
    )
    .bind(micros(now))
    .bind(only)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, attempts)) = claimed else {
        return Ok(None);
    };
    Ok(get(&mut *tx, id).await?.map(|o| (o, attempts)))
}

pub(super) async fn record_started(
    tx: &mut SqliteConnection,
    order: Uuid,
    workflow: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update orders set workflow_id = $2, saga_status = coalesce(saga_status, 'running'),
                updated_at = $3
         where id = $1",
    )
    .bind(order)
    .bind(workflow)
    .bind(micros(now))
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from saga_starts where order_id = $1")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

pub(super) async fn record_start_failure(
    tx: &mut SqliteConnection,
    order: Uuid,
    error: &str,
    backoff: Duration,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let next = micros(now).saturating_add(i64::try_from(backoff.as_micros()).unwrap_or(i64::MAX));
    sqlx::query(
        "update saga_starts set attempts = attempts + 1, last_error = $2, next_attempt_at = $3
         where order_id = $1",
    )
    .bind(order)
    .bind(error)
    .bind(next)
    .execute(tx)
    .await?;
    Ok(())
}

pub(super) async fn cancel_unstarted(
    tx: &mut SqliteConnection,
    order: Uuid,
    code: CancelCode,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let dropped = sqlx::query("delete from saga_starts where order_id = $1")
        .bind(order)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if dropped == 0 {
        return Ok(false);
    }
    sqlx::query(
        "update orders set status = 'cancelled', cancel_code = $2, cancel_reason = $3,
                updated_at = $4
         where id = $1 and status = 'pending'",
    )
    .bind(order)
    .bind(code)
    .bind(reason)
    .bind(micros(now))
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

pub(super) async fn mark_cancel_requested(
    db: impl SqliteExecutor<'_>,
    order: Uuid,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update orders set cancel_requested_at = coalesce(cancel_requested_at, $2),
                updated_at = $2
         where id = $1",
    )
    .bind(order)
    .bind(micros(now))
    .execute(db)
    .await?;
    Ok(())
}

/// One statement, so it needs no transaction: SQLite runs it under the write lock.
pub(super) async fn confirm(
    db: impl SqliteExecutor<'_>,
    o: &ConfirmRow<'_>,
    now: DateTime<Utc>,
) -> Result<OrderStatus, sqlx::Error> {
    sqlx::query_scalar(
        "insert into orders (id, user_id, status, items, total_minor, currency, email,
                             payment_method, workflow_id, saga_status, created_at, updated_at)
         values ($1, $2, 'confirmed', $3, $4, $5, $6, $7, $8, 'running', $9, $9)
         on conflict (id) do update
            set status = case when orders.status = 'pending' then 'confirmed'
                              else orders.status end,
                workflow_id = coalesce(orders.workflow_id, excluded.workflow_id),
                updated_at = excluded.updated_at
         returning status",
    )
    .bind(o.id)
    .bind(o.user_id)
    .bind(Json(o.items))
    .bind(o.total_minor)
    .bind(o.currency)
    .bind(o.email)
    .bind(o.payment_method)
    .bind(o.workflow_id)
    .bind(micros(now))
    .fetch_one(db)
    .await
}

pub(super) async fn cancel_for_compensation(
    db: impl SqliteExecutor<'_>,
    order: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "update orders set status = 'cancelled', cancel_code = coalesce(cancel_code, 'failed'),
                cancel_reason = coalesce(cancel_reason, 'the order saga compensated'),
                updated_at = $2
         where id = $1 and status <> 'cancelled'",
    )
    .bind(order)
    .bind(micros(now))
    .execute(db)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// SQLite evaluates every `set` expression on the row as it was, as Postgres does, so the
/// cancellation columns see the status before this update.
pub(super) async fn apply_finished(
    db: impl SqliteExecutor<'_>,
    order: Uuid,
    workflow: Uuid,
    saga_status: &str,
    change: &Change<'_>,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let n = sqlx::query(
        "update orders set
            status = case when $3 is null then status
                          when status = 'pending' then $3
                          when status = 'confirmed' and $6 then $3
                          else status end,
            cancel_code = case when $3 = 'cancelled' and (status <> 'confirmed' or $6)
                               then $4 else cancel_code end,
            cancel_reason = case when $3 = 'cancelled' and (status <> 'confirmed' or $6)
                                 then $5 else cancel_reason end,
            saga_status = $7,
            workflow_id = coalesce(workflow_id, $2),
            updated_at = $8
         where id = $1",
    )
    .bind(order)
    .bind(workflow)
    .bind(change.status)
    .bind(change.code)
    .bind(change.reason)
    .bind(change.may_undo_confirmation)
    .bind(saga_status)
    .bind(micros(now))
    .execute(db)
    .await?
    .rows_affected();
    Ok(n)
}
