//! `orderflow bench --services`: the real order saga through the five services. Orders are
//! placed with `POST /api/v1/orders` on the order service, which starts the saga on the engine
//! (a child process, as in the standard run); the user, inventory, order, payment and
//! notification services run in this process from their libraries (`run`), each with its own
//! database named after the bench's, and the payment service charges the in-process Stripe
//! sandbox. Notifications go to the notification service's own outbox (no SMTP server), which
//! is the provider it uses when none is configured.
//!
//! The check reads the services' books: every order ended (confirmed, or cancelled because its
//! card was declined) with its saga terminal, one Stripe charge of the order's total per
//! confirmed order and none for a cancelled one, stock conserved (nothing left reserved, as many
//! units sold as confirmed), one notification per confirmed order, the engine's outbox empty.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use orderflow_queue::rabbit::RabbitQueue;
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    db,
    parts::Placement,
};
use orderflow_stripe_sandbox::{RunningSandbox, SandboxConfig};
use serde_json::json;
use sqlx::{Connection, PgConnection};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{BenchArgs, check::Check, stack::BenchDb};
use crate::services::{SERVICES, Settings};

/// The product every bench order buys, and how many units it is stocked with.
pub const SKU: &str = "bench-sku";
const PRICE: i64 = 2599;
const STOCKED: i64 = 1_000_000_000;

/// The five services running in this process, and the sandbox they charge.
pub struct Running {
    stop: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    sandbox: RunningSandbox,
    /// The order service's API, where orders are placed.
    pub order_url: String,
    /// A customer's access token, for placing orders.
    pub customer_token: String,
    server: String,
    db_prefix: String,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("order_url", &self.order_url)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Starts the services against `engine_url` and stocks the bench product.
    pub async fn start(db: &BenchDb, args: &BenchArgs, engine_url: &str) -> anyhow::Result<Self> {
        let server = db.server().to_owned();
        let secret = db.jwt_secret.clone();
        let sandbox = RunningSandbox::start(SandboxConfig::default()).await?;
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut binds = HashMap::new();
        for service in SERVICES {
            binds.insert(service.name, free_port()?);
        }
        let urls: HashMap<&str, String> = binds
            .iter()
            .map(|(name, bind)| (*name, format!("http://{bind}")))
            .collect();
        let (db_url, db_name) = (db.url.clone(), db.name.clone());
        let settings = Settings {
            jwt_secret: secret.clone(),
            engine_url: engine_url.to_owned(),
            inventory_url: urls["inventory"].clone(),
            user_url: urls["user"].clone(),
            redis_url: args.conn.redis_url.clone(),
            queue_prefix: db.prefix.clone(),
            // Below the services' pool size (10): the notification service's outbox provider
            // takes a second connection while its handler holds a transaction, so as many
            // sends at once as pooled connections starve each other until the task times out.
            worker_concurrency: args.worker_concurrency.min(8),
            database_url: Arc::new(move |name| {
                db::with_database(&db_url, &format!("{db_name}_{name}"))
            }),
            bind: Arc::new(move |name, _| binds.get(name).copied()),
            stripe: Some(orderflow_payment::StripeConfig::sandbox(sandbox.url())),
            smtp_url: None,
            email_from: None,
            seed_demo_products: false,
            service_retention: None,
            admin: None,
        };
        let queue = RabbitQueue::new(
            args.conn.amqp_url.clone(),
            db.topology(),
            orderflow_service_kit::config::BROKER_PATIENCE,
        );
        for service in SERVICES {
            let placement = Placement {
                bind: service.bind(&settings),
                concurrency: settings.worker_concurrency,
                workers: true,
            };
            let parts = service.parts(&settings).await?;
            tasks.spawn(parts.run(queue.clone(), placement, stop.clone()));
        }

        let mut running = Self {
            stop,
            tasks,
            sandbox,
            order_url: urls["order"].clone(),
            customer_token: String::new(),
            server,
            db_prefix: db.name.clone(),
        };
        for url in urls.values() {
            running.wait_ready(url).await?;
        }
        let keys = JwtKeys::new(&secret);
        let admin = keys.issue(Uuid::now_v7(), Role::Admin, Duration::from_secs(24 * 3600))?;
        let http = reqwest::Client::new();
        let added = http
            .post(format!("{}/api/v1/products", urls["inventory"]))
            .bearer_auth(&admin)
            .json(&json!({
                "id": SKU, "name": "bench product",
                "price": {"amount_minor": PRICE, "currency": "EUR"}, "on_hand": STOCKED
            }))
            .send()
            .await?;
        if !added.status().is_success() {
            bail!("stocking the bench product: {}", added.text().await?);
        }
        let customer = json!({"email": "bench@example.com", "password": "correct horse battery"});
        let registered = http
            .post(format!("{}/api/v1/users", urls["user"]))
            .json(&customer)
            .send()
            .await?;
        if !registered.status().is_success() {
            bail!(
                "registering the bench customer: {}",
                registered.text().await?
            );
        }
        let login: serde_json::Value = http
            .post(format!("{}/api/v1/auth/login", urls["user"]))
            .json(&customer)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        running.customer_token = login["access_token"]
            .as_str()
            .context("the login answer has no access token")?
            .to_owned();
        Ok(running)
    }

    /// Polls a service's `/ready` (30 s at most); a service that ended fails at once.
    async fn wait_ready(&mut self, base: &str) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{base}/ready")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(ended) = self.tasks.try_join_next() {
                ended??;
                bail!("a service stopped while starting");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the service at {base} was not ready within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The database URL of service `name`.
    fn database_url(&self, name: &str) -> anyhow::Result<String> {
        db::with_database(
            &format!("{}/postgres", self.server),
            &format!("{}_{name}", self.db_prefix),
        )
    }

    /// Waits (60 s at most) for the services to settle what the engine finished: the order
    /// and inventory services follow `workflow.finished` events on their own queues, so an order
    /// is confirmed and its reservation sold a moment after the driver saw the saga end.
    async fn settled(&self) -> anyhow::Result<()> {
        let mut order = PgConnection::connect(&self.database_url("order")?).await?;
        let mut inventory = PgConnection::connect(&self.database_url("inventory")?).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (open,): (i64,) = sqlx::query_as(
                "select count(*) from orders
                 where status = 'pending' or saga_status is null
                    or saga_status not in ('completed', 'compensated')",
            )
            .fetch_one(&mut order)
            .await?;
            let (held,): (i64,) =
                sqlx::query_as("select count(*) from reservations where status = 'reserved'")
                    .fetch_one(&mut inventory)
                    .await?;
            if (open == 0 && held == 0) || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        order.close().await?;
        inventory.close().await?;
        Ok(())
    }

    /// Lets the services settle, then stops every one (they drain their workers) and waits for
    /// them. Whatever is still unsettled after the wait is the check's to report.
    pub async fn stop(mut self) -> anyhow::Result<Checked> {
        self.settled().await?;
        self.stop.cancel();
        while let Some(done) = self.tasks.join_next().await {
            done??;
        }
        let ledger = self.sandbox.sandbox.ledger();
        Ok(Checked {
            ledger,
            urls: SERVICES
                .iter()
                .map(|s| Ok((s.name, self.database_url(s.name)?)))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// What the check needs once the services stopped: their databases and Stripe's ledger.
#[derive(Debug)]
pub struct Checked {
    ledger: orderflow_stripe_sandbox::ledger::LedgerView,
    urls: HashMap<&'static str, String>,
}

impl Checked {
    /// Reads the books. `sagas` orders were placed, `declined` of them with a declined card.
    pub async fn check(&self, db: &BenchDb, sagas: i64, declined: i64) -> anyhow::Result<Check> {
        let mut c = Check {
            sagas,
            expected_compensated: declined,
            ..Check::default()
        };
        let mut engine = PgConnection::connect(&db.url).await?;
        let (outbox,): (i64,) = sqlx::query_as("select count(*) from outbox")
            .fetch_one(&mut engine)
            .await?;
        c.outbox_left = outbox;
        let (sagas_not_terminal,): (i64,) = sqlx::query_as(
            "select count(*) from workflows where status not in ('completed', 'compensated')",
        )
        .fetch_one(&mut engine)
        .await?;
        engine.close().await?;

        let mut order = PgConnection::connect(&self.urls["order"]).await?;
        let orders: Vec<(Uuid, String, Option<String>, i64)> =
            sqlx::query_as("select id, status, saga_status, total_minor from orders")
                .fetch_all(&mut order)
                .await?;
        order.close().await?;
        let mut confirmed = 0;
        for (id, status, saga, total) in &orders {
            let charges = self.ledger.charges_with("order_id", &id.to_string());
            match (status.as_str(), saga.as_deref()) {
                ("confirmed", Some("completed")) => {
                    c.completed += 1;
                    confirmed += 1;
                    let one_full_charge = charges.len() == 1
                        && charges[0].amount == *total
                        && charges[0].amount_refunded == 0;
                    if !one_full_charge {
                        c.wrong_effects += 1;
                    }
                }
                ("cancelled", Some("compensated")) => {
                    c.compensated += 1;
                    if !charges.is_empty() {
                        c.wrong_effects += 1;
                    }
                }
                _ => c.other += 1,
            }
        }
        // Sagas the engine holds unfinished that no order shows as open.
        c.other = c.other.max(sagas_not_terminal);
        // Charges for no order of the run, or refunds (no order was cancelled after its charge).
        let charged: i64 = orders
            .iter()
            .map(|(id, ..)| self.ledger.charges_with("order_id", &id.to_string()).len() as i64)
            .sum();
        c.stray_rows += self.ledger.charges.len() as i64 - charged;
        c.stray_rows += self.ledger.refunds.len() as i64;

        let mut inventory = PgConnection::connect(&self.urls["inventory"]).await?;
        let (on_hand, reserved, sold): (i64, i64, i64) = sqlx::query_as(
            "select on_hand::int8, reserved::int8, sold::int8 from products where id = $1",
        )
        .bind(SKU)
        .fetch_one(&mut inventory)
        .await?;
        inventory.close().await?;
        // One unit per order: every confirmed order sold one, nothing is left held, and no unit
        // appeared or vanished.
        if on_hand + reserved + sold != STOCKED || reserved != 0 || sold != confirmed {
            c.wrong_effects += 1;
            eprintln!(
                "stock: on_hand {on_hand}, reserved {reserved}, sold {sold}; \
                 {confirmed} orders confirmed of {STOCKED} stocked"
            );
        }

        let mut notification = PgConnection::connect(&self.urls["notification"]).await?;
        let (sent,): (i64,) =
            sqlx::query_as("select count(*) from notifications where channel = 'email'")
                .fetch_one(&mut notification)
                .await?;
        notification.close().await?;
        if sent != confirmed {
            c.wrong_effects += (sent - confirmed).abs();
            eprintln!("{sent} notifications for {confirmed} confirmed orders");
        }
        Ok(c)
    }
}

/// Drops the services' databases (those that were created).
pub async fn drop_all(db: &BenchDb) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(&format!("{}/postgres", db.server())).await?;
    for service in SERVICES {
        sqlx::query(&format!(
            "drop database if exists {}_{} with (force)",
            db.name, service.name
        ))
        .execute(&mut admin)
        .await?;
    }
    admin.close().await?;
    Ok(())
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}
