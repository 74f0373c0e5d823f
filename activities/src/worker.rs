//! The worker runtime: consumes activity task queues, runs each task's handler and reports the
//! outcome on the results queue.
//!
//! The one rule everything here serves (DESIGN.md §3.3): a task is acked only after its result is
//! confirmed by the broker. A worker that dies, loses its connection or cannot publish leaves the
//! task unacked, so the broker redelivers it and the (idempotent) activity runs again; a result
//! is therefore never lost, at worst sent twice, and the engine ignores the duplicate.
//!
//! Per activity the worker has a *lane*: a consuming channel with its own prefetch, a semaphore
//! bounding the handlers running at once, and a confirm channel for the results. Each delivery
//! runs in its own tokio task: decode, run the handler until the task's deadline, publish the
//! result, ack. A lane or connection failure tears the whole connection down and the worker
//! reconnects with backoff; on shutdown every lane stops consuming and waits (up to the drain
//! timeout) for its in-flight tasks to publish and ack before the connection closes.

use std::{
    any::Any,
    collections::HashSet,
    fmt,
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use chrono::Utc;
use futures::{FutureExt, StreamExt, future::try_join_all};
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::FieldTable,
};
use orderflow_core::{ActivityError, ResultMessage, TaskMessage, TaskOutcome};
use serde_json::Value;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{JoinError, JoinSet},
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    activity::{Activity, TaskContext},
    broker::{self, Outgoing, PublishError, Topology},
};
use orderflow_telemetry as telemetry;

/// How long a result may wait for its confirm before the worker gives up on the connection.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs one activity for the worker: the object-safe face of [`Activity`], so one worker can
/// hold handlers of many types. Every [`Activity`] is a `Handler`; implement it directly for
/// handlers that serve a name only known at runtime.
#[async_trait]
pub trait Handler: Send + Sync {
    /// The durable activity name; the worker consumes its task queue.
    fn activity(&self) -> &str;

    /// Runs the activity once for `ctx`'s task on the saga `input`; the `Ok` value is the
    /// step's output.
    async fn handle(&self, ctx: &TaskContext, input: Value) -> Result<Value, ActivityError>;
}

#[async_trait]
impl<A: Activity> Handler for A {
    fn activity(&self) -> &str {
        A::NAME
    }

    async fn handle(&self, ctx: &TaskContext, input: Value) -> Result<Value, ActivityError> {
        // No retry can fix input that does not fit the contract.
        let input: A::Input = serde_json::from_value(input).map_err(|e| {
            ActivityError::permanent("bad_input", format!("input of `{}`: {e}", A::NAME))
        })?;
        let output = self.run(ctx, input).await?;
        serde_json::to_value(output).map_err(|e| {
            ActivityError::permanent("bad_output", format!("output of `{}`: {e}", A::NAME))
        })
    }
}

/// Why [`Worker::run`] refused to start. Broker trouble is not an error: the worker waits it out.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("the worker has no activities to run")]
    NoActivities,
    #[error("activity `{0}` is registered twice")]
    DuplicateActivity(String),
    #[error("activity `{0}`: concurrency and prefetch must be at least 1")]
    ZeroLimit(String),
}

/// Why a connection was given up; the worker reconnects.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("publishing a result: {0}")]
    Publish(#[from] PublishError),
    #[error("no confirm for a result within {PUBLISH_TIMEOUT:?}")]
    PublishTimeout,
    #[error("the broker cancelled the consumer of `{0}`")]
    ConsumerEnded(String),
    #[error("a task runner failed: {0}")]
    Runner(#[from] JoinError),
}

/// One activity's settings and its concurrency limit, which outlives reconnects so that handlers
/// still running from a dropped connection count against it.
struct Lane {
    handler: Arc<dyn Handler>,
    concurrency: usize,
    prefetch: u16,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lane")
            .field("activity", &self.handler.activity())
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// Builds a [`Worker`]; see [`Worker::builder`].
#[derive(Debug)]
pub struct WorkerBuilder {
    amqp_url: String,
    topology: Topology,
    lanes: Vec<Lane>,
    drain_timeout: Duration,
    connect_patience: Duration,
}

impl WorkerBuilder {
    /// Runs `handler` with at most `concurrency` tasks at once; prefetch is `concurrency`.
    pub fn handler(self, handler: Arc<dyn Handler>, concurrency: usize) -> Self {
        let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
        self.handler_with_prefetch(handler, concurrency, prefetch)
    }

    /// Like [`Self::handler`], with an explicit number of unacked deliveries the broker may push
    /// ahead: more than `concurrency` keeps the next tasks at hand, fewer leaves them to other
    /// workers.
    pub fn handler_with_prefetch(
        mut self,
        handler: Arc<dyn Handler>,
        concurrency: usize,
        prefetch: u16,
    ) -> Self {
        self.lanes.push(Lane {
            handler,
            concurrency,
            prefetch,
            permits: Arc::new(Semaphore::new(concurrency)),
        });
        self
    }

    /// Registers a typed activity.
    pub fn activity<A: Activity>(self, activity: A, concurrency: usize) -> Self {
        self.handler(Arc::new(activity), concurrency)
    }

    /// Registers many handlers with the same concurrency limit each.
    pub fn handlers(
        self,
        handlers: impl IntoIterator<Item = Arc<dyn Handler>>,
        concurrency: usize,
    ) -> Self {
        handlers
            .into_iter()
            .fold(self, |b, h| b.handler(h, concurrency))
    }

    /// How long shutdown waits for in-flight tasks (default 30 s). Tasks still running then are
    /// abandoned unacked, and the broker hands them to another worker.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// How long one connection attempt keeps retrying before the worker logs an error and starts
    /// over (default 60 s). The worker never gives up on the broker by itself.
    pub fn connect_patience(mut self, patience: Duration) -> Self {
        self.connect_patience = patience;
        self
    }

    pub fn build(self) -> Worker {
        Worker {
            amqp_url: self.amqp_url,
            topology: self.topology,
            lanes: self.lanes,
            drain_timeout: self.drain_timeout,
            connect_patience: self.connect_patience,
        }
    }
}

/// Consumes the task queues of its activities until shut down.
#[derive(Debug)]
pub struct Worker {
    amqp_url: String,
    topology: Topology,
    lanes: Vec<Lane>,
    drain_timeout: Duration,
    connect_patience: Duration,
}

impl Worker {
    pub fn builder(amqp_url: impl Into<String>, topology: Topology) -> WorkerBuilder {
        WorkerBuilder {
            amqp_url: amqp_url.into(),
            topology,
            lanes: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            connect_patience: Duration::from_secs(60),
        }
    }

    /// Runs until `shutdown` completes, reconnecting whenever the broker goes away, then drains:
    /// stops consuming, lets in-flight tasks publish their results and ack (up to the drain
    /// timeout) and closes the connection. Returns early only if the configuration is invalid.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        self.validate()?;
        let stop = CancellationToken::new();
        let work = self.supervise(&stop);
        tokio::pin!(work, shutdown);
        tokio::select! {
            () = &mut work => return Ok(()),
            () = &mut shutdown => {
                tracing::info!("worker shutting down; draining in-flight tasks");
                stop.cancel();
            }
        }
        work.await;
        tracing::info!("worker stopped");
        Ok(())
    }

    fn validate(&self) -> Result<(), WorkerError> {
        if self.lanes.is_empty() {
            return Err(WorkerError::NoActivities);
        }
        let mut seen = HashSet::new();
        for lane in &self.lanes {
            let name = lane.handler.activity();
            if !seen.insert(name) {
                return Err(WorkerError::DuplicateActivity(name.to_owned()));
            }
            if lane.concurrency == 0 || lane.prefetch == 0 {
                return Err(WorkerError::ZeroLimit(name.to_owned()));
            }
        }
        Ok(())
    }

    /// Connects, runs a session, and after a failure reconnects with capped backoff, until `stop`.
    async fn supervise(&self, stop: &CancellationToken) {
        const MIN_DELAY: Duration = Duration::from_millis(100);
        const MAX_DELAY: Duration = Duration::from_secs(5);
        let mut delay = MIN_DELAY;
        while !stop.is_cancelled() {
            let connected = tokio::select! {
                () = stop.cancelled() => return,
                c = broker::connect(&self.amqp_url, self.connect_patience) => c,
            };
            let conn = match connected {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::error!(error = %e, "cannot connect to RabbitMQ; still trying");
                    continue;
                }
            };
            let started = Instant::now();
            let outcome = self.session(&conn, stop).await;
            // Closing releases whatever is still unacked to other workers right away; a dead
            // connection fails fast, a stuck one is abandoned.
            let close = conn.close(200, "worker stopping");
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), close).await {
                tracing::debug!(error = %e, "closing the connection");
            }
            match outcome {
                Ok(()) => return,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        delay = MIN_DELAY;
                    }
                    tracing::warn!(
                        error = %e,
                        retry_in = ?delay,
                        "worker lost its connection; reconnecting"
                    );
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    /// Declares the topology and runs every lane on `conn`. Returns `Ok` once all lanes drained
    /// after `stop`, or the first lane's failure (which aborts the others' tasks: their deliveries
    /// are redelivered once the connection closes).
    async fn session(
        &self,
        conn: &Connection,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let channel = conn.create_channel().await?;
        let names: Vec<&str> = self.lanes.iter().map(|l| l.handler.activity()).collect();
        self.topology.declare(&channel, &names).await?;
        channel.close(200, "declared").await?;
        let results_queue: Arc<str> = self.topology.results_queue().into();
        try_join_all(
            self.lanes
                .iter()
                .map(|lane| self.consume(lane, conn, &results_queue, stop)),
        )
        .await?;
        Ok(())
    }

    /// Runs one lane until `stop` (then drains it) or until its channels fail.
    async fn consume(
        &self,
        lane: &Lane,
        conn: &Connection,
        results_queue: &Arc<str>,
        stop: &CancellationToken,
    ) -> Result<(), SessionError> {
        let activity = lane.handler.activity();
        let queue = self.topology.task_queue(activity);
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(lane.prefetch, BasicQosOptions::default())
            .await?;
        let publisher = broker::confirm_channel(conn).await?;
        let mut consumer = channel
            .basic_consume(
                &queue,
                "",
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(%activity, %queue, concurrency = lane.concurrency, "consuming");
        let mut tasks = JoinSet::new();
        loop {
            // A permit first, so a delivery is only taken when a handler can start on it.
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = tasks.join_next() => { done??; continue }
                permit = lane.permits.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let delivery = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(done) = tasks.join_next() => { done??; continue }
                next = consumer.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Err(SessionError::ConsumerEnded(queue)),
                },
            };
            let run = process(
                delivery,
                lane.handler.clone(),
                publisher.clone(),
                results_queue.clone(),
                permit,
            );
            tasks.spawn(run);
        }

        // Drain: no new deliveries, the prefetched ones go back to the queue for other workers,
        // and in-flight tasks finish publishing and acking.
        let deadline = tokio::time::Instant::now() + self.drain_timeout;
        let tag = consumer.tag();
        let drained = tokio::time::timeout_at(deadline, async {
            if let Err(e) = channel
                .basic_cancel(tag.as_str(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(%activity, error = %e, "cancelling the consumer");
            }
            // After the cancel-ok the stream yields what was prefetched, then ends.
            while let Some(Ok(delivery)) = consumer.next().await {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                if let Err(e) = delivery.acker.nack(requeue).await {
                    tracing::debug!(%activity, error = %e, "returning a prefetched task");
                }
            }
            while let Some(done) = tasks.join_next().await {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(
                        %activity,
                        error = %e,
                        "task not acked while draining; it will be redelivered"
                    ),
                    Err(e) => tracing::error!(
                        %activity,
                        error = %e,
                        "task runner failed while draining"
                    ),
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                %activity,
                abandoned = tasks.len(),
                timeout = ?self.drain_timeout,
                "drain timeout; abandoning in-flight tasks, the broker redelivers them"
            );
            tasks.shutdown().await;
        }
        let _ = publisher.close(200, "worker stopping").await;
        let _ = channel.close(200, "worker stopping").await;
        Ok(())
    }
}

/// Handles one delivery end to end. `Err` means the delivery could not be settled and the
/// connection should be replaced.
async fn process(
    delivery: Delivery,
    handler: Arc<dyn Handler>,
    publisher: Channel,
    results_queue: Arc<str>,
    _permit: OwnedSemaphorePermit,
) -> Result<(), SessionError> {
    let task = match serde_json::from_slice::<TaskMessage>(&delivery.data) {
        Ok(task) => task,
        Err(e) => {
            // Redelivering cannot make it decodable; the queue's dead-letter exchange keeps it
            // for a person to look at.
            tracing::error!(
                activity = handler.activity(),
                error = %e,
                bytes = delivery.data.len(),
                "undecodable task; dead-lettering it"
            );
            let reject = BasicNackOptions {
                requeue: false,
                multiple: false,
            };
            delivery.acker.nack(reject).await?;
            return Ok(());
        }
    };
    if let Some(at) = broker::published_at(&delivery) {
        let waited = (Utc::now() - at).to_std().unwrap_or_default();
        metrics::SCHEDULE_TO_START
            .with_label_values(&[&task.activity])
            .observe(waited.as_secs_f64());
    }
    // The hop's context (the relay's publish span) from the header; the saga root's from the
    // body when the header is missing.
    let incoming = broker::traceparent(&delivery).or_else(|| task.traceparent.clone());
    let span = tracing::info_span!(
        "activity",
        otel.name = %format_args!("activity {}", task.activity),
        otel.kind = "consumer",
        workflow_id = %task.workflow_id,
        task_id = %task.task_id,
        activity = %task.activity,
        step = %task.step,
        attempt = task.attempt,
    );
    telemetry::set_parent(&span, incoming.as_deref(), task.workflow_id.0);
    async move {
        let outcome = execute(handler.as_ref(), &task).await;
        match &outcome {
            TaskOutcome::Completed { .. } => tracing::debug!("task completed"),
            TaskOutcome::Failed { error } if error.code == "panic" => {
                tracing::error!(%error, "activity panicked")
            }
            TaskOutcome::Failed { error } => {
                tracing::info!(%error, retryable = error.retryable, "task failed")
            }
        }
        let result = ResultMessage {
            task_id: task.task_id,
            workflow_id: task.workflow_id,
            attempt: task.attempt,
            outcome,
        };
        let body = serde_json::to_vec(&result).expect("a result message always serializes");
        // The result names this activity's span, so applying it is its child.
        let traceparent = telemetry::traceparent_of(&tracing::Span::current(), incoming.as_deref());
        let msg = Outgoing {
            exchange: "",
            queue: &results_queue,
            body: &body,
            message_id: task.task_id.to_string(),
            traceparent: traceparent.as_deref(),
        };
        let published = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            broker::publish_confirmed(&publisher, &[msg]),
        )
        .await;
        match published {
            Ok(Ok(())) => {
                delivery.acker.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            failed => {
                let error = match failed {
                    Ok(Err(e)) => SessionError::Publish(e),
                    _ => SessionError::PublishTimeout,
                };
                tracing::error!(%error, "result not published; the task will be redelivered");
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                let _ = delivery.acker.nack(requeue).await;
                Err(error)
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the handler for `task` and turns everything that can happen into an outcome.
pub(crate) async fn execute(handler: &dyn Handler, task: &TaskMessage) -> TaskOutcome {
    let failed = |error| TaskOutcome::Failed { error };
    if task.activity != handler.activity() {
        return failed(ActivityError::permanent(
            "wrong_queue",
            format!(
                "a `{}` task reached the queue of `{}`",
                task.activity,
                handler.activity()
            ),
        ));
    }
    // The engine counts the attempt as lost after the deadline and retries it, so running past
    // it (or starting after it) only races the next attempt.
    let remaining = match (task.deadline - Utc::now()).to_std() {
        Ok(d) if !d.is_zero() => d,
        _ => {
            return failed(ActivityError::retryable(
                "timeout",
                format!(
                    "the deadline {} passed before the task started",
                    task.deadline
                ),
            ));
        }
    };
    let (ctx, input) = TaskContext::from_task(task);
    // A panicking activity fails its attempt, not the worker; the step's retry policy bounds how
    // often it is tried again.
    let run = AssertUnwindSafe(handler.handle(&ctx, input)).catch_unwind();
    let started = Instant::now();
    let outcome = match tokio::time::timeout(remaining, run).await {
        Ok(Ok(Ok(output))) => TaskOutcome::Completed { output },
        Ok(Ok(Err(error))) => failed(error),
        Ok(Err(panic)) => failed(ActivityError::retryable("panic", panic_message(&*panic))),
        Err(_) => failed(ActivityError::retryable(
            "timeout",
            format!("no outcome before the deadline {}", task.deadline),
        )),
    };
    metrics::ran(task, &outcome, started.elapsed());
    outcome
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        format!("the activity panicked: {s}")
    } else if let Some(s) = panic.downcast_ref::<String>() {
        format!("the activity panicked: {s}")
    } else {
        "the activity panicked".to_owned()
    }
}

/// The worker side of the metrics (process-wide registry, served by every process's
/// `/metrics`): what each attempt cost and how long it waited.
mod metrics {
    use std::{sync::LazyLock, time::Duration};

    use orderflow_core::{Phase, TaskMessage, TaskOutcome};
    use prometheus::{
        HistogramVec, IntCounterVec, register_histogram_vec, register_int_counter_vec,
    };

    /// From 5 ms to about 80 s: activities call databases, Stripe and SMTP.
    fn buckets() -> Vec<f64> {
        prometheus::exponential_buckets(0.005, 2.0, 15).expect("valid buckets")
    }

    pub(super) static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
        register_histogram_vec!(
            "orderflow_step_duration_seconds",
            "Time an activity's handler took for one attempt, by activity, phase and outcome",
            &["activity", "phase", "outcome"],
            buckets()
        )
        .expect("metric registers once")
    });

    pub(super) static SCHEDULE_TO_START: LazyLock<HistogramVec> = LazyLock::new(|| {
        register_histogram_vec!(
            "orderflow_step_schedule_to_start_seconds",
            "From the task's publishing to a worker picking it up, by activity",
            &["activity"],
            buckets()
        )
        .expect("metric registers once")
    });

    pub(super) static ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "orderflow_step_attempts_total",
            "Attempts run by workers, by activity, phase and outcome (completed, failed)",
            &["activity", "phase", "outcome"]
        )
        .expect("metric registers once")
    });

    pub(super) static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "orderflow_step_retries_total",
            "Attempts after the first of a step, by activity",
            &["activity"]
        )
        .expect("metric registers once")
    });

    pub(super) static COMPENSATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
        register_int_counter_vec!(
            "orderflow_compensations_total",
            "Compensation attempts run by workers, by activity and outcome",
            &["activity", "outcome"]
        )
        .expect("metric registers once")
    });

    /// Counts one finished attempt of `task`.
    pub(super) fn ran(task: &TaskMessage, outcome: &TaskOutcome, took: Duration) {
        let phase = match task.phase {
            Phase::Forward => "forward",
            Phase::Compensate => "compensate",
        };
        let result = match outcome {
            TaskOutcome::Completed { .. } => "completed",
            TaskOutcome::Failed { .. } => "failed",
        };
        let activity = task.activity.as_str();
        DURATION
            .with_label_values(&[activity, phase, result])
            .observe(took.as_secs_f64());
        ATTEMPTS.with_label_values(&[activity, phase, result]).inc();
        if task.attempt > 1 {
            RETRIES.with_label_values(&[activity]).inc();
        }
        if task.phase == Phase::Compensate {
            COMPENSATIONS.with_label_values(&[activity, result]).inc();
        }
    }
}
