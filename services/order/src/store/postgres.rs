//! The order tables in Postgres' dialect: the queries the service has always run. Each function
//! takes the caller's executor or transaction; row locks (`for update`, `skip locked`) serialize
//! concurrent writers.

use std::time::Duration;

use sqlx::{PgConnection, PgExecutor, types::Json};
use uuid::Uuid;

use super::{COLUMNS, Change, ConfirmRow, NewOrderRow, Order};
use crate::model::{CancelCode, OrderStatus};

/// Stores the order and the intent to start its saga, in the caller's transaction. `None` when
/// the user already used this idempotency key (a concurrent duplicate that lost the race).
pub(super) async fn insert_with_intent(
    tx: &mut PgConnection,
    o: &NewOrderRow<'_>,
) -> Result<Option<Uuid>, sqlx::Error> {
    let id: Option<Uuid> = sqlx::query_scalar(
        "insert into orders (id, user_id, items, total_minor, currency, shipping_address, email,
                             payment_method, idempotency_key, request_hash)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
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
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(id) = id {
        sqlx::query("insert into saga_starts (order_id) values ($1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(id)
}

pub(super) async fn by_key(
    db: impl PgExecutor<'_>,
    user: Uuid,
    key: &str,
) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from orders o where o.user_id = $1 and o.idempotency_key = $2"
    ))
    .bind(user)
    .bind(key)
    .fetch_optional(db)
    .await
}

pub(super) async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from orders o where o.id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The row, locked for the rest of the caller's transaction.
pub(super) async fn get_for_update(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Order>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from orders o where o.id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(tx)
    .await
}

/// A user's orders, newest first, after the cursor `before` (an order id).
pub(super) async fn list_for_user(
    db: impl PgExecutor<'_>,
    user: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from orders o
         where o.user_id = $1 and ($2::uuid is null or o.id < $2)
         order by o.id desc limit $3"
    ))
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Claims one due saga start (or the given order's, if it is due and not being started by
/// someone else), locking its intent row until the caller's transaction ends.
pub(super) async fn claim_start(
    tx: &mut PgConnection,
    only: Option<Uuid>,
) -> Result<Option<(Order, i32)>, sqlx::Error> {
    let claimed: Option<(Uuid, i32)> = sqlx::query_as(
        "select order_id, attempts from saga_starts
         where next_attempt_at <= now() and ($1::uuid is null or order_id = $1)
         order by next_attempt_at limit 1
         for update skip locked",
    )
    .bind(only)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, attempts)) = claimed else {
        return Ok(None);
    };
    Ok(get(&mut *tx, id).await?.map(|o| (o, attempts)))
}

/// The engine accepted the start: remember the workflow and drop the intent.
pub(super) async fn record_started(
    tx: &mut PgConnection,
    order: Uuid,
    workflow: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update orders set workflow_id = $2, saga_status = coalesce(saga_status, 'running'),
                updated_at = now()
         where id = $1",
    )
    .bind(order)
    .bind(workflow)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from saga_starts where order_id = $1")
        .bind(order)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The start failed and will be tried again after `backoff`.
pub(super) async fn record_start_failure(
    tx: &mut PgConnection,
    order: Uuid,
    error: &str,
    backoff: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update saga_starts set attempts = attempts + 1, last_error = $2,
                next_attempt_at = now() + make_interval(secs => $3)
         where order_id = $1",
    )
    .bind(order)
    .bind(error)
    .bind(backoff.as_secs_f64())
    .execute(tx)
    .await?;
    Ok(())
}

/// Cancels an order with no saga (not started yet, or refused by the engine) and drops the
/// intent. False if its saga has been started meanwhile: then only the saga can cancel it.
pub(super) async fn cancel_unstarted(
    tx: &mut PgConnection,
    order: Uuid,
    code: CancelCode,
    reason: &str,
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
                updated_at = now()
         where id = $1 and status = 'pending'",
    )
    .bind(order)
    .bind(code)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

pub(super) async fn mark_cancel_requested(
    db: impl PgExecutor<'_>,
    order: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update orders set cancel_requested_at = coalesce(cancel_requested_at, now()),
                updated_at = now()
         where id = $1",
    )
    .bind(order)
    .execute(db)
    .await?;
    Ok(())
}

/// Confirms an order (the saga's pivot), creating it from the saga input when the saga was
/// started directly on the engine. Returns the status it has afterwards: `cancelled` means the
/// order had been cancelled before and stays so.
pub(super) async fn confirm(
    db: impl PgExecutor<'_>,
    o: &ConfirmRow<'_>,
) -> Result<OrderStatus, sqlx::Error> {
    sqlx::query_scalar(
        "insert into orders (id, user_id, status, items, total_minor, currency, email,
                             payment_method, workflow_id, saga_status)
         values ($1, $2, 'confirmed', $3, $4, $5, $6, $7, $8, 'running')
         on conflict (id) do update
            set status = case when orders.status = 'pending' then 'confirmed'
                              else orders.status end,
                workflow_id = coalesce(orders.workflow_id, excluded.workflow_id),
                updated_at = now()
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
    .fetch_one(db)
    .await
}

/// Undoes a confirmation (`order.cancel`, the compensation). The precise reason arrives with the
/// saga's end; until then the order says that its saga is compensating.
pub(super) async fn cancel_for_compensation(
    db: impl PgExecutor<'_>,
    order: Uuid,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "update orders set status = 'cancelled', cancel_code = coalesce(cancel_code, 'failed'),
                cancel_reason = coalesce(cancel_reason, 'the order saga compensated'),
                updated_at = now()
         where id = $1 and status <> 'cancelled'",
    )
    .bind(order)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Applies the end of the order's saga. Idempotent (events are delivered at least once) and
/// never moves a confirmed order back, except for a compensation, which only happens when the
/// pivot itself failed.
pub(super) async fn apply_finished(
    db: impl PgExecutor<'_>,
    order: Uuid,
    workflow: Uuid,
    saga_status: &str,
    change: &Change<'_>,
) -> Result<u64, sqlx::Error> {
    let Change {
        status,
        code,
        reason,
        may_undo_confirmation,
    } = *change;
    let n = sqlx::query(
        "update orders set
            status = case when $3::text is null then status
                          when status = 'pending' then $3
                          when status = 'confirmed' and $6 then $3
                          else status end,
            cancel_code = case when $3 = 'cancelled' and (status <> 'confirmed' or $6)
                               then $4 else cancel_code end,
            cancel_reason = case when $3 = 'cancelled' and (status <> 'confirmed' or $6)
                                 then $5 else cancel_reason end,
            saga_status = $7,
            workflow_id = coalesce(workflow_id, $2),
            updated_at = now()
         where id = $1",
    )
    .bind(order)
    .bind(workflow)
    .bind(status)
    .bind(code)
    .bind(reason)
    .bind(may_undo_confirmation)
    .bind(saga_status)
    .execute(db)
    .await?
    .rows_affected();
    Ok(n)
}
