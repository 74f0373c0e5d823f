//! The payment service on the real thing: the production async-stripe client against the local
//! Stripe sandbox on port 0, a fresh Postgres database per test, the local Redis, and the
//! service's HTTP app served on port 0 for webhooks. The `on_sqlite_*` tests run the same
//! activities and API on an embedded SQLite file with the in-process outcome cache, as
//! `orderflow dev` does.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use chrono::Utc;
use orderflow_activities::{Activity, TaskContext};
use orderflow_core::Phase;
use orderflow_payment::{
    AppState, Payments, StripeConfig,
    activities::{ChargeActivity, RefundActivity, RefundReturnActivity},
    breaker::BreakerConfig,
    cache::OutcomeCache,
    model::{ChargeRequest, PaymentStatus},
    store,
};
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    db::Db,
    http::Readiness,
    kv,
};
use orderflow_stripe_sandbox::{Faults, RunningSandbox, SandboxConfig, WebhookTarget};
use orderflow_testkit::eventually;
use orderflow_workflows::order::contracts::{Charge, Money, OrderItem, OrderSagaInput};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;

const JWT_SECRET: &str = "payment-test-secret-payment-test-secret-0123";
const WEBHOOK_SECRET: &str = "whsec_payment_tests";

/// One test's world: its own payment database, Redis namespace, sandbox and service.
struct World {
    payments: Arc<Payments>,
    db: Db,
    sandbox: RunningSandbox,
    state: AppState,
    /// Stops the service's HTTP server.
    stop: CancellationToken,
    /// The SQLite file, removed with the world.
    file: Option<PathBuf>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(f) = &self.file {
            remove_sqlite(f);
        }
    }
}

/// Removes a SQLite database and its WAL files.
fn remove_sqlite(file: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

#[derive(Default)]
struct Setup {
    breaker: Option<BreakerConfig>,
    request_timeout: Option<Duration>,
    /// Whether the sandbox posts its webhooks to the service. Off by default: a webhook can
    /// settle a pending payment by itself, which would hide what the idempotency key does.
    webhooks: bool,
    /// An embedded SQLite file and the in-process outcome cache instead of Postgres and Redis.
    sqlite: bool,
}

impl World {
    async fn new() -> anyhow::Result<Self> {
        Self::with(Setup::default()).await
    }

    async fn with(setup: Setup) -> anyhow::Result<Self> {
        orderflow_testkit::init_tracing();
        let tag = Uuid::new_v4().simple().to_string();
        let file = setup
            .sqlite
            .then(|| std::env::temp_dir().join(format!("orderflow-test-payment-{tag}.db")));
        let url = match &file {
            Some(f) => format!("sqlite://{}", f.display()),
            None => format!(
                "{}/orderflow_test_payment_{tag}",
                orderflow_testkit::pg_server()
            ),
        };
        let db = Db::connect(&url, &orderflow_payment::migrations()).await?;
        // The service listens first, so the sandbox can post its webhooks to it.
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let service_addr = listener.local_addr()?;
        let sandbox = RunningSandbox::start(SandboxConfig {
            webhook: setup.webhooks.then(|| WebhookTarget {
                url: format!("http://{service_addr}/api/v1/webhooks/stripe"),
                secret: WEBHOOK_SECRET.into(),
            }),
            ..SandboxConfig::default()
        })
        .await?;
        let mut stripe = StripeConfig::sandbox(sandbox.url());
        stripe.webhook_secret = WEBHOOK_SECRET.into();
        if let Some(b) = setup.breaker {
            stripe.breaker = b;
        }
        if let Some(t) = setup.request_timeout {
            stripe.request_timeout = t;
        }
        let cache = match setup.sqlite {
            true => OutcomeCache::in_process(Duration::from_secs(600)),
            false => OutcomeCache::new(
                kv::connect("redis://127.0.0.1:6379").await?,
                &format!("t{}.", &tag[..12]),
                Duration::from_secs(600),
            ),
        };
        let payments = orderflow_payment::payments(db.clone(), &stripe, cache)?;
        let state = AppState {
            db: db.clone(),
            keys: JwtKeys::new(JWT_SECRET),
            webhook_secret: WEBHOOK_SECRET.into(),
        };
        let stop = CancellationToken::new();
        let app = orderflow_payment::router(state.clone(), Readiness::new().database(db.clone()));
        tokio::spawn(orderflow_service_kit::http::serve_on(
            listener,
            app,
            stop.clone(),
        ));
        Ok(Self {
            payments,
            db,
            sandbox,
            state,
            stop,
            file,
        })
    }

    fn charge(&self) -> ChargeActivity {
        ChargeActivity(self.payments.clone())
    }

    fn refund(&self) -> RefundActivity {
        RefundActivity(self.payments.clone())
    }

    fn app(&self) -> axum::Router {
        orderflow_payment::router(self.state.clone(), Readiness::new())
    }

    fn token(&self, user: Uuid, role: Role) -> String {
        JwtKeys::new(JWT_SECRET)
            .issue(user, role, Duration::from_secs(600))
            .unwrap()
    }
}

fn input(payment_method: &str) -> OrderSagaInput {
    OrderSagaInput {
        order_id: Uuid::now_v7(),
        user_id: Uuid::now_v7(),
        items: vec![OrderItem {
            product_id: "sku-1".into(),
            quantity: 2,
        }],
        total: Money {
            amount_minor: 2599,
            currency: "EUR".into(),
        },
        payment_method: payment_method.into(),
        email: "buyer@example.com".into(),
    }
}

/// The task of the charge step (or its compensation) of workflow `wf`.
fn task(wf: Uuid, phase: Phase) -> TaskContext {
    TaskContext::first_attempt(wf, "charge", phase)
}

fn pi_of(charge: &Charge) -> &str {
    &charge.payment_intent_id
}

/// Each scenario twice: `postgres::<name>` on Postgres with Redis, as in production, and
/// `sqlite::<name>` on an embedded SQLite file with the in-process cache, as under
/// `orderflow dev`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Setup::default()).await
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Setup {
                        sqlite: true,
                        ..super::Setup::default()
                    })
                    .await
                }
            )*
        }
    };
}

on_both_backends!(
    a_charge_succeeds_and_records_the_intent_in_three_phases,
    the_same_key_twice_makes_one_payment_intent,
    a_declined_card_is_a_non_retryable_card_declined,
    a_stripe_500_is_retryable_and_the_retry_charges_once,
    a_stripe_429_is_retryable_and_certainly_charged_nothing,
    a_lost_answer_times_out_retryably_and_the_retry_finds_the_same_intent,
    a_processing_error_is_retried_under_a_fresh_key,
    a_crash_between_the_phases_never_charges_twice,
    a_refund_happens_exactly_once,
    a_returned_order_is_refunded_once_and_an_unknown_one_not_at_all,
    refunding_a_charge_that_never_happened_is_a_no_op_and_bars_it,
    refunding_an_in_doubt_charge_settles_it_then_refunds_it_once,
    the_cache_answers_a_repeated_charge_without_the_database_or_stripe,
    signed_webhooks_are_recorded_and_complete_a_pending_payment,
    webhook_signatures_are_checked,
    payments_are_shown_to_their_payer_and_listed_to_admins,
    the_service_runs_ready_and_stops_on_its_token,
);

async fn a_charge_succeeds_and_records_the_intent_in_three_phases(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let charge = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await?;

    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.payment_intents.len(), 1);
    let pi = &ledger.payment_intents[0];
    assert_eq!(pi.id, pi_of(&charge));
    assert_eq!((pi.amount, pi.currency.as_str()), (2599, "eur"));
    assert_eq!(pi.metadata["payment_id"], charge.payment_id);
    assert_eq!(pi.metadata["order_id"], inp.order_id.to_string());
    assert_eq!(ledger.charges.len(), 1);

    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Succeeded);
    assert_eq!(row.id.to_string(), charge.payment_id);
    assert_eq!(row.payment_intent_id.as_deref(), Some(pi_of(&charge)));
    assert_eq!((row.amount_minor, row.currency.as_str()), (2599, "EUR"));
    Ok(())
}

async fn the_same_key_twice_makes_one_payment_intent(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    // Two deliveries of the same task at once: both find the row pending and call Stripe with
    // the same key; Stripe (the sandbox) runs the first and replays it for the second.
    let (charge, t1, t2) = (
        w.charge(),
        task(wf, Phase::Forward),
        task(wf, Phase::Forward),
    );
    let (a, b) = tokio::join!(charge.run(&t1, inp.clone()), charge.run(&t2, inp.clone()));
    let (a, b) = (a?, b?);
    assert_eq!(a, b);
    // And once more after the fact.
    let c = w.charge().run(&task(wf, Phase::Forward), inp).await?;
    assert_eq!(a, c);
    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.payment_intents.len(), 1);
    assert_eq!(ledger.charges.len(), 1);

    // The key itself, through the production client: one intent whatever the number of calls.
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    for _ in 0..2 {
        let again = w
            .payments
            .gateway
            .charge(&row, &row.stripe_key(), None)
            .await?;
        assert_eq!(again, a.payment_intent_id);
    }
    assert_eq!(w.sandbox.sandbox.ledger().payment_intents.len(), 1);
    Ok(())
}

async fn a_declined_card_is_a_non_retryable_card_declined(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let err = w
        .charge()
        .run(&task(wf, Phase::Forward), input("pm_card_chargeDeclined"))
        .await
        .unwrap_err();
    assert_eq!(err.code, "card_declined");
    assert!(!err.retryable);
    assert!(err.message.contains("generic_decline"), "{}", err.message);
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Declined);
    assert!(
        row.payment_intent_id.is_some(),
        "the declined intent is kept"
    );
    assert!(w.sandbox.sandbox.ledger().charges.is_empty());

    // A repeat gives the same answer without asking Stripe again.
    let before = w.sandbox.sandbox.requests();
    let again = w
        .charge()
        .run(&task(wf, Phase::Forward), input("pm_card_chargeDeclined"))
        .await
        .unwrap_err();
    assert_eq!(
        (again.code.as_str(), again.retryable),
        ("card_declined", false)
    );
    assert_eq!(w.sandbox.sandbox.requests(), before);
    Ok(())
}

async fn a_stripe_500_is_retryable_and_the_retry_charges_once(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    w.sandbox.sandbox.set_faults(Faults {
        fail_requests: 1,
        ..Faults::default()
    });
    let err = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable),
        ("stripe_unavailable", true)
    );
    assert!(
        err.outcome_unknown,
        "a 500 may come after Stripe acted: a saga giving the charge up refunds it"
    );
    assert!(w.sandbox.sandbox.ledger().payment_intents.is_empty());
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Pending);
    assert_eq!(row.stripe_attempt, 0, "an unknown outcome keeps the key");

    let charge = w.charge().run(&task(wf, Phase::Forward), inp).await?;
    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.charges[0].payment_intent, charge.payment_intent_id);
    Ok(())
}

/// A 429 is Stripe saying it did nothing: retryable, and not of unknown outcome, so a saga that
/// gives the charge up after 429s does not refund (or first make) a charge that never happened.
async fn a_stripe_429_is_retryable_and_certainly_charged_nothing(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    w.sandbox.sandbox.set_faults(Faults {
        rate_limit_requests: 1,
        ..Faults::default()
    });
    let err = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable, err.outcome_unknown),
        ("stripe_rate_limited", true, false)
    );
    assert!(w.sandbox.sandbox.ledger().payment_intents.is_empty());
    let charge = w.charge().run(&task(wf, Phase::Forward), inp).await?;
    assert_eq!(w.sandbox.sandbox.ledger().charges.len(), 1);
    assert!(!charge.payment_intent_id.is_empty());
    Ok(())
}

async fn a_lost_answer_times_out_retryably_and_the_retry_finds_the_same_intent(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(Setup {
        request_timeout: Some(Duration::from_millis(300)),
        ..setup
    })
    .await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    // Stripe charges, but its answer comes too late for the client.
    w.sandbox.sandbox.set_faults(Faults {
        hang_requests: 1,
        hang_ms: 2_000,
        ..Faults::default()
    });
    let err = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await
        .unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable),
        ("stripe_unavailable", true)
    );
    assert_eq!(w.sandbox.sandbox.ledger().charges.len(), 1);

    let charge = w.charge().run(&task(wf, Phase::Forward), inp).await?;
    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(
        ledger.charges.len(),
        1,
        "the retry replayed the first charge"
    );
    assert_eq!(ledger.charges[0].payment_intent, charge.payment_intent_id);
    Ok(())
}

async fn a_processing_error_is_retried_under_a_fresh_key(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let err = w
        .charge()
        .run(
            &task(wf, Phase::Forward),
            input("pm_card_chargeDeclinedProcessingError"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable),
        ("card_processing_error", true)
    );
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(
        (row.status, row.stripe_attempt),
        (PaymentStatus::Pending, 1)
    );
    assert_eq!(row.stripe_key(), format!("{wf}/charge#1"));
    assert!(w.sandbox.sandbox.ledger().charges.is_empty());
    Ok(())
}

async fn a_crash_between_the_phases_never_charges_twice(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let inp = input("pm_card_visa");
    let req = ChargeRequest::from_saga(&inp)?;

    // Died after phase 1: the row is pending, Stripe never heard of it.
    let wf1 = Uuid::now_v7();
    let key1 = format!("{wf1}/charge");
    store::insert_or_get(&w.db, &key1, wf1, &req, PaymentStatus::Pending).await?;
    let c1 = w
        .charge()
        .run(&task(wf1, Phase::Forward), inp.clone())
        .await?;

    // Died after phase 2: Stripe charged, the intent id never reached the table.
    let wf2 = Uuid::now_v7();
    let key2 = format!("{wf2}/charge");
    let pending = store::insert_or_get(&w.db, &key2, wf2, &req, PaymentStatus::Pending).await?;
    let first = w
        .payments
        .gateway
        .charge(&pending, &pending.stripe_key(), None)
        .await?;
    let c2 = w.charge().run(&task(wf2, Phase::Forward), inp).await?;
    assert_eq!(c2.payment_intent_id, first);
    assert_eq!(c2.payment_id, pending.id.to_string());

    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.charges.len(), 2, "one charge per saga");
    assert_eq!(ledger.charges_with("payment_id", &c1.payment_id).len(), 1);
    assert_eq!(ledger.charges_with("payment_id", &c2.payment_id).len(), 1);
    Ok(())
}

async fn a_refund_happens_exactly_once(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let charge = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await?;
    let (refund, t1, t2) = (
        w.refund(),
        task(wf, Phase::Compensate),
        task(wf, Phase::Compensate),
    );
    let (a, b) = tokio::join!(refund.run(&t1, inp.clone()), refund.run(&t2, inp.clone()));
    let (a, b) = (a?, b?);
    let c = w.refund().run(&task(wf, Phase::Compensate), inp).await?;
    assert_eq!(a.refund_id, b.refund_id);
    assert_eq!(a, c);
    assert_eq!(a.payment_id.as_deref(), Some(charge.payment_id.as_str()));

    let ledger = w.sandbox.sandbox.ledger();
    let refunds = ledger.refunds_of(pi_of(&charge));
    assert_eq!(refunds.len(), 1);
    assert_eq!(refunds[0].amount, 2599);
    assert_eq!(Some(refunds[0].id.clone()), a.refund_id);
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Refunded);
    Ok(())
}

/// The return saga's refund finds the order saga's charge by its key and refunds it once, however
/// often its task runs; a return of an order whose charge never got here is refused for good.
async fn a_returned_order_is_refunded_once_and_an_unknown_one_not_at_all(
    setup: Setup,
) -> anyhow::Result<()> {
    use orderflow_workflows::returns::contracts::ReturnSagaInput;
    let w = World::with(setup).await?;
    let order_wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let charge = w
        .charge()
        .run(&task(order_wf, Phase::Forward), inp.clone())
        .await?;
    let ret = ReturnSagaInput {
        order_id: inp.order_id,
        order_workflow_id: order_wf,
        user_id: inp.user_id,
        items: inp.items.clone(),
        total: inp.total.clone(),
        email: inp.email.clone(),
    };
    let refund = RefundReturnActivity(w.payments.clone());
    let return_wf = Uuid::now_v7();
    let step = TaskContext::first_attempt(return_wf, "refund", Phase::Forward);
    let a = refund.run(&step, ret.clone()).await?;
    let b = refund.run(&step, ret.clone()).await?;
    assert_eq!(a, b, "a repeated task answers with the first refund");
    assert_eq!(a.payment_id, charge.payment_id);
    let ledger = w.sandbox.sandbox.ledger();
    let refunds = ledger.refunds_of(pi_of(&charge));
    assert_eq!(refunds.len(), 1);
    assert_eq!(Some(refunds[0].id.clone()), a.refund_id);

    let unknown = ReturnSagaInput {
        order_workflow_id: Uuid::now_v7(),
        ..ret
    };
    let err = refund.run(&step, unknown).await.unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable),
        ("charge_not_found", false)
    );
    Ok(())
}

async fn refunding_a_charge_that_never_happened_is_a_no_op_and_bars_it(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let r = w
        .refund()
        .run(&task(wf, Phase::Compensate), inp.clone())
        .await?;
    assert_eq!(r.refund_id, None);
    let row = store::by_key(&w.db, &format!("{wf}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Voided);

    // The charge task that timed out, arriving after its compensation, must not charge.
    let err = w
        .charge()
        .run(&task(wf, Phase::Forward), inp)
        .await
        .unwrap_err();
    assert_eq!(
        (err.code.as_str(), err.retryable),
        ("payment_voided", false)
    );
    assert_eq!(w.sandbox.sandbox.requests(), 0);
    Ok(())
}

async fn refunding_an_in_doubt_charge_settles_it_then_refunds_it_once(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let req = ChargeRequest::from_saga(&inp)?;
    let pending = store::insert_or_get(
        &w.db,
        &format!("{wf}/charge"),
        wf,
        &req,
        PaymentStatus::Pending,
    )
    .await?;
    let intent = w
        .payments
        .gateway
        .charge(&pending, &pending.stripe_key(), None)
        .await?;
    let r = w.refund().run(&task(wf, Phase::Compensate), inp).await?;
    assert!(r.refund_id.is_some());
    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.charges.len(), 1);
    assert_eq!(ledger.refunds_of(&intent).len(), 1);
    Ok(())
}

async fn the_cache_answers_a_repeated_charge_without_the_database_or_stripe(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let first = w
        .charge()
        .run(&task(wf, Phase::Forward), inp.clone())
        .await?;
    let requests = w.sandbox.sandbox.requests();
    // With the database closed and Stripe failing, only the cache (Redis, or this process's
    // without it) can answer.
    w.db.close().await;
    w.sandbox.sandbox.set_faults(Faults {
        fail_requests: 100,
        ..Faults::default()
    });
    let again = w.charge().run(&task(wf, Phase::Forward), inp).await?;
    assert_eq!(again, first);
    assert_eq!(w.sandbox.sandbox.requests(), requests);
    Ok(())
}

#[tokio::test]
async fn the_breaker_opens_on_stripe_failures_and_refuses_fast() -> anyhow::Result<()> {
    let w = World::with(Setup {
        breaker: Some(BreakerConfig {
            min_calls: 3,
            window: 10,
            ..BreakerConfig::default()
        }),
        ..Setup::default()
    })
    .await?;
    w.sandbox.sandbox.set_faults(Faults {
        fail_requests: 100,
        ..Faults::default()
    });
    for _ in 0..3 {
        let e = w
            .charge()
            .run(&task(Uuid::now_v7(), Phase::Forward), input("pm_card_visa"))
            .await
            .unwrap_err();
        assert_eq!(e.code, "stripe_unavailable");
    }
    let seen = w.sandbox.sandbox.requests();
    let e = w
        .charge()
        .run(&task(Uuid::now_v7(), Phase::Forward), input("pm_card_visa"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code.as_str(), e.retryable),
        ("stripe_circuit_open", true)
    );
    assert_eq!(w.sandbox.sandbox.requests(), seen, "refused without a call");

    let metrics = orderflow_service_kit::http::render_metrics();
    assert!(
        metrics.contains("payment_stripe_circuit_state 2"),
        "the open state is a metric"
    );
    Ok(())
}

async fn events_of(db: &Db, pi: &str) -> anyhow::Result<Vec<String>> {
    Ok(store::events_of(db, pi)
        .await?
        .into_iter()
        .map(|e| e.kind)
        .collect())
}

async fn signed_webhooks_are_recorded_and_complete_a_pending_payment(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(Setup {
        webhooks: true,
        ..setup
    })
    .await?;
    let wf = Uuid::now_v7();
    let inp = input("pm_card_visa");
    let req = ChargeRequest::from_saga(&inp)?;
    let pending = store::insert_or_get(
        &w.db,
        &format!("{wf}/charge"),
        wf,
        &req,
        PaymentStatus::Pending,
    )
    .await?;
    // Phase 2 without phase 3: only the webhook can tell the table.
    let intent = w
        .payments
        .gateway
        .charge(&pending, &pending.stripe_key(), None)
        .await?;
    // The handler settles the payment, then records the event: wait for both.
    let db = w.db.clone();
    let (row, events) = eventually(
        Duration::from_secs(10),
        "the webhook to settle the payment and be recorded",
        || {
            let (db, intent) = (db.clone(), intent.clone());
            async move {
                let p = store::get(&db, pending.id).await?.unwrap();
                let events = events_of(&db, &intent).await?;
                Ok((p.status == PaymentStatus::Succeeded && !events.is_empty())
                    .then_some((p, events)))
            }
        },
    )
    .await?;
    assert_eq!(row.payment_intent_id.as_deref(), Some(intent.as_str()));
    assert_eq!(events, vec!["payment_intent.succeeded"]);
    Ok(())
}

fn webhook_request(body: &str, signature: Option<&str>) -> Request<Body> {
    let mut req =
        Request::post("/api/v1/webhooks/stripe").header(header::CONTENT_TYPE, "application/json");
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

async fn problem(res: axum::response::Response) -> (StatusCode, Option<String>, Value) {
    let status = res.status();
    let ct = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        ct,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn webhook_signatures_are_checked(setup: Setup) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let intent = orderflow_stripe_sandbox::ledger::PaymentIntent::example("pi_test_webhook");
    let event = orderflow_stripe_sandbox::ledger::event_json(
        "payment_intent.succeeded",
        orderflow_stripe_sandbox::ledger::intent_json(&intent),
        None,
    );
    let body = event.to_string();
    let now = Utc::now().timestamp();
    let good = orderflow_stripe_sandbox::webhooks::signature_header(WEBHOOK_SECRET, now, &body);

    let (status, ..) = problem(w.app().oneshot(webhook_request(&body, Some(&good))).await?).await;
    assert_eq!(status, StatusCode::OK);
    // Stripe redelivers: answered 200, recorded once.
    let (status, ..) = problem(w.app().oneshot(webhook_request(&body, Some(&good))).await?).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        events_of(&w.db, "pi_test_webhook").await?,
        vec!["payment_intent.succeeded"]
    );

    let wrong_key = orderflow_stripe_sandbox::webhooks::signature_header("whsec_other", now, &body);
    let tampered = body.replace("2599", "1");
    let stale =
        orderflow_stripe_sandbox::webhooks::signature_header(WEBHOOK_SECRET, now - 3600, &body);
    for (body, sig) in [
        (body.as_str(), Some(wrong_key.as_str())),
        (tampered.as_str(), Some(good.as_str())),
        (body.as_str(), Some(stale.as_str())),
        (body.as_str(), Some("garbage")),
        (body.as_str(), None),
    ] {
        let (status, ct, p) = problem(w.app().oneshot(webhook_request(body, sig)).await?).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{sig:?}");
        assert_eq!(ct.as_deref(), Some("application/problem+json"));
        assert_eq!(p["field"], "Stripe-Signature", "{p}");
    }
    Ok(())
}

async fn get(app: axum::Router, uri: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::get(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let (status, _, body) =
        problem(app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap()).await;
    (status, body)
}

async fn payments_are_shown_to_their_payer_and_listed_to_admins(
    setup: Setup,
) -> anyhow::Result<()> {
    let w = World::with(setup).await?;
    let inp = input("pm_card_visa");
    let charge = w
        .charge()
        .run(&task(Uuid::now_v7(), Phase::Forward), inp.clone())
        .await?;
    let _declined = w
        .charge()
        .run(
            &task(Uuid::now_v7(), Phase::Forward),
            input("pm_card_chargeDeclined"),
        )
        .await;

    let payer = w.token(inp.user_id, Role::Customer);
    let stranger = w.token(Uuid::now_v7(), Role::Customer);
    let admin = w.token(Uuid::now_v7(), Role::Admin);
    let uri = format!("/api/v1/payments/{}", charge.payment_id);

    let (status, body) = get(w.app(), &uri, Some(&payer)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["payment"]["status"], "succeeded");
    assert_eq!(
        body["payment"]["payment_intent_id"],
        charge.payment_intent_id
    );
    assert_eq!(
        get(w.app(), &uri, Some(&stranger)).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(get(w.app(), &uri, Some(&admin)).await.0, StatusCode::OK);
    assert_eq!(get(w.app(), &uri, None).await.0, StatusCode::UNAUTHORIZED);
    let (status, body) = get(w.app(), "/api/v1/payments/nope", Some(&payer)).await;
    assert_eq!(
        (status, &body["field"]),
        (StatusCode::BAD_REQUEST, &Value::from("id"))
    );

    let (status, body) = get(w.app(), "/api/v1/payments?limit=1", Some(&admin)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let cursor = body["next_cursor"].as_str().unwrap().to_owned();
    let (_, page2) = get(
        w.app(),
        &format!("/api/v1/payments?limit=1&cursor={cursor}"),
        Some(&admin),
    )
    .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_eq!(page2["next_cursor"], Value::Null);
    let (_, declined) = get(w.app(), "/api/v1/payments?status=declined", Some(&admin)).await;
    assert_eq!(declined["items"][0]["failure_code"], "card_declined");

    assert_eq!(
        get(w.app(), "/api/v1/payments", Some(&payer)).await.0,
        StatusCode::FORBIDDEN
    );
    for (q, field) in [
        ("status=lost", "status"),
        ("limit=0", "limit"),
        ("cursor=x", "cursor"),
        ("order_id=1", "order_id"),
    ] {
        let (status, body) = get(w.app(), &format!("/api/v1/payments?{q}"), Some(&admin)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(body["field"], field, "{q}");
    }
    Ok(())
}

/// The order saga run by the real engine, with this service's workers for the payment steps
/// (through RabbitMQ) and recording activities for the other services' steps.
struct Saga {
    env: orderflow_testkit::TestEnv,
    applier: orderflow_engine::apply::Applier,
    stops: Vec<CancellationToken>,
}

impl Drop for Saga {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
    }
}

impl Saga {
    async fn new(w: &World) -> anyhow::Result<Self> {
        use orderflow_activities::worker::Worker;
        use orderflow_testkit::recording;
        use orderflow_workflows::order::contracts::PAYMENT_CHARGE;
        use orderflow_workflows::order::contracts::PAYMENT_REFUND;
        let env = orderflow_testkit::TestEnv::new().await?;
        let registry =
            Arc::new(orderflow_core::Registry::new().with(orderflow_testkit::sagas::fast_order()));
        let applier = env.applier(registry.clone());
        let engine = env.spawn_engine(registry);
        let mut worker = Worker::builder(env.queue())
            .handlers(orderflow_payment::handlers(w.payments.clone()), 4);
        for h in recording::order_saga_handlers(env.pool.clone()) {
            if ![PAYMENT_CHARGE, PAYMENT_REFUND].contains(&h.activity()) {
                worker = worker.handler(h, 4);
            }
        }
        let stop = CancellationToken::new();
        tokio::spawn(worker.build().run(stop.clone().cancelled_owned()));
        Ok(Self {
            env,
            applier,
            stops: vec![engine, stop],
        })
    }

    /// Starts an order saga paying with `payment_method` and waits until it settles.
    async fn run(&self, payment_method: &str) -> anyhow::Result<(Uuid, String)> {
        let mut input = orderflow_testkit::order_input();
        input["payment_method"] = payment_method.into();
        let started = self
            .env
            .committer(&self.applier)
            .start(orderflow_engine::apply::StartRequest {
                workflow_type: "order".into(),
                input,
                business_keys: serde_json::json!({}),
                idempotency_key: None,
                request_hash: None,
            })
            .await?;
        let id = started.id.0;
        let status = orderflow_testkit::settled(&self.env, id, Duration::from_secs(30)).await?;
        Ok((id, status))
    }
}

#[tokio::test]
async fn order_sagas_charge_once_and_compensate_declines_and_later_failures() -> anyhow::Result<()>
{
    use orderflow_testkit::recording;
    use orderflow_workflows::order::contracts::ORDER_CREATE;
    let w = World::new().await?;
    let saga = Saga::new(&w).await?;

    let (paid, status) = saga.run("pm_card_visa").await?;
    assert_eq!(status, "completed");
    let row = store::by_key(&w.db, &format!("{paid}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Succeeded);

    let (declined, status) = saga.run("pm_card_chargeDeclined").await?;
    assert_eq!(status, "compensated");
    let row = store::by_key(&w.db, &format!("{declined}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Declined);

    // Charged, then the pivot fails for good: the compensation refunds the charge.
    recording::inject(
        &saga.env.pool,
        &recording::Fault::permanent(ORDER_CREATE, "boom"),
    )
    .await?;
    let (refunded, status) = saga.run("pm_card_visa").await?;
    assert_eq!(status, "compensated");
    let row = store::by_key(&w.db, &format!("{refunded}/charge"))
        .await?
        .unwrap();
    assert_eq!(row.status, PaymentStatus::Refunded);

    let ledger = w.sandbox.sandbox.ledger();
    assert_eq!(ledger.charges.len(), 2, "the declined saga charged nothing");
    assert_eq!(ledger.refunds.len(), 1);
    assert_eq!(
        Some(ledger.refunds[0].payment_intent.as_str()),
        row.payment_intent_id.as_deref()
    );
    Ok(())
}

/// The service's parts run as `orderflow up` runs them (RabbitMQ), and on SQLite with no Redis
/// URL as `orderflow dev` may.
async fn the_service_runs_ready_and_stops_on_its_token(setup: Setup) -> anyhow::Result<()> {
    orderflow_testkit::init_tracing();
    let sandbox = RunningSandbox::start(SandboxConfig::default()).await?;
    let tag = Uuid::new_v4().simple().to_string();
    // A port the OS just handed out and took back: the host binds the configured address itself.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut service = orderflow_service_kit::ServiceConfig::local("payment", port);
    service.bind = ([127, 0, 0, 1], port).into();
    let file = std::env::temp_dir().join(format!("orderflow-test-payment-{tag}.db"));
    service.database_url = match setup.sqlite {
        true => format!("sqlite://{}", file.display()),
        false => format!(
            "{}/orderflow_test_payment_{tag}",
            orderflow_testkit::pg_server()
        ),
    };
    if setup.sqlite {
        service.redis_url = String::new();
    }
    service.queue_prefix = format!("t{}.", &tag[..12]);
    service.jwt_secret = JWT_SECRET.into();
    let config =
        orderflow_payment::PaymentConfig::new(service, StripeConfig::sandbox(sandbox.url()));
    let stop = CancellationToken::new();
    let queue = orderflow_queue::rabbit::RabbitQueue::new(
        orderflow_testkit::amqp_url(),
        config.service.topology(),
        Duration::from_secs(30),
    );
    let placement = orderflow_service_kit::parts::Placement {
        bind: Some(config.service.bind),
        concurrency: 4,
        workers: true,
    };
    let parts = orderflow_payment::parts(config).await?;
    let running = tokio::spawn(parts.run(queue, placement, stop.clone()));

    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{port}/ready");
    eventually(Duration::from_secs(20), "the service to be ready", || {
        let (http, ready) = (http.clone(), ready.clone());
        async move {
            Ok(match http.get(&ready).send().await {
                Ok(r) => (r.status() == StatusCode::OK).then_some(()),
                Err(_) => None,
            })
        }
    })
    .await?;
    let metrics = http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("payment_stripe_circuit_state"),
        "{metrics}"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), running).await???;
    if setup.sqlite {
        assert!(
            file.exists(),
            "the payments were kept in {}",
            file.display()
        );
        remove_sqlite(&file);
    }
    Ok(())
}
