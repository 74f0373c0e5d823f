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
use orderflow_activities::worker::{Handler, Worker};
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    events::{self, Subscription},
    http::{self, Readiness},
    parts::Parts,
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

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

/// What the service follows: the order saga's end.
pub fn subscription(config: &InventoryConfig) -> Subscription {
    Subscription {
        amqp_url: config.service.amqp_url.clone(),
        topology: config.service.topology(),
        service: SERVICE.to_owned(),
        routing_key: orderflow_core::protocol::finished_routing_key("order"),
    }
}

/// Connects to the database the URL names (Postgres, or an embedded SQLite file or memory) and
/// migrates it, then serves the API, runs the activity workers, follows finished sagas and sweeps
/// expired reservations, until `stop`. If one part fails the others are stopped too.
pub async fn run(config: InventoryConfig, stop: CancellationToken) -> anyhow::Result<()> {
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
    let ready = Readiness::new()
        .database(db.clone())
        .amqp(config.service.amqp_url.clone());
    let app = router(state, ready);

    let worker = Worker::builder(&config.service.amqp_url, config.service.topology())
        .handlers(
            handlers(db.clone(), &config),
            config.service.worker_concurrency,
        )
        .build();
    let mut parts = Parts::new(SERVICE, &stop);
    parts.spawn_worker(worker);
    let (sub, every) = (subscription(&config), config.sweep_interval);
    parts.spawn_infallible(events::follow(
        sub,
        {
            let db = db.clone();
            move |event| {
                let db = db.clone();
                async move { settle::on_workflow_finished(&db, &event).await }
            }
        },
        parts.stop(),
    ));
    parts.spawn_infallible(sweeper::run(db.clone(), every, parts.stop()));
    parts.spawn(http::serve(config.service.bind, app, parts.stop()));
    let outcome = parts.join().await;
    db.close().await;
    outcome
}
