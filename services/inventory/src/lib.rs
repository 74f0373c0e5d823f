//! The inventory service: the catalogue (products with a price and stock) and the order saga's
//! first step, reserving stock, done so that concurrent sagas can never oversell.
//!
//! Stock is three counters per product, `on_hand`, `reserved` and `sold`; a reservation moves
//! units from on hand to reserved (all of an order's items or none), and settles when its saga
//! does: committed (reserved to sold) when the saga completes, released (back on hand) when it
//! compensates, is cancelled, or when the reservation expires.
//!
//! - [`model`]: checked domain types (`Sku`, `Price`, `Stock`, reservation status).
//! - [`store`]: the tables, one module each: [`store::products`], [`store::reservations`]
//!   (reserve, release, settle, sweep), on Postgres or on embedded SQLite (`orderflow dev`), as
//!   the service's [`Db`] is.
//! - [`activities`]: `inventory.reserve` and `inventory.release` for the worker runtime.
//! - [`settle`]: follows `WorkflowFinished` events to commit or release a saga's reservations.
//! - [`sweeper`]: releases reservations whose saga never settled within the TTL.
//! - [`api`]: the REST API (public catalogue, admin writes and inspection).
//! - [`seed`]: the demo catalogue for `orderflow up`.
//! - [`config`]: [`InventoryConfig`] and its defaults.
//! - [`metrics`]: reservation counters on `/metrics`.

pub mod activities;
pub mod api;
pub mod config;
pub mod metrics;
pub mod model;
pub mod seed;
pub mod settle;
pub mod store;
pub mod sweeper;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_activities::{follower::Subscription, worker::Handler};
use orderflow_core::protocol::finished_routing_key;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    http::{self, Readiness},
    parts::{Follower, ServiceParts},
};
use orderflow_workflows::order::ORDER_SAGA;
use sqlx::migrate::Migrator;

pub use activities::handlers as activity_handlers;
pub use api::AppState;
pub use config::InventoryConfig;
pub use seed::seed_demo_products;

/// The service's name in metrics, queue names and logs.
pub const SERVICE: &str = "inventory";

/// The inventory database's migrations (`migrations/inventory`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/inventory");
    // Another service's versions in the same database (never in production) are not ours to judge.
    m.set_ignore_missing(true);
    m
}

/// The inventory database's migrations on both backends (`migrations/inventory` and
/// `migrations/sqlite/inventory`).
pub fn migrations() -> Migrations {
    Migrations {
        postgres: migrator(),
        sqlite: sqlx::migrate!("../../migrations/sqlite/inventory"),
    }
}

/// The whole HTTP app: `/api/v1` plus `/health`, `/ready`, `/metrics`.
pub fn router(state: AppState, ready: Readiness) -> axum::Router {
    http::app(SERVICE, api::routes(state), ready)
}

/// The activity handlers for a worker (reserve with the configured hold time, release).
pub fn handlers(db: Db, config: &InventoryConfig) -> Vec<Arc<dyn Handler>> {
    activities::handlers(db, config.reservation_ttl)
}

/// The activities its workers do.
pub const ACTIVITIES: &[&str] = &[
    orderflow_workflows::order::contracts::INVENTORY_RESERVE,
    orderflow_workflows::order::contracts::INVENTORY_RELEASE,
    orderflow_workflows::returns::contracts::INVENTORY_RESTOCK,
];

/// What the service follows: the order saga's end.
pub fn subscription() -> Subscription {
    Subscription::new(SERVICE, finished_routing_key(ORDER_SAGA))
}

/// Connects to the database the URL names (Postgres, or an embedded SQLite file or memory),
/// migrates it and seeds the demo catalogue if asked. The parts: the API (public catalogue,
/// admin writes), the reserve and release handlers, the follower that settles reservations when
/// their saga ends, and the sweeper of expired reservations.
pub async fn parts(config: InventoryConfig) -> anyhow::Result<ServiceParts> {
    let db = Db::connect(&config.service.database_url, &migrations()).await?;
    if config.seed_demo_products {
        let n = seed_demo_products(&db)
            .await
            .context("seeding demo products")?;
        if n > 0 {
            tracing::info!(products = n, "seeded the demo catalogue");
        }
    }
    let state = AppState {
        db: db.clone(),
        keys: JwtKeys::new(&config.service.jwt_secret),
    };
    let mut parts = ServiceParts::new(SERVICE, &["products", "reservations"], api::routes(state));
    parts.ready = Readiness::new().database(db.clone());
    parts.handlers = handlers(db.clone(), &config);
    parts.followers.push(Follower::new(
        subscription(),
        db.clone(),
        |db, event| async move { settle::on_workflow_finished(&db, &event).await },
    ));
    let (sweep_db, every) = (db.clone(), config.sweep_interval);
    parts.loops.push(Box::new(move |stop| {
        Box::pin(sweeper::run(sweep_db, every, stop))
    }));
    parts.db = Some(db);
    Ok(parts)
}
