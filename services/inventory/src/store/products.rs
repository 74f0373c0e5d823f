//! The `products` table: catalogue and stock counters.

use chrono::{DateTime, Utc};
use orderflow_activities::contracts::Money;
use sqlx::PgConnection;

use crate::model::{Price, Product, ProductName, Sku, Stock};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    description: String,
    price_minor: i64,
    currency: String,
    on_hand: i32,
    reserved: i32,
    sold: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<Row> for Product {
    fn from(r: Row) -> Self {
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            price: Money {
                amount_minor: r.price_minor,
                currency: r.currency,
            },
            stock: Stock {
                on_hand: r.on_hand,
                reserved: r.reserved,
                sold: r.sold,
            },
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

const COLUMNS: &str = "id, name, description, price_minor, currency, on_hand, reserved, sold, \
                       created_at, updated_at";

/// A page of products in id order, starting after `after`.
pub async fn list(
    conn: &mut PgConnection,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Product>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "select {COLUMNS} from products where $1::text is null or id > $1 order by id limit $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Product::from).collect())
}

/// The products among `ids` that exist, in id order.
pub async fn get_many(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<Vec<Product>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "select {COLUMNS} from products where id = any($1) order by id"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(Product::from).collect())
}

pub async fn get(conn: &mut PgConnection, id: &str) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("select {COLUMNS} from products where id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(row.map(Product::from))
}

/// A product to add to the catalogue.
#[derive(Debug, Clone)]
pub struct NewProduct {
    pub id: Sku,
    pub name: ProductName,
    pub description: String,
    pub price: Price,
    pub on_hand: i32,
}

/// Inserts the product; `None` if the id is taken.
pub async fn create(
    conn: &mut PgConnection,
    p: &NewProduct,
) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
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
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Product::from))
}

/// The fields an admin may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ProductChanges {
    pub name: Option<ProductName>,
    pub description: Option<String>,
    pub price: Option<Price>,
    /// Sets the units free to reserve (a stock count or a restock); reserved and sold units are
    /// the sagas' and cannot be set.
    pub on_hand: Option<i32>,
}

/// Applies `changes`; `None` if there is no such product.
pub async fn update(
    conn: &mut PgConnection,
    id: &str,
    changes: &ProductChanges,
) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
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
    .fetch_optional(conn)
    .await?;
    Ok(row.map(Product::from))
}

/// How many products there are.
pub async fn count(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("select count(*) from products")
        .fetch_one(conn)
        .await?;
    Ok(n)
}
