//! Traces and logs of every OrderFlow process: one trace per saga, JSON log lines that carry its
//! ids, and the OTLP export.
//!
//! **One trace per saga.** A saga's trace id *is* its workflow id (a UUIDv7 has the 128 bits of a
//! trace id), so the admin UI's workflow id is the id to search for in Jaeger, and every hop,
//! retry and compensation of the saga lands in that one trace, whichever engine replica or
//! worker handled it and across restarts, without storing any trace state. The saga's root span
//! (the REST call that started it) has a span id derived from the workflow id too
//! ([`root_span_id`]), so every engine span can name it as parent without looking anything up:
//!
//! ```text
//! POST /api/v1/workflows (root, engine)
//! ├── task.publish (engine relay, one per attempt)        traceparent → message header
//! │   └── activity <name> (worker)                         traceparent → result header
//! │       └── result.apply (engine intake)
//! └── timer.fire (engine timer poller)
//! ```
//!
//! The W3C `traceparent` travels in each RabbitMQ message's headers; the task body's
//! `traceparent` field holds the saga root's, which a worker falls back to.
//!
//! **Export.** [`init`] installs the process's subscriber: text or JSON log lines on stdout and,
//! when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT`, as Jaeger, Tempo or a
//! collector take it), the spans of the OrderFlow crates exported over OTLP/HTTP protobuf in
//! batches from a background thread.
//!
//! **Logs.** JSON lines carry `trace_id` and `workflow_id` from the span context of the event:
//! the trace id of the exporting span when traces are exported, otherwise the saga's (its
//! workflow id, the same value).

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{
        Link, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
        Tracer, TracerProvider as _,
    },
};
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing::{Span, field::Visit, span::Attributes};
use tracing_opentelemetry::{OpenTelemetrySpanExt, OtelData};
use tracing_subscriber::{
    EnvFilter, Layer,
    filter::{FilterFn, LevelFilter},
    fmt::MakeWriter,
    layer::{Context as LayerContext, SubscriberExt},
    registry::LookupSpan,
    util::SubscriberInitExt,
};
use uuid::Uuid;

pub use opentelemetry::KeyValue;

/// The message header (and task field) that carries the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The instrumentation scope of OrderFlow's spans.
const SCOPE: &str = "orderflow";

/// Only spans of the OrderFlow crates are exported: a trace is the saga's hops, not every
/// library's internals.
fn ours(target: &str) -> bool {
    target.starts_with("orderflow")
}

/// The trace id of a saga: its workflow id.
pub fn trace_id(workflow_id: Uuid) -> TraceId {
    TraceId::from_bytes(*workflow_id.as_bytes())
}

/// The span id of a saga's root span: the workflow id's last 8 bytes (random in a UUIDv7), so
/// any process can parent to the root without storing its id.
pub fn root_span_id(workflow_id: Uuid) -> SpanId {
    let b = workflow_id.as_bytes();
    let id = u64::from_be_bytes(b[8..16].try_into().expect("8 bytes"));
    // An all-zero span id is invalid; a UUIDv7's variant bits make this unreachable in practice.
    SpanId::from(id.max(1))
}

/// The saga root's span context, as a remote parent.
pub fn root_context(workflow_id: Uuid) -> SpanContext {
    SpanContext::new(
        trace_id(workflow_id),
        root_span_id(workflow_id),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    )
}

/// The saga root's `traceparent`, which the engine writes into each task it schedules.
pub fn root_traceparent(workflow_id: Uuid) -> String {
    format_traceparent(&root_context(workflow_id))
}

/// The W3C form of `sc`: `00-<trace id>-<span id>-<flags>`.
pub fn format_traceparent(sc: &SpanContext) -> String {
    let mut carrier = OneHeader(None);
    TraceContextPropagator::new().inject_context(
        &Context::new().with_remote_span_context(sc.clone()),
        &mut carrier,
    );
    carrier.0.unwrap_or_default()
}

/// The span context in a `traceparent` value, if it is a valid one.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&OneHeader(Some(value.to_owned())));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// The workflow id a saga's trace id stands for.
pub fn workflow_of(sc: &SpanContext) -> Uuid {
    Uuid::from_bytes(sc.trace_id().to_bytes())
}

/// Makes `span` (not yet entered) a child of `traceparent` when that is valid and belongs to
/// `workflow_id`'s trace, else of the saga's root. Does nothing when traces are not exported.
pub fn set_parent(span: &Span, traceparent: Option<&str>, workflow_id: Uuid) {
    let parent = traceparent
        .and_then(parse_traceparent)
        .filter(|sc| sc.trace_id() == trace_id(workflow_id))
        .unwrap_or_else(|| root_context(workflow_id));
    // Without the OpenTelemetry layer (no export) there is nothing to parent.
    let _ = span.set_parent(Context::new().with_remote_span_context(parent));
}

/// The `traceparent` naming `span` as parent, for the next hop; `fallback` when traces are not
/// exported (so the saga's context still travels).
pub fn traceparent_of(span: &Span, fallback: Option<&str>) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        Some(format_traceparent(&sc))
    } else {
        fallback.map(str::to_owned)
    }
}

/// Records the saga's root span: the REST call that started `workflow_id`, from `started` until
/// now. `caller` is the request's own `traceparent` (the order service's trace, say), kept as a
/// link since the saga has a trace of its own.
pub fn record_root(
    workflow_id: Uuid,
    name: &'static str,
    started: SystemTime,
    attributes: Vec<KeyValue>,
    caller: Option<&str>,
) {
    let tracer = opentelemetry::global::tracer(SCOPE);
    let links = caller
        .and_then(parse_traceparent)
        .map(|sc| vec![Link::with_context(sc)])
        .unwrap_or_default();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_trace_id(trace_id(workflow_id))
        .with_span_id(root_span_id(workflow_id))
        .with_start_time(started)
        .with_attributes(attributes)
        .with_links(links)
        // No parent: the root's ids are the ones set above.
        .start_with_context(&tracer, &Context::new());
    drop(span);
}

/// A one-value carrier for the W3C propagator.
struct OneHeader(Option<String>);

impl Injector for OneHeader {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for OneHeader {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// Where spans go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Export {
    /// Nowhere: logs only.
    #[default]
    Off,
    /// OTLP/HTTP as the standard variables say (`OTEL_EXPORTER_OTLP_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, ...).
    Env,
    /// OTLP/HTTP to this traces URL (`http://host:4318/v1/traces`).
    To(String),
}

impl Export {
    /// [`Export::Env`] when an OTLP endpoint variable is set, else [`Export::Off`].
    pub fn from_env() -> Self {
        let set = |v: &str| std::env::var(v).is_ok_and(|s| !s.is_empty());
        if set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Self::Env
        } else {
            Self::Off
        }
    }
}

/// How a process logs and traces.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// JSON lines instead of text.
    pub json: bool,
    /// `RUST_LOG`-style filter of the log lines (not of the exported spans).
    pub filter: String,
    pub export: Export,
    /// `service.name` of the exported spans unless `OTEL_SERVICE_NAME` says otherwise.
    pub service_name: String,
}

impl TelemetryConfig {
    /// Text or JSON logs filtered by `RUST_LOG` (default `info`, quiet sqlx and lapin), spans
    /// exported when the environment names an OTLP endpoint.
    pub fn from_env(json: bool) -> Self {
        Self {
            json,
            filter: std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "info,sqlx=warn,lapin=warn".into()),
            export: Export::from_env(),
            service_name: "orderflow".into(),
        }
    }
}

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("a subscriber is already installed: {0}")]
    Installed(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the span exporter; dropping it flushes and stops the export, so hold it for the life of
/// the process.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Telemetry")
            .field("exporting", &self.provider.is_some())
            .finish()
    }
}

impl Telemetry {
    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider
            && let Err(e) = p.force_flush()
        {
            tracing::warn!(error = %e, "flushing spans");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5))
        {
            eprintln!("flushing spans at exit: {e}");
        }
    }
}

/// Installs the process's subscriber with log lines on stdout.
pub fn init(config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    init_with_writer(config, std::io::stdout)
}

/// [`init`] with log lines going to `writer` (tests read them back).
pub fn init_with_writer<W>(config: &TelemetryConfig, writer: W) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let provider = match &config.export {
        Export::Off => None,
        export => Some(provider(export, &config.service_name)?),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(SCOPE))
            .with_filter(LevelFilter::INFO)
            .with_filter(FilterFn::new(|meta| ours(meta.target())))
    });
    let filter = || EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = if config.json {
        json_layer(writer).with_filter(filter()).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_filter(filter())
            .boxed()
    };
    tracing_subscriber::registry()
        .with(SagaFields)
        .with(otel)
        .with(logs)
        .try_init()?;
    Ok(Telemetry { provider })
}

fn provider(export: &Export, service_name: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::WithExportConfig as _;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Export::To(url) = export {
        builder = builder.with_endpoint(url.clone());
    }
    // The blocking client: the batch processor exports from a thread of its own.
    let exporter = builder.build()?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    // [`record_root`] uses the global tracer.
    opentelemetry::global::set_tracer_provider(provider.clone());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    Ok(provider)
}

/// JSON lines like `tracing-subscriber`'s, plus `trace_id` and `workflow_id` at the top level.
fn json_layer<S, W>(writer: W) -> json_subscriber::fmt::Layer<S, W>
where
    S: tracing::Subscriber + for<'l> LookupSpan<'l>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut layer = json_subscriber::fmt::layer()
        .with_writer(writer)
        .with_current_span(true)
        .with_span_list(false);
    let inner = layer.inner_layer_mut();
    inner.add_from_span("workflow_id", |span| {
        span.scope()
            .find_map(|s| s.extensions().get::<SagaOf>().map(|w| w.0.to_string()))
    });
    inner.add_from_span("trace_id", |span| {
        let exported = span.scope().find_map(|s| {
            let ext = s.extensions();
            ext.get::<OtelData>()
                .and_then(OtelData::trace_id)
                .filter(|t| *t != TraceId::INVALID)
        });
        let saga = || {
            span.scope()
                .find_map(|s| s.extensions().get::<SagaOf>().map(|w| trace_id(w.0)))
        };
        exported.or_else(saga).map(|t| t.to_string())
    });
    layer
}

/// The workflow a span works for, from its `workflow_id` field.
#[derive(Debug, Clone, Copy)]
struct SagaOf(Uuid);

/// Remembers each span's `workflow_id` field (a UUID), so log lines can name the saga.
struct SagaFields;

impl<S> Layer<S> for SagaFields
where
    S: tracing::Subscriber + for<'l> LookupSpan<'l>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &tracing::Id, ctx: LayerContext<'_, S>) {
        let mut found = FindWorkflow(None);
        attrs.record(&mut found);
        if let (Some(w), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().insert(SagaOf(w));
        }
    }

    fn on_record(
        &self,
        id: &tracing::Id,
        values: &tracing::span::Record<'_>,
        ctx: LayerContext<'_, S>,
    ) {
        let mut found = FindWorkflow(None);
        values.record(&mut found);
        if let (Some(w), Some(span)) = (found.0, ctx.span(id)) {
            span.extensions_mut().replace(SagaOf(w));
        }
    }
}

struct FindWorkflow(Option<Uuid>);

impl Visit for FindWorkflow {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "workflow_id" {
            self.0 = value.parse().ok();
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        if field.name() == "workflow_id" {
            self.0 = format!("{value:?}").trim_matches('"').parse().ok();
        }
    }
}
