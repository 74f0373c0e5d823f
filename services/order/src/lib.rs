//! The order service: orders and their status, which follows the order saga.
//!
//! `POST /orders` checks the request, prices it through the inventory's public API, stores the
//! order `pending` together with the intent to start its saga (one transaction, so an order is
//! never stored without eventually getting its saga), then starts the saga on the engine. If the
//! engine is unreachable the background starter keeps trying; the Idempotency-Key
//! `order:<id>` makes every repeat return the same saga. The saga's pivot `order.create`
//! confirms the order; when the saga ends, its `WorkflowFinished` event sets the final status and
//! the reason of a cancellation.
//!
//! - [`config`]: [`OrderConfig`] and its defaults.
//! - [`model`]: checked order input, order statuses and cancellation codes.
//! - [`store`]: the `orders` and `saga_starts` tables, on Postgres or embedded SQLite.
//! - [`clients`]: the inventory, user and engine REST APIs.
//! - [`starter`]: turns stored intents into started sagas, inline and in the background.
//! - [`activities`]: `order.create` and `order.cancel` for the worker runtime.
//! - [`follow`]: applies `WorkflowFinished` events to orders.
//! - [`api`]: the REST API.

pub mod activities;
pub mod api;
pub mod clients;
pub mod config;
pub mod follow;
mod metrics;
pub mod model;
pub mod starter;
pub mod store;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_activities::follower::Subscription;
use orderflow_core::protocol::finished_routing_key;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    http::Readiness,
    limit::{Limits, RateLimiter},
    parts::{Follower, ServiceParts},
};
use orderflow_workflows::order::ORDER_SAGA;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;

pub use activities::handlers;
pub use api::{AppState, router};
pub use config::OrderConfig;

/// The service's name in metrics, queue names and logs.
pub const SERVICE: &str = "order";

/// The order database's migrations (`migrations/order/`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/order");
    m.set_ignore_missing(true);
    m
}

/// The order database's migrations for both backends: `migrations/order/` on Postgres and
/// `migrations/sqlite/order/` on SQLite.
pub fn migrations() -> Migrations {
    let mut sqlite = sqlx::migrate!("../../migrations/sqlite/order");
    sqlite.set_ignore_missing(true);
    Migrations {
        postgres: migrator(),
        sqlite,
    }
}

/// The order service follows the end of every order saga.
pub fn subscription() -> Subscription {
    Subscription::new(SERVICE, finished_routing_key(ORDER_SAGA))
}

/// The activities its workers do.
pub const ACTIVITIES: &[&str] = &[
    orderflow_workflows::order::contracts::ORDER_CREATE,
    orderflow_workflows::order::contracts::ORDER_CANCEL,
];

/// The handler state for `config`, over `db`. Orders per user are counted in Redis, shared by
/// every replica; without Redis (`orderflow dev`, one process) they are counted here.
pub fn state(config: &OrderConfig, db: Db) -> anyhow::Result<AppState> {
    metrics::register();
    let keys = JwtKeys::new(&config.service.jwt_secret);
    let clients = clients::Clients::new(
        &config.inventory_url,
        &config.user_url,
        &config.service.engine_url,
        keys.clone(),
        config.call_timeout,
    )
    .context("building the HTTP client")?;
    let rule = Limits::from_env()?.orders;
    let order_limit = if config.service.redis_url.is_empty() {
        RateLimiter::in_process("orders", rule)
    } else {
        RateLimiter::new(
            &config.service.redis_url,
            &config.service.queue_prefix,
            "orders",
            rule,
        )?
    };
    Ok(AppState {
        db,
        keys,
        clients,
        wake: Arc::new(Notify::new()),
        start_backoff_cap: config.start_backoff_cap,
        order_limit,
    })
}

/// Connects to and migrates the database named by the config's URL (`postgres://`,
/// `sqlite://<file>` or `sqlite::memory:`) and builds the state.
pub async fn prepare(config: &OrderConfig) -> anyhow::Result<AppState> {
    let db = Db::connect(&config.service.database_url, &migrations()).await?;
    state(config, db)
}

/// The parts: the API (`POST /orders` and the order reads), the `order.create` /
/// `order.cancel` handlers, the follower that settles an order when its saga ends, and the
/// starter that starts the sagas of stored orders the engine did not take yet.
pub async fn parts(config: OrderConfig) -> anyhow::Result<ServiceParts> {
    let state = prepare(&config).await?;
    let db = state.db.clone();
    let mut parts = ServiceParts::new(SERVICE, &["orders"], router(state.clone()));
    parts.ready = Readiness::new().database(db.clone());
    parts.handlers = handlers(db.clone());
    parts.followers.push(Follower::new(
        subscription(),
        db.clone(),
        |db, event| async move { follow::on_workflow_finished(&db, &event).await },
    ));
    let (interval, cap) = (config.start_interval, config.start_backoff_cap);
    let (clients, wake, starter_db) = (state.clients.clone(), state.wake.clone(), db.clone());
    parts.loops.push(Box::new(move |stop| {
        Box::pin(starter::run(starter_db, clients, wake, interval, cap, stop))
    }));
    parts.db = Some(db);
    Ok(parts)
}
