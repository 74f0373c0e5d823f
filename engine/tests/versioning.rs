//! A new definition version deployed beside the old one, on the real stack: sagas started on v1
//! finish on v1 after the deploy, new sagas start on v2 (the order saga with a fraud screen before
//! the charge), and v2's new step compensates like any other.

use std::{sync::Arc, time::Duration};

use orderflow_activities::worker::{Handler, Worker};

use orderflow_testkit::recording::{self, Fault, RecordingActivity};

use orderflow_core::Registry;
use orderflow_testkit::{TestEnv, eventually, scheduled, settled, start_order};
use orderflow_workflows::order;
use orderflow_workflows::order::contracts::{
    FRAUD_CHECK, INVENTORY_RELEASE, INVENTORY_RESERVE, NOTIFICATION_SEND, ORDER_CREATE,
    PAYMENT_CHARGE,
};
use tokio_util::sync::CancellationToken;

const SETTLE: Duration = Duration::from_secs(30);

fn workers(env: &TestEnv, skip: &[&str]) -> CancellationToken {
    let mut handlers = recording::order_saga_handlers(env.pool.clone());
    handlers
        .push(Arc::new(RecordingActivity::new(FRAUD_CHECK, env.pool.clone())) as Arc<dyn Handler>);
    let mut worker = Worker::builder(env.queue());
    for h in handlers
        .into_iter()
        .filter(|h| !skip.contains(&h.activity()))
    {
        worker = worker.handler(h, 8);
    }
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move { worker.build().run(s.cancelled_owned()).await });
    stop
}

async fn version(env: &TestEnv, id: uuid::Uuid) -> anyhow::Result<i32> {
    let (v,): (i32,) = sqlx::query_as("select version from workflows where id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await?;
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_started_on_v1_finish_on_v1_and_new_ones_start_on_v2() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;

    // Before the deploy: only v1, and no charge worker, so the sagas stop mid-way at the charge.
    let v1_only = Arc::new(Registry::new().with(order::v1()));
    let engine_v1 = env.spawn_engine(v1_only.clone());
    let partial = workers(&env, &[PAYMENT_CHARGE]);
    let applier = env.applier(v1_only);
    let mut old = Vec::new();
    for _ in 0..3 {
        old.push(start_order(&env, &applier).await?);
    }
    for &id in &old {
        eventually(SETTLE, "the v1 saga to reach its charge", || async {
            Ok(scheduled(&env.pool, id)
                .await?
                .contains(&PAYMENT_CHARGE.to_owned())
                .then_some(()))
        })
        .await?;
    }
    engine_v1.cancel();
    partial.cancel();

    // The deploy: v1 stays registered beside v2; new sagas start on v2.
    let both = Arc::new(Registry::new().with(order::v1()).with(order::v2()));
    let engine_v2 = env.spawn_engine(both.clone());
    // The fraud screen's worker starts once the fault is in place, so it cannot pass first.
    let all = workers(&env, &[FRAUD_CHECK]);
    let applier = env.applier(both);
    let new = start_order(&env, &applier).await?;
    let suspicious = start_order(&env, &applier).await?;
    recording::inject(
        &env.pool,
        &Fault::permanent(FRAUD_CHECK, "fraud_suspected").for_workflow(suspicious),
    )
    .await?;

    let everything_but_fraud: Vec<&str> =
        orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES.to_vec();
    let fraud = workers(&env, &everything_but_fraud);
    for &id in &old {
        assert_eq!(settled(&env, id, SETTLE).await?, "completed");
        assert_eq!(version(&env, id).await?, 1);
        assert_eq!(
            scheduled(&env.pool, id).await?,
            [
                INVENTORY_RESERVE,
                PAYMENT_CHARGE,
                ORDER_CREATE,
                NOTIFICATION_SEND
            ],
            "a v1 saga keeps v1's steps after the deploy"
        );
    }
    assert_eq!(settled(&env, new, SETTLE).await?, "completed");
    assert_eq!(version(&env, new).await?, 2);
    assert_eq!(
        scheduled(&env.pool, new).await?,
        [
            INVENTORY_RESERVE,
            FRAUD_CHECK,
            PAYMENT_CHARGE,
            ORDER_CREATE,
            NOTIFICATION_SEND
        ]
    );
    // The fraud screen is read-only: a suspected fraud releases the stock and charges nothing.
    assert_eq!(settled(&env, suspicious, SETTLE).await?, "compensated");
    assert_eq!(
        scheduled(&env.pool, suspicious).await?,
        [INVENTORY_RESERVE, FRAUD_CHECK, INVENTORY_RELEASE]
    );
    engine_v2.cancel();
    all.cancel();
    fraud.cancel();
    Ok(())
}

#[test]
fn the_production_registry_starts_new_orders_on_v3_and_keeps_v1_and_v2() {
    let registry = orderflow_workflows::registry();
    assert_eq!(registry.latest("order").map(|d| d.version()), Some(3));
    assert!(
        registry.get("order", 1).is_some(),
        "v1 stays so sagas started on it finish on it"
    );
    assert!(
        registry.get("order", 2).is_some(),
        "v2 is deployed beside v3"
    );
}

/// A v1 saga waits at its charge (no charge worker) under `original`; then the engine restarts
/// with `edited` deployed as the same v1.
async fn restart_with_v1_changed_in_place(
    original: orderflow_core::SagaDefinition,
    edited: orderflow_core::SagaDefinition,
) -> anyhow::Result<(TestEnv, uuid::Uuid, CancellationToken, CancellationToken)> {
    let env = TestEnv::new().await?;
    let before = Arc::new(Registry::new().with(original));
    let engine = env.spawn_engine(before.clone());
    let partial = workers(&env, &[PAYMENT_CHARGE]);
    let id = start_order(&env, &env.applier(before)).await?;
    eventually(SETTLE, "the saga to reach its charge", || async {
        Ok(scheduled(&env.pool, id)
            .await?
            .contains(&PAYMENT_CHARGE.to_owned())
            .then_some(()))
    })
    .await?;
    engine.cancel();
    let engine = env.spawn_engine(Arc::new(Registry::new().with(edited)));
    Ok((env, id, engine, partial))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_changed_in_place_that_breaks_replay_waits_for_an_operator() -> anyhow::Result<()>
{
    use orderflow_testkit::sagas;
    // The edit changes the start-to-close timeout, so the recorded timers no longer match.
    let (env, id, engine, workers) = restart_with_v1_changed_in_place(
        sagas::order(Duration::from_millis(700), Duration::from_millis(50)),
        sagas::order(Duration::from_secs(3), Duration::from_millis(50)),
    )
    .await?;
    // The charge's attempt timer fires on the new engine, which replays before applying it.
    assert_eq!(settled(&env, id, SETTLE).await?, "needs_attention");
    let (reason,): (Option<String>,) = sqlx::query_as("select reason from workflows where id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await?;
    let reason = reason.unwrap_or_default();
    assert!(
        reason.contains("no longer replays") && reason.contains("not deterministic"),
        "{reason}"
    );
    let (detected,): (i64,) = sqlx::query_as(
        "select count(*) from history where workflow_id = $1 and event->>'type' = 'nondeterminism_detected'",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(detected, 1, "detected once, not on every event");
    engine.cancel();
    workers.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_changed_in_place_that_still_replays_is_adopted() -> anyhow::Result<()> {
    use orderflow_testkit::sagas;
    // Only the charge's backoff changes, and this saga never retried its charge.
    let (env, id, engine, partial) = restart_with_v1_changed_in_place(
        sagas::order(Duration::from_secs(5), Duration::from_millis(50)),
        sagas::order(Duration::from_secs(5), Duration::from_millis(80)),
    )
    .await?;
    let rest = workers(
        &env,
        &[
            INVENTORY_RESERVE,
            INVENTORY_RELEASE,
            ORDER_CREATE,
            NOTIFICATION_SEND,
            FRAUD_CHECK,
        ],
    );
    assert_eq!(settled(&env, id, SETTLE).await?, "completed");
    engine.cancel();
    partial.cancel();
    rest.cancel();
    Ok(())
}
