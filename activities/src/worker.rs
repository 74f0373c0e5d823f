//! The worker: consumes activity task queues through the [`TaskQueue`] port, runs each task's
//! handler and reports the outcome on the results queue. The same worker runs on RabbitMQ in
//! production and on the embedded queue in `orderflow dev`.
//!
//! The one rule everything here serves (DESIGN.md §3.3): a task is acked only after its result is
//! published (confirmed by the broker, committed by the embedded queue). A worker that dies,
//! loses its connection or cannot publish leaves the task unacked, so it is delivered again and
//! the (idempotent) activity runs again; a result is therefore never lost, at worst sent twice,
//! and the engine ignores the duplicate.
//!
//! Per activity the worker has a *lane*: a consumer with its own prefetch and a semaphore bounding
//! the handlers running at once (it outlives reconnects, so handlers still running from a lost
//! connection count against it). Each delivery runs in its own tokio task: decode, run the
//! handler until the task's deadline (a panic fails the attempt, not the worker), publish the
//! result, ack. A lane whose consumer fails consumes again after a pause; the queue adapter makes
//! a new connection if the old one is gone. On shutdown every lane stops consuming (what was
//! prefetched goes back to the queue) and waits, up to the drain timeout, for its in-flight
//! tasks to publish and ack.

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
use futures::FutureExt;
use orderflow_core::{ActivityError, ResultMessage, TaskMessage, TaskOutcome};
use orderflow_queue::{Consumer, Delivery, Outgoing, TaskQueue};
use orderflow_telemetry as telemetry;
use serde_json::Value;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::activity::{Activity, TaskContext};

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

/// One activity's settings and its concurrency limit.
#[derive(Clone)]
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
pub struct WorkerBuilder<Q> {
    queue: Q,
    lanes: Vec<Lane>,
    drain_timeout: Duration,
}

impl<Q: TaskQueue> WorkerBuilder<Q> {
    /// Runs `handler` with at most `concurrency` tasks at once; prefetch is `concurrency`.
    pub fn handler(self, handler: Arc<dyn Handler>, concurrency: usize) -> Self {
        let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
        self.handler_with_prefetch(handler, concurrency, prefetch)
    }

    /// Like [`Self::handler`], with an explicit number of unacked deliveries the queue may push
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
    /// abandoned unacked, and the queue hands them to another worker.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    pub fn build(self) -> Worker<Q> {
        Worker {
            queue: self.queue,
            lanes: self.lanes,
            drain_timeout: self.drain_timeout,
        }
    }
}

/// Consumes the task queues of its activities until shut down.
#[derive(Debug)]
pub struct Worker<Q> {
    queue: Q,
    lanes: Vec<Lane>,
    drain_timeout: Duration,
}

impl<Q: TaskQueue> Worker<Q> {
    pub fn builder(queue: Q) -> WorkerBuilder<Q> {
        WorkerBuilder {
            queue,
            lanes: Vec::new(),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// The activities this worker serves.
    pub fn activities(&self) -> Vec<&str> {
        self.lanes.iter().map(|l| l.handler.activity()).collect()
    }

    /// Runs until `shutdown` completes, consuming again whenever the queue goes away, then
    /// drains: stops consuming, lets in-flight tasks publish their results and ack (up to the
    /// drain timeout). Returns early only if the configuration is invalid.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        self.validate()?;
        let stop = CancellationToken::new();
        let mut lanes = JoinSet::new();
        for lane in &self.lanes {
            let run = run_lane(
                self.queue.clone(),
                lane.clone(),
                self.drain_timeout,
                stop.clone(),
            );
            lanes.spawn(run);
        }
        shutdown.await;
        tracing::info!("worker shutting down; draining in-flight tasks");
        stop.cancel();
        while let Some(done) = lanes.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a worker lane panicked");
            }
        }
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
}

/// Runs one lane until `stop`, then drains it. A consumer that fails (the connection went away,
/// the broker cancelled it) is replaced after a pause that grows while failures repeat.
async fn run_lane<Q: TaskQueue>(
    queue: Q,
    lane: Lane,
    drain_timeout: Duration,
    stop: CancellationToken,
) {
    const MIN_DELAY: Duration = Duration::from_millis(100);
    const MAX_DELAY: Duration = Duration::from_secs(5);
    let activity = lane.handler.activity().to_owned();
    let name = queue.topology().task_queue(&activity);
    let results: Arc<str> = queue.topology().results_queue().into();
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut delay = MIN_DELAY;
    while !stop.is_cancelled() {
        let consumed = tokio::select! {
            () = stop.cancelled() => break,
            c = queue.consume(&name, lane.prefetch) => c,
        };
        let mut consumer = match consumed {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(%activity, error = %e, retry_in = ?delay, "cannot consume; trying again");
                pause(&stop, delay).await;
                delay = (delay * 2).min(MAX_DELAY);
                continue;
            }
        };
        tracing::info!(%activity, queue = %name, concurrency = lane.concurrency, "consuming");
        let started = Instant::now();
        let failed = loop {
            // A permit first, so a delivery is only taken when a handler can start on it.
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break None,
                Some(done) = tasks.join_next() => { runner_ended(&activity, done); continue }
                permit = lane.permits.clone().acquire_owned() => {
                    permit.expect("the semaphore is never closed")
                }
            };
            let next = tokio::select! {
                biased;
                () = stop.cancelled() => break None,
                Some(done) = tasks.join_next() => { runner_ended(&activity, done); continue }
                next = consumer.next() => next,
            };
            match next {
                Ok(delivery) => {
                    let (q, h, r) = (queue.clone(), lane.handler.clone(), results.clone());
                    tasks.spawn(process(q, delivery, h, r, permit));
                }
                Err(e) => break Some(e),
            }
        };
        match failed {
            Some(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    delay = MIN_DELAY;
                }
                tracing::warn!(%activity, error = %e, retry_in = ?delay, "lost the task queue; consuming again");
                // In-flight tasks go on; their deliveries keep their channel until settled.
                drop(consumer);
                pause(&stop, delay).await;
                delay = (delay * 2).min(MAX_DELAY);
            }
            None => {
                drain(&activity, consumer, &mut tasks, drain_timeout).await;
                return;
            }
        }
    }
    // Stopped while not consuming: the tasks of an earlier consumer may still be running.
    let drained = tokio::time::timeout(drain_timeout, async {
        while let Some(done) = tasks.join_next().await {
            runner_ended(&activity, done);
        }
    });
    if drained.await.is_err() {
        tasks.shutdown().await;
    }
}

/// Stops taking tasks (what was prefetched goes back to the queue for other workers) and waits
/// for the in-flight ones to publish and ack, up to `timeout`; after it they are abandoned
/// unacked, and the queue delivers them again.
async fn drain<C: Consumer>(
    activity: &str,
    mut consumer: C,
    tasks: &mut JoinSet<()>,
    timeout: Duration,
) {
    let drained = tokio::time::timeout(timeout, async {
        if let Err(e) = consumer.cancel().await {
            tracing::warn!(%activity, error = %e, "cancelling the consumer");
        }
        while let Some(done) = tasks.join_next().await {
            runner_ended(activity, done);
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            %activity,
            abandoned = tasks.len(),
            ?timeout,
            "drain timeout; abandoning in-flight tasks, the queue delivers them again"
        );
        tasks.shutdown().await;
    }
    drop(consumer);
}

fn runner_ended(activity: &str, done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        // The delivery was dropped unsettled, so it goes back to the queue.
        tracing::error!(%activity, error = %e, "a task runner failed");
    }
}

async fn pause(stop: &CancellationToken, delay: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(delay) => {}
    }
}

/// Handles one delivery end to end. Anything that fails before the ack leaves the task to be
/// delivered again.
async fn process<Q: TaskQueue>(
    queue: Q,
    delivery: <Q::Consumer as Consumer>::Delivery,
    handler: Arc<dyn Handler>,
    results: Arc<str>,
    _permit: OwnedSemaphorePermit,
) {
    let task = match serde_json::from_slice::<TaskMessage>(delivery.body()) {
        Ok(task) => task,
        Err(e) => {
            // Redelivering cannot make it decodable; the dead-letter queue keeps it for a person
            // to look at.
            tracing::error!(
                activity = handler.activity(),
                error = %e,
                bytes = delivery.body().len(),
                "undecodable task; dead-lettering it"
            );
            if let Err(e) = delivery.nack(false).await {
                tracing::warn!(error = %e, "dead-lettering a task");
            }
            return;
        }
    };
    if let Some(at) = delivery.published_at() {
        let waited = (Utc::now() - at).to_std().unwrap_or_default();
        metrics::SCHEDULE_TO_START
            .with_label_values(&[&task.activity])
            .observe(waited.as_secs_f64());
    }
    // The hop's context (the relay's publish span) from the header; the saga root's from the
    // body when the header is missing.
    let incoming = delivery.traceparent().or_else(|| task.traceparent.clone());
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
            queue: &results,
            body: &body,
            message_id: task.task_id.to_string(),
            traceparent: traceparent.as_deref(),
            transient: false,
        };
        match queue.publish(&[msg]).await {
            Ok(()) => {
                if let Err(e) = delivery.ack().await {
                    tracing::warn!(error = %e, "ack failed; the task will be delivered again");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "result not published; the task will be delivered again");
                if let Err(e) = delivery.nack(true).await {
                    tracing::debug!(error = %e, "returning the task");
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the handler for `task` and turns everything that can happen into an outcome.
async fn execute(handler: &dyn Handler, task: &TaskMessage) -> TaskOutcome {
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
