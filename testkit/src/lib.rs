//! What every integration test needs, on the real services: a fresh Postgres database and a
//! unique RabbitMQ queue prefix per test, the engine running in-process against them, and waits
//! that poll a condition with a deadline instead of sleeping.

pub mod recording;

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use orderflow_core::Registry;
use orderflow_engine::{Engine, EngineConfig, apply::Applier, committer::Committer};
use orderflow_queue::{Topology, rabbit::RabbitQueue};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Postgres server of this machine (trust auth); override with `TEST_DATABASE_SERVER`.
pub fn pg_server() -> String {
    std::env::var("TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// RabbitMQ of this machine; override with `AMQP_URL`.
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The signing secret of the engine API's callers in tests.
pub const API_SECRET: &str = "test-api-secret-test-api-secret-test-0001";

/// Who may call an engine API under test: tokens signed with [`API_SECRET`].
pub fn api_auth() -> orderflow_engine::api::ApiAuth {
    orderflow_engine::api::ApiAuth::new(orderflow_auth::KeyRing::new(API_SECRET))
}

/// A token of operator `name` for an engine API under test (actor `operator:<name>`).
pub fn operator_token(name: &str) -> String {
    api_token(orderflow_auth::engine::EngineRole::Operator, name)
}

/// A token of service `name` for an engine API under test (actor `service:<name>`).
pub fn service_token(name: &str) -> String {
    api_token(orderflow_auth::engine::EngineRole::Service, name)
}

fn api_token(role: orderflow_auth::engine::EngineRole, name: &str) -> String {
    orderflow_auth::engine::issue(
        &orderflow_auth::KeyRing::new(API_SECRET),
        role,
        name,
        Duration::from_secs(3600),
    )
    .expect("signing a test token")
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A fresh, migrated database and a unique queue prefix.
#[derive(Debug, Clone)]
pub struct TestEnv {
    pub pool: PgPool,
    /// One connection to the broker that what the test starts publishes through.
    pub publisher: RabbitQueue,
    pub database_url: String,
    pub topology: Topology,
}

impl TestEnv {
    /// Creates database `orderflow_test_<random>` with the engine's and the recording
    /// activities' migrations, and a prefix `t<random>.` for queues.
    pub async fn new() -> anyhow::Result<Self> {
        init_tracing();
        let tag = Uuid::new_v4().simple().to_string();
        let name = format!("orderflow_test_{tag}");
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", pg_server()))
            .await
            .context("connecting to Postgres (is it running on 127.0.0.1:5432?)")?;
        sqlx::query(&format!("create database {name}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let database_url = format!("{}/{name}", pg_server());
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(&database_url)
            .await?;
        orderflow_engine::migrator().run(&pool).await?;
        recording::migrate(&pool).await?;
        let topology = Topology::new(format!("t{}.", &tag[..12]));
        Ok(Self {
            publisher: RabbitQueue::new(amqp_url(), topology.clone(), Duration::from_secs(30)),
            pool,
            database_url,
            topology,
        })
    }

    pub fn config(&self) -> EngineConfig {
        EngineConfig::default()
    }

    /// A committer of its own on the test's database (as a second engine replica's would be),
    /// publishing through [`Self::publisher`].
    pub fn committer(&self, applier: &Applier) -> Committer {
        Committer::spawn(
            self.pool.clone(),
            self.publisher.clone(),
            applier.clone(),
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    /// The task queue on this machine's RabbitMQ, under the test's prefix.
    pub fn queue(&self) -> RabbitQueue {
        RabbitQueue::new(amqp_url(), self.topology.clone(), Duration::from_secs(30))
    }

    pub fn applier(&self, registry: Arc<Registry>) -> Applier {
        Applier::new(registry, self.topology.clone())
    }

    /// Runs an engine in-process until the returned token is cancelled.
    pub fn spawn_engine(&self, registry: Arc<Registry>) -> CancellationToken {
        let stop = CancellationToken::new();
        let engine = Engine::new(self.pool.clone(), self.queue(), registry, self.config());
        tokio::spawn(engine.run(stop.clone()));
        stop
    }

    /// Statuses of all workflows, by status.
    pub async fn status_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(
            sqlx::query_as(
                "select status, count(*) from workflows group by status order by status",
            )
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// The status of one workflow.
    pub async fn status(&self, id: Uuid) -> anyhow::Result<String> {
        let (s,): (String,) = sqlx::query_as("select status from workflows where id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(s)
    }
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {within:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sagas with the order saga's shape and short timeouts, so tests see retries and timeouts fast.
pub mod sagas {
    use std::time::Duration;

    use orderflow_core::{RetryPolicy, SagaDefinition, Step};
    use orderflow_workflows::order::contracts::*;

    fn quick(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            initial_interval: Duration::from_millis(50),
            multiplier: 2.0,
            max_interval: Duration::from_millis(400),
            max_attempts,
            jitter: 0.2,
            non_retryable_codes: vec!["card_declined".into(), "out_of_stock".into()],
        }
    }

    /// `order` v1 with a `start_to_close` of `timeout` and millisecond backoff; the charge step
    /// waits `charge_backoff` before its retries.
    pub fn order(timeout: Duration, charge_backoff: Duration) -> SagaDefinition {
        SagaDefinition::builder("order", 1)
            .input::<OrderSagaInput>()
            .step(
                Step::compensatable("reserve", INVENTORY_RESERVE)
                    .compensate_with(INVENTORY_RELEASE)
                    .retry(quick(5))
                    .compensation_retry(quick(5))
                    .start_to_close(timeout),
            )
            .step(
                Step::compensatable("charge", PAYMENT_CHARGE)
                    .compensate_with(PAYMENT_REFUND)
                    .retry(RetryPolicy {
                        initial_interval: charge_backoff,
                        max_interval: charge_backoff,
                        ..quick(5)
                    })
                    .compensation_retry(quick(5))
                    .start_to_close(timeout),
            )
            .step(
                Step::pivot("create_order", ORDER_CREATE)
                    .compensate_with(ORDER_CANCEL)
                    .retry(quick(5))
                    .start_to_close(timeout),
            )
            .step(
                Step::retriable("notify", NOTIFICATION_SEND)
                    .retry(quick(0))
                    .start_to_close(timeout),
            )
            .build()
            .expect("test saga is valid")
    }

    /// The default fast variant: 2 s timeouts, 50 ms backoff everywhere.
    pub fn fast_order() -> SagaDefinition {
        order(Duration::from_secs(2), Duration::from_millis(50))
    }
}

/// A valid order saga input.
pub fn order_input() -> serde_json::Value {
    serde_json::json!({
        "order_id": Uuid::new_v4(),
        "user_id": Uuid::new_v4(),
        "items": [{ "product_id": "sku-1", "quantity": 2 }],
        "total": { "amount_minor": 2599, "currency": "EUR" },
        "payment_method": "pm_card_visa",
        "email": "buyer@example.com"
    })
}

/// Starts an order saga; returns its id.
///
/// The start goes through a committer of its own (as a second engine replica's would), so the
/// test's engine, if one runs, learns of the workflow from its task and the store.
pub async fn start_order(env: &TestEnv, applier: &Applier) -> anyhow::Result<Uuid> {
    let started = env
        .committer(applier)
        .start(orderflow_engine::apply::StartRequest {
            workflow_type: "order".into(),
            input: order_input(),
            business_keys: serde_json::json!({}),
            idempotency_key: None,
            request_hash: None,
        })
        .await?;
    Ok(started.id.0)
}

/// The activities a workflow scheduled, in order, from its history.
pub async fn scheduled(pool: &PgPool, id: Uuid) -> anyhow::Result<Vec<String>> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "select c->>'activity' from history h, jsonb_array_elements(h.commands) c
         where h.workflow_id = $1 and c->>'type' = 'schedule_activity' order by h.seq",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| r.0).collect())
}

/// Waits until the workflow reaches one of the terminal statuses (or needs_attention).
pub async fn settled(env: &TestEnv, id: Uuid, within: Duration) -> anyhow::Result<String> {
    eventually(within, "the saga to settle", || async {
        let s = env.status(id).await?;
        Ok(matches!(
            s.as_str(),
            "completed" | "compensated" | "cancelled" | "terminated" | "needs_attention"
        )
        .then_some(s))
    })
    .await
}
