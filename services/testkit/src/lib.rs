//! What the services' integration tests share, on top of [`orderflow_testkit`] (a fresh engine
//! database and queue prefix per test):
//!
//! - [`fresh_db`]: a service's own database, new for each test and migrated the way the service
//!   migrates it at start.
//! - [`serve`]: a router served on port 0 until a token stops it, for what must be reached over
//!   a socket (another service's client, a webhook sender).
//! - [`call`], [`raw`] and [`Answer`]: one request through a router without a socket, with the
//!   status, content type and JSON body of the answer, and [`Answer::problem`] to check a
//!   problem+json answer names the right field.
//! - [`metrics`] and [`sample`]: a router's `/metrics` and one series' value in it.
//! - [`Api`]: one service's router with its database and token keys.
//! - [`SmtpServer`]: a real SMTP server (aiosmtpd, which `scripts/test-servers.sh` installs) on a
//!   port of the test's choosing, keeping every message it receives in a Maildir.

use std::{path::PathBuf, time::Duration};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Method, Request, StatusCode, header},
};
use orderflow_service_kit::{
    auth::{JwtKeys, Role},
    db,
};
use orderflow_testkit::{eventually, pg_server};
use serde_json::Value;
use sqlx::{PgPool, migrate::Migrator};
use tokio::{net::TcpListener, process::Child};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use uuid::Uuid;

/// A new database `orderflow_<service>_test_<random>` with `migrator`'s migrations.
pub async fn fresh_db(service: &str, migrator: &Migrator) -> anyhow::Result<PgPool> {
    orderflow_testkit::init_tracing();
    let name = format!("orderflow_{service}_test_{}", Uuid::new_v4().simple());
    db::connect_and_migrate(&db::with_database(&pg_server(), &name)?, migrator).await
}

/// Serves `router` on a fresh port of 127.0.0.1 until `stop`; returns its base URL.
pub async fn serve(router: Router, stop: &CancellationToken) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(orderflow_service_kit::http::serve_on(
        listener,
        router,
        stop.clone(),
    ));
    Ok(url)
}

/// A router's `/metrics` (Prometheus text).
pub async fn metrics(router: &Router) -> anyhow::Result<String> {
    let req = Request::get("/metrics").body(Body::empty())?;
    let res = router.clone().oneshot(req).await?;
    anyhow::ensure!(res.status() == StatusCode::OK, "/metrics: {}", res.status());
    let bytes = to_bytes(res.into_body(), 1 << 22).await?;
    Ok(String::from_utf8(bytes.to_vec())?)
}

/// The value of the sample `series` (its name with any labels, as `/metrics` prints it) in
/// Prometheus text; `None` when it is not there.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// A port of 127.0.0.1 nobody listens on right now.
pub async fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port())
}

/// A router's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    /// The JSON body; `null` when it is not JSON.
    pub body: Value,
}

impl Answer {
    /// Asserts a problem+json answer with `status` that names `field`.
    pub fn problem(&self, status: StatusCode, field: Option<&str>) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(self.body["field"].as_str(), field, "{}", self.body);
    }

    /// The `id` of the created resource.
    pub fn id(&self) -> String {
        self.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id in {}", self.body))
            .to_owned()
    }
}

/// One request with a JSON body through `router`, as the caller with `token`.
pub async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Answer {
    raw(
        router,
        method,
        path,
        token,
        headers,
        body.map(|b| b.to_string()),
    )
    .await
}

/// One request with a body taken as it is (malformed JSON too), labelled `application/json`.
pub async fn raw(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<String>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = match body {
        Some(b) => req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(b)),
        None => req.body(Body::empty()),
    }
    .expect("a valid request");
    let res = router
        .clone()
        .oneshot(req)
        .await
        .expect("routers are infallible");
    let status = res.status();
    let content_type = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = to_bytes(res.into_body(), 1 << 20)
        .await
        .expect("a body under 1 MiB");
    Answer {
        status,
        content_type,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// One service's whole router, its database and the keys its tokens are signed with.
#[derive(Clone)]
pub struct Api {
    pub app: Router,
    pub pool: PgPool,
    pub keys: JwtKeys,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("pool", &self.pool).finish()
    }
}

impl Api {
    pub fn new(app: Router, pool: PgPool, secret: &str) -> Self {
        Self {
            app,
            pool,
            keys: JwtKeys::new(secret),
        }
    }

    /// An access token of a new user with `role`.
    pub fn token(&self, role: Role) -> String {
        self.keys
            .issue(Uuid::new_v4(), role, Duration::from_secs(300))
            .expect("signs")
    }

    /// `method uri` with an optional token and raw body: status, content type, JSON body.
    pub async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> anyhow::Result<(StatusCode, String, Value)> {
        let a = raw(
            &self.app,
            Method::from_bytes(method.as_bytes())?,
            uri,
            token,
            &[],
            body.map(str::to_owned),
        )
        .await;
        Ok((a.status, a.content_type, a.body))
    }
}

/// aiosmtpd on a port of 127.0.0.1, keeping every message it receives in a Maildir that is
/// removed with the server.
#[derive(Debug)]
pub struct SmtpServer {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl SmtpServer {
    /// Starts the server on `port` and waits until it accepts connections.
    pub async fn start(port: u16) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("orderflow-smtp-{}", Uuid::new_v4().simple()));
        // aiosmtpd's Mailbox creates the Maildir itself, but not its parent.
        std::fs::create_dir_all(&root)?;
        let maildir = root.join("mail");
        let python = std::env::var("ORDERFLOW_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .kill_on_drop(true)
            .spawn()?;
        eventually(Duration::from_secs(15), "aiosmtpd to listen", || {
            let exited = child.try_wait();
            async move {
                if let Ok(Some(status)) = exited {
                    anyhow::bail!(
                        "aiosmtpd exited with {status}; is it installed (scripts/test-servers.sh)?"
                    );
                }
                Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ()))
            }
        })
        .await?;
        Ok(Self {
            child,
            port,
            maildir,
        })
    }

    /// Starts the server on a free port.
    pub async fn start_any() -> anyhow::Result<Self> {
        Self::start(free_port().await?).await
    }

    /// The URL an SMTP client is given.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, as the server stored it.
    pub fn messages(&self) -> anyhow::Result<Vec<String>> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries {
            out.push(std::fs::read_to_string(e?.path())?);
        }
        Ok(out)
    }

    /// Stops the server and removes its Maildir.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        if let Some(root) = self.maildir.parent() {
            std::fs::remove_dir_all(root)?;
        }
        Ok(())
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        if let Some(root) = self.maildir.parent() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
