//! Backlog gauges: the signals that workers are scaled on and that the alerts watch.
//!
//! Every few seconds [`Backlog::run`] asks the queue about each activity's task queue (the
//! activities of every registered definition) and the store about the outbox and the stuck
//! workflows, and sets the gauges below.
//!
//! - `orderflow_queue_depth{queue}`: tasks ready on the queue, not yet taken by a worker. Workers
//!   hold at most their prefetch unacked, so a depth that stays above zero means the workers of
//!   that queue are saturated (or absent).
//! - `orderflow_queue_consumers{queue}`: workers consuming it; zero with a depth above zero means
//!   tasks wait for a worker that does not exist.
//! - `orderflow_queue_oldest_task_age_seconds{queue}` and `orderflow_tasks_out{queue}`: the tasks
//!   of that activity the engine scheduled and has no result for yet (waiting on the queue, in the
//!   outbox or running in a worker), and how long ago the oldest was scheduled (0 when none is
//!   out). Read from the store, not the broker: a task out is a workflow with a start-to-close
//!   timer, and the history row that scheduled it carries the instant, so the age is exact after
//!   any crash, the same from every replica, and needs neither the broker's management API nor a
//!   peek at a queue's head. With idle workers the age stays near the activity's run time; a
//!   growing age (with the depth above zero) means the tasks wait for workers: the signal KEDA
//!   scales on beside the depth.
//! - `orderflow_outbox_rows` and `orderflow_outbox_lag_seconds`: tasks committed but not yet
//!   confirmed by the queue, and the age of the oldest; a growing lag means no relay is
//!   publishing (broker down, engines down).
//! - `orderflow_workflows_stuck{reason}`: workflows in `needs_attention` (reason `attention`),
//!   waiting on a backoff timer to retry (`retrying`), or with a timer due for longer than
//!   [`OVERDUE_GRACE`] and not fired, so no engine is reacting (`overdue`); counted as the admin
//!   UI's stuck view counts them.
//!
//! Every engine replica samples: the values are the same from each, so dashboards and alerts
//! aggregate with `max`. A sample that fails leaves the previous values in place and is logged;
//! the queue and the store reconnect by themselves, so neither going away stops the loop.

use std::{sync::LazyLock, time::Duration};

use orderflow_queue::{QueueError, QueueStats, TaskQueue};
use prometheus::{
    Gauge, GaugeVec, IntGauge, IntGaugeVec, register_gauge, register_gauge_vec, register_int_gauge,
    register_int_gauge_vec,
};
use tokio_util::sync::CancellationToken;

use crate::{
    Engine,
    store::{Store, reads::StuckKind},
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

pub static QUEUE_OLDEST_TASK_AGE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "orderflow_queue_oldest_task_age_seconds",
        "Age of the oldest task of an activity queue scheduled and not yet answered (0: none)",
        &["queue"]
    )
    .expect("metric registers once")
});

pub static TASKS_OUT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "orderflow_tasks_out",
        "Tasks of an activity queue scheduled and not yet answered",
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

/// The sampler: what to ask about, and where.
#[derive(Debug)]
pub struct Backlog<S, Q> {
    store: S,
    queue: Q,
    activities: Vec<String>,
    interval: Duration,
}

impl<S: Store, Q: TaskQueue> Backlog<S, Q> {
    /// Samples the task queues of `activities`, the outbox and the stuck workflows every
    /// [`INTERVAL`].
    pub fn new(store: S, queue: Q, activities: Vec<String>) -> Self {
        Self {
            store,
            queue,
            activities,
            interval: INTERVAL,
        }
    }

    /// Samples every `interval` instead.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Samples until `stop`. The queue and the store are sampled independently, so one being
    /// down does not blank the other's gauges.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        // After a slow sample, take the next one on time rather than a burst of catch-ups.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Bounded by the interval, so a queue that does not answer delays the loop by no
            // more than one tick.
            let patience = self.interval.max(Duration::from_secs(1));
            match tokio::time::timeout(patience, self.sample_queues()).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "backlog: cannot sample the task queues"),
                Err(_) => tracing::warn!(?patience, "backlog: the task queues did not answer"),
            }
            if let Err(e) = self.sample_store().await {
                tracing::warn!(error = %e, "backlog: cannot sample the outbox");
            }
        }
    }

    /// Asks the queue about every activity's task queue and sets the queue gauges; returns what
    /// it saw, by queue name. A queue nobody declared yet is declared (empty, no consumers).
    pub async fn sample_queues(&self) -> Result<Vec<(String, QueueStats)>, QueueError> {
        let mut seen = Vec::with_capacity(self.activities.len());
        for activity in &self.activities {
            let name = self.queue.topology().task_queue(activity);
            let stats = self.queue.inspect(&name).await?;
            QUEUE_DEPTH
                .with_label_values(&[name.as_str()])
                .set(i64::try_from(stats.depth).unwrap_or(i64::MAX));
            if let Some(consumers) = stats.consumers {
                QUEUE_CONSUMERS
                    .with_label_values(&[name.as_str()])
                    .set(consumers.into());
            }
            seen.push((name, stats));
        }
        Ok(seen)
    }

    /// Asks the store about the outbox, the tasks out and the stuck workflows and sets their
    /// gauges.
    pub async fn sample_store(&self) -> sqlx::Result<()> {
        let (rows, lag) = self.store.outbox_lag().await?;
        OUTBOX_ROWS.set(rows);
        OUTBOX_LAG.set(lag);
        let out = self.store.tasks_out_by_activity().await?;
        let now = crate::apply::now();
        for activity in &self.activities {
            let name = self.queue.topology().task_queue(activity);
            let (n, age) =
                out.iter()
                    .find(|(a, ..)| a == activity)
                    .map_or((0, 0.0), |(_, n, oldest)| {
                        let age = (now - *oldest).num_microseconds().unwrap_or(0) as f64 / 1e6;
                        (*n, age.max(0.0))
                    });
            TASKS_OUT.with_label_values(&[name.as_str()]).set(n);
            QUEUE_OLDEST_TASK_AGE
                .with_label_values(&[name.as_str()])
                .set(age);
        }
        let grace = chrono::Duration::from_std(OVERDUE_GRACE).unwrap_or_default();
        let (attention, retrying, overdue) =
            self.store.stuck_counts(crate::apply::now() - grace).await?;
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

impl<S: Store, Q: TaskQueue> Engine<S, Q> {
    /// Samples the backlog of every activity the registry's definitions name until `stop`.
    pub(crate) async fn backlog_loop(&self, stop: &CancellationToken) {
        Backlog::new(
            self.store.clone(),
            self.queue.clone(),
            self.committer.registry().activities(),
        )
        .interval(self.config.backlog_interval)
        .run(stop.clone())
        .await
    }
}
