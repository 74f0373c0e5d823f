//! The payment database's statements on Postgres.

use sqlx::PgPool;
use uuid::Uuid;

use super::{ListFilter, RecordedEvent, StripeEvent};
use crate::model::{ChargeRequest, Payment, PaymentStatus};

const COLUMNS: &str = "id, idempotency_key, workflow_id, order_id, user_id, amount_minor, \
     currency, payment_method, status, stripe_attempt, payment_intent_id, failure_code, \
     failure_message, refund_id, refunded_at, created_at, updated_at";

pub(super) async fn insert_or_get(
    pool: &PgPool,
    key: &str,
    workflow_id: Uuid,
    req: &ChargeRequest,
    status: PaymentStatus,
) -> Result<Payment, sqlx::Error> {
    sqlx::query(
        "insert into payments (id, idempotency_key, workflow_id, order_id, user_id, amount_minor,
                               currency, payment_method, status)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (idempotency_key) do nothing",
    )
    .bind(Uuid::now_v7())
    .bind(key)
    .bind(workflow_id)
    .bind(req.order_id)
    .bind(req.user_id)
    .bind(req.amount_minor)
    .bind(&req.currency)
    .bind(&req.payment_method)
    .bind(status.as_str())
    .execute(pool)
    .await?;
    // A separate statement: one that also selected would not see a row another transaction
    // committed while our insert waited on it.
    by_key(pool, key).await?.ok_or(sqlx::Error::RowNotFound)
}

pub(super) async fn by_key(pool: &PgPool, key: &str) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from payments where idempotency_key = $1"
    ))
    .bind(key)
    .fetch_optional(pool)
    .await
}

pub(super) async fn get(pool: &PgPool, id: Uuid) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from payments where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn mark_succeeded(
    pool: &PgPool,
    id: Uuid,
    payment_intent_id: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query(
        "update payments set status = 'succeeded', payment_intent_id = $2,
                failure_code = null, failure_message = null, updated_at = now()
         where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(payment_intent_id)
    .execute(pool)
    .await?;
    get(pool, id).await
}

pub(super) async fn mark_declined(
    pool: &PgPool,
    id: Uuid,
    payment_intent_id: Option<&str>,
    code: &str,
    message: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query(
        "update payments set status = 'declined',
                payment_intent_id = coalesce($2, payment_intent_id),
                failure_code = $3, failure_message = $4, updated_at = now()
         where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(payment_intent_id)
    .bind(code)
    .bind(message)
    .execute(pool)
    .await?;
    get(pool, id).await
}

pub(super) async fn note_failure(
    pool: &PgPool,
    id: Uuid,
    code: &str,
    message: &str,
    fresh_key: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update payments set failure_code = $2, failure_message = $3,
                stripe_attempt = stripe_attempt + $4, updated_at = now()
         where id = $1 and status = 'pending'",
    )
    .bind(id)
    .bind(code)
    .bind(message)
    .bind(i32::from(fresh_key))
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn mark_refunded(
    pool: &PgPool,
    id: Uuid,
    refund_id: Option<&str>,
) -> Result<Option<Payment>, sqlx::Error> {
    sqlx::query(
        "update payments set status = 'refunded', refund_id = $2, refunded_at = now(),
                updated_at = now()
         where id = $1 and status = 'succeeded'",
    )
    .bind(id)
    .bind(refund_id)
    .execute(pool)
    .await?;
    get(pool, id).await
}

pub(super) async fn list(pool: &PgPool, f: &ListFilter) -> Result<Vec<Payment>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from payments
         where ($1::text is null or status = $1)
           and ($2::uuid is null or order_id = $2)
           and ($3::uuid is null or id < $3)
         order by id desc limit $4"
    ))
    .bind(f.status.map(PaymentStatus::as_str))
    .bind(f.order_id)
    .bind(f.before)
    .bind(f.limit)
    .fetch_all(pool)
    .await
}

pub(super) async fn record_event(
    pool: &PgPool,
    event: &StripeEvent<'_>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "insert into stripe_events (id, type, payment_intent_id, payload) values ($1, $2, $3, $4)
         on conflict (id) do nothing",
    )
    .bind(event.id)
    .bind(event.kind)
    .bind(event.payment_intent_id)
    .bind(&event.payload)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(super) async fn events_of(
    pool: &PgPool,
    payment_intent_id: &str,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    sqlx::query_as(
        "select id, type, payment_intent_id, received_at from stripe_events
         where payment_intent_id = $1 order by received_at, id",
    )
    .bind(payment_intent_id)
    .fetch_all(pool)
    .await
}
