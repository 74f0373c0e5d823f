//! The `reservations` and `reservation_items` tables: units held for a saga step, and how they
//! settle (committed when the saga completes, released when it does not or when they expire).
//!
//! Lock order, the same for every writer so that none can deadlock another: a reservation row
//! first, then the products it names in id order. `reserve` inserts its (new) reservation row
//! before locking products, and the settling paths lock the reservation rows they settle before
//! the products.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
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
pub async fn reserve(pool: &PgPool, req: &ReserveRequest<'_>) -> Result<Reservation, ReserveError> {
    let items = merge_items(req.items)?;
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
    let on_hand: BTreeMap<String, i32> = on_hand.into_iter().collect();
    let unknown: Vec<String> = ids
        .iter()
        .filter(|id| !on_hand.contains_key(*id))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        // Dropping the transaction rolls back the reservation row too, so nothing is left.
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
    if !short.is_empty() {
        return Err(ReserveError::OutOfStock(short));
    }

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
pub async fn find(
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
            let items: Vec<(String, i32)> = sqlx::query_as(
                "select product_id, quantity from reservation_items
                 where reservation_id = $1 order by product_id",
            )
            .bind(row.id)
            .fetch_all(conn)
            .await?;
            Ok(Some(row.into_reservation(items)))
        }
    }
}

/// Every reservation of a workflow, with items, oldest first.
pub async fn for_workflow(
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
        let items: Vec<(String, i32)> = sqlx::query_as(
            "select product_id, quantity from reservation_items
             where reservation_id = $1 order by product_id",
        )
        .bind(row.id)
        .fetch_all(&mut *conn)
        .await?;
        out.push(row.into_reservation(items));
    }
    Ok(out)
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

/// Settles every live reservation of a finished workflow: committed if it completed, released
/// otherwise. Returns how many it settled; a repeat settles none.
pub async fn settle_workflow(
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

/// Releases up to `batch` reservations whose hold expired; returns how many. Replicas share the
/// work: rows another sweeper holds are skipped.
pub async fn sweep_expired(pool: &PgPool, batch: i64) -> Result<usize, sqlx::Error> {
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

/// When the next live reservation expires, if any.
pub async fn next_expiry(pool: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let (at,): (Option<DateTime<Utc>>,) =
        sqlx::query_as("select min(expires_at) from reservations where status = 'reserved'")
            .fetch_one(pool)
            .await?;
    Ok(at)
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
    let (to_on_hand, to_sold) = match to {
        ReservationStatus::Released => (1, 0),
        ReservationStatus::Committed => (0, 1),
        ReservationStatus::Reserved => unreachable!("settling moves units out of `reserved`"),
    };
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
