//! The five services of `orderflow dev`, each on its own embedded database
//! (`<service>.db` under the data directory) and built from the same parts `orderflow up` runs:
//! the service's router, its activity handlers (served by the in-process queue's worker), its
//! followers of finished sagas (on the in-process queue) and its background loops. What needs
//! Redis in production is kept in the process: the order and login rate limits, the payment
//! outcome cache, and refresh sessions (in the user database).

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use axum::Router;
use orderflow_activities::{queue::embedded::EmbeddedQueue, worker::Handler};
use orderflow_service_kit::{
    ServiceConfig,
    auth::JwtKeys,
    db::{Db, Migrations},
    events::{self, Subscription},
    http::{self, Readiness},
    limit::{Limits, RateLimiter},
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Where the services reach each other, the engine and Stripe.
#[derive(Debug, Clone)]
pub struct Wiring {
    /// The gateway's own URL: every service's API and the engine's are under it.
    pub url: String,
    pub stripe_url: String,
    pub jwt_secret: String,
}

/// The services, started.
pub struct Services {
    /// `(path prefix, router)` for the gateway.
    pub routes: Vec<(&'static str, Router)>,
    /// Every activity handler, for the in-process queue's worker.
    pub handlers: Vec<Arc<dyn Handler>>,
    /// Each service's database, by service name.
    pub dbs: Vec<(&'static str, Db)>,
}

impl Services {
    pub fn db(&self, service: &str) -> &Db {
        &self
            .dbs
            .iter()
            .find(|(name, _)| *name == service)
            .expect("every service has a database")
            .1
    }
}

/// Opens each service's database (migrating it), seeds the demo catalogue, and starts the
/// services' followers and loops on `tasks` until `stop`.
pub async fn start(
    data_dir: Option<&Path>,
    wiring: &Wiring,
    queue: &EmbeddedQueue,
    tasks: &mut JoinSet<()>,
    stop: &CancellationToken,
) -> anyhow::Result<Services> {
    let open = |name: &'static str, migrations: Migrations| async move {
        let file = data_dir.map(|d| d.join(format!("{name}.db")));
        Db::sqlite(file.as_deref(), &migrations)
            .await
            .with_context(|| format!("the {name} database"))
    };
    let config = |name: &str| {
        let mut c = ServiceConfig::local(name, 0);
        c.jwt_secret = wiring.jwt_secret.clone();
        c.engine_url = wiring.url.clone();
        // No Redis, no broker: nothing reads these in dev.
        c.redis_url = String::new();
        c.amqp_url = String::new();
        c.worker_concurrency = 8;
        c
    };
    let keys = JwtKeys::new(&wiring.jwt_secret);
    let limits = Limits::from_env()?;
    let ready = |db: &Db| Readiness::new().database(db.clone());
    let mut routes = Vec::new();
    let mut handlers: Vec<Arc<dyn Handler>> = Vec::new();

    // Inventory: the catalogue and reservations, settled when sagas finish, swept at expiry.
    let inventory = open("inventory", orderflow_inventory::migrations()).await?;
    orderflow_inventory::seed_demo_products(&inventory).await?;
    let inv_config = orderflow_inventory::InventoryConfig::new(config("inventory"));
    let app = orderflow_inventory::router(
        orderflow_inventory::AppState {
            db: inventory.clone(),
            keys: keys.clone(),
        },
        ready(&inventory),
    );
    routes.push(("/api/v1/products", app.clone()));
    routes.push(("/api/v1/reservations", app));
    handlers.extend(orderflow_inventory::handlers(
        inventory.clone(),
        &inv_config,
    ));
    follow(
        tasks,
        queue,
        stop,
        orderflow_inventory::subscription(&inv_config),
        inventory.clone(),
        |db, event| async move { orderflow_inventory::settle::on_workflow_finished(&db, &event).await },
    );
    tasks.spawn(orderflow_inventory::sweeper::run(
        inventory.clone(),
        inv_config.sweep_interval,
        stop.clone(),
    ));

    // Payment: Stripe through the sandbox, the outcome cache in the process.
    let payment = open("payment", orderflow_payment::migrations()).await?;
    let stripe = orderflow_payment::StripeConfig::sandbox(wiring.stripe_url.clone());
    let pay_config = orderflow_payment::PaymentConfig::new(config("payment"), stripe.clone());
    let payments = orderflow_payment::payments(
        payment.clone(),
        &stripe,
        orderflow_payment::cache::OutcomeCache::in_process(pay_config.outcome_ttl),
    )?;
    let app = orderflow_payment::router(
        orderflow_payment::app_state(payment.clone(), &pay_config),
        ready(&payment),
    );
    routes.push(("/api/v1/payments", app.clone()));
    routes.push(("/api/v1/webhooks", app));
    handlers.extend(orderflow_payment::handlers(payments));

    // Order: places orders, starts their sagas through the engine's API, follows their end.
    let order = open("order", orderflow_order::migrations()).await?;
    let mut order_config = orderflow_order::OrderConfig::new(config("order"));
    order_config.inventory_url = wiring.url.clone();
    order_config.user_url = wiring.url.clone();
    let mut state = orderflow_order::state(&order_config, order.clone())?;
    state.order_limit = RateLimiter::in_process("orders", limits.orders);
    routes.push((
        "/api/v1/orders",
        http::app(
            orderflow_order::SERVICE,
            orderflow_order::router(state.clone()),
            ready(&order),
        ),
    ));
    handlers.extend(orderflow_order::handlers(order.clone()));
    follow(
        tasks,
        queue,
        stop,
        orderflow_order::subscription(&order_config),
        order.clone(),
        |db, event| async move { orderflow_order::follow::on_workflow_finished(&db, &event).await },
    );
    tasks.spawn(orderflow_order::starter::run(
        order.clone(),
        state.clients.clone(),
        state.wake.clone(),
        order_config.start_interval,
        order_config.start_backoff_cap,
        stop.clone(),
    ));

    // Notification: no SMTP, SMS or push configured, so every message goes to the outbox.
    let notification = open("notification", orderflow_notification::migrations()).await?;
    // A message held by the process before this one (killed mid-delivery) is free again.
    orderflow_notification::store::release_holds(&notification).await?;
    let note_config = orderflow_notification::NotificationConfig::new(config("notification"));
    let providers = orderflow_notification::providers(notification.clone(), &note_config)?;
    let app = orderflow_notification::router(
        orderflow_notification::AppState {
            db: notification.clone(),
            keys: keys.clone(),
        },
        ready(&notification),
    );
    for prefix in [
        "/api/v1/notifications",
        "/api/v1/contacts",
        "/api/v1/outbox",
    ] {
        routes.push((prefix, app.clone()));
    }
    handlers.extend(orderflow_notification::handlers(
        notification.clone(),
        providers,
    ));

    // User: accounts and logins; refresh sessions in the user database.
    let user = open("user", orderflow_user::migrations()).await?;
    let Db::Sqlite(user_pool) = &user else {
        unreachable!("dev opens SQLite")
    };
    let app = http::app(
        orderflow_user::SERVICE,
        orderflow_user::router(orderflow_user::AppState::embedded(
            user_pool.clone(),
            keys.clone(),
            limits.login,
        )),
        ready(&user),
    );
    routes.push(("/api/v1/users", app.clone()));
    routes.push(("/api/v1/auth", app));

    Ok(Services {
        routes,
        handlers,
        dbs: vec![
            ("inventory", inventory),
            ("payment", payment),
            ("order", order),
            ("notification", notification),
            ("user", user),
        ],
    })
}

/// Follows `sub`'s finished sagas on the in-process queue with `handle` over `db`.
fn follow<F, Fut>(
    tasks: &mut JoinSet<()>,
    queue: &EmbeddedQueue,
    stop: &CancellationToken,
    sub: Subscription,
    db: Db,
    handle: F,
) where
    F: Fn(Db, events::WorkflowFinished) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), sqlx::Error>> + Send + 'static,
{
    tasks.spawn(events::follow_on(
        queue.clone(),
        sub,
        move |event| handle(db.clone(), event),
        stop.clone(),
    ));
}
