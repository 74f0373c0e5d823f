//! The engine's REST API under `/api/v1`, plus `/health`, `/ready` and `/metrics`. [`router`] is a
//! plain function so tests drive it without a socket. Handlers reach the engine's database through
//! the read seam ([`crate::store::Reads`]), change them through the committer, and reach the
//! task queue through
//! [`orderflow_queue::QueueView`], so one router serves Postgres and RabbitMQ or the embedded
//! store and queue. The host merges the admin UI's routes in ([`router_with`]).
//!
//! Every `/api/v1` route is behind [`auth::require`]: a bearer token of an operator or a service
//! (401 without one, 403 for another role), and JSON bodies only (415).

pub mod auth;
mod openapi;
mod problem;
mod workflows;

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::{MatchedPath, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use orderflow_queue::{QueueView, TaskQueue};

pub use auth::{ApiAuth, Authenticated};
pub use problem::ApiError;

use crate::{
    apply::Applier,
    committer::Committer,
    metrics,
    store::{Reads, Store},
};

/// What the API and the admin UI of one engine process share: its database's reads, the
/// committer every change goes through, and the task queue (`/ready` and the stuck view ask
/// it).
#[derive(Debug, Clone)]
pub struct AppState {
    pub db: Arc<dyn Reads>,
    pub committer: Committer,
    pub queue: Arc<dyn QueueView>,
}

impl AppState {
    /// The API of an engine process: its store, its committer and its queue.
    pub fn new<S: Store, Q: TaskQueue>(engine: &crate::Engine<S, Q>) -> Self {
        Self {
            db: Arc::new(engine.store().clone()),
            committer: engine.committer().clone(),
            queue: Arc::new(engine.queue().clone()),
        }
    }

    /// The API alone, with a committer of its own on `store` (no engine loops run): what a
    /// test drives, or a process that only starts workflows for an engine elsewhere.
    pub fn standalone<S: Store, Q: TaskQueue>(store: S, applier: Applier, queue: Q) -> Self {
        let committer = Committer::spawn(
            store.clone(),
            queue.clone(),
            applier,
            Arc::new(tokio::sync::Notify::new()),
        );
        Self {
            db: Arc::new(store),
            committer,
            queue: Arc::new(queue),
        }
    }
}

/// The whole HTTP surface of an engine process; `auth` verifies its callers' tokens.
pub fn router(state: AppState, auth: ApiAuth) -> Router {
    router_with(state, auth, Router::new())
}

/// [`router`] with `extra` routes (the admin UI, which has its own sessions) merged in, behind
/// the same fallbacks and request metrics.
pub fn router_with(state: AppState, auth: ApiAuth, extra: Router) -> Router {
    routes(state, auth, extra)
}

fn routes(state: AppState, auth: ApiAuth, extra: Router) -> Router {
    let api = Router::new()
        .route("/workflows", post(workflows::start).get(workflows::list))
        .route("/workflows/{id}", get(workflows::get))
        .route("/workflows/{id}/history", get(workflows::history))
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/terminate", post(workflows::terminate))
        .route("/workflows/{id}/retry", post(workflows::retry))
        .route("/workflows/{id}/resolve", post(workflows::resolve))
        .route("/workflows/{id}/signals/{name}", post(workflows::signal))
        .route("/workflow-counts", get(workflows::counts))
        .route("/openapi.json", get(openapi_json))
        // A route layer: an unknown path is still a 404, to anyone.
        .route_layer(middleware::from_fn_with_state(auth, auth::require));
    Router::new()
        .nest("/api/v1", api)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(|| async { metrics::render() }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(state)
        .merge(extra)
        .layer(middleware::from_fn(observe))
}

/// `GET /api/v1/openapi.json`: the API's OpenAPI document.
async fn openapi_json() -> Response {
    use utoipa::OpenApi as _;
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        openapi::ApiDoc::openapi()
            .to_json()
            .expect("an OpenAPI document always serializes")
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.as_str(),
    )
        .into_response()
}

/// `/ready`: 200 only when the database and the broker both answer. With the in-process queue
/// there is no broker (`"broker": null`) and the database alone decides.
async fn ready(State(state): State<AppState>) -> Response {
    let db = state.db.ping().await;
    let broker = state.queue.reachable().await;
    let status = if db && broker != Some(false) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(serde_json::json!({ "database": db, "broker": broker })),
    )
        .into_response()
}

/// Records `http_request_duration_seconds` by method, matched route and status.
async fn observe(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let res = next.run(req).await;
    metrics::HTTP_DURATION
        .with_label_values(&[&method, &route, res.status().as_str()])
        .observe(started.elapsed().as_secs_f64());
    res
}
