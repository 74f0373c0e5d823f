//! The operators' web UI at `/admin`: find sagas, see why one is stuck, and repair it without a
//! shell. Pages are rendered on the server (maud) and embedded in the binary with a little plain
//! JavaScript, so a browser needs nothing but the engine. Every repair is an event applied through
//! the decider (through the committer), so it lands in the workflow's history with the operator as its
//! actor and the reason they gave, and the audit view lists it.
//!
//! The UI reads through the engine's read seam ([`crate::store::Reads`]) and acts through its
//! committer, so it runs on Postgres or on the embedded store of `orderflow dev` alike, and asks
//! the task queue
//! ([`orderflow_queue::QueueView`]) which queues have workers.
//!
//! - [`auth`]: login (an operator account configured for the process), sessions in the database
//!   behind an HttpOnly, SameSite=Strict cookie, the per-session CSRF token every POST must
//!   carry, and the [`auth::Operator`] extractor that sends anyone without a session to the login
//!   page.
//! - [`stuck`]: why a saga is stuck, in one line, and [`stuck::QueueProbe`], which asks the task
//!   queue which activity queues have no consumer.
//! - [`timeline`]: a saga's steps as an SVG diagram, forward path and compensation path.
//! - [`views`]: the HTML of every page.
//! - [`actions`]: single and bulk operator actions (retry, retry from a step, cancel, terminate,
//!   signal, resolve a failed compensation).
//! - [`error`]: the UI's error type: a redirect to login, problem+json for bad input, a generic
//!   500 whose cause is logged.

pub mod actions;
pub mod auth;
pub mod error;
pub mod outbox;
pub mod stuck;
pub mod timeline;
pub mod views;

use std::{fmt, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::Path,
    http::{HeaderValue, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};

pub use error::AdminError;

use crate::{api::AppState, committer::Committer, store::Reads};

/// The password `orderflow up` uses when `ORDERFLOW_ADMIN_PASSWORD` is not set, printed at start.
/// Only for a developer's machine: `orderflow engine` has no default and serves no password login
/// without one.
pub const DEV_PASSWORD: &str = "orderflow-dev";

/// An operator account: who may log in with a password.
#[derive(Clone)]
pub struct Credential {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// How the admin UI of one process is set up.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// The operator account; `None` disables password login.
    pub credential: Option<Credential>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Marks cookies `Secure`; on wherever the UI is reached over HTTPS.
    pub secure_cookies: bool,
    /// How long an answer from RabbitMQ about queue consumers is reused.
    pub probe_ttl: Duration,
    /// A timer this late is reported as not firing (no engine running its timers, or one behind).
    pub timer_grace: Duration,
    /// Most workflows one bulk action touches.
    pub bulk_limit: i64,
    /// An outbox of emails to show on an Emails page (`orderflow dev`); none in production.
    pub outbox: Option<Arc<dyn outbox::Outbox>>,
}

impl AdminConfig {
    /// Password login for `user`, with the defaults for everything else.
    pub fn with_password(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            credential: Some(Credential {
                user: user.into(),
                password: password.into(),
            }),
            session_ttl: Duration::from_secs(8 * 3600),
            secure_cookies: false,
            probe_ttl: Duration::from_secs(5),
            timer_grace: Duration::from_secs(10),
            bulk_limit: 10_000,
            outbox: None,
        }
    }
}

/// What every admin handler shares.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub db: Arc<dyn Reads>,
    pub committer: Committer,
    pub config: Arc<AdminConfig>,
    pub probe: Arc<stuck::QueueProbe>,
    pub throttle: Arc<auth::LoginThrottle>,
}

impl AdminState {
    /// On the engine's database and queue of `app`.
    pub fn new(app: AppState, config: AdminConfig) -> Self {
        let probe = stuck::QueueProbe::new(app.queue, config.probe_ttl);
        Self {
            db: app.db,
            committer: app.committer,
            config: Arc::new(config),
            probe: Arc::new(probe),
            throttle: Arc::new(auth::LoginThrottle::default()),
        }
    }
}

/// The admin routes, for the engine's router to merge ([`crate::api::router_with`]).
pub fn router(app: AppState, config: AdminConfig) -> Router {
    routes(AdminState::new(app, config))
}

fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/admin", get(|| async { Redirect::to("/admin/workflows") }))
        .route(
            "/admin/",
            get(|| async { Redirect::to("/admin/workflows") }),
        )
        .route("/admin/login", get(auth::login_page).post(auth::login))
        .route("/admin/logout", post(auth::logout))
        .route("/admin/assets/{file}", get(asset))
        .route("/admin/workflows", get(views::list_page))
        .route("/admin/stuck", get(views::stuck_page))
        .route("/admin/audit", get(views::audit_page))
        .route("/admin/emails", get(views::emails_page))
        .route("/admin/workflows/{id}", get(views::detail_page))
        .route(
            "/admin/workflows/{id}/history.json",
            get(views::history_download),
        )
        .route("/admin/workflows/{id}/{action}", post(actions::single))
        .route("/admin/bulk/preview", post(actions::bulk_preview))
        .route("/admin/bulk", post(actions::bulk_run))
        .layer(middleware::from_fn(same_origin))
        .layer(middleware::from_fn(secure_headers))
        .with_state(state)
}

/// A POST from a page of another site is refused before any handler runs, whatever it carries:
/// the browser says where it comes from (`Sec-Fetch-Site`, `Origin`). This is on top of the
/// SameSite=Strict cookies and the per-session CSRF token, for browsers that send neither
/// cookie attribute nor token checks as expected. Requests without these headers (curl, tests)
/// still need the session and its token.
async fn same_origin(req: axum::extract::Request, next: Next) -> Response {
    use axum::http::Method;
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return AdminError::forbidden(
            "Sec-Fetch-Site",
            format!("a {site} request may not change anything here"),
        )
        .into_response();
    }
    if let Some(origin) = text("origin") {
        let host = text("host").unwrap_or_default();
        let origin_host = origin
            .split_once("://")
            .map_or("", |(_, rest)| rest.trim_end_matches('/'));
        if origin_host.is_empty() || !origin_host.eq_ignore_ascii_case(host) {
            return AdminError::forbidden(
                "Origin",
                format!("a request from {origin} may not change anything here"),
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// Pages may not be framed, sniffed or cached, and may load scripts and styles only from here.
async fn secure_headers(req: axum::extract::Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let set = |h: &mut axum::http::HeaderMap, k, v: &'static str| {
        h.entry(k).or_insert(HeaderValue::from_static(v));
    };
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "same-origin");
    set(h, header::CACHE_CONTROL, "no-store");
    res
}

const ADMIN_JS: &str = include_str!("assets/admin.js");
const ADMIN_CSS: &str = include_str!("assets/admin.css");

/// The UI's script and stylesheet. They hold no data, so the login page may load them.
async fn asset(Path(file): Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "admin.js" => (ADMIN_JS, "text/javascript; charset=utf-8"),
        "admin.css" => (ADMIN_CSS, "text/css; charset=utf-8"),
        _ => return AdminError::NotFound(format!("no asset `{file}`")).into_response(),
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
