//! The engine's REST API under `/api/v1`, plus `/health`, `/ready` and `/metrics`.
//! [`router`] is a plain function so tests drive it without a socket. The same routes serve the
//! engine's Postgres ([`router_with_admin`]) or the embedded SQLite store of `orderflow dev`
//! ([`router_embedded`]); handlers reach either through [`Backend`].

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
use orderflow_queue::QueueView;
use sqlx::PgPool;

pub use problem::ApiError;

use crate::{
    admin::{AdminConfig, Backend},
    apply::Applier,
    metrics,
    store::sqlite::SqliteStore,
};

/// What an engine process on Postgres serves the API with.
#[derive(Debug, Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub applier: Applier,
    /// The task queue, probed by `/ready`.
    pub queue: Arc<dyn QueueView>,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub(crate) struct ApiState {
    pub db: Backend,
    pub applier: Applier,
    /// Probed by `/ready`.
    pub queue: Arc<dyn QueueView>,
}

/// The whole HTTP surface of an engine process.
pub fn router(state: AppState) -> Router {
    router_with_admin(state, None)
}

/// [`router`] plus, when `admin` is set, the operators' web UI under `/admin`.
pub fn router_with_admin(state: AppState, admin: Option<AdminConfig>) -> Router {
    let ui = crate::admin::router(state.clone(), admin);
    routes(
        ApiState {
            db: Backend::Postgres(state.pool),
            applier: state.applier,
            queue: state.queue,
        },
        ui,
    )
}

/// The whole HTTP surface on the embedded store of `orderflow dev` (tasks on the in-process
/// queue), with the operators' web UI under `/admin` when `admin` is set. `/ready` asks only
/// the store: there is no broker.
pub fn router_embedded(
    store: SqliteStore,
    applier: Applier,
    queue: Arc<dyn QueueView>,
    admin: Option<AdminConfig>,
) -> Router {
    let ui = match admin {
        Some(config) => {
            crate::admin::router_embedded(store.clone(), applier.clone(), queue.clone(), config)
        }
        None => Router::new(),
    };
    routes(
        ApiState {
            db: Backend::Sqlite(store),
            applier,
            queue,
        },
        ui,
    )
}

fn routes(state: ApiState, ui: Router<ApiState>) -> Router {
    let api = Router::new()
        .route("/workflows", post(workflows::start).get(workflows::list))
        .route("/workflows/{id}", get(workflows::get))
        .route("/workflows/{id}/history", get(workflows::history))
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/terminate", post(workflows::terminate))
        .route("/workflows/{id}/retry", post(workflows::retry))
        .route("/workflows/{id}/signals/{name}", post(workflows::signal))
        .route("/workflow-counts", get(workflows::counts))
        .route("/openapi.json", get(openapi_json));
    Router::new()
        .nest("/api/v1", api)
        .merge(ui)
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(|| async { metrics::render() }))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn(observe))
        .with_state(state)
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
async fn ready(State(state): State<ApiState>) -> Response {
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
