//! What the inventory service's test files share.

use orderflow_inventory::{
    model::{Price, ProductName, Sku, Stock},
    store::products::{self, NewProduct},
};
use orderflow_service_kit::db::Db;

/// Adds product `id` (10.00 EUR) with `on_hand` units.
pub async fn add_product(db: &Db, id: &str, on_hand: i32) -> anyhow::Result<()> {
    products::create(
        db,
        &NewProduct {
            id: Sku::parse(id)?,
            name: ProductName::parse(id)?,
            description: String::new(),
            price: Price::new(1000, "EUR")?,
            on_hand,
        },
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("product {id} exists"))?;
    Ok(())
}

/// Product `id`'s stock counters.
pub async fn stock(db: &Db, id: &str) -> anyhow::Result<Stock> {
    Ok(products::get(db, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no product {id}"))?
        .stock)
}

pub fn stock_of(on_hand: i32, reserved: i32, sold: i32) -> Stock {
    Stock {
        on_hand,
        reserved,
        sold,
    }
}
