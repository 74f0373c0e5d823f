//! Durability on the real stack: engine processes (this crate's `orderflow` binary) are killed
//! with SIGKILL at random moments while sagas run, or run two at a time, and afterwards every
//! saga must have settled with each step's effect done exactly once per idempotency key.

use std::{process::Stdio, sync::Arc, time::Duration};

use orderflow_activities::worker::Worker;

use orderflow_testkit::recording;

use orderflow_core::Registry;
use orderflow_testkit::{TestEnv, amqp_url, eventually, start_order};
use orderflow_workflows::order::contracts::PAYMENT_CHARGE;
use rand::Rng;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn spawn_engine(env: &TestEnv) -> Child {
    Command::new(env!("CARGO_BIN_EXE_orderflow"))
        .args(["engine", "--bind", "127.0.0.1:0"])
        .env("DATABASE_URL", &env.database_url)
        .env("AMQP_URL", amqp_url())
        .env("ORDERFLOW_QUEUE_PREFIX", &env.topology.prefix)
        .env("ORDERFLOW_JWT_SECRET", orderflow_testkit::API_SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the orderflow binary starts")
}

fn spawn_workers(env: &TestEnv, concurrency: usize) -> CancellationToken {
    let stop = CancellationToken::new();
    let mut worker = Worker::builder(env.queue());
    for h in recording::order_saga_handlers(env.pool.clone()) {
        worker = worker.handler(h, concurrency);
    }
    let s = stop.clone();
    tokio::spawn(async move { worker.build().run(s.cancelled_owned()).await });
    stop
}

/// Starts `n` order sagas; every 10th one's charge is declined, so it compensates.
async fn start_sagas(env: &TestEnv, n: usize) -> anyhow::Result<(Vec<Uuid>, Vec<Uuid>)> {
    let registry = Arc::new(Registry::new().with(orderflow_workflows::order::v1()));
    let applier = env.applier(registry);
    let (mut ok, mut declined) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = start_order(env, &applier).await?;
        if i % 10 == 9 {
            recording::inject(
                &env.pool,
                &recording::Fault::permanent(PAYMENT_CHARGE, "card_declined").for_workflow(id),
            )
            .await?;
            declined.push(id);
        } else {
            ok.push(id);
        }
    }
    Ok((ok, declined))
}

async fn unsettled(env: &TestEnv) -> anyhow::Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "select count(*) from workflows where status not in ('completed', 'compensated')",
    )
    .fetch_one(&env.pool)
    .await?;
    Ok(n)
}

async fn all_settled(env: &TestEnv, total: usize, within: Duration) -> anyhow::Result<()> {
    eventually(within, "every saga to settle", || async {
        let (n,): (i64,) = sqlx::query_as(
            "select count(*) from workflows where status in ('completed', 'compensated')",
        )
        .fetch_one(&env.pool)
        .await?;
        Ok((n as usize == total).then_some(()))
    })
    .await
}

/// The books: completed sagas did all four effects, declined ones reserved and released, and
/// nothing else happened; no step's result was applied twice.
async fn check_books(env: &TestEnv, ok: &[Uuid], declined: &[Uuid]) -> anyhow::Result<()> {
    for (ids, status) in [(ok, "completed"), (declined, "compensated")] {
        let (n,): (i64,) =
            sqlx::query_as("select count(*) from workflows where id = any($1) and status = $2")
                .bind(ids)
                .bind(status)
                .fetch_one(&env.pool)
                .await?;
        assert_eq!(
            n as usize,
            ids.len(),
            "every saga of this group must be {status}"
        );
    }
    let effects: Vec<(String, i64)> = sqlx::query_as(
        "select activity, count(*) from activity_effects group by activity order by activity",
    )
    .fetch_all(&env.pool)
    .await?;
    let (k, d) = (ok.len() as i64, declined.len() as i64);
    let expected: Vec<(String, i64)> = vec![
        ("inventory.release".into(), d),
        ("inventory.reserve".into(), k + d),
        ("notification.send".into(), k),
        ("order.create".into(), k),
        ("payment.charge".into(), k),
    ];
    assert_eq!(
        effects, expected,
        "each effect exactly once per idempotency key"
    );
    let (twice,): (i64,) = sqlx::query_as(
        "select count(*) from (
            select workflow_id, event->>'task_id' from history
            where event->>'type' in ('activity_completed', 'activity_failed') and ignored is null
            group by 1, 2 having count(*) > 1) t",
    )
    .fetch_one(&env.pool)
    .await?;
    assert_eq!(twice, 0, "no task's result may be applied twice");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_engine_at_random_moments_loses_nothing() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (ok, declined) = start_sagas(&env, 200).await?;
    // Few workers, so the sagas are still running when the kills come.
    let workers = spawn_workers(&env, 1);
    let mut rng = rand::rng();
    let mut in_flight_at_kills = Vec::new();
    for _ in 0..5 {
        let before = unsettled(&env).await?;
        let mut engine = spawn_engine(&env);
        // Let the new engine make progress first, so every kill lands in the middle of work.
        eventually(
            Duration::from_secs(30),
            "the engine to make progress",
            || async { Ok((unsettled(&env).await? < before).then_some(())) },
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
        engine.start_kill()?;
        engine.wait().await?;
        in_flight_at_kills.push(unsettled(&env).await?);
    }
    println!("sagas in flight at each SIGKILL: {in_flight_at_kills:?}");
    assert!(
        in_flight_at_kills.iter().all(|&n| n > 0),
        "every kill must interrupt running sagas"
    );
    let mut engine = spawn_engine(&env);
    all_settled(&env, ok.len() + declined.len(), Duration::from_secs(120)).await?;
    check_books(&env, &ok, &declined).await?;
    engine.start_kill()?;
    workers.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_on_one_database_apply_no_step_twice() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let (ok, declined) = start_sagas(&env, 500).await?;
    let workers = spawn_workers(&env, 16);
    let mut a = spawn_engine(&env);
    let mut b = spawn_engine(&env);
    all_settled(&env, ok.len() + declined.len(), Duration::from_secs(180)).await?;
    check_books(&env, &ok, &declined).await?;
    a.start_kill()?;
    b.start_kill()?;
    workers.cancel();
    Ok(())
}
