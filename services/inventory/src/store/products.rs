//! The `products` table: catalogue and stock counters.

mod postgres;
mod sqlite;

use chrono::{DateTime, Utc};
use orderflow_service_kit::db::Db;
use orderflow_workflows::order::contracts::Money;

use crate::model::{Price, Product, ProductName, Sku, Stock};

/// A product as both backends return it.
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
pub async fn list(db: &Db, after: Option<&str>, limit: i64) -> Result<Vec<Product>, sqlx::Error> {
    let rows = match db {
        Db::Postgres(pool) => postgres::list(pool, after, limit).await?,
        Db::Sqlite(pool) => sqlite::list(pool, after, limit).await?,
    };
    Ok(rows.into_iter().map(Product::from).collect())
}

/// The products among `ids` that exist, in id order.
pub async fn get_many(db: &Db, ids: &[String]) -> Result<Vec<Product>, sqlx::Error> {
    let rows = match db {
        Db::Postgres(pool) => postgres::get_many(pool, ids).await?,
        Db::Sqlite(pool) => sqlite::get_many(pool, ids).await?,
    };
    Ok(rows.into_iter().map(Product::from).collect())
}

pub async fn get(db: &Db, id: &str) -> Result<Option<Product>, sqlx::Error> {
    let row = match db {
        Db::Postgres(pool) => postgres::get(pool, id).await?,
        Db::Sqlite(pool) => sqlite::get(pool, id).await?,
    };
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
pub async fn create(db: &Db, p: &NewProduct) -> Result<Option<Product>, sqlx::Error> {
    let row = match db {
        Db::Postgres(pool) => postgres::create(pool, p).await?,
        Db::Sqlite(pool) => sqlite::create(pool, p).await?,
    };
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
    db: &Db,
    id: &str,
    changes: &ProductChanges,
) -> Result<Option<Product>, sqlx::Error> {
    let row = match db {
        Db::Postgres(pool) => postgres::update(pool, id, changes).await?,
        Db::Sqlite(pool) => sqlite::update(pool, id, changes).await?,
    };
    Ok(row.map(Product::from))
}

/// How many products there are.
pub async fn count(db: &Db) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = match db {
        Db::Postgres(pool) => {
            sqlx::query_as("select count(*) from products")
                .fetch_one(pool)
                .await?
        }
        Db::Sqlite(pool) => {
            sqlx::query_as("select count(*) from products")
                .fetch_one(pool)
                .await?
        }
    };
    Ok(n)
}
