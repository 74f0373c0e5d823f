//! The worker conformance suite: the worker every command runs, on the real RabbitMQ and on the
//! embedded queue, with the recording activities keeping their effects in Postgres. Each
//! scenario is a generic function run once per backend; each run gets its own queue prefix (or
//! queue file) and its own database, publishes tasks the way the engine's relay does, and reads
//! what the worker put on the results and dead-letter queues. Waits poll with a deadline.

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, bail, ensure};
use async_trait::async_trait;
use chrono::Utc;
use orderflow_activities::{
    Activity, ActivityError, TaskContext,
    worker::{Handler, Worker, WorkerBuilder, WorkerError},
};
use orderflow_core::{Phase, ResultMessage, TaskId, TaskMessage, TaskOutcome, WorkflowId};
use orderflow_queue::{
    Consumer, Delivery, Outgoing, TaskQueue, Topology, embedded::EmbeddedQueue, rabbit::RabbitQueue,
};
use orderflow_testkit::{
    amqp_url, eventually, pg_server,
    recording::{self, Fault, RecordingActivity},
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio::{
    sync::{Notify, oneshot},
    task::JoinHandle,
};
use uuid::Uuid;

const RECORD: &str = "test.record";
const SLOW: &str = "test.slow";
const WAIT: Duration = Duration::from_secs(20);

/// A fresh database with the recording tables and a task queue of its own.
struct Env<Q> {
    pool: PgPool,
    database: String,
    queue: Q,
    file: Option<PathBuf>,
}

async fn rabbit_env() -> anyhow::Result<Env<RabbitQueue>> {
    let tag = Uuid::new_v4().simple().to_string();
    let topology = Topology::new(format!("test-{tag}."));
    let queue = RabbitQueue::connect(amqp_url(), topology, Duration::from_secs(10))
        .await
        .context("connecting to RabbitMQ")?;
    Env::new(queue, None).await
}

async fn embedded_env() -> anyhow::Result<Env<EmbeddedQueue>> {
    let file = std::env::temp_dir().join(format!("orderflow-worker-{}.db", Uuid::new_v4()));
    let queue = EmbeddedQueue::open(Some(&file), Topology::new("t.")).await?;
    Env::new(queue, Some(file)).await
}

impl<Q: TaskQueue> Env<Q> {
    async fn new(queue: Q, file: Option<PathBuf>) -> anyhow::Result<Self> {
        orderflow_testkit::init_tracing();
        let database = format!("orderflow_test_{}", Uuid::new_v4().simple());
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", pg_server()))
            .await
            .context("connecting to Postgres")?;
        sqlx::query(&format!("create database {database}"))
            .execute(&admin)
            .await?;
        admin.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&format!("{}/{database}", pg_server()))
            .await?;
        recording::migrate(&pool).await?;
        Ok(Self {
            pool,
            database,
            queue,
            file,
        })
    }

    fn topology(&self) -> &Topology {
        self.queue.topology()
    }

    fn worker(&self) -> WorkerBuilder<Q> {
        Worker::builder(self.queue.clone()).drain_timeout(Duration::from_secs(10))
    }

    fn recorder(&self, activity: &str) -> Arc<dyn Handler> {
        Arc::new(RecordingActivity::new(activity, self.pool.clone()))
    }

    async fn publish(&self, task: &TaskMessage) -> anyhow::Result<()> {
        let body = serde_json::to_vec(task)?;
        self.publish_raw(&task.activity, &body).await
    }

    async fn publish_raw(&self, activity: &str, body: &[u8]) -> anyhow::Result<()> {
        let queue = self.topology().task_queue(activity);
        let msg = Outgoing {
            exchange: "",
            queue: &queue,
            body,
            message_id: Uuid::new_v4().to_string(),
            traceparent: None,
            transient: false,
        };
        self.queue.publish(&[msg]).await?;
        Ok(())
    }

    /// Ready messages and consumers of `queue`.
    async fn queue_counts(&self, queue: &str) -> anyhow::Result<(u64, u32)> {
        let stats = self.queue.inspect(queue).await?;
        Ok((stats.depth, stats.consumers.unwrap_or(0)))
    }

    async fn wait_for_messages(&self, queue: &str, n: u64) -> anyhow::Result<()> {
        eventually(WAIT, &format!("{n} messages on {queue}"), || async {
            Ok((self.queue_counts(queue).await?.0 >= n).then_some(()))
        })
        .await
    }

    /// Takes (and acks) every message now on `queue`: its body and `traceparent` header.
    async fn take_all(&self, queue: &str) -> anyhow::Result<Vec<(Vec<u8>, Option<String>)>> {
        let mut taken = Vec::new();
        let mut consumer = self.queue.consume(queue, 100).await?;
        while let Ok(batch) =
            tokio::time::timeout(Duration::from_millis(300), consumer.next_batch(100)).await
        {
            for d in batch? {
                taken.push((d.body().to_vec(), d.traceparent()));
                d.ack().await?;
            }
        }
        consumer.cancel().await?;
        Ok(taken)
    }

    /// Takes every result now on the results queue, with its `traceparent` header.
    async fn take_results(&self) -> anyhow::Result<Vec<(ResultMessage, Option<String>)>> {
        let results = self.topology().results_queue();
        self.take_all(&results)
            .await?
            .into_iter()
            .map(|(body, tp)| Ok((serde_json::from_slice(&body)?, tp)))
            .collect()
    }

    async fn finish(self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", pg_server()))
            .await?;
        sqlx::query(&format!("drop database {} with (force)", self.database))
            .execute(&admin)
            .await?;
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
        Ok(())
    }
}

/// Each scenario once on RabbitMQ and once on the embedded queue.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::rabbit_env().await?).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::embedded_env().await?).await
                }
            )*
        }
    };
}

on_both!(
    a_task_yields_one_completed_result_and_one_effect,
    a_duplicate_task_yields_a_second_result_but_no_second_effect,
    an_injected_permanent_fault_fails_the_task_without_retry,
    a_transient_fault_is_retryable_and_spends_its_hits,
    a_panic_fails_the_task_and_the_queue_keeps_flowing,
    a_hanging_task_fails_with_timeout_at_its_deadline,
    an_undecodable_task_is_dead_lettered,
    shutdown_waits_for_the_task_in_flight_to_publish_and_ack,
    a_typed_activity_decodes_its_input_or_fails_with_bad_input,
);

/// A task as the engine would send it, due in 30 s.
fn task(activity: &str, workflow_id: Uuid, key: &str, input: Value) -> TaskMessage {
    TaskMessage {
        task_id: TaskId(Uuid::new_v4()),
        workflow_id: WorkflowId(workflow_id),
        workflow_type: "test".into(),
        step: "step".into(),
        activity: activity.into(),
        phase: Phase::Forward,
        attempt: 1,
        idempotency_key: key.into(),
        deadline: Utc::now() + chrono::Duration::seconds(30),
        payload: json!({ "input": input, "results": {}, "signals": {} }),
        traceparent: None,
    }
}

/// A worker running in the background until `stop`.
struct Running {
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), WorkerError>>,
}

fn start<Q: TaskQueue>(worker: Worker<Q>) -> Running {
    let (shutdown, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    Running { shutdown, handle }
}

impl Running {
    /// Shuts down and waits for `run` to return.
    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(());
        tokio::time::timeout(WAIT, self.handle)
            .await
            .context("the worker did not stop")???;
        Ok(())
    }
}

fn completed(outcome: &TaskOutcome) -> anyhow::Result<&Value> {
    match outcome {
        TaskOutcome::Completed { output } => Ok(output),
        TaskOutcome::Failed { error } => bail!("expected completion, got {error:?}"),
    }
}

fn failed(outcome: &TaskOutcome) -> anyhow::Result<&ActivityError> {
    match outcome {
        TaskOutcome::Failed { error } => Ok(error),
        TaskOutcome::Completed { output } => bail!("expected a failure, got output {output}"),
    }
}

async fn a_task_yields_one_completed_result_and_one_effect<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    let worker = start(env.worker().handler(env.recorder(RECORD), 4).build());
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut t = task(RECORD, Uuid::new_v4(), "wf-1:reserve", json!({}));
    t.traceparent = Some(traceparent.into());
    env.publish(&t).await?;

    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 1, "one result, got {results:?}");
    let (result, header) = &results[0];
    assert_eq!(result.task_id, t.task_id);
    assert_eq!(result.workflow_id, t.workflow_id);
    assert_eq!(result.attempt, 1);
    assert_eq!(
        completed(&result.outcome)?,
        &json!({ "activity": RECORD, "idempotency_key": "wf-1:reserve" })
    );
    assert_eq!(
        header.as_deref(),
        Some(traceparent),
        "traceparent is propagated"
    );
    assert_eq!(recording::effects_count(&env.pool, RECORD).await?, 1);
    let (ready, _) = env.queue_counts(&env.topology().task_queue(RECORD)).await?;
    assert_eq!(ready, 0, "the task was acked");
    env.finish().await
}

async fn a_duplicate_task_yields_a_second_result_but_no_second_effect<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    let worker = start(env.worker().handler(env.recorder(RECORD), 4).build());
    let workflow = Uuid::new_v4();
    let first = task(RECORD, workflow, "same-key", json!({}));
    let mut second = task(RECORD, workflow, "same-key", json!({}));
    second.attempt = 2;
    env.publish(&first).await?;
    env.publish(&second).await?;

    env.wait_for_messages(&env.topology().results_queue(), 2)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 2, "two results, got {results:?}");
    let ids: HashSet<_> = results.iter().map(|(r, _)| r.task_id).collect();
    assert_eq!(ids, HashSet::from([first.task_id, second.task_id]));
    for (r, _) in &results {
        assert_eq!(completed(&r.outcome)?["idempotency_key"], "same-key");
    }
    assert_eq!(
        recording::effects_count(&env.pool, RECORD).await?,
        1,
        "one effect per idempotency key"
    );
    env.finish().await
}

async fn an_injected_permanent_fault_fails_the_task_without_retry<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    let declined = Uuid::new_v4();
    recording::inject(
        &env.pool,
        &Fault::permanent(RECORD, "card_declined").for_workflow(declined),
    )
    .await?;
    let worker = start(env.worker().handler(env.recorder(RECORD), 4).build());
    let bad = task(RECORD, declined, "declined", json!({}));
    let good = task(RECORD, Uuid::new_v4(), "fine", json!({}));
    env.publish(&bad).await?;
    env.publish(&good).await?;

    env.wait_for_messages(&env.topology().results_queue(), 2)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 2, "two results, got {results:?}");
    for (r, _) in &results {
        if r.task_id == bad.task_id {
            let error = failed(&r.outcome)?;
            assert_eq!(error.code, "card_declined");
            assert!(!error.retryable, "a permanent fault is not retryable");
        } else {
            completed(&r.outcome)?;
        }
    }
    assert_eq!(
        recording::effects_count(&env.pool, RECORD).await?,
        1,
        "only the other workflow's effect"
    );
    env.finish().await
}

async fn a_transient_fault_is_retryable_and_spends_its_hits<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    recording::inject(&env.pool, &Fault::transient(RECORD, "unavailable").times(1)).await?;
    let worker = start(env.worker().handler(env.recorder(RECORD), 1).build());
    let workflow = Uuid::new_v4();
    let first = task(RECORD, workflow, "k", json!({}));
    env.publish(&first).await?;
    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    let mut retry = task(RECORD, workflow, "k", json!({}));
    retry.attempt = 2;
    env.publish(&retry).await?;
    env.wait_for_messages(&env.topology().results_queue(), 2)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 2, "two results, got {results:?}");
    let error = failed(&results[0].0.outcome)?;
    assert_eq!(
        (error.code.as_str(), error.retryable),
        ("unavailable", true)
    );
    assert_eq!(results[1].0.task_id, retry.task_id);
    completed(&results[1].0.outcome)?;
    assert_eq!(recording::effects_count(&env.pool, RECORD).await?, 1);
    env.finish().await
}

async fn a_panic_fails_the_task_and_the_queue_keeps_flowing<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    recording::inject(&env.pool, &Fault::panic(RECORD).times(1)).await?;
    // One at a time: if the panic leaked its permit, the next task would never run.
    let worker = start(env.worker().handler(env.recorder(RECORD), 1).build());
    let first = task(RECORD, Uuid::new_v4(), "boom", json!({}));
    env.publish(&first).await?;
    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    let next = task(RECORD, Uuid::new_v4(), "after", json!({}));
    env.publish(&next).await?;
    env.wait_for_messages(&env.topology().results_queue(), 2)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 2, "two results, got {results:?}");
    assert_eq!(results[0].0.task_id, first.task_id);
    let error = failed(&results[0].0.outcome)?;
    assert_eq!(error.code, "panic");
    assert!(
        error.retryable,
        "the step's retry policy bounds a panicking activity"
    );
    assert_eq!(results[1].0.task_id, next.task_id);
    completed(&results[1].0.outcome)?;
    assert_eq!(recording::effects_count(&env.pool, RECORD).await?, 1);
    env.finish().await
}

async fn a_hanging_task_fails_with_timeout_at_its_deadline<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    recording::inject(&env.pool, &Fault::hang(RECORD)).await?;
    let worker = start(env.worker().handler(env.recorder(RECORD), 1).build());
    let mut t = task(RECORD, Uuid::new_v4(), "slow", json!({}));
    t.deadline = Utc::now() + chrono::Duration::milliseconds(300);
    env.publish(&t).await?;
    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 1, "one result, got {results:?}");
    let error = failed(&results[0].0.outcome)?;
    assert_eq!((error.code.as_str(), error.retryable), ("timeout", true));
    assert_eq!(recording::effects_count(&env.pool, RECORD).await?, 0);
    env.finish().await
}

async fn an_undecodable_task_is_dead_lettered<Q: TaskQueue>(env: Env<Q>) -> anyhow::Result<()> {
    let worker = start(env.worker().handler(env.recorder(RECORD), 2).build());
    env.publish_raw(RECORD, b"{ not a task").await?;
    let dead = env.topology().dead_letter_queue();
    env.wait_for_messages(&dead, 1).await?;
    // The queue keeps flowing after it.
    env.publish(&task(RECORD, Uuid::new_v4(), "k", json!({})))
        .await?;
    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    worker.stop().await?;

    let dead = env.take_all(&dead).await?;
    ensure!(dead.len() == 1, "one dead letter, got {}", dead.len());
    assert_eq!(dead[0].0, b"{ not a task");
    let results = env.take_results().await?;
    ensure!(
        results.len() == 1,
        "only the good task has a result: {results:?}"
    );
    let (ready, _) = env.queue_counts(&env.topology().task_queue(RECORD)).await?;
    assert_eq!(ready, 0);
    env.finish().await
}

/// Holds each task until the test releases it.
struct Slow {
    started: Arc<Notify>,
    release: Arc<Notify>,
}

#[async_trait]
impl Handler for Slow {
    fn activity(&self) -> &str {
        SLOW
    }

    async fn handle(&self, _ctx: &TaskContext, _input: Value) -> Result<Value, ActivityError> {
        self.started.notify_one();
        self.release.notified().await;
        Ok(json!({ "slow": true }))
    }
}

async fn shutdown_waits_for_the_task_in_flight_to_publish_and_ack<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = Slow {
        started: started.clone(),
        release: release.clone(),
    };
    let worker = start(env.worker().handler(Arc::new(slow), 1).build());
    let t = task(SLOW, Uuid::new_v4(), "k", json!({}));
    env.publish(&t).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("the task did not start")?;

    let _ = worker.shutdown.send(());
    let queue = env.topology().task_queue(SLOW);
    eventually(WAIT, "the worker to stop consuming", || async {
        Ok((env.queue_counts(&queue).await?.1 == 0).then_some(()))
    })
    .await?;
    assert!(
        !worker.handle.is_finished(),
        "run must wait for the task in flight"
    );
    release.notify_one();
    tokio::time::timeout(WAIT, worker.handle)
        .await
        .context("the worker did not stop")???;

    // `run` returned: the result is on the queue and the task is acked, nothing left to finish.
    let results = env.take_results().await?;
    ensure!(results.len() == 1, "one result, got {results:?}");
    assert_eq!(results[0].0.task_id, t.task_id);
    assert_eq!(completed(&results[0].0.outcome)?, &json!({ "slow": true }));
    assert_eq!(
        env.queue_counts(&queue).await?,
        (0, 0),
        "the task was acked"
    );
    env.finish().await
}

/// RabbitMQ pushes tasks ahead up to the prefetch; the embedded queue leases only what a handler
/// starts on, so it has nothing pushed ahead to return.
#[tokio::test]
async fn shutdown_returns_prefetched_tasks_to_the_queue() -> anyhow::Result<()> {
    let env = rabbit_env().await?;
    let (started, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let slow = Slow {
        started: started.clone(),
        release: release.clone(),
    };
    // One runs, the broker pushes the other two ahead of time.
    let worker = start(
        env.worker()
            .handler_with_prefetch(Arc::new(slow), 1, 3)
            .build(),
    );
    let queue = env.topology().task_queue(SLOW);
    let first = task(SLOW, Uuid::new_v4(), "1", json!({}));
    env.publish(&first).await?;
    tokio::time::timeout(WAIT, started.notified())
        .await
        .context("the first task did not start")?;
    env.publish(&task(SLOW, Uuid::new_v4(), "2", json!({})))
        .await?;
    env.publish(&task(SLOW, Uuid::new_v4(), "3", json!({})))
        .await?;
    eventually(WAIT, "the broker to push the other tasks", || async {
        Ok((env.queue_counts(&queue).await?.0 == 0).then_some(()))
    })
    .await?;

    let _ = worker.shutdown.send(());
    eventually(
        WAIT,
        "the prefetched tasks to return to the queue",
        || async { Ok((env.queue_counts(&queue).await? == (2, 0)).then_some(())) },
    )
    .await?;
    release.notify_one();
    tokio::time::timeout(WAIT, worker.handle)
        .await
        .context("the worker did not stop")???;

    let results = env.take_results().await?;
    ensure!(
        results.len() == 1,
        "only the task in flight ran: {results:?}"
    );
    assert_eq!(results[0].0.task_id, first.task_id);
    assert_eq!(env.queue_counts(&queue).await?, (2, 0));
    env.finish().await
}

#[tokio::test]
async fn the_worker_resumes_after_the_broker_cancels_its_consumer() -> anyhow::Result<()> {
    let env = rabbit_env().await?;
    let worker = start(env.worker().handler(env.recorder(RECORD), 2).build());
    let queue = env.topology().task_queue(RECORD);
    eventually(WAIT, "the worker to consume", || async {
        Ok((env.queue_counts(&queue).await?.1 == 1).then_some(()))
    })
    .await?;

    // Deleting the queue cancels the worker's consumer, as a broker restart ends its connection.
    let conn = orderflow_queue::rabbit::connect(&amqp_url(), WAIT).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await?;
    orderflow_queue::rabbit::declare_queue(&channel, env.topology(), &queue).await?;
    conn.close(200, "done".into()).await?;
    env.publish(&task(RECORD, Uuid::new_v4(), "k", json!({})))
        .await?;
    env.wait_for_messages(&env.topology().results_queue(), 1)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 1, "one result, got {results:?}");
    completed(&results[0].0.outcome)?;
    env.finish().await
}

/// A typed activity, registered through the blanket `Handler` impl.
#[derive(Debug)]
struct Greet;

#[derive(Debug, Deserialize)]
struct GreetInput {
    name: String,
}

#[async_trait]
impl Activity for Greet {
    const NAME: &'static str = "test.greet";
    type Input = GreetInput;
    type Output = String;

    async fn run(&self, _ctx: &TaskContext, input: GreetInput) -> Result<String, ActivityError> {
        Ok(format!("hello {}", input.name))
    }
}

async fn a_typed_activity_decodes_its_input_or_fails_with_bad_input<Q: TaskQueue>(
    env: Env<Q>,
) -> anyhow::Result<()> {
    let worker = start(env.worker().activity(Greet, 2).build());
    let good = task(Greet::NAME, Uuid::new_v4(), "a", json!({ "name": "Ada" }));
    let bad = task(Greet::NAME, Uuid::new_v4(), "b", json!({ "nom": 1 }));
    env.publish(&good).await?;
    env.publish(&bad).await?;
    env.wait_for_messages(&env.topology().results_queue(), 2)
        .await?;
    worker.stop().await?;

    let results = env.take_results().await?;
    ensure!(results.len() == 2, "two results, got {results:?}");
    for (r, _) in &results {
        if r.task_id == good.task_id {
            assert_eq!(completed(&r.outcome)?, &json!("hello Ada"));
        } else {
            let error = failed(&r.outcome)?;
            assert_eq!(error.code, "bad_input");
            assert!(!error.retryable);
            assert!(error.message.contains("missing field `name`"), "{error}");
        }
    }
    env.finish().await
}

#[tokio::test]
async fn a_worker_refuses_an_activity_registered_twice() {
    let unused = RabbitQueue::new(amqp_url(), Topology::new("unused."), Duration::ZERO);
    let worker = Worker::builder(unused)
        .activity(Greet, 1)
        .activity(Greet, 1)
        .build();
    let err = worker.run(std::future::pending()).await.unwrap_err();
    assert!(matches!(err, WorkerError::DuplicateActivity(name) if name == Greet::NAME));
}
