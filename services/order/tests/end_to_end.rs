//! The order saga through all five real services in-process: the engine (testkit) with the
//! production saga registry, the user, inventory and order services (`common::Stack`), the
//! payment service against the in-process Stripe sandbox, and the notification service against a
//! real SMTP server (aiosmtpd, started by the test; `scripts/test-servers.sh` installs it). Every
//! service has its own fresh database; all share the test's queue prefix.

mod common;

use std::{sync::Arc, time::Duration};

use axum::{Router, http::StatusCode};
use common::{ON_HAND, PRICE, SCARCE, SETTLE, SKU, Stack, paid_with};
use orderflow_notification::NotificationConfig;
use orderflow_payment::{
    Payments, StripeConfig, breaker::BreakerConfig, cache::OutcomeCache, gateway::Gateway,
};
use orderflow_service_kit::{auth::JwtKeys, http::Readiness};
use orderflow_service_testkit::{Answer, SmtpServer, free_port, fresh_db};
use orderflow_stripe_sandbox::{Faults, RunningSandbox, SandboxConfig};
use orderflow_testkit::eventually;
use serde_json::{Value, json};
use uuid::Uuid;

const FROM: &str = "Shop <orders@shop.test>";

/// How the external systems start.
struct Setup {
    /// Whether the SMTP server is up from the start (else the test starts it, on its port).
    smtp_up: bool,
    breaker: BreakerConfig,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            smtp_up: true,
            breaker: BreakerConfig::default(),
        }
    }
}

/// The common stack plus the payment and notification services' workers, and their outsides:
/// the Stripe sandbox and the SMTP server.
struct E2e {
    stack: Stack,
    /// The payment service's API, for its `/metrics`.
    payment: Router,
    sandbox: RunningSandbox,
    smtp_port: u16,
    smtp: Option<SmtpServer>,
}

impl E2e {
    async fn new() -> anyhow::Result<Self> {
        Self::with(Setup::default()).await
    }

    async fn with(setup: Setup) -> anyhow::Result<Self> {
        let stack = Stack::new(orderflow_workflows::registry()).await?;

        // The payment service against the Stripe sandbox.
        let sandbox = RunningSandbox::start(SandboxConfig::default()).await?;
        let mut stripe = StripeConfig::sandbox(sandbox.url());
        stripe.breaker = setup.breaker;
        let pay_pool = fresh_db("payment", &orderflow_payment::migrator()).await?;
        let payments = Arc::new(Payments {
            db: pay_pool.clone().into(),
            gateway: Gateway::new(&stripe)?,
            cache: OutcomeCache::new(
                stack.redis.clone(),
                &stack.env.topology.prefix,
                Duration::from_secs(600),
            ),
        });
        stack.spawn_worker(orderflow_payment::handlers(payments));
        let payment = orderflow_payment::router(
            orderflow_payment::AppState {
                db: pay_pool.into(),
                keys: JwtKeys::new(common::SECRET),
                webhook_secret: stripe.webhook_secret.clone(),
            },
            Readiness::new(),
        );

        // The notification service against the SMTP server.
        let smtp_port = free_port().await?;
        let smtp = match setup.smtp_up {
            true => Some(SmtpServer::start(smtp_port).await?),
            false => None,
        };
        let notif_pool = fresh_db("notification", &orderflow_notification::migrator()).await?;
        let mut notif_config = NotificationConfig::new(stack.service.clone());
        notif_config.smtp_url = Some(format!("smtp://127.0.0.1:{smtp_port}"));
        notif_config.email_from = FROM.into();
        notif_config.send_timeout = Duration::from_secs(5);
        stack.spawn_worker(orderflow_notification::handlers(
            notif_pool.clone(),
            orderflow_notification::providers(notif_pool, &notif_config)?,
        ));
        Ok(Self {
            stack,
            payment,
            sandbox,
            smtp_port,
            smtp,
        })
    }

    /// Places an order for `quantity` units of `sku`, paid with `payment_method`.
    async fn place(&self, token: &str, sku: &str, quantity: i64, payment_method: &str) -> Answer {
        let body = paid_with(
            json!([{"product_id": sku, "quantity": quantity}]),
            payment_method,
        );
        self.stack
            .place(token, &Uuid::new_v4().to_string(), body)
            .await
    }

    /// Every email the SMTP server received (none while it is down).
    fn mail(&self) -> anyhow::Result<Vec<String>> {
        self.smtp
            .as_ref()
            .map_or(Ok(Vec::new()), SmtpServer::messages)
    }

    /// Waits for the first email, then returns every one received.
    async fn mail_arrives(&self) -> anyhow::Result<Vec<String>> {
        eventually(SETTLE, "the confirmation email", || async {
            let m = self.mail()?;
            Ok((!m.is_empty()).then_some(m))
        })
        .await
    }

    /// `GET` from the engine's REST API, as an operator's tool calls it.
    async fn engine_get(&self, path: &str) -> Answer {
        let engine = Stack::engine_router(&self.stack.env, &self.stack.registry);
        let operator = orderflow_auth::engine::issue(
            &orderflow_auth::KeyRing::new(common::SECRET),
            orderflow_auth::engine::EngineRole::Operator,
            "e2e",
            std::time::Duration::from_secs(600),
        )
        .expect("signing");
        orderflow_service_testkit::call(
            &engine,
            axum::http::Method::GET,
            path,
            Some(&operator),
            &[],
            None,
        )
        .await
    }

    /// The payment service's `/metrics` (Prometheus text).
    async fn payment_metrics(&self) -> anyhow::Result<String> {
        orderflow_service_testkit::metrics(&self.payment).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placed_order_is_charged_once_stock_is_sold_and_one_email_goes_out() -> anyhow::Result<()>
{
    let e2e = E2e::new().await?;
    let stack = &e2e.stack;
    let ann = stack.customer("ann@example.com").await;
    let placed = e2e.place(&ann, SKU, 2, "pm_card_visa").await;
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
    let ledger = e2e.sandbox.sandbox.ledger();
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
    let mail = e2e.mail_arrives().await?;
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
    let e2e = E2e::new().await?;
    let stack = &e2e.stack;
    let bea = stack.customer("bea@example.com").await;
    let placed = e2e.place(&bea, SKU, 3, "pm_card_chargeDeclined").await;
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
    let ledger = e2e.sandbox.sandbox.ledger();
    assert_eq!(ledger.payment_intents.len(), 1, "{ledger:?}");
    assert_eq!(ledger.payment_intents[0].metadata["order_id"], id);
    assert!(ledger.charges.is_empty(), "{ledger:?}");
    assert!(ledger.refunds.is_empty(), "{ledger:?}");

    // The reservation is released: every unit is back on hand.
    stack
        .stock_becomes(json!({"on_hand": ON_HAND, "reserved": 0, "sold": 0}))
        .await?;
    // And no confirmation went out.
    assert!(e2e.mail()?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_stock_charges_nothing_and_cancels_the_order_with_the_reason() -> anyhow::Result<()>
{
    let e2e = E2e::new().await?;
    let stack = &e2e.stack;
    let cy = stack.customer("cy@example.com").await;
    // The scarce product has one unit.
    let placed = e2e.place(&cy, SCARCE, 2, "pm_card_visa").await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);

    let cancelled = stack.order_settles(&cy, &placed.id(), "cancelled").await?;
    assert_eq!(
        cancelled["cancellation"]["code"], "out_of_stock",
        "{cancelled}"
    );
    assert_eq!(cancelled["cancellation"]["reason"], "out of stock");
    assert_eq!(cancelled["saga_status"], "compensated", "{cancelled}");
    let ledger = e2e.sandbox.sandbox.ledger();
    assert!(
        ledger.payment_intents.is_empty(),
        "Stripe never asked: {ledger:?}"
    );
    assert_eq!(e2e.sandbox.sandbox.requests(), 0);
    assert!(e2e.mail()?.is_empty());
    Ok(())
}

/// Stripe answers every call with a 500: the charge is retried, the breaker opens (and says so on
/// `/metrics`), the saga gives the step up and compensates. The refund has to settle the charge
/// in doubt first, so it waits for Stripe; once Stripe is back the order ends cancelled, the
/// stock is back and no money is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_down_retries_then_compensates_with_the_breaker_open_in_metrics()
-> anyhow::Result<()> {
    let e2e = E2e::with(Setup {
        breaker: BreakerConfig {
            min_calls: 3,
            open_for: Duration::from_secs(3),
            ..BreakerConfig::default()
        },
        ..Setup::default()
    })
    .await?;
    let stack = &e2e.stack;
    e2e.sandbox.sandbox.set_faults(Faults {
        fail_requests: u32::MAX,
        ..Faults::default()
    });
    let dee = stack.customer("dee@example.com").await;
    let placed = e2e.place(&dee, SKU, 1, "pm_card_visa").await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let id = placed.id();
    let workflow = stack.workflow_of(&dee, &placed).await?;

    // The breaker opens on the failed attempts, and /metrics says so.
    eventually(SETTLE, "the breaker to be open on /metrics", || async {
        let m = e2e.payment_metrics().await?;
        Ok(m.contains("payment_stripe_circuit_state 2").then_some(()))
    })
    .await?;
    // The charge was retried, first against Stripe's 500s, then refused by the open breaker,
    // and given up: the saga compensates.
    // v3 retries the charge for 40–50 s, to outlast the breaker of a production payment service.
    eventually(
        Duration::from_secs(90),
        "the saga to compensate",
        || async { Ok((stack.env.status(workflow).await? != "running").then_some(())) },
    )
    .await?;
    let failures = stack.failures(workflow).await?;
    let charge: Vec<&str> = failures
        .iter()
        .filter(|(activity, _)| activity == "payment.charge")
        .map(|(_, code)| code.as_str())
        .collect();
    assert!(charge.len() >= 2, "the charge was retried: {failures:?}");
    assert!(charge.contains(&"stripe_unavailable"), "{failures:?}");
    assert!(charge.contains(&"stripe_circuit_open"), "{failures:?}");
    assert_eq!(
        stack.get(&dee, &id).await.body["status"],
        "pending",
        "not confirmed while Stripe is down"
    );

    // Stripe is back: the compensation settles the charge in doubt and refunds it.
    e2e.sandbox.sandbox.set_faults(Faults::default());
    let cancelled = eventually(
        Duration::from_secs(90),
        "the order to be cancelled with its saga compensated",
        || async {
            let a = stack.get(&dee, &id).await;
            Ok(
                (a.body["status"] == "cancelled" && a.body["saga_status"] == "compensated")
                    .then_some(a.body),
            )
        },
    )
    .await?;
    assert_eq!(cancelled["cancellation"]["code"], "failed", "{cancelled}");
    stack
        .stock_becomes(json!({"on_hand": ON_HAND, "reserved": 0, "sold": 0}))
        .await?;
    let ledger = e2e.sandbox.sandbox.ledger();
    assert!(
        ledger.payment_intents.len() <= 1,
        "one intent at most: {ledger:?}"
    );
    for c in &ledger.charges {
        assert_eq!(
            c.amount_refunded, c.amount,
            "every charge refunded: {ledger:?}"
        );
    }
    assert!(
        e2e.mail()?.is_empty(),
        "no confirmation for a cancelled order"
    );
    Ok(())
}

/// SMTP is down when the saga reaches its last step: the order is confirmed anyway (the pivot
/// is behind it), the email step keeps retrying, and the one email goes out once SMTP is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_keeps_the_order_confirmed_and_the_email_goes_out_once_smtp_is_back()
-> anyhow::Result<()> {
    let mut e2e = E2e::with(Setup {
        smtp_up: false,
        ..Setup::default()
    })
    .await?;
    let stack = &e2e.stack;
    let eli = stack.customer("eli@example.com").await;
    let placed = e2e.place(&eli, SKU, 1, "pm_card_visa").await;
    assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
    let id = placed.id();
    let workflow = stack.workflow_of(&eli, &placed).await?;

    let confirmed = stack.order_becomes(&eli, &id, "confirmed").await?;
    eventually(SETTLE, "the email step to fail twice", || async {
        let failed = stack.failures(workflow).await?;
        let n = failed
            .iter()
            .filter(|(activity, _)| activity == "notification.send")
            .count();
        Ok((n >= 2).then_some(()))
    })
    .await?;
    assert_eq!(stack.env.status(workflow).await?, "running", "{confirmed}");
    assert_eq!(stack.get(&eli, &id).await.body["status"], "confirmed");

    let port = e2e.smtp_port;
    e2e.smtp = Some(SmtpServer::start(port).await?);
    let done = e2e.stack.order_settles(&eli, &id, "confirmed").await?;
    assert_eq!(done["saga_status"], "completed", "{done}");
    let mail = e2e.mail_arrives().await?;
    assert_eq!(mail.len(), 1, "{mail:?}");
    assert!(mail[0].contains("X-RcptTo: eli@example.com"), "{}", mail[0]);
    assert!(mail[0].contains(&id), "{}", mail[0]);
    // Only once, however many attempts failed before.
    assert_eq!(e2e.mail()?.len(), 1);
    Ok(())
}

/// Support has only the `pi_...` id from Stripe's dashboard: the engine's REST list filter
/// (`business_key`) finds the saga whose charge step recorded that PaymentIntent, and no other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_is_found_by_its_stripe_payment_intent_id() -> anyhow::Result<()> {
    let e2e = E2e::new().await?;
    let stack = &e2e.stack;
    let ann = stack.customer("ann@example.com").await;
    let mut orders = Vec::new();
    for _ in 0..2 {
        let placed = e2e.place(&ann, SKU, 1, "pm_card_visa").await;
        assert_eq!(placed.status, StatusCode::ACCEPTED, "{}", placed.body);
        let saga = stack.workflow_of(&ann, &placed).await?;
        orders.push((placed.id(), saga));
    }
    for (order, _) in &orders {
        stack.order_settles(&ann, order, "confirmed").await?;
    }
    let ledger = e2e.sandbox.sandbox.ledger();
    let (order, saga) = &orders[0];
    let intent = ledger
        .payment_intents
        .iter()
        .find(|pi| pi.metadata.get("order_id") == Some(order))
        .unwrap_or_else(|| panic!("a PaymentIntent for order {order}: {ledger:?}"));
    assert!(intent.id.starts_with("pi_"), "{}", intent.id);

    let found = e2e
        .engine_get(&format!("/api/v1/workflows?business_key={}", intent.id))
        .await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.body);
    let ids: Vec<&str> = found.body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["id"].as_str())
        .collect();
    assert_eq!(ids, [saga.to_string()], "{}", found.body);
    let unknown = e2e
        .engine_get("/api/v1/workflows?business_key=pi_unknown")
        .await;
    assert_eq!(unknown.body["items"], json!([]), "{}", unknown.body);
    Ok(())
}
