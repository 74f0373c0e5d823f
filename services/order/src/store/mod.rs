//! The `orders` and `saga_starts` tables, on either backend of [`Db`]. Each function takes the
//! database or the caller's [`Tx`] and runs the query in that backend's dialect:
//!
//! - [`postgres`]: the production queries; row locks serialize concurrent writers.
//! - [`sqlite`]: the same rows for `orderflow dev`; a write transaction takes the database's
//!   single write lock when it begins, which serializes writers as the row locks do.
//!
//! The rules (an order once per idempotency key, a start claimed by one starter, which statuses
//! may follow which) are the same on both, and `tests/store_conformance.rs` holds both to them.

mod postgres;
mod sqlite;

use std::time::Duration;

use chrono::{DateTime, Utc};
use orderflow_service_kit::db::Db;
use serde::{Deserialize, Serialize};
use sqlx::{prelude::FromRow, types::Json};
use uuid::Uuid;

use crate::model::{CancelCode, OrderStatus, ShippingAddress};

/// One line as priced when the order was placed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PricedLine {
    pub product_id: String,
    pub quantity: u32,
    /// Absent for orders that arrived through a saga started directly on the engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_price_minor: Option<i64>,
}

/// An order row.
#[derive(Clone, Debug, FromRow)]
pub struct Order {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: OrderStatus,
    pub items: Json<Vec<PricedLine>>,
    pub total_minor: i64,
    pub currency: String,
    pub shipping_address: Option<Json<ShippingAddress>>,
    pub email: String,
    pub payment_method: String,
    pub workflow_id: Option<Uuid>,
    pub saga_status: Option<String>,
    pub cancel_code: Option<CancelCode>,
    pub cancel_reason: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub request_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "o.id, o.user_id, o.status, o.items, o.total_minor, o.currency, \
    o.shipping_address, o.email, o.payment_method, o.workflow_id, o.saga_status, o.cancel_code, \
    o.cancel_reason, o.cancel_requested_at, o.request_hash, o.created_at, o.updated_at";

/// What `POST /orders` stores.
#[derive(Debug)]
pub struct NewOrderRow<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub items: &'a [PricedLine],
    pub total_minor: i64,
    pub currency: &'a str,
    pub shipping_address: &'a ShippingAddress,
    pub email: &'a str,
    pub payment_method: &'a str,
    pub idempotency_key: &'a str,
    pub request_hash: &'a str,
}

/// What `order.create` knows from the saga input.
#[derive(Debug)]
pub struct ConfirmRow<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub items: &'a [PricedLine],
    pub total_minor: i64,
    pub currency: &'a str,
    pub email: &'a str,
    pub payment_method: &'a str,
    pub workflow_id: Uuid,
}

/// How a finished saga changes its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The saga completed: the order is confirmed.
    Confirmed,
    /// The saga compensated, was cancelled or terminated before confirming.
    Cancelled { code: CancelCode, reason: String },
    /// Only the saga's status changes (needs attention).
    Noted,
}

/// A write transaction on either backend. On SQLite it begins with `BEGIN IMMEDIATE`, taking
/// the write lock at once: a deferred transaction that reads and then writes fails with
/// `SQLITE_BUSY` when another writer got there first, instead of waiting its turn.
#[derive(Debug)]
pub enum Tx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

impl Tx {
    pub async fn begin(db: &Db) -> Result<Self, sqlx::Error> {
        Ok(match db {
            Db::Postgres(p) => Self::Postgres(p.begin().await?),
            Db::Sqlite(p) => Self::Sqlite(p.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.commit().await,
            Self::Sqlite(tx) => tx.commit().await,
        }
    }

    /// Rolls back now. Dropping a transaction rolls it back too, but only when its connection
    /// is next used, so on Postgres its row locks outlive the drop.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Self::Postgres(tx) => tx.rollback().await,
            Self::Sqlite(tx) => tx.rollback().await,
        }
    }
}

/// Stores the order and the intent to start its saga, in the caller's transaction. `None` when
/// the user already used this idempotency key (a concurrent duplicate that lost the race).
pub async fn insert_with_intent(
    tx: &mut Tx,
    o: &NewOrderRow<'_>,
) -> Result<Option<Uuid>, sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::insert_with_intent(tx, o).await,
        Tx::Sqlite(tx) => sqlite::insert_with_intent(tx, o, Utc::now()).await,
    }
}

/// The user's order placed with the Idempotency-Key `key`.
pub async fn by_key(db: &Db, user: Uuid, key: &str) -> Result<Option<Order>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::by_key(p, user, key).await,
        Db::Sqlite(p) => sqlite::by_key(p, user, key).await,
    }
}

pub async fn get(db: &Db, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::get(p, id).await,
        Db::Sqlite(p) => sqlite::get(p, id).await,
    }
}

/// The row, locked for the rest of the caller's transaction (on SQLite the transaction holds
/// the write lock already).
pub async fn get_for_update(tx: &mut Tx, id: Uuid) -> Result<Option<Order>, sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::get_for_update(tx, id).await,
        Tx::Sqlite(tx) => sqlite::get(&mut **tx, id).await,
    }
}

/// A user's orders, newest first, after the cursor `before` (an order id).
pub async fn list_for_user(
    db: &Db,
    user: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Order>, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::list_for_user(p, user, before, limit).await,
        Db::Sqlite(p) => sqlite::list_for_user(p, user, before, limit).await,
    }
}

/// Claims one due saga start (or the given order's, if it is due and not being started by
/// someone else), holding it until the caller's transaction ends; with its failed attempts.
pub async fn claim_start(
    tx: &mut Tx,
    only: Option<Uuid>,
) -> Result<Option<(Order, i32)>, sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::claim_start(tx, only).await,
        Tx::Sqlite(tx) => sqlite::claim_start(tx, only, Utc::now()).await,
    }
}

/// The engine accepted the start: remember the workflow and drop the intent.
pub async fn record_started(tx: &mut Tx, order: Uuid, workflow: Uuid) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::record_started(tx, order, workflow).await,
        Tx::Sqlite(tx) => sqlite::record_started(tx, order, workflow, Utc::now()).await,
    }
}

/// The start failed and will be tried again after `backoff`.
pub async fn record_start_failure(
    tx: &mut Tx,
    order: Uuid,
    error: &str,
    backoff: Duration,
) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::record_start_failure(tx, order, error, backoff).await,
        Tx::Sqlite(tx) => sqlite::record_start_failure(tx, order, error, backoff, Utc::now()).await,
    }
}

/// Cancels an order with no saga (not started yet, or refused by the engine) and drops the
/// intent. False if its saga has been started meanwhile: then only the saga can cancel it.
pub async fn cancel_unstarted(
    tx: &mut Tx,
    order: Uuid,
    code: CancelCode,
    reason: &str,
) -> Result<bool, sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::cancel_unstarted(tx, order, code, reason).await,
        Tx::Sqlite(tx) => sqlite::cancel_unstarted(tx, order, code, reason, Utc::now()).await,
    }
}

/// Notes that the owner asked to cancel (the first time only), so that the saga's end can be
/// attributed to them.
pub async fn mark_cancel_requested(tx: &mut Tx, order: Uuid) -> Result<(), sqlx::Error> {
    match tx {
        Tx::Postgres(tx) => postgres::mark_cancel_requested(&mut **tx, order).await,
        Tx::Sqlite(tx) => sqlite::mark_cancel_requested(&mut **tx, order, Utc::now()).await,
    }
}

/// Confirms an order (the saga's pivot), creating it from the saga input when the saga was
/// started directly on the engine. Returns the status it has afterwards: `cancelled` means the
/// order had been cancelled before and stays so.
pub async fn confirm(db: &Db, o: &ConfirmRow<'_>) -> Result<OrderStatus, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::confirm(p, o).await,
        Db::Sqlite(p) => sqlite::confirm(p, o, Utc::now()).await,
    }
}

/// Undoes a confirmation (`order.cancel`, the compensation). The precise reason arrives with the
/// saga's end; until then the order says that its saga is compensating.
pub async fn cancel_for_compensation(db: &Db, order: Uuid) -> Result<bool, sqlx::Error> {
    match db {
        Db::Postgres(p) => postgres::cancel_for_compensation(p, order).await,
        Db::Sqlite(p) => sqlite::cancel_for_compensation(p, order, Utc::now()).await,
    }
}

/// Applies the end of the order's saga. Idempotent (events are delivered at least once) and
/// never moves a confirmed order back, except for a compensation, which only happens when the
/// pivot itself failed.
pub async fn apply_finished(
    tx: &mut Tx,
    order: Uuid,
    workflow: Uuid,
    saga_status: &str,
    outcome: &Outcome,
) -> Result<u64, sqlx::Error> {
    let change = Change::of(saga_status, outcome);
    match tx {
        Tx::Postgres(tx) => {
            postgres::apply_finished(&mut **tx, order, workflow, saga_status, &change).await
        }
        Tx::Sqlite(tx) => {
            sqlite::apply_finished(&mut **tx, order, workflow, saga_status, &change, Utc::now())
                .await
        }
    }
}

/// An [`Outcome`] as the columns it sets: the status, the cancellation, and whether it may undo
/// a confirmation.
#[derive(Clone, Copy, Debug)]
struct Change<'a> {
    status: Option<&'a str>,
    code: Option<CancelCode>,
    reason: Option<&'a str>,
    may_undo_confirmation: bool,
}

impl<'a> Change<'a> {
    fn of(saga_status: &str, outcome: &'a Outcome) -> Self {
        let (status, code, reason, may_undo_confirmation) = match outcome {
            Outcome::Confirmed => (Some("confirmed"), None, None, false),
            Outcome::Cancelled { code, reason } => (
                Some("cancelled"),
                Some(*code),
                Some(reason.as_str()),
                saga_status == "compensated",
            ),
            Outcome::Noted => (None, None, None, false),
        };
        Self {
            status,
            code,
            reason,
            may_undo_confirmation,
        }
    }
}
