//! What the admin UI tests share: the engine's HTTP surface with the admin UI served on port 0
//! against a fresh database and queue prefix, optionally the engine loops and recording workers,
//! and a small HTTP client that keeps the session cookie and CSRF token like a browser would.

#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use orderflow_activities::{contracts::*, recording, worker::Worker};
use orderflow_core::{Registry, RetryPolicy, SagaDefinition, Step};
use orderflow_engine::{
    admin::AdminConfig,
    api::{self, AppState},
    apply::Applier,
};
use orderflow_testkit::{TestEnv, amqp_url};
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

/// How a test wants the stack.
pub struct Setup {
    pub def: SagaDefinition,
    /// Run the relay, timer poller and intake.
    pub engine: bool,
    /// Run recording workers for these activities.
    pub workers: Vec<&'static str>,
    pub config: AdminConfig,
}

impl Default for Setup {
    fn default() -> Self {
        let mut config = AdminConfig::with_password(USER, PASSWORD);
        config.probe_ttl = Duration::from_millis(100);
        Self {
            def: stubborn_order(Duration::from_secs(30), Duration::from_secs(20)),
            engine: true,
            workers: ORDER_SAGA_ACTIVITIES.to_vec(),
            config,
        }
    }
}

/// A running engine with its admin UI, and a client logged in or not.
pub struct Ui {
    pub env: TestEnv,
    pub applier: Applier,
    pub addr: SocketAddr,
    http: reqwest::Client,
    pub session: Option<String>,
    pub csrf: Option<String>,
    stops: Vec<CancellationToken>,
}

impl Drop for Ui {
    fn drop(&mut self) {
        for s in &self.stops {
            s.cancel();
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
        let registry = Arc::new(Registry::new().with(setup.def));
        let applier = env.applier(registry.clone());
        let mut stops = Vec::new();
        if setup.engine {
            stops.push(env.spawn_engine(registry.clone()));
        }
        if !setup.workers.is_empty() {
            let stop = CancellationToken::new();
            let mut worker = Worker::builder(amqp_url(), env.topology.clone());
            for h in recording::order_saga_handlers(env.pool.clone()) {
                if setup.workers.contains(&h.activity()) {
                    worker = worker.handler(h, 8);
                }
            }
            let s = stop.clone();
            tokio::spawn(async move { worker.build().run(s.cancelled_owned()).await });
            stops.push(stop);
        }
        let app = api::router_with_admin(
            AppState {
                pool: env.pool.clone(),
                applier: applier.clone(),
                amqp_url: amqp_url(),
            },
            Some(setup.config),
        );
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
            applier,
            addr,
            http,
            session: None,
            csrf: None,
            stops,
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
            .http
            .get(self.url(path))
            .header("cookie", self.cookies(&[]))
            .send()
            .await?;
        read(res).await
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

    pub async fn history_kinds(&self, id: Uuid) -> anyhow::Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "select event->>'type' from history where workflow_id = $1 order by seq",
        )
        .bind(id)
        .fetch_all(&self.env.pool)
        .await?;
        Ok(rows.into_iter().map(|r| r.0).collect())
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
