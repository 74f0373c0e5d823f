//! The order saga end to end on the real stack: the engine and workers in-process against a fresh
//! Postgres database and a unique set of RabbitMQ queues; faults are injected through the
//! recording activities' `activity_faults` table.

use std::{sync::Arc, time::Duration};

use orderflow_activities::worker::Worker;
use orderflow_queue::{Consumer as _, Delivery as _, Outgoing, TaskQueue as _};

use orderflow_testkit::recording::{self, Fault};

use orderflow_core::{Event, Registry, ResultMessage, TaskOutcome, WorkflowId};
use orderflow_engine::apply::{Applier, Outcome};
use orderflow_testkit::{TestEnv, eventually, sagas, scheduled, settled, start_order};
use orderflow_workflows::order::contracts::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(30);

struct Stack {
    env: TestEnv,
    applier: Applier,
    stops: Vec<CancellationToken>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
    }
}

impl Stack {
    /// Engine and workers for every activity except those in `without`.
    async fn new(def: orderflow_core::SagaDefinition, without: &[&str]) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let registry = Arc::new(Registry::new().with(def));
        let applier = env.applier(registry.clone());
        let mut stack = Self {
            stops: vec![env.spawn_engine(registry)],
            env,
            applier,
        };
        let keep: Vec<&str> = ORDER_SAGA_ACTIVITIES
            .iter()
            .copied()
            .filter(|a| !without.contains(a))
            .collect();
        stack.spawn_workers(&keep);
        Ok(stack)
    }

    fn spawn_workers(&mut self, activities: &[&str]) {
        let stop = CancellationToken::new();
        let mut worker = Worker::builder(self.env.queue());
        for h in recording::order_saga_handlers(self.env.pool.clone()) {
            if activities.contains(&h.activity()) {
                worker = worker.handler(h, 8);
            }
        }
        let s = stop.clone();
        tokio::spawn(async move { worker.build().run(s.cancelled_owned()).await });
        self.stops.push(stop);
    }

    async fn effects(&self) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String,)> =
            sqlx::query_as("select activity from activity_effects order by created_at, activity")
                .fetch_all(&self.env.pool)
                .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
    }

    async fn step(&self, id: Uuid, step: &str) -> anyhow::Result<Value> {
        let (state,): (Value,) = sqlx::query_as("select state from workflows where id = $1")
            .bind(id)
            .fetch_one(&self.env.pool)
            .await?;
        let steps = state["steps"].as_array().cloned().unwrap_or_default();
        Ok(steps
            .into_iter()
            .find(|s| s["name"] == step)
            .unwrap_or(Value::Null))
    }

    async fn act(&self, id: Uuid, event: Event) -> anyhow::Result<Outcome> {
        let out = self
            .env
            .committer(&self.applier)
            .apply(vec![(WorkflowId(id), event)], None)
            .await?
            .remove(0);
        Ok(out)
    }
}

/// The history as stored replays against the definitions it ran on: the format survives the
/// round trip through Postgres (times included) and the decider is deterministic.
async fn assert_replays(
    stack: &Stack,
    id: Uuid,
    def: orderflow_core::SagaDefinition,
) -> anyhow::Result<()> {
    use orderflow_engine::store::Reads as _;
    let events = stack.env.pool.history(id).await?;
    let history = orderflow_core::History {
        workflow_id: WorkflowId(id),
        workflow_type: "order".into(),
        version: 1,
        events,
    };
    let state = orderflow_core::replay(&Registry::new().with(def), &history)?;
    assert_eq!(state.status().as_str(), stack.env.status(id).await?);
    Ok(())
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_saga_completes() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    assert_eq!(
        scheduled(&stack.env.pool, id).await?,
        [
            INVENTORY_RESERVE,
            PAYMENT_CHARGE,
            ORDER_CREATE,
            NOTIFICATION_SEND
        ]
    );
    assert_eq!(
        sorted(stack.effects().await?),
        sorted(vec![
            INVENTORY_RESERVE.into(),
            PAYMENT_CHARGE.into(),
            ORDER_CREATE.into(),
            NOTIFICATION_SEND.into()
        ])
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_failure_at_step_two_compensates_step_one() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    recording::inject(
        &stack.env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "processor_error"),
    )
    .await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "compensated");
    let steps = scheduled(&stack.env.pool, id).await?;
    // processor_error is not in the step's non-retryable list, but the error itself is permanent.
    assert_eq!(
        steps,
        [INVENTORY_RESERVE, PAYMENT_CHARGE, INVENTORY_RELEASE]
    );
    assert_eq!(
        stack.effects().await?,
        [INVENTORY_RESERVE, INVENTORY_RELEASE]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pivot_compensates_in_reverse_order() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    recording::inject(
        &stack.env.pool,
        &Fault::permanent(ORDER_CREATE, "invalid_order"),
    )
    .await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "compensated");
    assert_eq!(
        scheduled(&stack.env.pool, id).await?,
        [
            INVENTORY_RESERVE,
            PAYMENT_CHARGE,
            ORDER_CREATE,
            PAYMENT_REFUND,
            INVENTORY_RELEASE
        ]
    );
    assert_eq!(
        stack.effects().await?,
        [
            INVENTORY_RESERVE,
            PAYMENT_CHARGE,
            PAYMENT_REFUND,
            INVENTORY_RELEASE
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_with_backoff() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    recording::inject(
        &stack.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "flaky").times(2),
    )
    .await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    let charge = stack.step(id, "charge").await?;
    assert_eq!(charge["attempts"], 3);
    let (retry_timers,): (i64,) = sqlx::query_as(
        "select count(*) from history h, jsonb_array_elements(h.commands) c
         where h.workflow_id = $1 and c->>'type' = 'start_timer'
           and c->'purpose'->>'purpose' = 'retry'",
    )
    .bind(id)
    .fetch_one(&stack.env.pool)
    .await?;
    assert_eq!(
        retry_timers, 2,
        "each failed attempt waits on a backoff timer"
    );
    assert_eq!(stack.effects().await?.len(), 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_nobody_answers_is_retried_after_its_timeout_and_the_late_result_is_ignored()
-> anyhow::Result<()> {
    let def = sagas::order(Duration::from_millis(700), Duration::from_millis(50));
    let mut stack = Stack::new(def, &[PAYMENT_CHARGE]).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    // Nobody consumes payment.charge: the first attempt's start-to-close timer must fire.
    eventually(
        SETTLE,
        "the charge to be retried after its timeout",
        || async { Ok((stack.step(id, "charge").await?["attempts"] == 2).then_some(())) },
    )
    .await?;
    stack.spawn_workers(&[PAYMENT_CHARGE]);
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    assert_eq!(
        stack.effects().await?.len(),
        4,
        "the charge happened once for all attempts"
    );
    let charge = stack.step(id, "charge").await?;
    assert_eq!(charge["last_error"]["code"], "timeout");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_result_is_recorded_as_ignored() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    let (command,): (Value,) = sqlx::query_as(
        "select c from history h, jsonb_array_elements(h.commands) c
         where h.workflow_id = $1 and c->>'type' = 'schedule_activity' order by h.seq limit 1",
    )
    .bind(id)
    .fetch_one(&stack.env.pool)
    .await?;
    let duplicate = ResultMessage {
        task_id: serde_json::from_value(command["task_id"].clone())?,
        workflow_id: WorkflowId(id),
        attempt: 1,
        outcome: TaskOutcome::Completed {
            output: serde_json::json!({"again": true}),
        },
    };
    let bytes = serde_json::to_vec(&duplicate)?;
    let queue = stack.env.topology.results_queue();
    let msg = Outgoing {
        exchange: "",
        queue: &queue,
        body: &bytes,
        message_id: "dup".into(),
        traceparent: None,
        transient: false,
    };
    stack.env.queue().publish(&[msg]).await?;
    let ignored = eventually(SETTLE, "the duplicate to be recorded", || async {
        let row: Option<(String,)> = sqlx::query_as(
            "select ignored from history where workflow_id = $1 and ignored is not null",
        )
        .bind(id)
        .fetch_optional(&stack.env.pool)
        .await?;
        Ok(row.map(|r| r.0))
    })
    .await?;
    assert!(ignored.contains("the step is settled"), "{ignored}");
    assert_eq!(stack.env.status(id).await?, "completed");
    assert_eq!(
        stack.step(id, "reserve").await?["output"]["again"],
        Value::Null
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_compensates_what_was_done() -> anyhow::Result<()> {
    let def = sagas::order(Duration::from_secs(5), Duration::from_secs(60));
    let stack = Stack::new(def, &[]).await?;
    recording::inject(
        &stack.env.pool,
        &Fault::transient(PAYMENT_CHARGE, "flaky").times(1),
    )
    .await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    eventually(SETTLE, "the charge to wait on its backoff", || async {
        Ok((stack.step(id, "charge").await?["status"] == "retrying").then_some(()))
    })
    .await?;
    let cancel = Event::CancelRequested {
        actor: "test".into(),
        reason: "customer changed their mind".into(),
    };
    let out = stack.act(id, cancel).await?;
    assert!(matches!(out, Outcome::Applied { .. }), "{out:?}");
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "cancelled");
    let def = sagas::order(Duration::from_secs(5), Duration::from_secs(60));
    assert_replays(&stack, id, def).await?;
    assert_eq!(
        stack.effects().await?,
        [INVENTORY_RESERVE, INVENTORY_RELEASE]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_the_pivot_retries_forward_and_never_compensates() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    recording::inject(
        &stack.env.pool,
        &Fault::transient(NOTIFICATION_SEND, "flaky").times(6),
    )
    .await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    assert_eq!(
        stack.step(id, "notify").await?["attempts"],
        7,
        "retried past the usual budget"
    );
    let effects = stack.effects().await?;
    let undone = [PAYMENT_REFUND, INVENTORY_RELEASE, ORDER_CANCEL];
    assert!(
        !effects.iter().any(|e| undone.contains(&e.as_str())),
        "{effects:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retryable_error_compensates_at_once() -> anyhow::Result<()> {
    let stack = Stack::new(sagas::fast_order(), &[]).await?;
    // The fault marks card_declined retryable, but the step's policy lists the code as never
    // retryable: the policy wins.
    let fault = Fault::transient(PAYMENT_CHARGE, "card_declined").times(1);
    recording::inject(&stack.env.pool, &fault).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "compensated");
    assert_eq!(stack.step(id, "charge").await?["attempts"], 1);
    assert_eq!(
        stack.effects().await?,
        [INVENTORY_RESERVE, INVENTORY_RELEASE]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_started_later_resumes_unsent_tasks() -> anyhow::Result<()> {
    // Sagas started while no engine runs wait in the outbox; a new engine publishes them.
    let env = TestEnv::new().await?;
    let registry = Arc::new(Registry::new().with(sagas::fast_order()));
    let applier = env.applier(registry.clone());
    let ids = [
        start_order(&env, &applier).await?,
        start_order(&env, &applier).await?,
    ];
    let (outbox,): (i64,) = sqlx::query_as("select count(*) from outbox")
        .fetch_one(&env.pool)
        .await?;
    assert_eq!(outbox, 2);
    let mut stack = Stack {
        stops: vec![env.spawn_engine(registry)],
        env,
        applier,
    };
    stack.spawn_workers(&ORDER_SAGA_ACTIVITIES);
    for id in ids {
        assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_hear_when_a_saga_finishes_and_why() -> anyhow::Result<()> {
    // No charge worker until the fault is in place, so the declined saga cannot charge first.
    let mut stack = Stack::new(sagas::fast_order(), &[PAYMENT_CHARGE]).await?;
    let queue = stack.env.queue();
    let name = stack.env.topology.events_queue("order");
    queue.bind_events(&name, "workflow.finished.order").await?;
    let mut events = queue.consume(&name, 10).await?;

    let fault = Fault::permanent(PAYMENT_CHARGE, "card_declined");
    let declined = start_order(&stack.env, &stack.applier).await?;
    recording::inject(&stack.env.pool, &fault.for_workflow(declined)).await?;
    let ok = start_order(&stack.env, &stack.applier).await?;
    stack.spawn_workers(&[PAYMENT_CHARGE]);
    let mut heard = std::collections::HashMap::new();
    while heard.len() < 2 {
        let delivery = tokio::time::timeout(SETTLE, events.next()).await??;
        let finished: orderflow_core::WorkflowFinished = serde_json::from_slice(delivery.body())?;
        delivery.ack().await?;
        heard.insert(finished.workflow_id.0, finished);
    }
    assert_eq!(heard[&ok].status, orderflow_core::WorkflowStatus::Completed);
    assert_eq!(heard[&ok].cause, None);
    assert_eq!(
        heard[&declined].status,
        orderflow_core::WorkflowStatus::Compensated
    );
    let cause = heard[&declined]
        .cause
        .as_ref()
        .expect("a compensated saga says why");
    assert_eq!(cause.code, "card_declined");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_a_lost_connection_may_have_dropped_are_sent_again_at_once() -> anyhow::Result<()> {
    // Task messages are transient (DESIGN.md §3.2): a broker restart drops them and every
    // connection with them. Here the queue is purged (what the restart does to its transient
    // messages) and the engine's connection closed; the engine sends the unsettled task again
    // over its next connection, the same attempt, long before the attempt's timeout (60 s).
    let env = TestEnv::new().await?;
    let registry = Arc::new(Registry::new().with(sagas::order(
        Duration::from_secs(60),
        Duration::from_millis(50),
    )));
    let queue = env.queue();
    let engine =
        orderflow_engine::Engine::new(env.pool.clone(), queue.clone(), registry, env.config());
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(engine.clone().run(stop));
    let id = engine
        .committer()
        .start(orderflow_engine::apply::StartRequest {
            workflow_type: "order".into(),
            input: orderflow_testkit::order_input(),
            business_keys: serde_json::json!({}),
            idempotency_key: None,
            request_hash: None,
        })
        .await?
        .id;
    let reserve = env.topology.task_queue(INVENTORY_RESERVE);
    eventually(SETTLE, "the reserve task in its queue", || async {
        Ok((queue.inspect(&reserve).await?.depth == 1).then_some(()))
    })
    .await?;

    let conn = orderflow_queue::rabbit::connect(&orderflow_testkit::amqp_url(), SETTLE).await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_purge(reserve.as_str().into(), Default::default())
        .await?;
    queue.close().await;

    let mut consumer = queue.consume(&reserve, 1).await?;
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .map_err(|_| anyhow::anyhow!("the task was not sent again within 5 s"))??;
    let task: orderflow_core::TaskMessage = serde_json::from_slice(delivery.body())?;
    assert_eq!(task.workflow_id, id);
    assert_eq!(
        task.attempt, 1,
        "the same attempt, not a retry after a timeout"
    );
    assert_eq!(
        scheduled(&env.pool, id.0).await?,
        vec![INVENTORY_RESERVE.to_owned()],
        "nothing else was scheduled"
    );
    conn.close(200, "done".into()).await?;
    Ok(())
}

/// The order saga with a wait for `approved` between the reservation and the pivot.
fn order_awaiting_approval(timeout: Duration) -> orderflow_core::SagaDefinition {
    use orderflow_core::{SagaDefinition, Step};
    SagaDefinition::builder("order", 1)
        .step(Step::compensatable("reserve", INVENTORY_RESERVE).compensate_with(INVENTORY_RELEASE))
        .step(Step::wait("approval", "approved", timeout))
        .step(Step::pivot("create_order", ORDER_CREATE).compensate_with(ORDER_CANCEL))
        .step(Step::retriable("notify", NOTIFICATION_SEND))
        .build()
        .expect("a valid saga")
}

/// The wait's timer row, as the timers loop will find it after any restart.
async fn wait_timer(stack: &Stack, id: Uuid) -> anyhow::Result<Option<(String,)>> {
    Ok(sqlx::query_as(
        "select purpose->>'signal' from timers
         where workflow_id = $1 and purpose->>'purpose' = 'signal_timeout'",
    )
    .bind(id)
    .fetch_optional(&stack.env.pool)
    .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_outlives_its_engine_and_the_signal_moves_the_saga_on() -> anyhow::Result<()> {
    let mut stack = Stack::new(order_awaiting_approval(Duration::from_secs(3600)), &[]).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    eventually(SETTLE, "the saga to wait for its signal", || async {
        Ok((stack.step(id, "approval").await?["status"] == "waiting").then_some(()))
    })
    .await?;
    assert_eq!(wait_timer(&stack, id).await?, Some(("approved".into(),)));
    // The engine dies while the saga waits; a new one takes over from the database alone.
    stack.stops[0].cancel();
    let registry =
        Arc::new(Registry::new().with(order_awaiting_approval(Duration::from_secs(3600))));
    stack.stops.push(stack.env.spawn_engine(registry));
    assert_eq!(stack.env.status(id).await?, "running");
    let signal = Event::SignalReceived {
        name: "approved".into(),
        payload: serde_json::json!({"by": "risk team"}),
        actor: "test".into(),
    };
    assert!(matches!(
        stack.act(id, signal).await?,
        Outcome::Applied { .. }
    ));
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");
    assert_eq!(
        stack.step(id, "approval").await?["output"]["by"],
        "risk team"
    );
    assert_eq!(
        wait_timer(&stack, id).await?,
        None,
        "the wait's timer is gone"
    );
    assert_replays(
        &stack,
        id,
        order_awaiting_approval(Duration::from_secs(3600)),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_whose_signal_never_comes_times_out_and_compensates() -> anyhow::Result<()> {
    let stack = Stack::new(order_awaiting_approval(Duration::from_millis(300)), &[]).await?;
    let id = start_order(&stack.env, &stack.applier).await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "compensated");
    let approval = stack.step(id, "approval").await?;
    assert_eq!(approval["status"], "failed");
    assert_eq!(approval["last_error"]["code"], "signal_timeout");
    assert_eq!(
        stack.effects().await?,
        [INVENTORY_RESERVE, INVENTORY_RELEASE]
    );
    assert_replays(
        &stack,
        id,
        order_awaiting_approval(Duration::from_millis(300)),
    )
    .await?;
    Ok(())
}
