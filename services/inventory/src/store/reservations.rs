//! The `reservations` and `reservation_items` tables: units held for a saga step, and how they
//! settle (committed when the saga completes, released when it does not or when they expire).
//!
//! Every function that moves units runs one transaction that sees and changes the rows together,
//! so two sagas can never both take the last unit: on Postgres by row locks in one order for
//! every writer (see `postgres.rs`), on SQLite by its single writer (see `sqlite.rs`).

mod postgres;
mod sqlite;

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use orderflow_service_kit::db::Db;
use uuid::Uuid;

use crate::model::ReservationStatus;

/// Which saga step a reservation belongs to: a step reserves at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRef {
    pub workflow_id: Uuid,
    pub step: String,
}

/// A reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: Uuid,
    pub workflow_id: Uuid,
    pub step: String,
    pub order_id: Option<Uuid>,
    pub status: ReservationStatus,
    pub expires_at: DateTime<Utc>,
    pub settle_reason: Option<String>,
    /// Product id and units, in product id order.
    pub items: Vec<(String, i32)>,
}

/// Why units could not be reserved. Only `Database` is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    #[error("no items to reserve")]
    NoItems,
    #[error("item {index}: quantity must be at least 1")]
    ZeroQuantity { index: usize },
    #[error("too many units of `{0}` in one reservation")]
    TooMany(String),
    #[error("unknown product(s): {}", .0.join(", "))]
    UnknownProducts(Vec<String>),
    #[error("out of stock: {}", describe_shortages(.0))]
    OutOfStock(Vec<Shortage>),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// One product that has fewer units on hand than asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub product_id: String,
    pub requested: i32,
    pub on_hand: i32,
}

fn describe_shortages(s: &[Shortage]) -> String {
    s.iter()
        .map(|s| {
            format!(
                "`{}` (asked {}, {} on hand)",
                s.product_id, s.requested, s.on_hand
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a reservation request asks for.
#[derive(Debug, Clone)]
pub struct ReserveRequest<'a> {
    pub step: &'a StepRef,
    pub idempotency_key: &'a str,
    pub order_id: Option<Uuid>,
    /// Product id and quantity per order line; lines of one product are added up.
    pub items: &'a [(String, u32)],
    /// How long the units are held if the saga never settles.
    pub ttl: Duration,
}

/// Holds every requested unit or none, once per step: a repeat returns the step's first
/// reservation whatever it asks for now, so a redelivered task can never reserve twice.
pub async fn reserve(db: &Db, req: &ReserveRequest<'_>) -> Result<Reservation, ReserveError> {
    let items = merge_items(req.items)?;
    match db {
        Db::Postgres(pool) => postgres::reserve(pool, req, &items).await,
        Db::Sqlite(pool) => sqlite::reserve(pool, req, &items).await,
    }
}

/// Adds up the lines per product; quantities must be positive and fit the stock columns.
fn merge_items(items: &[(String, u32)]) -> Result<BTreeMap<String, i32>, ReserveError> {
    if items.is_empty() {
        return Err(ReserveError::NoItems);
    }
    let mut merged: BTreeMap<String, i32> = BTreeMap::new();
    for (index, (id, q)) in items.iter().enumerate() {
        if *q == 0 {
            return Err(ReserveError::ZeroQuantity { index });
        }
        let q = i32::try_from(*q).map_err(|_| ReserveError::TooMany(id.clone()))?;
        let total = merged.entry(id.clone()).or_insert(0);
        *total = total
            .checked_add(q)
            .ok_or_else(|| ReserveError::TooMany(id.clone()))?;
    }
    Ok(merged)
}

/// The step's reservation with its items.
pub async fn find(db: &Db, step: &StepRef) -> Result<Option<Reservation>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::find(&mut *pool.acquire().await?, step).await,
        Db::Sqlite(pool) => sqlite::find(&mut *pool.acquire().await?, step).await,
    }
}

/// Every reservation of a workflow, with items, oldest first.
pub async fn for_workflow(db: &Db, workflow_id: Uuid) -> Result<Vec<Reservation>, sqlx::Error> {
    match db {
        Db::Postgres(pool) => {
            postgres::for_workflow(&mut *pool.acquire().await?, workflow_id).await
        }
        Db::Sqlite(pool) => sqlite::for_workflow(&mut *pool.acquire().await?, workflow_id).await,
    }
}

#[derive(sqlx::FromRow)]
struct ReservationRow {
    id: Uuid,
    workflow_id: Uuid,
    step: String,
    order_id: Option<Uuid>,
    status: String,
    expires_at: DateTime<Utc>,
    settle_reason: Option<String>,
}

impl ReservationRow {
    fn into_reservation(self, items: Vec<(String, i32)>) -> Reservation {
        Reservation {
            id: self.id,
            workflow_id: self.workflow_id,
            step: self.step,
            order_id: self.order_id,
            // The column's check constraint admits only the three statuses.
            status: ReservationStatus::parse(&self.status).unwrap_or(ReservationStatus::Released),
            expires_at: self.expires_at,
            settle_reason: self.settle_reason,
            items,
        }
    }
}

/// How a release ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The units went back on hand now.
    Now,
    /// It had been released or committed before; nothing changed.
    AlreadySettled(ReservationStatus),
    /// The step never reserved; a tombstone now keeps a late reserve from holding units.
    NeverReserved,
}

/// Gives the step's units back. Idempotent, and safe to run before (or instead of) the reserve:
/// the engine compensates a step whose attempt timed out, whose reserve may still be on its way,
/// so a missing reservation is recorded as released and a late reserve then finds it and holds
/// nothing.
pub async fn release(
    db: &Db,
    step: &StepRef,
    idempotency_key: &str,
    reason: &str,
) -> Result<Released, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::release(pool, step, idempotency_key, reason).await,
        Db::Sqlite(pool) => sqlite::release(pool, step, idempotency_key, reason).await,
    }
}

/// What a restock did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restocked {
    /// This many units moved from `sold` back to `on_hand`.
    Now(i64),
    /// The reservation was already restocked (a redelivered task, or a second return).
    Already,
    /// The order's reservation was never committed (sold): nothing to put back.
    NotSold,
}

/// Puts the units of `order`'s committed reservation back on hand, once per reservation
/// however many tasks (or returns) ask.
pub async fn restock(
    db: &Db,
    order: &StepRef,
    idempotency_key: &str,
    workflow_id: Uuid,
) -> Result<Restocked, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::restock(pool, order, idempotency_key, workflow_id).await,
        Db::Sqlite(pool) => sqlite::restock(pool, order, idempotency_key, workflow_id).await,
    }
}

/// Settles every live reservation of a finished workflow: committed if it completed, released
/// otherwise. Returns how many it settled; a repeat settles none.
pub async fn settle_workflow(
    db: &Db,
    workflow_id: Uuid,
    to: ReservationStatus,
    reason: &str,
) -> Result<usize, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::settle_workflow(pool, workflow_id, to, reason).await,
        Db::Sqlite(pool) => sqlite::settle_workflow(pool, workflow_id, to, reason).await,
    }
}

/// Releases up to `batch` reservations whose hold expired; returns how many. Replicas share the
/// work: on Postgres rows another sweeper holds are skipped.
pub async fn sweep_expired(db: &Db, batch: i64) -> Result<usize, sqlx::Error> {
    match db {
        Db::Postgres(pool) => postgres::sweep_expired(pool, batch).await,
        Db::Sqlite(pool) => sqlite::sweep_expired(pool, batch).await,
    }
}

/// When the next live reservation expires, if any.
pub async fn next_expiry(db: &Db) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let sql = "select min(expires_at) from reservations where status = 'reserved'";
    let (at,): (Option<DateTime<Utc>>,) = match db {
        Db::Postgres(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
        Db::Sqlite(pool) => sqlx::query_as(sql).fetch_one(pool).await?,
    };
    Ok(at)
}

/// Refuses unless every item names a product with enough units on hand.
fn check_stock(
    items: &BTreeMap<String, i32>,
    on_hand: &BTreeMap<String, i32>,
) -> Result<(), ReserveError> {
    let unknown: Vec<String> = items
        .keys()
        .filter(|id| !on_hand.contains_key(*id))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ReserveError::UnknownProducts(unknown));
    }
    let short: Vec<Shortage> = items
        .iter()
        .filter(|(id, q)| on_hand[*id] < **q)
        .map(|(id, q)| Shortage {
            product_id: id.clone(),
            requested: *q,
            on_hand: on_hand[id],
        })
        .collect();
    if short.is_empty() {
        Ok(())
    } else {
        Err(ReserveError::OutOfStock(short))
    }
}

/// Where a settlement moves a reservation's units: `(to on hand, to sold)`, each 0 or 1.
fn destination(to: ReservationStatus) -> (i32, i32) {
    match to {
        ReservationStatus::Released => (1, 0),
        ReservationStatus::Committed => (0, 1),
        ReservationStatus::Reserved => unreachable!("settling moves units out of `reserved`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_one_product_add_up() {
        let items = [
            ("b".to_owned(), 2),
            ("a".to_owned(), 1),
            ("b".to_owned(), 3),
        ];
        let merged = merge_items(&items).unwrap();
        assert_eq!(
            merged.into_iter().collect::<Vec<_>>(),
            [("a".into(), 1), ("b".into(), 5)]
        );
    }

    #[test]
    fn bad_quantities_are_refused() {
        assert!(matches!(merge_items(&[]), Err(ReserveError::NoItems)));
        assert!(matches!(
            merge_items(&[("a".into(), 1), ("b".into(), 0)]),
            Err(ReserveError::ZeroQuantity { index: 1 })
        ));
        assert!(matches!(
            merge_items(&[("a".into(), u32::MAX)]),
            Err(ReserveError::TooMany(_))
        ));
        let half = i32::MAX as u32;
        assert!(matches!(
            merge_items(&[("a".into(), half), ("a".into(), 1)]),
            Err(ReserveError::TooMany(_))
        ));
    }
}
