//! Real messages of the running stack (Postgres, RabbitMQ, the engine, a worker) fit the wire
//! format as `protocol/schemas/` documents it: the JSON body against the schema, and the AMQP
//! properties, headers and queue arguments against the envelope (`x-amqp`) beside it. What a
//! worker in another language builds from those files is then what the stack really sends and
//! takes. (That the files are what this build generates is `queue/tests/wire.rs`.)
//!
//! The test takes each message off its queue as it passes and puts it back unchanged (a
//! `basic.get`, then a reject with requeue): the task while no worker runs, the result while no
//! engine runs, the finished event on a queue of its own bound to the events exchange.

use std::{path::PathBuf, sync::Arc, time::Duration};

use chrono::Utc;
use lapin::{
    Channel, Connection,
    message::Delivery,
    options::{BasicGetOptions, BasicRejectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use orderflow_activities::worker::{Handler, Worker};
use orderflow_core::{Registry, ResultMessage, TaskMessage, TaskOutcome, WorkflowFinished};
use orderflow_engine::{Engine, engine::CommitterDied};
use orderflow_queue::{TaskQueue, wire};
use orderflow_testkit::{
    TestEnv, amqp_url, eventually, recording::RecordingActivity, sagas, settled, start_order,
};
use orderflow_workflows::order::contracts::{INVENTORY_RESERVE, ORDER_SAGA_ACTIVITIES};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WITHIN: Duration = Duration::from_secs(30);

/// The checked-in document of `file`.
fn document(file: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(wire::SCHEMA_DIR)
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Checks `body` against the schema of `file`, with format checks (UUIDs, date-times) on.
fn assert_fits(file: &str, body: &Value) {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&document(file))
        .unwrap_or_else(|e| panic!("{file} is a JSON Schema: {e}"));
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{file} refuses {body:#}: {errors:?}");
}

/// One message as it was on its queue.
struct Captured {
    body: Value,
    delivery_mode: Option<u8>,
    content_type: Option<String>,
    message_id: Option<String>,
    headers: FieldTable,
}

impl Captured {
    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers.inner().get(&ShortString::from(name))
    }
}

/// Takes the next message of `queue` and gives it back unchanged for its real consumer.
async fn capture(channel: &Channel, queue: &str, what: &str) -> anyhow::Result<Captured> {
    let delivery: Delivery = eventually(WITHIN, what, || async {
        let got = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await?;
        Ok(got.map(|m| m.delivery))
    })
    .await?;
    let p = &delivery.properties;
    let captured = Captured {
        body: serde_json::from_slice(&delivery.data)?,
        delivery_mode: *p.delivery_mode(),
        content_type: p.content_type().as_ref().map(|s| s.as_str().to_owned()),
        message_id: p.message_id().as_ref().map(|s| s.as_str().to_owned()),
        headers: p.headers().clone().unwrap_or_default(),
    };
    delivery
        .acker
        .reject(BasicRejectOptions { requeue: true })
        .await?;
    Ok(captured)
}

/// The AMQP properties and headers of `m` are those `file`'s envelope documents.
fn assert_envelope(file: &str, m: &Captured) {
    let env = &document(file)[wire::ENVELOPE];
    let props = &env["properties"];
    let documented = match &props["delivery_mode"] {
        Value::Array(modes) => modes.clone(),
        one => vec![one.clone()],
    };
    let mode = m.delivery_mode.map(Value::from);
    assert!(
        mode.as_ref().is_some_and(|mode| documented.contains(mode)),
        "{file}: delivery_mode {mode:?} is not one of {documented:?}"
    );
    assert_eq!(
        m.content_type.as_deref(),
        props["content_type"].as_str(),
        "{file}: content_type"
    );
    let published = match m.header("x-published-at") {
        Some(AMQPValue::LongLongInt(ms)) => *ms,
        other => panic!("{file}: x-published-at is a long long int, not {other:?}"),
    };
    assert_eq!(
        env["headers"]["x-published-at"]["amqp_type"], "long long int",
        "{file}"
    );
    let age = Utc::now().timestamp_millis() - published;
    assert!(
        (0..120_000).contains(&age),
        "{file}: published {age} ms ago"
    );
}

/// A W3C `traceparent` (version 00) as the `traceparent` header carries it.
fn assert_traceparent(file: &str, m: &Captured) {
    let tp = match m.header("traceparent") {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("{file}: traceparent is a long string, not {other:?}"),
    };
    let parts: Vec<&str> = tp.split('-').collect();
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts[1..]
                .iter()
                .all(|p| p.chars().all(|c| c.is_ascii_hexdigit())),
        "{file}: `{tp}` is not a W3C traceparent"
    );
}

/// A queue declared as `file`'s envelope says (durable, its arguments) is the queue the stack
/// declared: RabbitMQ refuses a declare whose arguments differ with PRECONDITION_FAILED.
async fn assert_declarable(
    conn: &Connection,
    file: &str,
    queue: &str,
    prefix: &str,
) -> anyhow::Result<()> {
    let env = &document(file)[wire::ENVELOPE]["queue"];
    assert_eq!(env["durable"], true, "{file}");
    let mut args = FieldTable::default();
    for (k, v) in env["arguments"].as_object().expect("queue arguments") {
        let text = v
            .as_str()
            .expect("text arguments")
            .replace("<prefix>", prefix);
        args.insert(k.as_str().into(), AMQPValue::LongString(text.into()));
    }
    // A failed declare closes its channel, so each gets its own.
    let channel = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, args)
        .await
        .map_err(|e| anyhow::anyhow!("{file}: declaring {queue} as documented: {e}"))?;
    Ok(())
}

/// An engine whose end can be awaited.
fn engine(
    env: &TestEnv,
    registry: &Arc<Registry>,
) -> (CancellationToken, JoinHandle<Result<(), CommitterDied>>) {
    let stop = CancellationToken::new();
    let engine = Engine::new(
        env.pool.clone(),
        env.queue(),
        registry.clone(),
        env.config(),
    );
    let run = tokio::spawn(engine.run(stop.clone()));
    (stop, run)
}

fn worker(env: &TestEnv, activities: &[&str]) -> CancellationToken {
    let handlers: Vec<Arc<dyn Handler>> = activities
        .iter()
        .map(|a| Arc::new(RecordingActivity::new(*a, env.pool.clone())) as Arc<dyn Handler>)
        .collect();
    let worker = Worker::builder(env.queue()).handlers(handlers, 4).build();
    let stop = CancellationToken::new();
    tokio::spawn(worker.run(stop.clone().cancelled_owned()));
    stop
}

#[tokio::test]
async fn real_tasks_results_and_finished_events_fit_the_documented_wire_format()
-> anyhow::Result<()> {
    let env = TestEnv::new().await?;
    // Timeouts far longer than the test, so no attempt is dispatched twice while it holds one.
    let registry = Arc::new(Registry::new().with(sagas::order(
        Duration::from_secs(120),
        Duration::from_millis(50),
    )));
    let queue = env.queue();
    let topology = queue.topology().clone();
    let events = format!("{}protocol-test.workflow-events", topology.prefix);
    queue.declare(&events).await?;
    queue
        .bind_events(
            &events,
            &orderflow_core::protocol::finished_routing_key("order"),
        )
        .await?;
    // Declared before anything is published, so the test's gets find them.
    let tasks = topology.task_queue(INVENTORY_RESERVE);
    queue.declare(&tasks).await?;
    queue.declare(&topology.results_queue()).await?;
    let conn = orderflow_queue::rabbit::connect(&amqp_url(), WITHIN).await?;
    let channel = conn.create_channel().await?;

    let id = start_order(&env, &env.applier(registry.clone())).await?;

    // The task, as the engine's relay published it; no worker runs yet.
    let (stop_engine, engine_ended) = engine(&env, &registry);
    let task = capture(&channel, &tasks, "the engine's first task").await?;
    stop_engine.cancel();
    engine_ended.await??;

    // The result, as the worker published it; no engine runs to take it.
    let reserve = worker(&env, &[INVENTORY_RESERVE]);
    let result = capture(&channel, &topology.results_queue(), "the worker's result").await?;
    reserve.cancel();

    // The finished event, once the engine and every worker run the saga to its end.
    let (stop_engine, _engine) = engine(&env, &registry);
    let _workers = worker(&env, &ORDER_SAGA_ACTIVITIES).drop_guard();
    assert_eq!(settled(&env, id, WITHIN).await?, "completed");
    let finished = capture(&channel, &events, "the finished event").await?;
    stop_engine.cancel();

    // Bodies: the documented schemas accept them, and the Rust types read them.
    assert_fits("task.json", &task.body);
    assert_fits("result.json", &result.body);
    assert_fits("finished.json", &finished.body);
    let t: TaskMessage = serde_json::from_value(task.body.clone())?;
    let r: ResultMessage = serde_json::from_value(result.body.clone())?;
    let f: WorkflowFinished = serde_json::from_value(finished.body.clone())?;
    assert_eq!(t.workflow_id.0, id);
    assert_eq!(t.activity, INVENTORY_RESERVE);
    assert_eq!((t.step.as_str(), t.attempt), ("reserve", 1));
    assert_eq!(
        t.idempotency_key,
        format!("{id}/reserve"),
        "the documented key"
    );
    assert_eq!(
        (r.task_id, r.workflow_id, r.attempt),
        (t.task_id, t.workflow_id, 1)
    );
    assert!(matches!(r.outcome, TaskOutcome::Completed { .. }), "{r:?}");
    assert_eq!(f.workflow_id.0, id);
    assert_eq!(f.status.as_str(), "completed");

    // Envelopes: properties and headers as documented; message ids as documented.
    for (file, m) in [
        ("task.json", &task),
        ("result.json", &result),
        ("finished.json", &finished),
    ] {
        assert_envelope(file, m);
    }
    assert_traceparent("task.json", &task);
    assert_traceparent("result.json", &result);
    let task_id = t.task_id.to_string();
    assert_eq!(task.message_id.as_deref(), Some(task_id.as_str()));
    assert_eq!(result.message_id.as_deref(), Some(task_id.as_str()));
    let finished_id = finished.message_id.as_deref().unwrap_or_default();
    assert!(
        Uuid::parse_str(finished_id).is_ok(),
        "the finished event's message_id `{finished_id}` is a UUID"
    );

    // Queues: declaring them as documented is accepted by the broker.
    let prefix = topology.prefix.as_str();
    assert_declarable(&conn, "task.json", &tasks, prefix).await?;
    assert_declarable(&conn, "result.json", &topology.results_queue(), prefix).await?;
    Ok(())
}
