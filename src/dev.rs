//! `orderflow dev`: OrderFlow in one process with nothing else installed. The engine runs its
//! portable loops ([`orderflow_engine::portable`]) on the embedded SQLite store, tasks and
//! results go through the in-process queue (durable in SQLite), and the order saga's activities
//! run on the dev shop below: stock and reservations, payments through the built-in Stripe
//! sandbox (a real HTTP client against `orderflow-stripe-sandbox` on a local port, so Stripe's
//! test cards succeed, decline or fail), orders, and an email outbox instead of SMTP.
//!
//! Files under `--data-dir`: `engine.db`, `queue.db`, `shop.db` (WAL) and the Stripe sandbox's
//! books, `stripe.json`. `--memory` keeps nothing.
//!
//! Scope: this is not yet the five services, their REST APIs or the admin UI on SQLite; those
//! are Postgres-only. The dev HTTP surface is the engine's start/get/history plus the products
//! and the email outbox.

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
};

use anyhow::Context;
use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use orderflow_activities::{
    TaskContext,
    broker::Topology,
    contracts::*,
    queue::{embedded::EmbeddedQueue, worker::QueueWorker},
    worker::Handler,
};
use orderflow_core::ActivityError;
use orderflow_engine::{
    EngineConfig,
    apply::{Applier, StartError, StartRequest},
    portable::PortableEngine,
    store::{backend::Store, sqlite::SqliteStore},
};
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `orderflow dev` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Where the embedded databases live (one SQLite file each).
    #[arg(long, env = "ORDERFLOW_DATA_DIR", default_value = "./.orderflow")]
    pub data_dir: PathBuf,
    /// Keep everything in memory; nothing survives the process.
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
    /// Address of the HTTP API.
    #[arg(long, env = "ORDERFLOW_BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,
}

/// The demo catalogue, seeded once.
const DEMO_PRODUCTS: [(&str, &str, i64, i64); 3] = [
    ("sku-1", "OrderFlow mug", 1299, 100),
    ("sku-2", "Saga t-shirt", 2500, 50),
    ("sku-3", "Compensation sticker", 199, 1000),
];
const DEMO_EMAIL: &str = "demo@orderflow.dev";

/// Everything `orderflow dev` runs, started; dropped or stopped, it stops.
#[derive(Debug)]
pub struct Dev {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Dev {
    /// Stops every loop and waits for in-flight tasks.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Runs until Ctrl-C.
pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    let dev = start(&args).await?;
    let url = format!("http://{}", dev.addr);
    println!("OrderFlow dev is running (engine, workers, Stripe sandbox, email outbox).");
    match args.memory {
        true => println!("  data:     in memory (gone on exit)"),
        false => println!("  data:     {}", args.data_dir.display()),
    }
    println!("  API:      {url}/api/v1/workflows");
    println!("  emails:   {url}/dev/emails");
    println!("  products: {url}/dev/products");
    println!("  demo user: {DEMO_EMAIL} (pays with pm_card_visa; try pm_card_chargeDeclined)");
    println!("Place an order:");
    println!("  {}", place_order_curl(&url));
    tokio::signal::ctrl_c().await?;
    dev.shutdown().await;
    Ok(())
}

/// The curl printed on start.
pub fn place_order_curl(url: &str) -> String {
    format!(
        "curl -s -X POST {url}/api/v1/workflows -H 'content-type: application/json' -d '{}'",
        json!({ "type": ORDER_SAGA_TYPE, "input": demo_order("pm_card_visa") })
    )
}

const ORDER_SAGA_TYPE: &str = "order";

/// A valid order of the demo user.
pub fn demo_order(payment_method: &str) -> Value {
    json!({
        "order_id": Uuid::new_v4(),
        "user_id": Uuid::new_v5(&Uuid::NAMESPACE_URL, DEMO_EMAIL.as_bytes()),
        "items": [{ "product_id": "sku-1", "quantity": 2 }],
        "total": { "amount_minor": 2598, "currency": "EUR" },
        "payment_method": payment_method,
        "email": DEMO_EMAIL,
    })
}

/// Opens the data, serves the API and runs the engine and workers.
pub async fn start(args: &DevArgs) -> anyhow::Result<Dev> {
    let file = |name: &str| (!args.memory).then(|| args.data_dir.join(name));
    if !args.memory {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("creating {}", args.data_dir.display()))?;
    }
    let topology = Topology::default();
    let store = SqliteStore::open(file("engine.db").as_deref()).await?;
    let queue = EmbeddedQueue::open(file("queue.db").as_deref(), topology.clone()).await?;
    let shop = open_shop(file("shop.db").as_deref()).await?;
    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // The Stripe sandbox on a local port, reached over HTTP like Stripe.
    let sandbox_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let stripe_url = format!("http://{}", sandbox_listener.local_addr()?);
    // Stripe keeps its payments across our restarts, so the sandbox does too (`stripe.json`).
    let sandbox = match file("stripe.json") {
        Some(path) => orderflow_stripe_sandbox::Sandbox::persistent(Default::default(), &path)?,
        None => orderflow_stripe_sandbox::Sandbox::new(Default::default()),
    };
    let s = stop.clone();
    tasks.spawn(async move {
        if let Err(e) = orderflow_stripe_sandbox::serve(sandbox_listener, sandbox, s).await {
            tracing::error!(error = %e, "the Stripe sandbox stopped");
        }
    });

    let registry = Arc::new(orderflow_workflows::registry());
    let engine = PortableEngine::new(
        store.clone(),
        queue.clone(),
        registry,
        EngineConfig::new("", topology.clone()),
    );
    let applier = engine.applier.clone();
    tasks.spawn(engine.run(stop.clone()));
    let shop_ctx = Arc::new(ShopCtx {
        pool: shop.clone(),
        stripe_url,
        http: reqwest::Client::new(),
    });
    let worker = ORDER_SAGA_ACTIVITIES
        .iter()
        .fold(QueueWorker::new(queue, topology), |w, a| {
            w.handler(Arc::new(DevActivity(a, shop_ctx.clone())), 8)
        });
    tasks.spawn(worker.run(stop.clone()));

    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    let addr = listener.local_addr()?;
    let app = router(AppState {
        store,
        applier,
        shop,
    });
    let s = stop.clone();
    tasks.spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(s.cancelled_owned());
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "the dev API stopped");
        }
    });
    Ok(Dev { addr, stop, tasks })
}

async fn open_shop(file: Option<&Path>) -> anyhow::Result<SqlitePool> {
    let pool = orderflow_activities::queue::sqlite_pool(file).await?;
    sqlx::migrate!("migrations/sqlite/dev").run(&pool).await?;
    for (id, name, price, stock) in DEMO_PRODUCTS {
        sqlx::query(
            "insert into products (id, name, price_minor, currency, stock)
             values (?, ?, ?, 'EUR', ?) on conflict (id) do nothing",
        )
        .bind(id)
        .bind(name)
        .bind(price)
        .bind(stock)
        .execute(&pool)
        .await?;
    }
    Ok(pool)
}

// ------------------------------------------------------------------ HTTP

#[derive(Debug, Clone)]
struct AppState {
    store: SqliteStore,
    applier: Applier,
    shop: SqlitePool,
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/workflows", post(start_workflow))
        .route("/api/v1/workflows/{id}", get(get_workflow))
        .route("/api/v1/workflows/{id}/history", get(get_history))
        .route("/dev/products", get(products))
        .route("/dev/emails", get(emails))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

/// A `application/problem+json` answer.
fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let body = json!({ "title": status.canonical_reason(), "status": status.as_u16(), "detail": detail.into() });
    (
        status,
        [("content-type", "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "dev API");
    problem(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
}

struct Body {
    workflow_type: String,
    input: Value,
    business_keys: Option<Value>,
}

async fn start_workflow(State(st): State<AppState>, body: axum::body::Bytes) -> Response {
    // `{"type": ..., "input": ..., "business_keys"?: ...}`; anything else names the field.
    let body: Value = match serde_json::from_slice(&body) {
        Ok(Value::Object(b)) => Value::Object(b),
        Ok(_) => return problem(StatusCode::BAD_REQUEST, "body: expected a JSON object"),
        Err(e) => return problem(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    if let Some(k) = body.as_object().and_then(|o| {
        o.keys()
            .find(|k| !["type", "input", "business_keys"].contains(&k.as_str()))
    }) {
        return problem(StatusCode::BAD_REQUEST, format!("{k}: unknown field"));
    }
    let Some(workflow_type) = body["type"].as_str().map(str::to_owned) else {
        return problem(StatusCode::BAD_REQUEST, "type: a workflow type is required");
    };
    let body = Body {
        workflow_type,
        input: body["input"].clone(),
        business_keys: body.get("business_keys").cloned(),
    };
    let req = StartRequest {
        business_keys: body.business_keys.unwrap_or_else(|| match &body.input {
            Value::Object(m) => {
                json!({ "order_id": m.get("order_id").cloned().unwrap_or_default() })
            }
            _ => json!({}),
        }),
        workflow_type: body.workflow_type,
        input: body.input,
        idempotency_key: None,
        request_hash: None,
    };
    match st.applier.start(&st.store, req).await {
        Ok(started) => (
            StatusCode::CREATED,
            Json(json!({ "id": started.id.0, "status": "running" })),
        )
            .into_response(),
        Err(StartError::UnknownType(t)) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("type: unknown workflow type `{t}`"),
        ),
        Err(StartError::Invalid(e)) => {
            problem(StatusCode::UNPROCESSABLE_ENTITY, format!("input: {e}"))
        }
        Err(e) => internal(e),
    }
}

async fn get_workflow(State(st): State<AppState>, UrlPath(id): UrlPath<Uuid>) -> Response {
    match st.store.get(id).await {
        Ok(Some(w)) => Json(json!({
            "id": w.id, "type": w.workflow_type, "version": w.version, "status": w.status,
            "reason": w.reason, "state": w.state, "business_keys": w.business_keys,
            "created_at": w.created_at, "updated_at": w.updated_at,
        }))
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, "id: no such workflow"),
        Err(e) => internal(e),
    }
}

async fn get_history(State(st): State<AppState>, UrlPath(id): UrlPath<Uuid>) -> Response {
    match st.store.history(id).await {
        Ok(events) if events.is_empty() => problem(StatusCode::NOT_FOUND, "id: no such workflow"),
        Ok(events) => Json(events).into_response(),
        Err(e) => internal(e),
    }
}

/// A row of the dev shop's catalogue: id, name, price in minor units, currency, stock.
type ProductRow = (String, String, i64, String, i64);

async fn products(State(st): State<AppState>) -> Response {
    let rows = sqlx::query_as::<_, ProductRow>(
        "select id, name, price_minor, currency, stock from products order by id",
    )
    .fetch_all(&st.shop)
    .await;
    match rows {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|(id, name, price, currency, stock)| {
                    json!({ "id": id, "name": name, "price_minor": price, "currency": currency, "stock": stock })
                })
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

/// The email outbox: what would have been sent, newest first.
async fn emails(State(st): State<AppState>) -> Response {
    let rows: Result<Vec<(String, String, String)>, _> =
        sqlx::query_as("select recipient, subject, body from emails order by sent_at desc")
            .fetch_all(&st.shop)
            .await;
    match rows {
        Ok(rows) => Json(
            rows.into_iter()
                .map(|(to, subject, body)| json!({ "to": to, "subject": subject, "body": body }))
                .collect::<Vec<_>>(),
        )
        .into_response(),
        Err(e) => internal(e),
    }
}

// ------------------------------------------------------------------ activities

#[derive(Debug)]
struct ShopCtx {
    pool: SqlitePool,
    stripe_url: String,
    http: reqwest::Client,
}

/// One of the order saga's activities on the dev shop; each is idempotent on the task's key.
struct DevActivity(&'static str, Arc<ShopCtx>);

/// (The trait is declared with `async_trait`; this is its expansion, to need no macro here.)
impl Handler for DevActivity {
    fn activity(&self) -> &str {
        self.0
    }

    fn handle<'a, 'b, 'r>(
        &'a self,
        ctx: &'b TaskContext,
        input: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ActivityError>> + Send + 'r>>
    where
        'a: 'r,
        'b: 'r,
        Self: 'r,
    {
        Box::pin(async move {
            let input: OrderSagaInput = serde_json::from_value(input)
                .map_err(|e| ActivityError::permanent("bad_input", e.to_string()))?;
            let shop = &self.1;
            let key = ctx.idempotency_key.as_str();
            match self.0 {
                INVENTORY_RESERVE => reserve(shop, key, &input).await,
                INVENTORY_RELEASE => release(shop, ctx, &input).await,
                PAYMENT_CHARGE => charge(shop, key, &input).await,
                PAYMENT_REFUND => refund(shop, ctx, &input).await,
                ORDER_CREATE => set_order(shop, &input, "confirmed").await,
                ORDER_CANCEL => set_order(shop, &input, "cancelled").await,
                NOTIFICATION_SEND => notify(shop, key, &input).await,
                other => Err(ActivityError::permanent(
                    "unknown_activity",
                    format!("the dev shop has no `{other}`"),
                )),
            }
        })
    }
}

fn db(e: sqlx::Error) -> ActivityError {
    ActivityError::retryable("database", e.to_string())
}

/// Takes the stock of every item, or none of it, once per key.
async fn reserve(
    shop: &ShopCtx,
    key: &str,
    input: &OrderSagaInput,
) -> Result<Value, ActivityError> {
    let mut tx = shop.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    let seen: Option<(String,)> = sqlx::query_as("select key from reservations where key = ?")
        .bind(key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
    if seen.is_none() {
        for item in &input.items {
            let taken =
                sqlx::query("update products set stock = stock - ? where id = ? and stock >= ?")
                    .bind(i64::from(item.quantity))
                    .bind(&item.product_id)
                    .bind(i64::from(item.quantity))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?
                    .rows_affected();
            if taken == 0 {
                return Err(ActivityError::permanent(
                    "out_of_stock",
                    format!("not enough `{}` in stock", item.product_id),
                ));
            }
        }
        sqlx::query("insert into reservations (key, order_id, items) values (?, ?, ?)")
            .bind(key)
            .bind(input.order_id.to_string())
            .bind(serde_json::to_string(&input.items).unwrap_or_default())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
    }
    Ok(json!(Reservation {
        reservation_id: key.to_owned()
    }))
}

/// Gives back the stock of the forward step's reservation, once; nothing if it never happened.
async fn release(
    shop: &ShopCtx,
    ctx: &TaskContext,
    _input: &OrderSagaInput,
) -> Result<Value, ActivityError> {
    let forward = ctx.idempotency_key.trim_end_matches("/compensate");
    let mut tx = shop.pool.begin_with("BEGIN IMMEDIATE").await.map_err(db)?;
    let row: Option<(String,)> = sqlx::query_as(
        "update reservations set released = 1 where key = ? and released = 0 returning items",
    )
    .bind(forward)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    if let Some((items,)) = row {
        let items: Vec<OrderItem> = serde_json::from_str(&items).unwrap_or_default();
        for item in items {
            sqlx::query("update products set stock = stock + ? where id = ?")
                .bind(i64::from(item.quantity))
                .bind(&item.product_id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)?;
    Ok(json!({ "released": forward }))
}

/// A confirmed PaymentIntent at the Stripe sandbox, with the key as Stripe's Idempotency-Key.
async fn charge(shop: &ShopCtx, key: &str, input: &OrderSagaInput) -> Result<Value, ActivityError> {
    let res = shop
        .http
        .post(format!("{}/v1/payment_intents", shop.stripe_url))
        .bearer_auth(orderflow_stripe_sandbox::DEFAULT_SECRET_KEY)
        .header("Idempotency-Key", key)
        .form(&[
            ("amount", input.total.amount_minor.to_string()),
            ("currency", input.total.currency.to_lowercase()),
            ("payment_method", input.payment_method.clone()),
            ("confirm", "true".to_owned()),
        ])
        .send()
        .await
        .map_err(|e| ActivityError::retryable("stripe_unreachable", e.to_string()))?;
    let status = res.status();
    let body: Value = res
        .json()
        .await
        .map_err(|e| ActivityError::retryable("stripe_response", e.to_string()))?;
    let outcome = if status.is_success() {
        "succeeded"
    } else if body["error"]["code"] == "card_declined" {
        "declined"
    } else {
        "failed"
    };
    sqlx::query(
        "insert into payments (key, order_id, amount_minor, currency, payment_method, status)
         values (?, ?, ?, ?, ?, ?) on conflict (key) do update set status = excluded.status",
    )
    .bind(key)
    .bind(input.order_id.to_string())
    .bind(input.total.amount_minor)
    .bind(&input.total.currency)
    .bind(&input.payment_method)
    .bind(outcome)
    .execute(&shop.pool)
    .await
    .map_err(db)?;
    match outcome {
        "succeeded" => Ok(json!(Charge {
            payment_id: key.to_owned(),
            payment_intent_id: body["id"].as_str().unwrap_or_default().to_owned(),
        })),
        "declined" => Err(ActivityError::permanent(
            "card_declined",
            body["error"]["message"]
                .as_str()
                .unwrap_or("card declined")
                .to_owned(),
        )),
        _ => Err(ActivityError::retryable(
            "payment_failed",
            format!("Stripe answered {status}: {body}"),
        )),
    }
}

/// Refunds the forward step's charge at the sandbox if it succeeded; nothing otherwise.
async fn refund(
    shop: &ShopCtx,
    ctx: &TaskContext,
    _input: &OrderSagaInput,
) -> Result<Value, ActivityError> {
    let forward = ctx.idempotency_key.trim_end_matches("/compensate");
    let charged: Option<Charge> = ctx.result(orderflow_workflows::order::CHARGE).ok();
    let Some(charged) = charged else {
        return Ok(json!(Refund {
            payment_id: None,
            refund_id: None
        }));
    };
    let res = shop
        .http
        .post(format!("{}/v1/refunds", shop.stripe_url))
        .bearer_auth(orderflow_stripe_sandbox::DEFAULT_SECRET_KEY)
        .header("Idempotency-Key", ctx.idempotency_key.as_str())
        .form(&[("payment_intent", charged.payment_intent_id.clone())])
        .send()
        .await
        .map_err(|e| ActivityError::retryable("stripe_unreachable", e.to_string()))?;
    let ok = res.status().is_success();
    let body: Value = res.json().await.unwrap_or_default();
    if !ok {
        return Err(ActivityError::retryable("refund_failed", body.to_string()));
    }
    sqlx::query("update payments set status = 'refunded' where key = ?")
        .bind(forward)
        .execute(&shop.pool)
        .await
        .map_err(db)?;
    Ok(json!(Refund {
        payment_id: Some(charged.payment_id),
        refund_id: body["id"].as_str().map(str::to_owned),
    }))
}

async fn set_order(
    shop: &ShopCtx,
    input: &OrderSagaInput,
    status: &str,
) -> Result<Value, ActivityError> {
    sqlx::query(
        "insert into orders (order_id, user_id, total_minor, currency, status) values (?, ?, ?, ?, ?)
         on conflict (order_id) do update set status = excluded.status",
    )
    .bind(input.order_id.to_string())
    .bind(input.user_id.to_string())
    .bind(input.total.amount_minor)
    .bind(&input.total.currency)
    .bind(status)
    .execute(&shop.pool)
    .await
    .map_err(db)?;
    Ok(json!(OrderConfirmation {
        order_id: input.order_id,
        status: status.to_owned(),
    }))
}

/// Puts the confirmation in the email outbox, once per key.
async fn notify(shop: &ShopCtx, key: &str, input: &OrderSagaInput) -> Result<Value, ActivityError> {
    let (units, cents) = (
        input.total.amount_minor / 100,
        input.total.amount_minor % 100,
    );
    sqlx::query(
        "insert into emails (key, recipient, subject, body, sent_at) values (?, ?, ?, ?, ?)
         on conflict (key) do nothing",
    )
    .bind(key)
    .bind(&input.email)
    .bind(format!("Order {} confirmed", input.order_id))
    .bind(format!(
        "Thank you! Your order {} of {units}.{cents:02} {} is confirmed.",
        input.order_id, input.total.currency
    ))
    .bind(chrono_now_micros())
    .execute(&shop.pool)
    .await
    .map_err(db)?;
    Ok(json!(Notification {
        notification_id: key.to_owned()
    }))
}

fn chrono_now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}
