//! The HTTP surface every service shares: `/health`, `/ready`, `/metrics`, the request-duration
//! middleware, problem+json fallbacks, and a server that stops gracefully on a token.
//!
//! A service builds its `/api/v1` router and hands it to [`app`] with its [`Readiness`] probes.

use std::{
    borrow::Cow,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::problem::ApiError;

/// Request bodies larger than this are answered 413: no service takes more than a small order.
pub const BODY_LIMIT: usize = 64 * 1024;

/// How long one readiness probe may take before it counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The services' own registry. Kept apart from the default registry because `orderflow up` runs
/// the engine (which registers its own `http_request_duration_seconds` there) in the same
/// process; `/metrics` merges both, this one first.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// `http_request_duration_seconds{service,method,route,status}`; `service` tells apart the
/// services that share one process under `orderflow up`.
pub static HTTP_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        HistogramOpts::new(
            "http_request_duration_seconds",
            "HTTP request duration by service, method, route and status",
        ),
        &["service", "method", "route", "status"],
    )
    .expect("valid metric");
    REGISTRY
        .register(Box::new(h.clone()))
        .expect("metric registers once");
    h
});

type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// What `/ready` checks: named probes, each true when its dependency answers.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(Cow<'static, str>, Probe)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.probes.iter().map(|(n, _)| n.as_ref()).collect();
        f.debug_struct("Readiness").field("probes", &names).finish()
    }
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Any probe: `check` answers true when the dependency is usable.
    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        self.probes.push((
            name.into(),
            Arc::new(move || Box::pin(check()) as Pin<Box<_>>),
        ));
        self
    }

    /// The service's database answers `select 1`.
    pub fn postgres(self, pool: PgPool) -> Self {
        self.check("database", move || {
            let pool = pool.clone();
            async move { sqlx::query("select 1").execute(&pool).await.is_ok() }
        })
    }

    /// The service's database (either backend) answers `select 1`.
    pub fn database(self, db: crate::db::Db) -> Self {
        self.check("database", move || {
            let db = db.clone();
            async move { db.ping().await }
        })
    }

    /// The task queue's broker answers (a queue in this process has none, and is not probed).
    pub fn queue<Q: orderflow_queue::TaskQueue>(self, queue: Q) -> Self {
        self.check("broker", move || {
            let queue = queue.clone();
            async move { queue.reachable().await.unwrap_or(true) }
        })
    }

    /// Redis answers `PING`.
    pub fn redis(self, conn: redis::aio::ConnectionManager) -> Self {
        self.check("redis", move || {
            let mut conn = conn.clone();
            async move {
                redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            }
        })
    }

    /// Adds `other`'s probes, each named `<prefix>_<name>` (a worker process serving several
    /// services checks each one's database).
    pub fn merge(mut self, prefix: &str, other: Readiness) -> Self {
        self.probes.extend(
            other
                .probes
                .into_iter()
                .map(|(name, probe)| (format!("{prefix}_{name}").into(), probe)),
        );
        self
    }

    /// Runs every probe concurrently, each bounded by a timeout.
    pub async fn run(&self) -> Vec<(String, bool)> {
        futures::future::join_all(self.probes.iter().map(|(name, probe)| async move {
            let ok = tokio::time::timeout(PROBE_TIMEOUT, probe())
                .await
                .unwrap_or(false);
            (name.to_string(), ok)
        }))
        .await
    }
}

/// `/health` (the process answers), `/ready` (every probe answers: 200, else 503 with which one
/// did not) and `/metrics` (Prometheus text).
pub fn base_routes<S: Clone + Send + Sync + 'static>(ready: Readiness) -> Router<S> {
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/ready",
            get(move || {
                let ready = ready.clone();
                async move { ready_response(&ready).await }
            }),
        )
        .route("/metrics", get(|| async { render_metrics() }))
}

async fn ready_response(ready: &Readiness) -> Response {
    let results = ready.run().await;
    let all = results.iter().all(|(_, ok)| *ok);
    let body: serde_json::Map<String, serde_json::Value> = results
        .into_iter()
        .map(|(name, ok)| (name, ok.into()))
        .collect();
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The text exposition of the services' registry plus the process-wide default registry
/// (families already in the first are not repeated, so the exposition stays valid).
pub fn render_metrics() -> String {
    let mut families = REGISTRY.gather();
    let ours: std::collections::HashSet<String> =
        families.iter().map(|f| f.name().to_owned()).collect();
    families.extend(
        prometheus::gather()
            .into_iter()
            .filter(|f| !ours.contains(f.name())),
    );
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).unwrap_or_default()
}

/// Records `http_request_duration_seconds` by service, method, matched route and status. Use as
/// `middleware::from_fn_with_state("order", observe)`.
pub async fn observe(State(service): State<&'static str>, req: Request, next: Next) -> Response {
    // The matched route, not the path, so ids do not explode the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    HTTP_DURATION
        .with_label_values(&[service, &method, &route, res.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// A service's whole router: `api` under `/api/v1`, the base routes, problem+json for unknown
/// routes and methods, the body limit and the duration metric.
pub fn app(service: &'static str, api: Router, ready: Readiness) -> Router {
    Router::new()
        .nest("/api/v1", api)
        .merge(base_routes(ready))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(service, observe))
}

/// Binds `bind` and serves `router` until `stop` is cancelled, then lets in-flight requests
/// finish.
pub async fn serve(
    bind: SocketAddr,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    serve_on(listener, router, stop).await
}

/// [`serve`] on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    // The peer address feeds per-client rate limits ([`crate::limit::Peer`]).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
    .with_context(|| format!("serving {addr}"))
}
