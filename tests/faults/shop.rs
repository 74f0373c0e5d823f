//! Customers of the shop: they register, then place orders through the order service's REST
//! API (each with its own `Idempotency-Key`, resent unchanged until the service answers), some
//! with a card that is declined, some for a scarce product, and some cancel right away.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};
use orderflow_service_kit::auth::{JwtKeys, Role};
use rand::{Rng, SeedableRng, rngs::StdRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::system::{JWT_SECRET, Process, Service, System};

/// Plenty of it: these orders only fail for other reasons.
pub const COMMON: (&str, i64, i64) = ("faults-common", 1250, 100_000);
/// Scarce: some orders for it are cancelled as out of stock.
pub const SCARCE: (&str, i64, i64) = ("faults-scarce", 700, 60);
const CUSTOMERS: usize = 4;
/// Orders in flight at once from the customers.
const CONCURRENCY: usize = 12;
/// How long a request is resent while the system does not answer.
const PATIENCE: Duration = Duration::from_secs(120);

/// One order as the customer placed it.
#[derive(Clone, Debug)]
pub struct Placed {
    pub id: Uuid,
    pub total_minor: i64,
    pub cancel_asked: bool,
}

#[derive(Clone, Debug)]
pub struct Shop {
    http: reqwest::Client,
    order_url: String,
    inventory_url: String,
    user_url: String,
    tokens: Vec<String>,
    pub placed_so_far: Arc<AtomicUsize>,
}

impl Shop {
    /// Adds the two products and registers the customers.
    pub async fn open(sys: &System) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()?;
        let mut shop = Self {
            http,
            order_url: sys.url(Process::Service(Service::Order)),
            inventory_url: sys.url(Process::Service(Service::Inventory)),
            user_url: sys.url(Process::Service(Service::User)),
            tokens: Vec::new(),
            placed_so_far: Arc::new(AtomicUsize::new(0)),
        };
        let admin = JwtKeys::new(JWT_SECRET).issue(
            Uuid::now_v7(),
            Role::Admin,
            Duration::from_secs(3600),
        )?;
        for (id, price, on_hand) in [COMMON, SCARCE] {
            let url = format!("{}/api/v1/products", shop.inventory_url);
            let body = json!({"id": id, "name": id,
                              "price": {"amount_minor": price, "currency": "EUR"},
                              "on_hand": on_hand});
            let r = shop
                .http
                .post(url)
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await?;
            anyhow::ensure!(
                r.status() == StatusCode::CREATED,
                "adding {id}: {}",
                r.text().await?
            );
        }
        let logins = (0..CUSTOMERS).map(|i| shop.customer(i));
        shop.tokens = futures::future::try_join_all(logins).await?;
        Ok(shop)
    }

    /// Registers customer `i` and logs them in; returns their access token.
    async fn customer(&self, i: usize) -> anyhow::Result<String> {
        let creds = json!({"email": format!("customer{i}@faults.test"), "password": "correct horse battery"});
        // Password hashing (argon2) in a debug build on two busy cores takes seconds.
        let slow = Duration::from_secs(120);
        let r = self
            .http
            .post(format!("{}/api/v1/users", self.user_url))
            .timeout(slow)
            .json(&creds)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == StatusCode::CREATED,
            "registering: {}",
            r.text().await?
        );
        let login: Value = self
            .http
            .post(format!("{}/api/v1/auth/login", self.user_url))
            .timeout(slow)
            .json(&creds)
            .send()
            .await?
            .json()
            .await?;
        Ok(login["access_token"]
            .as_str()
            .with_context(|| format!("no token in {login}"))?
            .to_owned())
    }

    /// Places `n` orders, `CONCURRENCY` at a time, decided by `seed`: one in twelve pays with a
    /// card that is declined, one in eight also buys the scarce product, one in ten is
    /// cancelled by its customer right after it was placed.
    pub async fn place_orders(&self, n: usize, seed: u64) -> anyhow::Result<Vec<Placed>> {
        let mut rng = StdRng::seed_from_u64(seed);
        let plans: Vec<(usize, Value, bool)> = (0..n)
            .map(|i| {
                let mut items =
                    vec![json!({"product_id": COMMON.0, "quantity": rng.random_range(1..=3)})];
                if rng.random_ratio(1, 8) {
                    items
                        .push(json!({"product_id": SCARCE.0, "quantity": rng.random_range(1..=2)}));
                }
                let card = if rng.random_ratio(1, 12) {
                    "pm_card_chargeDeclined"
                } else {
                    "pm_card_visa"
                };
                let body = json!({
                    "items": items,
                    "payment_method": card,
                    "shipping_address": {"name": "Faulty Buyer", "line1": "1 Main St",
                                         "city": "Berlin", "postal_code": "10115", "country": "DE"},
                });
                (i % CUSTOMERS, body, rng.random_ratio(1, 10))
            })
            .collect();
        let placed: Vec<anyhow::Result<Placed>> = stream::iter(plans)
            .map(|(customer, body, cancel)| async move {
                let placed = self.place(customer, &body, cancel).await?;
                self.placed_so_far.fetch_add(1, Ordering::Relaxed);
                Ok(placed)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        placed.into_iter().collect()
    }

    async fn place(&self, customer: usize, body: &Value, cancel: bool) -> anyhow::Result<Placed> {
        let token = &self.tokens[customer];
        let key = Uuid::new_v4().to_string();
        let url = format!("{}/api/v1/orders", self.order_url);
        let answer = self
            .resend("POST /orders", || {
                self.http
                    .post(&url)
                    .bearer_auth(token)
                    .header("idempotency-key", &key)
                    .json(body)
            })
            .await?;
        let id: Uuid = answer["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no order id in {answer}"))?;
        if cancel {
            let url = format!("{}/api/v1/orders/{id}/cancel", self.order_url);
            self.resend("POST /orders/{id}/cancel", || {
                self.http.post(&url).bearer_auth(token)
            })
            .await?;
        }
        Ok(Placed {
            id,
            total_minor: answer["total"]["amount_minor"].as_i64().unwrap_or(0),
            cancel_asked: cancel,
        })
    }

    /// Sends the request until the service gives a final answer: a 2xx, or a 409 to a cancel
    /// (the order was confirmed first). Refused connections, timeouts, 5xx and 429 are resent.
    async fn resend(
        &self,
        what: &str,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> anyhow::Result<Value> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            match request().send().await {
                Ok(r) if r.status().is_success() || r.status() == StatusCode::CONFLICT => {
                    return Ok(r.json().await.unwrap_or(Value::Null));
                }
                Ok(r)
                    if r.status().is_server_error()
                        || r.status() == StatusCode::TOO_MANY_REQUESTS =>
                {
                    last = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
                }
                Ok(r) => bail!(
                    "{what}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bail!("{what}: no answer within {PATIENCE:?}; last: {last}")
    }
}
