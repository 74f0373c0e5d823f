//! The `products` statements in Postgres's dialect.

use sqlx::PgPool;

use super::{COLUMNS, NewProduct, ProductChanges, Row};
use crate::model::{Price, ProductName};

pub(super) async fn list(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from products where $1::text is null or id > $1 order by id limit $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub(super) async fn get_many(pool: &PgPool, ids: &[String]) -> Result<Vec<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "select {COLUMNS} from products where id = any($1) order by id"
    ))
    .bind(ids)
    .fetch_all(pool)
    .await
}

pub(super) async fn get(pool: &PgPool, id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!("select {COLUMNS} from products where id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

pub(super) async fn create(pool: &PgPool, p: &NewProduct) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "insert into products (id, name, description, price_minor, currency, on_hand)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (id) do nothing
         returning {COLUMNS}"
    ))
    .bind(p.id.as_str())
    .bind(p.name.as_str())
    .bind(&p.description)
    .bind(p.price.amount_minor())
    .bind(p.price.currency())
    .bind(p.on_hand)
    .fetch_optional(pool)
    .await
}

pub(super) async fn update(
    pool: &PgPool,
    id: &str,
    changes: &ProductChanges,
) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as(&format!(
        "update products set
             name = coalesce($2, name),
             description = coalesce($3, description),
             price_minor = coalesce($4, price_minor),
             currency = coalesce($5, currency),
             on_hand = coalesce($6, on_hand),
             updated_at = now()
         where id = $1
         returning {COLUMNS}"
    ))
    .bind(id)
    .bind(changes.name.as_ref().map(ProductName::as_str))
    .bind(changes.description.as_deref())
    .bind(changes.price.as_ref().map(Price::amount_minor))
    .bind(changes.price.as_ref().map(Price::currency))
    .bind(changes.on_hand)
    .fetch_optional(pool)
    .await
}
