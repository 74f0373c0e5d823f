//! The payment database, one function per statement, each taking the [`Db`] from the caller and
//! running the statement in its backend's dialect ([`postgres`] in production, [`sqlite`] under
//! `orderflow dev`); both hold the same rows and keep the same promises.
//!
//! Every transition is a conditional `update ... where status = ...`, so a late or repeated
//! writer (a redelivered task, a webhook racing phase 3) changes nothing it should not; the
//! caller then reads the row to see what won.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use orderflow_service_kit::db::Db;
use serde_json::Value;
use uuid::Uuid;

use crate::model::{ChargeRequest, Payment, PaymentStatus};

/// Phase 1: records the payment `status` under the step's key unless the step already has one,
/// and returns the step's payment, new or old.
pub async fn insert_or_get(
    db: &Db,
    key: &str,
    workflow_id: Uuid,
    req: &ChargeRequest,
    status: PaymentStatus,
) -> Result<Payment, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::insert_or_get(p, key, workflow_id, req, status).await,
        Db::Sqlite(p) => sqlite::insert_or_get(p, key, workflow_id, req, status).await,
    }
}

/// The step's payment, by the step's idempotency key.
pub async fn by_key(db: &Db, key: &str) -> Result<Option<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::by_key(p, key).await,
        Db::Sqlite(p) => sqlite::by_key(p, key).await,
    }
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::get(p, id).await,
        Db::Sqlite(p) => sqlite::get(p, id).await,
    }
}

/// Phase 3 of a successful charge (or a webhook that saw it first): pending to succeeded with
/// the intent's id. Returns the row as it is afterwards.
pub async fn mark_succeeded(
    db: &Db,
    id: Uuid,
    payment_intent_id: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::mark_succeeded(p, id, payment_intent_id).await,
        Db::Sqlite(p) => sqlite::mark_succeeded(p, id, payment_intent_id).await,
    }
}

/// Phase 3 of a declined charge.
pub async fn mark_declined(
    db: &Db,
    id: Uuid,
    payment_intent_id: Option<&str>,
    code: &str,
    message: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::mark_declined(p, id, payment_intent_id, code, message).await,
        Db::Sqlite(p) => sqlite::mark_declined(p, id, payment_intent_id, code, message).await,
    }
}

/// Notes a failed attempt on a pending payment. `fresh_key`: Stripe's answer for the current
/// key was definite (it will replay it), so the next attempt must use a new key to be tried
/// again; never set after an unknown outcome.
pub async fn note_failure(
    db: &Db,
    id: Uuid,
    code: &str,
    message: &str,
    fresh_key: bool,
) -> Result<(), sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::note_failure(p, id, code, message, fresh_key).await,
        Db::Sqlite(p) => sqlite::note_failure(p, id, code, message, fresh_key).await,
    }
}

/// The refund is done: succeeded to refunded.
pub async fn mark_refunded(
    db: &Db,
    id: Uuid,
    refund_id: Option<&str>,
) -> Result<Option<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::mark_refunded(p, id, refund_id).await,
        Db::Sqlite(p) => sqlite::mark_refunded(p, id, refund_id).await,
    }
}

/// Filters of the admin list.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub status: Option<PaymentStatus>,
    pub order_id: Option<Uuid>,
    /// Only payments older than this id (the previous page's last).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// Newest first (ids are UUIDv7, so id order is creation order).
pub async fn list(db: &Db, f: &ListFilter) -> Result<Vec<Payment>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::list(p, f).await,
        Db::Sqlite(p) => sqlite::list(p, f).await,
    }
}

/// One verified Stripe event.
#[derive(Clone, Debug)]
pub struct StripeEvent<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub payment_intent_id: Option<&'a str>,
    pub payload: Value,
}

/// Records `event` once; false if it was already recorded (a redelivery).
pub async fn record_event(db: &Db, event: &StripeEvent<'_>) -> Result<bool, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::record_event(p, event).await,
        Db::Sqlite(p) => sqlite::record_event(p, event).await,
    }
}

/// A recorded event, for the admin API and tests.
#[derive(Clone, Debug, PartialEq, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RecordedEvent {
    pub id: String,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    pub payment_intent_id: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// The events about one PaymentIntent, oldest first.
pub async fn events_of(
    db: &Db,
    payment_intent_id: &str,
) -> Result<Vec<RecordedEvent>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::events_of(p, payment_intent_id).await,
        Db::Sqlite(p) => sqlite::events_of(p, payment_intent_id).await,
    }
}
