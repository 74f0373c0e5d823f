//! Traces, logs and metrics of sagas run on the real stack: the engine's REST API on a socket,
//! the engine loops and the recording workers in-process against a fresh database and queues,
//! spans exported over OTLP/HTTP to a receiver this test runs, JSON log lines captured.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use orderflow_activities::worker::Worker;
use orderflow_core::Registry;
use orderflow_engine::api::{self, AppState};
use orderflow_telemetry::{self as telemetry, Export, Telemetry, TelemetryConfig};
use orderflow_testkit::recording::{self, Fault};
use orderflow_testkit::{TestEnv, eventually, order_input, sagas, settled};
use orderflow_workflows::order::contracts::*;
use prost::Message as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SETTLE: Duration = Duration::from_secs(30);

/// One exported span, as the receiver decoded it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Got>>>;

/// An OTLP/HTTP (protobuf) trace receiver on a port of its own, as Jaeger or a collector runs it.
async fn receive(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut got = spans.lock().unwrap();
    for span in req
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
    {
        let attributes = span
            .attributes
            .iter()
            .filter_map(|kv| {
                use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
                let v = match kv.value.as_ref()?.value.as_ref()? {
                    V::StringValue(s) => s.clone(),
                    V::IntValue(i) => i.to_string(),
                    V::BoolValue(b) => b.to_string(),
                    other => format!("{other:?}"),
                };
                Some((kv.key.clone(), v))
            })
            .collect();
        got.push(Got {
            trace_id: hex(&span.trace_id),
            span_id: hex(&span.span_id),
            parent: hex(&span.parent_span_id),
            name: span.name,
            attributes,
        });
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Log lines, captured.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process's telemetry, installed once: JSON logs into [`Capture`], spans to the receiver.
struct Observed {
    spans: Spans,
    logs: Capture,
    telemetry: Telemetry,
}

async fn observed() -> &'static Observed {
    // Tests of this binary may run on threads of one process (`cargo test`): one install.
    static OBSERVED: tokio::sync::OnceCell<Observed> = tokio::sync::OnceCell::const_new();
    OBSERVED.get_or_init(install).await
}

async fn install() -> Observed {
    let spans = Spans::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let receiver = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    // On a runtime of its own, so it outlives each test's runtime.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, receiver).await.unwrap();
        });
    });
    let logs = Capture::default();
    let config = TelemetryConfig {
        json: true,
        filter: "warn,orderflow_activities=debug,orderflow_engine=info".into(),
        export: Export::To(url),
        service_name: "orderflow-test".into(),
    };
    let telemetry = telemetry::init_with_writer(&config, logs.clone()).expect("first install");
    Observed {
        spans,
        logs,
        telemetry,
    }
}

/// The engine (REST API on a socket, loops) and recording workers for every activity.
struct Stack {
    env: TestEnv,
    api: String,
    http: reqwest::Client,
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
    async fn new() -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let registry = Arc::new(Registry::new().with(sagas::fast_order()));
        let applier = env.applier(registry.clone());
        let engine = env.spawn_engine(registry);
        let app = api::router(
            AppState::standalone(env.pool.clone(), applier, env.queue()),
            orderflow_testkit::api_auth(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api = format!("http://{}", listener.local_addr()?);
        let served = CancellationToken::new();
        let s = served.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
        });
        let workers = CancellationToken::new();
        let worker = Worker::builder(env.queue())
            .handlers(recording::order_saga_handlers(env.pool.clone()), 4)
            .build();
        let w = workers.clone();
        tokio::spawn(async move { worker.run(w.cancelled_owned()).await });
        Ok(Self {
            env,
            api,
            http: reqwest::Client::new(),
            stops: vec![engine, served, workers],
        })
    }

    /// Starts an order saga through the REST API, as a caller in a trace of its own.
    async fn start(&self) -> anyhow::Result<Uuid> {
        let res = self
            .http
            .post(format!("{}/api/v1/workflows", self.api))
            .bearer_auth(orderflow_testkit::service_token("order"))
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .json(&json!({ "type": "order", "input": order_input() }))
            .send()
            .await?;
        assert_eq!(res.status(), reqwest::StatusCode::CREATED);
        let body: Value = res.json().await?;
        Ok(body["id"].as_str().unwrap_or_default().parse()?)
    }

    async fn metrics(&self) -> anyhow::Result<String> {
        let res = self
            .http
            .get(format!("{}/metrics", self.api))
            .send()
            .await?;
        assert_eq!(res.status(), reqwest::StatusCode::OK);
        Ok(res.text().await?)
    }
}

/// The spans of `trace`, once `want` holds for them.
async fn trace_of(
    o: &Observed,
    workflow: Uuid,
    what: &str,
    want: impl Fn(&[Got]) -> bool,
) -> anyhow::Result<Vec<Got>> {
    let trace = workflow.simple().to_string();
    eventually(SETTLE, what, || async {
        o.telemetry.flush();
        let spans: Vec<Got> = o
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace)
            .cloned()
            .collect();
        Ok(want(&spans).then_some(spans))
    })
    .await
}

fn named<'a>(spans: &'a [Got], name: &str) -> Vec<&'a Got> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_saga_is_one_trace_across_the_api_the_engine_the_queues_and_every_worker()
-> anyhow::Result<()> {
    let o = observed().await;
    let stack = Stack::new().await?;
    let id = stack.start().await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "completed");

    let activities = [
        INVENTORY_RESERVE,
        PAYMENT_CHARGE,
        ORDER_CREATE,
        NOTIFICATION_SEND,
    ];
    let spans = trace_of(o, id, "the saga's spans", |spans| {
        activities
            .iter()
            .all(|a| !named(spans, &format!("activity {a}")).is_empty())
            && named(spans, "result.apply").len() >= 4
            && !named(spans, "POST /api/v1/workflows").is_empty()
    })
    .await?;

    // The root is the REST call, with the span id every engine process derives.
    let root = named(&spans, "POST /api/v1/workflows")[0];
    let root_id = telemetry::root_span_id(id).to_string();
    assert_eq!(root.span_id, root_id);
    assert_eq!(root.parent, "", "the root has no parent");
    assert_eq!(root.attributes["workflow.id"], id.to_string());
    let by_id: HashMap<&str, &Got> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    for a in activities {
        // relay publish -> worker activity -> engine result apply, all under the root.
        let act = named(&spans, &format!("activity {a}"))[0];
        assert_eq!(act.attributes["activity"], a);
        assert_eq!(act.attributes["workflow_id"], id.to_string());
        let publish = by_id
            .get(act.parent.as_str())
            .unwrap_or_else(|| panic!("{a}: its parent {} was not exported", act.parent));
        assert_eq!(publish.name, "task.publish", "{a}: parent of the activity");
        assert_eq!(
            publish.parent, root_id,
            "{a}: the publish is the root's child"
        );
        assert!(
            spans
                .iter()
                .any(|s| s.name == "result.apply" && s.parent == act.span_id),
            "{a}: no result.apply child of the activity span"
        );
    }

    // Log lines are JSON and carry the saga's trace and workflow ids from the span context.
    let logs = String::from_utf8(o.logs.0.lock().unwrap().clone())?;
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["workflow_id"] == id.to_string())
        .expect("a log line about the saga");
    assert_eq!(line["trace_id"], id.simple().to_string(), "{line}");
    assert!(line["level"].is_string() && line["fields"]["message"].is_string());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_and_compensations_stay_in_the_saga_trace_and_are_counted() -> anyhow::Result<()> {
    let o = observed().await;
    let stack = Stack::new().await?;
    // The first reserve fails and is retried after a backoff timer; the charge is declined, so
    // the reservation is released.
    recording::inject(
        &stack.env.pool,
        &Fault::transient(INVENTORY_RESERVE, "flaky").times(1),
    )
    .await?;
    recording::inject(
        &stack.env.pool,
        &Fault::permanent(PAYMENT_CHARGE, "card_declined"),
    )
    .await?;
    let id = stack.start().await?;
    assert_eq!(settled(&stack.env, id, SETTLE).await?, "compensated");

    let spans = trace_of(o, id, "the compensated saga's spans", |spans| {
        named(spans, &format!("activity {INVENTORY_RESERVE}")).len() >= 2
            && !named(spans, &format!("activity {INVENTORY_RELEASE}")).is_empty()
            && !named(spans, &format!("activity {PAYMENT_CHARGE}")).is_empty()
            && !named(spans, "timer.fire").is_empty()
    })
    .await?;
    let attempts: Vec<&str> = named(&spans, &format!("activity {INVENTORY_RESERVE}"))
        .iter()
        .map(|s| s.attributes["attempt"].as_str())
        .collect();
    assert!(
        attempts.contains(&"1") && attempts.contains(&"2"),
        "{attempts:?}"
    );

    // The metrics of what just ran, scraped from the engine's /metrics.
    let text = eventually(SETTLE, "the series", || async {
        let text = stack.metrics().await?;
        Ok(text
            .contains("orderflow_compensations_total")
            .then_some(text))
    })
    .await?;
    let value = |series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    };
    let reserve = r#"activity="inventory.reserve""#;
    assert!(
        value(&format!(
            r#"orderflow_step_duration_seconds_count{{{reserve},outcome="completed",phase="forward"}}"#
        )) >= 1.0
    );
    assert!(
        value(&format!(
            r#"orderflow_step_duration_seconds_count{{{reserve},outcome="failed",phase="forward"}}"#
        )) >= 1.0
    );
    assert!(
        value(&format!(
            "orderflow_step_schedule_to_start_seconds_count{{{reserve}}}"
        )) >= 2.0
    );
    assert!(value(&format!("orderflow_step_retries_total{{{reserve}}}")) >= 1.0);
    assert!(
        value(r#"orderflow_compensations_total{activity="inventory.release",outcome="completed"}"#)
            >= 1.0
    );
    assert!(value("orderflow_timer_lateness_seconds_count") >= 1.0);
    assert!(value(r#"orderflow_batch_size_count{loop="intake"}"#) >= 1.0);
    assert!(
        value(r#"orderflow_workflows_finished_total{status="compensated",type="order"}"#) >= 1.0
    );
    assert!(
        value(
            r#"http_request_duration_seconds_count{method="POST",route="/api/v1/workflows",status="201"}"#
        ) >= 1.0
    );
    Ok(())
}
