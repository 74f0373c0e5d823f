//! Runs an engine process's loops: the outbox relay, the timer poller and the result intake. Each
//! loop survives its dependencies going away (it logs, backs off and reconnects), and each is
//! woken by `LISTEN/NOTIFY` with a timeout fallback rather than by sleeping.
//!
//! On start every loop first does whatever is pending: unsent outbox rows are published and due
//! timers fire, which is how a restarted engine resumes everything in flight (DESIGN.md §3.6).

use std::{collections::HashSet, future::Future, sync::Arc, time::Duration};

use orderflow_activities::broker;
use orderflow_core::Registry;
use sqlx::{PgPool, postgres::PgListener};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{EngineConfig, apply::Applier, channels, intake, relay, store, timers};

/// One engine process.
#[derive(Debug, Clone)]
pub struct Engine {
    pub pool: PgPool,
    pub applier: Applier,
    pub config: EngineConfig,
}

impl Engine {
    pub fn new(pool: PgPool, registry: Arc<Registry>, config: EngineConfig) -> Self {
        let applier = Applier::new(registry, config.topology.clone());
        Self {
            pool,
            applier,
            config,
        }
    }

    /// Runs every loop until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        let mut set = JoinSet::new();
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { e.relay_loop(&s).await });
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { e.timer_loop(&s).await });
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move { e.intake_loop(&s).await });
        // Queue depth, consumers, outbox lag and stuck sagas: the KEDA and alerting signals.
        let e = self.clone();
        let s = stop.clone();
        set.spawn(async move {
            let activities = e.applier.registry.activities();
            crate::queue_metrics::run(e.pool, e.config.amqp_url, e.config.topology, activities, s)
                .await
        });
        while set.join_next().await.is_some() {}
    }

    async fn relay_loop(&self, stop: &CancellationToken) {
        self.supervise("relay", stop, || async {
            let conn = broker::connect(&self.config.amqp_url, Duration::from_secs(3600)).await?;
            let channel = broker::confirm_channel(&conn).await?;
            let mut declared = HashSet::new();
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(channels::OUTBOX).await?;
            loop {
                let n = relay::relay_once(
                    &self.pool,
                    &channel,
                    &self.config.topology,
                    &mut declared,
                    self.config.relay_batch,
                )
                .await?;
                if n as i64 >= self.config.relay_batch {
                    continue;
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = listener.recv() => {}
                    _ = tokio::time::sleep(self.config.poll_fallback) => {}
                }
            }
        })
        .await
    }

    async fn timer_loop(&self, stop: &CancellationToken) {
        self.supervise("timers", stop, || async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(channels::TIMERS).await?;
            loop {
                let n =
                    timers::fire_due(&self.pool, &self.applier, self.config.timer_batch).await?;
                if n as i64 >= self.config.timer_batch {
                    continue;
                }
                let mut conn = self.pool.acquire().await?;
                let next = store::timers::next_due(&mut conn).await?;
                drop(conn);
                let wait = next
                    .map(|t| (t - crate::apply::now()).to_std().unwrap_or_default())
                    .unwrap_or(self.config.poll_fallback)
                    .min(self.config.poll_fallback);
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = listener.recv() => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        })
        .await
    }

    async fn intake_loop(&self, stop: &CancellationToken) {
        self.supervise("intake", stop, || async {
            let conn = broker::connect(&self.config.amqp_url, Duration::from_secs(3600)).await?;
            let channel = conn.create_channel().await?;
            intake::run(
                &self.pool,
                &self.applier,
                &channel,
                &self.config.topology,
                self.config.intake_batch,
                stop,
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Runs `body` again after each failure, with capped backoff, until `stop`.
    async fn supervise<F, Fut>(&self, name: &str, stop: &CancellationToken, body: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut delay = Duration::from_millis(100);
        while !stop.is_cancelled() {
            let result = tokio::select! {
                _ = stop.cancelled() => return,
                r = body() => r,
            };
            match result {
                Ok(()) => return,
                Err(e) => {
                    tracing::error!(loop_name = name, error = %e, retry_in = ?delay, "engine loop failed");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
