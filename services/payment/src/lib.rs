//! The payment service: the order saga's charge step and its compensation, done through Stripe
//! (PaymentIntents and refunds, via async-stripe) so that a card is never charged twice for one
//! saga, whatever crashes, redeliveries or Stripe outages happen on the way.
//!
//! A charge is recorded in three phases (pending row with our id; the Stripe call with the step's
//! idempotency key; Stripe's intent id), its final outcome is cached in Redis per key, Stripe
//! outages trip a circuit breaker, and Stripe's signed webhooks are verified and recorded.
//!
//! - [`model`]: [`model::ChargeRequest`] (only chargeable input builds one), payment statuses.
//! - [`store`]: the `payments` and `stripe_events` tables.
//! - [`gateway`]: Stripe calls through async-stripe, their timeouts and error classes.
//! - [`breaker`]: the circuit breaker in front of Stripe.
//! - [`cache`]: charge outcomes in Redis.
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
pub mod store;
pub mod webhooks;

use std::sync::Arc;

use anyhow::Context as _;
use orderflow_activities::worker::{Handler, Worker};
use orderflow_service_kit::{
    auth::JwtKeys,
    db,
    http::{self, Readiness},
    kv,
    parts::Parts,
};
use sqlx::migrate::Migrator;
use tokio_util::sync::CancellationToken;

pub use activities::Payments;
pub use api::AppState;
pub use config::{PaymentConfig, StripeConfig};

/// The service's name in metrics and logs.
pub const SERVICE: &str = "payment";

/// The payment database's migrations (`migrations/payment`).
pub fn migrator() -> Migrator {
    let mut m = sqlx::migrate!("../../migrations/payment");
    // Another service's versions in the same database (never in production) are not ours to judge.
    m.set_ignore_missing(true);
    m
}

/// The whole HTTP app: `/api/v1` plus `/health`, `/ready`, `/metrics`.
pub fn router(state: AppState, ready: Readiness) -> axum::Router {
    http::app(SERVICE, api::routes(state), ready)
}

/// The activity handlers for a worker: charge and refund.
pub fn handlers(payments: Arc<Payments>) -> Vec<Arc<dyn Handler>> {
    activities::handlers(payments)
}

/// Connects what the activities need: the migrated database, Stripe and Redis.
pub async fn connect(config: &PaymentConfig) -> anyhow::Result<Arc<Payments>> {
    let pool = db::connect_and_migrate(&config.service.database_url, &migrator()).await?;
    let gateway = gateway::Gateway::new(&config.stripe).context("the Stripe client")?;
    let redis = kv::connect(&config.service.redis_url).await?;
    let cache = cache::OutcomeCache::new(redis, &config.service.queue_prefix, config.outcome_ttl);
    Ok(Arc::new(Payments {
        pool,
        gateway,
        cache,
    }))
}

/// Migrates, then serves the API (webhooks included) and runs the charge and refund workers
/// until `stop`. If one part fails the other is stopped too.
pub async fn run(config: PaymentConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let payments = connect(&config).await?;
    let pool = payments.pool.clone();
    let state = AppState {
        pool: pool.clone(),
        keys: JwtKeys::new(&config.service.jwt_secret),
        webhook_secret: config.stripe.webhook_secret.clone(),
    };
    let redis = payments.cache.connection();
    // Stripe is not probed: an outage there is the breaker's business, and the service still
    // answers its API and refuses charges fast meanwhile.
    let ready = Readiness::new()
        .postgres(pool.clone())
        .amqp(config.service.amqp_url.clone())
        .redis(redis);
    let app = router(state, ready);

    let worker = Worker::builder(&config.service.amqp_url, config.service.topology())
        .handlers(handlers(payments), config.service.worker_concurrency)
        .build();
    let mut parts = Parts::new(SERVICE, &stop);
    parts.spawn_worker(worker);
    parts.spawn(http::serve(config.service.bind, app, parts.stop()));
    let outcome = parts.join().await;
    pool.close().await;
    outcome
}
