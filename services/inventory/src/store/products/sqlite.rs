//! The `products` statements in SQLite's dialect: an `in (…)` list for an array, and times
//! bound from the clock (migrations/sqlite/inventory says why).

use chrono::Utc;
use sqlx::SqlitePool;

use super::{COLUMNS, NewProduct, ProductChanges, Row};
use crate::{
    model::{Price, ProductName},
    store::placeholders,
};

pub(super) async fn list(
    pool: &SqlitePool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from products where ?1 is null or id > ?1 order by id limit ?2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub(super) async fn get_many(pool: &SqlitePool, ids: &[String]) -> Result<Vec<Row>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "select {COLUMNS} from products where id in ({}) order by id",
        placeholders(ids.len())
    );
    let mut query = sqlx::query_as(&sql);
    for id in ids {
        query = query.bind(id);
    }
    query.fetch_all(pool).await
}

pub(super) async fn get(pool: &SqlitePool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from products where id = ?1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn create(pool: &SqlitePool, p: &NewProduct) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "insert into products
             (id, name, description, price_minor, currency, on_hand, created_at, updated_at)
         values (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
         on conflict (id) do nothing
         returning {COLUMNS}"
    ))
    .bind(p.id.as_str())
    .bind(p.name.as_str())
    .bind(&p.description)
    .bind(p.price.amount_minor())
    .bind(p.price.currency())
    .bind(p.on_hand)
    .bind(Utc::now())
    .fetch_optional(pool)
    .await
}

pub(super) async fn update(
    pool: &SqlitePool,
    id: &str,
    changes: &ProductChanges,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "update products set
             name = coalesce(?2, name),
             description = coalesce(?3, description),
             price_minor = coalesce(?4, price_minor),
             currency = coalesce(?5, currency),
             on_hand = coalesce(?6, on_hand),
             updated_at = ?7
         where id = ?1
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(changes.name.as_ref().map(ProductName::as_str))
    .bind(changes.description.as_deref())
    .bind(changes.price.as_ref().map(Price::amount_minor))
    .bind(changes.price.as_ref().map(Price::currency))
    .bind(changes.on_hand)
    .bind(Utc::now())
    .fetch_optional(pool)
    .await
}
