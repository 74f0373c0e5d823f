//! A payment worker killed with SIGKILL in the middle of `payment.charge` never charges the card
//! twice. The worker is this crate's binary (`orderflow worker --queues
//! payment.charge,payment.refund`), so it runs the payment service's production handlers against
//! a Stripe sandbox this test starts; the engine and the other steps' (recording) activities run
//! in-process. Each round kills the worker at one of two instants of the charge:
//!
//! - **Stripe ran it, the answer is on its way**: the sandbox charges at once and answers late,
//!   so the worker dies after phase 2 (Stripe made the PaymentIntent) and before phase 3 (the
//!   intent id stored).
//! - **Stripe has not run it yet**: the sandbox holds the request before running it, so the
//!   worker dies with only phase 1 (the pending row) done.
//!
//! Either way the next worker finds the payment pending, repeats the Stripe call under the same
//! idempotency key, and the saga completes with one PaymentIntent and one payment row.

use std::{process::Stdio, sync::Arc, time::Duration};

use orderflow_activities::worker::Worker;

use orderflow_testkit::recording;

use orderflow_core::Registry;
use orderflow_stripe_sandbox::{DEFAULT_SECRET_KEY, Faults, RunningSandbox, SandboxConfig};
use orderflow_testkit::{TestEnv, amqp_url, eventually, pg_server, sagas, settled, start_order};
use orderflow_workflows::order::contracts::{PAYMENT_CHARGE, PAYMENT_REFUND};
use sqlx::PgPool;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);
/// Long enough that no worker ever waits it out: the kill comes first.
const HOLD_MS: u64 = 120_000;

/// Where the killed worker was in the charge.
#[derive(Clone, Copy, Debug)]
enum Instant {
    /// Stripe made the PaymentIntent; its answer had not arrived.
    StripeRan,
    /// The request reached Stripe, which had not run it yet.
    StripeHeld,
}

struct Payment {
    /// The payment service's database, which the worker creates and migrates.
    url: String,
    sandbox: RunningSandbox,
    env: TestEnv,
}

impl Payment {
    /// A payment worker process on `health` (the port of its `/health`, `/ready`, `/metrics`).
    fn spawn_worker(&self, health: u16) -> Child {
        Command::new(env!("CARGO_BIN_EXE_orderflow"))
            .args(["worker", "--queues", "payment.charge,payment.refund"])
            .args(["--concurrency", "4"])
            .arg(format!("--health-bind=127.0.0.1:{health}"))
            .env("DATABASE_URL", &self.env.database_url)
            .env("ORDERFLOW_SERVICE_DATABASE_URL", &self.url)
            .env("AMQP_URL", amqp_url())
            .env("REDIS_URL", "redis://127.0.0.1:6379")
            .env("ORDERFLOW_QUEUE_PREFIX", &self.env.topology.prefix)
            .env("STRIPE_API_BASE", self.sandbox.url())
            .env("STRIPE_SECRET_KEY", DEFAULT_SECRET_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("the orderflow binary starts")
    }
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Waits until the worker on `port` answers `/ready` with 200, and returns the body.
async fn ready(port: u16) -> anyhow::Result<serde_json::Value> {
    let http = reqwest::Client::new();
    eventually(WAIT, "the worker to be ready", || {
        let http = http.clone();
        async move {
            let Ok(r) = http
                .get(format!("http://127.0.0.1:{port}/ready"))
                .send()
                .await
            else {
                return Ok(None);
            };
            if r.status() != 200 {
                return Ok(None);
            }
            Ok(Some(r.json().await?))
        }
    })
    .await
}

async fn get_text(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}")).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// The status of the charge step's payment row, if there is one.
async fn payment_status(pool: &PgPool, workflow: Uuid) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("select status::text from payments where idempotency_key = $1")
            .bind(format!("{workflow}/charge"))
            .fetch_optional(pool)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_charge_never_charges_twice() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let registry = Arc::new(Registry::new().with(sagas::order(
        Duration::from_secs(10),
        Duration::from_millis(50),
    )));
    let applier = env.applier(registry.clone());
    let engine = env.spawn_engine(registry);
    // Every step but the payment's, in-process.
    let others = CancellationToken::new();
    let worker = Worker::builder(env.queue()).handlers(
        recording::order_saga_handlers(env.pool.clone())
            .into_iter()
            .filter(|h| ![PAYMENT_CHARGE, PAYMENT_REFUND].contains(&h.activity())),
        4,
    );
    tokio::spawn(worker.build().run(others.clone().cancelled_owned()));

    let payment = Payment {
        url: format!(
            "{}/orderflow_payment_test_{}",
            pg_server(),
            Uuid::new_v4().simple()
        ),
        sandbox: RunningSandbox::start(SandboxConfig::default()).await?,
        env: env.clone(),
    };
    let sandbox = &payment.sandbox.sandbox;
    let mut port = free_port();
    let mut child = payment.spawn_worker(port);
    let probes = ready(port).await?;
    for probe in ["payment_database", "broker", "payment_redis"] {
        assert_eq!(probes[probe], true, "/ready: {probes}");
    }
    let pool = sqlx::PgPool::connect(&payment.url).await?;

    let rounds = [
        Instant::StripeRan,
        Instant::StripeHeld,
        Instant::StripeRan,
        Instant::StripeHeld,
    ];
    let mut sagas = Vec::new();
    for (round, instant) in rounds.into_iter().enumerate() {
        sandbox.set_faults(match instant {
            Instant::StripeRan => Faults {
                hang_requests: 1,
                hang_ms: HOLD_MS,
                ..Faults::default()
            },
            Instant::StripeHeld => Faults {
                delay_requests: 1,
                delay_ms: HOLD_MS,
                ..Faults::default()
            },
        });
        let id = start_order(&env, &applier).await?;
        let key = format!("{id}/charge");
        let ours = |intents: &[orderflow_stripe_sandbox::ledger::PaymentIntent]| {
            intents
                .iter()
                .filter(|pi| pi.metadata.get("workflow_id") == Some(&id.to_string()))
                .count()
        };

        // The charge is in the middle: the pending row is written and Stripe has the request.
        eventually(WAIT, "Stripe to receive the charge", || async {
            let seen = sandbox
                .received()
                .iter()
                .any(|r| r.idempotency_key.as_deref() == Some(key.as_str()));
            Ok(seen.then_some(()))
        })
        .await?;
        let made = match instant {
            Instant::StripeRan => {
                eventually(WAIT, "Stripe to make the intent", || async {
                    Ok((ours(&sandbox.ledger().payment_intents) == 1).then_some(()))
                })
                .await?;
                1
            }
            Instant::StripeHeld => 0,
        };
        child.kill().await?;
        let status = child.wait().await?;
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: SIGKILLed"
        );
        // The kill landed between the phases: Stripe had the request, the row no outcome.
        assert_eq!(
            payment_status(&pool, id).await?.as_deref(),
            Some("pending"),
            "round {round} ({instant:?}): killed before phase 3"
        );
        assert_eq!(
            ours(&sandbox.ledger().payment_intents),
            made,
            "round {round} ({instant:?})"
        );

        // A new worker takes over; the saga completes.
        port = free_port();
        child = payment.spawn_worker(port);
        assert_eq!(
            settled(&env, id, WAIT).await?,
            "completed",
            "round {round} ({instant:?})"
        );
        let tried = sandbox
            .received()
            .iter()
            .filter(|r| r.idempotency_key.as_deref() == Some(key.as_str()))
            .count();
        assert!(
            tried >= 2,
            "round {round}: the new worker asked Stripe again ({tried})"
        );
        sagas.push(id);
    }

    // The books: one succeeded PaymentIntent and one charge per saga, one payment row each with
    // that intent.
    let ledger = sandbox.ledger();
    assert_eq!(ledger.payment_intents.len(), sagas.len(), "{ledger:?}");
    assert_eq!(ledger.charges.len(), sagas.len(), "{ledger:?}");
    assert!(ledger.refunds.is_empty(), "{ledger:?}");
    for id in &sagas {
        let intents: Vec<_> = ledger
            .payment_intents
            .iter()
            .filter(|pi| pi.metadata.get("workflow_id") == Some(&id.to_string()))
            .collect();
        assert_eq!(intents.len(), 1, "saga {id}: {ledger:?}");
        assert_eq!(intents[0].status, "succeeded", "saga {id}");
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "select status::text, payment_intent_id from payments where workflow_id = $1",
        )
        .bind(id)
        .fetch_all(&pool)
        .await?;
        assert_eq!(
            rows,
            [("succeeded".to_owned(), Some(intents[0].id.clone()))],
            "saga {id}: one payment row, with the intent"
        );
    }

    // The last worker's own endpoints: alive, and its charges on /metrics.
    assert_eq!(get_text(port, "/health").await?.0, 200);
    let (status, metrics) = get_text(port, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("payment_charges_total{outcome=\"succeeded\"}"),
        "{metrics}"
    );

    child.kill().await?;
    others.cancel();
    engine.cancel();
    Ok(())
}
