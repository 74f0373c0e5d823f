//! The backlog gauges on the real RabbitMQ and Postgres: tasks published to a test's own queues
//! move `orderflow_queue_depth`, a consumer moves `orderflow_queue_consumers`, and outbox rows
//! and sagas needing attention move their gauges. Waits poll the gauges with a deadline.

use std::time::Duration;

use anyhow::ensure;
use orderflow_engine::loops::backlog::{
    Backlog, OUTBOX_LAG, OUTBOX_ROWS, QUEUE_CONSUMERS, QUEUE_DEPTH, QUEUE_OLDEST_TASK_AGE,
    TASKS_OUT, WORKFLOWS_STUCK,
};
use orderflow_queue::{
    Consumer as _, Delivery as _, Outgoing, QueueStats, TaskQueue, rabbit::RabbitQueue,
};
use orderflow_testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);
const CHARGE: &str = "payment.charge";
/// No worker and no relay declares this queue in the test: the sampler finds it missing.
const MISSING: &str = "inventory.reserve";

/// Publishes `n` persistent tasks to `queue` and waits for the broker's confirms.
async fn publish(q: &RabbitQueue, queue: &str, n: usize) -> anyhow::Result<()> {
    let bodies: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    let msgs: Vec<Outgoing<'_>> = bodies
        .iter()
        .map(|b| Outgoing {
            exchange: "",
            queue,
            body: b,
            message_id: Uuid::new_v4().to_string(),
            traceparent: None,
            transient: false,
        })
        .collect();
    q.publish(&msgs).await?;
    Ok(())
}

#[tokio::test]
async fn gauges_follow_the_queues_and_the_outbox() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let queue = env.queue();
    let charge_queue = env.topology.task_queue(CHARGE);
    let missing_queue = env.topology.task_queue(MISSING);
    publish(&queue, &charge_queue, 5).await?;

    // One sample by hand. The missing queue comes first: the sampler declares it as the relay
    // would, empty and without consumers, and goes on to the next.
    let activities = vec![MISSING.to_owned(), CHARGE.to_owned()];
    let sampler = Backlog::new(env.pool.clone(), queue.clone(), activities.clone());
    let seen = sampler.sample_queues().await?;
    let empty = QueueStats {
        depth: 0,
        consumers: Some(0),
    };
    let five = QueueStats {
        depth: 5,
        consumers: Some(0),
    };
    assert_eq!(
        seen,
        vec![(missing_queue.clone(), empty), (charge_queue.clone(), five)]
    );
    assert_eq!(queue.inspect(&missing_queue).await?, empty);
    assert_eq!(QUEUE_DEPTH.with_label_values(&[&charge_queue]).get(), 5);
    let text = orderflow_engine::metrics::render();
    ensure!(
        text.contains(&format!(
            "orderflow_queue_depth{{queue=\"{charge_queue}\"}} 5"
        )),
        "/metrics does not show the depth:\n{text}"
    );

    // The loop keeps the gauges current: more tasks raise the depth...
    let stop = CancellationToken::new();
    tokio::spawn(
        Backlog::new(env.pool.clone(), queue.clone(), activities)
            .interval(Duration::from_millis(50))
            .run(stop.clone()),
    );
    publish(&queue, &charge_queue, 3).await?;
    eventually(WAIT, "a depth of 8", || async {
        Ok((QUEUE_DEPTH.with_label_values(&[&charge_queue]).get() == 8).then_some(()))
    })
    .await?;

    // ...and a worker taking them shows as a consumer while the depth falls to zero.
    let worker = env.queue();
    let mut consumer = worker.consume(&charge_queue, 2).await?;
    let acker = tokio::spawn(async move {
        while let Ok(delivery) = consumer.next().await {
            let _ = delivery.ack().await;
        }
    });
    eventually(WAIT, "one consumer and an empty queue", || async {
        let consumers = QUEUE_CONSUMERS.with_label_values(&[&charge_queue]).get();
        let depth = QUEUE_DEPTH.with_label_values(&[&charge_queue]).get();
        Ok((consumers == 1 && depth == 0).then_some(()))
    })
    .await?;
    acker.abort();
    worker.close().await;
    eventually(WAIT, "no consumer once the worker left", || async {
        Ok((QUEUE_CONSUMERS.with_label_values(&[&charge_queue]).get() == 0).then_some(()))
    })
    .await?;

    // An outbox row committed 42 s ago and not yet published is a lag of at least 42 s; a saga
    // in needs_attention is counted as stuck.
    sqlx::query(
        "insert into outbox (workflow_id, task_id, queue, body, created_at)
         values ($1, $2, $3, '{}', now() - interval '42 seconds')",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::new_v4())
    .bind(&charge_queue)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "insert into workflows (id, workflow_type, version, status, reason, state, last_seq,
                                created_at, updated_at)
         values ($1, 'order', 1, 'needs_attention', 'refund keeps failing', '{}', 0, now(), now())",
    )
    .bind(Uuid::now_v7())
    .execute(&env.pool)
    .await?;
    eventually(WAIT, "the outbox and stuck gauges", || async {
        let rows = OUTBOX_ROWS.get();
        let lag = OUTBOX_LAG.get();
        let attention = WORKFLOWS_STUCK.with_label_values(&["attention"]).get();
        Ok((rows == 1 && lag >= 42.0 && attention == 1).then_some(()))
    })
    .await?;

    // A charge task scheduled 30 s ago (its history row, and its start-to-close timer) and not
    // answered is a task out, 30 s old; its answer (the timer gone) brings the age back to zero.
    let waiting = Uuid::now_v7();
    sqlx::query(
        "insert into history (workflow_id, seq, at, event, commands)
         values ($1, 1, now() - interval '30 seconds', '{}',
                 jsonb_build_array(jsonb_build_object('type', 'schedule_activity',
                                                      'activity', $2::text)))",
    )
    .bind(waiting)
    .bind(CHARGE)
    .execute(&env.pool)
    .await?;
    sqlx::query(
        "insert into timers (id, workflow_id, fire_at, purpose)
         values ($1, $2, now() + interval '1 minute',
                 jsonb_build_object('purpose', 'attempt_timeout', 'task_id', $1::text))",
    )
    .bind(Uuid::new_v4())
    .bind(waiting)
    .execute(&env.pool)
    .await?;
    eventually(WAIT, "a charge task out for 30 s", || async {
        let age = QUEUE_OLDEST_TASK_AGE
            .with_label_values(&[&charge_queue])
            .get();
        let out = TASKS_OUT.with_label_values(&[&charge_queue]).get();
        let none = TASKS_OUT.with_label_values(&[&missing_queue]).get();
        Ok(((30.0..60.0).contains(&age) && out == 1 && none == 0).then_some(()))
    })
    .await?;
    ensure!(
        orderflow_engine::metrics::render().contains(&format!(
            "orderflow_queue_oldest_task_age_seconds{{queue=\"{charge_queue}\"}}"
        )),
        "/metrics does not show the oldest task's age"
    );
    sqlx::query("delete from timers where workflow_id = $1")
        .bind(waiting)
        .execute(&env.pool)
        .await?;
    eventually(WAIT, "no charge task out", || async {
        let age = QUEUE_OLDEST_TASK_AGE
            .with_label_values(&[&charge_queue])
            .get();
        Ok((age == 0.0 && TASKS_OUT.with_label_values(&[&charge_queue]).get() == 0).then_some(()))
    })
    .await?;

    // Emptying the outbox brings the lag back to zero.
    sqlx::query("delete from outbox").execute(&env.pool).await?;
    eventually(WAIT, "an empty outbox", || async {
        Ok((OUTBOX_ROWS.get() == 0 && OUTBOX_LAG.get() == 0.0).then_some(()))
    })
    .await?;
    stop.cancel();
    Ok(())
}

#[tokio::test]
async fn a_broker_that_cannot_be_reached_is_an_error_not_a_zero() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Port 1 on loopback refuses connections at once.
    let unreachable = RabbitQueue::new(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        env.topology.clone(),
        Duration::ZERO,
    );
    let sampler = Backlog::new(env.pool.clone(), unreachable, vec![CHARGE.to_owned()])
        .interval(Duration::from_millis(200));
    let queue = env.topology.task_queue(CHARGE);
    QUEUE_DEPTH.with_label_values(&[&queue]).set(7);
    let err = sampler.sample_queues().await;
    ensure!(err.is_err(), "sampling an unreachable broker succeeded");
    // The last known value stays: an outage must not look like an emptied queue on the dashboards.
    assert_eq!(QUEUE_DEPTH.with_label_values(&[&queue]).get(), 7);
    // The store half works on its own.
    sampler.sample_store().await?;
    Ok(())
}
