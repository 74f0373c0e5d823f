//! A small demo catalogue, so `orderflow up` can take orders on a fresh database.

use orderflow_service_kit::db::Db;

use crate::{
    model::{Price, ProductName, Sku},
    store::products::{self, NewProduct},
};

/// Demo products: id, name, description, price in cents (EUR), units on hand.
const DEMO: &[(&str, &str, &str, i64, i32)] = &[
    ("sku-1", "Espresso cup", "Porcelain, 80 ml", 1299, 100),
    (
        "sku-2",
        "Coffee beans 1 kg",
        "Single origin, medium roast",
        2599,
        250,
    ),
    ("sku-3", "Hand grinder", "Ceramic burrs", 4900, 40),
    ("sku-4", "Milk jug", "Stainless steel, 350 ml", 1850, 80),
    ("sku-5", "Pour-over kettle", "Gooseneck, 1 l", 5900, 25),
];

/// Inserts the demo products if the catalogue is empty; returns how many it inserted. Running it
/// twice (or from two processes) inserts them once: ids are fixed and inserts skip taken ones.
pub async fn seed_demo_products(db: &Db) -> Result<usize, sqlx::Error> {
    if products::count(db).await? > 0 {
        return Ok(0);
    }
    let mut inserted = 0;
    for (id, name, description, price, on_hand) in DEMO {
        let product = NewProduct {
            id: Sku::parse(id).expect("demo ids are valid"),
            name: ProductName::parse(name).expect("demo names are valid"),
            description: (*description).to_owned(),
            price: Price::new(*price, "EUR").expect("demo prices are valid"),
            on_hand: *on_hand,
        };
        if products::create(db, &product).await?.is_some() {
            inserted += 1;
        }
    }
    Ok(inserted)
}
