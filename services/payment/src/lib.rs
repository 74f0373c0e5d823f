//! The payment service: the order saga's charge step and its compensation, done through Stripe
//! (PaymentIntents and refunds, via async-stripe) so that a card is never charged twice for one
//! saga, whatever crashes, redeliveries or Stripe outages happen on the way.
//!
//! A charge is recorded in three phases (pending row with our id; the Stripe call with the step's
//! idempotency key; Stripe's intent id), its final outcome is cached per key (in Redis, or in
//! this process when no Redis is configured), Stripe outages trip a circuit breaker, and
//! Stripe's signed webhooks are verified and recorded.
//!
//! The database is Postgres (`orderflow up`) or embedded SQLite (`orderflow dev`), chosen by
//! the URL's scheme; [`connect`] builds the activities' [`Payments`] either way, and
//! [`AppState`] with [`router`] serves the API on the same [`Db`].
//!
//! - [`model`]: [`model::ChargeRequest`] (only chargeable input builds one), payment statuses.
//! - [`store`]: the `payments` and `stripe_events` tables, on either backend.
//! - [`gateway`]: Stripe calls through async-stripe, their timeouts and error classes.
//! - [`breaker`]: the circuit breaker in front of Stripe.
//! - [`cache`]: charge outcomes in Redis or in-process.
//! - [`activities`]: `payment.charge` and `payment.refund` for the worker runtime.
//! - [`webhooks`]: `POST /api/v1/webhooks/stripe`.
//! - [`api`]: the REST API (a payment for its payer or an admin, the admin list).
//! - [`config`]: [`PaymentConfig`] and its defaults.
//! - [`metrics`]: charge, refund and webhook counters and the breaker's state on `/metrics`.

pub mod activities;
pub mod api;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod gateway;
pub mod metrics;
pub mod model;
pub mod purge;
pub mod store;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_activities::worker::Handler;
use orderflow_service_kit::{
    auth::JwtKeys,
    db::{Db, Migrations},
    http::{self, Readiness},
    kv,
    parts::ServiceParts,
    purge::purge_loop,
};
use sqlx::migrate::Migrator;

pub use activities::Payments;
pub use api::AppState;
pub use config::{PaymentConfig, StripeConfig};

/// The service's name in metrics and logs.
pub const SERVICE: &str = "payment";

/// How often the service's own retention runs (see [`purge`]).
const PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The payment database's migrations (`migrations/payment`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/payment");
    // Another service's versions in the same database (never in production) are not ours to judge.
    m.set_ignore_missing(true);
    m
}

/// Both dialects' migrations (`migrations/payment`, `migrations/sqlite/payment`), for
/// [`Db::connect`].
pub fn migrations() -> Migrations {
    let mut sqlite = sqlx::migrate!("../../migrations/sqlite/payment");
    sqlite.set_ignore_missing(true);
    Migrations {
        postgres: migrator(),
        sqlite,
    }
}

/// The whole HTTP app: `/api/v1` plus `/health`, `/ready`, `/metrics`.
pub fn router(state: AppState, ready: Readiness) -> axum::Router {
    http::app(SERVICE, api::routes(state), ready)
}

/// The activity handlers for a worker: charge and refund.
pub fn handlers(payments: Arc<Payments>) -> Vec<Arc<dyn Handler>> {
    activities::handlers(payments)
}

/// Connects what the activities need: the migrated database (Postgres or SQLite, by the
/// URL's scheme), Stripe, and the outcome cache ([`outcome_cache`]).
pub async fn connect(config: &PaymentConfig) -> anyhow::Result<Arc<Payments>> {
    let db = Db::connect(&config.service.database_url, &migrations()).await?;
    let cache = outcome_cache(config).await?;
    payments(db, &config.stripe, cache)
}

/// What the activities need, on a database the caller opened (`orderflow dev` opens an
/// embedded one per service).
pub fn payments(
    db: Db,
    stripe: &StripeConfig,
    cache: cache::OutcomeCache,
) -> anyhow::Result<Arc<Payments>> {
    let gateway = gateway::Gateway::new(stripe).context("the Stripe client")?;
    Ok(Arc::new(Payments { db, gateway, cache }))
}

/// The outcome cache `config` asks for: in Redis at `redis_url`, or in this process when
/// `redis_url` is empty (a service with no Redis, as under `orderflow dev`).
pub async fn outcome_cache(config: &PaymentConfig) -> anyhow::Result<cache::OutcomeCache> {
    Ok(if config.service.redis_url.is_empty() {
        cache::OutcomeCache::in_process(config.outcome_ttl)
    } else {
        let redis = kv::connect(&config.service.redis_url).await?;
        cache::OutcomeCache::new(redis, &config.service.queue_prefix, config.outcome_ttl)
    })
}

/// The API's state on `db`: tokens checked with `config`'s JWT secret, webhooks with its
/// Stripe webhook secret.
pub fn app_state(db: Db, config: &PaymentConfig) -> AppState {
    AppState {
        db,
        keys: JwtKeys::new(&config.service.jwt_secret),
        webhook_secret: config.stripe.webhook_secret.clone(),
    }
}

/// The activities its workers do.
pub const ACTIVITIES: &[&str] = &[
    orderflow_workflows::order::contracts::PAYMENT_CHARGE,
    orderflow_workflows::order::contracts::PAYMENT_REFUND,
    orderflow_workflows::returns::contracts::PAYMENT_REFUND_RETURN,
];

/// Connects the database, Stripe and the outcome cache. The parts: the API (webhooks included)
/// and the charge and refund handlers. Stripe is not probed by `/ready`: an outage there is the
/// breaker's business, and the service still answers its API and refuses charges fast meanwhile.
pub async fn parts(config: PaymentConfig) -> anyhow::Result<ServiceParts> {
    let payments = connect(&config).await?;
    let db = payments.db.clone();
    let mut parts = ServiceParts::new(
        SERVICE,
        &["payments", "webhooks"],
        api::routes(app_state(db.clone(), &config)),
    );
    parts.ready = Readiness::new().database(db.clone());
    if let Some(redis) = payments.cache.connection() {
        parts.ready = parts.ready.redis(redis);
    }
    parts.handlers = handlers(payments);
    if let Some(keep) = config.webhook_retention {
        let purge_db = db.clone();
        parts.loops.push(purge_loop(
            SERVICE,
            keep,
            PURGE_EVERY,
            Box::new(move |cutoff| {
                let db = purge_db.clone();
                Box::pin(async move { purge::purge(&db, cutoff).await })
            }),
        ));
    }
    parts.db = Some(db);
    Ok(parts)
}
