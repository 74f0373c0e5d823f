//! What the admin UI tests share: the engine's HTTP surface with the admin UI served on port 0
//! against a fresh database and queue prefix, optionally the engine loops and recording workers,
//! and a small HTTP client that keeps the session cookie and CSRF token like a browser would.
//!
//! [`Setup::store`] picks the engine's database: Postgres with RabbitMQ (production), or the
//! embedded SQLite store with the in-process queue (`orderflow dev`). The recording workers keep
//! their faults and effects in the test's Postgres database either way; they stand in for the
//! services and are not what is under test.

#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use orderflow_activities::worker::{Handler, Worker};
use orderflow_core::{RecordedEvent, Registry, RetryPolicy, SagaDefinition, Step};
use orderflow_engine::{
    Engine, EngineConfig,
    admin::{self, AdminConfig},
    api::{self, AppState},
    apply::{Applier, StartRequest},
    committer::Committer,
    store::{Reads, Store, sqlite::SqliteStore},
};
use orderflow_queue::{TaskQueue, embedded::EmbeddedQueue};
use orderflow_testkit::recording;
use orderflow_testkit::{TestEnv, eventually, order_input};
use orderflow_workflows::order::contracts::*;
use reqwest::{StatusCode, header::HeaderMap};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const USER: &str = "ops";
pub const PASSWORD: &str = "correct horse battery staple";

/// The order saga's shape with a charge step that retries without limit and waits `backoff`
/// between attempts, so a failing charge stays "retrying" until an operator acts.
pub fn stubborn_order(backoff: Duration, start_to_close: Duration) -> SagaDefinition {
    let quick = RetryPolicy {
        initial_interval: Duration::from_millis(50),
        multiplier: 2.0,
        max_interval: Duration::from_millis(400),
        max_attempts: 5,
        jitter: 0.2,
        non_retryable_codes: vec!["card_declined".into(), "out_of_stock".into()],
    };
    SagaDefinition::builder("order", 1)
        .input::<OrderSagaInput>()
        .step(
            Step::compensatable("reserve", INVENTORY_RESERVE)
                .compensate_with(INVENTORY_RELEASE)
                .retry(quick.clone())
                .compensation_retry(quick.clone())
                .start_to_close(start_to_close),
        )
        .step(
            Step::compensatable("charge", PAYMENT_CHARGE)
                .compensate_with(PAYMENT_REFUND)
                .retry(RetryPolicy {
                    initial_interval: backoff,
                    max_interval: backoff,
                    max_attempts: 0,
                    ..quick.clone()
                })
                .compensation_retry(quick.clone())
                .start_to_close(start_to_close),
        )
        .step(
            Step::pivot("create_order", ORDER_CREATE)
                .compensate_with(ORDER_CANCEL)
                .retry(quick.clone())
                .start_to_close(start_to_close),
        )
        .step(
            Step::retriable("notify", NOTIFICATION_SEND)
                .retry(RetryPolicy {
                    max_attempts: 0,
                    ..quick
                })
                .start_to_close(start_to_close),
        )
        .build()
        .expect("the test saga is valid")
}

/// Which database (and task queue) the engine runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    /// Postgres and RabbitMQ, as in production.
    Postgres,
    /// The embedded SQLite store and the in-process queue, as `orderflow dev`, in files (WAL,
    /// several connections, as with `--data-dir`) that are removed afterwards.
    Sqlite,
}

/// How a test wants the stack.
pub struct Setup {
    pub store: Db,
    pub def: SagaDefinition,
    /// Run the relay, timer poller and intake.
    pub engine: bool,
    /// Run recording workers for these activities.
    pub workers: Vec<&'static str>,
    /// And workers for these handlers (stand-ins whose output matters to the test).
    pub handlers: Vec<Arc<dyn Handler>>,
    /// Definitions deployed beside `def` (other workflow types).
    pub more: Vec<SagaDefinition>,
    pub config: AdminConfig,
}

impl Default for Setup {
    fn default() -> Self {
        let mut config = AdminConfig::with_password(USER, PASSWORD);
        config.probe_ttl = Duration::from_millis(100);
        Self {
            store: Db::Postgres,
            def: stubborn_order(Duration::from_secs(30), Duration::from_secs(20)),
            engine: true,
            workers: ORDER_SAGA_ACTIVITIES.to_vec(),
            handlers: Vec::new(),
            more: Vec::new(),
            config,
        }
    }
}

/// A running engine with its admin UI, and a client logged in or not.
pub struct Ui {
    pub env: TestEnv,
    /// The engine's database, whichever it is.
    pub db: Arc<dyn Reads>,
    pub committer: Committer,
    /// The embedded store, when the test runs on it.
    pub sqlite: Option<SqliteStore>,
    pub applier: Applier,
    pub addr: SocketAddr,
    http: reqwest::Client,
    pub session: Option<String>,
    pub csrf: Option<String>,
    stops: Vec<CancellationToken>,
    /// With [`Db::Sqlite`], the engine's and the queue's files, removed on drop.
    pub files: Vec<PathBuf>,
}

impl Drop for Ui {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
        }
        for f in &self.files {
            for suffix in ["", "-wal", "-shm"] {
                let mut name = f.clone().into_os_string();
                name.push(suffix);
                let _ = std::fs::remove_file(name);
            }
        }
    }
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn location(&self) -> Option<&str> {
        self.headers.get("location").and_then(|v| v.to_str().ok())
    }

    pub fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }

    /// Every `Set-Cookie` value.
    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect()
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.set_cookies().into_iter().find_map(|c| {
            c.split(';')
                .next()
                .and_then(|kv| kv.split_once('='))
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_owned())
        })
    }
}

/// Runs what `setup` asks for on `store` and `queue`: the engine, and workers for `handlers`.
fn run<S: Store, Q: TaskQueue>(
    store: S,
    queue: Q,
    registry: &Arc<Registry>,
    engine: bool,
    handlers: Vec<Arc<dyn Handler>>,
) -> CancellationToken {
    let stop = CancellationToken::new();
    if engine {
        let engine = Engine::new(
            store,
            queue.clone(),
            registry.clone(),
            EngineConfig::default(),
        );
        tokio::spawn(engine.run(stop.clone()));
    }
    if !handlers.is_empty() {
        let worker = Worker::builder(queue).handlers(handlers, 8).build();
        let s = stop.clone();
        tokio::spawn(async move { worker.run(s.cancelled_owned()).await });
    }
    stop
}

/// The value of the first hidden input `name` in a page.
pub fn hidden(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')?;
    Some(html[start..start + end].to_owned())
}

impl Ui {
    pub async fn start(setup: Setup) -> anyhow::Result<Self> {
        let env = TestEnv::new().await?;
        let registry = Arc::new(
            setup
                .more
                .into_iter()
                .fold(Registry::new().with(setup.def), Registry::with),
        );
        let applier = env.applier(registry.clone());
        let handlers: Vec<Arc<dyn Handler>> = recording::order_saga_handlers(env.pool.clone())
            .into_iter()
            .filter(|h| setup.workers.contains(&h.activity()))
            .chain(setup.handlers)
            .collect();
        let mut stops = Vec::new();
        let mut files = Vec::new();
        let (db, committer, sqlite, app) = match setup.store {
            Db::Postgres => {
                stops.push(run(
                    env.pool.clone(),
                    env.queue(),
                    &registry,
                    setup.engine,
                    handlers,
                ));
                let state = AppState::standalone(env.pool.clone(), applier.clone(), env.queue());
                let app = api::router_with(
                    state.clone(),
                    orderflow_testkit::api_auth(),
                    admin::router(state.clone(), setup.config),
                );
                (state.db, state.committer, None, app)
            }
            Db::Sqlite => {
                let tag = Uuid::new_v4().simple().to_string();
                let dir = std::env::temp_dir();
                files.push(dir.join(format!("orderflow-admin-{tag}-engine.db")));
                files.push(dir.join(format!("orderflow-admin-{tag}-queue.db")));
                let store = SqliteStore::open(Some(&files[0])).await?;
                let queue = EmbeddedQueue::open(Some(&files[1]), env.topology.clone()).await?;
                stops.push(run(
                    store.clone(),
                    queue.clone(),
                    &registry,
                    setup.engine,
                    handlers,
                ));
                let state = AppState::standalone(store.clone(), applier.clone(), queue);
                let app = api::router_with(
                    state.clone(),
                    orderflow_testkit::api_auth(),
                    admin::router(state.clone(), setup.config),
                );
                (state.db, state.committer, Some(store), app)
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(s.cancelled_owned())
                .await
        });
        stops.push(stop);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            env,
            db,
            committer,
            sqlite,
            applier,
            addr,
            http,
            session: None,
            csrf: None,
            stops,
            files,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn cookies(&self, extra: &[(&str, &str)]) -> String {
        let mut c: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(s) = &self.session {
            c.push(format!("orderflow_admin={s}"));
        }
        c.join("; ")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        let res = self
            .bearer(path, self.http.get(self.url(path)))
            .header("cookie", self.cookies(&[]))
            .send()
            .await?;
        read(res).await
    }

    /// The REST API's routes (`/api/...`) are called as the operator `ann`; the admin UI's
    /// pages with the session alone.
    fn bearer(&self, path: &str, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if path.starts_with("/api/") {
            req.bearer_auth(orderflow_testkit::operator_token("ann"))
        } else {
            req
        }
    }

    /// POSTs a form with the session cookie (and whatever extra cookies).
    pub async fn post_with(
        &self,
        path: &str,
        form: &[(&str, &str)],
        extra_cookies: &[(&str, &str)],
    ) -> anyhow::Result<Resp> {
        let res = self
            .http
            .post(self.url(path))
            .header("cookie", self.cookies(extra_cookies))
            .form(form)
            .send()
            .await?;
        read(res).await
    }

    /// GETs from the engine's REST API (under `/api/v1`, or `/ready`).
    pub async fn api_get(&self, path: &str) -> anyhow::Result<Resp> {
        read(
            self.bearer(path, self.http.get(self.url(path)))
                .send()
                .await?,
        )
        .await
    }

    /// POSTs JSON to the REST API, with an `Idempotency-Key` if given.
    pub async fn post_json(
        &self,
        path: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<Resp> {
        let mut req = self.bearer(path, self.http.post(self.url(path))).json(body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        read(req.send().await?).await
    }

    /// POSTs a form carrying the session's CSRF token.
    pub async fn post(&self, path: &str, form: &[(&str, &str)]) -> anyhow::Result<Resp> {
        let csrf = self.csrf.clone().unwrap_or_default();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(form);
        self.post_with(path, &all, &[]).await
    }

    /// Logs in as the test operator, keeping the session cookie and the CSRF token.
    pub async fn login(&mut self) -> anyhow::Result<()> {
        let page = self.get("/admin/login").await?;
        let login_csrf = page
            .cookie("orderflow_admin_login")
            .context("login cookie")?;
        let res = self
            .post_with(
                "/admin/login",
                &[
                    ("csrf", &login_csrf),
                    ("username", USER),
                    ("password", PASSWORD),
                    ("next", "/admin/workflows"),
                ],
                &[("orderflow_admin_login", &login_csrf)],
            )
            .await?;
        anyhow::ensure!(
            res.status == StatusCode::SEE_OTHER,
            "login answered {}",
            res.status
        );
        self.session = Some(res.cookie("orderflow_admin").context("session cookie")?);
        let list = self.get("/admin/workflows").await?;
        self.csrf = Some(hidden(&list.text, "csrf").context("a CSRF token in the page")?);
        Ok(())
    }

    /// A workflow's events in order.
    pub async fn history(&self, id: Uuid) -> anyhow::Result<Vec<RecordedEvent>> {
        Ok(self.db.history(id).await?)
    }

    pub async fn history_kinds(&self, id: Uuid) -> anyhow::Result<Vec<String>> {
        let events = self.history(id).await?;
        Ok(events.iter().map(|e| e.event.kind().to_owned()).collect())
    }

    /// Starts an order saga with these business keys; returns its id.
    pub async fn start_keyed(&self, business_keys: serde_json::Value) -> anyhow::Result<Uuid> {
        let req = StartRequest {
            workflow_type: "order".into(),
            input: order_input(),
            business_keys,
            idempotency_key: None,
            request_hash: None,
        };
        let started = self.committer.start(req).await?;
        Ok(started.id.0)
    }

    /// Starts an order saga; returns its id.
    pub async fn start_order(&self) -> anyhow::Result<Uuid> {
        self.start_keyed(serde_json::json!({})).await
    }

    /// The status of one workflow.
    pub async fn status(&self, id: Uuid) -> anyhow::Result<String> {
        let row = self.db.get(id).await?;
        Ok(row.context("no such workflow")?.status)
    }

    /// Waits until the workflow ends (or needs attention); its status.
    pub async fn settled(&self, id: Uuid, within: Duration) -> anyhow::Result<String> {
        eventually(within, "the saga to settle", || async {
            let s = self.status(id).await?;
            Ok(matches!(
                s.as_str(),
                "completed" | "compensated" | "cancelled" | "terminated" | "needs_attention"
            )
            .then_some(s))
        })
        .await
    }

    /// How many live sessions `actor` has, and how many are keyed by `token` itself rather
    /// than its hash (there must be none).
    pub async fn sessions(&self, actor: &str, token: &str) -> anyhow::Result<(i64, i64)> {
        Ok(match &self.sqlite {
            None => {
                sqlx::query_as(
                    "select (select count(*) from admin_sessions where actor = $1),
                        (select count(*) from admin_sessions
                         where encode(token_hash, 'hex') = $2)",
                )
                .bind(actor)
                .bind(token)
                .fetch_one(&self.env.pool)
                .await?
            }
            Some(store) => {
                sqlx::query_as(
                    "select (select count(*) from admin_sessions where actor = ?),
                        (select count(*) from admin_sessions where lower(hex(token_hash)) = ?)",
                )
                .bind(actor)
                .bind(token)
                .fetch_one(store.pool())
                .await?
            }
        })
    }
}

async fn read(res: reqwest::Response) -> anyhow::Result<Resp> {
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await?;
    Ok(Resp {
        status,
        headers,
        text,
    })
}
