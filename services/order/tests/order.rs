//! The order service end to end on the real services: an in-process engine (testkit) with its
//! REST API, the real user and inventory services, the order service's own workers, event
//! follower and saga starter, and recording activities for the payment and notification steps.
//! Every test has its own databases and queue prefix.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use orderflow_activities::{
    contracts::{NOTIFICATION_SEND, PAYMENT_CHARGE, PAYMENT_REFUND},
    recording::{self, Fault},
    worker::Worker,
};
use orderflow_core::{Registry, SagaDefinition};
use orderflow_engine::api::AppState as EngineState;
use orderflow_order::OrderConfig;
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db,
    events::{self, Subscription},
    http::{self, Readiness},
    kv,
};
use orderflow_testkit::{TestEnv, amqp_url, eventually, pg_server, sagas};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "order-test-secret-order-test-secret-0123";
const SETTLE: Duration = Duration::from_secs(20);

/// Serves `router` on a fresh port until `stop`.
async fn serve(router: Router, stop: &CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(http::serve_on(listener, router, stop.clone()));
    Ok(url)
}

async fn fresh_db(
    service: &str,
    migrator: &sqlx::migrate::Migrator,
) -> anyhow::Result<sqlx::PgPool> {
    let name = format!("orderflow_{service}_test_{}", Uuid::new_v4().simple());
    db::connect_and_migrate(&db::with_database(&pg_server(), &name)?, migrator).await
}

struct Stack {
    env: TestEnv,
    registry: Arc<Registry>,
    order: Router,
    order_pool: sqlx::PgPool,
    user: Router,
    inventory: Router,
    stop: CancellationToken,
    _guard: DropGuard,
}

/// How the engine is reached.
enum Engine {
    /// Serving from the start.
    Up,
    /// At this URL, whose listener the test serves only later: until then connections queue
    /// unanswered and time out, like an engine that hangs.
    Later(String),
}

impl Stack {
    async fn new(def: SagaDefinition) -> anyhow::Result<Self> {
        Self::with_engine(def, Engine::Up).await
    }

    async fn with_engine(def: SagaDefinition, engine: Engine) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let stop = CancellationToken::new();
        let registry = Arc::new(Registry::new().with(def));
        let engine_stop = env.spawn_engine(registry.clone());
        let engine_url = match &engine {
            Engine::Up => serve(Self::engine_router(&env, &registry), &stop).await?,
            Engine::Later(url) => url.clone(),
        };
        let topology = env.topology.clone();
        let mut service = ServiceConfig::local("order", 0);
        service.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        service.jwt_secret = SECRET.to_owned();
        service.queue_prefix = topology.prefix.clone();
        service.amqp_url = amqp_url();
        service.engine_url = engine_url;

        // The user service.
        let user_pool = fresh_db("user", &orderflow_user::migrator()).await?;
        let redis = kv::connect(&service.redis_url).await?;
        let user = http::app(
            "user",
            orderflow_user::router(orderflow_user::AppState {
                pool: user_pool,
                keys: JwtKeys::new(SECRET),
                sessions: orderflow_user::sessions::Sessions::new(redis, &topology.prefix),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
            }),
            Readiness::new(),
        );
        let user_url = serve(user.clone(), &stop).await?;

        // The inventory service: catalogue API and its reserve/release workers.
        let inv_pool = fresh_db("inventory", &orderflow_inventory::migrator()).await?;
        let inventory = orderflow_inventory::router(
            orderflow_inventory::AppState {
                pool: inv_pool.clone(),
                keys: JwtKeys::new(SECRET),
            },
            Readiness::new(),
        );
        let inventory_url = serve(inventory.clone(), &stop).await?;
        let mut inv_config = orderflow_inventory::InventoryConfig::local();
        inv_config.service = service.clone();
        let inv_worker = Worker::builder(amqp_url(), topology.clone())
            .handlers(
                orderflow_inventory::handlers(inv_pool.clone(), &inv_config),
                8,
            )
            .build();
        tokio::spawn(inv_worker.run(stop.clone().cancelled_owned()));

        // Recording activities for the steps whose services this test does not run.
        let mut recording_worker = Worker::builder(amqp_url(), topology.clone());
        for h in recording::order_saga_handlers(env.pool.clone()) {
            if [PAYMENT_CHARGE, PAYMENT_REFUND, NOTIFICATION_SEND].contains(&h.activity()) {
                recording_worker = recording_worker.handler(h, 8);
            }
        }
        tokio::spawn(recording_worker.build().run(stop.clone().cancelled_owned()));

        // The order service: everything `orderflow_order::run` runs, except its own socket.
        let order_pool = fresh_db("order", &orderflow_order::migrator()).await?;
        let mut config = OrderConfig::new(service);
        config.inventory_url = inventory_url;
        config.user_url = user_url;
        config.call_timeout = Duration::from_millis(500);
        config.start_interval = Duration::from_millis(100);
        config.start_backoff_cap = Duration::from_millis(200);
        let state = orderflow_order::state(&config, order_pool.clone())?;
        let sub: Subscription = orderflow_order::subscription(&config);
        // Bound before any saga starts, so no WorkflowFinished is published to nobody.
        sub.declare().await?;
        tokio::spawn({
            let (pool, stop) = (order_pool.clone(), stop.clone());
            async move {
                events::follow(
                    sub,
                    |e| {
                        let pool = pool.clone();
                        async move { orderflow_order::follow::on_workflow_finished(&pool, &e).await }
                    },
                    stop,
                )
                .await;
            }
        });
        let order_worker = Worker::builder(amqp_url(), topology.clone())
            .handlers(orderflow_order::handlers(order_pool.clone()), 8)
            .build();
        tokio::spawn(order_worker.run(stop.clone().cancelled_owned()));
        tokio::spawn(orderflow_order::starter::run(
            order_pool.clone(),
            state.clients.clone(),
            state.wake.clone(),
            config.start_interval,
            config.start_backoff_cap,
            stop.clone(),
        ));
        let order = http::app(
            "order",
            orderflow_order::router(state),
            Readiness::new().postgres(order_pool.clone()),
        );
        let stack = Self {
            env,
            registry,
            order,
            order_pool,
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
            stop,
        };
        stack.add_product("sku-1", 1250, 100).await?;
        stack.add_product("sku-2", 399, 1).await?;
        Ok(stack)
    }

    fn engine_router(env: &TestEnv, registry: &Arc<Registry>) -> Router {
        orderflow_engine::api::router(EngineState {
            pool: env.pool.clone(),
            applier: env.applier(registry.clone()),
            amqp_url: amqp_url(),
        })
    }

    fn admin_token(&self) -> String {
        JwtKeys::new(SECRET)
            .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(600))
            .unwrap()
    }

    async fn add_product(&self, id: &str, price: i64, on_hand: i64) -> anyhow::Result<()> {
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

    /// Registers and logs in a customer; returns their access token.
    async fn customer(&self, email: &str) -> String {
        let body = json!({"email": email, "password": "correct horse"});
        let reg = call(
            &self.user,
            Method::POST,
            "/api/v1/users",
            None,
            &[],
            Some(body.clone()),
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

    async fn place(&self, token: &str, key: &str, body: Value) -> Answer {
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

    async fn get(&self, token: &str, id: &str) -> Answer {
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

    /// Waits until the order has `status`, and returns it.
    /// The saga of a placed order. Under load the engine may not answer within the order
    /// service's call timeout; the order is then kept with the intent to start and the background
    /// starter starts its saga (documented), so wait for it rather than assume it started at once.
    async fn workflow_of(&self, token: &str, placed: &Answer) -> anyhow::Result<Uuid> {
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

    async fn order_becomes(&self, token: &str, id: &str, status: &str) -> anyhow::Result<Value> {
        eventually(SETTLE, &format!("order {id} to be {status}"), || async {
            let a = self.get(token, id).await;
            Ok((a.body["status"] == status).then_some(a.body))
        })
        .await
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.order_pool)
            .await
            .unwrap()
    }
}

fn order_body(items: Value) -> Value {
    json!({
        "items": items,
        "shipping_address": {"name": "Ann Buyer", "line1": "1 Main St", "city": "Berlin",
                             "postal_code": "10115", "country": "DE"},
        "payment_method": "pm_card_visa",
    })
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: String,
    body: Value,
}

impl Answer {
    fn problem(&self, status: StatusCode, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["field"].as_str(), field, "{}", self.body);
    }

    fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.body))
            .to_owned()
    }
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    raw(
        router,
        method,
        path,
        token,
        headers,
        body.map(|b| b.to_string()),
    )
    .await
}

async fn raw(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

#[tokio::test]
async fn an_order_is_priced_started_and_confirmed_by_its_saga() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order()).await?;
    let ann = stack.customer("ann@example.com").await;
    let placed = stack
        .place(
            &ann,
            "k-1",
            order_body(json!([{"product_id": "sku-1", "quantity": 2}])),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    assert_eq!(placed.body["status"], "pending");
    assert_eq!(
        placed.body["total"],
        json!({"amount_minor": 2500, "currency": "EUR"})
    );
    let workflow = stack.workflow_of(&ann, &placed).await?;

    // Confirmed at the pivot; the saga then still notifies, and its end is recorded too.
    stack.order_becomes(&ann, &placed.id(), "confirmed").await?;
    assert_eq!(
        orderflow_testkit::settled(&stack.env, workflow, SETTLE).await?,
        "completed"
    );
    let done = eventually(
        SETTLE,
        "the order to hear that its saga completed",
        || async {
            let a = stack.get(&ann, &placed.id()).await;
            Ok((a.body["saga_status"] == "completed").then_some(a.body))
        },
    )
    .await?;
    assert_eq!(done["status"], "confirmed");
    assert_eq!(done["cancellation"], Value::Null);
    // The saga carried the caller's email from the user service and the priced total.
    let (input, keys): (Value, Value) = sqlx::query_as(
        "select h.event->'input', w.business_keys from history h join workflows w on w.id = h.workflow_id
         where h.workflow_id = $1 and h.event->>'type' = 'workflow_started'",
    )
    .bind(workflow)
    .fetch_one(&stack.env.pool)
    .await?;
    assert_eq!(keys["order_id"], placed.body["id"]);
    assert_eq!(keys["user_id"], placed.body["user_id"]);
    assert_eq!(input["email"], "ann@example.com");
    assert_eq!(input["total"]["amount_minor"], 2500);
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        1
    );

    let page = call(
        &stack.order,
        Method::GET,
        "/api/v1/orders",
        Some(&ann),
        &[],
        None,
    )
    .await;
    assert_eq!(page.body["items"].as_array().map(Vec::len), Some(1));
    Ok(())
}

#[tokio::test]
async fn a_repeated_post_is_the_same_order_and_a_reused_key_is_a_conflict() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order()).await?;
    let bea = stack.customer("bea@example.com").await;
    let body = order_body(json!([{"product_id": "sku-1", "quantity": 1}]));
    let (a, b) = tokio::join!(
        stack.place(&bea, "same", body.clone()),
        stack.place(&bea, "same", body.clone())
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!(b.status, StatusCode::ACCEPTED, "{}", b.body);
    assert_eq!(a.id(), b.id());
    let again = stack.place(&bea, "same", body).await;
    assert_eq!(again.id(), a.id());
    stack
        .place(
            &bea,
            "same",
            order_body(json!([{"product_id": "sku-1", "quantity": 3}])),
        )
        .await
        .problem(StatusCode::CONFLICT, None);
    // Another customer's identical key is their own.
    let cy = stack.customer("cy@example.com").await;
    let theirs = stack
        .place(
            &cy,
            "same",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    assert_ne!(theirs.id(), a.id());

    stack.order_becomes(&bea, &a.id(), "confirmed").await?;
    assert_eq!(stack.count("select count(*) from orders").await, 2);
    let (sagas,): (i64,) = sqlx::query_as("select count(*) from workflows")
        .fetch_one(&stack.env.pool)
        .await?;
    assert_eq!(sagas, 2, "one saga per order");
    Ok(())
}

#[tokio::test]
async fn orders_are_visible_to_their_owner_and_admins_only() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order()).await?;
    let owner = stack.customer("owner@example.com").await;
    let other = stack.customer("other@example.com").await;
    let placed = stack
        .place(
            &owner,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let id = placed.id();

    assert_eq!(stack.get(&owner, &id).await.status, StatusCode::OK);
    stack
        .get(&other, &id)
        .await
        .problem(StatusCode::NOT_FOUND, None);
    // Exactly what a missing order looks like.
    stack
        .get(&other, &Uuid::now_v7().to_string())
        .await
        .problem(StatusCode::NOT_FOUND, None);
    call(
        &stack.order,
        Method::POST,
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&other),
        &[],
        None,
    )
    .await
    .problem(StatusCode::NOT_FOUND, None);
    let listed = call(
        &stack.order,
        Method::GET,
        "/api/v1/orders",
        Some(&other),
        &[],
        None,
    )
    .await;
    assert_eq!(listed.body["items"], json!([]));
    assert_eq!(
        stack.get(&stack.admin_token(), &id).await.status,
        StatusCode::OK
    );
    stack
        .get(&owner, "not-a-uuid")
        .await
        .problem(StatusCode::BAD_REQUEST, Some("id"));
    Ok(())
}

#[tokio::test]
async fn bad_orders_get_problems_naming_the_field_and_persist_nothing() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order()).await?;
    let dan = stack.customer("dan@example.com").await;
    let one = |q: Value| order_body(json!([{"product_id": "sku-1", "quantity": q}]));

    stack
        .place(
            &dan,
            "a",
            order_body(json!([{"product_id": "no-such-sku", "quantity": 1}])),
        )
        .await
        .problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("items[0].product_id"),
        );
    stack
        .place(&dan, "b", one(json!(0)))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items[0].quantity"));
    stack
        .place(&dan, "c", one(json!(-3)))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items[0].quantity"));
    stack
        .place(&dan, "d", order_body(json!([])))
        .await
        .problem(StatusCode::BAD_REQUEST, Some("items"));
    let mut no_city = one(json!(1));
    no_city["shipping_address"]
        .as_object_mut()
        .unwrap()
        .remove("city");
    stack
        .place(&dan, "e", no_city)
        .await
        .problem(StatusCode::BAD_REQUEST, Some("shipping_address.city"));
    raw(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        Some(&dan),
        &[("idempotency-key", "f")],
        Some("{\"items\": [".into()),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("body"));
    call(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        Some(&dan),
        &[],
        Some(one(json!(1))),
    )
    .await
    .problem(StatusCode::BAD_REQUEST, Some("Idempotency-Key"));
    call(
        &stack.order,
        Method::POST,
        "/api/v1/orders",
        None,
        &[("idempotency-key", "g")],
        Some(one(json!(1))),
    )
    .await
    .problem(StatusCode::UNAUTHORIZED, None);
    let forged = JwtKeys::new("not-the-secret-not-the-secret-not-the-secret").issue(
        Uuid::now_v7(),
        Role::Admin,
        Duration::from_secs(60),
    )?;
    stack
        .place(&forged, "h", one(json!(1)))
        .await
        .problem(StatusCode::UNAUTHORIZED, None);

    assert_eq!(stack.count("select count(*) from orders").await, 0);
    assert_eq!(stack.count("select count(*) from saga_starts").await, 0);
    Ok(())
}

#[tokio::test]
async fn out_of_stock_and_a_declined_card_cancel_the_order_with_the_reason() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order()).await?;
    let eve = stack.customer("eve@example.com").await;
    // sku-2 has one unit.
    let short = stack
        .place(
            &eve,
            "short",
            order_body(json!([{"product_id": "sku-2", "quantity": 2}])),
        )
        .await;
    let cancelled = stack.order_becomes(&eve, &short.id(), "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "out_of_stock",
        "{cancelled}"
    );
    assert_eq!(cancelled["cancellation"]["reason"], "out of stock");
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        0,
        "nothing charged"
    );

    recording::inject(
        &stack.env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "card_declined"),
    )
    .await?;
    let declined = stack
        .place(
            &eve,
            "declined",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let cancelled = stack
        .order_becomes(&eve, &declined.id(), "cancelled")
        .await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "payment_declined",
        "{cancelled}"
    );
    assert_eq!(cancelled["saga_status"], "compensated");
    Ok(())
}

#[tokio::test]
async fn the_owner_cancels_before_confirmation_and_the_saga_compensates() -> anyhow::Result<()> {
    // The charge retries only after 30 s, so the saga sits between reserve and charge.
    let stack = Stack::new(sagas::order(
        Duration::from_secs(5),
        Duration::from_secs(30),
    ))
    .await?;
    recording::inject(
        &stack.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "stripe_down").times(1),
    )
    .await?;
    let fay = stack.customer("fay@example.com").await;
    let placed = stack
        .place(
            &fay,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    let id = placed.id();
    let workflow = stack.workflow_of(&fay, &placed).await?;
    eventually(SETTLE, "the charge to fail once", || async {
        let (n,): (i64,) = sqlx::query_as(
            "select count(*) from history where workflow_id = $1 and event->>'type' = 'activity_failed'",
        )
        .bind(workflow)
        .fetch_one(&stack.env.pool)
        .await?;
        Ok((n > 0).then_some(()))
    })
    .await?;

    let asked = call(
        &stack.order,
        Method::POST,
        &format!("/api/v1/orders/{id}/cancel"),
        Some(&fay),
        &[],
        None,
    )
    .await;
    assert_eq!(asked.status, StatusCode::ACCEPTED, "{}", asked.body);
    let cancelled = stack.order_becomes(&fay, &id, "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "cancelled_by_user",
        "{cancelled}"
    );
    assert_eq!(
        orderflow_testkit::settled(&stack.env, workflow, SETTLE).await?,
        "cancelled"
    );
    let steps = orderflow_testkit::scheduled(&stack.env.pool, workflow).await?;
    assert!(steps.contains(&"inventory.release".to_owned()), "{steps:?}");
    assert_eq!(
        recording::effects_count(&stack.env.pool, PAYMENT_CHARGE).await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn an_order_placed_while_the_engine_is_down_gets_its_saga_later() -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stack = Stack::with_engine(sagas::fast_order(), Engine::Later(url)).await?;
    let gus = stack.customer("gus@example.com").await;
    let placed = stack
        .place(
            &gus,
            "k",
            order_body(json!([{"product_id": "sku-1", "quantity": 1}])),
        )
        .await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    assert_eq!(
        placed.body["workflow_id"],
        Value::Null,
        "the engine is not answering"
    );
    assert_eq!(stack.count("select count(*) from saga_starts").await, 1);
    assert_eq!(
        stack.get(&gus, &placed.id()).await.body["status"],
        "pending"
    );

    // The engine comes back; the background starter starts the saga and the order follows it.
    let engine = Stack::engine_router(&stack.env, &stack.registry);
    tokio::spawn(http::serve_on(listener, engine, stack.stop.clone()));
    let confirmed = stack.order_becomes(&gus, &placed.id(), "confirmed").await?;
    assert!(confirmed["workflow_id"].is_string(), "{confirmed}");
    assert_eq!(stack.count("select count(*) from saga_starts").await, 0);
    let (sagas,): (i64,) = sqlx::query_as("select count(*) from workflows")
        .fetch_one(&stack.env.pool)
        .await?;
    assert_eq!(sagas, 1);
    Ok(())
}
