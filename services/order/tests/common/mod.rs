//! The stack the order service's tests run on, shared by `order.rs` and `end_to_end.rs`: an
//! in-process engine (testkit) with its REST API, the real user and inventory services (API,
//! workers, saga follower), and everything `orderflow_order::run` runs except its own socket.
//! Each test adds the workers of the payment and notification steps it wants
//! ([`Stack::spawn_worker`]). Every service has its own fresh database; all share the test's
//! queue prefix.

// Each test binary uses a different part of it.
#![allow(dead_code)]

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    http::{Method, StatusCode},
};
use orderflow_activities::{
    follower::{self, Subscription},
    worker::{Handler, Worker},
};
use orderflow_core::{Registry, WorkflowFinished};
use orderflow_engine::api::AppState as EngineState;
use orderflow_order::OrderConfig;
use orderflow_queue::rabbit::RabbitQueue;
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db::Db,
    http::{self, Readiness},
    kv,
};
use orderflow_service_testkit::{Answer, call, fresh_db, serve};
use orderflow_testkit::{TestEnv, eventually};
use serde_json::{Value, json};
use tokio_util::sync::{CancellationToken, DropGuard};
use uuid::Uuid;

pub const SECRET: &str = "order-test-secret-order-test-secret-0123";
pub const SETTLE: Duration = Duration::from_secs(30);
/// The product most tests order: 100 units at 12.50 EUR.
pub const SKU: &str = "sku-1";
pub const PRICE: i64 = 1250;
pub const ON_HAND: i64 = 100;
/// A product with a single unit, to run out of.
pub const SCARCE: &str = "sku-2";

pub struct Stack {
    pub env: TestEnv,
    pub registry: Arc<Registry>,
    /// What every service of the stack shares: broker, Redis, queue prefix, token secret.
    pub service: ServiceConfig,
    pub redis: redis::aio::ConnectionManager,
    pub order: Router,
    /// The order service's database: Postgres, or SQLite for [`Stack::on_sqlite`].
    pub order_db: Db,
    pub user: Router,
    pub inventory: Router,
    pub stop: CancellationToken,
    _guard: DropGuard,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// One stack at a time per test binary: each opens dozens of Postgres connections (five
/// databases, their pools, the engine's), and several at once exhaust the server's 100.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where the order service keeps its orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderBackend {
    /// A fresh Postgres database, as in production.
    Postgres,
    /// An in-memory SQLite database, as under `orderflow dev`.
    Sqlite,
}

/// How the engine is reached.
pub enum Engine {
    /// Serving from the start.
    Up,
    /// At this URL, whose listener the test serves only later: until then connections queue
    /// unanswered and time out, like an engine that hangs.
    Later(String),
}

impl Stack {
    pub async fn new(registry: Registry) -> anyhow::Result<Self> {
        Self::with_engine(registry, Engine::Up).await
    }

    pub async fn with_engine(registry: Registry, engine: Engine) -> anyhow::Result<Self> {
        Self::with_backend(registry, engine, OrderBackend::Postgres).await
    }

    /// The stack with the order service's database on `backend`; the rest stays as it is.
    pub async fn with_backend(
        registry: Registry,
        engine: Engine,
        backend: OrderBackend,
    ) -> anyhow::Result<Self> {
        let turn = TURN.lock().await;
        let env = TestEnv::new().await?;
        let stop = CancellationToken::new();
        let registry = Arc::new(registry);
        let engine_stop = env.spawn_engine(registry.clone());
        // A hanging engine must cost the order service little time per call.
        let call_timeout = match &engine {
            Engine::Up => Duration::from_secs(2),
            Engine::Later(_) => Duration::from_millis(500),
        };
        let engine_url = match engine {
            Engine::Up => serve(Self::engine_router(&env, &registry), &stop).await?,
            Engine::Later(url) => url,
        };
        let topology = env.topology.clone();
        let mut service = ServiceConfig::local("order", 0);
        service.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        service.jwt_secret = SECRET.to_owned();
        service.queue_prefix = topology.prefix.clone();
        service.engine_url = engine_url;

        // The user service.
        let user_pool = fresh_db("user", &orderflow_user::migrator()).await?;
        let redis = kv::connect(&service.redis_url).await?;
        let user = http::app(
            "user",
            orderflow_user::router(orderflow_user::AppState {
                db: user_pool.into(),
                keys: JwtKeys::new(SECRET),
                sessions: orderflow_user::sessions::Sessions::new(redis.clone(), &topology.prefix),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
            }),
            Readiness::new(),
        );
        let user_url = serve(user.clone(), &stop).await?;

        // The inventory service: catalogue API, reserve/release workers and its saga follower.
        let inv_db = Db::from(fresh_db("inventory", &orderflow_inventory::migrator()).await?);
        let inventory = orderflow_inventory::router(
            orderflow_inventory::AppState {
                db: inv_db.clone(),
                keys: JwtKeys::new(SECRET),
            },
            Readiness::new(),
        );
        let inventory_url = serve(inventory.clone(), &stop).await?;
        let mut inv_config = orderflow_inventory::InventoryConfig::local();
        inv_config.service = service.clone();
        let db = inv_db.clone();
        follow(
            env.queue(),
            orderflow_inventory::subscription(),
            &stop,
            move |e| {
                let db = db.clone();
                async move { orderflow_inventory::settle::on_workflow_finished(&db, &e).await }
            },
        )
        .await?;

        // The order service: everything `orderflow_order::run` runs, except its own socket.
        let order_db = match backend {
            OrderBackend::Postgres => {
                Db::from(fresh_db("order", &orderflow_order::migrator()).await?)
            }
            OrderBackend::Sqlite => Db::sqlite(None, &orderflow_order::migrations()).await?,
        };
        let mut config = OrderConfig::new(service.clone());
        config.inventory_url = inventory_url;
        config.user_url = user_url;
        config.call_timeout = call_timeout;
        config.start_interval = Duration::from_millis(100);
        config.start_backoff_cap = Duration::from_millis(200);
        let state = orderflow_order::state(&config, order_db.clone())?;
        let db = order_db.clone();
        follow(
            env.queue(),
            orderflow_order::subscription(),
            &stop,
            move |e| {
                let db = db.clone();
                async move { orderflow_order::follow::on_workflow_finished(&db, &e).await }
            },
        )
        .await?;
        tokio::spawn(orderflow_order::starter::run(
            order_db.clone(),
            state.clients.clone(),
            state.wake.clone(),
            config.start_interval,
            config.start_backoff_cap,
            stop.clone(),
        ));
        let order = http::app(
            "order",
            orderflow_order::router(state),
            Readiness::new().database(order_db.clone()),
        );
        let stack = Self {
            env,
            registry,
            service,
            redis,
            order,
            order_db: order_db.clone(),
            user,
            inventory,
            _guard: {
                let s = stop.clone();
                tokio::spawn(async move {
                    s.cancelled().await;
                    engine_stop.cancel();
                });
                stop.clone().drop_guard()
            },
            _turn: turn,
            stop,
        };
        stack.spawn_worker(orderflow_inventory::handlers(inv_db, &inv_config));
        stack.spawn_worker(orderflow_order::handlers(order_db));
        stack.add_product(SKU, PRICE, ON_HAND).await?;
        stack.add_product(SCARCE, 399, 1).await?;
        Ok(stack)
    }

    /// The engine's REST API over the test's database, verifying tokens with the services'
    /// secret (the order service calls it with a service token signed by it).
    pub fn engine_router(env: &TestEnv, registry: &Arc<Registry>) -> Router {
        orderflow_engine::api::router(
            EngineState::standalone(env.pool.clone(), env.applier(registry.clone()), env.queue()),
            orderflow_engine::api::ApiAuth::new(orderflow_service_kit::auth::KeyRing::new(SECRET)),
        )
    }

    /// Runs `handlers` on the stack's queues until the stack stops.
    pub fn spawn_worker(&self, handlers: Vec<Arc<dyn Handler>>) {
        let worker = Worker::builder(self.env.queue())
            .handlers(handlers, 8)
            .build();
        tokio::spawn(worker.run(self.stop.clone().cancelled_owned()));
    }

    pub fn admin_token(&self) -> String {
        JwtKeys::new(SECRET)
            .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(600))
            .unwrap()
    }

    pub async fn add_product(&self, id: &str, price: i64, on_hand: i64) -> anyhow::Result<()> {
        let a = call(
            &self.inventory,
            Method::POST,
            "/api/v1/products",
            Some(&self.admin_token()),
            &[],
            Some(json!({"id": id, "name": id, "price": {"amount_minor": price, "currency": "EUR"}, "on_hand": on_hand})),
        )
        .await;
        anyhow::ensure!(a.status == StatusCode::CREATED, "product {id}: {}", a.body);
        Ok(())
    }

    /// Registers and logs in a customer, with the README's requests; returns their access token.
    pub async fn customer(&self, email: &str) -> String {
        let body = json!({"email": email, "password": "correct horse"});
        let mut registration = body.clone();
        registration["name"] = "Ann".into();
        let reg = call(
            &self.user,
            Method::POST,
            "/api/v1/users",
            None,
            &[],
            Some(registration),
        )
        .await;
        assert_eq!(reg.status, StatusCode::CREATED, "{}", reg.body);
        let login = call(
            &self.user,
            Method::POST,
            "/api/v1/auth/login",
            None,
            &[],
            Some(body),
        )
        .await;
        login.body["access_token"]
            .as_str()
            .expect("a token")
            .to_owned()
    }

    /// `POST /orders` with the Idempotency-Key `key`.
    pub async fn place(&self, token: &str, key: &str, body: Value) -> Answer {
        call(
            &self.order,
            Method::POST,
            "/api/v1/orders",
            Some(token),
            &[("idempotency-key", key)],
            Some(body),
        )
        .await
    }

    pub async fn get(&self, token: &str, id: &str) -> Answer {
        call(
            &self.order,
            Method::GET,
            &format!("/api/v1/orders/{id}"),
            Some(token),
            &[],
            None,
        )
        .await
    }

    /// The saga of a placed order. Under load the engine may not answer within the order
    /// service's call timeout; the order is then kept with the intent to start and the background
    /// starter starts its saga (documented), so wait for it rather than assume it started at once.
    pub async fn workflow_of(&self, token: &str, placed: &Answer) -> anyhow::Result<Uuid> {
        if let Some(id) = placed.body["workflow_id"].as_str() {
            return Ok(id.parse()?);
        }
        let id = eventually(SETTLE, "the order's saga to start", || async {
            let a = self.get(token, &placed.id()).await;
            Ok(a.body["workflow_id"].as_str().map(str::to_owned))
        })
        .await?;
        Ok(id.parse()?)
    }

    /// Waits until the order has `status`, and returns it.
    pub async fn order_becomes(
        &self,
        token: &str,
        id: &str,
        status: &str,
    ) -> anyhow::Result<Value> {
        eventually(SETTLE, &format!("order {id} to be {status}"), || async {
            let a = self.get(token, id).await;
            Ok((a.body["status"] == status).then_some(a.body))
        })
        .await
    }

    /// Waits until the order has `status` and its saga has ended, and returns it.
    pub async fn order_settles(
        &self,
        token: &str,
        id: &str,
        status: &str,
    ) -> anyhow::Result<Value> {
        eventually(
            SETTLE,
            &format!("order {id} to be {status} with its saga ended"),
            || async {
                let a = self.get(token, id).await;
                let ended = ["completed", "compensated", "cancelled", "failed"]
                    .contains(&a.body["saga_status"].as_str().unwrap_or(""));
                Ok((a.body["status"] == status && ended).then_some(a.body))
            },
        )
        .await
    }

    /// Waits until [`SKU`]'s stock is `expected` (`on_hand`, `reserved`, `sold`).
    pub async fn stock_becomes(&self, expected: Value) -> anyhow::Result<()> {
        let token = self.admin_token();
        eventually(SETTLE, &format!("stock to be {expected}"), || async {
            let a = call(
                &self.inventory,
                Method::GET,
                &format!("/api/v1/products/{SKU}/stock"),
                Some(&token),
                &[],
                None,
            )
            .await;
            Ok((a.body["stock"] == expected).then_some(()))
        })
        .await
    }

    /// The failed attempts of a saga, oldest first: (activity, error code).
    pub async fn failures(&self, workflow: Uuid) -> anyhow::Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "select c->>'activity', f.event->'error'->>'code'
             from history f
             join history s on s.workflow_id = f.workflow_id
             cross join lateral jsonb_array_elements(s.commands) c
             where f.workflow_id = $1 and f.event->>'type' = 'activity_failed'
               and c->>'type' = 'schedule_activity' and c->>'task_id' = f.event->>'task_id'
             order by f.seq",
        )
        .bind(workflow)
        .fetch_all(&self.env.pool)
        .await?)
    }

    /// One number from the order database, on either backend.
    pub async fn count(&self, sql: &str) -> i64 {
        match &self.order_db {
            Db::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
            Db::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await.unwrap(),
        }
    }
}

/// Follows `sub` with `handle` until `stop`, bound before any saga starts so that no
/// `WorkflowFinished` is published to nobody.
async fn follow<F, Fut, E>(
    queue: RabbitQueue,
    sub: Subscription,
    stop: &CancellationToken,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(WorkflowFinished) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    sub.declare(&queue).await?;
    tokio::spawn(follower::follow(queue, sub, handle, stop.clone()));
    Ok(())
}

/// An order body with `items`, shipped to Berlin, paid with Stripe's test Visa card.
pub fn order_body(items: Value) -> Value {
    paid_with(items, "pm_card_visa")
}

/// An order body with `items`, shipped to Berlin, paid with `payment_method`.
pub fn paid_with(items: Value, payment_method: &str) -> Value {
    json!({
        "items": items,
        "shipping_address": {"name": "Ann Buyer", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115", "country": "DE"},
        "payment_method": payment_method,
    })
}
