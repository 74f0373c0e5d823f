//! The order saga through all five real services in-process: the engine (testkit) with the
//! production saga registry, the user, inventory and order services, the payment service against
//! the in-process Stripe sandbox, and the notification service against a real SMTP server
//! (aiosmtpd, started by the test; `scripts/test-servers.sh` installs it). Every service has its
//! own fresh database; all share the test's queue prefix.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{Method, Request, StatusCode, header},
};
use orderflow_activities::worker::Worker;
use orderflow_engine::api::AppState as EngineState;
use orderflow_notification::NotificationConfig;
use orderflow_order::OrderConfig;
use orderflow_payment::{Payments, StripeConfig, cache::OutcomeCache, gateway::Gateway};
use orderflow_service_kit::{
    ServiceConfig,
    auth::{JwtKeys, Role},
    db,
    events::{self, Subscription},
    http::{self, Readiness},
    kv,
};
use orderflow_stripe_sandbox::{RunningSandbox, SandboxConfig};
use orderflow_testkit::{TestEnv, amqp_url, eventually, pg_server};
use serde_json::{Value, json};
use tokio::{net::TcpListener, process::Child};
use tokio_util::sync::{CancellationToken, DropGuard};
use tower::ServiceExt as _;
use uuid::Uuid;

const SECRET: &str = "e2e-test-secret-e2e-test-secret-e2e-0123";
const FROM: &str = "Shop <orders@shop.test>";
const SETTLE: Duration = Duration::from_secs(30);
const SKU: &str = "sku-1";
const PRICE: i64 = 1250;
const ON_HAND: i64 = 100;

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

/// aiosmtpd on a fresh port, keeping every message it receives in a Maildir.
struct SmtpServer {
    _child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    async fn start() -> anyhow::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
        let root =
            std::env::temp_dir().join(format!("orderflow-e2e-smtp-{}", Uuid::new_v4().simple()));
        // aiosmtpd's Mailbox creates the Maildir itself, but not its parent.
        std::fs::create_dir_all(&root)?;
        let maildir = root.join("mail");
        let python = std::env::var("ORDERFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .kill_on_drop(true)
            .spawn()?;
        eventually(Duration::from_secs(15), "aiosmtpd to listen", || {
            let exited = child.try_wait();
            async move {
                if let Ok(Some(status)) = exited {
                    anyhow::bail!(
                        "aiosmtpd exited with {status}; is it installed (scripts/test-servers.sh)?"
                    );
                }
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(Self {
            _child: child,
            port,
            maildir,
        })
    }

    /// Every message received so far, as the server stored it.
    fn messages(&self) -> anyhow::Result<Vec<String>> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            out.push(std::fs::read_to_string(e?.path())?);
        }
        Ok(out)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(root) = self.maildir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

struct Stack {
    env: TestEnv,
    order: Router,
    user: Router,
    inventory: Router,
    sandbox: RunningSandbox,
    smtp: SmtpServer,
    _guard: DropGuard,
}

impl Stack {
    async fn new() -> anyhow::Result<Self> {
        orderflow_testkit::init_tracing();
        let env = TestEnv::new().await?;
        let stop = CancellationToken::new();
        let engine_stop = env.spawn_engine(Arc::new(orderflow_workflows::registry()));
        let engine_url = serve(
            orderflow_engine::api::router(EngineState {
                pool: env.pool.clone(),
                applier: env.applier(Arc::new(orderflow_workflows::registry())),
                amqp_url: amqp_url(),
            }),
            &stop,
        )
        .await?;
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
                sessions: orderflow_user::sessions::Sessions::new(redis.clone(), &topology.prefix),
                access_ttl: Duration::from_secs(900),
                refresh_ttl: Duration::from_secs(3600),
            }),
            Readiness::new(),
        );
        let user_url = serve(user.clone(), &stop).await?;

        // The inventory service: catalogue API, reserve/release workers and its saga follower.
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
        let inv_sub = orderflow_inventory::subscription(&inv_config);
        inv_sub.declare().await?;
        tokio::spawn({
            let (pool, stop) = (inv_pool.clone(), stop.clone());
            async move {
                events::follow(
                    inv_sub,
                    |e| {
                        let pool = pool.clone();
                        async move { orderflow_inventory::settle::on_workflow_finished(&pool, &e).await }
                    },
                    stop,
                )
                .await;
            }
        });
        let inv_worker = Worker::builder(amqp_url(), topology.clone())
            .handlers(orderflow_inventory::handlers(inv_pool, &inv_config), 8)
            .build();
        tokio::spawn(inv_worker.run(stop.clone().cancelled_owned()));

        // The payment service against the Stripe sandbox.
        let sandbox = RunningSandbox::start(SandboxConfig::default()).await?;
        let payments = Arc::new(Payments {
            pool: fresh_db("payment", &orderflow_payment::migrator()).await?,
            gateway: Gateway::new(&StripeConfig::sandbox(sandbox.url()))?,
            cache: OutcomeCache::new(redis, &topology.prefix, Duration::from_secs(600)),
        });
        let pay_worker = Worker::builder(amqp_url(), topology.clone())
            .handlers(orderflow_payment::handlers(payments), 8)
            .build();
        tokio::spawn(pay_worker.run(stop.clone().cancelled_owned()));

        // The notification service against the SMTP server.
        let smtp = SmtpServer::start().await?;
        let notif_pool = fresh_db("notification", &orderflow_notification::migrator()).await?;
        let mut notif_config = NotificationConfig::new(service.clone());
        notif_config.smtp_url = Some(format!("smtp://127.0.0.1:{}", smtp.port));
        notif_config.email_from = FROM.into();
        notif_config.send_timeout = Duration::from_secs(5);
        let notif_worker = Worker::builder(amqp_url(), topology.clone())
            .handlers(
                orderflow_notification::handlers(
                    notif_pool.clone(),
                    orderflow_notification::providers(notif_pool, &notif_config)?,
                ),
                8,
            )
            .build();
        tokio::spawn(notif_worker.run(stop.clone().cancelled_owned()));

        // The order service: everything `orderflow_order::run` runs, except its own socket.
        let order_pool = fresh_db("order", &orderflow_order::migrator()).await?;
        let mut config = OrderConfig::new(service);
        config.inventory_url = inventory_url;
        config.user_url = user_url;
        config.call_timeout = Duration::from_secs(2);
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
            Readiness::new().postgres(order_pool),
        );
        let stack = Self {
            env,
            order,
            user,
            inventory,
            sandbox,
            smtp,
            _guard: {
                let s = stop.clone();
                tokio::spawn(async move {
                    s.cancelled().await;
                    engine_stop.cancel();
                });
                stop.drop_guard()
            },
        };
        let added = call(
            &stack.inventory,
            Method::POST,
            "/api/v1/products",
            Some(&stack.admin_token()),
            &[],
            Some(json!({"id": SKU, "name": SKU, "price": {"amount_minor": PRICE, "currency": "EUR"}, "on_hand": ON_HAND})),
        )
        .await;
        anyhow::ensure!(
            added.status == StatusCode::CREATED,
            "product: {}",
            added.body
        );
        Ok(stack)
    }

    fn admin_token(&self) -> String {
        JwtKeys::new(SECRET)
            .issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(600))
            .unwrap()
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

    /// Places an order for `quantity` units of the product, paid with `payment_method`.
    async fn place(&self, token: &str, quantity: i64, payment_method: &str) -> Answer {
        call(
            &self.order,
            Method::POST,
            "/api/v1/orders",
            Some(token),
            &[("idempotency-key", &Uuid::new_v4().to_string())],
            Some(json!({
                "items": [{"product_id": SKU, "quantity": quantity}],
                "shipping_address": {"name": "Ann Buyer", "line1": "1 Main St", "city": "Berlin",
                                     "postal_code": "10115", "country": "DE"},
                "payment_method": payment_method,
            })),
        )
        .await
    }

    /// Waits until the order has `status` and its saga has ended, and returns it.
    async fn order_settles(&self, token: &str, id: &str, status: &str) -> anyhow::Result<Value> {
        eventually(
            SETTLE,
            &format!("order {id} to be {status} with its saga ended"),
            || async {
                let a = call(
                    &self.order,
                    Method::GET,
                    &format!("/api/v1/orders/{id}"),
                    Some(token),
                    &[],
                    None,
                )
                .await;
                let ended = ["completed", "compensated", "cancelled", "failed"]
                    .contains(&a.body["saga_status"].as_str().unwrap_or(""));
                Ok((a.body["status"] == status && ended).then_some(a.body))
            },
        )
        .await
    }

    /// Waits until the product's stock is `expected` (`on_hand`, `reserved`, `sold`).
    async fn stock_becomes(&self, expected: Value) -> anyhow::Result<()> {
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
}

#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
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
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    Answer {
        status,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_charged_once_stock_is_sold_and_one_email_goes_out() -> anyhow::Result<()>
{
    let stack = Stack::new().await?;
    let ann = stack.customer("ann@example.com").await;
    let placed = stack.place(&ann, 2, "pm_card_visa").await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let id = placed.id();
    let total = 2 * PRICE;
    assert_eq!(
        placed.body["total"],
        json!({"amount_minor": total, "currency": "EUR"})
    );

    let done = stack.order_settles(&ann, &id, "confirmed").await?;
    assert_eq!(done["saga_status"], "completed", "{done}");
    assert_eq!(done["cancellation"], Value::Null, "{done}");

    // Stripe: exactly one charge, of the order's total, for this order.
    let ledger = stack.sandbox.sandbox.ledger();
    assert_eq!(ledger.charges.len(), 1, "{ledger:?}");
    let charges = ledger.charges_with("order_id", &id);
    assert_eq!(charges.len(), 1, "{ledger:?}");
    assert_eq!(
        (charges[0].amount, charges[0].currency.as_str()),
        (total, "eur")
    );
    assert_eq!(charges[0].amount_refunded, 0);
    assert!(ledger.refunds.is_empty(), "{ledger:?}");

    // Inventory: the two units are sold, none held.
    stack
        .stock_becomes(json!({"on_hand": ON_HAND - 2, "reserved": 0, "sold": 2}))
        .await?;

    // SMTP: one confirmation for this order, to the customer.
    let mail = eventually(SETTLE, "the confirmation email", || async {
        let m = stack.smtp.messages()?;
        Ok((!m.is_empty()).then_some(m))
    })
    .await?;
    assert_eq!(mail.len(), 1, "{mail:?}");
    let m = &mail[0];
    assert!(m.contains("X-RcptTo: ann@example.com"), "{m}");
    assert!(m.contains("Subject: Your order"), "{m}");
    assert!(m.contains(&id), "{m}");
    assert!(m.contains("25.00 EUR"), "{m}");

    // The saga ran its four steps once each, on the pinned v1.
    let steps = orderflow_testkit::scheduled(
        &stack.env.pool,
        done["workflow_id"].as_str().expect("a saga").parse()?,
    )
    .await?;
    assert_eq!(
        steps,
        [
            "inventory.reserve",
            "payment.charge",
            "order.create",
            "notification.send"
        ],
        "{steps:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_cancels_the_order_charges_nothing_and_releases_the_stock()
-> anyhow::Result<()> {
    let stack = Stack::new().await?;
    let bea = stack.customer("bea@example.com").await;
    let placed = stack.place(&bea, 3, "pm_card_chargeDeclined").await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let id = placed.id();

    let cancelled = stack.order_settles(&bea, &id, "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "payment_declined",
        "{cancelled}"
    );
    assert_eq!(
        cancelled["cancellation"]["reason"], "payment declined",
        "{cancelled}"
    );
    assert_eq!(cancelled["saga_status"], "compensated", "{cancelled}");

    // Stripe saw the declined intent but made no charge.
    let ledger = stack.sandbox.sandbox.ledger();
    assert_eq!(ledger.payment_intents.len(), 1, "{ledger:?}");
    assert_eq!(ledger.payment_intents[0].metadata["order_id"], id);
    assert!(ledger.charges.is_empty(), "{ledger:?}");
    assert!(ledger.refunds.is_empty(), "{ledger:?}");

    // The reservation is released: every unit is back on hand.
    stack
        .stock_becomes(json!({"on_hand": ON_HAND, "reserved": 0, "sold": 0}))
        .await?;
    // And no confirmation went out.
    assert!(stack.smtp.messages()?.is_empty());
    Ok(())
}
