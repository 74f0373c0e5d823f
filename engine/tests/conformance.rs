//! One conformance suite for both implementations of each interface: every contract below is a
//! generic function, run once on Postgres + RabbitMQ (a fresh database and queue prefix per
//! test) and once on SQLite + the in-process queue (fresh files per test).
//!
//! - `store_contract`: the committer's starts with idempotency keys, results applied once and
//!   their repeats recorded as ignored, writes guarded by the history sequence, the outbox taken
//!   only on commit, timers.
//! - `queue_contract`: order, prefetch, nack and requeue, dead-lettering, events routing, a batch
//!   acked as one, a cancelled consumer giving back what was pushed ahead, the depth and
//!   consumer counts, a wait that is given up losing nothing, and redelivery of what a dead
//!   consumer held.
//! - `saga_contract`: the order saga through the engine and the worker every command runs,
//!   including an engine stopped mid-saga and a new one (on the same data) finishing it.

use std::{future::Future, path::PathBuf, pin::Pin, sync::Arc, time::Duration};

use orderflow_activities::{
    TaskContext,
    worker::{Handler, Worker},
};

use orderflow_core::{ActivityError, Event, Registry, TaskMessage, WorkflowId};
use orderflow_engine::{
    Engine, EngineConfig,
    apply::{Applier, Outcome, StartError, StartRequest, now},
    committer::Committer,
    store::{
        Store, StoreTx,
        change::{Change, HistoryRow, NewTask, NewWorkflow, Update},
        sqlite::SqliteStore,
    },
};
use orderflow_queue::{
    Consumer, Delivery, Outgoing, TaskQueue, Topology, embedded::EmbeddedQueue, rabbit::RabbitQueue,
};
use orderflow_testkit::{TestEnv, amqp_url, eventually, order_input, sagas};
use orderflow_workflows::order::contracts::ORDER_SAGA_ACTIVITIES;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

fn registry() -> Arc<Registry> {
    Arc::new(Registry::new().with(sagas::fast_order()))
}

fn request(key: Option<&str>, hash: &str) -> StartRequest {
    StartRequest {
        workflow_type: "order".into(),
        input: order_input(),
        business_keys: json!({ "order_id": "o-1" }),
        idempotency_key: key.map(str::to_owned),
        request_hash: Some(hash.to_owned()),
    }
}

// ---------------------------------------------------------------- the backends

/// Fresh SQLite files for one test.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("orderflow-conformance-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

async fn sqlite_store(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(Some(&dir.join("engine.db")))
        .await
        .expect("sqlite store")
}

async fn embedded_queue(dir: &std::path::Path, topology: &Topology) -> EmbeddedQueue {
    EmbeddedQueue::open(Some(&dir.join("queue.db")), topology.clone())
        .await
        .expect("embedded queue")
}

async fn rabbit(topology: &Topology) -> RabbitQueue {
    RabbitQueue::connect(&amqp_url(), topology.clone(), Duration::from_secs(10))
        .await
        .expect("RabbitMQ on 127.0.0.1:5672")
}

#[tokio::test]
async fn store_contract_postgres() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    store_contract(env.pool.clone(), env.queue()).await
}

#[tokio::test]
async fn store_contract_sqlite() -> anyhow::Result<()> {
    let dir = scratch_dir();
    let topology = Topology::new("t.");
    let queue = embedded_queue(&dir, &topology).await;
    store_contract(sqlite_store(&dir).await, queue).await
}

#[tokio::test]
async fn store_contract_sqlite_in_memory() -> anyhow::Result<()> {
    let queue = EmbeddedQueue::open(None, Topology::new("t.")).await?;
    store_contract(SqliteStore::open(None).await?, queue).await
}

#[tokio::test]
async fn queue_contract_rabbitmq() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let topology = env.topology.clone();
    let q = rabbit(&topology).await;
    // A process that dies closes its connection.
    let dying = q.clone();
    queue_contract(q, topology.clone(), || async move {
        dying.close().await;
        rabbit(&topology).await
    })
    .await
}

#[tokio::test]
async fn queue_contract_embedded() -> anyhow::Result<()> {
    let dir = scratch_dir();
    let topology = Topology::new("t.");
    let q = embedded_queue(&dir, &topology).await;
    // A restart is a new process on the same file: a new epoch.
    queue_contract(q, topology.clone(), || async move {
        embedded_queue(&dir, &topology).await
    })
    .await
}

#[tokio::test]
async fn saga_contract_postgres_rabbitmq() -> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    let topology = env.topology.clone();
    let pool = env.pool.clone();
    saga_contract(|| {
        let (pool, topology) = (pool.clone(), topology.clone());
        async move { (pool, rabbit(&topology).await) }
    })
    .await
}

#[tokio::test]
async fn saga_contract_sqlite_embedded() -> anyhow::Result<()> {
    let dir = scratch_dir();
    let topology = Topology::new("t.");
    saga_contract(|| {
        let (dir, topology) = (dir.clone(), topology.clone());
        // Every open is a restart on the same files.
        async move {
            (
                sqlite_store(&dir).await,
                embedded_queue(&dir, &topology).await,
            )
        }
    })
    .await
}

// ---------------------------------------------------------------- the store contract

async fn store_contract<S: Store, Q: TaskQueue>(store: S, queue: Q) -> anyhow::Result<()> {
    let topology = queue.topology().clone();
    let applier = Applier::new(registry(), topology.clone());
    let committer = Committer::spawn(
        store.clone(),
        queue,
        applier,
        Arc::new(tokio::sync::Notify::new()),
    );

    // A start writes the workflow, its first event, its first task and its timeout timer.
    let first = committer.start(request(Some("k-1"), "h-1")).await?;
    assert!(first.created);
    let row = store
        .get(first.id.0)
        .await?
        .expect("the workflow is stored");
    assert_eq!(row.status, "running");
    assert_eq!(row.last_seq, 1);
    assert_eq!(row.business_keys, json!({ "order_id": "o-1" }));
    let history = store.history(first.id.0).await?;
    assert_eq!(history.len(), 1);
    assert!(matches!(history[0].event, Event::WorkflowStarted { .. }));
    assert!(store.next_due().await?.is_some(), "the attempt timeout");
    let task: TaskMessage = match &history[0].commands[0] {
        orderflow_core::Command::ScheduleActivity(spec) => TaskMessage {
            task_id: spec.task_id,
            workflow_id: first.id,
            workflow_type: "order".into(),
            step: spec.step.clone(),
            activity: spec.activity.clone(),
            phase: spec.phase,
            attempt: spec.attempt,
            idempotency_key: spec.idempotency_key.clone(),
            deadline: spec.deadline,
            payload: spec.payload.clone(),
            traceparent: None,
        },
        other => anyhow::bail!("the start scheduled {other:?}"),
    };
    assert_eq!(task.activity, "inventory.reserve");

    // The idempotency key: the same request finds the first workflow, another is refused, and
    // two starts with one key in one batch make one workflow.
    let again = committer.start(request(Some("k-1"), "h-1")).await?;
    assert_eq!((again.id, again.created), (first.id, false));
    let reused = committer.start(request(Some("k-1"), "h-2")).await;
    assert!(matches!(reused, Err(StartError::KeyReused)), "{reused:?}");
    let (a, b) = tokio::join!(
        committer.start(request(Some("k-2"), "h")),
        committer.start(request(Some("k-2"), "h"))
    );
    let (a, b) = (a?, b?);
    assert_eq!(a.id, b.id, "one workflow per key");
    assert!(
        a.created != b.created,
        "one of them created it: {a:?} {b:?}"
    );
    assert_eq!(store.counts().await?, vec![("running".into(), 2)]);

    // A result is applied once; the same result again is recorded as ignored.
    let done = Event::ActivityCompleted {
        task_id: task.task_id,
        output: json!({ "reservation_id": "r-1" }),
    };
    let outcomes = committer
        .apply(vec![(first.id, done.clone()), (first.id, done)], None)
        .await?;
    assert!(matches!(
        outcomes[0],
        Outcome::Applied {
            seq: 2,
            ignored: None,
            ..
        }
    ));
    assert!(matches!(
        outcomes[1],
        Outcome::Applied {
            seq: 3,
            ignored: Some(_),
            ..
        }
    ));
    assert_eq!(store.history(first.id.0).await?.len(), 3);

    // Unknown workflows are answered, not failed.
    let unknown = Event::TimerFired {
        timer_id: orderflow_core::TimerId(Uuid::nil()),
    };
    let outcomes = committer
        .apply(vec![(WorkflowId(Uuid::now_v7()), unknown)], None)
        .await?;
    assert_eq!(outcomes, vec![Outcome::NotFound]);

    // A write decided on a sequence that moved is left out, with everything it carries; the
    // committer, whose cached state is now behind, decides again on the stored one.
    let mut stale = Change::default();
    stale.updates = vec![Update {
        id: first.id.0,
        status: "running".into(),
        reason: None,
        state: serde_json::to_string(&row.state)?,
        last_seq: 2,
        prev_seq: 1,
        at: now(),
        fingerprint: None,
    }];
    stale.history = vec![HistoryRow {
        workflow_id: first.id.0,
        seq: 2,
        at: now(),
        event: serde_json::to_string(&Event::TimerFired {
            timer_id: orderflow_core::TimerId(Uuid::nil()),
        })?,
        commands: "[]".into(),
        ignored: None,
    }];
    let written = store.write(&stale).await?;
    assert!(written.updated.is_empty(), "{written:?}");
    assert_eq!(
        store.history(first.id.0).await?.len(),
        3,
        "nothing of it went in"
    );
    let mut sneaky = Change::default();
    sneaky.updates = vec![Update {
        prev_seq: 3,
        last_seq: 4,
        ..stale.updates[0].clone()
    }];
    sneaky.history = vec![HistoryRow {
        seq: 4,
        ..stale.history[0].clone()
    }];
    let written = store.write(&sneaky).await?;
    assert!(written.updated.contains(&first.id.0), "{written:?}");
    let cancel = Event::CancelRequested {
        actor: "test".into(),
        reason: "changed my mind".into(),
    };
    let outcomes = committer.apply(vec![(first.id, cancel)], None).await?;
    assert!(
        matches!(outcomes[0], Outcome::Applied { seq: 5, .. }),
        "decided on the stored state: {outcomes:?}"
    );

    // The outbox: rows leave only with a commit, and the relay leaves young rows to their
    // committer. A workflow created by hand, so no committer publishes its row.
    let id = Uuid::now_v7();
    let mut by_hand = Change::default();
    by_hand.creates = vec![NewWorkflow {
        id,
        workflow_type: "order".into(),
        version: 1,
        status: "running".into(),
        reason: None,
        state: serde_json::to_string(&row.state)?,
        last_seq: 0,
        business_keys: "{}".into(),
        idempotency_key: None,
        request_hash: None,
        fingerprint: "test".into(),
        at: now(),
    }];
    by_hand.outbox = vec![NewTask {
        workflow_id: id,
        task_id: Uuid::now_v7(),
        exchange: String::new(),
        queue: topology.task_queue("conformance.c"),
        body: "{}".into(),
        deadline: None,
    }];
    assert_eq!(store.write(&by_hand).await?.created.len(), 1);
    let mut tx = store.begin().await?;
    assert!(
        tx.take_outbox(100, now() - chrono::Duration::hours(1))
            .await?
            .is_empty(),
        "a young row is its committer's"
    );
    drop(tx);
    let mut tx = store.begin().await?;
    let rows = tx
        .take_outbox(100, now() + chrono::Duration::seconds(1))
        .await?;
    let mine: Vec<_> = rows
        .iter()
        .filter(|r| r.task_id == by_hand.outbox[0].task_id)
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].queue, topology.task_queue("conformance.c"));
    drop(tx);
    // A dropped transaction rolls back when its connection is next used, so its lock may
    // outlive the drop by a moment.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let mut tx = store.begin().await?;
        let rows = tx
            .take_outbox(100, now() + chrono::Duration::seconds(1))
            .await?;
        if rows.iter().any(|r| r.task_id == by_hand.outbox[0].task_id) {
            store.commit(tx).await?;
            break;
        }
        drop(tx);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a rollback returns the row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut tx = store.begin().await?;
    assert!(
        tx.take_outbox(100, now() + chrono::Duration::seconds(1))
            .await?
            .is_empty(),
        "a commit removes it"
    );
    drop(tx);

    // Timers: due ones are found soonest first; the committer deletes a fired one with its
    // event. The second workflow's attempt timeout is its only live timer.
    let later = now() + chrono::Duration::days(1);
    assert_eq!(store.due_timers(now(), 10).await?, vec![]);
    let due = store.due_timers(later, 10).await?;
    let of_a: Vec<_> = due.iter().filter(|t| t.workflow_id == a.id.0).collect();
    assert_eq!(of_a.len(), 1, "{due:?}");
    let fired = Event::TimerFired {
        timer_id: orderflow_core::TimerId(of_a[0].id),
    };
    committer.apply(vec![(a.id, fired)], None).await?;
    let due = store.due_timers(later, 10).await?;
    assert!(
        !due.iter().any(|t| t.id == of_a[0].id),
        "a fired timer is gone: {due:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------- the queue contract

async fn queue_contract<Q, F, Fut>(q: Q, topology: Topology, restart: F) -> anyhow::Result<()>
where
    Q: TaskQueue,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Q>,
{
    let queue = topology.task_queue("conformance.a");
    q.declare(&queue).await?;
    let msgs: Vec<Vec<u8>> = (0..3).map(|i| format!("m{i}").into_bytes()).collect();
    let out: Vec<Outgoing<'_>> = msgs
        .iter()
        .map(|body| Outgoing {
            exchange: "",
            queue: &queue,
            body,
            message_id: Uuid::new_v4().to_string(),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            transient: false,
        })
        .collect();
    q.publish(&out).await?;

    // In order, and no more unsettled than the prefetch.
    let mut c = q.consume(&queue, 2).await?;
    let d0 = c.next().await?;
    let d1 = c.next().await?;
    assert_eq!((d0.body(), d1.body()), (&b"m0"[..], &b"m1"[..]));
    assert!(!d0.redelivered());
    assert_eq!(
        d0.traceparent().as_deref(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    let held = tokio::time::timeout(Duration::from_millis(300), c.next()).await;
    assert!(held.is_err(), "a third delivery past prefetch 2");

    // Ack forgets; a requeue comes back marked redelivered.
    d0.ack().await?;
    let d2 = c.next().await?;
    assert_eq!(d2.body(), b"m2");
    d1.nack(true).await?;
    let again = c.next().await?;
    assert_eq!(again.body(), b"m1");
    assert!(again.redelivered());

    // A reject goes to the dead-letter queue.
    again.nack(false).await?;
    let mut dead = q.consume(&topology.dead_letter_queue(), 10).await?;
    let d = tokio::time::timeout(WITHIN, dead.next()).await??;
    assert_eq!(d.body(), b"m1");
    d.ack().await?;

    // Dropped unsettled, a delivery goes back to the queue.
    drop(d2);
    let d2 = tokio::time::timeout(WITHIN, c.next()).await??;
    assert_eq!(d2.body(), b"m2");
    assert!(d2.redelivered());

    // The depth counts what waits, not what is out; the consumer counts itself.
    let stats = q.inspect(&queue).await?;
    assert_eq!((stats.depth, stats.consumers), (0, Some(1)), "{stats:?}");
    assert!(d2.published_at().is_some(), "published_at");

    // A consumer that dies holding it (no ack, no nack): the next process gets it again.
    std::mem::forget(d2);
    drop(c);
    let q2 = restart().await;
    let mut c2 = q2.consume(&queue, 10).await?;
    let d2 = tokio::time::timeout(WITHIN, c2.next()).await??;
    assert_eq!(d2.body(), b"m2");
    assert!(d2.redelivered());
    d2.ack().await?;
    let empty = tokio::time::timeout(Duration::from_millis(300), c2.next()).await;
    assert!(empty.is_err(), "everything was acked");

    // Events: routed to the queues bound to their routing key, in a batch.
    let events = topology.task_queue("conformance.events");
    q2.bind_events(&events, "workflow.finished.order").await?;
    let exchange = topology.events_exchange();
    let routed = |key: &'static str, body: &'static [u8]| Outgoing {
        exchange: &exchange,
        queue: key,
        body,
        message_id: Uuid::new_v4().to_string(),
        traceparent: None,
        transient: false,
    };
    q2.publish(&[
        routed("workflow.finished.other", b"no"),
        routed("workflow.finished.order", b"e1"),
        routed("workflow.finished.order", b"e2"),
    ])
    .await?;
    let mut ce = q2.consume(&events, 10).await?;
    let first = tokio::time::timeout(WITHIN, ce.next()).await??;
    let mut bodies = vec![first.body().to_vec()];
    first.ack().await?;
    let rest = tokio::time::timeout(WITHIN, ce.next_batch(10)).await??;
    for d in rest {
        bodies.push(d.body().to_vec());
        d.ack().await?;
    }
    assert_eq!(bodies, vec![b"e1".to_vec(), b"e2".to_vec()]);
    drop(ce);

    batches_and_cancels(&q2, &topology).await
}

/// A batch acked as one; a wait given up loses nothing; a cancelled consumer gives back what was
/// pushed ahead to it and still settles what it handed out.
async fn batches_and_cancels<Q: TaskQueue>(q: &Q, topology: &Topology) -> anyhow::Result<()> {
    let queue = topology.task_queue("conformance.b");
    q.declare(&queue).await?;
    let bodies: Vec<Vec<u8>> = (0..6).map(|i| format!("b{i}").into_bytes()).collect();
    let publish = |range: std::ops::Range<usize>| {
        let out: Vec<Outgoing<'_>> = bodies[range]
            .iter()
            .map(|body| Outgoing {
                exchange: "",
                queue: &queue,
                body,
                message_id: Uuid::new_v4().to_string(),
                traceparent: None,
                transient: false,
            })
            .collect();
        async move { q.publish(&out).await }
    };
    let mut c = q.consume(&queue, 10).await?;
    // Nothing is there yet: the waits are given up, which must not swallow a message.
    for _ in 0..3 {
        let waited = tokio::time::timeout(Duration::from_millis(150), c.next_batch(10)).await;
        assert!(waited.is_err(), "nothing was published yet");
    }
    publish(0..4).await?;
    let mut got = Vec::new();
    while got.len() < 4 {
        got.extend(tokio::time::timeout(WITHIN, c.next_batch(10)).await??);
    }
    let seen: Vec<&[u8]> = got.iter().map(Delivery::body).collect();
    assert_eq!(seen, [&b"b0"[..], b"b1", b"b2", b"b3"]);
    Delivery::ack_all(got).await?;
    let stats = q.inspect(&queue).await?;
    assert_eq!(stats.depth, 0, "{stats:?}");

    // Cancelled with deliveries out and more pushed ahead: what it handed out is still settled
    // through it, the rest is delivered to the next consumer.
    publish(4..6).await?;
    let out = tokio::time::timeout(WITHIN, c.next()).await??;
    assert_eq!(out.body(), b"b4");
    c.cancel().await?;
    assert!(
        c.next().await.is_err(),
        "a cancelled consumer hands out nothing"
    );
    let mut c2 = q.consume(&queue, 10).await?;
    let next = tokio::time::timeout(WITHIN, c2.next()).await??;
    assert_eq!(next.body(), b"b5");
    out.ack().await?;
    next.ack().await?;
    let empty = tokio::time::timeout(Duration::from_millis(300), c2.next()).await;
    assert!(
        empty.is_err(),
        "b4 was acked through the cancelled consumer"
    );
    Ok(())
}

// ---------------------------------------------------------------- the saga contract

/// Completes every activity; the compensations are never needed on the happy path.
struct Succeed(&'static str);

/// (The trait is declared with `async_trait`; this is its expansion, to need no macro here.)
impl Handler for Succeed {
    fn activity(&self) -> &str {
        self.0
    }

    fn handle<'a, 'b, 'r>(
        &'a self,
        ctx: &'b TaskContext,
        _input: Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, ActivityError>> + Send + 'r>>
    where
        'a: 'r,
        'b: 'r,
        Self: 'r,
    {
        Box::pin(async move { Ok(json!({ "done_by": self.0, "key": ctx.idempotency_key })) })
    }
}

fn workers<Q: TaskQueue>(q: Q) -> Worker<Q> {
    ORDER_SAGA_ACTIVITIES
        .iter()
        .fold(Worker::builder(q), |w, a| {
            w.handler(Arc::new(Succeed(a)), 4)
        })
        .build()
}

fn config() -> EngineConfig {
    EngineConfig {
        poll_fallback: Duration::from_millis(200),
        ..EngineConfig::default()
    }
}

/// `open` opens the store and queue; called again, it is a restart on the same data.
async fn saga_contract<S, Q, F, Fut>(open: F) -> anyhow::Result<()>
where
    S: Store,
    Q: TaskQueue,
    F: Fn() -> Fut,
    Fut: Future<Output = (S, Q)>,
{
    // First life: an engine but no workers; the saga gets as far as its first task.
    let (store, queue) = open().await;
    let engine = Engine::new(store.clone(), queue.clone(), registry(), config());
    let stop = CancellationToken::new();
    let running = tokio::spawn(engine.clone().run(stop.clone()));
    let id = engine.committer().start(request(None, "h")).await?.id;
    eventually(WITHIN, "the reserve task to be published", || {
        let store = store.clone();
        async move {
            let mut tx = store.begin().await?;
            Ok(tx
                .take_outbox(10, now() + chrono::Duration::seconds(1))
                .await?
                .is_empty()
                .then_some(()))
        }
    })
    .await?;
    stop.cancel();
    running.await??;
    drop((engine, store, queue));

    // Second life on the same data: the engine and workers resume and finish the saga.
    let (store, queue) = open().await;
    let engine = Engine::new(store.clone(), queue.clone(), registry(), config());
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    tokio::spawn(engine.run(stop.clone()));
    let s = stop.clone();
    tokio::spawn(workers(queue.clone()).run(s.cancelled_owned()));
    let status = eventually(WITHIN, "the saga to complete", || {
        let store = store.clone();
        async move {
            let row = store.get(id.0).await?.expect("stored");
            Ok((row.status != "running").then_some(row.status))
        }
    })
    .await?;
    assert_eq!(status, "completed");
    let done: Vec<String> = store
        .history(id.0)
        .await?
        .into_iter()
        .filter_map(|e| match e.event {
            Event::ActivityCompleted { output, .. } => {
                output["done_by"].as_str().map(str::to_owned)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        done,
        [
            "inventory.reserve",
            "payment.charge",
            "order.create",
            "notification.send"
        ]
    );
    Ok(())
}
