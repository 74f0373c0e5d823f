//! Backlog gauges: the signals that workers are scaled on and that the alerts watch.
//!
//! Every few seconds [`run`] asks RabbitMQ about each activity queue and Postgres about the outbox
//! and the stuck sagas, and sets the gauges below. A queue is asked by declaring it as the relay
//! does before publishing (idempotent, same arguments): the answer counts its ready messages and
//! consumers. A passive declare would create nothing, but on a queue no worker has declared yet
//! (a version's new activity before its workers roll out) it is refused with a 404 that lapin
//! logs as an ERROR, every tick, on every engine replica.
//!
//!
//! - `orderflow_queue_depth{queue}`: tasks ready on the queue, not yet taken by a worker. Workers
//!   hold at most their prefetch unacked, so a depth that stays above zero means the workers of
//!   that queue are saturated (or absent).
//! - `orderflow_queue_consumers{queue}`: workers consuming it; zero with a depth above zero means
//!   tasks wait for a worker that does not exist.
//! - `orderflow_outbox_rows` and `orderflow_outbox_lag_seconds`: tasks committed but not yet
//!   confirmed by the broker, and the age of the oldest; a growing lag means no relay is
//!   publishing (broker down, engines down).
//! - `orderflow_workflows_stuck{reason}`: sagas in `needs_attention` (reason `attention`),
//!   waiting on a backoff timer to retry (`retrying`), or with a timer due for longer than
//!   [`OVERDUE_GRACE`] and not fired, so no engine is reacting (`overdue`); counted, and named, as
//!   the admin UI's stuck view counts them.
//!
//! Every engine replica samples: the values are the same from each, so dashboards and alerts
//! aggregate with `max`. A sample that fails leaves the previous values in place and is logged;
//! the loop reconnects on the next tick, so the broker or the database going away never stops it.

use std::{sync::LazyLock, time::Duration};

use lapin::Connection;
use orderflow_activities::broker::{self, Topology};
use prometheus::{
    Gauge, IntGauge, IntGaugeVec, register_gauge, register_int_gauge, register_int_gauge_vec,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    admin::query::{self, StuckKind},
    store,
};

pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orderflow_queue_depth",
        "Tasks ready on an activity queue, not yet taken by a worker",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static QUEUE_CONSUMERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orderflow_queue_consumers",
        "Workers consuming an activity queue",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static OUTBOX_ROWS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "orderflow_outbox_rows",
        "Tasks committed and not yet confirmed by the broker"
    )
    .expect("metric registers once")
});

pub static OUTBOX_LAG: LazyLock<Gauge> = LazyLock::new(|| {
    register_gauge!(
        "orderflow_outbox_lag_seconds",
        "Age of the oldest outbox row (0 when the outbox is empty)"
    )
    .expect("metric registers once")
});

pub static WORKFLOWS_STUCK: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orderflow_workflows_stuck",
        "Sagas that need attention, wait to retry, or have an overdue timer",
        &["reason"]
    )
    .expect("metric registers once")
});

/// How often the loop samples by default: often enough for KEDA's polling (which reads the queue
/// itself) and the alerts' `for:` windows, rare enough to cost nothing.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How long past its due time a timer may wait before it counts as overdue; the same grace the
/// admin UI gives.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(10);

/// Why a sample could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    /// RabbitMQ did not answer; the connection is dropped and made again next time.
    #[error("asking RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    /// RabbitMQ did not answer within the sampling interval.
    #[error("RabbitMQ did not answer within {0:?}")]
    BrokerTimeout(Duration),
    /// Postgres did not answer.
    #[error("asking Postgres: {0}")]
    Database(#[from] sqlx::Error),
}

/// One queue as a sample saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSample {
    pub depth: u32,
    pub consumers: u32,
}

/// The sampler: what to ask about and the connection it keeps between ticks.
#[derive(Debug)]
pub struct QueueMetrics {
    pool: PgPool,
    amqp_url: String,
    topology: Topology,
    activities: Vec<String>,
    interval: Duration,
    conn: Option<Connection>,
}

impl QueueMetrics {
    /// Samples the task queues of `activities` (as named by `topology`), the outbox and the stuck
    /// sagas of the database behind `pool`, every [`INTERVAL`].
    pub fn new(
        pool: PgPool,
        amqp_url: impl Into<String>,
        topology: Topology,
        activities: Vec<String>,
    ) -> Self {
        Self {
            pool,
            amqp_url: amqp_url.into(),
            topology,
            activities,
            interval: INTERVAL,
            conn: None,
        }
    }

    /// Samples every `interval` instead.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Samples until `stop`. The broker and the database are sampled independently, so one
    /// being down does not blank the other's gauges.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        // After a slow sample, take the next one on time rather than a burst of catch-ups.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sample_queues().await {
                tracing::warn!(error = %e, "queue metrics: cannot sample the task queues");
                self.conn = None;
            }
            if let Err(e) = self.sample_database().await {
                tracing::warn!(error = %e, "queue metrics: cannot sample the outbox");
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close(200, "stopping").await;
        }
    }

    /// Asks RabbitMQ about every queue and sets the queue gauges; returns what it saw, by queue
    /// name.
    pub async fn sample_queues(&mut self) -> Result<Vec<(String, QueueSample)>, SampleError> {
        let conn = connected(&mut self.conn, &self.amqp_url, self.interval).await?;
        let channel = conn.create_channel().await?;
        let mut seen = Vec::with_capacity(self.activities.len());
        for activity in &self.activities {
            let queue = self.topology.task_queue(activity);
            let q = self.topology.declare_queue(&channel, &queue).await?;
            let sample = QueueSample {
                depth: q.message_count(),
                consumers: q.consumer_count(),
            };
            QUEUE_DEPTH
                .with_label_values(&[queue.as_str()])
                .set(sample.depth.into());
            QUEUE_CONSUMERS
                .with_label_values(&[queue.as_str()])
                .set(sample.consumers.into());
            seen.push((queue, sample));
        }
        let _ = channel.close(200, "sampled").await;
        Ok(seen)
    }

    /// Asks Postgres about the outbox and the stuck sagas and sets their gauges.
    pub async fn sample_database(&self) -> Result<(), SampleError> {
        let mut conn = self.pool.acquire().await?;
        let (rows, lag) = store::outbox::lag(&mut conn).await?;
        OUTBOX_ROWS.set(rows);
        OUTBOX_LAG.set(lag);
        let grace = chrono::Duration::from_std(OVERDUE_GRACE).unwrap_or_default();
        let (attention, retrying, overdue) =
            query::stuck_counts(&mut conn, crate::apply::now() - grace).await?;
        for (kind, n) in [
            (StuckKind::Attention, attention),
            (StuckKind::Retrying, retrying),
            (StuckKind::Overdue, overdue),
        ] {
            WORKFLOWS_STUCK.with_label_values(&[kind.as_str()]).set(n);
        }
        Ok(())
    }
}

/// The kept connection, made again if the broker dropped it. Connecting is bounded by the
/// interval so a broker that does not answer delays the loop by no more than one tick.
async fn connected<'a>(
    conn: &'a mut Option<Connection>,
    amqp_url: &str,
    interval: Duration,
) -> Result<&'a Connection, SampleError> {
    if !conn.as_ref().is_some_and(|c| c.status().connected()) {
        *conn = None;
        let patience = interval.max(Duration::from_secs(1));
        let c = tokio::time::timeout(patience, broker::connect(amqp_url, Duration::ZERO))
            .await
            .map_err(|_| SampleError::BrokerTimeout(patience))??;
        *conn = Some(c);
    }
    Ok(conn.as_ref().expect("connected just above"))
}

/// Samples the task queues of `activities`, the outbox and the stuck sagas every [`INTERVAL`]
/// until `stop`; see the module's documentation for the gauges.
pub async fn run(
    pool: PgPool,
    amqp_url: String,
    topology: Topology,
    activities: Vec<String>,
    stop: CancellationToken,
) {
    QueueMetrics::new(pool, amqp_url, topology, activities)
        .run(stop)
        .await
}
