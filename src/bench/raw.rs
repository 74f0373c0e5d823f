//! The floor: the same four writes per saga, done by the very same bench activity code from one
//! client with C sagas in flight and no engine, broker or worker in between. Whatever the engine
//! adds on top of this is its cost.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::activities::{BenchActivity, FORWARD};
use anyhow::Context;
use orderflow_workflows::order::contracts::{Money, OrderItem, OrderSagaInput};
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

use super::{BenchArgs, driver::progress, measure, stack::BenchDb};

/// What the floor measured.
#[derive(Debug, Clone)]
pub struct Floor {
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
    pub commits: u64,
    pub client_cpu: f64,
    pub postgres_cpu: f64,
}

/// Runs the warm-up and then `args.sagas` measured raw sagas.
pub async fn run(db: &BenchDb, args: &BenchArgs, show: bool) -> anyhow::Result<Floor> {
    let ticks = measure::clock_ticks();
    let warm = pool(db, args).await?;
    closed_loop(&steps(&warm)?, args.warmup, args.concurrency, None).await?;
    // Closing makes the backends report their commits, so the count below starts clean.
    warm.close().await;
    let commits_before = measure::xact_commits(db).await?;
    let pool = pool(db, args).await?;
    // Every connection opened before the clock starts, as the engine's pools are by then.
    let mut conns = Vec::new();
    for _ in 0..args.worker_pool {
        conns.push(pool.acquire().await?);
    }
    drop(conns);
    let steps = steps(&pool)?;
    let backends_before = measure::backend_cpu(db, ticks).await?;
    let cpu_before = measure::cpu_seconds(std::process::id(), ticks).unwrap_or(0.0);
    let bar = show.then(|| progress(args.sagas, "raw"));
    let started = Instant::now();
    let latencies = closed_loop(&steps, args.sagas, args.concurrency, bar.clone()).await?;
    let elapsed = started.elapsed();
    let client_cpu = measure::cpu_seconds(std::process::id(), ticks).unwrap_or(0.0) - cpu_before;
    let backends_after = measure::backend_cpu(db, ticks).await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    pool.close().await;
    let commits = measure::xact_commits(db).await? - commits_before;
    Ok(Floor {
        elapsed,
        latencies,
        commits,
        client_cpu,
        postgres_cpu: measure::backend_delta(&backends_before, &backends_after),
    })
}

async fn pool(db: &BenchDb, args: &BenchArgs) -> anyhow::Result<sqlx::PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(args.worker_pool)
        .connect(&db.url)
        .await?)
}

/// The four forward steps' activities, writing through `pool`.
fn steps(pool: &sqlx::PgPool) -> anyhow::Result<Arc<Vec<BenchActivity>>> {
    Ok(Arc::new(
        FORWARD
            .iter()
            .map(|&a| BenchActivity::new(a, pool.clone()).context("a bench activity"))
            .collect::<anyhow::Result<_>>()?,
    ))
}

/// Runs `n` sagas, `concurrency` at a time, each its four writes one after another.
async fn closed_loop(
    steps: &Arc<Vec<BenchActivity>>,
    n: usize,
    concurrency: usize,
    bar: Option<indicatif::ProgressBar>,
) -> anyhow::Result<Vec<Duration>> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency.min(n) {
        let (steps, next, bar) = (steps.clone(), next.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let input = OrderSagaInput {
                    order_id: Uuid::new_v4(),
                    user_id: Uuid::new_v4(),
                    items: vec![OrderItem {
                        product_id: "sku-1".into(),
                        quantity: 1,
                    }],
                    total: Money {
                        amount_minor: 2599,
                        currency: "EUR".into(),
                    },
                    payment_method: "pm_card_visa".into(),
                    email: "buyer@example.com".into(),
                };
                let workflow_id = Uuid::now_v7();
                let started = Instant::now();
                for step in steps.iter() {
                    step.write(workflow_id, &input).await?;
                }
                latencies.push(started.elapsed());
                if let Some(bar) = &bar {
                    bar.inc(1);
                }
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}
