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
use orderflow_activities::worker::Worker;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    events::{self, Subscription},
    http::{self, Readiness},
    limit::{Limits, RateLimiter},
    parts::Parts,
};
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
pub fn subscription(config: &OrderConfig) -> Subscription {
    Subscription {
        amqp_url: config.service.amqp_url.clone(),
        topology: config.service.topology(),
        service: SERVICE.to_owned(),
        routing_key: orderflow_core::protocol::finished_routing_key("order"),
    }
}

/// The handler state for `config`, over `db`. Orders per user are counted in Redis, shared by
/// every replica; on an embedded database there is only this process, so they are counted here
/// and the service needs no Redis.
pub fn state(config: &OrderConfig, db: Db) -> anyhow::Result<AppState> {
    metrics::register();
    let clients = clients::Clients::new(
        &config.inventory_url,
        &config.user_url,
        &config.service.engine_url,
        config.call_timeout,
    )
    .context("building the HTTP client")?;
    let rule = Limits::from_env()?.orders;
    let order_limit = match &db {
        Db::Postgres(_) => RateLimiter::new(
            &config.service.redis_url,
            &config.service.queue_prefix,
            "orders",
            rule,
        )?,
        Db::Sqlite(_) => RateLimiter::in_process("orders", rule),
    };
    Ok(AppState {
        db,
        keys: JwtKeys::new(&config.service.jwt_secret),
        clients,
        wake: Arc::new(Notify::new()),
        start_backoff_cap: config.start_backoff_cap,
        order_limit,
    })
}

/// What [`run`] serves over HTTP, for a caller that mounts the router and runs the workers
/// itself (`orderflow dev`): connects to and migrates the database named by the config's URL
/// (`postgres://`, `sqlite://<file>` or `sqlite::memory:`) and builds the state. The readiness
/// checks cover the database.
pub async fn prepare(config: &OrderConfig) -> anyhow::Result<(AppState, Readiness)> {
    let db = Db::connect(&config.service.database_url, &migrations()).await?;
    let ready = Readiness::new().database(db.clone());
    Ok((state(config, db)?, ready))
}

/// Migrates, then serves the API, runs the `order.create` / `order.cancel` workers, follows
/// finished sagas and starts pending sagas, until `stop`. If one part fails the rest stop too.
pub async fn run(config: OrderConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let (state, ready) = prepare(&config).await?;
    let db = state.db.clone();
    let ready = ready.amqp(config.service.amqp_url.clone());
    let app = http::app(SERVICE, router(state.clone()), ready);

    let worker = Worker::builder(&config.service.amqp_url, config.service.topology())
        .handlers(handlers(db.clone()), config.service.worker_concurrency)
        .build();
    let mut parts = Parts::new(SERVICE, &stop);
    parts.spawn_worker(worker);
    parts.spawn_infallible(events::follow(
        subscription(&config),
        {
            let db = db.clone();
            move |event| {
                let db = db.clone();
                async move { follow::on_workflow_finished(&db, &event).await }
            }
        },
        parts.stop(),
    ));
    parts.spawn_infallible(starter::run(
        db.clone(),
        state.clients.clone(),
        state.wake.clone(),
        config.start_interval,
        config.start_backoff_cap,
        parts.stop(),
    ));
    parts.spawn(http::serve(config.service.bind, app, parts.stop()));
    parts.join().await
}
